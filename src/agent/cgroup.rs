//! The fractional CPU share of a function, as Lambda gives it: one vCPU's worth of CPU time per
//! 1769 MB of memory, enforced with cgroup v2's `cpu.max` on the instance's VMM process.
//!
//! Each instance gets a cgroup `<root>/<instance id>` once its init is over (Lambda lets init
//! run unthrottled); the root is `ember-<name>` at the top of the cgroup v2 hierarchy. Where
//! the host does not allow that (no cgroup v2, no cpu controller, not root), the agent says so
//! once and runs instances unthrottled.

use std::io;
use std::path::{Path, PathBuf};

/// The cgroup v2 mount point.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// cpu.max's period, in microseconds.
const PERIOD_US: u64 = 100_000;
/// Memory per whole CPU, in MB.
const MB_PER_CPU: u64 = 1769;

/// Where instance cgroups go, if the host allows them.
pub struct CpuShares {
    root: Option<PathBuf>,
}

impl CpuShares {
    /// Sets up `<cgroup root>/ember-<name>` with the cpu controller for its children, removing
    /// the empty cgroups a previous agent left. Never fails: without cgroups, shares are off.
    pub fn new(name: &str) -> CpuShares {
        match Self::setup(Path::new(CGROUP_ROOT), name) {
            Ok(root) => CpuShares { root: Some(root) },
            Err(e) => {
                eprintln!("ember: CPU shares are not enforced (cgroup v2 cpu controller unavailable: {e})");
                CpuShares { root: None }
            }
        }
    }

    /// Shares not enforced.
    pub fn off() -> CpuShares {
        CpuShares { root: None }
    }

    fn setup(mount: &Path, name: &str) -> io::Result<PathBuf> {
        let controllers = std::fs::read_to_string(mount.join("cgroup.controllers"))?;
        if !controllers.split_whitespace().any(|c| c == "cpu") {
            return Err(io::Error::other("no cpu controller"));
        }
        std::fs::write(mount.join("cgroup.subtree_control"), "+cpu")?;
        let root = mount.join(format!("ember-{name}"));
        match std::fs::create_dir(&root) {
            Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(e),
            _ => {}
        }
        std::fs::write(root.join("cgroup.subtree_control"), "+cpu")?;
        for entry in std::fs::read_dir(&root)?.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                // Fails (and is left) if a process still lives there.
                let _ = std::fs::remove_dir(entry.path());
            }
        }
        Ok(root)
    }

    /// Moves process `pid` (an instance's VMM) into its own cgroup capped at its memory's
    /// share of CPU. Errors are reported and otherwise ignored: a share not enforced must not
    /// fail an invocation.
    pub fn limit(&self, id: &str, pid: u32, memory_mib: u32) {
        let Some(root) = &self.root else { return };
        let dir = root.join(id);
        let result = std::fs::create_dir(&dir)
            .and_then(|()| std::fs::write(dir.join("cpu.max"), cpu_max(memory_mib)))
            .and_then(|()| std::fs::write(dir.join("cgroup.procs"), pid.to_string()));
        if let Err(e) = result {
            eprintln!("ember: cannot cap the CPU of instance {id}: {e}");
        }
    }

    /// Removes an instance's cgroup (its process must be gone).
    pub fn remove(&self, id: &str) {
        if let Some(root) = &self.root {
            let _ = std::fs::remove_dir(root.join(id));
        }
    }
}

/// `cpu.max` for a memory size: `<quota> <period>` in microseconds.
fn cpu_max(memory_mib: u32) -> String {
    let quota = (u64::from(memory_mib) * PERIOD_US / MB_PER_CPU).max(1000);
    format!("{quota} {PERIOD_US}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_follow_memory() {
        assert_eq!(cpu_max(1769), "100000 100000");
        assert_eq!(cpu_max(128), "7235 100000");
        assert_eq!(cpu_max(10240), "578858 100000");
    }

    #[test]
    fn a_host_without_cgroups_turns_shares_off() {
        let dir = std::env::temp_dir().join(format!("ember-cgroup-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert!(CpuShares::setup(&dir, "x").is_err(), "no cgroup.controllers");
        std::fs::write(dir.join("cgroup.controllers"), "memory io").unwrap();
        assert!(CpuShares::setup(&dir, "x").is_err(), "no cpu controller");
        std::fs::remove_dir_all(&dir).unwrap();
        let off = CpuShares::off();
        off.limit("i", 1, 128);
        off.remove("i");
    }
}
