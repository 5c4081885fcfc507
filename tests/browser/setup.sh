#!/usr/bin/env bash
# Prepares a machine for real-browser runs (tests/browser/run.sh, scripts/bench-p2p.sh):
# installs what is missing (Debian packages chromium, ffmpeg, coturn, nginx, nats-server;
# npm packages from the lock file), rebuilds the player bundle when its sources changed and,
# when no server is given (P2P_MEDIASTREAM_BIN or PAGE_URL), builds
# target/debug/p2p-mediastream if absent.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)

missing=()
command -v chromium >/dev/null || missing+=(chromium)
command -v ffmpeg >/dev/null || missing+=(ffmpeg)
command -v turnserver >/dev/null || missing+=(coturn)
# The cluster case: nginx in front of two instances that share their swarms over NATS.
# Debian installs both in /usr/sbin, which a non-root PATH may lack.
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing+=(nginx)
command -v nats-server >/dev/null || [ -x /usr/sbin/nats-server ] || missing+=(nats-server)
if ((${#missing[@]})); then
  echo "installing ${missing[*]}"
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

if [ ! -d "$here/node_modules" ] || [ "$here/package-lock.json" -nt "$here/node_modules" ]; then
  (cd "$here" && npm ci --no-audit --no-fund && touch node_modules)
fi

bundle="$repo/public/dist/player.js"
if [ ! -f "$bundle" ] || [ -n "$(find "$repo/player/src" "$repo/player/package-lock.json" "$repo/player/build.sh" -newer "$bundle" -print -quit)" ]; then
  bash "$repo/player/build.sh"
fi

if [ -z "${P2P_MEDIASTREAM_BIN:-}" ] && [ -z "${PAGE_URL:-}" ] && [ ! -x "$repo/target/debug/p2p-mediastream" ]; then
  (cd "$repo" && cargo build --bin p2p-mediastream)
fi
