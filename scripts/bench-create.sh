#!/usr/bin/env bash
# Benchmark: "create → container running" with Gustavo versus a plain `docker run`, measured in
# the same run on the same machine (design.md §8: Gustavo ≤ 1.2 × docker run).
#
#   scripts/bench-create.sh [-n N] [--variants LIST] [--docker-args ARGS] [--raw FILE] [--no-build]
#
# It builds the release binary (cargo build --release -p gustavo; skip with --no-build, or set
# GUSTAVO_BIN=PATH to use another binary, e.g. one built from a clean checkout), starts
# `gustavo server` with its own local agent on a free loopback port and a fresh temp data dir,
# then for each variant runs N timed iterations (after one untimed warm-up), alternating:
#
#   gustavo: t0; gustavo apps create -n benchI -f FILE --wait; t1      (then apps delete -y --wait)
#   docker:  t0; [docker pull IMAGE;] docker run -d --name X IMAGE;
#            poll docker inspect until .State.Running is true; t1      (then docker rm -f X)
#
# "wall" is t1 − t0 as the user sees it. "engine" is t0 → the container's .State.StartedAt as
# recorded by dockerd, i.e. when the container process really started, without the CLI's own
# polling (gustavo's --wait polls the rollout every 250 ms) or docker-inspect round trips.
#
# Variants (--variants, comma-separated; default all three):
#   pinned           a pinned tag present locally (gustavo-bench/busybox:pinned, a temporary
#                    tag of gustavo-test/busybox:latest): no pull by either side.
#   latest-registry  127.0.0.1:5000/test_linreg (tag latest). Gustavo refreshes `latest` from
#                    the registry on every create; compared with `docker pull` + `docker run`.
#   latest-local     gustavo-test/busybox:latest, which has no reachable registry (docker.io):
#                    Gustavo tries the refresh, fails, and falls back to the local copy;
#                    compared with a plain `docker run` (no pull).
#
# --docker-args ARGS adds words to the plain `docker run -d` (e.g. "--network nebula": Gustavo
# puts containers on the user bridge `nebula` by default, which starts slower than the default
# bridge).
#
# The markdown tables go to stdout, progress to stderr. --raw FILE also writes every sample as
# CSV (variant,tool,iteration,wall_ms,engine_ms). Everything this script starts or creates (the
# server, containers, the temp tag, the data dir) is removed on exit, also on failure or Ctrl-C.
# Needs root (or docker group), a running Docker engine, and for latest-registry the local
# registry (scripts/test-images.sh && scripts/test-registry.sh).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
# shellcheck source=scripts/lib.sh
source "$HERE/lib.sh"

N=20
VARIANTS=pinned,latest-registry,latest-local
RAW=
BUILD=1
DOCKER_ARGS=
usage() { grep -m1 '^#   scripts/' "$0" | sed 's/^#  *//'; }
while [[ $# -gt 0 ]]; do
    case "$1" in
        -n) N="${2:?-n needs a number}"; shift 2 ;;
        --variants) VARIANTS="${2:?--variants needs a list}"; shift 2 ;;
        --docker-args) DOCKER_ARGS="${2?--docker-args needs words}"; shift 2 ;;
        --raw) RAW="${2:?--raw needs a file}"; shift 2 ;;
        --no-build) BUILD=0; shift ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
done
[[ "$N" =~ ^[1-9][0-9]*$ ]] || die "-n must be a positive integer, got '$N'"

BIN="$ROOT/target/release/gustavo"
AGENT=gbench
PINNED=gustavo-bench/busybox:pinned
REGISTRY_IMAGE=127.0.0.1:5000/test_linreg
LOCAL_LATEST=gustavo-test/busybox:latest
DOCKER_PREFIX=gbench-docker-

require_docker
command -v curl >/dev/null || die "curl is required"

