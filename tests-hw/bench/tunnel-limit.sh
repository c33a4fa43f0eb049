#!/usr/bin/env bash
# The gateway's tunnel cost at its limit, both directions, with a load that is not the
# bottleneck: this bench plays the hub with boringtun and does no crypto while measuring
# (decrypt: packets encrypted beforehand, sent one by one or in UDP GSO runs; encrypt: the hub
# drops them unread), gateway pinned to core 0, load to core 1; gatelet-agent against
# boringtun-cli and wireguard-go at each of their settings. See tests-hw/bench/tunnel_limit.rs.
#
# Run by hand, as root: `bash tests-hw/bench/tunnel-limit.sh [bench-tunnel-limit args]`, e.g.
# `--runs 3`, `--direction decrypt|decrypt-gro|encrypt|both|all` (default all),
# `--agent-bin base=PATH` (A/B), `--megabytes N` (what the decrypting load encrypts
# beforehand, default 3000: held in memory).
# Needs wireguard-go, wireguard-tools, iproute2, iptables, 2 CPUs; boringtun-cli as tunnel.sh
# finds it. Not a timed test.
set -euo pipefail
exec </dev/null
cd "$(dirname "$0")/../.."
if [ "$(id -u)" -ne 0 ]; then
  echo "tunnel-limit.sh: needs root for network namespaces; run it as root" >&2
  exit 1
fi
for prog in wireguard-go wg ip iptables taskset; do
  command -v "$prog" >/dev/null 2>&1 || {
    echo "tunnel-limit.sh: $prog is missing (apt-get install wireguard-go wireguard-tools iproute2 iptables util-linux)" >&2
    exit 1
  }
done
source tests-hw/bench/lib/boringtun.sh
cargo build -q --release -p gatelet-tests-hw --bin bench-tunnel-limit
exec "$target/release/bench-tunnel-limit" --boringtun "$bt" "$@"
