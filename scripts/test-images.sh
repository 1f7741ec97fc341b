#!/usr/bin/env bash
# Build the local Docker images the integration tests need, without pulling anything:
#
#   gustavo-test/busybox:latest  busybox root, CMD: sleep forever
#   gustavo-test/busybox:alt     same root plus a marker file, different CMD (distinct image ID)
#   gustavo-test/web:v1          busybox httpd on :8080 serving /www/index.html = "v1"
#   gustavo-test/web:v2          same, serving "v2"
#   gustavo-test/debian-host:bookworm-1
#                                a Debian 12 root (debootstrap from the Debian mirror) with
#                                openssh-server and sudo, Docker's Debian packages (docker.io)
#                                downloaded into apt's cache but NOT installed, for the
#                                `gustavo hosts install` tests (fleetops): sshd is PID 1's child
#
# Each busybox image is `docker import`ed from a tarred root made of Debian's static busybox and
# its applet symlinks; the debian-host image is `docker import`ed from a debootstrap root.
# Images that already exist are kept unless --force is given.
set -euo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() { echo "usage: $0 [--force]   (--force rebuilds images that already exist)"; }

FORCE=0
for arg in "$@"; do
    case "$arg" in
        --force) FORCE=1 ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument: $arg" ;;
    esac
done

BUSYBOX=/bin/busybox

# A container whose PID 1 is a shell ignores SIGTERM unless it traps it; without the trap every
# `docker stop` would wait out the whole grace period. `sleep & wait` keeps the shell responsive.
SLEEP_CMD='trap "exit 0" TERM INT; while true; do sleep 3600 & wait $!; done'
# busybox httpd does not handle SIGTERM as PID 1 either, so run it under a trapping shell.
HTTPD_CMD='trap "exit 0" TERM INT; /bin/httpd -f -p 8080 -h /www & wait $!'

ensure_busybox() {
    if [[ ! -x $BUSYBOX ]] || ! pkg_installed busybox-static; then
        ensure_packages busybox-static
    fi
    [[ -x $BUSYBOX ]] || die "$BUSYBOX is missing even though busybox-static is installed"
    # ldd exits non-zero ("not a dynamic executable") for a static binary.
    if ldd "$BUSYBOX" >/dev/null 2>&1; then
        die "$BUSYBOX is dynamically linked; it cannot run in an empty image root (install busybox-static)"
    fi
    # Listed once, then searched: `busybox --list | grep -q` fails under pipefail whenever
    # grep stops reading before busybox has written everything (SIGPIPE) — seen in CI.
    local a applets
    applets=$("$BUSYBOX" --list)
    for a in sh sleep httpd echo cat; do
        grep -qx "$a" <<<"$applets" || die "$BUSYBOX lacks the '$a' applet needed by the test images"
    done
}

