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
    /// The message broker failed.
    #[error("the message broker: {0}")]
    Broker(String),
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
/// with an idle 128 MiB guest. Where this process is root, each boot is followed by one jailed
/// as the agent jails its VMMs (its own namespaces, root and uid: `ember boot --jail-root`),
/// and the jail's set-up alone and the jailed boots' time to ready are printed too.
pub fn boot(runs: usize, memory_mib: u32) -> Result<String, Error> {
    if runs == 0 {
        return Err(Error::NoRuns);
    }
    let work = std::env::temp_dir().join(format!("ember-bench-boot-{}", std::process::id()));
    let jails = if nix::unistd::geteuid().is_root() {
        let _ = std::fs::remove_dir_all(&work);
        std::fs::create_dir_all(work.join("tmp")).map_err(io("create the jailed boots' dir"))?;
        Some(
            crate::agent::jail::PidNamespaces::new()
                .map_err(|e| Error::Run { run: 0, detail: format!("jail: {e}") })?,
        )
    } else {
        None
    };
    let mut ready = Vec::with_capacity(runs);
    let mut exits = Vec::with_capacity(runs);
    let (mut jail_us, mut jailed_ready) = (Vec::new(), Vec::new());
    let result = (|| {
        for run in 0..runs {
            let out = boot_once(run, memory_mib, &[])?;
            ready.push(field(&out, "ready_ms").unwrap_or(0));
            exits.push(field(&out, "exits").unwrap_or(0));
            if let Some(jails) = &jails {
                // A root of its own each time (the boot's mount namespace, and its mounts, go
                // with it).
                let root = work.join(format!("jail-{run}"));
                std::fs::create_dir(&root).map_err(io("create a jail's root"))?;
                let uid = (crate::agent::jail::DEFAULT_UID_BASE + run as u32).to_string();
                let (root, tmp) = (root.display().to_string(), work.join("tmp").display().to_string());
                let args = ["--jail-root", &root, "--jail-uid", &uid, "--tmp-dir", &tmp];
                let out = jails
                    .spawn_in_new(|| boot_once(run, memory_mib, &args))
                    .map_err(|e| Error::Run { run, detail: format!("jail: {e}") })??;
                jail_us.push(field(&out, "jail_us").unwrap_or(0));
                jailed_ready.push(field(&out, "ready_ms").unwrap_or(0));
            }
        }
        boot_once(runs, 128, &["--idle-ms", "1000"])
    })();
    if jails.is_some() {
        let _ = std::fs::remove_dir_all(&work);
    }
    let idle = result?;
    let overhead = field(&idle, "vmm_overhead_kib")
        .ok_or_else(|| Error::Run { run: runs, detail: format!("no vmm_overhead_kib in {idle:?}") })?;
    let jail_line = if jails.is_some() {
        format!(
            "boot jail_ms p50={:.1} jailed_ready_ms p50={} ready_ratio={:.2}\n",
            median(&jail_us) as f64 / 1000.0,
            median(&jailed_ready),
            median(&jailed_ready) as f64 / median(&ready).max(1) as f64
        )
    } else {
        "boot jail_ms not measured: not root\n".to_owned()
    };
    Ok(format!(
        "boot ready_ms p50={} p90={} n={} exits={}\n{jail_line}boot vmm_overhead_kib={}\n",
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
        opt: None,
        tmp_mib: None,
        tmp_dir: PathBuf::from(dir),
        vsock_uds: Some(uds.clone()),
    };
    let mut vm = Vmm::start(&config, vmm::EmptyVm::create().map_err(vmm::Error::from)?, None)?;
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
/// kept-alive connection, warm throughput with 1 and 8 clients (on instances booted each on
/// its own, then on SnapStart clones of one snapshot), and the bare vsock round trip measured
/// in the same run.
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

/// Starts `ember serve` with its data in `dir`, plus `extra` arguments.
fn spawn_agent(dir: &Path, extra: &[&str]) -> Result<std::process::Child, Error> {
    let exe = std::env::current_exe().map_err(io("current_exe"))?;
    let mut cmd = Command::new(exe);
    cmd.arg("serve").arg("--socket").arg(dir.join("ember.sock"));
    if !extra.contains(&"--data-dir") {
        cmd.arg("--data-dir").arg(dir.join("data"));
    }
    cmd.arg("--run-dir")
        .arg(dir.join("run"))
        .args(["--init-timeout-s", "120"])
        .args(extra)
        .spawn()
        .map_err(|e| Error::Spawn("ember serve".into(), e))
}

fn bench_runtime() -> Result<tokio::runtime::Runtime, Error> {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().map_err(io("tokio runtime"))
}

fn read_function_zip(name: &str) -> Result<Vec<u8>, Error> {
    std::fs::read(vmm::default_guest_dir().join("functions").join(name)).map_err(io("read a test function's zip"))
}

fn invoke_in(dir: &Path, runs: usize, cold_runs: usize) -> Result<String, Error> {
    let zip = read_function_zip("rust.zip")?;
    let mut agent = spawn_agent(dir, &[])?;
    let result = bench_runtime()?.block_on(invoke_runs(&dir.join("ember.sock"), &zip, runs, cold_runs));
    let _ = agent.kill();
    let _ = agent.wait();
    let r = result?;
    let (vm, mut s) = echo_vm(dir)?;
    let (rtts, _) = round_trips(&vm, &mut s, runs)?;
    Ok(format!(
        "invoke warm_split in_instance_us p50={} outside_us p50={}\n\
         invoke cpu_us_per_invoke c1 {} c8 {}\n\
         invoke snapstart_clones rps_c1={} rps_c8={} cpu_us_per_invoke c1 {} c8 {}\n\
         invoke qualified alias_warm_us p50={} latest_warm_us p50={}\n\
         invoke cold_ms p50={} warm_us p50={} p99={} rps_c1={} rps_c8={} vsock_rtt_us={}\n",
        median(&r.in_instance_us),
        median(&r.outside_us),
        r.booted.cpu_c1,
        r.booted.cpu_c8,
        r.clones.rps_c1,
        r.clones.rps_c8,
        r.clones.cpu_c1,
        r.clones.cpu_c8,
        median(&r.alias_warm_us),
        median(&r.latest_warm_us),
        median(&r.cold_ms),
        median(&r.warm_us),
        percentile(&r.warm_us, 99),
        r.booted.rps_c1,
        r.booted.rps_c8,
        median(&rtts)
    ))
}

/// The host's CPU time, by kind, from the `cpu` line of `/proc/stat`: what the guests ran
/// (KVM counts it as `guest`), the rest of user time (the agent, the VMMs' own code, the bench
/// client), the kernel's (system calls, KVM's exits, interrupts) and idle. In ticks when read,
/// in microseconds per invoke once divided. Also what the hostile-guest suite waits on for a
/// quiet host.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct CpuTimes {
    /// What the guests ran (`guest` and `guest_nice`).
    pub guest: u64,
    /// The rest of user time (`user` and `nice` without the guests').
    pub user: u64,
    /// The kernel's: `system`, `irq` and `softirq`.
    pub kernel: u64,
    /// Idle and iowait.
    pub idle: u64,
}

impl CpuTimes {
    /// The host's times so far, in ticks.
    pub fn read() -> Result<Self, Error> {
        let stat = std::fs::read_to_string("/proc/stat").map_err(io("read /proc/stat"))?;
        Self::parse(&stat).ok_or_else(|| Error::Io("parse /proc/stat", std::io::ErrorKind::InvalidData.into()))
    }

    fn parse(stat: &str) -> Option<Self> {
        let line = stat.lines().find(|l| l.starts_with("cpu "))?;
        let f: Vec<u64> = line.split_whitespace().skip(1).map(|v| v.parse().ok()).collect::<Option<_>>()?;
        let at = |i: usize| f.get(i).copied().unwrap_or(0);
        // user nice system idle iowait irq softirq steal guest guest_nice; user and nice
        // include guest and guest_nice.
        let guest = at(8) + at(9);
        Some(CpuTimes {
            guest,
            user: (at(0) + at(1)).saturating_sub(guest),
            kernel: at(2) + at(5) + at(6),
            idle: at(3) + at(4),
        })
    }

    /// The time not idle (guests, user and kernel; not steal).
    pub fn busy(&self) -> u64 {
        self.guest + self.user + self.kernel
    }

    /// These times and `other`'s together.
    fn plus(&self, other: &Self) -> Self {
        CpuTimes {
            guest: self.guest + other.guest,
            user: self.user + other.user,
            kernel: self.kernel + other.kernel,
            idle: self.idle + other.idle,
        }
    }

    /// The times between `before` and these.
    pub fn since(&self, before: &Self) -> Self {
        CpuTimes {
            guest: self.guest.saturating_sub(before.guest),
            user: self.user.saturating_sub(before.user),
            kernel: self.kernel.saturating_sub(before.kernel),
            idle: self.idle.saturating_sub(before.idle),
        }
    }

    /// Ticks over `invokes` invokes, as microseconds per invoke.
    fn per_invoke(&self, invokes: u64) -> Self {
        let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok().flatten().unwrap_or(100).max(1) as u64;
        let us = |ticks: u64| ticks * 1_000_000 / hz / invokes.max(1);
        CpuTimes { guest: us(self.guest), user: us(self.user), kernel: us(self.kernel), idle: us(self.idle) }
    }
}

impl std::fmt::Display for CpuTimes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "guest={} user={} kernel={} idle={}", self.guest, self.user, self.kernel, self.idle)
    }
}

