#!/usr/bin/env python3
"""Asynchronous invocations on Ember through unmodified boto3: retries, destinations, maximum
event age, and events that outlive the agent.

    python3 tests/api/test_events.py ENDPOINT RUST_ZIP --phase setup|burst|after-restart|- IDS_FILE

ENDPOINT is the agent's loopback TCP endpoint, started with `--async-retry-delays-s 1,2`.
RUST_ZIP is the Rust test function of scripts/build-test-functions.sh: it echoes its event,
fails on `{"fail": true}`, sleeps `sleep_ms`, and with LOG_EVENTS set prints
`event <request id> <event JSON>` to its log, which is how these checks see what each attempt
and each destination received (Ember's log tail, GET /2015-03-31/functions/NAME/logs).

`setup`: a function that always fails, MaximumRetryAttempts 1, OnFailure a collector function:
its log shows two attempts with the 202's request id, and the collector receives Lambda's
invocation record with `RetriesExhausted` and `approximateInvokeCount` 2; OnSuccess to the
collector carries the response; a function throttled by reserved concurrency 0 with
MaximumEventAgeInSeconds 60 reaches OnFailure with `EventAgeExceeded`; the event invoke config
API through boto3 (Put, Get, Update, List, Delete and its errors).

`burst`: 100 events accepted for a function with reserved concurrency 2 that sleeps 500 ms on
each; their request ids go to IDS_FILE. The caller SIGKILLs the agent while they run and starts
it again; `after-restart` then waits until every id is in the function's log: none is lost.

With `--phase -` the phases are read from stdin, one per line, and each is answered with a
`phase NAME: ok` (or `failed`) line: one Python start for all of them (see lambda_checks).
"""

import argparse
import json
import sys
import time

from lambda_checks import ROLE, check, events_in, expect_error, lambda_client, run_phases, wait_for

COLLECTOR, FAILING, SUCCEEDING, THROTTLED, BURST = "ev-collector", "ev-failing", "ev-ok", "ev-throttled", "ev-burst"
ARN = "arn:aws:lambda:us-east-1:000000000000:function:"


def step(what):
    print(f"events: {what}", flush=True)


def create(lam, zip_bytes, name, **extra):
    lam.create_function(
        FunctionName=name, Runtime="provided.al2023", Role=ROLE, Handler="bootstrap",
        Code={"ZipFile": zip_bytes}, Timeout=30, Environment={"Variables": {"LOG_EVENTS": "1"}}, **extra,
    )


def record_for(endpoint, request_id):
    """The invocation record the collector received for `request_id`, if any."""
    for _, event in events_in(endpoint, COLLECTOR):
        if event.get("requestContext", {}).get("requestId") == request_id:
            return event
    return None


