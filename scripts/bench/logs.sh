#!/usr/bin/env bash
# Logs shipping benchmark (issue 12, "Benchmark"): a container's output
# read from its json-file log and shipped over TCP to a receiver, by the
# agent's logs controller (agent/examples/logs_ship_bench.rs `ship`: the
# controller alone, one syslog sink over TCP) and by rsyslog (imfile on the
# same json-file, omfwd over TCP, octet-counted RFC 5424), to the same
# receiver (logs_ship_bench `receive`), on this machine, in one run.
#
# A busybox container first writes SKIFF_BENCH_LINES lines of about 100
# bytes as fast as it can and exits, so the writing is out of the
# measurement and both read the same finished file. Then, alternating,
# SKIFF_BENCH_REPEATS times each: a fresh receiver, a fresh reader (empty
# state, so it reads from the start), the wall time until the receiver has
# every line, the reader's CPU time (user + system of all its threads, from
# /proc/<pid>/stat) and its peak resident memory (VmHWM).
#
# What differs in the work: Skiff decodes each json line (text, stream,
# timestamp), writes it to its own per-container file, appends it to the
# sink's on-disk buffer (fsync per batch) and sends it as RFC 5424 with
# structured data; rsyslog sends the raw json line as the message, parsed
# by nothing, through its in-memory queue.
#
# Usage: scripts/bench/logs.sh
#   SKIFF_BENCH_LINES    lines the container writes (default 2000000)
#   SKIFF_BENCH_REPEATS  runs per reader (default 3)
#   SKIFF_BENCH_KEEP     1: keep the temp dir (configs, logs)
#
# Output: one line per run on stderr, then a table on stdout (medians):
# lines/s, MiB/s of container output, CPU seconds per GiB of container
# output, peak RSS, and the ratios; the load average before and after.
# Needs root (to read /var/lib/docker), the Docker Engine with the json-file
# driver, the skiff-test/busybox:1 image, rsyslogd with imfile
# (apt-get install rsyslog), python3 and ss. Port 18610 on loopback must be
# free. Needs about 1 GiB of free disk under /var/tmp.
set -euo pipefail
cd "$(dirname "$0")/../.."

lines="${SKIFF_BENCH_LINES:-2000000}"
repeats="${SKIFF_BENCH_REPEATS:-3}"
for v in "$lines" "$repeats"; do
  case "$v" in
    '' | *[!0-9]* | 0) echo "logs.sh: SKIFF_BENCH_LINES and SKIFF_BENCH_REPEATS must be positive whole numbers" >&2; exit 2 ;;
  esac
done
for tool in docker rsyslogd python3 ss; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "logs.sh: $tool is missing; install it (apt-get install docker.io rsyslog python3 iproute2)" >&2
    exit 2
  fi
done
if [ "$(id -u)" -ne 0 ]; then
  echo "logs.sh: run as root (both readers read /var/lib/docker/containers)" >&2
  exit 2
fi
if ! docker image inspect skiff-test/busybox:1 >/dev/null 2>&1; then
  echo "logs.sh: no skiff-test/busybox:1 image; the tests crate's harness imports it (cargo test -p skiff-tests --test e2e)" >&2
  exit 2
fi
imfile="$(find /usr/lib -name imfile.so -path '*rsyslog*' 2>/dev/null | head -n1)"
if [ -z "$imfile" ]; then
  echo "logs.sh: rsyslog's imfile module is missing; install rsyslog" >&2
  exit 2
fi

say() { printf '==> %s\n' "$*" >&2; }

port=18610
node="logsbench$$"
name="skiff-logs-bench-$$"
dir="$(mktemp -d /var/tmp/skiff-logs-bench.XXXXXX)"
pids=()
# shellcheck disable=SC2317  # invoked by the EXIT trap
cleanup() {
  local p
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  docker rm -f "$name" >/dev/null 2>&1 || true
  if [ "${SKIFF_BENCH_KEEP:-0}" = 1 ]; then echo "kept $dir" >&2; else rm -rf "$dir"; fi
}
trap cleanup EXIT

say "Building logs_ship_bench (release)"
cargo build --release --locked -q -p skiff-agent --example logs_ship_bench
bench="${CARGO_TARGET_DIR:-target}/release/examples/logs_ship_bench"

say "A container writes $lines lines"
docker run -d --name "$name" --log-driver json-file --log-opt max-size=4g \
  --label "skiff.node=$node" --label skiff.stack=bench --label skiff.service=writer \
  --label skiff.slot=1 --label skiff.name=bench.writer.1 --label skiff.key=bench.writer.1@1 \
  skiff-test/busybox:1 sh -c \
  "p=\$(printf '%090d' 0); i=0; while [ \$i -lt $lines ]; do echo \"\$p \$i\"; i=\$((i+1)); done" >/dev/null
docker wait "$name" >/dev/null
log="$(docker inspect -f '{{.LogPath}}' "$name")"
got="$(wc -l <"$log")"
if [ "$got" != "$lines" ]; then
  echo "logs.sh: the json-file has $got lines, not $lines (rotated?)" >&2
  exit 1
