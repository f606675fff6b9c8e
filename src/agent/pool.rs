//! Instances per function: a warm idle instance takes the next invocation of its function
//! (one event at a time per instance, as Lambda does); with none idle a new one boots, up to a
//! per-host limit past which invocations get 429. Idle instances go after a keep-alive; at the
//! limit, the least recently used idle instance of another function makes room.
//!
//! SnapStart functions start by restoring their init snapshot instead of booting. The first
//! cold start of a revision makes the snapshot: a SnapStart boot runs the runtime's init, the
//! VM is snapshotted when the runtime says it is ready, and the instance is then restored
//! from it like every later one (one snapshot is made at a time per function; cold starts
//! that come meanwhile wait for it). A snapshot that cannot be restored is removed, with a
//! line in the function's log saying why, and that cold start boots instead.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ember_proto::runtime::{self, Config};

use super::cgroup::CpuShares;
use super::instance::{self, Gone, Handle, Instance, Job, JobDone, JobResult, LaunchSpec};
use super::logs::{FunctionLog, InvocationLog, Logs, Report};
use super::snapshots::{Fingerprint, Meta, Snapshots};
use super::store::{lambda_time, random_uuid, FunctionConfig};
use super::{ApiError, InvokeOutput, InvokeRequest};
use crate::vmm::process::VmmSpec;
use crate::vmm::DEFAULT_CMDLINE;

/// The largest response payload (Lambda's 6 MB).
pub const MAX_RESPONSE_BYTES: usize = 6 * 1024 * 1024;
/// How often an instance's private memory is measured, at most, when it goes idle.
const MEASURE_EVERY: Duration = Duration::from_secs(10);
/// Memory per whole vCPU, in MB (Lambda's).
const MB_PER_VCPU: u32 = 1769;
/// The most vCPUs a function gets.
const MAX_VCPUS: u32 = 6;

/// How the pool runs instances.
#[derive(Clone, Debug)]
pub struct PoolConfig {
    /// Where the kernel (`vmlinux`) and the runtime images (`runtimes/<runtime>.ext4`) are.
    pub guest_dir: PathBuf,
    /// Where instances keep their sockets (must not be on a filesystem without Unix sockets).
    pub run_dir: PathBuf,
    /// The `ember` binary, run as `ember vmm`.
    pub vmm_binary: PathBuf,
    /// The most instances on this host (booting, busy or idle).
    pub max_instances: usize,
    /// The most boots under way at once.
    pub max_boots: usize,
    /// Cap each instance's CPU at its memory's share (cgroup v2), where the host allows it.
    pub cpu_shares: bool,
    /// How long an idle instance is kept.
    pub keep_alive: Duration,
    /// How long a boot plus the runtime's init may take.
    pub init_timeout: Duration,
    /// Keep each instance's serial console in `<dir>/<instance id>.console` (for debugging).
    pub console_dir: Option<PathBuf>,
    /// The most private memory idle instances may hold together, in KiB; past it the least
    /// recently used ones (not provisioned ones) stop.
    pub idle_memory_kib: u64,
}

/// The microVM instances of every function on this host.
#[derive(Clone)]
pub struct Pool {
    shared: Arc<Shared>,
}

struct Shared {
    config: PoolConfig,
    /// Boots under way at once are capped (`max_boots`): a burst of cold starts queues here,
    /// and takes instances that go idle meanwhile instead of booting more.
    boots: tokio::sync::Semaphore,
    /// Woken when an instance goes back to idle.
    released: tokio::sync::Notify,
    logs: Logs,
    state: Mutex<State>,
    snapshots: Snapshots,
    /// Held while a function's snapshot is looked up or made.
    snapshot_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// VMM processes started ahead of launches: one per boot slot.
    vmms: Arc<instance::Spares>,
}

#[derive(Default)]
struct State {
    /// Idle instances by function name, most recently used last.
    idle: HashMap<String, Vec<Idle>>,
    /// Live instances: booting, busy and idle.
    live: usize,
    /// Bumped by [`Pool::retire`]: instances of an older epoch are not reused.
    epochs: HashMap<String, u64>,
    /// Provisioned concurrency, by function name.
    provisioned: HashMap<String, Provisioned>,
    /// Provisioned instances (idle or busy): instance id to function name. They are never
    /// retired for idling nor evicted to make room.
    pinned: HashMap<String, String>,
}

/// A function's provisioned concurrency.
struct Provisioned {
    /// The function as the instances should run it.
    function: FunctionConfig,
    requested: u32,
    /// Provisioned instances alive.
    allocated: u32,
    /// Why provisioning stopped, if it did.
    failed: Option<String>,
    last_modified: String,
    /// Bumped by every change of the configuration; a provisioner of an older one stops.
    generation: u64,
    /// Wakes the provisioner: an instance is gone, or the configuration changed.
    wake: Arc<tokio::sync::Notify>,
}

