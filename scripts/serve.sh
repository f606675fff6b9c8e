#!/usr/bin/env bash
# scripts/serve.sh --port N --data-dir DIR [--url-listen 127.0.0.1:M] [--rabbitmq]
#                  [ember serve options...]
# Runs the agent (`ember serve`) on a KVM host until it is stopped (Ctrl-C, SIGTERM, SIGKILL;
# what it started dies with it):
# directly where this machine has hardware KVM, else inside the emulated KVM host with
# 127.0.0.1:N forwarded to it and DIR kept on this machine's disk (so it outlives the emulated
# host). Tools here (boto3, the aws CLI, curl, `ember --endpoint http://127.0.0.1:N`) reach the
# agent at 127.0.0.1:N once this prints `serve.sh: ready: the agent answers on
# http://127.0.0.1:N` (on stdout). The agent's Unix socket is <run dir>/ember.sock on the KVM
# host.
# With --url-listen 127.0.0.1:M the agent serves function URLs there, and M is forwarded too
# (curl http://127.0.0.1:M/<url-id>/... reaches them).
# With --rabbitmq, Debian's RabbitMQ is started on the KVM host too (scripts/rabbitmq.sh; its
# queues last as long as the host), the agent is given --amqp-url for it, and its port 5672 is
# forwarded (pika here reaches amqp://guest:guest@127.0.0.1:5672/%2f).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib.sh
. "$here/lib.sh"

port= data_dir= extra=() fwd=() rabbitmq=
while [ $# -gt 0 ]; do
    case $1 in
    --port) port=${2:?--port needs a value}; shift 2 ;;
    --data-dir) data_dir=${2:?--data-dir needs a value}; shift 2 ;;
    --url-listen)
        url=${2:?--url-listen needs ADDR:PORT}
        extra+=(--url-listen "$url")
        fwd+=(--fwd "${url##*:}")
        shift 2
        ;;
    --rabbitmq)
        rabbitmq=1
        extra+=(--amqp-url 'amqp://guest:guest@127.0.0.1:5672/%2f')
        fwd+=(--fwd 5672)
        shift
        ;;
    *) extra+=("$1"); shift ;;
    esac
done
[ -n "$port" ] && [ -n "$data_dir" ] || { echo "usage: scripts/serve.sh --port N --data-dir DIR" >&2; exit 2; }
mkdir -p "$data_dir"
data_dir=$(cd "$data_dir" && pwd)

cd "$ember_repo"
scripts/build-guest.sh >/dev/null
cargo build --release --locked --bin ember >&2
exe=$ember_exe
# The socket lives on the KVM host's own /run (not on a share).
cmd=("$exe" serve --socket /run/ember/ember.sock --data-dir "$data_dir" --listen "127.0.0.1:$port" "${extra[@]}")
if [ -n "$rabbitmq" ]; then
    # The broker first, in the background: the agent connects when it answers.
    cmd=(bash -c '"$0" start && exec "$@"' "$ember_repo/scripts/rabbitmq.sh" "${cmd[@]}")
fi

if ember_have_hw_kvm; then
    run=("${cmd[@]}")
else
    run=(env "EMBER_L1_RW=${EMBER_L1_RW:-} $data_dir" "$ember_repo/scripts/kvm-host.sh" --timeout 86400
        --fwd "$port" "${fwd[@]}" -- "${cmd[@]}")
fi
# In the background, getting SIGKILL when this script ends, however it ends (kvm-host.sh's QEMU
# dies with kvm-host.sh the same way), so that no agent outlives it to hold the port and the
# data dir. SIGTERM and Ctrl-C are passed on, for a clean stop.
setpriv --pdeathsig KILL -- "${run[@]}" &
child=$!
trap 'kill -TERM "$child" 2>/dev/null' TERM INT HUP
# Ready once the agent answers on the port: the emulated host's forward accepts connections
# as soon as QEMU starts, before the agent listens, and closes them unanswered.
until [ "$(curl -s -o /dev/null --max-time 5 -w '%{http_code}' "http://127.0.0.1:$port/2015-03-31/functions/")" != 000 ]; do
    if ! kill -0 "$child" 2>/dev/null; then
        wait "$child" && exit 0 || exit $?
    fi
    sleep 0.5
done
echo "serve.sh: ready: the agent answers on http://127.0.0.1:$port"
# `wait` returns early when a trapped signal comes; wait again for the agent's own status.
while :; do
    wait "$child" && status=0 || status=$?
    kill -0 "$child" 2>/dev/null || exit "$status"
done
