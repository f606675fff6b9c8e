//! Hostile guests, and the jail and seccomp filters around every VMM: what a guest that
//! misbehaves, or escapes its VM, gets.
//!
//! Like the other KVM tests these need a KVM host that runs Linux guests; scripts/test.sh runs
//! them in the right place, and anywhere else they fail and say why.

mod common;
use common::agent::Agent;
use common::require_kvm_host;
use ember::bench::CpuTimes;

use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn function_error(resp: &common::agent::Response) -> Option<&str> {
    resp.header("x-amz-function-error")
}

/// One line of `/proc/<pid>/status` (or of a thread's), its value trimmed.
fn status_field(status_file: &Path, field: &str) -> String {
    let status = std::fs::read_to_string(status_file).unwrap_or_else(|e| panic!("{}: {e}", status_file.display()));
    status
        .lines()
        .find_map(|l| l.strip_prefix(field).and_then(|v| v.strip_prefix(':')))
        .unwrap_or_else(|| panic!("no {field} in {}", status_file.display()))
        .trim()
        .to_owned()
}

/// Checks that `vmm` is jailed and filtered, as the agent's design says: an instance's
/// (`serving`) or a spare's, which has only the setup's filter and no VM threads yet.
fn check_jailed(vmm: u32, serving: bool) {
    let proc = Path::new("/proc").join(vmm.to_string());
    let status = proc.join("status");
    let uids: Vec<u32> = status_field(&status, "Uid").split_whitespace().map(|u| u.parse().unwrap()).collect();
    assert_eq!(uids.len(), 4);
    assert!(uids.iter().all(|&u| u == uids[0] && u != 0), "VMM {vmm} runs as uids {uids:?}");
    let gids: Vec<u32> = status_field(&status, "Gid").split_whitespace().map(|g| g.parse().unwrap()).collect();
    assert!(gids.iter().all(|&g| g != 0), "VMM {vmm} runs as gids {gids:?}");
    assert_eq!(status_field(&status, "NoNewPrivs"), "1");
    for set in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(status_field(&status, set), "0000000000000000", "{set} of VMM {vmm}");
    }
    // Every thread of it: the main, control, event-loop and vCPU threads.
    let mut threads = Vec::new();
    for task in std::fs::read_dir(proc.join("task")).unwrap().flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default().trim().to_owned();
        let mode = status_field(&task.path().join("status"), "Seccomp");
        assert_eq!(mode, "2", "thread {comm} of VMM {vmm} has seccomp mode {mode}");
        threads.push(comm);
    }
    if serving {
        for kind in ["ember-vmm", "control", "ember-events", "ember-vcpu"] {
            assert!(threads.iter().any(|t| t == kind), "no {kind} thread in {threads:?}");
        }
    } else {
        assert_eq!(threads, ["ember-spare"], "a spare is one thread");
    }
    // Namespaces of its own.
    for ns in ["pid", "mnt", "net", "ipc", "uts"] {
        let theirs = std::fs::read_link(proc.join("ns").join(ns)).unwrap();
        let ours = std::fs::read_link(Path::new("/proc/self/ns").join(ns)).unwrap();
        assert_ne!(theirs, ours, "VMM {vmm} shares the {ns} namespace");
    }
    // Its root holds what it runs from (a spare's, nothing yet) and nothing of the host's.
    let root = proc.join("root");
    for absent in ["etc/passwd", "proc/self", "dev/kvm", "bin/sh", "usr/bin"] {
        assert!(!root.join(absent).exists(), "/{absent} is visible in VMM {vmm}'s jail");
    }
    let guest = common::guest_dir();
    let kernel = root.join(guest.join("vmlinux").strip_prefix("/").unwrap());
    assert_eq!(kernel.is_file(), serving, "the kernel is in VMM {vmm}'s jail (serving: {serving})");
    // Its cgroup caps its memory and tasks, where the host has those controllers.
    let line = std::fs::read_to_string(proc.join("cgroup")).unwrap();
    let cgroup = line.lines().find_map(|l| l.strip_prefix("0::")).expect("a cgroup v2 line").trim().to_owned();
    let dir = Path::new("/sys/fs/cgroup").join(cgroup.trim_start_matches('/'));
    if dir.join("memory.max").exists() {
        let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap().trim().to_owned();
        assert_ne!(read("memory.max"), "max", "VMM {vmm}'s memory is not capped");
        assert_eq!(read("pids.max"), "32");
    } else {
        eprintln!("no memory controller in VMM {vmm}'s cgroup: its limits are not checked");
    }
}

