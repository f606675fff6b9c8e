//! Event-driven invocations end to end on a KVM host. Asynchronous ones through unmodified boto3
//! (tests/api/test_events.py): retries with the same request id, OnFailure and OnSuccess
//! destinations with Lambda's invocation record, an event throttled past its maximum age, and
//! 100 accepted events that all run though the agent is SIGKILLed while they do. Function URLs
//! configured through boto3 and called with curl (tests/api/test_urls.py). Schedules through
//! boto3's scheduler client (tests/api/test_schedules.py).
//!
//! Like the other KVM tests this needs a KVM host that runs Linux guests; scripts/test.sh runs
//! it in the right place, and anywhere else it fails and says why.

mod common;
use common::agent::Agent;
use common::require_kvm_host;
use common::script::Script;

use std::process::Command;

/// How many events the burst function has logged.
async fn burst_ran(agent: &Agent) -> usize {
    let log = agent.request("GET", "/2015-03-31/functions/ev-burst/logs?bytes=4000000", &[], vec![]).await;
    String::from_utf8_lossy(&log.body).lines().filter(|l| l.starts_with("event ")).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_invokes_retry_reach_destinations_and_survive_kill9() {
    require_kvm_host();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut agent = Agent::start("events", &["--async-retry-delays-s", "1,2"]);
    agent.tcp_port = Some(port);
    agent.kill9();
    agent.spawn();
    let ids = agent.data_dir.with_file_name("burst-ids.json");
    let mut script = Script::start(
        "test_events.py",
        [
            format!("http://127.0.0.1:{port}").into(),
            common::guest_dir().join("functions/rust.zip").into_os_string(),
            ids.into_os_string(),
        ],
        "boto3 is installed by scripts/test.sh",
    );
    script.phase("setup");
    script.phase("burst");
    // The events are accepted and running, two at a time: kill the agent in their midst.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(180);
    while burst_ran(&agent).await < 6 {
        assert!(std::time::Instant::now() < deadline, "the burst's events did not start");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    agent.kill9();
    let left = rusqlite::Connection::open(agent.data_dir.join("ember.db"))
        .unwrap()
        .query_row("SELECT COUNT(*) FROM async_events", [], |r| r.get::<_, i64>(0))
        .unwrap();
    eprintln!("kvm_events: {left} events were queued at the SIGKILL");
    assert!(
        (1..100).contains(&left),
        "the SIGKILL came before or after the burst ran ({left} left): it proves nothing"
    );
    agent.spawn();
    script.phase("after-restart");
}

/// Function URLs: configured through boto3, called with curl (tests/api/test_urls.py).
#[test]
fn function_urls_through_curl() {
    require_kvm_host();
    let free_port = || std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let (port, url_port) = (free_port(), free_port());
    let url_listen = format!("127.0.0.1:{url_port}");
    let mut agent = Agent::start("urls", &["--url-listen", &url_listen]);
    agent.tcp_port = Some(port);
    agent.kill9();
    agent.spawn();
    let status = Command::new("python3")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/api/test_urls.py"))
        .arg(format!("http://127.0.0.1:{port}"))
        .arg(url_port.to_string())
        .arg(common::guest_dir().join("functions/rust.zip"))
        .status()
        .expect("run python3 tests/api/test_urls.py");
    assert!(status.success(), "the function URL checks failed: {status}");
}

/// Schedules through boto3's `scheduler` client (tests/api/test_schedules.py).
#[test]
fn schedules_through_the_scheduler_client() {
    require_kvm_host();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut agent = Agent::start("schedules", &[]);
    agent.tcp_port = Some(port);
    agent.kill9();
    agent.spawn();
    let status = Command::new("python3")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/api/test_schedules.py"))
        .arg(format!("http://127.0.0.1:{port}"))
        .arg(common::guest_dir().join("functions/rust.zip"))
        .status()
        .expect("run python3 tests/api/test_schedules.py");
    assert!(status.success(), "the schedule checks failed: {status}");
}
