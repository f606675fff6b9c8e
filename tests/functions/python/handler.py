"""Handlers for Ember's integration tests, run by the python3.11 runtime as `handler.<name>`.

Zipped to target/guest/functions/python.zip by scripts/build-test-functions.sh.
"""

import os
import time
import uuid

from snapshot_restore_py import register_after_restore

ENV_KEYS = (
    "AWS_LAMBDA_FUNCTION_NAME",
    "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
    "AWS_LAMBDA_FUNCTION_VERSION",
    "LAMBDA_TASK_ROOT",
    "AWS_REGION",
    "_HANDLER",
    "AWS_LAMBDA_RUNTIME_API",
    "AWS_LAMBDA_LOG_GROUP_NAME",
    "AWS_LAMBDA_LOG_STREAM_NAME",
    "AWS_LAMBDA_INITIALIZATION_TYPE",
    "TZ",
    "MY_VAR",
)


def echo(event, context):
    """Returns the event unchanged."""
    return event


def context_info(event, context):
    """Returns what the runtime was told about this invocation and function, and the content of
    /var/task/marker.txt (None without one), which tells one version's code from another's."""
    marker = os.path.join(os.environ.get("LAMBDA_TASK_ROOT", "/var/task"), "marker.txt")
    return {
        "marker": open(marker).read() if os.path.exists(marker) else None,
        "aws_request_id": context.aws_request_id,
        "function_name": context.function_name,
        "memory_limit_in_mb": context.memory_limit_in_mb,
        "remaining_ms": context.get_remaining_time_in_millis(),
        "invoked_function_arn": context.invoked_function_arn,
        "env": {key: os.environ.get(key) for key in ENV_KEYS},
    }


def image_info(event, context):
    """Where a container image's handler runs: its working directory, its whole environment,
    and which of the event's "paths" exist."""
    return {
        "cwd": os.getcwd(),
        "env": dict(os.environ),
        "exists": {path: os.path.exists(path) for path in event.get("paths", [])},
        "aws_request_id": context.aws_request_id,
    }


def layer_info(event, context):
    """What the function's layers give it: `mylib.VALUE` (a module under /opt/python) and the
    output of `tool` found on PATH (a layer's bin/, run through the shell)."""
    import subprocess

    import mylib

    tool = subprocess.run("tool", shell=True, capture_output=True, text=True)
    return {"mylib": mylib.VALUE, "tool": tool.stdout.strip(), "tool_status": tool.returncode, "stderr": tool.stderr}


def fail(event, context):
    """Fails the invocation: errorType "ValueError", errorMessage "boom"."""
    raise ValueError("boom")


def sleep(event, context):
    """Sleeps event["ms"] milliseconds and returns that number."""
    ms = event["ms"]
    time.sleep(ms / 1000)
    return ms


def big(event, context):
    """Returns a string of event["bytes"] bytes (the JSON response has 2 more: the quotes)."""
    return "x" * event["bytes"]


def print_lines(event, context):
    """Prints event["n"] lines ("line 0" ... "line n-1") to stdout and returns n."""
    n = event["n"]
    for i in range(n):
        print(f"line {i}")
    return n


def dispatch(event, context):
    """Runs the handler named by event["action"], so that one function (one instance) serves
    every case of a test: {"action": "sleep", "ms": 10} runs sleep."""
    return globals()[event["action"]](event, context)


# SnapStart: set once by the init, so that a restored instance shows what its snapshot held.
INIT = {"token": os.urandom(8).hex(), "init_pid": os.getpid(), "after_restore": None}


@register_after_restore
def _after_restore():
    """Runs after every restore, before the first event (SnapStart functions only). With
    FAIL_AFTER_RESTORE set it fails, as a broken hook would."""
    if os.environ.get("FAIL_AFTER_RESTORE"):
        raise RuntimeError("after-restore hook failed on purpose")
    INIT["after_restore"] = time.time()


def snap_info(event, context):
    """What a SnapStart test checks: the init's token, whether and when the after-restore hook
    ran, fresh random values, the clock, /tmp; sleeps event.get("ms", 0) ms first."""
    time.sleep(event.get("ms", 0) / 1000)
    tmp = os.statvfs("/tmp")
    with open("/tmp/probe", "w") as f:
        f.write(INIT["token"])
    return {
        "init_token": INIT["token"],
        "init_pid": INIT["init_pid"],
        "pid": os.getpid(),
        "after_restore": INIT["after_restore"],
        "urandom": os.urandom(16).hex(),
        "uuid4": str(uuid.uuid4()),
        "time": time.time(),
        "init_type": os.environ.get("AWS_LAMBDA_INITIALIZATION_TYPE"),
        "tmp_mib": tmp.f_blocks * tmp.f_frsize // (1 << 20),
    }


def runtime_api_abuse(event, context):
    """With `{"abuse": true}`, misuses the Runtime API from inside the invocation, as a hostile
    runtime would: an unknown request id, a path that is not the API's, a header and a body
    past any limit, an init error after init, a second `next` while this invocation runs.
    Returns the status (or the exception's name, when the server closed the connection) of
    each. Any other event is echoed."""
    import http.client

    if not event.get("abuse"):
        return event

    host, port = os.environ["AWS_LAMBDA_RUNTIME_API"].split(":")
    base = "/2018-06-01/runtime"

    def call(method, path, body=b"", headers=None, timeout=10):
        conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            return conn.getresponse().status
        except Exception as e:  # noqa: BLE001 - a closed connection is an answer here
            return type(e).__name__
        finally:
            conn.close()

    return {
        "unknown_id_response": call("POST", f"{base}/invocation/not-a-request/response", b"{}"),
        "unknown_id_error": call("POST", f"{base}/invocation/not-a-request/error", b"{}"),
        "bad_path": call("GET", f"{base}/nope"),
        "huge_header": call("POST", f"{base}/invocation/not-a-request/response", b"{}", {"X-Big": "a" * (1 << 20)}),
        "huge_body": call("POST", f"{base}/invocation/not-a-request/response", b"x" * (7 << 20)),
        "init_error_late": call("POST", f"{base}/init/error", b"{}"),
        "next_during_invoke": call("GET", f"{base}/invocation/next", timeout=2),
    }


def close_runtime_connections(event, context):
    """With `{"close": true}`, closes every socket of the runtime process (its Runtime API
    connection among them) in the middle of the invocation, then returns. Any other event is
    echoed."""
    if not event.get("close"):
        return event
    closed = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}").startswith("socket:"):
                os.close(int(fd))
                closed += 1
        except OSError:
            pass
    return {"closed": closed}
