//! The agent (`ember serve`): Lambda's control and invoke API on a Unix socket (and optionally
//! loopback TCP), the function store, and the pool of microVM instances that run the functions.
//!
//! - [`api`]: HTTP routing, request validation, Lambda JSON shapes and errors.
//! - [`store`]: function metadata in SQLite (WAL) and code by its sha256 under the data dir.
//! - [`codezip`]: checks an uploaded zip and turns it into a read-only ext4 code image.
//! - [`pool`]: instances per function: cold boot, warm reuse, concurrency limit, keep-alive.
//! - [`instance`]: one microVM: its `ember vmm` process and its runtime channel.
//! - [`logs`]: per-function logs on disk, bounded.
//! - [`cgroup`]: each instance's CPU share (cgroup v2 `cpu.max`), where the host allows it.

pub mod api;
pub mod cgroup;
pub mod codezip;
pub mod error;
pub mod instance;
pub mod logs;
pub mod pool;
pub mod snapshots;
pub mod store;

pub use error::ApiError;

/// One invocation as the pool receives it from the API.
#[derive(Debug, Clone)]
pub struct InvokeRequest {
    /// The request id: `x-amzn-RequestId` to the caller, the runtime's `aws_request_id`.
    pub request_id: String,
    /// The function as stored when the request arrived.
    pub function: store::FunctionConfig,
    /// The event (at most 6 MB, checked by the API).
    pub payload: bytes::Bytes,
    /// `X-Amz-Client-Context`, passed to the runtime as is.
    pub client_context: Option<String>,
    /// Whether the caller asked for `X-Amz-Log-Type: Tail`.
    pub want_tail: bool,
}

/// What an invocation produced, successful or not (a function error is still a 200).
#[derive(Debug, Clone, Default)]
pub struct InvokeOutput {
    /// The response payload, or the error JSON for a function error.
    pub payload: Vec<u8>,
    /// `X-Amz-Function-Error`: `Some("Unhandled")` when the function failed.
    pub function_error: Option<&'static str>,
    /// The last 4 KB of this invocation's log, when it was asked for.
    pub log_tail: Option<Vec<u8>>,
    /// `X-Amz-Executed-Version`.
    pub executed_version: String,
}

/// Everything a request handler needs.
pub struct Agent {
    /// Function metadata and code.
    pub store: store::Store,
    /// The running instances.
    pub pool: pool::Pool,
    /// The functions' logs.
    pub logs: logs::Logs,
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
    /// How instances are run.
    pub pool: pool::PoolConfig,
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

/// Runs the agent until it is killed.
pub async fn serve(options: ServeOptions) -> Result<(), ServeError> {
    use std::os::unix::fs::PermissionsExt;
    use std::sync::Arc;

    raise_open_file_limit(options.pool.max_instances);
    std::fs::create_dir_all(&options.data_dir).map_err(io_err(format!("create {}", options.data_dir.display())))?;
    let store = store::Store::open(&options.data_dir).map_err(|e| ServeError::Store(e.to_string()))?;
    let logs = logs::Logs::open(&options.data_dir.join("logs")).map_err(io_err("open the log directory"))?;
    let run_dir = options.pool.run_dir.display().to_string();
    let snapshots = snapshots::Snapshots::open(&options.data_dir.join("snapshots"))
        .map_err(|e| ServeError::Store(e.to_string()))?;
    let pool = pool::Pool::new(options.pool, logs.clone(), snapshots).map_err(io_err(format!("set up {run_dir}")))?;
    pool.start_spares();
    // Provisioned concurrency outlives the agent: start it again.
    for (name, requested) in store.provisioned().map_err(|e| ServeError::Store(e.to_string()))? {
        match store.get(&name) {
            Ok(f) => {
                pool.set_provisioned(f, requested);
            }
            Err(e) => eprintln!("ember: provisioned concurrency of {name}: {e}"),
        }
    }
    let agent = Arc::new(Agent { store, pool, logs });

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
    let on_unix = api::serve_unix(agent.clone(), unix);
    match tcp {
        Some(tcp) => {
            tokio::join!(on_unix, api::serve_tcp(agent, tcp));
        }
        None => on_unix.await,
    }
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
