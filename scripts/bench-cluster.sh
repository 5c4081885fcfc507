#!/usr/bin/env bash
# Cluster benchmark: one instance alone, two instances sharing their swarms over NATS, and
# the two with one SIGKILLed mid-run, driven by our `loadtest` over loopback. The work is
# done by scripts/bench-cluster.py (Python 3.11+, standard library only); this wrapper
# checks the prerequisites, runs it, and makes sure that nothing it started outlives it.
# `scripts/bench-cluster.sh --help` lists the options.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
case "${1:-}" in
    -h | --help) ;;
    *)
        command -v taskset >/dev/null 2>&1 || {
            echo "bench-cluster: taskset (util-linux) is required" >&2
            exit 2
        }
        command -v nats-server >/dev/null 2>&1 || [[ -x /usr/sbin/nats-server ]] || {
            echo "bench-cluster: nats-server is required (Debian: apt-get install nats-server)" >&2
            exit 2
        }
        ;;
esac
exec "$repo/scripts/run-orchestrator.sh" bench-cluster "$repo/scripts/bench-cluster.py" \
    "$repo/target/bench/.bench-cluster.children" "$@"
