//! Ember's Rust test function, run by the provided.al2023 runtime as `/var/task/bootstrap`.
//!
//! - `{"fail": true}`: fails the invocation with errorType `bootstrap::TestError` (lambda_runtime
//!   reports the Rust type name of the error) and errorMessage `boom`;
//! - `{"sleep_ms": n}`: sleeps n milliseconds, then echoes the event;
//! - `{"vsock_connect": port}`: connects a vsock stream to the host on `port`, answers
//!   `{"connected": <bool>}`;
//! - `{"spin": true}`: busy-loops for ever, on every CPU the guest has;
//! - `{"fork_bomb": true}`: forks without end (each child forks again and spins);
//! - `{"fill_tmp": true}`: writes /tmp full, answers `{"enospc": <bool>, "mib": <written>}`;
//! - `{"log_mib": n}`: prints n MiB of log lines, then echoes the event;
//! - `{"response_mib": n}`: answers a string of n MiB;
//! - `{"vsock_flood": n}`: opens n vsock streams to the host (port 1, where nothing listens)
//!   as fast as it can, answers `{"refused": <count>}`;
//! - `{"virtqueue": true}`: drives the /tmp drive's virtio device as a hostile driver would
//!   (see `virtqueue.rs`), answers its report, or `{"error": <why it could not>}`;
//! - `{"random": true}`: answers `{"random": <a u64 from the rand crate's thread RNG>}`;
//! - `{"exit": n}`: ends the runtime process at once with status n, answering nothing;
//! - `{"oom": true}`: uses up the guest's memory, so that the kernel's OOM killer kills the
//!   runtime (Lambda reports `Runtime.ExitError`, "signal: killed");
//! - `{"panic": true}`: panics the guest kernel, through an OOM with `panic_on_oom` set (the
//!   guest kernel has no sysrq);
//! - a function URL event (payload format 2.0) for path `/fail`: fails as `{"fail": true}`;
//!   for path `/respond`: answers the JSON of the request's body (so a client chooses the
//!   status, headers and cookies it gets back);
//! - an SQS event (`Records` whose items all have `eventSource` `aws:sqs`, as an event source
//!   mapping sends): answers `{"batchItemFailures": [{"itemIdentifier": <messageId>}, ...]}`
//!   with the records whose body is exactly `fail` (an empty list when there are none), the
//!   partial batch response of `ReportBatchItemFailures`;
//! - anything else: echoes the event.
//!
//! With `LOG_EVENTS` in its environment it first prints `event <request id> <event JSON>` (one
//! line), so that tests of asynchronous invocations read what each attempt received from the
//! function's log.

mod virtqueue;

use std::fmt;
use std::time::Duration;

use lambda_runtime::{service_fn, Diagnostic, LambdaEvent};
use serde_json::Value;

/// The error of `{"fail": true}`.
#[derive(Debug)]
struct TestError;

impl fmt::Display for TestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("boom")
    }
}

impl std::error::Error for TestError {}

impl From<TestError> for Diagnostic {
    fn from(error: TestError) -> Diagnostic {
        Diagnostic { error_type: std::any::type_name::<TestError>().to_owned(), error_message: error.to_string() }
    }
}

