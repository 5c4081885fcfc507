# Stand-in for docker.io/jrottenberg/ffmpeg:<version>-ubuntu2404 (no registry here).
# Like the real image where the compose file relies on it: ENTRYPOINT ffmpeg, bash,
# find and grep present (the test card script and its health check), runs as any uid.
# Differs: Debian bookworm's ffmpeg 5.1 in /usr/bin (the real image: ffmpeg 7.1 built
# into /usr/local on Ubuntu 24.04); same libx264/AAC encoders the test card uses.
ARG BASE
FROM ${BASE}
RUN apt-get update -qq \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        ffmpeg >/dev/null \
    && rm -rf /var/lib/apt/lists/* \
    && ffmpeg -hide_banner -version | head -n 1
ENTRYPOINT ["ffmpeg"]
CMD ["--help"]
