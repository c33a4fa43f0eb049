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
#   3. `cargo build --offline --release --manifest-path Cargo.toml --locked -p gatelet-agent
#      -p gatelet-companion --bins` (Buildroot's command and GATELET_CARGO_BUILD_OPTS) with an
#      empty CARGO_HOME, CARGO_NET_OFFLINE=true and, as root, inside `unshare -n` (a network
#      namespace with no interfaces: a fetch cannot reach anything);
#   4. both binaries run (--version).
#
# Toolchain: $GATELET_OFFLINE_TOOLCHAIN (a rustup toolchain name), default the workspace's
# rust-version (Cargo.toml), i.e. the oldest Rust gatelet supports, as in Buildroot's LTS branch.
# GATELET_OFFLINE_PROFILE=dev builds the dev profile instead of --release (faster, same crates).
# Needs rustup with that toolchain installed, GNU tar; root for unshare -n (else it says so and
# relies on CARGO_NET_OFFLINE and the empty CARGO_HOME alone).
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

license_files() { # FILE VAR: the words of `VAR = ...` or `VAR:=...` in a makefile
  sed -n "s/^$2[[:space:]]*:\{0,1\}=[[:space:]]*//p" "$1" | tr ' ' '\n' | sed '/^$/d'
}
check_licenses() { # MAKEFILE VAR
  local mk=$1 var=$2 n=0 f
  [ -f "$src/$mk" ] || die "$mk is not in the tarball"
  while read -r f; do
    [ -s "$src/$f" ] || die "$var of $mk names $f, which is not in the tarball"
    n=$((n + 1))
  done < <(license_files "$src/$mk" "$var")
  [ "$n" -gt 0 ] || die "$mk sets no $var (make legal-info would have no license text)"
  say "$var of $mk: $n files, all in the tarball"
}
check_licenses buildroot/package/gatelet/gatelet.mk GATELET_LICENSE_FILES
# GATELET_SOURCE is gatelet-$(GATELET_VERSION).tar.gz: the version must be the one of Cargo.toml.
mk_version=$(license_files "$src/buildroot/package/gatelet/gatelet.mk" GATELET_VERSION)
[ "$mk_version" = "$version" ] ||
  die "GATELET_VERSION of gatelet.mk is '$mk_version', Cargo.toml says $version: Buildroot would look for another tarball"
if [ -f "$repo/openwrt/gatelet/Makefile" ]; then
  check_licenses openwrt/gatelet/Makefile PKG_LICENSE_FILES
fi

# --- the offline build -------------------------------------------------------------------------
rustup run "$toolchain" rustc --version >/dev/null 2>&1 ||
  die "rust toolchain $toolchain is not installed (rustup toolchain install $toolchain --profile minimal)"
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
(cd "$src" && env -u CARGO_TARGET_DIR -u RUSTFLAGS CARGO_HOME="$work/cargo-home" CARGO_NET_OFFLINE=true \
  RUSTUP_TOOLCHAIN="$toolchain" "${isolate[@]}" \
  cargo build --offline $profile_opt --manifest-path Cargo.toml --locked \
  -p gatelet-agent -p gatelet-companion --bins) ||
  die "cargo build --offline from $tarball failed"
dt=$(($(date +%s) - t0))
for b in gatelet-agent gatelet-companion; do
  bin="$src/target/$profile_dir/$b"
  [ -x "$bin" ] || die "$bin was not built"
  out=$("$bin" --version 2>&1) || die "$b --version failed: $out"
  say "$b: $out, $(stat -c %s "$bin") bytes"
done
[ -z "$(ls -A "$work/cargo-home/registry" 2>/dev/null)" ] || die "cargo wrote a registry cache into the empty CARGO_HOME"
say "ok: $(basename "$tarball") builds offline with Rust $toolchain ($profile_dir) in ${dt}s"
