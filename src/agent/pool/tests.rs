//! The pool's scheduling without KVM: a launcher whose "instances" are tasks that answer each
//! event at once (or after `{"sleep_ms": n}`), so that warm reuse per version, concurrency
//! (reserved, unreserved, provisioned), SnapStart and eviction are checked here, and the KVM
//! tests need only prove the whole path.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use serde_json::{json, Value};

use super::launch::BoxFuture;
use super::*;
use crate::agent::instance::Owner;
use crate::agent::snapshots::Fingerprint;

/// One event a fake instance ran: its function, request id and payload.
pub(crate) type Ran = (String, String, Value);

/// A launcher that starts no VM, and what it was asked to do.
#[derive(Default)]
pub(crate) struct Fake {
    launches: Mutex<Vec<(String, Version, Start)>>,
    snapshots: AtomicUsize,
    ran: Arc<Mutex<Vec<Ran>>>,
}

impl Fake {
    /// Every event its instances ran, in order.
    pub(crate) fn ran(&self) -> Vec<Ran> {
        self.ran.lock().unwrap().clone()
    }

    pub(crate) fn launches(&self) -> usize {
        self.launches.lock().unwrap().len()
    }

    fn starts(&self) -> Vec<(String, Version, Start)> {
        self.launches.lock().unwrap().clone()
    }
}

impl Launcher for Fake {
    fn launch<'a>(
        &'a self,
        f: &'a FunctionConfig,
        start: Start,
        owner: Arc<dyn Owner>,
        _log: &'a FunctionLog,
    ) -> BoxFuture<'a, Result<Launched, instance::Error>> {
        Box::pin(async move {
            self.launches.lock().unwrap().push((f.name.clone(), f.version, start.clone()));
            if f.handler == "init_error" {
                return Err(instance::Error::InitError {
                    error_type: Some("Runtime.ImportModuleError".into()),
                    body: br#"{"errorMessage":"no module"}"#.to_vec(),
                });
            }
            if f.handler == "bad_snapshot" && matches!(start, Start::Restore(_)) {
                return Err(instance::Error::Restore("the state file is damaged".into()));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
            let (handle, jobs) = Handle::detached(&ids::random_hex());
            tokio::spawn(actor(handle.id.clone(), f.name.clone(), jobs, owner, self.ran.clone()));
            Ok(Launched {
                handle,
                init_duration: Duration::from_millis(5),
                restored: matches!(start, Start::Restore(_)),
            })
        })
    }

    fn snapshot<'a>(
        &'a self,
        f: &'a FunctionConfig,
        dir: &'a Path,
        _log: &'a FunctionLog,
    ) -> BoxFuture<'a, Result<Duration, instance::Error>> {
        Box::pin(async move {
            self.snapshots.fetch_add(1, Ordering::SeqCst);
            if f.handler == "init_error" {
                return Err(instance::Error::InitError {
                    error_type: Some("Runtime.ImportModuleError".into()),
                    body: vec![],
                });
            }
            std::fs::write(dir.join("state"), b"snapshot").unwrap();
            Ok(Duration::from_millis(1))
        })
    }

    fn files(&self, _f: &FunctionConfig) -> std::io::Result<Vec<Fingerprint>> {
        Ok(Vec::new())
    }
}

