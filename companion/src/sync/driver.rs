//! The threads that run the state machines against the real clock and the [`Client`].
//!
//! - [`SyncLoop`]: checks and fetches, hands each fetched document to a [`ConfigSink`],
//!   updates [`SyncStatus`](crate::state::SyncStatus) in [`Shared`], takes pushes from a
//!   [`PushSignal`], and asks the heartbeat thread for an early heartbeat after applying a
//!   config with a new hash.
//! - [`HeartbeatLoop`]: sends heartbeats built by a caller's closure, on the
//!   [`HeartbeatSchedule`], through the same [`SharedBudget`]; one the server did not get (no
//!   answer, 5xx) is retried after [`super::schedule::FAILED_RETRY_DELAY`].
//!
//! Both stop when the shutdown flag is set (checked at least every [`SHUTDOWN_POLL`]; a
//! signal handler may set it) or when their wake-up [`PushSignal`] is closed. A request in
//! flight finishes first (at most [`crate::client::REQUEST_TIMEOUT`]).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::backoff::Backoff;
use super::budget::{Budget, SharedBudget};
use super::engine::{Action, Failure, FetchResult, SyncEngine};
use super::schedule::HeartbeatSchedule;
use crate::client::{Client, ClientError};
use crate::state::{now_ms, HeartbeatStatus, Shared};

/// Longest sleep between looks at the shutdown flag.
pub const SHUTDOWN_POLL: Duration = Duration::from_millis(250);

/// What the sink made of a config document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApplyOutcome {
    /// Stored as last-known-good and handed to the agent. Routes that failed validation may
    /// have been left out (the sink records them in `SyncStatus::rejected_routes`).
    Applied {
        /// The document's `config_hash`, exactly as the server wrote it.
        hash: String,
    },
    /// The document as a whole is unusable (not JSON, no `config_hash`, ...). It will not be
    /// fetched again while the server reports the same hash.
    Rejected {
        /// Its `config_hash`, if it could be read.
        hash: Option<String>,
        /// Why, for status and history.
        reason: String,
    },
    /// A local step failed (the store could not be written, ...): the fetch is retried after
    /// backoff.
    Failed {
        /// Why.
        reason: String,
    },
}

/// Where fetched config documents go. The companion's implementation validates route by
/// route, stores the last-known-good config and pushes it to the agent.
pub trait ConfigSink {
    /// Takes the raw body of `GET /api/v1/gateway/config` (at most
    /// [`crate::client::MAX_CONFIG_BYTES`]). Called on the sync thread; should return within
    /// seconds (checks wait meanwhile).
    fn apply(&mut self, raw: &[u8]) -> ApplyOutcome;
}

impl<F: FnMut(&[u8]) -> ApplyOutcome> ConfigSink for F {
    fn apply(&mut self, raw: &[u8]) -> ApplyOutcome {
        self(raw)
    }
}

#[derive(Debug, Default)]
struct SignalState {
    pending: bool,
    closed: bool,
}

/// A wake-up call between threads: `notify()` sets a flag that the waiting thread takes.
/// Several notifications before the waiter looks count as one. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct PushSignal(Arc<(Mutex<SignalState>, Condvar)>);

impl PushSignal {
    /// A signal with nothing pending.
    pub fn new() -> PushSignal {
        PushSignal::default()
    }

    fn state(&self) -> MutexGuard<'_, SignalState> {
        self.0 .0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Wakes the waiter (the management API calls this on `/api/config-changed`).
    pub fn notify(&self) {
        self.state().pending = true;
        self.0 .1.notify_all();
    }

    /// Tells the waiter to stop.
    pub fn close(&self) {
        self.state().closed = true;
        self.0 .1.notify_all();
    }

    /// Whether [`PushSignal::close`] was called.
    pub fn is_closed(&self) -> bool {
        self.state().closed
    }

    /// Takes a pending notification, without waiting.
    pub fn take(&self) -> bool {
        std::mem::take(&mut self.state().pending)
    }

    /// Waits until notified, closed, or `deadline`. Returns whether a notification was taken.
    pub fn wait_until(&self, deadline: Instant) -> bool {
        let mut state = self.state();
        loop {
            if state.pending {
                state.pending = false;
                return true;
            }
            if state.closed {
                return false;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            state = match self.0 .1.wait_timeout(state, deadline - now) {
                Ok((s, _)) => s,
                Err(p) => p.into_inner().0,
            };
        }
    }
}

fn lock_budget(budget: &SharedBudget) -> MutexGuard<'_, Budget> {
    budget.lock().unwrap_or_else(|p| p.into_inner())
}

