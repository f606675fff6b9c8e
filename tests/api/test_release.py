#!/usr/bin/env python3
"""Lambda's release workflow on Ember through unmodified boto3 (and one flow through the aws CLI).

    python3 tests/api/test_release.py ENDPOINT PYTHON_ZIP RUST_ZIP --phase setup|after-restart|-
                                      [--aws PATH] [--no-invoke]

ENDPOINT is the agent's loopback TCP endpoint. PYTHON_ZIP and RUST_ZIP are the test functions of
scripts/build-test-functions.sh (handler.py: context_info, layer_info, snap_info...; a Rust
`bootstrap` that echoes its event and sleeps `sleep_ms`).

`setup` builds and checks everything: versions (their own code, environment and version), a
weighted alias, layers (a module and a shell tool from /opt, the later layer's file winning, the
limits), reserved concurrency (a throttle with Lambda's reason while another function answers,
the account's unreserved count), SnapStart on a published version (Pending, then Active; its cold
starts restore while $LATEST boots; a failed init makes the version Failed), provisioned
concurrency on an alias, tags, members this host does not implement (refused, nothing stored),
and with --aws one release flow through the aws CLI. It leaves its functions in place.

`after-restart`, run against an agent restarted on the same data dir (after SIGKILL), checks that
the versions, aliases, layers, tags and reservations are all there and invoke, then deletes
everything. --no-invoke skips what needs a microVM. Exits 0 when all checks pass.

With `--phase -` the phases are read from stdin, one per line, and each is answered with a
`phase NAME: ok` (or `failed`) line: one Python start for all of them (see lambda_checks).
"""

import argparse
import base64
import io
import json
import os
import sys
import tempfile
import threading
import time
import zipfile

from botocore.exceptions import ClientError

from lambda_checks import (ROLE, aws_lambda_cli, check, expect_error, lambda_client, message, run_phases, sha256_b64,
                           with_extra_file)

PY, LAYERED, RS, SNAP, SNAP_FAIL, PC, CLI = (
    "rel-py", "rel-layers", "rel-rs", "rel-snap", "rel-snapfail", "rel-pc", "rel-cli",
)
LAYERS = ("rel-layer-a", "rel-layer-b")


def step(what):
    print(f"release: {what}", flush=True)


