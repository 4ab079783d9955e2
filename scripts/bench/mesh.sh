#!/usr/bin/env bash
# Cluster network benchmark (issue 9, "Benchmark"): iperf3 between
# containers on two tier-2 test hosts (scripts/test-host.sh: each runs its
# own Docker Engine), in one run on this machine:
#
#   underlay      iperf3 in host-network containers, host to host
#   wireguard-go  the reference userspace WireGuard (Debian's wireguard-go
#                 and wireguard-tools), set up by hand between the same two
#                 hosts: one tunnel, a bridge network per host with its own
#                 subnet routed through it, the same MTU as Skiff's
#   skiff-wg      a Skiff cluster (coordinator on this machine, an agent in
#                 each host) with [network] mesh = "wireguard": a stack with
#                 an iperf3 server pinned to one host and a client to the
#                 other, on one stack network, by cluster address
#   skiff-vxlan   the same with mesh = "vxlan", on a second pair of hosts
#                 (the mesh is fixed when a cluster is created); the
#                 underlay of that pair is measured too, and also between
#                 containers on the engines' own bridges over the underlay
#                 (a published port: the engine's NAT, no tunnel), which
#                 has the same veth and bridge hops as a stack network
#
# Each measurement is one iperf3 TCP run of SKIFF_BENCH_SECONDS (default
# 10) from the client host to the server host, repeated SKIFF_BENCH_REPEATS
# times (default 3; the median is reported). CPU is the CPU time charged,
# during the run, to each test host's cgroup and to the cgroup its engine
# puts its containers in: the agent or wireguard-go, iperf3, and the kernel
# work done in their context. Packet processing in softirq context is not
# always charged to a cgroup, so kernel-only paths (underlay, VXLAN) read
# low; the two userspace WireGuards are charged the same way.
#
# Usage: scripts/bench/mesh.sh
#   SKIFF_BENCH_SECONDS   seconds per iperf3 run (default 10)
#   SKIFF_BENCH_REPEATS   runs per path (default 3)
#   SKIFF_BENCH_KEEP      1: keep the temp dir (logs)
#
# Output: one line per run on stderr, then a table on stdout (medians:
# Gbit/s, CPU seconds per GB on the client and server hosts, ratios).
# Everything it starts (hosts, their network, coordinators) is removed on
# exit. Needs root, Docker, iperf3, wireguard-go, wireguard-tools, python3.
set -euo pipefail
cd "$(dirname "$0")/../.."

seconds="${SKIFF_BENCH_SECONDS:-10}"
repeats="${SKIFF_BENCH_REPEATS:-3}"
for v in "$seconds" "$repeats"; do
  case "$v" in
    '' | *[!0-9]* | 0) echo "mesh.sh: SKIFF_BENCH_SECONDS and SKIFF_BENCH_REPEATS must be positive whole numbers" >&2; exit 2 ;;
  esac
done
for tool in iperf3 wireguard-go wg python3 docker; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "mesh.sh: $tool is missing; install it (apt-get install iperf3 wireguard-go wireguard-tools python3)" >&2
    exit 2
  fi
done

say() { printf '==> %s\n' "$*" >&2; }
now_ns() { date +%s%N; }

run="mb$$"
net="skiff-bench-$run"
dir="$(mktemp -d /tmp/skiff-mesh-bench.XXXXXX)"
image=skiff-bench/iperf3:1
hosts=()
coord_pids=()
ok=0

