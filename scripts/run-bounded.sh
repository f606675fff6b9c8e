#!/usr/bin/env bash
# scripts/run-bounded.sh SECS CMD [ARGS...]: runs CMD, and if it is still running after SECS
# seconds, prints what the host's Ember processes are doing (each process and thread, its state
# and kernel wait channel, the agent's kernel stacks where readable, the VMMs' cgroups) and kills
# it, exiting 124. Otherwise it exits with CMD's status, after a line `run-bounded: NAME took
# N s`.
# scripts/test.sh runs each KVM test binary under it, so that a test that hangs fails CI with
# the clues to why, instead of running into CI's own limit.
set -u
limit=${1:?usage: run-bounded.sh SECS CMD [ARGS...]}
shift
"$@" &
pid=$!
deadline=$((SECONDS + limit))
while kill -0 "$pid" 2>/dev/null; do
    if [ "$SECONDS" -ge "$deadline" ]; then
        echo "run-bounded: $(basename "$1") still running after ${limit} s; the host's state:"
        cat /proc/loadavg
        # Every thread of every Ember process (VMMs' vCPU and device threads included).
        ps -eLo pid,tid,ppid,stat,etime,time,wchan:32,comm,args | grep -E 'ember|kvm_|PID' | grep -v grep
        for agent in $(pgrep -f 'ember serve'); do
            for task in /proc/"$agent"/task/*; do
                echo "agent $agent thread ${task##*/} $(cat "$task/comm") state=$(cut -d' ' -f3 "$task/stat") wchan=$(cat "$task/wchan")"
                head -n 12 "$task/stack" 2>/dev/null | sed 's/^/    /'
            done
        done
        # The agents' VMM cgroups (/sys/fs/cgroup/ember-*/vmm-*): who is in each, its CPU
        # controls and how much it was throttled.
        for cg in /sys/fs/cgroup/ember-*/vmm-*; do
            [ -d "$cg" ] || continue
            echo "cgroup ${cg#/sys/fs/cgroup/}: procs=$(tr '\n' ' ' <"$cg/cgroup.procs" 2>/dev/null)" \
                "cpu.max=$(cat "$cg/cpu.max" 2>/dev/null) cpu.weight=$(cat "$cg/cpu.weight" 2>/dev/null)" \
                "$(grep -E '^(usage_usec|nr_throttled|throttled_usec)' "$cg/cpu.stat" 2>/dev/null | tr '\n' ' ')"
        done
        kill -9 "$pid" 2>/dev/null
        pkill -9 -f 'ember (serve|vmm)' 2>/dev/null
        wait "$pid" 2>/dev/null
        exit 124
    fi
    sleep 2
done
wait "$pid"
status=$?
echo "run-bounded: $(basename "$1") took $((SECONDS - deadline + limit)) s"
exit "$status"
