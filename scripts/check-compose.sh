#!/usr/bin/env bash
# Static checks of the container setup, no Docker engine needed:
#   1. docker-compose.yml and docker-compose.cluster.yml parse and validate (`docker-compose config -q`; Debian's
#      docker-compose package is installed with apt when no compose is found);
#   2. every build-context file the Dockerfile COPYs exists in the repo and is not
#      excluded by .dockerignore;
#   3. the files the compose files bind-mount exist.
# Exits non-zero with a message on the first kind of failure found (all are listed).
set -euo pipefail

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo_root"

compose_files=(docker-compose.yml docker-compose.cluster.yml)
dockerfile="Dockerfile"
failures=0

fail() {
    echo "check-compose: FAIL: $*" >&2
    failures=$((failures + 1))
}

# --- 1. compose file -------------------------------------------------------------------
compose=()
if command -v docker-compose >/dev/null 2>&1; then
    compose=(docker-compose)
elif command -v docker >/dev/null 2>&1 && docker compose version >/dev/null 2>&1; then
    compose=(docker compose)
elif command -v apt-get >/dev/null 2>&1 && [[ $(id -u) -eq 0 ]]; then
    echo "check-compose: docker-compose not found, installing Debian's docker-compose package" >&2
    apt-get install -y -qq docker-compose >/dev/null 2>&1 \
        || { apt-get update -qq && apt-get install -y -qq docker-compose >/dev/null; }
    compose=(docker-compose)
else
    echo "check-compose: need docker-compose (apt-get install docker-compose) or 'docker compose'" >&2
    exit 2
fi

for compose_file in "${compose_files[@]}"; do
    if "${compose[@]}" -f "$compose_file" config -q; then
        echo "check-compose: $compose_file is valid (${compose[*]} config)"
    else
        fail "$compose_file does not validate; resolved configuration:"
        "${compose[@]}" -f "$compose_file" config >&2 || true
    fi
done

# --- 2. Dockerfile COPY sources ----------------------------------------------------------
# .dockerignore patterns (comments and blank lines dropped, '!' exceptions ignored).
ignore_patterns=()
if [[ -f .dockerignore ]]; then
    while IFS= read -r line || [[ -n $line ]]; do
        line=${line%%#*}
        line=${line#"${line%%[![:space:]]*}"}
        line=${line%"${line##*[![:space:]]}"}
        [[ -z $line || $line == '!'* ]] && continue
        ignore_patterns+=("${line#/}")
    done <.dockerignore
fi

# Is PATH (relative to the context) or one of its parent directories ignored?
is_ignored() {
    local path=${1#./} pattern prefix
    path=${path%/}
    for pattern in "${ignore_patterns[@]}"; do
        pattern=${pattern%/}
        prefix=$path
        while [[ -n $prefix ]]; do
            # shellcheck disable=SC2053 # the pattern is meant to glob
            if [[ $prefix == $pattern || $prefix == ${pattern#\*\*/} ]]; then
                return 0
            fi
            [[ $prefix == */* ]] || break
            prefix=${prefix%/*}
        done
    done
    return 1
}

copies=0
# Join continuation lines, then look at COPY/ADD instructions without --from=.
while read -r instruction rest; do
    [[ ${instruction^^} == COPY || ${instruction^^} == ADD ]] || continue
    read -r -a words <<<"$rest"
    sources=()
    from_stage=0
    for word in "${words[@]}"; do
        case $word in
            --from=*) from_stage=1 ;;
            --*) ;;
            *) sources+=("$word") ;;
        esac
    done
    ((from_stage)) && continue
    ((${#sources[@]} >= 2)) || { fail "cannot parse: $instruction $rest"; continue; }
    unset 'sources[${#sources[@]}-1]' # the last word is the destination
    for src in "${sources[@]}"; do
        copies=$((copies + 1))
        if [[ ! -e $src ]]; then
            fail "$dockerfile copies '$src', which does not exist in the repo"
        elif is_ignored "$src"; then
            fail "$dockerfile copies '$src', but .dockerignore excludes it from the build context"
        fi
    done
done < <(sed -e ':a' -e '/\\$/N; s/\\\n//; ta' "$dockerfile" | grep -E '^[[:space:]]*(COPY|ADD|copy|add)[[:space:]]')
echo "check-compose: checked $copies COPY source(s) in $dockerfile"

# --- 3. bind mounts in the compose files -----------------------------------------------
for compose_file in "${compose_files[@]}"; do
    while read -r mount; do
        host_path=${mount%%:*}
        if [[ ! -e $host_path ]]; then
            fail "$compose_file mounts '$host_path', which does not exist"
        fi
    done < <(grep -oE '^[[:space:]]*-[[:space:]]*"?\./[^:"]+:' "$compose_file" | sed -E 's/^[[:space:]]*-[[:space:]]*"?//')
done

if ((failures > 0)); then
    echo "check-compose: $failures problem(s) found" >&2
    exit 1
fi
echo "check-compose: OK"
