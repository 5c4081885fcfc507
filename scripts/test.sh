#!/usr/bin/env bash
# The whole test suite: formatting, lints (clippy, shellcheck), the deployment checks, the
# interop test with the real npm `bittorrent-tracker` client, the real-browser P2P test,
# the compose stack built and run for real (podman), and the Rust unit, integration,
# property and fault-injection tests. Installs what it needs (npm packages, Debian
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

apt_updated=0
apt_install() {
    if [[ $(id -u) -ne 0 ]]; then
        echo "test.sh: Debian packages missing: $*; install them (apt-get install $*) or run as root" >&2
        exit 1
    fi
    if ((apt_updated == 0)); then
        apt-get update -qq
        apt_updated=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

stage() { printf '\n==> %s\n' "$*"; }

stage "cargo fmt --check"
cargo fmt --all -- --check

stage "cargo clippy -D warnings (default features, then fault-injection)"
cargo clippy --all-targets --locked -- -D warnings
cargo clippy --all-targets --locked --features fault-injection -- -D warnings

stage "shellcheck"
command -v shellcheck >/dev/null 2>&1 || apt_install shellcheck
shellcheck scripts/*.sh tests/*/*.sh player/build.sh .ci/run

stage "cargo build (the binary the Node and browser tests start)"
cargo build --locked --bins
export P2P_MEDIASTREAM_BIN="$root/target/debug/p2p-mediastream"

stage "deployment files (docker-compose config, Dockerfile sources)"
bash scripts/check-compose.sh

# The cluster cases (interop, browser, tests/cluster_bus.rs, tests/integration/cluster.rs)
# start a real NATS server (Debian package nats-server); the browser's cluster case puts
# nginx in front of two instances (tests/browser/setup.sh installs it).
command -v nats-server >/dev/null 2>&1 || [[ -x /usr/sbin/nats-server ]] || apt_install nats-server

stage "interop: the npm bittorrent-tracker client against our tracker (one instance, then two clustered)"
bash tests/interop/run.sh

stage "browser: Chromium viewers sharing the live stream over P2P"
bash tests/browser/run.sh

stage "compose: the real Dockerfile and docker-compose.yml built and run with podman"
bash tests/compose/run.sh

stage "fault injection (a panicking swarm, SIGTERM, restart)"
cargo test --locked --features fault-injection --test integration faults::

# Last, so that its summary closes the output. tests/integration/cluster*.rs start a real NATS
# server (Debian package nats-server, installed before the interop stage).
stage "cargo test"
cargo test --locked --all-targets
