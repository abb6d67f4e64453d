#!/usr/bin/env bash
# Builds tether in release, makes sure wait-for-it is installed, runs the three
# `tether wait` benchmarks and prints their tables after the machine context.
# Every step runs under `timeout`. Exit 0 only when every step succeeded.
#
#   bench/run_all.sh [--quick] [--no-build] [--out DIR]
#
#   --quick     few runs and a 3 s CPU wait: checks the harness, not the numbers
#   --no-build  use target/release/tether as it is
#   --out DIR   also write each benchmark's raw numbers as JSON into DIR
set -u -o pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
quick=0
build=1
out=""

usage() {
    sed -n '2,11s/^# \{0,1\}//p' "$0"
}

while [ $# -gt 0 ]; do
    case "$1" in
        --quick) quick=1 ;;
        --no-build) build=0 ;;
        --out)
            [ $# -ge 2 ] || { echo "run_all: --out needs a directory" >&2; exit 64; }
            out=$2
            shift
            ;;
        -h | --help) usage; exit 0 ;;
        *) echo "run_all: unknown argument $1" >&2; usage >&2; exit 64 ;;
    esac
    shift
done

status=0
# The scripts find the binary through TETHER_BIN; follow cargo's own override.
tether="${CARGO_TARGET_DIR:-$root/target}/release/tether"
export TETHER_BIN="${TETHER_BIN:-$tether}"

# The benchmark scripts' exit codes.
explain() {
    case "$1" in
        1) echo "a run failed" ;;
        2) echo "a tool is missing" ;;
        3) echo "a goal was missed" ;;
        *) echo "unexpected" ;;
    esac
}

# step NAME SECONDS CMD...: runs CMD under a time limit, notes a failure and
# goes on, so one broken step still leaves the others' numbers.
step() {
    local name=$1 limit=$2
    shift 2
    timeout --kill-after=10 "$limit" "$@"
    local rc=$?
    if [ "$rc" -ne 0 ]; then
        if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
            echo "run_all: $name did not finish within ${limit}s" >&2
        elif [ "$1" = python3 ]; then
            echo "run_all: $name failed (exit $rc: $(explain "$rc"))" >&2
        else
            echo "run_all: $name failed (exit $rc)" >&2
        fi
        status=1
    fi
    return 0
}

if [ -n "$out" ]; then
    mkdir -p "$out" || exit 1
fi

if [ "$build" -eq 1 ]; then
    echo "== building tether (release)" >&2
    step "cargo build" 3600 cargo build --release -p tether-cli --manifest-path "$root/Cargo.toml"
    [ -x "$TETHER_BIN" ] || status=1
fi

if ! command -v wait-for-it >/dev/null 2>&1; then
    echo "== installing wait-for-it" >&2
    if [ "$(id -u)" -eq 0 ]; then
        sudo=()
    else
        sudo=(sudo -n)
    fi
    step "apt-get update" 600 "${sudo[@]}" apt-get update -q
    step "apt-get install" 600 "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q wait-for-it
fi

echo "# tether wait benchmarks"
echo
echo "- date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
echo "- nproc: $(nproc)"
echo "- kernel: $(uname -r)"
echo "- cpu: $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)"
echo "- load average: $(cut -d' ' -f1-3 /proc/loadavg)"
if [ -x "$TETHER_BIN" ]; then
    echo "- tether: $(timeout 5 "$TETHER_BIN" --version 2>/dev/null || echo 'version unknown'), commit $(cd "$root" && git rev-parse --short HEAD 2>/dev/null || echo unknown)"
fi
echo "- wait-for-it: $(dpkg-query -W -f '${Version}' wait-for-it 2>/dev/null || echo 'version unknown')"
echo

if [ "$quick" -eq 1 ]; then
    latency_args=(--runs 6)
    startup_args=(--runs 40 --peer-runs 10)
    cpu_args=(--seconds 3)
else
    latency_args=()
    startup_args=()
    cpu_args=()
fi

if [ -n "$out" ]; then
    latency_args+=(--json "$out/latency.json")
    startup_args+=(--json "$out/startup.json")
    cpu_args+=(--json "$out/cpu.json")
fi

step "wait_latency.py" 1800 python3 "$here/wait_latency.py" "${latency_args[@]}"
echo
step "wait_startup.py" 600 python3 "$here/wait_startup.py" "${startup_args[@]}"
echo
step "wait_cpu.py" 600 python3 "$here/wait_cpu.py" "${cpu_args[@]}"
echo
echo "## Check: a server that accepts and closes at once is ready"
echo
# Not a benchmark but a check that belongs beside it: a server that accepts
# and closes at once (one that turns clients away) is still a server that
# accepts, and tether must see it as ready.
step "wait_latency.py --server close" 300 python3 "$here/wait_latency.py" \
    --server close --runs 3 --tools tether --no-probe-rate

if [ "$status" -ne 0 ]; then
    echo >&2
    echo "run_all: some steps failed, see above" >&2
fi
exit "$status"
