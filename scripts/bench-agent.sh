#!/usr/bin/env bash
# Benchmark: the idle footprint of one `gustavo agent` (design.md §8: < 15 MB RSS, < 1 % of a
# core, < 250 bit/s uplink), plus the server's RSS while it holds that one agent.
#
#   scripts/bench-agent.sh [--window SECONDS] [--heartbeat D] [--no-build] [--cold] [--pages FILE]
#
# It builds the release binary (cargo build --release -p gustavo; skip with --no-build, or set
# GUSTAVO_BIN=PATH to use another binary, e.g. one built from a clean checkout), starts
# `gustavo server --no-agent` on a free loopback port with a fresh temp data dir, then one
# `gustavo agent` (heartbeat 60 s, the default, unless --heartbeat D is given; default log
# level) with `--group default`. It
# creates one app there (gustavo-test/web:v1, a pinned local image) with `--wait`, lets things
# settle for 5 s, and then measures an idle window of --window seconds (default 60):
#
#   RSS       VmRSS and VmHWM from /proc/PID/status at the end of the window, and VmRSS split
#             into RssAnon (the agent's own memory) and RssFile (pages of the mapped binary
#             and libraries: shared with other processes mapping them, dropped and read
#             again under memory pressure)
#   CPU       (utime + stime) delta from /proc/PID/stat / CLK_TCK / elapsed wall time,
#             in % of one core; as a finer cross-check, the on-CPU nanoseconds of its threads
#             from /proc/PID/task/*/schedstat (ticks are 10 ms, i.e. 0.017 % over 60 s)
#   payload   TCP payload bytes between the agent and the server: `ss -tinp` (bytes_sent /
#             bytes_received of the agent's sockets to the server port, filtered by its PID),
#             sampled every second so a connection that closes within the window still
#             counts up to its last sample
#   wire      IP-layer bytes on loopback to / from the server port (headers and pure ACKs
#             included), from two counting rules the script adds to iptables' OUTPUT chain
#             and removes again; skipped if iptables is unusable. Only the agent talks to
#             the server during the window, so this is the agent's traffic.
#
# With --cold the agent runs from a copy of the binary that is not in the page cache, as on a
# device after boot (the server and the CLI keep the original, so their pages do not count).
# With --pages FILE the pages of the agent's binary present in its memory at the end of the
# window are written to FILE (scripts/agent-order.py pages), to record which functions an
# idle agent runs (see scripts/agent-order.py).
#
# Prints a markdown table on stdout (progress on stderr). Everything it starts or creates is
# removed on exit, also on failure or Ctrl-C. Needs root, a running Docker engine and the
# local test images (scripts/test-images.sh).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
# shellcheck source=scripts/lib.sh
source "$HERE/lib.sh"

WINDOW=60
BUILD=1
COLD=0
PAGES=
HEARTBEAT=60s
usage() { grep -m1 '^#   scripts/' "$0" | sed 's/^#  *//'; }
while [[ $# -gt 0 ]]; do
    case "$1" in
        --window) WINDOW="${2:?--window needs seconds}"; shift 2 ;;
        --heartbeat) HEARTBEAT="${2:?--heartbeat needs a duration}"; shift 2 ;;
        --no-build) BUILD=0; shift ;;
        --cold) COLD=1; shift ;;
        --pages) PAGES="${2:?--pages needs a file}"; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
done
[[ "$WINDOW" =~ ^[1-9][0-9]*$ ]] || die "--window must be a positive integer, got '$WINDOW'"

BIN="$ROOT/target/release/gustavo"
NODE=gbench-agent
APP=benchidle
IMAGE=gustavo-test/web:v1

require_docker
command -v curl >/dev/null || die "curl is required"
command -v ss >/dev/null || die "ss (iproute2) is required"
image_exists "$IMAGE" || die "$IMAGE is missing (run scripts/test-images.sh)"

