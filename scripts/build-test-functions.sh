#!/usr/bin/env bash
# Builds the functions Ember's integration tests deploy, as Lambda zips, into
# ${EMBER_GUEST_DIR:-<repo>/target/guest}/functions/:
#   rust.zip    tests/functions/rust built as a static `bootstrap` (mode 0755, at the root),
#               for the provided.al2023 runtime
#   python.zip  tests/functions/python/handler.py at the root, for the python3.11 runtime
#   node.zip    tests/functions/node/index.js and esm.mjs at the root, for nodejs20.x
#   python3.11-root.tar, nodejs20.x-root.tar (and .tar.gz, .tar.gz.diffid)
#               the files of those runtime images, the base layers of the image tests
# The Rust crate is standalone (own workspace and Cargo.lock) and builds in
# ${CARGO_TARGET_DIR:-<repo>/target}/test-functions; cargo makes reruns cheap. The zips are
# deterministic (fixed timestamps) and replaced only when their content changed. The bootstrap
# is smoke-tested against tests/functions/fake_runtime_api.py.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="${EMBER_GUEST_DIR:-$repo/target/guest}/functions"
triple=x86_64-unknown-linux-gnu
fns="$repo/tests/functions"
target_dir="${CARGO_TARGET_DIR:-$repo/target}/test-functions"
bootstrap="$target_dir/$triple/release/bootstrap"

log() { echo "build-test-functions: $*" >&2; }

mkdir -p "$out"

# Static, so that it runs on the provided.al2023 image, which has no dynamic loader. An explicit
# --target keeps RUSTFLAGS off build scripts and proc macros.
log "building tests/functions/rust"
RUSTFLAGS="-C target-feature=+crt-static" CARGO_TARGET_DIR="$target_dir" cargo build --release \
    --quiet --locked --manifest-path "$fns/rust/Cargo.toml" --target "$triple"
if readelf -lW "$bootstrap" | grep -q 'INTERP'; then
    log "error: $bootstrap is dynamically linked"
    exit 1
fi

log "smoke-testing the rust bootstrap"
python3 "$fns/fake_runtime_api.py" \
    --event '{"hello": "world"}' --expect '{"response": {"hello": "world"}}' \
    --event '{"fail": true}' --expect '{"error": {"errorType": "bootstrap::TestError", "errorMessage": "boom"}}' \
    --event '{"sleep_ms": 20, "n": 1}' --expect '{"response": {"sleep_ms": 20, "n": 1}}' \
    -- "$bootstrap" >/dev/null

# zip NAME SOURCE MODE [SOURCE MODE ...]: writes $out/NAME with each SOURCE at the root.
make_zip() {
    local name="$1"
    shift
    python3 - "$out/$name.tmp" "$@" <<'EOF'
import os, sys, zipfile
dest, rest = sys.argv[1], sys.argv[2:]
with zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED) as zf:
    for source, mode in zip(rest[0::2], rest[1::2]):
        info = zipfile.ZipInfo(os.path.basename(source), date_time=(1980, 1, 1, 0, 0, 0))
        info.compress_type = zipfile.ZIP_DEFLATED
        info.create_system = 3  # Unix, so that unzippers honour the mode bits below
        info.external_attr = (0o100000 | int(mode, 8)) << 16
        with open(source, "rb") as f:
            zf.writestr(info, f.read())
EOF
    if cmp -s "$out/$name.tmp" "$out/$name"; then
        rm "$out/$name.tmp"
    else
        mv "$out/$name.tmp" "$out/$name"
    fi
}

make_zip rust.zip "$bootstrap" 755
make_zip python.zip "$fns/python/handler.py" 644
make_zip node.zip "$fns/node/index.js" 644 "$fns/node/esm.mjs" 644

# The base layers of the image tests (tests/kvm_images.rs): each runtime image's files as an
# uncompressed tar (numeric owners), rebuilt when the runtime image changes.
base_layer() {
    local runtime="$1" image tarball dump
    image="$(dirname "$out")/runtimes/$runtime.ext4"
    tarball="$out/$runtime-root.tar"
    [[ -f "$image" ]] || { log "error: $image is missing (scripts/build-runtimes.sh)"; exit 1; }
    if [[ -f "$tarball" && "$tarball" -nt "$image" && -f "$tarball.gz" ]]; then
        return
    fi
    log "writing $tarball from $image"
    dump="$(mktemp -d "$out/dump.XXXXXX")"
    debugfs -R "rdump / $dump" "$image" >/dev/null 2>&1 || { log "error: debugfs could not dump $image"; exit 1; }
    rm -rf "$dump/lost+found"
    tar -C "$dump" --numeric-owner --owner=0 --group=0 -cf "$tarball.tmp" .
    rm -rf "$dump"
    # Also compressed, with the uncompressed digest (an image config's diff_id) beside it: the
    # tests push it as is, so that nothing compresses 100 MiB in the emulated host.
    sha256sum <"$tarball.tmp" | cut -d' ' -f1 >"$tarball.gz.diffid"
    gzip -1 -n -c "$tarball.tmp" >"$tarball.gz.tmp"
    mv "$tarball.gz.tmp" "$tarball.gz"
    mv "$tarball.tmp" "$tarball"
}
export PATH="$PATH:/usr/sbin:/sbin"
base_layer python3.11
base_layer nodejs20.x

for artifact in "$out/rust.zip" "$out/python.zip" "$out/node.zip" "$out/python3.11-root.tar.gz" "$out/nodejs20.x-root.tar.gz"; do
    bytes="$(stat -c %s "$artifact")"
    printf '%s %s (%s bytes)\n' "$artifact" "$(numfmt --to=iec-i --suffix=B "$bytes")" "$bytes"
done
