#!/usr/bin/env bash
# Checks the deployment files without a target board:
#   - systemd/*.service and *.path (and deploy/'s container updater units) parse (systemd-analyze verify, with ExecStart pointed at /bin/true because
#     the binaries are not installed here), sysusers and tmpfiles files parse;
#   - every key of kernel-hooks/sysctl.d/*.conf exists in this kernel;
#   - kernel-hooks/nftables/gatelet.nft loads twice (idempotent) and filters as documented, in two
#     private network namespaces: a "hub" peer reaches the proxy port over the tunnel interface, not
#     an unlisted port until that port is added to the set; the LAN side is not filtered.
#   - shell scripts of the deployment trees pass `bash -n` / `sh -n`;
#   - THIRD-PARTY-LICENSES.txt is current and every crate in the binaries passes the license
#     policy (third_party/notices.py).
# Needs root (network namespaces, nft). Creates and removes its own namespaces; touches nothing of
# the host's network. Exit status non-zero on any failed check.
set -euo pipefail
exec </dev/null
cd "$(dirname "$0")/.."

failures=0
fail() {
  echo "deploy-check: FAIL: $*" >&2
  failures=$((failures + 1))
}
ok() { echo "deploy-check: ok: $*"; }

work=$(mktemp -d /tmp/gatelet-deploy-check.XXXXXX)
NS_GW="gatelet-dc-gw-$$"
NS_HUB="gatelet-dc-hub-$$"
cleanup() {
  ip netns pids "$NS_GW" 2>/dev/null | xargs -r kill 2>/dev/null || true
  ip netns del "$NS_GW" 2>/dev/null || true
  ip netns del "$NS_HUB" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# --- systemd ---------------------------------------------------------------------------------
if command -v systemd-analyze >/dev/null 2>&1; then
  for unit in systemd/*.service systemd/*.path deploy/*.service deploy/*.path; do
    sed 's#^ExecStart=[^ ]*#ExecStart=/bin/true#' "$unit" >"$work/$(basename "$unit")"
  done
  # The container updater's unit requires Docker's. Where docker.io is not installed (a fresh
  # machine: CI installs it only in its container stages), a stand-in lets the unit load; the
  # directory of the units verified is on systemd-analyze's search path.
  if [ ! -e /lib/systemd/system/docker.service ] && [ ! -e /usr/lib/systemd/system/docker.service ] &&
    [ ! -e /etc/systemd/system/docker.service ]; then
    printf '[Unit]\nDescription=stand-in for docker.io'"'"'s unit (deploy-check)\n[Service]\nExecStart=/bin/true\n' \
      >"$work/docker.service"
  fi
  if out=$(cd "$work" && systemd-analyze verify ./*.service ./*.path 2>&1) && [ -z "$out" ]; then
    ok "systemd units verify cleanly"
  else
    fail "systemd-analyze verify: $out"
  fi
else
  echo "deploy-check: skip: systemd-analyze not installed"
fi
# The agent gets only what the code uses: CAP_NET_ADMIN (TUN), no raw or packet sockets.
if grep -Eq 'CAP_NET_RAW|AF_PACKET' <(grep -v '^#' systemd/gatelet-agent.service); then
  fail "gatelet-agent.service grants CAP_NET_RAW or AF_PACKET, which the agent does not use"
else
  ok "gatelet-agent.service grants CAP_NET_ADMIN only, no packet sockets"
fi
if command -v systemd-sysusers >/dev/null 2>&1; then
  if out=$(systemd-sysusers --dry-run "$PWD/systemd/gatelet.sysusers.conf" 2>&1) &&
    ! grep -qi 'ignoring\|failed' <<<"$out"; then
    ok "sysusers file parses"
  else
    fail "systemd-sysusers: $out"
  fi
fi
if command -v systemd-tmpfiles >/dev/null 2>&1; then
  if out=$(systemd-tmpfiles --cat-config "$PWD/systemd/gatelet.tmpfiles.conf" 2>&1 >/dev/null) &&
    [ -z "$out" ]; then
    ok "tmpfiles file parses"
  else
    fail "systemd-tmpfiles: $out"
  fi
fi

# --- sysctl ----------------------------------------------------------------------------------
for f in kernel-hooks/sysctl.d/*.conf; do
  while IFS= read -r line; do
    case "$line" in '' | '#'*) continue ;; esac
    key=$(echo "${line%%=*}" | tr -d ' ')
    if [ -e "/proc/sys/${key//.//}" ]; then
      :
    else
      fail "$f: $key does not exist in this kernel"
    fi
  done <"$f"
  # every setting has a comment line right above it
  if awk '/^[a-z]/ && prev !~ /^#/ { bad = 1; print FILENAME ": no comment above: " $0 > "/dev/stderr" } { prev = $0 } END { exit bad }' "$f"; then
    ok "$f: every key exists and is commented"
  else
    fail "$f: a setting without a comment"
  fi
done

# --- shell syntax ----------------------------------------------------------------------------
while IFS= read -r script; do
  if head -n 1 "$script" | grep -q bash; then
    bash -n "$script" || fail "bash -n $script"
  else
    sh -n "$script" || fail "sh -n $script"
  fi
done < <(find buildroot board-configs kernel-hooks tests-hw .ci -type f \( -name '*.sh' -o -name run -o -name 'post-*' \) 2>/dev/null)
ok "shell scripts parse"

# --- third-party licenses ---------------------------------------------------------------------
# THIRD-PARTY-LICENSES.txt (shipped in the image, the container and the Buildroot and OpenWrt
# packages' legal info) must be what third_party/notices.py writes from Cargo.lock today, and every
# crate in the binaries must pass its license policy (permissive licenses only, a notice file each).
if python3 third_party/notices.py --self-test; then ok "license policy: the expression table"; else fail "license policy: the expression table"; fi
if python3 third_party/notices.py --check; then
  ok "THIRD-PARTY-LICENSES.txt covers every crate in the binaries, each under an allowed license"
else
  fail "THIRD-PARTY-LICENSES.txt: see above"
fi

# --- board configs and the Buildroot post-build script ---------------------------------------
for toml in board-configs/*/board.toml; do
  board=$(basename "$(dirname "$toml")")
  if ! python3 -c 'import sys, tomllib
d = tomllib.load(open(sys.argv[1], "rb"))
for section, key in [("board", "target"), ("interfaces", "lan"), ("interfaces", "wan"),
                     ("interfaces", "tunnel"), ("memory", "agent_max"), ("memory", "agent_high"),
                     ("memory", "companion_max"), ("memory", "companion_high"),
                     ("defaults", "netif_mode")]:
    assert str(d[section][key]), f"{section}.{key} is empty"
assert d["board"]["name"] == sys.argv[2], "board.name must be the folder name"
assert d["defaults"]["netif_mode"] == "tun", "netif_mode must be tun (no userspace mode exists yet)"
def size(v):
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    return int(v[:-1]) * units[v[-1]] if v[-1] in units else int(v)
for daemon in ("agent", "companion"):
    high, cap = d["memory"][daemon + "_high"], d["memory"][daemon + "_max"]
    assert size(high) < size(cap), f"{daemon}_high {high} must leave headroom below {daemon}_max {cap}"
' "$toml" "$board"; then
    fail "$toml: not valid (see the error above)"
    continue
  fi
  # A fake Buildroot target tree with what package/gatelet installs, then the post-build script.
  fake="$work/target-$board"
  mkdir -p "$fake/usr/bin" "$fake/etc/nftables.d"
  touch "$fake/usr/bin/gatelet-agent" "$fake/usr/bin/gatelet-companion"
  chmod +x "$fake/usr/bin/gatelet-agent" "$fake/usr/bin/gatelet-companion"
  cp kernel-hooks/nftables/gatelet.nft "$fake/etc/nftables.d/"
  echo 'flush ruleset' >"$fake/etc/nftables.conf"
  for _ in 1 2; do # twice: the script is idempotent
    GATELET_BOARD=$board sh buildroot/board/gatelet/post-build.sh "$fake" >/dev/null || fail "post-build.sh for $board failed"
  done
  memory() { python3 -c 'import sys, tomllib; print(tomllib.load(open(sys.argv[1], "rb"))["memory"][sys.argv[2]])' "$toml" "$1"; }
  for daemon in agent companion; do
    dropin="$fake/etc/systemd/system/gatelet-$daemon.service.d/50-board.conf"
    for key in max high; do
      want="Memory${key^}=$(memory "${daemon}_$key")"
      grep -qx "$want" "$dropin" || fail "$board: $daemon drop-in lacks $want"
    done
    # The agent keeps CAP_NET_ADMIN: without it, it cannot open its TUN device.
    ! grep -q "Capabilit" "$dropin" || fail "$board: the $daemon drop-in changes capabilities"
  done
  cmp -s "$toml" "$fake/etc/gatelet/board.toml" || fail "$board: board.toml not installed"
  [ "$(grep -c 'nftables.d' "$fake/etc/nftables.conf")" -eq 1 ] || fail "$board: nftables include missing or repeated"
done
# A board asking for the userspace mode that does not exist is refused, not turned into an agent
# without capabilities that cannot start.
fake="$work/target-netstack"
mkdir -p "$fake/usr/bin" "$work/board-configs/netstack-board" "$work/buildroot/board/gatelet"
touch "$fake/usr/bin/gatelet-agent" "$fake/usr/bin/gatelet-companion"
chmod +x "$fake/usr/bin/gatelet-agent" "$fake/usr/bin/gatelet-companion"
sed -e 's/^netif_mode = .*/netif_mode = "netstack"/' -e 's/^name = .*/name = "netstack-board"/' \
  board-configs/qemu-aarch64/board.toml >"$work/board-configs/netstack-board/board.toml"
cp buildroot/board/gatelet/post-build.sh "$work/buildroot/board/gatelet/"
if out=$(GATELET_BOARD=netstack-board sh "$work/buildroot/board/gatelet/post-build.sh" "$fake" 2>&1); then
  fail "post-build.sh accepted netif_mode netstack"
elif ! grep -q 'netif_mode "netstack" does not exist' <<<"$out"; then
  fail "post-build.sh refused netstack without saying why: $out"
fi
[ "$failures" -gt 0 ] || ok "board configs parse; post-build.sh applies each of them (MemoryHigh below MemoryMax) and refuses netstack mode"

# --- nftables, functional --------------------------------------------------------------------
NFT_FILE=kernel-hooks/nftables/gatelet.nft
TUNNEL_IF=$(sed -n 's/^define TUNNEL_IF = "\(.*\)"$/\1/p' "$NFT_FILE")
PROXY_PORT=$(sed -n 's/^define PROXY_PORT = \([0-9]*\)$/\1/p' "$NFT_FILE")
# A port that is not open until it is added to the L4 set.
L4_PORT=2222
# Seconds a blocked connection attempt may take before it counts as dropped.
CONNECT_TIMEOUT_S=2

if ! command -v nft >/dev/null 2>&1 || ! command -v socat >/dev/null 2>&1; then
  fail "nft and socat are needed for the nftables check (apt-get install nftables socat)"
elif [ "$(id -u)" -ne 0 ]; then
  fail "the nftables check needs root (network namespaces)"
else
  ip netns add "$NS_GW"
  ip netns add "$NS_HUB"
  # The gateway's tunnel interface is a veth named like the TUN device; the rules only match names.
  ip link add "$TUNNEL_IF" netns "$NS_GW" type veth peer name hub0 netns "$NS_HUB"
  ip -n "$NS_GW" addr add 10.99.0.2/24 dev "$TUNNEL_IF"
  ip -n "$NS_HUB" addr add 10.99.0.1/24 dev hub0
  ip -n "$NS_GW" link set "$TUNNEL_IF" up
  ip -n "$NS_HUB" link set hub0 up
  ip -n "$NS_GW" link set lo up

  if ip netns exec "$NS_GW" nft -f "$NFT_FILE" && ip netns exec "$NS_GW" nft -f "$NFT_FILE"; then
    ok "$NFT_FILE loads twice (idempotent)"
  else
    fail "$NFT_FILE does not load"
  fi
  # A LAN interface whose address the hub could aim at through the tunnel.
  ip -n "$NS_GW" link add lan0 type veth peer name lan1
  ip -n "$NS_GW" addr add 192.168.77.1/24 dev lan0
  ip -n "$NS_GW" link set lan0 up
  ip -n "$NS_GW" link set lan1 up
  ip -n "$NS_HUB" route add 192.168.77.0/24 via 10.99.0.2
  # The box's own services listen on the wildcard address (proxy port: opened by its rule; L4_PORT:
  # a service like sshd, closed to the tunnel); the agent binds its L4 listeners on the tunnel IP
  # (AGENT_PORT, in no set); a service bound to the LAN address (LAN_PORT) stays closed.
  AGENT_PORT=2345
  LAN_PORT=2346
  for port in "$PROXY_PORT" "$L4_PORT"; do
    ip netns exec "$NS_GW" socat "TCP-LISTEN:$port,fork,reuseaddr" SYSTEM:'echo hi' &
  done
  ip netns exec "$NS_GW" socat "TCP-LISTEN:$AGENT_PORT,bind=10.99.0.2,fork,reuseaddr" SYSTEM:'echo hi' &
  ip netns exec "$NS_GW" socat "TCP-LISTEN:$LAN_PORT,bind=192.168.77.1,fork,reuseaddr" SYSTEM:'echo hi' &
  # wait (bounded) for the listeners
  for _ in $(seq 1 50); do
    listening=$(ip netns exec "$NS_GW" ss -ltn)
    if grep -q ":$L4_PORT " <<<"$listening" && grep -q ":$PROXY_PORT " <<<"$listening" &&
      grep -q ":$AGENT_PORT " <<<"$listening" && grep -q ":$LAN_PORT " <<<"$listening"; then break; fi
    sleep 0.1
  done
  reach() { # ns host port -> 0 if a TCP connection gets the greeting
    timeout $((CONNECT_TIMEOUT_S + 1)) ip netns exec "$1" \
      socat -T "$CONNECT_TIMEOUT_S" - "TCP:$2:$3,connect-timeout=$CONNECT_TIMEOUT_S" </dev/null 2>/dev/null |
      grep -q hi
  }
  if reach "$NS_HUB" 10.99.0.2 "$PROXY_PORT"; then ok "proxy port $PROXY_PORT open on $TUNNEL_IF"; else fail "proxy port $PROXY_PORT not reachable over $TUNNEL_IF"; fi
  if reach "$NS_HUB" 10.99.0.2 "$L4_PORT"; then fail "port $L4_PORT reachable over $TUNNEL_IF before it is in the set"; else ok "unlisted port $L4_PORT dropped on $TUNNEL_IF"; fi
  if reach "$NS_GW" 127.0.0.1 "$L4_PORT"; then ok "other interfaces (lo) not filtered"; else fail "port $L4_PORT blocked on lo"; fi
  if reach "$NS_HUB" 10.99.0.2 "$AGENT_PORT"; then ok "a listener bound to the tunnel IP (as the agent binds L4 routes) open on $TUNNEL_IF without a set entry"; else fail "a listener bound to the tunnel IP is dropped on $TUNNEL_IF"; fi
  if reach "$NS_HUB" 192.168.77.1 "$LAN_PORT"; then fail "a service bound to the LAN address is reachable through $TUNNEL_IF"; else ok "a service bound to the LAN address stays closed to $TUNNEL_IF"; fi
  ip netns exec "$NS_GW" nft add element inet gatelet tunnel_tcp_ports "{ $L4_PORT }"
  if reach "$NS_HUB" 10.99.0.2 "$L4_PORT"; then ok "port $L4_PORT open once added to tunnel_tcp_ports"; else fail "port $L4_PORT still dropped after adding it to the set"; fi
fi

if [ "$failures" -gt 0 ]; then
  echo "deploy-check: $failures check(s) failed" >&2
  exit 1
fi
echo "deploy-check: all deployment checks passed"
