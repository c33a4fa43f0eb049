#!/usr/bin/env bash
# Builds the fuzz targets of fuzz/ with libFuzzer on the pinned stable toolchain, replays the
# checked-in corpus through each, then fuzzes each for a fixed time or number of inputs.
#
#   bash fuzz/run.sh [--time SECONDS] [--runs N] [--replay-only] [TARGET...]
#
#   --time S       fuzz each target for S seconds (default 15)
#   --runs N       fuzz each target for N inputs instead; then --time is a cap, and a target
#                  that has not run N inputs when it is reached fails
#   --replay-only  only run the checked-in corpus (no fuzzing)
#   TARGET         some of: http_request_head http_response_head chunked gateway_env
#                  config_document control_message (default: all)
#
# Why no cargo-fuzz and no nightly: libFuzzer's coverage hooks are LLVM's SanitizerCoverage
# pass, which stable rustc runs with `-Cpasses=sancov-module` and `-Cllvm-args`; the
# libfuzzer-sys crate compiles libFuzzer itself (C++). No sanitizer is needed: the parsers are
# safe Rust, and overflow checks and debug assertions are on in this crate's profile.
#
# New inputs found while fuzzing go to a temporary directory (the checked-in corpus is only
# read); a failing input is saved to $FUZZ_ARTIFACTS (default <target dir>/fuzz/artifacts) and
# the script fails naming it. Reproduce: <target dir>/fuzz/x86_64-unknown-linux-gnu/release/
# TARGET FILE. Prints one line per target: inputs run, inputs/s, corpus size.
#
# Needs a C++ compiler (libFuzzer); as root it installs g++ with apt-get when none is found.
# Respects CARGO_TARGET_DIR (the fuzz build lives in its fuzz/ subdirectory).
set -euo pipefail
exec </dev/null

cd "$(dirname "$0")"
ALL_TARGETS=(http_request_head http_response_head chunked gateway_env config_document control_message)
time_s=15
runs=-1
replay_only=
targets=()
while [ $# -gt 0 ]; do
  case $1 in
    --time) time_s=$2; shift 2 ;;
    --runs) runs=$2; shift 2 ;;
    --replay-only) replay_only=1; shift ;;
    -*) echo "fuzz: unknown option $1" >&2; exit 2 ;;
    *) targets+=("$1"); shift ;;
  esac
done
[ ${#targets[@]} -gt 0 ] || targets=("${ALL_TARGETS[@]}")

if ! command -v c++ >/dev/null 2>&1; then
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "fuzz: installing g++ (libFuzzer is C++)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends g++
  else
    echo "fuzz: no C++ compiler; install one (apt-get install g++)" >&2
    exit 1
  fi
fi

root_target=${CARGO_TARGET_DIR:-$PWD/../target}
export CARGO_TARGET_DIR=$root_target/fuzz
host=$(rustc -vV | sed -n 's/^host: //p')
# The flags cargo-fuzz passes for `--sanitizer none`: coverage counters, comparison tracing and
# the PC table libFuzzer needs. With an explicit --target, RUSTFLAGS reach only the target's
# crates, not build scripts or proc macros.
export RUSTFLAGS="-Cpasses=sancov-module \
-Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
-Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares \
--cfg fuzzing"
bins=()
for t in "${targets[@]}"; do bins+=(--bin "$t"); done
# fuzz/ is its own workspace whose lock file is the root one plus the fuzzing crates: when the
# root's dependencies change, it must follow (say so plainly instead of cargo's --locked error).
if ! cargo metadata --locked --offline --format-version 1 >/dev/null 2>&1; then
  echo "fuzz: fuzz/Cargo.lock is behind the root Cargo.lock; bring it in step with:" >&2
  echo "  cp Cargo.lock fuzz/Cargo.lock && cargo metadata --offline --format-version 1 --manifest-path fuzz/Cargo.toml >/dev/null" >&2
  exit 1
fi
t0=$(date +%s)
cargo build --locked --release --target "$host" "${bins[@]}"
echo "fuzz: built ${#targets[@]} targets in $(($(date +%s) - t0))s"
bin_dir=$CARGO_TARGET_DIR/$host/release

artifacts=${FUZZ_ARTIFACTS:-$CARGO_TARGET_DIR/artifacts}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

fail=0
for t in "${targets[@]}"; do
  corpus=corpus/$t
  case $t in
    http_*) dict=(-dict=dict/http.dict) ;;
    config_document | control_message) dict=(-dict=dict/json.dict) ;;
    gateway_env) dict=(-dict=dict/env.dict) ;;
    *) dict=() ;;
  esac
  # Replay: every checked-in input must pass (-runs=0: the corpus only, no mutation).
  if ! "$bin_dir/$t" -runs=0 "${dict[@]}" "$corpus" >"$work/$t.replay.log" 2>&1; then
    tail -n 30 "$work/$t.replay.log" >&2
    echo "fuzz: $t: a checked-in corpus input fails" >&2
    fail=1
    continue
  fi
  seeds=$(find "$corpus" -type f | wc -l)
  [ -n "$replay_only" ] && { echo "fuzz: $t: replayed $seeds corpus inputs"; continue; }
  mkdir -p "$work/$t" "$artifacts/$t"
  # -rss_limit_mb / -malloc_limit_mb: a parser that allocates without bound fails here too;
  # -timeout: one input taking over 10 s is a failure (a parser must be linear).
  rc=0
  f0=$(date +%s)
  "$bin_dir/$t" "$work/$t" "$corpus" "${dict[@]}" \
    -max_total_time="$time_s" -runs="$runs" -timeout=10 \
    -rss_limit_mb=1024 -malloc_limit_mb=256 -max_len=65536 \
    -artifact_prefix="$artifacts/$t/" -print_final_stats=1 \
    >"$work/$t.log" 2>&1 || rc=$?
  secs=$(($(date +%s) - f0))
  stat() { sed -n "s/^stat::$1: *//p" "$work/$t.log" | tail -n 1; }
  if [ "$rc" -ne 0 ]; then
    tail -n 40 "$work/$t.log" >&2
    echo "fuzz: $t FAILED (exit $rc); input saved in $artifacts/$t/" >&2
    fail=1
    continue
  fi
  found=$(find "$work/$t" -type f | wc -l)
  done_runs=$(stat number_of_executed_units)
  if [ "$runs" -gt 0 ] && [ "${done_runs:-0}" -lt "$runs" ]; then
    echo "fuzz: $t: only ${done_runs:-0} of $runs inputs in ${time_s}s" >&2
    fail=1
  fi
  echo "fuzz: $t: $done_runs inputs in ${secs}s," \
    "$(stat average_exec_per_sec) inputs/s, $seeds seeds + $found new corpus inputs, peak RSS" \
    "$(stat peak_rss_mb) MB, no failure"
done
exit "$fail"
