# shellcheck shell=bash
# The test bed of the container tests (tests-hw/container-check.sh,
# tests-hw/container-update-check.sh), sourced by them after `set -euo pipefail` and a cd to the
# repository:
#
#   <p>-hub  wireguard-go (10.8.0.1) + the fake GateControl server on 10.8.0.1:3000
#      |     veth 10.78.0.1 <-> 10.78.0.2
#   <p>-gw   a dockerd of the test's own: the containers' "host" network is this namespace
#      |     veth 192.168.78.1 <-> 192.168.78.10
#   <p>-lan  an HTTP server on 192.168.78.10:8000
#
# Why a dockerd of its own inside the namespace: with host networking the agent creates its TUN
# device and routes in the daemon's network namespace; a system dockerd would put them on this
# machine's real network. This one has its own data root, exec root and socket, is started with
# --iptables=false --bridge=none (host networking only) and is stopped at the end.
#
# The caller sets CE_NAME (its name, for messages) and CE_PREFIX (<p>, namespace names), may
# define ce_cleanup_hook (run first by the cleanup, while dockerd still answers), then calls
#   ce_setup PKG:CMD...   root check, apt-get install of what is missing (the common packages
#                         plus the given ones), the cleanup trap, $RUN, DOCKER_HOST
#   ce_namespaces; ce_dockerd [DOCKERD ARGS...]; ce_hub; ce_gateway_env
# and uses in_ns, bg_in_ns, wait_for, $HUB $GW $LAN $RUN $FAKE.

RUN=""
DOCKERD_PID=""
pids=()