/// What `bench invoke` measured through the agent.
struct InvokeRuns {
    cold_ms: Vec<u64>,
    warm_us: Vec<u64>,
    /// Warm invokes per second with one client and eight, and the host's CPU time per warm
    /// invoke, on booted instances...
    booted: Scaling,
    /// ...and on instances restored from one SnapStart snapshot.
    clones: Scaling,
    /// Of a warm invoke, the time in the instance: REPORT's Duration, from the event's hand-off
    /// to the instance's actor to its answer (the VMM, the vsock, the guest and its runtime).
    in_instance_us: Vec<u64>,
    /// The rest: the client, HTTP on the Unix socket and the agent.
    outside_us: Vec<u64>,
    /// Warm invokes through an alias that splits between two versions...
    alias_warm_us: Vec<u64>,
    /// ...and, interleaved with them, of the same function's `$LATEST`.
    latest_warm_us: Vec<u64>,
}

/// How long `bench restore` lets the agent rest before each counted invoke, restored or cold:
/// long enough for the last instance to be torn down and the spare it took to be replaced
/// (~70 ms of CPU in the emulated host, at the lowest weight). Back to back on one CPU, that
/// work lands in the next start instead, which then often finds no spare and starts a VMM
/// process itself: the bench would measure the queue for the CPU, not the start.
const AT_REST: Duration = Duration::from_millis(500);

/// The memory budget `bench restore` fills with idle restored instances, in KiB.
const DENSITY_BUDGET_KIB: u64 = 16 << 20;

/// What `bench restore` measured for one runtime.
struct RestoreRuns {
    invoke_ms: Vec<u64>,
    restore_ms: Vec<u64>,
    cold_ms: Vec<u64>,
}

