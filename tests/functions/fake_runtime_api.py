#!/usr/bin/env python3
"""A minimal Lambda Runtime API for smoke-testing a runtime outside a microVM.

Runs CMD (with the Lambda environment and AWS_LAMBDA_RUNTIME_API pointing here), hands it
each --event in turn through `GET /2018-06-01/runtime/invocation/next`, collects what it
posts to `.../response` or `.../error`, checks each result against the matching --expect,
then kills CMD. Exits 0 when every invocation got its expected result, 1 otherwise.

    fake_runtime_api.py --event '{"a":1}' --expect '{"response":{"a":1}}' \
        --event '{"fail":true}' --expect '{"error":{"errorMessage":"boom"}}' -- ./bootstrap

An expectation is {"response": VALUE} (the response body, as JSON, must equal VALUE) or
{"error": OBJECT} (an error was posted and its body holds every key of OBJECT with that
value). With no --expect for an event, any response or error is accepted. An init error
(`POST /runtime/init/error`) or CMD exiting early fails the run. Results are printed to
stdout as one JSON object a line. Used by scripts/build-runtimes.sh and
scripts/build-test-functions.sh; only the standard library, any Python 3.8+.
"""

import argparse
import http.server
import json
import os
import queue
import subprocess
import sys
import threading
import time
import uuid

PREFIX = "/2018-06-01/runtime"
FUNCTION_ARN = "arn:aws:lambda:us-east-1:000000000000:function:smoke-test"


def lambda_env(port, extra):
    env = {
        "PATH": "/usr/bin:/bin:/usr/sbin:/sbin",
        "AWS_LAMBDA_RUNTIME_API": f"127.0.0.1:{port}",
        "AWS_LAMBDA_FUNCTION_NAME": "smoke-test",
        "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "128",
        "AWS_LAMBDA_LOG_GROUP_NAME": "/aws/lambda/smoke-test",
        "AWS_LAMBDA_LOG_STREAM_NAME": "2024/01/01/[$LATEST]00000000000000000000000000000000",
        "AWS_LAMBDA_INITIALIZATION_TYPE": "on-demand",
        "AWS_REGION": "us-east-1",
        "AWS_DEFAULT_REGION": "us-east-1",
        "LAMBDA_TASK_ROOT": "/var/task",
        "TZ": ":UTC",
        "LANG": "C.UTF-8",
    }
    env.update(extra)
    return env


class State:
    def __init__(self, events):
        self.pending = queue.Queue()
        for event in events:
            self.pending.put(event)
        self.results = queue.Queue()
        self.ids = {}


def make_handler(state):
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt, *args):  # quiet: the runtime's own output matters more
            pass

        def reply(self, status, body=b"", headers=()):
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            for name, value in headers:
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            if self.path != PREFIX + "/invocation/next":
                self.reply(404, b'{"errorMessage":"not found"}')
                return
            index, event = state.pending.get()  # blocks once all events are handed out
            request_id = str(uuid.uuid4())
            state.ids[request_id] = index
            deadline = int(time.time() * 1000) + 30_000
            self.reply(
                200,
                json.dumps(event).encode(),
                [
                    ("Content-Type", "application/json"),
                    ("Lambda-Runtime-Aws-Request-Id", request_id),
                    ("Lambda-Runtime-Deadline-Ms", str(deadline)),
                    ("Lambda-Runtime-Invoked-Function-Arn", FUNCTION_ARN),
                    ("Lambda-Runtime-Trace-Id", "Root=1-00000000-000000000000000000000000;Sampled=0"),
                ],
            )

        def do_POST(self):
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length)
            parts = self.path[len(PREFIX):].strip("/").split("/")
            if parts == ["init", "error"]:
                self.reply(202, b'{"status":"OK"}')
                state.results.put({"kind": "init_error", "body": body.decode(errors="replace")})
                return
            if len(parts) == 3 and parts[0] == "invocation" and parts[2] in ("response", "error"):
                index = state.ids.get(parts[1])
                if index is None:
                    self.reply(400, b'{"errorMessage":"unknown request id"}')
                    return
                self.reply(202, b'{"status":"OK"}')
                state.results.put({
                    "kind": parts[2],
                    "index": index,
                    "body": body.decode(errors="replace"),
                    "error_type": self.headers.get("Lambda-Runtime-Function-Error-Type"),
                })
                return
            self.reply(404, b'{"errorMessage":"not found"}')

    return Handler


def check(result, expect):
    """Returns None when result meets expect, else a reason."""
    if expect is None:
        return None
    try:
        body = json.loads(result["body"])
    except ValueError:
        body = result["body"]
    if "response" in expect:
        if result["kind"] != "response":
            return f"expected a response, got an error: {result['body']}"
        if body != expect["response"]:
            return f"expected response {json.dumps(expect['response'])}, got {result['body']}"
        return None
    if result["kind"] != "error":
        return f"expected an error, got a response: {result['body']}"
    if not isinstance(body, dict):
        return f"error body is not an object: {result['body']}"
    for key, value in expect["error"].items():
        if body.get(key) != value:
            return f"expected error {key}={json.dumps(value)}, got {result['body']}"
    return None


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--event", action="append", default=[], help="an event, as JSON")
    parser.add_argument("--expect", action="append", default=[], help="expected outcome of the event at the same position")
    parser.add_argument("--env", action="append", default=[], help="extra KEY=VALUE for CMD")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds for the whole run")
    parser.add_argument("cmd", nargs=argparse.REMAINDER, help="-- CMD [ARG...]")
    args = parser.parse_args()
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd or not args.event:
        parser.error("need at least one --event and a command after --")
    events = [json.loads(e) for e in args.event]
    expects = [json.loads(e) for e in args.expect] + [None] * (len(events) - len(args.expect))

    state = State(enumerate(events))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), make_handler(state))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    extra = dict(item.split("=", 1) for item in args.env)

    child = subprocess.Popen(cmd, env=lambda_env(port, extra), stdin=subprocess.DEVNULL, stdout=sys.stderr)
    threading.Thread(target=lambda: (child.wait(), state.results.put({"kind": "exit", "code": child.returncode})), daemon=True).start()

    failures = []
    seen = 0
    deadline = time.monotonic() + args.timeout
    while seen < len(events):
        try:
            result = state.results.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            failures.append(f"timed out after {args.timeout:g} s with {len(events) - seen} invocation(s) unanswered")
            break
        print(json.dumps(result), flush=True)
        if result["kind"] == "init_error":
            failures.append(f"the runtime reported an init error: {result['body']}")
            break
        if result["kind"] == "exit":
            failures.append(f"the runtime exited with {result['code']} before answering every invocation")
            break
        seen += 1
        reason = check(result, expects[result["index"]])
        if reason:
            failures.append(f"event {result['index']}: {reason}")

    if child.poll() is None:
        child.kill()
    child.wait()
    server.shutdown()
    for failure in failures:
        print(f"fake_runtime_api: {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
