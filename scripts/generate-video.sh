#!/usr/bin/env bash
# Live HLS test card: ffmpeg's testsrc2 pattern + a sine tone, encoded in real time
# (-re) into a sliding-window live playlist that the server publishes under /hls/.
#
#   scripts/generate-video.sh                 # 640x360@30, 2 s segments -> hls/live.m3u8
#   scripts/generate-video.sh --abr           # 360p/480p/720p ladder -> hls/master.m3u8
#   scripts/generate-video.sh --help
#
# Every segment starts with a keyframe (fixed GOP = segment length x fps, no scene-cut
# keyframes), so each segment is independently decodable and all renditions cut at
# the same instants. ffmpeg writes segments and playlists to *.tmp and renames them
# when complete (temp_file), and deletes segments that left the window.
set -euo pipefail

script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo_root=$(cd "$script_dir/.." && pwd)

out_dir="$repo_root/hls"
size="640x360"
fps=30
bitrate="800k"
audio_bitrate="96k"
segment=2
list_size=12
playlist="live.m3u8"
segment_type="ts"
abr=0
duration=0
preset="veryfast"
loglevel="warning"
stats=0

usage() {
    cat <<EOF
Usage: ${0##*/} [options]

Encode a synthetic live test card (testsrc2 + 440 Hz tone, H.264/AAC) into a live HLS
stream with a sliding window. Runs until interrupted (Ctrl-C / SIGTERM stop ffmpeg
cleanly) or until --duration has elapsed.

Options:
  --out DIR            output directory (default: $repo_root/hls)
  --size WxH           picture size of the single rendition (default: $size)
  --fps N              frame rate (default: $fps)
  --bitrate RATE       video bitrate of the single rendition, ffmpeg syntax (default: $bitrate)
  --audio-bitrate RATE AAC bitrate (default: $audio_bitrate)
  --segment SECONDS    segment duration; the GOP is SECONDS x fps frames (default: $segment)
  --list-size N        segments kept in the live playlist (default: $list_size)
  --playlist NAME      media playlist file name (default: $playlist)
  --segment-type T     ts (MPEG-TS, seg_N.ts) or fmp4 (init.mp4 + seg_N.m4s) (default: $segment_type)
  --abr                ABR ladder instead of one rendition: 360p 800k, 480p 1400k,
                       720p 2800k in DIR/v0 DIR/v1 DIR/v2 (each with its own NAME playlist)
                       plus DIR/master.m3u8; --size and --bitrate are ignored
  --duration SECONDS   stop after SECONDS of output (default: 0 = run until stopped)
  --preset NAME        x264 preset (default: $preset)
  --loglevel LEVEL     ffmpeg log level (default: $loglevel)
  --stats              print ffmpeg progress (frame, fps, speed) every 10 s
  -h, --help           show this help

Segment names carry the media sequence number, which starts at the current Unix time,
so a restarted test card never reuses a segment URL (segments are cached as immutable).
Files in DIR left over from an earlier run (*.m3u8, *.ts, *.m4s, *.mp4, *.tmp and the
v0/v1/v2 renditions) are deleted at start.
EOF
}

die() {
    echo "${0##*/}: $*" >&2
    exit 1
}

need_value() {
    [[ $# -ge 2 && -n $2 ]] || die "option $1 needs a value (see --help)"
}

while [[ $# -gt 0 ]]; do
    case $1 in
        --out) need_value "$@"; out_dir=$2; shift 2 ;;
        --size) need_value "$@"; size=$2; shift 2 ;;
        --fps) need_value "$@"; fps=$2; shift 2 ;;
        --bitrate) need_value "$@"; bitrate=$2; shift 2 ;;
        --audio-bitrate) need_value "$@"; audio_bitrate=$2; shift 2 ;;
        --segment) need_value "$@"; segment=$2; shift 2 ;;
        --list-size) need_value "$@"; list_size=$2; shift 2 ;;
        --playlist) need_value "$@"; playlist=$2; shift 2 ;;
        --segment-type) need_value "$@"; segment_type=$2; shift 2 ;;
        --duration) need_value "$@"; duration=$2; shift 2 ;;
        --preset) need_value "$@"; preset=$2; shift 2 ;;
        --loglevel) need_value "$@"; loglevel=$2; shift 2 ;;
        --abr) abr=1; shift ;;
        --stats) stats=1; shift ;;
        -h | --help) usage; exit 0 ;;
        *) die "unknown option: $1 (see --help)" ;;
    esac
