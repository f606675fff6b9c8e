#!/usr/bin/env python3
"""Schedules on Ember through boto3's unmodified `scheduler` client, on the agent's endpoint.

    python3 tests/api/test_schedules.py ENDPOINT RUST_ZIP

RUST_ZIP is the Rust test function of scripts/build-test-functions.sh; with LOG_EVENTS set it
prints `event <request id> <event JSON>` for every event, which is how these checks count runs.

Checks: the API's shapes and errors (a bad expression, an unknown schedule, a conflict, a group
other than default, a non-Lambda target); a `rate(1 minute)` schedule invokes its function about
once a minute with its `Input`; a disabled one never does; an `at()` schedule a few seconds
ahead fires once and, with `ActionAfterCompletion` `DELETE`, is gone afterwards.
"""

import datetime
import json
import sys
import time
import urllib.request
from zoneinfo import ZoneInfo

import boto3
from botocore.config import Config

from lambda_checks import ROLE, check, checks, expect_error, lambda_client

FN = "sched-fn"
ARN = "arn:aws:lambda:us-east-1:000000000000:function:" + FN


def step(what):
    print(f"schedules: {what}", flush=True)


def scheduler_client(endpoint):
    return boto3.client(
        "scheduler", endpoint_url=endpoint, region_name="us-east-1",
        aws_access_key_id="AKIDEMBERTEST", aws_secret_access_key="ember-test-secret",
        config=Config(retries={"total_max_attempts": 1, "mode": "standard"}, parameter_validation=False),
    )


def runs_with(endpoint, tag):
    """The times (the log's order) the function received an event with this tag."""
    with urllib.request.urlopen(f"{endpoint}/2015-03-31/functions/{FN}/logs?bytes=1000000") as r:
        log = r.read().decode(errors="replace")
    out = []
    for line in log.splitlines():
        if line.startswith("event "):
            event = json.loads(line.split(" ", 2)[2])
            if event.get("tag") == tag:
                out.append(event)
    return out


def target(tag):
    return {"Arn": ARN, "RoleArn": ROLE, "Input": json.dumps({"tag": tag})}


def main():
    endpoint, rust_zip = sys.argv[1], sys.argv[2]
    lam, sch = lambda_client(endpoint), scheduler_client(endpoint)
    with open(rust_zip, "rb") as f:
        lam.create_function(FunctionName=FN, Runtime="provided.al2023", Role=ROLE, Handler="bootstrap",
                            Code={"ZipFile": f.read()}, Timeout=30, Environment={"Variables": {"LOG_EVENTS": "1"}})
    off = {"Mode": "OFF"}

    step("the API")
    expect_error("ValidationException", 400, sch.create_schedule, Name="bad", ScheduleExpression="rate(5 seconds)",
                 Target=target("bad"), FlexibleTimeWindow=off)
    expect_error("ValidationException", 400, sch.create_schedule, Name="bad", ScheduleExpression="rate(1 minute)",
                 Target={"Arn": "arn:aws:sqs:us-east-1:000000000000:q", "RoleArn": ROLE}, FlexibleTimeWindow=off)
    expect_error("ResourceNotFoundException", 404, sch.get_schedule, Name="nope")
    expect_error("ResourceNotFoundException", 404, sch.create_schedule, Name="other-group", GroupName="mine",
                 ScheduleExpression="rate(1 minute)", Target=target("x"), FlexibleTimeWindow=off)
    created = sch.create_schedule(Name="every-minute", ScheduleExpression="rate(1 minute)", Target=target("rate"),
                                  FlexibleTimeWindow=off, Description="once a minute")
    started = time.time()
    check(created["ScheduleArn"].endswith(":schedule/default/every-minute"), f"created: {created}")
    expect_error("ConflictException", 409, sch.create_schedule, Name="every-minute",
                 ScheduleExpression="rate(1 minute)", Target=target("rate"), FlexibleTimeWindow=off)
    sch.create_schedule(Name="disabled", ScheduleExpression="rate(1 minute)", Target=target("disabled"),
                        FlexibleTimeWindow=off, State="DISABLED")
    got = sch.get_schedule(Name="every-minute")
    check(got["ScheduleExpression"] == "rate(1 minute)" and got["State"] == "ENABLED", f"get: {got}")
    check(got["Target"]["Arn"] == ARN and json.loads(got["Target"]["Input"]) == {"tag": "rate"}, f"target: {got}")
    check(got["GroupName"] == "default" and got["Description"] == "once a minute", f"get: {got}")
    check(isinstance(got["CreationDate"], datetime.datetime), f"CreationDate: {got['CreationDate']!r}")
    listed = sch.list_schedules()["Schedules"]
    check(sorted(s["Name"] for s in listed) == ["disabled", "every-minute"], f"list: {listed}")
    listed = sch.list_schedules(State="DISABLED")["Schedules"]
    check([s["Name"] for s in listed] == ["disabled"], f"list DISABLED: {listed}")

    # A one-time schedule a few seconds ahead, deleted after it ran.
    at = (datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=8)).strftime("%Y-%m-%dT%H:%M:%S")
    sch.create_schedule(Name="once", ScheduleExpression=f"at({at})", Target=target("once"), FlexibleTimeWindow=off,
                        ActionAfterCompletion="DELETE")
    # The same in another zone, on New York's clock face.
    ny = datetime.datetime.now(ZoneInfo("America/New_York")) + datetime.timedelta(seconds=8)
    sch.create_schedule(Name="once-ny", ScheduleExpression=f"at({ny.strftime('%Y-%m-%dT%H:%M:%S')})",
                        ScheduleExpressionTimezone="America/New_York", Target=target("once-ny"),
                        FlexibleTimeWindow=off, ActionAfterCompletion="DELETE")

    step("waiting for the runs")
    deadline = started + 200
    while time.time() < deadline and len(runs_with(endpoint, "rate")) < 2:
        time.sleep(2)
    elapsed = time.time() - started
    rate_runs = runs_with(endpoint, "rate")
    check(len(rate_runs) >= 2, f"rate(1 minute): {len(rate_runs)} runs in {elapsed:.0f} s")
    check(elapsed >= 110, f"two runs of rate(1 minute) took only {elapsed:.0f} s")
    check(all(r == {"tag": "rate"} for r in rate_runs), f"each run's event is the Input: {rate_runs}")
    check(runs_with(endpoint, "disabled") == [], "a disabled schedule never runs")
    check(len(runs_with(endpoint, "once")) == 1, f"at(): {runs_with(endpoint, 'once')}")
    check(len(runs_with(endpoint, "once-ny")) == 1, f"at() in New York: {runs_with(endpoint, 'once-ny')}")
    expect_error("ResourceNotFoundException", 404, sch.get_schedule, Name="once")

    # Disabling stops the runs; deleting removes the schedule.
    sch.update_schedule(Name="every-minute", ScheduleExpression="rate(1 minute)", Target=target("rate"),
                        FlexibleTimeWindow=off, State="DISABLED")
    check(sch.get_schedule(Name="every-minute")["State"] == "DISABLED", "updated")
    for name in ("every-minute", "disabled"):
        sch.delete_schedule(Name=name)
    check(sch.list_schedules()["Schedules"] == [], "all deleted")
    lam.delete_function(FunctionName=FN)
    print(f"schedules: {checks()} checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
