#!/usr/bin/env bash
# Builds the web player bundle into the served folder: public/dist/player.js (+ .map and
# the licence file), minified. The sources (src/) and npm files live here, in player/, so
# that public/ holds only what the server serves. Installs the pinned dependencies from
# package-lock.json first when node_modules is missing or older than the lock file.
# Usage: player/build.sh
set -euo pipefail
cd "$(dirname "$0")"
out=../public/dist

if [ ! -d node_modules ] || [ package-lock.json -nt node_modules ]; then
  # .npmrc sets ignore-scripts: the native WebRTC addon pulled in through
  # bittorrent-tracker is not used by the browser bundle and cannot build offline.
  npm ci --no-audit --no-fund
  touch node_modules
fi

# p2pml:core-as-bundle resolves P2P Media Loader to its pre-bundled browser builds;
# without it esbuild trips over Node built-ins imported by bittorrent-tracker's client.
npx --no-install esbuild src/player.js \
  --bundle \
  --format=esm \
  --platform=browser \
  --target=es2020 \
  --conditions=p2pml:core-as-bundle \
  --minify \
  --sourcemap \
  --legal-comments=linked \
  --log-level=warning \
  --outfile="$out/player.js"

echo "built public/dist/player.js ($(stat -c %s "$out/player.js") bytes)"