/// `ember bench restore`: SnapStart through a real agent. Per runtime (provided, then
/// python3.11), a 1 KiB echo at 128 MiB: invokes that each land on a freshly restored instance
/// (the agent keeps no idle instance, and every answer's REPORT must show a restore), the
/// restore alone (REPORT's Restore Duration), and cold invokes of the same function without
/// SnapStart, each counted invoke [`AT_REST`] after the last. Then the snapshot time of a
/// 1024 MiB function, the restore at 2048 MiB, and, on a second agent, provisioned concurrency of up to `density_max` idle restored 128 MiB instances
/// (after one invocation, so that they load its working set): their private memory (each VMM
/// process's Private_Dirty: its own memory plus the guest pages it wrote) and how many fit a
/// 16 GiB budget. Both runtimes' restores are measured again on a third agent without prefetch
/// (`--no-restore-prefetch`); every agent's first restore of a snapshot is not counted (with
/// prefetch it records the working set).
pub fn restore(runs: usize, cold_runs: usize, density_max: u32) -> Result<String, Error> {
    if runs == 0 || cold_runs == 0 || density_max == 0 {
        return Err(Error::NoRuns);
    }
    let dir = std::env::temp_dir().join(format!("ember-bench-restore-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("a")).map_err(io("create temp dir"))?;
    std::fs::create_dir_all(dir.join("b")).map_err(io("create temp dir"))?;
    std::fs::create_dir_all(dir.join("c")).map_err(io("create temp dir"))?;
    let result = restore_in(&dir, runs, cold_runs, density_max);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn restore_in(dir: &Path, runs: usize, cold_runs: usize, density_max: u32) -> Result<String, Error> {
    let rt = bench_runtime()?;
    let functions = [
        ("provided.al2023", "bootstrap", read_function_zip("rust.zip")?),
        ("python3.11", "handler.echo", read_function_zip("python.zip")?),
    ];
    // Agent A keeps no idle instance: every invoke starts a new one.
    let a = dir.join("a");
    let mut agent = spawn_agent(&a, &["--keep-alive-s", "0"])?;
    let measured = rt.block_on(async {
        let mut conn = AgentConn::open(&a.join("ember.sock")).await?;
        let mut per_runtime = Vec::new();
        for (runtime, handler, zip) in &functions {
            per_runtime.push(restore_runs(&mut conn, runtime, handler, zip, 128, runs, cold_runs).await?);
        }
        let (provided, _, zip) = &functions[0];
        // Snapshot creation at 1024 MiB, as the agent timed it.
        restore_runs(&mut conn, provided, "bootstrap", zip, 1024, 1, 0).await?;
        let meta = std::fs::read(a.join("data/snapshots/snap-1024/1/meta.json")).map_err(io("read meta.json"))?;
        let meta: serde_json::Value = serde_json::from_slice(&meta).map_err(|e| Error::Io("meta.json", e.into()))?;
        let snapshot_ms = meta["snapshot_ms"].as_u64().unwrap_or(0);
        let big = restore_runs(&mut conn, provided, "bootstrap", zip, 2048, runs, 0).await?;
        Ok::<_, Error>((per_runtime, snapshot_ms, big))
    });
    let _ = agent.kill();
    let _ = agent.wait();
    let (per_runtime, snapshot_ms, big) = measured?;
    let ws_pages = |tag: &str| -> Result<u64, Error> {
        let snap = a.join("data/snapshots").join(format!("snap-{tag}")).join("1");
        let (_, id) = vmm::snapshot::read_state_and_id::<vmm::snapshot::VmSnapshot>(&snap.join("state"))
            .map_err(|e| Error::Run { run: 0, detail: e.to_string() })?;
        let ws = vmm::working_set::WorkingSet::read(&snap.join(vmm::working_set::FILE), &id, u64::MAX)
            .map_err(|e| Error::Run { run: 0, detail: format!("no working set was recorded: {e}") })?;
        Ok(ws.pages())
    };
    let ws = [ws_pages("provided")?, ws_pages("python3")?];

    // Agent C: the same restores without prefetch.
    let c = dir.join("c");
    let mut agent = spawn_agent(&c, &["--keep-alive-s", "0", "--no-restore-prefetch"])?;
    let without = rt.block_on(async {
        let mut conn = AgentConn::open(&c.join("ember.sock")).await?;
        let mut per_runtime = Vec::new();
        for (runtime, handler, zip) in &functions {
            per_runtime.push(restore_runs(&mut conn, runtime, handler, zip, 128, runs, 0).await?);
        }
        Ok::<_, Error>(per_runtime)
    });
    let _ = agent.kill();
    let _ = agent.wait();
    let without = without?;

    // Agent B holds idle restored instances: provisioned concurrency.
    let b = dir.join("b");
    let max = (density_max + 1).to_string();
    let mut agent = spawn_agent(&b, &["--keep-alive-s", "3600", "--max-instances", &max, "--min-unreserved", "0"])?;
    let agent_pid = agent.id();
    let density = rt.block_on(density_runs(&b, agent_pid, &functions[0].2, density_max));
    let _ = agent.kill();
    let _ = agent.wait();
    let (idle_kib, held) = density?;

    let prefault = if vmm::kvm_pre_faults() { "kvm" } else { "populate" };
    let mut out = String::new();
    for (i, (runtime, _, _)) in functions.iter().enumerate() {
        out.push_str(&format!(
            "restore prefetch runtime={runtime} off_invoke_ms p50={} on_invoke_ms p50={} off_restore_ms p50={} \
             on_restore_ms p50={} ws_pages={} prefault={prefault}\n",
            median(&without[i].invoke_ms),
            median(&per_runtime[i].invoke_ms),
            median(&without[i].restore_ms),
            median(&per_runtime[i].restore_ms),
            ws[i],
        ));
    }
    for ((runtime, _, _), m) in functions.iter().zip(&per_runtime) {
        out.push_str(&format!("restore runtime={runtime}\n"));
        out.push_str(&format!(
            "restore invoke_ms p50={} p90={} restore_ms p50={} cold_invoke_ms p50={} snapshot_ms={snapshot_ms} \
             idle_rss_kib={idle_kib} density={held}\n",
            median(&m.invoke_ms),
            percentile(&m.invoke_ms, 90),
            median(&m.restore_ms),
            median(&m.cold_ms),
        ));
    }
    // The python3.11 line must stay last; the memory-size line goes before the runtime lines.
    let by_size = format!(
        "restore restore_ms_by_memory 128_mib_p50={} 2048_mib_p50={}\n",
        median(&per_runtime[0].restore_ms),
        median(&big.restore_ms)
    );
    Ok(by_size + &out)
}

/// Creates a SnapStart function (and, with `cold_runs`, the same without SnapStart) and
/// measures invokes on freshly started instances of each.
async fn restore_runs(
    conn: &mut AgentConn,
    runtime: &str,
    handler: &str,
    zip: &[u8],
    memory_mib: u32,
    runs: usize,
    cold_runs: usize,
) -> Result<RestoreRuns, Error> {
    use base64::Engine as _;
    let zip = base64::engine::general_purpose::STANDARD.encode(zip);
    let tag = if memory_mib == 128 {
        runtime.split('.').next().unwrap_or(runtime).to_owned()
    } else {
        memory_mib.to_string()
    };
    let create = |name: &str, snap: bool| {
        serde_json::to_vec(&serde_json::json!({
            "FunctionName": name, "Runtime": runtime, "Handler": handler, "MemorySize": memory_mib,
            "Role": "arn:aws:iam::000000000000:role/bench", "Code": {"ZipFile": zip}, "Timeout": 60,
            "SnapStart": {"ApplyOn": if snap { "PublishedVersions" } else { "None" }},
        }))
        .expect("serializes")
    };
    let event = serde_json::to_vec(&serde_json::json!({ "data": "x".repeat(RTT_BYTES - 11) })).expect("serializes");
    let tail = &[("X-Amz-Log-Type", "Tail")];
    let mut result = RestoreRuns { invoke_ms: Vec::new(), restore_ms: Vec::new(), cold_ms: Vec::new() };

    let name = format!("snap-{tag}");
    conn.call("POST", "/2015-03-31/functions", &create(&name, true)).await?;
    // Publishing makes the snapshot; the version's cold starts restore it.
    let version = publish_active(conn, &name).await?;
    let path = format!("/2015-03-31/functions/{name}:{version}/invocations");
    // The first restore of the snapshot records its working set (with prefetch on; without,
    // it is a restore like the others): not counted, so that every counted one loads it.
    conn.call_with("POST", &path, tail, &event).await?;
    let mut attempts = 0;
    while result.invoke_ms.len() < runs {
        attempts += 1;
        tokio::time::sleep(AT_REST).await;
        let started = Instant::now();
        let (headers, _) = conn.call_with("POST", &path, tail, &event).await?;
        let took = started.elapsed().as_millis() as u64;
        match report_field(&headers, "Restore Duration: ") {
            Some(restore) => {
                result.invoke_ms.push(took);
                result.restore_ms.push(restore);
            }
            // An idle instance took it after all (its keep-alive had not fired yet): not a
            // restore, not counted.
            None if attempts < 3 * runs => {}
            None => return Err(Error::Run { run: attempts, detail: "no invoke landed on a restored instance".into() }),
        }
    }

    if cold_runs > 0 {
        let name = format!("cold-{tag}");
        conn.call("POST", "/2015-03-31/functions", &create(&name, false)).await?;
        let path = format!("/2015-03-31/functions/{name}/invocations");
        while result.cold_ms.len() < cold_runs {
            tokio::time::sleep(AT_REST).await;
            let started = Instant::now();
            let (headers, _) = conn.call_with("POST", &path, tail, &event).await?;
            if report_field(&headers, "Init Duration: ").is_some() {
                result.cold_ms.push(started.elapsed().as_millis() as u64);
            }
        }
    }
    Ok(result)
}

/// A `<label><ms> ms` value of the REPORT line in a response's log tail, rounded.
fn report_field(headers: &hyper::HeaderMap, label: &str) -> Option<u64> {
    report_ms(headers, label).map(|ms| ms.round() as u64)
}

/// A `<label><ms> ms` value of the REPORT line in a response's log tail.
fn report_ms(headers: &hyper::HeaderMap, label: &str) -> Option<f64> {
    use base64::Engine as _;
    let b64 = headers.get("x-amz-log-result")?.to_str().ok()?;
    let tail = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
    let tail = String::from_utf8_lossy(&tail);
    let rest = &tail[tail.find(label)? + label.len()..];
    rest.split_whitespace().next()?.parse().ok()
}

/// Provisions up to `max` idle restored 128 MiB instances on the agent (pid `agent_pid`) and
/// returns the median private memory of one, in KiB, and how many fit the budget.
async fn density_runs(dir: &Path, agent_pid: u32, zip: &[u8], max: u32) -> Result<(u64, u32), Error> {
    use base64::Engine as _;
    let mut conn = AgentConn::open(&dir.join("ember.sock")).await?;
    let zip = base64::engine::general_purpose::STANDARD.encode(zip);
    let create = serde_json::to_vec(&serde_json::json!({
        "FunctionName": "dense", "Runtime": "provided.al2023", "Handler": "bootstrap", "MemorySize": 128,
        "Role": "arn:aws:iam::000000000000:role/bench", "Code": {"ZipFile": zip}, "Timeout": 60,
        "SnapStart": {"ApplyOn": "PublishedVersions"},
    }))
    .expect("serializes");
    conn.call("POST", "/2015-03-31/functions", &create).await?;
    // Publishing makes the snapshot, so that every provisioned instance is a restore; one
    // invocation records its working set, which every provisioned restore then loads.
    let version = publish_active(&mut conn, "dense").await?;
    conn.call("POST", &format!("/2015-03-31/functions/dense:{version}/invocations"), b"{}").await?;
    let path = &format!("/2019-09-30/functions/dense/provisioned-concurrency?Qualifier={version}");
    let put = serde_json::to_vec(&serde_json::json!({ "ProvisionedConcurrentExecutions": max })).expect("serializes");
    conn.call("PUT", path, &put).await?;
    // Wait for it, stopping early once the instances use up the budget.
    let private = loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let status: serde_json::Value = serde_json::from_slice(&conn.call("GET", path, b"").await?)
            .map_err(|e| Error::Io("provisioned concurrency status", e.into()))?;
        let private = vmm_private_kib(agent_pid);
        let total: u64 = private.iter().sum();
        match status["Status"].as_str() {
            Some("READY") => break private,
            Some("FAILED") => {
                eprintln!("ember: bench: provisioned concurrency stopped: {status}");
                break private;
            }
            _ if total > DENSITY_BUDGET_KIB => break private,
            _ => {}
        }
    };
    if private.is_empty() {
        return Err(Error::Run { run: 0, detail: "no idle instance to measure".into() });
    }
    // All of them were held at once; count how many fit the budget, smallest first.
    let mut sorted = private;
    sorted.sort_unstable();
    let mut used = 0;
    let held = sorted
        .iter()
        .take_while(|kib| {
            used += **kib;
            used <= DENSITY_BUDGET_KIB
        })
        .count() as u32;
    Ok((median(&sorted), held))
}

/// The Private_Dirty of every `ember vmm` child of `agent_pid` that runs a VM (not the spares
/// waiting for one), in KiB.
fn vmm_private_kib(agent_pid: u32) -> Vec<u64> {
    crate::vmm::process::running_vmms(agent_pid)
        .into_iter()
        .filter_map(crate::agent::instance::private_dirty_kib)
        .collect()
}

/// A kept-alive HTTP/1.1 connection to the agent.
struct AgentConn(hyper::client::conn::http1::SendRequest<http_body_util::Full<bytes::Bytes>>);

impl AgentConn {
    /// A connection to a TCP listener of the agent (its function URLs).
    async fn open_tcp(addr: std::net::SocketAddr) -> Result<AgentConn, Error> {
        let stream =
            tokio::net::TcpStream::connect(addr).await.map_err(|e| Error::Io("connect to the URL listener", e))?;
        let _ = stream.set_nodelay(true);
        let (sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| Error::Io("HTTP handshake", std::io::Error::other(e)))?;
        tokio::spawn(conn);
        Ok(AgentConn(sender))
    }

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
        self.call_with(method, path, &[], body).await.map(|(_, body)| body)
    }

    /// [`AgentConn::call`] with request headers; returns the response headers too.
    async fn call_with(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<(hyper::HeaderMap, Vec<u8>), Error> {
        use http_body_util::BodyExt;
        let mut req = hyper::Request::builder().method(method).uri(path).header("host", "localhost");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(http_body_util::Full::new(bytes::Bytes::copy_from_slice(body))).expect("request builds");
        let failed = |e: String| Error::Run { run: 0, detail: format!("{method} {path}: {e}") };
        // The connection takes the next request only once it has finished with the last.
        self.0.ready().await.map_err(|e| failed(e.to_string()))?;
        let resp = self.0.send_request(req).await.map_err(|e| failed(e.to_string()))?;
        let status = resp.status();
        let function_error = resp.headers().contains_key("x-amz-function-error");
        let headers = resp.headers().clone();
        let body = resp.into_body().collect().await.map_err(|e| failed(e.to_string()))?.to_bytes().to_vec();
        if !status.is_success() || function_error {
            return Err(failed(format!("{status}: {}", String::from_utf8_lossy(&body))));
        }
        Ok((headers, body))
    }
}

/// The requests that `conns` (one client each) complete together in a 3 s window, each
/// sending `body` to `path` again and again: per second, in all, and the connections back.
async fn requests_per_s(
    conns: Vec<AgentConn>,
    path: &'static str,
    headers: &'static [(&'static str, &'static str)],
    body: &[u8],
) -> Result<(u64, u64, Vec<AgentConn>), Error> {
    let window = Duration::from_secs(3);
    let started = Instant::now();
    let workers: Vec<_> = conns
        .into_iter()
        .map(|mut c| {
            let body = body.to_vec();
            tokio::spawn(async move {
                let mut n = 0u64;
                while started.elapsed() < window {
                    c.call_with("POST", path, headers, &body).await?;
                    n += 1;
                }
                Ok::<_, Error>((n, c))
            })
        })
        .collect();
    let (mut total, mut conns) = (0, Vec::new());
    for w in workers {
        let (n, c) = w.await.map_err(|e| Error::Io("join", std::io::Error::other(e)))??;
        total += n;
        conns.push(c);
    }
    Ok(((total as f64 / started.elapsed().as_secs_f64()) as u64, total, conns))
}

/// One client's warm invokes of `path`, after warming its instance: their latencies.
async fn one_client(conn: &mut AgentConn, path: &str, event: &[u8], runs: usize) -> Result<Vec<u64>, Error> {
    for _ in 0..runs.min(100) {
        conn.call("POST", path, event).await?;
    }
    let mut latencies = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t = Instant::now();
        conn.call("POST", path, event).await?;
        latencies.push(t.elapsed().as_micros() as u64);
    }
    Ok(latencies)
}

/// Warm invokes of `path` per second with one client and with eight, and the host's CPU time
/// per invoke in each case. First brings up eight instances (eight overlapping slow invokes)
/// and warms each (a new instance's first invokes page its runtime in); then alternates a
/// window of one client (on one of those instances: the agent takes the most recently used)
/// with a window of all eight, three times, and takes each side's median. Alternating, so
/// that a passing event on the host (on the emulated one, QEMU flushing its whole cache of
/// translated code once it fills) cannot land on one side only.
async fn scaling(socket: &Path, path: &'static str, event: &[u8], runs: usize) -> Result<Scaling, Error> {
    let slow = serde_json::to_vec(&serde_json::json!({ "sleep_ms": 2000 })).expect("serializes");
    let joined = |e: tokio::task::JoinError| Error::Io("join", std::io::Error::other(e));
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
        conns.push(w.await.map_err(joined)??);
    }
    let warmups: Vec<_> = conns
        .into_iter()
        .map(|mut c| {
            let event = event.to_vec();
            let n = runs.min(100);
            tokio::spawn(async move {
                for _ in 0..n {
                    c.call("POST", path, &event).await?;
                }
                Ok::<_, Error>(c)
            })
        })
        .collect();
    let mut conns = Vec::new();
    for w in warmups {
        conns.push(w.await.map_err(joined)??);
    }
    let (mut sides, mut cpu, mut invokes) = ([Vec::new(), Vec::new()], [CpuTimes::default(); 2], [0u64; 2]);
    for _ in 0..3 {
        for (side, clients) in [(0, 1), (1, 8)] {
            let taken = conns.split_off(conns.len() - clients);
            let before = CpuTimes::read()?;
            let (rps, n, mut back) = requests_per_s(taken, path, &[], event).await?;
            cpu[side] = cpu[side].plus(&CpuTimes::read()?.since(&before));
            invokes[side] += n;
            sides[side].push(rps);
            conns.append(&mut back);
        }
    }
    Ok(Scaling {
        rps_c1: median(&sides[0]),
        rps_c8: median(&sides[1]),
        cpu_c1: cpu[0].per_invoke(invokes[0]),
        cpu_c8: cpu[1].per_invoke(invokes[1]),
    })
}

