#!/usr/bin/env bash
# Makes the source release tarball that builds offline: the sources of a commit plus every crate
# of Cargo.lock vendored (`cargo vendor`), with the source replacement in .cargo/config.toml.
#
#   buildroot/make-release-tarball.sh [-o DIR] [REV]
#
# REV: the commit to package (default HEAD; uncommitted changes are NOT included, the script says
# so when the work tree is dirty). Output: DIR/gatelet-<version>.tar.gz and .sha256 (DIR defaults
# to target/release-tarball of this checkout, where buildroot/package/gatelet's GATELET_SITE
# points). <version> is [workspace.package] version of Cargo.toml.
#
# Layout (the one Buildroot's cargo download post-process produces, so Buildroot uses the tarball
# as it is and never runs `cargo vendor` itself):
#   gatelet-<version>/            the tree of REV (git archive)
#   gatelet-<version>/VENDOR/     the crates, one directory per crate (checksummed by cargo)
#   gatelet-<version>/.cargo/config.toml  the repository's config plus [source] replacing crates.io
#                                 by VENDOR
# The tarball is reproducible: sorted names, owner 0, mtime of the commit, gzip without a name or
# time stamp; the same commit and Cargo.lock give the same bytes (and the same .sha256).
#
# Needs git, cargo (the crates come from crates.io or cargo's local cache), GNU tar, gzip.
set -euo pipefail
exec </dev/null

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
out_dir="$repo/target/release-tarball"

usage() {
  sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
  exit 64
}
while getopts "o:h" opt; do
  case $opt in
  o) out_dir=$OPTARG ;;
  *) usage ;;
  esac
done
shift $((OPTIND - 1))
rev=${1:-HEAD}
[ $# -le 1 ] || usage

die() {
  echo "make-release-tarball: $*" >&2
  exit 1
}

git -C "$repo" rev-parse --git-dir >/dev/null 2>&1 ||
  die "$repo is not a git checkout (the tarball is made from a commit)"
commit=$(git -C "$repo" rev-parse --verify "$rev^{commit}") || die "no such commit: $rev"
if [ "$rev" = HEAD ] && [ -n "$(git -C "$repo" status --porcelain --untracked-files=no)" ]; then
  echo "make-release-tarball: note: the work tree has uncommitted changes; they are NOT in the tarball (it holds $commit)" >&2
fi

# The version from the commit's own Cargo.toml (the [workspace.package] table).
version=$(git -C "$repo" show "$commit:Cargo.toml" |
  awk '/^\[/ { s = $0 } s == "[workspace.package]" && $1 == "version" { gsub(/"/, "", $3); print $3; exit }')
[ -n "$version" ] || die "no version in [workspace.package] of Cargo.toml at $commit"
name="gatelet-$version"
mtime=$(git -C "$repo" show -s --format=%ct "$commit")

stage=$(mktemp -d "${TMPDIR:-/tmp}/gatelet-release.XXXXXX")
trap 'rm -rf "$stage"' EXIT
git -C "$repo" archive --format=tar --prefix="$name/" "$commit" | tar -xf - -C "$stage"
src="$stage/$name"

# cargo vendor prints the [source] tables to add to .cargo/config.toml on stdout.
echo "make-release-tarball: vendoring the crates of Cargo.lock ($commit)"
# Its progress and its advice to edit .cargo/config.toml (done below) go to a log, shown on failure.
(cd "$src" && cargo vendor --locked --versioned-dirs VENDOR >"$stage/vendor-config.toml" 2>"$stage/vendor.log") ||
  die "cargo vendor failed: $(cat "$stage/vendor.log")"
grep -q '^directory = "VENDOR"' "$stage/vendor-config.toml" ||
  die "cargo vendor did not print the source replacement: $(cat "$stage/vendor-config.toml")"
mkdir -p "$src/.cargo"
{
  if [ -f "$src/.cargo/config.toml" ]; then
    cat "$src/.cargo/config.toml"
    echo
  fi
  echo "# Added by buildroot/make-release-tarball.sh: every crate comes from VENDOR/ (no network)."
  cat "$stage/vendor-config.toml"
} >"$stage/config.toml"
mv "$stage/config.toml" "$src/.cargo/config.toml"
crates=$(find "$src/VENDOR" -mindepth 1 -maxdepth 1 -type d | wc -l)

mkdir -p "$out_dir"
tarball="$out_dir/$name.tar.gz"
tar --sort=name --mtime="@$mtime" --owner=0 --group=0 --numeric-owner \
  --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime \
  -C "$stage" -cf - "$name" | gzip -n -9 >"$tarball.tmp"
mv "$tarball.tmp" "$tarball"
(cd "$out_dir" && sha256sum "$name.tar.gz" >"$name.tar.gz.sha256")
echo "make-release-tarball: $tarball ($(du -h "$tarball" | cut -f1), $crates vendored crates, commit $commit)"
echo "make-release-tarball: sha256 $(cut -d' ' -f1 "$tarball.sha256")"
