#!/usr/bin/env bash
# L4 TCP relay beyond one flow, on loopback (no tunnel), against HAProxy (mode tcp) in one run:
# - connection rate: short connections, BYTES (default 1024) each way then close, CONCURRENCY
#   (default 32) at a time (tests-hw/bench/conns.rs);
# - 100 concurrent bulk flows (iperf3 -P 100).
# The relay under test (HAProxy with nbthread 1, or agent/examples/l4_relay.rs: forward::tcp on a
# current-thread runtime, as the agent runs it) is pinned to CPU 0, the load generator and the
# backend to CPU 1, so the relay has one core as it would on a small board and the two do not
# share the scheduler. ROUNDS (default 5) interleaved rounds of SECONDS (default 5) each; prints
# the median and the spread (min-max) of each, the relay's CPU use and its cost (connections per
# CPU-second, Gbit/s per core), and the ratio to HAProxy. A ratio is claimed only when the two
# spreads do not overlap. Target (issue 15): >= 1.2x HAProxy for both.
# Run by hand or from tests-hw/bench/run; not a timed test.
set -euo pipefail
exec </dev/null
cd "$(dirname "$0")/../.."
ROUNDS=${ROUNDS:-5}
SECS=${SECONDS_RUN:-5}
BYTES=${BYTES:-1024}
CONCURRENCY=${CONCURRENCY:-32}
PROFILE=${PROFILE:-bench-release}
for prog in haproxy iperf3 taskset python3; do
  command -v "$prog" >/dev/null || { echo "l4-conns.sh: $prog is missing" >&2; exit 1; }
done
if [ "$(nproc)" -lt 2 ]; then echo "l4-conns.sh: needs 2 CPUs to pin relay and load apart" >&2; exit 1; fi

cargo build -q --profile "$PROFILE" -p gatelet-agent --example l4_relay
cargo build -q --release -p gatelet-tests-hw --bin bench-conns
TARGET=${CARGO_TARGET_DIR:-target}
RELAY=$TARGET/$PROFILE/examples/l4_relay
LOAD=$TARGET/release/bench-conns

T=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$T"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() {
  for _ in $(seq 1 50); do
    if python3 -c "import socket; socket.create_connection(('127.0.0.1',$1),0.2)" 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "l4-conns.sh: nothing listens on 127.0.0.1:$1" >&2
  return 1
}
# CPU seconds (user + system) of a process so far.
cpu() { python3 -c "import os; f=open('/proc/$1/stat').read().rsplit(')',1)[1].split(); print(sum(int(x) for x in f[11:13])/os.sysconf('SC_CLK_TCK'))"; }

ECHO=$(free_port)
taskset -c 1 "$LOAD" echo "127.0.0.1:$ECHO" --threads 16 >/dev/null 2>&1 & pids+=($!)
IPERF=$(free_port)
taskset -c 1 iperf3 -s -B 127.0.0.1 -p "$IPERF" >/dev/null 2>&1 & pids+=($!)
wait_port "$ECHO"; wait_port "$IPERF"

# One relay of each kind per backend: "<name>-echo" and "<name>-bulk".
start_haproxy() { # name listen backend; sets STARTED to its pid
  cat >"$T/$1.cfg" <<CFG
global
    maxconn 4096
    nbthread 1
defaults
    mode tcp
    timeout connect 5s
    timeout client 1m
    timeout server 1m
listen relay
    bind 127.0.0.1:$2
    server s1 127.0.0.1:$3
CFG
  taskset -c 0 haproxy -f "$T/$1.cfg" -db >/dev/null 2>&1 & pids+=($!)
  STARTED=$!
}
start_agent() { # listen backend; sets STARTED to its pid
  taskset -c 0 "$RELAY" "127.0.0.1:$1" "127.0.0.1:$2" --splice >/dev/null 2>&1 & pids+=($!)
  STARTED=$!
}
declare -A PORT PID
for kind in echo bulk; do
  backend=$ECHO; [ "$kind" = bulk ] && backend=$IPERF
  p=$(free_port); PORT[haproxy-$kind]=$p; start_haproxy "haproxy-$kind" "$p" "$backend"
  PID[haproxy-$kind]=$STARTED
  p=$(free_port); PORT[agent-$kind]=$p; start_agent "$p" "$backend"
  PID[agent-$kind]=$STARTED
