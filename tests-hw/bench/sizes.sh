#!/usr/bin/env bash
# Prints the stripped release sizes of gatelet-agent, gatelet-companion and gatelet-update (the
# self-updater, a second binary of the companion crate) per target, and checks that the musl
# builds are statically linked.
#
#   bash tests-hw/bench/sizes.sh            # build what is missing, then print the table
#   SIZES_NO_BUILD=1 bash tests-hw/bench/sizes.sh   # only measure existing binaries
#   SIZES_TARGETS="aarch64-unknown-linux-musl" bash tests-hw/bench/sizes.sh
#
# Builds with cargo-zigbuild (zig as the C compiler and linker: links musl with the bundled SQLite,
# and targets glibc 2.17 for armv7 so the binary also runs on old router firmware). The release
# profile (workspace Cargo.toml) already strips; `file` confirms it.
#
# Exit status: non-zero if a build fails, a musl binary is not static, or the companion on static
# aarch64 exceeds its budget (COMPANION_AARCH64_MAX_BYTES, 3 MiB), or the updater its own
# (UPDATER_AARCH64_MAX_BYTES).
set -euo pipefail

cd "$(dirname "$0")/../.."

# The size budget of the issue: idle RSS is mostly the binary, so size is memory.
COMPANION_AARCH64_MAX_BYTES=$((3 * 1024 * 1024))
# The updater runs only during an update (a oneshot unit), but it is flash: 2 MiB.
UPDATER_AARCH64_MAX_BYTES=$((2 * 1024 * 1024))
BINARIES=(gatelet-agent gatelet-companion gatelet-update)
# The package of each binary (default: the binary's name).
declare -A PACKAGE=([gatelet-update]=gatelet-companion)
# zigbuild target spelling (with the glibc version suffix) ; cargo's directory name is the triple.
DEFAULT_TARGETS="x86_64-unknown-linux-musl aarch64-unknown-linux-musl armv7-unknown-linux-gnueabihf.2.17"
read -r -a TARGETS <<<"${SIZES_TARGETS:-$DEFAULT_TARGETS}"
TARGET_DIR=${CARGO_TARGET_DIR:-target}

mib() { awk -v b="$1" 'BEGIN { printf "%.2f", b / 1048576 }'; }

if [ -z "${SIZES_NO_BUILD:-}" ]; then
  for t in "${TARGETS[@]}"; do
    echo "sizes.sh: cargo zigbuild --release --target $t"
    args=()
    for b in "${BINARIES[@]}"; do args+=(-p "${PACKAGE[$b]:-$b}" --bin "$b"); done
    cargo zigbuild --locked --release --target "$t" "${args[@]}" </dev/null
  done
fi

status=0
printf '\n%-40s %-20s %12s %9s  %s\n' target binary bytes MiB linkage
for t in "${TARGETS[@]}"; do
  triple=${t%.2.*}
  for b in "${BINARIES[@]}"; do
    f="$TARGET_DIR/$triple/release/$b"
    if ! [ -f "$f" ]; then
      printf '%-40s %-20s %12s %9s  %s\n' "$t" "$b" - - "missing ($f)"
      status=1
      continue
    fi
    bytes=$(stat -c %s "$f")
    desc=$(file -b "$f")
    case "$desc" in
      *"statically linked"* | *"static-pie linked"*) linkage=static ;;
      *"dynamically linked"*) linkage=dynamic ;;
      *) linkage=unknown ;;
    esac
    case "$desc" in *"not stripped"*) linkage="$linkage, NOT stripped" ;; *stripped*) linkage="$linkage, stripped" ;; esac
    note=""
    if [[ "$triple" == *musl* ]] && [ "${linkage%%,*}" != static ]; then
      note=" <- FAIL: musl build must be static"
      status=1
    fi
    if [ "$triple" = aarch64-unknown-linux-musl ] && [ "$b" = gatelet-companion ]; then
      if [ "$bytes" -gt "$COMPANION_AARCH64_MAX_BYTES" ]; then
        note="$note <- FAIL: over the 3 MiB budget"
        status=1
      else
        note="$note (budget 3.00 MiB: ok)"
      fi
    fi
    if [ "$triple" = aarch64-unknown-linux-musl ] && [ "$b" = gatelet-update ]; then
      if [ "$bytes" -gt "$UPDATER_AARCH64_MAX_BYTES" ]; then
        note="$note <- FAIL: over its 2 MiB budget"
        status=1
      else
        note="$note (budget 2.00 MiB: ok)"
      fi
    fi
    printf '%-40s %-20s %12s %9s  %s%s\n' "$t" "$b" "$bytes" "$(mib "$bytes")" "$linkage" "$note"
  done
done
exit "$status"
