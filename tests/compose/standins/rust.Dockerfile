# Stand-in for docker.io/library/rust:<version>-slim-bookworm (no registry here).
# Like the real image: Debian bookworm with gcc + libc6-dev + ca-certificates, the
# toolchain under /usr/local/rustup, CARGO_HOME=/usr/local/cargo on PATH, user root.
# Differs: the compiler is this machine's toolchain (mounted at /host/toolchain during
# the build, its version in the label) rather than the tag's version, and there is no
# rustup binary (the Dockerfile calls cargo only); the host's CA bundle is trusted.
ARG BASE
FROM ${BASE}
ENV RUSTUP_HOME=/usr/local/rustup \
    CARGO_HOME=/usr/local/cargo \
    PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
RUN apt-get update -qq \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        ca-certificates gcc libc6-dev >/dev/null \
    && rm -rf /var/lib/apt/lists/*
# bin/ and lib/ only: the docs and sources of the host toolchain are not needed to build.
RUN mkdir -p /usr/local/rustup/toolchain "$CARGO_HOME/bin" \
    && cp -a /host/toolchain/bin /host/toolchain/lib /usr/local/rustup/toolchain/ \
    && for tool in cargo rustc rustdoc; do \
         ln -s /usr/local/rustup/toolchain/bin/$tool "$CARGO_HOME/bin/$tool"; done \
    && cp /host/ca-bundle.crt /etc/ssl/certs/ca-certificates.crt \
    && cargo --version && rustc --version
