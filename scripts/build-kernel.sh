#!/usr/bin/env bash
# Build Ember's guest kernel: an uncompressed x86_64 `vmlinux` from Debian's
# linux-source-6.1, configured as `make tinyconfig` + rootfs/kernel/microvm.config.
#
# Usage: scripts/build-kernel.sh
#   Progress goes to stderr; the path of the installed vmlinux is printed on
#   stdout (so `VMLINUX=$(scripts/build-kernel.sh)` works).
#
# Environment:
#   EMBER_CACHE        cache root (default ~/.cache/ember); builds live in
#                      $EMBER_CACHE/kernel/<key>/ where <key> is the sha256 of
#                      the fragment, the linux-source-6.1 package version and
#                      this script. A cached <key>/vmlinux is reused as is.
#   EMBER_GUEST_DIR    where vmlinux is installed (default <repo>/target/guest)
#   EMBER_KERNEL_JOBS  make -j value (default: nproc)
#   EMBER_KEEP_KERNEL_TREE=1  keep the unpacked, built source tree afterwards
set -euo pipefail

SELF="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")"
REPO_ROOT="$(cd "$(dirname "$SELF")/.." && pwd)"
FRAGMENT="$REPO_ROOT/rootfs/kernel/microvm.config"

SRC_PKG=linux-source-6.1
SRC_TARBALL=/usr/src/linux-source-6.1.tar.xz
BUILD_PKGS=(linux-source-6.1 flex bison bc libelf-dev libssl-dev make gcc)

CACHE_ROOT="${EMBER_CACHE:-$HOME/.cache/ember}/kernel"
GUEST_DIR="${EMBER_GUEST_DIR:-$REPO_ROOT/target/guest}"
JOBS="${EMBER_KERNEL_JOBS:-$(nproc)}"
PROGRESS_EVERY=20 # seconds between progress lines while compiling

log() { printf '[build-kernel] %s\n' "$*" >&2; }
die() { printf '[build-kernel] ERROR: %s\n' "$*" >&2; exit 1; }

START=$SECONDS
elapsed() { printf '%ds' $((SECONDS - START)); }

[[ -r "$FRAGMENT" ]] || die "config fragment not found: $FRAGMENT"
if [[ "$(uname -m)" != x86_64 && -z "${CROSS_COMPILE:-}" ]]; then
    die "the guest kernel is x86_64; run this on an x86_64 host (or set CROSS_COMPILE)"
fi

# --- Build dependencies: cheap checks, install only if something is missing ---
pkg_installed() {
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'ok installed'
}

