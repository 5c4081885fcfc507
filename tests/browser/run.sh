#!/usr/bin/env bash
# Real-browser end-to-end test: setup.sh installs and builds what is missing, then
# p2p.test.js runs with Node's built-in test runner.
#
#   tests/browser/run.sh                                   # 4 viewers, 90 s; then the cluster
#   P2P_MEDIASTREAM_BIN=/path/to/p2p-mediastream VIEWERS=5 tests/browser/run.sh
#   tests/browser/run.sh --test-name-pattern=cluster       # the cluster case alone
#
# Extra arguments go to `node --test`.
# See harness.js and p2p.test.js for the other environment knobs.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
"$here/setup.sh"
cd "$here"

# Everything the test starts (ffmpeg, coturn, our server, Chromium) talks to this machine
# only; Chromium also tries outside hosts on its own (DNS, component updates), so the test
# runs in a network namespace with no route out (PAGE_URL/TRACKER_URL, for a stand-in
# running elsewhere, skip it).
if [[ -z "${PAGE_URL:-}${TRACKER_URL:-}" ]]; then
    exec "$here/../../scripts/in-test-netns.sh" node --test --test-reporter=spec "$@" p2p.test.js
fi
exec node --test --test-reporter=spec "$@" p2p.test.js