# make_root DIR — populate DIR with a minimal busybox root filesystem.
make_root() {
    local root=$1 applet
    mkdir -p "$root"/{bin,etc,tmp,root,proc,sys,dev,www}
    chmod 1777 "$root/tmp"
    chmod 0700 "$root/root"
    cp "$BUSYBOX" "$root/bin/busybox"
    chmod 0755 "$root/bin/busybox"
    while IFS= read -r applet; do
        [[ -n $applet && $applet != busybox && $applet != */* ]] || continue
        ln -s /bin/busybox "$root/bin/$applet"
    done < <("$BUSYBOX" --list)
    [[ -L $root/bin/sh ]] || die "applet symlink $root/bin/sh was not created"
    printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' >"$root/etc/passwd"
    printf 'root:x:0:\nnogroup:x:65534:\n' >"$root/etc/group"
}

# build_image NAME KIND VARIANT CMD_JSON
build_image() {
    local name=$1 kind=$2 variant=$3 cmd_json=$4 old_id="" new_id dir
    if image_exists "$name"; then
        if [[ $FORCE -eq 0 ]]; then
            log "image $name already exists ($(docker image inspect -f '{{.Id}}' "$name" | cut -c1-19)); keeping it (use --force to rebuild)"
            return 0
        fi
        old_id=$(docker image inspect -f '{{.Id}}' "$name")
    fi
    log "building $name"
    dir=$(mktemp -d /tmp/gustavo-image.XXXXXX)
    TMPDIRS+=("$dir")
    make_root "$dir/root"
    echo "$kind:$variant" >"$dir/root/etc/gustavo-test-image"
    if [[ $kind == web ]]; then
        echo "$variant" >"$dir/root/www/index.html"
    fi
    local changes=(
        --change "CMD $cmd_json"
        --change 'ENV PATH=/bin'
        --change 'WORKDIR /'
        --change "LABEL org.gustavo.test-image=$kind:$variant"
    )
    [[ $kind == web ]] && changes+=(--change 'EXPOSE 8080/tcp')
    new_id=$(tar --numeric-owner --owner=0 --group=0 -C "$dir/root" -c . \
        | docker import "${changes[@]}" - "$name") \
        || die "docker import of $name failed"
    rm -rf "$dir"
    image_exists "$name" || die "docker import reported success but $name does not exist"
    log "built $name -> ${new_id:0:19}"
    if [[ -n $old_id && $old_id != "$new_id" ]]; then
        # The previous build is now untagged (or still tagged elsewhere); drop it if nothing uses it.
        if [[ -z "$(docker image inspect -f '{{join .RepoTags ","}}' "$old_id" 2>/dev/null)" ]]; then
            docker image rm "$old_id" >/dev/null 2>&1 \
                || warn "could not remove the previous build of $name ($old_id); a container may still use it"
        fi
    fi
}

# JSON exec-form CMD running a shell script (scripts here contain no control characters).
sh_cmd() {
    local s=${1//\\/\\\\}
    s=${s//\"/\\\"}
    printf '["/bin/sh","-c","%s"]' "$s"
}

# The test host for `gustavo hosts install`. Built once (a few minutes, ~250 MB) and cached by
# its tag; bump the tag's number when the recipe changes.
DEBIAN_HOST_IMAGE=gustavo-test/debian-host:bookworm-1
DEBIAN_MIRROR=${GUSTAVO_DEBIAN_MIRROR:-http://deb.debian.org/debian}
# At start: fresh host keys per container (a key baked into the image would be shared by every
# test host), the test's public key for root and for `gus` (a sudoer WITH a password, so the
# sudo prompt path is exercised), then sshd in the foreground.
DEBIAN_HOST_CMD='rm -f /etc/ssh/ssh_host_*; ssh-keygen -A >/dev/null;
for h in /root /home/gus; do mkdir -p $h/.ssh; printf "%s\n" "$AUTHORIZED_KEY" >$h/.ssh/authorized_keys; done;
chown -R gus:gus /home/gus/.ssh; chmod 700 /root/.ssh /home/gus/.ssh;
mkdir -p /run/sshd; exec /usr/sbin/sshd -D -e'

build_debian_host() {
    local name=$DEBIAN_HOST_IMAGE dir
    if image_exists "$name" && [[ $FORCE -eq 0 ]]; then
        log "image $name already exists; keeping it (use --force to rebuild)"
        return 0
    fi
    command -v debootstrap >/dev/null 2>&1 || ensure_packages debootstrap
    log "building $name with debootstrap from $DEBIAN_MIRROR (takes a few minutes, once)"
    dir=$(mktemp -d /tmp/gustavo-debian-host.XXXXXX)
    TMPDIRS+=("$dir")
    as_root debootstrap --variant=minbase --include=openssh-server,sudo,procps,ca-certificates \
        bookworm "$dir/root" "$DEBIAN_MIRROR" >"$dir/debootstrap.log" 2>&1 \
        || { tail -20 "$dir/debootstrap.log" >&2; die "debootstrap of $name failed (log above)"; }
    # apt's lists and the docker.io packages in apt's cache: `apt-get install docker.io` on the
    # test host then installs Debian's real packages without reaching the network. Services are
    # not started by maintainer scripts (policy-rc.d 101), as in any container image: the test
    # host's docker CLI talks to the engine socket the test bind-mounts in.
    as_root chroot "$dir/root" apt-get update -qq >>"$dir/debootstrap.log" 2>&1 \
        || die "apt-get update in the $name root failed"
    as_root chroot "$dir/root" apt-get install -qq --download-only -y docker.io >>"$dir/debootstrap.log" 2>&1 \
        || die "downloading docker.io into the $name root failed"
    printf '#!/bin/sh\nexit 101\n' | as_root tee "$dir/root/usr/sbin/policy-rc.d" >/dev/null
    as_root chmod 0755 "$dir/root/usr/sbin/policy-rc.d"
    as_root chroot "$dir/root" useradd -m -s /bin/bash -G sudo gus
    echo 'gus:gus-sudo-pw' | as_root chroot "$dir/root" chpasswd
    as_root rm -rf "$dir/root/var/cache/apt/"*.bin "$dir/root/usr/share/doc" "$dir/root/usr/share/man"
    as_root tar --numeric-owner -C "$dir/root" -c . \
        | docker import \
            --change "CMD [\"/bin/sh\",\"-c\",$(printf '%s' "$DEBIAN_HOST_CMD" | tr '\n' ' ' | jq -Rs .)]" \
            --change 'LABEL org.gustavo.test-image=debian-host' - "$name" >/dev/null \
        || die "docker import of $name failed"
    as_root rm -rf "$dir"
    image_exists "$name" || die "docker import reported success but $name does not exist"
    log "built $name"
}

TMPDIRS=()
cleanup() { [[ ${#TMPDIRS[@]} -eq 0 ]] || rm -rf "${TMPDIRS[@]}"; }
trap cleanup EXIT

require_docker
ensure_busybox

build_image gustavo-test/busybox:latest busybox latest "$(sh_cmd "$SLEEP_CMD")"
build_image gustavo-test/busybox:alt    busybox alt    "$(sh_cmd "echo alt >/tmp/variant; $SLEEP_CMD")"
build_image gustavo-test/web:v1         web     v1     "$(sh_cmd "$HTTPD_CMD")"
build_image gustavo-test/web:v2         web     v2     "$(sh_cmd "$HTTPD_CMD")"
build_debian_host

log "test images ready:"
docker image ls --format '{{.Repository}}:{{.Tag}}  {{.ID}}  {{.Size}}' gustavo-test/busybox | sed 's/^/  /' >&2
docker image ls --format '{{.Repository}}:{{.Tag}}  {{.ID}}  {{.Size}}' gustavo-test/web | sed 's/^/  /' >&2
