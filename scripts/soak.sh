#!/usr/bin/env bash
# Soak test of our tracker: a steady load with churn for N minutes (default 10), sampling
# the server's RSS and /stats.json every 5 s; fails (exit 1) when memory grows, when peers
# or swarms stay behind after the load stops, or when the server logs an error.
# The work is done by scripts/soak.py (Python 3.11+, standard library only); this wrapper
# checks the prerequisites, runs it, and makes sure that nothing it started outlives it.
# `scripts/soak.sh --help` lists the options.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
exec "$repo/scripts/run-orchestrator.sh" soak "$repo/scripts/soak.py" \
    "$repo/target/bench/soak/.soak.children" "$@"
