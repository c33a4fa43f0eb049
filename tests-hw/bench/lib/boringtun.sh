#!/usr/bin/env bash
# Sourced by the tunnel benchmarks (not run): sets $bt to boringtun-cli, taken from
# $BORINGTUN_CLI, else PATH, else $BENCH_TOOLS_ROOT/bin (default <target dir>/bench-tools),
# installed there from crates.io with `cargo install` if missing; sets $target too.
target=${CARGO_TARGET_DIR:-$PWD/target}
tools=${BENCH_TOOLS_ROOT:-$target/bench-tools}
bt=${BORINGTUN_CLI:-}
if [ -z "$bt" ]; then
  if command -v boringtun-cli >/dev/null 2>&1; then
    bt=$(command -v boringtun-cli)
  elif [ -x "$tools/bin/boringtun-cli" ]; then
    bt=$tools/bin/boringtun-cli
  else
    echo "$(basename "$0"): installing boringtun-cli into $tools (cargo install, a few minutes)" >&2
    CARGO_TARGET_DIR="$tools/build" cargo install --locked --root "$tools" boringtun-cli >&2
    bt=$tools/bin/boringtun-cli
  fi
fi
