#!/usr/bin/env bash
# Instructions per client message of one or more server builds, counted by valgrind's
# callgrind: a figure that repeats to well under 1 % between runs on a noisy machine, where
# CPU time does not (it counts user space only: syscalls and the kernel's TCP work are not in
# it, see docs/benchmarks-speed.md).
#   scripts/bench-instructions.sh [--seconds N] [--repeats N] BUILD...
# Each BUILD (a server binary, e.g. target/release/p2p-mediastream, or one built at another
# revision) runs under callgrind with one worker thread on 127.0.0.1; our loadtest
# (target/release/loadtest) drives a fixed low load: 200 connections over 20 swarms,
# 50 announces/s, 10 offers x 400 B each, every offer answered, seed 1. After 10 s (connect
# and warm-up) the counters are zeroed; N s later (default 18) they are dumped. The server's
# own message counters (/stats.json, in + out) at both points give the messages in between.
# Prints one line per run: build, instructions, messages, instructions per message.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
seconds=18
repeats=1
builds=()
while (($#)); do
    case "$1" in
        --seconds) seconds="$2"; shift 2 ;;
        --repeats) repeats="$2"; shift 2 ;;
        -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
        -*) echo "bench-instructions.sh: unknown option $1" >&2; exit 2 ;;
        *) builds+=("$1"); shift ;;
    esac
done
((${#builds[@]})) || { echo "bench-instructions.sh: name at least one server binary" >&2; exit 2; }
for tool in valgrind callgrind_control curl python3; do
    command -v "$tool" >/dev/null || {
        echo "bench-instructions.sh: $tool is missing (apt-get install valgrind curl python3)" >&2
        exit 1
    }
done
loadtest="$root/target/release/loadtest"
[[ -x "$loadtest" ]] || { echo "bench-instructions.sh: build the load tester first: cargo build --release" >&2; exit 1; }

work="$(mktemp -d)"
server_pid=""
cleanup() {
    if [[ -n "$server_pid" ]]; then
        kill "$server_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Client messages the server has seen and sent so far.
messages() {
    curl -fsS "http://127.0.0.1:$1/stats.json" | python3 -c '
import json, sys
stats = json.load(sys.stdin)
print(sum(stats["messagesIn"].values()) + sum(stats["messagesOut"].values()))'
}

wait_ready() {
    for _ in $(seq 1 200); do
        curl -fsS "http://127.0.0.1:$1/healthz" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    echo "bench-instructions.sh: the server did not come up (log: $2)" >&2
    cat "$2" >&2
    return 1
}

for build in "${builds[@]}"; do
    [[ -x "$build" ]] || { echo "bench-instructions.sh: $build is not an executable" >&2; exit 1; }
    for run in $(seq 1 "$repeats"); do
        port="$(free_port)"
        out="$work/callgrind.out"
        rm -f "$out"*
        TRACKER__SERVER__HOST=127.0.0.1 TRACKER__SERVER__PORT="$port" TRACKER__SERVER__WORKERS=1 \
        TRACKER__SERVER__MAX_CONNECTIONS_PER_IP=0 TRACKER__WS__MAX_MESSAGES_PER_SEC=100000 \
        TRACKER__WS__MESSAGE_BURST=100000 RUST_LOG=warn \
            valgrind --tool=callgrind --callgrind-out-file="$out" "$build" >"$work/server.log" 2>&1 &
        server_pid=$!
        wait_ready "$port" "$work/server.log"
        "$loadtest" --url "ws://127.0.0.1:$port/announce" -c 200 --swarms 20 --rate 50 \
            --offers 10 --sdp-bytes 400 --connect-rate 200 --seed 1 \
            --duration $((seconds + 14)) --warmup 10 >"$work/loadtest.out" 2>&1 &
        loadtest_pid=$!
        sleep 10
        before="$(messages "$port")"
        callgrind_control -z "$server_pid" >/dev/null 2>&1
        sleep "$seconds"
        callgrind_control -d "$server_pid" >/dev/null 2>&1
        after="$(messages "$port")"
        wait "$loadtest_pid" || { echo "bench-instructions.sh: loadtest failed:" >&2; cat "$work/loadtest.out" >&2; exit 1; }
        kill "$server_pid"; wait "$server_pid" 2>/dev/null || true
        server_pid=""
        # The one dump asked for (callgrind numbers them from 1; the final file is written
        # at exit, after the window).
        dump="$out.1"
        instructions="$(awk '/^(summary|totals):/ {print $2; exit}' "$dump")"
        python3 -c "
import sys
build, run, ir, msgs = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
print(f'{build} run {run}: {ir:,} instructions, {msgs:,} messages, {ir / msgs:,.0f} per message')
" "$build" "$run" "$instructions" "$((after - before))"
    done
done
