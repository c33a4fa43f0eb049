//! L4 relays: TCP ([`tcp`]) and UDP ([`udp`]) from a listener on the tunnel IP to a LAN target,
//! and the management API relay to the companion ([`api_relay`]: its own budget, PROXY v2).
//!
//! The listeners themselves are bound by the route manager (`crate::routes`) through the
//! `crate::stack::Stack`; this module takes an already-bound `crate::stack` socket (kernel or
//! smoltcp), the route's [`TargetCell`] (read for every new connection or
//! session, so a target change applies at once to new traffic) and its [`RouteCounters`].

pub mod api_relay;
pub mod refusals;
pub mod tcp;
pub mod udp;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use tokio::sync::watch;

use crate::target::Target;

/// The current target of a route, shared between the manager (writer) and its accept loops
/// (readers, once per new connection).
#[derive(Debug, Clone)]
pub struct TargetCell(Arc<RwLock<Arc<Target>>>);

impl TargetCell {
    /// A cell holding `target`.
    pub fn new(target: Target) -> Self {
        TargetCell(Arc::new(RwLock::new(Arc::new(target))))
    }

    /// The target as of now.
    pub fn get(&self) -> Arc<Target> {
        match self.0.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Points new connections at `target`.
    pub fn set(&self, target: Target) {
        let t = Arc::new(target);
        match self.0.write() {
            Ok(mut g) => *g = t,
            Err(p) => *p.into_inner() = t,
        }
    }
}

/// Counters of one route (or of the management API relay), read by the status answer.
#[derive(Debug, Default)]
pub struct RouteCounters {
    /// Open TCP connections.
    pub tcp_active: AtomicU64,
    /// Live UDP sessions.
    pub udp_sessions: AtomicU64,
    /// Bytes relayed, both directions, TCP and UDP.
    pub bytes: AtomicU64,
    /// TCP connections refused (reset) because a connection cap was reached, plus UDP
    /// datagrams dropped because the session cap was reached.
    pub refused: AtomicU64,
    /// Connections or sessions whose target could not be reached.
    pub target_failures: AtomicU64,
    /// When the target last answered a relayed UDP datagram (ms since the Unix epoch; 0:
    /// never). The reachability probe counts it for targets that refuse TCP.
    pub udp_answered_ms: AtomicU64,
    /// TCP connections dropped because their source is outside the route's allowlist
    /// (egress routes).
    pub source_drops: AtomicU64,
    last_error: Mutex<Option<String>>,
}

impl RouteCounters {
    /// Records `message` as the route's last error.
    pub fn set_error(&self, message: String) {
        match self.last_error.lock() {
            Ok(mut g) => *g = Some(message),
            Err(p) => *p.into_inner() = Some(message),
        }
    }

    /// The last error recorded, if any.
    pub fn last_error(&self) -> Option<String> {
        match self.last_error.lock() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Open connections plus live sessions.
    pub fn active(&self) -> u64 {
        self.tcp_active.load(Ordering::Relaxed) + self.udp_sessions.load(Ordering::Relaxed)
    }

    fn add_bytes(&self, n: usize) {
        self.bytes.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// Waits until `rx` holds `true`. A dropped sender never fires (the owner went away without
/// asking for a close).
pub async fn wait_true(mut rx: watch::Receiver<bool>) {
    loop {
        if *rx.borrow_and_update() {
            return;
        }
        if rx.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

pub use crate::sys::pipe::raise_nofile_limit;

#[cfg(test)]
mod tests;
