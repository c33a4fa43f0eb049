//! The contract between gatelet's two processes, and the one parser both need.
//!
//! - [`env`]: the `gateway.env` file the GateControl server hands out (protocol §2). Both the
//!   companion (server URL, tokens, intervals) and the agent (WireGuard keys, tunnel IP) read it.
//! - [`control`]: the agent's control socket: a Unix stream socket carrying one JSON request per
//!   line and one JSON response per line. The companion is its only client.
//! - [`proxy_v2`] and [`eviction`]: the two daemons' shared edge rules (the signed PROXY header
//!   of the API relay, which connection makes room at a cap).
//!
//! The types here are versioned by [`control::API_VERSION`]; every field added later carries
//! `#[serde(default)]`, so an older peer keeps working. No `unsafe` code here.

#![forbid(unsafe_code)]

pub mod control;
pub mod env;
pub mod eviction;
#[cfg(feature = "logging")]
pub mod logging;
pub mod mac;
pub mod proxy_v2;
pub mod sd_notify;
