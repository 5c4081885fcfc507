#!/usr/bin/env bash
# Side-by-side benchmark of WebTorrent trackers over loopback: ours (p2p-mediastream),
# aquatic_ws and the reference bittorrent-tracker (npm), driven by our `loadtest`.
# The work is done by scripts/bench-trackers.py (Python 3.11+, standard library only);
# this wrapper checks the prerequisites, runs it, and makes sure that nothing it started
# outlives it. `scripts/bench-trackers.sh --help` lists the options.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
orchestrator="$repo/scripts/bench-trackers.py"
children_file="$repo/target/bench/.bench-trackers.children"
py_pid=""

# shellcheck disable=SC2317 # invoked by the EXIT trap only
cleanup() {
    local status=$?
    trap - EXIT INT TERM HUP
    if [[ -n "$py_pid" ]] && kill -0 "$py_pid" 2>/dev/null; then
        # The orchestrator stops its servers and load tester itself on SIGTERM.
        kill -TERM "$py_pid" 2>/dev/null || true
        for _ in $(seq 1 30); do
            kill -0 "$py_pid" 2>/dev/null || break
            sleep 1
        done
        kill -KILL "$py_pid" 2>/dev/null || true
    fi
    # Whatever process groups it could not stop (e.g. it was SIGKILLed) are listed here.
    if [[ -f "$children_file" ]]; then
        while read -r pgid; do
            [[ "$pgid" =~ ^[0-9]+$ ]] || continue
            if kill -0 -- "-$pgid" 2>/dev/null; then
                echo "bench-trackers: stopping leftover process group $pgid" >&2
                kill -TERM -- "-$pgid" 2>/dev/null || true
                sleep 2
                kill -KILL -- "-$pgid" 2>/dev/null || true
            fi
        done <"$children_file"
        rm -f "$children_file"
    fi
    exit "$status"
}

die() {
    echo "bench-trackers: $*" >&2
    exit 2
}

command -v python3 >/dev/null 2>&1 || die "python3 (3.11 or newer) is required"
python3 -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' ||
    die "python3 is $(python3 --version 2>&1); 3.11 or newer is required"
[[ -f "$orchestrator" ]] || die "missing $orchestrator"

case "${1:-}" in
    -h | --help)
        exec python3 "$orchestrator" --help
        ;;
esac

command -v taskset >/dev/null 2>&1 || die "taskset (util-linux) is required"
command -v cargo >/dev/null 2>&1 || die "cargo is required (https://rustup.rs)"

trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

cd "$repo"
python3 "$orchestrator" "$@" &
py_pid=$!
status=0
wait "$py_pid" || status=$?
py_pid=""
exit "$status"