def setup(endpoint, lam, zip_bytes):
    for name in (COLLECTOR, FAILING, SUCCEEDING, THROTTLED):
        create(lam, zip_bytes, name)

    step("the event invoke config API")
    expect_error("ResourceNotFoundException", 404, lam.get_function_event_invoke_config, FunctionName=FAILING)
    expect_error("ResourceNotFoundException", 404, lam.update_function_event_invoke_config,
                 FunctionName=FAILING, MaximumRetryAttempts=1)
    expect_error("InvalidParameterValueException", 400, lam.put_function_event_invoke_config,
                 FunctionName=FAILING, MaximumRetryAttempts=3)
    expect_error("InvalidParameterValueException", 400, lam.put_function_event_invoke_config,
                 FunctionName=FAILING, MaximumEventAgeInSeconds=30)
    expect_error("InvalidParameterValueException", 400, lam.put_function_event_invoke_config,
                 FunctionName=FAILING, DestinationConfig={"OnFailure": {"Destination": "arn:aws:sns:us-east-1:000000000000:t"}})
    expect_error("ResourceNotFoundException", 404, lam.put_function_event_invoke_config,
                 FunctionName=FAILING, Qualifier="9", MaximumRetryAttempts=0)
    put = lam.put_function_event_invoke_config(
        FunctionName=FAILING, MaximumRetryAttempts=1,
        DestinationConfig={"OnFailure": {"Destination": ARN + COLLECTOR}},
    )
    check(put["FunctionArn"] == ARN + FAILING + ":$LATEST", f"the config's ARN: {put['FunctionArn']}")
    check(put["MaximumRetryAttempts"] == 1, f"MaximumRetryAttempts: {put}")
    check(put["DestinationConfig"]["OnFailure"]["Destination"] == ARN + COLLECTOR, f"OnFailure: {put}")
    check(hasattr(put["LastModified"], "year"), f"LastModified is a timestamp: {put['LastModified']!r}")
    got = lam.get_function_event_invoke_config(FunctionName=FAILING)
    check(got["MaximumRetryAttempts"] == 1 and "MaximumEventAgeInSeconds" not in got, f"get: {got}")
    upd = lam.update_function_event_invoke_config(FunctionName=FAILING, MaximumEventAgeInSeconds=3600)
    check(upd["MaximumRetryAttempts"] == 1 and upd["MaximumEventAgeInSeconds"] == 3600, f"update: {upd}")
    listed = lam.list_function_event_invoke_configs(FunctionName=FAILING)["FunctionEventInvokeConfigs"]
    check([c["FunctionArn"] for c in listed] == [ARN + FAILING + ":$LATEST"], f"list: {listed}")
    lam.put_function_event_invoke_config(
        FunctionName=SUCCEEDING, DestinationConfig={"OnSuccess": {"Destination": ARN + COLLECTOR}},
    )
    lam.put_function_concurrency(FunctionName=THROTTLED, ReservedConcurrentExecutions=0)
    lam.put_function_event_invoke_config(
        FunctionName=THROTTLED, MaximumEventAgeInSeconds=60,
        DestinationConfig={"OnFailure": {"Destination": ARN + COLLECTOR}},
    )
    scratch = "ev-scratch"
    create(lam, zip_bytes, scratch)
    lam.put_function_event_invoke_config(FunctionName=scratch, MaximumRetryAttempts=0)
    lam.delete_function_event_invoke_config(FunctionName=scratch)
    expect_error("ResourceNotFoundException", 404, lam.get_function_event_invoke_config, FunctionName=scratch)
    lam.delete_function(FunctionName=scratch)

    step("three asynchronous invokes: one throttled to its maximum age, one failing, one succeeding")
    started = time.time()
    throttled = lam.invoke(FunctionName=THROTTLED, InvocationType="Event", Payload=json.dumps({"t": "old"}))
    check(throttled["StatusCode"] == 202, f"Event: {throttled['StatusCode']}")
    failing = lam.invoke(FunctionName=FAILING, InvocationType="Event", Payload=json.dumps({"fail": True, "t": "f"}))
    fail_id = failing["ResponseMetadata"]["RequestId"]
    check(failing["StatusCode"] == 202 and fail_id, f"Event: {failing['ResponseMetadata']}")
    ok = lam.invoke(FunctionName=SUCCEEDING, InvocationType="Event", Payload=json.dumps({"t": "ok"}))
    ok_id = ok["ResponseMetadata"]["RequestId"]

    record = wait_for("the failing function's record", lambda: record_for(endpoint, fail_id), 180)

    def attempts():
        return [rid for rid, e in events_in(endpoint, FAILING) if e.get("t") == "f"]

    # The function's output reaches its log as the guest's console delivers it, which may be
    # just after the invocation's answer.
    wait_for("both attempts in the failing function's log", lambda: len(attempts()) >= 2, 60)
    check(attempts() == [fail_id, fail_id], f"two attempts, each with the 202's request id: {attempts()}")
    ctx = record["requestContext"]
    check(ctx["condition"] == "RetriesExhausted", f"condition: {ctx}")
    check(ctx["approximateInvokeCount"] == 2, f"approximateInvokeCount: {ctx}")
    check(ctx["functionArn"] == ARN + FAILING + ":$LATEST", f"functionArn: {ctx}")
    check(record["version"] == "1.0" and record["timestamp"].endswith("Z"), f"record: {record}")
    check(record["requestPayload"] == {"fail": True, "t": "f"}, f"requestPayload: {record}")
    check(record["responseContext"]["functionError"] == "Unhandled", f"responseContext: {record}")
    check(record["responseContext"]["executedVersion"] == "$LATEST", f"responseContext: {record}")
    check(record["responsePayload"]["errorMessage"] == "boom", f"responsePayload: {record}")

    record = wait_for("the succeeding function's record", lambda: record_for(endpoint, ok_id), 120)
    check(record["requestContext"]["condition"] == "Success", f"condition: {record}")
    check(record["requestContext"]["approximateInvokeCount"] == 1, f"count: {record}")
    check(record["responsePayload"] == {"t": "ok"}, f"responsePayload: {record}")
    check("functionError" not in record["responseContext"], f"responseContext: {record}")

    throttled_id = throttled["ResponseMetadata"]["RequestId"]
    record = wait_for("the throttled function's record", lambda: record_for(endpoint, throttled_id), 150)
    waited = time.time() - started
    check(record["requestContext"]["condition"] == "EventAgeExceeded", f"condition: {record}")
    check(record["requestContext"]["approximateInvokeCount"] == 0, f"count: {record}")
    check(59 <= waited, f"it aged out after its 60 s, not after {waited:.0f} s")
    check(events_in(endpoint, THROTTLED) == [], "a function with reserved concurrency 0 never ran")


