#!/usr/bin/env bash
# Runs a command inside the emulated KVM host ("L1"): QEMU TCG with -cpu max (AMD SVM) booting
# Debian's kernel with kvm-amd, so that /dev/kvm is hardware-style KVM there. See
# shared/KVM-HOST.md for why: on these machines /dev/kvm is kvm_pvm and cannot run Linux guests.
#
# Usage: scripts/kvm-host.sh [options] -- COMMAND [ARGS...]
#
# L1 sees this machine's root filesystem read-only (9p) at the same paths, with fresh /proc,
# /sys, /dev (with /dev/kvm), and tmpfs on /tmp and /run. Read-write at the same paths: the
# repository root, the cache ($EMBER_CACHE, default ~/.cache/ember), the directories listed in
# $EMBER_L1_RW (space-separated, created if missing) and the current directory when it lies
# below /tmp or /run. COMMAND runs in the current directory with stdin from /dev/null; its
# stdout and stderr come back here live (stdout line by line) and its exit status becomes this
# script's. Passed through: PATH, HOME, USER, LANG/LC_*, TZ, CI, RUST_*, CARGO_TERM_*,
# NO_COLOR, TERM (when stdout is a terminal), every EMBER_* variable, and --env ones;
# EMBER_L1=1 is set inside, and EMBER_L1_KERNEL_DIR: `modprobe -d "$EMBER_L1_KERNEL_DIR" NAME`
# loads more of the L1 kernel's modules there (or list them in EMBER_L1_MODULES).
#
# Options:
#   --timeout SECS   kill L1 after SECS seconds (default 3600); exit status 124 then
#   --fwd PORT       forward 127.0.0.1:PORT here to 127.0.0.1:PORT inside L1 (repeatable)
#   --env NAME[=VALUE]  pass one more environment variable (repeatable)
#   --verbose        show the L1 kernel's boot messages and the QEMU command line
# Environment: EMBER_L1_CPUS (default 1: with 2, L1's 6.1 kernel oopsed under heavy nested
#   load, "stack guard page was hit" in a vCPU thread right after VMRUN, and the test suite runs
#   no faster on this 2-core machine), EMBER_L1_MEM_MIB (default 6144),
#   EMBER_L1_KERNEL_PACKAGE (default linux-image-amd64/bookworm-backports, Linux 6.12; apt's
#   NAME/SUITE or a versioned image package), EMBER_L1_RW, EMBER_L1_MODULES (more
#   kernel modules to load in L1, such as tun; about 1 s more), EMBER_L1_MACHINE (microvm,
#   the default, or q35), EMBER_L1_IDLE (poll, the default, or halt: L1's idle loop),
#   EMBER_L1_ASLR (on or off: address randomization of L1's processes; off by default with
#   one L1 CPU, on with more),
#   EMBER_L1_RW_CACHE (9p cache mode of the read-write shares: loose, the
#   default, or mmap, which is slower to read but keeps nothing), EMBER_L1_DRIVE (a raw disk
#   image on this machine, attached as a virtio block device, /dev/vda in L1, with QEMU's
#   cache=none: a flush in L1 is an fdatasync of the image here; the command formats and mounts
#   it, loading virtio_blk and its filesystem through EMBER_L1_MODULES).
# Limits: unix sockets cannot live on the 9p shares (QEMU refuses special files there): put
# them under /tmp or /run, which are L1's own tmpfs.
# Exit status: COMMAND's; 124 on timeout; 125 when L1 could not be set up or died before
# COMMAND finished.
set -uo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib.sh
. "$here/lib.sh"

die() {
    echo "kvm-host: error: $*" >&2
    exit 125
}

usage() {
    sed -n '2,/^set -uo/{/^#/s/^# \{0,1\}//p}' "${BASH_SOURCE[0]}"
}

