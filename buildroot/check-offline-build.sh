#!/usr/bin/env bash
# Builds gatelet from the release tarball alone, the way Buildroot's cargo-package does, with no
# network: proves the tarball of buildroot/make-release-tarball.sh is complete.
#
#   buildroot/check-offline-build.sh [TARBALL]
#
# TARBALL defaults to target/release-tarball/gatelet-<version>.tar.gz (make it first). Steps:
#   1. extract it into a fresh temporary directory (--strip-components=1, like Buildroot);
#   2. check what the package and `make legal-info` rely on: VENDOR/, the source replacement in
#      .cargo/config.toml, every file of GATELET_LICENSE_FILES (buildroot/package/gatelet/gatelet.mk)
#      and of PKG_LICENSE_FILES (openwrt/gatelet/Makefile);
#   3. `cargo build --offline --release --manifest-path Cargo.toml --locked` plus
#      GATELET_CARGO_BUILD_OPTS of gatelet.mk (Buildroot's cargo-package command, with
#      CARGO_BUILD_TARGET set as Buildroot does) with an empty CARGO_HOME, CARGO_NET_OFFLINE=true
#      and, as root, inside `unshare -n` (a network namespace with no interfaces: a fetch cannot
#      reach anything);
#   4. the binaries run (--version);
#   5. the install commands of the tarball's own gatelet.mk (GATELET_INSTALL_TARGET_CMDS,
#      GATELET_INSTALL_INIT_SYSTEMD), run by make under Buildroot stand-ins
#      (buildroot/test/br-stand-in.mk), put the binaries, units, preset and kernel hooks into a
#      fake target dir, with and without BR2_PACKAGE_NFTABLES; the board post-build script then
#      applies a board to it.
#
# Toolchain: $GATELET_OFFLINE_TOOLCHAIN (a rustup toolchain name), default the workspace's
# rust-version (Cargo.toml), i.e. the oldest Rust gatelet supports, as in Buildroot's LTS branch.
# GATELET_OFFLINE_PROFILE=dev builds the dev profile instead of --release (faster, same crates).
# Needs rustup with that toolchain installed, GNU tar, GNU make; root for unshare -n (else it says
# so and relies on CARGO_NET_OFFLINE and the empty CARGO_HOME alone).
set -euo pipefail
exec </dev/null

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)

die() {
  echo "check-offline-build: FAIL: $*" >&2
  exit 1
}
say() { echo "check-offline-build: $*"; }

# `key = "value"` of a [table] of a TOML file (the two keys this needs: version, rust-version).
toml_get() {
  awk -v want="[$2]" -v key="$3" '/^\[/ { s = $0 } s == want && $1 == key { gsub(/"/, "", $3); print $3; exit }' "$1"
}

version=$(toml_get "$repo/Cargo.toml" workspace.package version)
tarball=${1:-$repo/target/release-tarball/gatelet-$version.tar.gz}
[ -f "$tarball" ] || die "$tarball does not exist: run buildroot/make-release-tarball.sh first"
toolchain=${GATELET_OFFLINE_TOOLCHAIN:-$(toml_get "$repo/Cargo.toml" workspace.package rust-version)}
[ -n "$toolchain" ] || die "no rust-version in Cargo.toml and GATELET_OFFLINE_TOOLCHAIN unset"
case $toolchain in *.*.*) ;; *.*) toolchain=$toolchain.0 ;; esac
profile_opt=--release profile_dir=release
if [ "${GATELET_OFFLINE_PROFILE:-release}" = dev ]; then profile_opt="" profile_dir=debug; fi

work=$(mktemp -d "${TMPDIR:-/tmp}/gatelet-offline.XXXXXX")
trap 'rm -rf "$work"' EXIT
src="$work/build/gatelet-$version"
mkdir -p "$src" "$work/cargo-home"
tar -xzf "$tarball" -C "$src" --strip-components=1

# --- what the package and legal-info need ------------------------------------------------------
[ -d "$src/VENDOR" ] || die "no VENDOR/ in $tarball: Buildroot would run cargo vendor (network) at download time"
if ! grep -qx 'replace-with = "vendored-sources"' "$src/.cargo/config.toml" ||
  ! grep -qx 'directory = "VENDOR"' "$src/.cargo/config.toml"; then
  die ".cargo/config.toml of the tarball does not replace crates.io by VENDOR"
