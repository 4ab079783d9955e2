#!/usr/bin/env bash
# Quick start on this machine: builds Skiff, starts a coordinator and one
# agent with the embedded defaults (coordinator data in
# /var/lib/skiff/coordinator, API on 127.0.0.1:7070, agent port 7443; agent
# data in /var/lib/skiff/agent), shows the node connected, deploys the
# example app (examples/hello) and fetches its page.
#
# Usage: scripts/quickstart.sh         start (again: reuses what runs)
#        scripts/quickstart.sh stop    stop both
set -euo pipefail
cd "$(dirname "$0")/.."

run=/run/skiff-quickstart
bin=${CARGO_TARGET_DIR:-target}/release
coord_pid=$run/coordinator.pid
agent_pid=$run/agent.pid

running() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

if [ "$(id -u)" -ne 0 ]; then
  echo "quickstart.sh: run as root: the defaults live under /var/lib/skiff" >&2
  exit 2
fi

if [ "${1:-}" = stop ]; then
  for p in "$agent_pid" "$coord_pid"; do
    if running "$p"; then kill "$(cat "$p")"; fi
    rm -f "$p"
  done
  echo "Stopped."
  exit 0
fi

echo "==> Building (release)"
cargo build --release --locked --bins
mkdir -p "$run"

if ! running "$coord_pid"; then
  echo "==> Starting the coordinator (log: $run/coordinator.log)"
  setsid "$bin/skiff-coordinator" serve >>"$run/coordinator.log" 2>&1 </dev/null &
  echo $! >"$coord_pid"
fi
token_file=/var/lib/skiff/coordinator/initial-admin-token
for _ in $(seq 100); do
  if [ -f "$token_file" ] && curl -fsS http://127.0.0.1:7070/healthz >/dev/null 2>&1; then break; fi
  running "$coord_pid" || { echo "quickstart.sh: the coordinator stopped; see $run/coordinator.log" >&2; exit 1; }
  sleep 0.1
done
export SKIFF_URL=http://127.0.0.1:7070
SKIFF_TOKEN=$(cat "$token_file")
export SKIFF_TOKEN

if [ ! -f /var/lib/skiff/agent/node.toml ]; then
  echo "==> Joining this machine as a node"
  join_token=$("$bin/skiff" token create --ttl 10m)
  # In the environment, not on the command line (ps shows command lines).
  SKIFF_JOIN_TOKEN=$join_token "$bin/skiff-agent" join --coordinator 127.0.0.1:7443
fi
if ! running "$agent_pid"; then
  echo "==> Starting the agent (log: $run/agent.log)"
  setsid "$bin/skiff-agent" run >>"$run/agent.log" 2>&1 </dev/null &
  echo $! >"$agent_pid"
fi

for _ in $(seq 100); do
  if "$bin/skiff" node ls --json | grep -q '"status": "connected"'; then break; fi
  sleep 0.1
done
echo
"$bin/skiff" node ls
echo

# The example app's image, made from this machine's busybox (no registry).
image=skiff-example/busybox:2
if ! docker image inspect "$image" >/dev/null 2>&1; then
  if [ ! -x /bin/busybox ]; then
    echo "quickstart.sh: /bin/busybox is missing; install it: apt-get install busybox-static" >&2
    exit 1
  fi
  root=$(mktemp -d)
  mkdir -p "$root/bin" "$root/tmp"
  cp /bin/busybox "$root/bin/"
  for a in sh httpd wget mkdir echo sleep hostname; do ln -s busybox "$root/bin/$a"; done
  tar -C "$root" -c . | docker import -c 'CMD ["/bin/sh"]' - "$image" >/dev/null
  rm -rf "$root"
fi
echo "==> Deploying the example app (examples/hello/compose.yml)"
"$bin/skiff" deploy -f examples/hello/compose.yml hello
"$bin/skiff" stack ps hello
echo
echo "==> GET http://127.0.0.1:18080/ (the published port) and http://hello.localhost/ (the route), through the ingress"
for _ in $(seq 100); do
  if page=$(curl -fsS http://127.0.0.1:18080/ 2>/dev/null); then break; fi
  sleep 0.2
done
printf '%s\n' "${page:?the example app did not answer on port 18080}"
# A replica joins the proxies a moment after it is healthy: wait (up to
# 10 s) until both answer, then show a few answers taking turns.
for _ in $(seq 50); do
  seen=$(for _ in 1 2 3 4; do curl -fsS --resolve hello.localhost:80:127.0.0.1 http://hello.localhost/ 2>/dev/null; done | sort -u | wc -l)
  [ "$seen" -ge 2 ] && break
  sleep 0.2
done
for _ in 1 2 3 4; do
  curl -fsS --resolve hello.localhost:80:127.0.0.1 http://hello.localhost/ ||
    { echo "quickstart.sh: the route http://hello.localhost/ did not answer; see skiff route ls" >&2; exit 1; }
done
echo
"$bin/skiff" route ls
echo
echo "The admin API token is in $token_file. Try:"
echo "  export SKIFF_URL=$SKIFF_URL SKIFF_TOKEN=\$(cat $token_file)"
echo "  $bin/skiff node show \$(hostname)"
echo "  $bin/skiff network show"
echo "  $bin/skiff route ls"
echo "Remove the app with: $bin/skiff stack rm hello"
echo "Stop with: scripts/quickstart.sh stop"
