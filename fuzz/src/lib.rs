//! Fuzz targets for gatelet's parsers of outside input, and the checks they make.
//!
//! Each target in `fuzz_targets/` is a thin libFuzzer entry point around one `check` function
//! here, so that the properties are plain Rust and the targets stay one line each:
//!
//! - [`http`]: the proxy's request and response head parsers and its chunked decoder
//!   (`gatelet_agent::http::fuzz_api`).
//! - [`env`]: the `gateway.env` parser and validator (`gatelet_agent_api::env`).
//! - [`config`]: the server's config document and the standalone routes file
//!   (`gatelet_companion::config`).
//! - [`control`]: the control-socket messages (`gatelet_agent_api::control`).
//!
//! Beyond "does not panic", every check asserts a property of the result (a rewritten head
//! parses to the same request, a chunked encoding round-trips, an accepted `gateway.env` holds
//! only values the validator allows, a validated config has no two routes on one domain or
//! port...) and a bound on the memory one input makes the parser allocate ([`alloc_peak`]).
//!
//! `run.sh` next to this crate builds the targets with libFuzzer on the pinned stable
//! toolchain and replays the checked-in corpus, then fuzzes for a fixed time.

#![deny(unsafe_code)]

pub mod config;
pub mod control;
pub mod env;
pub mod http;
mod sys;

use std::sync::atomic::Ordering::Relaxed;

#[global_allocator]
static ALLOC: sys::Counting = sys::Counting;

/// Runs `f` and returns its result and the peak of bytes it had allocated at once (beyond what
/// was live before it started). What `f` returns stays counted: drop big results inside `f`.
pub fn alloc_peak<R>(f: impl FnOnce() -> R) -> (R, usize) {
    let before = sys::LIVE.load(Relaxed);
    sys::PEAK.store(before, Relaxed);
    let r = f();
    let peak = sys::PEAK.load(Relaxed);
    (r, peak.saturating_sub(before))
}

/// Panics when `peak` exceeds `per_byte` bytes per input byte plus `fixed` bytes.
pub fn assert_alloc_bound(
    what: &str,
    peak: usize,
    input_len: usize,
    per_byte: usize,
    fixed: usize,
) {
    let bound = input_len.saturating_mul(per_byte).saturating_add(fixed);
    assert!(
        peak <= bound,
        "{what}: allocated {peak} bytes at peak for {input_len} input bytes \
         (bound {per_byte}/byte + {fixed})"
    );
}
