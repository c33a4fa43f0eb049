#!/usr/bin/env bash
# The fuzz targets of fuzz/ (HTTP request and response heads, chunked framing, gateway.env,
# config document and routes file, control-socket messages), run long: FUZZ_RUNS inputs per
# target (default 1,000,000; the corpus replay counts), each target capped at FUZZ_SECONDS
# (default 1800; a target that does not reach FUZZ_RUNS in time fails). One target after the
# other, one core. Prints inputs and inputs/s per target. CI runs the same with a short time
# (.ci/run, stage fuzz). Arguments are passed on (target names, --time, --runs).
set -euo pipefail
cd "$(dirname "$0")/../.."
exec bash fuzz/run.sh --runs "${FUZZ_RUNS:-1000000}" --time "${FUZZ_SECONDS:-1800}" "$@"
