#!/usr/bin/env bash
# Debian's RabbitMQ for Ember's tests, benches and demo, run by whoever calls this (no service,
# no system user), with all its state in one directory:
#
#   scripts/rabbitmq.sh start      start the broker in the background (returns at once)
#   scripts/rabbitmq.sh wait [S]   wait until it answers AMQP (up to S seconds, default 600)
#   scripts/rabbitmq.sh stop-app   stop the broker application (rabbitmqctl stop_app): clients
#                                  are disconnected, the node stays up
#   scripts/rabbitmq.sh start-app  start it again (rabbitmqctl start_app)
#   scripts/rabbitmq.sh stop       stop the node (its whole process group)
#
# Environment: EMBER_RABBITMQ_DIR (default /tmp/ember-rabbitmq: its database, logs and Erlang
# cookie; it must be writable, so not the read-only root of the emulated host),
# EMBER_RABBITMQ_PORT (default 5672), EMBER_RABBITMQ_NICE (the broker's niceness, default 0:
# the test suite starts it at 19, so that its slow start takes only CPU the tests leave idle).
# Clients connect to
# amqp://guest:guest@127.0.0.1:$EMBER_RABBITMQ_PORT/%2f.
#
# Seen in the emulated KVM host (one TCG vCPU), 2026-12-03: the node answered AMQP 102 s after
# its start with the Erlang VM on one scheduler that does not busy-wait (156 s with Debian's
# defaults); stop_app took 12 s and start_app 20 s. So start it early, in the background.
set -euo pipefail

dir=${EMBER_RABBITMQ_DIR:-/tmp/ember-rabbitmq}
port=${EMBER_RABBITMQ_PORT:-5672}
node=ember-rabbit@localhost
# One scheduler without busy waiting: on a small (or emulated) host the spinning schedulers
# steal the CPU the tests need.
erl_args="+S 1:1 +sbwt none +sbwtdcpu none +sbwtdio none"

export HOME=$dir RABBITMQ_NODENAME=$node RABBITMQ_NODE_PORT=$port \
    RABBITMQ_MNESIA_BASE=$dir/mnesia RABBITMQ_LOG_BASE=$dir/log RABBITMQ_PID_FILE=$dir/pid \
    RABBITMQ_ENABLED_PLUGINS_FILE=$dir/enabled_plugins RABBITMQ_CONFIG_FILE=$dir/rabbitmq \
    RABBITMQ_ADVANCED_CONFIG_FILE=$dir/advanced.config RABBITMQ_CONF_ENV_FILE=$dir/rabbitmq-env.conf \
    RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS=$erl_args RABBITMQ_CTL_ERL_ARGS=$erl_args \
    RABBITMQ_DIST_PORT=$((port + 20000))
server=/usr/lib/rabbitmq/bin/rabbitmq-server
ctl=/usr/lib/rabbitmq/bin/rabbitmqctl

die() {
    echo "rabbitmq.sh: $*" >&2
    exit 1
}

# Signals the broker's process group (setsid made its first process the group's leader).
stop_group() {
    [ -f "$dir/group" ] || return 0
    kill -"$1" -- "-$(cat "$dir/group")" 2>/dev/null || true
    rm -f "$dir/group"
}

answers() {
    # The AMQP 0-9-1 header: a broker that is up answers with connection.start (a method frame,
    # type 1). In bash, not Python: a Python start costs seconds in the emulated host.
    timeout 5 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1" && printf "AMQP\0\0\11\1" >&3 &&
        [ "$(head -c1 <&3 | od -An -tx1 | tr -d " ")" = 01 ]' _ "$port" 2>/dev/null
}

case ${1:-} in
start)
    [ -x "$server" ] || die "rabbitmq-server is not installed (apt-get install rabbitmq-server)"
    # A broker an earlier run left (its starter was killed) goes first.
    stop_group KILL
    rm -rf "$dir"
    mkdir -p "$dir/log"
    echo '[].' >"$dir/enabled_plugins"
    : >"$dir/rabbitmq-env.conf"
    setsid nice -n "${EMBER_RABBITMQ_NICE:-0}" "$server" >"$dir/log/server.out" 2>&1 </dev/null &
    echo $! >"$dir/group"
    echo "rabbitmq.sh: starting on port $port (logs in $dir/log)" >&2
    ;;
wait)
    limit=${2:-600}
    start=$SECONDS
    until answers; do
        if [ $((SECONDS - start)) -ge "$limit" ]; then
            tail -20 "$dir/log/server.out" >&2 || true
            die "the broker did not answer on port $port within ${limit} s"
        fi
        sleep 1
    done
    echo "rabbitmq.sh: the broker answers on port $port" >&2
    ;;
stop-app) "$ctl" -n "$node" stop_app ;;
start-app) "$ctl" -n "$node" start_app ;;
stop) stop_group TERM ;;
*) die "usage: rabbitmq.sh start | wait [SECONDS] | stop-app | start-app | stop" ;;
esac