done
for k in "${!PORT[@]}"; do wait_port "${PORT[$k]}"; done

# Results: one line per round and relay, "metric relay value cpu_pct".
: >"$T/results"
for round in $(seq 1 "$ROUNDS"); do
  for relay in haproxy agent; do
    pid=${PID[$relay-echo]}
    before=$(cpu "$pid")
    line=$(taskset -c 1 "$LOAD" rate "127.0.0.1:${PORT[$relay-echo]}" --seconds "$SECS" \
      --concurrency "$CONCURRENCY" --bytes "$BYTES")
    after=$(cpu "$pid")
    rate=$(sed -n 's/.*per_s=\([0-9.]*\).*/\1/p' <<<"$line")
    errors=$(sed -n 's/.*errors=\([0-9]*\).*/\1/p' <<<"$line")
    cpu_pct=$(python3 -c "print(100*($after-$before)/$SECS)")
    echo "conns $relay $rate $cpu_pct" >>"$T/results"
    echo "round $round $relay: $rate conns/s, relay CPU ${cpu_pct%.*}%, errors $errors" >&2

    pid=${PID[$relay-bulk]}
    before=$(cpu "$pid")
    gbit=$(taskset -c 1 iperf3 -c 127.0.0.1 -p "${PORT[$relay-bulk]}" -P 100 -t "$SECS" -J |
      python3 -c 'import json,sys; print(json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"]/1e9)')
    after=$(cpu "$pid")
    cpu_pct=$(python3 -c "print(100*($after-$before)/$SECS)")
    echo "flows $relay $gbit $cpu_pct" >>"$T/results"
    echo "round $round $relay: 100 flows $(printf '%.2f' "$gbit") Gbit/s, relay CPU ${cpu_pct%.*}%" >&2
  done
done

python3 - "$T/results" "$ROUNDS" "$SECS" "$BYTES" "$CONCURRENCY" <<'PY'
import statistics, sys
path, rounds, secs, size, conc = sys.argv[1:]
rows = [l.split() for l in open(path)]
def series(metric, relay, col):
    return [float(r[col]) for r in rows if r[0] == metric and r[1] == relay]
print(f"L4 relay on loopback, relay pinned to CPU 0, load and backend to CPU 1; "
      f"{rounds} interleaved rounds of {secs} s; HAProxy nbthread 1")
print(f"{'measure':<30} {'relay':<8} {'median':>9} {'spread':>17} {'CPU%':>5} {'per CPU-s':>10}")
print(f"connections/s: {size} B each way then close, {conc} at once")
units = {"conns": ("connections/s", "conns"),
         "flows": ("100 concurrent flows, Gbit/s", "Gbit")}
for metric, (label, unit) in units.items():
    med = {}
    spread = {}
    for relay in ("haproxy", "agent"):
        v = series(metric, relay, 2)
        c = series(metric, relay, 3)
        med[relay] = statistics.median(v)
        spread[relay] = (min(v), max(v))
        cpu = statistics.median(c)
        cost = med[relay] / (cpu / 100) if cpu > 0 else 0
        print(f"{label:<30} {relay:<8} {med[relay]:>9.2f} {spread[relay][0]:>8.2f}-{spread[relay][1]:<8.2f} "
              f"{cpu:>5.0f} {cost:>10.1f}")
    ratio = med["agent"] / med["haproxy"]
    clear = spread["agent"][0] > spread["haproxy"][1] or spread["agent"][1] < spread["haproxy"][0]
    verdict = "ok" if ratio >= 1.2 else "MISSED"
    print(f"{'':<30} agent/haproxy = {ratio:.2f} (target >= 1.2) {verdict}"
          f"{'' if clear else ' (spreads overlap: not a claim)'}")
PY
