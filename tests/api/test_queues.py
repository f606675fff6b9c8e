#!/usr/bin/env python3
"""Ember's RabbitMQ-backed features through unmodified boto3 and pika: queue destinations,
dead-letter queues and SQS-style event source mappings.

    python3 tests/api/test_queues.py ENDPOINT RUST_ZIP AMQP_URL --phase PHASE|- STATE_FILE

PHASE is one of destinations, burst, after-broker-restart, mappings, after-restart, run in that
order (tests/kvm_queues.rs does, restarting the broker and the agent between them).

ENDPOINT is the agent's loopback TCP endpoint, started with `--amqp-url AMQP_URL
--async-retry-delays-s 1,2`. AMQP_URL is the RabbitMQ broker's (scripts/rabbitmq.sh). RUST_ZIP
is the Rust test function of scripts/build-test-functions.sh: it echoes its event, fails on
`{"fail": true}`, sleeps `sleep_ms`, answers an SQS batch with `batchItemFailures` for the
records whose body is `fail`, and with LOG_EVENTS set prints `event <request id> <event JSON>`
to its log, which is how these checks see what each invocation received (Ember's log tail,
GET /2015-03-31/functions/NAME/logs). STATE_FILE carries request ids and mapping UUIDs from one
phase to the next; `destinations` starts it afresh. With `--phase -` the phases are read from stdin, one per
line, and each is answered with a `phase NAME: ok` (or `failed`) line: one Python start for
all of them (see lambda_checks).

A queue ARN `arn:aws:sqs:us-east-1:000000000000:NAME` names the broker's durable queue NAME.
The agent never declares queues: each phase that uses a queue first deletes it and declares it
again, so that a rerun starts empty. Delivery to a queue is at least once: the checks accept
duplicates, but require every expected message.

`destinations`: a function with OnSuccess to a queue: `{"n": 1}` invoked asynchronously
reaches it as Lambda's invocation record (Success, the echo as `responsePayload`), persistent;
an always-failing event with MaximumRetryAttempts 1 reaches the function's dead-letter queue
(DeadLetterConfig, set at create and moved by update_function_configuration) as the original
payload, with the RequestID (the 202's), ErrorCode and ErrorMessage headers, after two attempts
with that request id.

`burst`: 30 events accepted for a function (reserved concurrency 1, 500 ms each) with OnSuccess
to a queue; their request ids go to STATE_FILE; it returns once the first record is in the
queue. The caller then restarts the broker's application (stop-app, start-app);
`after-broker-restart` waits until every one of the 30 Success records is in the queue.

`mappings`: CreateEventSourceMapping's errors (BatchSize 0, a Kinesis ARN, an unknown UUID, an
unsupported member); a mapping with BatchSize 5 and a 2 s batching window over 23 messages
published before it: batches of at most 5 records in Lambda's SQS event shape, each message
handled exactly once, and once the mapping is disabled the queue is empty (all acked); a
mapping with ReportBatchItemFailures over a quorum queue with a delivery limit: of 4 messages,
the one whose body is `fail` is delivered again and ends in the queue's dead-letter queue, the
others are handled exactly once.

`after-restart` (the caller SIGKILLed the agent and started it again): both mappings are still
listed, the disabled one still disabled; re-enabled with BatchSize 2, it handles 3 new messages
(and none of the 23 again). Then everything is deleted.
"""

import argparse
import collections
import functools
import hashlib
import json
import os
import sys
import time

import pika
from botocore.exceptions import ClientError

import lambda_checks
from lambda_checks import ROLE, check, events_in, expect_error, lambda_client, message, run_phases

# Polled a little more often than the event tests poll.
wait_for = functools.partial(lambda_checks.wait_for, every_s=0.3)

