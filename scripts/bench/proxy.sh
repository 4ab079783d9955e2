#!/usr/bin/env bash
# Ingress benchmark (issue 11, "Benchmark"): wrk through the agent's HTTP
# reverse proxy (skiff-proxy-bench serve: the proxy alone, one route, two
# upstream replicas) and through nginx set up as the same reverse proxy
# (upstream keep-alive, X-Forwarded-* headers), to the same upstreams (an
# nginx serving a small file on 127.0.0.2 and 127.0.0.3), on this machine,
# in one run. Plain HTTP with keep-alive, and TLS (ECDSA P-256, TLS 1.3,
# keep-alive). Then layer-4 TCP forwarding: iperf3 through the agent's TCP
# forwarder (skiff-proxy-bench tcp) and through HAProxy in TCP mode.
#
# Runs alternate between the two proxies, SKIFF_BENCH_REPEATS times each
# (median reported).
#
# Usage: scripts/bench/proxy.sh
#   SKIFF_BENCH_SECONDS      seconds per run (default 10)
#   SKIFF_BENCH_REPEATS      runs per proxy and case (default 3)
#   SKIFF_BENCH_CONNECTIONS  wrk's connections (default 64)
#   SKIFF_BENCH_KEEP         1: keep the temp dir (configs, logs)
#
# Output: one line per run on stderr, then a table on stdout: requests/s,
# p99 latency, each proxy's CPU time (user + system, from /proc) per
# request -- the figure that other load on the machine disturbs least --
# and the load average before and after. Needs wrk,
# nginx, haproxy, iperf3 and openssl (apt-get install wrk nginx-light
# haproxy iperf3 openssl); adds `127.0.0.1 bench.test` to /etc/hosts for
# the run (wrk sends the URL's host as SNI), so run it as root. Ports
# 18001, 18100-18103, 18200-18203 and 15201 on loopback must be free.
set -euo pipefail
cd "$(dirname "$0")/../.."

seconds="${SKIFF_BENCH_SECONDS:-10}"
repeats="${SKIFF_BENCH_REPEATS:-3}"
conns="${SKIFF_BENCH_CONNECTIONS:-64}"
for v in "$seconds" "$repeats" "$conns"; do
  case "$v" in
    '' | *[!0-9]* | 0) echo "proxy.sh: SKIFF_BENCH_SECONDS, _REPEATS and _CONNECTIONS must be positive whole numbers" >&2; exit 2 ;;
  esac
done
for tool in wrk nginx haproxy iperf3 openssl python3; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "proxy.sh: $tool is missing; install it (apt-get install wrk nginx-light haproxy iperf3 openssl python3)" >&2
    exit 2
  fi
done
if [ "$(id -u)" -ne 0 ]; then
  echo "proxy.sh: run as root (it adds bench.test to /etc/hosts for the run)" >&2
  exit 2
fi

say() { printf '==> %s\n' "$*" >&2; }

dir="$(mktemp -d /tmp/skiff-proxy-bench.XXXXXX)"
pids=()
hosts_added=0
# shellcheck disable=SC2317  # invoked by the EXIT trap
cleanup() {
  local p
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  if [ "$hosts_added" = 1 ]; then sed -i '/ bench\.test # skiff-proxy-bench$/d' /etc/hosts; fi
  if [ "${SKIFF_BENCH_KEEP:-0}" = 1 ]; then echo "kept $dir" >&2; else rm -rf "$dir"; fi
}
trap cleanup EXIT

say "Building skiff-proxy-bench (release)"
cargo build --release --locked -q -p skiff-tests --bin skiff-proxy-bench
bench="${CARGO_TARGET_DIR:-target}/release/skiff-proxy-bench"

if ! grep -q ' bench\.test # skiff-proxy-bench$' /etc/hosts; then
  echo '127.0.0.1 bench.test # skiff-proxy-bench' >>/etc/hosts
  hosts_added=1
fi

