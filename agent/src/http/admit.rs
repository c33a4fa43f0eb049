//! Who gets served: a cap on client connections for the whole proxy, caps per route on
//! requests in flight and on upgraded (WebSocket) connections, and eviction of the
//! longest-waiting connection when the first cap is reached.
//!
//! A connection is *waiting* while it has no request in flight: until its request head is
//! complete, and idle between requests. Its route is not known then, and dropping it loses no
//! work (a client retries a request on a connection that closed before answering). A flood of
//! slow clients is made of such connections, so when every slot is taken a new connection
//! takes the slot of the connection that has been waiting longest, instead of being refused;
//! it is refused only when every slot carries a request in flight. Requests in flight are
//! capped per route as well ([`Admission::enter_route`]), so one route's flood leaves slots for
//! the other routes; upgrade requests (WebSocket) have a budget of their own, as an upgraded
//! connection holds its slot for its whole life (up to the upgrade idle timeout each time it
//! goes quiet): open WebSockets do not use up a route's budget for plain requests.
//!
//! Cost per request (issue 15): none of this takes a lock per request. A connection takes the
//! admission lock when it opens and when it closes; turning waiting or busy is one atomic
//! operation on its own [`Eviction`] (its turn number), and a route's caps are compare-and-swap
//! loops on the route's counters. Only an admission at the cap scans the open connections
//! (at most the cap) for the longest-waiting one.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

use super::table::RouteHttpCounters;

/// Turn of a connection with a request in flight (not evictable).
const BUSY: u64 = 0;
/// Turn of an evicted (or closed) connection.
const GONE: u64 = u64::MAX;

/// The caps of one proxy, shared by its connections.
pub(crate) struct Admission {
    /// Taken when a connection opens or closes, never per request.
    inner: Mutex<Inner>,
    /// The next turn number of a connection that starts waiting (lower: waiting longer).
    next_turn: AtomicU64,
    max_connections: usize,
    max_per_route: usize,
    max_upgrades_per_route: usize,
}

struct Inner {
    /// Connections holding a slot (an evicted connection's slot went to its successor).
    open: usize,
    /// The eviction notices of the connections not yet closed, by slab index (None: free).
    conns: Vec<Option<Arc<Eviction>>>,
    /// Free indices of `conns`.
    free: Vec<usize>,
}

/// The eviction notice of one connection: its turn (BUSY, GONE, or the turn number it got
/// when it started waiting) and the wake-up of its task.
pub(crate) struct Eviction {
    turn: AtomicU64,
    notify: Notify,
}

impl Eviction {
    /// Resolves once the connection has been evicted.
    pub(crate) async fn wait(&self) {
        loop {
            if self.is_evicted() {
                return;
            }
            // `notify_one` leaves a permit when nobody waits yet: no wake-up is lost.
            self.notify.notified().await;
        }
    }

    fn is_evicted(&self) -> bool {
        self.turn.load(Ordering::Acquire) == GONE
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
    index: usize,
}

/// A request in flight on a route (counted in the route's `active`, and an upgrade request
/// also in its `upgraded`); freed on drop.
pub(crate) struct RouteSlot {
    counters: Arc<RouteHttpCounters>,
    upgrade: bool,
}

impl Admission {
    /// At most `max_connections` client connections, `max_per_route` requests in flight per
    /// route and `max_upgrades_per_route` upgrade requests or upgraded connections per route
    /// (each at least 1).
    pub(crate) fn new(
        max_connections: usize,
        max_per_route: usize,
        max_upgrades_per_route: usize,
    ) -> Arc<Self> {
        Arc::new(Admission {
            inner: Mutex::new(Inner {
                open: 0,
                conns: Vec::new(),
                free: Vec::new(),
            }),
            next_turn: AtomicU64::new(BUSY + 1),
            max_connections: max_connections.max(1),
            max_per_route: max_per_route.max(1),
            max_upgrades_per_route: max_upgrades_per_route.max(1),
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
        } else if let Some(victim) = inner.longest_waiting() {
            victim.notify.notify_one();
            true
        } else {
            return Admit::Refused;
        };
        let eviction = Arc::new(Eviction {
            turn: AtomicU64::new(BUSY),
            notify: Notify::new(),
        });
        let index = match inner.free.pop() {
            Some(i) => {
                inner.conns[i] = Some(eviction.clone());
                i
            }
            None => {
                inner.conns.push(Some(eviction.clone()));
                inner.conns.len() - 1
            }
        };
        let ticket = Ticket {
            admission: self.clone(),
            eviction,
            index,
        };
        if evicted {
            Admit::Evicted(ticket)
        } else {
            Admit::Admitted(ticket)
        }
    }

    /// A slot for a request in flight on the route counted by `counters`; an upgrade request
    /// takes it from the route's upgrade budget. None when that budget is used up.
    ///
    /// Exact on the agent's current-thread runtime; with several threads, a request racing an
    /// upgrade's start or end on the same route may be let in one over the cap.
    pub(crate) fn enter_route(
        &self,
        counters: &Arc<RouteHttpCounters>,
        upgrade: bool,
    ) -> Option<RouteSlot> {
        let (active, upgraded) = (&counters.active, &counters.upgraded);
        if upgrade {
            let max = self.max_upgrades_per_route as u64;
            upgraded
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                    (n < max).then_some(n + 1)
                })
                .ok()?;
            active.fetch_add(1, Ordering::AcqRel);
        } else {
            let max = self.max_per_route as u64;
            active
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                    let requests = n.saturating_sub(upgraded.load(Ordering::Acquire));
                    (requests < max).then_some(n + 1)
                })
                .ok()?;
        }
        Some(RouteSlot {
            counters: counters.clone(),
            upgrade,
        })
    }

    /// Connections holding a slot.
    #[cfg(test)]
    pub(crate) fn open(&self) -> usize {
        self.lock().open
    }

    /// The per-route cap on requests.
    pub(crate) fn max_per_route(&self) -> usize {
        self.max_per_route
    }

    /// The connection cap.
    pub(crate) fn max_connections(&self) -> usize {
        self.max_connections
    }
}

