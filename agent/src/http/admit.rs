//! Who gets served: a cap on client connections for the whole proxy, a cap per route on
//! requests in flight, and eviction of the longest-waiting connection when the first cap is
//! reached.
//!
//! A connection is *waiting* while it has no request in flight: until its request head is
//! complete, and idle between requests. Its route is not known then, and dropping it loses no
//! work (a client retries a request on a connection that closed before answering). A flood of
//! slow clients is made of such connections, so when every slot is taken a new connection
//! takes the slot of the connection that has been waiting longest, instead of being refused;
//! it is refused only when every slot carries a request in flight. Requests in flight are
//! capped per route as well ([`Admission::enter_route`]), so one route's flood leaves slots for
//! the other routes.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

/// The caps of one proxy, shared by its connections.
pub(crate) struct Admission {
    inner: Mutex<Inner>,
    max_connections: usize,
    max_per_route: usize,
}

struct Inner {
    /// Connections holding a slot (an evicted connection's slot went to its successor).
    open: usize,
    /// Order of waiting connections: lower is longer waiting.
    next_seq: u64,
    waiting: BTreeMap<u64, Arc<Eviction>>,
    /// Requests in flight per route id (absent: none).
    in_flight: HashMap<u64, usize>,
}

/// The eviction notice of one connection.
#[derive(Default)]
pub(crate) struct Eviction {
    evicted: AtomicBool,
    notify: Notify,
}

impl Eviction {
    /// Resolves once the connection has been evicted.
    pub(crate) async fn wait(&self) {
        loop {
            if self.evicted.load(Ordering::Acquire) {
                return;
            }
            // `notify_one` leaves a permit when nobody waits yet: no wake-up is lost.
            self.notify.notified().await;
        }
    }

    fn is_evicted(&self) -> bool {
        self.evicted.load(Ordering::Acquire)
    }
}

/// The outcome of [`Admission::admit`].
pub(crate) enum Admit {
    /// A free slot.
    Admitted(Ticket),
    /// The slot of the longest-waiting connection, which is told to close.
    Evicted(Ticket),
    /// Every slot carries a request in flight.
    Refused,
}

/// A connection's slot; freed on drop.
pub(crate) struct Ticket {
    admission: Arc<Admission>,
    eviction: Arc<Eviction>,
    waiting: Option<u64>,
}

/// A request in flight on a route; freed on drop.
pub(crate) struct RouteSlot {
    admission: Arc<Admission>,
    route: u64,
}