/// What GetProvisionedConcurrencyConfig answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProvisionedStatus {
    /// Instances asked for.
    pub requested: u32,
    /// Instances running (idle or busy).
    pub allocated: u32,
    /// `IN_PROGRESS`, `READY` or `FAILED`.
    pub status: &'static str,
    /// Why it failed.
    pub reason: Option<String>,
    /// When it was last set.
    pub last_modified: String,
}

impl Provisioned {
    fn status(&self) -> ProvisionedStatus {
        let status = match (&self.failed, self.allocated >= self.requested) {
            (Some(_), _) => "FAILED",
            (None, true) => "READY",
            (None, false) => "IN_PROGRESS",
        };
        ProvisionedStatus {
            requested: self.requested,
            allocated: self.allocated.min(self.requested),
            status,
            reason: self.failed.clone(),
            last_modified: self.last_modified.clone(),
        }
    }
}

impl State {
    /// Takes the least recently used idle instance that is not provisioned out of the pool
    /// (its slot still counted); dropping it ends the instance.
    fn evict_oldest_idle(&mut self) -> Option<Idle> {
        let pinned = &self.pinned;
        let (name, i) = self
            .idle
            .iter()
            .flat_map(|(name, list)| list.iter().enumerate().map(move |(i, idle)| (idle, name, i)))
            .filter(|(idle, _, _)| !pinned.contains_key(&idle.handle.id))
            .min_by_key(|(idle, _, _)| idle.since)
            .map(|(_, name, i)| (name.clone(), i))?;
        let list = self.idle.get_mut(&name).expect("listed above");
        let idle = list.remove(i);
        if list.is_empty() {
            self.idle.remove(&name);
        }
        Some(idle)
    }

    /// Forgets that instance `id` was provisioned; its function's provisioner makes another.
    fn unpin(&mut self, id: &str) {
        let Some(function) = self.pinned.remove(id) else { return };
        if let Some(p) = self.provisioned.get_mut(&function) {
            p.allocated = p.allocated.saturating_sub(1);
            p.wake.notify_one();
        }
    }
}

struct Idle {
    handle: Handle,
    revision: String,
    epoch: u64,
    since: Instant,
}

impl Idle {
    /// Its private memory as last measured, in KiB (0 until measured).
    fn private_kib(&self) -> u64 {
        self.handle.private_memory.map_or(0, |(_, kib)| kib)
    }
}

/// An instance taken for one invocation.
struct Taken {
    handle: Handle,
    epoch: u64,
    /// A new instance's boot and init, or its restore.
    started: Option<Started>,
}

/// How a new instance came to be, and how long it took.
#[derive(Clone, Copy, Debug)]
enum Started {
    Booted(Duration),
    Restored(Duration),
}

/// What a new instance starts from.
enum Start {
    /// A boot.
    Boot,
    /// A SnapStart boot, to be snapshotted when its init is over.
    SnapStartBoot,
    /// A restore of the snapshot in this directory.
    Restore(PathBuf),
}