/// Maps a client error to the engine's view, telling the budget about a 429.
fn failure(budget: &SharedBudget, now: Instant, e: &ClientError) -> Failure {
    match e {
        ClientError::RateLimited { rate, .. } => {
            lock_budget(budget).rate_limited(now, rate);
            Failure::RateLimited
        }
        e => Failure::Error(e.to_string()),
    }
}

/// The sync thread's loop. See the module documentation.
pub struct SyncLoop<S: ConfigSink> {
    client: Client,
    engine: SyncEngine,
    budget: SharedBudget,
    sink: S,
    shared: Shared,
    push: PushSignal,
    heartbeat_now: PushSignal,
}

impl<S: ConfigSink> SyncLoop<S> {
    /// A loop starting from `stored_hash` (the last-known-good config's `config_hash`), whose
    /// first check goes out at once. `push` is notified by the management API;
    /// `heartbeat_now` is notified after a config was applied (give the same signal to
    /// [`HeartbeatLoop::new`]).
    pub fn new(
        client: Client,
        stored_hash: Option<String>,
        budget: SharedBudget,
        sink: S,
        shared: Shared,
        push: PushSignal,
        heartbeat_now: PushSignal,
    ) -> SyncLoop<S> {
        let engine = SyncEngine::new(
            Instant::now(),
            stored_hash,
            Backoff::new(fastrand::Rng::new()),
        );
        SyncLoop {
            client,
            engine,
            budget,
            sink,
            shared,
            push,
            heartbeat_now,
        }
    }

    /// The state machine, for inspection.
    pub fn engine(&self) -> &SyncEngine {
        &self.engine
    }

    /// Runs until `shutdown` is set or the push signal is closed.
    pub fn run(&mut self, shutdown: &AtomicBool) {
        {
            let mut s = self.shared.lock();
            s.sync.mode = "server".into();
            s.sync.state = "starting".into();
            s.sync.config_hash = self.engine.stored_hash().map(str::to_owned);
        }
        while !shutdown.load(Ordering::Relaxed) && !self.push.is_closed() {
            self.step();
        }
    }

    /// One turn: takes pushes, runs the due action or waits (at most [`SHUTDOWN_POLL`]).
    pub fn step(&mut self) {
        let now = Instant::now();
        if self.push.take() {
            tracing::info!("config push received");
            self.engine.on_push(now);
        }
        let action = self.engine.poll_action(now, &mut lock_budget(&self.budget));
        match action {
            Some(Action::Check { hash }) => {
                let result = self.client.check(hash.as_deref());
                let now = Instant::now();
                if self.push.take() {
                    self.engine.on_push(now);
                }
                let result = match result {
                    Ok((outcome, rate)) => {
                        lock_budget(&self.budget).observe(now, &rate);
                        Ok(outcome)
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "config check failed");
                        Err(failure(&self.budget, now, &e))
                    }
                };
                {
                    let c = &mut self.shared.lock().counters;
                    c.sync_checks += 1;
                    c.sync_check_failures += u64::from(result.is_err());
                }
                let budget = lock_budget(&self.budget);
                self.engine.on_check_result(now, &budget, result);
                self.publish(now, &budget, true);
            }
            Some(Action::Fetch) => {
                let fetched = self.client.fetch_config();
                let result = match fetched {
                    Ok((raw, rate)) => {
                        lock_budget(&self.budget).observe(Instant::now(), &rate);
                        match self.sink.apply(&raw) {
                            ApplyOutcome::Applied { hash } => {
                                tracing::info!(config_hash = %hash, bytes = raw.len(), "config applied");
                                FetchResult::Applied { hash }
                            }
                            ApplyOutcome::Rejected { hash, reason } => {
                                tracing::warn!(%reason, "config document rejected");
                                FetchResult::Rejected { hash, reason }
                            }
                            ApplyOutcome::Failed { reason } => {
                                tracing::warn!(%reason, "config could not be applied");
                                FetchResult::Failed(Failure::Error(reason))
                            }
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "config fetch failed");
                        FetchResult::Failed(failure(&self.budget, Instant::now(), &e))
                    }
                };
                let now = Instant::now();
                if self.push.take() {
                    self.engine.on_push(now);
                }
                {
                    let c = &mut self.shared.lock().counters;
                    c.sync_fetches += 1;
                    c.sync_fetch_failures += u64::from(matches!(result, FetchResult::Failed(_)));
                }
                let budget = lock_budget(&self.budget);
                self.engine.on_fetch_result(now, &budget, result);
                if self.engine.take_heartbeat_now() {
                    self.heartbeat_now.notify();
                }
                self.publish(now, &budget, true);
            }
            None => {
                let wake = {
                    let budget = lock_budget(&self.budget);
                    // The heartbeat thread may have run into a 429: show it.
                    self.publish(now, &budget, false);
                    self.engine
                        .poll_timeout(&budget)
                        .unwrap_or(now + SHUTDOWN_POLL)
                        .min(now + SHUTDOWN_POLL)
                };
                if self.push.wait_until(wake) {
                    tracing::info!("config push received");
                    self.engine.on_push(Instant::now());
                }
            }
        }
    }

    /// Copies the engine's and the budget's view into the shared status; `completed` after a
    /// request finished (a success then updates `last_success_ms`).
    fn publish(&self, now: Instant, budget: &Budget, completed: bool) {
        let mut s = self.shared.lock();
        let sync = &mut s.sync;
        sync.config_hash = self.engine.stored_hash().map(str::to_owned);
        sync.last_error = self.engine.last_error().map(str::to_owned);
        sync.budget_remaining = Some(budget.remaining(now));
        sync.state = if budget.paused_until(now).is_some() {
            "rate_limited"
        } else if self.engine.backing_off() {
            if sync.config_hash.is_some() {
                "offline_serving_last_good"
            } else {
                "backing_off"
            }
        } else if self.engine.synced_once() {
            "in_sync"
        } else {
            "starting"
        }
        .into();
        if completed && self.engine.last_error().is_none() {
            sync.last_success_ms = Some(now_ms());
        }
    }
}

