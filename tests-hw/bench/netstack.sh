#!/usr/bin/env bash
# Kernel mode vs userspace (smoltcp) mode of gatelet-agent in the same run (issue 9): L4 and HTTP
# proxy throughput hub -> LAN with the agent's CPU seconds, one flow with 100 ms added on the hub
# link, idle wake-ups per second, RSS idle with 50 routes and with 1,000 idle relayed
# connections. Prints one table with the ratios userspace/kernel against the issue's targets.
# What each number is: the module doc of tests-hw/bench/netstack.rs.
#
# Measures the shipped build: the static musl release agent built with the repo's cross build
# (cargo zigbuild --release --target x86_64-unknown-linux-musl, as deploy/build-image.sh and
# sizes.sh; needs zig and cargo-zigbuild as .ci/run installs them). NETSTACK_AGENT=path measures
# another binary instead (e.g. target/release/gatelet-agent).
#
# Run by hand, as root (network namespaces): `bash tests-hw/bench/netstack.sh [bench-netstack args]`,
# e.g. `--seconds 5 --idle-seconds 10 --conns 1000`. About 3 minutes with the defaults.
# Needs wireguard-go, wireguard-tools, iproute2, iperf3 and curl. Not a timed test.
set -euo pipefail
exec </dev/null
cd "$(dirname "$0")/../.."

if [ "$(id -u)" -ne 0 ]; then
  echo "netstack.sh: needs root for network namespaces; run it as root" >&2
  exit 1
fi
for prog in wireguard-go wg ip iperf3 curl setpriv; do
  command -v "$prog" >/dev/null 2>&1 || {
    echo "netstack.sh: $prog is missing (apt-get install wireguard-go wireguard-tools iproute2 iperf3 curl util-linux)" >&2
    exit 1
  }
done

target=${CARGO_TARGET_DIR:-$PWD/target}
agent=${NETSTACK_AGENT:-}
if [ -z "$agent" ]; then
  triple=x86_64-unknown-linux-musl
  export ZIG_GLOBAL_CACHE_DIR="${ZIG_GLOBAL_CACHE_DIR:-$target/zig-cache}"
  echo "netstack.sh: cargo zigbuild --release --target $triple -p gatelet-agent" >&2
  cargo zigbuild -q --locked --release --target "$triple" -p gatelet-agent --bin gatelet-agent >&2
  agent=$target/$triple/release/gatelet-agent
fi
cargo build -q -p gatelet-tests-hw --bin bench-netstack
exec "$target/debug/bench-netstack" --agent "$agent" "$@"
