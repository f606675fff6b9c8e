# shellcheck shell=bash
# shellcheck disable=SC2034,SC2154 # variables shared with scripts/build-runtimes.sh
# Recipe of the python3.11 runtime image, sourced by scripts/build-runtimes.sh, which unpacks
# the Debian packages of ./packages and the wheels of ./requirements.txt, then calls populate
# and check (see README.md beside this file and ../README.md).

# The wheels: CPython 3.11, manylinux2014 (glibc 2.17+; the image has bookworm's 2.36),
# installed where Debian's python3.11 looks for packages.
wheel_python=3.11
wheel_platform=manylinux2014_x86_64
wheel_target=/usr/lib/python3/dist-packages

python=/usr/bin/python3.11
# PATH in the guest, as the agent sets it for the runtime (src/agent/pool/launch.rs); the build's
# in_image uses another one (/usr/bin:/bin:/usr/sbin:/sbin).
guest_path=/usr/local/bin:/usr/bin:/bin:/opt/bin

populate() {
    ln -s python3.11 "$staging/usr/bin/python3"

    # `nis` is deprecated (gone in 3.13) and needs libnsl2 and libtirpc3, which pull in Kerberos.
    rm -f "$staging"/usr/lib/python3.11/lib-dynload/nis.cpython-311-*.so
    rm -rf "$staging"/usr/share/{applications,pixmaps,binfmts} "$staging/usr/lib/binfmt.d"

    bundle_ca_certificates
    set_utc
    link_busybox_applets
}

# Checks, in the image and with the guest's PATH, that shell scripts run: `sh -c` with a pipe,
# Python's subprocess with shell=True, a #!/bin/sh script in /opt/bin (where a layer's bin/
# lands) called by name through a shell and from Python, and that every linked applet is on
# PATH. Nothing may write to /dev/null here: the chroot has no /dev, so that would create a
# file in the image.
check_shell() {
    log "$name: checking /bin/sh and the BusyBox commands"
    local out want applets=()
    # in_guest CMD...: CMD in the image with the guest's PATH and nothing else in its environment.
    in_guest() { in_image /usr/bin/env -i PATH="$guest_path" LANG=C.UTF-8 "$@"; }
    # expect WANT CMD...: CMD must succeed and print WANT (trailing newlines aside).
    expect() {
        local want="$1"
        shift
        out="$(in_guest "$@" 2>&1)" || die "the python3.11 image failed to run $*: $out"
        [[ "$out" == "$want" ]] || die "in the python3.11 image, $* printed '$out' instead of '$want'"
        log "$name: $* -> $out"
    }

    expect HI /bin/sh -c 'echo hi | tr a-z A-Z'
    # shellcheck disable=SC2016 # expanded by the image's shell
    expect 3 python3.11 -c 'import subprocess; print(subprocess.run("echo $((1+2))", shell=True, capture_output=True, text=True).stdout)'

    # A layer's script as a function calls it: by name, found on PATH, through a shell and
    # directly from Python (the kernel runs its #! line).
    mkdir -p "$staging/opt/bin"
    cat >"$staging/opt/bin/ember-check-sh" <<'SCRIPT'
#!/bin/sh
set -eu
dir=/tmp/ember-check-sh
mkdir -p "$dir/sub"
printf 'alpha\nbeta\ngamma\n' >"$dir/sub/words"
cat "$dir/sub/words" >"$dir/copy"
ls "$dir/sub" | grep -qx words
n="$(grep -c a "$dir/copy")"
b="$(sed -n 's/^b\(.*\)/B\1/p' "$dir/copy")"
last="$(sort -r "$dir/copy" | head -n 1 | awk '{ print toupper($0) }')"
rm -r "$dir"
test ! -e "$dir"
echo "$1: $n $b $last $(basename "$0")"
SCRIPT
    chmod 0755 "$staging/opt/bin/ember-check-sh"
    want="3 Beta GAMMA ember-check-sh"
    expect "sh: $want" /bin/sh -c 'ember-check-sh sh'
    expect "python: $want" python3.11 -c 'import subprocess; subprocess.run(["ember-check-sh", "python"], check=True)'
    rm -rf "${staging:?}/opt/bin"

    # Every linked applet (all but init and linuxrc) is an executable on the guest's PATH
    # (`which` looks only there, not at the shell's builtins).
    mapfile -t applets < <("$staging/bin/busybox" --list-full | sed 's#.*/##' | grep -vx -e init -e linuxrc)
    # shellcheck disable=SC2016 # expanded by the image's shell
    out="$(in_guest /bin/sh -c 'for a; do which "$a" >/tmp/found || echo "$a"; done; rm -f /tmp/found' sh "${applets[@]}")" ||
        die "the applet check failed in the python3.11 image: $out"
    [[ -z "$out" ]] || die "BusyBox applets not on the guest's PATH ($guest_path): $(tr "\n" " " <<<"$out")"
    log "$name: all ${#applets[@]} BusyBox applets but init and linuxrc are on the guest's PATH"
    [[ -z "$(find "$staging/tmp" "$staging/opt" "$staging/dev" -mindepth 1 -print -quit)" ]] ||
        die "the shell check left files in /tmp, /opt or /dev"
}

