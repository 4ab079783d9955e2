#!/usr/bin/env bash
# Tries the agent's mesh controller between two network namespaces on this
# host, with no coordinator: two `skiff-mesh-bench` instances (one per
# namespace, joined by a veth pair as the underlay), each given a `mesh`
# section naming the other. Then: ping and TCP between a "container" address
# behind each host (a dummy interface holding a lease address), an agent
# restart under a running TCP stream, and leaving the mesh.
#
# Usage (root): scripts/mesh-netns.sh wireguard|vxlan [BENCH_BINARY]
# Needs: iproute2, /dev/net/tun (WireGuard), the vxlan module (VXLAN),
# python3; iperf3 if installed (throughput).
set -euo pipefail

MODE=${1:-wireguard}
BIN=${2:-${CARGO_TARGET_DIR:-target}/debug/skiff-mesh-bench}
WORK=$(mktemp -d /tmp/skiff-mesh.XXXXXX)
NS=(skmA skmB)
UNDER=(192.168.77.1 192.168.77.2)
MESH=(10.66.0.1 10.66.0.2)
LEASE=(10.66.4.0/26 10.66.8.0/26)
HOSTIP=(10.66.4.1 10.66.8.1)
PIDS=()

say() { printf '== %s\n' "$*" >&2; }
cleanup() {
  if [ -n "${KEEP:-}" ]; then say "kept: namespaces ${NS[*]}, processes ${PIDS[*]}"; return; fi
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  for n in "${NS[@]}"; do ip netns del "$n" 2>/dev/null || true; done
}
trap cleanup EXIT

# Waits (up to $2 seconds) until the command in $1 succeeds.
wait_for() {
  local deadline=$((SECONDS + $2))
  until eval "$1" >/dev/null 2>&1; do
    if ((SECONDS > deadline)); then say "timed out waiting for: $1"; return 1; fi
    sleep 0.2
  done
}

for n in "${NS[@]}"; do ip netns del "$n" 2>/dev/null || true; ip netns add "$n"; done
ip link add skm-a netns skmA type veth peer name skm-b netns skmB
for i in 0 1; do
  n=${NS[$i]}; dev=$([ $i = 0 ] && echo skm-a || echo skm-b)
  ip -n "$n" link set lo up
  ip -n "$n" addr add "${UNDER[$i]}/24" dev "$dev"
  ip -n "$n" link set "$dev" up
  ip -n "$n" route add default via "${UNDER[$((1 - i))]}"
  # A "container" address in this host's lease.
  ip -n "$n" link add lan0 type bridge
  ip -n "$n" addr add "${HOSTIP[$i]}/26" dev lan0
  ip -n "$n" link set lan0 up
  ip netns exec "$n" sysctl -qw net.ipv4.ip_forward=1
done

section() { # index, peer public key (may be empty)
  local i=$1 j=$((1 - $1)) key=$2
  python3 - "$MODE" "${MESH[$i]}" "${UNDER[$j]}" "${MESH[$j]}" "${LEASE[$j]}" "$key" <<'PY'
import json, sys
mode, addr, endpoint, peer_addr, lease, key = sys.argv[1:]
port = 51820 if mode == "wireguard" else 4789
peer = {"node_id": "peer", "name": "peer", "endpoint": endpoint, "address": peer_addr, "subnets": [lease]}
if key:
    peer["public_key"] = key
print(json.dumps({"mode": mode, "range": "10.66.0.0/16", "address": addr + "/22",
                  "port": port, "mtu": 1420 if mode == "wireguard" else 1450, "peers": [peer]}))
PY
}

start() { # index
  local i=$1 d=$WORK/${NS[$1]}
  mkdir -p "$d"
  SKIFF_LOG=${SKIFF_LOG:-info} ip netns exec "${NS[$i]}" "$BIN" --data-dir "$d" --section "$d/section.json" \
    >>"$d/reports.jsonl" 2>>"$d/log" &
  PIDS[$i]=$!
}

