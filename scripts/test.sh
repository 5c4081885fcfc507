#!/usr/bin/env bash
# The whole test suite: formatting, lints, Rust unit and integration tests, the interop
# test with the real npm `bittorrent-tracker` client, the real-browser P2P test, and the
# static checks of the deployment files. Installs what it needs (npm packages, Debian
# packages) or stops with a message saying what is missing.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

need() {
    command -v "$1" >/dev/null 2>&1 || {
        echo "test.sh: '$1' is missing. $2" >&2
        exit 1
    }
}
need cargo "Install the Rust toolchain (https://rustup.rs), version 1.89 or newer."
need node "Install Node.js 20 or newer (apt-get install nodejs npm)."
need npm "Install npm (apt-get install npm)."

stage() { printf '\n==> %s\n' "$*"; }

stage "cargo fmt --check"
cargo fmt --all -- --check

stage "cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets --locked -- -D warnings

stage "cargo build (the binary the Node and browser tests start)"
cargo build --locked --bins
export P2P_MEDIASTREAM_BIN="$root/target/debug/p2p-mediastream"

for extra in tests/interop/run.sh tests/browser/run.sh scripts/check-compose.sh; do
    if [[ -f "$extra" ]]; then
        stage "$extra"
        bash "$extra"
    fi
done

# Last, so that its summary closes the output.
stage "cargo test"
cargo test --locked --all-targets