# Byte-compiles the standard library and the wheels (the root is read-only, so without .pyc
# files every cold start would compile the modules it imports again), then checks that the
# interpreter, its extension modules and the runtime interface client work, and finally runs
# tests/functions/python/handler.py under awslambdaric against a fake Runtime API.
check() {
    log "$name: byte-compiling the standard library and the wheels"
    # unchecked-hash: a .pyc that is never compared with its source's mtime, as fits a
    # read-only image. Serial (-j needs /dev/shm, which the chroot lacks).
    in_image "$python" -m compileall -q --invalidation-mode unchecked-hash \
        /usr/lib/python3.11 "$wheel_target" >&2 ||
        die "byte-compiling failed"

    in_image "$python" -W ignore::DeprecationWarning -c '
import awslambdaric, awslambdaric.bootstrap, runtime_client, simplejson, snapshot_restore_py
import json, uuid, ssl, sqlite3, ctypes, hashlib, zlib, bz2, lzma, decimal, zoneinfo, asyncio
import pyexpat, readline, curses, dbm.ndbm, crypt, multiprocessing, urllib.request
assert ssl.create_default_context().cert_store_stats()["x509_ca"] > 100, "no CA certificates"
assert zoneinfo.ZoneInfo("Europe/Paris").utcoffset(__import__("datetime").datetime(2024, 1, 1)).seconds == 3600
assert sqlite3.connect(":memory:").execute("select 1").fetchone() == (1,)
assert ctypes.CDLL(None).getpid() > 0
hashlib.sha256(b"x"); hashlib.md5(b"x")
import os, sys; assert sys.version_info[:2] == (3, 11), sys.version
stale = [m.__name__ for m in list(sys.modules.values()) if getattr(m, "__cached__", None) and not os.path.exists(m.__cached__)]
assert not stale, f"modules imported without a .pyc: {stale}"
print("python3.11 image:", sys.version.split()[0], ssl.OPENSSL_VERSION, "awslambdaric", awslambdaric.__version__)
' >&2 || die "the python3.11 image failed its import check"

    check_shell

    log "$name: smoke-testing awslambdaric with tests/functions/python/handler.py"
    install -m 0644 "$repo/tests/functions/python/handler.py" "$staging/var/task/handler.py"
    local env=(PYTHONPATH=/var/task PYTHONDONTWRITEBYTECODE=1)
    smoke_test handler.echo "${env[@]}" -- \
        --event '{"hello": "world", "n": [1, 2.5, null]}' --expect '{"response": {"hello": "world", "n": [1, 2.5, null]}}' \
        --event '"again"' --expect '{"response": "again"}'
    smoke_test handler.fail "${env[@]}" -- \
        --event '{}' --expect '{"error": {"errorType": "ValueError", "errorMessage": "boom"}}'
    rm -rf "${staging:?}/var/task"
    mkdir "$staging/var/task"
}