def burst(lam, zip_bytes, ids_file):
    create(lam, zip_bytes, BURST)
    lam.put_function_concurrency(FunctionName=BURST, ReservedConcurrentExecutions=2)
    ids = []
    for i in range(100):
        r = lam.invoke(FunctionName=BURST, InvocationType="Event", Payload=json.dumps({"n": i, "sleep_ms": 500}))
        check(r["StatusCode"] == 202, f"event {i}: {r['StatusCode']}")
        ids.append(r["ResponseMetadata"]["RequestId"])
    check(len(set(ids)) == 100, "every event has its own request id")
    with open(ids_file, "w") as f:
        json.dump(ids, f)


def after_restart(endpoint, lam, ids_file):
    with open(ids_file) as f:
        ids = json.load(f)

    def all_ran():
        seen = {rid for rid, _ in events_in(endpoint, BURST)}
        return not (set(ids) - seen)

    wait_for("all 100 events after the restart", all_ran, 300)
    ran = [rid for rid, _ in events_in(endpoint, BURST)]
    twice = len(ran) - len(set(ran))
    step(f"100 events: {len(ran)} attempts after the SIGKILL, {twice} ran twice (in flight at the kill)")
    check(twice <= 2, f"only events in flight at the kill (2 at most) may run twice: {twice}")
    for name in (COLLECTOR, FAILING, SUCCEEDING, THROTTLED, BURST):
        lam.delete_function(FunctionName=name)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("endpoint")
    p.add_argument("rust_zip")
    p.add_argument("--phase", required=True, help="setup, burst or after-restart; - reads them from stdin")
    p.add_argument("ids_file")
    a = p.parse_args()
    with open(a.rust_zip, "rb") as f:
        zip_bytes = f.read()

    def phase(name):
        # A client per phase: the agent restarts between them.
        lam = lambda_client(a.endpoint)
        if name == "setup":
            setup(a.endpoint, lam, zip_bytes)
        elif name == "burst":
            burst(lam, zip_bytes, a.ids_file)
        elif name == "after-restart":
            after_restart(a.endpoint, lam, a.ids_file)
        else:
            check(False, f"no phase {name!r}")

    return run_phases("events", a.phase, phase)


if __name__ == "__main__":
    sys.exit(main())
