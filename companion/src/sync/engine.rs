//! The sync state machine: when to check the config hash, when to fetch, when to retry.
//!
//! Inputs are events with a time (`on_push`, `on_check_result`, `on_fetch_result`), outputs
//! are [`Action`]s from [`SyncEngine::poll_action`] and a wake-up time from
//! [`SyncEngine::poll_timeout`]. No socket and no clock: the driver in [`super::driver`] does
//! the I/O, tests drive it with virtual time.
//!
//! Rules:
//! - A check goes out at start, then every [`Budget::check_interval`] (18 s at heartbeat
//!   intervals from 5 s to 30 s, shorter above): that cadence is what catches a route
//!   deletion, which the server does not push. `GC_POLL_INTERVAL_S` is only an upper bound,
//!   and the budget cadence is always shorter (at most
//!   [`super::budget::MAX_CHECK_INTERVAL`]), unless the server's limit is too small for it or
//!   the server itself reports a shortage, when the server's numbers rule.
//! - A push schedules a fetch [`PUSH_DEBOUNCE`] later (pushes inside that window coalesce).
//!   A push during a check or fetch is remembered, and another fetch follows it. A push
//!   fetches rather than checks because the server pushes "even when nothing hashed
//!   changed" (protocol §6): `backend_https`, for one, is not part of `config_hash` (the
//!   fixtures prove it, see `config::canonical_hash`), so a check would answer 304 and miss
//!   the change. A fetch costs the same one request of the budget.
//! - A changed hash leads to a fetch; an applied config with a new hash updates the stored
//!   hash and asks for an early heartbeat ([`SyncEngine::take_heartbeat_now`]; see
//!   [`super::schedule`] for when it goes), so the server sees the new `config_hash`. A
//!   fetch that returns the hash already applied (a push for a field outside the hash, or a
//!   second push of a burst) asks for none: the next regular heartbeat says the same. A
//!   document the sink rejects is not fetched again until the server's hash changes.
//! - Failures retry after [`Backoff`] (full jitter, from 5 s up to 5 min); a 429 does not grow
//!   the backoff: the [`Budget`] pause holds everything until `Retry-After`.

use std::time::{Duration, Instant};

use super::backoff::Backoff;
use super::budget::{Budget, Class};
use crate::client::CheckOutcome;

/// Delay between a push and the check it triggers: pushes closer than this coalesce.
pub const PUSH_DEBOUNCE: Duration = Duration::from_millis(250);

/// What the driver should do now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// `GET /config/check` with the stored hash (none before the first config).
    Check {
        /// The stored `config_hash`, to be echoed byte for byte.
        hash: Option<String>,
    },
    /// `GET /config`, then hand the document to the sink.
    Fetch,
}

/// Why a request failed, as far as the engine cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// 429: the budget was told (`Budget::rate_limited`); retry when it allows.
    RateLimited,
    /// Anything else (transport, status, auth): retry after backoff.
    Error(String),
}

/// What became of a fetched document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchResult {
    /// The sink applied it (possibly with some routes rejected); this is its `config_hash`.
    Applied {
        /// The document's `config_hash`, stored and echoed from now on.
        hash: String,
    },
    /// The sink refused the whole document; do not fetch it again while the server's hash is
    /// still `hash`.
    Rejected {
        /// The document's `config_hash`, when it had a readable one.
        hash: Option<String>,
        /// Why.
        reason: String,
    },
    /// The fetch or a local step failed; retry after backoff.
    Failed(Failure),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Idle,
    Checking,
    Fetching,
}

/// The sync state machine. See the module documentation.
#[derive(Debug, Clone)]
pub struct SyncEngine {
    stored_hash: Option<String>,
    rejected_hash: Option<String>,
    phase: Phase,
    sent_at: Instant,
    next_at: Instant,
    push_at: Option<Instant>,
    push_during_flight: bool,
    fetch_pending: bool,
    backoff: Backoff,
    heartbeat_now: bool,
    last_error: Option<String>,
    synced_once: bool,
}

