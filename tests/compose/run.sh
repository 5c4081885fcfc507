#!/usr/bin/env bash
# `docker compose up`, for real: builds the project's image from the real Dockerfile, runs
# the real docker-compose.yml (plus podman.override.yml, only for what this machine cannot
# do) with podman + Debian's docker-compose, checks the running stack, two Chromium viewers
# against it, and `down -v`; then the same for docker-compose.cluster.yml (two replicas over
# NATS behind nginx: one swarm across the replicas through nginx). See tests/compose/README.md for what is checked and how the
# stand-in images differ from the real ones.
#
#   tests/compose/run.sh            # as root (podman rootful, apt, /etc/containers)
#   KEEP_TMP=1 tests/compose/run.sh # keep the logs even when everything passed
#
# No registry is reachable here, so the images the files name are stand-ins built locally
# (debootstrap base + Debian packages + this machine's Rust and Node), cached in podman's
# storage and rebuilt only when their recipe changes. Builds reach the package registries
# (Debian, crates.io, npm); the stack itself talks to this machine only.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
cd "$repo"

project=p2pms-compose-test
cluster_project=p2pms-compose-cluster-test
run_dir=/run/$project                # the podman API socket of this test
sock=$run_dir/podman.sock
url=http://127.0.0.1:8000            # the ports docker-compose.yml publishes
stun_port=3478
replica_ports=(18001 18002)          # tests/compose/podman.cluster.override.yml, test only
logs=$(mktemp -d "${TMPDIR:-/tmp}/p2pms-compose.XXXXXX")

say() { echo "compose-test: $*" >&2; }
die() {
    echo "compose-test: FAIL: $*" >&2
    exit 1
}

# --- stage timing ---------------------------------------------------------------------------
timings=()
stage_name=""
stage_t0=0
test_t0=$SECONDS
stage() {
    stage_end
    stage_name=$1
    stage_t0=$SECONDS
    printf '\n--> %s\n' "$stage_name" >&2
}
stage_end() {
    [[ -n $stage_name ]] || return 0
    timings+=("$(printf '%4d s  %s' $((SECONDS - stage_t0)) "$stage_name")")
    stage_name=""
}

# --- prerequisites ----------------------------------------------------------------------------
[[ $(id -u) -eq 0 ]] || die "needs root: podman runs rootful here, packages come from apt and /etc/containers/containers.conf may need writing"
for tool in apt-get curl python3 node sha256sum; do
    command -v "$tool" >/dev/null 2>&1 || die "'$tool' is missing (Debian: apt-get install ${tool/apt-get/apt})"
done

