//! Invocations end to end through the agent's public API: `ember serve` on a Unix socket, real
//! microVMs, ember-init's Runtime API, and the unmodified runtime clients (awslambdaric for
//! Python, the `lambda_runtime` crate for provided.al2023).
//!
//! Like the other KVM tests these need a KVM host that runs Linux guests; scripts/test.sh runs
//! them in the right place, and anywhere else they fail and say why.

mod common;
use common::agent::Agent;
use common::require_kvm_host;

use serde_json::json;

fn start(name: &str, extra: &[&str]) -> Agent {
    require_kvm_host();
    Agent::start(name, extra)
}

fn function_error(resp: &common::agent::Response) -> Option<&str> {
    resp.header("x-amz-function-error")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_handler_sees_its_context() {
    let agent = start("python", &[]);
    let created = agent
        .create(
            "py",
            "python3.11",
            "handler.context_info",
            "python.zip",
            json!({"MemorySize": 256, "Timeout": 30, "Environment": {"Variables": {"MY_VAR": "hello"}}}),
        )
        .await;
    assert_eq!(created.status, 201, "{}", String::from_utf8_lossy(&created.body));

    let first = agent.invoke("py", json!({"k": 1})).await;
    assert_eq!(first.status, 200, "{}", String::from_utf8_lossy(&first.body));
    assert_eq!(function_error(&first), None, "{}", String::from_utf8_lossy(&first.body));
    assert_eq!(first.header("x-amz-executed-version"), Some("$LATEST"));
    let ctx = first.json();
    let request_id = first.header("x-amzn-requestid").unwrap_or_default();
    assert_eq!(ctx["function_name"], "py");
    assert_eq!(ctx["memory_limit_in_mb"], "256");
    assert_eq!(ctx["aws_request_id"].as_str().unwrap().len(), 36);
    let remaining = ctx["remaining_ms"].as_i64().unwrap();
    assert!(remaining > 20_000 && remaining <= 30_000, "remaining {remaining} ms of a 30 s timeout");
    assert!(ctx["invoked_function_arn"].as_str().unwrap().ends_with(":function:py"));
    assert_eq!(ctx["env"]["MY_VAR"], "hello");
    assert_eq!(ctx["env"]["AWS_LAMBDA_FUNCTION_MEMORY_SIZE"], "256");
    assert_eq!(ctx["env"]["LAMBDA_TASK_ROOT"], "/var/task");
    assert_eq!(ctx["env"]["AWS_LAMBDA_RUNTIME_API"], "127.0.0.1:9001");
    assert_eq!(ctx["env"]["AWS_LAMBDA_INITIALIZATION_TYPE"], "on-demand");
    let tail = first.log_tail();
    let aws_request_id = ctx["aws_request_id"].as_str().unwrap();
    assert!(tail.contains(&format!("START RequestId: {aws_request_id}")), "{tail}");
    assert!(tail.contains("Init Duration:"), "a cold start reports its init: {tail}");
    assert!(tail.contains("Memory Size: 256 MB"), "{tail}");
    let _ = request_id;

    // The warm instance takes the next event: no init this time, a new request id.
    let second = agent.invoke("py", json!({})).await;
    assert_eq!(second.status, 200);
    assert_ne!(second.json()["aws_request_id"], ctx["aws_request_id"]);
    assert!(!second.log_tail().contains("Init Duration:"), "{}", second.log_tail());

    let logs = agent.request("GET", "/2015-03-31/functions/py/logs", &[], vec![]).await;
    assert_eq!(logs.status, 200);
    let logs = String::from_utf8_lossy(&logs.body);
    assert_eq!(logs.matches("REPORT RequestId:").count(), 2, "{logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provided_function_built_with_lambda_runtime() {
    let agent = start("provided", &[]);
    let created = agent.create("rs", "provided.al2023", "bootstrap", "rust.zip", json!({"Timeout": 30})).await;
    assert_eq!(created.status, 201, "{}", String::from_utf8_lossy(&created.body));

    let ok = agent.invoke("rs", json!({"hello": "world"})).await;
    assert_eq!((ok.status, function_error(&ok)), (200, None), "{}", String::from_utf8_lossy(&ok.body));
    assert_eq!(ok.json(), json!({"hello": "world"}));

    let failed = agent.invoke("rs", json!({"fail": true})).await;
    assert_eq!((failed.status, function_error(&failed)), (200, Some("Unhandled")));
    let err = failed.json();
    assert!(err["errorType"].as_str().is_some_and(|t| !t.is_empty()), "{err}");
    assert!(err["errorMessage"].as_str().is_some(), "{err}");

    // The error left the instance usable.
    let again = agent.invoke("rs", json!({"n": 2})).await;
    assert_eq!(again.json(), json!({"n": 2}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_give_lambda_errors_and_the_function_recovers() {
    let agent = start("failures", &[]);
    // A Python exception is the runtime's own error report.
    let created = agent.create("py", "python3.11", "handler.dispatch", "python.zip", json!({"Timeout": 60})).await;
    assert_eq!(created.status, 201, "{}", String::from_utf8_lossy(&created.body));
    let exc = agent.invoke("py", json!({"action": "fail"})).await;
    assert_eq!(function_error(&exc), Some("Unhandled"));
    assert_eq!(exc.json()["errorType"], "ValueError");
    assert_eq!(exc.json()["errorMessage"], "boom");
    let echo = agent.invoke("py", json!({"action": "echo"})).await;
    assert_eq!((echo.status, function_error(&echo)), (200, None), "{}", String::from_utf8_lossy(&echo.body));

    // What ends the runtime or the VM is the platform's to report, whatever the runtime: the
    // provided one, whose instances start in a fraction of a Python one's time, so that the
    // five cold starts after the failures stay cheap.
    let created = agent.create("f", "provided.al2023", "bootstrap", "rust.zip", json!({"Timeout": 60})).await;
    assert_eq!(created.status, 201, "{}", String::from_utf8_lossy(&created.body));
    let works = |resp: common::agent::Response| {
        assert_eq!((resp.status, function_error(&resp)), (200, None), "{}", String::from_utf8_lossy(&resp.body));
        assert_eq!(resp.json(), json!({"works": true}));
    };
    works(agent.invoke("f", json!({"works": true})).await);

    let exited = agent.invoke("f", json!({"exit": 3})).await;
    assert_eq!(function_error(&exited), Some("Unhandled"));
    assert_eq!(exited.json()["errorType"], "Runtime.ExitError");
    assert!(exited.json()["errorMessage"].as_str().unwrap().contains("exit status 3"), "{}", exited.json());
    works(agent.invoke("f", json!({"works": true})).await);

    let killed = agent.invoke("f", json!({"oom": true})).await;
    assert_eq!(function_error(&killed), Some("Unhandled"));
    assert_eq!(killed.json()["errorType"], "Runtime.ExitError");
    assert!(killed.json()["errorMessage"].as_str().unwrap().contains("signal: killed"), "{}", killed.json());
    works(agent.invoke("f", json!({"works": true})).await);

    let panicked = agent.invoke("f", json!({"panic": true})).await;
    assert_eq!(function_error(&panicked), Some("Unhandled"));
    assert_eq!(panicked.json()["errorType"], "Runtime.ExitError");
    assert!(panicked.json()["errorMessage"].as_str().unwrap().contains("Kernel panic"), "{}", panicked.json());
    works(agent.invoke("f", json!({"works": true})).await);

    // A short timeout (a new configuration: the next invoke boots a new instance; warm it so
    // that the cold start is not part of what is timed).
    let update = serde_json::to_vec(&json!({"Timeout": 5})).unwrap();
    assert_eq!(agent.request("PUT", "/2015-03-31/functions/f/configuration", &[], update).await.status, 200);
    works(agent.invoke("f", json!({"works": true})).await);
    let started = std::time::Instant::now();
    let timed_out = agent.invoke("f", json!({"sleep_ms": 60_000})).await;
    let took = started.elapsed();
    assert_eq!(function_error(&timed_out), Some("Unhandled"));
    let msg = timed_out.json()["errorMessage"].as_str().unwrap().to_owned();
    assert!(msg.contains("Task timed out after 5.00 seconds"), "{msg}");
    assert!(took < std::time::Duration::from_secs(7), "answered {took:?} after a 5 s timeout");
    works(agent.invoke("f", json!({"works": true})).await);

    let big = vec![b'x'; 7 << 20];
    let mut payload = b"\"".to_vec();
    payload.extend_from_slice(&big);
    payload.push(b'"');
    let too_large = agent.request("POST", "/2015-03-31/functions/f/invocations", &[], payload).await;
    assert_eq!(too_large.status, 413);
    assert_eq!(too_large.header("x-amzn-errortype"), Some("RequestTooLargeException"));
    works(agent.invoke("f", json!({"works": true})).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_failures_are_function_errors() {
    let agent = start("init", &[]);
    let created =
        agent.create("bad", "python3.11", "no_such_module.handler", "python.zip", json!({"Timeout": 30})).await;
    assert_eq!(created.status, 201, "{}", String::from_utf8_lossy(&created.body));
    for _ in 0..2 {
        let failed = agent.invoke("bad", json!({})).await;
        assert_eq!((failed.status, function_error(&failed)), (200, Some("Unhandled")));
        let err = failed.json();
        assert_eq!(err["errorType"], "Runtime.ImportModuleError", "{err}");
        assert!(failed.log_tail().contains("INIT_REPORT Status: error"), "{}", failed.log_tail());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_invokes_run_on_several_instances() {
    let agent = std::sync::Arc::new(start("concurrent", &[]));
    let created = agent.create("c", "provided.al2023", "bootstrap", "rust.zip", json!({"Timeout": 120})).await;
    assert_eq!(created.status, 201, "{}", String::from_utf8_lossy(&created.body));
    let mut tasks = Vec::new();
    for i in 0..8 {
        let agent = agent.clone();
        tasks.push(tokio::spawn(async move { agent.invoke("c", json!({"sleep_ms": 300, "i": i})).await }));
    }
    for (i, t) in tasks.into_iter().enumerate() {
        let resp = t.await.unwrap();
        assert_eq!((resp.status, function_error(&resp)), (200, None), "{}", String::from_utf8_lossy(&resp.body));
        assert_eq!(resp.json()["i"], i);
    }
    let logs = agent.request("GET", "/2015-03-31/functions/c/logs?bytes=1000000", &[], vec![]).await;
    let logs = String::from_utf8_lossy(&logs.body);
    let cold = logs.matches("Init Duration").count();
    assert!(cold > 1, "8 concurrent invokes ran on {cold} instance(s)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn functions_survive_kill9_and_nothing_is_left_behind() {
    let mut agent = start("restart", &[]);
    let created = agent.create("r", "provided.al2023", "bootstrap", "rust.zip", json!({"Timeout": 30})).await;
    assert_eq!(created.status, 201, "{}", String::from_utf8_lossy(&created.body));
    assert_eq!(agent.invoke("r", json!({"a": 1})).await.json(), json!({"a": 1}));
    let agent_pid = agent.child.id();
    let vmms = ember::vmm::process::running_vmms(agent_pid);
    assert_eq!(vmms.len(), 1, "one instance runs");

    agent.kill9();
    // The VMMs die with their agent.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while vmms.iter().any(|pid| std::path::Path::new(&format!("/proc/{pid}")).exists()) {
        assert!(std::time::Instant::now() < deadline, "VMM processes outlived their agent: {vmms:?}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }

    agent.spawn();
    assert_eq!(std::fs::read_dir(&agent.run_dir).unwrap().count(), 0, "instance files left from before");
    let listed = agent.request("GET", "/2015-03-31/functions/", &[], vec![]).await.json();
    assert_eq!(listed["Functions"][0]["FunctionName"], "r", "{listed}");
    assert_eq!(agent.invoke("r", json!({"b": 2})).await.json(), json!({"b": 2}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vmm_that_dies_is_replaced() {
    let agent = start("vmm-dies", &[]);
    let created = agent.create("v", "provided.al2023", "bootstrap", "rust.zip", json!({"Timeout": 30})).await;
    assert_eq!(created.status, 201, "{}", String::from_utf8_lossy(&created.body));
    assert_eq!(agent.invoke("v", json!({"a": 1})).await.json(), json!({"a": 1}));
    let vmms = ember::vmm::process::running_vmms(agent.child.id());
    assert_eq!(vmms.len(), 1, "one instance runs");
    check_cpu_shares(agent.child.id(), vmms[0]);
    // SAFETY: kill(2) with a pid we just read and SIGKILL; nothing in this process is touched.
    assert_eq!(unsafe { libc::kill(vmms[0] as i32, libc::SIGKILL) }, 0);

    // The agent notices at once: the idle instance leaves the pool and its directory goes.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::fs::read_dir(&agent.run_dir).unwrap().count() > 0 {
        assert!(std::time::Instant::now() < deadline, "the dead instance's directory stayed");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let again = agent.invoke("v", json!({"b": 2})).await;
    assert_eq!((again.status, function_error(&again)), (200, None), "{}", String::from_utf8_lossy(&again.body));
    assert_eq!(again.json(), json!({"b": 2}));
    assert!(again.log_tail().contains("Init Duration"), "a new instance booted: {}", again.log_tail());
}

/// The instance `vmm` (a 128 MB function's, past its init) is capped at its share of CPU and
/// has the default weight; the agent's spares wait at the lowest weight. Checked where the
/// host has cgroup v2 with the cpu controller (the emulated KVM host does); elsewhere the
/// agent runs everything uncapped, as it says.
fn check_cpu_shares(agent: u32, vmm: u32) {
    let controllers = std::fs::read_to_string("/sys/fs/cgroup/cgroup.controllers").unwrap_or_default();
    if !controllers.split_whitespace().any(|c| c == "cpu") {
        eprintln!("no cgroup v2 cpu controller on this host: CPU shares not checked");
        return;
    }
    let cgroup = |pid: u32| {
        let line = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
        let path = line.lines().find_map(|l| l.strip_prefix("0::")).expect("a cgroup v2 line").trim();
        std::path::Path::new("/sys/fs/cgroup").join(path.trim_start_matches('/'))
    };
    let read = |dir: &std::path::Path, file: &str| std::fs::read_to_string(dir.join(file)).unwrap().trim().to_owned();
    let own = cgroup(vmm);
    assert!(own.file_name().unwrap().to_string_lossy().starts_with("vmm-"), "{}", own.display());
    assert_eq!(read(&own, "cpu.max"), "7235 100000", "128/1769 of one CPU per 100 ms");
    assert_eq!(read(&own, "cpu.weight"), "100");

    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let spare = loop {
        if let Some(&pid) = ember::vmm::process::spare_vmms(agent).first() {
            break pid;
        }
        assert!(std::time::Instant::now() < deadline, "the agent keeps no spare VMM");
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let theirs = cgroup(spare);
    assert_ne!(theirs, own);
    assert_eq!(read(&theirs, "cpu.weight"), "1", "a spare waits at the lowest weight");
    assert_eq!(read(&theirs, "cpu.max"), "max 100000", "a spare is not capped");
}

#[test]
fn boto3_runs_every_operation() {
    require_kvm_host();
    // A free loopback port for the agent's TCP listener.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut agent = Agent::start("boto3", &[]);
    agent.tcp_port = Some(port);
    agent.kill9();
    agent.spawn();
    let functions = common::guest_dir().join("functions");
    let status = std::process::Command::new("python3")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/api/test_boto3.py"))
        .arg(format!("http://127.0.0.1:{port}"))
        .arg(functions.join("python.zip"))
        .arg(functions.join("rust.zip"))
        .status()
        .expect("run python3 tests/api/test_boto3.py (boto3 is installed by scripts/test.sh)");
    assert!(status.success(), "the boto3 checks failed: {status}");
}
