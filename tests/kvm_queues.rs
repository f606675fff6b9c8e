//! RabbitMQ-backed features end to end on a KVM host, through unmodified boto3 and pika
//! (tests/api/test_queues.py), with the agent started with `--amqp-url`: OnSuccess destinations
//! that are queues, carrying Lambda's invocation record; a function's dead-letter queue, which
//! receives an event whose retries are exhausted with its RequestID, ErrorCode and ErrorMessage
//! headers; 30 destination records that all arrive though the broker's application is stopped
//! and started while they are delivered; event source mappings from queues in Lambda's SQS
//! event shape: batch size and batching window, every message acked once handled, partial batch
//! responses (ReportBatchItemFailures) with a quorum queue dead-lettering the message that keeps
//! failing, the API's errors, and mappings that survive the agent's SIGKILL.
//!
//! The broker is the RabbitMQ that scripts/test.sh's runner starts inside the KVM host before
//! the tests, in the background (scripts/rabbitmq.sh); `EMBER_AMQP_URL` says where it is. Like
//! the other KVM tests this needs a KVM host that runs Linux guests; scripts/test.sh runs it in
//! the right place, and anywhere else it fails and says why.

mod common;
use common::agent::Agent;
use common::require_kvm_host;
use common::script::Script;

use std::process::Command;
use std::time::Duration;

/// `scripts/rabbitmq.sh ACTION`: `wait` (until the broker answers AMQP), `stop-app`, `start-app`.
fn rabbitmq(action: &str) {
    let status = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/rabbitmq.sh"))
        .arg(action)
        .status()
        .expect("run scripts/rabbitmq.sh");
    assert!(status.success(), "scripts/rabbitmq.sh {action} failed: {status}");
}

#[test]
fn queue_destinations_dead_letters_and_mappings_survive_broker_and_agent_restarts() {
    require_kvm_host();
    let amqp_url = std::env::var("EMBER_AMQP_URL").ok().filter(|url| !url.is_empty()).expect(
        "EMBER_AMQP_URL is not set: the queue tests need the RabbitMQ broker that scripts/test.sh starts in \
         the KVM host (scripts/rabbitmq.sh); run them with scripts/test.sh",
    );
    // The broker starts in the background, slowly in the emulated host.
    rabbitmq("wait");

    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut agent = Agent::start("queues", &["--amqp-url", &amqp_url, "--async-retry-delays-s", "1,2"]);
    agent.tcp_port = Some(port);
    agent.kill9();
    agent.spawn();
    let state = agent.data_dir.with_file_name("queues-state.json");
    let mut script = Script::start(
        "test_queues.py",
        [
            format!("http://127.0.0.1:{port}").into(),
            common::guest_dir().join("functions/rust.zip").into_os_string(),
            amqp_url.clone().into(),
            state.into_os_string(),
        ],
        "it needs boto3 and pika",
    );

    // (a) OnSuccess to a queue, (b) a dead-letter queue.
    script.phase("destinations");

    // (c) 30 records being delivered when the broker's application stops: the agent delivers
    // every one once it is back (at least once).
    script.phase("burst");
    rabbitmq("stop-app");
    std::thread::sleep(Duration::from_secs(3));
    rabbitmq("start-app");
    rabbitmq("wait");
    script.phase("after-broker-restart");

    // (g) the mappings' errors, (d) batches, (e) partial batch responses; the batch mapping is
    // left disabled.
    script.phase("mappings");

    // (f) The mappings are stored: after a SIGKILL they are listed, and the batch mapping,
    // enabled again, handles new messages.
    agent.kill9();
    agent.spawn();
    script.phase("after-restart");
}
