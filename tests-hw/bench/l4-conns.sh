#!/usr/bin/env bash
# L4 TCP relay beyond one flow, on loopback (no tunnel), against HAProxy (mode tcp) in one run:
# - connection rate: short connections, BYTES (default 1024) each way then close, CONCURRENCY
#   (default 32) at a time (tests-hw/bench/conns.rs);
# - 100 concurrent bulk flows (iperf3 -P 100).
# The relay under test (HAProxy with nbthread 1, or agent/examples/l4_relay.rs: forward::tcp on a
# current-thread runtime, as the agent runs it, with splice) is pinned to CPU 0, the load generator and the
# backend to CPU 1, so the relay has one core as it would on a small board and the two do not
# share the scheduler. ROUNDS (default 5) interleaved rounds of SECONDS (default 5) each; prints
# the median and the spread (min-max) of each, the relay's CPU use, the user-space part of it
# ("user%": the rest is the kernel's TCP and splice work, about the same for every relay, which
# bounds the cost ratio a relay's own code can reach), its cost (connections per CPU-second, Gbit/s per
# core), and the ratio to HAProxy. A ratio is claimed only when the two
# spreads do not overlap. HAProxy runs at each of its settings worth trying here, in the same
# rounds: without splice ("haproxy"), `option splice-auto` ("haproxy-auto") and
# `option splice-request` + `splice-response` ("haproxy-splice"); each measure is compared with
# HAProxy's best setting for it, which is printed. Target (issue 15): >= 1.2x HAProxy for both. When the load generator
# is the limit (relay CPU well under 100 %), the cost (per relay CPU-second) is the figure that
# carries to a board: its per-round ratios are printed too.
# RELAY_BEFORE=PATH adds a third relay, "before" (an l4_relay example built from another commit),
# to the same interleaved rounds, for an A/B comparison.
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

source tests-hw/bench/lib/loopback.sh


ECHO=$(free_port)
taskset -c 1 "$LOAD" echo "127.0.0.1:$ECHO" --threads 16 >/dev/null 2>&1 & pids+=($!)
IPERF=$(free_port)
taskset -c 1 iperf3 -s -B 127.0.0.1 -p "$IPERF" >/dev/null 2>&1 & pids+=($!)
wait_port "$ECHO"; wait_port "$IPERF"

# One relay of each kind per backend: "<name>-echo" and "<name>-bulk".
# HAProxy's settings: relay name -> its extra "listen" options.
declare -A HAPROXY_OPTS=(
  [haproxy]=""
  [haproxy-auto]="option splice-auto"
  [haproxy-splice]=$'option splice-request\n    option splice-response'
)
start_haproxy() { # name listen backend options; sets STARTED to its pid
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
    $4
CFG
  taskset -c 0 haproxy -f "$T/$1.cfg" -db >/dev/null 2>&1 & pids+=($!)
  STARTED=$!
}
start_agent() { # binary listen backend; sets STARTED to its pid
  taskset -c 0 "$1" "127.0.0.1:$2" "127.0.0.1:$3" --splice >/dev/null 2>&1 & pids+=($!)
  STARTED=$!
}
RELAYS=(haproxy haproxy-auto haproxy-splice agent)
[ -n "${RELAY_BEFORE:-}" ] && RELAYS+=(before)
declare -A PORT PID
for kind in echo bulk; do
  backend=$ECHO; [ "$kind" = bulk ] && backend=$IPERF
  for h in "${!HAPROXY_OPTS[@]}"; do
    p=$(free_port); PORT[$h-$kind]=$p; start_haproxy "$h-$kind" "$p" "$backend" "${HAPROXY_OPTS[$h]}"
    PID[$h-$kind]=$STARTED
  done
  p=$(free_port); PORT[agent-$kind]=$p; start_agent "$RELAY" "$p" "$backend"
  PID[agent-$kind]=$STARTED
  if [ -n "${RELAY_BEFORE:-}" ]; then
    p=$(free_port); PORT[before-$kind]=$p; start_agent "$RELAY_BEFORE" "$p" "$backend"
    PID[before-$kind]=$STARTED
  fi
done
for k in "${!PORT[@]}"; do wait_port "${PORT[$k]}"; done

