//! Lambda's release workflow end to end on a KVM host: versions, aliases, layers, tags,
//! reserved and provisioned concurrency and SnapStart on published versions, driven by
//! unmodified boto3 and the aws CLI (tests/api/test_release.py); then SIGKILL of the agent and
//! a restart, after which everything is there and invokes. And a data dir written by the
//! agents before versions opens and its functions invoke.
//!
//! Like the other KVM tests these need a KVM host that runs Linux guests; scripts/test.sh runs
//! them in the right place, and anywhere else they fail and say why.

mod common;
use common::agent::Agent;
use common::require_kvm_host;
use common::script::Script;

use std::path::Path;

use serde_json::json;
use sha2::Digest;

#[test]
fn release_workflow_through_boto3_and_the_aws_cli_survives_kill9() {
    require_kvm_host();
    let aws = std::env::var("EMBER_AWS_CLI").expect(
        "EMBER_AWS_CLI must name the aws CLI (scripts/test.sh installs it from PyPI into ~/.cache/ember/awscli)",
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut agent = Agent::start("release", &[]);
    agent.tcp_port = Some(port);
    agent.kill9();
    agent.spawn();
    let functions = common::guest_dir().join("functions");
    let mut script = Script::start(
        "test_release.py",
        [
            format!("http://127.0.0.1:{port}").into(),
            functions.join("python.zip").into_os_string(),
            functions.join("rust.zip").into_os_string(),
            "--aws".into(),
            aws.into(),
        ],
        "boto3 is installed by scripts/test.sh",
    );
    script.phase("setup");
    agent.kill9();
    agent.spawn();
    script.phase("after-restart");
}

/// Writes a data dir as the agents before versions left it: their schema, one provided
/// function with its code (zip and image) and provisioned concurrency on `$LATEST`.
fn old_data_dir(data: &Path) {
    let zip = std::fs::read(common::guest_dir().join("functions/rust.zip")).unwrap();
    let hex: String = sha2::Sha256::digest(&zip).iter().map(|b| format!("{b:02x}")).collect();
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(&zip));
    let code = data.join("code");
    std::fs::create_dir_all(&code).unwrap();
    std::fs::write(code.join(format!("{hex}.zip")), &zip).unwrap();
    let staging = data.join("staging");
    std::fs::create_dir(&staging).unwrap();
    ember::agent::codezip::build_image(&zip, "provided.al2023", &staging, &code.join(format!("{hex}.ext4"))).unwrap();
    std::fs::remove_dir_all(&staging).unwrap();
    let db = rusqlite::Connection::open(data.join("ember.db")).unwrap();
    db.execute_batch(ember::agent::store::migrate::SCHEMA_1).unwrap();
    db.execute(
        "INSERT INTO functions (name, runtime, handler, role, description, memory_mib, timeout_s, ephemeral_mib, \
         environment, code_hex, code_b64, code_size, revision_id, last_modified, snap_start) VALUES \
         ('old', 'provided.al2023', 'bootstrap', 'arn:aws:iam::000000000000:role/r', 'from before', 128, 30, 512, \
         '{\"K\":\"v\"}', ?1, ?2, ?3, 'rev-old', '2026-11-30T10:00:00.000+0000', 0)",
        rusqlite::params![hex, b64, zip.len() as i64],
    )
    .unwrap();
    db.execute("INSERT INTO provisioned (name, requested) VALUES ('old', 1)", []).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_dir_from_before_versions_opens_and_its_functions_invoke() {
    require_kvm_host();
    let agent = Agent::start_with("migrated", &[], old_data_dir);
    let got = agent.request("GET", "/2015-03-31/functions/old", &[], vec![]).await;
    assert_eq!(got.status, 200, "{}", String::from_utf8_lossy(&got.body));
    let config = &got.json()["Configuration"];
    assert_eq!((config["Version"].as_str(), config["Description"].as_str()), (Some("$LATEST"), Some("from before")));
    assert_eq!(config["RevisionId"], "rev-old");
    let r = agent.invoke("old", json!({"hello": "old"})).await;
    assert_eq!((r.status, r.header("x-amz-function-error")), (200, None), "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json(), json!({"hello": "old"}));

    // Its provisioned concurrency on $LATEST moved to version 1, published for it.
    let versions = agent.request("GET", "/2015-03-31/functions/old/versions", &[], vec![]).await.json();
    let listed: Vec<&str> =
        versions["Versions"].as_array().unwrap().iter().map(|v| v["Version"].as_str().unwrap()).collect();
    assert_eq!(listed, ["$LATEST", "1"]);
    let path = "/2019-09-30/functions/old/provisioned-concurrency?Qualifier=1";
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let status = agent.request("GET", path, &[], vec![]).await.json();
        if status["Status"] == "READY" {
            break;
        }
        assert_eq!(status["Status"], "IN_PROGRESS", "{status}");
        assert!(std::time::Instant::now() < deadline, "not ready in time: {status}");
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    let r = agent
        .request(
            "POST",
            "/2015-03-31/functions/old/invocations?Qualifier=1",
            &[("X-Amz-Log-Type", "Tail")],
            b"{}".to_vec(),
        )
        .await;
    assert_eq!(r.status, 200);
    assert!(!r.log_tail().contains("Init Duration"), "the provisioned instance ran it: {}", r.log_tail());
}