# The functions, one per scenario at most.
DEST, BURST, BATCH, PARTIAL = "q-dest", "q-burst", "q-batch", "q-partial"
# The broker's queues.
SUCCESS_Q, DLQ, BURST_Q = "ember-success", "ember-dlq", "ember-burst"
BATCH_Q, PARTIAL_Q, PARTIAL_DLX = "ember-batch", "ember-partial", "ember-partial-dlx"
ALL_QUEUES = (SUCCESS_Q, DLQ, BURST_Q, BATCH_Q, PARTIAL_Q, PARTIAL_DLX)

PHASES = ("destinations", "burst", "after-broker-restart", "mappings", "after-restart")
FN_ARN = "arn:aws:lambda:us-east-1:000000000000:function:"
QUEUE_ARN = "arn:aws:sqs:us-east-1:000000000000:"
NO_UUID = "00000000-0000-0000-0000-000000000000"
BURST_EVENTS = 30
BATCH_BODIES = [f"d-{k}" for k in range(23)]
PARTIAL_BODIES = ["e-0", "fail", "e-2", "e-3"]
RESTART_BODIES = [f"f-{k}" for k in range(3)]


def step(what):
    print(f"queues: {what}", flush=True)


# --- the agent ---------------------------------------------------------------------------------


def sqs_batches(endpoint, name):
    """The `Records` of every SQS event the function received, in the log's order."""
    return [event["Records"] for _, event in events_in(endpoint, name) if "Records" in event]


def bodies_in(endpoint, name):
    """How many times the function received each message body."""
    return collections.Counter(r["body"] for batch in sqs_batches(endpoint, name) for r in batch)


def create(lam, zip_bytes, name, **extra):
    lam.create_function(
        FunctionName=name, Runtime="provided.al2023", Role=ROLE, Handler="bootstrap",
        Code={"ZipFile": zip_bytes}, Timeout=30, MemorySize=128,
        Environment={"Variables": {"LOG_EVENTS": "1"}}, **extra,
    )


def mapping_state(lam, uuid):
    return lam.get_event_source_mapping(UUID=uuid)["State"]


def mapping_gone(lam, uuid):
    try:
        lam.get_event_source_mapping(UUID=uuid)
    except ClientError as e:
        return e.response["Error"]["Code"] == "ResourceNotFoundException"
    return False


# --- the broker --------------------------------------------------------------------------------


class Broker:
    """One pika connection to the broker, with publisher confirms. Heartbeats are off: the checks
    wait on the agent for minutes at a time without touching the connection."""

    def __init__(self, url):
        params = pika.URLParameters(url)
        params.heartbeat = 0
        self.conn = pika.BlockingConnection(params)
        self.ch = self.conn.channel()
        self.ch.confirm_delivery()

    def fresh_queue(self, name, arguments=None):
        """Declares the durable queue `name` anew: deleted first, so that a rerun starts empty
        (and a quorum queue's arguments could not change otherwise)."""
        self.ch.queue_delete(name)
        self.ch.queue_declare(name, durable=True, arguments=arguments)

    def publish(self, queue, body):
        """A persistent message with the message id `id-<body>`, confirmed by the broker."""
        props = pika.BasicProperties(message_id=f"id-{body}", delivery_mode=2, timestamp=int(time.time()))
        self.ch.basic_publish("", queue, body.encode(), props, mandatory=True)

    def drain(self, queue):
        """Every message in `queue` now, taken off it: (properties, body) pairs."""
        out = []
        while True:
            method, props, body = self.ch.basic_get(queue, auto_ack=True)
            if method is None:
                return out
            out.append((props, body))

    def count(self, queue):
        """How many messages `queue` holds ready (neither delivered nor unacked)."""
        return self.ch.queue_declare(queue, passive=True).method.message_count

    def close(self):
        if self.conn.is_open:
            self.conn.close()


def header(props, name):
    """An AMQP message header as text (pika gives long strings as str, byte arrays as bytes)."""
    value = (props.headers or {}).get(name)
    return value.decode() if isinstance(value, bytes) else value


# --- destinations and dead-letter queues -------------------------------------------------------


def dlq_of(config):
    """A function configuration's dead-letter queue ARN, if any."""
    return config.get("DeadLetterConfig", {}).get("TargetArn")