/// Every instance's VMM runs jailed and filtered while it serves invokes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vmms_are_jailed_and_filtered_while_they_serve() {
    require_kvm_host();
    let agent = Agent::start("jailed", &[]);
    let created = agent.create("j", "provided.al2023", "bootstrap", "rust.zip", json!({"Timeout": 30})).await;
    assert_eq!(created.status, 201, "{}", String::from_utf8_lossy(&created.body));
    assert_eq!(agent.invoke("j", json!({"a": 1})).await.json(), json!({"a": 1}));
    let vmms = ember::vmm::process::running_vmms(agent.child.id());
    assert_eq!(vmms.len(), 1, "one instance runs");
    check_jailed(vmms[0], true);
    // And the spares waiting for the next launch, jailed and filtered from their start.
    let deadline = Instant::now() + Duration::from_secs(30);
    let spares = loop {
        // Once set up (its VM made, its jail entered, its filter on): it waits for a spec.
        let spares: Vec<u32> =
            ember::vmm::process::spare_vmms(agent.child.id()).into_iter().filter(|&p| filtered(p)).collect();
        if !spares.is_empty() || Instant::now() > deadline {
            break spares;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(!spares.is_empty(), "the agent keeps spares");
    for spare in spares {
        check_jailed(spare, false);
    }
    // And it goes on serving, jailed.
    for i in 0..5 {
        let r = agent.invoke("j", json!({"i": i})).await;
        assert_eq!((r.status, function_error(&r)), (200, None), "{}", String::from_utf8_lossy(&r.body));
    }
    assert_eq!(ember::vmm::process::running_vmms(agent.child.id()), vmms, "the same instance served them");
}

/// The vsock port whose connection by a guest makes its VMM break its seccomp filter (the
/// test-only trigger `EMBER_TEST_SECCOMP_TRAP_PORT`).
const TRAP_PORT: &str = "7777";
/// A case's attack: what the guest does, and the check of what its caller got.
type Attack =
    for<'a> fn(&'a Agent) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send + 'a>>;

/// The cases of the issue's hostile-guest list, in its order.
const CASES: usize = 13;