ensure_deps() {
    command -v dpkg-query >/dev/null || die "dpkg-query not found: this script expects a Debian host"
    local missing=()
    for p in "$SRC_PKG" libelf-dev libssl-dev; do
        pkg_installed "$p" || missing+=("$p")
    done
    for c in flex bison bc make gcc; do
        command -v "$c" >/dev/null || missing+=("$c")
    done
    [[ -r "$SRC_TARBALL" ]] || missing+=("$SRC_TARBALL")
    ((${#missing[@]} == 0)) && return 0

    log "missing: ${missing[*]}; installing build dependencies with apt-get"
    local sudo=()
    if ((EUID != 0)); then
        command -v sudo >/dev/null || die "need root (or sudo) to install: ${BUILD_PKGS[*]}"
        sudo=(sudo)
    fi
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y --no-install-recommends "${BUILD_PKGS[@]}"
    [[ -r "$SRC_TARBALL" ]] || die "$SRC_TARBALL still missing after installing $SRC_PKG"
}

# The installed copy is replaced atomically (copy + rename), so a VM booting
# from the old file concurrently never sees a half-written one.
install_vmlinux() {
    mkdir -p "$GUEST_DIR"
    cp -f "$KEY_DIR/vmlinux" "$GUEST_DIR/.vmlinux.tmp.$$"
    mv -f "$GUEST_DIR/.vmlinux.tmp.$$" "$GUEST_DIR/vmlinux"
    local size
    size="$(stat -c %s "$GUEST_DIR/vmlinux")"
    log "installed $GUEST_DIR/vmlinux ($((size / 1024)) KiB, key ${KEY:0:12}, $(elapsed))"
    printf '%s\n' "$GUEST_DIR/vmlinux"
}

ensure_deps

SRC_VERSION="$(dpkg-query -W -f='${Version}' "$SRC_PKG")"
# Read the fragment once: the key, the merge and the check all use these exact
# bytes, even if someone edits the file while a build is running.
FRAG_TEXT="$(cat "$FRAGMENT"; printf x)"
FRAG_TEXT="${FRAG_TEXT%x}"
KEY="$({ printf '%s' "$FRAG_TEXT"; printf '%s\n' "$SRC_VERSION"; cat "$SELF"; } | sha256sum | cut -d' ' -f1)"
KEY_DIR="$CACHE_ROOT/$KEY"

if [[ -f "$KEY_DIR/vmlinux" ]]; then
    log "cached kernel for $SRC_PKG $SRC_VERSION + $(basename "$FRAGMENT") (key ${KEY:0:12})"
    install_vmlinux
    exit 0
fi

mkdir -p "$KEY_DIR"
# Serialize concurrent builds of the same key (parallel test runs).
if command -v flock >/dev/null; then
    exec 9>"$KEY_DIR/.lock"
    if ! flock -n 9; then
        log "another build of this key is running; waiting for it"
        flock 9
    fi
    if [[ -f "$KEY_DIR/vmlinux" ]]; then
        install_vmlinux
        exit 0
    fi
fi

SRC_DIR="$KEY_DIR/src"
BUILD_LOG="$KEY_DIR/build.log"
FRAG_COPY="$KEY_DIR/$(basename "$FRAGMENT")" # kept next to vmlinux as a record
printf '%s' "$FRAG_TEXT" >"$FRAG_COPY"
log "building $SRC_PKG $SRC_VERSION with $(basename "$FRAGMENT") in $KEY_DIR"

# --- Unpack (once per key; an interrupted unpack is redone) ------------------
if [[ -f "$SRC_DIR/.ember-unpacked" ]]; then
    log "[1/4] unpacking: reusing the tree left by an earlier attempt"
else
    log "[1/4] unpacking $SRC_TARBALL"
    rm -rf "$SRC_DIR"
    mkdir -p "$SRC_DIR"
    tar -xJf "$SRC_TARBALL" -C "$SRC_DIR" --strip-components=1
    touch "$SRC_DIR/.ember-unpacked"
    log "      unpacked ($(elapsed))"
fi

cd "$SRC_DIR"
MAKE_ARGS=(ARCH=x86_64 KBUILD_BUILD_USER=ember KBUILD_BUILD_HOST=ember
           "KBUILD_BUILD_TIMESTAMP=$SRC_PKG $SRC_VERSION")
: >"$BUILD_LOG"

# --- Configure ---------------------------------------------------------------
# tinyconfig, then the fragment merged with allnoconfig semantics (-n): symbols
# that only become visible through the fragment (VT, IPV6, ...) stay off instead
# of taking their Kconfig default, which `olddefconfig` would give them.
log "[2/4] configuring: make tinyconfig + merge_config.sh -n $(basename "$FRAGMENT")"
{
    make "${MAKE_ARGS[@]}" tinyconfig
    ARCH=x86_64 scripts/kconfig/merge_config.sh -n .config "$FRAG_COPY"
} >>"$BUILD_LOG" 2>&1 || { tail -n 30 "$BUILD_LOG" >&2; die "configuring failed (log: $BUILD_LOG)"; }

# Keep the fragment honest: every CONFIG_X=value line must be in .config
# verbatim, and every "# CONFIG_X is not set" must not have become y or m.
problems=()
while IFS= read -r line; do
    if [[ "$line" =~ ^(CONFIG_[A-Za-z0-9_]+)=(.*)$ ]]; then
        sym="${BASH_REMATCH[1]}"
        if ! grep -qxF -- "$line" .config; then
            got="$(grep -E "^(# )?$sym[= ]" .config || true)"
            problems+=("$line  ->  ${got:-absent (dependency not met)}")
        fi
    elif [[ "$line" =~ ^#\ (CONFIG_[A-Za-z0-9_]+)\ is\ not\ set$ ]]; then
        sym="${BASH_REMATCH[1]}"
        if got="$(grep -E "^$sym=[ym]$" .config)"; then
            problems+=("# $sym is not set  ->  $got")
        fi
    fi
done <"$FRAG_COPY"
if ((${#problems[@]})); then
    log "the final .config does not honour $(basename "$FRAGMENT"):"
    printf '[build-kernel]     %s\n' "${problems[@]}" >&2
    die "${#problems[@]} option(s) dropped or changed; add the missing dependencies to the fragment (or fix it), see $SRC_DIR/.config"
fi
log "      all $(grep -cE '^(CONFIG_|# CONFIG_.* is not set$)' "$FRAG_COPY") fragment lines honoured ($(elapsed))"

# --- Compile -----------------------------------------------------------------
log "[3/4] compiling: make -j$JOBS vmlinux (log: $BUILD_LOG)"
make "${MAKE_ARGS[@]}" -j"$JOBS" vmlinux >>"$BUILD_LOG" 2>&1 &
MAKE_PID=$!
trap 'kill "$MAKE_PID" 2>/dev/null || true' EXIT
COMPILE_START=$SECONDS
count_objects() { grep -cE '^\s+(CC|AS)\s' "$BUILD_LOG" || true; }
while kill -0 "$MAKE_PID" 2>/dev/null; do
    for ((i = 0; i < PROGRESS_EVERY; i++)); do
        kill -0 "$MAKE_PID" 2>/dev/null || break
        sleep 1
    done
    if kill -0 "$MAKE_PID" 2>/dev/null; then
        log "      compiling: $(count_objects) objects so far ($((SECONDS - COMPILE_START))s)"
    fi
done
if ! wait "$MAKE_PID"; then
    trap - EXIT
    tail -n 40 "$BUILD_LOG" >&2
    die "make vmlinux failed (log: $BUILD_LOG; tree kept in $SRC_DIR, rerun to resume)"
fi
trap - EXIT
log "      compiled $(count_objects) objects in $((SECONDS - COMPILE_START))s"

# --- Check and store ---------------------------------------------------------
log "[4/4] checking and caching"
[[ -f vmlinux ]] || die "make succeeded but there is no vmlinux"
readelf -h vmlinux 2>/dev/null | grep -q 'Class:.*ELF64' || die "vmlinux is not an ELF64 file"
# PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY, owner "Xen").
readelf -n vmlinux 2>/dev/null | grep -q '^ *Xen ' || die "vmlinux has no PVH (Xen) ELF note"
# The loopback device must be built in.
grep -q ' loopback_net_ops$' System.map || die "loopback device missing from vmlinux"

cp -f .config "$KEY_DIR/config"
cp -f vmlinux "$KEY_DIR/vmlinux.tmp"
mv -f "$KEY_DIR/vmlinux.tmp" "$KEY_DIR/vmlinux" # vmlinux present == build complete
cd "$KEY_DIR"
if [[ "${EMBER_KEEP_KERNEL_TREE:-0}" != 1 ]]; then
    rm -rf "$SRC_DIR"
fi
log "built in $(elapsed); cached $KEY_DIR/vmlinux and $KEY_DIR/config"
install_vmlinux
