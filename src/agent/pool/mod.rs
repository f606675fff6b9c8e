//! Instances per function version: a warm idle instance takes the next invocation of its
//! version (one event at a time per instance, as Lambda does); with none idle a new one
//! starts, within the concurrency its function may use ([`concurrency`]: reserved and
//! unreserved shares of the host's limit; past it, 429 with Lambda's reason). Idle instances
//! go after a keep-alive; when the host is full, the least recently used idle instance of any
//! version makes room. Provisioned instances ([`provisioned`]) are started ahead and never
//! retired for idling.
//!
//! A published SnapStart version starts by restoring its init snapshot instead of booting
//! ([`snapstart`]); `$LATEST` always boots. Instances are started through a [`Launcher`]
//! ([`launch`]), so all of this is unit-tested without KVM.
//!
//! Lock order: `state` before a launcher's own locks; nothing awaits with `state` held.

pub mod concurrency;
pub mod launch;
pub mod provisioned;
mod snapstart;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ember_proto::runtime;

use self::concurrency::{Accounting, Throttle};
use self::launch::{Launched, Launcher, Start};
use self::provisioned::{Pin, Provisioned, ProvisionedKey};
use super::ids::{self, Version};
use super::instance::{self, Gone, Handle, Job, JobDone, JobResult};
use super::limits::MAX_RESPONSE_BYTES;
use super::logs::{FunctionLog, InvocationLog, Logs, Report};
use super::snapshots::Snapshots;
use super::store::FunctionConfig;

pub use self::provisioned::ProvisionedStatus;
pub use self::snapstart::OptimizeError;

/// How often an instance's private memory is measured, at most, when it goes idle.
const MEASURE_EVERY: Duration = Duration::from_secs(10);

/// How the pool schedules instances.
#[derive(Clone, Debug)]
pub struct PoolConfig {
    /// The most instances on this host (booting, busy or idle): the account's concurrency.
    pub max_instances: usize,
    /// The most starts (boots and restores) under way at once.
    pub max_boots: usize,
    /// The most private memory idle instances may hold together, in KiB; past it the least
    /// recently used ones (not provisioned ones) stop.
    pub idle_memory_kib: u64,
}

/// One invocation as the pool receives it.
#[derive(Debug, Clone)]
pub struct InvokeRequest {
    /// The request id: `x-amzn-RequestId` to the caller, the runtime's `aws_request_id`.
    pub request_id: String,
    /// The version to run, as stored when the request arrived.
    pub function: Arc<FunctionConfig>,
    /// The ARN it was invoked by (qualified with the alias or version, if one was named).
    pub invoked_arn: String,
    /// The event (at most 6 MB, checked by the API).
    pub payload: bytes::Bytes,
    /// `X-Amz-Client-Context`, passed to the runtime as is.
    pub client_context: Option<String>,
    /// Whether the caller asked for `X-Amz-Log-Type: Tail`.
    pub want_tail: bool,
}

/// What an invocation produced, successful or not (a function error is still a 200).
#[derive(Debug, Clone)]
pub struct InvokeOutput {
    /// The response payload, or the error JSON for a function error.
    pub payload: Vec<u8>,
    /// `X-Amz-Function-Error`: `Some("Unhandled")` when the function failed.
    pub function_error: Option<&'static str>,
    /// The last 4 KB of this invocation's log, when it was asked for.
    pub log_tail: Option<Vec<u8>>,
    /// `X-Amz-Executed-Version`.
    pub executed_version: Version,
}

/// Why the pool could not run an invocation (a function's own failure is an
/// [`InvokeOutput`], not this).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PoolError {
    /// Over the function's concurrency.
    #[error("Rate Exceeded.")]
    Throttled(Throttle),
    /// The host could not start an instance.
    #[error("cannot start an instance: {0}")]
    Host(String),
    /// The instance ended around the invocation, not because of it.
    #[error("{0}")]
    Lost(&'static str),
}

