#!/usr/bin/env python3
"""Ember's Lambda API through boto3, the way real clients use it.

    python3 tests/api/test_boto3.py ENDPOINT PYTHON_ZIP RUST_ZIP [--no-invoke]

ENDPOINT is the agent's loopback TCP endpoint (`ember serve --listen 127.0.0.1:PORT`), e.g.
http://127.0.0.1:9000. The zips are the test functions of scripts/build-test-functions.sh:
PYTHON_ZIP has handler.py (echo, context_info, fail, sleep; python3.11), RUST_ZIP a static
`bootstrap` (provided.al2023) that echoes its event and fails with "boom" on {"fail": true}.

Every call goes through boto3 (dummy credentials, region us-east-1, no retries, boto3's own
parameter validation off so that the agent's is what is tested); every answer is checked for
shape and values, and every error for its type and status. --no-invoke skips what needs a
microVM (for a host without KVM). Needs only the standard library and boto3. Exits 0 when all
checks pass, 1 at the first that fails.
"""

import argparse
import base64
import json
import re
import sys
import time
import uuid
from datetime import datetime

from botocore.exceptions import ClientError

from lambda_checks import ROLE, check, checks, expect_error, lambda_client, message, sha256_b64, with_extra_file

ARN_RE = r"^arn:aws:lambda:[a-z0-9-]+:000000000000:function:{}$"


def step(what):
    print(f"boto3: {what}", flush=True)


def message_of_error(code, status, fn, **kwargs):
    """The message of the error `fn(**kwargs)` must fail with."""
    return message(expect_error(code, status, fn, **kwargs))


def check_config(c, name, runtime, handler, code, memory=128, timeout=3, env=None, ephemeral=512):
    """A FunctionConfiguration as Lambda returns it, with these values."""
    check(c["FunctionName"] == name, f"FunctionName {c['FunctionName']!r} != {name!r}")
    check(re.match(ARN_RE.format(re.escape(name)), c["FunctionArn"]), f"FunctionArn {c['FunctionArn']!r}")
    check(c["Runtime"] == runtime, f"Runtime {c['Runtime']!r}")
    check(c.get("Handler", "") == handler, f"Handler {c.get('Handler')!r} != {handler!r}")
    check(c["Role"] == ROLE, f"Role {c['Role']!r}")
    check(c["MemorySize"] == memory, f"MemorySize {c['MemorySize']} != {memory}")
    check(c["Timeout"] == timeout, f"Timeout {c['Timeout']} != {timeout}")
    check(c["EphemeralStorage"]["Size"] == ephemeral, f"EphemeralStorage {c['EphemeralStorage']}")
    check(c["CodeSha256"] == sha256_b64(code), f"CodeSha256 {c['CodeSha256']} != {sha256_b64(code)}")
    check(c["CodeSize"] == len(code), f"CodeSize {c['CodeSize']} != {len(code)}")
    check(c["Version"] == "$LATEST", f"Version {c['Version']!r}")
    check(c["State"] == "Active", f"State {c['State']!r}")
    check(c["LastUpdateStatus"] == "Successful", f"LastUpdateStatus {c['LastUpdateStatus']!r}")
    check(c["PackageType"] == "Zip", f"PackageType {c['PackageType']!r}")
    check(c["Architectures"] == ["x86_64"], f"Architectures {c['Architectures']!r}")
    check(c["TracingConfig"] == {"Mode": "PassThrough"}, f"TracingConfig {c['TracingConfig']!r}")
    check(re.match(r"^[0-9a-f-]{36}$", c["RevisionId"]), f"RevisionId {c['RevisionId']!r}")
    modified = datetime.strptime(c["LastModified"], "%Y-%m-%dT%H:%M:%S.%f%z")
    check(abs(time.time() - modified.timestamp()) < 3600, f"LastModified {c['LastModified']} is not recent")
    check(c.get("Environment", {}).get("Variables", {}) == (env or {}), f"Environment {c.get('Environment')!r}")


def invoke(lam, name, event, **kwargs):
    """Invokes synchronously; returns (response, parsed payload)."""
    r = lam.invoke(FunctionName=name, Payload=json.dumps(event).encode(), **kwargs)
    check(r["StatusCode"] == 200, f"invoke {name}: StatusCode {r['StatusCode']}")
    check(r["ExecutedVersion"] == "$LATEST", f"invoke {name}: ExecutedVersion {r.get('ExecutedVersion')!r}")
    body = r["Payload"].read()
    try:
        payload = json.loads(body)
    except ValueError:
        raise AssertionError(f"invoke {name}: the payload is not JSON: {body[:200]!r}")
    return r, payload


