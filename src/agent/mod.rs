//! The agent (`ember serve`): Lambda's control and invoke API on a Unix socket (and optionally
//! loopback TCP), the function store, and the pool of microVM instances that run the functions.
//!
//! - [`api`]: HTTP only: routing, decoding requests, Lambda's JSON shapes and errors.
//! - [`functions`]: the control plane's use cases (create, update, publish, delete functions,
//!   aliases, layers, tags, concurrency), and [`functions::validate`]: Lambda's limits.
//! - [`invoke`]: the invoke path: a reference to the version that runs (alias weights), the pool;
//!   [`invoke::queue`]: asynchronous invocations (durable queue, retries, destinations).
//! - [`triggers`]: schedules (EventBridge Scheduler's API and expressions), which queue
//!   asynchronous events.
//! - [`store`]: durable state: SQLite (schema versions and migrations) and code by content.
//! - [`pool`]: instances per function version: cold start, restore, warm reuse, concurrency
//!   (reserved, unreserved, provisioned), SnapStart, keep-alive, eviction; [`pool::launch`]
//!   is the seam to the microVMs.
//! - [`instance`]: one microVM: its `ember vmm` process and its runtime channel; [`cgroup`]:
//!   its CPU share.
//! - [`codezip`]: checks uploaded zips and turns them into read-only ext4 images.
//! - [`snapshots`]: init snapshots on disk. [`logs`]: per-function logs on disk, bounded.
//! - [`ids`]: names, ARNs, qualifiers, ids and times. [`limits`]: Lambda's limits, once.

pub mod api;
pub mod broker;
pub mod cgroup;
pub mod codezip;
pub mod functions;
pub mod ids;
pub mod images;
pub mod instance;
pub mod invoke;
pub mod jail;
pub mod limits;
pub mod logs;
pub mod pool;
pub mod snapshots;
pub mod store;
pub mod triggers;

pub use api::ApiError;

use std::sync::Arc;

/// Everything a request handler needs.
pub struct Agent {
    /// The control plane.
    pub control: functions::Control,
    /// The invoke path.
    pub invoker: invoke::Invoker,
    /// Asynchronous invocations.
    pub queue: invoke::queue::AsyncQueue,
    /// Schedules.
    pub scheduler: triggers::schedule::Scheduler,
    /// The functions' logs.
    pub logs: logs::Logs,
    /// The event source mappings' consumers; `None` without a message broker.
    pub consumers: Option<broker::consume::Consumers>,
}

/// How `ember serve` runs.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// The Unix socket to serve the API on (mode 0600).
    pub socket: std::path::PathBuf,
    /// Where the store, code and logs live.
    pub data_dir: std::path::PathBuf,
    /// Also serve on this loopback TCP address.
    pub listen: Option<std::net::SocketAddr>,
    /// Serve function URLs on this address.
    pub url_listen: Option<std::net::SocketAddr>,
    /// How instances are scheduled.
    pub pool: pool::PoolConfig,
    /// How instances are run.
    pub vmm: pool::launch::VmmConfig,
    /// The `ember` binary, run as `ember vmm`.
    pub vmm_binary: std::path::PathBuf,
    /// Cap each instance's CPU at its memory's share (cgroup v2), where the host allows it.
    pub cpu_shares: bool,
    /// The concurrency reservations must leave to the functions without one (default: a
    /// tenth of `max_instances`).
    pub min_unreserved: Option<u32>,
    /// The waits before the first and second retry of an asynchronous invocation.
    pub async_retry_delays: [std::time::Duration; 2],
    /// The message broker (RabbitMQ, `amqp://...`), for queues.
    pub amqp_url: Option<String>,
    /// How VMMs are jailed; `None`: they are not (`--no-jail`).
    pub jail: Option<JailOptions>,
    /// Registries images may be pulled from over plain HTTP (`--insecure-registry HOST:PORT`).
    pub insecure_registries: Vec<String>,
    /// CA certificates (PEM files) trusted for HTTPS registries besides the system's
    /// (`--registry-ca`).
    pub registry_cas: Vec<std::path::PathBuf>,
    /// Registry credentials, a Docker `config.json` (`--registry-credentials`).
    pub registry_credentials: Option<std::path::PathBuf>,
}

/// The uids jailed VMMs run as (`--jail-uid-base`, `--jail-uid-count`).
#[derive(Debug, Clone, Copy)]
pub struct JailOptions {
    /// The first.
    pub uid_base: u32,
    /// How many.
    pub uid_count: u32,
}

/// Errors starting the agent.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A directory, socket or listener could not be set up.
    #[error("{what}: {source}")]
    Io {
        /// What was being set up.
        what: String,
        /// Why.
        source: std::io::Error,
    },
    /// The store could not be opened.
    #[error("store: {0}")]
    Store(String),
    /// The registries' CA or credentials files cannot be used.
    #[error(transparent)]
    Registries(#[from] images::registry::SettingsError),
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ServeError {
    let what = what.into();
    move |source| ServeError::Io { what, source }
}

/// The run directory for a data dir when none is given: under the system's temporary
/// directory, named by a hash of the data dir so that a restarted agent finds (and clears)
/// what its predecessor left. Unix sockets live there, so it must not be on a network share.
pub fn default_run_dir(data_dir: &std::path::Path) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("ember-{}", short_hash(data_dir)))
}

