#!/usr/bin/env bash
# Builds tether in release, makes sure its peers are installed (haproxy,
# socat and iperf3 from Debian), prints the machine context and the peers'
# versions, and runs the `tether proxy` benchmarks (bench/proxy.py) under
# `timeout`. Exit 0 only when every step succeeded.
#
#   bench/run_proxy.sh [--quick] [--no-build] [--out DIR]
#
#   --quick     1 iperf3 run of 2 s, 1,000 connections, 1 outage round, 3 restarts: checks the harness
#   --no-build  use target/release/tether (or $CARGO_TARGET_DIR's) as it is
#   --out DIR   also write the raw numbers as JSON into DIR
set -u -o pipefail

me=run_proxy
peer_package="haproxy socat iperf3"
peer_command="haproxy socat iperf3"
. "$(dirname "$0")/common.sh"

context "tether proxy benchmarks"
echo "- haproxy: $(timeout 5 haproxy -v 2>/dev/null | head -n 1 || echo 'not found') (Debian package $(dpkg-query -W -f '${Version}' haproxy 2>/dev/null || echo unknown))"
echo "- socat: $(timeout 5 socat -V 2>/dev/null | sed -n 's/^socat version \([^ ]*\).*/\1/p' | head -n 1 || echo 'not found') (Debian package $(dpkg-query -W -f '${Version}' socat 2>/dev/null || echo unknown))"
echo "- iperf3: $(timeout 5 iperf3 --version 2>/dev/null | head -n 1 || echo 'not found') (Debian package $(dpkg-query -W -f '${Version}' iperf3 2>/dev/null || echo unknown))"
echo "- python (harness, echo servers): $(python3 --version 2>&1)"
echo "- descriptors: soft $(ulimit -Sn), hard $(ulimit -Hn)"
echo

# 20,000 descriptors: 8,000 clients here, 16,000 in the proxy. proxy.py
# raises its own limit too; this covers a hard limit that allows more.
ulimit -n 20000 2>/dev/null || true

if [ "$quick" -eq 1 ]; then
    args=(--iperf-runs 1 --iperf-seconds 2 --iperf-extra-seconds 1 --round-trips 2000 --warmup 100
        --connections 1000 --outage-rounds 1 --restarts 3)
else
    args=()
fi
if [ -n "$out" ]; then
    args+=(--json "$out/proxy.json")
fi

step "proxy.py" 900 python3 "$here/proxy.py" "${args[@]}"

finish
