//! Fuzzes the agent's HTTP API, which parses every request a client sends: the routing table,
//! function references and qualifiers, query strings, the members check and the JSON shapes of
//! every operation, and the use cases behind them. One agent per process, on a temporary data
//! dir, whose launches fail at once (there is no guest to boot), so that everything short of a
//! microVM runs.
//!
//! Input: the first byte picks the method (GET, POST, PUT, DELETE); then the path and query up
//! to the first newline; then one optional header line (`Name: value`) up to the next newline;
//! the rest is the body. The target passes if no input panics, hangs, or answers anything
//! but a well-formed Lambda response (an error always has its `x-amzn-ErrorType`).
#![no_main]

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use ember::agent::{api, functions, invoke, logs, pool, snapshots, store, Agent};
use http_body_util::Full;
use libfuzzer_sys::fuzz_target;

struct Fixture {
    runtime: tokio::runtime::Runtime,
    agent: Arc<Agent>,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let dir = std::env::temp_dir().join(format!("ember-fuzz-api-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let agent = runtime.block_on(async {
            let store = Arc::new(store::Store::open(&dir).unwrap());
            let logs = logs::Logs::open(&dir.join("logs")).unwrap();
            let snapshots = snapshots::Snapshots::open(&dir.join("snapshots")).unwrap();
            let vmm = pool::launch::VmmConfig {
                guest_dir: dir.join("no-guest"),
                run_dir: dir.join("run"),
                init_timeout: std::time::Duration::from_secs(1),
                keep_alive: std::time::Duration::from_secs(1),
                console_dir: None,
            };
            let shares = Arc::new(ember::agent::cgroup::CpuShares::off());
            let spares = ember::agent::instance::Spares::new(dir.join("no-ember"), 1, shares);
            let launcher = Arc::new(pool::launch::VmmLauncher::new(vmm, spares));
            let config = pool::PoolConfig { max_instances: 8, max_boots: 1, idle_memory_kib: 1 << 20 };
            let pool = pool::Pool::new(config, logs.clone(), snapshots, launcher);
            let limits = store::concurrency::HostLimits { concurrent: 8, min_unreserved: 1 };
            let control = functions::Control::new(store.clone(), pool.clone(), logs.clone(), limits);
            let invoker = invoke::Invoker::new(store.clone(), pool.clone());
            let delays = invoke::retry::DEFAULT_RETRY_DELAYS;
            let queue = invoke::queue::AsyncQueue::start(store.clone(), invoker.clone(), pool, delays).unwrap();
            let scheduler = ember::agent::triggers::schedule::Scheduler::start(store, queue.clone()).unwrap();
            Arc::new(Agent { control, invoker, queue, scheduler, logs })
        });
        Fixture { runtime, agent }
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&method, rest)) = data.split_first() else { return };
    let method = ["GET", "POST", "PUT", "DELETE"][usize::from(method % 4)];
    let mut parts = rest.splitn(3, |b| *b == b'\n');
    let Ok(uri) = std::str::from_utf8(parts.next().unwrap_or_default()) else { return };
    let header = parts.next().and_then(|h| std::str::from_utf8(h).ok()).and_then(|h| h.split_once(": "));
    let body = Bytes::copy_from_slice(parts.next().unwrap_or_default());
    let mut req = hyper::Request::builder().method(method).uri(format!("/{}", uri.trim_start_matches('/')));
    if let Some((name, value)) = header {
        req = req.header(name, value);
    }
    let Ok(req) = req.body(Full::new(body)) else { return };
    let f = fixture();
    let response = f.runtime.block_on(api::handle(f.agent.clone(), req));
    assert!(response.headers().contains_key("x-amzn-requestid"));
    if response.status().is_client_error() || response.status().is_server_error() {
        assert!(response.headers().contains_key("x-amzn-errortype"), "an error without its type");
    }
});
