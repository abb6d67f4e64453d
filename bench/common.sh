# Shared by run_all.sh (tether wait) and run_up.sh (tether up): arguments, a
# bounded step runner, the release build, the peers' installation and the
# machine context. Source it after setting `me` (the runner's name) and
# `peer_package` / `peer_command` (the Debian packages to install when their
# commands are missing: space-separated lists, one command per package).
#
#   [--quick] [--no-build] [--out DIR]

here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
quick=0
build=1
out=""
status=0

usage() {
    sed -n '2,11s/^# \{0,1\}//p' "$0"
}

while [ $# -gt 0 ]; do
    case "$1" in
        --quick) quick=1 ;;
        --no-build) build=0 ;;
        --out)
            [ $# -ge 2 ] || { echo "$me: --out needs a directory" >&2; exit 64; }
            out=$2
            shift
            ;;
        -h | --help) usage; exit 0 ;;
        *) echo "$me: unknown argument $1" >&2; usage >&2; exit 64 ;;
    esac
    shift
done

# The scripts find the binary through TETHER_BIN; follow cargo's own override.
tether="${CARGO_TARGET_DIR:-$root/target}/release/tether"
export TETHER_BIN="${TETHER_BIN:-$tether}"

# The benchmark scripts' exit codes.
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
            echo "$me: $name did not finish within ${limit}s" >&2
        elif [ "$1" = python3 ]; then
            echo "$me: $name failed (exit $rc: $(explain "$rc"))" >&2
        else
            echo "$me: $name failed (exit $rc)" >&2
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

read -r -a peer_packages <<<"$peer_package"
read -r -a peer_commands <<<"$peer_command"
to_install=()
for i in "${!peer_packages[@]}"; do
    if ! command -v "${peer_commands[$i]}" >/dev/null 2>&1; then
        to_install+=("${peer_packages[$i]}")
    fi
done
if [ "${#to_install[@]}" -gt 0 ]; then
    echo "== installing ${to_install[*]}" >&2
    if [ "$(id -u)" -eq 0 ]; then
        sudo=()
    else
        sudo=(sudo -n)
    fi
    # Installing a package may try to start its system service; the
    # benchmarks start their own peers and never use that one.
    step "apt-get update" 600 "${sudo[@]}" apt-get update -q
    step "apt-get install" 600 "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${to_install[@]}"
fi

# context TITLE: the heading and the machine the numbers come from.
context() {
    echo "# $1"
    echo
    echo "- date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "- nproc: $(nproc)"
    echo "- kernel: $(uname -r)"
    echo "- cpu: $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)"
    echo "- load average: $(cut -d' ' -f1-3 /proc/loadavg)"
    if [ -x "$TETHER_BIN" ]; then
        echo "- tether: $(timeout 5 "$TETHER_BIN" --version 2>/dev/null || echo 'version unknown'), commit $(cd "$root" && git rev-parse --short HEAD 2>/dev/null || echo unknown)"
    fi
}

# finish: the exit status, after saying whether some step failed.
finish() {
    if [ "$status" -ne 0 ]; then
        echo >&2
        echo "$me: some steps failed, see above" >&2
    fi
    exit "$status"
}
