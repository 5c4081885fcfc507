# Stand-in for docker.io/library/nats:<version>-alpine (no registry here).
# Like the real image where the compose file relies on it: the entrypoint runs nats-server
# with the command's arguments (as the alpine image's docker-entrypoint.sh does, a command
# starting with "-" is prefixed with nats-server), client port 4222, monitoring 8222.
# Differs: Debian bookworm's nats-server 2.9.10 (the real tag: 2.10) on Debian instead of
# Alpine, runs as root like the real image; no /etc/nats/nats-server.conf (the compose file
# passes its options as arguments).
ARG BASE
FROM ${BASE}
RUN apt-get update -qq \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        nats-server >/dev/null \
    && rm -rf /var/lib/apt/lists/* \
    && printf '%s\n' '#!/bin/sh' \
        'if [ "${1#-}" != "$1" ]; then set -- nats-server "$@"; fi' \
        'exec "$@"' >/usr/local/bin/docker-entrypoint.sh \
    && chmod 0755 /usr/local/bin/docker-entrypoint.sh \
    && nats-server --version
EXPOSE 4222 6222 8222
ENTRYPOINT ["/usr/local/bin/docker-entrypoint.sh"]
CMD ["nats-server"]
