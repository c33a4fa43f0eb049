#!/usr/bin/env bash
# Companion idle memory: VmHWM after MINUTES (default 5) of 5 s heartbeats with 50 routes,
# against the fake GateControl on loopback (its rate limit raised to 1000 so that the
# companion's request budget lets heartbeats run at the configured 5 s).
# Target: VmHWM <= 6 MiB (issue 2); <= 4 MiB for the static musl build (issue 15; on x86_64
# it stands in for the ARM boards:
# COMPANION=target/x86_64-unknown-linux-musl/release/gatelet-companion).
# Run by hand or from tests-hw/bench/run; not a timed test.
set -euo pipefail
cd "$(dirname "$0")/../.."
MINUTES=${MINUTES:-5}
TARGET_KIB=$((6 * 1024))
if file -L "${COMPANION:-}" 2>/dev/null | grep -q 'statically linked'; then TARGET_KIB=$((4 * 1024)); fi

# COMPANION=path measures another build (e.g. the static musl one from tests-hw/bench/sizes.sh).
cargo build -q --release -p gatelet-companion --bin gatelet-companion --example fake-gatecontrol
BIN=${CARGO_TARGET_DIR:-target}/release
COMPANION=${COMPANION:-$BIN/gatelet-companion}

T=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$T"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
SERVER_PORT=$(free_port)
API_PORT=$(free_port)

# 25 HTTP and 25 L4 routes, in the server's document shape.
python3 - "$T/config.json" <<'PY'
import json, sys
routes = [{"id": i, "domain": f"svc{i}.home.example", "target_kind": "gateway",
           "target_lan_host": f"192.168.1.{10 + i}", "target_lan_port": 8000 + i,
           "protocol": "http", "wol_enabled": False} for i in range(1, 26)]
l4 = [{"id": 100 + i, "listen_port": 20000 + i, "target_lan_host": f"192.168.1.{60 + i}",
       "target_lan_port": 22, "wol_enabled": False} for i in range(1, 26)]
doc = {"config_hash_version": 2, "peer_id": 1, "routes": routes, "l4_routes": l4,
       "egress_routes": [], "config_hash": "sha256:" + "5" * 64}
json.dump(doc, open(sys.argv[1], "w"))
PY

"$BIN/examples/fake-gatecontrol" --listen "127.0.0.1:$SERVER_PORT" --config "$T/config.json" \
    --rate-limit 1000 > "$T/server.log" &
pids+=($!)
sed -e "s#^GC_SERVER_URL=.*#GC_SERVER_URL=http://127.0.0.1:$SERVER_PORT#" \
    -e "s#^GC_API_PORT=.*#GC_API_PORT=$API_PORT#" \
    -e "s#^GC_HEARTBEAT_INTERVAL_S=.*#GC_HEARTBEAT_INTERVAL_S=5#" \
    companion/tests/data/gateway-env.txt > "$T/gateway.env"
for _ in $(seq 50); do grep -q listening "$T/server.log" && break; sleep 0.1; done

"$COMPANION" --env "$T/gateway.env" --state-dir "$T/state" \
    --control-socket "$T/agent.sock" --status-socket "$T/companion.sock" --log-level warn \
    2> "$T/companion.log" &
CPID=$!
pids+=($CPID)

echo "companion pid $CPID: measuring for $MINUTES min (5 s heartbeats, 50 routes)..."
sleep $((MINUTES * 60))
hwm=$(awk '/VmHWM/ {print $2}' /proc/$CPID/status)
rss=$(awk '/VmRSS/ {print $2}' /proc/$CPID/status)
beats=$(grep -c "POST /api/v1/gateway/heartbeat -> 200" "$T/server.log" || true)
checks=$(grep -c "GET /api/v1/gateway/config/check" "$T/server.log" || true)
size=$(stat -c %s "$COMPANION")
routes=$("$COMPANION" status --json --status-socket "$T/companion.sock" |
    python3 -c 'import json,sys; c=json.load(sys.stdin)["snapshot"]["config"]; print(len(c["http_routes"])+len(c["l4_routes"]))')

printf '%-34s %s\n' "binary" "$COMPANION ($size bytes, $(file -b "$COMPANION" | cut -d, -f1,7 2>/dev/null))"
printf '%-34s %s\n' "routes in force" "$routes"
printf '%-34s %s\n' "heartbeats accepted" "$beats (expected ~$((MINUTES * 12)))"
printf '%-34s %s\n' "hash checks" "$checks"
printf '%-34s %s KiB\n' "VmRSS" "$rss"
printf '%-34s %s KiB (target %s KiB, ratio %s)\n' "VmHWM" "$hwm" "$TARGET_KIB" \
    "$(python3 -c "print(f'{$hwm/$TARGET_KIB:.2f}')")"
if grep -qiE "error|panic" "$T/companion.log"; then
    echo "companion log has errors:"; grep -iE "error|panic" "$T/companion.log" | head
fi
