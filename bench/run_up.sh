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

me=run_up
peer_package=supervisor
peer_command=supervisorctl
. "$(dirname "$0")/common.sh"

context "tether up benchmarks"
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

finish
