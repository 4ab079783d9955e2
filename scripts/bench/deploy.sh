#!/usr/bin/env bash
# Deploy-latency benchmark (issue 3, "Benchmarks": deploy latency).
#
# Time from `skiff deploy` to all of N containers running (and healthy, in
# the health-check variant), against plain `docker run -d` of the same N
# containers on the same engine in the same run. Goal: Skiff at most 1.2x
# the Docker time.
#
# Builds release binaries, imports the busybox test image if the engine
# lacks it, starts a coordinator and ONE agent (tier 1: the agent drives
# this machine's engine) on free loopback ports in a temp dir. For each N,
# repeated R times with the order of the two sides alternating:
#
#   skiff   `skiff deploy -f compose.yml STACK` (one service, N replicas),
#           timed until it returns: without --detach it returns when every
#           replica runs the new spec (and is healthy, if it has a check).
#           Then `skiff stack rm` and a wait until its containers are gone.
#   docker  N sequential `docker run -d` (what an operator's script does),
#           same image, command, restart policy and health check, timed
#           until `docker ps` counts N running (healthy) containers. Then
#           `docker rm -f` of them, and a wait until they are gone.
#
# "Ready" is defined the same way on both sides: state running, and with
# the health variant also health "healthy". The docker side is polled
# every 50 ms; `skiff deploy` polls the coordinator every 300 ms.
#
# Every container it creates carries a label unique to the run
# (skiff.stack=<run stack> for Skiff's, skiff-bench.run=<run id> for
# docker's); the exit trap removes exactly those and the stacks' networks
# (labelled skiff.stack too), stops the agent and the coordinator, and
# deletes the temp dir. Other containers on the engine
# are never touched. Traffic goes to 127.0.0.1 only.
#
# Usage: scripts/bench/deploy.sh [N ...]
#   N                     replica counts (default "10 50", or SKIFF_BENCH_N)
#   SKIFF_BENCH_REPEATS   measurements per side and N (default 3)
#   SKIFF_BENCH_HEALTH    1: also run the variant with a health check
#                         (CMD-SHELL "exit 0", interval 1s) on both sides
#   SKIFF_BENCH_KEEP      1: keep the temp dir (logs) after a successful run
#   SKIFF_LOG             coordinator and agent log filter (default info)
#
# Output: one line per measurement on stderr, then a summary table
# (medians, ratio skiff/docker) on stdout. Exit code 0 when every
# measurement completed (the 1.2x goal is reported, not enforced).
set -euo pipefail
cd "$(dirname "$0")/../.."

if [ "$#" -gt 0 ]; then
  counts="$*"
else
  counts="${SKIFF_BENCH_N:-10 50}"
fi
repeats="${SKIFF_BENCH_REPEATS:-3}"
health="${SKIFF_BENCH_HEALTH:-0}"
for v in $counts $repeats; do
  case "$v" in
    '' | *[!0-9]* | 0) echo "deploy.sh: N and SKIFF_BENCH_REPEATS must be positive whole numbers" >&2; exit 2 ;;
  esac
done

image=skiff-test/busybox:1
# A long-running command that exits on SIGTERM (a bare `sleep` as PID 1
# ignores it and would wait out the stop grace period on removal).
cmd_sh="trap 'exit 0' TERM; sleep 3600 & wait"
health_cmd="exit 0"
poll=0.05

say() { printf '==> %s\n' "$*" >&2; }
now_ns() { date +%s%N; }

say "Building release binaries"
cargo build --release --locked -p skiff-coordinator -p skiff-agent -p skiff-cli --bins >&2
bin="$PWD/target/release"

if ! docker image inspect "$image" >/dev/null 2>&1; then
  say "Importing $image from /bin/busybox"
  if [ ! -x /bin/busybox ]; then
    echo "deploy.sh: /bin/busybox is missing; install Debian's busybox-static" >&2
    exit 2
  fi
  root="$(mktemp -d /tmp/skiff-busybox.XXXXXX)"
  mkdir -p "$root/bin" "$root/tmp" "$root/www"
  cp /bin/busybox "$root/bin/"
  for a in sh httpd wget nslookup sleep echo cat ls env id hostname nc; do
    ln -s busybox "$root/bin/$a"
  done
  tar -C "$root" -c . | docker import -c 'CMD ["/bin/sh"]' - "$image" >/dev/null
  rm -rf "$root"
fi

dir="$(mktemp -d /tmp/skiff-deploy-bench.XXXXXX)"
run="db$$$(date +%s)"
coord_log="$dir/coordinator.log"
agent_log="$dir/agent.log"
coord_pid=""
agent_pid=""
# Stack names used so far (measurements run in subshells: kept in a file).
stacks="$dir/stacks"
: >"$stacks"
ok=0

