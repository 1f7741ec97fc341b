#!/usr/bin/env bash
# The project's test command (README; .ci/run calls it). On a fresh Debian machine with a running
# Docker engine it installs what is missing, builds the local test images, starts a local registry
# on 127.0.0.1:5000, then runs fmt, clippy, the dependency policy check and the whole test suite.
#
# usage: scripts/test.sh [--quick] [-- <extra cargo-nextest arguments>]
#   --quick   skip cargo fmt and cargo clippy (local iteration)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

usage() { sed -n 's/^# \{0,1\}//; 2,7p' "${BASH_SOURCE[0]}"; }

QUICK=0
NEXTEST_ARGS=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --quick) QUICK=1 ;;
        -h|--help) usage; exit 0 ;;
        --) shift; NEXTEST_ARGS=("$@"); break ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
    shift
done

# Debian packages the test environment needs.
# prometheus: for promtool, which checks the /metrics output (the daemon is not used).
# openssh-client, debootstrap, systemd: `gustavo hosts install` tests (ssh/ssh-keygen, the
# Debian test-host image, systemd-analyze verify of the agent's unit).
# python3-venv: virtualenvs for the real Sinfonia client (sinfonia-tier3 from PyPI) and the
# real Glances 4 and glances-api client.
# glances, python3-bottle: Debian's real Glances 3.3 (API v3; bottle is only a Recommends).
# stunnel4, openssl: a Docker API over TLS with client certificates (watched hosts).
PACKAGES=(busybox-static docker-registry curl jq prometheus openssh-client debootstrap systemd python3-venv glances python3-bottle stunnel4 openssl wireguard-go wireguard-tools iproute2 iptables)
# Crates that must never be linked into Gustavo (no OpenSSL, no aws-lc).
FORBIDDEN_CRATES=(aws-lc-rs aws-lc-sys openssl-sys)

export GUSTAVO_TEST_REGISTRY=127.0.0.1:5000
SINFONIA_TIER3_VERSION=0.7.4
GLANCES_VERSION=4.5.8
GLANCES_API_VERSION=0.9.0

TIMINGS=()
CURRENT_PHASE=""
START=$SECONDS
phase_start=$SECONDS

