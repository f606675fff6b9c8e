#!/usr/bin/env bash
# scripts/fuzz.sh [--seconds N] [--jobs J] [--verbose] [TARGET...]
# Builds Ember's cargo-fuzz targets (fuzz/, see fuzz/README.md) and runs each TARGET (default:
# every target in fuzz/Cargo.toml) for N seconds (default 60), one after the other. cargo-fuzz
# is installed first if it is missing (`cargo install cargo-fuzz --locked`); the targets are
# built on the stable toolchain with RUSTC_BOOTSTRAP=1, in release mode with AddressSanitizer
# (cargo-fuzz's defaults).
#
# Each target runs with libFuzzer's -max_total_time=N, -rss_limit_mb=2048 and -timeout=30 (an
# input that takes longer is a hang), on its corpus in fuzz/corpus/<target>/ (kept between runs),
# starting also from the inputs in fuzz/seeds/<target>/ when there are some. libFuzzer's own
# output goes to fuzz/logs/<target>.log (the build's to fuzz/logs/build.log); --verbose sends
# both to stderr as well. Crashing inputs land in fuzz/artifacts/<target>/.
#
# Several may run at once on different targets (their builds take turns). --jobs J (default 1)
# runs J libFuzzer processes side by side on each target for the N seconds (libFuzzer's -jobs=J
# -workers=J: one corpus, which each reloads to take up what the others found), for a machine's
# other cores; their logs are appended to the target's log.
#
# stdout gets exactly one line per target, in this format (other tools parse it):
#   fuzz target=<name> execs=<n> crashes=<n> seconds=<s>
# execs is libFuzzer's final count of executed inputs (with --jobs, the sum of the processes'
# counts), crashes the number of crash, leak,
# timeout and out-of-memory inputs it wrote in this run, seconds the run's wall time.
# Exits 1 if any target crashed (or failed to run), 2 on a usage error.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib.sh
. "$here/lib.sh"

fuzz_dir=$ember_repo/fuzz

usage() {
    sed -n '2,3p' "$0" | sed 's/^# //' >&2
    exit 2
}

seconds=60 jobs=1 verbose= targets=()
while [ $# -gt 0 ]; do
    case $1 in
    --seconds) seconds=${2:-}; [ $# -ge 2 ] || usage; shift 2 ;;
    --seconds=*) seconds=${1#--seconds=}; shift ;;
    --jobs) jobs=${2:-}; [ $# -ge 2 ] || usage; shift 2 ;;
    --jobs=*) jobs=${1#--jobs=}; shift ;;
    -v | --verbose) verbose=1; shift ;;
    -h | --help) usage ;;
    -*) echo "fuzz.sh: unknown option $1" >&2; usage ;;
    *) targets+=("$1"); shift ;;
    esac
done
case $seconds in
'' | *[!0-9]*) echo "fuzz.sh: --seconds needs a whole number of seconds, not '$seconds'" >&2; exit 2 ;;
esac
[ "$seconds" -gt 0 ] || { echo "fuzz.sh: --seconds must be at least 1" >&2; exit 2; }
case $jobs in
'' | *[!0-9]* | 0) echo "fuzz.sh: --jobs needs a whole number of processes, at least 1, not '$jobs'" >&2; exit 2 ;;
esac

