//! Benchmarks, run as `ember bench NAME`. Each prints `key=value` lines that other tools read;
//! their formats are contracts (see README.md).
//!
//! A cold boot is measured the way a user pays for it: a fresh `ember boot` process per run,
//! from its start to ember-init's ready report, with the console off. The vsock bench runs its
//! VM in this process, so that it can read the vCPUs' exit counters around each round trip.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::vmm::{self, Console, Outcome, VmConfig, Vmm};

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
    /// The VM could not be started.
    #[error(transparent)]
    Vmm(#[from] vmm::Error),
    /// The VM did not become ready.
    #[error("the guest did not become ready: {0:?}")]
    NotReady(Outcome),
    /// A socket failed.
    #[error("{0}: {1}")]
    Io(&'static str, std::io::Error),
}

fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> Error {
    move |e| Error::Io(what, e)
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

/// Size of one throughput transfer (each way).
const TRANSFER_BYTES: usize = 6 << 20;
/// Size of one round-trip message.
const RTT_BYTES: usize = 1024;

/// Connects to the echo service behind a hybrid-vsock socket, retrying while the guest starts.
fn connect_vsock(uds: &Path, port: u32) -> Result<UnixStream, Error> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let attempt = UnixStream::connect(uds).and_then(|mut s| {
            s.write_all(format!("CONNECT {port}\n").as_bytes())?;
            let mut line = String::new();
            BufReader::new(s.try_clone()?).read_line(&mut line)?;
            Ok((s, line))
        });
        match attempt {
            Ok((s, line)) if line.starts_with("OK ") => return Ok(s),
            Ok(_) | Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(100)),
            Ok((_, line)) => return Err(Error::Io("CONNECT", std::io::Error::other(line))),
            Err(e) => return Err(Error::Io("connect", e)),
        }
    }
}

/// Sends `bytes` through an echoing stream while reading them back; MiB/s each way.
fn echo_throughput(stream: &UnixStream, bytes: usize) -> Result<f64, Error> {
    let mut writer = stream.try_clone().map_err(io("clone"))?;
    let started = Instant::now();
    let sender = std::thread::spawn(move || {
        let chunk = vec![0xa5u8; 64 << 10];
        let mut sent = 0;
        while sent < bytes {
            let n = chunk.len().min(bytes - sent);
            writer.write_all(&chunk[..n])?;
            sent += n;
        }
        Ok::<(), std::io::Error>(())
    });
    let mut reader = stream;
    let mut buf = vec![0u8; 64 << 10];
    let mut got = 0;
    while got < bytes {
        let n = reader.read(&mut buf).map_err(io("read"))?;
        if n == 0 {
            return Err(Error::Io("read", std::io::ErrorKind::UnexpectedEof.into()));
        }
        got += n;
    }
    sender.join().map_err(|_| Error::Io("send", std::io::Error::other("sender panicked")))?.map_err(io("write"))?;
    Ok((bytes as f64 / f64::from(1 << 20)) / started.elapsed().as_secs_f64())
}

/// `ember bench echo-peer`: echoes every connection on `socket`, one thread each, until killed.
pub fn echo_peer(socket: &Path) -> Result<(), Error> {
    let listener = UnixListener::bind(socket).map_err(io("bind"))?;
    for conn in listener.incoming() {
        let mut conn = conn.map_err(io("accept"))?;
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 64 << 10];
            while let Ok(n) = conn.read(&mut buf) {
                if n == 0 || conn.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        });
    }
    Ok(())
}