impl SyncEngine {
    /// An engine that checks at `now` first, starting from `stored_hash` (the last-known-good
    /// config's hash from the store, if any).
    pub fn new(now: Instant, stored_hash: Option<String>, backoff: Backoff) -> SyncEngine {
        SyncEngine {
            stored_hash,
            rejected_hash: None,
            phase: Phase::Idle,
            sent_at: now,
            next_at: now,
            push_at: None,
            push_during_flight: false,
            fetch_pending: false,
            backoff,
            heartbeat_now: false,
            last_error: None,
            synced_once: false,
        }
    }

    /// The stored `config_hash`.
    pub fn stored_hash(&self) -> Option<&str> {
        self.stored_hash.as_deref()
    }

    /// The last failure, cleared by the next success.
    pub fn last_error(&self) -> Option<&str> {
        self.last_error.as_deref()
    }

    /// Whether a check or fetch succeeded since start.
    pub fn synced_once(&self) -> bool {
        self.synced_once
    }

    /// Whether the engine is waiting out a backoff after failures.
    pub fn backing_off(&self) -> bool {
        self.backoff.failures() > 0
    }

    /// Whether a request is out (between `poll_action` and its result).
    pub fn in_flight(&self) -> bool {
        self.phase != Phase::Idle
    }

    /// The server called `/api/config-changed`.
    pub fn on_push(&mut self, now: Instant) {
        if self.phase != Phase::Idle {
            self.push_during_flight = true;
            return;
        }
        let at = now + PUSH_DEBOUNCE;
        self.push_at = Some(self.push_at.map_or(at, |p| p.min(at)));
    }

    fn due_at(&self) -> Instant {
        match self.push_at {
            Some(p) => p.min(self.next_at),
            None => self.next_at,
        }
    }

    /// When to call [`SyncEngine::poll_action`] next: `None` while a request is out.
    pub fn poll_timeout(&self, budget: &Budget) -> Option<Instant> {
        (self.phase == Phase::Idle).then(|| budget.earliest(Class::Sync, self.due_at()))
    }

    /// The action to take now, if any. A returned action has taken its budget slot.
    pub fn poll_action(&mut self, now: Instant, budget: &mut Budget) -> Option<Action> {
        if self.phase != Phase::Idle || now < self.due_at() {
            return None;
        }
        if !budget.try_acquire(Class::Sync, now) {
            return None;
        }
        self.sent_at = now;
        // A push still in its debounce window stays pending through a regular check.
        let push_due = self.push_at.is_some_and(|p| p <= now);
        if push_due {
            self.push_at = None;
        }
        if self.fetch_pending || push_due {
            self.phase = Phase::Fetching;
            Some(Action::Fetch)
        } else {
            self.phase = Phase::Checking;
            Some(Action::Check {
                hash: self.stored_hash.clone(),
            })
        }
    }

    /// The result of the [`Action::Check`] last returned.
    pub fn on_check_result(
        &mut self,
        now: Instant,
        budget: &Budget,
        result: Result<CheckOutcome, Failure>,
    ) {
        self.phase = Phase::Idle;
        match result {
            Ok(CheckOutcome::Changed(h)) if self.rejected_hash.as_deref() != Some(h.as_str()) => {
                self.succeeded();
                self.fetch_pending = true;
                self.next_at = now;
            }
            Ok(_) => {
                // The cadence runs from send to send: a slow answer does not stretch it.
                self.succeeded();
                self.next_at = (self.sent_at + budget.check_interval(now)).max(now);
            }
            Err(f) => self.failed(now, f),
        }
        self.after_flight(now);
    }

