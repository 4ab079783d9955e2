#!/bin/sh
# Tier-2 test hosts: a container from skiff-test/host:3 (scripts/test-host-image.sh)
# that runs its own Docker Engine and so stands in for a real server.
#
# Usage:
#   scripts/test-host.sh start NAME NETWORK [--no-tun]
#                                             start host NAME on Docker network NETWORK
#                                             (created as a bridge network if absent),
#                                             wait until its inner 'docker info' works,
#                                             print its IP address on NETWORK to stdout;
#                                             --no-tun: without /dev/net/tun (a fault test)
#   scripts/test-host.sh stop NAME            remove host NAME and its inner containers
#   scripts/test-host.sh gateway NETWORK      print NETWORK's gateway address: where a
#                                             host reaches services on this machine
#
# 'start' is idempotent: a running host NAME is reused, a stopped one replaced.
# It builds the image first if it is absent (minutes; see test-host-image.sh).
#
# A host is what the agent needs of a server for the cluster network: the TUN
# device (/dev/net/tun, for userspace WireGuard), writable /proc/sys (the agent
# sets proxy_arp on its bridges) and IP forwarding on (checked at start).
#
# Environment:
#   SKIFF_TEST_HOST_IMAGE    image (default skiff-test/host:3)
#   SKIFF_TEST_HOST_TIMEOUT  seconds to wait for the inner dockerd (default 90)
#   SKIFF_TEST_HOST_TUN      0: start without /dev/net/tun, as --no-tun does
#
# Exit codes: 0 ok, 1 failed, 2 bad usage.

set -eu

IMAGE=${SKIFF_TEST_HOST_IMAGE:-skiff-test/host:3}
TUN=${SKIFF_TEST_HOST_TUN:-1}
TIMEOUT=${SKIFF_TEST_HOST_TIMEOUT:-90}
HERE=$(cd "$(dirname "$0")" && pwd)

say() { printf 'test-host: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }
usage() {
    say "usage: $0 start NAME NETWORK [--no-tun] | stop NAME | gateway NETWORK"
    exit 2
}

check_name() {
    case $1 in
        ''|-*|*[!A-Za-z0-9_.-]*) say "error: invalid $2 '$1': use letters, digits, '.', '_' or '-'"; exit 2 ;;
    esac
}

# The cgroup the host's inner dockerd puts its containers under. Each host
# gets its own so that hosts never share (and clean up) each other's.
cgroup_parent() { printf '/skiff-test-host-%s' "$1"; }

gateway() {
    docker network inspect -f '{{range .IPAM.Config}}{{.Gateway}} {{end}}' "$1" 2>/dev/null |
        awk '{ print $1 }'
}

host_ip() {
    docker inspect -f "{{with index .NetworkSettings.Networks \"$2\"}}{{.IPAddress}}{{end}}" "$1"
}

