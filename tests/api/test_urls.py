#!/usr/bin/env python3
"""Function URLs on Ember: configured through unmodified boto3, called with curl.

    python3 tests/api/test_urls.py ENDPOINT URL_PORT RUST_ZIP

ENDPOINT is the agent's loopback API endpoint; the agent serves function URLs on
127.0.0.1:URL_PORT (`--url-listen`). RUST_ZIP is the Rust test function of
scripts/build-test-functions.sh: it echoes its event, fails for path `/fail`, and for path
`/respond` answers the JSON of the request body.

Checks: 403 until the policy lets `*` call lambda:InvokeFunctionUrl (AddPermission), and again
after RemovePermission; a GET with a query string and cookies, by Host and by path prefix, seen
by the function as Lambda's payload format 2.0 event; a POST with a binary body (base64 in the
event); a function answering 404 with headers and cookies; a raising function (502); a CORS
preflight; the config and policy through boto3.
"""

import base64
import json
import os
import subprocess
import sys
import tempfile

from lambda_checks import ROLE, check, checks, expect_error, lambda_client

NAME = "url-fn"


def curl(port, path, *args, host=None, method=None):
    """(status, headers as a list of (lower-case name, value), body bytes) of one curl request."""
    with tempfile.TemporaryDirectory() as d:
        head, body = os.path.join(d, "head"), os.path.join(d, "body")
        cmd = ["curl", "-s", "-D", head, "-o", body, "-w", "%{http_code}"]
        if host:
            cmd += ["-H", f"Host: {host}"]
        if method:
            cmd += ["-X", method]
        cmd += list(args) + [f"http://127.0.0.1:{port}{path}"]
        status = int(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
        headers = []
        with open(head) as f:
            for line in f.read().splitlines()[1:]:
                if ":" in line:
                    k, v = line.split(":", 1)
                    headers.append((k.strip().lower(), v.strip()))
        with open(body, "rb") as f:
            return status, headers, f.read()


def header(headers, name):
    return [v for k, v in headers if k == name]


def main():
    endpoint, port, rust_zip = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    lam = lambda_client(endpoint)
    with open(rust_zip, "rb") as f:
        code = f.read()
    lam.create_function(FunctionName=NAME, Runtime="provided.al2023", Role=ROLE, Handler="bootstrap",
                        Code={"ZipFile": code}, Timeout=30)

    expect_error("InvalidParameterValueException", 400, lam.create_function_url_config,
                 FunctionName=NAME, AuthType="AWS_IAM")
    cors = {"AllowOrigins": ["https://site.example"], "AllowMethods": ["GET", "POST"], "MaxAge": 60}
    created = lam.create_function_url_config(FunctionName=NAME, AuthType="NONE", Cors=cors)
    url = created["FunctionUrl"]
    url_id = url.split("//", 1)[1].split(".", 1)[0]
    host = f"{url_id}.lambda-url.us-east-1.on.aws"
    check(created["AuthType"] == "NONE" and created["Cors"]["MaxAge"] == 60, f"created: {created}")
    got = lam.get_function_url_config(FunctionName=NAME)
    check(got["FunctionUrl"] == url and got["InvokeMode"] == "BUFFERED", f"get: {got}")
    listed = lam.list_function_url_configs(FunctionName=NAME)["FunctionUrlConfigs"]
    check([u["FunctionUrl"] for u in listed] == [url], f"list: {listed}")

    status, _, body = curl(port, "/", host=host)
    check(status == 403, f"without a policy: {status} {body!r}")
    check(json.loads(body) == {"Message": "Forbidden"}, f"403 body: {body!r}")
    expect_error("ResourceNotFoundException", 404, lam.get_policy, FunctionName=NAME)
    added = lam.add_permission(FunctionName=NAME, StatementId="public", Action="lambda:InvokeFunctionUrl",
                               Principal="*", FunctionUrlAuthType="NONE")
    statement = json.loads(added["Statement"])
    check(statement["Condition"]["StringEquals"]["lambda:FunctionUrlAuthType"] == "NONE", f"statement: {statement}")
    policy = lam.get_policy(FunctionName=NAME)
    check(json.loads(policy["Policy"])["Statement"][0]["Sid"] == "public", f"policy: {policy}")

    # A GET with a query string and cookies, by Host (the function echoes the event it got).
    status, headers, body = curl(port, "/path/x?a=1&a=2&b=hello%20world", "--cookie", "c1=v1; c2=v2", host=host)
    check(status == 200, f"GET: {status} {body!r}")
    check(header(headers, "content-type") == ["application/json"], f"GET headers: {headers}")
    check(header(headers, "x-amzn-requestid"), f"GET has a request id: {headers}")
    event = json.loads(body)
    check(event["version"] == "2.0" and event["routeKey"] == "$default", f"event: {event}")
    check(event["rawPath"] == "/path/x", f"rawPath: {event['rawPath']}")
    check(event["rawQueryString"] == "a=1&a=2&b=hello%20world", f"rawQueryString: {event['rawQueryString']}")
    check(event["queryStringParameters"] == {"a": "1,2", "b": "hello world"}, f"query: {event}")
    check(event["cookies"] == ["c1=v1", "c2=v2"], f"cookies: {event.get('cookies')}")
    check("cookie" not in event["headers"], f"headers: {event['headers']}")
    http = event["requestContext"]["http"]
    check(http["method"] == "GET" and http["userAgent"].startswith("curl/"), f"http: {http}")
    check(http["sourceIp"] == "127.0.0.1" and http["path"] == "/path/x", f"http: {http}")
    check(event["requestContext"]["domainName"] == host, f"domainName: {event['requestContext']}")
    check(event["isBase64Encoded"] is False and "body" not in event, f"no body: {event}")

    # By path prefix: the prefix is not part of rawPath.
    status, _, body = curl(port, f"/{url_id}/p/q")
    check(status == 200 and json.loads(body)["rawPath"] == "/p/q", f"by prefix: {status} {body[:200]!r}")

    # A POST with a binary body.
    blob = bytes(range(256)) * 4
    with tempfile.NamedTemporaryFile() as f:
        f.write(blob)
        f.flush()
        status, _, body = curl(port, "/upload", "--data-binary", f"@{f.name}", "-H",
                               "Content-Type: application/octet-stream", host=host)
    event = json.loads(body)
    check(status == 200 and event["isBase64Encoded"] is True, f"binary POST: {status} {event.get('isBase64Encoded')}")
    check(base64.b64decode(event["body"]) == blob, "the binary body arrives intact")
    check(event["requestContext"]["http"]["method"] == "POST", f"method: {event['requestContext']}")

    # The function answers 404 with headers and cookies.
    answer = {"statusCode": 404, "headers": {"x-thing": "yes", "content-type": "text/plain"},
              "cookies": ["k=v; Path=/", "k2=v2"], "body": "nothing here"}
    status, headers, body = curl(port, "/respond", "--data-binary", json.dumps(answer), "-H",
                                 "Content-Type: application/json", host=host)
    check(status == 404, f"structured answer: {status} {body!r}")
    check(header(headers, "x-thing") == ["yes"] and header(headers, "content-type") == ["text/plain"],
          f"its headers: {headers}")
    check(header(headers, "set-cookie") == ["k=v; Path=/", "k2=v2"], f"its cookies: {headers}")
    check(body == b"nothing here", f"its body: {body!r}")

    # A raising function: 502.
    status, _, body = curl(port, "/fail", host=host)
    check(status == 502, f"a function error: {status} {body!r}")

    # A CORS preflight is answered from the config.
    status, headers, _ = curl(port, "/anything", "-H", "Origin: https://site.example", "-H",
                              "Access-Control-Request-Method: POST", host=host, method="OPTIONS")
    check(status == 200, f"preflight: {status}")
    check(header(headers, "access-control-allow-origin") == ["https://site.example"], f"preflight: {headers}")
    check(header(headers, "access-control-allow-methods") == ["GET,POST"], f"preflight: {headers}")
    status, headers, _ = curl(port, "/x", "-H", "Origin: https://site.example", host=host)
    check(header(headers, "access-control-allow-origin") == ["https://site.example"], f"CORS on a GET: {headers}")

    # Without the permission, 403 again; without the URL, 404.
    lam.remove_permission(FunctionName=NAME, StatementId="public")
    status, _, _ = curl(port, "/", host=host)
    check(status == 403, f"after RemovePermission: {status}")
    lam.delete_function_url_config(FunctionName=NAME)
    status, _, _ = curl(port, "/", host=host)
    check(status == 404, f"after DeleteFunctionUrlConfig: {status}")
    lam.delete_function(FunctionName=NAME)
    print(f"urls: {checks()} checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