def make_zip(files, level=6):
    """A zip of {name: (content, mode)}, deflated at `level`."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        for name, (content, mode) in files.items():
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.create_system = 3
            info.external_attr = (0o100000 | mode) << 16
            z.writestr(info, content, compresslevel=level)
    return out.getvalue()


def invoke(lam, name, event=None, **kwargs):
    r = lam.invoke(FunctionName=name, Payload=json.dumps(event or {}).encode(), **kwargs)
    body = r["Payload"].read()
    check(r["StatusCode"] == 200 and "FunctionError" not in r, f"invoke {name}: {r.get('FunctionError')} {body[:300]!r}")
    return r, json.loads(body)


def log_of(r):
    return base64.b64decode(r.get("LogResult", "")).decode("utf-8", "replace")


def wait_state(lam, name, qualifier, want, timeout=300):
    deadline = time.monotonic() + timeout
    while True:
        c = lam.get_function_configuration(FunctionName=name, Qualifier=qualifier)
        if c["State"] != "Pending":
            check(c["State"] == want, f"{name}:{qualifier} became {c['State']} ({c.get('StateReason')}), not {want}")
            return c
        check(time.monotonic() < deadline, f"{name}:{qualifier} still Pending after {timeout} s")
        time.sleep(0.5)


def wait_provisioned(lam, name, qualifier, timeout=300):
    deadline = time.monotonic() + timeout
    while True:
        p = lam.get_provisioned_concurrency_config(FunctionName=name, Qualifier=qualifier)
        if p["Status"] != "IN_PROGRESS":
            check(p["Status"] == "READY", f"provisioned concurrency of {name}:{qualifier}: {p}")
            return p
        check(time.monotonic() < deadline, f"provisioned concurrency of {name}:{qualifier} not ready")
        time.sleep(0.5)


def create(lam, name, runtime, handler, zip_bytes, **kwargs):
    return lam.create_function(
        FunctionName=name, Runtime=runtime, Role=ROLE, Handler=handler, Code={"ZipFile": zip_bytes}, Timeout=30, **kwargs
    )


# ------------------------------------------------------------------------------------------------
# setup
# ------------------------------------------------------------------------------------------------


def versions_and_aliases(lam, python_zip, run):
    step("versions: publish 1, change code and environment, publish 2")
    c = create(lam, PY, "python3.11", "handler.context_info", python_zip,
               Environment={"Variables": {"MY_VAR": "one"}}, Publish=True, Tags={"team": "release"})
    check(c["Version"] == "1" and c["FunctionArn"].endswith(f":{PY}:1"), f"create with Publish: {c['Version']} {c['FunctionArn']}")
    zip2 = with_extra_file(python_zip, "marker.txt", "two")
    u = lam.update_function_code(FunctionName=PY, ZipFile=zip2)
    u = lam.update_function_configuration(FunctionName=PY, Environment={"Variables": {"MY_VAR": "two"}})
    e = expect_error("InvalidParameterValueException", 400, lam.publish_version, FunctionName=PY, CodeSha256=sha256_b64(python_zip))
    check("CodeSHA256" in message(e), message(e))
    expect_error("PreconditionFailedException", 412, lam.publish_version, FunctionName=PY, RevisionId="stale")
    v2 = lam.publish_version(FunctionName=PY, CodeSha256=sha256_b64(zip2), RevisionId=u["RevisionId"], Description="second")
    check(v2["Version"] == "2" and v2["Description"] == "second", f"publish 2: {v2['Version']} {v2['Description']}")
    again = lam.publish_version(FunctionName=PY)
    check(again["Version"] == "2", f"publishing an unchanged $LATEST returns the last version, not {again['Version']}")
    lam.update_function_configuration(FunctionName=PY, Environment={"Variables": {"MY_VAR": "latest"}})
    versions = [v["Version"] for v in lam.list_versions_by_function(FunctionName=PY)["Versions"]]
    check(versions == ["$LATEST", "1", "2"], f"ListVersionsByFunction: {versions}")
    for q, zip_bytes in (("1", python_zip), ("2", zip2), ("$LATEST", zip2)):
        got = lam.get_function(FunctionName=PY, Qualifier=q)["Configuration"]["CodeSha256"]
        check(got == sha256_b64(zip_bytes), f"GetFunction {q}: CodeSha256 {got}")
    check(lam.get_function(FunctionName=PY)["Tags"] == {"team": "release"}, "GetFunction shows the tags")

    if run:
        step("versions: each runs its own code, environment and version")
        for q, var, marker in (("1", "one", None), ("2", "two", "two"), (None, "latest", "two")):
            kwargs = {"Qualifier": q} if q else {}
            r, ctx = invoke(lam, PY, **kwargs)
            want = q or "$LATEST"
            check(r["ExecutedVersion"] == want, f"{want}: ExecutedVersion {r['ExecutedVersion']}")
            check(ctx["env"]["MY_VAR"] == var, f"{want}: MY_VAR {ctx['env']['MY_VAR']}")
            check(ctx["env"]["AWS_LAMBDA_FUNCTION_VERSION"] == want, f"{want}: {ctx['env']['AWS_LAMBDA_FUNCTION_VERSION']}")
            check(ctx["marker"] == marker, f"{want}: code marker {ctx['marker']!r}")
            arn = ctx["invoked_function_arn"]
            check(arn.endswith(f":function:{PY}:{q}") if q else arn.endswith(f":function:{PY}"), f"{want}: invoked by {arn}")

    step("aliases: live on 1 with 30% to 2")
    a = lam.create_alias(FunctionName=PY, Name="live", FunctionVersion="1", Description="canary",
                         RoutingConfig={"AdditionalVersionWeights": {"2": 0.3}})
    check(a["AliasArn"].endswith(f":function:{PY}:live"), f"AliasArn {a['AliasArn']}")
    check(a["RoutingConfig"]["AdditionalVersionWeights"] == {"2": 0.3}, f"RoutingConfig {a.get('RoutingConfig')}")
    expect_error("ResourceConflictException", 409, lam.create_alias, FunctionName=PY, Name="live", FunctionVersion="1")
    e = expect_error("ResourceConflictException", 409, lam.delete_function, FunctionName=PY, Qualifier="2")
    check("live" in message(e), f"the refusal names the alias: {message(e)}")
    e = expect_error("InvalidParameterValueException", 400, lam.delete_function, FunctionName=PY, Qualifier="$LATEST")
    if run:
        # 40 invokes (each ~0.5 s of boto3 in the emulated host): version 2 runs 12 times on
        # average; fewer than 3 or more than 23 is a chance of about 2 in 10,000. The weights'
        # arithmetic is unit-tested (agent::invoke).
        counts = {"1": 0, "2": 0}
        for _ in range(40):
            r, ctx = invoke(lam, f"{PY}:live")
            counts[r["ExecutedVersion"]] += 1
            check(ctx["invoked_function_arn"].endswith(f":{PY}:live"), f"invoked by {ctx['invoked_function_arn']}")
        check(3 <= counts["2"] <= 23, f"version 2 ran {counts['2']} of 40 times through a 30% alias")
        step(f"aliases: {counts} of 40 invokes through live")
    revision = lam.get_alias(FunctionName=PY, Name="live")["RevisionId"]
    expect_error("PreconditionFailedException", 412, lam.update_alias, FunctionName=PY, Name="live",
                 FunctionVersion="2", RevisionId="stale")
    u = lam.update_alias(FunctionName=PY, Name="live", FunctionVersion="2",
                         RoutingConfig={"AdditionalVersionWeights": {}}, RevisionId=revision)
    check(u["FunctionVersion"] == "2" and not u.get("RoutingConfig", {}).get("AdditionalVersionWeights"), f"UpdateAlias: {u}")
    listed = [x["Name"] for x in lam.list_aliases(FunctionName=PY, FunctionVersion="2")["Aliases"]]
    check(listed == ["live"], f"ListAliases FunctionVersion=2: {listed}")
    check(lam.list_aliases(FunctionName=PY, FunctionVersion="1")["Aliases"] == [], "no alias routes to 1 now")
    if run:
        arn = lam.get_function_configuration(FunctionName=PY)["FunctionArn"] + ":live"
        for _ in range(10):
            r, _ = invoke(lam, arn)
            check(r["ExecutedVersion"] == "2", f"after UpdateAlias, {r['ExecutedVersion']} ran")


def layers(lam, python_zip, run):
    step("layers: publish two, a function using both")
    a = make_zip({"python/mylib.py": ("VALUE = 'a'\n", 0o644), "bin/tool": ("#!/bin/sh\necho tool-a\n", 0o755)})
    b = make_zip({"python/mylib.py": ("VALUE = 'b'\n", 0o644)})
    la = lam.publish_layer_version(LayerName=LAYERS[0], Content={"ZipFile": a}, CompatibleRuntimes=["python3.11"],
                                   Description="mylib and tool", LicenseInfo="MIT")
    lb = lam.publish_layer_version(LayerName=LAYERS[1], Content={"ZipFile": b}, CompatibleRuntimes=["python3.11"])
    check(la["Version"] == 1 and la["Content"]["CodeSha256"] == sha256_b64(a), f"PublishLayerVersion: {la}")
    check(lam.get_layer_version_by_arn(Arn=lb["LayerVersionArn"])["Content"]["CodeSize"] == len(b), "GetLayerVersionByArn")
    check(lam.get_layer_version(LayerName=LAYERS[0], VersionNumber=1)["LicenseInfo"] == "MIT", "GetLayerVersion")
    names = [x["LayerName"] for x in lam.list_layers(CompatibleRuntime="python3.11")["Layers"]]
    check(set(LAYERS) <= set(names), f"ListLayers: {names}")
    check([x["Version"] for x in lam.list_layer_versions(LayerName=LAYERS[1])["LayerVersions"]] == [1], "ListLayerVersions")
    c = create(lam, LAYERED, "python3.11", "handler.layer_info", python_zip,
               Layers=[la["LayerVersionArn"], lb["LayerVersionArn"]])
    check([x["Arn"] for x in c["Layers"]] == [la["LayerVersionArn"], lb["LayerVersionArn"]], f"Layers {c['Layers']}")
    if run:
        _, got = invoke(lam, LAYERED)
        check(got["mylib"] == "b", f"the second layer's mylib wins: {got}")
        check(got["tool"] == "tool-a" and got["tool_status"] == 0, f"the first layer's tool runs from PATH: {got}")

    step("layers: six, and more than 250 MB with the code, are refused; nothing is stored")
    tiny = make_zip({"x.txt": ("x", 0o644)})
    six = [lam.publish_layer_version(LayerName=f"rel-tiny-{i}", Content={"ZipFile": tiny})["LayerVersionArn"] for i in range(6)]
    e = expect_error("InvalidParameterValueException", 400, create, lam=lam, name="rel-six", runtime="python3.11",
                     handler="handler.echo", zip_bytes=python_zip, Layers=six)
    check("5" in message(e), message(e))
    # Deflated fast: at the default level, 130 MB take ~10 s in the emulated host.
    big = make_zip({"big.bin": (b"\0" * (130 << 20), 0o644)}, level=1)
    big_layers = [lam.publish_layer_version(LayerName=f"rel-big-{i}", Content={"ZipFile": big})["LayerVersionArn"]
                  for i in range(2)]
    e = expect_error("InvalidParameterValueException", 400, create, lam=lam, name="rel-big", runtime="python3.11",
                     handler="handler.echo", zip_bytes=python_zip, Layers=big_layers)
    check("262144000" in message(e), message(e))
    for name in ("rel-six", "rel-big"):
        expect_error("ResourceNotFoundException", 404, lam.get_function, FunctionName=name)
    for arn in six + big_layers:
        name, version = arn.split(":")[-2:]
        lam.delete_layer_version(LayerName=name, VersionNumber=int(version))
    step("layers: deleting a layer version leaves its functions working")
    lam.delete_layer_version(LayerName=LAYERS[0], VersionNumber=1)
    expect_error("ResourceNotFoundException", 404, lam.get_layer_version, LayerName=LAYERS[0], VersionNumber=1)
    check(lam.get_function(FunctionName=LAYERED)["Configuration"]["Layers"][0]["Arn"] == la["LayerVersionArn"],
          "the function still lists its layer")


def throttle_reason(e):
    return e.response.get("Reason") or e.response["Error"].get("Reason") or json.loads(e.response.get("body", "{}") or "{}").get("Reason")


def reserved_concurrency(lam, rust_zip, run):
    step("reserved concurrency: 1 on a function that sleeps 2 s")
    create(lam, RS, "provided.al2023", "bootstrap", rust_zip)
    before = lam.get_account_settings()
    check(before["AccountLimit"]["ConcurrentExecutions"] >= 2, f"account: {before['AccountLimit']}")
    r = lam.put_function_concurrency(FunctionName=RS, ReservedConcurrentExecutions=1)
    check(r["ReservedConcurrentExecutions"] == 1, f"PutFunctionConcurrency: {r}")
    after = lam.get_account_settings()
    fell = before["AccountLimit"]["UnreservedConcurrentExecutions"] - after["AccountLimit"]["UnreservedConcurrentExecutions"]
    check(fell == 1, f"the unreserved count fell by {fell}, not by the reservation")
    check(lam.get_function_concurrency(FunctionName=RS)["ReservedConcurrentExecutions"] == 1, "GetFunctionConcurrency")
    check(lam.get_function(FunctionName=RS)["Concurrency"] == {"ReservedConcurrentExecutions": 1}, "GetFunction Concurrency")
    too_many = after["AccountLimit"]["ConcurrentExecutions"]
    e = expect_error("InvalidParameterValueException", 400, lam.put_function_concurrency, FunctionName=RS,
                     ReservedConcurrentExecutions=too_many)
    check("UnreservedConcurrentExecution" in message(e), message(e))
    if not run:
        return
    invoke(lam, RS, {"warm": True})
    results = {}

    def call(i):
        try:
            r = lam.invoke(FunctionName=RS, Payload=json.dumps({"sleep_ms": 2000}).encode())
            results[i] = ("ok", r["StatusCode"])
        except ClientError as err:
            results[i] = (err.response["Error"]["Code"], throttle_reason(err))

    threads = [threading.Thread(target=call, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
        time.sleep(0.2)
    # Meanwhile another function answers.
    r, _ = invoke(lam, f"{PY}:live")
    for t in threads:
        t.join()
    outcomes = sorted(results.values(), key=str)
    check(outcomes[0] == ("TooManyRequestsException", "ReservedFunctionConcurrentInvocationLimitExceeded")
          and outcomes[1] == ("ok", 200), f"two at once with a reservation of 1: {outcomes}")
    lam.put_function_concurrency(FunctionName=RS, ReservedConcurrentExecutions=0)
    e = expect_error("TooManyRequestsException", 429, lam.invoke, FunctionName=RS, Payload=b"{}")
    check(throttle_reason(e) == "ReservedFunctionConcurrentInvocationLimitExceeded", f"reason {throttle_reason(e)}")
    lam.put_function_concurrency(FunctionName=RS, ReservedConcurrentExecutions=1)
    invoke(lam, RS, {"after": "throttle"})


def snap_start(lam, python_zip, rust_zip, run):
    step("SnapStart on a published version: Pending, then Active, restores; $LATEST boots")
    c = create(lam, SNAP, "provided.al2023", "bootstrap", rust_zip, SnapStart={"ApplyOn": "PublishedVersions"})
    check(c["SnapStart"] == {"ApplyOn": "PublishedVersions", "OptimizationStatus": "Off"}, f"$LATEST {c['SnapStart']}")
    v = lam.publish_version(FunctionName=SNAP)
    check(v["State"] == "Pending" and v["Version"] == "1", f"PublishVersion answers {v['State']} {v['Version']}")
    if not run:
        return
    expect_error("SnapStartNotReadyException", 409, lam.invoke, FunctionName=SNAP, Qualifier="1", Payload=b"{}")
    v = wait_state(lam, SNAP, "1", "Active")
    check(v["SnapStart"] == {"ApplyOn": "PublishedVersions", "OptimizationStatus": "On"}, f"version 1: {v['SnapStart']}")
    r, got = invoke(lam, SNAP, {"restored": 1}, Qualifier="1", LogType="Tail")
    check(got == {"restored": 1}, f"echo {got}")
    check("Restore Duration" in log_of(r) and "Init Duration" not in log_of(r), f"a cold start of 1 restores: {log_of(r)}")
    r, _ = invoke(lam, SNAP, {}, LogType="Tail")
    check("Init Duration" in log_of(r) and "Restore Duration" not in log_of(r), f"$LATEST boots: {log_of(r)}")

    step("SnapStart: a version whose init fails is Failed, with the reason")
    create(lam, SNAP_FAIL, "python3.11", "no_such_module.handler", python_zip, SnapStart={"ApplyOn": "PublishedVersions"})
    v = lam.publish_version(FunctionName=SNAP_FAIL)
    check(v["State"] == "Pending", f"PublishVersion answers {v['State']}")
    v = wait_state(lam, SNAP_FAIL, "1", "Failed")
    check(v.get("StateReasonCode") == "FunctionError.RuntimeInitError", f"StateReasonCode {v.get('StateReasonCode')}")
    check("no_such_module" in v.get("StateReason", ""), f"StateReason {v.get('StateReason')}")
    expect_error("ResourceConflictException", 409, lam.invoke, FunctionName=SNAP_FAIL, Qualifier="1", Payload=b"{}")


def provisioned_alias(lam, rust_zip, run):
    step("provisioned concurrency on an alias")
    create(lam, PC, "provided.al2023", "bootstrap", rust_zip, Publish=True)
    lam.create_alias(FunctionName=PC, Name="warm", FunctionVersion="1")
    e = expect_error("InvalidParameterValueException", 400, lam.put_provisioned_concurrency_config, FunctionName=PC,
                     Qualifier="$LATEST", ProvisionedConcurrentExecutions=1)
    p = lam.put_provisioned_concurrency_config(FunctionName=PC, Qualifier="warm", ProvisionedConcurrentExecutions=1)
    check(p["RequestedProvisionedConcurrentExecutions"] == 1, f"Put: {p}")
    listed = lam.list_provisioned_concurrency_configs(FunctionName=PC)["ProvisionedConcurrencyConfigs"]
    check([x["FunctionArn"].rsplit(":", 1)[-1] for x in listed] == ["warm"], f"List: {listed}")
    if run:
        wait_provisioned(lam, PC, "warm")
        for _ in range(3):
            r, _ = invoke(lam, PC, {"n": 1}, Qualifier="warm", LogType="Tail")
            check("Init Duration" not in log_of(r) and "Restore Duration" not in log_of(r), f"not provisioned: {log_of(r)}")


def tags(lam):
    step("tags: TagResource, UntagResource, ListTags")
    arn = lam.get_function_configuration(FunctionName=PY)["FunctionArn"]
    lam.tag_resource(Resource=arn, Tags={"env": "prod", "owner": "me"})
    lam.untag_resource(Resource=arn, TagKeys=["owner"])
    got = lam.list_tags(Resource=arn)["Tags"]
    check(got == {"team": "release", "env": "prod"}, f"ListTags: {got}")
    expect_error("InvalidParameterValueException", 400, lam.tag_resource, Resource=arn + ":1", Tags={"a": "b"})
    expect_error("InvalidParameterValueException", 400, lam.tag_resource, Resource=arn, Tags={"aws:x": "b"})


def unsupported(lam, python_zip):
    step("members this host does not implement are refused, and nothing is stored")
    base = dict(FunctionName="rel-unsupported", Runtime="python3.11", Role=ROLE, Handler="handler.echo",
                Code={"ZipFile": python_zip})
    for member, value in (
        ("ImageConfig", {"Command": ["main"]}),
        ("KMSKeyArn", "arn:aws:kms:us-east-1:000000000000:key/k"),
        ("VpcConfig", {"SubnetIds": ["subnet-1"], "SecurityGroupIds": ["sg-1"]}),
        ("TracingConfig", {"Mode": "Active"}),
        ("FileSystemConfigs", [{"Arn": "arn:aws:elasticfilesystem:us-east-1:000000000000:access-point/fsap-0123456789abcdef0", "LocalMountPath": "/mnt/x"}]),
    ):
        e = expect_error("InvalidParameterValueException", 400, lam.create_function, **base, **{member: value})
        check(message(e).startswith(member), f"{member}: {message(e)}")
    # A dead-letter queue needs the message broker, which this agent was started without.
    e = expect_error("InvalidParameterValueException", 400, lam.create_function, **base,
                     DeadLetterConfig={"TargetArn": "arn:aws:sqs:us-east-1:000000000000:dlq"})
    check("message broker" in message(e), f"DeadLetterConfig without a broker: {message(e)}")
    expect_error("ResourceNotFoundException", 404, lam.get_function, FunctionName="rel-unsupported")
    # Their harmless defaults are accepted.
    lam.create_function(**base, TracingConfig={"Mode": "PassThrough"}, VpcConfig={"SubnetIds": [], "SecurityGroupIds": []})
    lam.delete_function(FunctionName="rel-unsupported")
    before = lam.get_function_configuration(FunctionName=PY)["RevisionId"]
    e = expect_error("InvalidParameterValueException", 400, lam.update_function_configuration, FunctionName=PY,
                     KMSKeyArn="arn:aws:kms:us-east-1:000000000000:key/k")
    check(lam.get_function_configuration(FunctionName=PY)["RevisionId"] == before, "a refused update changes nothing")


def aws_cli(aws, endpoint, rust_zip, run):
    step("the aws CLI: create, publish, alias, invoke by alias, list")
    with aws_lambda_cli(aws, endpoint) as cli, tempfile.TemporaryDirectory() as tmp:
        zip_path = os.path.join(tmp, "rust.zip")
        with open(zip_path, "wb") as f:
            f.write(rust_zip)
        c = cli("create-function", "--function-name", CLI, "--runtime", "provided.al2023", "--handler", "bootstrap",
                "--role", ROLE, "--zip-file", f"fileb://{zip_path}", "--timeout", "30")
        check(c["FunctionName"] == CLI, f"create-function: {c}")
        v = cli("publish-version", "--function-name", CLI, "--description", "cli")
        check(v["Version"] == "1", f"publish-version: {v['Version']}")
        a = cli("create-alias", "--function-name", CLI, "--name", "prod", "--function-version", "1")
        check(a["FunctionVersion"] == "1", f"create-alias: {a}")
        versions = [x["Version"] for x in cli("list-versions-by-function", "--function-name", CLI)["Versions"]]
        check(versions == ["$LATEST", "1"], f"list-versions-by-function: {versions}")
        aliases = [x["Name"] for x in cli("list-aliases", "--function-name", CLI)["Aliases"]]
        check(aliases == ["prod"], f"list-aliases: {aliases}")
        if run:
            out = os.path.join(tmp, "out.json")
            # Version 1 of the aws CLI passes --payload as is (v2 would want --cli-binary-format).
            r = cli("invoke", "--function-name", CLI, "--qualifier", "prod", "--payload", '{"via": "aws cli"}', out)
            check(r["ExecutedVersion"] == "1" and r["StatusCode"] == 200, f"invoke: {r}")
            with open(out) as f:
                check(json.load(f) == {"via": "aws cli"}, "the aws CLI got the function's answer")
        cli("delete-function", "--function-name", CLI)


# ------------------------------------------------------------------------------------------------
# after-restart
# ------------------------------------------------------------------------------------------------


def after_restart(lam, run):
    step("after SIGKILL and a restart: versions, aliases, layers, tags, reservations are there")
    versions = [v["Version"] for v in lam.list_versions_by_function(FunctionName=PY)["Versions"]]
    check(versions == ["$LATEST", "1", "2"], f"versions {versions}")
    check(lam.get_alias(FunctionName=PY, Name="live")["FunctionVersion"] == "2", "the alias")
    arn = lam.get_function_configuration(FunctionName=PY)["FunctionArn"]
    check(lam.list_tags(Resource=arn)["Tags"] == {"team": "release", "env": "prod"}, "the tags")
    check(lam.get_function_concurrency(FunctionName=RS).get("ReservedConcurrentExecutions") == 1, "the reservation")
    check([x["LayerName"] for x in lam.list_layers()["Layers"]] == [LAYERS[1]], "the layers (a's version was deleted)")
    if run:
        check(lam.get_function_configuration(FunctionName=SNAP, Qualifier="1")["State"] == "Active", "SnapStart version")
        r, ctx = invoke(lam, f"{PY}:live")
        check(r["ExecutedVersion"] == "2" and ctx["env"]["MY_VAR"] == "two", f"the alias runs 2: {ctx['env']}")
        _, got = invoke(lam, LAYERED)
        check(got["mylib"] == "b" and got["tool"] == "tool-a", f"the layers, one of them deleted: {got}")
        r, _ = invoke(lam, SNAP, {}, Qualifier="1", LogType="Tail")
        check("Restore Duration" in log_of(r), f"the snapshot survived: {log_of(r)}")
        wait_provisioned(lam, PC, "warm")
        r, _ = invoke(lam, PC, {}, Qualifier="warm", LogType="Tail")
        check("Init Duration" not in log_of(r) and "Restore Duration" not in log_of(r), f"provisioned again: {log_of(r)}")
    step("cleaning up")
    for name in (PY, LAYERED, RS, SNAP, PC) + ((SNAP_FAIL,) if run else ()):
        lam.delete_function(FunctionName=name)
        expect_error("ResourceNotFoundException", 404, lam.get_function, FunctionName=name)
    lam.delete_layer_version(LayerName=LAYERS[1], VersionNumber=1)
    check(lam.get_account_settings()["AccountUsage"]["FunctionCount"] == 0, "no function is left")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("endpoint")
    parser.add_argument("python_zip")
    parser.add_argument("rust_zip")
    parser.add_argument("--phase", required=True, help="setup or after-restart; - reads them from stdin")
    parser.add_argument("--aws", help="the aws CLI to run one release flow with")
    parser.add_argument("--no-invoke", action="store_true", help="skip what needs a microVM")
    args = parser.parse_args()
    python_zip = open(args.python_zip, "rb").read()
    rust_zip = open(args.rust_zip, "rb").read()
    run = not args.no_invoke

    def phase(name):
        # A client per phase: the agent restarts between them.
        lam = lambda_client(args.endpoint)
        if name == "setup":
            versions_and_aliases(lam, python_zip, run)
            layers(lam, python_zip, run)
            reserved_concurrency(lam, rust_zip, run)
            snap_start(lam, python_zip, rust_zip, run)
            provisioned_alias(lam, rust_zip, run)
            tags(lam)
            unsupported(lam, python_zip)
            if args.aws:
                aws_cli(args.aws, args.endpoint, rust_zip, run)
        elif name == "after-restart":
            after_restart(lam, run)
        else:
            check(False, f"no phase {name!r}")

    return run_phases("release", args.phase, phase)


if __name__ == "__main__":
    sys.exit(main())