async fn handle(event: LambdaEvent<Value>) -> Result<Value, TestError> {
    if std::env::var_os("LOG_EVENTS").is_some() {
        println!("event {} {}", event.context.request_id, event.payload);
    }
    let payload = event.payload;
    if payload.get("fail") == Some(&Value::Bool(true)) {
        return Err(TestError);
    }
    match payload.get("rawPath").and_then(Value::as_str) {
        Some("/fail") => return Err(TestError),
        Some("/respond") => {
            let body = payload.get("body").and_then(Value::as_str).unwrap_or("null");
            return Ok(serde_json::from_str(body).unwrap_or(Value::Null));
        }
        _ => {}
    }
    if let Some(response) = sqs_batch_response(&payload) {
        return Ok(response);
    }
    if let Some(status) = payload.get("exit").and_then(Value::as_i64) {
        std::process::exit(status as i32);
    }
    if payload.get("panic") == Some(&Value::Bool(true)) {
        // 2, not 1: with 1 the kernel panics only on a system-wide OOM, and just kills the
        // process when the OOM is confined to a memory cgroup (or cpuset or mempolicy).
        eat_memory(Some("2"));
    }
    if payload.get("oom") == Some(&Value::Bool(true)) {
        eat_memory(None);
    }
    if payload.get("spin") == Some(&Value::Bool(true)) {
        spin();
    }
    if payload.get("fork_bomb") == Some(&Value::Bool(true)) {
        fork_bomb();
    }
    if payload.get("fill_tmp") == Some(&Value::Bool(true)) {
        return Ok(fill_tmp());
    }
    if let Some(mib) = payload.get("log_mib").and_then(Value::as_u64) {
        let line = "x".repeat(1023);
        for _ in 0..mib * 1024 {
            println!("{line}");
        }
    }
    if let Some(mib) = payload.get("response_mib").and_then(Value::as_u64) {
        return Ok(Value::String("r".repeat((mib << 20) as usize)));
    }
    if let Some(n) = payload.get("vsock_flood").and_then(Value::as_u64) {
        let refused = (0..n).filter(|_| !vsock_connect(1)).count();
        return Ok(serde_json::json!({ "refused": refused }));
    }
    if let Some(port) = payload.get("vsock_connect").and_then(Value::as_u64) {
        return Ok(serde_json::json!({ "connected": vsock_connect(port as u32) }));
    }
    if payload.get("virtqueue") == Some(&Value::Bool(true)) {
        return Ok(virtqueue::attack().unwrap_or_else(|e| serde_json::json!({ "error": e })));
    }
    if payload.get("random") == Some(&Value::Bool(true)) {
        return Ok(serde_json::json!({ "random": rand::random::<u64>() }));
    }
    if let Some(ms) = payload.get("sleep_ms").and_then(Value::as_u64) {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    Ok(payload)
}

/// Burns every CPU of the guest until the host ends it.
fn spin() -> ! {
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    for _ in 1..cpus {
        std::thread::spawn(|| loop {
            std::hint::spin_loop();
        });
    }
    loop {
        std::hint::spin_loop();
    }
}

/// Forks until the guest can fork no more, every process spinning.
fn fork_bomb() -> ! {
    loop {
        // SAFETY: the child only loops (forking again and spinning); it touches no locks.
        let _ = unsafe { libc::fork() };
        std::hint::spin_loop();
    }
}

/// Writes /tmp until the filesystem refuses; whether it ended in ENOSPC, and how much went in.
fn fill_tmp() -> Value {
    use std::io::Write as _;
    let chunk = vec![0x5a_u8; 1 << 20];
    let mut written = 0u64;
    let mut file = match std::fs::File::create("/tmp/fill") {
        Ok(f) => f,
        Err(e) => return serde_json::json!({ "error": e.to_string() }),
    };
    let enospc = loop {
        match file.write_all(&chunk).and_then(|()| file.sync_data()) {
            Ok(()) => written += 1,
            Err(e) => break e.raw_os_error() == Some(libc::ENOSPC),
        }
    };
    drop(file);
    let _ = std::fs::remove_file("/tmp/fill");
    serde_json::json!({ "enospc": enospc, "mib": written })
}

/// Connects a vsock stream to the host (CID 2) on `port`; whether it connected.
fn vsock_connect(port: u32) -> bool {
    // SAFETY: socket takes no pointers; the fd is closed below.
    let fd = unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return false;
    }
    // SAFETY: sockaddr_vm is plain data; all zeros is a valid start.
    let mut addr: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
    addr.svm_family = libc::AF_VSOCK as libc::sa_family_t;
    addr.svm_cid = libc::VMADDR_CID_HOST;
    addr.svm_port = port;
    let len = std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t;
    // SAFETY: addr is a sockaddr_vm of `len` bytes that lives for the call; fd is ours.
    let connected = unsafe { libc::connect(fd, (&addr as *const libc::sockaddr_vm).cast(), len) } == 0;
    // SAFETY: fd is ours and closed once.
    unsafe { libc::close(fd) };
    connected
}

/// Touches memory until the kernel's OOM killer (or, with `panic_on_oom`, a panic) ends it.
fn eat_memory(panic_on_oom: Option<&str>) -> ! {
    if let Some(value) = panic_on_oom {
        std::fs::write("/proc/sys/vm/panic_on_oom", value).expect("set panic_on_oom");
    }
    // Always overcommit: the OOM comes from touching the memory, at once, not from a refused
    // allocation first.
    std::fs::write("/proc/sys/vm/overcommit_memory", "1").expect("set overcommit_memory");
    // SAFETY: mlockall takes flags and changes only this process's paging: its pages, present
    // and future, stay in RAM, so that the kernel does not first evict and re-read this
    // program's own code for a long while before it gives up and OOMs.
    unsafe { libc::mlockall(libc::MCL_CURRENT | libc::MCL_FUTURE) };
    let mut hog: Vec<Box<[u8]>> = Vec::new();
    loop {
        let mut chunk = vec![0u8; 1 << 20].into_boxed_slice();
        // One byte a page: each touch is a real page the kernel must find.
        for page in chunk.chunks_mut(4096) {
            page[0] = 1;
        }
        // Kept, and seen to be kept: the optimizer must not drop the touches.
        hog.push(std::hint::black_box(chunk));
    }
}

/// The partial batch response to an SQS event: its records whose body is `fail` failed. None
/// for any other event.
fn sqs_batch_response(payload: &Value) -> Option<Value> {
    let records = payload.get("Records")?.as_array()?;
    let from_sqs = |r: &Value| r.get("eventSource").and_then(Value::as_str) == Some("aws:sqs");
    if records.is_empty() || !records.iter().all(from_sqs) {
        return None;
    }
    let failures: Vec<Value> = records
        .iter()
        .filter(|r| r.get("body").and_then(Value::as_str) == Some("fail"))
        .map(|r| serde_json::json!({ "itemIdentifier": r.get("messageId").cloned().unwrap_or(Value::Null) }))
        .collect();
    Some(serde_json::json!({ "batchItemFailures": failures }))
}

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    lambda_runtime::run(service_fn(handle)).await
}