/// The heartbeat thread's loop. See the module documentation.
pub struct HeartbeatLoop<F: FnMut() -> Vec<u8>> {
    client: Client,
    schedule: HeartbeatSchedule,
    budget: SharedBudget,
    body: F,
    shared: Shared,
    now_signal: PushSignal,
}

impl<F: FnMut() -> Vec<u8>> HeartbeatLoop<F> {
    /// A loop whose first heartbeat goes out at once. `body` builds each heartbeat's JSON
    /// (it must bound its own time and keep the body under 16 KiB); `now_signal` asks for an
    /// immediate heartbeat.
    pub fn new(
        client: Client,
        budget: SharedBudget,
        body: F,
        shared: Shared,
        now_signal: PushSignal,
    ) -> HeartbeatLoop<F> {
        if let Some((configured, used)) = lock_budget(&budget).heartbeat_stretched() {
            tracing::warn!(
                configured_s = configured.as_secs(),
                used_s = used.as_secs(),
                "GC_HEARTBEAT_INTERVAL_S is too short for the server's rate limit (100 requests per 15 min with config checks): heartbeats are stretched"
            );
        }
        HeartbeatLoop {
            client,
            schedule: HeartbeatSchedule::new(Instant::now(), fastrand::Rng::new()),
            budget,
            body,
            shared,
            now_signal,
        }
    }

    /// Runs until `shutdown` is set or `now_signal` is closed.
    pub fn run(&mut self, shutdown: &AtomicBool) {
        while !shutdown.load(Ordering::Relaxed) && !self.now_signal.is_closed() {
            self.step();
        }
    }

    /// One turn: sends the due heartbeat or waits (at most [`SHUTDOWN_POLL`]).
    pub fn step(&mut self) {
        let now = Instant::now();
        if self.now_signal.take() {
            self.schedule.request_now(now);
        }
        if !self.schedule.poll(now, &mut lock_budget(&self.budget)) {
            let wake = self
                .schedule
                .poll_timeout(now, &lock_budget(&self.budget))
                .unwrap_or(now + SHUTDOWN_POLL)
                .min(now + SHUTDOWN_POLL);
            if self.now_signal.wait_until(wake) {
                self.schedule.request_now(Instant::now());
            }
            return;
        }
        let body = (self.body)();
        let at_ms = now_ms();
        let result = self.client.heartbeat(&body);
        let done = Instant::now();
        self.schedule.on_done();
        let error = match result {
            Ok(rate) => {
                lock_budget(&self.budget).observe(done, &rate);
                None
            }
            Err(e) => {
                tracing::warn!(error = %e, "heartbeat failed");
                if let Some(rate) = e.rate_info() {
                    lock_budget(&self.budget).rate_limited(done, &rate);
                }
                // The server did not get it: try again soon, so that it does not judge us
                // gone (a 4xx would fail again, a 429 pauses everything anyway).
                if matches!(
                    e,
                    ClientError::Transport { .. } | ClientError::Status { code: 500.., .. }
                ) {
                    self.schedule.retry_soon(done);
                }
                Some(e.to_string())
            }
        };
        let mut s = self.shared.lock();
        if error.is_none() {
            s.counters.heartbeats_ok += 1;
        } else {
            s.counters.heartbeats_failed += 1;
        }
        s.heartbeat = Some(HeartbeatStatus {
            at_ms,
            ok: error.is_none(),
            error,
            body_bytes: body.len(),
        });
    }
}
