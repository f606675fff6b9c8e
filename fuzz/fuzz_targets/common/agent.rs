//! One agent per fuzz process, for the targets that drive the API: its store in a temporary
//! data dir, no message broker, and launches that fail at once (there is no guest to boot and no
//! `ember` binary to run), so that everything short of a microVM runs.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use ember::agent::{cgroup, functions, images, instance, invoke, logs, pool, snapshots, store, triggers, Agent};

pub struct Fixture {
    pub runtime: tokio::runtime::Runtime,
    pub agent: Arc<Agent>,
    pub dir: PathBuf,
}

/// The agent, made on first use; `tag` names its data dir.
pub fn fixture(tag: &str) -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
        let dir = std::env::temp_dir().join(format!("ember-fuzz-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the data dir");
        let agent = runtime.block_on(async {
            let store = Arc::new(store::Store::open(&dir).expect("open the store"));
            let logs = logs::Logs::open(&dir.join("logs")).expect("open the logs");
            let snapshots = snapshots::Snapshots::open(&dir.join("snapshots")).expect("open the snapshots");
            let vmm = pool::launch::VmmConfig {
                guest_dir: dir.join("no-guest"),
                run_dir: dir.join("run"),
                init_timeout: Duration::from_secs(1),
                keep_alive: Duration::from_secs(1),
                console_dir: None,
                prefetch: false,
            };
            let shares = Arc::new(cgroup::CpuShares::off());
            let spares = instance::Spares::new(dir.join("no-ember"), None, 1, shares, None);
            let launcher = Arc::new(pool::launch::VmmLauncher::new(vmm, spares));
            let config = pool::PoolConfig { max_instances: 8, max_boots: 1, idle_memory_kib: 1 << 20 };
            let pool = pool::Pool::new(config, logs.clone(), snapshots, launcher);
            let limits = store::concurrency::HostLimits { concurrent: 8, min_unreserved: 1 };
            // No registry is named insecure: an image URI is refused before any connection.
            let images = images::Images::open(&dir.join("images"), Default::default()).expect("open the images");
            let control = functions::Control::new(store.clone(), Arc::new(images), pool.clone(), logs.clone(), limits);
            let invoker = invoke::Invoker::new(store.clone(), pool.clone());
            let delays = invoke::retry::DEFAULT_RETRY_DELAYS;
            let outbox = Arc::new(tokio::sync::Notify::new());
            let queue = invoke::queue::AsyncQueue::start(store.clone(), invoker.clone(), pool, delays, outbox)
                .expect("start the async queue");
            let scheduler = triggers::schedule::Scheduler::start(store, queue.clone()).expect("start the scheduler");
            Arc::new(Agent { control, invoker, queue, scheduler, logs, consumers: None })
        });
        Fixture { runtime, agent, dir }
    })
}
