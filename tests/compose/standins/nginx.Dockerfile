# Stand-in for docker.io/library/nginx:<version>-alpine (no registry here).
# Like the real image where the compose file relies on it: `nginx -g 'daemon off;'`,
# /etc/nginx/nginx.conf includes /etc/nginx/conf.d/*.conf inside http { } (the compose
# file mounts its server over conf.d/default.conf), logs go to the container's
# stdout/stderr, SIGQUIT stops it gracefully.
# Differs: Debian bookworm's nginx 1.22 (the real tag: 1.27) on Debian instead of Alpine;
# workers run as www-data instead of nginx; Debian's nginx.conf (its sites-enabled default
# server removed, so conf.d is all there is); no /docker-entrypoint.d scripts (templates,
# IPv6 listen), which the compose file does not use.
ARG BASE
FROM ${BASE}
RUN apt-get update -qq \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        nginx >/dev/null \
    && rm -rf /var/lib/apt/lists/* /etc/nginx/sites-enabled/default \
    && ln -sf /dev/stdout /var/log/nginx/access.log \
    && ln -sf /dev/stderr /var/log/nginx/error.log \
    && grep -q 'include /etc/nginx/conf.d/\*.conf;' /etc/nginx/nginx.conf \
    && nginx -v
EXPOSE 80
STOPSIGNAL SIGQUIT
CMD ["nginx", "-g", "daemon off;"]
