//! Provisioned concurrency: per function and qualifier (a version, or an alias, whose
//! instances are split between its versions by their weights), a requested number of
//! instances started ahead (restored, for SnapStart versions) and kept idle for invocations
//! of their version. A provisioner task per configuration generation starts the missing ones
//! (up to `max_boots` at once) and sleeps on a `Notify` woken when a pinned instance dies or
//! the configuration changes. Pinned instances are ordinary idle instances that the
//! keep-alive and eviction skip; they count inside their function's concurrency.

use std::sync::Arc;

use super::{Key, Pool, State};
use crate::agent::ids::{self, Version};
use crate::agent::instance;
use crate::agent::store::FunctionConfig;

/// A provisioned-concurrency configuration's key: function and qualifier.
pub type ProvisionedKey = (String, String);

/// A provisioned instance's configuration and version.
pub(super) struct Pin {
    key: ProvisionedKey,
    version: Version,
}

/// Instances of one version a configuration asks for.
struct Target {
    function: Arc<FunctionConfig>,
    requested: u32,
    allocated: u32,
}

/// One provisioned-concurrency configuration.
pub(super) struct Provisioned {
    targets: Vec<Target>,
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
        let requested: u32 = self.targets.iter().map(|t| t.requested).sum();
        let allocated: u32 = self.targets.iter().map(|t| t.allocated.min(t.requested)).sum();
        let status = match (&self.failed, allocated >= requested) {
            (Some(_), _) => "FAILED",
            (None, true) => "READY",
            (None, false) => "IN_PROGRESS",
        };
        ProvisionedStatus {
            requested,
            allocated,
            status,
            reason: self.failed.clone(),
            last_modified: self.last_modified.clone(),
        }
    }
}

/// How `requested` instances split between an alias's versions: each additional version
/// gets its weight's share, rounded; the version the alias points to gets the rest.
pub fn split(requested: u32, primary: Version, weights: &[(Version, f64)]) -> Vec<(Version, u32)> {
    let mut out = Vec::with_capacity(weights.len() + 1);
    let mut left = requested;
    for &(version, weight) in weights {
        let n = ((f64::from(requested) * weight).round() as u32).min(left);
        left -= n;
        out.push((version, n));
    }
    out.insert(0, (primary, left));
    out.retain(|(_, n)| *n > 0);
    out
}

impl State {
    /// Forgets that instance `id` was provisioned; its configuration's provisioner makes
    /// another, and its function uses one fewer.
    pub(super) fn unpin(&mut self, id: &str) {
        let Some(pin) = self.pinned.remove(id) else { return };
        self.accounting.release(&pin.key.0);
        if let Some(p) = self.provisioned.get_mut(&pin.key) {
            if let Some(t) = p.targets.iter_mut().find(|t| t.function.version == pin.version) {
                t.allocated = t.allocated.saturating_sub(1);
            }
            p.wake.notify_one();
        }
    }

    /// Removes every provisioned-concurrency configuration of `function`.
    pub(super) fn remove_provisioned_of(&mut self, function: &str) {
        let keys: Vec<ProvisionedKey> = self.provisioned.keys().filter(|k| k.0 == function).cloned().collect();
        for key in keys {
            self.remove_provisioned(&key);
        }
    }

    fn remove_provisioned(&mut self, key: &ProvisionedKey) -> bool {
        let Some(p) = self.provisioned.remove(key) else { return false };
        p.wake.notify_one();
        let ids: Vec<String> =
            self.pinned.iter().filter(|(_, pin)| pin.key == *key).map(|(id, _)| id.clone()).collect();
        for id in ids {
            self.unpin(&id);
        }
        true
    }
}

impl Pool {
    /// Sets the provisioned concurrency of `function`'s `qualifier`: for each of its
    /// versions, how many instances to keep started (restored, for SnapStart versions) and
    /// idle for its invocations. Instances already provisioned for it stay where their version
    /// is still wanted.
    pub fn set_provisioned(
        &self,
        function: &str,
        qualifier: &str,
        targets: Vec<(Arc<FunctionConfig>, u32)>,
    ) -> ProvisionedStatus {
        let key: ProvisionedKey = (function.to_owned(), qualifier.to_owned());
        let (status, generation) = {
            let mut state = self.shared.lock();
            let generation = state.provisioned.get(&key).map_or(0, |p| p.generation + 1);
            let mut p = Provisioned {
                targets: targets
                    .into_iter()
                    .map(|(function, requested)| Target { function, requested, allocated: 0 })
                    .collect(),
                failed: None,
                last_modified: ids::now(),
                generation,
                wake: Arc::new(tokio::sync::Notify::new()),
            };
            if let Some(old) = state.provisioned.remove(&key) {
                old.wake.notify_one();
            }
            // Keep the instances whose version is still wanted, up to the new numbers.
            let pins: Vec<(String, Version)> = state
                .pinned
                .iter()
                .filter(|(_, pin)| pin.key == key)
                .map(|(id, pin)| (id.clone(), pin.version))
                .collect();
            let mut extra = Vec::new();
            for (id, version) in pins {
                match p.targets.iter_mut().find(|t| t.function.version == version && t.allocated < t.requested) {
                    Some(t) => t.allocated += 1,
                    None => extra.push(id),
                }
            }
            let status = p.status();
            state.provisioned.insert(key.clone(), p);
            for id in extra {
                // They become ordinary idle (or busy) instances.
                state.unpin(&id);
            }
            (status, generation)
        };
        tokio::spawn(self.clone().provision(key, generation));
        status
    }