fi
# Every crate of Cargo.lock that comes from crates.io has its directory in VENDOR/.
missing=$(awk '/^\[\[package\]\]/ { n = ""; v = "" } $1 == "name" { n = $3 } $1 == "version" { v = $3 }
  $1 == "source" && $3 ~ /crates.io-index/ { gsub(/"/, "", n); gsub(/"/, "", v); print n "-" v }' "$src/Cargo.lock" |
  while read -r crate; do [ -f "$src/VENDOR/$crate/.cargo-checksum.json" ] || echo "$crate"; done)
[ -z "$missing" ] || die "crates of Cargo.lock not in VENDOR/: $missing"
say "tarball: $(find "$src/VENDOR" -mindepth 1 -maxdepth 1 -type d | wc -l) vendored crates, every crates.io package of Cargo.lock present"

# The package's variables as make evaluates gatelet.mk (the tarball's own copy).
br_make() { # TARGET VAR=VALUE...
  make -s -f "$repo/buildroot/test/br-stand-in.mk" BR2_EXTERNAL_GATELET_PATH="$src/buildroot" \
    SRC="$src" RUSTC_TARGET_NAME="$triple" "$@"
}
triple=$(rustup run "$toolchain" rustc -vV 2>/dev/null | sed -n 's/^host: //p') ||
  die "rust toolchain $toolchain is not installed (rustup toolchain install $toolchain --profile minimal)"
[ -n "$triple" ] || die "rust toolchain $toolchain is not installed (rustup toolchain install $toolchain --profile minimal)"
show=$(br_make show TARGET_DIR="$work/unused") || die "gatelet.mk does not evaluate: $show"
br_var() { sed -n "s/^$1=//p" <<<"$show"; }
[ "$(br_var GATELET_SOURCE)" = "$(basename "$tarball")" ] ||
  die "GATELET_SOURCE of gatelet.mk is '$(br_var GATELET_SOURCE)', not $(basename "$tarball"): Buildroot would look for another tarball"
[ "$(br_var GATELET_SITE_METHOD)" = file ] || die "GATELET_SITE_METHOD is '$(br_var GATELET_SITE_METHOD)', not file"
n=0
for f in $(br_var GATELET_LICENSE_FILES); do
  [ -s "$src/$f" ] || die "GATELET_LICENSE_FILES names $f, which is not in the tarball"
  n=$((n + 1))
done
[ "$n" -gt 0 ] || die "gatelet.mk sets no GATELET_LICENSE_FILES (make legal-info would have no license text)"
[ -n "$(br_var GATELET_LICENSE)" ] || die "gatelet.mk sets no GATELET_LICENSE"
say "gatelet.mk: GATELET_SOURCE $(br_var GATELET_SOURCE), GATELET_LICENSE '$(br_var GATELET_LICENSE)', $n license files in the tarball"
if [ -f "$src/openwrt/gatelet/Makefile" ]; then
  # shellcheck disable=SC2013 # the value is a list of words
  for f in $(sed -n 's/^PKG_LICENSE_FILES:=//p' "$src/openwrt/gatelet/Makefile"); do
    [ -s "$src/$f" ] || die "PKG_LICENSE_FILES of openwrt/gatelet/Makefile names $f, which is not in the tarball"
  done
