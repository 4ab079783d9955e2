#!/usr/bin/env bash
# Agent-link load benchmark (docs/benchmarks.md, "Agent link").
#
# Builds release binaries, starts a release coordinator on free loopback
# ports with its own data dir, connects N simulated agents with
# skiff-link-bench (real joins, real certificates, real TLS), holds them,
# restarts the coordinator (SIGTERM, wait for exit, start again on the same
# ports and data dir) and measures how long the agents take to come back.
# Everything it starts is stopped on exit, failure included. Not part of the
# test suite: it takes minutes and most of the machine.
#
# Usage: scripts/bench/link.sh [N]
#   N                     agents (default 10000, or SKIFF_BENCH_AGENTS)
#   SKIFF_BENCH_HOLD      seconds of steady state to measure (default 60)
#   SKIFF_BENCH_SETTLE    seconds to wait after the ramp-up (default 15)
#   SKIFF_BENCH_DIR       keep the coordinator's data dir and the identity
#                         cache here, so a later run reuses the identities
#                         instead of joining again (default: a temp dir,
#                         removed after a successful run)
#   SKIFF_LOG             coordinator log filter (default info)
#
# Results: JSON lines on stdout (also in $dir/results.jsonl), progress and
# a summary on stderr. Exit code: the tool's (0 when the run completed).
set -euo pipefail
cd "$(dirname "$0")/../.."

agents="${1:-${SKIFF_BENCH_AGENTS:-10000}}"
hold="${SKIFF_BENCH_HOLD:-60}"
settle="${SKIFF_BENCH_SETTLE:-15}"
case "$agents$hold$settle" in
  *[!0-9]*) echo "link.sh: N, SKIFF_BENCH_HOLD and SKIFF_BENCH_SETTLE must be whole numbers" >&2; exit 2 ;;
esac

say() { printf '==> %s\n' "$*" >&2; }

# Both processes hold one descriptor per link.
ulimit -n "$(ulimit -Hn)"
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt $((agents + 100)) ]; then
  echo "link.sh: the open-file limit ($(ulimit -n)) is too low for $agents agents" >&2
  exit 2
fi

say "Building release binaries"
cargo build --release --locked -p skiff-coordinator --bin skiff-coordinator \
  -p skiff-tests --bin skiff-link-bench >&2
bin="$PWD/target/release"

if [ -n "${SKIFF_BENCH_DIR:-}" ]; then
  dir="$SKIFF_BENCH_DIR"
  keep=1
  mkdir -p "$dir"
else
  dir="$(mktemp -d /tmp/skiff-link-bench.XXXXXX)"
  keep=0
fi
data="$dir/data"
log="$dir/coordinator.log"
pidfile="$dir/coordinator.pid"
ready="$dir/ready"
results="$dir/results.jsonl"
rm -f "$ready" "$pidfile" "$results"
: >"$log"

coord_pid=""
bench_pid=""
ok=0
# shellcheck disable=SC2317  # invoked by the EXIT trap
cleanup() {
  local rc=$?
  if [ -n "$bench_pid" ] && kill -0 "$bench_pid" 2>/dev/null; then
    kill -TERM "$bench_pid" 2>/dev/null || true
    wait "$bench_pid" 2>/dev/null || true
  fi
  if [ -n "$coord_pid" ] && kill -0 "$coord_pid" 2>/dev/null; then
    kill -TERM "$coord_pid" 2>/dev/null || true
    for _ in $(seq 1 150); do kill -0 "$coord_pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$coord_pid" 2>/dev/null || true
    wait "$coord_pid" 2>/dev/null || true
  fi
  if [ "$ok" = 1 ] && [ "$keep" = 0 ]; then
    rm -rf "$dir"
  else
    echo "link.sh: logs and data kept in $dir" >&2
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

now() { date +%s.%N; }

# Starts the coordinator on $1 (API) and $2 (agent port), waits until it
# serves, and sets coord_pid.
start_coordinator() {
  local seen
  seen="$(grep -c 'Coordinator serving' "$log" 2>/dev/null || true)"
  SKIFF_LOG="${SKIFF_LOG:-info}" "$bin/skiff-coordinator" serve \
    --data-dir "$data" --api-listen "$1" --agent-listen "$2" \
    >>"$log" 2>&1 &
  coord_pid=$!
  echo "$coord_pid" >"$pidfile"
  for _ in $(seq 1 600); do
    if [ "$(grep -c 'Coordinator serving' "$log" 2>/dev/null || true)" -gt "${seen:-0}" ]; then
      return 0
    fi
    if ! kill -0 "$coord_pid" 2>/dev/null; then
      echo "link.sh: the coordinator exited; last log lines:" >&2
      tail -n 20 "$log" >&2
      return 1
    fi
    sleep 0.1
  done
  echo "link.sh: the coordinator did not start within 60 s" >&2
  return 1
}

say "Starting the coordinator (data in $data)"
# Ports 0: the kernel picks free ones; the restart reuses them.
start_coordinator 127.0.0.1:0 127.0.0.1:0
serving="$(grep 'Coordinator serving' "$log" | tail -n 1)"
api="$(grep -o 'api=[0-9.]*:[0-9]*' <<<"$serving" | cut -d= -f2)"
agent="$(grep -o 'agent=[0-9.]*:[0-9]*' <<<"$serving" | cut -d= -f2)"
if [ -z "$api" ] || [ -z "$agent" ]; then
  echo "link.sh: cannot read the listen addresses from: $serving" >&2
  exit 1
fi
token="$(tr -d '[:space:]' <"$data/initial-admin-token")"
say "Coordinator pid $coord_pid, API $api, agent port $agent; $agents agents, hold ${hold}s"

SKIFF_TOKEN="$token" "$bin/skiff-link-bench" \
  --api "http://$api" --agent-addr "$agent" --agents "$agents" \
  --hold "$hold" --settle "$settle" \
  --coordinator-pid-file "$pidfile" --cache "$dir/cache" \
  --wait-reconnect --ready-file "$ready" \
  > >(tee -a "$results") &
bench_pid=$!

while [ ! -e "$ready" ]; do
  if ! kill -0 "$bench_pid" 2>/dev/null; then
    set +e
    wait "$bench_pid"
    rc=$?
    set -e
    echo "link.sh: skiff-link-bench exited ($rc) before the restart" >&2
    exit "$((rc == 0 ? 1 : rc))"
  fi
  sleep 0.2
done

say "Restarting the coordinator (SIGTERM, wait for exit, start on the same ports)"
t_term="$(now)"
kill -TERM "$coord_pid"
set +e
wait "$coord_pid"
stop_rc=$?
set -e
t_exit="$(now)"
coord_pid=""
start_coordinator "$api" "$agent"
t_up="$(now)"
restart_line="$(awk -v rc="$stop_rc" -v a="$t_term" -v b="$t_exit" -v c="$t_up" 'BEGIN {
  printf "{\"event\":\"restart\",\"stop_exit_code\":%d,\"stop_seconds\":%.2f,\"start_seconds\":%.2f,\"down_seconds\":%.2f}\n", rc, b - a, c - b, c - a }')"
echo "$restart_line"
echo "$restart_line" >>"$results"
say "Coordinator back as pid $coord_pid; waiting for the agents"

set +e
wait "$bench_pid"
rc=$?
set -e
bench_pid=""
if [ "$rc" = 0 ]; then
  ok=1
fi
say "Coordinator log: $(grep -c 'WARN\|ERROR' "$log" || true) warnings or errors"
exit "$rc"
