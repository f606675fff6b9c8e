//! SnapStart, as Lambda applies it: to published versions. Publishing a SnapStart version
//! initialises it once and snapshots it ([`Pool::optimize`]); its cold starts restore that
//! snapshot. A snapshot that has gone stale (the kernel or an image changed) is made again
//! by the next cold start, one at a time per version (cold starts that come meanwhile wait
//! for it). A snapshot that cannot be restored is removed, with a line in the function's log
//! saying why, and that cold start boots instead.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use super::launch::{Launched, Start};
use super::{Key, Pool};
use crate::agent::ids::{self, lambda_time};
use crate::agent::instance;
use crate::agent::logs::FunctionLog;
use crate::agent::snapshots::Meta;
use crate::agent::store::FunctionConfig;

/// Why a version's SnapStart preparation failed: Lambda's `StateReasonCode` and
/// `StateReason`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {reason}")]
pub struct OptimizeError {
    /// `FunctionError.RuntimeInitError`, `FunctionError.InitTimeout`, `FunctionError` or
    /// `InternalError`.
    pub code: &'static str,
    /// What happened.
    pub reason: String,
}

impl Pool {
    /// Prepares a published SnapStart version: initialises it once and snapshots it, so
    /// that its cold starts restore. Takes a start slot and an instance slot like a cold
    /// start (waiting for them).
    pub async fn optimize(&self, f: Arc<FunctionConfig>) -> Result<(), OptimizeError> {
        let _permit = self.shared.boots.acquire().await.expect("the boot semaphore is never closed");
        let key = Key::of(&f);
        loop {
            let released = self.shared.released.notified();
            if self.reserve_slot(&key).is_ok() {
                break;
            }
            released.await;
        }
        let flog = self.shared.logs.function(&f.name);
        let made = self.init_snapshot(&f, &flog).await;
        self.shared.gone_taken();
        match made {
            Ok(Some(_)) => Ok(()),
            Ok(None) => Err(OptimizeError {
                code: "InternalError",
                reason: "The snapshot could not be written: see the agent's log.".into(),
            }),
            Err(instance::Error::InitError { error_type, body }) => {
                let (kind, msg) = super::init_error_text(error_type, &body);
                Err(OptimizeError { code: "FunctionError.RuntimeInitError", reason: format!("{kind}: {msg}") })
            }
            Err(instance::Error::InitTimeout(t)) => Err(OptimizeError {
                code: "FunctionError.InitTimeout",
                reason: format!("Init timed out after {:.2} seconds", t.as_secs_f64()),
            }),
            Err(instance::Error::Host(why)) => Err(OptimizeError { code: "InternalError", reason: why }),
            Err(other) => Err(OptimizeError { code: "FunctionError", reason: other.to_string() }),
        }
    }

    /// Restores an instance of a SnapStart version from its snapshot, made first if need
    /// be. Without a usable snapshot the instance boots. A restored guest that crashes before
    /// its runtime is back is restored again, once, as a boot would be booted again; a
    /// snapshot the VMM cannot restore is removed.
    pub(super) async fn restore(&self, f: &FunctionConfig, flog: &FunctionLog) -> Result<Launched, instance::Error> {
        let Some(dir) = self.init_snapshot(f, flog).await? else {
            return self.launch_twice(f, flog, || Start::Boot).await;
        };
        match self.launch_twice(f, flog, || Start::Restore(dir.clone())).await {
            Err(instance::Error::Restore(why)) => {
                let line = format!(
                    "{} The SnapStart snapshot of {}:{} could not be restored and was removed; this instance boots \
                     instead. Reason: {why}\n",
                    ids::timestamp(),
                    f.name,
                    f.version
                );
                eprint!("ember: {line}");
                flog.append_output(line.as_bytes());
                self.shared.snapshots.remove(&f.name, f.version);
                self.launch_twice(f, flog, || Start::Boot).await
            }
            other => other,
        }
    }

    /// The directory of the version's init snapshot: the one on disk if it matches, else a
    /// new one from a SnapStart boot (one at a time per version). `None` when none could be
    /// made for a reason that is the host's (logged); an init failure is the function's and
    /// comes back as the error.
    async fn init_snapshot(&self, f: &FunctionConfig, flog: &FunctionLog) -> Result<Option<PathBuf>, instance::Error> {
        let files = self
            .shared
            .launcher
            .files(f)
            .map_err(|e| instance::Error::Host(format!("cannot read the files the instance runs from: {e}")))?;
        let lock = self.shared.snapshot_lock(&Key::of(f));
        let _making = lock.lock().await;
        if let Some(dir) = self.shared.snapshots.lookup(f, &files) {
            return Ok(Some(dir));
        }
        let staging = match self.shared.snapshots.staging() {
            Ok(dir) => dir,
            Err(e) => {
                eprintln!("ember: {}:{}: no SnapStart snapshot: {e}", f.name, f.version);
                return Ok(None);
            }
        };
        let mut attempts = 0;
        let taken = loop {
            attempts += 1;
            match self.shared.launcher.snapshot(f, &staging, flog).await {
                // As a boot: a VM that ended before its runtime was ready is retried once.
                Err(instance::Error::Boot(why) | instance::Error::VmEnded(why)) if attempts < 2 => {
                    eprintln!("ember: {}:{}: the SnapStart boot ended early ({why}); trying again", f.name, f.version);
                    self.shared.snapshots.discard(&staging);
                    if let Err(e) = std::fs::create_dir(&staging) {
                        eprintln!("ember: {}:{}: no SnapStart snapshot: {e}", f.name, f.version);
                        return Ok(None);
                    }
                }
                other => break other,
            }
        };
        let snapshot_ms = match taken {
            Ok(took) => took.as_millis() as u64,
            Err(
                e @ (instance::Error::InitError { .. }
                | instance::Error::InitTimeout(_)
                | instance::Error::RuntimeExited(_)),
            ) => {
                self.shared.snapshots.discard(&staging);
                return Err(e);
            }
            Err(e) => {
                eprintln!("ember: {}:{}: the SnapStart snapshot failed: {e}", f.name, f.version);
                self.shared.snapshots.discard(&staging);
                return match e {
                    instance::Error::Host(_) => Err(e),
                    _ => Ok(None),
                };
            }
        };
        let meta =
            Meta { revision_id: f.revision_id.clone(), files, created: lambda_time(SystemTime::now()), snapshot_ms };
        match self.shared.snapshots.commit(&f.name, f.version, &staging, &meta) {
            Ok(dir) => Ok(Some(dir)),
            Err(why) => {
                eprintln!("ember: {}:{}: the SnapStart snapshot could not be kept: {why}", f.name, f.version);
                self.shared.snapshots.discard(&staging);
                Ok(None)
            }
        }
    }
}

impl super::Shared {
    /// The lock held while a version's snapshot is looked up or made.
    fn snapshot_lock(&self, key: &Key) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.snapshot_locks.lock().unwrap_or_else(|e| e.into_inner());
        locks.entry(key.clone()).or_default().clone()
    }
}