fi
read -r -a build_opts <<<"$(br_var GATELET_CARGO_BUILD_OPTS)"
[ ${#build_opts[@]} -gt 0 ] || die "gatelet.mk sets no GATELET_CARGO_BUILD_OPTS"

# --- the offline build -------------------------------------------------------------------------
isolate=()
if [ "$(id -u)" -eq 0 ] && unshare -n true 2>/dev/null; then
  isolate=(unshare -n)
  say "building inside unshare -n (no network interfaces), Rust $toolchain"
else
  say "not root: no network namespace; offline by CARGO_NET_OFFLINE=true and an empty CARGO_HOME only, Rust $toolchain"
fi
t0=$(date +%s)
# RUSTUP_TOOLCHAIN wins over the tarball's rust-toolchain.toml (the development pin), like a
# Buildroot host-rust that knows nothing of rustup.
# shellcheck disable=SC2086 # $profile_opt is empty or one word
(cd "$src" && env -u CARGO_TARGET_DIR -u RUSTFLAGS CARGO_HOME="$work/cargo-home" CARGO_NET_OFFLINE=true \
  RUSTUP_TOOLCHAIN="$toolchain" CARGO_BUILD_TARGET="$triple" "${isolate[@]}" \
  cargo build --offline $profile_opt --manifest-path Cargo.toml --locked "${build_opts[@]}") ||
  die "cargo build --offline from $tarball failed"
dt=$(($(date +%s) - t0))
for b in gatelet-agent gatelet-companion gatelet-update; do
  bin="$src/target/$triple/$profile_dir/$b"
  [ -x "$bin" ] || die "$bin was not built"
  out=$("$bin" --version 2>&1) || die "$b --version failed: $out"
  say "$b: $out, $(stat -c %s "$bin") bytes"
done
[ -z "$(ls -A "$work/cargo-home/registry" 2>/dev/null)" ] || die "cargo wrote a registry cache into the empty CARGO_HOME"
say "$(basename "$tarball") builds offline with Rust $toolchain ($profile_dir) in ${dt}s"

# --- gatelet.mk's install commands ---------------------------------------------------------------
# BR2_ENABLE_DEBUG picks the debug dir in gatelet.mk, as Buildroot's build does.
debug=""
if [ "$profile_dir" = debug ]; then debug=y; fi
for nft in y ""; do
  target="$work/target${nft:+-nftables}"
  out=$(br_make install TARGET_DIR="$target" BR2_PACKAGE_NFTABLES="$nft" BR2_ENABLE_DEBUG="$debug" 2>&1) ||
    die "gatelet.mk install commands failed (BR2_PACKAGE_NFTABLES=$nft): $out"
  rm -f "$src/.stamp_target_installed"
  for entry in usr/bin/gatelet-agent:755 usr/bin/gatelet-companion:755 usr/bin/gatelet-update:755 \
    usr/lib/systemd/system/gatelet-agent.service:644 usr/lib/systemd/system/gatelet-companion.service:644 \
    usr/lib/systemd/system/gatelet-update.service:644 usr/lib/systemd/system/gatelet-update.path:644 \
    usr/lib/sysusers.d/gatelet.conf:644 usr/lib/tmpfiles.d/gatelet.conf:644 \
    usr/lib/modules-load.d/gatelet.conf:644 usr/lib/sysctl.d/60-gatelet.conf:644 \
    etc/nftables.d/gatelet.nft:644 etc/gatelet:750 usr/lib/systemd/system-preset/80-gatelet.preset:644; do
    f=${entry%:*} mode=${entry#*:}
    got=$(stat -c %a "$target/$f" 2>/dev/null || echo missing)
    [ "$got" = "$mode" ] || die "after gatelet.mk's install (BR2_PACKAGE_NFTABLES=$nft): /$f is $got, expected mode $mode"
  done
  cmp -s "$target/usr/bin/gatelet-agent" "$src/target/$triple/$profile_dir/gatelet-agent" ||
    die "/usr/bin/gatelet-agent is not the binary built from the tarball"
  preset=$(sort "$target/usr/lib/systemd/system-preset/80-gatelet.preset" | tr '\n' ' ')
  if [ -n "$nft" ]; then
    [ -f "$target/usr/lib/systemd/system/gatelet-nftables.service" ] || die "BR2_PACKAGE_NFTABLES=y: gatelet-nftables.service not installed"
    [ "$preset" = "enable gatelet-agent.service enable gatelet-companion.service enable gatelet-nftables.service enable gatelet-update.path enable gatelet-update.service " ] ||
      die "preset with nftables: $preset"
  else
    [ ! -e "$target/usr/lib/systemd/system/gatelet-nftables.service" ] || die "gatelet-nftables.service installed without nftables"
    [ "$preset" = "enable gatelet-agent.service enable gatelet-companion.service enable gatelet-update.path enable gatelet-update.service " ] || die "preset without nftables: $preset"
  fi
done
say "gatelet.mk installs the built binaries, units, preset (+ gatelet-nftables.service with nftables) and kernel hooks"
out=$(GATELET_BOARD=qemu-aarch64 sh "$src/buildroot/board/gatelet/post-build.sh" "$work/target-nftables" 2>&1) ||
  die "post-build.sh on the installed tree: $out"
[ -f "$work/target-nftables/etc/systemd/system/gatelet-agent.service.d/50-board.conf" ] ||
  die "post-build.sh wrote no board drop-in: $out"
say "board/gatelet/post-build.sh applies a board to that tree"
say "ok: $(basename "$tarball") builds offline and installs like Buildroot would"