/// Each hostile behaviour, run by a real guest function on an agent that also serves a
/// bystander function: the caller gets the Lambda error it expects, the instance is replaced
/// (or, where nothing broke it, goes on serving), nothing is left on the host, and the
/// bystander's warm invokes during the attack keep their p99 within 3x of before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_guests_are_contained() {
    require_kvm_host();
    let agent = Agent::start_logged_env("hostile", &[], &[("EMBER_TEST_SECCOMP_TRAP_PORT", TRAP_PORT)]);
    for (name, runtime, handler, zip, extra) in [
        // A whole vCPU's share: what its p99 shows is the host's, not its own CPU cap's.
        ("by", "provided.al2023", "bootstrap", "rust.zip", json!({"Timeout": 30, "MemorySize": 1769})),
        ("h", "provided.al2023", "bootstrap", "rust.zip", json!({"Timeout": 60})),
        // A short timeout for the attacks that run into it; not shorter, because its other
        // invokes (the warm-ups, the check after the attack) are a new instance's first, at
        // 128 MB's CPU share: one took 3 s in an emulated host slowed by other work.
        ("hs", "provided.al2023", "bootstrap", "rust.zip", json!({"Timeout": 5})),
        ("hb", "provided.al2023", "bootstrap", "rust.zip", json!({"Timeout": 120, "MemorySize": 1024})),
        ("hp", "python3.11", "handler.runtime_api_abuse", "python.zip", json!({"Timeout": 60})),
        (
            "hc",
            "python3.11",
            "handler.close_runtime_connections",
            "python.zip",
            json!({"Timeout": 15, "MemorySize": 1024}),
        ),
    ] {
        let created = agent.create(name, runtime, handler, zip, extra).await;
        assert_eq!(created.status, 201, "{name}: {}", String::from_utf8_lossy(&created.body));
    }
    // The bystander, warm, and its p99 at rest, paced as during the attacks.
    for _ in 0..10 {
        ok(&agent.invoke("by", json!({"warm": true})).await).unwrap();
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = tokio::spawn(bystander(agent.socket.clone(), Arc::clone(&stop)));
    tokio::time::sleep(Duration::from_secs(6)).await;
    stop.store(true, Ordering::Relaxed);
    let before = sampler.await.unwrap().unwrap();
    let p99_before = p99(&mut before.iter().map(|s| s.latency).collect::<Vec<_>>());
    eprintln!(
        "hostile: bystander p99 at rest {p99_before:?} over {} invokes; slowest (start ms: ms (handler ms)) {}",
        before.len(),
        slowest(&before)
    );

    let cases: [(usize, &str, &str, Option<Attack>); CASES] = [
        (1, "runtime crash", "h", Some(|a| Box::pin(runtime_crash(a)))),
        (2, "busy loop past the timeout", "hs", Some(|a| Box::pin(busy_loop(a)))),
        (3, "fork bomb", "hs", Some(|a| Box::pin(fork_bomb(a)))),
        (4, "guest out of memory", "h", Some(|a| Box::pin(guest_oom(a)))),
        (5, "/tmp filled", "hb", Some(|a| Box::pin(tmp_filled(a)))),
        (6, "log flood", "h", Some(|a| Box::pin(log_flood(a)))),
        (7, "vsock flood", "hb", Some(|a| Box::pin(vsock_flood(a)))),
        (8, "runtime closes its Runtime API connection", "hc", Some(|a| Box::pin(closed_connection(a)))),
        (9, "malformed Runtime API calls", "hp", Some(|a| Box::pin(malformed_runtime_api(a)))),
        (10, "response over 6 MB", "h", Some(|a| Box::pin(big_response(a)))),
        (11, "hostile virtqueue", "h", Some(|a| Box::pin(hostile_virtqueue(a)))),
        (12, "guest kernel panic", "h", Some(|a| Box::pin(kernel_panic(a)))),
        (13, "VMM breaks its seccomp filter", "h", Some(|a| Box::pin(seccomp_break(a)))),
    ];
    let mut passed = 0;
    let mut failures = Vec::new();
    for (n, name, function, attack) in cases {
        let Some(attack) = attack else {
            eprintln!("hostile case={n} ({name}): not run: not built yet");
            continue;
        };
        let result = run_case(&agent, function, attack, p99_before).await;
        match &result {
            Ok(()) => passed += 1,
            Err(why) => failures.push(format!("case {n} ({name}): {why}")),
        }
        eprintln!(
            "hostile case={n} ({name}): {}",
            result.as_ref().map_or_else(|e| format!("FAILED: {e}"), |()| "ok".into())
        );
    }
    println!("hostile passed={passed}/{CASES}");
    eprintln!("hostile passed={passed}/{CASES}");
    assert!(failures.is_empty(), "{failures:#?}\nagent log tail:\n{}", tail(&agent.log(), 4000));
}

/// The fewest bystander invokes a case's p99 is taken over: with fewer, a p99 is simply the
/// worst one, and one scheduling hiccup of the emulated host decides it.
const MIN_SAMPLES: usize = 100;
/// The most rounds of an attack a case runs to get [`MIN_SAMPLES`] (the shortest attack, a
/// VMM that breaks its filter, lasts ~300 ms in the emulated host: 7 invokes of the bystander).
const MAX_ROUNDS: usize = 20;