# shellcheck disable=SC2317  # invoked by the EXIT trap
cleanup() {
  local rc=$? h p
  for p in "${coord_pids[@]}"; do
    kill -TERM "$p" 2>/dev/null || true
  done
  for h in "${hosts[@]}"; do
    scripts/test-host.sh stop "$h" >/dev/null 2>&1 || true
  done
  docker network rm "$net" >/dev/null 2>&1 || true
  if [ "$ok" = 1 ] && [ "${SKIFF_BENCH_KEEP:-0}" != 1 ]; then
    rm -rf "$dir"
  else
    echo "mesh.sh: logs kept in $dir" >&2
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

wait_until() { # LIMIT WHAT CMD...
  local limit=$1 what=$2
  shift 2
  local end=$(($(now_ns) + limit * 1000000000))
  until "$@"; do
    if [ "$(now_ns)" -ge "$end" ]; then
      echo "mesh.sh: timed out after ${limit}s waiting for $what" >&2
      return 1
    fi
    sleep 0.2
  done
}

say "Building release binaries"
cargo build --release --locked -p skiff-coordinator -p skiff-agent -p skiff-cli --bins >&2
bin="${CARGO_TARGET_DIR:-$PWD/target}/release"

say "Building the iperf3 image from this machine's iperf3 and busybox"
root="$dir/image"
mkdir -p "$root/bin" "$root/tmp" "$root/lib64" "$root/lib/x86_64-linux-gnu"
chmod 1777 "$root/tmp"
cp /usr/bin/iperf3 /bin/busybox "$root/bin/"
for lib in $(ldd /usr/bin/iperf3 | awk '/=>/ { print $3 }'); do
  cp -L "$lib" "$root/lib/x86_64-linux-gnu/"
done
cp -L /lib64/ld-linux-x86-64.so.2 "$root/lib64/"
for a in sh sleep cat; do ln -s busybox "$root/bin/$a"; done
tar -C "$root" -c . | docker import -c 'CMD ["/bin/sh"]' - "$image" >/dev/null

# start_host NAME: a tier-2 host with the image, the agent and wireguard-go
# (run in a subshell: the caller adds NAME to hosts first).
start_host() {
  local name=$1 ip
  ip="$(scripts/test-host.sh start "$name" "$net")"
  docker save "$image" | docker exec -i "$name" docker load -q >/dev/null
  docker cp "$bin/skiff-agent" "$name:/usr/local/bin/skiff-agent"
  docker cp "$(command -v wireguard-go)" "$name:/usr/local/bin/wireguard-go"
  docker cp "$(command -v wg)" "$name:/usr/local/bin/wg"
  printf '%s\n' "$ip"
}

# cpu_ns HOST: CPU time charged to HOST's cgroup and its containers' cgroup.
cpu_ns() {
  local pid total=0 path f
  pid="$(docker inspect -f '{{.State.Pid}}' "$1")"
  for path in "$(awk -F: '$2 ~ /cpuacct/ || $1 == "0" { print $3; exit }' "/proc/$pid/cgroup")" "/skiff-test-host-$1"; do
    if [ -f "/sys/fs/cgroup/cpuacct$path/cpuacct.usage" ]; then
      total=$((total + $(cat "/sys/fs/cgroup/cpuacct$path/cpuacct.usage")))
    elif [ -f "/sys/fs/cgroup$path/cpu.stat" ]; then
      f="$(awk '$1 == "usage_usec" { print $2 }' "/sys/fs/cgroup$path/cpu.stat")"
      total=$((total + f * 1000))
    fi
  done
  printf '%s\n' "$total"
}

results="$dir/results"
: >"$results"

# measure LABEL CLIENT_HOST SERVER_HOST TARGET CLIENT_RUN...: CLIENT_RUN is
# what runs `iperf3 ARGS` in a container on CLIENT_HOST (a docker exec
# prefix); the server must already listen on TARGET:5201.
measure() {
  local label=$1 client=$2 server=$3 target=$4 i c0 s0 c1 s1 out
  shift 4
  for i in $(seq 1 "$repeats"); do
    c0="$(cpu_ns "$client")"
    s0="$(cpu_ns "$server")"
    out="$dir/$label-$i.json"
    "$@" iperf3 -c "$target" -t "$seconds" -J >"$out" || true
    c1="$(cpu_ns "$client")"
    s1="$(cpu_ns "$server")"
    python3 - "$label" "$out" $((c1 - c0)) $((s1 - s0)) >>"$results" <<'PY'
import json, sys
label, path, c, s = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
d = json.load(open(path))
if d.get("error"):
    sys.exit(f"mesh.sh: {label}: iperf3: {d['error']}")
r = d["end"]["sum_received"]
gb = r["bytes"] / 1e9
print(f"{label} {r['bits_per_second'] / 1e9:.3f} {c / 1e9 / gb:.3f} {s / 1e9 / gb:.3f}")
PY
    tail -n 1 "$results" | awk '{ printf "    %-13s %s Gbit/s, CPU s/GB client %s server %s\n", $1, $2, $3, $4 }' >&2
  done
}

# iperf_server HOST NAME DOCKER_ARGS...: an iperf3 server container.
iperf_server() {
  local host=$1 name=$2
  shift 2
  docker exec "$host" docker rm -f "$name" >/dev/null 2>&1 || true
  docker exec "$host" docker run -d --name "$name" "$@" "$image" iperf3 -s >/dev/null
}

# A coordinator with the given mesh, reachable from the hosts at the test
# network's gateway; sets coord_url, coord_token, agent_addr.
start_coordinator() {
  local mesh=$1 gw cdir log line
  gw="$(scripts/test-host.sh gateway "$net")"
  cdir="$dir/coord-$mesh"
  mkdir -p "$cdir"
  printf '[network]\nenabled = true\nmesh = "%s"\n' "$mesh" >"$cdir/config.toml"
  log="$cdir/coordinator.log"
  SKIFF_LOG="${SKIFF_LOG:-info}" "$bin/skiff-coordinator" serve --config "$cdir/config.toml" \
    --data-dir "$cdir/data" --api-listen 127.0.0.1:0 --agent-listen "$gw:0" \
    --advertise "$gw" >"$log" 2>&1 &
  coord_pids+=($!)
  wait_until 60 "the coordinator to serve" grep -q 'Coordinator serving' "$log"
  line="$(grep 'Coordinator serving' "$log" | tail -n 1)"
  coord_url="http://$(grep -o 'api=[0-9.]*:[0-9]*' <<<"$line" | cut -d= -f2)"
  agent_addr="$(grep -o 'agent=[0-9.]*:[0-9]*' <<<"$line" | cut -d= -f2)"
  coord_token="$(tr -d '[:space:]' <"$cdir/data/initial-admin-token")"
}

skiff() { SKIFF_URL="$coord_url" SKIFF_TOKEN="$coord_token" SKIFF_CONFIG="$dir/cli.toml" "$bin/skiff" "$@"; }

# join_host HOST: joins HOST's agent to the current coordinator and starts it.
join_host() {
  local host=$1 token
  token="$(skiff token create --ttl 10m)"
  printf '%s\n' "$token" | docker exec -i "$host" sh -c \
    "read -r t && skiff-agent join --coordinator $agent_addr --token \"\$t\" --data-dir /var/lib/skiff/agent --name $host >/var/log/skiff-agent.log 2>&1"
  docker exec -d "$host" sh -c 'skiff-agent run --data-dir /var/lib/skiff/agent >>/var/log/skiff-agent.log 2>&1'
}

# skiff_pair MESH SERVER CLIENT: the Skiff measurement on a fresh cluster.
skiff_pair() {
  local mesh=$1 server=$2 client=$3 target cid
  start_coordinator "$mesh"
  join_host "$server"
  join_host "$client"
  connected() { [ "$(skiff node ls --json | grep -c '"status": "connected"')" = 2 ]; }
  wait_until 60 "both agents to connect" connected
  cat >"$dir/compose-$mesh.yml" <<EOF
services:
  srv:
    image: $image
    command: ["iperf3", "-s"]
    deploy:
      placement:
        constraints: ["node.hostname == $server"]
  cli:
    image: $image
    command: ["sh", "-c", "trap 'exit 0' TERM; sleep 36000 & wait"]
    deploy:
      placement:
        constraints: ["node.hostname == $client"]
EOF
  skiff deploy -f "$dir/compose-$mesh.yml" bench >&2
  target="$(skiff stack ps bench --json | python3 -c '
import json, sys
for t in json.load(sys.stdin):
    if t["service"] == "srv" and t.get("addresses"):
        print(t["addresses"][0]["address"].split("/")[0]); break')"
  [ -n "$target" ] || { echo "mesh.sh: the server replica has no cluster address" >&2; return 1; }
  cid="$(docker exec "$client" docker ps -q --filter label=skiff.stack=bench --filter label=skiff.service=cli)"
  # The mesh is up once the client reaches the server.
  reach() { docker exec "$client" docker exec "$cid" iperf3 -c "$target" -t 1 >/dev/null 2>&1; }
  wait_until 60 "the client to reach the server over the $mesh mesh" reach
  measure "skiff-$mesh" "$client" "$server" "$target" docker exec "$client" docker exec "$cid"
}

say "Starting two test hosts on $net"
a="skiff-bench-a-$run"
b="skiff-bench-b-$run"
hosts+=("$a" "$b")
ip_a="$(start_host "$a")"
ip_b="$(start_host "$b")"

say "underlay"
iperf_server "$a" bench-iperf --network host
measure underlay "$b" "$a" "$ip_a" docker exec "$b" docker run --rm --network host "$image"

say "wireguard-go, by hand"
i=0
for h in "$a" "$b"; do
  i=$((i + 1))
  docker exec "$h" sh -c 'umask 077; wg genkey >/root/bench-wg.key; wg pubkey </root/bench-wg.key' >"$dir/pub-$i"
done
wg_host() { # HOST SELF PEER PEER_IP
  local o=$3
  docker exec "$1" sh -c "set -e
    WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD=1 wireguard-go wgb0 >/dev/null 2>&1
    wg set wgb0 private-key /root/bench-wg.key listen-port 51900 peer $(cat "$dir/pub-$o") endpoint $4:51900 allowed-ips 10.99.0.$o/32,10.99.$o.0/24
    ip addr add 10.99.0.$2/24 dev wgb0
    ip link set wgb0 mtu 1440 up
    ip route add 10.99.$o.0/24 dev wgb0
    iptables -I DOCKER-USER -i wgb0 -j ACCEPT
    docker network create --subnet 10.99.$2.0/24 -o com.docker.network.driver.mtu=1440 \
      -o com.docker.network.bridge.enable_ip_masquerade=false benchwg >/dev/null"
}
wg_host "$a" 1 2 "$ip_b"
wg_host "$b" 2 1 "$ip_a"
iperf_server "$a" bench-iperf-wg --network benchwg
wg_target="$(docker exec "$a" docker inspect -f '{{.NetworkSettings.Networks.benchwg.IPAddress}}' bench-iperf-wg)"
measure wireguard-go "$b" "$a" "$wg_target" docker exec "$b" docker run --rm --network benchwg "$image"
# The hand-made tunnel goes before Skiff's mesh comes up on the same hosts.
for h in "$a" "$b"; do
  docker exec "$h" sh -c 'docker rm -f bench-iperf bench-iperf-wg >/dev/null 2>&1; docker network rm benchwg >/dev/null;
    iptables -D DOCKER-USER -i wgb0 -j ACCEPT; ip link del wgb0'
done

say "Skiff, mesh = wireguard"
skiff_pair wireguard "$a" "$b"

say "Skiff, mesh = vxlan (a second pair of hosts)"
c="skiff-bench-c-$run"
d="skiff-bench-d-$run"
hosts+=("$c" "$d")
ip_c="$(start_host "$c")"
start_host "$d" >/dev/null
iperf_server "$c" bench-iperf --network host
measure underlay-2 "$d" "$c" "$ip_c" docker exec "$d" docker run --rm --network host "$image"
docker exec "$c" docker rm -f bench-iperf >/dev/null
iperf_server "$c" bench-iperf -p 5201:5201
measure underlay-2-published "$d" "$c" "$ip_c" docker exec "$d" docker run --rm "$image"
docker exec "$c" docker rm -f bench-iperf >/dev/null
skiff_pair vxlan "$c" "$d"

say "Results ($(nproc) cores; medians of $repeats runs of ${seconds}s)"
python3 - "$results" <<'PY'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    label, gbit, c, s = line.split()
    rows.setdefault(label, []).append((float(gbit), float(c), float(s)))
med = {k: tuple(statistics.median(r[i] for r in v) for i in range(3)) for k, v in rows.items()}
print("| path | Gbit/s | CPU s/GB client | CPU s/GB server |")
print("|---|---|---|---|")
for k, (g, c, s) in med.items():
    print(f"| {k} | {g:.3f} | {c:.2f} | {s:.2f} |")
def ratio(a, b, i=0):
    return med[a][i] / med[b][i] if a in med and b in med and med[b][i] else float("nan")
print()
print(f"vxlan / underlay (same pair): {ratio('skiff-vxlan', 'underlay-2'):.2f}x (goal >= 0.9)")
print(f"vxlan / bridge containers over the underlay (same pair): {ratio('skiff-vxlan', 'underlay-2-published'):.2f}x")
print(f"Skiff wireguard / wireguard-go throughput: {ratio('skiff-wireguard', 'wireguard-go'):.2f}x (goal >= 1.0)")
print(f"Skiff wireguard / wireguard-go CPU per GB: client {ratio('skiff-wireguard', 'wireguard-go', 1):.2f}x, "
      f"server {ratio('skiff-wireguard', 'wireguard-go', 2):.2f}x (goal <= 1.0)")
PY
ok=1