# --- cleanup -------------------------------------------------------------------------------
TMP="$(mktemp -d /tmp/gustavo-bench-create.XXXXXX)"
SERVER_PID=
TAGGED=0
cleanup() {
    local rc=$?
    set +e
    if [[ -n "$SERVER_PID" ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill "$SERVER_PID" 2>/dev/null
        for _ in $(seq 100); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$SERVER_PID" 2>/dev/null
        wait "$SERVER_PID" 2>/dev/null
    fi
    docker ps -aq --filter "label=gustavo.node=$AGENT" | xargs -r docker rm -f >/dev/null 2>&1
    docker ps -aq --filter "name=^${DOCKER_PREFIX}" | xargs -r docker rm -f >/dev/null 2>&1
    [[ $TAGGED == 1 ]] && docker rmi "$PINNED" >/dev/null 2>&1
    if [[ $rc -ne 0 && -f "$TMP/server.log" ]]; then
        warn "server log (last 20 lines):"
        tail -n 20 "$TMP/server.log" >&2
    fi
    rm -rf "$TMP"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- binary and server ---------------------------------------------------------------------
prepare_binary
PORT="$(free_port)"
DATA="$TMP/data"
log "starting gustavo server on 127.0.0.1:$PORT (data dir $DATA, agent $AGENT)"
GUSTAVO_LOG=warn "$BIN" server --data-dir "$DATA" --listen "127.0.0.1:$PORT" --agent-name "$AGENT" \
    >"$TMP/server.log" 2>&1 &
SERVER_PID=$!
export GUSTAVO_SERVER="https://127.0.0.1:$PORT"
# TLS by default: the CLI takes server, CA and admin token from the client.toml the server writes.
export GUSTAVO_CONFIG="$DATA/client.toml"
for _ in $(seq 200); do
    [[ -s "$DATA/admin-token" ]] && curl -sf --cacert "$DATA/ca.crt" "$GUSTAVO_SERVER/api/v1/health" >/dev/null && break
    kill -0 "$SERVER_PID" 2>/dev/null || die "the server exited at start"
    sleep 0.1
done
[[ -s "$DATA/client.toml" ]] || die "the server did not come up"
unset GUSTAVO_SERVER GUSTAVO_TOKEN
# registered NODE: is NODE in `nodes list`?
registered() { local out; out="$("$BIN" nodes list -o json 2>/dev/null)" && [[ "$out" == *"\"$1\""* ]]; }
for _ in $(seq 200); do
    registered "$AGENT" && break
    sleep 0.1
done
registered "$AGENT" || die "the local agent did not register"

# --- one iteration of each tool ------------------------------------------------------------
ms_since() { # ms_since T0 T1 -> (T1 - T0) in ms, both "seconds.fraction"
    awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", (b - a) * 1000 }'
}
started_at() { # epoch seconds of a container's .State.StartedAt
    date -d "$(docker inspect -f '{{.State.StartedAt}}' "$1")" +%s.%N
}

# run_gustavo VARIANT IMAGE I -> "wall_ms engine_ms"
run_gustavo() {
    local app="bench$3" file="$TMP/bench$3.yml" t0 t1 st
    printf '%s:\n  docker_image: "%s"\n' "$app" "$2" >"$file"
    t0=$EPOCHREALTIME
    "$BIN" apps create -n "$app" -f "$file" --wait >/dev/null 2>>"$TMP/cli.log" \
        || die "gustavo apps create -n $app failed (see below)$(tail -n 5 "$TMP/cli.log")"
    t1=$EPOCHREALTIME
    [[ "$(docker inspect -f '{{.State.Running}}' "$AGENT.$app.1")" == true ]] \
        || die "$AGENT.$app.1 is not running after apps create --wait"
    st="$(started_at "$AGENT.$app.1")"
    "$BIN" apps delete -n "$app" -y --wait >/dev/null 2>>"$TMP/cli.log" \
        || die "gustavo apps delete -n $app failed"
    echo "$(ms_since "$t0" "$t1") $(ms_since "$t0" "$st")"
}

# run_docker VARIANT IMAGE I PULL -> "wall_ms engine_ms"
run_docker() {
    local name="$DOCKER_PREFIX$3" t0 t1 st
    t0=$EPOCHREALTIME
    if [[ $4 == 1 ]]; then
        docker pull -q "$2" >/dev/null || die "docker pull $2 failed"
    fi
    # shellcheck disable=SC2086
    docker run -d --name "$name" $DOCKER_ARGS "$2" >/dev/null || die "docker run $DOCKER_ARGS $2 failed"
    until [[ "$(docker inspect -f '{{.State.Running}}' "$name")" == true ]]; do :; done
    t1=$EPOCHREALTIME
    st="$(started_at "$name")"
    docker rm -f "$name" >/dev/null
    echo "$(ms_since "$t0" "$t1") $(ms_since "$t0" "$st")"
}

# stats -> "min median p90 max" of the numbers on stdin (median: mean of the middle two for
# even counts; p90: nearest rank)
stats() {
    sort -n | awk '{ v[NR] = $1 } END {
        n = NR; med = (n % 2) ? v[(n + 1) / 2] : (v[n / 2] + v[n / 2 + 1]) / 2
        r = int(0.9 * n); if (r < 0.9 * n) r++
        printf "%.0f %.0f %.0f %.0f\n", v[1], med, v[r], v[n] }'
}

# --- variants ------------------------------------------------------------------------------
SAMPLES="$TMP/samples.csv"
: >"$SAMPLES"
declare -a ORDER=()
IFS=, read -r -a WANT <<<"$VARIANTS"
for v in "${WANT[@]}"; do
    case "$v" in
        pinned)
            docker tag "$LOCAL_LATEST" "$PINNED" || die "cannot tag $LOCAL_LATEST (run scripts/test-images.sh)"
            TAGGED=1
            img=$PINNED pull=0 ;;
        latest-registry)
            curl -sf "http://127.0.0.1:5000/v2/test_linreg/tags/list" >/dev/null \
                || die "no registry on 127.0.0.1:5000 (run scripts/test-images.sh && scripts/test-registry.sh)"
            img=$REGISTRY_IMAGE pull=1 ;;
        latest-local)
            image_exists "$LOCAL_LATEST" || die "$LOCAL_LATEST is missing (run scripts/test-images.sh)"
            img=$LOCAL_LATEST pull=0 ;;
        *) die "unknown variant: $v (pinned, latest-registry, latest-local)" ;;
    esac
    ORDER+=("$v")
    log "variant $v: image $img, warm-up + $N iterations each, alternating gustavo / docker"
    run_gustavo "$v" "$img" 0 >/dev/null
    run_docker "$v" "$img" 0 "$pull" >/dev/null
    for i in $(seq "$N"); do
        read -r gw ge < <(run_gustavo "$v" "$img" "$i")
        read -r dw de < <(run_docker "$v" "$img" "$i" "$pull")
        echo "$v,gustavo,$i,$gw,$ge" >>"$SAMPLES"
        echo "$v,docker,$i,$dw,$de" >>"$SAMPLES"
        printf '  %s %2d/%d  gustavo %7s ms  docker %7s ms\n' "$v" "$i" "$N" "$gw" "$dw" >&2
    done
