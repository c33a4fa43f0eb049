//! gatelet-companion: the control plane.
//!
//! Layout, following a config from the server to the agent:
//! - `client`: HTTP calls to GateControl (`/config/check`, `/config`, `/heartbeat`).
//! - `sync`: pure state machines (backoff, request budget, check schedule) and their driver.
//! - `config`: the server's config document: route-by-route validation, canonical hash,
//!   translation to the agent's config; the standalone routes file.
//! - `store`: SQLite: last-known-good config, history, events.
//! - `agent_link`: the agent's control socket.
//! - `heartbeat` and `telemetry`: the heartbeat body and what goes in it.
//! - `discovery`: LAN scans for `/api/lan-scan`, results to `/api/v1/gateway/discovery`.
//! - `http`: the bounded HTTP/1.1 server under `mgmt` and `diag`.
//! - `mgmt`: the management API the server calls (through the agent's relay).
//! - `state`: what all of the above know right now, for status.
//! - `status` and `diag`: the `status` command (over a Unix socket) and the diagnostics page.
//! - `apply`, `supervisor`, `daemon`: a document becomes the config in force; the agent is
//!   kept running it; the threads are started and stopped.
//! - `instance_lock`: one daemon per state directory.
//! - `update`: self-update: signed release manifests (minisign, Ed25519).
//! - `sys`: the system calls std lacks, and the crate's only `unsafe` code.

#![deny(unsafe_code)]

pub mod agent_link;
pub mod apply;
pub mod cli;
pub mod client;
pub mod config;
pub mod daemon;
pub mod diag;
pub mod discovery;
pub mod heartbeat;
pub mod http;
pub mod instance_lock;
pub mod mgmt;
pub mod state;
pub mod status;
pub mod store;
pub mod supervisor;
pub mod sync;
pub mod sys;
pub mod telemetry;
pub mod update;