key_of() { python3 -c 'import json,sys
k=None
for l in open(sys.argv[1]):
    k=json.loads(l).get("public_key") or k
print(k or "")' "$WORK/${NS[$1]}/reports.jsonl"; }

for i in 0 1; do mkdir -p "$WORK/${NS[$i]}"; section "$i" "" >"$WORK/${NS[$i]}/section.json"; start "$i"; done
if [ "$MODE" = wireguard ]; then
  wait_for '[ -n "$(key_of 0)" ] && [ -n "$(key_of 1)" ]' 30
  for i in 0 1; do section "$i" "$(key_of $((1 - i)))" >"$WORK/${NS[$i]}/section.json"; done
fi
dev=$([ "$MODE" = wireguard ] && echo skw0 || echo skv0)
# The lease behind B is routed through the mesh device (not the default
# route, which would reach B too), and answers.
wait_for "ip -n skmA route get ${HOSTIP[1]} from ${HOSTIP[0]} | grep -q 'dev $dev'" 30
wait_for "ip netns exec skmA ping -c1 -W1 -I ${HOSTIP[0]} ${HOSTIP[1]}" 30
say "ping between the leases over $dev works"
ip netns exec skmA ping -c3 -i0.2 -I "${HOSTIP[0]}" "${HOSTIP[1]}" | tail -2 >&2
ip -n skmA -d link show "$dev" >&2
ip -n skmA -s link show "$dev" | grep -A1 RX >&2
ip -n skmA route show proto 242 >&2

# A TCP stream across an agent restart: a server in B, a client in A that
# sends a numbered line every 100 ms; the stream must still be the same
# connection after A's mesh instance is stopped and started again.
ip netns exec skmB python3 -c '
import socket
s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("'"${HOSTIP[1]}"'", 7777)); s.listen(1); c,_=s.accept()
f=c.makefile()
with open("'"$WORK"'/tcp-received","w") as out:
    for line in f:
        out.write(line); out.flush()
' &
PIDS+=($!)
wait_for "ip netns exec skmB ss -ltn | grep -q 7777" 10
ip netns exec skmA python3 -c '
import socket, time
c=socket.create_connection(("'"${HOSTIP[1]}"'", 7777), source_address=("'"${HOSTIP[0]}"'", 0))
i=0
while True:
    c.sendall(f"{i}\n".encode()); i+=1; time.sleep(0.1)
' 2>"$WORK/tcp-client.err" &
CLIENT=$!
PIDS+=($CLIENT)
wait_for '[ "$(wc -l <"$WORK/tcp-received")" -ge 10 ]' 20
say "restarting A's mesh instance under a running TCP stream"
kill "${PIDS[0]}"; wait "${PIDS[0]}" 2>/dev/null || true
ip -n skmA -br link show "$dev" >&2
ip -n skmA route show proto 242 >&2
before=$(wc -l <"$WORK/tcp-received")
sleep 2 # the agent is away for a while (not a synchronisation)
start 0
wait_for '[ "$(wc -l <"$WORK/tcp-received")" -ge $((before + 30)) ]' 60
kill -0 "$CLIENT"
say "TCP stream survived the restart: $(wc -l <"$WORK/tcp-received") lines, no reconnect"

if command -v iperf3 >/dev/null; then
  ip netns exec skmB iperf3 -s -1 -B "${HOSTIP[1]}" >/dev/null &
  PIDS+=($!)
  wait_for "ip netns exec skmB ss -ltn | grep -q 5201" 10
  ip netns exec skmA iperf3 -c "${HOSTIP[1]}" -B "${HOSTIP[0]}" -t 5 | tail -4 >&2
fi

say "A leaves the mesh (no section)"
echo null >"$WORK/skmA/section.json"
wait_for "! ip -n skmA link show $dev" 20
wait_for '[ -z "$(ip -n skmA route show proto 242)" ]' 20
ip -n skmA link show lan0 >/dev/null
# Its last report says nothing more of a mesh.
wait_for '[ "$(tail -n1 "$WORK/skmA/reports.jsonl")" = "{}" ]' 20
say "A left: no $dev, no proto 242 routes, its other interfaces untouched"
say "A joins again, stops, and starts with a plan without the mesh"
section 0 "$( [ "$MODE" = wireguard ] && key_of 1 )" >"$WORK/skmA/section.json"
wait_for "ip -n skmA link show $dev" 20
kill "${PIDS[0]}"; wait "${PIDS[0]}" 2>/dev/null || true
echo null >"$WORK/skmA/section.json"
start 0
wait_for "! ip -n skmA link show $dev" 20
wait_for '[ -z "$(ip -n skmA route show proto 242)" ]' 20
say "A left at start"

say "OK ($MODE); logs in $WORK"
