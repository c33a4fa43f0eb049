#!/usr/bin/env bash
# The test command of gatelet: `bash tests-hw/test.sh` from the repository root (or anywhere).
#
# 1. Installs the programs the end-to-end tests drive, if missing (only as root, via apt-get;
#    otherwise it prints the apt-get line to run and goes on).
# 2. Runs every test of the workspace: unit, integration, tests-hw (network namespaces, real
#    wireguard-go peers) and doc tests. tests-hw needs root (namespaces, TUN, veth); without root
#    those tests fail loudly instead of being skipped.
#
# Exit status: non-zero if anything failed. No stdin is read. Respects CARGO_TARGET_DIR.
set -euo pipefail

cd "$(dirname "$0")/.."

# Debian packages the tests need, and a program each one provides (to check without dpkg).
TEST_PACKAGES=(
  "wireguard-go:wireguard-go"
  "wireguard-tools:wg"
  "iproute2:ip"
  "nftables:nft"
  "iperf3:iperf3"
  "iputils-ping:ping"
  "socat:socat"
  "qemu-user:qemu-aarch64"
  "tcpdump:tcpdump"
  "netcat-openbsd:nc"
  # systemd-sysusers and systemd-tmpfiles apply the installer's user and /dev/net/tun rule
  # (tunnel_interop's capability-less agent test)
  "systemd:systemd-sysusers"
  # promtool checks the diagnostics page's /metrics (tests-hw/tests/diag_login.rs)
  "prometheus:promtool"
  # self-update (tests-hw/tests/self_update.rs): minisign signs the test release, python3 serves
  # it (http.server), strip shrinks the release binaries
  "minisign:minisign"
  "python3:python3"
  "binutils:strip"
  # headless Chromium and its WebDriver drive the diagnostics page (tests-hw/tests/diag_page.rs)
  "chromium:chromium"
  "chromium-driver:chromedriver"
  # the reference gateway's VRRP peer in the egress failover tests (tests-hw/tests/scan_egress.rs)
  "keepalived:keepalived"
)

missing=()
for entry in "${TEST_PACKAGES[@]}"; do
  pkg=${entry%%:*}
  prog=${entry##*:}
  if ! command -v "$prog" >/dev/null 2>&1 && ! [ -x "/usr/sbin/$prog" ] && ! [ -x "/sbin/$prog" ]; then
    missing+=("$pkg")
  fi
done

if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "test.sh: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q </dev/null
    apt-get install -y -q --no-install-recommends "${missing[@]}" </dev/null
  else
    echo "test.sh: missing test programs; install them with:" >&2
    echo "  sudo apt-get install ${missing[*]}" >&2
    echo "test.sh: continuing; the tests that need them will fail." >&2
  fi
fi

if [ "$(id -u)" -ne 0 ]; then
  echo "test.sh: not root: the tests-hw end-to-end tests (network namespaces) will fail; run as root." >&2
fi

# --no-fail-fast: every test binary runs and every failure is listed, not only the first one.
rc=0
echo "test.sh: cargo test --workspace --all-targets --no-fail-fast"
cargo test --workspace --all-targets --no-fail-fast </dev/null || rc=$?
# --all-targets leaves out doc tests; run them too (cheap, host only).
echo "test.sh: cargo test --workspace --doc --no-fail-fast"
cargo test --workspace --doc --no-fail-fast </dev/null || rc=$?
if [ "$rc" -ne 0 ]; then
  echo "test.sh: FAILED (see the failures listed above)" >&2
  exit "$rc"
fi
echo "test.sh: all tests passed"
