//! Keeping the config in sync with GateControl (protocol §3), and the request budget that
//! heartbeats share.
//!
//! Pure state machines, driven by virtual time in tests (no sockets, no clock inside; `now`
//! is passed in and `poll_timeout` says when to look again, as in `quinn-proto`):
//! - [`backoff`]: exponential backoff with full jitter (5 s to 5 min).
//! - [`budget`]: at most 100 requests per 15 min per source IP, heartbeats first, the rest
//!   spread over hash checks; believes the server's `RateLimit-*` and `Retry-After`.
//! - [`schedule`]: when heartbeats go out (interval ±10 %, early after an apply that changed
//!   the hash, at most [`budget::IMMEDIATE_HEARTBEATS`] per window).
//! - [`engine`]: when to check, fetch, retry; pushes; the stored hash.
//!
//! And their driver on real threads and the HTTP [`crate::client::Client`]: [`driver`].
//!
//! Wiring (in `main`):
//! ```text
//! let budget = Budget::new(env.heartbeat_interval).shared();
//! let (push, hb_now) = (PushSignal::new(), PushSignal::new());
//! // management API: push.notify() on /api/config-changed
//! thread::spawn(move || SyncLoop::new(client.clone(), stored_hash, budget.clone(), sink,
//!                                     shared.clone(), push, hb_now.clone()).run(&SHUTDOWN));
//! thread::spawn(move || HeartbeatLoop::new(client, budget, build_body, shared, hb_now)
//!                                     .run(&SHUTDOWN));
//! ```

pub mod backoff;
pub mod budget;
pub mod driver;
pub mod engine;
pub mod schedule;

#[cfg(test)]
mod simulation;

pub use backoff::Backoff;
pub use budget::{Budget, Class, SharedBudget};
pub use driver::{ApplyOutcome, ConfigSink, HeartbeatLoop, PushSignal, SyncLoop};
pub use engine::{Action, Failure, FetchResult, SyncEngine};
pub use schedule::HeartbeatSchedule;