ce_setup() {
  HUB=$CE_PREFIX-hub GW=$CE_PREFIX-gw LAN=$CE_PREFIX-lan
  if [ "$(id -u)" -ne 0 ]; then
    echo "$CE_NAME: needs root (namespaces, dockerd)" >&2
    exit 1
  fi
  local need=() p
  for p in docker.io:dockerd docker-compose:docker-compose wireguard-go:wireguard-go \
           wireguard-tools:wg iproute2:ip curl:curl python3:python3 util-linux:nsenter "$@"; do
    command -v "${p##*:}" >/dev/null 2>&1 || need+=("${p%%:*}")
  done
  if [ ${#need[@]} -gt 0 ]; then
    echo "$CE_NAME: installing ${need[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get update -q </dev/null >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}" </dev/null >/dev/null
  fi
  trap ce_cleanup EXIT
  trap 'exit 130' INT TERM
  (ce_cleanup)
  # Under /var/lib (a real file system for overlay2, not tmpfs), removed by the cleanup.
  mkdir -p /var/lib/gatelet-container-check
  RUN=$(mktemp -d "/var/lib/gatelet-container-check/$CE_PREFIX.XXXXXX")
  chmod 755 "$RUN"
  export DOCKER_HOST="unix://$RUN/docker.sock"
}

ce_cleanup() {
  set +e
  if [ -n "$DOCKERD_PID" ]; then
    if declare -F ce_cleanup_hook >/dev/null; then ce_cleanup_hook >/dev/null 2>&1; fi
    kill "$DOCKERD_PID" 2>/dev/null
    for _ in $(seq 100); do kill -0 "$DOCKERD_PID" 2>/dev/null || break; sleep 0.2; done
    kill -9 "$DOCKERD_PID" 2>/dev/null
  fi
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
  sleep 0.3
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null; done
  wait 2>/dev/null
  for ns in $HUB $GW $LAN; do ip netns del "$ns" 2>/dev/null; done
  if [ -n "$RUN" ]; then
    # The daemon's overlay and shm mounts under its roots, if it died without unmounting.
    grep -o " $RUN/[^ ]*" /proc/mounts | sort -r | xargs -r -n1 umount -l 2>/dev/null
    rm -rf "$RUN"
  fi
}

in_ns() { local ns=$1; shift; ip netns exec "$ns" "$@"; }
bg_in_ns() { # ns logfile cmd...
  local ns=$1 log=$2; shift 2
  ip netns exec "$ns" "$@" >"$log" 2>&1 &
  pids+=($!)
}
wait_for() { # seconds description command...
  local secs=$1 what=$2; shift 2
  for _ in $(seq $((secs * 5))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done
  echo "$CE_NAME: FAILED: $what within ${secs}s" >&2
  for f in "$RUN"/*.log; do echo "--- $f"; tail -n 15 "$f"; done >&2
  if docker version >/dev/null 2>&1 && declare -F compose >/dev/null; then compose logs --tail 20 >&2 2>&1 || true; fi
  return 1
}

ce_namespaces() {
  echo "$CE_NAME: building the fake GateControl server (debug)"
  cargo build -q -p gatelet-companion --example fake-gatecontrol
  FAKE=${CARGO_TARGET_DIR:-target}/debug/examples/fake-gatecontrol
  echo "$CE_NAME: namespaces $HUB, $GW, $LAN"
  for ns in $HUB $GW $LAN; do ip netns add "$ns"; in_ns "$ns" ip link set lo up; done
  ip link add "$CE_PREFIX-hub0" netns "$HUB" type veth peer name "$CE_PREFIX-wan0" netns "$GW"
  ip link add "$CE_PREFIX-lan0" netns "$GW" type veth peer name "$CE_PREFIX-eth0" netns "$LAN"
  in_ns "$HUB" ip addr add 10.78.0.1/30 dev "$CE_PREFIX-hub0" && in_ns "$HUB" ip link set "$CE_PREFIX-hub0" up
  in_ns "$GW" ip addr add 10.78.0.2/30 dev "$CE_PREFIX-wan0" && in_ns "$GW" ip link set "$CE_PREFIX-wan0" up
  in_ns "$GW" ip addr add 192.168.78.1/24 dev "$CE_PREFIX-lan0" && in_ns "$GW" ip link set "$CE_PREFIX-lan0" up
  in_ns "$LAN" ip addr add 192.168.78.10/24 dev "$CE_PREFIX-eth0" && in_ns "$LAN" ip link set "$CE_PREFIX-eth0" up
  in_ns "$LAN" ip route add default via 192.168.78.1
}

ce_dockerd() {
  echo "$CE_NAME: dockerd in $GW"
  DOCKERD_LOG="$RUN/dockerd.log"
  # nsenter, not `ip netns exec`: that also remounts /sys in a new mount namespace, which hides
  # the cgroup mounts dockerd needs ("Devices cgroup isn't mounted").
  nsenter --net="/var/run/netns/$GW" dockerd --host "$DOCKER_HOST" --data-root "$RUN/data" \
    --exec-root "$RUN/exec" --pidfile "$RUN/dockerd.pid" --iptables=false --ip6tables=false \
    --ip-masq=false --bridge=none --storage-driver=overlay2 "$@" >"$DOCKERD_LOG" 2>&1 &
  DOCKERD_PID=$!
  wait_for 60 "dockerd answers" docker version
}

# The hub: wireguard-go with the gateway as its peer, and the fake server with one HTTP route and
# one L4 route to the LAN host, which serves a page.
ce_hub() {
  umask 077
  wg genkey > "$RUN/hub.key"; wg pubkey < "$RUN/hub.key" > "$RUN/hub.pub"
  wg genkey > "$RUN/gw.key"; wg pubkey < "$RUN/gw.key" > "$RUN/gw.pub"
  wg genpsk > "$RUN/psk"
  umask 022
  local wgif=${CE_PREFIX//-/}hub0
  WG_PROCESS_FOREGROUND=1 bg_in_ns "$HUB" "$RUN/wireguard-go.log" wireguard-go -f "$wgif"
  for _ in $(seq 50); do in_ns "$HUB" ip link show "$wgif" >/dev/null 2>&1 && break; sleep 0.1; done
  in_ns "$HUB" wg set "$wgif" private-key "$RUN/hub.key" listen-port 51820 \
    peer "$(cat "$RUN/gw.pub")" preshared-key "$RUN/psk" allowed-ips 10.8.0.2/32
  in_ns "$HUB" ip addr add 10.8.0.1/24 dev "$wgif"
  in_ns "$HUB" ip link set "$wgif" up
  cat > "$RUN/config.json" <<JSON
{"config_hash_version":2,"peer_id":1,
 "routes":[{"id":1,"domain":"files.check","target_kind":"gateway","target_lan_host":"192.168.78.10",
            "target_lan_port":8000,"protocol":"http","wol_enabled":false}],
 "l4_routes":[{"id":2,"listen_port":2222,"target_lan_host":"192.168.78.10","target_lan_port":8000,
               "wol_enabled":false}],
 "egress_routes":[],
 "config_hash":"sha256:$(printf container-check | sha256sum | cut -c1-64)"}
JSON
  bg_in_ns "$HUB" "$RUN/gatecontrol.log" "$FAKE" --listen 10.8.0.1:3000 --config "$RUN/config.json"
  mkdir -p "$RUN/www" && echo "hello from the LAN host behind the gatelet container" > "$RUN/www/index.html"
  bg_in_ns "$LAN" "$RUN/http.log" python3 -m http.server 8000 --bind 192.168.78.10 --directory "$RUN/www"
  wait_for 10 "the LAN host serves" in_ns "$LAN" curl -sf -o /dev/null -m 1 http://192.168.78.10:8000/
}

# gateway.env as the server hands it out, with this run's keys (the container has its own
# /etc/hosts: the hub by address), at $RUN/gateway.env.
ce_gateway_env() {
  sed -e "s#^WG_PRIVATE_KEY=.*#WG_PRIVATE_KEY=$(cat "$RUN/gw.key")#" \
      -e "s#^WG_PUBLIC_KEY=.*#WG_PUBLIC_KEY=$(cat "$RUN/gw.pub")#" \
      -e "s#^WG_PRESHARED_KEY=.*#WG_PRESHARED_KEY=$(cat "$RUN/psk")#" \
      -e "s#^WG_SERVER_PUBLIC_KEY=.*#WG_SERVER_PUBLIC_KEY=$(cat "$RUN/hub.pub")#" \
      -e "s#^WG_ENDPOINT=.*#WG_ENDPOINT=10.78.0.1:51820#" \
      -e "s#^GC_HEARTBEAT_INTERVAL_S=.*#GC_HEARTBEAT_INTERVAL_S=10#" \
      companion/tests/data/gateway-env.txt > "$RUN/gateway.env"
}