timeout_s=3600
fwd_ports=()
extra_env=()
verbose=
while [ $# -gt 0 ]; do
    case $1 in
    --timeout) timeout_s=${2:?--timeout needs a value}; shift 2 ;;
    --timeout=*) timeout_s=${1#*=}; shift ;;
    --fwd) fwd_ports+=("${2:?--fwd needs a port}"); shift 2 ;;
    --fwd=*) fwd_ports+=("${1#*=}"); shift ;;
    --env) extra_env+=("${2:?--env needs a name}"); shift 2 ;;
    --env=*) extra_env+=("${1#*=}"); shift ;;
    --verbose) verbose=1; shift ;;
    -h | --help) usage; exit 0 ;;
    --) shift; break ;;
    -*) usage >&2; die "unknown option $1" ;;
    *) break ;;
    esac
done
[ $# -gt 0 ] || { usage >&2; die "no command given"; }
[[ $timeout_s =~ ^[0-9]+$ ]] || die "--timeout needs whole seconds, got '$timeout_s'"
for p in "${fwd_ports[@]}"; do
    [[ $p =~ ^[0-9]+$ ]] && [ "$p" -ge 1 ] && [ "$p" -le 65535 ] || die "bad --fwd port '$p'"
done

l1_dir=$ember_cache/l1
mkdir -p "$l1_dir" || die "cannot create $l1_dir"

ember_apt_install qemu-system-x86 busybox-static cpio kmod xz-utils ||
    die "cannot install the packages L1 needs"

# --- The L1 kernel: Debian 12's Linux 6.12 (generic flavour), unpacked into the cache ---------
# From Debian 12's backports suite, which this script adds to apt's sources pinned at priority 1:
# only what is asked for by name comes from there, nothing on this machine is upgraded from it.
# 6.12 rather than bookworm's own 6.1: it has KVM_PRE_FAULT_MEMORY (6.10).
# (The cloud flavour has no 9p: CONFIG_NET_9P is not set there.)
kernel_pkg=${EMBER_L1_KERNEL_PACKAGE:-linux-image-amd64/bookworm-backports}

add_backports() {
    local src=/etc/apt/sources.list.d/ember-bookworm-backports.sources
    local pin=/etc/apt/preferences.d/ember-bookworm-backports
    [ -f "$src" ] && [ -f "$pin" ] && return 0
    printf '%s\n' 'Package: *' 'Pin: release n=bookworm-backports' 'Pin-Priority: 1' |
        _ember_as_root tee "$pin" >/dev/null || return 1
    printf '%s\n' 'Types: deb' 'URIs: http://deb.debian.org/debian' 'Suites: bookworm-backports' \
        'Components: main' 'Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg' |
        _ember_as_root tee "$src" >/dev/null || return 1
    unset EMBER_APT_UPDATED
}

# The versioned image package $kernel_pkg stands for (linux-image-amd64 is a metapackage: the
# image it depends on), from apt's lists, updated once if they do not know it.
kernel_package() {
    local real= try name=${kernel_pkg%/*}
    case $kernel_pkg in */bookworm-backports) add_backports || return 1 ;; esac
    for try in 1 2; do
        if [[ $name =~ ^linux-image-[0-9] ]]; then
            apt-cache show "$kernel_pkg" >/dev/null 2>&1 && real=$name
        else
            real=$(apt-cache depends "$kernel_pkg" 2>/dev/null |
                awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9]/ { print $2; exit }')
        fi
        [ -n "$real" ] && break
        # Lists from before the suite was added, or too old: update them, once.
        [ "$try" = 1 ] && { unset EMBER_APT_UPDATED; ember_apt_update || return 1; }
    done
    [ -n "$real" ] && echo "$real"
}

fetch_kernel() { # PACKAGE KVER
    local real=$1 kver=$2 tmp deb off
    echo "kvm-host: fetching $real for L1 (once)" >&2
    tmp=$l1_dir/tmp.$$
    rm -rf "$tmp" && mkdir -p "$tmp" || return 1
    (cd "$tmp" && apt-get download -q "$real" >download.log 2>&1) ||
        { cat "$tmp/download.log" >&2; rm -rf "$tmp"; return 1; }
    deb=$(ls "$tmp"/*.deb) || return 1
    dpkg-deb -x "$deb" "$tmp/root" || { rm -rf "$tmp"; return 1; }
    [ -f "$tmp/root/boot/vmlinuz-$kver" ] && [ -d "$tmp/root/lib/modules/$kver" ] ||
        { echo "kvm-host: $real has no vmlinuz-$kver or modules" >&2; rm -rf "$tmp"; return 1; }
    PATH=$PATH:/usr/sbin:/sbin depmod -b "$tmp/root" "$kver" || { rm -rf "$tmp"; return 1; }
    # An uncompressed vmlinux boots faster under TCG (PVH entry, no in-guest xz decompression).
    off=$(LC_ALL=C grep -obUaP '\xfd7zXZ\x00' "$tmp/root/boot/vmlinuz-$kver" | head -1 | cut -d: -f1)
    if [ -n "$off" ] && grep -q '^CONFIG_PVH=y' "$tmp/root/boot/config-$kver"; then
        # (xz stops after the first stream, so tail may die of SIGPIPE: check the result.)
        tail -c +$((off + 1)) "$tmp/root/boot/vmlinuz-$kver" | xz -dcq --single-stream \
            >"$tmp/root/boot/vmlinux-$kver" 2>/dev/null
        [ "$(head -c 4 "$tmp/root/boot/vmlinux-$kver" | od -An -tx1 | tr -d ' ')" = 7f454c46 ] ||
            rm -f "$tmp/root/boot/vmlinux-$kver"
    fi
    echo "$kver" >"$tmp/root/kver"
    rm -f "$deb" "$tmp/download.log"
    rm -rf "$l1_dir/linux-$kver"
    mv "$tmp/root" "$l1_dir/linux-$kver" && touch "$l1_dir/linux-$kver/.complete"
    rm -rf "$tmp"
}

# One run at a time fetches the kernel or builds the initramfs.
exec 9>"$l1_dir/.lock"
flock 9 || die "cannot lock $l1_dir/.lock"
pkg=$(kernel_package) || die "apt knows no package $kernel_pkg (the L1 kernel)"
kver=${pkg#linux-image-}
kdir=$l1_dir/linux-$kver
if [ ! -e "$kdir/.complete" ]; then
    fetch_kernel "$pkg" "$kver" || die "cannot fetch the L1 kernel ($pkg)"
fi
kmoddir=$kdir/lib/modules/$kver
if [ -f "$kdir/boot/vmlinux-$kver" ]; then
    kernel=$kdir/boot/vmlinux-$kver
else
    kernel=$kdir/boot/vmlinuz-$kver
fi

# --- The initramfs: busybox, modules, init; rebuilt when any input changes -------------------
mods_pci="virtio_pci"
mods_mmio="virtio_mmio"
mods_fs="9pnet_virtio 9p"
mods_kvm="irqbypass kvm kvm-amd"
mods_net="virtio_net"

declare -A mod_path=() mod_deps=() mod_seen=()
read_modules_dep() {
    local path deps name
    while IFS=: read -r path deps; do
        name=${path##*/}
        name=${name%.ko*}
        mod_path[$name]=$path
        mod_deps[$name]=$deps
    done <"$kmoddir/modules.dep"
}

# Prints NAME's dependencies, then NAME, each once (modules.dep lists every dependency, the
# ones needed first last).
mod_closure() {
    local name=$1 dep list=() i
    [ -n "${mod_seen[$name]:-}" ] && return 0
    mod_seen[$name]=1
    if [ -z "${mod_path[$name]:-}" ]; then
        grep -q "/${name//-/[-_]}\.ko" "$kmoddir/modules.builtin" && return 0
        echo "kvm-host: module $name not found for $kver" >&2
        return 1
    fi
    read -ra list <<<"${mod_deps[$name]}"
    for ((i = ${#list[@]} - 1; i >= 0; i--)); do
        dep=${list[i]##*/}
        mod_closure "${dep%.ko*}" || return 1
    done
    echo "$name"
}

# Copies a module, uncompressed (6.12's are xz-compressed) and without its appended signature:
# checking it costs about 25 ms per MB under TCG, and without the kernel's certificates (see
# initcall_blacklist) it only taints anyway.
copy_module() {
    local src=$1 dst=$2 size siglen
    case $src in
    *.xz) xz -dcq "$src" >"$dst.raw" || return 1 ;;
    *) cp "$src" "$dst.raw" || return 1 ;;
    esac
    if [ "$(tail -c 28 "$dst.raw")" = "~Module signature appended~" ]; then
        size=$(stat -c %s "$dst.raw")
        # struct module_signature (12 bytes, big-endian signature length last) before the marker
        siglen=$(tail -c 40 "$dst.raw" | head -c 12 | od -An -tu1 |
            awk '{ print ((($9 * 256) + $10) * 256 + $11) * 256 + $12 }')
        head -c $((size - 40 - siglen)) "$dst.raw" >"$dst" || return 1
        rm -f "$dst.raw"
    else
        mv "$dst.raw" "$dst"
    fi
}

initrd_inputs() {
    echo "kernel $kver"
    sha256sum "$here/l1/init" /bin/busybox
    declare -f build_initrd copy_module mod_closure
    echo "$mods_pci / $mods_mmio / $mods_fs / $mods_kvm / $mods_net"
}
build_initrd() {
    local st=$l1_dir/initramfs.tmp.$$ group list m
    rm -rf "$st" && mkdir -p "$st"/{bin,lib/modules,ember,proc,sys,dev,newroot,run,tmp} || return 1
    read_modules_dep
    cp /bin/busybox "$st/bin/busybox" || return 1
    install -m 755 "$here/l1/init" "$st/init" || return 1
    for group in pci mmio fs kvm net; do
        list=mods_$group
        mod_seen=()
        # shellcheck disable=SC2086
        for m in ${!list}; do
            mod_closure "$m" >>"$st/ember/mods-$group" || return 1
        done
    done
    # Later groups may repeat modules of earlier ones: init skips loaded ones.
    for m in $(cat "$st"/ember/mods-*); do
        copy_module "$kmoddir/${mod_path[$m]}" "$st/lib/modules/$m.ko" || return 1
    done
    (cd "$st" && find . | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet) >"$st.cpio" || return 1
    mv "$st.cpio" "$base_initrd"
    rm -rf "$st"
}
hash=$(initrd_inputs | sha256sum | cut -c1-16)
base_initrd=$l1_dir/initramfs-$kver-$hash.cpio
if [ ! -f "$base_initrd" ]; then
    build_initrd || { rm -rf "$l1_dir/initramfs.tmp.$$"*; die "cannot build the L1 initramfs"; }
    # Older builds, unless another run may still be about to use one.
    find "$l1_dir" -maxdepth 1 -name 'initramfs-*.cpio' ! -name "${base_initrd##*/}" -mmin +10 \
        -delete 2>/dev/null
fi

# --- This run: command, environment, shares -------------------------------------------------
q() { printf "'%s'" "${1//\'/\'\\\'\'}"; }

tmp=$(mktemp -d "${TMPDIR:-/tmp}/ember-l1.XXXXXX") || die "mktemp failed"
qpid=
cleanup() {
    [ -n "$qpid" ] && kill "$qpid" 2>/dev/null
    [ -n "${watchdog:-}" ] && kill "$watchdog" 2>/dev/null
    rm -rf "$tmp" "${heartbeat:-}"
    [ -n "${nonce:-}" ] && rm -f "$l1_dir/exit.$nonce".*
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

nonce=$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')
out_tty=0
[ -t 1 ] && out_tty=1

# Read-write shares, by real path (L1 mounts them before anything resolves symlinks).
rw_dirs=("$ember_repo" "$ember_cache")
for d in ${EMBER_L1_RW:-}; do
    mkdir -p "$d" || die "cannot create $d (from EMBER_L1_RW)"
    rw_dirs+=("$d")
done
cwd=$PWD
cwd_real=$(pwd -P)
case $cwd_real/ in
/tmp/?* | /run/?* | /dev/shm/?*)
    covered=
    for d in "${rw_dirs[@]}"; do
        d=$(realpath "$d")
        case $cwd_real/ in "$d"/*) covered=1 ;; esac
    done
    [ -n "$covered" ] || rw_dirs+=("$cwd_real")
    ;;
esac
mapfile -t rw_real < <(for d in "${rw_dirs[@]}"; do realpath "$d"; done | LC_ALL=C sort -u)

# microvm (virtio-mmio, almost no firmware) boots about 0.3 s faster than q35 here.
machine=${EMBER_L1_MACHINE:-microvm}
case $machine in
microvm) bus=mmio vdev=device machine_args=(-M microvm,pit=on,pic=on,rtc=on) ;;
pc | q35) bus=pci vdev=pci machine_args=(-M "$machine") ;;
*) die "EMBER_L1_MACHINE must be microvm, q35 or pc" ;;
esac
fsdev_args=(-fsdev "local,id=fsroot,path=/,security_model=none,readonly=on,multidevs=remap"
    -device "virtio-9p-$vdev,fsdev=fsroot,mount_tag=hostroot")
mkdir -p "$tmp/run/ember"
{
    echo "nonce=$nonce"
    echo "msize=${EMBER_L1_MSIZE:-512000}"
    echo "rw_cache=${EMBER_L1_RW_CACHE:-loose}"
    echo "out_tty=$out_tty"
    echo "verbose=${verbose:-0}"
    # Where L1 leaves its exit status as an empty file's name (exit.<nonce>.<status>): a
    # file's creation reaches this side through the share at once, while the serial line
    # has been seen to drop characters under load, the marker's too.
    echo "exit_dir=$(q "/newroot$(realpath "$l1_dir")")"
    echo "bus=$bus"
    echo "net=$([ ${#fwd_ports[@]} -gt 0 ] && echo 1 || echo 0)"
    echo "kdir=$(q "$(realpath "$kdir")")"
    echo "extra_modules=$(q "${EMBER_L1_MODULES:-}")"
    i=0
    for d in "${rw_real[@]}"; do
        [ "$d" = / ] && die "cannot share / read-write"
        case $d in *,*) die "9p cannot share a path with a comma: $d" ;; esac
        fsdev_args+=(-fsdev "local,id=fsrw$i,path=$d,security_model=none,multidevs=remap"
            -device "virtio-9p-$vdev,fsdev=fsrw$i,mount_tag=rw$i")
        echo "rw_share rw$i $(q "$d")"
        i=$((i + 1))
    done
} >"$tmp/run/ember/config"

heartbeat=$l1_dir/heartbeat.$nonce
env_names=(PATH HOME USER LOGNAME LANG LANGUAGE LC_ALL LC_CTYPE LC_MESSAGES TZ CI NO_COLOR
    CLICOLOR CLICOLOR_FORCE)
[ "$out_tty" = 1 ] && env_names+=(TERM COLORTERM)
while IFS= read -r name; do
    env_names+=("$name")
done < <(compgen -e | grep -E '^(EMBER_|RUST_|CARGO_TERM_)')
{
    echo "cd $(q "$cwd") || { echo $(q "kvm-host: cannot cd to $cwd in L1") >&2; exit 125; }"
    for name in "${env_names[@]}"; do
        [ -n "${!name+x}" ] && echo "export $(q "$name=${!name}")"
    done
    for e in "${extra_env[@]}"; do
        case $e in
        *=*) echo "export $(q "$e")" ;;
        *) [ -n "${!e+x}" ] && echo "export $(q "$e=${!e}")" ;;
        esac
    done
    echo "export EMBER_L1=1"
    echo "export EMBER_L1_KERNEL_DIR=$(q "$(realpath "$kdir")")"
    if [ ${#fwd_ports[@]} -gt 0 ]; then
        # Forwarded connections arrive at eth0's address: relay them to loopback.
        echo "python3 $(q "$here/l1/tcp-forward.py") 10.0.2.15 ${fwd_ports[*]} &"
    fi
    # With more than one CPU, hold the kernel's static branches that VMs and cgroups flip
    # (see scripts/l1/hold-static-keys.py: the emulation does not patch code safely then).
    if [ "${EMBER_L1_CPUS:-1}" -gt 1 ]; then
        echo "python3 $(q "$here/l1/hold-static-keys.py") ||"
        echo "    { echo 'kvm-host: cannot hold the static branches' >&2; exit 125; }"
    fi
    # The watchdog's heartbeat (see below), from a timer of L1's own.
    # (touch, not a write: the modification time reaches this side at once, data through
    # the share's cache may not).
    echo "(while :; do touch $(q "$heartbeat"); sleep 10; done) </dev/null >/dev/null 2>&1 &"
    printf 'exec'
    for a in "$@"; do printf ' %s' "$(q "$a")"; done
    echo
} >"$tmp/run/ember/run.sh"
(cd "$tmp/run" && find ember | cpio -o -H newc -R 0:0 --quiet) >"$tmp/run.cpio" ||
    die "cannot pack the run's settings"
cat "$base_initrd" "$tmp/run.cpio" >"$tmp/initrd" || die "cannot write $tmp/initrd"
exec 9>&-

# --- QEMU ----------------------------------------------------------------------------------
append="console=ttyS0 panic=-1 rdinit=/init 8250.nr_uarts=2 transparent_hugepage=madvise"
append+=" random.trust_cpu=on mitigations=off tsc=reliable"
# Boot-time savers under TCG (about 0.8 s): no crypto self-tests, no kprobe trace events, no
# X.509 certificates (unsigned-module checks only taint), no encrypted keys.
append+=" cryptomgr.notests"
append+=" initcall_blacklist=init_kprobe_trace,load_system_certificate_list,crypto_kdf108_init,init_encrypted"
if [ "$machine" = microvm ]; then
    # microvm has no HPET or ACPI PM timer, and calibrating the TSC against the PIT fails now
    # and then under TCG (the boot then hangs): TCG's TSC is this machine's, so tell its rate.
    tsc_khz=$(awk -F: '/^cpu MHz/ { printf "%d", $2 * 1000; exit }' /proc/cpuinfo)
    [ -n "$tsc_khz" ] && [ "$tsc_khz" -gt 0 ] && append+=" tsc_early_khz=$tsc_khz"
fi
# L1's idle loop polls rather than halts: a halted L1 has been seen never to wake again (see
# the watchdog below; an NMI did not wake it either), and a CPU that never halts cannot miss its
# wake-up. It costs one host core while L1 is idle. EMBER_L1_IDLE=halt goes back to halting.
[ "${EMBER_L1_IDLE:-poll}" = poll ] && append+=" idle=poll"
# L1's processes load at fixed addresses (norandmaps): QEMU 7.2's TCG keys the code it
# translates by virtual address (x86 translations became position-independent in QEMU 8.0), so
# a position-independent executable loaded at a new address has all its code translated anew,
# a cost no CPU has. Every `ember vmm` paid it on the VMM code it ran: measured 2026-12-04 with
# `ember bench restore`, one run each way and order, a 128 MiB provided.al2023 restore took
# 94-124 ms p50 randomized and 58-62 ms not. (QEMU 10 from bookworm-backports has no such cost,
# 63-69 ms either way, but its nested page faults are slower: a restore without prefetch 234
# against 166-197 ms.) The guests and Ember itself are untouched. Only with one L1 CPU: with
# two, `bench.sh invoke` failed in all five unrandomized runs (L1 oopses at an int3 in KVM's
# code or a corrupted kernel stack; a guest's triple fault; a guest hung) and in one of three
# randomized ones, 2026-12-04. EMBER_L1_ASLR=on or off overrides.
l1_aslr=${EMBER_L1_ASLR:-$([ "${EMBER_L1_CPUS:-1}" = 1 ] && echo off || echo on)}
case $l1_aslr in
on) ;;
off) append+=" norandmaps" ;;
*) die "EMBER_L1_ASLR must be on or off" ;;
esac
[ -n "${EMBER_L1_APPEND:-}" ] && append+=" $EMBER_L1_APPEND"
if [ -n "$verbose" ]; then
    append+=" loglevel=7"
else
    append+=" quiet loglevel=1"
fi

net_args=()
if [ ${#fwd_ports[@]} -gt 0 ]; then
    nd="user,id=n0,restrict=on"
    for p in "${fwd_ports[@]}"; do nd+=",hostfwd=tcp:127.0.0.1:$p-:$p"; done
    net_args=(-netdev "$nd" -device "virtio-net-$vdev,netdev=n0")
fi

mkfifo "$tmp/ttyS0" "$tmp/ttyS1" || die "mkfifo failed"
qemu=(qemu-system-x86_64 -accel tcg,thread=multi,tb-size=512 -cpu max
    -smp "${EMBER_L1_CPUS:-1}" -m "${EMBER_L1_MEM_MIB:-6144}"
    "${machine_args[@]}" -display none -nodefaults -no-user-config -no-reboot
    -kernel "$kernel" -initrd "$tmp/initrd" -append "$append"
    -chardev "file,id=ttyS0,path=$tmp/ttyS0" -serial chardev:ttyS0
    -chardev "file,id=ttyS1,path=$tmp/ttyS1" -device isa-serial,chardev=ttyS1,index=1
    -monitor "unix:$tmp/monitor,server=on,wait=off"
    "${fsdev_args[@]}" "${net_args[@]}")
if [ -n "${EMBER_L1_DRIVE:-}" ]; then
    [ -f "$EMBER_L1_DRIVE" ] || die "EMBER_L1_DRIVE: no such file: $EMBER_L1_DRIVE"
    case $EMBER_L1_DRIVE in *,*) die "EMBER_L1_DRIVE cannot have a comma: $EMBER_L1_DRIVE" ;; esac
    qemu+=(-drive "file=$EMBER_L1_DRIVE,format=raw,if=none,id=drive0,cache=none,aio=threads"
        -device "virtio-blk-$vdev,drive=drive0")
fi
[ -n "$verbose" ] && echo "kvm-host: ${qemu[*]}" >&2

# ttyS0: the command's stdout, the kernel's console and the exit marker, which is taken out.
awk_cmd=(awk)
command -v mawk >/dev/null && awk_cmd=(mawk -W interactive)
LC_ALL=C "${awk_cmd[@]}" -v marker="EMBER_L1_EXIT_$nonce=" -v rcfile="$tmp/rc" '
done { next }
{
    i = index($0, marker)
    if (i) {
        printf "%s", substr($0, 1, i - 1)
        print substr($0, i + length(marker)) > rcfile
        close(rcfile)
        done = 1
    } else {
        print
    }
    fflush()
}' <"$tmp/ttyS0" &
out_pid=$!
cat <"$tmp/ttyS1" >&2 &
err_pid=$!

# QEMU, and the timeout around it, die with this script even when it is SIGKILLed (no trap runs
# then): each gets SIGKILL when its parent ends.
setpriv --pdeathsig KILL -- timeout -k 10 "$timeout_s" setpriv --pdeathsig KILL -- "${qemu[@]}" </dev/null &
qpid=$!

# A stalled L1. Seen here a few times: with the command waiting on timers, L1 halts and
# never wakes again (QEMU at 0% CPU, no timer in L1 firing, not even the tests' own
# watchdogs). L1 touches a heartbeat file on the cache share every 10 s from a timer of its
# own; when its modification time has not changed for EMBER_L1_STALL_S (120) seconds, the
# watchdog shows L1's CPU and APIC state from QEMU's monitor, stops and resumes L1 and sends it
# an NMI (which wakes a halted CPU); if the heartbeat still does not move, it kills L1.
monitor() { # CMD: one command to QEMU's monitor; its answer on stdout
    python3 - "$tmp/monitor" "$1" <<'PY'
import socket, sys, time
s = socket.socket(socket.AF_UNIX)
s.settimeout(10)
s.connect(sys.argv[1])
s.sendall(sys.argv[2].encode() + b"\n")
time.sleep(1)
out = b""
try:
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        out += chunk
        if len(chunk) < 65536:
            break
except OSError:
    pass
sys.stdout.write(out.decode(errors="replace"))
PY
}
stall_s=${EMBER_L1_STALL_S:-120}
(
    last= kicked=
    # The sleep holds none of our outputs: the exit trap kills this loop, not the sleep, which
    # would otherwise keep a pipe on our stdout open for up to $stall_s seconds after we end.
    while sleep "$stall_s" </dev/null >/dev/null 2>&1; do
        # This script was SIGKILLed (its trap could not stop us): nothing left to watch.
        kill -0 $$ 2>/dev/null || exit 0
        beat=$(stat -c %Y "$heartbeat" 2>/dev/null)
        if [ -z "$beat" ] || [ "$beat" != "$last" ]; then
            [ -n "$kicked" ] && echo "kvm-host: L1 is making progress again" >&2
            last=$beat kicked=
            continue
        fi
        if [ -n "$kicked" ]; then
            echo "kvm-host: error: L1 still makes no progress after an NMI; killing it" >&2
            kill "$qpid" 2>/dev/null
            exit 0
        fi
        echo "kvm-host: L1's heartbeat has not moved for ${stall_s} s: stalled; its state:" >&2
        { monitor "info registers"; monitor "info lapic"; } 2>&1 | tr -d '\r' |
            grep -E '^(RIP|RAX|RSP|CR0|EFL|LVTT|Timer|ISR|IRR|APR|SPIV)' >&2
        # A pending timer interrupt that a vCPU polling in L1's idle loop never takes (IRR
        # set, IF=1, PPR below it: seen 2026-12-05) is QEMU's TCG missing a kick; stopping and
        # resuming the VM makes every vCPU leave its translated code and look again.
        echo "kvm-host: stopping and resuming L1, and sending it an NMI" >&2
        monitor stop >/dev/null 2>&1
        monitor cont >/dev/null 2>&1
        monitor nmi >/dev/null 2>&1
        kicked=1
    done
) &
watchdog=$!
wait "$qpid"
qrc=$?
qpid=
# If QEMU died before opening the serial FIFOs, their readers still wait in open(): a
# read-write open never blocks and lets them see end-of-file.
exec 7<>"$tmp/ttyS0" 8<>"$tmp/ttyS1"
exec 7>&- 8>&-
wait "$out_pid"
out_rc=$?
wait "$err_pid"

exit_files=("$l1_dir/exit.$nonce".*)
if [ -e "${exit_files[0]}" ]; then
    rc=${exit_files[0]##*.}
    [[ $rc =~ ^[0-9]+$ ]] || die "bad exit status file from L1: ${exit_files[0]}"
    exit "$rc"
fi
if [ -s "$tmp/rc" ]; then
    rc=$(head -1 "$tmp/rc")
    [[ $rc =~ ^[0-9]+$ ]] || die "bad exit marker from L1: $rc"
    exit "$rc"
fi
# Our stdout was closed (`... | head`): end as a writer killed by SIGPIPE would.
[ "$out_rc" = 141 ] && exit 141
if [ "$qrc" = 124 ]; then
    echo "kvm-host: error: timed out after ${timeout_s}s; L1 killed" >&2
    exit 124
fi
die "L1 stopped before the command finished (QEMU exit status $qrc; run with --verbose to see the L1 kernel's messages)"
