#!/usr/bin/env bash
# Ember's whole test suite, as CI runs it (.ci/run calls this):
#   1. installs what is missing (Debian packages, boto3; the kernel source comes with build-guest),
#   2. builds the guest kernel, ember-init and the images (cached),
#   3. cargo clippy -D warnings and the unit and CLI tests on this machine,
#   4. the KVM integration tests (tests/kvm_*.rs) on a KVM host: directly where this machine
#      has hardware KVM, else inside one emulated KVM host (scripts/kvm-host.sh) for all of them.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib.sh
. "$here/lib.sh"
cd "$ember_repo"

step() { printf '\n== [%s] %s\n' "$(date +%T)" "$*"; }

step "installing packages"
ember_apt_install e2fsprogs qemu-system-x86 busybox-static cpio kmod xz-utils file rabbitmq-server \
    docker-registry skopeo apache2-utils openssl
# The image tests start their own registries (tests/common/registry.rs), on loopback ports.
if command -v systemctl >/dev/null && systemctl is-active --quiet docker-registry 2>/dev/null; then
    systemctl stop docker-registry || true
fi
# Debian starts the broker as a service where it can; the tests run their own
# (scripts/rabbitmq.sh), on the same port.
if command -v systemctl >/dev/null && systemctl is-active --quiet rabbitmq-server 2>/dev/null; then
    systemctl stop rabbitmq-server || true
fi
# boto3 for the API tests (tests/api/) and pika for their RabbitMQ side, from PyPI for the
# python3 on PATH; the aws CLI (v1, from PyPI) in a virtualenv of its own, so that its pinned
# botocore never moves boto3's.
python3 -c 'import boto3' 2>/dev/null || python3 -m pip install --quiet boto3
python3 -c 'import pika' 2>/dev/null || python3 -m pip install --quiet pika
# The tests run the interpreter itself, not a version manager's shim on PATH: pyenv's costs
# about 4 s a start in the emulated host, where the tests start Python some twenty times.
python_bin=$(dirname "$(python3 -c 'import sys; print(sys.executable)')")
export PATH="$python_bin:$PATH"
awscli="$ember_cache/awscli"
if ! "$awscli/bin/aws" --version >/dev/null 2>&1; then
    rm -rf "$awscli"
    python3 -m venv "$awscli"
    "$awscli/bin/pip" install --quiet awscli
fi
export EMBER_AWS_CLI="$awscli/bin/aws"

step "building the guest (scripts/build-guest.sh)"
scripts/build-guest.sh

step "cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "unit, CLI and image pull tests"
cargo test --workspace --locked --lib --bins --test cli --test images

step "KVM integration tests"
# Build the test binaries here; they run where KVM is, with the ember binary beside them.
mapfile -t kvm_tests < <(
    cargo test --locked --no-run --test 'kvm_*' --message-format=json 2>/dev/null |
        python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("profile", {}).get("test") and m.get("executable"):
        print(m["executable"])
'
)
[ ${#kvm_tests[@]} -gt 0 ] || { echo "test.sh: no KVM test binaries were built" >&2; exit 1; }
runner=$(mktemp "$ember_repo/target/kvm-tests.XXXXXX.sh")
trap 'rm -f "$runner"' EXIT
{
    echo 'set -e'
    # The queue tests' broker, started first and in the background: it takes about 100 s of
    # CPU to answer in the emulated host, where the tests before kvm_queues run meanwhile; at
    # the lowest priority, so that it never slows them (a guest once took over 120 s to boot
    # beside it). kvm_queues waits for it.
    printf 'EMBER_RABBITMQ_NICE=19 %q start\n' "$ember_repo/scripts/rabbitmq.sh"
    # Stopped when the tests end (on a hardware KVM host it would outlive them; a broker left
    # by a killed run is stopped by the next start).
    printf 'trap %q EXIT\n' "$ember_repo/scripts/rabbitmq.sh stop"
    echo "export EMBER_AMQP_URL='amqp://guest:guest@127.0.0.1:5672/%2f'"
    for t in "${kvm_tests[@]}"; do
        printf 'echo "== running %s"\n' "$(basename "$t")"
        # The invoke tests run many VMs each (eight at once in one of them), and the SnapStart
        # tests many restores: one test at a time, so the emulated host is never asked for more
        # memory and CPU than it has (its kernel has died under heavy restore load, with a
        # page-fault loop in a vCPU thread).
        threads=2
        extra=
        case $(basename "$t") in kvm_invoke-* | kvm_snapstart-* | kvm_release-*) threads=1 ;; esac
        # The hostile-guest suite runs alone and shows its report (`hostile case=...`, the
        # bystander's p99s and `hostile passed=<n>/13`) even when it passes.
        case $(basename "$t") in kvm_hostile-*) threads=1 extra=--nocapture ;; esac
        # A hung test fails after 25 minutes (the slowest binary takes ~6 here), with a dump.
        printf '%q 1500 %q --test-threads=%d %s\n' "$ember_repo/scripts/run-bounded.sh" "$t" "$threads" "$extra"
    done
} >"$runner"
ember_on_kvm_host bash "$runner"
