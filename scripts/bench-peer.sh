#!/usr/bin/env bash
# Boot-time benchmark of the peer VMM: QEMU's `-M microvm` booting our guest kernel and rootfs.
#
# Usage: scripts/bench-peer.sh [--runs N] [--memory-mib N] [--kernel PATH] [--rootfs PATH]
#                              [--initrd PATH]
#
# Defaults: 10 runs, 128 MiB, target/guest/vmlinux and target/guest/rootfs.ext4 (from the repo
# root). Each run spawns QEMU with an isa-debug-exit device on port 0x440: ember-init writes a
# status word there as soon as its filesystems are mounted, which makes QEMU exit, so the time
# from spawn to QEMU's exit is "ready". Prints one line on stdout:
#   peer qemu-microvm ready_ms p50=<ms> p90=<ms> n=<N>
# (p50 the median, p90 the nearest-rank 90th percentile), and each run's time on stderr.
# Needs KVM: without hardware KVM it runs itself inside the emulated KVM host (kvm-host.sh).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib.sh
. "$here/lib.sh"

runs=10
mem=128
kernel=$ember_repo/target/guest/vmlinux
rootfs=$ember_repo/target/guest/rootfs.ext4
initrd=
args=("$@")
while [ $# -gt 0 ]; do
    case $1 in
    --runs) runs=${2:?--runs needs a number}; shift 2 ;;
    --memory-mib) mem=${2:?--memory-mib needs a number}; shift 2 ;;
    --kernel) kernel=${2:?--kernel needs a path}; shift 2 ;;
    --rootfs) rootfs=${2:?--rootfs needs a path}; shift 2 ;;
    --initrd) initrd=${2:?--initrd needs a path}; shift 2 ;;
    -h | --help) sed -n '2,/^set -euo/{/^#/s/^# \{0,1\}//p}' "$0"; exit 0 ;;
    *) echo "bench-peer: unknown argument $1" >&2; exit 2 ;;
    esac
done
[[ $runs =~ ^[1-9][0-9]*$ ]] || { echo "bench-peer: --runs needs a positive number" >&2; exit 2; }
[[ $mem =~ ^[1-9][0-9]*$ ]] || { echo "bench-peer: --memory-mib needs a positive number" >&2; exit 2; }
for f in "$kernel" "$rootfs" ${initrd:+"$initrd"}; do
    [ -f "$f" ] || { echo "bench-peer: $f not found (build the guest first)" >&2; exit 1; }
done

# Debian's QEMU finds its firmware relative to its binary: use the packaged one, also in L1.
qemu=/usr/bin/qemu-system-x86_64

if [ -z "${EMBER_BENCH_PEER_INNER:-}" ]; then
    # Install on this machine: inside L1 the root filesystem is read-only.
    ember_apt_install qemu-system-x86
    export EMBER_BENCH_PEER_INNER=1
    ember_on_kvm_host "$here/bench-peer.sh" "${args[@]}"
    exit $?
fi

[ -x "$qemu" ] || { echo "bench-peer: $qemu not found" >&2; exit 1; }
[ -w /dev/kvm ] || { echo "bench-peer: /dev/kvm is not usable" >&2; exit 1; }

# The same command line as ember's default (DEFAULT_CMDLINE in src/vmm/mod.rs), so that both
# VMMs boot the same kernel the same way.
append="console=ttyS0 quiet reboot=k panic=-1 io_delay=none no_timer_check random.trust_cpu=on noreplace-smp"
append+=" root=/dev/vda ro rootfstype=ext4"
# acpi=off: only then does QEMU append the virtio_mmio.device= entries for the disk to the
# command line (with ACPI it describes the devices in tables that our guest kernel does not read).
cmd=("$qemu" -M microvm,x-option-roms=off,rtc=off,isa-serial=on,acpi=off -enable-kvm -cpu host
    -m "${mem}M" -smp 1 -nodefaults -no-user-config -nographic -no-reboot
    -kernel "$kernel" ${initrd:+-initrd "$initrd"} -append "$append"
    -drive "id=root,file=$rootfs,format=raw,if=none,readonly=on"
    -device virtio-blk-device,drive=root
    -device isa-debug-exit,iobase=0x440,iosize=4
    -serial null)

now_us() { local t=${EPOCHREALTIME/./}; echo "${t#0}"; }

times=()
log=$(mktemp)
trap 'rm -f "$log"' EXIT
for ((i = 1; i <= runs; i++)); do
    start=$(now_us)
    set +e
    timeout -k 5 60 "${cmd[@]}" </dev/null >"$log" 2>&1
    rc=$?
    set -e
    end=$(now_us)
    # isa-debug-exit makes QEMU exit with (value << 1) | 1: any odd status means the guest
    # reached it. 0 is a reboot or power-off without it, 124 the timeout, others QEMU errors.
    # QEMU's own errors exit with 1 too, the same as a status word of 0: tell them by the message.
    if [ $((rc % 2)) -ne 1 ] || [ "$rc" -eq 125 ] || [ "$rc" -eq 127 ] ||
        { [ "$rc" -eq 1 ] && grep -v 'warning:' "$log" | grep -q '^qemu-system-x86_64:'; }; then
        echo "bench-peer: run $i: QEMU exited with status $rc before the guest was ready" >&2
        cat "$log" >&2
        exit 1
    fi
    ms=$(((end - start + 500) / 1000))
    times+=("$ms")
    echo "bench-peer: run $i: ready in $ms ms (guest status $(((rc - 1) / 2)))" >&2
done

mapfile -t sorted < <(printf '%s\n' "${times[@]}" | sort -n)
n=${#sorted[@]}
if ((n % 2)); then
    p50=${sorted[n / 2]}
else
    p50=$(((sorted[n / 2 - 1] + sorted[n / 2] + 1) / 2))
fi
rank=$(((90 * n + 99) / 100)) # nearest rank: ceil(0.9 n)
p90=${sorted[rank - 1]}
echo "peer qemu-microvm ready_ms p50=$p50 p90=$p90 n=$n"
