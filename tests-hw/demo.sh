#!/usr/bin/env bash
# gatelet's miniature deployment, on one machine, in network namespaces:
#
#   gl-hub   wireguard-go (the hub, 10.8.0.1) + a fake GateControl server on 10.8.0.1:3000
#      |     veth 10.77.0.1 <-> 10.77.0.2; the gateway finds the hub by name (hub.demo)
#   gl-gw    gatelet-agent (TUN gatelet0, 10.8.0.2) + gatelet-companion (syncs over the tunnel)
#      |     veth 192.168.77.1 <-> 192.168.77.10
#   gl-lan   a LAN host: an HTTP server on 192.168.77.10:8000
#
# The fake server's config has an HTTP route (files.demo, served by the agent's proxy on
# 10.8.0.2:8080) and an L4 route (10.8.0.2:2222), both to the LAN host; the management API answers
# on 10.8.0.2:9876. --check verifies all three from the hub.
#
# Usage: sudo tests-hw/demo.sh            bring it up, print what to try, tear down on Ctrl-C
#        sudo tests-hw/demo.sh --check    bring it up, verify it works, tear down, exit 0/1
#
# Needs root (namespaces, TUN). Installs wireguard-go, wireguard-tools, iproute2 and curl with
# apt-get when missing. All traffic stays inside the namespaces this script creates.
set -euo pipefail
cd "$(dirname "$0")/.."

CHECK=false
case "${1:-}" in
  --check) CHECK=true ;;
  "") ;;
  -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
  *) echo "demo.sh: unknown argument $1 (try --help)" >&2; exit 64 ;;
esac
if [ "$(id -u)" -ne 0 ]; then
  echo "demo.sh: needs root for network namespaces and the TUN device: sudo $0 $*" >&2
  exit 1
fi

need=()
for p in wireguard-go:wireguard-go wireguard-tools:wg iproute2:ip curl:curl python3:python3; do
  command -v "${p##*:}" >/dev/null 2>&1 || need+=("${p%%:*}")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "demo.sh: installing ${need[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get update -q </dev/null >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}" </dev/null >/dev/null
fi

echo "demo.sh: building gatelet (first build takes a few minutes)..."
cargo build -q -p gatelet-agent -p gatelet-companion --bins --example fake-gatecontrol
BIN=${CARGO_TARGET_DIR:-target}/debug

HUB=gl-hub GW=gl-gw LAN=gl-lan
RUN=""
pids=()