def test_python(lam, name, zip_bytes, run_invokes):
    step(f"create_function {name} (python3.11)")
    r = lam.create_function(
        FunctionName=name,
        Runtime="python3.11",
        Role=ROLE,
        Handler="handler.echo",
        Code={"ZipFile": zip_bytes},
        Description="boto3 test",
        Timeout=10,
        Environment={"Variables": {"MY_VAR": "hello"}},
    )
    check(r["ResponseMetadata"]["HTTPStatusCode"] == 201, "CreateFunction answers 201")
    check(r["ResponseMetadata"].get("RequestId"), "CreateFunction has a request id")
    check_config(r, name, "python3.11", "handler.echo", zip_bytes, timeout=10, env={"MY_VAR": "hello"})
    check(r["Description"] == "boto3 test", f"Description {r['Description']!r}")
    revision = r["RevisionId"]

    step("create_function with the same name: ResourceConflictException")
    msg = message_of_error(
        "ResourceConflictException",
        409,
        lam.create_function,
        FunctionName=name,
        Runtime="python3.11",
        Role=ROLE,
        Handler="handler.echo",
        Code={"ZipFile": zip_bytes},
    )
    check(name in msg, f"conflict message names the function: {msg}")

    step("get_function and get_function_configuration, by name and by ARN")
    g = lam.get_function(FunctionName=name)
    check_config(g["Configuration"], name, "python3.11", "handler.echo", zip_bytes, timeout=10, env={"MY_VAR": "hello"})
    check(g["Code"]["RepositoryType"] == "S3", f"Code {g['Code']!r}")
    check(isinstance(g["Code"]["Location"], str) and g["Code"]["Location"], "Code.Location")
    arn = g["Configuration"]["FunctionArn"]
    gc = lam.get_function_configuration(FunctionName=arn)
    check(gc["RevisionId"] == revision, "the ARN finds the same function")
    gq = lam.get_function_configuration(FunctionName=name, Qualifier="$LATEST")
    check(gq["FunctionArn"] == arn, "Qualifier=$LATEST finds it")

    if run_invokes:
        step("invoke echo with LogType=Tail")
        event = {"hello": "world", "n": [1, 2, 3], "nested": {"unicode": "h\u00e9llo"}}
        r, payload = invoke(lam, name, event, LogType="Tail")
        check(payload == event, f"echo returned {payload!r}")
        check("FunctionError" not in r, f"echo: FunctionError {r.get('FunctionError')!r}")
        log = base64.b64decode(r["LogResult"]).decode("utf-8", "replace")
        for line in ("START RequestId:", "END RequestId:", "REPORT RequestId:"):
            check(line in log, f"the log tail has {line!r}: {log!r}")
        check(len(base64.b64decode(r["LogResult"])) <= 4096, "the log tail is at most 4 KB")

        step("invoke without a payload, Event and DryRun")
        r = lam.invoke(FunctionName=name)
        check(r["StatusCode"] == 200 and json.loads(r["Payload"].read()) == {}, "no payload is {}")
        r = lam.invoke(FunctionName=name, InvocationType="Event", Payload=b'{"async": true}')
        check(r["StatusCode"] == 202, f"Event: StatusCode {r['StatusCode']}")
        r = lam.invoke(FunctionName=name, InvocationType="DryRun")
        check(r["StatusCode"] == 204, f"DryRun: StatusCode {r['StatusCode']}")

    step("update_function_configuration: handler, memory, environment")
    u = lam.update_function_configuration(
        FunctionName=name,
        Handler="handler.context_info",
        MemorySize=256,
        Environment={"Variables": {"MY_VAR": "changed"}},
        RevisionId=revision,
    )
    check_config(u, name, "python3.11", "handler.context_info", zip_bytes, memory=256, timeout=10, env={"MY_VAR": "changed"})
    check(u["RevisionId"] != revision, "the RevisionId changes")
    check(u["Description"] == "boto3 test", "the description is kept")
    step("update_function_configuration with a stale RevisionId: PreconditionFailedException")
    expect_error("PreconditionFailedException", 412, lam.update_function_configuration, FunctionName=name, Timeout=5, RevisionId=revision)
    g = lam.get_function_configuration(FunctionName=name)
    check(g["RevisionId"] == u["RevisionId"] and g["MemorySize"] == 256, "the update is stored")

    if run_invokes:
        step("invoke context_info: the new configuration reaches the function")
        r, ctx = invoke(lam, name, {})
        check(ctx["function_name"] == name, f"context.function_name {ctx['function_name']!r}")
        check(int(ctx["memory_limit_in_mb"]) == 256, f"context.memory_limit_in_mb {ctx['memory_limit_in_mb']!r}")
        check(ctx["invoked_function_arn"] == arn, f"context.invoked_function_arn {ctx['invoked_function_arn']!r}")
        check(0 < ctx["remaining_ms"] <= 10_000, f"context remaining_ms {ctx['remaining_ms']}")
        env = ctx["env"]
        check(env["MY_VAR"] == "changed", f"MY_VAR {env['MY_VAR']!r}")
        check(env["AWS_LAMBDA_FUNCTION_NAME"] == name, f"AWS_LAMBDA_FUNCTION_NAME {env['AWS_LAMBDA_FUNCTION_NAME']!r}")
        check(env["AWS_LAMBDA_FUNCTION_MEMORY_SIZE"] == "256", f"memory env {env['AWS_LAMBDA_FUNCTION_MEMORY_SIZE']!r}")
        check(env["AWS_LAMBDA_FUNCTION_VERSION"] == "$LATEST", "AWS_LAMBDA_FUNCTION_VERSION")
        check(env["_HANDLER"] == "handler.context_info", f"_HANDLER {env['_HANDLER']!r}")
        check(env["LAMBDA_TASK_ROOT"] == "/var/task", f"LAMBDA_TASK_ROOT {env['LAMBDA_TASK_ROOT']!r}")

        step("invoke fail: FunctionError Unhandled")
        lam.update_function_configuration(FunctionName=name, Handler="handler.fail")
        r, err = invoke(lam, name, {})
        check(r.get("FunctionError") == "Unhandled", f"FunctionError {r.get('FunctionError')!r}")
        check(err.get("errorType") == "ValueError" and err.get("errorMessage") == "boom", f"error payload {err!r}")

        step("invoke sleep past the timeout: Task timed out")
        lam.update_function_configuration(FunctionName=name, Handler="handler.sleep", Timeout=1)
        # The new configuration boots a new instance first: warm it, so that what is timed
        # below is the invocation and not the cold start (which the timeout does not count).
        invoke(lam, name, {"ms": 1})
        started = time.monotonic()
        r, err = invoke(lam, name, {"ms": 5000})
        check(r.get("FunctionError") == "Unhandled", f"timeout: FunctionError {r.get('FunctionError')!r}")
        check("Task timed out after 1.00 seconds" in err.get("errorMessage", ""), f"timeout payload {err!r}")
        check(time.monotonic() - started < 5, "the timeout cut the invocation short")
        # The timed-out instance was destroyed: the next invoke runs on a new one, whose first
        # event can take longer than a second in the emulated KVM host.
        lam.update_function_configuration(FunctionName=name, Timeout=30)
        r, slept = invoke(lam, name, {"ms": 10})
        check(slept == 10 and "FunctionError" not in r, f"after a timeout the function runs again: {slept!r}")

    step("update_function_code: new code, new CodeSha256")
    lam.update_function_configuration(FunctionName=name, Handler="handler.echo", Timeout=10)
    new_zip = with_extra_file(zip_bytes, "extra.txt", f"changed {uuid.uuid4()}\n")
    before = lam.get_function_configuration(FunctionName=name)
    c = lam.update_function_code(FunctionName=name, ZipFile=new_zip)
    check_config(c, name, "python3.11", "handler.echo", new_zip, memory=256, timeout=10, env={"MY_VAR": "changed"})
    check(c["RevisionId"] != before["RevisionId"], "the RevisionId changes with the code")
    check(lam.get_function(FunctionName=name)["Configuration"]["CodeSha256"] == sha256_b64(new_zip), "the code is stored")
    d = lam.update_function_code(FunctionName=name, ZipFile=zip_bytes, DryRun=True)
    check(d["CodeSha256"] == sha256_b64(zip_bytes), "DryRun answers the would-be code")
    check(lam.get_function_configuration(FunctionName=name)["CodeSha256"] == sha256_b64(new_zip), "DryRun stores nothing")
    if run_invokes:
        r, payload = invoke(lam, name, {"after": "update"})
        check(payload == {"after": "update"}, f"echo after the code update: {payload!r}")
    return arn