def destinations(endpoint, lam, broker, zip_bytes):
    for queue in (SUCCESS_Q, DLQ):
        broker.fresh_queue(queue)

    step("a function with a dead-letter queue and OnSuccess to a queue")
    # Created with the success queue as its DLQ, then moved to the real one: a dead letter in the
    # success queue would mean UpdateFunctionConfiguration's DeadLetterConfig was ignored.
    create(lam, zip_bytes, DEST, DeadLetterConfig={"TargetArn": QUEUE_ARN + SUCCESS_Q})
    got = lam.get_function_configuration(FunctionName=DEST)
    check(dlq_of(got) == QUEUE_ARN + SUCCESS_Q, f"the DLQ set at create: {got.get('DeadLetterConfig')}")
    upd = lam.update_function_configuration(FunctionName=DEST, DeadLetterConfig={"TargetArn": QUEUE_ARN + DLQ})
    check(dlq_of(upd) == QUEUE_ARN + DLQ, f"the DLQ set by update: {upd.get('DeadLetterConfig')}")
    got = lam.get_function_configuration(FunctionName=DEST)
    check(dlq_of(got) == QUEUE_ARN + DLQ, f"the DLQ after the update: {got.get('DeadLetterConfig')}")
    put = lam.put_function_event_invoke_config(
        FunctionName=DEST, MaximumRetryAttempts=1,
        DestinationConfig={"OnSuccess": {"Destination": QUEUE_ARN + SUCCESS_Q}},
    )
    check(put["DestinationConfig"]["OnSuccess"]["Destination"] == QUEUE_ARN + SUCCESS_Q, f"OnSuccess: {put}")

    step("two asynchronous invokes: one succeeding, one failing")
    ok = lam.invoke(FunctionName=DEST, InvocationType="Event", Payload=json.dumps({"n": 1}))
    ok_id = ok["ResponseMetadata"]["RequestId"]
    check(ok["StatusCode"] == 202 and ok_id, f"Event: {ok['ResponseMetadata']}")
    failing = lam.invoke(FunctionName=DEST, InvocationType="Event", Payload=json.dumps({"fail": True, "t": "dlq"}))
    fail_id = failing["ResponseMetadata"]["RequestId"]
    check(failing["StatusCode"] == 202 and fail_id, f"Event: {failing['ResponseMetadata']}")

    # (a) OnSuccess: Lambda's invocation record, as a persistent message.
    records = []  # every message taken off the success queue: (properties, record)

    def success_record():
        records.extend((p, json.loads(b)) for p, b in broker.drain(SUCCESS_Q))
        return next((r for r in records if r[1].get("requestContext", {}).get("requestId") == ok_id), None)

    props, record = wait_for("the Success record in the queue", success_record, 180)
    ctx = record["requestContext"]
    check(ctx["condition"] == "Success", f"condition: {record}")
    check(ctx["approximateInvokeCount"] == 1, f"approximateInvokeCount: {record}")
    check(ctx["functionArn"] == FN_ARN + DEST + ":$LATEST", f"functionArn: {record}")
    check(record["version"] == "1.0" and record["timestamp"].endswith("Z"), f"record: {record}")
    check(record["requestPayload"] == {"n": 1}, f"requestPayload: {record}")
    check(record["responsePayload"] == {"n": 1}, f"responsePayload (the echo): {record}")
    check(record["responseContext"]["statusCode"] == 200, f"responseContext: {record}")
    check(record["responseContext"]["executedVersion"] == "$LATEST", f"responseContext: {record}")
    check("functionError" not in record["responseContext"], f"responseContext: {record}")
    check(props.delivery_mode == 2, f"the record is a persistent message: delivery_mode {props.delivery_mode}")

    # (b) The dead-letter queue: the original event, with the error's headers.
    dead = []

    def dead_letters():
        dead.extend(broker.drain(DLQ))
        return dead

    wait_for("the dead letter", dead_letters, 180)
    for props, body in dead:  # at least once: a duplicate must be the same message
        check(json.loads(body) == {"fail": True, "t": "dlq"}, f"the DLQ message is the original event: {body!r}")
        rid = header(props, "RequestID")
        check(rid == fail_id, f"the DLQ message's RequestID {rid!r} is not the 202's {fail_id}")
        check(str(header(props, "ErrorCode")) == "200", f"ErrorCode of a function error: {props.headers}")
        check("boom" in str(header(props, "ErrorMessage")), f"ErrorMessage: {props.headers}")

    def attempts():
        return [rid for rid, e in events_in(endpoint, DEST) if e.get("t") == "dlq"]

    # The function's output reaches its log as the guest's console delivers it, which may be
    # just after the invocation's answer.
    wait_for("both attempts in the function's log", lambda: len(attempts()) >= 2, 60)
    check(attempts() == [fail_id, fail_id], f"two attempts, each with the 202's request id: {attempts()}")

    records.extend((p, json.loads(b)) for p, b in broker.drain(SUCCESS_Q))
    others = [r for _, r in records if r.get("requestContext", {}).get("requestId") != ok_id]
    check(others == [], f"only the success reached the success queue: {others}")


