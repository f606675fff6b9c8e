"""What Ember's boto3 scripts share (tests/api/test_*.py): a counted check, phases run one by
one or several in one process, a boto3 Lambda client for a local endpoint, zips and their
CodeSha256, the check of an expected error, and the events a test function logged."""

import base64
import contextlib
import hashlib
import io
import json
import os
import subprocess
import sys
import time
import traceback
import urllib.request
import zipfile

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

ROLE = "arn:aws:iam::000000000000:role/ember"
_checks = 0


def check(cond, what):
    """Counts a check; fails the run with `what` if `cond` is false."""
    global _checks
    _checks += 1
    if not cond:
        raise AssertionError(what)


def checks():
    """How many checks have passed."""
    return _checks


def run_phases(name, phase, run_phase):
    """Runs `run_phase(phase)`; with `phase` "-", runs it for each phase named on a line of
    stdin, in order, and answers each on stdout with `phase <name>: ok` or `phase <name>:
    failed`, so that a test driving several phases pays for one Python start (with boto3, some
    12 s in the emulated KVM host) instead of one per phase. Returns the exit status: 1 once a
    phase failed."""
    phases = (line.strip() for line in sys.stdin if line.strip()) if phase == "-" else [phase]
    for p in phases:
        before = checks()
        try:
            run_phase(p)
            print(f"{name} ({p}): {checks() - before} checks passed", flush=True)
        except Exception as e:  # noqa: BLE001 - any failure fails the phase, with its story
            if not isinstance(e, AssertionError):
                traceback.print_exc()
            print(f"{name} ({p}): FAILED: {e}", file=sys.stderr, flush=True)
            if phase == "-":
                print(f"phase {p}: failed", flush=True)
            return 1
        if phase == "-":
            print(f"phase {p}: ok", flush=True)
    return 0


def lambda_client(endpoint):
    """boto3's Lambda client for `endpoint`: dummy credentials, region us-east-1, no retries,
    boto3's own parameter validation off so that the agent's is what is tested."""
    return boto3.client(
        "lambda",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="AKIDEMBERTEST",
        aws_secret_access_key="ember-test-secret",
        config=Config(
            retries={"total_max_attempts": 1, "mode": "standard"},
            read_timeout=600,
            connect_timeout=10,
            parameter_validation=False,
        ),
    )


def sha256_b64(data):
    """Lambda's CodeSha256 of a zip."""
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def with_extra_file(zip_bytes, name, content):
    """The zip with one more file: new code with a new CodeSha256."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(zip_bytes)) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info, src.read(info.filename))
        dst.writestr(name, content)
    return out.getvalue()


def expect_error(code, status, fn, **kwargs):
    """Calls fn(**kwargs), which must fail with error `code` and HTTP `status`, with a message
    and a request id; returns the ClientError."""
    try:
        fn(**kwargs)
    except ClientError as e:
        got = e.response["Error"]["Code"]
        check(got == code, f"{fn.__name__}: expected {code}, got {got}: {e}")
        got_status = e.response["ResponseMetadata"]["HTTPStatusCode"]
        check(got_status == status, f"{fn.__name__}: expected HTTP {status} for {code}, got {got_status}")
        check(e.response["Error"].get("Message"), f"{fn.__name__}: {code} has no message")
        check(e.response["ResponseMetadata"].get("RequestId"), f"{fn.__name__}: {code} has no request id")
        return e
    raise AssertionError(f"{fn.__name__}({kwargs.get('FunctionName')}): expected {code}, but it succeeded")


def message(e):
    """A ClientError's message."""
    return e.response["Error"].get("Message", "")


def log_of(endpoint, name):
    """The end (4 MB) of a function's log, from the agent (Ember's own log operation)."""
    with urllib.request.urlopen(f"{endpoint}/2015-03-31/functions/{name}/logs?bytes=4000000") as r:
        return r.read().decode(errors="replace")


def events_in(endpoint, name):
    """(request id, event) for every `event <request id> <JSON>` line in the function's log (the
    Rust test function's with LOG_EVENTS set)."""
    out = []
    for line in log_of(endpoint, name).splitlines():
        if line.startswith("event "):
            _, rid, body = line.split(" ", 2)
            try:
                out.append((rid, json.loads(body)))
            except json.JSONDecodeError as e:
                raise AssertionError(f"{name}'s log has a broken event line ({e}): {line[:3000]!r}") from None
    return out


def wait_for(what, fn, timeout_s, every_s=0.5):
    """fn()'s first truthy value, polled every `every_s` for at most `timeout_s`."""
    deadline = time.time() + timeout_s
    while True:
        got = fn()
        if got:
            return got
        if time.time() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(every_s)


@contextlib.contextmanager
def aws_lambda_cli(aws, endpoint):
    """Yields `cli(*args)`, which runs `aws --endpoint-url ENDPOINT --output json lambda ARGS`
    with the unmodified aws CLI (`aws` in its own virtualenv), checks it succeeded and returns
    its JSON answer. The commands run one after another in one process of the CLI's Python
    (aws_cli_session.py): a process each would cost ~15 s of imports in the emulated host."""
    env = dict(os.environ, AWS_ACCESS_KEY_ID="AKIDEMBERTEST", AWS_SECRET_ACCESS_KEY="ember-test-secret",
               AWS_DEFAULT_REGION="us-east-1", AWS_RETRY_MODE="standard", AWS_MAX_ATTEMPTS="1")
    here = os.path.dirname(os.path.abspath(__file__))
    session = subprocess.Popen([os.path.join(os.path.dirname(aws), "python"), os.path.join(here, "aws_cli_session.py")],
                               env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def cli(*args):
        session.stdin.write(json.dumps(["--endpoint-url", endpoint, "--output", "json", "lambda", *args]) + "\n")
        session.stdin.flush()
        line = session.stdout.readline()
        check(line, f"aws lambda {' '.join(args)}: the aws CLI's process ended")
        out = json.loads(line)
        check(out["rc"] == 0, f"aws lambda {' '.join(args)}: exit status {out['rc']}: {out['stderr']}")
        return json.loads(out["stdout"]) if out["stdout"].strip() else {}

    with session:
        yield cli