# Inner containers' cgroups outlive the host container (cgroupns=host); remove
# the empty directories so names can be reused cleanly. Best effort.
remove_cgroups() {
    parent=$(cgroup_parent "$1")
    for dir in /sys/fs/cgroup"$parent" /sys/fs/cgroup/*"$parent"; do
        [ -d "$dir" ] || continue
        find "$dir" -depth -type d -exec rmdir {} + 2>/dev/null || true
    done
}

start() {
    name=$1 network=$2
    check_name "$name" NAME
    check_name "$network" NETWORK

    state=$(docker inspect -f '{{.State.Running}}' "$name" 2>/dev/null || true)
    if [ "$state" = true ] &&
        [ "$(docker inspect -f '{{index .Config.Labels "skiff-test.tun"}}' "$name")" != "$TUN" ]; then
        say "host $name is running with another TUN setting; replacing it."
        state=false
    fi
    if [ "$state" = true ]; then
        say "host $name is already running; reusing it."
    else
        "$HERE/test-host-image.sh" >&2
        if [ -n "$state" ]; then
            say "host $name exists but is stopped; replacing it."
            docker rm -f "$name" >/dev/null
            remove_cgroups "$name"
        fi
        if ! docker network inspect "$network" >/dev/null 2>&1; then
            say "creating Docker network $network."
            docker network create --label skiff-test=1 "$network" >/dev/null
        fi
        tun=
        [ "$TUN" = 0 ] || tun="--device /dev/net/tun"
        # --privileged and --cap-add ALL fail here ("unable to apply caps": no
        # CAP_SYS_RESOURCE in the sandbox), so the capabilities are named.
        # The inner dockerd needs the host's cgroup tree (rw, host cgroupns),
        # /var/lib/docker on a tmpfs with the vfs storage driver (what was seen
        # to work here) and its own cgroup parent. docker-init (--init) is PID 1 so
        # that detached processes started inside (the agent) are reaped.
        # systempaths=unconfined: /proc/sys is writable (the host's own network
        # namespace only), as on a server. The label records the TUN choice, so
        # that a reused host is the one asked for.
        # shellcheck disable=SC2086 # $tun is empty or two words.
        docker run -d --name "$name" --hostname "$name" --network "$network" \
            --label skiff-test.host=1 --label skiff-test.tun="$TUN" \
            $tun --security-opt systempaths=unconfined --sysctl net.ipv4.ip_forward=1 \
            --init \
            --cap-add SYS_ADMIN --cap-add NET_ADMIN --cap-add NET_RAW --cap-add MKNOD \
            --cap-add SYS_PTRACE --cap-add SYS_CHROOT --cap-add SETUID --cap-add SETGID \
            --cap-add CHOWN --cap-add DAC_OVERRIDE --cap-add FOWNER --cap-add KILL \
            --cap-add SETPCAP --cap-add SETFCAP --cap-add AUDIT_WRITE --cap-add IPC_LOCK \
            --security-opt seccomp=unconfined --security-opt apparmor=unconfined \
            -v /sys/fs/cgroup:/sys/fs/cgroup:rw --cgroupns=host \
            --tmpfs /var/lib/docker:exec \
            "$IMAGE" \
            dockerd --storage-driver=vfs --cgroup-parent="$(cgroup_parent "$name")" \
            >/dev/null || die "docker run of host $name failed"
    fi

    # Poll the inner engine until it answers or the deadline passes.
    deadline=$(( $(date +%s) + TIMEOUT ))
    until docker exec "$name" docker info >/dev/null 2>&1; do
        if [ "$(docker inspect -f '{{.State.Running}}' "$name" 2>/dev/null)" != true ]; then
            docker logs --tail 30 "$name" >&2 2>&1 || true
            die "host $name stopped before its dockerd answered (its log is above)"
        fi
        if [ "$(date +%s)" -ge "$deadline" ]; then
            docker logs --tail 30 "$name" >&2 2>&1 || true
            die "the dockerd in host $name did not answer within ${TIMEOUT}s (its log is above)"
        fi
        sleep 0.2
    done
    # What the cluster network needs of a server (see the header).
    docker exec "$name" sh -c 'echo 1 >/proc/sys/net/ipv4/ip_forward' ||
        die "host $name: /proc/sys is not writable"
    [ "$(docker exec "$name" cat /proc/sys/net/ipv4/ip_forward)" = 1 ] ||
        die "host $name: IP forwarding is off"
    if [ "$TUN" != 0 ]; then
        docker exec "$name" test -c /dev/net/tun || die "host $name has no /dev/net/tun"
    fi
    ip=$(host_ip "$name" "$network")
    say "host $name is up at $ip on $network; its dockerd answers."
    printf '%s\n' "$ip"
}

stop() {
    name=$1
    check_name "$name" NAME
    # A host that is not a test host is never removed.
    if [ "$(docker inspect -f '{{index .Config.Labels "skiff-test.host"}}' "$name" 2>/dev/null)" != 1 ]; then
        if docker inspect "$name" >/dev/null 2>&1; then
            die "container $name is not a test host (no skiff-test.host label); not removing it"
        fi
        say "host $name does not exist; nothing to do."
        return 0
    fi
    # Killing PID 1 ends the whole PID namespace, inner containers included.
    docker rm -f "$name" >/dev/null
    remove_cgroups "$name"
    say "host $name removed."
}

[ $# -ge 1 ] || usage
command -v docker >/dev/null 2>&1 || die "docker is not installed"
cmd=$1
shift
case $cmd in
    start)
        [ $# -eq 2 ] || [ $# -eq 3 ] || usage
        if [ $# -eq 3 ]; then
            [ "$3" = --no-tun ] || usage
            TUN=0
        fi
        start "$1" "$2"
        ;;
    stop) [ $# -eq 1 ] || usage; stop "$1" ;;
    gateway)
        [ $# -eq 1 ] || usage
        gw=$(gateway "$1")
        [ -n "$gw" ] || die "network $1 does not exist or has no gateway"
        printf '%s\n' "$gw"
        ;;
    -h|--help) sed -n '2,29p' "$0" | sed 's/^# \{0,1\}//' ;;
    *) usage ;;
esac