# --- destinations across a broker restart ------------------------------------------------------


def burst(lam, broker, zip_bytes, state):
    broker.fresh_queue(BURST_Q)
    create(lam, zip_bytes, BURST)
    # One instance, 500 ms per event: the records are delivered over ~15 s or more, so that the
    # broker's restart lands among them.
    lam.put_function_concurrency(FunctionName=BURST, ReservedConcurrentExecutions=1)
    lam.put_function_event_invoke_config(
        FunctionName=BURST, DestinationConfig={"OnSuccess": {"Destination": QUEUE_ARN + BURST_Q}},
    )
    step(f"{BURST_EVENTS} events with OnSuccess to a queue")
    ids = {}
    for i in range(BURST_EVENTS):
        r = lam.invoke(FunctionName=BURST, InvocationType="Event", Payload=json.dumps({"i": i, "sleep_ms": 500}))
        check(r["StatusCode"] == 202, f"event {i}: {r['StatusCode']}")
        ids[r["ResponseMetadata"]["RequestId"]] = i
    check(len(ids) == BURST_EVENTS, "every event has its own request id")
    state["burst"] = ids
    # The agent's publisher is connected and delivering once a record is in the queue.
    n = wait_for("the first Success record in the queue", lambda: broker.count(BURST_Q), 180)
    step(f"{n} of {BURST_EVENTS} records were in the queue before the broker's restart")


def after_broker_restart(broker, state):
    ids = state["burst"]  # request id -> i
    seen = collections.defaultdict(list)  # request id -> its records (duplicates allowed)

    def all_arrived():
        for _, body in broker.drain(BURST_Q):
            record = json.loads(body)
            seen[record["requestContext"]["requestId"]].append(record)
        return not (set(ids) - set(seen))

    wait_for(f"all {BURST_EVENTS} Success records after the broker's restart", all_arrived, 300)
    check(set(seen) == set(ids), f"records of events never sent: {set(seen) - set(ids)}")
    for rid, i in ids.items():
        for record in seen[rid]:
            check(record["requestContext"]["condition"] == "Success", f"condition: {record}")
            check(record["requestPayload"] == {"i": i, "sleep_ms": 500}, f"requestPayload of {rid}: {record}")
            check(record["responsePayload"] == {"i": i, "sleep_ms": 500}, f"responsePayload of {rid}: {record}")
    twice = sum(len(r) for r in seen.values()) - len(seen)
    step(f"{BURST_EVENTS} records arrived across the broker's restart ({twice} duplicates)")


# --- event source mappings ---------------------------------------------------------------------


