# syntax=docker/dockerfile:1
#
# p2p-mediastream: WebTorrent tracker + HLS server + web player in one image.
#
#   docker build -t p2p-mediastream .
#   docker run --rm -p 8000:8000 -v "$PWD/hls:/app/hls:ro" p2p-mediastream
#
# Stages: player (npm ci + esbuild bundle) | chef/planner/builder (Rust, dependencies
# cached by cargo-chef) | runtime (debian:bookworm-slim, non-root).
# The builder is Debian bookworm like the runtime, so the binary's glibc matches.
# RUST_VERSION defaults to the crate's rust-version (MSRV); raise it if Cargo.lock
# starts to need a newer compiler.

ARG RUST_VERSION=1.89
ARG NODE_VERSION=20
ARG CARGO_CHEF_VERSION=0.1.78

# ---------------------------------------------------------------------------------------
# Web player bundle: player/ (sources, npm files) -> public/dist/player.js (hls.js + P2P
# Media Loader). public/ holds only what the server serves, so it is copied as it is.
FROM node:${NODE_VERSION}-bookworm-slim AS player
WORKDIR /src/player
# player/.npmrc sets ignore-scripts (no native postinstall downloads; not needed to bundle).
COPY player/package.json player/package-lock.json player/.npmrc ./
RUN npm ci --no-audit --no-fund
COPY player/build.sh ./
COPY player/src ./src
COPY public /src/public
RUN npm run build && test -s /src/public/dist/player.js

# ---------------------------------------------------------------------------------------
# Rust toolchain + cargo-chef.
FROM rust:${RUST_VERSION}-slim-bookworm AS chef
ARG CARGO_CHEF_VERSION
RUN cargo install --locked cargo-chef --version "${CARGO_CHEF_VERSION}"
WORKDIR /build

# Dependency recipe: changes only when Cargo.toml / Cargo.lock change.
FROM chef AS planner
COPY Cargo.toml Cargo.lock ./
COPY src ./src
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS builder
COPY --from=planner /build/recipe.json recipe.json
# Compiles every dependency; cached as long as recipe.json is unchanged.
RUN cargo chef cook --release --locked --recipe-path recipe.json --bin p2p-mediastream
COPY Cargo.toml Cargo.lock ./
COPY src ./src
# config/ is copied in case the sources embed config/default.toml (include_str!).
COPY config ./config
RUN cargo build --release --locked --bin p2p-mediastream \
    && install -D -m 0755 target/release/p2p-mediastream /out/p2p-mediastream

# ---------------------------------------------------------------------------------------
FROM debian:bookworm-slim AS runtime
RUN groupadd --system --gid 10001 p2p \
    && useradd --system --uid 10001 --gid p2p --home-dir /app --no-create-home \
        --shell /usr/sbin/nologin p2p \
    && mkdir -p /app/hls /srv/hls
# Relative paths in the default config (public/, hls/, config/) resolve against /app.
WORKDIR /app
COPY --from=builder /out/p2p-mediastream /usr/local/bin/p2p-mediastream
COPY config/default.toml /app/config/default.toml
COPY --from=player /src/public/ /app/public/
USER p2p:p2p
ENV RUST_LOG=info
EXPOSE 8000
# `healthcheck` reads the same config/env as the server and GETs /healthz on its port.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["p2p-mediastream", "healthcheck"]
# SIGTERM = graceful: sessions are closed with 1001, then the server stops (~5 s).
STOPSIGNAL SIGTERM
ENTRYPOINT ["p2p-mediastream"]