# --- cleanup -------------------------------------------------------------------------------
TMP="$(mktemp -d /tmp/gustavo-bench-agent.XXXXXX)"
SERVER_PID=
AGENT_PID=
declare -a IPT_RULES=()
stop_pid() {
    local pid=$1
    [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null || return 0
    kill "$pid" 2>/dev/null
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
}
cleanup() {
    local rc=$? r
    set +e
    stop_pid "$AGENT_PID"
    stop_pid "$SERVER_PID"
    for r in "${IPT_RULES[@]}"; do
        # shellcheck disable=SC2086
        iptables -D OUTPUT $r 2>/dev/null
    done
    docker ps -aq --filter "label=gustavo.node=$NODE" | xargs -r docker rm -f >/dev/null 2>&1
    if [[ $rc -ne 0 ]]; then
        for f in server agent; do
            [[ -f "$TMP/$f.log" ]] || continue
            warn "$f log (last 15 lines):"
            tail -n 15 "$TMP/$f.log" >&2
        done
    fi
    rm -rf "$TMP"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- binary, server, agent -----------------------------------------------------------------
prepare_binary
AGENT_BIN="$BIN"
if [[ $COLD == 1 ]]; then
    AGENT_BIN="$TMP/gustavo-agent"
    cp "$BIN" "$AGENT_BIN"
    python3 -c 'import os, sys
fd = os.open(sys.argv[1], os.O_RDONLY); os.fsync(fd)
os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)' "$AGENT_BIN" || die "cannot drop $AGENT_BIN from the page cache"
fi
PORT="$(free_port)"
DATA="$TMP/data"
export GUSTAVO_SERVER="https://127.0.0.1:$PORT"
# TLS by default: the CLI takes server, CA and admin token from the client.toml the server writes.
export GUSTAVO_CONFIG="$DATA/client.toml"
log "starting gustavo server --no-agent on 127.0.0.1:$PORT"
"$BIN" server --data-dir "$DATA" --listen "127.0.0.1:$PORT" --no-agent >"$TMP/server.log" 2>&1 &
SERVER_PID=$!
for _ in $(seq 200); do
    [[ -s "$DATA/join-token" ]] && curl -sf --cacert "$DATA/ca.crt" "$GUSTAVO_SERVER/api/v1/health" >/dev/null && break
    kill -0 "$SERVER_PID" 2>/dev/null || die "the server exited at start"
    sleep 0.1
done
[[ -s "$DATA/client.toml" ]] || die "the server did not come up"
unset GUSTAVO_SERVER GUSTAVO_TOKEN

log "starting gustavo agent --name $NODE --heartbeat $HEARTBEAT"
# The agent gets the join token by flag, not by the exported admin token.
env -u GUSTAVO_TOKEN "$AGENT_BIN" agent --server "https://127.0.0.1:$PORT" --token "$(cat "$DATA/join-token")" \
    --name "$NODE" --group default --heartbeat "$HEARTBEAT" --data-dir "$TMP/agent" >"$TMP/agent.log" 2>&1 &
AGENT_PID=$!
# registered NODE: is NODE in `nodes list`?
registered() { local out; out="$("$BIN" nodes list -o json 2>/dev/null)" && [[ "$out" == *"\"$1\""* ]]; }
for _ in $(seq 200); do
    registered "$NODE" && break
    kill -0 "$AGENT_PID" 2>/dev/null || die "the agent exited at start"
    sleep 0.1
done

printf '%s:\n  docker_image: "%s"\n' "$APP" "$IMAGE" >"$TMP/app.yml"
"$BIN" apps create -n "$APP" -f "$TMP/app.yml" --wait >/dev/null 2>"$TMP/cli.log" \
    || die "apps create failed: $(cat "$TMP/cli.log")"
[[ "$(docker inspect -f '{{.State.Running}}' "$NODE.$APP.1")" == true ]] \
    || die "$NODE.$APP.1 is not running"
sleep 5

# --- counters ------------------------------------------------------------------------------
# Wire counters: two rules without a target only count. Both directions leave through lo.
WIRE=0
if command -v iptables >/dev/null 2>&1; then
    up="-o lo -p tcp --dport $PORT -m comment --comment gbench-up-$$"
    down="-o lo -p tcp --sport $PORT -m comment --comment gbench-down-$$"
    # shellcheck disable=SC2086
    if iptables -I OUTPUT 1 $up 2>/dev/null; then
        IPT_RULES+=("$up")
        # shellcheck disable=SC2086
        iptables -I OUTPUT 1 $down 2>/dev/null && { IPT_RULES+=("$down"); WIRE=1; }
    fi
    [[ $WIRE == 1 ]] || warn "iptables is unusable here; wire bytes are not measured"
fi
wire_bytes() { # wire_bytes up|down -> bytes counted by that rule
    iptables -L OUTPUT -n -v -x 2>/dev/null | awk -v c="gbench-$1-$$" 'index($0, c) { print $2; exit }'
}

cpu_ticks() { # utime + stime of PID (fields 14 and 15; the comm field may hold spaces)
    sed 's/^.*) //' "/proc/$1/stat" | awk '{ print $12 + $13 }'
}
cpu_ns() { # on-CPU nanoseconds of PID's live threads (schedstat; finer than the 10 ms ticks)
    cat /proc/"$1"/task/*/schedstat 2>/dev/null | awk '{ t += $1 } END { printf "%.0f", t }'
}
status_kb() { awk -v k="$2:" '$1 == k { print $2 }' "/proc/$1/status"; }

# ss_sample -> "LOCALPORT SENT RECEIVED" per socket of the agent to the server port
ss_sample() {
    ss -tinpH state established "( dport = :$PORT )" 2>/dev/null | awk -v pid="pid=$AGENT_PID," '
        /users:\(/ { mine = index($0, pid) > 0; n = split($3, a, ":"); lport = a[n]
                     if (index($0, "bytes_") == 0) next }
        mine && /bytes_/ {
            s = 0; r = 0
            if (match($0, /bytes_sent:[0-9]+/))     s = substr($0, RSTART + 11, RLENGTH - 11)
            if (match($0, /bytes_received:[0-9]+/)) r = substr($0, RSTART + 15, RLENGTH - 15)
            print lport, s, r; mine = 0 }'
}

CLK_TCK="$(getconf CLK_TCK)"
declare -A START_S START_R LAST_S LAST_R
while read -r p s r; do START_S[$p]=$s; START_R[$p]=$r; LAST_S[$p]=$s; LAST_R[$p]=$r; done < <(ss_sample)
[[ ${#START_S[@]} -gt 0 ]] || die "ss shows no connection of the agent (pid $AGENT_PID) to port $PORT"
[[ $WIRE == 1 ]] && { wu0="$(wire_bytes up)"; wd0="$(wire_bytes down)"; }
c0="$(cpu_ticks "$AGENT_PID")"
n0="$(cpu_ns "$AGENT_PID")"
sc0="$(cpu_ticks "$SERVER_PID")"
t0=$EPOCHREALTIME
log "idle window: $WINDOW s (agent pid $AGENT_PID, ${#START_S[@]} connection(s) to the server)"

END=$(( ${t0%.*} + WINDOW ))
while (( ${EPOCHREALTIME%.*} < END )); do
    sleep 1
    while read -r p s r; do LAST_S[$p]=$s; LAST_R[$p]=$r; done < <(ss_sample)
done

t1=$EPOCHREALTIME
c1="$(cpu_ticks "$AGENT_PID")"
n1="$(cpu_ns "$AGENT_PID")"
sc1="$(cpu_ticks "$SERVER_PID")"
[[ $WIRE == 1 ]] && { wu1="$(wire_bytes up)"; wd1="$(wire_bytes down)"; }
if [[ -n "$PAGES" ]]; then
    python3 "$HERE/agent-order.py" pages "$AGENT_PID" "$AGENT_BIN" >"$PAGES" || die "cannot read the agent's pages"
fi
rss="$(status_kb "$AGENT_PID" VmRSS)"; hwm="$(status_kb "$AGENT_PID" VmHWM)"
anon="$(status_kb "$AGENT_PID" RssAnon)"; file="$(status_kb "$AGENT_PID" RssFile)"
srss="$(status_kb "$SERVER_PID" VmRSS)"; shwm="$(status_kb "$SERVER_PID" VmHWM)"
threads="$(status_kb "$AGENT_PID" Threads)"
kill -0 "$AGENT_PID" || die "the agent died during the window"

sent=0 recv=0
for p in "${!LAST_S[@]}"; do
    sent=$(( sent + LAST_S[$p] - ${START_S[$p]:-0} ))
    recv=$(( recv + LAST_R[$p] - ${START_R[$p]:-0} ))
done
conns=${#LAST_S[@]}

elapsed="$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }')"
calc() { awk "BEGIN { printf \"$1\", $2 }"; }
cpu="$(calc %.3f "($c1 - $c0) / $CLK_TCK / $elapsed * 100")"
cpu_fine="$(calc %.4f "($n1 - $n0) / 1e9 / $elapsed * 100")"
scpu="$(calc %.3f "($sc1 - $sc0) / $CLK_TCK / $elapsed * 100")"
up_bps="$(calc %.0f "$sent * 8 / $elapsed")"
down_bps="$(calc %.0f "$recv * 8 / $elapsed")"
mb() { calc %.1f "$1 / 1024"; }
verdict() { awk -v v="$1" -v t="$2" 'BEGIN { print (v + 0 < t + 0) ? "met" : "**missed**" }'; }

echo
echo "Agent idle footprint over ${elapsed} s ($(date -u +%Y-%m-%d), $(nproc) cores, release build, heartbeat $HEARTBEAT, 1 app / 1 container, $SRC$([[ $COLD == 1 ]] && echo ", the agent's copy out of the page cache at start"))"
echo "Load average (1/5/15 min) at start: $LOAD0; at end: $(cut -d" " -f1-3 /proc/loadavg)"
echo
echo "| figure | value | target (design.md §8) | |"
echo "|---|--:|---|---|"
# The target is in MB (10^6 bytes): 15 MB is 14.3 MiB.
mbd() { calc "${2:-%.1f}" "$1 * 1024 / 1000000"; }
echo "| agent RSS at end (VmRSS) | $(mb "$rss") MiB ($(mbd "$rss") MB) | < 15 MB | $(verdict "$(mbd "$rss" %.3f)" 15) |"
echo "| agent peak RSS (VmHWM) | $(mb "$hwm") MiB | | |"
echo "| of the RSS: anonymous (RssAnon) / file-backed, mostly the binary's code (RssFile) | $(mb "$anon") / $(mb "$file") MiB | | |"
echo "| agent CPU, /proc/PID/stat utime+stime ($(( c1 - c0 )) ticks of 1/$CLK_TCK s) | $cpu % of one core | < 1 % | $(verdict "$cpu" 1) |"
echo "| agent CPU, /proc/PID/task/*/schedstat (ns) | $cpu_fine % of one core | < 1 % | $(verdict "$cpu_fine" 1) |"
echo "| agent uplink, TCP payload (ss bytes_sent) | $up_bps bit/s ($sent B) | < 250 bit/s | $(verdict "$up_bps" 250) |"
echo "| agent downlink, TCP payload (ss bytes_received) | $down_bps bit/s ($recv B) | | |"
if [[ $WIRE == 1 ]]; then
    wup=$(( wu1 - wu0 )) wdown=$(( wd1 - wd0 ))
    wup_bps="$(calc %.0f "$wup * 8 / $elapsed")"
    echo "| agent uplink, IP bytes on the wire (iptables) | $wup_bps bit/s ($wup B) | < 250 bit/s | $(verdict "$wup_bps" 250) |"
    echo "| agent downlink, IP bytes on the wire (iptables) | $(calc %.0f "$wdown * 8 / $elapsed") bit/s ($wdown B) | | |"
fi
echo "| agent threads / connections to the server | $threads / $conns | | |"
echo "| server RSS with one agent (VmRSS / VmHWM) | $(mb "$srss") / $(mb "$shwm") MiB | | |"
echo "| server CPU | $scpu % of one core | | |"
