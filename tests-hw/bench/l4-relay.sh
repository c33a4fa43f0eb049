#!/usr/bin/env bash
# L4 TCP relay throughput on loopback (no tunnel): iperf3 for DURATION seconds (default 10)
# direct, through socat, through HAProxy (mode tcp) and through the agent's relay (agent/examples/l4_relay.rs, the
# same forward::tcp code the agent runs, on a current-thread runtime), with copy and with splice,
# in one run. HAProxy runs with and without splice (`option splice-request` + `splice-response`);
# prints Gbit/s, the ratio of each to HAProxy at its best of the two (named) and the relay's CPU
# use.
# BUFFER=bytes sets the agent's initial copy buffer (default: forward::tcp::DEFAULT_BUFFER_BYTES).
# Target (issue 4): agent >= 1.3x HAProxy.
# Run by hand or from tests-hw/bench/run; not a timed test.
set -euo pipefail
cd "$(dirname "$0")/../.."
SECONDS_RUN=${DURATION:-10}
PROFILE=${PROFILE:-bench-release}

cargo build -q --profile "$PROFILE" -p gatelet-agent --example l4_relay
RELAY=${CARGO_TARGET_DIR:-target}/$PROFILE/examples/l4_relay

source tests-hw/bench/lib/loopback.sh


IPERF=$(free_port)
iperf3 -s -B 127.0.0.1 -p "$IPERF" >/dev/null 2>&1 & pids+=($!)
wait_port "$IPERF"

SOCAT=$(free_port)
socat "TCP-LISTEN:$SOCAT,bind=127.0.0.1,reuseaddr,fork" "TCP:127.0.0.1:$IPERF" 2>/dev/null & pids+=($!)

HAPROXY=$(free_port)
HAPROXY_SPLICE=$(free_port)
cat >"$T/haproxy.cfg" <<CFG
global
    maxconn 1000
defaults
    mode tcp
    timeout connect 5s
    timeout client 1h
    timeout server 1h
listen relay
    bind 127.0.0.1:$HAPROXY
    server s1 127.0.0.1:$IPERF
listen relay_splice
    bind 127.0.0.1:$HAPROXY_SPLICE
    option splice-request
    option splice-response
    server s1 127.0.0.1:$IPERF
CFG
haproxy -f "$T/haproxy.cfg" -db >/dev/null 2>&1 & pids+=($!)

BUFFER=${BUFFER:-}
COPY=$(free_port)
"$RELAY" "127.0.0.1:$COPY" "127.0.0.1:$IPERF" ${BUFFER:+--buffer "$BUFFER"} 2>/dev/null & pids+=($!)
COPY_PID=$!
SPLICE=$(free_port)
"$RELAY" "127.0.0.1:$SPLICE" "127.0.0.1:$IPERF" --splice 2>/dev/null & pids+=($!)
SPLICE_PID=$!
for p in "$SOCAT" "$HAPROXY" "$HAPROXY_SPLICE" "$COPY" "$SPLICE"; do wait_port "$p"; done

gbits() {
    iperf3 -c 127.0.0.1 -p "$1" -t "$SECONDS_RUN" -J |
        python3 -c 'import json,sys; print("%.2f" % (json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"]/1e9))'
}
declare -A R C
HAPROXY_PID=${pids[2]}
SOCAT_PID=${pids[1]}
for spec in direct:$IPERF: socat:$SOCAT:$SOCAT_PID haproxy:$HAPROXY:$HAPROXY_PID \
    haproxy-splice:$HAPROXY_SPLICE:$HAPROXY_PID agent-copy:$COPY:$COPY_PID agent-splice:$SPLICE:$SPLICE_PID; do
    IFS=: read -r name port pid <<<"$spec"
    before=$(cpu "$pid")
    R[$name]=$(gbits "$port")
    after=$(cpu "$pid")
    C[$name]=$(python3 -c "print('%.0f' % (100 * ($after - $before) / $SECONDS_RUN))")
done
best=haproxy
python3 -c "import sys; sys.exit(0 if ${R[haproxy-splice]} > ${R[haproxy]} else 1)" && best=haproxy-splice
echo "iperf3 ${SECONDS_RUN} s on loopback, relay buffer ${BUFFER:-default}; CPU% = the relay process"
echo "HAProxy's best setting here: $best; xHAProxy is against it"
printf '%-14s %8s %10s %6s\n' path Gbit/s xHAProxy CPU%
for n in direct socat haproxy haproxy-splice agent-copy agent-splice; do
    cpu_col=${C[$n]}
    [ "$n" = direct ] && cpu_col=-
    printf '%-14s %8s %10s %6s\n' "$n" "${R[$n]}" "$(python3 -c "print('%.2f' % (${R[$n]}/${R[$best]}))")" "$cpu_col"
done