/// 12 hex digits of the sha256 of a path (made absolute where it exists): a stable name for
/// what belongs to that path.
pub fn short_hash(path: &std::path::Path) -> String {
    use sha2::Digest;
    let abs = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned());
    let hash = sha2::Sha256::digest(abs.as_os_str().as_encoded_bytes());
    hash.iter().take(6).map(|b| format!("{b:02x}")).collect()
}

/// Open files the agent holds per running instance: 3 measured (the VMM's control socket,
/// the runtime channel, the child's pipe), and one to spare.
const FILES_PER_INSTANCE: u64 = 4;
/// Open files for everything else: the store, logs, listeners, API connections.
const FILES_BASE: u64 = 1024;

fn open_file_limit() -> Option<libc::rlimit> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes one rlimit into the struct we own.
    (unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0).then_some(limit)
}

/// Raises the limit on open files: the usual soft limit (1024) runs out at about 300
/// instances, well short of what a host holds. Up to what `max_instances` needs where the
/// agent may raise the hard limit (root), else to the hard limit, with a warning when that is
/// short.
fn raise_open_file_limit(max_instances: usize) {
    let Some(limit) = open_file_limit() else { return };
    let needed = FILES_BASE + FILES_PER_INSTANCE * max_instances as u64;
    // Root may raise the hard limit too; anyone may raise the soft limit up to the hard one.
    let allowed = [needed.max(limit.rlim_max), limit.rlim_max]
        .into_iter()
        .find(|&to| {
            let l = libc::rlimit { rlim_cur: to, rlim_max: to };
            // SAFETY: setrlimit reads the struct we pass; a refused raise (EPERM) changes nothing.
            unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &l) == 0 }
        })
        .unwrap_or(limit.rlim_cur);
    if allowed < needed {
        eprintln!(
            "ember: warning: {allowed} open files allowed (ulimit -n), {max_instances} instances may need {needed}"
        );
    }
}

/// The concurrency reservations leave by default: a tenth of the host's (Lambda keeps 100
/// of its default 1000).
pub fn default_min_unreserved(max_instances: usize) -> u32 {
    u32::try_from(max_instances / 10).unwrap_or(u32::MAX)
}