cleanup() {
  set +e
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
  sleep 0.5
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null; done
  wait 2>/dev/null
  for ns in $HUB $GW $LAN; do ip netns del "$ns" 2>/dev/null; rm -rf "/etc/netns/$ns"; done
  rm -rf "$RUN"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
(cleanup)  # leftovers of an earlier run that was killed hard
RUN=$(mktemp -d /tmp/gatelet-demo.XXXXXX)
chmod 755 "$RUN"

in_ns() { local ns=$1; shift; ip netns exec "$ns" "$@"; }
bg_in_ns() { # ns logfile cmd...
  local ns=$1 log=$2; shift 2
  ip netns exec "$ns" "$@" >"$log" 2>&1 &
  pids+=($!)
}

echo "demo.sh: creating hosts $HUB, $GW, $LAN"
for ns in $HUB $GW $LAN; do ip netns add "$ns"; in_ns "$ns" ip link set lo up; done
ip link add gl-hub0 netns $HUB type veth peer name gl-wan0 netns $GW
ip link add gl-lan0 netns $GW type veth peer name gl-eth0 netns $LAN
in_ns $HUB ip addr add 10.77.0.1/30 dev gl-hub0 && in_ns $HUB ip link set gl-hub0 up
in_ns $GW ip addr add 10.77.0.2/30 dev gl-wan0 && in_ns $GW ip link set gl-wan0 up
in_ns $GW ip addr add 192.168.77.1/24 dev gl-lan0 && in_ns $GW ip link set gl-lan0 up
in_ns $LAN ip addr add 192.168.77.10/24 dev gl-eth0 && in_ns $LAN ip link set gl-eth0 up
in_ns $LAN ip route add default via 192.168.77.1
mkdir -p /etc/netns/$GW && echo "10.77.0.1 hub.demo" > /etc/netns/$GW/hosts

# The hub: wireguard-go with the gateway as its peer.
umask 077
wg genkey > "$RUN/hub.key"; wg pubkey < "$RUN/hub.key" > "$RUN/hub.pub"
wg genkey > "$RUN/gw.key"; wg pubkey < "$RUN/gw.key" > "$RUN/gw.pub"
wg genpsk > "$RUN/psk"
umask 022
WG_PROCESS_FOREGROUND=1 bg_in_ns $HUB "$RUN/wireguard-go.log" wireguard-go -f glhub0
for _ in $(seq 50); do in_ns $HUB ip link show glhub0 >/dev/null 2>&1 && break; sleep 0.1; done
in_ns $HUB wg set glhub0 private-key "$RUN/hub.key" listen-port 51820 \
  peer "$(cat "$RUN/gw.pub")" preshared-key "$RUN/psk" allowed-ips 10.8.0.2/32
in_ns $HUB ip addr add 10.8.0.1/24 dev glhub0
in_ns $HUB ip link set glhub0 up

# The server's side: a config with one HTTP and one L4 route to the LAN host.
cat > "$RUN/config.json" <<EOF
{"config_hash_version":2,"peer_id":1,
 "routes":[{"id":1,"domain":"files.demo","target_kind":"gateway","target_lan_host":"192.168.77.10",
            "target_lan_port":8000,"protocol":"http","wol_enabled":false}],
 "l4_routes":[{"id":2,"listen_port":2222,"target_lan_host":"192.168.77.10","target_lan_port":8000,
               "wol_enabled":false}],
 "egress_routes":[],
 "config_hash":"sha256:$(printf demo | sha256sum | cut -c1-64)"}
EOF
bg_in_ns $HUB "$RUN/gatecontrol.log" "$BIN/examples/fake-gatecontrol" \
  --listen 10.8.0.1:3000 --config "$RUN/config.json"

# The LAN host (before the gateway, so the agent's first reachability probe finds it up).
mkdir -p "$RUN/www" && echo "hello from the LAN host behind gatelet" > "$RUN/www/index.html"
bg_in_ns $LAN "$RUN/http.log" python3 -m http.server 8000 --bind 192.168.77.10 --directory "$RUN/www"
for _ in $(seq 100); do
  in_ns $LAN curl -sf -o /dev/null -m 1 http://192.168.77.10:8000/ && break; sleep 0.1
done

# The gateway: gateway.env as the server hands it out, with this demo's keys.
sed -e "s#^WG_PRIVATE_KEY=.*#WG_PRIVATE_KEY=$(cat "$RUN/gw.key")#" \
    -e "s#^WG_PUBLIC_KEY=.*#WG_PUBLIC_KEY=$(cat "$RUN/gw.pub")#" \
    -e "s#^WG_PRESHARED_KEY=.*#WG_PRESHARED_KEY=$(cat "$RUN/psk")#" \
    -e "s#^WG_SERVER_PUBLIC_KEY=.*#WG_SERVER_PUBLIC_KEY=$(cat "$RUN/hub.pub")#" \
    -e "s#^WG_ENDPOINT=.*#WG_ENDPOINT=hub.demo:51820#" \
    -e "s#^GC_HEARTBEAT_INTERVAL_S=.*#GC_HEARTBEAT_INTERVAL_S=10#" \
    companion/tests/data/gateway-env.txt > "$RUN/gateway.env"
chmod 600 "$RUN/gateway.env"
bg_in_ns $GW "$RUN/agent.log" "$BIN/gatelet-agent" --env "$RUN/gateway.env" \
  --state-dir "$RUN/agent-state" --control-socket "$RUN/agent.sock"
bg_in_ns $GW "$RUN/companion.log" "$BIN/gatelet-companion" --env "$RUN/gateway.env" \
  --state-dir "$RUN/companion-state" --control-socket "$RUN/agent.sock" \
  --status-socket "$RUN/companion.sock"


STATUS=("$BIN/gatelet-companion" status --status-socket "$RUN/companion.sock" \
  --control-socket "$RUN/agent.sock" --state-dir "$RUN/companion-state")

wait_for() { # seconds description command...
  local secs=$1 what=$2; shift 2
  for _ in $(seq $((secs * 5))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done
  echo "demo.sh: FAILED: $what within ${secs}s" >&2
  for f in "$RUN"/*.log; do echo "--- $f"; tail -n 15 "$f"; done >&2
  return 1
}

wait_for 20 "the tunnel carries a ping (hub -> gateway 10.8.0.2)" in_ns $HUB ping -c1 -W1 10.8.0.2
wait_for 30 "the companion syncs its config over the tunnel and heartbeats" \
  grep -q "POST /api/v1/gateway/heartbeat -> 200" "$RUN/gatecontrol.log"
wait_for 10 "the companion reports the server's config" \
  sh -c "ip netns exec $GW ${STATUS[*]} | grep -q 'config:    sha256:'"

# What the routes look like from the hub (GC_PROXY_PORT=8080 and GC_API_PORT=9876 come from the
# fixture gateway.env).
CURL_HTTP="curl -sS -m 5 -H 'Host: files.demo' http://10.8.0.2:8080/"
CURL_L4="curl -sS -m 5 http://10.8.0.2:2222/"
CURL_API="curl -sS -m 5 http://10.8.0.2:9876/api/health"
from_hub_contains() { # command text: runs it in the hub, succeeds if its output has text
  ip netns exec $HUB sh -c "$1" 2>/dev/null | grep -qF "$2"
}
wait_for 15 "the HTTP route answers from the hub ($CURL_HTTP)" \
  from_hub_contains "$CURL_HTTP" "hello from the LAN host"
wait_for 10 "the L4 route answers from the hub ($CURL_L4)" \
  from_hub_contains "$CURL_L4" "hello from the LAN host"
wait_for 10 "the management API answers from the hub ($CURL_API)" \
  from_hub_contains "$CURL_API" '"ok":true'

if $CHECK; then
  echo "demo.sh: OK: tunnel up (wireguard-go <-> gatelet-agent), config synced, heartbeats accepted,"
  echo "demo.sh: OK: HTTP route, L4 route and management API answer from the hub through the tunnel"
  in_ns $GW "${STATUS[@]}" || true
  exit 0
fi

cat <<EOF

gatelet demo is up. Try, in another terminal (as root):

  ip netns exec $HUB ping -c3 10.8.0.2                      # hub -> gateway through WireGuard
  ip netns exec $HUB $CURL_HTTP   # HTTP route
  ip netns exec $HUB $CURL_L4              # L4 route :2222 -> LAN :8000
  ip netns exec $HUB $CURL_API     # management API
  ip netns exec $HUB wg show glhub0                            # the hub sees the handshake
  ip netns exec $GW ${STATUS[*]}
  tail -f $RUN/gatecontrol.log                              # config checks and heartbeats

Logs: $RUN/*.log
Ctrl-C tears everything down.
EOF
while true; do sleep 1; done