done

[[ $size =~ ^[0-9]+x[0-9]+$ ]] || die "--size must look like 1280x720, got '$size'"
[[ $fps =~ ^[1-9][0-9]*$ ]] || die "--fps must be a positive integer, got '$fps'"
[[ $segment =~ ^[1-9][0-9]*$ ]] || die "--segment must be a positive integer, got '$segment'"
[[ $list_size =~ ^[1-9][0-9]*$ ]] || die "--list-size must be a positive integer, got '$list_size'"
[[ $duration =~ ^[0-9]+$ ]] || die "--duration must be a whole number of seconds, got '$duration'"
[[ $bitrate =~ ^[0-9]+[kM]?$ ]] || die "--bitrate must look like 800k, got '$bitrate'"
[[ $audio_bitrate =~ ^[0-9]+[kM]?$ ]] || die "--audio-bitrate must look like 96k, got '$audio_bitrate'"
[[ $playlist =~ ^[A-Za-z0-9._-]+\.m3u8$ ]] || die "--playlist must be a plain file name ending in .m3u8, got '$playlist'"
case $segment_type in
    ts) seg_ext="ts" hls_segment_type="mpegts" ;;
    fmp4) seg_ext="m4s" hls_segment_type="fmp4" ;;
    *) die "--segment-type must be ts or fmp4, got '$segment_type'" ;;
esac

command -v ffmpeg >/dev/null 2>&1 \
    || die "ffmpeg not found in PATH. Install it first, e.g. on Debian/Ubuntu: sudo apt-get install ffmpeg"
encoders=$(ffmpeg -hide_banner -encoders 2>/dev/null) || true
[[ $encoders == *" libx264 "* ]] \
    || die "this ffmpeg has no libx264 encoder; install a build with it (Debian/Ubuntu: apt-get install ffmpeg)"

mkdir -p "$out_dir" || die "cannot create output directory $out_dir"
out_dir=$(cd "$out_dir" && pwd)

# Remove what an earlier run left behind, and only that: the output directory may be a
# shared volume or a directory the user chose, so never delete anything else.
clean_stale() {
    local dir=$1
    find "$dir" -maxdepth 1 -type f \
        \( -name '*.m3u8' -o -name '*.ts' -o -name '*.m4s' -o -name '*.mp4' -o -name '*.tmp' \) \
        -delete
}
clean_stale "$out_dir"
for rendition in "$out_dir"/v[0-9]; do
    [[ -d $rendition ]] || continue
    clean_stale "$rendition"
    rmdir "$rendition" 2>/dev/null || true
done

gop=$((segment * fps))
hls_flags="delete_segments+temp_file+independent_segments+omit_endlist"

args=(-nostdin -hide_banner -loglevel "$loglevel")
if ((stats)); then
    args+=(-stats -stats_period 10)
else
    args+=(-nostats)
fi

if ((abr)); then
    # One testsrc2 source at the top resolution, split and scaled for each rendition.
    args+=(-re -f lavfi -i "testsrc2=size=1280x720:rate=$fps"
        -re -f lavfi -i "sine=frequency=440:sample_rate=48000"
        -filter_complex "[0:v]split=3[s0][s1][s2];[s0]scale=640:360[v0];[s1]scale=854:480[v1];[s2]copy[v2]")
    ladder_rates=(800k 1400k 2800k)
    stream_map=""
    for i in 0 1 2; do
        rate=${ladder_rates[$i]}
        args+=(-map "[v$i]" "-c:v:$i" libx264 "-b:v:$i" "$rate" "-maxrate:v:$i" "$rate"
            "-bufsize:v:$i" "$((${rate%k} * 2))k")
        stream_map+="${stream_map:+ }v:$i,a:$i"
    done
    for i in 0 1 2; do
        args+=(-map 1:a "-c:a:$i" aac "-b:a:$i" "$audio_bitrate")
    done
    args+=(-var_stream_map "$stream_map" -master_pl_name master.m3u8)
    playlist_path="$out_dir/v%v/$playlist"
    segment_path="$out_dir/v%v/seg_%d.$seg_ext"
    for i in 0 1 2; do mkdir -p "$out_dir/v$i"; done
    description="ABR 360p/480p/720p, master $out_dir/master.m3u8"
