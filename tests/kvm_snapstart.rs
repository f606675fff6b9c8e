//! SnapStart end to end through the agent's public API, as Lambda applies it: publishing a
//! SnapStart version makes its init snapshot from a real boot (the version is `Pending` until
//! then), its cold starts restore from it while `$LATEST` boots; the runtime's snapshot hooks
//! (awslambdaric's `snapshot_restore_py`), uniqueness after a restore, and what happens to a
//! snapshot when a new version is published, the agent restarts or the snapshot is damaged;
//! working sets (recorded by a restored instance's first invocation, loaded by the next
//! restores, ignored when missing, truncated or another snapshot's); provisioned concurrency
//! on an alias and the idle-memory budget.
//!
//! Like the other KVM tests these need a KVM host that runs Linux guests; scripts/test.sh runs
//! them in the right place, and anywhere else they fail and say why.

mod common;
use common::agent::{Agent, Response};
use common::require_kvm_host;

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

fn start(name: &str) -> Agent {
    require_kvm_host();
    Agent::start(name, &[])
}

fn body(r: &Response) -> String {
    String::from_utf8_lossy(&r.body).into_owned()
}

/// Invokes and expects a success; returns the answer and the log tail.
async fn ok(agent: &Agent, name: &str, payload: Value) -> (Value, String) {
    let r = agent.invoke(name, payload).await;
    assert_eq!(r.status, 200, "{}", body(&r));
    assert_eq!(r.header("x-amz-function-error"), None, "{}", body(&r));
    (r.json(), r.log_tail())
}

/// A version's snapshot directory (`name` is `function:version`).
fn snapshot_dir(agent: &Agent, name: &str) -> PathBuf {
    let (function, version) = name.split_once(':').expect("a published version");
    agent.data_dir.join("snapshots").join(function).join(version)
}

fn snapshot_meta(agent: &Agent, name: &str) -> Option<Value> {
    let bytes = std::fs::read(snapshot_dir(agent, name).join("meta.json")).ok()?;
    Some(serde_json::from_slice(&bytes).unwrap())
}

/// A version's configuration.
async fn configuration(agent: &Agent, name: &str) -> Value {
    let r = agent.request("GET", &format!("/2015-03-31/functions/{name}/configuration"), &[], vec![]).await;
    assert_eq!(r.status, 200, "{}", body(&r));
    r.json()
}

/// Publishes `function`'s `$LATEST`; the SnapStart version answers `Pending`, and is waited
/// for until it is `Active`. Returns the version's name (`function:N`).
async fn publish(agent: &Agent, function: &str) -> String {
    let r = agent.request("POST", &format!("/2015-03-31/functions/{function}/versions"), &[], b"{}".to_vec()).await;
    assert_eq!(r.status, 201, "{}", body(&r));
    assert_eq!(r.json()["State"], "Pending", "{}", body(&r));
    wait_active(agent, &format!("{function}:{}", r.json()["Version"].as_str().unwrap())).await
}

async fn wait_active(agent: &Agent, name: &str) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
    loop {
        let c = configuration(agent, name).await;
        match c["State"].as_str() {
            Some("Active") => {
                assert_eq!(c["SnapStart"], json!({"ApplyOn": "PublishedVersions", "OptimizationStatus": "On"}));
                return name.to_owned();
            }
            Some("Pending") => {}
            _ => panic!("{name}: {c}"),
        }
        assert!(std::time::Instant::now() < deadline, "{name} still Pending");
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}

fn now_s() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64()
}