impl Pool {
    /// A pool with no instances. Clears `run_dir`, where instances of an earlier agent may have
    /// left sockets (their VMMs died with it).
    pub fn new(config: PoolConfig, logs: Logs, snapshots: Snapshots) -> std::io::Result<Pool> {
        match std::fs::remove_dir_all(&config.run_dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        std::fs::create_dir_all(&config.run_dir)?;
        let shares = Arc::new(if config.cpu_shares {
            CpuShares::new(&super::short_hash(&config.run_dir))
        } else {
            CpuShares::off()
        });
        let boots = tokio::sync::Semaphore::new(config.max_boots.max(1));
        let released = tokio::sync::Notify::new();
        let snapshot_locks = Mutex::default();
        let state = Mutex::default();
        let vmms = instance::Spares::new(config.vmm_binary.clone(), config.max_boots.max(1), shares);
        Ok(Pool { shared: Arc::new(Shared { config, boots, released, logs, state, snapshots, snapshot_locks, vmms }) })
    }

    /// Starts the spare VMM processes launches take (see [`instance::Spares`]).
    pub fn start_spares(&self) {
        self.shared.vmms.fill();
    }

    /// Runs one invocation on a warm idle instance of the function, or a new one.
    pub async fn invoke(&self, req: InvokeRequest) -> Result<InvokeOutput, ApiError> {
        let f = &req.function;
        let request_id = req.request_id.clone();
        let flog = self.shared.logs.function(&f.name);
        let taken = self.take(f, &request_id).await?;
        let Taken { handle, epoch, started: new } = match taken {
            Ok(t) => t,
            // The runtime failed its init: a function error, as Lambda answers it.
            Err(output) => return Ok(output.with_tail(req.want_tail)),
        };

        let started = Instant::now();
        let timeout = Duration::from_secs(u64::from(f.timeout_s));
        let (reply, done) = tokio::sync::oneshot::channel();
        let job = Job {
            invoke: runtime::Invoke {
                request_id: request_id.clone(),
                remaining_ms: timeout.as_millis() as u64,
                function_arn: f.arn.clone(),
                trace_id: trace_id(),
                client_context: req.client_context.clone(),
                cognito_identity: None,
            },
            payload: req.payload.clone(),
            deadline: tokio::time::Instant::from_std(started + timeout),
            log: InvocationLog::start(flog, &request_id, &f.version, req.want_tail),
            reply,
        };
        if !handle.submit(job) {
            self.shared.gone_taken();
            return Err(ApiError::service("the instance ended before it took the event"));
        }
        let Ok(JobDone { result, mut log, reusable }) = done.await else {
            self.shared.gone_taken();
            return Err(ApiError::service("the instance ended during the invocation"));
        };
        let duration = started.elapsed();
        let (payload, function_error, memory_used) = match result {
            JobResult::Response { body, memory_used_mib } if body.len() > MAX_RESPONSE_BYTES => {
                let msg = format!(
                    "Response payload size exceeded maximum allowed payload size ({MAX_RESPONSE_BYTES} bytes)."
                );
                log.output(format!("{msg}\n").as_bytes());
                (error_json("Function.ResponseSizeTooLarge", &msg), Some("Unhandled"), memory_used_mib)
            }
            JobResult::Response { body, memory_used_mib } => (body, None, memory_used_mib),
            JobResult::Error { body, memory_used_mib, .. } => (body, Some("Unhandled"), memory_used_mib),
            JobResult::TimedOut => {
                let msg = format!("Task timed out after {:.2} seconds", timeout.as_secs_f64());
                log.output(format!("{} {request_id} {msg}\n", timestamp()).as_bytes());
                let body = error_json("Sandbox.Timedout", &format!("RequestId: {request_id} Error: {msg}"));
                (body, Some("Unhandled"), 0)
            }
            JobResult::Broken(e) => {
                let (kind, msg) = broken(&request_id, &e);
                log.output(format!("{msg}\n{kind}\n").as_bytes());
                (error_json(kind, &msg), Some("Unhandled"), 0)
            }
        };
        let report = Report {
            duration_ms: duration.as_secs_f64() * 1000.0,
            memory_mib: f.memory_mib,
            max_memory_used_mib: memory_used,
            init_duration_ms: match new {
                Some(Started::Booted(d)) => Some(d.as_secs_f64() * 1000.0),
                _ => None,
            },
            restore_duration_ms: match new {
                Some(Started::Restored(d)) => Some(d.as_secs_f64() * 1000.0),
                _ => None,
            },
        };
        let log_tail = log.finish(&request_id, &report);
        if reusable {
            self.release(&f.name, &f.revision_id, handle, epoch);
        }
        Ok(InvokeOutput { payload, function_error, log_tail, executed_version: f.version.clone() })
    }

    /// Retires every instance of `function` (after its code or configuration changed, or it
    /// was deleted): idle ones at once, busy ones when their invocation ends; and its snapshot.
    pub fn retire(&self, function: &str) {
        self.shared.snapshots.remove(function);
        let dropped = {
            let mut state = self.shared.lock();
            *state.epochs.entry(function.to_owned()).or_default() += 1;
            let dropped = state.idle.remove(function).unwrap_or_default();
            state.live -= dropped.len();
            for idle in &dropped {
                state.unpin(&idle.handle.id);
            }
            dropped
        };
        // Dropping the handles ends the actors, which destroy their instances.
        drop(dropped);
    }

    /// An instance for one invocation: an idle one, or a new one once a boot slot is free,
    /// or one that went idle while this invocation waited for a slot.
    async fn take(&self, f: &FunctionConfig, request_id: &str) -> Result<Result<Taken, InvokeOutput>, ApiError> {
        loop {
            let released = self.shared.released.notified();
            tokio::pin!(released);
            // Registered before looking, so that a release between the look and the wait wakes us.
            released.as_mut().enable();
            if let Some(taken) = self.take_idle(f) {
                return Ok(taken);
            }
            tokio::select! {
                permit = self.shared.boots.acquire() => {
                    let _permit = permit.expect("the boot semaphore is never closed");
                    return self.cold_start(f, request_id).await;
                }
                () = &mut released => {}
            }
        }
    }

    fn take_idle(&self, f: &FunctionConfig) -> Option<Result<Taken, InvokeOutput>> {
        let mut state = self.shared.lock();
        let epoch = state.epochs.get(&f.name).copied().unwrap_or_default();
        let idle = state.idle.get_mut(&f.name)?;
        let pos = idle.iter().rposition(|i| i.revision == f.revision_id && i.epoch == epoch)?;
        let Idle { handle, epoch, .. } = idle.remove(pos);
        Some(Ok(Taken { handle, epoch, started: None }))
    }

    /// Starts a new instance (a boot, or a SnapStart function's restore), once a slot is free.
    async fn cold_start(&self, f: &FunctionConfig, request_id: &str) -> Result<Result<Taken, InvokeOutput>, ApiError> {
        let epoch = self.reserve_slot(&f.name)?;
        let flog = self.shared.logs.function(&f.name);
        let launched = self.start(f, &flog).await;
        match launched {
            Ok(instance) => {
                let took = instance.init_duration;
                let started = Some(if instance.restored { Started::Restored(took) } else { Started::Booted(took) });
                let handle = instance::spawn_actor(instance, self.shared.clone(), self.shared.config.keep_alive);
                Ok(Ok(Taken { handle, epoch, started }))
            }
            Err(e) => {
                self.shared.gone_taken();
                let (kind, msg, body) = match e {
                    instance::Error::Host(m) => {
                        return Err(ApiError::service(format!("cannot start an instance: {m}")))
                    }
                    instance::Error::InitError { error_type, body } => {
                        let (kind, msg) = init_error_text(error_type, &body);
                        (kind, msg, body)
                    }
                    other => {
                        let (kind, msg) = broken(request_id, &other);
                        (kind.to_owned(), msg.clone(), error_json(kind, &msg))
                    }
                };
                let mut log = InvocationLog::start(flog, request_id, &f.version, true);
                log.output(format!("INIT_REPORT Status: error Error Type: {kind}\n{msg}\n").as_bytes());
                let tail = log.finish(request_id, &Report { memory_mib: f.memory_mib, ..Report::default() });
                Ok(Err(InvokeOutput {
                    payload: body,
                    function_error: Some("Unhandled"),
                    log_tail: tail,
                    executed_version: f.version.clone(),
                }))
            }
        }
    }

    /// Starts an instance of `f`: a restore for a SnapStart function, else a boot.
    async fn start(&self, f: &FunctionConfig, flog: &FunctionLog) -> Result<Instance, instance::Error> {
        if f.snap_start {
            self.restore(f, flog).await
        } else {
            self.boot(f, flog, false).await
        }
    }

    /// Launches an instance from `start()`, twice at most. A VM that died before its runtime
    /// could start, or crashed (a guest kernel panic or triple fault, the VMM gone) before it
    /// was given the event, is most likely the platform's failure, not the function's:
    /// another is launched, once. A runtime that exits or reports an init error is the
    /// function's and is not retried; nor is a restore the VMM itself refused.
    async fn launch_twice(
        &self,
        f: &FunctionConfig,
        flog: &FunctionLog,
        start: impl Fn() -> Start,
    ) -> Result<Instance, instance::Error> {
        let mut attempts = 0;
        loop {
            attempts += 1;
            match instance::launch(self.launch_spec(f, &random_hex(), start())?, flog).await {
                Err(instance::Error::Boot(why) | instance::Error::VmEnded(why)) if attempts < 2 => {
                    eprintln!(
                        "ember: {}: a new instance ended before its first event ({why}); starting another",
                        f.name
                    );
                }
                other => return other,
            }
        }
    }

    /// Boots an instance (with `snap_start`, a SnapStart boot to be snapshotted).
    async fn boot(
        &self,
        f: &FunctionConfig,
        flog: &FunctionLog,
        snap_start: bool,
    ) -> Result<Instance, instance::Error> {
        self.launch_twice(f, flog, || if snap_start { Start::SnapStartBoot } else { Start::Boot }).await
    }

    /// Restores an instance of a SnapStart function from its snapshot, made first if need be.
    /// Without a usable snapshot the instance boots. A restored guest that crashes before its
    /// runtime is back is restored again, once, as a boot would be booted again; a snapshot the
    /// VMM cannot restore is removed.
    async fn restore(&self, f: &FunctionConfig, flog: &FunctionLog) -> Result<Instance, instance::Error> {
        let Some(dir) = self.init_snapshot(f, flog).await? else {
            return self.boot(f, flog, false).await;
        };
        match self.launch_twice(f, flog, || Start::Restore(dir.clone())).await {
            Err(instance::Error::Restore(why)) => {
                let line = format!(
                    "{} The SnapStart snapshot of {} could not be restored and was removed; this instance boots \
                     instead. Reason: {why}\n",
                    timestamp(),
                    f.name
                );
                eprint!("ember: {line}");
                flog.append_output(line.as_bytes());
                self.shared.snapshots.remove(&f.name);
                self.boot(f, flog, false).await
            }
            other => other,
        }
    }

    /// The directory of the function's init snapshot: the one on disk if it matches the
    /// function, else a new one from a SnapStart boot (one at a time per function). `None`
    /// when none could be made for a reason that is the host's (logged); an init failure is
    /// the function's and comes back as the error.
    async fn init_snapshot(&self, f: &FunctionConfig, flog: &FunctionLog) -> Result<Option<PathBuf>, instance::Error> {
        let files = match self.snapshot_files(f) {
            Ok(files) => files,
            Err(e) => return Err(instance::Error::Host(format!("cannot read the files the instance runs from: {e}"))),
        };
        let lock = self.shared.snapshot_lock(&f.name);
        let _making = lock.lock().await;
        if let Some(dir) = self.shared.snapshots.lookup(f, &files) {
            return Ok(Some(dir));
        }
        let staging = match self.shared.snapshots.staging(&f.name) {
            Ok(dir) => dir,
            Err(e) => {
                eprintln!("ember: {}: no SnapStart snapshot: {e}", f.name);
                return Ok(None);
            }
        };
        let instance = match self.boot(f, flog, true).await {
            Ok(instance) => instance,
            Err(e) => {
                self.shared.snapshots.discard(&staging);
                return Err(e);
            }
        };
        let started = Instant::now();
        let made = instance.snapshot(&staging).await.map_err(|e| e.to_string()).and_then(|_| {
            let meta = Meta {
                revision_id: f.revision_id.clone(),
                files,
                created: lambda_time(SystemTime::now()),
                snapshot_ms: started.elapsed().as_millis() as u64,
            };
            self.shared.snapshots.commit(&f.name, &staging, &meta).map_err(|e| e.to_string())
        });
        match made {
            Ok(dir) => Ok(Some(dir)),
            Err(why) => {
                eprintln!("ember: {}: the SnapStart snapshot failed: {why}", f.name);
                self.shared.snapshots.discard(&staging);
                Ok(None)
            }
        }
    }

    /// The files a function's instance runs from (kernel, runtime image, code image), as a
    /// snapshot records them.
    fn snapshot_files(&self, f: &FunctionConfig) -> std::io::Result<Vec<Fingerprint>> {
        let guest = &self.shared.config.guest_dir;
        [guest.join("vmlinux"), runtime_image(guest, &f.runtime), f.code_image.clone()]
            .iter()
            .map(|p| Fingerprint::of(p))
            .collect()
    }

    /// Counts a new instance, evicting the least recently used idle instance of another
    /// function when the host is full. Returns the function's epoch.
    fn reserve_slot(&self, function: &str) -> Result<u64, ApiError> {
        let mut state = self.shared.lock();
        if state.live < self.shared.config.max_instances {
            state.live += 1;
        } else {
            // The evicted instance's slot passes to the new one, so `live` stays.
            // Dropping its handle ends the actor, which destroys the instance.
            if state.evict_oldest_idle().is_none() {
                return Err(ApiError::too_many_requests("Rate Exceeded."));
            }
        }
        Ok(state.epochs.get(function).copied().unwrap_or_default())
    }

    fn release(&self, function: &str, revision: &str, handle: Handle, epoch: u64) {
        let mut state = self.shared.lock();
        if state.epochs.get(function).copied().unwrap_or_default() != epoch {
            state.live -= 1;
            state.unpin(&handle.id);
            return;
        }
        let (id, pid) = (handle.id.clone(), handle.pid);
        // A guest's private memory grows with its first invocations and then hardly moves:
        // measured when it first goes idle, then at most every MEASURE_EVERY, not per invoke.
        let due = handle.private_memory.is_none_or(|(at, _)| at.elapsed() >= MEASURE_EVERY);
        let idle = Idle { handle, revision: revision.to_owned(), epoch, since: Instant::now() };
        state.idle.entry(function.to_owned()).or_default().push(idle);
        drop(state);
        self.shared.released.notify_waiters();
        // Off the invoke's path: measure what it holds and keep the idle total in budget.
        if let Some(pid) = pid.filter(|_| due) {
            let shared = self.shared.clone();
            tokio::task::spawn_blocking(move || {
                if let Some(kib) = instance::private_dirty_kib(pid) {
                    shared.idle_measured(&id, kib);
                }
            });
        }
    }

    /// Sets `f`'s provisioned concurrency to `requested` instances, started (restored, for a
    /// SnapStart function) in the background and kept idle for its invocations.
    pub fn set_provisioned(&self, f: FunctionConfig, requested: u32) -> ProvisionedStatus {
        let name = f.name.clone();
        let (status, generation) = {
            let mut state = self.shared.lock();
            let allocated = state.pinned.values().filter(|n| **n == name).count() as u32;
            let generation = state.provisioned.get(&name).map_or(0, |p| p.generation + 1);
            let p = Provisioned {
                function: f,
                requested,
                allocated,
                failed: None,
                last_modified: lambda_time(SystemTime::now()),
                generation,
                wake: Arc::new(tokio::sync::Notify::new()),
            };
            let status = p.status();
            if let Some(old) = state.provisioned.insert(name.clone(), p) {
                old.wake.notify_one();
            }
            // Fewer than before: the extra instances become ordinary idle ones.
            let extra: Vec<String> = state
                .pinned
                .iter()
                .filter(|(_, n)| **n == name)
                .map(|(id, _)| id.clone())
                .skip(requested as usize)
                .collect();
            for id in extra {
                state.unpin(&id);
            }
            (status, generation)
        };
        tokio::spawn(self.clone().provision(name, generation));
        status
    }

    /// The function's provisioned concurrency, if it has any.
    pub fn provisioned(&self, function: &str) -> Option<ProvisionedStatus> {
        self.shared.lock().provisioned.get(function).map(Provisioned::status)
    }

    /// Removes the function's provisioned concurrency; its instances become ordinary idle
    /// ones. Says whether it had any.
    pub fn remove_provisioned(&self, function: &str) -> bool {
        let mut state = self.shared.lock();
        let Some(p) = state.provisioned.remove(function) else { return false };
        p.wake.notify_one();
        state.pinned.retain(|_, n| n != function);
        true
    }

    /// After a change to `f` (the instances of its old revision are retired): its provisioned
    /// instances are made again from the new revision.
    pub fn function_changed(&self, f: &FunctionConfig) {
        self.retire(&f.name);
        let requested = self.shared.lock().provisioned.get(&f.name).map(|p| p.requested);
        if let Some(requested) = requested {
            self.set_provisioned(f.clone(), requested);
        }
    }

    /// Keeps `name`'s provisioned instances at the requested number while its configuration
    /// is `generation`; starts up to `max_boots` at once. Stops at the first failure (the
    /// status says why) or when the configuration changes.
    async fn provision(self, name: String, generation: u64) {
        loop {
            let (f, missing, wake) = {
                let state = self.shared.lock();
                match state.provisioned.get(&name) {
                    Some(p) if p.generation == generation && p.failed.is_none() => {
                        (p.function.clone(), p.requested.saturating_sub(p.allocated), p.wake.clone())
                    }
                    _ => return,
                }
            };
            if missing == 0 {
                wake.notified().await;
                continue;
            }
            let batch = (missing as usize).min(self.shared.config.max_boots.max(1));
            let mut starts = tokio::task::JoinSet::new();
            for _ in 0..batch {
                let (pool, f) = (self.clone(), f.clone());
                starts.spawn(async move { pool.start_provisioned(&f, generation).await });
            }
            while let Some(done) = starts.join_next().await {
                let failed = match done {
                    Ok(Ok(())) => continue,
                    Ok(Err(why)) => why,
                    Err(e) => format!("the provisioning task failed: {e}"),
                };
                let mut state = self.shared.lock();
                if let Some(p) = state.provisioned.get_mut(&name).filter(|p| p.generation == generation) {
                    eprintln!("ember: {name}: provisioned concurrency failed: {failed}");
                    p.failed.get_or_insert(failed);
                }
            }
        }
    }

    /// Starts one provisioned instance of `f` and puts it idle, pinned.
    async fn start_provisioned(&self, f: &FunctionConfig, generation: u64) -> Result<(), String> {
        let _permit = self.shared.boots.acquire().await.expect("the boot semaphore is never closed");
        let epoch = self.reserve_slot(&f.name).map_err(|_| "the host has no room for more instances".to_owned())?;
        let flog = self.shared.logs.function(&f.name);
        let launched = self.start(f, &flog).await;
        let instance = match launched {
            Ok(instance) => instance,
            Err(e) => {
                self.shared.gone_taken();
                return Err(match e {
                    instance::Error::InitError { error_type, body } => {
                        let (kind, msg) = init_error_text(error_type, &body);
                        format!("{kind}: {msg}")
                    }
                    other => other.to_string(),
                });
            }
        };
        let handle = instance::spawn_actor(instance, self.shared.clone(), self.shared.config.keep_alive);
        let mut state = self.shared.lock();
        let current = state.epochs.get(&f.name).copied().unwrap_or_default() == epoch;
        match state.provisioned.get_mut(&f.name) {
            Some(p) if current && p.generation == generation && p.allocated < p.requested => {
                p.allocated += 1;
                state.pinned.insert(handle.id.clone(), f.name.clone());
            }
            _ => {}
        }
        drop(state);
        self.release(&f.name, &f.revision_id, handle, epoch);
        Ok(())
    }

    fn launch_spec(&self, f: &FunctionConfig, id: &str, start: Start) -> Result<LaunchSpec, instance::Error> {
        let config = &self.shared.config;
        let rootfs = runtime_image(&config.guest_dir, &f.runtime);
        if !rootfs.is_file() {
            return Err(instance::Error::Host(format!(
                "the image of runtime {} is missing: {}",
                f.runtime,
                rootfs.display()
            )));
        }
        let (argv, env) = runtime_files(&config.guest_dir, &f.runtime).map_err(|e| {
            instance::Error::Host(format!(
                "cannot read the command of runtime {} in {}: {e}",
                f.runtime,
                config.guest_dir.display()
            ))
        })?;
        let mut cmdline = format!("{DEFAULT_CMDLINE} {}=1", ember_proto::cmdline::RUNTIME);
        let mut runtime = runtime_config(f, id, &argv, &env);
        let mut restore = None;
        match start {
            Start::Boot => {}
            Start::SnapStartBoot => {
                cmdline.push_str(&format!(" {}=1", ember_proto::cmdline::SNAP_START));
                runtime.env.retain(|(k, _)| k != INIT_TYPE);
                runtime.env.push((INIT_TYPE.into(), "snap-start".into()));
            }
            Start::Restore(dir) => restore = Some(dir),
        }
        let dir = config.run_dir.join(id);
        Ok(LaunchSpec {
            id: id.to_owned(),
            vmms: Arc::clone(&self.shared.vmms),
            vm: VmmSpec {
                memory_mib: f.memory_mib,
                vcpus: vcpus_for(f.memory_mib),
                kernel: config.guest_dir.join("vmlinux"),
                rootfs,
                cmdline,
                code: Some(f.code_image.clone()),
                tmp_mib: Some(f.ephemeral_mib),
                tmp_dir: dir.clone(),
                vsock_uds: PathBuf::new(),
                console: config.console_dir.as_ref().map(|d| d.join(format!("{id}.console"))),
                boot_timeout_s: config.init_timeout.as_secs().max(1),
                restore,
            },
            dir,
            runtime,
            init_timeout: config.init_timeout,
        })
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The lock held while `function`'s snapshot is looked up or made.
    fn snapshot_lock(&self, function: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.snapshot_locks.lock().unwrap_or_else(|e| e.into_inner());
        locks.entry(function.to_owned()).or_default().clone()
    }

    /// Records an idle instance's private memory, then stops the least recently used idle
    /// instances (provisioned ones excepted) while the idle total is over the budget.
    fn idle_measured(&self, id: &str, kib: u64) {
        let mut state = self.lock();
        if let Some(idle) = state.idle.values_mut().flatten().find(|i| i.handle.id == id) {
            idle.handle.private_memory = Some((Instant::now(), kib));
        }
        let mut total: u64 = state.idle.values().flatten().map(Idle::private_kib).sum();
        let mut dropped = Vec::new();
        while total > self.config.idle_memory_kib {
            let Some(idle) = state.evict_oldest_idle() else { break };
            total -= idle.private_kib();
            state.live -= 1;
            dropped.push(idle);
        }
        drop(state);
        // Dropping the handles ends the actors, which destroy their instances.
        drop(dropped);
    }

    /// An instance that was not idle (booting or busy) is gone.
    fn gone_taken(&self) {
        self.lock().live -= 1;
    }
}

impl instance::Owner for Shared {
    fn gone(&self, id: &str, why: Gone) -> bool {
        let mut state = self.lock();
        if why == Gone::KeptTooLong && state.pinned.contains_key(id) {
            // Provisioned instances stay, however long they idle.
            return false;
        }
        state.unpin(id);
        if why == Gone::Broken {
            state.live -= 1;
            return true;
        }
        let mut found = None;
        for (name, list) in state.idle.iter_mut() {
            if let Some(i) = list.iter().position(|idle| idle.handle.id == id) {
                found = Some((name.clone(), list.remove(i)));
                break;
            }
        }
        match found {
            Some((name, idle)) => {
                if state.idle.get(&name).is_some_and(Vec::is_empty) {
                    state.idle.remove(&name);
                }
                state.live -= 1;
                drop(idle);
                true
            }
            None => false,
        }
    }
}

impl InvokeOutput {
    fn with_tail(mut self, want_tail: bool) -> Self {
        if !want_tail {
            self.log_tail = None;
        }
        self
    }
}

/// The error type (`Runtime.Unknown` when the runtime named none) and message of an init error.
fn init_error_text(error_type: Option<String>, body: &[u8]) -> (String, String) {
    (error_type.unwrap_or_else(|| "Runtime.Unknown".into()), String::from_utf8_lossy(body).into_owned())
}

/// The error type and message of an invocation whose instance broke, as Lambda words them.
fn broken(request_id: &str, e: &instance::Error) -> (&'static str, String) {
    let (kind, what) = match e {
        instance::Error::RuntimeExited(reason) => ("Runtime.ExitError", format!("Runtime exited with error: {reason}")),
        instance::Error::VmEnded(why) | instance::Error::Boot(why) => {
            ("Runtime.ExitError", format!("Runtime exited with error: {why}"))
        }
        instance::Error::InitTimeout(t) => {
            ("Sandbox.Timedout", format!("Init timed out after {:.2} seconds", t.as_secs_f64()))
        }
        other => ("Runtime.Unknown", other.to_string()),
    };
    (kind, format!("RequestId: {request_id} Error: {what}"))
}

fn error_json(kind: &str, message: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({ "errorType": kind, "errorMessage": message })).expect("serializes")
}

/// vCPUs in proportion to memory: one per 1769 MB, rounded up, at most six.
pub fn vcpus_for(memory_mib: u32) -> u8 {
    memory_mib.div_ceil(MB_PER_VCPU).clamp(1, MAX_VCPUS) as u8
}

/// Environment variables, in order.
type Env = Vec<(String, String)>;

/// What a runtime's image directory says about running it: `<runtime>.command` (the argv,
/// words split on spaces, `$HANDLER` standing for the handler) and `<runtime>.env` (KEY=VALUE
/// lines), written by scripts/build-runtimes.sh beside the image.
/// The root image of `runtime`.
fn runtime_image(guest_dir: &std::path::Path, runtime: &str) -> PathBuf {
    guest_dir.join("runtimes").join(format!("{runtime}.ext4"))
}

/// The variable that says how an instance was initialized.
const INIT_TYPE: &str = "AWS_LAMBDA_INITIALIZATION_TYPE";

fn runtime_files(guest_dir: &std::path::Path, runtime: &str) -> std::io::Result<(Vec<String>, Env)> {
    let dir = guest_dir.join("runtimes");
    let command = std::fs::read_to_string(dir.join(format!("{runtime}.command")))?;
    let env = std::fs::read_to_string(dir.join(format!("{runtime}.env")))?;
    let argv = command.split_whitespace().map(str::to_owned).collect();
    let env = env
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())))
        .collect();
    Ok((argv, env))
}

