#!/usr/bin/env bash
# ElasticDNS benchmark (issue 10, "Benchmark"): dnsperf against the agent's
# DNS server (skiff-dns-bench serve: the agent's server alone, from a
# records file, rate limit off) and against unbound configured with the
# same names as local-data, on this machine, in one run, with the same
# thread count (SKIFF_BENCH_THREADS, default 2: unbound's num-threads, the
# server's UDP sockets, dnsperf's -T).
#
#   cluster   dnsperf over SERVICE.STACK.skiff A queries (100 services of 3
#             replicas), to skiff and to unbound, alternating, each
#             SKIFF_BENCH_REPEATS times (median reported)
#   forward   the same against skiff for names it forwards to an upstream
#             (a second unbound holding them as local-data), after one
#             pass to warm the cache: the cached path
#   latency   round trips one query at a time (skiff-dns-bench latency,
#             since dnsperf 2.10 gives only the mean): alone, and while
#             dnsperf loads the server at half the QPS measured above
#
# Usage: scripts/bench/dns.sh
#   SKIFF_BENCH_SECONDS   seconds per dnsperf run (default 10)
#   SKIFF_BENCH_REPEATS   runs per server (default 3)
#   SKIFF_BENCH_THREADS   threads per side (default 2)
#   SKIFF_BENCH_CLIENTS   dnsperf's sockets (-c, default 16): both servers
#                         spread queries over their threads by SO_REUSEPORT,
#                         which hashes the client's address and port; with
#                         as few sockets as threads, half the runs land on
#                         one thread (the results were bimodal)
#   SKIFF_BENCH_KEEP      1: keep the temp dir (configs, logs)
#
# Output: one line per run on stderr, then a table on stdout. Needs
# dnsperf and unbound (apt-get install dnsperf unbound); ports 5300-5302
# on 127.0.0.1 must be free.
set -euo pipefail
cd "$(dirname "$0")/../.."

seconds="${SKIFF_BENCH_SECONDS:-10}"
repeats="${SKIFF_BENCH_REPEATS:-3}"
threads="${SKIFF_BENCH_THREADS:-2}"
clients="${SKIFF_BENCH_CLIENTS:-16}"
for v in "$seconds" "$repeats" "$threads" "$clients"; do
  case "$v" in
    '' | *[!0-9]* | 0) echo "dns.sh: SKIFF_BENCH_SECONDS, _REPEATS, _THREADS and _CLIENTS must be positive whole numbers" >&2; exit 2 ;;
  esac
done
for tool in dnsperf unbound python3; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "dns.sh: $tool is missing; install it (apt-get install dnsperf unbound python3)" >&2
    exit 2
  fi
done

say() { printf '==> %s\n' "$*" >&2; }