impl Inner {
    /// Marks the connection that has waited longest evicted and returns it; None when every
    /// connection has a request in flight. Called with the lock held, so no connection closes
    /// meanwhile; one that turns busy meanwhile is not evicted (the compare-and-swap fails)
    /// and the next candidate is tried.
    fn longest_waiting(&mut self) -> Option<Arc<Eviction>> {
        loop {
            let (victim, turn) = self
                .conns
                .iter()
                .flatten()
                .map(|e| (e, e.turn.load(Ordering::Acquire)))
                .filter(|(_, t)| *t != BUSY && *t != GONE)
                .min_by_key(|(_, t)| *t)?;
            if victim
                .turn
                .compare_exchange(turn, GONE, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                return Some(victim.clone());
            }
        }
    }
}

impl Ticket {
    /// The connection now waits for a request head (it may be evicted until [`Ticket::busy`]).
    /// Its turn starts now unless it was already waiting.
    pub(crate) fn waiting(&mut self) {
        if self.eviction.turn.load(Ordering::Acquire) != BUSY {
            return;
        }
        let turn = self.admission.next_turn.fetch_add(1, Ordering::Relaxed);
        // Fails when evicted meanwhile.
        let _ =
            self.eviction
                .turn
                .compare_exchange(BUSY, turn, Ordering::AcqRel, Ordering::Acquire);
    }

    /// The connection has a request in flight. False when it was evicted meanwhile (it must
    /// close).
    pub(crate) fn busy(&mut self) -> bool {
        self.eviction
            .turn
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |t| {
                (t != GONE).then_some(BUSY)
            })
            .is_ok()
    }

    /// The eviction notice to wait on.
    pub(crate) fn eviction(&self) -> Arc<Eviction> {
        self.eviction.clone()
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut inner = self.admission.lock();
        inner.conns[self.index] = None;
        inner.free.push(self.index);
        // An evicted connection's slot went to its successor.
        if self.eviction.turn.swap(GONE, Ordering::AcqRel) != GONE {
            inner.open -= 1;
        }
    }
}

impl Drop for RouteSlot {
    fn drop(&mut self) {
        self.counters.active.fetch_sub(1, Ordering::AcqRel);
        if self.upgrade {
            self.counters.upgraded.fetch_sub(1, Ordering::AcqRel);
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
        let a = Admission::new(3, 10, 10);
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
    fn route_slots_are_capped_per_route_and_upgrades_have_their_own_budget() {
        let a = Admission::new(10, 2, 3);
        let (r1, r2) = (Arc::<RouteHttpCounters>::default(), Arc::default());
        let s1 = a.enter_route(&r1, false).unwrap();
        let _s2 = a.enter_route(&r1, false).unwrap();
        assert!(a.enter_route(&r1, false).is_none());
        let _other = a.enter_route(&r2, false).unwrap();
        // Upgrades take their own budget, whatever the requests in flight.
        let ws: Vec<_> = (0..3).map(|_| a.enter_route(&r1, true).unwrap()).collect();
        assert!(a.enter_route(&r1, true).is_none());
        assert_eq!(r1.active.load(Ordering::Relaxed), 5);
        assert_eq!(r1.upgraded.load(Ordering::Relaxed), 3);
        drop(s1);
        assert!(a.enter_route(&r1, false).is_some());
        drop(ws);
        assert_eq!(r1.upgraded.load(Ordering::Relaxed), 0);
        // Open WebSockets never cost a request slot: two requests still fit with three open.
        let _ws: Vec<_> = (0..3).map(|_| a.enter_route(&r2, true).unwrap()).collect();
        let _second = a.enter_route(&r2, false).unwrap();
        assert!(a.enter_route(&r2, false).is_none(), "two in flight");
    }

    #[test]
    fn a_connection_waiting_again_gets_a_new_turn_and_closed_ones_are_never_picked() {
        let a = Admission::new(2, 1, 1);
        let mut first = ticket(a.admit());
        let mut second = ticket(a.admit());
        first.waiting();
        second.waiting();
        // The first turns busy and waits again: now the second has waited longer.
        assert!(first.busy());
        first.waiting();
        let third = match a.admit() {
            Admit::Evicted(t) => t,
            _ => panic!("expected an eviction"),
        };
        assert!(second.eviction().is_evicted());
        assert!(!first.eviction().is_evicted());
        drop(second);
        assert_eq!(a.open(), 2);
        // A closed waiting connection frees its slot and is never picked.
        drop(first);
        assert_eq!(a.open(), 1);
        assert!(matches!(a.admit(), Admit::Admitted(_)));
        drop(third);
        assert_eq!(a.open(), 0);
    }
}