/// Checks that the guest's clock (`time` in the answer), read during an invocation that the
/// host sent at `sent` and saw answered at `answered`, was within a second of the host's.
fn check_clock(answer: &Value, sent: f64, answered: f64) {
    let t = answer["time"].as_f64().unwrap();
    assert!(t > sent - 1.0 && t < answered + 1.0, "guest clock {t}, host {sent}..{answered}: {answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_snapstart_restores_unique_clones_and_keeps_init_state() {
    let mut agent = start("snap-py");
    let created = agent
        .create(
            "snap",
            "python3.11",
            "handler.snap_info",
            "python.zip",
            json!({"MemorySize": 128, "Timeout": 30, "SnapStart": {"ApplyOn": "PublishedVersions"}, "Publish": true}),
        )
        .await;
    assert_eq!(created.status, 201, "{}", body(&created));
    // Publish answers the version, Pending while its snapshot is made; it cannot run yet.
    assert_eq!((created.json()["Version"].as_str(), created.json()["State"].as_str()), (Some("1"), Some("Pending")));
    let early = agent.invoke("snap:1", json!({})).await;
    assert_eq!((early.status, early.header("x-amzn-errortype")), (409, Some("SnapStartNotReadyException")));
    wait_active(&agent, "snap:1").await;
    let meta = snapshot_meta(&agent, "snap:1").expect("the snapshot is on disk");
    assert!(snapshot_dir(&agent, "snap:1").join("memory").is_file());

    // The version's cold starts restore from it.
    let sent = now_s();
    let (first, tail) = ok(&agent, "snap:1", json!({})).await;
    check_clock(&first, sent, now_s());
    assert!(tail.contains("Restore Duration:"), "a restored instance reports its restore: {tail}");
    assert!(!tail.contains("Init Duration:"), "{tail}");
    assert_eq!(first["init_type"], "snap-start");
    let hook = first["after_restore"].as_f64().expect("the after-restore hook ran before the first event");
    assert!(hook <= first["time"].as_f64().unwrap());
    assert_eq!(first["tmp_mib"].as_u64().map(|m| m > 400 && m <= 512), Some(true), "/tmp is the 512 MB drive: {first}");

    // Two at once: the idle instance takes one, a second clone of the same snapshot the other,
    // which loads the working set that the first one's invocation recorded.
    wait_for_file(&snapshot_dir(&agent, "snap:1").join("working_set")).await;
    let sent = now_s();
    let (a, b) = tokio::join!(ok(&agent, "snap:1", json!({"ms": 2000})), ok(&agent, "snap:1", json!({"ms": 2000})));
    let answered = now_s();
    let answers = [first.clone(), a.0, b.0];
    assert_eq!(answers.iter().filter(|v| v["after_restore"] != first["after_restore"]).count(), 1, "{answers:?}");
    for v in &answers {
        // The init ran once, in the snapshot: every clone has its global.
        assert_eq!(v["init_token"], first["init_token"]);
        assert_eq!(v["init_pid"], first["init_pid"]);
    }
    let mut urandom: Vec<&str> = answers.iter().map(|v| v["urandom"].as_str().unwrap()).collect();
    let mut uuids: Vec<&str> = answers.iter().map(|v| v["uuid4"].as_str().unwrap()).collect();
    urandom.sort();
    urandom.dedup();
    uuids.sort();
    uuids.dedup();
    assert_eq!((urandom.len(), uuids.len()), (3, 3), "clones repeat random values: {answers:?}");
    let clone = answers.iter().find(|v| v["after_restore"] != first["after_restore"]).unwrap();
    check_clock(clone, sent, answered);

    // The snapshot and its metadata survive an agent restart; the next cold start restores
    // from the same snapshot rather than making another.
    agent.kill9();
    agent.spawn();
    let (_, tail) = ok(&agent, "snap:1", json!({})).await;
    assert!(tail.contains("Restore Duration:"), "{tail}");
    assert_eq!(snapshot_meta(&agent, "snap:1").as_ref(), Some(&meta), "the snapshot was made again");

    // A damaged snapshot: detected, removed, logged, and the function boots instead.
    agent.kill9();
    let state = snapshot_dir(&agent, "snap:1").join("state");
    let mut bytes = std::fs::read(&state).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x20;
    std::fs::write(&state, bytes).unwrap();
    agent.spawn();
    let (_, tail) = ok(&agent, "snap:1", json!({})).await;
    assert!(tail.contains("Init Duration:"), "a damaged snapshot makes the instance boot: {tail}");
    let logs = agent.request("GET", "/2015-03-31/functions/snap/logs", &[], vec![]).await;
    let logs = body(&logs);
    assert!(logs.contains("could not be restored") && logs.contains("checksum mismatch"), "{logs}");

    // A new configuration is a new version, with a snapshot of its own from a new init.
    let updated = agent
        .request(
            "PUT",
            "/2015-03-31/functions/snap/configuration",
            &[],
            serde_json::to_vec(&json!({"MemorySize": 256})).unwrap(),
        )
        .await;
    assert_eq!(updated.status, 200, "{}", body(&updated));
    let v2 = publish(&agent, "snap").await;
    assert_eq!(v2, "snap:2");
    let (after, tail) = ok(&agent, "snap:2", json!({})).await;
    assert!(tail.contains("Restore Duration:") && tail.contains("Memory Size: 256 MB"), "{tail}");
    assert_ne!(after["init_token"], first["init_token"], "the new snapshot comes from a new init");
    let new_meta = snapshot_meta(&agent, "snap:2").unwrap();
    assert_ne!(new_meta["revision_id"], meta["revision_id"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provided_snapstart_at_2048_mib_and_failures() {
    let agent = start("snap-rs");
    let created = agent
        .create(
            "big",
            "provided.al2023",
            "bootstrap",
            "rust.zip",
            json!({"MemorySize": 2048, "Timeout": 30, "SnapStart": {"ApplyOn": "PublishedVersions"}}),
        )
        .await;
    assert_eq!(created.status, 201, "{}", body(&created));
    assert_eq!(created.json()["SnapStart"], json!({"ApplyOn": "PublishedVersions", "OptimizationStatus": "Off"}));
    let v1 = publish(&agent, "big").await;

    // A runtime without hooks is snapshotted waiting for its first event.
    let (echo, tail) = ok(&agent, &v1, json!({"hello": "world"})).await;
    assert_eq!(echo, json!({"hello": "world"}));
    assert!(tail.contains("Restore Duration:") && tail.contains("Memory Size: 2048 MB"), "{tail}");
    // $LATEST boots.
    let (_, tail) = ok(&agent, "big", json!({})).await;
    assert!(tail.contains("Init Duration:") && !tail.contains("Restore Duration:"), "{tail}");
    // Two clones give different numbers from the rand crate; the second restore loads the
    // working set the first one's invocation recorded.
    wait_for_file(&snapshot_dir(&agent, &v1).join("working_set")).await;
    let (a, b) = tokio::join!(
        ok(&agent, &v1, json!({"random": true, "sleep_ms": 1500})),
        ok(&agent, &v1, json!({"random": true, "sleep_ms": 1500}))
    );
    assert_ne!(a.0["random"], b.0["random"]);

    // A new version: its own snapshot; the first version keeps its own. The same zip again
    // with nothing else changed publishes nothing new (Lambda answers the last version); a new
    // environment with it does.
    let meta = snapshot_meta(&agent, &v1).expect("the snapshot is on disk");
    let zip = std::fs::read(common::guest_dir().join("functions/rust.zip")).unwrap();
    use base64::Engine as _;
    let code = json!({"ZipFile": base64::engine::general_purpose::STANDARD.encode(zip), "Description": "v2"});
    let updated = agent.request("PUT", "/2015-03-31/functions/big/code", &[], serde_json::to_vec(&code).unwrap()).await;
    assert_eq!(updated.status, 400, "Description is not a member of UpdateFunctionCode: {}", body(&updated));
    let code = json!({"ZipFile": code["ZipFile"], "Publish": true});
    let updated = agent.request("PUT", "/2015-03-31/functions/big/code", &[], serde_json::to_vec(&code).unwrap()).await;
    assert_eq!(updated.status, 200, "{}", body(&updated));
    assert_eq!(updated.json()["Version"], "1", "nothing changed: the last version");
    let env = json!({"Environment": {"Variables": {"RELEASE": "2"}}});
    let updated =
        agent.request("PUT", "/2015-03-31/functions/big/configuration", &[], serde_json::to_vec(&env).unwrap()).await;
    assert_eq!(updated.status, 200, "{}", body(&updated));
    let updated = agent.request("PUT", "/2015-03-31/functions/big/code", &[], serde_json::to_vec(&code).unwrap()).await;
    assert_eq!(updated.status, 200, "{}", body(&updated));
    assert_eq!(updated.json()["Version"], "2", "UpdateFunctionCode with Publish answers the new version");
    let v2 = wait_active(&agent, "big:2").await;
    ok(&agent, &v2, json!({"again": 1})).await;
    assert_ne!(snapshot_meta(&agent, &v2).unwrap()["revision_id"], meta["revision_id"]);
    assert_eq!(snapshot_meta(&agent, &v1).as_ref(), Some(&meta));

    // Provisioned concurrency on an alias: two restored instances kept ready for a version
    // never invoked; two invokes at once through the alias then pay no restore.
    let created = agent
        .create(
            "pc",
            "provided.al2023",
            "bootstrap",
            "rust.zip",
            json!({"Timeout": 30, "SnapStart": {"ApplyOn": "PublishedVersions"}}),
        )
        .await;
    assert_eq!(created.status, 201, "{}", body(&created));
    publish(&agent, "pc").await;
    let alias = serde_json::to_vec(&json!({"Name": "live", "FunctionVersion": "1"})).unwrap();
    let r = agent.request("POST", "/2015-03-31/functions/pc/aliases", &[], alias).await;
    assert_eq!(r.status, 201, "{}", body(&r));
    let path = "/2019-09-30/functions/pc/provisioned-concurrency";
    let missing = agent.request("GET", &format!("{path}?Qualifier=live"), &[], vec![]).await;
    assert_eq!(missing.status, 404, "{}", body(&missing));
    assert_eq!(missing.header("x-amzn-errortype"), Some("ProvisionedConcurrencyConfigNotFoundException"));
    let no_qualifier = agent.request("GET", path, &[], vec![]).await;
    assert_eq!(no_qualifier.status, 400, "{}", body(&no_qualifier));
    let put = serde_json::to_vec(&json!({"ProvisionedConcurrentExecutions": 2})).unwrap();
    let latest = agent.request("PUT", &format!("{path}?Qualifier=$LATEST"), &[], put.clone()).await;
    assert_eq!(latest.status, 400, "not on $LATEST, as on Lambda: {}", body(&latest));
    let set = agent.request("PUT", &format!("{path}?Qualifier=live"), &[], put).await;
    assert_eq!(set.status, 202, "{}", body(&set));
    assert_eq!(set.json()["RequestedProvisionedConcurrentExecutions"], 2);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let got = agent.request("GET", &format!("{path}?Qualifier=live"), &[], vec![]).await;
        assert_eq!(got.status, 200, "{}", body(&got));
        let status = got.json();
        match status["Status"].as_str() {
            Some("READY") => {
                assert_eq!(status["AllocatedProvisionedConcurrentExecutions"], 2);
                break;
            }
            Some("IN_PROGRESS") => {}
            _ => panic!("provisioned concurrency: {status}"),
        }
        assert!(std::time::Instant::now() < deadline, "not ready in time: {status}");
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    let (a, b) =
        tokio::join!(ok(&agent, "pc:live", json!({"sleep_ms": 500})), ok(&agent, "pc:live", json!({"sleep_ms": 500})));
    for tail in [&a.1, &b.1] {
        assert!(!tail.contains("Restore Duration:") && !tail.contains("Init Duration:"), "{tail}");
    }
    let deleted = agent.request("DELETE", &format!("{path}?Qualifier=live"), &[], vec![]).await;
    assert_eq!(deleted.status, 204, "{}", body(&deleted));

    // A failing after-restore hook is the function's error, as Lambda reports it.
    let created = agent
        .create(
            "hook",
            "python3.11",
            "handler.snap_info",
            "python.zip",
            json!({
                "Timeout": 30,
                "SnapStart": {"ApplyOn": "PublishedVersions"},
                "Environment": {"Variables": {"FAIL_AFTER_RESTORE": "1"}},
                "Publish": true,
            }),
        )
        .await;
    assert_eq!(created.status, 201, "{}", body(&created));
    wait_active(&agent, "hook:1").await;
    let failed = agent.invoke("hook:1", json!({})).await;
    assert_eq!(failed.status, 200, "{}", body(&failed));
    assert_eq!(failed.header("x-amz-function-error"), Some("Unhandled"));
    let tail = failed.log_tail();
    assert!(tail.contains("Runtime.AfterRestoreError"), "{tail}");
    assert!(body(&failed).contains("after-restore hook failed on purpose"), "{}", body(&failed));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_instances_past_the_memory_budget_stop() {
    require_kvm_host();
    // A budget smaller than any instance: every instance stops as soon as it goes idle and
    // has been measured, so each invoke is a cold start.
    let agent = Agent::start("idle-budget", &["--idle-memory-mib", "1"]);
    let created = agent.create("tiny", "provided.al2023", "bootstrap", "rust.zip", json!({"Timeout": 30})).await;
    assert_eq!(created.status, 201, "{}", body(&created));
    for _ in 0..2 {
        let (_, tail) = ok(&agent, "tiny", json!({"n": 1})).await;
        assert!(tail.contains("Init Duration:"), "an idle instance outlived the budget: {tail}");
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    }
}

/// Waits up to 30 s for `path` to exist.
async fn wait_for_file(path: &std::path::Path) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !path.is_file() {
        assert!(std::time::Instant::now() < deadline, "{} never appeared", path.display());
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn working_sets_are_recorded_loaded_and_bad_ones_ignored() {
    require_kvm_host();
    // No idle instance is kept: every invoke is a restore.
    let agent = Agent::start_logged("snap-ws", &["--keep-alive-s", "0"]);
    let created = agent
        .create(
            "ws",
            "provided.al2023",
            "bootstrap",
            "rust.zip",
            json!({"MemorySize": 128, "Timeout": 30, "SnapStart": {"ApplyOn": "PublishedVersions"}}),
        )
        .await;
    assert_eq!(created.status, 201, "{}", body(&created));
    let v1 = publish(&agent, "ws").await;
    let ws = snapshot_dir(&agent, &v1).join("working_set");
    // Restores and answers, whatever the working set's state. (The last instance may still be
    // idle for a moment after its invocation, recording, before its zero keep-alive ends it:
    // an answer from it is not a restore, and the invoke is made again.)
    let restore = |n: u32| {
        let agent = &agent;
        let v1 = &v1;
        async move {
            for _ in 0..20 {
                let (echo, tail) = ok(agent, v1, json!({"n": n})).await;
                assert_eq!(echo, json!({"n": n}));
                if tail.contains("Restore Duration:") {
                    return;
                }
                tokio::time::sleep(std::time::Duration::from_millis(250)).await;
            }
            panic!("no invoke landed on a restored instance");
        }
    };

    // The first restore has none to load; its first invocation records one.
    restore(1).await;
    wait_for_file(&ws).await;
    assert!(agent.log().contains("no working set yet"), "{}", agent.log());
    let recorded = std::fs::read(&ws).unwrap();
    assert!(recorded.len() > 8 + 32 + 8 + 32, "an empty working set");
    // The next restores load it, and record nothing new.
    restore(2).await;
    restore(3).await;
    assert_eq!(std::fs::read(&ws).unwrap(), recorded);
    assert!(!agent.log().contains("working set ignored"), "{}", agent.log());

    // Truncated: ignored with a line in the log; the restore works and records a good one
    // (the answer comes first; the recording is over when the agent ends the instance).
    let truncated = &recorded[..recorded.len() - 5];
    std::fs::write(&ws, truncated).unwrap();
    restore(4).await;
    assert!(agent.log().contains("working set ignored") && agent.log().contains("truncated"), "{}", agent.log());
    rewritten(&ws, truncated).await;

    // Another snapshot's (whole, with a good checksum, but naming another state): ignored.
    let mut foreign = std::fs::read(&ws).unwrap();
    let body_len = foreign.len() - 32;
    foreign[8..40].fill(0x5a);
    use sha2::Digest as _;
    let sum = sha2::Sha256::digest(&foreign[..body_len]);
    foreign[body_len..].copy_from_slice(&sum);
    std::fs::write(&ws, &foreign).unwrap();
    restore(5).await;
    assert!(agent.log().contains("taken of another snapshot"), "{}", agent.log());
    rewritten(&ws, &foreign).await;

    // Missing: the restore works, and records one.
    std::fs::remove_file(&ws).unwrap();
    restore(6).await;
    assert_eq!(agent.log().matches("no working set yet").count(), 2, "{}", agent.log());
    wait_for_file(&ws).await;
}

/// Waits up to 30 s for the file at `path` to hold something other than `old`.
async fn rewritten(path: &std::path::Path, old: &[u8]) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while std::fs::read(path).map_or(true, |b| b == old) {
        assert!(std::time::Instant::now() < deadline, "{} was not written again", path.display());
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}
