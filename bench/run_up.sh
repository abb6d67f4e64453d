#!/usr/bin/env bash
# Builds tether in release, makes sure supervisord is installed, runs the three
# `tether up` benchmarks and prints their tables after the machine context.
# Every step runs under `timeout`. Exit 0 only when every step succeeded.
#
#   bench/run_up.sh [--quick] [--no-build] [--out DIR]
#
#   --quick     5 crashes, a 10 s idle window, 1 down run: checks the harness, not the numbers
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
            [ $# -ge 2 ] || { echo "run_up: --out needs a directory" >&2; exit 64; }
            out=$2
            shift
            ;;
        -h | --help) usage; exit 0 ;;
        *) echo "run_up: unknown argument $1" >&2; usage >&2; exit 64 ;;
    esac
    shift
done

status=0
tether="${CARGO_TARGET_DIR:-$root/target}/release/tether"
export TETHER_BIN="${TETHER_BIN:-$tether}"

explain() {
    case "$1" in
        1) echo "a run failed, or processes were left running" ;;
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
            echo "run_up: $name did not finish within ${limit}s" >&2
        elif [ "$1" = python3 ]; then
            echo "run_up: $name failed (exit $rc: $(explain "$rc"))" >&2
        else
            echo "run_up: $name failed (exit $rc)" >&2
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

if ! command -v supervisord >/dev/null 2>&1 || ! command -v supervisorctl >/dev/null 2>&1; then
    echo "== installing supervisor" >&2
    if [ "$(id -u)" -eq 0 ]; then
        sudo=()
    else
        sudo=(sudo -n)
    fi
    # Installing the package may try to start its system service; the
    # benchmarks start their own supervisord and never use that one.
    step "apt-get update" 600 "${sudo[@]}" apt-get update -q
    step "apt-get install" 600 "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q supervisor
fi

echo "# tether up benchmarks"
echo
echo "- date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
echo "- nproc: $(nproc)"
echo "- kernel: $(uname -r)"
echo "- cpu: $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)"
echo "- load average: $(cut -d' ' -f1-3 /proc/loadavg)"
if [ -x "$TETHER_BIN" ]; then
    echo "- tether: $(timeout 5 "$TETHER_BIN" --version 2>/dev/null || echo 'version unknown'), commit $(cd "$root" && git rev-parse --short HEAD 2>/dev/null || echo unknown)"
fi
echo "- supervisord: $(timeout 10 supervisord --version 2>/dev/null || echo 'not found') (Debian package $(dpkg-query -W -f '${Version}' supervisor 2>/dev/null || echo unknown))"
echo "- python (services, harness): $(/usr/bin/python3 --version 2>&1 || echo '?'), $(python3 --version 2>&1)"
echo

if [ "$quick" -eq 1 ]; then
    restart_args=(--crashes 5)
    idle_args=(--seconds 10)
    down_args=(--runs 1)
else
    restart_args=()
    idle_args=()
    down_args=()
fi

if [ -n "$out" ]; then
    restart_args+=(--json "$out/up_restart.json")
    idle_args+=(--json "$out/up_idle.json")
    down_args+=(--json "$out/up_down.json")
fi

step "up_restart.py" 1200 python3 "$here/up_restart.py" "${restart_args[@]}"
echo
step "up_idle.py" 900 python3 "$here/up_idle.py" "${idle_args[@]}"
echo
step "up_down.py" 900 python3 "$here/up_down.py" "${down_args[@]}"

if [ "$status" -ne 0 ]; then
    echo >&2
    echo "run_up: some steps failed, see above" >&2
fi
exit "$status"