    /// The result of the [`Action::Fetch`] last returned, after the sink saw the document.
    pub fn on_fetch_result(&mut self, now: Instant, budget: &Budget, result: FetchResult) {
        self.phase = Phase::Idle;
        match result {
            FetchResult::Applied { hash } => {
                self.succeeded();
                self.fetch_pending = false;
                self.rejected_hash = None;
                if self.stored_hash.as_deref() != Some(hash.as_str()) {
                    self.heartbeat_now = true;
                }
                self.stored_hash = Some(hash);
                self.next_at = now + budget.check_interval(now);
            }
            FetchResult::Rejected { hash, reason } => {
                self.fetch_pending = false;
                self.last_error = Some(format!("config rejected: {reason}"));
                if hash.is_some() {
                    // Known hash: checks will report it unchanged-as-rejected, no refetch.
                    self.synced_once = true;
                    self.backoff.reset();
                    self.rejected_hash = hash;
                    self.next_at = now + budget.check_interval(now);
                } else {
                    self.next_at = now + self.backoff.next_delay();
                }
            }
            FetchResult::Failed(f) => self.failed(now, f),
        }
        self.after_flight(now);
    }

    fn succeeded(&mut self) {
        self.backoff.reset();
        self.last_error = None;
        self.synced_once = true;
    }

    fn failed(&mut self, now: Instant, failure: Failure) {
        match failure {
            // The budget holds everything until Retry-After; go as soon as it allows.
            Failure::RateLimited => {
                self.last_error = Some("rate limited by the server (429)".into());
                self.next_at = now;
            }
            Failure::Error(e) => {
                self.last_error = Some(e);
                self.next_at = now + self.backoff.next_delay();
            }
        }
    }

    fn after_flight(&mut self, now: Instant) {
        if std::mem::take(&mut self.push_during_flight) {
            self.push_at = Some(now);
        }
    }

