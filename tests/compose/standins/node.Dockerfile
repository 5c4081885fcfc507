# Stand-in for docker.io/library/node:<version>-bookworm-slim (no registry here).
# Like the real image: Debian bookworm, node and npm under /usr/local, user root.
# Differs: node and npm are this machine's (mounted at /host/node and /host/npm during the
# build, version in the label), there is no docker-entrypoint.sh, yarn or `node` user
# (the Dockerfile only runs npm), and npm trusts the host's CA bundle.
ARG BASE
FROM ${BASE}
RUN apt-get update -qq \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        ca-certificates >/dev/null \
    && rm -rf /var/lib/apt/lists/* \
    && cp /host/ca-bundle.crt /etc/ssl/certs/ca-certificates.crt \
    && install -m 0755 /host/node /usr/local/bin/node \
    && mkdir -p /usr/local/lib/node_modules \
    && cp -a /host/npm /usr/local/lib/node_modules/npm \
    && ln -s ../lib/node_modules/npm/bin/npm-cli.js /usr/local/bin/npm \
    && ln -s ../lib/node_modules/npm/bin/npx-cli.js /usr/local/bin/npx \
    && node --version && npm --version
ENV NODE_EXTRA_CA_CERTS=/etc/ssl/certs/ca-certificates.crt
CMD ["node"]
