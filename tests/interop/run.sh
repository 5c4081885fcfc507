#!/usr/bin/env bash
# Interop test: the real npm bittorrent-tracker WebSocket client (+ WebRTC from @roamhq/wrtc)
# against the p2p-mediastream tracker. Works from any cwd; exits non-zero on any failure.
#
#   tests/interop/run.sh                                   # spawns ../../target/debug/p2p-mediastream
#   P2P_MEDIASTREAM_BIN=/path/to/p2p-mediastream tests/interop/run.sh
#   TRACKER_URL=ws://127.0.0.1:8000/announce tests/interop/run.sh   # an already running tracker
#
# INTEROP_TIMEOUT (s, default 300) bounds the whole run. INTEROP_NETNS=0 disables the private
# network namespace (see README.md); extra arguments go to `node --test`.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$HERE"

die() { echo "tests/interop/run.sh: $*" >&2; exit 2; }

command -v node >/dev/null 2>&1 || die "node not found: install Node.js >= 20 (Debian: apt-get install nodejs npm)"
command -v npm >/dev/null 2>&1 || die "npm not found: install npm (Debian: apt-get install npm)"
node_major="$(node -p 'process.versions.node.split(".")[0]')"
[ "$node_major" -ge 20 ] || die "Node.js >= 20 needed (node:test, module.register), found $(node -v)"

# The binary of the tracker is resolved here, from the caller's cwd, not the test's.
if [ -n "${P2P_MEDIASTREAM_BIN:-}" ]; then
  P2P_MEDIASTREAM_BIN="$(cd "$OLDPWD" && realpath -m -- "$P2P_MEDIASTREAM_BIN")"
  export P2P_MEDIASTREAM_BIN
fi

if [ -z "${TRACKER_URL:-}" ]; then
  bin="${P2P_MEDIASTREAM_BIN:-$HERE/../../target/debug/p2p-mediastream}"
  [ -x "$bin" ] || die "tracker binary not found: $bin (cargo build, or set P2P_MEDIASTREAM_BIN=/path/to/p2p-mediastream, or TRACKER_URL=ws://127.0.0.1:PORT/announce)"
fi

# Install (again) when node_modules is missing or was made from another package-lock.json.
# --ignore-scripts: node-datachannel's install script downloads a binary (no internet here);
# @roamhq/wrtc needs no script, its binary is the optional package @roamhq/wrtc-linux-x64.
stamp="node_modules/.interop-package-lock.sha256"
want="$(sha256sum package-lock.json | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "# installing test dependencies (npm ci --ignore-scripts)" >&2
  npm ci --ignore-scripts --no-audit --no-fund >&2 || die "npm ci failed (is the npm registry reachable?)"
  echo "$want" > "$stamp"
fi
node -e "require('@roamhq/wrtc')" 2>/dev/null ||
  die "@roamhq/wrtc does not load: its native package @roamhq/wrtc-$(node -p 'process.platform+"-"+process.arch') is missing (installed with --omit=optional, or an unsupported platform?)"

cmd=(node --test --test-reporter=spec "$@" interop.test.mjs)

# With nothing else to reach (no TRACKER_URL), run in a fresh network namespace whose only
# interface is loopback: libwebrtc gathers candidates on every interface, and there it can
# only ever use 127.0.0.1 / ::1. Needs root (or user namespaces) and `ip`; skipped otherwise.
netns=()
if [ -z "${TRACKER_URL:-}" ] && [ "${INTEROP_NETNS:-auto}" != 0 ] &&
   command -v unshare >/dev/null 2>&1 && command -v ip >/dev/null 2>&1 &&
   unshare --net true >/dev/null 2>&1; then
  netns=(unshare --net -- sh -c 'ip link set lo up && exec "$@"' sh)
  echo "# running in a private network namespace (loopback only)" >&2
fi

set +e
timeout --kill-after=10 "${INTEROP_TIMEOUT:-300}" "${netns[@]}" "${cmd[@]}"
rc=$?
set -e
if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
  echo "tests/interop/run.sh: timed out after ${INTEROP_TIMEOUT:-300} s" >&2
fi
exit "$rc"
