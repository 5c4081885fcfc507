#!/usr/bin/env bash
# Side-by-side benchmark of WebTorrent trackers over loopback: ours (p2p-mediastream),
# aquatic_ws and the reference bittorrent-tracker (npm), driven by our `loadtest`.
# The work is done by scripts/bench-trackers.py (Python 3.11+, standard library only);
# this wrapper checks the prerequisites, runs it, and makes sure that nothing it started
# outlives it. `scripts/bench-trackers.sh --help` lists the options.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
case "${1:-}" in
    -h | --help) ;;
    *)
        command -v taskset >/dev/null 2>&1 || {
            echo "bench-trackers: taskset (util-linux) is required" >&2
            exit 2
        }
        ;;
esac
exec "$repo/scripts/run-orchestrator.sh" bench-trackers "$repo/scripts/bench-trackers.py" \
    "$repo/target/bench/.bench-trackers.children" "$@"
