#!/usr/bin/env bash
# scripts/bench.sh NAME [ARGS...]: runs `ember bench NAME ARGS...` on a KVM host (the emulated
# one where this machine has no hardware KVM) and passes its output through. For `events` a
# RabbitMQ broker is started there first (scripts/rabbitmq.sh) for the event source mapping, and
# the agent's data dir is on a disk of its own, as on a production host: on the emulated host an
# ext4 filesystem on a virtio block device whose flushes are fdatasyncs of an image file on this
# machine's disk (target/bench-events.img), so that every commit pays a real fsync; and that
# host gets two CPUs (EMBER_L1_CPUS, unless set), because with one it spends the whole CPU on
# both ends of the HTTP requests and on its own kernel's block I/O, so that eight clients could
# not show what grouping commits does (measured on 2026-12-03, agent alone, Python clients:
# one CPU, c1 83/s and c8 164/s; two CPUs, c1 93/s and c8 574/s).
# For `runtimes` it installs docker-registry, skopeo and umoci (the registry, the peer's copy and
# unpack), which run on the KVM host.
# For `boot` it also runs the peer (scripts/bench-peer.sh: QEMU -M microvm on the same kernel,
# image and KVM, in the same host run) and prints the ratio last:
#   boot ratio_vs_qemu=<ember p50 / qemu p50>
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib.sh
. "$here/lib.sh"
cd "$ember_repo"

[ $# -ge 1 ] || { echo "usage: scripts/bench.sh NAME [ARGS...]" >&2; exit 2; }
name=$1
shift

scripts/build-guest.sh >/dev/null
cargo build --release --locked --bin ember >&2
exe=$ember_exe

runner=$(mktemp "$ember_repo/target/bench.XXXXXX.sh")
l1_drive=
if [ "$name" = events ] && ! ember_have_hw_kvm; then
    l1_drive=$ember_repo/target/bench-events.img
    rm -f "$l1_drive"
    truncate -s 4G "$l1_drive"
    mkfs.ext4 -q -F "$l1_drive"
    export EMBER_L1_DRIVE=$l1_drive EMBER_L1_CPUS=${EMBER_L1_CPUS:-2}
    export EMBER_L1_MODULES="${EMBER_L1_MODULES:+$EMBER_L1_MODULES }virtio_blk ext4"
fi
# Eight clients need a second CPU to scale onto: on one emulated CPU, one client's chain of
# agent, VMM and guest already keeps it busy, and eight distinct guests cost the emulation
# their own code translations (QEMU's `info jit`: 120,000 more translated blocks in 5 s and a
# flush of its whole cache inside the 3 s window). Measured 2026-12-03: one CPU
# rps_c1=69 rps_c8=15, two CPUs rps_c1=52 rps_c8=87.
if [ "$name" = invoke ] && ! ember_have_hw_kvm; then
    export EMBER_L1_CPUS=${EMBER_L1_CPUS:-2}
fi
out=$(mktemp)
trap 'rm -f "$runner" "$out" ${l1_drive:+"$l1_drive"}' EXIT
# The benchmark's own arguments, quoted, to end a command line in the runner.
args() {
    [ $# -eq 0 ] || printf ' %q' "$@"
    echo
}
{
    echo 'set -e'
    if [ "$name" = boot ]; then
        # Both VMMs boot the kernel and rootfs from the KVM host's own disk, as they would in
        # production, not from the emulated host's 9p share of this machine's files (where
        # reading the 9 MB kernel alone costs ~100 ms).
        echo 'stage=$(mktemp -d); trap '"'"'rm -rf "$stage"'"'"' EXIT'
        printf 'cp %q %q "$stage"/\n' "$ember_repo/target/guest/vmlinux" "$ember_repo/target/guest/rootfs.ext4"
        printf 'EMBER_GUEST_DIR=$stage %q bench %q' "$exe" "$name"
        args "$@"
        printf 'EMBER_BENCH_PEER_INNER=1 %q --kernel "$stage/vmlinux" --rootfs "$stage/rootfs.ext4"' \
            "$ember_repo/scripts/bench-peer.sh"
        args "$@"
    elif [ "$name" = events ]; then
        # The agent's store on a disk of its own (not the emulated host's tmpfs /tmp, where an
        # fsync costs nothing and grouping commits could show nothing; nor the 9p share of
        # this machine's files, where each of SQLite's locks and writes is a round trip to
        # QEMU). Where this machine has hardware KVM, this machine's disk (target/bench-events).
        if [ -n "$l1_drive" ]; then
            echo 'data=/run/ember-bench-disk; mkdir -p "$data"; mount -t ext4 /dev/vda "$data"'
        else
            printf 'data=%q; mkdir -p "$data"\n' "$ember_repo/target/bench-events"
        fi
        # The mappings' broker, starting while the first parts run (the bench waits for it).
        printf '%q start\n' "$ember_repo/scripts/rabbitmq.sh"
        printf 'trap %q EXIT\n' "$ember_repo/scripts/rabbitmq.sh stop"
        printf '%q bench events --data-dir "$data"' "$exe"
        args "$@"
    elif [ "$name" = restore ] || [ "$name" = runtimes ]; then
        # The guest's kernel and images on the KVM host's own disk, as for `boot`: every restore
        # opens its runtime's image, which on the 9p share costs a round trip to QEMU per call
        # (4-7 ms of each restore, measured 2026-12-04); and `runtimes` compares a zip's cold
        # start, whose runtime image this is, with an image's, whose root is in the data dir.
        echo 'stage=$(mktemp -d); trap '"'"'rm -rf "$stage"'"'"' EXIT'
        printf 'cp -r %q/. "$stage"/\n' "$ember_repo/target/guest"
        printf 'EMBER_GUEST_DIR=$stage %q bench %q' "$exe" "$name"
        args "$@"
    else
        printf '%q bench %q' "$exe" "$name"
        args "$@"
    fi
} >"$runner"
# `restore` holds up to a thousand idle microVMs at once: give the emulated host the memory
# (QEMU maps it lazily, so it costs only what they use).
if [ "$name" = restore ]; then
    export EMBER_L1_MEM_MIB=${EMBER_L1_MEM_MIB:-20480}
fi
# `runtimes` keeps its images (a 500 MiB one four times over: layout, registry, the agent's
# root image, skopeo's copy and umoci's bundle) on the emulated host's tmpfs.
if [ "$name" = runtimes ]; then
    ember_apt_install docker-registry skopeo umoci
    export EMBER_L1_MEM_MIB=${EMBER_L1_MEM_MIB:-12288}
fi
ember_on_kvm_host bash "$runner" | tee "$out"

if [ "$name" = boot ]; then
    python3 - "$out" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
ours = re.search(r"^boot ready_ms p50=(\d+)", text, re.M)
peer = re.search(r"^peer qemu-microvm ready_ms p50=(\d+)", text, re.M)
if not ours or not peer:
    sys.exit("bench.sh: missing the ember or the peer p50 line")
print(f"boot ratio_vs_qemu={int(ours.group(1)) / int(peer.group(1)):.2f}")
PY
fi