    /// The provisioned concurrency of `function`'s `qualifier`, if it has any.
    pub fn provisioned(&self, function: &str, qualifier: &str) -> Option<ProvisionedStatus> {
        let key = (function.to_owned(), qualifier.to_owned());
        self.shared.lock().provisioned.get(&key).map(Provisioned::status)
    }

    /// Every provisioned-concurrency configuration of `function`, by qualifier.
    pub fn provisioned_of(&self, function: &str) -> Vec<(String, ProvisionedStatus)> {
        let state = self.shared.lock();
        let mut all: Vec<(String, ProvisionedStatus)> =
            state.provisioned.iter().filter(|(k, _)| k.0 == function).map(|(k, p)| (k.1.clone(), p.status())).collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// Removes the provisioned concurrency of `function`'s `qualifier`; its instances become
    /// ordinary idle ones. Says whether it had any.
    pub fn remove_provisioned(&self, function: &str, qualifier: &str) -> bool {
        self.shared.lock().remove_provisioned(&(function.to_owned(), qualifier.to_owned()))
    }

    /// Keeps a configuration's instances at the requested numbers while it is at
    /// `generation`; starts up to `max_boots` at once. Stops at the first failure (the status
    /// says why) or when the configuration changes.
    async fn provision(self, key: ProvisionedKey, generation: u64) {
        loop {
            let (missing, wake) = {
                let state = self.shared.lock();
                match state.provisioned.get(&key) {
                    Some(p) if p.generation == generation && p.failed.is_none() => {
                        let missing: Vec<(Arc<FunctionConfig>, u32)> = p
                            .targets
                            .iter()
                            .filter(|t| t.allocated < t.requested)
                            .map(|t| (t.function.clone(), t.requested - t.allocated))
                            .collect();
                        (missing, p.wake.clone())
                    }
                    _ => return,
                }
            };
            if missing.is_empty() {
                wake.notified().await;
                continue;
            }
            let mut starts = tokio::task::JoinSet::new();
            let mut budget = self.shared.config.max_boots.max(1);
            for (f, n) in missing {
                for _ in 0..(n as usize).min(budget) {
                    let (pool, f, key) = (self.clone(), f.clone(), key.clone());
                    starts.spawn(async move { pool.start_provisioned(&key, &f, generation).await });
                    budget -= 1;
                }
                if budget == 0 {
                    break;
                }
            }
            while let Some(done) = starts.join_next().await {
                let failed = match done {
                    Ok(Ok(())) => continue,
                    Ok(Err(why)) => why,
                    Err(e) => format!("the provisioning task failed: {e}"),
                };
                let mut state = self.shared.lock();
                if let Some(p) = state.provisioned.get_mut(&key).filter(|p| p.generation == generation) {
                    eprintln!("ember: {}:{}: provisioned concurrency failed: {failed}", key.0, key.1);
                    p.failed.get_or_insert(failed);
                }
            }
        }
    }

    /// Starts one provisioned instance of `f` for configuration `key` and puts it idle, pinned.
    async fn start_provisioned(&self, key: &ProvisionedKey, f: &FunctionConfig, generation: u64) -> Result<(), String> {
        let _permit = self.shared.boots.acquire().await.expect("the boot semaphore is never closed");
        let version_key = Key::of(f);
        let epoch =
            self.reserve_slot(&version_key).map_err(|_| "the host has no room for more instances".to_owned())?;
        let flog = self.shared.logs.function(&f.name);
        let launched = match self.start(f, &flog).await {
            Ok(launched) => launched,
            Err(e) => {
                self.shared.gone_taken();
                return Err(match e {
                    instance::Error::InitError { error_type, body } => {
                        let (kind, msg) = super::init_error_text(error_type, &body);
                        format!("{kind}: {msg}")
                    }
                    other => other.to_string(),
                });
            }
        };
        let handle = launched.handle;
        let mut state = self.shared.lock();
        let current = state.epoch(&version_key) == epoch;
        let target =
            state.provisioned.get_mut(key).filter(|p| current && p.generation == generation).and_then(|p| {
                p.targets.iter_mut().find(|t| t.function.version == f.version && t.allocated < t.requested)
            });
        if let Some(target) = target {
            target.allocated += 1;
            state.pinned.insert(handle.id.clone(), Pin { key: key.clone(), version: f.version });
            state.accounting.add(&f.name);
        }
        drop(state);
        self.release(f, handle, epoch);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alias_weights_split_provisioned_instances() {
        let (v1, v2) = (Version::published(1), Version::published(2));
        assert_eq!(split(10, v1, &[]), [(v1, 10)]);
        assert_eq!(split(10, v1, &[(v2, 0.3)]), [(v1, 7), (v2, 3)]);
        assert_eq!(split(3, v1, &[(v2, 0.5)]), [(v1, 1), (v2, 2)]);
        assert_eq!(split(1, v1, &[(v2, 0.1)]), [(v1, 1)]);
        assert_eq!(split(2, v1, &[(v2, 1.0)]), [(v2, 2)]);
    }
}
