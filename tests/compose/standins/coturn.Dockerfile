# Stand-in for docker.io/coturn/coturn:<version> (no registry here).
# Like the real image where the compose file relies on it: arguments given as the
# command go to turnserver, which runs as user nobody; listens on 3478.
# Differs: Debian bookworm's coturn 4.6.1 (the real tag: 4.7.0). 4.6.1 as PID 1 ignores
# SIGTERM (it has no handler, and the kernel drops unhandled signals to PID 1), which 4.7
# handles, so a small shell entrypoint stands in for that: on SIGTERM it stops turnserver.
# No detect-external-ip helper (the compose file replaces the command that uses it).
ARG BASE
FROM ${BASE}
RUN apt-get update -qq \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        coturn >/dev/null \
    && rm -rf /var/lib/apt/lists/* \
    && printf '%s\n' '#!/bin/sh' \
        'turnserver "$@" & pid=$!' \
        'trap "kill -KILL \$pid; exit 0" TERM INT' \
        'wait "$pid"' >/usr/local/bin/turnserver-entrypoint \
    && chmod 0755 /usr/local/bin/turnserver-entrypoint
USER nobody:nogroup
EXPOSE 3478/udp 3478/tcp
ENTRYPOINT ["/usr/local/bin/turnserver-entrypoint"]
CMD ["-n", "--log-file=stdout"]