/// The runtime's command and environment: the image's own, the function's variables, and the
/// Lambda variables (which the function's cannot override).
fn runtime_config(
    f: &FunctionConfig,
    instance_id: &str,
    image_argv: &[String],
    image_env: &[(String, String)],
) -> Config {
    let argv = image_argv.iter().map(|w| if w == "$HANDLER" { f.handler.clone() } else { w.clone() }).collect();
    let date = timestamp();
    let stream = format!("{}/{}/{}/[{}]{instance_id}", &date[0..4], &date[5..7], &date[8..10], f.version);
    let region = super::store::region().to_owned();
    let mut env: Env = image_env.to_vec();
    env.extend(f.environment.iter().map(|(k, v)| (k.clone(), v.clone())));
    let ours = [
        ("_HANDLER", f.handler.clone()),
        ("LAMBDA_TASK_ROOT", "/var/task".into()),
        ("LAMBDA_RUNTIME_DIR", "/var/runtime".into()),
        ("AWS_LAMBDA_FUNCTION_NAME", f.name.clone()),
        ("AWS_LAMBDA_FUNCTION_VERSION", f.version.clone()),
        ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", f.memory_mib.to_string()),
        ("AWS_LAMBDA_LOG_GROUP_NAME", format!("/aws/lambda/{}", f.name)),
        ("AWS_LAMBDA_LOG_STREAM_NAME", stream),
        (INIT_TYPE, "on-demand".into()),
        ("AWS_REGION", region.clone()),
        ("AWS_DEFAULT_REGION", region),
        ("TZ", ":UTC".into()),
        ("PATH", "/usr/local/bin:/usr/bin:/bin:/opt/bin".into()),
        ("PYTHONUNBUFFERED", "1".into()),
    ];
    // Later entries win: keep only the last of each name.
    env.extend(ours.into_iter().map(|(k, v)| (k.to_owned(), v)));
    let mut seen = std::collections::HashSet::new();
    let mut env: Vec<_> = env.into_iter().rev().filter(|(k, _)| seen.insert(k.clone())).collect();
    env.reverse();
    Config { argv, env, cwd: "/var/task".into(), wall_clock_ms: 0 }
}

