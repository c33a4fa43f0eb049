//! What the companion knows right now, shared between its threads.
//!
//! Writers (sync loop, heartbeat loop, agent link) update a [`Snapshot`] under a short lock;
//! readers (management API, diagnostics page, `status` CLI) copy what they need. Nothing here
//! does I/O, so a reader is never slowed by the network: `/api/status` answers from this cache.

use std::sync::{Arc, Mutex, MutexGuard};

use gatelet_agent_api::control::{AgentConfig, AgentStatus};
use serde::{Deserialize, Serialize};

/// A route the companion refused, and why (kept in history, shown in status).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RejectedRoute {
    /// `http`, `l4` or `egress`.
    pub kind: String,
    /// The route's id, when it had a readable one.
    pub id: Option<u64>,
    /// Why it was rejected.
    pub reason: String,
}

/// The sync loop's view.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncStatus {
    /// `server` or `standalone`.
    pub mode: String,
    /// `starting`, `in_sync`, `backing_off`, `rate_limited`, `offline_serving_last_good`.
    pub state: String,
    /// The hash of the config in force (as the server gave it).
    pub config_hash: Option<String>,
    /// When the last successful check or fetch completed (ms since the epoch).
    pub last_success_ms: Option<u64>,
    /// The last sync error.
    pub last_error: Option<String>,
    /// Routes of the current config that were rejected.
    pub rejected_routes: Vec<RejectedRoute>,
    /// Requests the budget still allows in the current window.
    pub budget_remaining: Option<u32>,
}

/// Result of the last heartbeat.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeartbeatStatus {
    /// When it was sent (ms since the epoch).
    pub at_ms: u64,
    /// Whether the server answered 200.
    pub ok: bool,
    /// The error or HTTP status, when not ok.
    pub error: Option<String>,
    /// Size of the body sent, in bytes.
    pub body_bytes: usize,
}

/// Everything shown by status, in one copyable value.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Snapshot {
    /// Sync state.
    pub sync: SyncStatus,
    /// The config in force: what the agent should run (the last-known-good one at start).
    pub config: Option<AgentConfig>,
    /// The agent's last reported status, if it answered.
    pub agent: Option<AgentStatus>,
    /// Whether the last control-socket call reached the agent.
    pub agent_reachable: bool,
    /// The agent's last error, when unreachable.
    pub agent_error: Option<String>,
    /// The last heartbeat.
    pub heartbeat: Option<HeartbeatStatus>,
    /// When the companion started (ms since the epoch).
    pub started_at_ms: u64,
    /// Counts since the companion started (the diagnostics page's `/metrics`).
    #[serde(default)]
    pub counters: Counters,
}

/// Counts since the companion started, for `/metrics` (`_total` series; a restart resets
/// them, which Prometheus handles as a counter reset).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Counters {
    /// Config checks sent to the server.
    pub sync_checks: u64,
    /// Of those, the ones that failed (transport, status, rate limit).
    pub sync_check_failures: u64,
    /// Config fetches sent to the server.
    pub sync_fetches: u64,
    /// Of those, the ones that failed (transport, status, or the config could not be applied).
    pub sync_fetch_failures: u64,
    /// Heartbeats the server accepted.
    pub heartbeats_ok: u64,
    /// Heartbeats that failed.
    pub heartbeats_failed: u64,
    /// Wake-on-LAN requests the agent reported as successful.
    pub wakes_ok: u64,
    /// Wake-on-LAN requests that failed.
    pub wakes_failed: u64,
    /// Times the agent reported a new hub endpoint (seen at the status poll).
    pub tunnel_endpoint_changes: u64,
}

impl Snapshot {
    /// Every normalised `wol_mac` of the config in force (the `/api/wol` whitelist).
    pub fn wol_macs(&self) -> Vec<String> {
        let Some(c) = &self.config else {
            return Vec::new();
        };
        let http = c.http_routes.iter().filter_map(|r| r.wol.as_ref());
        let l4 = c.l4_routes.iter().filter_map(|r| r.wol.as_ref());
        let mut macs: Vec<String> = http.chain(l4).map(|w| w.mac.clone()).collect();
        macs.sort();
        macs.dedup();
        macs
    }

    /// The IPv4 targets of the routes in force (the LAN's side of them).
    pub fn route_targets(&self) -> Vec<std::net::Ipv4Addr> {
        let Some(c) = &self.config else {
            return Vec::new();
        };
        let http = c.http_routes.iter().map(|r| r.target_host.as_str());
        let l4 = c.l4_routes.iter().map(|r| r.target_host.as_str());
        http.chain(l4).filter_map(|h| h.parse().ok()).collect()
    }

    /// Number of L4 routes in force, if a config is.
    pub fn configured_l4_routes(&self) -> Option<usize> {
        self.config.as_ref().map(|c| c.l4_routes.len())
    }
}

/// The shared handle. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Shared(Arc<Mutex<Snapshot>>);

impl Shared {
    /// A fresh state.
    pub fn new(snapshot: Snapshot) -> Self {
        Shared(Arc::new(Mutex::new(snapshot)))
    }

    /// Locks for a short update. A poisoned lock (a panicked writer) is recovered: the data
    /// is plain values, always consistent field by field.
    pub fn lock(&self) -> MutexGuard<'_, Snapshot> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A copy of everything.
    pub fn snapshot(&self) -> Snapshot {
        self.lock().clone()
    }
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
