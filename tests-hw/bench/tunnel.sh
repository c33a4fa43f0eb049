#!/usr/bin/env bash
# Tunnel throughput: iperf3 TCP, 10 s, hub (wireguard-go) -> gateway tunnel IP, with the gateway
# played in turn by gatelet-agent (release build), wireguard-go and boringtun-cli. Prints a table,
# the ratios agent/boringtun-cli and agent/wireguard-go, and the agent's VmHWM/VmRSS under load.
#
# Run by hand, as root (network namespaces): `bash tests-hw/bench/tunnel.sh [bench-tunnel args]`,
# e.g. `--runs 3` (median of 3) or `--agent-profile release --agent-profile bench-release`;
# `--pin` (gateway on core 0, hub and iperf3 on core 1, 5 runs, spreads). With no arguments on
# a machine with two cores or more (as from tests-hw/bench/run) it runs both directions pinned:
# `--pin` (hub -> gateway, the gateway decrypts), then `--pin --reverse` (the gateway encrypts).
# Not a timed test: numbers depend on the machine and on whatever else it is doing.
#
# boringtun-cli: taken from $BORINGTUN_CLI, else PATH, else $BENCH_TOOLS_ROOT/bin (default
# <target dir>/bench-tools), installed there from crates.io with `cargo install` if missing.
# Needs wireguard-go, wireguard-tools, iproute2 and iperf3. Respects CARGO_TARGET_DIR.
set -euo pipefail
exec </dev/null
cd "$(dirname "$0")/../.."

if [ "$(id -u)" -ne 0 ]; then
  echo "tunnel.sh: needs root for network namespaces; run it as root" >&2
  exit 1
fi
for prog in wireguard-go wg ip iperf3 ss; do
  command -v "$prog" >/dev/null 2>&1 || {
    echo "tunnel.sh: $prog is missing (apt-get install wireguard-go wireguard-tools iproute2 iperf3)" >&2
    exit 1
  }
done

source tests-hw/bench/lib/boringtun.sh

cargo build -q -p gatelet-tests-hw --bin bench-tunnel
if [ $# -eq 0 ] && [ "$(nproc)" -ge 2 ]; then
  "$target/debug/bench-tunnel" --boringtun "$bt" --pin
  exec "$target/debug/bench-tunnel" --boringtun "$bt" --pin --reverse
fi
exec "$target/debug/bench-tunnel" --boringtun "$bt" "$@"