# Every [[bin]] of the fuzz crate is a target.
mapfile -t all < <(awk '/^\[\[bin\]\]/ { bin = 1; next } /^\[/ { bin = 0 } bin && /^name *=/ { gsub(/.*= *"|".*/, ""); print }' "$fuzz_dir/Cargo.toml")
[ ${#all[@]} -gt 0 ] || { echo "fuzz.sh: no targets in $fuzz_dir/Cargo.toml" >&2; exit 1; }
if [ ${#targets[@]} -eq 0 ]; then
    targets=("${all[@]}")
fi
for t in "${targets[@]}"; do
    if ! printf '%s\n' "${all[@]}" | grep -qxF -- "$t"; then
        echo "fuzz.sh: no target '$t'; the targets are: ${all[*]}" >&2
        exit 2
    fi
done

# Quiet by default: logs to files; with --verbose, to stderr too.
to_log() {
    if [ -n "$verbose" ]; then
        tee "$1" >&2
    else
        cat >"$1"
    fi
}

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz.sh: installing cargo-fuzz" >&2
    cargo install cargo-fuzz --locked >&2
fi

export RUSTC_BOOTSTRAP=1
mkdir -p "$fuzz_dir/logs"
build_log=$fuzz_dir/logs/build.log
# One build at a time (another fuzz.sh may be running other targets): the build log is shared.
exec 9>"$fuzz_dir/logs/.build.lock"
flock 9
echo "fuzz.sh: building ${targets[*]} (log: $build_log)" >&2
: >"$build_log"
for t in "${targets[@]}"; do
    if ! (cd "$fuzz_dir" && cargo fuzz build -O "$t") 2>&1 | to_log "$build_log.part"; then
        cat "$build_log.part" >>"$build_log"
        rm -f "$build_log.part"
        [ -n "$verbose" ] || tail -n 40 "$build_log" >&2
        echo "fuzz.sh: building $t failed (log: $build_log)" >&2
        exit 1
    fi
    cat "$build_log.part" >>"$build_log"
    rm -f "$build_log.part"
done
flock -u 9

# The artifacts libFuzzer wrote into $1 for failing inputs (by their names' prefixes) since $2
# was touched. An input that failed before has the same name: its file is written again.
new_artifacts() {
    find "$1" -maxdepth 1 -type f \( -name 'crash-*' -o -name 'leak-*' -o -name 'timeout-*' -o -name 'oom-*' \) \
        -newer "$2" | wc -l
}

# libFuzzer's final count of executed inputs in log $1 (0 if it has none).
final_count() {
    local n
    n=$(sed -n 's/^stat::number_of_executed_units: *\([0-9][0-9]*\).*/\1/p' "$1" | tail -n 1)
    echo "${n:-0}"
}

stamp=$(mktemp)
trap 'rm -f "$stamp"' EXIT

failed=0
for t in "${targets[@]}"; do
    corpus=$fuzz_dir/corpus/$t
    artifacts=$fuzz_dir/artifacts/$t
    seeds=$fuzz_dir/seeds/$t
    log=$fuzz_dir/logs/$t.log
    mkdir -p "$corpus" "$artifacts"
    dirs=("$corpus")
    if [ -d "$seeds" ]; then
        dirs+=("$seeds")
    fi
    # Where the fuzzer runs: with --jobs, libFuzzer writes each process's log there
    # (fuzz-<job>.log).
    work=$fuzz_dir
    parallel=()
    if [ "$jobs" -gt 1 ]; then
        work=$fuzz_dir/logs/$t.jobs
        rm -rf "$work"
        mkdir -p "$work"
        parallel=(-jobs="$jobs" -workers="$jobs")
    fi
    touch "$stamp"
    start=$(date +%s)
    status=0
    (cd "$work" && cargo fuzz run --fuzz-dir "$fuzz_dir" -O "$t" "${dirs[@]}" -- \
        -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=30 -print_final_stats=1 \
        "${parallel[@]}" -artifact_prefix="$artifacts/") 2>&1 | to_log "$log" || status=$?
    elapsed=$(($(date +%s) - start))
    crashes=$(new_artifacts "$artifacts" "$stamp")
    # Each process's final count, summed; with --jobs, their logs follow the target's.
    if [ "$jobs" -gt 1 ]; then
        execs=0
        for l in "$work"/fuzz-*.log; do
            [ -f "$l" ] || continue
            execs=$((execs + $(final_count "$l")))
            { echo "== $(basename "$l")"; cat "$l"; } >>"$log"
        done
        rm -rf "$work"
    else
        execs=$(final_count "$log")
    fi
    echo "fuzz target=$t execs=$execs crashes=$crashes seconds=$elapsed"
    if [ "$crashes" -gt 0 ]; then
        failed=1
        echo "fuzz.sh: $t: $crashes new input(s) in $artifacts (log: $log)" >&2
    elif [ "$status" -ne 0 ]; then
        failed=1
        echo "fuzz.sh: $t: the run failed with status $status (log: $log)" >&2
    fi
done
exit "$failed"