/// An instance that echoes each event, sleeping `sleep_ms` first; `{"crash": true}` breaks it,
/// `{"fail": true}` makes it answer a function error.
async fn actor(
    id: String,
    function: String,
    mut jobs: tokio::sync::mpsc::Receiver<Job>,
    owner: Arc<dyn Owner>,
    ran: Arc<Mutex<Vec<Ran>>>,
) {
    while let Some(job) = jobs.recv().await {
        let event: Value = serde_json::from_slice(&job.payload).unwrap_or_default();
        ran.lock().unwrap().push((function.clone(), job.invoke.request_id.clone(), event.clone()));
        if let Some(ms) = event["sleep_ms"].as_u64() {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        let Job { log, reply, .. } = job;
        if event["crash"] == true {
            owner.gone(&id, Gone::Broken);
            let result = JobResult::Broken(instance::Error::VmEnded("the guest crashed".into()));
            let _ = reply.send(JobDone { result, log, reusable: false });
            return;
        }
        let result = if event["fail"] == true {
            let body = br#"{"errorMessage":"failed on purpose","errorType":"Exception"}"#.to_vec();
            JobResult::Error { error_type: Some("Exception".into()), body, memory_used_mib: 1 }
        } else {
            JobResult::Response { body: serde_json::to_vec(&event).unwrap(), memory_used_mib: 1 }
        };
        let _ = reply.send(JobDone { result, log, reusable: true });
    }
}

struct Setup {
    pool: Pool,
    fake: Arc<Fake>,
    dir: PathBuf,
}

impl Drop for Setup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn setup(name: &str, max_instances: usize) -> Setup {
    let dir = std::env::temp_dir().join(format!("ember-pool-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let logs = Logs::open(&dir.join("logs")).unwrap();
    let snapshots = Snapshots::open(&dir.join("snapshots")).unwrap();
    let fake = Arc::new(Fake::default());
    let config = PoolConfig { max_instances, max_boots: 4, idle_memory_kib: u64::MAX };
    let pool = Pool::new(config, logs, snapshots, fake.clone());
    Setup { pool, fake, dir }
}

fn version(name: &str, v: u32) -> Arc<FunctionConfig> {
    let mut f = crate::agent::store::tests::config_for(name);
    f.version = Version::from_stored(v);
    f.revision_id = format!("rev-{v}");
    Arc::new(f)
}

fn request(f: &Arc<FunctionConfig>, event: Value) -> InvokeRequest {
    InvokeRequest {
        request_id: ids::random_uuid(),
        function: f.clone(),
        invoked_arn: f.arn(),
        payload: serde_json::to_vec(&event).unwrap().into(),
        client_context: None,
        want_tail: true,
    }
}

async fn invoke(pool: &Pool, f: &Arc<FunctionConfig>, event: Value) -> Result<InvokeOutput, PoolError> {
    pool.invoke(request(f, event)).await
}

fn tail(out: &InvokeOutput) -> String {
    String::from_utf8(out.log_tail.clone().unwrap_or_default()).unwrap()
}

#[tokio::test]
async fn versions_have_their_own_warm_instances() {
    let s = setup("versions", 8);
    let (latest, v1, v2) = (version("f", 0), version("f", 1), version("f", 2));
    let out = invoke(&s.pool, &latest, json!({"n": 1})).await.unwrap();
    assert_eq!((out.payload.as_slice(), out.executed_version), (br#"{"n":1}"#.as_slice(), Version::LATEST));
    assert!(tail(&out).contains("Init Duration"));
    let out = invoke(&s.pool, &latest, json!({})).await.unwrap();
    assert!(!tail(&out).contains("Init Duration"), "warm");
    assert_eq!(s.fake.launches(), 1);
    for _ in 0..2 {
        assert_eq!(invoke(&s.pool, &v1, json!({})).await.unwrap().executed_version, Version::published(1));
    }
    assert_eq!(s.fake.launches(), 2, "version 1 has its own instance, reused");
    invoke(&s.pool, &v2, json!({})).await.unwrap();
    assert_eq!(s.fake.launches(), 3);
    // $LATEST changed: its instances are retired, the versions' are not.
    s.pool.retire("f", Version::LATEST);
    invoke(&s.pool, &latest, json!({})).await.unwrap();
    invoke(&s.pool, &v1, json!({})).await.unwrap();
    assert_eq!(s.fake.launches(), 4);
    assert!(tail(&invoke(&s.pool, &v1, json!({})).await.unwrap()).contains("START RequestId:"));
    // Deleted: every version's instances go, busy ones when their invocation ends.
    let pool = s.pool.clone();
    let busy = tokio::spawn({
        let v2 = v2.clone();
        async move { invoke(&pool, &v2, json!({"sleep_ms": 200})).await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    s.pool.remove_function("f");
    busy.await.unwrap().unwrap();
    assert_eq!(s.pool.shared.lock().live, 0, "nothing of f is kept");
    assert!(s.pool.shared.lock().idle.is_empty());
}

#[tokio::test]
async fn reserved_concurrency_caps_its_function_only() {
    let s = setup("reserved", 8);
    s.pool.set_reserved("f", Some(1));
    let (f, g) = (version("f", 0), version("g", 0));
    let slow = json!({"sleep_ms": 300});
    let (a, b, other) = tokio::join!(invoke(&s.pool, &f, slow.clone()), invoke(&s.pool, &f, slow.clone()), async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        invoke(&s.pool, &g, json!({})).await
    });
    let mut results = [a, b];
    results.sort_by_key(Result::is_err);
    assert!(results[0].is_ok());
    assert_eq!(results[1].as_ref().unwrap_err(), &PoolError::Throttled(Throttle::Reserved));
    assert!(other.is_ok(), "another function keeps answering");
    // Once the first is done, the next one runs.
    invoke(&s.pool, &f, json!({})).await.unwrap();
    s.pool.set_reserved("f", Some(0));
    assert_eq!(invoke(&s.pool, &f, json!({})).await.unwrap_err(), PoolError::Throttled(Throttle::Reserved));
    s.pool.set_reserved("f", None);
    invoke(&s.pool, &f, json!({})).await.unwrap();
    assert_eq!(s.pool.concurrency(), (8, 8));
}

#[tokio::test]
async fn functions_without_a_reservation_share_what_is_left() {
    let s = setup("unreserved", 3);
    s.pool.set_reserved("r", Some(1));
    assert_eq!(s.pool.concurrency(), (3, 2));
    let slow = json!({"sleep_ms": 300});
    let (g, h, k, r) = (version("g", 0), version("h", 0), version("k", 0), version("r", 0));
    let (a, b, c, d) = tokio::join!(
        invoke(&s.pool, &g, slow.clone()),
        invoke(&s.pool, &h, slow.clone()),
        async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            invoke(&s.pool, &k, json!({})).await
        },
        async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            invoke(&s.pool, &r, json!({})).await
        },
    );
    assert!(a.is_ok() && b.is_ok());
    assert_eq!(c.unwrap_err(), PoolError::Throttled(Throttle::Account));
    assert!(d.is_ok(), "the reservation is guaranteed");
}

async fn ready(pool: &Pool, function: &str, qualifier: &str) -> ProvisionedStatus {
    for _ in 0..200 {
        let status = pool.provisioned(function, qualifier).unwrap();
        if status.status != "IN_PROGRESS" {
            return status;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("provisioning never finished");
}

#[tokio::test]
async fn provisioned_instances_start_ahead_and_count_inside_the_reservation() {
    let s = setup("provisioned", 8);
    s.pool.set_reserved("f", Some(2));
    let (latest, v1) = (version("f", 0), version("f", 1));
    let status = s.pool.set_provisioned("f", "live", vec![(v1.clone(), 2)]);
    assert_eq!((status.requested, status.status), (2, "IN_PROGRESS"));
    let status = ready(&s.pool, "f", "live").await;
    assert_eq!((status.status, status.allocated), ("READY", 2));
    assert_eq!(s.fake.launches(), 2);
    // Invocations of version 1 take the provisioned instances: no cold start.
    let slow = json!({"sleep_ms": 200});
    let (a, b) = tokio::join!(invoke(&s.pool, &v1, slow.clone()), invoke(&s.pool, &v1, slow.clone()));
    assert!(!tail(&a.unwrap()).contains("Init Duration") && !tail(&b.unwrap()).contains("Init Duration"));
    assert_eq!(s.fake.launches(), 2);
    // They use the whole reservation: anything else of f is throttled.
    assert_eq!(invoke(&s.pool, &latest, json!({})).await.unwrap_err(), PoolError::Throttled(Throttle::Reserved));
    assert_eq!(s.pool.provisioned_of("f").len(), 1);
    // Removed: the instances stay as ordinary ones, and f may use its share again.
    assert!(s.pool.remove_provisioned("f", "live"));
    invoke(&s.pool, &latest, json!({})).await.unwrap();
    assert!(!s.pool.remove_provisioned("f", "live"));
}

#[tokio::test]
async fn provisioned_instances_follow_an_alias_to_its_new_version() {
    let s = setup("provisioned-alias", 8);
    let (v1, v2) = (version("f", 1), version("f", 2));
    s.pool.set_provisioned("f", "live", vec![(v1.clone(), 1)]);
    ready(&s.pool, "f", "live").await;
    s.pool.set_provisioned("f", "live", vec![(v2.clone(), 1)]);
    let status = ready(&s.pool, "f", "live").await;
    assert_eq!(status.allocated, 1);
    let starts = s.fake.starts();
    assert_eq!(starts.iter().map(|(_, v, _)| *v).collect::<Vec<_>>(), [v1.version, v2.version]);
    assert!(!tail(&invoke(&s.pool, &v2, json!({})).await.unwrap()).contains("Init Duration"));
}

#[tokio::test]
async fn snap_start_versions_restore_and_latest_boots() {
    let s = setup("snapstart", 8);
    let mut v1 = (*version("f", 1)).clone();
    v1.snap_start = true;
    let v1 = Arc::new(v1);
    s.pool.optimize(v1.clone()).await.unwrap();
    assert_eq!(s.fake.snapshots.load(Ordering::SeqCst), 1);
    let out = invoke(&s.pool, &v1, json!({})).await.unwrap();
    assert!(tail(&out).contains("Restore Duration"), "{}", tail(&out));
    assert!(matches!(s.fake.starts()[0].2, Start::Restore(_)));
    // The snapshot is kept: another cold start restores it without making another.
    s.pool.retire("f", Version::LATEST);
    let mut latest = (*version("f", 0)).clone();
    latest.snap_start = true;
    let out = invoke(&s.pool, &Arc::new(latest), json!({})).await.unwrap();
    assert!(tail(&out).contains("Init Duration"), "$LATEST boots");
    assert_eq!(s.fake.starts()[1].2, Start::Boot);
    assert_eq!(s.fake.snapshots.load(Ordering::SeqCst), 1);

    // A version whose init fails fails its preparation, with Lambda's reason code.
    let mut broken = (*version("g", 1)).clone();
    broken.snap_start = true;
    broken.handler = "init_error".into();
    let e = s.pool.optimize(Arc::new(broken)).await.unwrap_err();
    assert_eq!(e.code, "FunctionError.RuntimeInitError");
    assert!(e.reason.starts_with("Runtime.ImportModuleError"), "{}", e.reason);

    // A snapshot that cannot be restored is removed and the instance boots.
    let mut bad = (*version("h", 1)).clone();
    bad.snap_start = true;
    bad.handler = "bad_snapshot".into();
    let bad = Arc::new(bad);
    s.pool.optimize(bad.clone()).await.unwrap();
    let out = invoke(&s.pool, &bad, json!({})).await.unwrap();
    assert!(tail(&out).contains("Init Duration"), "booted instead");
    assert!(!s.dir.join("snapshots/h/1").exists());
}

#[tokio::test]
async fn init_errors_are_function_errors_and_free_their_slot() {
    let s = setup("init-error", 1);
    let mut f = (*version("f", 0)).clone();
    f.handler = "init_error".into();
    let out = invoke(&s.pool, &Arc::new(f), json!({})).await.unwrap();
    assert_eq!(out.function_error, Some("Unhandled"));
    assert!(tail(&out).contains("INIT_REPORT Status: error Error Type: Runtime.ImportModuleError"));
    // The only slot is free again.
    invoke(&s.pool, &version("g", 0), json!({})).await.unwrap();
}

#[tokio::test]
async fn a_full_host_evicts_the_oldest_idle_instance_and_crashes_free_theirs() {
    let s = setup("evict", 1);
    let (f, g) = (version("f", 0), version("g", 0));
    invoke(&s.pool, &f, json!({})).await.unwrap();
    invoke(&s.pool, &g, json!({})).await.unwrap();
    invoke(&s.pool, &f, json!({})).await.unwrap();
    assert_eq!(s.fake.launches(), 3, "each took the other's slot");
    let out = invoke(&s.pool, &f, json!({"crash": true})).await.unwrap();
    assert_eq!(out.function_error, Some("Unhandled"));
    assert!(String::from_utf8_lossy(&out.payload).contains("Runtime.ExitError"));
    invoke(&s.pool, &g, json!({})).await.unwrap();
    assert_eq!(s.fake.launches(), 4);
}