else
    args+=(-re -f lavfi -i "testsrc2=size=$size:rate=$fps"
        -re -f lavfi -i "sine=frequency=440:sample_rate=48000"
        -map 0:v -map 1:a
        -c:v libx264 -b:v "$bitrate" -maxrate "$bitrate" -bufsize "$((${bitrate%[kM]} * 2))${bitrate##*[0-9]}"
        -c:a aac -b:a "$audio_bitrate")
    playlist_path="$out_dir/$playlist"
    segment_path="$out_dir/seg_%d.$seg_ext"
    description="$size, $bitrate, playlist $playlist_path"
fi

args+=(-preset "$preset" -tune zerolatency -profile:v main -pix_fmt yuv420p
    -g "$gop" -keyint_min "$gop" -sc_threshold 0
    -ac 2 -ar 48000)
if ((duration > 0)); then
    args+=(-t "$duration")
fi
args+=(-f hls -hls_time "$segment" -hls_list_size "$list_size"
    -hls_flags "$hls_flags" -hls_start_number_source epoch
    -hls_segment_type "$hls_segment_type" -hls_segment_filename "$segment_path")
if [[ $segment_type == fmp4 ]]; then
    # With --abr, ffmpeg names them init_0.mp4, init_1.mp4, ... in each rendition's directory.
    args+=(-hls_fmp4_init_filename init.mp4)
fi
args+=("$playlist_path")

echo "${0##*/}: test card ${description}; ${fps} fps, ${segment} s segments (GOP ${gop}), window ${list_size}, ${segment_type}" >&2

ffmpeg_pid=""
stopping=0
# Forward the first signal only: a second one makes ffmpeg abort its output I/O, which
# can leave an empty playlist behind.
on_signal() {
    if ((stopping)); then
        return
    fi
    stopping=1
    if [[ -n $ffmpeg_pid ]]; then
        kill -TERM "$ffmpeg_pid" 2>/dev/null || true
    fi
}
# If this script dies for any other reason, do not leave ffmpeg behind.
on_exit() {
    if [[ -n $ffmpeg_pid ]]; then
        kill -KILL "$ffmpeg_pid" 2>/dev/null || true
    fi
}
trap on_signal INT TERM HUP
trap on_exit EXIT

# ffmpeg runs in its own session, so a Ctrl-C in the terminal (or a signal sent to our
# whole process group) reaches only this script, which then stops ffmpeg exactly once.
setsid_cmd=()
if command -v setsid >/dev/null 2>&1; then
    setsid_cmd=(setsid)
fi
if ((stopping)); then
    exit 0
fi
"${setsid_cmd[@]}" ffmpeg "${args[@]}" &
ffmpeg_pid=$!

# `wait` returns early when a trapped signal arrives.
status=0
wait "$ffmpeg_pid" || status=$?
if ((stopping)); then
    # On SIGTERM ffmpeg finishes the segment and playlist it is writing; force after 10 s.
    for ((i = 0; i < 100; i++)); do
        kill -0 "$ffmpeg_pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$ffmpeg_pid" 2>/dev/null || true
    wait "$ffmpeg_pid" 2>/dev/null || true
    ffmpeg_pid=""
    echo "${0##*/}: stopped" >&2
    exit 0
fi
ffmpeg_pid=""
if ((status != 0)); then
    die "ffmpeg exited with status $status"
fi