/// One case: warms `function`, then runs `attack` while the bystander is invoked in a loop (in
/// rounds, each on a warm instance, until the bystander's invokes during the attacks number
/// [`MIN_SAMPLES`]), then checks the function answers again, the host is clean and the
/// bystander kept its p99.
async fn run_case(agent: &Agent, function: &str, attack: Attack, p99_before: Duration) -> Result<(), String> {
    let mut during = Vec::new();
    let mut rss_before = 0;
    let mut attack_ms = Vec::new();
    while during.len() < MIN_SAMPLES && attack_ms.len() < MAX_ROUNDS {
        // A warm instance to attack: its boot is not the attack, nor is the spare that
        // replaces the one its launch took.
        ok(&agent.invoke(function, json!({"warm": true})).await).map_err(|e| format!("warm-up: {e}"))?;
        spares_set_up(agent).await;
        if attack_ms.is_empty() {
            rss_before = rss_kib(agent.child.id());
        }
        let stop = Arc::new(AtomicBool::new(false));
        let bystander = tokio::spawn(bystander(agent.socket.clone(), Arc::clone(&stop)));
        let attack_start = Instant::now();
        let attacked = attack(agent).await;
        attack_ms.push(attack_start.elapsed().as_millis());
        stop.store(true, Ordering::Relaxed);
        during.extend(bystander.await.map_err(|e| e.to_string())??);
        attacked?;
    }
    // Replaced, or still serving: either way it answers.
    ok(&agent.invoke(function, json!({"after": true})).await).map_err(|e| format!("after the attack: {e}"))?;
    clean(agent)?;
    let rss_after = rss_kib(agent.child.id());
    if rss_after > rss_before + 64 * 1024 {
        return Err(format!("the agent grew from {rss_before} KiB to {rss_after} KiB"));
    }
    if during.is_empty() {
        return Err("the bystander answered nothing during the attack".into());
    }
    let mut latencies: Vec<Duration> = during.iter().map(|s| s.latency).collect();
    let p99_during = p99(&mut latencies);
    eprintln!(
        "hostile: bystander p99 {p99_during:?} over {} invokes during {} attacks ({attack_ms:?} ms); slowest (start in its attack ms: ms (handler ms)) {}",
        during.len(),
        attack_ms.len(),
        slowest(&during)
    );
    // 3x, and at least 3x of 50 ms: a p99 at rest of a few ms in the emulated host is one
    // scheduler tick from doubling.
    let bound = (p99_before * 3).max(Duration::from_millis(150));
    if p99_during > bound {
        return Err(format!("the bystander's p99 went from {p99_before:?} to {p99_during:?} during the attack"));
    }
    Ok(())
}

/// Whether VMM `pid` has entered its jail and filter (a spare, once set up, waits for its spec
/// so).
fn filtered(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/status")).is_ok_and(|s| s.contains("\nSeccomp:\t2\n"))
}

/// Waits (at most 10 s) until no VMM start is under way and the host is quiet: the agent has a
/// spare, every child of its is a running VM or a spare that has entered its jail and filter
/// (the same children for 300 ms), and the host's CPUs were idle at least half of each of the
/// last two 100 ms. A launch's replacement spare is started once its instance's first
/// invocation is over, and its start (a fork of the agent, an exec, a VM created: hundreds of
/// ms of CPU in the emulated host) is work of that launch's; the kernel's teardown of the
/// last round's VMM (its network namespace, cgroup and KVM state, deferred to its workers:
/// ~300 ms of CPU there) is that round's. Neither belongs to the attack that follows.
async fn spares_set_up(agent: &Agent) {
    use ember::vmm::process::{children, SPARE_NAME, VMM_NAME};
    let deadline = Instant::now() + Duration::from_secs(10);
    let (mut last, mut steady, mut quiet) = (Vec::new(), 0, 0);
    let mut cpu = cpu_times();
    while Instant::now() < deadline && (steady < 6 || quiet < 2) {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let children = children(agent.child.id());
        let settled = children.iter().any(|(_, comm)| comm == SPARE_NAME)
            && children.iter().all(|(pid, comm)| comm == VMM_NAME || (comm == SPARE_NAME && filtered(*pid)))
            && children == last;
        steady = if settled { steady + 1 } else { 0 };
        last = children;
        if steady % 2 == 0 {
            let now = cpu_times();
            let window = now.since(&cpu);
            quiet = if steady > 0 && window.idle >= window.busy() && window.idle > 0 { quiet + 1 } else { 0 };
            cpu = now;
        }
    }
}

/// The host's CPU time so far (a host whose /proc/stat cannot be read counts as never quiet:
/// the wait then ends at its deadline).
fn cpu_times() -> CpuTimes {
    CpuTimes::read().unwrap_or_default()
}

/// One warm invoke of the bystander: when it started (from the first of its run), how long
/// its caller waited, and how much of that its handler ran (its REPORT line's `Duration`).
#[derive(Clone, Copy)]
struct Sample {
    start: Duration,
    latency: Duration,
    handler: Duration,
}

