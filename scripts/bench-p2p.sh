#!/usr/bin/env bash
# P2P-share benchmark (not a test): P2P share and stalls for 2, 4, 6 and 8 Chromium viewers
# of the live test card, written to docs/p2p-share.md and docs/p2p-share.svg.
#
#   scripts/bench-p2p.sh                                  # 2,4,6,8 viewers, 90 s each
#   P2P_MEDIASTREAM_BIN=/path/to/p2p-mediastream scripts/bench-p2p.sh --viewers 2,4,6 --seconds 60
#   scripts/bench-p2p.sh --set httpDownloadTimeWindow=6 --no-write
#
# `scripts/bench-p2p.sh --help` lists the options. tests/browser/setup.sh installs and builds
# whatever is missing first (chromium, ffmpeg, coturn, npm packages, player bundle, server).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
case " $* " in
  *" -h "*|*" --help "*) ;;
  *) "$repo/tests/browser/setup.sh" ;;
esac
# No route out of this machine: Chromium cannot reach outside hosts (see the script).
exec "$repo/scripts/in-test-netns.sh" node "$repo/scripts/bench-p2p.mjs" "$@"