phase() {
    finish_phase
    CURRENT_PHASE=$1
    phase_start=$SECONDS
    banner "$1"
}
finish_phase() {
    [[ -n $CURRENT_PHASE ]] && TIMINGS+=("$(printf '%5ss  %s' "$((SECONDS - phase_start))" "$CURRENT_PHASE")")
    CURRENT_PHASE=""
}
on_exit() {
    local rc=$?
    if [[ $rc -ne 0 ]]; then
        local failed=${CURRENT_PHASE:-setup}
        finish_phase
        printf '\n' >&2
        warn "FAILED in phase: $failed (exit $rc) after $((SECONDS - START))s"
        # The phases' timings, the failed one last, as on success.
        [[ ${#TIMINGS[@]} -gt 0 ]] && printf '%s\n' "${TIMINGS[@]}" >&2
    fi
}
trap on_exit EXIT

# check_crate_absent CRATE — fail when CRATE is in the workspace's normal dependency tree.
# `cargo tree -i X` exits 0 and prints the inverse tree when X is present, and exits non-zero with
# "did not match any packages" when it is absent; any other failure is a real error.
check_crate_absent() {
    local crate=$1 out rc=0
    out=$(cargo tree --workspace --locked -e normal -i "$crate" 2>&1) || rc=$?
    if [[ $rc -eq 0 ]]; then
        printf '%s\n' "$out" >&2
        die "forbidden crate $crate is in the dependency tree (inverse tree above)"
    fi
    if grep -q 'did not match any packages' <<<"$out"; then
        log "ok: $crate is not in the dependency tree"
        return 0
    fi
    printf '%s\n' "$out" >&2
    die "'cargo tree -i $crate' failed unexpectedly (output above; 'multiple ... packages' means it IS present)"
}

phase "Prerequisites"
ensure_packages "${PACKAGES[@]}"
require_docker
command -v promtool >/dev/null 2>&1 || die "promtool is missing although the prometheus package is installed"
log "docker engine $(docker info --format '{{.ServerVersion}}')"
command -v cargo >/dev/null 2>&1 \
    || die "cargo not found: install rustup (https://rustup.rs); the toolchain is pinned in rust-toolchain.toml"
cargo --version >&2
if ! cargo nextest --version >/dev/null 2>&1; then
    log "cargo-nextest is missing; installing it"
    cargo install cargo-nextest --locked || die "cargo install cargo-nextest failed"
fi
cargo nextest --version >&2

phase "Sinfonia client (sinfonia-tier3 $SINFONIA_TIER3_VERSION, PyPI)"
# The real Tier-3 client deploys through our Sinfonia API in the e2e tests
# (crates/gustavo/tests/sinfonia); they fail loudly without it.
SINFONIA_VENV="${XDG_CACHE_HOME:-$HOME/.cache}/gustavo-test/sinfonia-venv"
if ! "$SINFONIA_VENV/bin/sinfonia-tier3" --version 2>/dev/null | grep -q "$SINFONIA_TIER3_VERSION"; then
    python3 -m venv "$SINFONIA_VENV" || die "cannot create a virtualenv at $SINFONIA_VENV"
    "$SINFONIA_VENV/bin/pip" install --quiet "sinfonia-tier3==$SINFONIA_TIER3_VERSION" \
        || die "pip install sinfonia-tier3==$SINFONIA_TIER3_VERSION failed"
fi
export GUSTAVO_SINFONIA_TIER3="$SINFONIA_VENV/bin/sinfonia-tier3"
log "sinfonia-tier3: $("$GUSTAVO_SINFONIA_TIER3" --version)"

phase "Glances $GLANCES_VERSION and glances-api $GLANCES_API_VERSION (PyPI)"
# Real Glances 4 (API v4) beside Debian's Glances 3 (API v3), and Home Assistant's
# glances-api client, for crates/gustavo/tests/glances; they fail loudly without them.
GLANCES_VENV="${XDG_CACHE_HOME:-$HOME/.cache}/gustavo-test/glances-venv"
if ! "$GLANCES_VENV/bin/glances" --version 2>/dev/null | grep -q "$GLANCES_VERSION" \
    || ! "$GLANCES_VENV/bin/python" -c "import glances_api" 2>/dev/null; then
    python3 -m venv "$GLANCES_VENV" || die "cannot create a virtualenv at $GLANCES_VENV"
    "$GLANCES_VENV/bin/pip" install --quiet "glances[web]==$GLANCES_VERSION" "glances-api==$GLANCES_API_VERSION" \
        || die "pip install glances[web]==$GLANCES_VERSION glances-api==$GLANCES_API_VERSION failed"
fi
export GUSTAVO_GLANCES4="$GLANCES_VENV/bin/glances"
export GUSTAVO_GLANCES_PYTHON="$GLANCES_VENV/bin/python"
export GUSTAVO_GLANCES3=/usr/bin/glances
log "glances: $("$GUSTAVO_GLANCES4" --version | head -1 | tr -s '\t' ' '); $("$GUSTAVO_GLANCES3" --version | head -1)"

phase "Test images"
bash scripts/test-images.sh

phase "Local registry ($GUSTAVO_TEST_REGISTRY)"
bash scripts/test-registry.sh

if [[ $QUICK -eq 0 ]]; then
    phase "cargo fmt --check"
    cargo fmt --all -- --check || die "formatting differs; run 'cargo fmt --all'"

    phase "cargo clippy"
    cargo clippy --workspace --all-targets --locked -- -D warnings
else
    log "--quick: skipping cargo fmt and cargo clippy"
fi

phase "Dependency policy (no ${FORBIDDEN_CRATES[*]})"
for crate in "${FORBIDDEN_CRATES[@]}"; do
    check_crate_absent "$crate"
done

phase "cargo nextest run"
log "GUSTAVO_TEST_REGISTRY=$GUSTAVO_TEST_REGISTRY"
cargo nextest run --workspace --locked --no-fail-fast "${NEXTEST_ARGS[@]}"

phase "Leftovers on the engine"
# Every test removes what it made; the agents' shared `nebula` network is the product's,
# made on demand, so it is removed here once no test can be using it. A container left
# behind is a leak: named, removed, and the run fails.
leaked=$(docker ps -aq --filter label=gustavo.node)
if [[ -n $leaked ]]; then
    docker ps -a --filter label=gustavo.node --format '{{.Names}} ({{.Status}})' >&2
    docker rm -f $leaked >/dev/null
    die "the tests left the containers above behind"
fi
for net in $(docker network ls -q --filter label=gustavo.managed=true); do
    docker network rm "$net" >/dev/null || warn "cannot remove network $net"
done
log "no Gustavo containers or networks left"
finish_phase

banner "All checks passed in $((SECONDS - START))s"
printf '%s\n' "${TIMINGS[@]}" >&2
