#!/usr/bin/env bash
# Ensure a local Docker registry (Debian's docker-registry package, no systemd needed) answers on
# 127.0.0.1:5000, then push the test images to it:
#
#   127.0.0.1:5000/test_linreg:latest           <- gustavo-test/busybox:latest
#   127.0.0.1:5000/test_multiple_linreg:latest  <- gustavo-test/busybox:alt (distinct image ID)
#   127.0.0.1:5000/web:v1                       <- gustavo-test/web:v1
#   127.0.0.1:5000/web:v2                       <- gustavo-test/web:v2
#
# The registry keeps running in the background after this script exits (PID in
# /tmp/gustavo-registry/registry.pid, log in /tmp/gustavo-registry/registry.log).
# Docker trusts registries on 127.0.0.0/8 without TLS, so no daemon configuration is needed.
#
# usage: scripts/test-registry.sh [--stop]
#   --stop   stop the registry this script started (its data stays in /tmp/gustavo-registry)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=scripts/lib.sh
source "$HERE/lib.sh"

STOP=0
for arg in "$@"; do
    case "$arg" in
        -h|--help) echo "usage: $0 [--stop]"; exit 0 ;;
        --stop) STOP=1 ;;
        *) die "unknown argument: $arg (usage: $0 [--stop])" ;;
    esac
done

REGISTRY=127.0.0.1:5000
REG_DIR=/tmp/gustavo-registry
REG_CONFIG=$REG_DIR/config.yml
REG_LOG=$REG_DIR/registry.log
REG_PID=$REG_DIR/registry.pid
REG_BIN=/usr/bin/docker-registry   # what Debian's docker-registry package installs (dpkg -L)
WAIT_SECONDS=60

# name in the registry (without host)   local source image
PUSHES=(
    "test_linreg:latest          gustavo-test/busybox:latest"
    "test_multiple_linreg:latest gustavo-test/busybox:alt"
    "web:v1                      gustavo-test/web:v1"
    "web:v2                      gustavo-test/web:v2"
)

# 0 when a Docker registry (v2 API) answers on $REGISTRY.
registry_answers() {
    local headers
    headers=$(curl -fsS -o /dev/null -D - --max-time 2 "http://$REGISTRY/v2/" 2>/dev/null) || return 1
    grep -qi '^docker-distribution-api-version: *registry/2' <<<"$headers" \
        || die "something answers on http://$REGISTRY/v2/ but it is not a Docker registry (no Docker-Distribution-Api-Version header)"
}

# 0 when the PID file names a live docker-registry process (guards against a recycled PID).
pid_alive() {
    local pid
    [[ -f $REG_PID ]] && pid=$(cat "$REG_PID") && [[ $pid =~ ^[0-9]+$ ]] || return 1
    # No `| grep -q` under pipefail: grep leaving early fails the pipe (SIGPIPE).
    local cmdline
    kill -0 "$pid" 2>/dev/null && cmdline=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) \
        && [[ $cmdline == *docker-registry* ]]
}

write_config() {
    mkdir -p "$REG_DIR/data"
    cat >"$REG_CONFIG.tmp" <<EOF
# Written by scripts/test-registry.sh — local registry for Gustavo's integration tests.
version: 0.1
log:
  level: info
  fields:
    service: gustavo-test-registry
storage:
  filesystem:
    rootdirectory: $REG_DIR/data
  delete:
    enabled: true
  cache:
    blobdescriptor: inmemory
http:
  addr: $REGISTRY
  headers:
    X-Content-Type-Options: [nosniff]
health:
  storagedriver:
    enabled: true
    interval: 10s
    threshold: 3
EOF
    mv "$REG_CONFIG.tmp" "$REG_CONFIG"
}