/// One version of one function: what instances are kept for.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Key {
    /// The function's name.
    pub function: String,
    /// The version.
    pub version: Version,
}

impl Key {
    fn of(f: &FunctionConfig) -> Key {
        Key { function: f.name.clone(), version: f.version }
    }
}

/// The microVM instances of every function on this host.
#[derive(Clone)]
pub struct Pool {
    shared: Arc<Shared>,
}

struct Shared {
    config: PoolConfig,
    launcher: Arc<dyn Launcher>,
    /// Starts under way at once are capped (`max_boots`): a burst of cold starts queues here,
    /// and takes instances that go idle meanwhile instead of starting more.
    boots: tokio::sync::Semaphore,
    /// Woken when an instance goes back to idle.
    released: tokio::sync::Notify,
    logs: Logs,
    state: Mutex<State>,
    snapshots: Snapshots,
    /// Held while a version's snapshot is looked up or made.
    snapshot_locks: Mutex<HashMap<Key, Arc<tokio::sync::Mutex<()>>>>,
}

struct State {
    /// Idle instances by version, most recently used last.
    idle: HashMap<Key, Vec<Idle>>,
    /// Live instances: starting, busy and idle.
    live: usize,
    /// Bumped by [`Pool::retire`] for one version, and by [`Pool::remove_function`] for every
    /// version of a function: an instance started at another epoch is not reused.
    epochs: HashMap<Key, u64>,
    /// See `epochs`.
    function_epochs: HashMap<String, u64>,
    /// Provisioned concurrency, by function and qualifier.
    provisioned: HashMap<ProvisionedKey, Provisioned>,
    /// Provisioned instances (idle or busy), by instance id. They are never retired for
    /// idling nor evicted to make room.
    pinned: HashMap<String, Pin>,
    /// What each function uses of the host's concurrency.
    accounting: Accounting,
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

impl State {
    /// The epoch of a version: its own and its function's, which only ever grow, so that the
    /// sum changes whenever either does.
    fn epoch(&self, key: &Key) -> u64 {
        self.epochs.get(key).copied().unwrap_or_default()
            + self.function_epochs.get(&key.function).copied().unwrap_or_default()
    }

    /// Takes an idle instance of `key` at `revision` out of the pool, a provisioned one
    /// first; says whether it is provisioned.
    fn take_idle(&mut self, key: &Key, revision: &str) -> Option<(Idle, bool)> {
        let epoch = self.epoch(key);
        let idle = self.idle.get_mut(key)?;
        let usable = |i: &Idle| i.revision == revision && i.epoch == epoch;
        let pinned = &self.pinned;
        let pos = idle
            .iter()
            .rposition(|i| usable(i) && pinned.contains_key(&i.handle.id))
            .or_else(|| idle.iter().rposition(usable))?;
        let taken = idle.remove(pos);
        let is_pinned = self.pinned.contains_key(&taken.handle.id);
        Some((taken, is_pinned))
    }

    /// Takes the least recently used idle instance that is not provisioned out of the pool
    /// (its slot still counted); dropping it ends the instance.
    fn evict_oldest_idle(&mut self) -> Option<Idle> {
        let pinned = &self.pinned;
        let (key, i) = self
            .idle
            .iter()
            .flat_map(|(key, list)| list.iter().enumerate().map(move |(i, idle)| (idle, key, i)))
            .filter(|(idle, _, _)| !pinned.contains_key(&idle.handle.id))
            .min_by_key(|(idle, _, _)| idle.since)
            .map(|(_, key, i)| (key.clone(), i))?;
        let list = self.idle.get_mut(&key).expect("listed above");
        let idle = list.remove(i);
        if list.is_empty() {
            self.idle.remove(&key);
        }
        Some(idle)
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

/// One unit of a function's concurrency, held by an invocation that does not run on a
/// provisioned instance; given back when dropped.
struct Admission {
    shared: Arc<Shared>,
    function: String,
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.shared.lock().accounting.release(&self.function);
    }
}

impl Pool {
    /// A pool with no instances, starting them through `launcher`.
    pub fn new(config: PoolConfig, logs: Logs, snapshots: Snapshots, launcher: Arc<dyn Launcher>) -> Pool {
        let state = State {
            idle: HashMap::new(),
            live: 0,
            epochs: HashMap::new(),
            function_epochs: HashMap::new(),
            provisioned: HashMap::new(),
            pinned: HashMap::new(),
            accounting: Accounting::new(config.max_instances.try_into().unwrap_or(u32::MAX)),
        };
        Pool {
            shared: Arc::new(Shared {
                boots: tokio::sync::Semaphore::new(config.max_boots.max(1)),
                released: tokio::sync::Notify::new(),
                state: Mutex::new(state),
                snapshot_locks: Mutex::default(),
                config,
                launcher,
                logs,
                snapshots,
            }),
        }
    }