# Results: one line per round and relay, "metric relay value cpu_pct user_pct" (user_pct: the
# user-space part of the relay's CPU time, from the kernel's tick sampling: a rough split).
: >"$T/results"
for round in $(seq 1 "$ROUNDS"); do
  for relay in "${RELAYS[@]}"; do
    pid=${PID[$relay-echo]}
    before=$(cpu "$pid"); user_before=$(cpu_user "$pid")
    line=$(taskset -c 1 "$LOAD" rate "127.0.0.1:${PORT[$relay-echo]}" --seconds "$SECS" \
      --concurrency "$CONCURRENCY" --bytes "$BYTES")
    after=$(cpu "$pid"); user_after=$(cpu_user "$pid")
    rate=$(sed -n 's/.*per_s=\([0-9.]*\).*/\1/p' <<<"$line")
    errors=$(sed -n 's/.*errors=\([0-9]*\).*/\1/p' <<<"$line")
    cpu_pct=$(percent "$after-$before" "$SECS")
    user_pct=$(percent "$user_after-$user_before" "$after-$before")
    echo "conns $relay $rate $cpu_pct $user_pct" >>"$T/results"
    echo "round $round $relay: $rate conns/s, relay CPU ${cpu_pct%.*}%, errors $errors" >&2

    pid=${PID[$relay-bulk]}
    before=$(cpu "$pid"); user_before=$(cpu_user "$pid")
    gbit=$(taskset -c 1 iperf3 -c 127.0.0.1 -p "${PORT[$relay-bulk]}" -P 100 -t "$SECS" -J |
      python3 -c 'import json,sys; print(json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"]/1e9)')
    after=$(cpu "$pid"); user_after=$(cpu_user "$pid")
    cpu_pct=$(percent "$after-$before" "$SECS")
    user_pct=$(percent "$user_after-$user_before" "$after-$before")
    echo "flows $relay $gbit $cpu_pct $user_pct" >>"$T/results"
    echo "round $round $relay: 100 flows $(printf '%.2f' "$gbit") Gbit/s, relay CPU ${cpu_pct%.*}%" >&2
  done
done

python3 - "$T/results" "$ROUNDS" "$SECS" "$BYTES" "$CONCURRENCY" "${RELAYS[@]}" <<'PY'
import statistics, sys
path, rounds, secs, size, conc = sys.argv[1:6]
relays = sys.argv[6:]
HAPROXY_SETTINGS = {"haproxy": "no splice", "haproxy-auto": "option splice-auto",
                    "haproxy-splice": "option splice-request, splice-response"}
rows = [l.split() for l in open(path)]
def series(metric, relay, col):
    return [float(r[col]) for r in rows if r[0] == metric and r[1] == relay]
print(f"L4 relay on loopback, relay pinned to CPU 0, load and backend to CPU 1; "
      f"{rounds} interleaved rounds of {secs} s; HAProxy nbthread 1")
print(f"{'measure':<30} {'relay':<14} {'median':>9} {'spread':>17} {'CPU%':>5} {'user%':>5} {'per CPU-s':>10}")
print(f"connections/s: {size} B each way then close, {conc} at once")
units = {"conns": ("connections/s", "conns"),
         "flows": ("100 concurrent flows, Gbit/s", "Gbit")}
for metric, (label, unit) in units.items():
    med, spread, costs = {}, {}, {}
    for relay in relays:
        v = series(metric, relay, 2)
        c = series(metric, relay, 3)
        med[relay] = statistics.median(v)
        spread[relay] = (min(v), max(v))
        cpu = statistics.median(c)
        user = statistics.median(series(metric, relay, 4))
        costs[relay] = [x / (y / 100) for x, y in zip(v, c) if y > 0] or [0.0]
        cost = statistics.median(costs[relay])
        print(f"{label:<30} {relay:<14} {med[relay]:>9.2f} {spread[relay][0]:>8.2f}-{spread[relay][1]:<8.2f} "
              f"{cpu:>5.0f} {user:>5.0f} {cost:>10.1f} ({min(costs[relay]):.1f}-{max(costs[relay]):.1f})")
    def apart(a, b):
        return min(a) > max(b) or max(a) < min(b)
    # HAProxy at its best setting for this measure: the highest median.
    best = max((r for r in relays if r.startswith("haproxy")), key=lambda r: med[r])
    print(f"{'':<30} HAProxy's best setting here: {best} ({HAPROXY_SETTINGS[best]})")
    for relay in (r for r in relays if not r.startswith("haproxy")):
        ratio = med[relay] / med[best]
        verdict = "ok" if ratio >= 1.2 else "MISSED"
        print(f"{'':<30} {relay}/{best} = {ratio:.2f} (target >= 1.2) {verdict}"
              f"{'' if apart(spread[relay], spread[best]) else ' (spreads overlap: not a claim)'}")
        cratio = statistics.median(costs[relay]) / statistics.median(costs[best])
        verdict = "ok" if cratio >= 1.2 else "MISSED"
        print(f"{'':<30} {relay}/{best} per relay CPU-second = {cratio:.2f} {verdict}"
              f"{'' if apart(costs[relay], costs[best]) else ' (spreads overlap: not a claim)'}")
PY