/// Warm invokes of the bystander, back to back, until `stop` (each must succeed). Back to
/// back, so that a window of a few seconds holds over a hundred of them and its p99 is not
/// simply its worst one.
async fn bystander(socket: PathBuf, stop: Arc<AtomicBool>) -> Result<Vec<Sample>, String> {
    let mut samples = Vec::new();
    let start = Instant::now();
    let path = "/2015-03-31/functions/by/invocations";
    while !stop.load(Ordering::Relaxed) {
        let t = Instant::now();
        let r = common::agent::request(&socket, "POST", path, &[("X-Amz-Log-Type", "Tail")], br#"{"by": 1}"#.to_vec())
            .await;
        let latency = t.elapsed();
        if r.status != 200 || r.header("x-amz-function-error").is_some() {
            return Err(format!("the bystander failed during the attack: {}", String::from_utf8_lossy(&r.body)));
        }
        samples.push(Sample { start: t - start, latency, handler: report_duration(&r.log_tail()) });
    }
    Ok(samples)
}

/// The `Duration` of a log tail's REPORT line.
fn report_duration(tail: &str) -> Duration {
    let ms = tail
        .split("\tDuration: ")
        .nth(1)
        .and_then(|rest| rest.split(" ms").next())
        .and_then(|ms| ms.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no REPORT Duration in the log tail: {tail:?}"));
    Duration::from_secs_f64(ms / 1000.0)
}

/// The five slowest of a bystander's invokes, as `<start ms>: <latency ms> (<handler ms>)`, for
/// a failure's account of when in the attack they came and whether the guest or the host was
/// slow.
fn slowest(invokes: &[Sample]) -> String {
    let mut by_latency = invokes.to_vec();
    by_latency.sort_by_key(|s| std::cmp::Reverse(s.latency));
    let shown: Vec<String> = by_latency
        .iter()
        .take(5)
        .map(|s| format!("{}: {} ({})", s.start.as_millis(), s.latency.as_millis(), s.handler.as_millis()))
        .collect();
    shown.join(", ")
}

fn p99(latencies: &mut [Duration]) -> Duration {
    latencies.sort();
    latencies[(latencies.len() * 99).div_ceil(100).saturating_sub(1)]
}

fn tail(s: &str, n: usize) -> &str {
    let mut start = s.len().saturating_sub(n);
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

/// A successful answer, or why not.
fn ok(r: &common::agent::Response) -> Result<Value, String> {
    if r.status != 200 || function_error(r).is_some() {
        return Err(format!("status {}: {}", r.status, String::from_utf8_lossy(&r.body)));
    }
    Ok(r.json())
}

/// A failed invocation with `error_type`, or why not.
fn failed_with(r: &common::agent::Response, error_types: &[&str]) -> Result<Value, String> {
    if r.status != 200 || function_error(r) != Some("Unhandled") {
        return Err(format!(
            "expected a function error, got status {}: {}",
            r.status,
            String::from_utf8_lossy(&r.body)
        ));
    }
    let body = r.json();
    if !error_types.iter().any(|t| body["errorType"] == *t) {
        return Err(format!("expected {error_types:?}, got {body}"));
    }
    Ok(body)
}

/// The agent's resident memory.
fn rss_kib(pid: u32) -> u64 {
    status_field(&Path::new("/proc").join(pid.to_string()).join("status"), "VmRSS")
        .trim_end_matches(" kB")
        .trim()
        .parse()
        .unwrap_or(0)
}

/// Nothing left of dead instances: every instance directory belongs to a running VMM, every
/// jail root and VMM cgroup to a live VMM (instance or spare), no VMM that is not a child of
/// the agent.
fn clean(agent: &Agent) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let pid = agent.child.id();
        let vmms = ember::vmm::process::running_vmms(pid);
        let spares = ember::vmm::process::spare_vmms(pid);
        let dirs = std::fs::read_dir(&agent.run_dir).map(|d| d.count()).unwrap_or(0);
        let cgroups = vmm_cgroups(vmms.iter().chain(&spares).copied().next());
        let mut jails = agent.run_dir.as_os_str().to_owned();
        jails.push("-jail");
        // Where VMMs are jailed.
        let jails = std::fs::read_dir(&jails).map(Iterator::count).ok();
        let problem = if dirs != vmms.len() {
            Some(format!("{dirs} instance directories for {} running VMMs", vmms.len()))
        } else if jails.is_some_and(|n| n != vmms.len() + spares.len()) {
            Some(format!("{jails:?} jail roots for {} VMMs and {} spares", vmms.len(), spares.len()))
        } else if cgroups.is_some_and(|n| n != vmms.len() + spares.len()) {
            Some(format!("{cgroups:?} VMM cgroups for {} VMMs and {} spares", vmms.len(), spares.len()))
        } else {
            None
        };
        match problem {
            None => return Ok(()),
            Some(p) if Instant::now() > deadline => return Err(format!("left behind: {p}")),
            Some(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// How many VMM cgroups the agent has (beside `vmm`'s), if it uses cgroups.
fn vmm_cgroups(vmm: Option<u32>) -> Option<usize> {
    let line = std::fs::read_to_string(format!("/proc/{}/cgroup", vmm?)).ok()?;
    let own = line.lines().find_map(|l| l.strip_prefix("0::"))?.trim().to_owned();
    let parent = Path::new("/sys/fs/cgroup").join(own.trim_start_matches('/')).parent()?.to_owned();
    if !parent.file_name()?.to_string_lossy().starts_with("ember-") {
        return None;
    }
    let count = std::fs::read_dir(parent)
        .ok()?
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("vmm-"))
        .count();
    Some(count)
}

async fn runtime_crash(agent: &Agent) -> Result<(), String> {
    failed_with(&agent.invoke("h", json!({"exit": 1})).await, &["Runtime.ExitError"]).map(drop)
}

async fn busy_loop(agent: &Agent) -> Result<(), String> {
    failed_with(&agent.invoke("hs", json!({"spin": true})).await, &["Sandbox.Timedout"]).map(drop)
}

async fn fork_bomb(agent: &Agent) -> Result<(), String> {
    failed_with(&agent.invoke("hs", json!({"fork_bomb": true})).await, &["Sandbox.Timedout", "Runtime.ExitError"])
        .map(drop)
}

async fn guest_oom(agent: &Agent) -> Result<(), String> {
    failed_with(&agent.invoke("h", json!({"oom": true})).await, &["Runtime.ExitError"]).map(drop)
}

/// ENOSPC in the guest, and no drive's host file (a VMM's unlinked scratch file) past its
/// 512 MiB, in size or in blocks.
async fn tmp_filled(agent: &Agent) -> Result<(), String> {
    let answer = ok(&agent.invoke("hb", json!({"fill_tmp": true})).await)?;
    if answer["enospc"] != true {
        return Err(format!("the guest did not get ENOSPC: {answer}"));
    }
    let mut largest = 0;
    for vmm in ember::vmm::process::running_vmms(agent.child.id()) {
        for fd in std::fs::read_dir(format!("/proc/{vmm}/fd")).map_err(|e| e.to_string())?.flatten() {
            let target = std::fs::read_link(fd.path()).unwrap_or_default();
            if target.to_string_lossy().ends_with("(deleted)") {
                let meta = std::fs::metadata(fd.path()).map_err(|e| e.to_string())?;
                largest = largest.max(meta.len().max(std::os::unix::fs::MetadataExt::blocks(&meta) * 512));
            }
        }
    }
    if largest == 0 || largest > 512 << 20 {
        return Err(format!("the largest /tmp drive's host file holds {largest} bytes"));
    }
    Ok(())
}

/// The function's log stays within its bound (4 MiB and one rotated file) and the agent's
/// memory within the case's. A 128 MB function floods at its CPU share, as any would.
async fn log_flood(agent: &Agent) -> Result<(), String> {
    ok(&agent.invoke("h", json!({"log_mib": 6})).await)?;
    let logs = agent.data_dir.join("logs");
    let total: u64 = std::fs::read_dir(&logs)
        .map_err(|e| e.to_string())?
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("h.log"))
        .map(|e| e.metadata().map_or(0, |m| m.len()))
        .sum();
    if total > 2 * (4 << 20) + (1 << 20) {
        return Err(format!("the flooded function's log holds {total} bytes"));
    }
    Ok(())
}

/// A guest that opens thousands of vsock streams to a port where nothing listens gets each
/// refused; the VMM holds no more files than its limit.
async fn vsock_flood(agent: &Agent) -> Result<(), String> {
    let answer = ok(&agent.invoke("hb", json!({"vsock_flood": 1000})).await)?;
    if answer["refused"] != 1000 {
        return Err(format!("expected 1000 refused connections: {answer}"));
    }
    Ok(())
}

/// The runtime's sockets (its Runtime API connection among them) closed mid-invoke: the
/// runtime client reconnects and answers, dies (a crash), or never answers (the timeout).
/// A runtime that answered with its connection gone may answer nothing more: its next
/// invocation then times out, and the instance is replaced.
async fn closed_connection(agent: &Agent) -> Result<(), String> {
    let r = agent.invoke("hc", json!({"close": true})).await;
    if ok(&r).is_err() {
        return failed_with(&r, &["Runtime.ExitError", "Sandbox.Timedout"]).map(drop);
    }
    let next = agent.invoke("hc", json!({"next": true})).await;
    if ok(&next).is_err() {
        failed_with(&next, &["Runtime.ExitError", "Sandbox.Timedout"])?;
    }
    Ok(())
}

/// Every misuse is refused with a client error (or the connection closed), and the
/// invocation it came from completes normally.
async fn malformed_runtime_api(agent: &Agent) -> Result<(), String> {
    let answer = ok(&agent.invoke("hp", json!({"abuse": true})).await)?;
    for (call, status) in answer.as_object().ok_or("not an object")? {
        let refused = match status {
            Value::Number(n) => n.as_u64().is_some_and(|s| (400..500).contains(&s)),
            // The server closed the connection, or (for a second `next`) did not answer.
            Value::String(_) => true,
            _ => false,
        };
        if !refused {
            return Err(format!("{call} got {status}: {answer}"));
        }
    }
    Ok(())
}

async fn big_response(agent: &Agent) -> Result<(), String> {
    failed_with(
        &agent.invoke("h", json!({"response_mib": 7})).await,
        &["Function.ResponseSizeTooLarge", "Runtime.ExitError", "Runtime.ResponseSizeTooLarge"],
    )
    .map(drop)
}

/// A guest program drives the /tmp drive's virtio device itself (tests/functions/rust's
/// `virtqueue.rs`): looping, overlapping, out-of-memory, wrapping and huge chains, a flooded
/// avail ring, rings outside guest memory. The VMM survives it (the runtime answers), does what
/// a device should (the valid request served; rings outside memory refused at DRIVER_OK with
/// NEEDS_RESET) and serves the guest on; the instance, whose /tmp the attack took, is then
/// replaced by ending its runtime.
async fn hostile_virtqueue(agent: &Agent) -> Result<(), String> {
    let report = ok(&agent.invoke("h", json!({"virtqueue": true})).await)?;
    if let Some(e) = report.get("error") {
        return Err(format!("the guest could not run the attack: {e}"));
    }
    let attacks = report["attacks"].as_array().ok_or_else(|| format!("no attacks in {report}"))?;
    let find =
        |name: &str| attacks.iter().find(|a| a["attack"] == name).ok_or_else(|| format!("no {name} in {report}"));
    let valid = find("valid_read")?;
    if valid["used"] != 1 || valid["request_status"] != 0 {
        return Err(format!("the device did not serve a valid request: {valid}"));
    }
    let outside = find("rings_outside")?;
    if outside["setup_status"].as_u64().unwrap_or(0) & 0x40 == 0 {
        return Err(format!("rings outside guest memory were not refused: {outside}"));
    }
    if attacks.len() < 12 {
        return Err(format!("only {} attacks ran: {report}", attacks.len()));
    }
    eprintln!("hostile: virtqueue attacks: {}", serde_json::to_string(attacks).unwrap_or_default());
    // The VM is fine: it answers again.
    ok(&agent.invoke("h", json!({"after_virtqueue": true})).await).map_err(|e| format!("after the attacks: {e}"))?;
    failed_with(&agent.invoke("h", json!({"exit": 1})).await, &["Runtime.ExitError"]).map(drop)
}

async fn kernel_panic(agent: &Agent) -> Result<(), String> {
    failed_with(&agent.invoke("h", json!({"panic": true})).await, &["Runtime.ExitError"]).map(drop)
}

/// The test-only trigger: a guest connection to the trap port makes the VMM open an IPv4
/// socket, which its filter forbids. The VMM dies of SIGSYS and the agent says so.
async fn seccomp_break(agent: &Agent) -> Result<(), String> {
    let log_before = agent.log().len();
    let port: u64 = TRAP_PORT.parse().unwrap();
    let body = failed_with(&agent.invoke("h", json!({"vsock_connect": port})).await, &["Runtime.ExitError"])?;
    if !body["errorMessage"].as_str().unwrap_or_default().contains("seccomp") {
        return Err(format!("the error does not name seccomp: {body}"));
    }
    if !agent.log()[log_before..].contains("killed by its seccomp filter (SIGSYS)") {
        return Err("the agent's log does not name seccomp".into());
    }
    Ok(())
}
