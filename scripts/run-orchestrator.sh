#!/usr/bin/env bash
# Shared runner of the benchmark orchestrators (scripts/bench-trackers.py, scripts/soak.py):
#   scripts/run-orchestrator.sh NAME ORCHESTRATOR CHILDREN_FILE [ARGS...]
# Checks the prerequisites, runs ORCHESTRATOR (Python 3.11+, standard library only) with
# ARGS, and makes sure that nothing it started outlives it: on exit it stops the
# orchestrator (which stops its servers and load tester on SIGTERM), then any process group
# still listed in CHILDREN_FILE (left behind if the orchestrator itself was SIGKILLed).
set -euo pipefail

(($# >= 3)) || { echo "usage: $0 NAME ORCHESTRATOR CHILDREN_FILE [ARGS...]" >&2; exit 2; }
name=$1
orchestrator=$2
children_file=$3
shift 3

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
py_pid=""

# shellcheck disable=SC2317 # invoked by the EXIT trap only
cleanup() {
    local status=$?
    trap - EXIT INT TERM HUP
    if [[ -n "$py_pid" ]] && kill -0 "$py_pid" 2>/dev/null; then
        kill -TERM "$py_pid" 2>/dev/null || true
        for _ in $(seq 1 30); do
            kill -0 "$py_pid" 2>/dev/null || break
            sleep 1
        done
        kill -KILL "$py_pid" 2>/dev/null || true
    fi
    if [[ -f "$children_file" ]]; then
        while read -r pgid; do
            [[ "$pgid" =~ ^[0-9]+$ ]] || continue
            if kill -0 -- "-$pgid" 2>/dev/null; then
                echo "$name: stopping leftover process group $pgid" >&2
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
    echo "$name: $*" >&2
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
