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

me=run_all
peer_package=wait-for-it
peer_command=wait-for-it
. "$(dirname "$0")/common.sh"

context "tether wait benchmarks"
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

finish