    /// Starts the processes the launcher keeps ahead of launches.
    pub fn start_spares(&self) {
        self.shared.launcher.start_spares();
    }

    /// The host's concurrency and what the reservations leave for the other functions.
    pub fn concurrency(&self) -> (u32, u32) {
        let state = self.shared.lock();
        (state.accounting.host(), state.accounting.unreserved())
    }

    /// The most instances `function` may use at once (see [`concurrency::Accounting::share`]).
    pub fn share(&self, function: &str) -> u32 {
        self.shared.lock().accounting.share(function)
    }

    /// Sets (or with `None` removes) a function's reserved concurrency.
    pub fn set_reserved(&self, function: &str, reserved: Option<u32>) {
        self.shared.lock().accounting.set_reserved(function, reserved);
    }

    /// Runs one invocation on a warm idle instance of the version, or a new one.
    pub async fn invoke(&self, req: InvokeRequest) -> Result<InvokeOutput, PoolError> {
        let f = &req.function;
        let request_id = req.request_id.clone();
        let flog = self.shared.logs.function(&f.name);
        let (taken, admission) = match self.take(f, &request_id).await? {
            Ok(taken) => taken,
            // The runtime failed its init: a function error, as Lambda answers it.
            Err(output) => return Ok(output.with_tail(req.want_tail)),
        };
        let Taken { handle, epoch, started: new } = taken;

        let started = Instant::now();
        let timeout = Duration::from_secs(u64::from(f.timeout_s));
        let (reply, done) = tokio::sync::oneshot::channel();
        let job = Job {
            invoke: runtime::Invoke {
                request_id: request_id.clone(),
                remaining_ms: timeout.as_millis() as u64,
                function_arn: req.invoked_arn.clone(),
                trace_id: ids::trace_id(),
                client_context: req.client_context.clone(),
                cognito_identity: None,
            },
            payload: req.payload.clone(),
            deadline: tokio::time::Instant::from_std(started + timeout),
            log: InvocationLog::start(flog, &request_id, &f.version.to_string(), req.want_tail),
            reply,
        };
        if !handle.submit(job) {
            self.shared.gone_taken();
            return Err(PoolError::Lost("the instance ended before it took the event"));
        }
        let Ok(JobDone { result, mut log, reusable }) = done.await else {
            self.shared.gone_taken();
            return Err(PoolError::Lost("the instance ended during the invocation"));
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
                log.output(format!("{} {request_id} {msg}\n", ids::timestamp()).as_bytes());
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
            self.release(f, handle, epoch);
        }
        drop(admission);
        Ok(InvokeOutput { payload, function_error, log_tail, executed_version: f.version })
    }

