//! The proxy's live route table and its counters, written by the route manager
//! (`crate::routes`, which imports this module; never the other way round).
//!
//! The proxy (`super::serve`) reads [`HttpTable::current`] for every request, so an
//! apply that changes the HTTP routes takes effect for the next request without touching open
//! connections. [`HttpStats`] are plain atomics the proxy bumps and the status answer reads.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use gatelet_agent_api::control::HttpRoute;

/// A cheaply clonable handle to the current HTTP route set (a snapshot swapped as a whole).
#[derive(Debug, Clone, Default)]
pub struct HttpTable {
    inner: Arc<RwLock<Arc<Vec<HttpRoute>>>>,
}

impl HttpTable {
    /// A table holding `routes`.
    pub fn new(routes: Vec<HttpRoute>) -> Self {
        HttpTable {
            inner: Arc::new(RwLock::new(Arc::new(routes))),
        }
    }

    /// The routes as of now; later replacements do not change the returned snapshot.
    pub fn current(&self) -> Arc<Vec<HttpRoute>> {
        match self.inner.read() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Replaces the whole route set (the next [`HttpTable::current`] sees it).
    pub fn replace(&self, routes: Vec<HttpRoute>) {
        let new = Arc::new(routes);
        match self.inner.write() {
            Ok(mut g) => *g = new,
            Err(poisoned) => *poisoned.into_inner() = new,
        }
    }
}

/// Counters of the HTTP proxy, bumped by the proxy and read by the status answer.
#[derive(Debug, Default)]
pub struct HttpStats {
    /// Requests received (every request, whatever its outcome).
    pub requests: AtomicU64,
    /// Connections (client side) open right now.
    pub active: AtomicU64,
    /// Bytes relayed in both directions (bodies and headers).
    pub bytes: AtomicU64,
    /// `X-Gateway-Target` headers ignored because they named something other than the route's
    /// target (the configured target was used instead).
    pub refused_target_overrides: AtomicU64,
    /// Requests answered with an error status by the proxy itself (502, 503, 504, 4xx on bad
    /// input).
    pub errors: AtomicU64,
    /// New connections closed at once because every connection slot had a request in flight.
    pub refused: AtomicU64,
    /// Connections waiting for a request that were closed to make room for a new connection
    /// (the proxy was at its connection cap).
    pub evicted: AtomicU64,
    /// Requests answered 503 because their route had its cap of requests in flight.
    pub route_busy: AtomicU64,
}

impl HttpStats {
    /// Adds `n` to a counter (relaxed: these are statistics).
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Reads a counter.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(domain: &str) -> HttpRoute {
        HttpRoute {
            id: 1,
            domain: domain.into(),
            target_host: "127.0.0.1".into(),
            target_port: 80,
            backend_https: false,
            wol: None,
        }
    }

    #[test]
    fn replace_is_seen_by_clones_and_old_snapshots_stay_intact() {
        let t = HttpTable::new(vec![route("a.example")]);
        let clone = t.clone();
        let before = clone.current();
        t.replace(vec![route("b.example"), route("c.example")]);
        assert_eq!(before.len(), 1);
        assert_eq!(before[0].domain, "a.example");
        assert_eq!(clone.current().len(), 2);
        assert_eq!(clone.current()[0].domain, "b.example");
    }
}