/// What [`scaling`] measured.
struct Scaling {
    rps_c1: u64,
    rps_c8: u64,
    cpu_c1: CpuTimes,
    cpu_c8: CpuTimes,
}

/// Publishes `function`'s `$LATEST` and waits until the version is `Active` (a SnapStart
/// version is `Pending` while its snapshot is made). Returns the version's number.
async fn publish_active(conn: &mut AgentConn, function: &str) -> Result<String, Error> {
    let parse = |body: Vec<u8>| -> Result<serde_json::Value, Error> {
        serde_json::from_slice(&body).map_err(|e| Error::Io("a version's configuration", e.into()))
    };
    let published = parse(conn.call("POST", &format!("/2015-03-31/functions/{function}/versions"), b"{}").await?)?;
    let version = published["Version"].as_str().unwrap_or_default().to_owned();
    let path = format!("/2015-03-31/functions/{function}/configuration?Qualifier={version}");
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let config = parse(conn.call("GET", &path, b"").await?)?;
        match config["State"].as_str() {
            Some("Active") => return Ok(version),
            Some("Pending") if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(200)).await,
            _ => {
                return Err(Error::Run {
                    run: 0,
                    detail: format!("{function}:{version} did not become Active: {config}"),
                })
            }
        }
    }
}

async fn invoke_runs(socket: &Path, zip: &[u8], runs: usize, cold_runs: usize) -> Result<InvokeRuns, Error> {
    use base64::Engine as _;
    let mut conn = AgentConn::open(socket).await?;
    let zip = base64::engine::general_purpose::STANDARD.encode(zip);
    let create = |name: &str, snap: bool| {
        serde_json::to_vec(&serde_json::json!({
            "FunctionName": name, "Runtime": "provided.al2023", "Handler": "bootstrap",
            "Role": "arn:aws:iam::000000000000:role/bench", "Code": {"ZipFile": zip}, "Timeout": 60,
            // One whole vCPU's share (Lambda's 1769 MB), so that what is measured is Ember's
            // overhead and not the CPU cap of a small function.
            "MemorySize": 1769,
            "SnapStart": {"ApplyOn": if snap { "PublishedVersions" } else { "None" }},
        }))
        .expect("serializes")
    };
    let event = serde_json::to_vec(&serde_json::json!({ "data": "x".repeat(RTT_BYTES - 11) })).expect("serializes");

    let mut cold = Vec::with_capacity(cold_runs);
    for i in 0..cold_runs {
        let name = format!("cold{i}");
        conn.call("POST", "/2015-03-31/functions", &create(&name, false)).await?;
        let started = Instant::now();
        conn.call("POST", &format!("/2015-03-31/functions/{name}/invocations"), &event).await?;
        cold.push(started.elapsed().as_millis() as u64);
        conn.call("DELETE", &format!("/2015-03-31/functions/{name}"), b"").await?;
    }

    conn.call("POST", "/2015-03-31/functions", &create("warm", false)).await?;
    let path = "/2015-03-31/functions/warm/invocations";
    let warm = one_client(&mut conn, path, &event, runs).await?;

    // The split of a warm invoke, on further invokes that ask for the log tail (which the ones
    // timed above do not, to time exactly what a client that does not ask pays).
    let tail = &[("X-Amz-Log-Type", "Tail")];
    let (mut in_instance_us, mut outside_us) = (Vec::new(), Vec::new());
    for _ in 0..runs.min(50) {
        let t = Instant::now();
        let (headers, _) = conn.call_with("POST", path, tail, &event).await?;
        let total = t.elapsed().as_micros() as u64;
        let inside = report_ms(&headers, "\tDuration: ")
            .ok_or_else(|| Error::Run { run: 0, detail: "a warm invoke's REPORT has no Duration".into() })?;
        let inside = (inside * 1000.0).round() as u64;
        in_instance_us.push(inside);
        outside_us.push(total.saturating_sub(inside));
    }

    // The same function through a weighted alias (versions 1 and 2, half each: the alias
    // lookup, the weighted pick and the version's own instances) and as $LATEST, interleaved so
    // that both see the same host.
    publish_active(&mut conn, "warm").await?;
    let env = serde_json::to_vec(&serde_json::json!({ "Environment": { "Variables": { "BENCH": "2" } } }))
        .expect("serializes");
    conn.call("PUT", "/2015-03-31/functions/warm/configuration", &env).await?;
    publish_active(&mut conn, "warm").await?;
    let alias = serde_json::to_vec(&serde_json::json!({
        "Name": "live", "FunctionVersion": "1", "RoutingConfig": { "AdditionalVersionWeights": { "2": 0.5 } },
    }))
    .expect("serializes");
    conn.call("POST", "/2015-03-31/functions/warm/aliases", &alias).await?;
    let aliased = "/2015-03-31/functions/warm:live/invocations";
    for _ in 0..runs.min(100) {
        conn.call("POST", aliased, &event).await?;
        conn.call("POST", path, &event).await?;
    }
    let (mut alias_warm_us, mut latest_warm_us) = (Vec::with_capacity(runs), Vec::with_capacity(runs));
    for _ in 0..runs {
        let t = Instant::now();
        conn.call("POST", aliased, &event).await?;
        alias_warm_us.push(t.elapsed().as_micros() as u64);
        let t = Instant::now();
        conn.call("POST", path, &event).await?;
        latest_warm_us.push(t.elapsed().as_micros() as u64);
    }

    let booted = scaling(socket, path, &event, runs).await?;
    // A fresh connection: the agent closes one left idle for 30 s, as this one was meanwhile.
    let mut conn = AgentConn::open(socket).await?;
    conn.call("DELETE", "/2015-03-31/functions/warm", b"").await?;

    // The same two counts on SnapStart clones: every instance restored from one snapshot of
    // the same function, so that all of them run their kernel and runtime from the same host
    // pages. Beside the counts above, this separates what eight clients cost the agent from
    // what eight guests with their own copies of the same code cost the host (on the emulated
    // host, QEMU translates each copy's code anew).
    conn.call("POST", "/2015-03-31/functions", &create("clones", true)).await?;
    publish_active(&mut conn, "clones").await?;
    let clones = "/2015-03-31/functions/clones:1/invocations";
    let clones = scaling(socket, clones, &event, runs).await?;
    Ok(InvokeRuns {
        cold_ms: cold,
        warm_us: warm,
        booted,
        clones,
        in_instance_us,
        outside_us,
        alias_warm_us,
        latest_warm_us,
    })
}

