//! The proxy's live route table and its counters, written by the route manager
//! (`crate::routes`, which imports this module; never the other way round).
//!
//! The proxy (`super::serve`) reads [`HttpTable::current`] for every request, so an
//! apply that changes the HTTP routes takes effect for the next request without touching open
//! connections. [`HttpStats`] are plain atomics the proxy bumps and the status answer reads,
//! with [`RouteHttpCounters`] per route id (created for routes of the table only, dropped by
//! [`HttpStats::retain_routes`] when the route set is replaced: bounded by the config).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

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
    /// Per route id.
    routes: Mutex<HashMap<u64, Arc<RouteHttpCounters>>>,
}

/// Counters of one HTTP route.
#[derive(Debug, Default)]
pub struct RouteHttpCounters {
    /// Requests routed to it.
    pub requests: AtomicU64,
    /// Requests in flight now (an upgraded connection counts for its whole life).
    pub active: AtomicU64,
    /// Of `active`: upgrade requests and upgraded (WebSocket) connections, which have a cap of
    /// their own (`ProxyConfig::max_upgrades_per_route`).
    pub upgraded: AtomicU64,
    /// Bytes relayed in both directions (heads and bodies).
    pub bytes: AtomicU64,
    /// Requests answered 503 because the route had its cap of requests in flight.
    pub refused: AtomicU64,
    /// Requests whose backend could not be reached or failed before answering (502, 504).
    pub failures: AtomicU64,
}

/// Counts a request in flight on a route until dropped.
#[derive(Debug)]
pub struct InFlight(Arc<RouteHttpCounters>);

impl InFlight {
    /// Counts one more request in flight on `c`.
    pub fn new(c: Arc<RouteHttpCounters>) -> Self {
        c.active.fetch_add(1, Ordering::Relaxed);
        InFlight(c)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
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

    fn route_map(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<RouteHttpCounters>>> {
        self.routes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The counters of route `id`, created on first use (the proxy calls this only for a
    /// route of its table).
    pub fn route(&self, id: u64) -> Arc<RouteHttpCounters> {
        self.route_map().entry(id).or_default().clone()
    }

    /// The counters of route `id` if it has any (the status answer: no insert).
    pub fn route_if_any(&self, id: u64) -> Option<Arc<RouteHttpCounters>> {
        self.route_map().get(&id).cloned()
    }

    /// Forgets the counters of every route not in `ids` (after the route set is replaced).
    pub fn retain_routes(&self, ids: &[u64]) {
        self.route_map().retain(|id, _| ids.contains(id));
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
    fn route_counters_are_per_id_and_forgotten_with_their_route() {
        let s = HttpStats::default();
        HttpStats::add(&s.route(1).bytes, 10);
        HttpStats::add(&s.route(1).bytes, 5);
        {
            let _a = InFlight::new(s.route(2));
            let _b = InFlight::new(s.route(2));
            assert_eq!(HttpStats::get(&s.route(2).active), 2);
        }
        assert_eq!(HttpStats::get(&s.route(2).active), 0);
        assert_eq!(HttpStats::get(&s.route(1).bytes), 15);
        assert!(s.route_if_any(3).is_none());
        s.retain_routes(&[2]);
        assert!(s.route_if_any(1).is_none());
        assert!(s.route_if_any(2).is_some());
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
