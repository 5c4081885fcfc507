#!/usr/bin/env bash
# Runs a command in a private network namespace that cannot reach any other host:
#   scripts/in-test-netns.sh COMMAND [ARGS...]
# The namespace has loopback plus one veth pair (both ends inside it) carrying
# 198.18.0.1/24 (RFC 2544's benchmarking range). Chromium never gathers WebRTC candidates
# on loopback, so WebRTC peers need that second interface; traffic to it stays inside the
# namespace. Chromium's own background look-ups (DNS, component updates) have nowhere to
# go. Needs root (or user namespaces) and iproute2; without them it runs the command
# as it is and says so. TEST_NETNS=0 turns it off.
set -euo pipefail

(($#)) || { echo "usage: $0 COMMAND [ARGS...]" >&2; exit 2; }

if [[ "${TEST_NETNS:-auto}" != 0 ]] && command -v unshare >/dev/null 2>&1 &&
   command -v ip >/dev/null 2>&1 && unshare --net true >/dev/null 2>&1; then
    echo "# running in a private network namespace (loopback + 198.18.0.1, no route out)" >&2
    exec unshare --net -- sh -c '
        set -e
        ip link set lo up
        ip link add p2pms0 type veth peer name p2pms1
        ip addr add 198.18.0.1/24 dev p2pms0
        ip link set p2pms0 up
        ip link set p2pms1 up
        exec "$@"' sh "$@"
fi
echo "# no private network namespace (needs root and iproute2): running as it is" >&2
exec "$@"
