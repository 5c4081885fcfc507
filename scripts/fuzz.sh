#!/usr/bin/env bash
# Runs the fuzz targets in fuzz/ (libFuzzer through cargo-fuzz) for a given time each.
#   scripts/fuzz.sh [--seconds N] [--jobs N] [TARGET...]
# Targets: parse_message (any text frame through the protocol parser) and swarm_state
# (random operation sequences on SwarmState). Default: both, 60 s each.
# The parse_message corpus is seeded with every frame of the captured P2P Media Loader
# session. Exits non-zero if a target finds a crash (the reproducer is in fuzz/artifacts/).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
seconds=60
jobs=1
targets=()
while (($#)); do
    case "$1" in
        --seconds) seconds="$2"; shift 2 ;;
        --jobs) jobs="$2"; shift 2 ;;
        -h|--help) sed -n '2,8p' "$0"; exit 0 ;;
        -*) echo "fuzz.sh: unknown option $1" >&2; exit 2 ;;
        *) targets+=("$1"); shift ;;
    esac
done
((${#targets[@]})) || targets=(parse_message swarm_state)

command -v cargo >/dev/null || { echo "fuzz.sh: cargo is missing (install Rust via rustup)" >&2; exit 1; }
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz.sh: installing cargo-fuzz from crates.io"
    cargo install cargo-fuzz --locked
fi

# libFuzzer needs the unstable -Zsanitizer flags: use a nightly toolchain when rustup has
# one, otherwise let the stable compiler accept them.
toolchain=()
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    toolchain=(+nightly)
else
    export RUSTC_BOOTSTRAP=1
fi

cd "$root/fuzz"
mkdir -p corpus/parse_message corpus/swarm_state
python3 - "$root/tests/fixtures/p2pml-v2.3.1-session.jsonl" corpus/parse_message <<'PY'
import hashlib, json, pathlib, sys
source, out = sys.argv[1], pathlib.Path(sys.argv[2])
for line in open(source, encoding="utf-8"):
    msg = json.loads(line)["msg"].encode()
    (out / hashlib.sha1(msg).hexdigest()).write_bytes(msg)
PY

status=0
for target in "${targets[@]}"; do
    echo "==> fuzzing $target for ${seconds}s"
    parallel=()
    # -jobs sends each worker's output to a file; only use it when asked for several.
    ((jobs > 1)) && parallel=(-jobs="$jobs" -workers="$jobs")
    if ! cargo "${toolchain[@]}" fuzz run "$target" "corpus/$target" -- \
        -max_total_time="$seconds" "${parallel[@]}" -print_final_stats=1; then
        echo "fuzz.sh: $target FAILED; see fuzz/artifacts/$target" >&2
        status=1
    fi
done
exit "$status"
