#!/usr/bin/env bash
# Builds everything an Ember microVM needs into ${EMBER_GUEST_DIR:-<repo>/target/guest}:
#   vmlinux      the guest kernel (by scripts/build-kernel.sh)
#   ember-init   the guest's PID 1, statically linked and stripped
#   rootfs.ext4  the read-only root filesystem: /sbin/init = ember-init plus empty mount points
# The image is rebuilt only when ember-init or the recipe below changes (a hash in
# rootfs.ext4.stamp). Nothing is mounted; no root needed except to install e2fsprogs.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="${EMBER_GUEST_DIR:-$repo/target/guest}"
export EMBER_GUEST_DIR="$out"
triple=x86_64-unknown-linux-gnu
init_bin="${CARGO_TARGET_DIR:-$repo/target}/$triple/release/ember-init"

# The recipe of the image. ember-init mounts onto proc sys dev run tmp and creates nothing on
# the read-only root, so every directory it or the functions need must be listed here.
rootfs_dirs=(proc sys dev run tmp var/task opt etc sbin)
rootfs_label=ember-root
headroom_mib=4

umask 022
export PATH="$PATH:/usr/sbin:/sbin"
mkdir -p "$out"

log() { echo "build-guest: $*" >&2; }

# Prints "<path> <size>" for one artifact.
report() {
    local bytes
    bytes="$(stat -c %s "$1")"
    printf '%s %s (%s bytes)\n' "$1" "$(numfmt --to=iec-i --suffix=B "$bytes")" "$bytes"
}

sudo_if_needed() {
    if [[ "$(id -u)" == 0 ]]; then "$@"; else sudo "$@"; fi
}

build_kernel() {
    local script="$repo/scripts/build-kernel.sh"
    if [[ -f "$script" ]]; then
        bash "$script" >&2
    else
        log "warning: $script is missing, not building the kernel"
    fi
}

# Builds ember-init statically (an explicit --target keeps RUSTFLAGS off build scripts) and
# leaves a stripped copy in $out/ember-init, replaced only when it changed.
build_init() {
    RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --quiet \
        --manifest-path "$repo/Cargo.toml" -p ember-init --target "$triple"
    if readelf -lW "$init_bin" | grep -q 'INTERP'; then
        log "error: $init_bin is dynamically linked"
        exit 1
    fi
    strip -o "$out/ember-init.tmp" "$init_bin"
    if cmp -s "$out/ember-init.tmp" "$out/ember-init"; then
        rm "$out/ember-init.tmp"
    else
        mv "$out/ember-init.tmp" "$out/ember-init"
    fi
}

build_rootfs() {
    local image="$out/rootfs.ext4" stamp="$out/rootfs.ext4.stamp" want
    want="$(
        sha256sum <"$out/ember-init" | cut -d' ' -f1
        echo "${rootfs_dirs[*]} $rootfs_label $headroom_mib"
    )"
    if [[ -f "$image" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
        return
    fi
    if ! command -v mkfs.ext4 >/dev/null || ! command -v debugfs >/dev/null; then
        log "installing e2fsprogs"
        sudo_if_needed apt-get update -qq
        sudo_if_needed apt-get install -y -qq e2fsprogs >/dev/null
    fi

    local staging
    staging="$(mktemp -d "$out/rootfs-staging.XXXXXX")"
    # shellcheck disable=SC2064 # expand now: $staging is local
    trap "rm -rf '$staging' '$image.tmp'" EXIT
    for dir in "${rootfs_dirs[@]}"; do
        mkdir -p "$staging/$dir"
    done
    chmod 1777 "$staging/tmp"
    install -m 0755 "$out/ember-init" "$staging/sbin/init"

    # Content plus 10 % and a few MiB for the filesystem's own metadata, in whole MiB.
    local content_kib size_mib
    content_kib="$(du -sk "$staging" | cut -f1)"
    size_mib=$(((content_kib * 11 / 10 + 1023) / 1024 + headroom_mib))
    truncate -s "${size_mib}M" "$image.tmp"
    mkfs.ext4 -q -F -d "$staging" -L "$rootfs_label" -O ^has_journal -E root_owner=0:0 \
        -b 4096 "$image.tmp"
    # mkfs copies the owners of the staging files: make them root when we are not.
    if [[ "$(id -u)" != 0 || "$(id -g)" != 0 ]]; then
        (cd "$staging" && find . -mindepth 1 -printf 'sif /%P uid 0\nsif /%P gid 0\n') |
            debugfs -w -f - "$image.tmp" >/dev/null 2>&1
    fi
    mv "$image.tmp" "$image"
    echo "$want" >"$stamp"
    rm -rf "$staging"
    trap - EXIT
}

build_kernel
build_init
build_rootfs

for artifact in "$out/vmlinux" "$out/ember-init" "$out/rootfs.ext4"; do
    if [[ -f "$artifact" ]]; then
        report "$artifact"
    else
        log "warning: $artifact was not built"
    fi
done
bash "$repo/scripts/build-runtimes.sh"
bash "$repo/scripts/build-test-functions.sh"