# One certificate for both proxies.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
  -subj /CN=bench.test -addext subjectAltName=DNS:bench.test \
  -keyout "$dir/key.pem" -out "$dir/cert.pem" 2>/dev/null
mkdir -p "$dir/www" "$dir/logs"
# nginx's workers (www-data) read the file.
chmod 755 "$dir" "$dir/www"
head -c 612 /dev/zero | tr '\0' x >"$dir/www/index.html"

cat >"$dir/upstream.conf" <<CONF
worker_processes 1;
pid $dir/upstream.pid;
error_log $dir/logs/upstream.err warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 100000;
  server {
    listen 127.0.0.2:18001 reuseport;
    listen 127.0.0.3:18001 reuseport;
    root $dir/www;
  }
}
CONF

# The proxies get every core (the agent's runtime has a thread per core).
cat >"$dir/proxy.conf" <<CONF
worker_processes auto;
pid $dir/proxy.pid;
error_log $dir/logs/proxy.err warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 100000;
  upstream app {
    server 127.0.0.2:18001;
    server 127.0.0.3:18001;
    keepalive 128;
  }
  server {
    listen 127.0.0.1:18100;
    listen 127.0.0.1:18101 ssl http2;
    server_name bench.test;
    ssl_certificate $dir/cert.pem;
    ssl_certificate_key $dir/key.pem;
    ssl_protocols TLSv1.3;
    location / {
      proxy_pass http://app;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host \$host;
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto \$scheme;
      proxy_set_header X-Forwarded-Host \$host;
    }
  }
}
CONF

cat >"$dir/haproxy.cfg" <<CONF
global
  nbthread $(nproc)
defaults
  mode tcp
  timeout connect 5s
  timeout client 60s
  timeout server 60s
frontend l4
  bind 127.0.0.1:18102
  default_backend iperf
backend iperf
  server a 127.0.0.2:15201
CONF

say "Starting the upstream nginx, nginx as a proxy, HAProxy, skiff's proxy and iperf3"
nginx -c "$dir/upstream.conf" -g 'daemon off;' &
pids+=($!)
nginx -c "$dir/proxy.conf" -g 'daemon off;' &
pids+=($!)
nginx_proxy=$!
haproxy -f "$dir/haproxy.cfg" -db >"$dir/logs/haproxy.log" 2>&1 &
pids+=($!)
"$bench" serve --upstream 127.0.0.2:18001 --upstream 127.0.0.3:18001 --domain bench.test \
  --http 127.0.0.1:18200 --https 127.0.0.1:18201 --cert-dir "$dir/skiff" >"$dir/logs/skiff.json" 2>"$dir/logs/skiff.err" &
pids+=($!)
skiff_proxy=$!
"$bench" tcp --listen 127.0.0.1:18202 --upstream 127.0.0.2:15201 >"$dir/logs/skiff-tcp.json" 2>"$dir/logs/skiff-tcp.err" &
pids+=($!)
iperf3 -s -B 127.0.0.2 -p 15201 >"$dir/logs/iperf3.log" 2>&1 &
pids+=($!)

ready() {
  local url=$1 i
  for i in $(seq 100); do
    if curl -ksf -o /dev/null --resolve bench.test:"${url##*:}":127.0.0.1 "$url/"; then return 0; fi
    sleep 0.1
  done
  echo "proxy.sh: $url did not answer; see $dir/logs" >&2
  exit 1
}
for u in http://bench.test:18100 https://bench.test:18101 http://bench.test:18200 https://bench.test:18201; do
  ready "$u"
done