/// A random id of 32 hex digits (instance ids, trace ids).
pub(crate) fn random_hex() -> String {
    random_uuid().replace('-', "")
}

/// An X-Ray style trace id.
fn trace_id() -> String {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    format!("Root=1-{secs:08x}-{};Parent={};Sampled=0", &random_hex()[..24], &random_hex()[..16])
}

/// Now in UTC as `2026-11-22T08:30:00.123Z`.
pub fn timestamp() -> String {
    lambda_time(SystemTime::now()).replace("+0000", "Z")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vcpus_follow_memory() {
        assert_eq!(vcpus_for(128), 1);
        assert_eq!(vcpus_for(1769), 1);
        assert_eq!(vcpus_for(1770), 2);
        assert_eq!(vcpus_for(10240), 6);
    }

    #[test]
    fn ids_have_their_shapes() {
        assert_eq!(random_hex().len(), 32);
        assert_ne!(random_hex(), random_hex());
        assert!(trace_id().starts_with("Root=1-"));
        assert_eq!(timestamp().len(), "2026-11-22T08:30:00.123Z".len());
    }

    #[test]
    fn lambda_variables_win_over_the_function_s() {
        let mut f = crate::agent::store::tests::config_for("f");
        f.environment.insert("AWS_LAMBDA_FUNCTION_NAME".into(), "spoofed".into());
        f.environment.insert("MY_VAR".into(), "1".into());
        let argv = vec!["/usr/bin/python3.11".to_owned(), "-m".into(), "awslambdaric".into(), "$HANDLER".into()];
        let c = runtime_config(&f, "abc", &argv, &[("LANG".into(), "C.UTF-8".into())]);
        assert_eq!(c.argv[3], "handler.main");
        let get = |k: &str| c.env.iter().filter(|(n, _)| n == k).map(|(_, v)| v.as_str()).collect::<Vec<_>>();
        assert_eq!(get("AWS_LAMBDA_FUNCTION_NAME"), ["f"]);
        assert_eq!(get("MY_VAR"), ["1"]);
        assert_eq!(get("LANG"), ["C.UTF-8"]);
        assert_eq!(get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE"), ["256"]);
        assert!(get("AWS_LAMBDA_LOG_STREAM_NAME")[0].ends_with("/[$LATEST]abc"));
    }
}