fi
# The container's output: 90 zeros, a space, the line's number, a line end.
text_bytes="$(python3 -c "n=$lines; print(sum(len(str(i)) for i in range(n)) + 92 * n)")"
json_bytes="$(stat -c %s "$log")"
say "json-file $log: $((json_bytes >> 20)) MiB; container output $((text_bytes >> 20)) MiB"

tck="$(getconf CLK_TCK)"
# CPU seconds (user + system, every thread) of a process.
cpu_of() { sed 's/.*) //' "/proc/$1/stat" | awk -v t="$tck" '{ printf "%.2f", ($12 + $13) / t }'; }
# Peak resident memory in MiB.
hwm_of() { awk '/^VmHWM:/ { printf "%.1f", $2 / 1024 }' "/proc/$1/status"; }

wait_listening() {
  local deadline=$((SECONDS + 30))
  until ss -Hltn "sport = :$port" | grep -q .; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      echo "logs.sh: the receiver did not listen on $port" >&2
      exit 1
    fi
    sleep 0.05
  done
}

# Runs one reader until the receiver has every line; appends
# "reader wall cpu hwm wire_bytes" to $dir/results.
measure() {
  local who="$1" run="$2" rdir="$dir/run-$1-$2" rpid wpid t0 t1 out cpu hwm
  mkdir -p "$rdir"
  timeout 900 "$bench" receive "$port" "$lines" >"$rdir/received" &
  rpid=$!
  pids+=("$rpid")
  wait_listening
  t0="$(date +%s.%N)"
  case "$who" in
    skiff)
      "$bench" ship "$node" "$port" "$rdir" 2>"$rdir/ship.err" &
      ;;
    rsyslog)
      mkdir -p "$rdir/work"
      cat >"$rdir/rsyslog.conf" <<CONF
global(workDirectory="$rdir/work")
module(load="imfile" mode="inotify")
input(type="imfile" file="$log" tag="bench" readMode="0" freshStartTail="off" ruleset="fwd")
ruleset(name="fwd") {
  action(type="omfwd" target="127.0.0.1" port="$port" protocol="tcp"
         tcp_framing="octet-counted" template="RSYSLOG_SyslogProtocol23Format")
}
CONF
      rsyslogd -n -f "$rdir/rsyslog.conf" -i "$rdir/rsyslog.pid" 2>"$rdir/rsyslog.err" &
      ;;
  esac
  wpid=$!
  pids+=("$wpid")
  if ! wait "$rpid"; then
    echo "logs.sh: $who run $run: the receiver did not get $lines lines (see $rdir)" >&2
    exit 1
  fi
  t1="$(date +%s.%N)"
  cpu="$(cpu_of "$wpid")"
  hwm="$(hwm_of "$wpid")"
  kill "$wpid"
  wait "$wpid" 2>/dev/null || true
  out="$(cat "$rdir/received")"
  local wall
  wall="$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }')"
  printf '%s run %s: %s s wall, %s CPU s, peak RSS %s MiB, received %s (messages bytes)\n' \
    "$who" "$run" "$wall" "$cpu" "$hwm" "$out" >&2
  echo "$who $wall $cpu $hwm ${out#* }" >>"$dir/results"
  if [ "${SKIFF_BENCH_KEEP:-0}" != 1 ]; then rm -rf "$rdir"; fi
}

load_before="$(cut -d' ' -f1-3 /proc/loadavg)"
for run in $(seq 1 "$repeats"); do
  if [ $((run % 2)) = 1 ]; then order="skiff rsyslog"; else order="rsyslog skiff"; fi
  for who in $order; do measure "$who" "$run"; done
done
load_after="$(cut -d' ' -f1-3 /proc/loadavg)"

python3 - "$dir/results" "$lines" "$text_bytes" <<'PY'
import statistics, sys
path, lines, text = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rows = {}
for l in open(path):
    who, wall, cpu, hwm, wire = l.split()
    rows.setdefault(who, []).append((float(wall), float(cpu), float(hwm), int(wire)))
med = {}
for who, rs in rows.items():
    wall = statistics.median(r[0] for r in rs)
    cpu = statistics.median(r[1] for r in rs)
    med[who] = {
        "lines/s": lines / wall,
        "MiB/s": text / wall / 2**20,
        "CPU s per GiB": cpu / (text / 2**30),
        "peak RSS MiB": statistics.median(r[2] for r in rs),
        "wire bytes per line": statistics.median(r[3] for r in rs) / lines,
        "wall s": wall,
    }
print("| measure (median) | rsyslog | Skiff | Skiff / rsyslog |")
print("|---|---|---|---|")
for k in med["skiff"]:
    s, r = med["skiff"][k], med["rsyslog"][k]
    print(f"| {k} | {r:,.1f} | {s:,.1f} | {s / r:.2f}x |")
PY
echo "cores: $(nproc); load average before: $load_before; after: $load_after"