dir="$(mktemp -d /tmp/skiff-dns-bench.XXXXXX)"
pids=()
ok=0
# shellcheck disable=SC2317  # invoked by the EXIT trap
cleanup() {
  local rc=$? p
  for p in "${pids[@]}"; do
    kill -TERM "$p" 2>/dev/null || true
  done
  for p in "${pids[@]}"; do
    wait "$p" 2>/dev/null || true
  done
  if [ "$ok" = 1 ] && [ "${SKIFF_BENCH_KEEP:-0}" != 1 ]; then
    rm -rf "$dir"
  else
    echo "dns.sh: files kept in $dir" >&2
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say "Building skiff-dns-bench (release)"
cargo build --release --locked -p skiff-tests --bin skiff-dns-bench >&2
bench="${CARGO_TARGET_DIR:-$PWD/target}/release/skiff-dns-bench"

"$bench" generate --dir "$dir" --services 100 --replicas 3

unbound_conf() { # PORT INCLUDE
  cat <<EOF
server:
    interface: 127.0.0.1@$1
    port: $1
    num-threads: $threads
    so-reuseport: yes
    do-daemonize: no
    chroot: ""
    username: ""
    directory: "$dir"
    pidfile: ""
    use-syslog: no
    logfile: ""
    verbosity: 0
    access-control: 127.0.0.0/8 allow
    do-ip6: no
    module-config: "iterator"
include: "$2"
EOF
}
unbound_conf 5301 "$dir/unbound-local.conf" >"$dir/unbound.conf"
unbound_conf 5302 "$dir/forward-local.conf" >"$dir/upstream.conf"
unbound-checkconf "$dir/unbound.conf" >&2
unbound-checkconf "$dir/upstream.conf" >&2

say "Starting skiff (127.0.0.1:5300), unbound (5301) and the upstream unbound (5302)"
"$bench" serve --records "$dir/records.json" --listen 127.0.0.1:5300 \
  --upstream 127.0.0.1:5302 --udp-sockets "$threads" >"$dir/skiff.stats" 2>"$dir/skiff.log" &
pids+=($!)
unbound -d -c "$dir/unbound.conf" >"$dir/unbound.log" 2>&1 &
pids+=($!)
unbound -d -c "$dir/upstream.conf" >"$dir/upstream.log" 2>&1 &
pids+=($!)

answers() { # PORT NAME: whether the server answers NAME
  dnsperf -s 127.0.0.1 -p "$1" -d <(echo "$2 A") -n 1 2>/dev/null | grep -q 'NOERROR 1 '
}
for port in 5300 5301 5302; do
  name=svc1.stack1.skiff
  [ "$port" = 5302 ] && name=host1.bench.test
  for _ in $(seq 50); do
    answers "$port" "$name" && break
    sleep 0.1
  done
  answers "$port" "$name" || { echo "dns.sh: the server on port $port does not answer $name" >&2; exit 1; }
done
answers 5300 host1.bench.test || { echo "dns.sh: skiff does not forward host1.bench.test" >&2; exit 1; }

run() { # LABEL PORT QUERIES [EXTRA...]: prints QPS, logs the line
  local label=$1 port=$2 queries=$3
  shift 3
  local out qps lost
  out=$(dnsperf -s 127.0.0.1 -p "$port" -d "$queries" -l "$seconds" -T "$threads" -c "$clients" "$@" 2>&1)
  qps=$(awk '/Queries per second/ { print $4 }' <<<"$out")
  lost=$(awk '/Queries lost/ { print $3 }' <<<"$out")
  echo "$label: $qps q/s, lost $lost, $(awk '/Average Latency/ { print "mean latency " $4 " s" }' <<<"$out")" >&2
  echo "$qps"
}

median() { python3 -c 'import statistics,sys; print(statistics.median(float(x) for x in sys.argv[1:]))' "$@"; }

say "Cluster names: $repeats runs of ${seconds}s each, alternating"
skiff_runs=()
unbound_runs=()
for i in $(seq "$repeats"); do
  skiff_runs+=("$(run "skiff   cluster #$i" 5300 "$dir/cluster.queries")")
  unbound_runs+=("$(run "unbound cluster #$i" 5301 "$dir/cluster.queries")")
done
skiff_qps=$(median "${skiff_runs[@]}")
unbound_qps=$(median "${unbound_runs[@]}")

say "Forwarded names, warm cache"
run "skiff   forward warm-up" 5300 "$dir/forward.queries" >/dev/null
forward_runs=()
for i in $(seq "$repeats"); do
  forward_runs+=("$(run "skiff   forward #$i" 5300 "$dir/forward.queries")")
done
forward_qps=$(median "${forward_runs[@]}")

say "Latency: one query at a time, alone and under load at half the QPS"
latency() { "$bench" latency --server "127.0.0.1:$1" --queries "$dir/cluster.queries" --count 50000; }
skiff_idle=$(latency 5300)
unbound_idle=$(latency 5301)
half=$(python3 -c "print(int(float('$skiff_qps') / 2))")
dnsperf -s 127.0.0.1 -p 5300 -d "$dir/cluster.queries" -l $((seconds + 30)) -T "$threads" -c "$clients" -Q "$half" >"$dir/load-skiff.log" 2>&1 &
load=$!
skiff_load=$(latency 5300)
kill -INT "$load" 2>/dev/null || true
wait "$load" 2>/dev/null || true
dnsperf -s 127.0.0.1 -p 5301 -d "$dir/cluster.queries" -l $((seconds + 30)) -T "$threads" -c "$clients" -Q "$half" >"$dir/load-unbound.log" 2>&1 &
load=$!
unbound_load=$(latency 5301)
kill -INT "$load" 2>/dev/null || true
wait "$load" 2>/dev/null || true

python3 - "$skiff_qps" "$unbound_qps" "$forward_qps" "$half" "$skiff_idle" "$unbound_idle" "$skiff_load" "$unbound_load" "$(nproc)" "$threads" "$clients" <<'EOF'
import json, sys
sq, uq, fq, half = (float(x) for x in sys.argv[1:5])
si, ui, sl, ul = (json.loads(x) for x in sys.argv[5:9])
cores, threads, clients = sys.argv[9], sys.argv[10], sys.argv[11]
print(f"cores: {cores}, threads per side: {threads}, dnsperf clients: {clients}")
print(f"{'':28} {'skiff':>10} {'unbound':>10} {'ratio':>7}")
print(f"{'cluster names, q/s':28} {sq:>10.0f} {uq:>10.0f} {sq / uq:>7.2f}")
print(f"{'forwarded, warm cache, q/s':28} {fq:>10.0f} {'':>10} {fq / uq:>7.2f}")
for label, s, u in [("alone", si, ui), (f"under {half:.0f} q/s", sl, ul)]:
    for p in ["p50_us", "p99_us", "p999_us"]:
        print(f"{label + ' ' + p.replace('_us', ' (us)'):28} {s[p]:>10} {u[p]:>10}")
    print(f"{label + ' lost':28} {s['lost']:>10} {u['lost']:>10}")
EOF
ok=1