def check_sqs_record(record, queue):
    """A record of Lambda's SQS event, for a message this script published to `queue`."""
    body = record["body"]
    check(record["eventSource"] == "aws:sqs", f"eventSource: {record}")
    check(record["eventSourceARN"] == QUEUE_ARN + queue, f"eventSourceARN: {record}")
    check(record["awsRegion"] == "us-east-1", f"awsRegion: {record}")
    check(record["messageId"] == f"id-{body}", f"messageId is the AMQP message_id: {record}")
    check(record["md5OfBody"] == hashlib.md5(body.encode()).hexdigest(), f"md5OfBody: {record}")
    check(isinstance(record["receiptHandle"], str) and record["receiptHandle"], f"receiptHandle: {record}")
    check(isinstance(record["messageAttributes"], dict), f"messageAttributes: {record}")
    attributes = record["attributes"]
    check(int(attributes["ApproximateReceiveCount"]) >= 1, f"ApproximateReceiveCount: {record}")
    check(int(attributes["SentTimestamp"]) > 0, f"SentTimestamp: {record}")


def mapping_errors(lam):
    step("event source mapping errors")
    # (boto3 itself refuses a BatchSize out of 1-10000: past 10 without a batching window is
    # the rule only the service knows.)
    expect_error("InvalidParameterValueException", 400, lam.create_event_source_mapping,
                 EventSourceArn=QUEUE_ARN + BATCH_Q, FunctionName=BATCH, BatchSize=50)
    expect_error("InvalidParameterValueException", 400, lam.create_event_source_mapping,
                 EventSourceArn="arn:aws:kinesis:us-east-1:000000000000:stream/ember", FunctionName=BATCH)
    expect_error("ResourceNotFoundException", 404, lam.get_event_source_mapping, UUID=NO_UUID)
    expect_error("ResourceNotFoundException", 404, lam.delete_event_source_mapping, UUID=NO_UUID)
    try:
        lam.create_event_source_mapping(
            EventSourceArn=QUEUE_ARN + BATCH_Q, FunctionName=BATCH,
            FilterCriteria={"Filters": [{"Pattern": json.dumps({"body": ["d-0"]})}]},
        )
    except ClientError as e:
        check("FilterCriteria" in message(e), f"the refusal names FilterCriteria: {e}")
    else:
        raise AssertionError("a mapping with FilterCriteria (not implemented) was accepted")
    listed = lam.list_event_source_mappings(FunctionName=BATCH)["EventSourceMappings"]
    check(listed == [], f"the refused mappings were not created: {listed}")


