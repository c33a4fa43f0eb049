#!/usr/bin/env bash
# Proves the static binaries start on a machine with nothing else: an empty root directory holding
# only the binaries, /dev/null and a gateway.env, entered with chroot as the unprivileged uid of
# the Docker image (the layout of the FROM-scratch image in Dockerfile; CI has no Docker engine).
#
#   bash tests-hw/bare-root.sh [DIR]   # DIR holds gatelet-agent and gatelet-companion
#                                      # (default target/x86_64-unknown-linux-musl/release)
#
# Checks, per binary:
#   - `file` says statically linked (a dynamic binary cannot start in an empty root);
#   - `--help` and `--version` start and end (exit 0, or 64 if the flag is not offered), never
#     126/127 (loader or libraries missing) or a signal;
#   - `--env /etc/gatelet/gateway.env --state-dir /var/lib/gatelet` with an invalid gateway.env
#     (empty WG_SERVER_PUBLIC_KEY) exits 64 with a message naming the key: the configuration
#     error path works without any file of the host.
# Needs root (chroot, mknod). Exit status: non-zero on any failed check.
set -euo pipefail
exec </dev/null

cd "$(dirname "$0")/.."
BIN_DIR=${1:-${CARGO_TARGET_DIR:-target}/x86_64-unknown-linux-musl/release}
BINARIES=(gatelet-agent gatelet-companion)
# Exit code of a configuration error (sysexits EX_USAGE), the contract of both daemons.
EXIT_CONFIG=64
# Seconds a binary may take to print help or reject its config before the check fails.
RUN_TIMEOUT_S=20

if [ "$(id -u)" -ne 0 ]; then
  echo "bare-root.sh: needs root (chroot, mknod)" >&2
  exit 1
fi

CHROOT=$(command -v chroot || echo /usr/sbin/chroot)
root=$(mktemp -d /tmp/gatelet-bare-root.XXXXXX)
cleanup() { rm -rf --one-file-system "$root"; }
trap cleanup EXIT

# The uid:gid the Docker image runs as (Dockerfile: USER 65532:65532).
IMAGE_UID=65532
chmod 0755 "$root"
mkdir -p "$root/usr/bin" "$root/dev" "$root/tmp" "$root/etc/gatelet" "$root/var/lib/gatelet" "$root/run/gatelet"
chmod 1777 "$root/tmp"
chown "$IMAGE_UID:$IMAGE_UID" "$root/var/lib/gatelet" "$root/run/gatelet"
chmod 0750 "$root/var/lib/gatelet" "$root/run/gatelet"
mknod -m 666 "$root/dev/null" c 1 3
# The server-generated file with the one key that must never be empty left empty.
sed 's/^WG_SERVER_PUBLIC_KEY=.*/WG_SERVER_PUBLIC_KEY=/' ../shared/protocol/fixtures/gateway-env.txt \
  >"$root/etc/gatelet/gateway.env" 2>/dev/null || cat >"$root/etc/gatelet/gateway.env" <<'EOF'
GC_SERVER_URL=http://10.8.0.1:3000
GC_API_TOKEN=gc_gw_0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef
GC_GATEWAY_TOKEN=fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210
GC_TUNNEL_IP=10.8.0.2
WG_PRIVATE_KEY=FAKEgatewayPRIVATEkeyFAKEgatewayPRIVATEkeyE=
WG_ENDPOINT=gc-testbed.invalid:51820
WG_SERVER_PUBLIC_KEY=
WG_ADDRESS=10.8.0.2/32
EOF

failures=0
fail() {
  echo "bare-root.sh: FAIL: $*" >&2
  failures=$((failures + 1))
}

run_in_root() {
  # Clean environment: nothing of the host leaks in.
  local rc=0
  timeout "$RUN_TIMEOUT_S" env -i PATH=/usr/bin "$CHROOT" --userspec="$IMAGE_UID:$IMAGE_UID" "$root" "$@" \
    >"$root/tmp/out" 2>&1 || rc=$?
  echo "$rc"
}

for b in "${BINARIES[@]}"; do
  src="$BIN_DIR/$b"
  if ! [ -f "$src" ]; then
    fail "$src does not exist (build it: cargo zigbuild --release --target x86_64-unknown-linux-musl -p $b)"
    continue
  fi
  desc=$(file -b "$src")
  case "$desc" in
    *"statically linked"* | *"static-pie linked"*) ;;
    *) fail "$b is not statically linked: $desc" ;;
  esac
  install -m 0755 "$src" "$root/usr/bin/$b"

  for flag in --help --version; do
    rc=$(run_in_root "/usr/bin/$b" "$flag")
    first=$(head -n 1 "$root/tmp/out")
    echo "bare-root.sh: $b $flag -> exit $rc: $first"
    if [ "$rc" -ne 0 ] && [ "$rc" -ne "$EXIT_CONFIG" ]; then
      fail "$b $flag exited $rc (126/127: cannot execute; 124: timeout; >128: signal)"
      sed 's/^/    /' "$root/tmp/out" >&2
    fi
  done

  rc=$(run_in_root "/usr/bin/$b" --env /etc/gatelet/gateway.env --state-dir /var/lib/gatelet)
  echo "bare-root.sh: $b with an empty WG_SERVER_PUBLIC_KEY -> exit $rc: $(head -n 1 "$root/tmp/out")"
  if [ "$rc" -ne "$EXIT_CONFIG" ]; then
    fail "$b with an invalid gateway.env exited $rc, expected $EXIT_CONFIG"
    sed 's/^/    /' "$root/tmp/out" >&2
  elif ! grep -q WG_SERVER_PUBLIC_KEY "$root/tmp/out"; then
    fail "$b exited $EXIT_CONFIG but its message does not name WG_SERVER_PUBLIC_KEY"
    sed 's/^/    /' "$root/tmp/out" >&2
  fi
done

if [ "$failures" -gt 0 ]; then
  echo "bare-root.sh: $failures check(s) failed" >&2
  exit 1
fi
echo "bare-root.sh: all static binaries start in an empty root"
