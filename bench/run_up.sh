#!/usr/bin/env bash
# Builds tether in release, makes sure its peers are installed (supervisord
# and s6 from Debian, pm2 from npm into .tools/bench-up-npm), runs the five
# `tether up` benchmarks and prints their tables after the machine context.
# Every step runs under `timeout`. Exit 0 only when every step succeeded.
#
#   bench/run_up.sh [--quick] [--no-build] [--out DIR]
#
#   --quick     5 crashes, 10 s idle, 1 down run, 3 s floods, 1 setsid run: checks the harness, not the numbers
#   --no-build  use target/release/tether as it is
#   --out DIR   also write each benchmark's raw numbers as JSON into DIR
set -u -o pipefail

me=run_up
peer_package="supervisor s6"
peer_command="supervisorctl s6-svscan"
. "$(dirname "$0")/common.sh"

# pm2, pinned, in a folder of its own (never global, never the tests'
# .tools/npm); a stamp makes it idempotent.
pm2_dir="$root/.tools/bench-up-npm"
want_pm2="pm2@7.0.4"
if [ "$(cat "$pm2_dir/.stamp" 2>/dev/null)" != "$want_pm2" ]; then
    echo "== installing $want_pm2 into $pm2_dir" >&2
    mkdir -p "$pm2_dir"
    [ -f "$pm2_dir/package.json" ] || echo '{"name":"tether-bench-up-peers","private":true}' >"$pm2_dir/package.json"
    step "npm install pm2" 600 npm install --prefix "$pm2_dir" --no-audit --no-fund --loglevel=error --save-exact "$want_pm2"
    [ -x "$pm2_dir/node_modules/.bin/pm2" ] && echo "$want_pm2" >"$pm2_dir/.stamp"
fi
export PM2_BIN="$pm2_dir/node_modules/.bin/pm2"

context "tether up benchmarks"
echo "- supervisord: $(timeout 10 supervisord --version 2>/dev/null || echo 'not found') (Debian package $(dpkg-query -W -f '${Version}' supervisor 2>/dev/null || echo unknown))"
echo "- s6: Debian package $(dpkg-query -W -f '${Version}' s6 2>/dev/null || echo 'not found')"
# Never `pm2 --version`: it starts a daemon in ~/.pm2.
echo "- pm2: $(sed -n 's/^ *"version": *"\([^"]*\)".*/\1/p' "$pm2_dir/node_modules/pm2/package.json" 2>/dev/null | head -n 1 || echo 'not found') (npm, $pm2_dir), node $(timeout 10 node --version 2>/dev/null || echo 'not found')"
echo "- python (services, harness): $(/usr/bin/python3 --version 2>&1 || echo '?'), $(python3 --version 2>&1)"
echo

if [ "$quick" -eq 1 ]; then
    restart_args=(--crashes 5)
    idle_args=(--seconds 10)
    down_args=(--runs 1)
    floods_args=(--seconds 3)
    setsid_args=(--runs 1)
else
    restart_args=()
    idle_args=()
    down_args=()
    floods_args=()
    setsid_args=()
fi

if [ -n "$out" ]; then
    restart_args+=(--json "$out/up_restart.json")
    idle_args+=(--json "$out/up_idle.json")
    down_args+=(--json "$out/up_down.json")
    floods_args+=(--json "$out/up_floods.json")
    setsid_args+=(--json "$out/up_setsid.json")
fi

step "up_restart.py" 1200 python3 "$here/up_restart.py" "${restart_args[@]}"
echo
step "up_idle.py" 900 python3 "$here/up_idle.py" "${idle_args[@]}"
echo
step "up_down.py" 900 python3 "$here/up_down.py" "${down_args[@]}"
echo
step "up_floods.py" 900 python3 "$here/up_floods.py" "${floods_args[@]}"
echo
step "up_setsid.py" 900 python3 "$here/up_setsid.py" "${setsid_args[@]}"

finish
