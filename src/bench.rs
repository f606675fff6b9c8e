//! Benchmarks, run as `ember bench NAME`. Each prints `key=value` lines that other tools read;
//! their formats are contracts (see README.md).
//!
//! A cold boot is measured the way a user pays for it: a fresh `ember boot` process per run,
//! from its start to ember-init's ready report, with the console off.

use std::process::Command;

/// Errors of a benchmark run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The ember binary could not be run.
    #[error("cannot run {0}: {1}")]
    Spawn(String, std::io::Error),
    /// A run failed or printed something unexpected.
    #[error("run {run} failed: {detail}")]
    Run {
        /// Which run.
        run: usize,
        /// Its status and output.
        detail: String,
    },
    /// No runs were asked for.
    #[error("--runs must be at least 1")]
    NoRuns,
}

/// The median of `values` (the rounded mean of the middle two for an even count), which must
/// not be empty.
pub fn median(values: &[u64]) -> u64 {
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    let n = sorted.len();
    if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]).div_ceil(2)
    }
}

/// The nearest-rank percentile `p` (0-100) of `values`, which must not be empty.
pub fn percentile(values: &[u64], p: u32) -> u64 {
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    let rank = (sorted.len() * p as usize).div_ceil(100).max(1);
    sorted[rank - 1]
}

/// Reads `key=<u64>` from whitespace-separated `key=value` words in `output`.
pub fn field(output: &str, key: &str) -> Option<u64> {
    output
        .split_whitespace()
        .filter_map(|w| w.split_once('='))
        .find(|(k, _)| *k == key)
        .and_then(|(_, v)| v.parse().ok())
}

fn boot_once(run: usize, memory_mib: u32, extra: &[&str]) -> Result<String, Error> {
    let exe = std::env::current_exe().map_err(|e| Error::Spawn("ember".into(), e))?;
    let mem = memory_mib.to_string();
    let output = Command::new(&exe)
        .args(["boot", "--until-ready", "--console", "off", "--memory-mib", &mem, "--vcpus", "1"])
        .args(extra)
        .output()
        .map_err(|e| Error::Spawn(exe.display().to_string(), e))?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if !output.status.success() || field(&stdout, "ready_ms").is_none() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        return Err(Error::Run { run, detail: format!("{}: {stdout}{stderr}", output.status) });
    }
    Ok(stdout)
}

/// `ember bench boot`: `runs` cold boots of a `memory_mib` guest, then the VMM's own memory
/// with an idle 128 MiB guest.
pub fn boot(runs: usize, memory_mib: u32) -> Result<String, Error> {
    if runs == 0 {
        return Err(Error::NoRuns);
    }
    let mut ready = Vec::with_capacity(runs);
    let mut exits = Vec::with_capacity(runs);
    for run in 0..runs {
        let out = boot_once(run, memory_mib, &[])?;
        ready.push(field(&out, "ready_ms").unwrap_or(0));
        exits.push(field(&out, "exits").unwrap_or(0));
    }
    let idle = boot_once(runs, 128, &["--idle-ms", "1000"])?;
    let overhead = field(&idle, "vmm_overhead_kib")
        .ok_or_else(|| Error::Run { run: runs, detail: format!("no vmm_overhead_kib in {idle:?}") })?;
    Ok(format!(
        "boot ready_ms p50={} p90={} n={} exits={}\nboot vmm_overhead_kib={}\n",
        median(&ready),
        percentile(&ready, 90),
        runs,
        median(&exits),
        overhead
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        let v = [5, 1, 4, 2, 3, 10, 9, 8, 7, 6];
        assert_eq!(percentile(&v, 50), 5);
        assert_eq!(percentile(&v, 90), 9);
        assert_eq!(percentile(&[42], 90), 42);
        assert_eq!(median(&v), 6, "mean of 5 and 6, rounded up");
        assert_eq!(median(&[3, 1, 2]), 2);
    }

    #[test]
    fn fields() {
        let out = "memory_mib=128 vcpus=1 exits=5000\nready_ms=2900\n";
        assert_eq!(field(out, "exits"), Some(5000));
        assert_eq!(field(out, "ready_ms"), Some(2900));
        assert_eq!(field(out, "nope"), None);
    }

    #[test]
    fn zero_runs_is_an_error() {
        assert!(matches!(boot(0, 128), Err(Error::NoRuns)));
    }
}
