#!/usr/bin/env bash
# One-command local demo without Docker: test card + STUN (if coturn is installed) +
# p2p-mediastream on http://127.0.0.1:8000. Ctrl-C stops everything.
#
#   scripts/demo.sh                 # build what is missing, then run
#   scripts/demo.sh --abr           # 360p/480p/720p ladder instead of one rendition
#   P2P_MEDIASTREAM_BIN=/path/to/p2p-mediastream scripts/demo.sh   # skip cargo build
#   scripts/demo.sh --help
set -euo pipefail

script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo_root=$(cd "$script_dir/.." && pwd)

host="127.0.0.1"
port=8000
stun_port=3478
abr=0
use_stun=1
build=1
log_dir="${DEMO_LOG_DIR:-$repo_root/target/demo}"
hls_dir="$repo_root/hls"

usage() {
    cat <<EOF
Usage: ${0##*/} [options]

Runs the whole stack locally: the ffmpeg test card writing live HLS into hls/, coturn as
a STUN server on port $stun_port (only if coturn is installed) and p2p-mediastream serving
the player, the stream and the tracker. Open the printed URL in two or more browser
windows to watch viewers share segments. Ctrl-C stops everything.

Before starting it installs ffmpeg with apt when missing, builds the player bundle
(player/build.sh) when public/dist/player.js is missing or older than its sources, and
builds the server (cargo build --release) unless P2P_MEDIASTREAM_BIN names a binary.

Options:
  --host ADDR    address the server listens on (default: $host; 0.0.0.0 lets other
                 machines on your network join)
  --port N       server port (default: $port)
  --stun-port N  STUN port (default: $stun_port)
  --abr          ABR ladder (360p/480p/720p, hls/master.m3u8) instead of one rendition
  --no-stun      do not start coturn even if it is installed
  --no-build     use the existing bundle and binary as they are
  -h, --help     show this help

Environment:
  P2P_MEDIASTREAM_BIN   server binary to run instead of building target/release/p2p-mediastream
  DEMO_LOG_DIR          where test card and coturn logs go (default: target/demo)
EOF
}

say() { echo "demo: $*" >&2; }
die() {
    echo "demo: error: $*" >&2
    exit 1
}

while [[ $# -gt 0 ]]; do
    case $1 in
        --host) [[ $# -ge 2 ]] || die "--host needs a value"; host=$2; shift 2 ;;
        --port) [[ $# -ge 2 ]] || die "--port needs a value"; port=$2; shift 2 ;;
        --stun-port) [[ $# -ge 2 ]] || die "--stun-port needs a value"; stun_port=$2; shift 2 ;;
        --abr) abr=1; shift ;;
        --no-stun) use_stun=0; shift ;;
        --no-build) build=0; shift ;;
        -h | --help) usage; exit 0 ;;
        *) die "unknown option: $1 (see --help)" ;;
    esac
done
[[ $port =~ ^[0-9]+$ && $port -ge 1 && $port -le 65535 ]] || die "--port must be 1-65535, got '$port'"
[[ $stun_port =~ ^[0-9]+$ && $stun_port -ge 1 && $stun_port -le 65535 ]] \
    || die "--stun-port must be 1-65535, got '$stun_port'"

# --- prerequisites -----------------------------------------------------------------------
apt_updated=0
apt_install() {
    command -v apt-get >/dev/null 2>&1 || die "apt-get not found; install $* with your package manager"
    local sudo=()
    if [[ $(id -u) -ne 0 ]]; then
        command -v sudo >/dev/null 2>&1 || die "need root (or sudo) to install $*"
        sudo=(sudo)
    fi
    if ((!apt_updated)); then
        "${sudo[@]}" apt-get update -qq || die "apt-get update failed"
        apt_updated=1
    fi
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" \
        || die "apt-get install $* failed"
}

if ! command -v ffmpeg >/dev/null 2>&1; then
    say "ffmpeg is missing: installing it with apt-get (Debian package 'ffmpeg')"
    apt_install ffmpeg
fi

turnserver_bin=""
stun_running=0
if ((use_stun)); then
    if command -v ss >/dev/null 2>&1 && [[ -n $(ss -Hlun "sport = :$stun_port" 2>/dev/null) ]]; then
        say "UDP port $stun_port is already in use (a STUN server already running?): using it"
        stun_running=1
    elif command -v turnserver >/dev/null 2>&1; then
        turnserver_bin=$(command -v turnserver)
    else
        say "coturn is not installed: continuing without a STUN server (fine on one machine;"
        say "  viewers on other networks need one: apt-get install coturn)"
    fi
fi

# --- player bundle -------------------------------------------------------------------------
bundle="$repo_root/public/dist/player.js"
bundle_stale() {
    [[ -s $bundle ]] || return 0
    local newer
    newer=$(find "$repo_root/player/src" "$repo_root/player/package.json" \
        "$repo_root/player/package-lock.json" "$repo_root/player/build.sh" \
        -newer "$bundle" -print -quit 2>/dev/null)
    [[ -n $newer ]]
}
if ((build)) && bundle_stale; then
    if ! command -v npm >/dev/null 2>&1; then
        say "node/npm are missing (needed once to bundle the player): installing them with apt-get"
        apt_install nodejs npm
    fi
    say "building the player bundle (player/build.sh)"
    bash "$repo_root/player/build.sh" || die "player/build.sh failed"
fi
[[ -s $bundle ]] || die "missing $bundle; run: player/build.sh"

# --- server binary -----------------------------------------------------------------------
if [[ -n ${P2P_MEDIASTREAM_BIN:-} ]]; then
    server_bin=$P2P_MEDIASTREAM_BIN
    [[ -x $server_bin ]] || die "P2P_MEDIASTREAM_BIN=$server_bin is not an executable file"
else
    server_bin="${CARGO_TARGET_DIR:-$repo_root/target}/release/p2p-mediastream"
    if ((build)); then
        command -v cargo >/dev/null 2>&1 \
            || die "cargo not found: install Rust (https://rustup.rs) or set P2P_MEDIASTREAM_BIN"
        say "building the server (cargo build --release)"
        (cd "$repo_root" && cargo build --release) || die "cargo build failed"
    fi
    [[ -x $server_bin ]] || die "missing $server_bin; run cargo build --release"
fi

# --- run -----------------------------------------------------------------------------------
mkdir -p "$log_dir" "$hls_dir"

# Each child runs in its own session (setsid) so it gets no Ctrl-C from the terminal:
# this script alone decides the order and signal with which they stop.
setsid_cmd=()
if command -v setsid >/dev/null 2>&1; then
    setsid_cmd=(setsid)
fi
pids=()
names=()
start() {
    local name=$1
    shift
    "${setsid_cmd[@]}" "$@" &
    pids+=($!)
    names+=("$name")
}

stopping=0
stop_all() {
    ((stopping)) && return 0
    stopping=1
    trap '' INT TERM HUP
    say "stopping..."
    local i pid target
    # Reverse start order: the server first (it closes viewers' WebSockets cleanly).
    for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
        pid=${pids[$i]}
        target=$pid
        ((${#setsid_cmd[@]})) && target=-$pid # the child's whole process group
        kill -TERM -- "$target" 2>/dev/null || true
    done
    # Give them 15 s (the server needs up to ~5 s, ffmpeg ~1 s), then force.
    for ((i = 0; i < 150; i++)); do
        local alive=0
        for pid in "${pids[@]}"; do
            kill -0 "$pid" 2>/dev/null && alive=1
        done
        ((alive)) || break
        sleep 0.1
    done
    for pid in "${pids[@]}"; do
        if kill -0 "$pid" 2>/dev/null; then
            say "forcing pid $pid to stop"
            target=$pid
            ((${#setsid_cmd[@]})) && target=-$pid
            kill -KILL -- "$target" 2>/dev/null || true
        fi
        wait "$pid" 2>/dev/null || true
    done
    say "stopped"
}
trap 'stop_all; exit 0' INT TERM HUP
trap stop_all EXIT

testcard_args=(--out "$hls_dir")
stream_url="/hls/live.m3u8"
playlist="$hls_dir/live.m3u8"
if ((abr)); then
    testcard_args+=(--abr)
    stream_url="/hls/master.m3u8"
    playlist="$hls_dir/master.m3u8"
fi
say "starting the test card -> $hls_dir (log: $log_dir/testcard.log)"
start testcard "$script_dir/generate-video.sh" "${testcard_args[@]}" >"$log_dir/testcard.log" 2>&1

server_env=(
    "TRACKER__SERVER__HOST=$host"
    "TRACKER__SERVER__PORT=$port"
    "TRACKER__HTTP__PUBLIC_DIR=$repo_root/public"
    "TRACKER__HTTP__HLS_DIR=$hls_dir"
    "TRACKER__PLAYER__STREAM_URL=$stream_url"
    "RUST_LOG=${RUST_LOG:-info}"
)
server_args=()
if [[ -n $turnserver_bin ]]; then
    stun_listen=()
    [[ $host == 0.0.0.0 || $host == "::" ]] || stun_listen=("--listening-ip=$host")
    say "starting coturn as STUN server on $host:$stun_port (log: $log_dir/coturn.log)"
    start coturn "$turnserver_bin" -n --log-file=stdout --simple-log --stun-only --no-auth \
        "${stun_listen[@]}" "--listening-port=$stun_port" --no-tls --no-dtls --no-cli \
        --fingerprint >"$log_dir/coturn.log" 2>&1
fi
if [[ -n $turnserver_bin ]] || ((stun_running)); then
    # {host} = the host name the page was opened with, so other machines get this host.
    server_env+=("TRACKER__PLAYER__ICE_SERVERS=stun:{host}:$stun_port")
else
    # No STUN server: an empty ICE server list (browsers on one machine or one LAN
    # connect through their host candidates). An empty env value would be a list with
    # one empty URL, so use a settings file for this.
    printf '[player]\nice_servers = []\n' >"$log_dir/no-stun.toml"
    server_args+=(--config "$log_dir/no-stun.toml")
fi

say "starting the server ($server_bin)"
start server env "${server_env[@]}" "$server_bin" "${server_args[@]}" serve

# Wait until the server answers and the test card has written its first playlist.
url_host=$host
[[ $host == 0.0.0.0 || $host == "::" ]] && url_host=127.0.0.1
ready=0
for ((i = 0; i < 150; i++)); do
    for j in "${!pids[@]}"; do
        if ! kill -0 "${pids[$j]}" 2>/dev/null; then
            say "${names[$j]} exited during start-up"
            [[ ${names[$j]} == server ]] || tail -n 20 "$log_dir/${names[$j]}.log" >&2 || true
            exit 1
        fi
    done
    if [[ -s $playlist ]] && env "${server_env[@]}" "$server_bin" "${server_args[@]}" healthcheck >/dev/null 2>&1; then
        ready=1
        break
    fi
    sleep 0.2
done
((ready)) || die "the server or the test card did not come up within 30 s (logs in $log_dir)"

cat >&2 <<EOF

  p2p-mediastream demo is running
    player   http://$url_host:$port/
    stream   http://$url_host:$port$stream_url
    tracker  ws://$url_host:$port/announce
    STUN     $([[ -n $turnserver_bin ]] || ((stun_running)) && echo "stun:$url_host:$stun_port" || echo "none")
  Open the player in two or more windows to see segments shared peer to peer.
  Press Ctrl-C to stop.

EOF

# Run until Ctrl-C or until one of the processes exits on its own.
while :; do
    wait -n "${pids[@]}" 2>/dev/null || true
    ((stopping)) && break
    for j in "${!pids[@]}"; do
        if ! kill -0 "${pids[$j]}" 2>/dev/null; then
            say "${names[$j]} exited unexpectedly; stopping the demo"
            [[ ${names[$j]} == server ]] || tail -n 20 "$log_dir/${names[$j]}.log" >&2 || true
            exit 1
        fi
    done
done
