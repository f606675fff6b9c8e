"""Runs aws CLI commands one after another in one process of the aws CLI's own Python.

    AWS_CLI_PYTHON aws_cli_session.py

Reads one JSON array of arguments per line on stdin (what would follow `aws` on a command
line) and, for each, runs the unmodified aws CLI's entry point on them (what the `aws` script
does: `awscli.clidriver.create_clidriver().main(args)`, a new driver and session each time),
then writes one JSON line: {"rc": exit status, "stdout": ..., "stderr": ...}.

Why one process: in the emulated KVM host each `aws` process spends ~15 s importing the CLI,
its customizations and botocore, which the test suite would pay for every command. Run it with
the Python of the aws CLI's own virtualenv (its botocore is pinned apart from boto3's).
"""

import contextlib
import io
import json
import sys

from awscli.clidriver import create_clidriver


def run(args):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = create_clidriver().main(args)
        except SystemExit as e:  # argparse's usage errors exit
            rc = e.code if isinstance(e.code, int) else 1
    return {"rc": rc, "stdout": out.getvalue(), "stderr": err.getvalue()}


def main():
    for line in sys.stdin:
        if line.strip():
            print(json.dumps(run(json.loads(line))), flush=True)


if __name__ == "__main__":
    main()