/// `ember bench vsock`: 1 KiB round trips host -> guest -> host through ember-init's echo
/// service (with the VM exits each costs), 6 MiB each way, and the same transfer between two
/// host processes over a Unix socket (the limit).
pub fn vsock(runs: usize) -> Result<String, Error> {
    if runs == 0 {
        return Err(Error::NoRuns);
    }
    let dir = std::env::temp_dir().join(format!("ember-bench-vsock-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(io("create temp dir"))?;
    let result = vsock_in(&dir, runs);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// Boots a VM with ember-init's echo service on vsock and connects to it.
fn echo_vm(dir: &Path) -> Result<(Vmm, UnixStream), Error> {
    let guest = vmm::default_guest_dir();
    let uds = dir.join("vsock.sock");
    let config = VmConfig {
        memory_mib: 128,
        vcpus: 1,
        kernel: guest.join("vmlinux"),
        rootfs: Some(guest.join("rootfs.ext4")),
        cmdline: vmm::DEFAULT_CMDLINE.into(),
        console: Console::Off,
        hugepages: true,
        code: None,
        tmp_mib: None,
        tmp_dir: PathBuf::from(dir),
        vsock_uds: Some(uds.clone()),
    };
    let mut vm = Vmm::start(&config)?;
    match vm.wait(true, Duration::from_secs(120), Instant::now()) {
        Outcome::Ready => {}
        other => return Err(Error::NotReady(other)),
    }
    let s = connect_vsock(&uds, ember_proto::ECHO_PORT)?;
    Ok((vm, s))
}

/// `runs` 1 KiB round trips after a warm-up: each one's latency in µs and VM exits.
fn round_trips(vm: &Vmm, s: &mut UnixStream, runs: usize) -> Result<(Vec<u64>, Vec<u64>), Error> {
    let msg = [0x5au8; RTT_BYTES];
    let mut reply = [0u8; RTT_BYTES];
    let mut round_trip = |s: &mut UnixStream| -> Result<(), Error> {
        s.write_all(&msg).map_err(io("write"))?;
        s.read_exact(&mut reply).map_err(io("read"))
    };
    for _ in 0..runs.min(100) {
        round_trip(s)?;
    }
    let mut rtts = Vec::with_capacity(runs);
    let mut exits = Vec::with_capacity(runs);
    for _ in 0..runs {
        let before = vm.total_exits();
        let started = Instant::now();
        round_trip(s)?;
        rtts.push(started.elapsed().as_micros() as u64);
        exits.push(vm.total_exits() - before);
    }
    Ok((rtts, exits))
}

fn vsock_in(dir: &Path, runs: usize) -> Result<String, Error> {
    let (vm, mut s) = echo_vm(dir)?;
    let (rtts, exits) = round_trips(&vm, &mut s, runs)?;
    let mib_s = echo_throughput(&s, TRANSFER_BYTES)?;

    let peer_socket = dir.join("peer.sock");
    let exe = std::env::current_exe().map_err(io("current_exe"))?;
    let mut peer = Command::new(exe)
        .args(["bench", "echo-peer"])
        .arg(&peer_socket)
        .spawn()
        .map_err(|e| Error::Spawn("ember bench echo-peer".into(), e))?;
    let limit = (|| {
        let deadline = Instant::now() + Duration::from_secs(10);
        let stream = loop {
            match UnixStream::connect(&peer_socket) {
                Ok(s) => break s,
                Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
                Err(e) => return Err(Error::Io("connect to the echo peer", e)),
            }
        };
        echo_throughput(&stream, TRANSFER_BYTES)
    })();
    let _ = peer.kill();
    let _ = peer.wait();
    Ok(format!(
        "vsock rtt_us p50={} p99={} mib_s={:.1} exits_per_rtt={} limit_mib_s={:.1}\n",
        median(&rtts),
        percentile(&rtts, 99),
        mib_s,
        median(&exits),
        limit?
    ))
}

/// `ember bench invoke`: a 1 KiB echo in the provided runtime through a real agent (`ember
/// serve` on a Unix socket): cold invokes (boot included), warm invokes one at a time on a
/// kept-alive connection, warm throughput with 1 and 8 clients, and the bare vsock round trip
/// measured in the same run.
pub fn invoke(runs: usize, cold_runs: usize) -> Result<String, Error> {
    if runs == 0 || cold_runs == 0 {
        return Err(Error::NoRuns);
    }
    let dir = std::env::temp_dir().join(format!("ember-bench-invoke-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(io("create temp dir"))?;
    let result = invoke_in(&dir, runs, cold_runs);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn invoke_in(dir: &Path, runs: usize, cold_runs: usize) -> Result<String, Error> {
    let zip =
        std::fs::read(vmm::default_guest_dir().join("functions/rust.zip")).map_err(io("read functions/rust.zip"))?;
    let socket = dir.join("ember.sock");
    let exe = std::env::current_exe().map_err(io("current_exe"))?;
    let mut agent = Command::new(exe)
        .arg("serve")
        .arg("--socket")
        .arg(&socket)
        .arg("--data-dir")
        .arg(dir.join("data"))
        .arg("--run-dir")
        .arg(dir.join("run"))
        .args(["--init-timeout-s", "120"])
        .spawn()
        .map_err(|e| Error::Spawn("ember serve".into(), e))?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(io("tokio runtime"))?;
    let result = rt.block_on(invoke_runs(&socket, &zip, runs, cold_runs));
    let _ = agent.kill();
    let _ = agent.wait();
    let (cold, warm, rps_c1, rps_c8) = result?;
    let (vm, mut s) = echo_vm(dir)?;
    let (rtts, _) = round_trips(&vm, &mut s, runs)?;
    Ok(format!(
        "invoke cold_ms p50={} warm_us p50={} p99={} rps_c1={} rps_c8={} vsock_rtt_us={}\n",
        median(&cold),
        median(&warm),
        percentile(&warm, 99),
        rps_c1,
        rps_c8,
        median(&rtts)
    ))
}

/// A kept-alive HTTP/1.1 connection to the agent.
struct AgentConn(hyper::client::conn::http1::SendRequest<http_body_util::Full<bytes::Bytes>>);

impl AgentConn {
    async fn open(socket: &Path) -> Result<AgentConn, Error> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let stream = loop {
            match tokio::net::UnixStream::connect(socket).await {
                Ok(s) => break s,
                Err(_) if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(50)).await,
                Err(e) => return Err(Error::Io("connect to the agent", e)),
            }
        };
        let (sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| Error::Io("HTTP handshake", std::io::Error::other(e)))?;
        tokio::spawn(conn);
        Ok(AgentConn(sender))
    }

    /// Sends a request; returns the status and body, or fails on a non-2xx status or a function
    /// error.
    async fn call(&mut self, method: &str, path: &str, body: &[u8]) -> Result<Vec<u8>, Error> {
        use http_body_util::BodyExt;
        let req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", "localhost")
            .body(http_body_util::Full::new(bytes::Bytes::copy_from_slice(body)))
            .expect("request builds");
        let failed = |e: String| Error::Run { run: 0, detail: format!("{method} {path}: {e}") };
        // The connection takes the next request only once it has finished with the last.
        self.0.ready().await.map_err(|e| failed(e.to_string()))?;
        let resp = self.0.send_request(req).await.map_err(|e| failed(e.to_string()))?;
        let status = resp.status();
        let function_error = resp.headers().contains_key("x-amz-function-error");
        let body = resp.into_body().collect().await.map_err(|e| failed(e.to_string()))?.to_bytes().to_vec();
        if !status.is_success() || function_error {
            return Err(failed(format!("{status}: {}", String::from_utf8_lossy(&body))));
        }
        Ok(body)
    }
}

async fn invoke_runs(
    socket: &Path,
    zip: &[u8],
    runs: usize,
    cold_runs: usize,
) -> Result<(Vec<u64>, Vec<u64>, u64, u64), Error> {
    use base64::Engine as _;
    let mut conn = AgentConn::open(socket).await?;
    let zip = base64::engine::general_purpose::STANDARD.encode(zip);
    let create = |name: &str| {
        serde_json::to_vec(&serde_json::json!({
            "FunctionName": name, "Runtime": "provided.al2023", "Handler": "bootstrap",
            "Role": "arn:aws:iam::000000000000:role/bench", "Code": {"ZipFile": zip}, "Timeout": 60,
            // One whole vCPU's share (Lambda's 1769 MB), so that what is measured is Ember's
            // overhead and not the CPU cap of a small function.
            "MemorySize": 1769,
        }))
        .expect("serializes")
    };
    let event = serde_json::to_vec(&serde_json::json!({ "data": "x".repeat(RTT_BYTES - 11) })).expect("serializes");

    let mut cold = Vec::with_capacity(cold_runs);
    for i in 0..cold_runs {
        let name = format!("cold{i}");
        conn.call("POST", "/2015-03-31/functions", &create(&name)).await?;
        let started = Instant::now();
        conn.call("POST", &format!("/2015-03-31/functions/{name}/invocations"), &event).await?;
        cold.push(started.elapsed().as_millis() as u64);
        conn.call("DELETE", &format!("/2015-03-31/functions/{name}"), b"").await?;
    }

    conn.call("POST", "/2015-03-31/functions", &create("warm")).await?;
    let path = "/2015-03-31/functions/warm/invocations";
    for _ in 0..runs.min(100) {
        conn.call("POST", path, &event).await?;
    }
    let mut warm = Vec::with_capacity(runs);
    let started = Instant::now();
    for _ in 0..runs {
        let t = Instant::now();
        conn.call("POST", path, &event).await?;
        warm.push(t.elapsed().as_micros() as u64);
    }
    let rps_c1 = (runs as f64 / started.elapsed().as_secs_f64()) as u64;

    // Eight clients: first bring up eight instances (eight overlapping slow invokes), then
    // count the warm invokes they finish in a fixed window.
    let slow = serde_json::to_vec(&serde_json::json!({ "sleep_ms": 2000 })).expect("serializes");
    let mut conns = Vec::new();
    for _ in 0..8 {
        conns.push(AgentConn::open(socket).await?);
    }
    let warmups: Vec<_> = conns
        .into_iter()
        .map(|mut c| {
            let slow = slow.clone();
            tokio::spawn(async move { c.call("POST", path, &slow).await.map(|_| c) })
        })
        .collect();
    let mut conns = Vec::new();
    for w in warmups {
        conns.push(w.await.map_err(|e| Error::Io("join", std::io::Error::other(e)))??);
    }
    let window = Duration::from_secs(3);
    let started = Instant::now();
    let workers: Vec<_> = conns
        .into_iter()
        .map(|mut c| {
            let event = event.clone();
            tokio::spawn(async move {
                let mut n = 0u64;
                while started.elapsed() < window {
                    c.call("POST", path, &event).await?;
                    n += 1;
                }
                Ok::<u64, Error>(n)
            })
        })
        .collect();
    let mut total = 0;
    for w in workers {
        total += w.await.map_err(|e| Error::Io("join", std::io::Error::other(e)))??;
    }
    let rps_c8 = (total as f64 / started.elapsed().as_secs_f64()) as u64;
    Ok((cold, warm, rps_c1, rps_c8))
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
        assert!(matches!(vsock(0), Err(Error::NoRuns)));
        assert!(matches!(invoke(0, 1), Err(Error::NoRuns)));
    }

    #[test]
    fn echo_peer_and_throughput() {
        let dir = std::env::temp_dir().join(format!("ember-bench-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("peer.sock");
        let path = socket.clone();
        std::thread::spawn(move || echo_peer(&path));
        let deadline = Instant::now() + Duration::from_secs(5);
        let stream = loop {
            match UnixStream::connect(&socket) {
                Ok(s) => break s,
                Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
                Err(e) => panic!("{e}"),
            }
        };
        assert!(echo_throughput(&stream, 1 << 20).unwrap() > 0.0);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
