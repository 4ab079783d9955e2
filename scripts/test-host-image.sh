#!/bin/sh
# Builds the tier-2 test host image, for hosts as containers that each run
# their own Docker Engine (started by scripts/test-host.sh): a debootstrapped
# Debian bookworm minbase root, imported as a Docker image. Builds only when
# the image is absent, so tests and CI can call it unconditionally.
#
# Usage: scripts/test-host-image.sh [--force]
#
# Environment:
#   SKIFF_TEST_HOST_IMAGE  image name (default skiff-test/host:3)
#   DEBIAN_MIRROR          Debian mirror (default: the first non-security URI in
#                          /etc/apt/sources.list.d/debian.sources or
#                          /etc/apt/sources.list, else http://deb.debian.org/debian)
#   SKIFF_BUILD_DIR        where the root is assembled (default /var/tmp)
#
# Needs root (debootstrap) and a reachable Debian mirror. Took 40 s here
# (about 415 MB); budget minutes on a slow mirror. Concurrent callers wait on
# a lock and then reuse the image.
# Exit codes: 0 image present or built, 1 build failed, 2 bad usage.

set -eu

IMAGE=${SKIFF_TEST_HOST_IMAGE:-skiff-test/host:3}
SUITE=bookworm
# openssh-server: the hosts stand in for real servers, whose SSH the agent
# guards (brute-force bans); it is installed but not started. sudo: the
# documented install snippet (README.md) runs the installer with it. socat:
# the cluster network tests' UDP echo, run in a container's network namespace
# (the test image's busybox nc speaks TCP only).
PACKAGES=docker.io,iproute2,iptables,nftables,procps,ca-certificates,curl,openssh-server,sudo,socat

say() { printf 'test-host-image: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

force=0
for arg in "$@"; do
    case $arg in
        --force) force=1 ;;
        -h|--help) sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) say "error: unknown argument '$arg'; the only option is --force"; exit 2 ;;
    esac
done

command -v docker >/dev/null 2>&1 || die "docker is not installed"
docker info >/dev/null 2>&1 || die "the Docker Engine does not answer ('docker info' failed)"

have_image() { docker image inspect "$IMAGE" >/dev/null 2>&1; }

if [ "$force" = 0 ] && have_image; then
    say "$IMAGE is present; nothing to do."
    exit 0
fi

[ "$(id -u)" = 0 ] || die "building $IMAGE needs root (debootstrap); run with sudo"
command -v debootstrap >/dev/null 2>&1 ||
    die "debootstrap is not installed; install it with: apt-get install -y debootstrap"

# The mirror this machine already uses: it is the one known to be reachable.
mirror_from_system() {
    f=/etc/apt/sources.list.d/debian.sources
    if [ -r "$f" ]; then
        # deb822: the URIs line of the first stanza that is not the security archive.
        awk '/^URIs:/ { for (i = 2; i <= NF; i++) if ($i !~ /security/) { print $i; exit } }' "$f"
        return
    fi
    f=/etc/apt/sources.list
    if [ -r "$f" ]; then
        awk '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i ~ /^https?:/ && $i !~ /security/) { print $i; exit } }' "$f"
    fi
}
MIRROR=${DEBIAN_MIRROR:-$(mirror_from_system)}
MIRROR=${MIRROR:-http://deb.debian.org/debian}

# One build at a time per machine; whoever waited re-checks and reuses.
LOCK=/tmp/skiff-test-host-image.lock
if command -v flock >/dev/null 2>&1; then
    exec 9>"$LOCK"
    if ! flock -n 9; then
        say "another build of $IMAGE is running; waiting for it."
        flock 9
    fi
    if [ "$force" = 0 ] && have_image; then
        say "$IMAGE was built meanwhile; nothing to do."
        exit 0
    fi
fi

BUILD_DIR=${SKIFF_BUILD_DIR:-/var/tmp}
WORK=$(mktemp -d "$BUILD_DIR/skiff-test-host.XXXXXX")
# debootstrap mounts /proc, /sys and binds device nodes into the root; it
# unmounts them on exit, but if it was killed they may remain, and removing
# the tree through a bind mount would delete the host's own files.
cleanup() {
    awk -v root="$WORK/" 'index($2, root) == 1 { print $2 }' /proc/self/mounts |
        sort -r | while read -r m; do umount -l "$m" 2>/dev/null || true; done
    if awk -v root="$WORK/" 'index($2, root) == 1 { found = 1 } END { exit !found }' /proc/self/mounts; then
        say "warning: mounts remain under $WORK; not removing it."
        return
    fi
    rm -rf --one-file-system "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
ROOT=$WORK/root

start=$(date +%s)
say "building $IMAGE: debootstrap $SUITE minbase from $MIRROR (takes minutes)."
if ! debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$ROOT" "$MIRROR" \
    >"$WORK/debootstrap.log" 2>&1; then
    tail -n 30 "$WORK/debootstrap.log" >&2
    # debootstrap keeps its own detailed log inside the target.
    [ -f "$ROOT/debootstrap/debootstrap.log" ] && tail -n 30 "$ROOT/debootstrap/debootstrap.log" >&2
    die "debootstrap failed (log above)"
fi

# Keep the image small and free of per-image secrets: no package caches, no
# shared SSH host keys (generate them per host with 'ssh-keygen -A').
rm -rf "$ROOT"/var/cache/apt/archives/*.deb "$ROOT"/var/lib/apt/lists/* "$ROOT"/etc/ssh/ssh_host_*
# Every host gets its name from 'docker run --hostname'.
: >"$ROOT/etc/hostname"

say "importing the root as $IMAGE."
tar -C "$ROOT" -c . | docker import \
    -c 'CMD ["/bin/bash"]' \
    -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    -m "Skiff tier-2 test host: Debian $SUITE minbase with $PACKAGES" \
    - "$IMAGE" >/dev/null || die "docker import failed"

say "built $IMAGE in $(( $(date +%s) - start ))s."