/// `ember bench events`: asynchronous invokes through a real agent (its data dir under
/// `data_dir` when given: on a real disk, so that the fsync an accept waits for is the disk's), on the provided runtime's
/// echo at one whole vCPU's share: the time to accept an event (committed before the 202) one
/// client at a time, accepts per second with one client and with eight (commits are grouped),
/// and the time from acceptance to the function's start on a warm instance (the event's START
/// line in the function's log, polled); then warm requests to the function's URL beside warm
/// direct invokes of it. Accepts are timed while the function's one instance is busy, so that
/// the queue only grows and what is timed is the accept path alone.
pub fn events(runs: usize, data_dir: Option<&Path>, amqp_url: &str) -> Result<String, Error> {
    if runs == 0 {
        return Err(Error::NoRuns);
    }
    let dir = std::env::temp_dir().join(format!("ember-bench-events-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(io("create temp dir"))?;
    let data = match data_dir {
        Some(d) => d.join(format!("ember-bench-events-{}", std::process::id())),
        None => dir.join("data"),
    };
    let result = (|| -> Result<EventRuns, Error> {
        let zip = read_function_zip("rust.zip")?;
        let url_addr = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(io("pick a port for the URL listener"))?;
        let data_arg = data.to_string_lossy().into_owned();
        let url_listen = url_addr.to_string();
        let mut agent =
            spawn_agent(&dir, &["--url-listen", &url_listen, "--data-dir", &data_arg, "--amqp-url", amqp_url])?;
        let runtime = bench_runtime()?;
        let result = runtime.block_on(event_runs(&dir.join("ember.sock"), url_addr, amqp_url, &zip, runs));
        let _ = agent.kill();
        let _ = agent.wait();
        let mut r = result?;
        let queue_data = data.with_extension("queue");
        let queue = runtime.block_on(queue_only(&queue_data, &dir, &zip, runs));
        let _ = std::fs::remove_dir_all(&queue_data);
        (r.queue_c1, r.queue_c8) = queue?;
        Ok(r)
    })();
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&data);
    let r = result?;
    Ok(format!(
        "events queue_only accepts_per_s_c1={} accepts_per_s_c8={}\n\
         events async_accept_us p50={} p99={} accepts_per_s_c1={} accepts_per_s_c8={} async_start_ms p50={} \
         esm_msgs_per_s={} url_warm_us p50={} invoke_warm_us p50={}\n",
        r.queue_c1,
        r.queue_c8,
        median(&r.accept_us),
        percentile(&r.accept_us, 99),
        r.accepts_c1,
        r.accepts_c8,
        median(&r.start_ms),
        r.esm_msgs_per_s,
        median(&r.url_us),
        median(&r.invoke_us),
    ))
}

/// What `bench events` measured.
struct EventRuns {
    accept_us: Vec<u64>,
    accepts_c1: u64,
    accepts_c8: u64,
    start_ms: Vec<u64>,
    /// Messages per second through an event source mapping (`BatchSize` 100).
    esm_msgs_per_s: u64,
    /// Warm requests to the function's URL (POST of the same event as the direct invokes)...
    url_us: Vec<u64>,
    /// ...and, interleaved with them, warm direct invokes.
    invoke_us: Vec<u64>,
    /// The durable queue alone, in process: accepts per second with one task and with eight.
    queue_c1: u64,
    queue_c8: u64,
}

/// The durable queue alone, in this process, without HTTP: accepts per second one at a time
/// and from eight tasks, on a data dir of its own on the same disk as the agent's, for a
/// function held at reserved concurrency 0 (so that nothing runs: each attempt is throttled
/// and backs off). What the store's grouped commits do, apart from the HTTP both ends spend
/// CPU on.
async fn queue_only(data: &Path, dir: &Path, zip: &[u8], runs: usize) -> Result<(u64, u64), Error> {
    use crate::agent::invoke::{queue::AsyncQueue, retry::DEFAULT_RETRY_DELAYS, Invoker};
    use crate::agent::pool::launch::{VmmConfig, VmmLauncher};
    use crate::agent::pool::{Pool, PoolConfig};
    use crate::agent::store::{queue::NewEvent, NewFunction, Store};
    use std::sync::Arc;
    let failed = |what: &str, e: String| Error::Run { run: 0, detail: format!("{what}: {e}") };
    let store = Arc::new(Store::open(data).map_err(|e| failed("open a store", e.to_string()))?);
    let function = NewFunction {
        name: "qsink".into(),
        runtime: "provided.al2023".into(),
        handler: "bootstrap".into(),
        role: "arn:aws:iam::000000000000:role/bench".into(),
        description: String::new(),
        memory_mib: 128,
        timeout_s: 3,
        ephemeral_mib: 512,
        environment: Default::default(),
        snap_start: false,
        dead_letter: None,
        layers: Vec::new(),
        tags: Default::default(),
    };
    let s = store.clone();
    let zip = zip.to_vec();
    tokio::task::spawn_blocking(move || s.create(function, &zip, false))
        .await
        .map_err(|e| failed("create", e.to_string()))?
        .map_err(|e| failed("create", e.to_string()))?;
    let logs = crate::agent::logs::Logs::open(&data.join("logs")).map_err(io("open logs"))?;
    let snapshots = crate::agent::snapshots::Snapshots::open(&data.join("snapshots"))
        .map_err(|e| failed("open snapshots", e.to_string()))?;
    let exe = std::env::current_exe().map_err(io("current_exe"))?;
    let spares =
        crate::agent::instance::Spares::new(exe, None, 0, Arc::new(crate::agent::cgroup::CpuShares::off()), None);
    let vmm = VmmConfig {
        guest_dir: vmm::default_guest_dir(),
        run_dir: dir.join("queue-run"),
        init_timeout: Duration::from_secs(10),
        keep_alive: Duration::from_secs(10),
        console_dir: None,
        prefetch: false,
    };
    let config = PoolConfig { max_instances: 8, max_boots: 1, idle_memory_kib: 1 << 20 };
    let pool = Pool::new(config, logs, snapshots, Arc::new(VmmLauncher::new(vmm, spares)));
    pool.set_reserved("qsink", Some(0));
    let invoker = Invoker::new(store.clone(), pool.clone());
    let queue = AsyncQueue::start(store, invoker, pool, DEFAULT_RETRY_DELAYS, Default::default())
        .map_err(|e| failed("start the queue", e.to_string()))?;
    let payload = serde_json::to_vec(&serde_json::json!({ "data": "x".repeat(RTT_BYTES - 11) })).expect("serializes");
    let event = move || NewEvent {
        request_id: crate::agent::ids::random_uuid(),
        function: "qsink".into(),
        qualifier: None,
        payload: payload.clone(),
        client_context: None,
        accepted_ms: crate::agent::ids::unix_ms(),
    };
    let started = Instant::now();
    for _ in 0..runs {
        queue.accept(event()).await.map_err(|e| failed("accept", e.to_string()))?;
    }
    let c1 = (runs as f64 / started.elapsed().as_secs_f64()) as u64;
    let started = Instant::now();
    let per_task = runs.div_ceil(8).max(1);
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let (queue, event) = (queue.clone(), event.clone());
            tokio::spawn(async move {
                for _ in 0..per_task {
                    queue.accept(event()).await.map_err(|e| e.to_string())?;
                }
                Ok::<(), String>(())
            })
        })
        .collect();
    for t in tasks {
        t.await.map_err(|e| failed("join", e.to_string()))?.map_err(|e| failed("accept", e))?;
    }
    let c8 = ((per_task * 8) as f64 / started.elapsed().as_secs_f64()) as u64;
    Ok((c1, c8))
}