    /// Retires every instance of one version (after `$LATEST` changed, or the version was
    /// deleted): idle ones at once, busy ones when their invocation ends; and its snapshot.
    pub fn retire(&self, function: &str, version: Version) {
        let key = Key { function: function.to_owned(), version };
        if !version.is_latest() {
            self.shared.snapshots.remove(function, version);
        }
        let dropped = {
            let mut state = self.shared.lock();
            *state.epochs.entry(key.clone()).or_default() += 1;
            let dropped = state.idle.remove(&key).unwrap_or_default();
            state.live -= dropped.len();
            for idle in &dropped {
                state.unpin(&idle.handle.id);
            }
            dropped
        };
        // Dropping the handles ends the actors, which destroy their instances.
        drop(dropped);
    }

    /// Retires every instance of every version of a deleted function (busy ones when their
    /// invocation ends), its provisioned concurrency, reservation and snapshots.
    pub fn remove_function(&self, function: &str) {
        let dropped = {
            let mut state = self.shared.lock();
            state.remove_provisioned_of(function);
            state.accounting.set_reserved(function, None);
            *state.function_epochs.entry(function.to_owned()).or_default() += 1;
            let keys: Vec<Key> = state.idle.keys().filter(|k| k.function == function).cloned().collect();
            let mut dropped = Vec::new();
            for key in keys {
                dropped.extend(state.idle.remove(&key).unwrap_or_default());
            }
            state.live -= dropped.len();
            dropped
        };
        // Dropping the handles ends the actors, which destroy their instances.
        drop(dropped);
        self.shared.snapshots.remove_function(function);
    }

    /// An instance for one invocation of `f`, and the concurrency it holds: an idle
    /// provisioned instance (holding nothing more), else, once admitted, an idle one or a new
    /// one once a start slot is free, or one that went idle while this invocation waited.
    async fn take(
        &self,
        f: &Arc<FunctionConfig>,
        request_id: &str,
    ) -> Result<Result<(Taken, Option<Admission>), InvokeOutput>, PoolError> {
        let key = Key::of(f);
        let mut admission: Option<Admission> = None;
        loop {
            let released = self.shared.released.notified();
            tokio::pin!(released);
            // Registered before looking, so that a release between the look and the wait wakes us.
            released.as_mut().enable();
            let found = {
                let mut state = self.shared.lock();
                let found = state.take_idle(&key, &f.revision_id);
                let needs_admission = admission.is_none() && !matches!(found, Some((_, true)));
                if needs_admission {
                    if let Err(throttle) = state.accounting.admit(&f.name) {
                        // Put back what was found: the invocation does not run.
                        if let Some((idle, _)) = found {
                            state.idle.entry(key.clone()).or_default().push(idle);
                        }
                        return Err(PoolError::Throttled(throttle));
                    }
                }
                drop(state);
                if needs_admission {
                    admission = Some(Admission { shared: self.shared.clone(), function: f.name.clone() });
                }
                found
            };
            if let Some((idle, pinned)) = found {
                if pinned {
                    // A provisioned instance is counted already.
                    admission = None;
                }
                let Idle { handle, epoch, .. } = idle;
                return Ok(Ok((Taken { handle, epoch, started: None }, admission)));
            }
            tokio::select! {
                permit = self.shared.boots.acquire() => {
                    let _permit = permit.expect("the boot semaphore is never closed");
                    return Ok(self.cold_start(f, request_id).await?.map(|t| (t, admission)));
                }
                () = &mut released => {}
            }
        }
    }

