#!/usr/bin/env bash
# Builds the gatelet container image with the plain Docker builder, pulling nothing.
#
#   bash deploy/build-image.sh [--arch amd64|arm64] [--tag TAG] [--no-build]
#
# 1. cargo zigbuild --release for x86_64-unknown-linux-musl (amd64) or aarch64-unknown-linux-musl
#    (arm64): static binaries (the companion also holds container-plan/container-report, which
#    the host-side updater deploy/gatelet-container-update.sh runs from the image), the same build as tests-hw/bench/sizes.sh (skipped with --no-build;
#    needs zig and cargo-zigbuild, which .ci/run installs);
# 2. stages target/docker-rootfs/: /usr/bin/gatelet-{agent,companion}, /etc/passwd and /etc/group
#    (user and group gatelet = 65532, so `--control-group gatelet` resolves), /etc/gatelet,
#    /var/lib/gatelet (0750), /run/gatelet (0770: the agent's group creates its socket there),
#    /tmp (1777);
# 3. DOCKER_BUILDKIT=0 docker build -t TAG (default gatelet:latest) with the Dockerfile at the
#    top of the repository, which only COPYs that directory onto scratch.
# The image's architecture is the Docker engine's: build an arm64 image on the arm64 NAS (or an
# arm64 engine) from binaries staged here with --arch arm64.
# Prints the image size in bytes on the last line ("image size: N bytes").
set -euo pipefail
cd "$(dirname "$0")/.."

ARCH=amd64 TAG=gatelet:latest BUILD=true
while [ $# -gt 0 ]; do
  case "$1" in
    --arch) ARCH=${2:?--arch needs amd64 or arm64}; shift 2 ;;
    --tag) TAG=${2:?--tag needs a value}; shift 2 ;;
    --no-build) BUILD=false; shift ;;
    -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
    *) echo "build-image.sh: unknown argument $1 (try --help)" >&2; exit 64 ;;
  esac
done
case "$ARCH" in
  amd64) TRIPLE=x86_64-unknown-linux-musl ;;
  arm64) TRIPLE=aarch64-unknown-linux-musl ;;
  *) echo "build-image.sh: --arch must be amd64 or arm64, not $ARCH" >&2; exit 64 ;;
esac

# The uid and gid the image runs the companion as (and the agent's socket group).
GATELET_ID=65532
BIN_DIR=${CARGO_TARGET_DIR:-target}/$TRIPLE/release
# Inside the build context (the repository); .dockerignore lets only this directory through.
ROOTFS=target/docker-rootfs

if $BUILD; then
  export PATH="$HOME/.cargo/bin:$PATH"
  export ZIG_GLOBAL_CACHE_DIR="${CARGO_TARGET_DIR:-$PWD/target}/zig-cache"
  echo "build-image.sh: cargo zigbuild --release --target $TRIPLE"
  cargo zigbuild --locked --release --target "$TRIPLE" \
    -p gatelet-agent --bin gatelet-agent -p gatelet-companion --bin gatelet-companion </dev/null
fi
for b in gatelet-agent gatelet-companion; do
  if [ ! -x "$BIN_DIR/$b" ]; then
    echo "build-image.sh: $BIN_DIR/$b is missing: run without --no-build" >&2
    exit 1
  fi
done

# base/ becomes / (root-owned); state/ and run/ become /var/lib/gatelet and /run/gatelet, owned
# by 65532 (COPY --chown gives a directory its owner only when it creates it, hence apart).
rm -rf "$ROOTFS"
mkdir -p "$ROOTFS"/base/usr/bin "$ROOTFS"/base/etc/gatelet "$ROOTFS"/base/var/lib \
  "$ROOTFS"/base/run "$ROOTFS"/base/tmp "$ROOTFS"/state "$ROOTFS"/run
cp "$BIN_DIR/gatelet-agent" "$BIN_DIR/gatelet-companion" "$ROOTFS/base/usr/bin/"
chmod 0755 "$ROOTFS"/base/usr/bin/*
# License terms: gatelet's own, and those of every crate linked into the binaries (gzip -9n as
# Debian ships large documents: 229 KB of notices become 21 KB of the image).
mkdir -p "$ROOTFS/base/usr/share/doc/gatelet"
cp LICENSE-MIT LICENSE-APACHE "$ROOTFS/base/usr/share/doc/gatelet/"
gzip -9n <THIRD-PARTY-LICENSES.txt >"$ROOTFS/base/usr/share/doc/gatelet/THIRD-PARTY-LICENSES.txt.gz"
chmod 0644 "$ROOTFS"/base/usr/share/doc/gatelet/*
printf 'root:x:0:0:root:/:/nonexistent\ngatelet:x:%d:%d:gatelet:/var/lib/gatelet:/nonexistent\n' \
  "$GATELET_ID" "$GATELET_ID" >"$ROOTFS/base/etc/passwd"
printf 'root:x:0:\ngatelet:x:%d:\n' "$GATELET_ID" >"$ROOTFS/base/etc/group"
chmod 0644 "$ROOTFS/base/etc/passwd" "$ROOTFS/base/etc/group"
chmod 0755 "$ROOTFS/base/etc/gatelet" "$ROOTFS/base/var/lib" "$ROOTFS/base/run"
chmod 1777 "$ROOTFS/base/tmp"
chmod 0750 "$ROOTFS/state"
# Group-writable: the agent (uid 0 with no CAP_DAC_OVERRIDE, group 65532) creates its socket here.
chmod 0770 "$ROOTFS/run"

echo "build-image.sh: DOCKER_BUILDKIT=0 docker build -t $TAG ($ARCH, $BIN_DIR)"
DOCKER_BUILDKIT=0 docker build -q -t "$TAG" . >/dev/null
echo "image size: $(docker image inspect -f '{{.Size}}' "$TAG") bytes"
