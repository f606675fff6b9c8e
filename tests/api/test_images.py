#!/usr/bin/env python3
"""Container-image functions through boto3 and the aws CLI, unmodified.

    python3 tests/api/test_images.py ENDPOINT URI_V1 DIGEST_V1 URI_V2 DIGEST_V2 AWS_CLI

ENDPOINT is the agent's loopback TCP endpoint; URI_V1 and URI_V2 are two images
(`HOST:PORT/REPO:TAG`) in a registry the agent pulls from, with their manifest digests
(`sha256:...`); AWS_CLI is the aws CLI's `aws` in its own virtualenv. No function is invoked:
this is the control plane (tests/kvm_images.rs runs image functions in microVMs). Exits 0
when all checks pass, 1 at the first that fails.
"""

import argparse
import io
import sys
import zipfile

from lambda_checks import ROLE, aws_lambda_cli, check, checks, expect_error, lambda_client, message


def step(what):
    print(f"images: {what}", flush=True)


def resolved(uri, digest):
    """Lambda's ResolvedImageUri: the repository at the digest."""
    return f"{uri.rsplit(':', 1)[0]}@{digest}"


def boto3_checks(lam, uri1, digest1, uri2, digest2):
    step("boto3: CreateFunction with PackageType Image")
    c = lam.create_function(FunctionName="img", PackageType="Image", Code={"ImageUri": uri1}, Role=ROLE,
                            ImageConfig={"Command": ["app.handler"], "WorkingDirectory": "/var/task"})
    check(c["PackageType"] == "Image", f"PackageType: {c.get('PackageType')}")
    check("Runtime" not in c and "Handler" not in c, f"an image has no Runtime or Handler: {c}")
    check(c["CodeSha256"] == digest1.split(":", 1)[1], f"CodeSha256 {c['CodeSha256']} is the manifest digest")
    image_config = c["ImageConfigResponse"]["ImageConfig"]
    check(image_config == {"Command": ["app.handler"], "WorkingDirectory": "/var/task"}, f"{image_config}")

    step("boto3: GetFunction shows the image and its resolved digest")
    g = lam.get_function(FunctionName="img")
    code = g["Code"]
    check(code["RepositoryType"] == "ECR", f"RepositoryType: {code}")
    check(code["ImageUri"] == uri1, f"ImageUri: {code}")
    check(code["ResolvedImageUri"] == resolved(uri1, digest1), f"ResolvedImageUri: {code}")
    check(g["Configuration"]["PackageType"] == "Image", f"{g['Configuration']}")

    step("boto3: UpdateFunctionCode with ImageUri pulls the new image")
    u = lam.update_function_code(FunctionName="img", ImageUri=uri2)
    check(u["CodeSha256"] == digest2.split(":", 1)[1], f"CodeSha256 after the update: {u['CodeSha256']}")
    code = lam.get_function(FunctionName="img")["Code"]
    check((code["ImageUri"], code["ResolvedImageUri"]) == (uri2, resolved(uri2, digest2)), f"{code}")

    step("boto3: UpdateFunctionConfiguration ImageConfig")
    u = lam.update_function_configuration(FunctionName="img", ImageConfig={"EntryPoint": ["/usr/local/bin/run"]})
    check(u["ImageConfigResponse"]["ImageConfig"] == {"EntryPoint": ["/usr/local/bin/run"]},
          f"{u['ImageConfigResponse']}")

    step("boto3: what Lambda refuses on images")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("app.py", "def handler(e, c):\n    return 1\n")
    before = lam.get_function_configuration(FunctionName="img")["RevisionId"]
    e = expect_error("InvalidParameterValueException", 400, lam.update_function_code, FunctionName="img",
                     ZipFile=buf.getvalue())
    check("Please provide ImageUri" in message(e), message(e))
    check(lam.get_function_configuration(FunctionName="img")["RevisionId"] == before, "a refused update changes nothing")
    e = expect_error("InvalidParameterValueException", 400, lam.create_function, FunctionName="img-layers",
                     PackageType="Image", Code={"ImageUri": uri1}, Role=ROLE,
                     Layers=["arn:aws:lambda:us-east-1:000000000000:layer:l:1"])
    check("Layers are only supported" in message(e), message(e))
    missing = uri1.rsplit(":", 1)[0] + ":no-such-tag"
    e = expect_error("InvalidParameterValueException", 400, lam.create_function, FunctionName="img-missing",
                     PackageType="Image", Code={"ImageUri": missing}, Role=ROLE)
    check("no-such-tag" in message(e), message(e))
    names = [f["FunctionName"] for f in lam.list_functions()["Functions"]]
    check(names == ["img"], f"refused creates leave nothing: {names}")
    lam.delete_function(FunctionName="img")


def aws_cli_checks(aws, endpoint, uri1, digest1):
    step("the aws CLI: create-function --package-type Image --code ImageUri=..., get-function")
    with aws_lambda_cli(aws, endpoint) as cli:
        c = cli("create-function", "--function-name", "img-cli", "--package-type", "Image", "--code",
                f"ImageUri={uri1}", "--role", ROLE)
        check(c["PackageType"] == "Image" and c["CodeSha256"] == digest1.split(":", 1)[1], f"create-function: {c}")
        g = cli("get-function", "--function-name", "img-cli")
        check(g["Code"]["ImageUri"] == uri1 and g["Code"]["ResolvedImageUri"] == resolved(uri1, digest1),
              f"get-function: {g['Code']}")
        cli("delete-function", "--function-name", "img-cli")


def main():
    p = argparse.ArgumentParser()
    for arg in ("endpoint", "uri1", "digest1", "uri2", "digest2", "aws"):
        p.add_argument(arg)
    a = p.parse_args()
    try:
        boto3_checks(lambda_client(a.endpoint), a.uri1, a.digest1, a.uri2, a.digest2)
        aws_cli_checks(a.aws, a.endpoint, a.uri1, a.digest1)
    except Exception as e:  # noqa: BLE001 - any failure fails the run, with its story
        print(f"images: FAILED: {e}", file=sys.stderr, flush=True)
        raise
    print(f"images: {checks()} checks passed", flush=True)


if __name__ == "__main__":
    main()