impl Admission {
    /// At most `max_connections` client connections (at least 1) and `max_per_route` requests
    /// in flight per route (at least 1).
    pub(crate) fn new(max_connections: usize, max_per_route: usize) -> Arc<Self> {
        Arc::new(Admission {
            inner: Mutex::new(Inner {
                open: 0,
                next_seq: 0,
                waiting: BTreeMap::new(),
                in_flight: HashMap::new(),
            }),
            max_connections: max_connections.max(1),
            max_per_route: max_per_route.max(1),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A slot for a new connection (see the module documentation).
    pub(crate) fn admit(self: &Arc<Self>) -> Admit {
        let mut inner = self.lock();
        let evicted = if inner.open < self.max_connections {
            inner.open += 1;
            false
        } else if let Some((_, victim)) = inner.waiting.pop_first() {
            victim.evicted.store(true, Ordering::Release);
            victim.notify.notify_one();
            true
        } else {
            return Admit::Refused;
        };
        let ticket = Ticket {
            admission: self.clone(),
            eviction: Arc::new(Eviction::default()),
            waiting: None,
        };
        if evicted {
            Admit::Evicted(ticket)
        } else {
            Admit::Admitted(ticket)
        }
    }

    /// A slot for a request in flight on `route`; None when the route is at its cap.
    pub(crate) fn enter_route(self: &Arc<Self>, route: u64) -> Option<RouteSlot> {
        let mut inner = self.lock();
        let n = inner.in_flight.entry(route).or_default();
        if *n >= self.max_per_route {
            return None;
        }
        *n += 1;
        Some(RouteSlot {
            admission: self.clone(),
            route,
        })
    }

    /// Connections holding a slot.
    #[cfg(test)]
    pub(crate) fn open(&self) -> usize {
        self.lock().open
    }

    /// The per-route cap.
    pub(crate) fn max_per_route(&self) -> usize {
        self.max_per_route
    }

    /// The connection cap.
    pub(crate) fn max_connections(&self) -> usize {
        self.max_connections
    }
}

impl Ticket {
    /// The connection now waits for a request head (it may be evicted until [`Ticket::busy`]).
    pub(crate) fn waiting(&mut self) {
        if self.waiting.is_some() {
            return;
        }
        let mut inner = self.admission.lock();
        let seq = inner.next_seq;
        inner.next_seq += 1;
        inner.waiting.insert(seq, self.eviction.clone());
        self.waiting = Some(seq);
    }

    /// The connection has a request in flight. False when it was evicted meanwhile (it must
    /// close).
    pub(crate) fn busy(&mut self) -> bool {
        if let Some(seq) = self.waiting.take() {
            self.admission.lock().waiting.remove(&seq);
        }
        !self.eviction.is_evicted()
    }

    /// The eviction notice to wait on.
    pub(crate) fn eviction(&self) -> Arc<Eviction> {
        self.eviction.clone()
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut inner = self.admission.lock();
        if let Some(seq) = self.waiting.take() {
            inner.waiting.remove(&seq);
        }
        if !self.eviction.is_evicted() {
            inner.open -= 1;
        }
    }
}

impl Drop for RouteSlot {
    fn drop(&mut self) {
        let mut inner = self.admission.lock();
        if let Some(n) = inner.in_flight.get_mut(&self.route) {
            *n -= 1;
            if *n == 0 {
                inner.in_flight.remove(&self.route);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ticket(a: Admit) -> Ticket {
        match a {
            Admit::Admitted(t) | Admit::Evicted(t) => t,
            Admit::Refused => panic!("refused"),
        }
    }

    #[tokio::test]
    async fn the_longest_waiting_connection_is_evicted_and_busy_ones_never_are() {
        let a = Admission::new(3, 10);
        let mut busy = ticket(a.admit());
        assert!(busy.busy());
        let mut old = ticket(a.admit());
        old.waiting();
        let mut young = ticket(a.admit());
        young.waiting();
        assert_eq!(a.open(), 3);
        // Full: the oldest waiting one goes.
        let newcomer = match a.admit() {
            Admit::Evicted(t) => t,
            _ => panic!("expected an eviction"),
        };
        tokio::time::timeout(std::time::Duration::from_secs(1), old.eviction().wait())
            .await
            .unwrap();
        assert!(!old.busy());
        assert!(!young.eviction().is_evicted());
        drop(old);
        assert_eq!(a.open(), 3, "the evicted slot went to the newcomer");
        // The young one turns busy: nothing left to evict.
        assert!(young.busy());
        let mut n = newcomer;
        assert!(n.busy());
        assert!(matches!(a.admit(), Admit::Refused));
        drop(busy);
        assert_eq!(a.open(), 2);
        assert!(matches!(a.admit(), Admit::Admitted(_)));
        // Waiting again after a request: evictable again, and in its new turn.
        young.waiting();
        n.waiting();
        let _t = ticket(a.admit());
        let _u = ticket(a.admit());
        assert!(young.eviction().is_evicted());
        assert!(!n.eviction().is_evicted());
    }

    #[test]
    fn route_slots_are_capped_per_route() {
        let a = Admission::new(10, 2);
        let s1 = a.enter_route(1).unwrap();
        let _s2 = a.enter_route(1).unwrap();
        assert!(a.enter_route(1).is_none());
        let _other = a.enter_route(2).unwrap();
        drop(s1);
        assert!(a.enter_route(1).is_some());
    }
}