def test_rust(lam, name, zip_bytes, run_invokes):
    step(f"create_function {name} (provided.al2023)")
    r = lam.create_function(
        FunctionName=name,
        Runtime="provided.al2023",
        Role=ROLE,
        Handler="bootstrap",
        Code={"ZipFile": zip_bytes},
        MemorySize=128,
        EphemeralStorage={"Size": 1024},
    )
    check_config(r, name, "provided.al2023", "bootstrap", zip_bytes, ephemeral=1024)
    created = r
    if run_invokes:
        step("invoke the rust function")
        event = {"hello": "rust", "list": list(range(10))}
        r, payload = invoke(lam, name, event, LogType="Tail")
        check(payload == event, f"rust echo returned {payload!r}")
        check("REPORT RequestId:" in base64.b64decode(r["LogResult"]).decode("utf-8", "replace"), "rust log tail")
        r, err = invoke(lam, name, {"fail": True})
        check(r.get("FunctionError") == "Unhandled", f"rust fail: FunctionError {r.get('FunctionError')!r}")
        check(err.get("errorMessage") == "boom", f"rust error payload {err!r}")
    step("update_function_code with the same zip: same CodeSha256, new RevisionId")
    c = lam.update_function_code(FunctionName=name, ZipFile=zip_bytes)
    check(c["CodeSha256"] == created["CodeSha256"] == sha256_b64(zip_bytes), "CodeSha256 unchanged")
    check(c["RevisionId"] != created["RevisionId"], "the RevisionId changes")


