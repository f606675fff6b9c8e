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

populate() {
    ln -s python3.11 "$staging/usr/bin/python3"

    # `nis` is deprecated (gone in 3.13) and needs libnsl2 and libtirpc3, which pull in Kerberos.
    rm -f "$staging"/usr/lib/python3.11/lib-dynload/nis.cpython-311-*.so
    rm -rf "$staging"/usr/share/{applications,pixmaps,binfmts} "$staging/usr/lib/binfmt.d"

    # TLS roots as the one bundle OpenSSL's default paths point at: the job of
    # update-ca-certificates and of the openssl package's links on Debian.
    mkdir -p "$staging/etc/ssl/certs" "$staging/usr/lib/ssl"
    cat "$staging"/usr/share/ca-certificates/mozilla/*.crt >"$staging/etc/ssl/certs/ca-certificates.crt"
    rm -rf "$staging/usr/share/ca-certificates" "$staging/usr/sbin/update-ca-certificates" \
        "$staging/etc/ca-certificates"
    ln -s /etc/ssl/certs "$staging/usr/lib/ssl/certs"
    ln -s /etc/ssl/certs/ca-certificates.crt "$staging/usr/lib/ssl/cert.pem"
    ln -s /usr/share/zoneinfo/Etc/UTC "$staging/etc/localtime"
    echo Etc/UTC >"$staging/etc/timezone"
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

    log "$name: smoke-testing awslambdaric with tests/functions/python/handler.py"
    local as_root=() smoke_log="$work/smoke.log"
    [[ "$(id -u)" == 0 ]] || as_root=(sudo --preserve-env)
    install -m 0644 "$repo/tests/functions/python/handler.py" "$staging/var/task/handler.py"
    # smoke HANDLER EVENT EXPECT...: runs the handler in the image against the fake API.
    smoke() {
        local handler="$1"
        shift
        python3 "$repo/tests/functions/fake_runtime_api.py" "$@" \
            --env PYTHONPATH=/var/task --env PYTHONDONTWRITEBYTECODE=1 --env _HANDLER="$handler" \
            -- "${as_root[@]}" chroot "$staging" "$python" -m awslambdaric "$handler" >"$smoke_log" 2>&1 || {
            cat "$smoke_log" >&2
            die "awslambdaric failed the smoke test of $handler in the python3.11 image"
        }
    }
    smoke handler.echo \
        --event '{"hello": "world", "n": [1, 2.5, null]}' --expect '{"response": {"hello": "world", "n": [1, 2.5, null]}}' \
        --event '"again"' --expect '{"response": "again"}'
    smoke handler.fail --event '{}' --expect '{"error": {"errorType": "ValueError", "errorMessage": "boom"}}'
    rm -rf "${staging:?}/var/task"
    mkdir "$staging/var/task"
}