start_registry() {
    if registry_answers; then
        log "registry already answers on http://$REGISTRY/v2/; reusing it"
        return 0
    fi
    if pid_alive; then
        log "registry process $(cat "$REG_PID") exists but does not answer yet; waiting for it"
    else
        [[ -x $REG_BIN ]] || die "$REG_BIN not found although docker-registry is installed (check 'dpkg -L docker-registry')"
        write_config
        log "starting $REG_BIN serve $REG_CONFIG (log: $REG_LOG)"
        # setsid + nohup: the registry must outlive this script and its process group.
        setsid nohup "$REG_BIN" serve "$REG_CONFIG" >>"$REG_LOG" 2>&1 </dev/null &
        echo $! >"$REG_PID"
    fi
    local i
    for ((i = 0; i < WAIT_SECONDS * 4; i++)); do
        registry_answers && { log "registry answers on http://$REGISTRY/v2/ (pid $(cat "$REG_PID"))"; return 0; }
        # Only whether it still lives, not what it runs (pid_alive): just after the start
        # the child may still be this script's fork, not yet the registry it execs —
        # taken for a dead registry, that once failed a CI run at once.
        if ! kill -0 "$(cat "$REG_PID")" 2>/dev/null; then
            break
        fi
        sleep 0.25
    done
    echo "----- $REG_LOG (last 50 lines) -----" >&2
    tail -n 50 "$REG_LOG" >&2 || true
    echo "-------------------------------------" >&2
    if pid_alive; then
        die "the registry (pid $(cat "$REG_PID")) did not answer on http://$REGISTRY/v2/ within ${WAIT_SECONDS}s"
    fi
    die "the registry exited before answering on http://$REGISTRY/v2/ (is port ${REGISTRY##*:} taken?)"
}

# Stops the registry named by the PID file (only a live docker-registry process: a recycled
# PID is left alone), waiting for it to exit.
stop_registry() {
    if ! pid_alive; then
        rm -f "$REG_PID"
        log "no registry started by this script is running"
        return 0
    fi
    local pid i
    pid=$(cat "$REG_PID")
    log "stopping the registry (pid $pid)"
    kill "$pid"
    for ((i = 0; i < 40; i++)); do
        kill -0 "$pid" 2>/dev/null || { rm -f "$REG_PID"; log "registry stopped"; return 0; }
        sleep 0.25
    done
    die "the registry (pid $pid) did not exit within 10s"
}

if [[ $STOP -eq 1 ]]; then
    stop_registry
    exit 0
fi

run_quiet() {  # run a command, showing its output only when it fails
    local out
    if ! out=$("$@" 2>&1); then
        printf '%s\n' "$out" >&2
        die "command failed: $*"
    fi
}

ensure_packages docker-registry curl
require_docker

# The images to push; a no-op when they already exist.
bash "$HERE/test-images.sh"

start_registry

for entry in "${PUSHES[@]}"; do
    read -r target source <<<"$entry"
    image_exists "$source" || die "local image $source is missing (scripts/test-images.sh should have built it)"
    log "pushing $source as $REGISTRY/$target"
    run_quiet docker tag "$source" "$REGISTRY/$target"
    run_quiet docker push "$REGISTRY/$target"
done

# Verify the registry lists every pushed tag.
for entry in "${PUSHES[@]}"; do
    read -r target _ <<<"$entry"
    repo=${target%%:*} tag=${target##*:}
    tags=$(curl -fsS "http://$REGISTRY/v2/$repo/tags/list") \
        || die "could not list tags of $repo at http://$REGISTRY/v2/$repo/tags/list"
    grep -q "\"$tag\"" <<<"$tags" || die "tag $tag missing from $repo in the registry: $tags"
done
log "registry tags: $(curl -fsS "http://$REGISTRY/v2/test_linreg/tags/list")"

# Verify Docker can pull back from the registry.
log "checking that Docker pulls $REGISTRY/web:v1 back"
run_quiet docker image rm "$REGISTRY/web:v1"
run_quiet docker pull "$REGISTRY/web:v1"
want=$(docker image inspect -f '{{.Id}}' gustavo-test/web:v1)
got=$(docker image inspect -f '{{.Id}}' "$REGISTRY/web:v1")
[[ $want == "$got" ]] || die "pulled $REGISTRY/web:v1 is $got, expected $want"
# The pull above may reuse local layers; also fetch the manifest and config blob over HTTP.
manifest=$(curl -fsS -H 'Accept: application/vnd.docker.distribution.manifest.v2+json' \
    "http://$REGISTRY/v2/web/manifests/v1") || die "could not fetch the manifest of web:v1"
grep -q "\"digest\": *\"$want\"" <<<"$manifest" \
    || die "the manifest of web:v1 does not reference config $want: $manifest"
curl -fsS -o /dev/null "http://$REGISTRY/v2/web/blobs/$want" || die "could not fetch blob $want of web:v1"

log "local registry ready at $REGISTRY with: $(printf '%s ' "${PUSHES[@]%% *}")"