def test_list(lam, names):
    step("list_functions, whole and one per page")
    found = [f["FunctionName"] for f in lam.list_functions()["Functions"]]
    for n in names:
        check(n in found, f"list_functions has {n}: {found}")
    check(found == sorted(found), f"list_functions is in name order: {found}")
    paged = []
    for page in lam.get_paginator("list_functions").paginate(PaginationConfig={"PageSize": 1}):
        check(len(page["Functions"]) <= 1, f"a page of 1 has {len(page['Functions'])}")
        for f in page["Functions"]:
            check_keys = {"FunctionName", "FunctionArn", "Runtime", "CodeSha256", "RevisionId", "MemorySize"}
            check(check_keys <= f.keys(), f"listed configuration has {check_keys}: {sorted(f)}")
            paged.append(f["FunctionName"])
    check(paged == found, f"paging gives the same list: {paged} != {found}")


def test_errors(lam, python_zip, existing, run_invokes):
    missing = f"boto3-missing-{uuid.uuid4().hex[:8]}"
    step("unknown functions: ResourceNotFoundException")
    msg = message_of_error("ResourceNotFoundException", 404, lam.get_function, FunctionName=missing)
    check(re.match(r"^Function not found: arn:aws:lambda:[a-z0-9-]+:000000000000:function:" + missing + "$", msg), msg)
    expect_error("ResourceNotFoundException", 404, lam.get_function_configuration, FunctionName=missing)
    expect_error("ResourceNotFoundException", 404, lam.invoke, FunctionName=missing, Payload=b"{}")
    expect_error("ResourceNotFoundException", 404, lam.delete_function, FunctionName=missing)
    expect_error("ResourceNotFoundException", 404, lam.update_function_code, FunctionName=missing, ZipFile=python_zip)
    expect_error("ResourceNotFoundException", 404, lam.update_function_configuration, FunctionName=missing, Timeout=5)
    expect_error("ResourceNotFoundException", 404, lam.get_function, FunctionName=existing, Qualifier="1")

    step("invalid parameters: InvalidParameterValueException")
    base = dict(FunctionName=missing, Runtime="python3.11", Role=ROLE, Handler="handler.echo", Code={"ZipFile": python_zip})
    for change, needle in [
        ({"MemorySize": 64}, "128"),
        ({"MemorySize": 10241}, "10240"),
        ({"Timeout": 0}, "timeout"),
        ({"Timeout": 901}, "900"),
        ({"EphemeralStorage": {"Size": 511}}, "ephemeralStorage"),
        ({"Runtime": "nodejs22.x"}, "runtime parameter of nodejs22.x"),
        ({"Runtime": "nodejs20.x", "SnapStart": {"ApplyOn": "PublishedVersions"}}, "nodejs20.x is not supported for SnapStart"),
        ({"Runtime": "provided.al2023"}, "bootstrap"),
        ({"Environment": {"Variables": {"AWS_REGION": "x"}}}, "reserved keys"),
        ({"Environment": {"Variables": {"BIG": "x" * 5000}}}, "4KB"),
        ({"Code": {"ZipFile": b"this is not a zip"}}, "Could not unzip"),
        ({"FunctionName": "bad name!"}, "functionName"),
    ]:
        msg = message_of_error("InvalidParameterValueException", 400, lam.create_function, **{**base, **change})
        check(needle in msg, f"{change}: message {msg!r} lacks {needle!r}")
    expect_error("InvalidParameterValueException", 400, lam.update_function_configuration, FunctionName=existing, MemorySize=64)
    expect_error("ResourceNotFoundException", 404, lam.get_function, FunctionName=missing)  # none of those created it

    step("SnapStart and provisioned concurrency: shapes and errors")
    expect_error("InvalidParameterValueException", 400, lam.update_function_configuration, FunctionName=existing, SnapStart={"ApplyOn": "Always"})
    c = lam.update_function_configuration(FunctionName=existing, SnapStart={"ApplyOn": "PublishedVersions"})
    # SnapStart applies to published versions: $LATEST shows it off.
    check(c["SnapStart"] == {"ApplyOn": "PublishedVersions", "OptimizationStatus": "Off"}, f"SnapStart: {c.get('SnapStart')}")
    c = lam.update_function_configuration(FunctionName=existing, SnapStart={"ApplyOn": "None"})
    check(c["SnapStart"] == {"ApplyOn": "None", "OptimizationStatus": "Off"}, f"SnapStart: {c.get('SnapStart')}")
    expect_error("ProvisionedConcurrencyConfigNotFoundException", 404, lam.get_provisioned_concurrency_config, FunctionName=existing, Qualifier="$LATEST")
    expect_error("ProvisionedConcurrencyConfigNotFoundException", 404, lam.delete_provisioned_concurrency_config, FunctionName=existing, Qualifier="$LATEST")
    msg = message_of_error("InvalidParameterValueException", 400, lam.put_provisioned_concurrency_config, FunctionName=existing, Qualifier="$LATEST", ProvisionedConcurrentExecutions=1)
    check("unpublished" in msg, f"provisioned concurrency on $LATEST: {msg}")
    expect_error("ResourceNotFoundException", 404, lam.put_provisioned_concurrency_config, FunctionName=missing, Qualifier="$LATEST", ProvisionedConcurrentExecutions=1)
    expect_error("ResourceNotFoundException", 404, lam.put_provisioned_concurrency_config, FunctionName=existing, Qualifier="1", ProvisionedConcurrentExecutions=1)

    step("a 7 MB payload: RequestTooLargeException")
    big = json.dumps({"data": "x" * (7 * 1024 * 1024)}).encode()
    expect_error("RequestTooLargeException", 413, lam.invoke, FunctionName=existing, Payload=big)
    if run_invokes:
        step("a payload that is not JSON: InvalidRequestContentException")
        expect_error("InvalidRequestContentException", 400, lam.invoke, FunctionName=existing, Payload=b"{not json")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("endpoint", help="the agent's endpoint, e.g. http://127.0.0.1:9000")
    parser.add_argument("python_zip", help="the python3.11 test function (handler.py)")
    parser.add_argument("rust_zip", help="the provided.al2023 test function (bootstrap)")
    parser.add_argument("--no-invoke", action="store_true", help="skip the checks that need a microVM")
    args = parser.parse_args()
    python_zip = open(args.python_zip, "rb").read()
    rust_zip = open(args.rust_zip, "rb").read()
    run_invokes = not args.no_invoke

    lam = lambda_client(args.endpoint)
    suffix = uuid.uuid4().hex[:8]
    py, rs = f"boto3-py-{suffix}", f"boto3-rs-{suffix}"
    try:
        test_python(lam, py, python_zip, run_invokes)
        test_rust(lam, rs, rust_zip, run_invokes)
        test_list(lam, [py, rs])
        test_errors(lam, python_zip, py, run_invokes)

        step("delete_function")
        for name in (py, rs):
            r = lam.delete_function(FunctionName=name)
            check(r["ResponseMetadata"]["HTTPStatusCode"] == 204, "DeleteFunction answers 204")
            expect_error("ResourceNotFoundException", 404, lam.get_function, FunctionName=name)
        names = [f["FunctionName"] for f in lam.list_functions()["Functions"]]
        check(py not in names and rs not in names, "deleted functions are not listed")
    except Exception:
        for name in (py, rs):
            try:
                lam.delete_function(FunctionName=name)
            except ClientError:
                pass
        raise
    print(f"boto3: all {checks()} checks passed{' (invocations skipped)' if not run_invokes else ''}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except AssertionError as e:
        print(f"boto3: FAILED: {e}", file=sys.stderr)
        sys.exit(1)