def mappings(endpoint, lam, broker, zip_bytes, state):
    broker.fresh_queue(BATCH_Q)
    broker.fresh_queue(PARTIAL_DLX)
    broker.fresh_queue(PARTIAL_Q, {
        "x-queue-type": "quorum", "x-delivery-limit": 2,
        "x-dead-letter-exchange": "", "x-dead-letter-routing-key": PARTIAL_DLX,
    })
    create(lam, zip_bytes, BATCH)
    create(lam, zip_bytes, PARTIAL)

    # (g) Errors.
    mapping_errors(lam)

    # (d) Batches of at most 5, over messages published before the mapping.
    step(f"{len(BATCH_BODIES)} messages, then a mapping with batches of 5 and a 2 s window")
    for body in BATCH_BODIES:
        broker.publish(BATCH_Q, body)
    created = lam.create_event_source_mapping(
        EventSourceArn=QUEUE_ARN + BATCH_Q, FunctionName=BATCH, BatchSize=5, MaximumBatchingWindowInSeconds=2,
        ScalingConfig={"MaximumConcurrency": 2}, Enabled=True,
    )
    batch_uuid = created["UUID"]
    check(batch_uuid and created["State"] == "Creating", f"created: {created}")
    check(created["EventSourceArn"] == QUEUE_ARN + BATCH_Q, f"EventSourceArn: {created}")
    check(created["FunctionArn"] == FN_ARN + BATCH, f"FunctionArn: {created}")
    check(created["BatchSize"] == 5 and created["MaximumBatchingWindowInSeconds"] == 2, f"batching: {created}")
    check(created.get("ScalingConfig") == {"MaximumConcurrency": 2}, f"ScalingConfig: {created}")
    state["batch_uuid"] = batch_uuid

    # (e) ReportBatchItemFailures, over a quorum queue that dead-letters what keeps failing;
    # created by the function's ARN, its messages published right after.
    step("a mapping reporting batch item failures, over a quorum queue with a delivery limit")
    created = lam.create_event_source_mapping(
        EventSourceArn=QUEUE_ARN + PARTIAL_Q, FunctionName=FN_ARN + PARTIAL, BatchSize=5,
        MaximumBatchingWindowInSeconds=2, FunctionResponseTypes=["ReportBatchItemFailures"], Enabled=True,
    )
    partial_uuid = created["UUID"]
    check(partial_uuid and created["State"] == "Creating", f"created: {created}")
    check(created["FunctionArn"] == FN_ARN + PARTIAL, f"FunctionArn: {created}")
    check(created.get("FunctionResponseTypes") == ["ReportBatchItemFailures"], f"FunctionResponseTypes: {created}")
    state["partial_uuid"] = partial_uuid
    for body in PARTIAL_BODIES:
        broker.publish(PARTIAL_Q, body)

    listed = lam.list_event_source_mappings(EventSourceArn=QUEUE_ARN + BATCH_Q)["EventSourceMappings"]
    check([m["UUID"] for m in listed] == [batch_uuid], f"list by queue: {listed}")
    wait_for("the batch mapping enabled", lambda: mapping_state(lam, batch_uuid) == "Enabled", 120)

    wait_for(f"all {len(BATCH_BODIES)} messages handled",
             lambda: set(BATCH_BODIES) <= set(bodies_in(endpoint, BATCH)), 180)
    batches = sqs_batches(endpoint, BATCH)
    check(all(1 <= len(b) <= 5 for b in batches), f"batches of 1 to 5 records: {[len(b) for b in batches]}")
    for batch in batches:
        for record in batch:
            check_sqs_record(record, BATCH_Q)
    counts = bodies_in(endpoint, BATCH)
    check(all(counts[b] == 1 for b in BATCH_BODIES), f"each message handled exactly once: {dict(counts)}")
    check(set(counts) == set(BATCH_BODIES), f"only the queue's messages: {dict(counts)}")
    step(f"{len(BATCH_BODIES)} messages in {len(batches)} batches of {[len(b) for b in batches]}")

    step("the batch mapping disabled: every message was acked")
    upd = lam.update_event_source_mapping(UUID=batch_uuid, Enabled=False)
    check(upd["State"] in ("Disabling", "Disabled"), f"update Enabled=False: {upd['State']}")
    wait_for("the batch mapping disabled", lambda: mapping_state(lam, batch_uuid) == "Disabled", 120)
    check(broker.count(BATCH_Q) == 0, f"{broker.count(BATCH_Q)} messages left in the queue (not acked)")

    # (e) The failing message was delivered again, then dead-lettered; the others once each.
    dlx = []

    def dead_lettered():
        dlx.extend(broker.drain(PARTIAL_DLX))
        counts = bodies_in(endpoint, PARTIAL)
        return dlx and counts["fail"] >= 2 and all(counts[b] for b in PARTIAL_BODIES)

    wait_for("the failing message in the dead-letter queue", dead_lettered, 180)
    check(all(body == b"fail" for _, body in dlx), f"only the failing message was dead-lettered: {dlx}")
    counts = bodies_in(endpoint, PARTIAL)
    check(all(counts[b] == 1 for b in PARTIAL_BODIES if b != "fail"), f"the others handled once: {dict(counts)}")
    for batch in sqs_batches(endpoint, PARTIAL):
        for record in batch:
            check_sqs_record(record, PARTIAL_Q)
    step(f"the failing message was delivered {counts['fail']} times, then dead-lettered")


# --- after the agent's SIGKILL -----------------------------------------------------------------