/// The request id of an answer.
fn request_id(headers: &hyper::HeaderMap) -> String {
    headers.get("x-amzn-requestid").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned()
}

async fn event_runs(
    socket: &Path,
    url_addr: std::net::SocketAddr,
    amqp_url: &str,
    zip: &[u8],
    runs: usize,
) -> Result<EventRuns, Error> {
    use base64::Engine as _;
    // Nothing is timed until the broker is up: its start (about 100 s of CPU in the emulated
    // host) would weigh on whatever ran beside it.
    drop(broker_channel(amqp_url).await?);
    let mut conn = AgentConn::open(socket).await?;
    let create = serde_json::to_vec(&serde_json::json!({
        "FunctionName": "sink", "Runtime": "provided.al2023", "Handler": "bootstrap",
        "Role": "arn:aws:iam::000000000000:role/bench",
        "Code": {"ZipFile": base64::engine::general_purpose::STANDARD.encode(zip)},
        "Timeout": 300, "MemorySize": 1769,
    }))
    .expect("serializes");
    conn.call("POST", "/2015-03-31/functions", &create).await?;
    let path = "/2015-03-31/functions/sink/invocations";
    let event = serde_json::to_vec(&serde_json::json!({ "data": "x".repeat(RTT_BYTES - 11) })).expect("serializes");
    // A warm instance first.
    conn.call("POST", path, &event).await?;
    let async_header = &[("X-Amz-Invocation-Type", "Event")];

    // From acceptance to the function's start, one event at a time on the idle warm instance.
    let logs = "/2015-03-31/functions/sink/logs?bytes=65536";
    let mut start_ms = Vec::new();
    for _ in 0..runs.min(20) {
        let (headers, _) = conn.call_with("POST", path, async_header, &event).await?;
        let accepted = Instant::now();
        let start = format!("START RequestId: {}", request_id(&headers));
        let deadline = accepted + Duration::from_secs(60);
        loop {
            let log = conn.call("GET", logs, b"").await?;
            if String::from_utf8_lossy(&log).contains(&start) {
                start_ms.push(accepted.elapsed().as_millis() as u64);
                break;
            }
            if Instant::now() > deadline {
                return Err(Error::Run { run: 0, detail: "an accepted event did not start in 60 s".into() });
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    // A warm function URL request beside a warm direct invoke of the same function, with the
    // same body, interleaved so that both see the same host.
    let url = conn.call("POST", "/2021-10-31/functions/sink/url", br#"{"AuthType": "NONE"}"#).await?;
    let url: serde_json::Value = serde_json::from_slice(&url).map_err(|e| Error::Io("the URL config", e.into()))?;
    let url_id = url["FunctionUrl"].as_str().unwrap_or_default().trim_start_matches("http://").split('.').next();
    let url_path = format!("/{}/bench", url_id.unwrap_or_default());
    let permission = br#"{"StatementId": "public", "Action": "lambda:InvokeFunctionUrl", "Principal": "*"}"#;
    conn.call("POST", "/2015-03-31/functions/sink/policy", permission).await?;
    let mut url_conn = AgentConn::open_tcp(url_addr).await?;
    let json = &[("content-type", "application/json")];
    for _ in 0..runs.min(50) {
        url_conn.call_with("POST", &url_path, json, &event).await?;
        conn.call("POST", path, &event).await?;
    }
    let (mut url_us, mut invoke_us) = (Vec::new(), Vec::new());
    for _ in 0..runs.min(500) {
        let t = Instant::now();
        url_conn.call_with("POST", &url_path, json, &event).await?;
        url_us.push(t.elapsed().as_micros() as u64);
        let t = Instant::now();
        conn.call("POST", path, &event).await?;
        invoke_us.push(t.elapsed().as_micros() as u64);
    }

    let esm_msgs_per_s = mapping_throughput(socket, amqp_url).await?;
    // The agent closes a connection left idle for 30 s.
    let mut conn = AgentConn::open(socket).await?;

    // The accept path alone: the function's one instance (reserved concurrency 1) is kept
    // busy by a long event, so the events accepted below only queue (no VM starts, no attempt,
    // no write but theirs) until the agent is stopped.
    conn.call("PUT", "/2017-10-31/functions/sink/concurrency", br#"{"ReservedConcurrentExecutions": 1}"#).await?;
    let busy = serde_json::to_vec(&serde_json::json!({ "sleep_ms": 250_000 })).expect("serializes");
    conn.call_with("POST", path, async_header, &busy).await?;

    // Accepts one at a time: each is committed (fsync) before its 202.
    let mut accept_us = Vec::with_capacity(runs);
    let started = Instant::now();
    for _ in 0..runs {
        let t = Instant::now();
        conn.call_with("POST", path, async_header, &event).await?;
        accept_us.push(t.elapsed().as_micros() as u64);
    }
    let accepts_c1 = (runs as f64 / started.elapsed().as_secs_f64()) as u64;

    // Eight clients accepting for a fixed window.
    let mut conns = Vec::new();
    for _ in 0..8 {
        conns.push(AgentConn::open(socket).await?);
    }
    let (accepts_c8, _, _) = requests_per_s(conns, path, async_header, &event).await?;
    Ok(EventRuns {
        accept_us,
        accepts_c1,
        accepts_c8,
        start_ms,
        esm_msgs_per_s,
        url_us,
        invoke_us,
        queue_c1: 0,
        queue_c8: 0,
    })
}

/// Messages the mapping throughput is measured on.
const ESM_MESSAGES: u32 = 3000;
/// The mapping's batches, and how many run at once.
const ESM_BATCH: u32 = 100;
const ESM_CONCURRENCY: u32 = 2;

/// A channel to the broker, which may still be starting (`scripts/bench.sh events` starts it
/// alongside the agent): tried for up to 10 minutes. It is in confirm mode, so that a publish
/// awaited is a message the broker has (lapin may send a later declare before the publishes
/// it still buffers, which would then count too few).
async fn broker_channel(amqp_url: &str) -> Result<(lapin::Connection, lapin::Channel), Error> {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        match lapin::Connection::connect(amqp_url, lapin::ConnectionProperties::default()).await {
            Ok(c) => {
                let ch = c.create_channel().await.map_err(|e| Error::Broker(e.to_string()))?;
                ch.confirm_select(Default::default()).await.map_err(|e| Error::Broker(e.to_string()))?;
                return Ok((c, ch));
            }
            Err(e) if Instant::now() > deadline => return Err(Error::Broker(format!("{amqp_url}: {e}"))),
            Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
        }
    }
}

/// Messages ready in `queue` (not delivered to a consumer).
async fn ready(ch: &lapin::Channel, queue: &str) -> Result<u32, Error> {
    let options = lapin::options::QueueDeclareOptions { passive: true, ..Default::default() };
    let q =
        ch.queue_declare(queue.into(), options, Default::default()).await.map_err(|e| Error::Broker(e.to_string()))?;
    Ok(q.message_count())
}

/// Publishes `n` small persistent messages to `queue` and waits for the broker's confirms.
async fn publish(ch: &lapin::Channel, queue: &str, n: u32) -> Result<(), Error> {
    let broker = |e: lapin::Error| Error::Broker(e.to_string());
    let mut confirms = Vec::with_capacity(n as usize);
    for i in 0..n {
        let body = format!("{{\"bench\": {i}}}");
        let props = lapin::BasicProperties::default().with_delivery_mode(2);
        let confirm = ch
            .basic_publish("".into(), queue.into(), Default::default(), body.as_bytes(), props)
            .await
            .map_err(broker)?;
        confirms.push(confirm);
    }
    for c in confirms {
        c.await.map_err(broker)?;
    }
    Ok(())
}

/// Waits until `queue` has no ready message (10 minutes at most).
async fn drained(ch: &lapin::Channel, queue: &str) -> Result<(), Error> {
    let deadline = Instant::now() + Duration::from_secs(600);
    while ready(ch, queue).await? > 0 {
        if Instant::now() > deadline {
            return Err(Error::Run { run: 0, detail: format!("the mapping did not drain {queue}") });
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// Event source mapping throughput: messages per second a mapping with `BatchSize` 100 feeds
/// the warm `sink` (whose answer to an SQS batch is an empty `batchItemFailures`), in steady
/// state. The mapping first runs a warm-up (its instances started), then stands disabled while
/// the queue fills; once enabled, the consumer's prefetch window (batch size times concurrency)
/// fills at once, and from then on the broker delivers a message only when one is
/// acknowledged: the ready count falling from there to zero is the rate of acknowledgements.
async fn mapping_throughput(socket: &Path, amqp_url: &str) -> Result<u64, Error> {
    let (_connection, ch) = broker_channel(amqp_url).await?;
    // A connection of its own: one left idle while the broker started may have been closed.
    let conn = &mut AgentConn::open(socket).await?;
    let queue = "ember-bench-esm";
    let broker = |e: lapin::Error| Error::Broker(e.to_string());
    let _ = ch.queue_delete(queue.into(), Default::default()).await.map_err(broker)?;
    let durable = lapin::options::QueueDeclareOptions { durable: true, ..Default::default() };
    ch.queue_declare(queue.into(), durable, Default::default()).await.map_err(broker)?;
    publish(&ch, queue, ESM_BATCH * ESM_CONCURRENCY * 2).await?;
    let create = serde_json::to_vec(&serde_json::json!({
        "EventSourceArn": format!("arn:aws:sqs:{}:{}:{queue}", crate::agent::ids::region(), crate::agent::ids::ACCOUNT_ID),
        "FunctionName": "sink", "BatchSize": ESM_BATCH, "MaximumBatchingWindowInSeconds": 1,
        "ScalingConfig": { "MaximumConcurrency": ESM_CONCURRENCY },
    }))
    .expect("serializes");
    let mapping = conn.call("POST", "/2015-03-31/event-source-mappings/", &create).await?;
    let mapping: serde_json::Value =
        serde_json::from_slice(&mapping).map_err(|e| Error::Io("the mapping", e.into()))?;
    let path = format!("/2015-03-31/event-source-mappings/{}", mapping["UUID"].as_str().unwrap_or_default());
    drained(&ch, queue).await?;
    conn.call("PUT", &path, br#"{"Enabled": false}"#).await?;
    // The consumer stops and gives back what it held.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let held = ready(&ch, queue).await?;
    publish(&ch, queue, ESM_MESSAGES).await?;
    let total = held + ESM_MESSAGES;
    conn.call("PUT", &path, br#"{"Enabled": true}"#).await?;
    let window = ESM_BATCH * ESM_CONCURRENCY;
    let deadline = Instant::now() + Duration::from_secs(600);
    let (from, started) = loop {
        let n = ready(&ch, queue).await?;
        if n + window <= total {
            break (n, Instant::now());
        }
        if Instant::now() > deadline {
            return Err(Error::Run { run: 0, detail: "the mapping did not start".into() });
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    drained(&ch, queue).await?;
    let elapsed = started.elapsed();
    let rate = f64::from(from) / elapsed.as_secs_f64();
    eprintln!("bench: mapping: {from} of {total} messages timed over {elapsed:?}");
    conn.call("DELETE", &path, b"").await?;
    let _ = ch.queue_delete(queue.into(), Default::default()).await;
    Ok(rate as u64)
}

/// What `bench runtimes` measured.
struct RuntimeRuns {
    node_cold_ms: Vec<u64>,
    node_warm_us: Vec<u64>,
    python_cold_ms: Vec<u64>,
    image_cold_ms: Vec<u64>,
    zip_cold_ms: Vec<u64>,
}

/// `ember bench runtimes`: cold and warm invokes of a 1 KiB echo in Node.js and Python, the
/// same Python function as a container image and as a zip (cold, alternating, after the
/// image's first pull), each counted cold invoke [`AT_REST`] after the last on an agent that
/// keeps no idle instance; then the pull of an image of `image_mib` MiB (the python3.11
/// runtime's files and incompressible data) from a local registry into the agent's root image
/// (a CreateFunction, timed), beside `skopeo copy` of it into an OCI layout plus `umoci unpack`
/// into a directory, in the same run. Needs docker-registry, skopeo and umoci (Debian's).
pub fn runtimes(runs: usize, cold_runs: usize, image_mib: u64) -> Result<String, Error> {
    if runs == 0 || cold_runs == 0 || image_mib == 0 {
        return Err(Error::NoRuns);
    }
    let dir = std::env::temp_dir().join(format!("ember-bench-runtimes-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(io("create temp dir"))?;
    let result = runtimes_in(&dir, runs, cold_runs, image_mib);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn runtimes_in(dir: &Path, runs: usize, cold_runs: usize, image_mib: u64) -> Result<String, Error> {
    use crate::agent::images::local::{tar_layer, Layer, LocalRegistry, OciImage};
    let functions = vmm::default_guest_dir().join("functions");
    let read = |name: &str| std::fs::read(functions.join(name)).map_err(io("read a test function or base layer"));
    let base = || -> Result<Layer, Error> {
        let diff_id = String::from_utf8_lossy(&read("python3.11-root.tar.gz.diffid")?).trim().to_owned();
        Ok(Layer::Gzipped(read("python3.11-root.tar.gz")?, diff_id))
    };
    let handler = std::fs::read(functions.join("python.zip")).map_err(io("read python.zip"))?;
    let handler_py = {
        let mut zip = zip::ZipArchive::new(std::io::Cursor::new(handler))
            .map_err(|e| Error::Run { run: 0, detail: format!("python.zip: {e}") })?;
        let mut file =
            zip.by_name("handler.py").map_err(|e| Error::Run { run: 0, detail: format!("handler.py: {e}") })?;
        let mut out = Vec::new();
        file.read_to_end(&mut out).map_err(io("read handler.py"))?;
        out
    };
    let python_image = |layers: Vec<Layer>| OciImage {
        layers,
        entrypoint: vec!["/usr/bin/python3.11".into(), "-m".into(), "awslambdaric".into()],
        cmd: vec!["handler.echo".into()],
        env: vec!["PATH=/usr/local/bin:/usr/bin:/bin".into(), "PYTHONPATH=/var/task".into(), "LANG=C.UTF-8".into()],
        working_dir: "/var/task".into(),
    };
    let registry = LocalRegistry::start(&dir.join("registry")).map_err(io("start docker-registry"))?;
    let code = tar_layer(&[("var/task/handler.py", &handler_py)]).map_err(io("tar"))?;
    let echo_image = python_image(vec![base()?, Layer::Gzip(code.clone())]);
    registry.push(&echo_image, "bench/echo", "latest").map_err(io("push the echo image"))?;

    // The big image: the same, and incompressible files up to `image_mib` (a layout written
    // here, pushed once; pulled by the agent, and copied and unpacked by skopeo and umoci).
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let base_blob = read("python3.11-root.tar.gz")?;
    let filler_bytes = (image_mib << 20).saturating_sub(base_blob.len() as u64);
    let file_bytes = 16u64 << 20;
    let mut files = Vec::new();
    for i in 0..filler_bytes.div_ceil(file_bytes) {
        let len = file_bytes.min(filler_bytes - i * file_bytes) as usize;
        let mut data = Vec::with_capacity(len);
        while data.len() < len {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            data.extend_from_slice(&x.to_le_bytes());
        }
        data.truncate(len);
        files.push((format!("data/blob-{i:03}"), data));
    }
    let entries: Vec<(&str, &[u8])> = files.iter().map(|(p, d)| (p.as_str(), d.as_slice())).collect();
    let filler = tar_layer(&entries).map_err(io("tar"))?;
    drop(entries);
    drop(files);
    let big = python_image(vec![base()?, Layer::Tar(filler), Layer::Gzip(code)]);
    let layout = dir.join("big-layout");
    big.write_layout(&layout, "latest").map_err(io("write the big image"))?;
    drop(big);
    registry.push_layout(&layout, "latest", "bench/big").map_err(io("push the big image"))?;
    let blob_bytes: u64 = walk_size(&layout.join("blobs"));
    std::fs::remove_dir_all(&layout).map_err(io("remove the layout"))?;

    let host = registry.host.clone();
    let cold_dir = dir.join("cold");
    std::fs::create_dir_all(&cold_dir).map_err(io("create temp dir"))?;
    let mut agent = spawn_agent(&cold_dir, &["--keep-alive-s", "0", "--insecure-registry", &host])?;
    let result = bench_runtime()?.block_on(runtime_runs(&cold_dir.join("ember.sock"), &host, cold_runs));
    let _ = agent.kill();
    let _ = agent.wait();
    let (mut r, pull_ms) = result?;
    // Warm invokes, on an agent that keeps its instances.
    let warm_dir = dir.join("warm");
    std::fs::create_dir_all(&warm_dir).map_err(io("create temp dir"))?;
    let mut agent = spawn_agent(&warm_dir, &[])?;
    let result = bench_runtime()?.block_on(warm_runs(&warm_dir.join("ember.sock"), runs));
    let _ = agent.kill();
    let _ = agent.wait();
    let python_warm_us;
    (r.node_warm_us, python_warm_us) = result?;

    // The peer: skopeo's copy into an OCI layout, then umoci's unpack into a directory.
    let started = Instant::now();
    let oci = dir.join("skopeo-layout");
    let out = Command::new("skopeo")
        .args(["copy", "--quiet", "--src-tls-verify=false"])
        .arg(format!("docker://{host}/bench/big:latest"))
        .arg(format!("oci:{}:latest", oci.display()))
        .output()
        .map_err(|e| Error::Spawn("skopeo".into(), e))?;
    if !out.status.success() {
        return Err(Error::Run { run: 0, detail: format!("skopeo copy: {}", String::from_utf8_lossy(&out.stderr)) });
    }
    let out = Command::new("umoci")
        .args(["unpack", "--image"])
        .arg(format!("{}:latest", oci.display()))
        .arg(dir.join("umoci-bundle"))
        .output()
        .map_err(|e| Error::Spawn("umoci".into(), e))?;
    if !out.status.success() {
        return Err(Error::Run { run: 0, detail: format!("umoci unpack: {}", String::from_utf8_lossy(&out.stderr)) });
    }
    let skopeo_ms = started.elapsed().as_millis().max(1) as u64;
    let mib_s = |ms: u64| format!("{:.1}", blob_bytes as f64 / 1048576.0 / (ms.max(1) as f64 / 1000.0));
    Ok(format!(
        "runtimes warm python_warm_us p50={}\n\
         runtimes pull image_mib={:.0} ember_ms={pull_ms} skopeo_umoci_ms={skopeo_ms}\n\
         runtimes node_cold_ms p50={} node_warm_us p50={} python_cold_ms p50={} image_cold_ms p50={} zip_cold_ms p50={} \
         pull_mib_s={} skopeo_mib_s={}\n",
        median(&python_warm_us),
        blob_bytes as f64 / 1048576.0,
        median(&r.node_cold_ms),
        median(&r.node_warm_us),
        median(&r.python_cold_ms),
        median(&r.image_cold_ms),
        median(&r.zip_cold_ms),
        mib_s(pull_ms),
        mib_s(skopeo_ms),
    ))
}

/// The bytes of the files under `dir`.
fn walk_size(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => walk_size(&e.path()),
            _ => e.metadata().map(|m| m.len()).unwrap_or(0),
        })
        .sum()
}

/// The invokes of `bench runtimes` on an agent that keeps no idle instance, and the big
/// image's pull; returns them and the pull's milliseconds.
async fn runtime_runs(socket: &Path, registry: &str, cold_runs: usize) -> Result<(RuntimeRuns, u64), Error> {
    use base64::Engine as _;
    let mut conn = AgentConn::open(socket).await?;
    let b64 = |name: &str| -> Result<String, Error> {
        Ok(base64::engine::general_purpose::STANDARD.encode(read_function_zip(name)?))
    };
    let zip_fn = |name: &str, runtime: &str, handler: &str, zip: &str, keep: bool| {
        serde_json::to_vec(&serde_json::json!({
            "FunctionName": name, "Runtime": runtime, "Handler": handler, "MemorySize": 128, "Timeout": 60,
            "Role": "arn:aws:iam::000000000000:role/bench", "Code": {"ZipFile": zip},
            "Environment": {"Variables": {"KEEP": if keep { "1" } else { "0" }}},
        }))
        .expect("serializes")
    };
    let node_zip = b64("node.zip")?;
    let python_zip = b64("python.zip")?;
    conn.call("POST", "/2015-03-31/functions", &zip_fn("node", "nodejs20.x", "index.echo", &node_zip, false)).await?;
    conn.call("POST", "/2015-03-31/functions", &zip_fn("python", "python3.11", "handler.echo", &python_zip, false))
        .await?;
    conn.call("POST", "/2015-03-31/functions", &zip_fn("zip", "python3.11", "handler.echo", &python_zip, true)).await?;
    let image = |name: &str, repo: &str| {
        serde_json::to_vec(&serde_json::json!({
            "FunctionName": name, "PackageType": "Image", "MemorySize": 128, "Timeout": 60,
            "Role": "arn:aws:iam::000000000000:role/bench",
            "Code": {"ImageUri": format!("{registry}/{repo}:latest")},
            "Environment": {"Variables": {"KEEP": "1"}},
        }))
        .expect("serializes")
    };
    conn.call("POST", "/2015-03-31/functions", &image("image", "bench/echo")).await?;
    let event = serde_json::to_vec(&serde_json::json!({ "data": "x".repeat(RTT_BYTES - 11) })).expect("serializes");
    let tail = &[("X-Amz-Log-Type", "Tail")];
    let mut r = RuntimeRuns {
        node_cold_ms: Vec::new(),
        node_warm_us: Vec::new(),
        python_cold_ms: Vec::new(),
        image_cold_ms: Vec::new(),
        zip_cold_ms: Vec::new(),
    };
    // A first invoke of each, not counted (the page cache takes the images in).
    for name in ["node", "python", "zip", "image"] {
        conn.call_with("POST", &format!("/2015-03-31/functions/{name}/invocations"), tail, &event).await?;
    }
    for round in 0..cold_runs * 3 {
        for (name, into) in [
            ("node", &mut r.node_cold_ms),
            ("python", &mut r.python_cold_ms),
            ("image", &mut r.image_cold_ms),
            ("zip", &mut r.zip_cold_ms),
        ] {
            if into.len() >= cold_runs {
                continue;
            }
            tokio::time::sleep(AT_REST).await;
            let started = Instant::now();
            let (headers, body) =
                conn.call_with("POST", &format!("/2015-03-31/functions/{name}/invocations"), tail, &event).await?;
            if serde_json::from_slice::<serde_json::Value>(&body).ok() != serde_json::from_slice(&event).ok() {
                return Err(Error::Run {
                    run: round,
                    detail: format!("{name} answered something else than the event"),
                });
            }
            if report_field(&headers, "Init Duration: ").is_some() {
                into.push(started.elapsed().as_millis() as u64);
            }
        }
    }
    if [&r.node_cold_ms, &r.python_cold_ms, &r.image_cold_ms, &r.zip_cold_ms].iter().any(|v| v.len() < cold_runs) {
        return Err(Error::Run { run: 0, detail: "too few invokes landed on cold instances".into() });
    }
    // The big image's pull: a CreateFunction of it.
    let started = Instant::now();
    conn.call("POST", "/2015-03-31/functions", &image("big", "bench/big")).await?;
    let pull_ms = started.elapsed().as_millis() as u64;
    Ok((r, pull_ms))
}

/// Warm invokes of the Node.js echo and, for scale, of the Python one (after one cold one
/// each), in microseconds.
async fn warm_runs(socket: &Path, runs: usize) -> Result<(Vec<u64>, Vec<u64>), Error> {
    use base64::Engine as _;
    let mut conn = AgentConn::open(socket).await?;
    let event = serde_json::to_vec(&serde_json::json!({ "data": "x".repeat(RTT_BYTES - 11) })).expect("serializes");
    let mut out = Vec::new();
    for (name, runtime, handler, zip) in
        [("node", "nodejs20.x", "index.echo", "node.zip"), ("python", "python3.11", "handler.echo", "python.zip")]
    {
        let zip = base64::engine::general_purpose::STANDARD.encode(read_function_zip(zip)?);
        let create = serde_json::json!({
            "FunctionName": name, "Runtime": runtime, "Handler": handler, "MemorySize": 128, "Timeout": 60,
            "Role": "arn:aws:iam::000000000000:role/bench", "Code": {"ZipFile": zip},
        });
        conn.call("POST", "/2015-03-31/functions", &serde_json::to_vec(&create).expect("serializes")).await?;
        let path = format!("/2015-03-31/functions/{name}/invocations");
        conn.call("POST", &path, &event).await?;
        let mut us = Vec::with_capacity(runs);
        for _ in 0..runs {
            let started = Instant::now();
            conn.call("POST", &path, &event).await?;
            us.push(started.elapsed().as_micros() as u64);
        }
        out.push(us);
    }
    let python = out.pop().expect("two runtimes");
    Ok((out.pop().expect("two runtimes"), python))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_times_split_guest_time_out_of_user_time() {
        let stat = "cpu  1000 10 300 5000 20 5 7 0 400 0\ncpu0 1 2 3 4 5 6 7 8 9 10\nintr 1\n";
        let t = CpuTimes::parse(stat).unwrap();
        assert_eq!(t, CpuTimes { guest: 400, user: 610, kernel: 312, idle: 5020 });
        let later = CpuTimes { guest: 500, user: 710, kernel: 412, idle: 5020 };
        assert_eq!(later.since(&t), CpuTimes { guest: 100, user: 100, kernel: 100, idle: 0 });
        assert!(CpuTimes::parse("cpu0 1 2\n").is_none());
    }

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
        assert!(matches!(events(0, None, "amqp://127.0.0.1:1"), Err(Error::NoRuns)));
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