    /// Starts a new instance (a boot, or a SnapStart version's restore) for an invocation,
    /// once a slot is free. A runtime that fails its init is the invocation's function error.
    async fn cold_start(&self, f: &FunctionConfig, request_id: &str) -> Result<Result<Taken, InvokeOutput>, PoolError> {
        let epoch = self.reserve_slot(&Key::of(f)).map_err(PoolError::Throttled)?;
        let flog = self.shared.logs.function(&f.name);
        match self.start(f, &flog).await {
            Ok(launched) => {
                let took = launched.init_duration;
                let started = Some(if launched.restored { Started::Restored(took) } else { Started::Booted(took) });
                Ok(Ok(Taken { handle: launched.handle, epoch, started }))
            }
            Err(e) => {
                self.shared.gone_taken();
                let (kind, msg, body) = match e {
                    instance::Error::Host(m) => return Err(PoolError::Host(m)),
                    instance::Error::InitError { error_type, body } => {
                        let (kind, msg) = init_error_text(error_type, &body);
                        (kind, msg, body)
                    }
                    other => {
                        let (kind, msg) = broken(request_id, &other);
                        (kind.to_owned(), msg.clone(), error_json(kind, &msg))
                    }
                };
                let mut log = InvocationLog::start(flog, request_id, &f.version.to_string(), true);
                log.output(format!("INIT_REPORT Status: error Error Type: {kind}\n{msg}\n").as_bytes());
                let tail = log.finish(request_id, &Report { memory_mib: f.memory_mib, ..Report::default() });
                Ok(Err(InvokeOutput {
                    payload: body,
                    function_error: Some("Unhandled"),
                    log_tail: tail,
                    executed_version: f.version,
                }))
            }
        }
    }

    /// Starts an instance of `f`: a restore for a published SnapStart version, else a boot.
    async fn start(&self, f: &FunctionConfig, flog: &FunctionLog) -> Result<Launched, instance::Error> {
        if f.snap_start && !f.version.is_latest() {
            self.restore(f, flog).await
        } else {
            self.launch_twice(f, flog, || Start::Boot).await
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
    ) -> Result<Launched, instance::Error> {
        let mut attempts = 0;
        loop {
            attempts += 1;
            let owner: Arc<dyn instance::Owner> = self.shared.clone();
            match self.shared.launcher.launch(f, start(), owner, flog).await {
                Err(instance::Error::Boot(why) | instance::Error::VmEnded(why)) if attempts < 2 => {
                    eprintln!(
                        "ember: {}:{}: a new instance ended before its first event ({why}); starting another",
                        f.name, f.version
                    );
                }
                other => return other,
            }
        }
    }

    /// Counts a new instance of `key`, evicting the least recently used idle instance when
    /// the host is full. Returns the version's epoch.
    fn reserve_slot(&self, key: &Key) -> Result<u64, Throttle> {
        let mut state = self.shared.lock();
        if state.live < self.shared.config.max_instances {
            state.live += 1;
        } else {
            // The evicted instance's slot passes to the new one, so `live` stays.
            // Dropping its handle ends the actor, which destroys the instance.
            if state.evict_oldest_idle().is_none() {
                return Err(Throttle::Account);
            }
        }
        Ok(state.epoch(key))
    }

    /// Puts an instance that finished an invocation back, idle, unless its version was
    /// retired meanwhile.
    fn release(&self, f: &FunctionConfig, handle: Handle, epoch: u64) {
        let key = Key::of(f);
        let mut state = self.shared.lock();
        if state.epoch(&key) != epoch {
            state.live -= 1;
            state.unpin(&handle.id);
            return;
        }
        let (id, pid) = (handle.id.clone(), handle.pid);
        // A guest's private memory grows with its first invocations and then hardly moves:
        // measured when it first goes idle, then at most every MEASURE_EVERY, not per invoke.
        let due = handle.private_memory.is_none_or(|(at, _)| at.elapsed() >= MEASURE_EVERY);
        let idle = Idle { handle, revision: f.revision_id.clone(), epoch, since: Instant::now() };
        state.idle.entry(key).or_default().push(idle);
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
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
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

    /// An instance that was not idle (starting or busy) is gone.
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
        for (key, list) in state.idle.iter_mut() {
            if let Some(i) = list.iter().position(|idle| idle.handle.id == id) {
                found = Some((key.clone(), list.remove(i)));
                break;
            }
        }
        match found {
            Some((key, idle)) => {
                if state.idle.get(&key).is_some_and(Vec::is_empty) {
                    state.idle.remove(&key);
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

#[cfg(test)]
pub(crate) mod tests;