def after_restart(endpoint, lam, broker, state):
    batch_uuid, partial_uuid = state["batch_uuid"], state["partial_uuid"]

    step("the mappings after the agent's SIGKILL")
    for name, uuid in ((BATCH, batch_uuid), (PARTIAL, partial_uuid)):
        listed = lam.list_event_source_mappings(FunctionName=name)["EventSourceMappings"]
        check([m["UUID"] for m in listed] == [uuid], f"{name}'s mappings after the restart: {listed}")
    got = lam.get_event_source_mapping(UUID=batch_uuid)
    check(got["State"] == "Disabled" and got["BatchSize"] == 5, f"the batch mapping after the restart: {got}")
    wait_for("the partial mapping enabled", lambda: mapping_state(lam, partial_uuid) == "Enabled", 120)

    step("the batch mapping enabled again with BatchSize 2: 3 new messages")
    upd = lam.update_event_source_mapping(UUID=batch_uuid, Enabled=True, BatchSize=2)
    check(upd["BatchSize"] == 2, f"update BatchSize: {upd}")
    wait_for("the batch mapping enabled", lambda: mapping_state(lam, batch_uuid) == "Enabled", 120)
    for body in RESTART_BODIES:
        broker.publish(BATCH_Q, body)
    wait_for("the 3 new messages handled", lambda: set(RESTART_BODIES) <= set(bodies_in(endpoint, BATCH)), 180)
    counts = bodies_in(endpoint, BATCH)
    check(all(counts[b] == 1 for b in BATCH_BODIES + RESTART_BODIES),
          f"each message handled exactly once, none of the earlier ones again: {dict(counts)}")
    new = [b for b in sqs_batches(endpoint, BATCH) if any(r["body"] in RESTART_BODIES for r in b)]
    check(all(len(b) <= 2 for b in new), f"batches of at most 2 after the update: {[len(b) for b in new]}")
    for batch in new:
        for record in batch:
            check_sqs_record(record, BATCH_Q)

    step("deleting the mappings, functions and queues")
    for uuid in (batch_uuid, partial_uuid):
        deleted = lam.delete_event_source_mapping(UUID=uuid)
        check(deleted["State"] == "Deleting", f"delete: {deleted['State']}")
    for uuid in (batch_uuid, partial_uuid):
        wait_for(f"mapping {uuid} gone", lambda: mapping_gone(lam, uuid), 120)
    for name in (BATCH, PARTIAL):
        listed = lam.list_event_source_mappings(FunctionName=name)["EventSourceMappings"]
        check(listed == [], f"{name}'s mappings after their deletion: {listed}")
    for name in (DEST, BURST, BATCH, PARTIAL):
        lam.delete_function(FunctionName=name)
    for queue in ALL_QUEUES:
        broker.ch.queue_delete(queue)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("endpoint")
    p.add_argument("rust_zip")
    p.add_argument("amqp_url")
    p.add_argument("--phase", required=True, help="one of " + ", ".join(PHASES) + "; - reads them from stdin")
    p.add_argument("state_file")
    a = p.parse_args()
    with open(a.rust_zip, "rb") as f:
        zip_bytes = f.read()

    def phase(name):
        check(name in PHASES, f"no phase {name!r}")
        # A client and a broker connection per phase: the agent and the broker restart between them.
        lam = lambda_client(a.endpoint)
        state = {}
        if name != "destinations" and os.path.exists(a.state_file):
            with open(a.state_file) as f:
                state = json.load(f)
        broker = Broker(a.amqp_url)
        try:
            if name == "destinations":
                destinations(a.endpoint, lam, broker, zip_bytes)
            elif name == "burst":
                burst(lam, broker, zip_bytes, state)
            elif name == "after-broker-restart":
                after_broker_restart(broker, state)
            elif name == "mappings":
                mappings(a.endpoint, lam, broker, zip_bytes, state)
            else:
                after_restart(a.endpoint, lam, broker, state)
        finally:
            broker.close()
        with open(a.state_file, "w") as f:
            json.dump(state, f)

    return run_phases("queues", a.phase, phase)


if __name__ == "__main__":
    sys.exit(main())