# Removes this run's containers and the stacks' networks (and only
# those), found by label.
remove_ours() {
  local ids=() nets=() s
  mapfile -t ids < <(docker ps -aq --filter "label=skiff-bench.run=$run")
  while read -r s; do
    mapfile -t -O "${#ids[@]}" ids < <(docker ps -aq --filter "label=skiff.stack=$s")
    mapfile -t -O "${#nets[@]}" nets < <(docker network ls -q --filter "label=skiff.stack=$s")
  done <"$stacks"
  if [ "${#ids[@]}" -gt 0 ]; then
    docker rm -f "${ids[@]}" >/dev/null 2>&1 || true
  fi
  if [ "${#nets[@]}" -gt 0 ]; then
    docker network rm "${nets[@]}" >/dev/null 2>&1 || true
  fi
}

stop_pid() {
  local pid=$1
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  fi
}

# shellcheck disable=SC2317  # invoked by the EXIT trap
cleanup() {
  local rc=$?
  # The agent first, so it does not recreate what is removed below.
  stop_pid "$agent_pid"
  stop_pid "$coord_pid"
  remove_ours
  if [ "$ok" = 1 ] && [ "${SKIFF_BENCH_KEEP:-0}" != 1 ]; then
    rm -rf "$dir"
  else
    echo "deploy.sh: logs kept in $dir" >&2
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Polls `$@` (a command that succeeds when done) every $poll seconds for at
# most $1 seconds.
wait_until() {
  local limit=$1 what=$2
  shift 2
  local end=$(($(now_ns) + limit * 1000000000))
  until "$@"; do
    if [ "$(now_ns)" -ge "$end" ]; then
      echo "deploy.sh: timed out after ${limit}s waiting for $what" >&2
      return 1
    fi
    sleep "$poll"
  done
}

say "Starting the coordinator and one agent (data and logs in $dir)"
SKIFF_LOG="${SKIFF_LOG:-info}" "$bin/skiff-coordinator" serve --data-dir "$dir/coord" \
  --api-listen 127.0.0.1:0 --agent-listen 127.0.0.1:0 >"$coord_log" 2>&1 &
coord_pid=$!
serving() { grep -q 'Coordinator serving' "$coord_log" 2>/dev/null || ! kill -0 "$coord_pid" 2>/dev/null; }
wait_until 60 "the coordinator to serve" serving
if ! kill -0 "$coord_pid" 2>/dev/null; then
  echo "deploy.sh: the coordinator exited; last log lines:" >&2
  tail -n 20 "$coord_log" >&2
  exit 1
fi
line="$(grep 'Coordinator serving' "$coord_log" | tail -n 1)"
api="$(grep -o 'api=[0-9.]*:[0-9]*' <<<"$line" | cut -d= -f2)"
agent_addr="$(grep -o 'agent=[0-9.]*:[0-9]*' <<<"$line" | cut -d= -f2)"
if [ -z "$api" ] || [ -z "$agent_addr" ]; then
  echo "deploy.sh: cannot read the listen addresses from: $line" >&2
  exit 1
fi
export SKIFF_URL="http://$api"
SKIFF_TOKEN="$(tr -d '[:space:]' <"$dir/coord/initial-admin-token")"
export SKIFF_TOKEN
export SKIFF_CONFIG="$dir/cli.toml"

join_token="$("$bin/skiff" token create --ttl 10m)"
"$bin/skiff-agent" join --coordinator "$agent_addr" --token "$join_token" \
  --data-dir "$dir/agent" --name "$run" --label bench=1 >>"$agent_log" 2>&1
SKIFF_LOG="${SKIFF_LOG:-info}" "$bin/skiff-agent" run --data-dir "$dir/agent" >>"$agent_log" 2>&1 &
agent_pid=$!
connected() { "$bin/skiff" node ls --json 2>/dev/null | grep -q '"status": "connected"'; }
wait_until 60 "the agent to connect" connected

compose() { # N HEALTH
  cat <<EOF
services:
  app:
    image: $image
    command: ["sh", "-c", "$cmd_sh"]
    restart: always
EOF
  if [ "$2" = 1 ]; then
    cat <<EOF
    healthcheck:
      test: ["CMD-SHELL", "$health_cmd"]
      interval: 1s
      timeout: 1s
      retries: 3
EOF
  fi
  cat <<EOF
    deploy:
      replicas: $1
      placement:
        constraints: ["node.labels.bench == 1"]
EOF
}

count() { # FILTER... -> number of matching containers
  local args=() f
  for f in "$@"; do args+=(--filter "$f"); done
  docker ps -aq "${args[@]}" | wc -l
}
ready_count() { # LABEL HEALTH
  if [ "$2" = 1 ]; then
    count "label=$1" status=running health=healthy
  else
    count "label=$1" status=running
  fi
}
all_ready() { [ "$(ready_count "$1" "$2")" -ge "$3" ]; }
none_left() { [ "$(count "label=$1")" -eq 0 ]; }

# Prints the milliseconds `skiff deploy` took for N replicas.
measure_skiff() { # N HEALTH REP
  local n=$1 h=$2 stack="${run}n$1h$2r$3" t0 t1
  echo "$stack" >>"$stacks"
  compose "$n" "$h" >"$dir/$stack.yml"
  t0="$(now_ns)"
  if ! "$bin/skiff" deploy -f "$dir/$stack.yml" "$stack" >"$dir/$stack.out" 2>&1; then
    echo "deploy.sh: skiff deploy of $stack failed:" >&2
    cat "$dir/$stack.out" >&2
    return 1
  fi
  t1="$(now_ns)"
  # Cross-check on the engine: N containers of the stack are ready.
  if ! all_ready "skiff.stack=$stack" "$h" "$n"; then
    echo "deploy.sh: skiff deploy returned but the engine has $(ready_count "skiff.stack=$stack" "$h")/$n ready" >&2
    return 1
  fi
  "$bin/skiff" stack rm "$stack" >>"$dir/$stack.out" 2>&1
  wait_until 300 "the containers of $stack to be removed" none_left "skiff.stack=$stack"
  echo $(((t1 - t0) / 1000000))
}

# Prints the milliseconds N sequential `docker run -d` took until all are ready.
measure_docker() { # N HEALTH REP
  local n=$1 h=$2 tag="$run-n$1h$2r$3" t0 t1 i hargs=() ids=()
  if [ "$h" = 1 ]; then
    hargs=(--health-cmd "$health_cmd" --health-interval 1s --health-timeout 1s --health-retries 3)
  fi
  t0="$(now_ns)"
  for i in $(seq 1 "$n"); do
    docker run -d --name "skiff-bench.$tag.$i" --label "skiff-bench.run=$run" \
      --label "skiff-bench.set=$tag" --restart always "${hargs[@]}" \
      "$image" sh -c "$cmd_sh" >/dev/null
  done
  wait_until 300 "$n docker containers to be ready" all_ready "skiff-bench.set=$tag" "$h" "$n"
  t1="$(now_ns)"
  mapfile -t ids < <(docker ps -aq --filter "label=skiff-bench.set=$tag")
  docker rm -f "${ids[@]}" >/dev/null
  wait_until 300 "the docker containers of $tag to be removed" none_left "skiff-bench.set=$tag"
  echo $(((t1 - t0) / 1000000))
}

median() { sort -n | awk '{ a[NR] = $1 } END { if (NR % 2) print a[(NR + 1) / 2]; else print int((a[NR / 2] + a[NR / 2 + 1]) / 2) }'; }
secs() { awk -v ms="$1" 'BEGIN { printf "%.2f", ms / 1000 }'; }

variants=0
[ "$health" = 1 ] && variants="0 1"
results="$dir/results.tsv"
: >"$results"
say "Engine: Docker $(docker version --format '{{.Server.Version}} (API {{.Server.APIVersion}})'); $(nproc) cores; $(free -m | awk '/^Mem:/ { print $2 }') MiB memory"
for h in $variants; do
  for n in $counts; do
    for rep in $(seq 1 "$repeats"); do
      # Alternate which side goes first, so neither always gets a warm engine.
      if [ $((rep % 2)) = 1 ]; then order="skiff docker"; else order="docker skiff"; fi
      for side in $order; do
        ms="$("measure_$side" "$n" "$h" "$rep")"
        say "N=$n health=$h rep=$rep $side: $(secs "$ms") s"
        printf '%s\t%s\t%s\t%s\n' "$h" "$n" "$side" "$ms" >>"$results"
      done
    done
  done
done

printf '%-6s %-6s %-8s %-14s %-14s %s\n' N health repeats "skiff (s)" "docker (s)" "ratio"
for h in $variants; do
  for n in $counts; do
    s="$(awk -v h="$h" -v n="$n" '$1 == h && $2 == n && $3 == "skiff" { print $4 }' "$results" | median)"
    d="$(awk -v h="$h" -v n="$n" '$1 == h && $2 == n && $3 == "docker" { print $4 }' "$results" | median)"
    r="$(awk -v s="$s" -v d="$d" 'BEGIN { printf "%.2f", s / d }')"
    printf '%-6s %-6s %-8s %-14s %-14s %s\n' "$n" "$([ "$h" = 1 ] && echo yes || echo no)" "$repeats" "$(secs "$s")" "$(secs "$d")" "${r}x"
  done
done
ok=1
