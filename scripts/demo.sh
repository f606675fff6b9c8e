#!/usr/bin/env bash
# The main job, end to end: start the agent (`ember serve`) on a KVM host (the emulated one where
# this machine has no hardware KVM), deploy a sample Python function (examples/python-hello,
# run by awslambdaric) and a sample provided.al2023 function (a Rust `bootstrap` built with the
# lambda_runtime crate), invoke each cold and then warm through the `ember` CLI, and show their
# results and REPORT lines; then the release workflow: publish a version of the Rust function,
# point an alias at it and invoke through the alias.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib.sh
. "$here/lib.sh"
cd "$ember_repo"

scripts/build-guest.sh >/dev/null
cargo build --release --locked --bin ember >&2
exe=$ember_exe
work=$(mktemp -d "$ember_repo/target/demo.XXXXXX")
trap 'rm -rf "$work"' EXIT
python3 - "$work/python-hello.zip" examples/python-hello/handler.py <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1], "w", zipfile.ZIP_DEFLATED) as z:
    z.write(sys.argv[2], "handler.py")
PY

# What runs on the KVM host: the agent, then the ember CLI against its socket.
cat >"$work/demo-inner.sh" <<INNER
set -euo pipefail
exe=$(printf '%q' "$exe")
run=\$(mktemp -d /tmp/ember-demo.XXXXXX)
export EMBER_SOCKET=\$run/ember.sock
"\$exe" serve --socket "\$EMBER_SOCKET" --data-dir "\$run/data" --init-timeout-s 120 2>"\$run/agent.log" &
agent=\$!
trap 'kill \$agent 2>/dev/null; rm -rf "\$run"' EXIT
for _ in \$(seq 100); do [ -S "\$EMBER_SOCKET" ] && break; sleep 0.1; done
show() { echo; echo "\$ ember \$*"; "\$exe" "\$@"; }
show create-function --function-name hello-python --runtime python3.11 --handler handler.handler \\
    --zip-file $(printf '%q' "$work/python-hello.zip") --memory-size 256 --timeout 30 >/dev/null
show create-function --function-name echo-rust --runtime provided.al2023 --handler bootstrap \\
    --zip-file $(printf '%q' "$ember_repo/target/guest/functions/rust.zip") --timeout 30 >/dev/null
show list-functions
for f in hello-python echo-rust; do
    for start in cold warm; do
        echo; echo "== \$f (\$start)"
        show invoke --function-name "\$f" --payload '{"name": "Ember"}' --log-type Tail
    done
done
echo; echo "== the REPORT lines"
for f in hello-python echo-rust; do "\$exe" logs --function-name "\$f" | grep '^REPORT'; done
echo; echo "== a release: version 1 of echo-rust, the alias live on it"
show publish-version --function-name echo-rust --description "first release" | grep -E '"(Version|Description|CodeSha256)"'
show create-alias --function-name echo-rust --name live --function-version 1
show invoke --function-name echo-rust --qualifier live --payload '{"via": "alias live"}'
show list-versions-by-function --function-name echo-rust | grep '"Version"'
INNER
ember_on_kvm_host bash "$work/demo-inner.sh"