/// Runs the agent until it is killed.
pub async fn serve(options: ServeOptions) -> Result<(), ServeError> {
    use std::os::unix::fs::PermissionsExt;

    raise_open_file_limit(options.pool.max_instances);
    let data_dir = &options.data_dir;
    std::fs::create_dir_all(data_dir).map_err(io_err(format!("create {}", data_dir.display())))?;
    let store = Arc::new(store::Store::open(data_dir).map_err(|e| ServeError::Store(e.to_string()))?);
    for note in store.migration_notes() {
        eprintln!("ember: data dir migrated: {note}");
    }
    let logs = logs::Logs::open(&data_dir.join("logs")).map_err(io_err("open the log directory"))?;
    let snapshots =
        snapshots::Snapshots::open(&data_dir.join("snapshots")).map_err(|e| ServeError::Store(e.to_string()))?;

    // Instances of an earlier agent left sockets in the run dir (their VMMs died with it).
    let run_dir = &options.vmm.run_dir;
    match std::fs::remove_dir_all(run_dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(io_err(format!("clear {}", run_dir.display()))(e))
        }
        _ => {}
    }
    std::fs::create_dir_all(run_dir).map_err(io_err(format!("create {}", run_dir.display())))?;
    let shares = Arc::new(if options.cpu_shares {
        cgroup::CpuShares::new(&short_hash(run_dir))
    } else {
        cgroup::CpuShares::off()
    });
    let jails = match &options.jail {
        Some(j) => match jail::Jails::new(run_dir, j.uid_base, j.uid_count) {
            Ok(jails) => Some(jails),
            Err(e) => {
                eprintln!(
                    "ember: VMMs are not jailed ({e}): they run with the agent's uid, capabilities and filesystem, in \
                     its namespaces, without rlimits; their seccomp filters still apply"
                );
                None
            }
        },
        None => {
            eprintln!("ember: VMMs are not jailed (--no-jail); their seccomp filters still apply");
            None
        }
    };
    let spares = instance::Spares::new(
        options.vmm_binary.clone(),
        Some(run_dir.clone()),
        options.pool.max_boots.max(1),
        shares,
        jails,
    );
    if options.vmm.prefetch && !crate::vmm::kvm_pre_faults() {
        eprintln!(
            "ember: restore prefetch: this kernel's KVM has no KVM_PRE_FAULT_MEMORY (Linux 6.10): working sets are \
             loaded into host memory only, and the guest still faults each page into KVM's tables"
        );
    }
    let launcher = Arc::new(pool::launch::VmmLauncher::new(options.vmm.clone(), spares));
    let pool = pool::Pool::new(options.pool.clone(), logs.clone(), snapshots, launcher);
    pool.start_spares();

    let host = store::concurrency::HostLimits {
        concurrent: u32::try_from(options.pool.max_instances).unwrap_or(u32::MAX),
        min_unreserved: options.min_unreserved.unwrap_or_else(|| default_min_unreserved(options.pool.max_instances)),
    };
    let registries = images::registry::Registries::new(
        options.insecure_registries.iter().cloned(),
        &options.registry_cas,
        options.registry_credentials.as_deref(),
    )?;
    let images_dir = options.data_dir.join(images::DIR);
    let images = images::Images::open(&images_dir, registries)
        .map_err(|source| ServeError::Io { what: format!("open {}", images_dir.display()), source })?;
    let control = functions::Control::new(store.clone(), Arc::new(images), pool.clone(), logs.clone(), host);
    // Reservations, provisioned concurrency and SnapStart preparations outlive the agent.
    control.start().map_err(|e| ServeError::Store(e.to_string()))?;
    control.collect_images().map_err(|e| ServeError::Store(e.to_string()))?;
    let invoker = invoke::Invoker::new(store.clone(), pool.clone());
    // Events accepted before a restart (or a crash) run now.
    let outbox = Arc::new(tokio::sync::Notify::new());
    let queue = invoke::queue::AsyncQueue::start(
        store.clone(),
        invoker.clone(),
        pool,
        options.async_retry_delays,
        outbox.clone(),
    )
    .map_err(|e| ServeError::Store(e.to_string()))?;
    // Messages owed to the broker go out, and the mappings consume, once it answers.
    let consumers = match &options.amqp_url {
        Some(url) => {
            let broker = Arc::new(broker::Broker::new(url));
            broker::outbox::start(store.clone(), broker.clone(), outbox);
            Some(broker::consume::Consumers::start(store.clone(), broker, invoker.clone()))
        }
        None => {
            let waiting = store.outbox_len().map_err(|e| ServeError::Store(e.to_string()))?;
            if waiting > 0 {
                eprintln!("ember: warning: {waiting} messages for queues wait for an agent with --amqp-url");
            }
            None
        }
    };
    let scheduler =
        triggers::schedule::Scheduler::start(store, queue.clone()).map_err(|e| ServeError::Store(e.to_string()))?;
    let agent = Arc::new(Agent { control, invoker, queue, scheduler, logs, consumers });

    match std::fs::remove_file(&options.socket) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(io_err(format!("remove stale {}", options.socket.display()))(e))
        }
        _ => {}
    }
    if let Some(parent) = options.socket.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(io_err(format!("create {}", parent.display())))?;
    }
    let unix = tokio::net::UnixListener::bind(&options.socket)
        .map_err(io_err(format!("bind {}", options.socket.display())))?;
    std::fs::set_permissions(&options.socket, std::fs::Permissions::from_mode(0o600))
        .map_err(io_err(format!("chmod {}", options.socket.display())))?;
    eprintln!("ember: serving on {}", options.socket.display());
    let tcp = match options.listen {
        Some(addr) => {
            let l = tokio::net::TcpListener::bind(addr).await.map_err(io_err(format!("listen on {addr}")))?;
            eprintln!("ember: serving on http://{}", l.local_addr().map_err(io_err("local address"))?);
            Some(l)
        }
        None => None,
    };
    let urls = match options.url_listen {
        Some(addr) => {
            let l = tokio::net::TcpListener::bind(addr).await.map_err(io_err(format!("listen on {addr}")))?;
            eprintln!("ember: serving function URLs on http://{}", l.local_addr().map_err(io_err("local address"))?);
            Some(l)
        }
        None => None,
    };
    let on_tcp = async {
        match tcp {
            Some(tcp) => api::serve_tcp(agent.clone(), tcp).await,
            None => std::future::pending().await,
        }
    };
    let on_urls = async {
        match urls {
            Some(l) => api::urls::serve(agent.clone(), l).await,
            None => std::future::pending().await,
        }
    };
    tokio::join!(api::serve_unix(agent.clone(), unix), on_tcp, on_urls);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_file_limit_is_raised_to_the_hard_limit() {
        let limit = open_file_limit().expect("getrlimit");
        let lowered = libc::rlimit { rlim_cur: limit.rlim_cur.min(limit.rlim_max) - 1, ..limit };
        // SAFETY: setrlimit reads the struct; one file fewer than before harms no other test.
        assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lowered) }, 0);
        raise_open_file_limit(1);
        let raised = open_file_limit().expect("getrlimit");
        assert_eq!(raised.rlim_cur, raised.rlim_max);
        assert!(raised.rlim_cur >= limit.rlim_max.max(FILES_BASE + FILES_PER_INSTANCE));
    }
}