results="$dir/results"
: >"$results"
# CPU time (user + system, clock ticks) used so far by processes $@ and
# their threads: what a proxy spends, whatever else runs on the machine.
ticks() {
  local p
  for p in "$@"; do awk '{print $14 + $15}' "/proc/$p/stat"; done | awk '{t += $1} END {print t + 0}'
}
# The processes doing a proxy's work: nginx's workers, or skiff's one.
workers() {
  case "$1" in
    *-nginx) pgrep -P "$nginx_proxy" ;;
    *) echo "$skiff_proxy" ;;
  esac
}
# wrk: requests/s, p99 latency (ms), and the proxy's CPU time per request
# (microseconds).
run_wrk() {
  local name=$1 url=$2 out before after procs
  procs=$(workers "$name")
  # shellcheck disable=SC2086  # one pid per word
  before=$(ticks $procs)
  out=$(wrk -t2 -c"$conns" -d"${seconds}s" --latency -H 'Host: bench.test' "$url/")
  # shellcheck disable=SC2086
  after=$(ticks $procs)
  python3 - "$name" "$out" "$((after - before))" "$(getconf CLK_TCK)" >>"$results" <<'PY'
import re, sys
name, out, ticks, hz = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
m = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
p99 = float(m.group(1)) * {"us": 0.001, "ms": 1, "s": 1000}[m.group(2)]
total = int(re.search(r"(\d+) requests in", out).group(1))
cpu_us = ticks / hz * 1e6 / max(total, 1)
errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
sock = re.search(r"Socket errors: (.*)", out)
print(f"{name} {rps:.0f} {p99:.3f} {errors.group(1) if errors else 0} {'1' if sock else '0'} {cpu_us:.1f}")
PY
  tail -1 "$results" >&2
}
run_iperf() {
  local name=$1 port=$2 out
  out=$(iperf3 -c 127.0.0.1 -p "$port" -t "$seconds" -J)
  python3 - "$name" "$out" >>"$results" <<'PY'
import json, sys
name, out = sys.argv[1], json.loads(sys.argv[2])
print(f"{name} {out['end']['sum_received']['bits_per_second'] / 1e9:.3f} 0 0 0 0")
PY
  tail -1 "$results" >&2
}

load_before=$(cut -d' ' -f1-3 /proc/loadavg)
for r in $(seq "$repeats"); do
  say "Round $r of $repeats"
  run_wrk http-nginx http://bench.test:18100
  run_wrk http-skiff http://bench.test:18200
  run_wrk tls-nginx https://bench.test:18101
  run_wrk tls-skiff https://bench.test:18201
  run_iperf tcp-haproxy 18102
  run_iperf tcp-skiff 18202
done

load_after=$(cut -d' ' -f1-3 /proc/loadavg)
python3 - "$results" "$(nproc)" "$load_before" "$load_after" <<'PY'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    name, a, b, bad, sock, cpu = line.split()
    rows.setdefault(name, []).append((float(a), float(b), int(bad), int(sock), float(cpu)))
med = lambda name, i: statistics.median(r[i] for r in rows[name])
print(f"# {sys.argv[2]} cores; medians of {len(rows['http-skiff'])} runs; load average {sys.argv[3]} before, {sys.argv[4]} after")
print("| case | nginx / HAProxy | Skiff | ratio |")
print("|---|---|---|---|")
for case in ("http", "tls"):
    n, s = med(f"{case}-nginx", 0), med(f"{case}-skiff", 0)
    print(f"| {case} requests/s | {n:.0f} | {s:.0f} | {s / n:.2f}x |")
    n, s = med(f"{case}-nginx", 1), med(f"{case}-skiff", 1)
    print(f"| {case} p99 latency (ms) | {n:.2f} | {s:.2f} | {s / n:.2f}x |")
    n, s = med(f"{case}-nginx", 4), med(f"{case}-skiff", 4)
    print(f"| {case} proxy CPU per request (us) | {n:.1f} | {s:.1f} | {s / n:.2f}x |")
n, s = med("tcp-haproxy", 0), med("tcp-skiff", 0)
print(f"| TCP layer 4, iperf3 (Gbit/s) | {n:.2f} | {s:.2f} | {s / n:.2f}x |")
bad = sum(r[2] + r[3] for v in rows.values() for r in v)
print(f"non-2xx answers or socket errors in all runs: {bad}")
PY