done
[[ -n "$RAW" ]] && { echo "variant,tool,iteration,wall_ms,engine_ms"; cat "$SAMPLES"; } >"$RAW"

# --- report --------------------------------------------------------------------------------
col() { # col VARIANT TOOL FIELD(4=wall,5=engine)
    awk -F, -v v="$1" -v t="$2" -v f="$3" '$1 == v && $2 == t { print $f }' "$SAMPLES"
}
docker_cmd() {
    case "$1" in
        latest-registry) echo "docker pull + docker run -d${DOCKER_ARGS:+ $DOCKER_ARGS}" ;;
        *) echo "docker run -d${DOCKER_ARGS:+ $DOCKER_ARGS}" ;;
    esac
}
echo
echo "Create → running, N=$N per cell (ms; $(date -u +%Y-%m-%d), $(nproc) cores, Docker $(docker version --format '{{.Server.Version}}'), $SRC)"
echo "Load average (1/5/15 min) at start: $LOAD0; at end: $(cut -d" " -f1-3 /proc/loadavg)"
echo
echo "| variant | what | tool | min | median | p90 | max | ratio of medians |"
echo "|---|---|---|--:|--:|--:|--:|--:|"
for v in "${ORDER[@]}"; do
    for what in wall engine; do
        f=4; [[ $what == engine ]] && f=5
        read -r gmin gmed gp90 gmax < <(col "$v" gustavo $f | stats)
        read -r dmin dmed dp90 dmax < <(col "$v" docker $f | stats)
        ratio="$(awk -v g="$gmed" -v d="$dmed" 'BEGIN { printf "%.2f", (d > 0) ? g / d : 0 }')"
        label="CLI returns"; [[ $what == engine ]] && label="container started"
        echo "| $v | $label | gustavo apps create --wait | $gmin | $gmed | $gp90 | $gmax | **$ratio ×** |"
        echo "| | | $(docker_cmd "$v") | $dmin | $dmed | $dp90 | $dmax | |"
    done
done
