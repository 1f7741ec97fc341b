# shellcheck shell=bash
# Shared helpers for the test-environment scripts. Source it; do not run it.

if [[ -t 2 ]]; then
    _c_red=$'\e[1;31m' _c_yel=$'\e[1;33m' _c_blu=$'\e[1;34m' _c_off=$'\e[0m'
else
    _c_red='' _c_yel='' _c_blu='' _c_off=''
fi

log()  { printf '%s[%s]%s %s\n' "$_c_blu" "${0##*/}" "$_c_off" "$*" >&2; }
warn() { printf '%s[%s] WARNING:%s %s\n' "$_c_yel" "${0##*/}" "$_c_off" "$*" >&2; }
die()  { printf '%s[%s] ERROR:%s %s\n' "$_c_red" "${0##*/}" "$_c_off" "$*" >&2; exit 1; }

banner() {
    local line='================================================================'
    printf '\n%s%s\n== %s\n%s%s\n' "$_c_blu" "$line" "$*" "$line" "$_c_off" >&2
}

# Run a command as root (directly when already root, else through sudo).
as_root() {
    if [[ $EUID -eq 0 ]]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        die "need root privileges to run '$*' (not root and sudo is not installed)"
    fi
}

pkg_installed() {
    [[ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" == "install ok installed" ]]
}

# ensure_packages PKG... — apt-get install the packages that are not installed yet.
# Runs `apt-get update` only when something is missing.
ensure_packages() {
    local missing=() p
    command -v dpkg-query >/dev/null 2>&1 \
        || die "dpkg-query not found: these scripts expect a Debian/Ubuntu machine (wanted packages: $*)"
    for p in "$@"; do
        pkg_installed "$p" || missing+=("$p")
    done
    [[ ${#missing[@]} -eq 0 ]] && return 0
    log "installing missing Debian packages: ${missing[*]}"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q \
        || die "apt-get update failed (needed to install: ${missing[*]})"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" \
        || die "apt-get install failed for: ${missing[*]}"
    for p in "${missing[@]}"; do
        pkg_installed "$p" || die "package '$p' still not installed after apt-get install"
    done
}

require_docker() {
    command -v docker >/dev/null 2>&1 \
        || die "the Docker engine is required to run the tests, but the 'docker' CLI is not installed"
    local err
    if ! err="$(docker info --format '{{.ServerVersion}}' 2>&1)"; then
        die "the Docker engine is required to run the tests, but 'docker info' failed (is dockerd running and is ${DOCKER_HOST:-/var/run/docker.sock} accessible?): $err"
    fi
}

image_exists() { docker image inspect "$1" >/dev/null 2>&1; }

# prepare_binary — for the benchmarks: picks $GUSTAVO_BIN or the release build (building it
# when $BUILD is 1), records where it came from in $SRC and the load in $LOAD0, and runs a
# private copy in $TMP so a concurrent cargo build cannot swap it mid-run. Uses $ROOT, $TMP.
prepare_binary() {
    BIN="${GUSTAVO_BIN:-$BIN}"
    if [[ $BUILD == 1 && -z "${GUSTAVO_BIN:-}" ]]; then
        log "building the release binary (cargo build --release -p gustavo)"
        (cd "$ROOT" && cargo build --release -q -p gustavo) || die "cargo build failed"
    fi
    [[ -x "$BIN" ]] || die "$BIN not found; run cargo build --release -p gustavo"
    if [[ -n "${GUSTAVO_BIN:-}" ]]; then
        SRC="binary $GUSTAVO_BIN"
    else
        SRC="commit $(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo unknown)"
    fi
    LOAD0="$(cut -d" " -f1-3 /proc/loadavg)"
    # Run a private copy, so a concurrent cargo build cannot swap the binary mid-run.
    cp "$BIN" "$TMP/gustavo"
    log "binary: $BIN ($("$BIN" --version), $SRC), run as $TMP/gustavo"
    BIN="$TMP/gustavo"
}

# free_port — a TCP port on loopback that nothing listens on.
free_port() {
    local p
    for _ in $(seq 200); do
        p=$((20000 + RANDOM % 40000))
        [[ -z "$(ss -Htln "sport = :$p")" ]] && { echo "$p"; return; }
    done
    die "no free port found"
}
