#!/usr/bin/env bash
# The main job, shown end to end: build the guest, boot a 128 MiB / 1 vCPU microVM with our
# VMM on a KVM host (the emulated one where this machine has no hardware KVM), watch it reach
# ember-init and power off.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib.sh
. "$here/lib.sh"
cd "$ember_repo"

scripts/build-guest.sh >/dev/null
cargo build --release --locked --bin ember >&2
exe=$ember_repo/target/release/ember

echo "== ember boot --memory-mib 128 --vcpus 1 (console on stdout)"
ember_on_kvm_host "$exe" boot --memory-mib 128 --vcpus 1 --console -
echo "== ember boot --memory-mib 1024 --vcpus 2 --until-ready --console off"
ember_on_kvm_host "$exe" boot --memory-mib 1024 --vcpus 2 --until-ready --console off