stage "prerequisites (apt: podman debootstrap docker-compose; Chromium via tests/browser/setup.sh)"
missing=()
command -v podman >/dev/null 2>&1 || missing+=(podman)
command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
if ((${#missing[@]})); then
    say "installing ${missing[*]} with apt-get"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
# Chromium and the browser test's npm packages; PAGE_URL tells setup.sh not to build a server.
PAGE_URL=$url bash "$repo/tests/browser/setup.sh"

# podman's defaults ask runc to raise rlimits this VM does not let root raise ("error
# setting rlimit type 7: operation not permitted"), and there is no systemd for cgroups or
# journald events: this machine's podman needs these defaults. Written only when the file
# differs, and said so.
containers_conf=/etc/containers/containers.conf
wanted_conf='# Written by p2p-mediastream tests/compose/run.sh: this machine cannot raise rlimits
# above nofile 20000 / nproc 32768, and has no systemd (cgroups, journald).
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
runtime = "runc"'
if [[ "$(cat "$containers_conf" 2>/dev/null)" != "$wanted_conf" ]]; then
    if [[ -e $containers_conf ]]; then
        cp "$containers_conf" "$containers_conf.bak.$(date +%s)"
        say "replacing $containers_conf (old copy kept next to it as .bak.*)"
    fi
    mkdir -p "$(dirname "$containers_conf")"
    printf '%s\n' "$wanted_conf" >"$containers_conf"
    say "wrote this machine's podman settings to $containers_conf:"
    sed 's/^/    /' "$containers_conf" >&2
fi

# The stack publishes 8000/tcp and 3478/udp+tcp on the host, as docker-compose.yml says.
# The cluster stack's test override also publishes each replica on 18001 and 18002.
for check in "t:8000" "u:3478" "t:3478" "t:${replica_ports[0]}" "t:${replica_ports[1]}"; do
    if [[ -n $(ss -Hln"${check%%:*}" "sport = :${check#*:}" 2>/dev/null) ]]; then
        die "port ${check#*:}/$([[ ${check%%:*} == t ]] && echo tcp || echo udp) is in use on this machine; the composed stacks publish it (stop what listens there: ss -lntup)"
    fi
done

# --- the podman API service and cleanup ----------------------------------------------------------
service_pid=""
stack_up=0
cluster_up=0
ws_pid=""
logs_pid=""
compose=(env DOCKER_HOST="unix://$sock" COMPOSE_HTTP_TIMEOUT=1200
    docker-compose --ansi never -p "$project" -f docker-compose.yml -f tests/compose/podman.override.yml)
compose_cluster=(env DOCKER_HOST="unix://$sock" COMPOSE_HTTP_TIMEOUT=1200
    docker-compose --ansi never -p "$cluster_project" -f docker-compose.cluster.yml -f tests/compose/podman.cluster.override.yml)
passed=0
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    stage_end
    for pid in "$ws_pid" "$logs_pid"; do
        if [[ -n $pid ]]; then kill "$pid" 2>/dev/null || true; fi
    done
    # Also after the test's own `down -v`: harmless then, and it removes whatever a failed
    # check found left over.
    if ((stack_up)); then
        say "cleanup: ${compose[*]:3} down -v"
        timeout 90 "${compose[@]}" down -v >>"$logs/down.log" 2>&1 || say "cleanup: down -v failed, see $logs/down.log"
    fi
    if ((cluster_up)); then
        say "cleanup: ${compose_cluster[*]:3} down -v"
        timeout 90 "${compose_cluster[@]}" down -v >>"$logs/cluster-down.log" 2>&1 || say "cleanup: down -v failed, see $logs/cluster-down.log"
    fi
    if [[ -n $service_pid ]]; then
        kill "$service_pid" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$service_pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$service_pid" 2>/dev/null || true
        wait "$service_pid" 2>/dev/null || true
    fi
    rm -f "$sock"
    rmdir "$run_dir" 2>/dev/null || true
    if ((${#timings[@]})); then
        printf '\ncompose-test: stage durations\n' >&2
        printf '  %s\n' "${timings[@]}" >&2
        printf '  %4d s  total\n' $((SECONDS - test_t0)) >&2
    fi
    if ((passed)) && [[ -z ${KEEP_TMP:-} ]]; then
        rm -rf "$logs"
    else
        say "logs kept in $logs"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

stage "podman API service (unix socket, stopped at the end)"
mkdir -p "$run_dir"
rm -f "$sock"
podman system service --time=0 "unix://$sock" >"$logs/podman-service.log" 2>&1 &
service_pid=$!
for _ in $(seq 100); do
    [[ -S $sock ]] && break
    kill -0 "$service_pid" 2>/dev/null || die "podman system service exited, see $logs/podman-service.log"
    sleep 0.1
done
[[ -S $sock ]] || die "podman system service did not open $sock within 10 s"
# A leftover of an interrupted run would hold the ports and the tmpfs volume.
timeout 90 "${compose[@]}" down -v >"$logs/down-before.log" 2>&1 || true
timeout 90 "${compose_cluster[@]}" down -v >>"$logs/down-before.log" 2>&1 || true

# --- base image and stand-ins ---------------------------------------------------------------
# Images the Dockerfile and the compose file name, with ARG defaults filled in and short
# names expanded the way Docker does (docker.io/library/...).
qualify() {
    local name=$1
    [[ $name == */* ]] || name=library/$name
    [[ ${name%%/*} == *.* ]] || name=docker.io/$name
    echo "$name"
}
named_images() {
    local -A args=()
    local line name value image stages=" "
    while read -r line; do
        if [[ $line =~ ^ARG[[:space:]]+([A-Za-z_]+)=(.*)$ ]]; then
            args[${BASH_REMATCH[1]}]=${BASH_REMATCH[2]}
        elif [[ $line =~ ^FROM[[:space:]]+([^[:space:]]+)([[:space:]]+[Aa][Ss][[:space:]]+([^[:space:]]+))? ]]; then
            image=${BASH_REMATCH[1]}
            [[ -n ${BASH_REMATCH[3]} ]] && stages+="${BASH_REMATCH[3]} "
            for name in "${!args[@]}"; do
                value=${args[$name]}
                image=${image//\$\{$name\}/$value}
            done
            [[ $stages == *" $image "* ]] || qualify "$image"
        fi
    done <Dockerfile
    { "${compose[@]}" config; "${compose_cluster[@]}" config; } | sed -n 's/^    image: //p' | while read -r image; do
        [[ $image == p2p-mediastream:* ]] || qualify "$image"
    done
}

host_ca=/etc/ssl/certs/ca-certificates.crt
[[ -s $host_ca ]] || die "$host_ca is missing: the stand-ins copy this machine's CA bundle (TLS to the registries presents this machine's own CA)"
base_recipe="debootstrap --variant=minbase bookworm http://deb.debian.org/debian; apt sources bookworm, bookworm-updates, bookworm-security; apt lists and .deb cache removed"
recipe_label=p2pms.compose-test.recipe

image_recipe() { podman image inspect --format "{{index .Labels \"$recipe_label\"}}" "$1" 2>/dev/null || true; }

base_image=docker.io/library/debian:bookworm-slim
ensure_base() {
    local hash rootfs
    hash=$(sha256sum <<<"$base_recipe" | cut -c1-16)
    if [[ $(image_recipe "$base_image") == "$hash" ]]; then
        say "cached: $base_image (stand-in, recipe $hash)"
        return 0
    fi
    say "building the stand-in $base_image with debootstrap (30 s to 2 min, once)"
    rootfs=$(mktemp -d "${TMPDIR:-/tmp}/p2pms-rootfs.XXXXXX")
    if ! debootstrap --variant=minbase bookworm "$rootfs" http://deb.debian.org/debian >"$logs/debootstrap.log" 2>&1; then
        # A failed debootstrap may leave its /proc and /sys mounts in the tree: unmount
        # them before removing it, and never cross into another file system.
        grep -o " $rootfs/[^ ]*" /proc/mounts | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
        rm -rf --one-file-system "$rootfs"
        die "debootstrap failed, see $logs/debootstrap.log"
    fi
    printf '%s\n' "deb http://deb.debian.org/debian bookworm main" \
        "deb http://deb.debian.org/debian bookworm-updates main" \
        "deb http://deb.debian.org/debian-security bookworm-security main" >"$rootfs/etc/apt/sources.list"
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    tar -C "$rootfs" -c . | podman import --change "LABEL $recipe_label=$hash" \
        --change 'CMD ["bash"]' - "$base_image" >"$logs/import.log" 2>&1 \
        || die "podman import of the base image failed, see $logs/import.log"
    rm -rf --one-file-system "$rootfs"
}

# ensure_standin NAME IMAGE [HOST_INPUT_FINGERPRINT] -- [podman build -v ...]
ensure_standin() {
    local recipe=$1 image=$2 fingerprint=$3 hash host_tool
    shift 4
    host_tool=""
    [[ -z $fingerprint ]] || host_tool=", with this machine's ${fingerprint%%$'\n'*}"
    hash=$( { cat "$here/standins/$recipe.Dockerfile"; echo "$base_recipe"; echo "$fingerprint"; sha256sum "$host_ca"; } \
        | sha256sum | cut -c1-16)
    if [[ $(image_recipe "$image") == "$hash" ]]; then
        say "cached: $image (stand-in $recipe$host_tool, recipe $hash)"
        return 0
    fi
    say "building the stand-in $image from tests/compose/standins/$recipe.Dockerfile$host_tool"
    podman build --quiet --build-arg "BASE=$base_image" --label "$recipe_label=$hash" \
        -v "$host_ca:/host/ca-bundle.crt:ro" "$@" \
        -f "$here/standins/$recipe.Dockerfile" -t "$image" "$here/standins" >"$logs/standin-$recipe.log" 2>&1 \
        || die "building the stand-in $image failed, see $logs/standin-$recipe.log"
}

stage "base image and stand-ins (built only when missing or their recipe changed)"
ensure_base
rust_sysroot=$(rustc --print sysroot 2>/dev/null) || die "rustc is missing: the Rust stand-in copies this machine's toolchain (https://rustup.rs)"
node_bin=$(command -v node)
npm_dir=$(dirname "$(dirname "$(readlink -f "$(command -v npm)")")")
[[ -f $npm_dir/package.json ]] || die "cannot find npm's package directory (from $(command -v npm)); the Node stand-in copies it"
while read -r image; do
    case $image in
        "$base_image") ;;
        docker.io/library/rust:*)
            ensure_standin rust "$image" "$(rustc -Vv; cargo -V)" -- -v "$rust_sysroot:/host/toolchain:ro" ;;
        docker.io/library/node:*)
            ensure_standin node "$image" "node $(node -v), npm $(npm -v)" -- -v "$node_bin:/host/node:ro" -v "$npm_dir:/host/npm:ro" ;;
        docker.io/jrottenberg/ffmpeg:*) ensure_standin ffmpeg "$image" "" -- ;;
        docker.io/coturn/coturn:*) ensure_standin coturn "$image" "" -- ;;
        docker.io/library/nats:*) ensure_standin nats "$image" "" -- ;;
        docker.io/library/nginx:*) ensure_standin nginx "$image" "" -- ;;
        *) die "the Dockerfile or a compose file names $image, which has no stand-in in tests/compose/standins/ (no registry here): add one" ;;
    esac
done < <(named_images | sort -u)

# --- the README's Docker line -------------------------------------------------------------
# shellcheck disable=SC2016 # the backquotes are Markdown, matched literally
readme_line=$(grep -o 'With Docker: `docker compose [^`]*`' README.md || true)
[[ -n $readme_line ]] || die "README.md has no 'With Docker: \`docker compose ...\`' line to check"
readme_args=${readme_line#*\`docker compose }
readme_args=${readme_args%\`}
read -r -a readme_argv <<<"$readme_args"
[[ ${readme_argv[0]} == up ]] || die "README's Docker line runs 'docker compose $readme_args', expected 'up ...'"
say "README's Docker line: docker compose $readme_args (run below as docker-compose ... $readme_args -d)"

stage "build the project's image from the real Dockerfile (npm bundle, cargo-chef, release build, runtime)"
build_t0=$SECONDS
timeout 3600 "${compose[@]}" build >"$logs/build.log" 2>&1 || { tail -n 40 "$logs/build.log" >&2; die "image build failed, see $logs/build.log"; }
build_seconds=$((SECONDS - build_t0))
image_size=$(podman image inspect --format '{{.Size}}' p2p-mediastream:local)
say "built p2p-mediastream:local in $build_seconds s; image size $((image_size / 1000000)) MB"

# --- up ---------------------------------------------------------------------------------------
stage "up: docker compose $readme_args -d"
stack_up=1
timeout 600 "${compose[@]}" "${readme_argv[@]}" -d >"$logs/up.log" 2>&1 || { cat "$logs/up.log" >&2; die "compose up failed"; }
container_of() { "${compose[@]}" ps -q "$1" 2>/dev/null; }
tracker=$(container_of tracker)
testcard=$(container_of testcard)
stun=$(container_of stun)
[[ -n $tracker && -n $testcard && -n $stun ]] || die "not all three services have a container: tracker='$tracker' testcard='$testcard' stun='$stun'"
for id in "$tracker" "$testcard" "$stun"; do
    [[ $(podman inspect --format '{{.State.Status}}' "$id") == running ]] \
        || die "container $(podman inspect --format '{{.Name}}' "$id") is not running; logs: $(podman logs --tail 20 "$id" 2>&1)"
done
say "tracker, testcard and stun are running"
# The services' output, kept with the other logs (the containers are gone after down -v).
"${compose[@]}" logs -f --no-color -t >"$logs/stack.log" 2>&1 &
logs_pid=$!

# podman runs health checks from systemd timers, and there is no systemd here: run the
# containers' own HEALTHCHECKs (`podman healthcheck run`) every 2 s until healthy.
stage "tracker healthy by its own HEALTHCHECK"
health() { podman inspect --format '{{.State.Health.Status}}' "$1" 2>/dev/null; }
healthy_after=""
up_t0=$SECONDS
for _ in $(seq 45); do
    podman healthcheck run "$tracker" >/dev/null 2>&1 || true
    case $(health "$tracker") in
        healthy) healthy_after=$((SECONDS - up_t0)); break ;;
        unhealthy) die "tracker unhealthy by its HEALTHCHECK; logs: $(podman logs --tail 20 "$tracker" 2>&1)" ;;
    esac
    sleep 2
done
[[ -n $healthy_after ]] || die "tracker not healthy within 90 s (status '$(health "$tracker")'); logs: $(podman logs --tail 20 "$tracker" 2>&1)"
say "tracker healthy (HEALTHCHECK: p2p-mediastream healthcheck)"

# --- HLS: written by the test card into the shared volume, served by the tracker --------------
stage "live HLS: the test card's segments in the shared tmpfs volume, served at /hls/"
playlist=""
for _ in $(seq 60); do
    playlist=$(curl -fsS --max-time 5 "$url/hls/live.m3u8" 2>/dev/null || true)
    [[ $(grep -c '^#EXTINF' <<<"$playlist") -ge 3 ]] && break
    sleep 1
done
[[ $(grep -c '^#EXTINF' <<<"$playlist") -ge 3 ]] || die "$url/hls/live.m3u8 did not list 3 segments within 60 s; testcard logs: $(podman logs --tail 20 "$testcard" 2>&1)"
content_type() { curl -fsS --max-time 5 -o /dev/null -w '%{content_type}' "$1"; }
type=$(content_type "$url/hls/live.m3u8")
[[ $type == application/vnd.apple.mpegurl* ]] || die "/hls/live.m3u8 served as '$type', expected application/vnd.apple.mpegurl"
segment=$(grep -v '^#' <<<"$playlist" | grep . | tail -n 1)
type=$(content_type "$url/hls/$segment")
[[ $type == video/mp2t* ]] || die "/hls/$segment served as '$type', expected video/mp2t"
say "/hls/live.m3u8: application/vnd.apple.mpegurl; /hls/$segment: video/mp2t"
# Live: new segments keep coming (the media sequence only moves once the window is full),
# and the files are in the tracker's read-only view of the volume, which is a tmpfs.
newest() { curl -fsS --max-time 5 "$url/hls/live.m3u8" | grep -v '^#' | grep . | tail -n 1; }
listing=$("${compose[@]}" exec -T tracker ls /srv/hls)
grep -qx "$segment" <<<"$listing" || die "$segment is not in the tracker's /srv/hls: $listing"
mount_line=$("${compose[@]}" exec -T tracker grep ' /srv/hls ' /proc/mounts)
[[ $mount_line == tmpfs\ * && $mount_line == *\ ro,* ]] || die "/srv/hls in the tracker is not a read-only tmpfs: $mount_line"
later=$segment
for _ in $(seq 10); do
    sleep 1
    later=$(newest)
    [[ $later != "$segment" ]] && break
done
[[ $later != "$segment" ]] || die "no new segment after $segment within 10 s (2 s segments): the stream is not live"
say "segments in the shared tmpfs volume (read-only in the tracker); new segment $segment -> $later"

stage "/config.json names the STUN service; STUN answers a binding request on $stun_port/udp"
config=$(curl -fsS --max-time 5 "$url/config.json")
grep -q "\"stun:127.0.0.1:$stun_port\"" <<<"$config" || die "/config.json does not name stun:127.0.0.1:$stun_port: $config"
say "/config.json ICE servers: $(grep -o '"stun:[^"]*"' <<<"$config" | tr '\n' ' ')"
python3 "$here/probe.py" stun 127.0.0.1 "$stun_port" >&2 || die "STUN binding request to 127.0.0.1:$stun_port/udp failed"

# --- two Chromium viewers ----------------------------------------------------------------------
stage "two Chromium viewers: playback and P2P through the composed tracker"
(cd "$repo/tests/browser" && COMPOSE_URL=$url timeout 300 node --test --test-reporter=spec compose.test.js) >&2 \
    || die "the Chromium viewers against the composed stack failed (output above)"

# --- down -v ----------------------------------------------------------------------------------
stage "down -v: WebSockets closed with 1001, tracker exits 0 within its grace period"
grace=$("${compose[@]}" config | sed -n '/^  tracker:/,/^  [a-z]/s/^    stop_grace_period: //p')
grace_seconds=${grace%s}
[[ $grace_seconds =~ ^[0-9]+$ ]] || die "cannot read the tracker's stop_grace_period (got '$grace')"
mounts_before=$(grep -c "$tracker\|$testcard\|$stun\|${project}_hls" /proc/mounts || true)
: >"$logs/ws-close.txt"
python3 "$here/probe.py" ws-close "${url/http/ws}/announce" 60 >"$logs/ws-close.txt" 2>&1 &
ws_pid=$!
for _ in $(seq 50); do grep -q connected "$logs/ws-close.txt" && break; sleep 0.1; done
grep -q connected "$logs/ws-close.txt" || die "the WebSocket probe did not connect: $(cat "$logs/ws-close.txt")"
down_since=$(date +%s.%N)
down_t0=$SECONDS
timeout 120 "${compose[@]}" down -v >"$logs/down.log" 2>&1 || { cat "$logs/down.log" >&2; die "down -v failed"; }
down_seconds=$((SECONDS - down_t0))
wait "$ws_pid" || true
ws_pid=""
ws_result=$(grep '^close\|^eof\|^timeout' "$logs/ws-close.txt" || true)
[[ $ws_result == "close 1001" ]] || die "the tracker closed the open WebSocket with '$ws_result', expected 'close 1001'"
# podman's event log keeps the exit code and the time the container died after `down -v`
# has removed it.
died=$(podman events --stream=false --since "${down_since%.*}" --filter "container=$tracker" --filter event=died \
    --format '{{.ContainerExitCode}} {{.Time}}' 2>/dev/null | tail -n 1)
[[ -n $died ]] || die "no 'died' event for the tracker container since down started"
exit_code=${died%% *}
died_time=${died#* }
died_at=$(date -d "${died_time% UTC}" +%s.%N) || die "cannot read the time of the tracker's 'died' event: $died"
stop_seconds=$(awk -v a="$down_since" -v b="$died_at" 'BEGIN { printf "%.1f", b - a }')
[[ $exit_code == 0 ]] || die "the tracker exited with code $exit_code, expected 0"
awk -v t="$stop_seconds" -v g="$grace_seconds" 'BEGIN { exit !(t < g) }' \
    || die "the tracker took $stop_seconds s to stop, not within its stop_grace_period of $grace_seconds s"
close_at=$(sed -n 's/^at //p' "$logs/ws-close.txt")
close_seconds=$(awk -v a="$down_since" -v b="$close_at" 'BEGIN { printf "%.1f", b - a }')
say "open WebSocket got close 1001 after $close_seconds s; tracker exited 0 after $stop_seconds s (grace $grace_seconds s); down -v took $down_seconds s"

# mount_pattern PROJECT CONTAINER...: a grep pattern for the stack's mounts in /proc/mounts.
mount_pattern() {
    local pattern="$1_hls" id
    shift
    for id in "$@"; do pattern+="\\|$id"; done
    echo "$pattern"
}
# nothing_left PROJECT MOUNTS_WHILE_RUNNING CONTAINER...
nothing_left() {
    local project=$1 mounts_before=$2 pattern left
    shift 2
    pattern=$(mount_pattern "$project" "$@")
    left=$(podman ps -a --filter "label=com.docker.compose.project=$project" --format '{{.Names}}')
    [[ -z $left ]] || die "containers left after down -v: $left"
    left=$(podman volume ls --filter "label=com.docker.compose.project=$project" --format '{{.Name}}')
    [[ -z $left ]] || die "volumes left after down -v: $left"
    left=$(podman network ls --format '{{.Name}}' | grep "^${project}_" || true)
    [[ -z $left ]] || die "networks left after down -v: $left"
    left=$(grep "$pattern" /proc/mounts || true)
    [[ -z $left ]] || die "mounts left after down -v: $left"
    ((mounts_before > 0)) || die "found none of the stack's mounts while it ran, so the check for leftovers proves nothing"
    say "no container, volume, network or mount of $project is left ($mounts_before mounts while it ran)"
}
stage "nothing left: containers, volume, network, mounts"
nothing_left "$project" "$mounts_before" "$tracker" "$testcard" "$stun"
stack_up=0

# --- the cluster: docker-compose.cluster.yml ---------------------------------------------------
# Two replicas of the image built above, NATS between them, nginx in front on 8000.
stage "cluster up: docker compose -f docker-compose.cluster.yml up -d (the image built above)"
cluster_t0=$SECONDS
if [[ -n $logs_pid ]]; then kill "$logs_pid" 2>/dev/null || true; wait "$logs_pid" 2>/dev/null || true; fi
logs_pid=""
cluster_up=1
timeout 600 "${compose_cluster[@]}" up -d >"$logs/cluster-up.log" 2>&1 || { cat "$logs/cluster-up.log" >&2; die "cluster compose up failed"; }
declare -A cid=()
cluster_services=(tracker tracker2 nats lb testcard stun)
for svc in "${cluster_services[@]}"; do
    cid[$svc]=$("${compose_cluster[@]}" ps -q "$svc" 2>/dev/null)
    [[ -n ${cid[$svc]} ]] || die "the cluster's service $svc has no container"
    [[ $(podman inspect --format '{{.State.Status}}' "${cid[$svc]}") == running ]] \
        || die "the cluster's $svc is not running; logs: $(podman logs --tail 20 "${cid[$svc]}" 2>&1)"
done
say "${cluster_services[*]} are running"
"${compose_cluster[@]}" logs -f --no-color -t >"$logs/cluster-stack.log" 2>&1 &
logs_pid=$!

stage "cluster: both replicas healthy by their own HEALTHCHECK"
replicas_healthy=""
for _ in $(seq 45); do
    all=1
    for svc in tracker tracker2; do
        podman healthcheck run "${cid[$svc]}" >/dev/null 2>&1 || true
        case $(health "${cid[$svc]}") in
            healthy) ;;
            unhealthy) die "$svc unhealthy by its HEALTHCHECK; logs: $(podman logs --tail 20 "${cid[$svc]}" 2>&1)" ;;
            *) all=0 ;;
        esac
    done
    if ((all)); then replicas_healthy=$((SECONDS - cluster_t0)); break; fi
    sleep 2
done
[[ -n $replicas_healthy ]] || die "the replicas were not both healthy within 90 s (tracker '$(health "${cid[tracker]}")', tracker2 '$(health "${cid[tracker2]}")')"
say "tracker and tracker2 healthy"

stage "cluster: each replica's /stats.json: bus up, both instances; nginx serves the page, refuses /metrics"
stats=("http://127.0.0.1:${replica_ports[0]}/stats.json" "http://127.0.0.1:${replica_ports[1]}/stats.json")
python3 "$here/probe.py" cluster-view "${stats[@]}" >&2 || die "the replicas do not form one cluster over NATS (nats logs: $(podman logs --tail 10 "${cid[nats]}" 2>&1))"
code=$(curl -sS --max-time 5 -o /dev/null -w '%{http_code}' "$url/")
[[ $code == 200 ]] || die "GET / through nginx answered $code, expected 200"
code=$(curl -sS --max-time 5 -o /dev/null -w '%{http_code}' "$url/metrics")
[[ $code == 403 ]] || die "GET /metrics through nginx answered $code, expected 403 (refused)"
say "through nginx: / 200, /metrics 403"

stage "cluster: one swarm across the replicas through nginx (announce, offer, answer)"
python3 "$here/probe.py" cluster-swarm "${url/http/ws}/announce" "${stats[@]}" >&2 \
    || die "one swarm across the two replicas through nginx failed (output above)"

stage "cluster down -v and nothing left"
cluster_ids=()
for svc in "${cluster_services[@]}"; do cluster_ids+=("${cid[$svc]}"); done
mounts_before=$(grep -c "$(mount_pattern "$cluster_project" "${cluster_ids[@]}")" /proc/mounts || true)
down_t0=$SECONDS
timeout 120 "${compose_cluster[@]}" down -v >"$logs/cluster-down.log" 2>&1 || { cat "$logs/cluster-down.log" >&2; die "cluster down -v failed"; }
cluster_down_seconds=$((SECONDS - down_t0))
nothing_left "$cluster_project" "$mounts_before" "${cluster_ids[@]}"
cluster_up=0
cluster_seconds=$((SECONDS - cluster_t0))
say "cluster stack: up to down in $cluster_seconds s (down -v $cluster_down_seconds s)"

stage_end
passed=1
say "PASS: image built in $build_seconds s ($((image_size / 1000000)) MB), tracker healthy after ${healthy_after} s, down -v in $down_seconds s; cluster checked in $cluster_seconds s"
