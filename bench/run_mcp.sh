#!/usr/bin/env bash
# tether mcp beside mcp-proxy, supergateway and mcp-remote (bench/mcp_proxies.py),
# or, with --resume, the first call after a long stall (bench/mcp_resume.py;
# arguments after -- go to it).
# Installs the peers, pinned, into .tools/bench-venv and .tools/bench-npm
# (idempotently), builds tether in release mode, then runs the benchmark.
#
#   bench/run_mcp.sh [--quick] [--no-build] [--resume [-- --stall 60 --rounds 3]]
set -euo pipefail
cd "$(dirname "$0")/.."
tools=.tools
build=1
bench=bench/mcp_proxies.py
args=()
while [ $# -gt 0 ]; do
    case "$1" in
        --no-build) build=0 ;;
        --quick) args+=(--quick) ;;
        --resume) bench=bench/mcp_resume.py ;;
        --) shift; args+=("$@"); break ;;
        *) echo "run_mcp.sh: unknown argument $1" >&2; exit 64 ;;
    esac
    shift
done

[ -x "$tools/venv/bin/python" ] || { echo "run_mcp.sh: run ./scripts/test once first (it installs the MCP SDK and server-everything)" >&2; exit 1; }

want_py="mcp-proxy==0.13.0"
if [ "$(cat "$tools/bench-venv/.stamp" 2>/dev/null)" != "$want_py" ]; then
    python3 -m venv "$tools/bench-venv"
    "$tools/bench-venv/bin/pip" install --quiet --disable-pip-version-check "$want_py"
    echo "$want_py" > "$tools/bench-venv/.stamp"
fi
want_npm="supergateway@4.0.0 mcp-remote@0.15.1"
if [ "$(cat "$tools/bench-npm/.stamp" 2>/dev/null)" != "$want_npm" ]; then
    mkdir -p "$tools/bench-npm"
    [ -f "$tools/bench-npm/package.json" ] || echo '{"name":"tether-bench-peers","private":true}' > "$tools/bench-npm/package.json"
    # shellcheck disable=SC2086 # two packages, split on purpose
    npm install --prefix "$tools/bench-npm" --no-audit --no-fund --loglevel=error --save-exact $want_npm
    echo "$want_npm" > "$tools/bench-npm/.stamp"
fi
if [ "$build" = 1 ]; then
    cargo build --release -p tether-cli
fi
exec timeout 1800 "$tools/venv/bin/python" "$bench" "${args[@]}"