    /// Whether an early heartbeat is wanted (a config with a new hash was just applied).
    /// Clears it.
    pub fn take_heartbeat_now(&mut self) -> bool {
        std::mem::take(&mut self.heartbeat_now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HB30: Duration = Duration::from_secs(30);
    const H1: &str = "sha256:7a03de71d95adb86fda87c5bfebc7791915b233fd9c035769ee0cc3ecca9fca0";
    const H2: &str = "sha256:826bd13fe367fe929b269438284a80c5078af728de0feceb5bfade3f6cdce93f";

    fn engine(t0: Instant, hash: Option<&str>) -> SyncEngine {
        SyncEngine::new(
            t0,
            hash.map(str::to_owned),
            Backoff::new(fastrand::Rng::with_seed(9)),
        )
    }

    #[test]
    fn first_check_at_start_echoes_the_stored_hash() {
        let t0 = Instant::now();
        let mut b = Budget::new(HB30);
        let mut e = engine(t0, Some(H1));
        assert_eq!(e.poll_timeout(&b), Some(t0));
        assert_eq!(
            e.poll_action(t0, &mut b),
            Some(Action::Check {
                hash: Some(H1.into())
            })
        );
        assert_eq!(e.poll_timeout(&b), None, "nothing while in flight");
        assert_eq!(e.poll_action(t0, &mut b), None);
    }

    #[test]
    fn changed_hash_fetches_and_applied_config_updates_hash_and_asks_for_heartbeat() {
        let t0 = Instant::now();
        let mut b = Budget::new(HB30);
        let mut e = engine(t0, Some(H1));
        e.poll_action(t0, &mut b).unwrap();
        e.on_check_result(t0, &b, Ok(CheckOutcome::Changed(H2.into())));
        assert_eq!(e.poll_action(t0, &mut b), Some(Action::Fetch));
        assert!(!e.take_heartbeat_now());
        e.on_fetch_result(t0, &b, FetchResult::Applied { hash: H2.into() });
        assert_eq!(e.stored_hash(), Some(H2));
        assert!(e.take_heartbeat_now());
        assert!(!e.take_heartbeat_now(), "taken once");
        let next = e.poll_timeout(&b).unwrap();
        assert_eq!(next, t0 + b.check_interval(t0));
        assert_eq!(
            e.poll_action(next, &mut b),
            Some(Action::Check {
                hash: Some(H2.into())
            })
        );
    }

    #[test]
    fn failed_boot_sync_retries_within_five_seconds_and_backs_off() {
        let t0 = Instant::now();
        let mut b = Budget::new(HB30);
        let mut e = engine(t0, None);
        let mut t = t0;
        let mut gaps = Vec::new();
        for _ in 0..8 {
            let at = e.poll_timeout(&b).unwrap();
            gaps.push(at - t);
            t = at;
            assert!(matches!(
                e.poll_action(t, &mut b),
                Some(Action::Check { hash: None })
            ));
            e.on_check_result(t, &b, Err(Failure::Error("connect refused".into())));
        }
        assert_eq!(gaps[0], Duration::ZERO, "first check at start");
        assert!(
            gaps[1] <= Duration::from_secs(5),
            "first retry {:?}",
            gaps[1]
        );
        for (i, g) in gaps.iter().enumerate().skip(1) {
            let ceiling = Duration::from_secs(5 << (i - 1)).min(Duration::from_secs(300));
            assert!(*g <= ceiling, "retry {i} waited {g:?} > {ceiling:?}");
        }
        assert!(e.backing_off());
        assert_eq!(e.last_error(), Some("connect refused"));
        // One success resets the backoff.
        let at = e.poll_timeout(&b).unwrap();
        e.poll_action(at, &mut b).unwrap();
        e.on_check_result(at, &b, Ok(CheckOutcome::Unchanged));
        assert!(!e.backing_off());
        assert_eq!(e.last_error(), None);
    }

    #[test]
    fn push_triggers_a_fetch_within_one_second() {
        let t0 = Instant::now();
        let mut b = Budget::new(HB30);
        let mut e = engine(t0, Some(H1));
        e.poll_action(t0, &mut b).unwrap();
        e.on_check_result(t0, &b, Ok(CheckOutcome::Unchanged));
        let push = t0 + Duration::from_secs(3);
        assert!(e.poll_action(push, &mut b).is_none());
        e.on_push(push);
        e.on_push(push + Duration::from_millis(100)); // coalesced
        let at = e.poll_timeout(&b).unwrap();
        assert!(
            at > push && at - push <= Duration::from_secs(1),
            "{:?}",
            at - push
        );
        assert_eq!(e.poll_action(at, &mut b), Some(Action::Fetch));
        e.on_fetch_result(at, &b, FetchResult::Applied { hash: H1.into() });
        // The two pushes gave one fetch: the next request is the regular check.
        assert!(e.poll_timeout(&b).unwrap() >= at + b.check_interval(at));
    }

    #[test]
    fn push_during_a_check_is_not_dropped() {
        let t0 = Instant::now();
        let mut b = Budget::new(HB30);
        let mut e = engine(t0, Some(H1));
        assert!(e.poll_action(t0, &mut b).is_some());
        e.on_push(t0 + Duration::from_millis(50));
        let done = t0 + Duration::from_millis(400);
        e.on_check_result(done, &b, Ok(CheckOutcome::Unchanged));
        let at = e.poll_timeout(&b).unwrap();
        assert!(
            at - done <= Duration::from_secs(1),
            "second check at {at:?}"
        );
        assert_eq!(e.poll_action(at, &mut b), Some(Action::Fetch));
    }

    #[test]
    fn push_overrides_backoff() {
        let t0 = Instant::now();
        let mut b = Budget::new(HB30);
        let mut e = engine(t0, Some(H1));
        let mut failed_at = t0;
        for _ in 0..6 {
            failed_at = e.poll_timeout(&b).unwrap();
            e.poll_action(failed_at, &mut b).unwrap();
            e.on_check_result(failed_at, &b, Err(Failure::Error("503".into())));
        }
        let push = failed_at + Duration::from_millis(1);
        e.on_push(push);
        assert!(e.poll_timeout(&b).unwrap() <= push + PUSH_DEBOUNCE);
    }

    #[test]
    fn rejected_document_is_not_refetched_until_the_hash_changes() {
        let t0 = Instant::now();
        let mut b = Budget::new(HB30);
        let mut e = engine(t0, Some(H1));
        e.poll_action(t0, &mut b).unwrap();
        e.on_check_result(t0, &b, Ok(CheckOutcome::Changed(H2.into())));
        assert_eq!(e.poll_action(t0, &mut b), Some(Action::Fetch));
        e.on_fetch_result(
            t0,
            &b,
            FetchResult::Rejected {
                hash: Some(H2.into()),
                reason: "not JSON".into(),
            },
        );
        assert_eq!(e.stored_hash(), Some(H1), "last-known-good hash kept");
        let at = e.poll_timeout(&b).unwrap();
        assert!(matches!(
            e.poll_action(at, &mut b),
            Some(Action::Check { .. })
        ));
        e.on_check_result(at, &b, Ok(CheckOutcome::Changed(H2.into())));
        let at2 = e.poll_timeout(&b).unwrap();
        assert!(at2 > at, "no immediate refetch of the rejected document");
        assert!(matches!(
            e.poll_action(at2, &mut b),
            Some(Action::Check { .. })
        ));
        e.on_check_result(at2, &b, Ok(CheckOutcome::Changed("sha256:other".into())));
        assert_eq!(e.poll_action(at2, &mut b), Some(Action::Fetch));
    }

    #[test]
    fn failed_fetch_retries_the_fetch_after_backoff() {
        let t0 = Instant::now();
        let mut b = Budget::new(HB30);
        let mut e = engine(t0, Some(H1));
        e.poll_action(t0, &mut b).unwrap();
        e.on_check_result(t0, &b, Ok(CheckOutcome::Changed(H2.into())));
        assert_eq!(e.poll_action(t0, &mut b), Some(Action::Fetch));
        e.on_fetch_result(t0, &b, FetchResult::Failed(Failure::Error("reset".into())));
        let at = e.poll_timeout(&b).unwrap();
        assert!(at <= t0 + Duration::from_secs(5));
        assert_eq!(e.poll_action(at, &mut b), Some(Action::Fetch));
    }

    #[test]
    fn a_fetch_returning_the_applied_hash_asks_for_no_heartbeat() {
        let t0 = Instant::now();
        let mut b = Budget::new(HB30);
        let mut e = engine(t0, Some(H1));
        e.poll_action(t0, &mut b).unwrap();
        e.on_check_result(t0, &b, Ok(CheckOutcome::Unchanged));
        // A push for something outside the hash, and a push that arrives during its fetch.
        let p = t0 + Duration::from_secs(3);
        e.on_push(p);
        let at = e.poll_timeout(&b).unwrap();
        assert_eq!(e.poll_action(at, &mut b), Some(Action::Fetch));
        e.on_push(at + Duration::from_millis(10));
        e.on_fetch_result(at, &b, FetchResult::Applied { hash: H1.into() });
        assert!(!e.take_heartbeat_now(), "same hash: no extra heartbeat");
        let at = e.poll_timeout(&b).unwrap();
        assert_eq!(
            e.poll_action(at, &mut b),
            Some(Action::Fetch),
            "the push is kept"
        );
        e.on_fetch_result(at, &b, FetchResult::Applied { hash: H2.into() });
        assert!(e.take_heartbeat_now(), "a new hash: one heartbeat");
    }

    #[test]
    fn checks_run_from_send_to_send_whatever_the_answer_time() {
        let t0 = Instant::now();
        let mut b = Budget::new(HB30);
        let mut e = engine(t0, Some(H1));
        e.poll_action(t0, &mut b).unwrap();
        let answered = t0 + Duration::from_secs(2);
        e.on_check_result(answered, &b, Ok(CheckOutcome::Unchanged));
        assert_eq!(e.poll_timeout(&b), Some(t0 + b.check_interval(answered)));
    }
}
