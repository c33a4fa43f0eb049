//! The request budget: how many `/api/v1/gateway/*` calls may go out, and when.
//!
//! The server allows [`SERVER_LIMIT`] successful requests (304 included) per
//! [`SERVER_WINDOW`] per source IP, over all gateway calls, shared by every gateway behind the
//! same NAT. The budget keeps a log of our own requests and never lets more than
//! `limit - SAFETY_MARGIN` of them into any sliding window (a sliding bound also bounds the
//! server's fixed window). It also believes the server, both ways: when `RateLimit-Remaining`
//! says fewer requests remain than our log suggests (other gateways on the same address), that
//! number holds until `RateLimit-Reset`; when it says more remain (the server does not count
//! failed requests, our log does; its fixed window restarted), the oldest entries of our log
//! stop counting against the total until it matches the server's count (they still count
//! against the sync share). A 429's `Retry-After` stops everything until then.
//!
//! Sharing: heartbeats come first, and their share is reserved by construction: regular
//! heartbeats are at least the shortest jittered interval ([`HEARTBEAT_JITTER`] below the
//! interval) apart, and at most [`IMMEDIATE_HEARTBEATS`] per window go out early (after an
//! applied config, see [`super::schedule`]), so no window holds more than
//! [`Budget::heartbeat_slots`] of them; hash checks and fetches (class [`Class::Sync`]) never
//! take more than the rest ([`Budget::sync_slots`]). So our own log does not hold a heartbeat
//! back (short of a smaller limit announced mid-window, which the server's own count then
//! corrects); only the server's word (its `RateLimit-Remaining`, a 429) can.
//!
//! The checks' cadence ([`Budget::check_interval`]) spreads the sync slots, minus
//! [`SYNC_RESERVE`] kept for fetches and pushes, evenly over the window. With the default 30 s
//! heartbeat that is 34 + 4 heartbeat slots and a check every 18 s, so a change the server
//! does not push (a route deletion) is applied within 20 s. When the configured heartbeat
//! interval would leave too few checks for that ([`MAX_CHECK_INTERVAL`]), the heartbeat is
//! stretched rather than the checks ([`Budget::heartbeat_stretched`] reports it), but never to
//! a jittered gap beyond [`MAX_HEARTBEAT_GAP`], half the server's default down threshold: a
//! server limit too small for both gets fewer checks instead.
//!
//! Pure: no clock, no I/O. `now` is always passed in; [`Budget::earliest`] says when a request
//! of a class becomes possible, in the manner of `quinn-proto`'s `poll_timeout`.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::client::RateInfo;

/// Requests the server allows per window and source IP.
pub const SERVER_LIMIT: u32 = 100;
/// The server's rate-limit window.
pub const SERVER_WINDOW: Duration = Duration::from_secs(15 * 60);
/// Requests per window never used: covers the delay between our send time and the server's
/// count, and a request in flight on the other thread.
pub const SAFETY_MARGIN: u32 = 5;
/// Sync slots per window held back from the even check cadence, for fetches after a change
/// and for fetches triggered by pushes.
pub const SYNC_RESERVE: u32 = 7;
/// Longest time between regular hash checks the plan aims for: a change the server does not
/// push is applied within 20 s (this, plus a round trip for the check and one for the fetch).
/// Heartbeats are stretched to make room for it, down to [`MAX_HEARTBEAT_GAP`].
pub const MAX_CHECK_INTERVAL: Duration = Duration::from_secs(18);
/// Heartbeats per window that may go out early, soon after an applied config, on top of
/// the regular ones; a request beyond them waits for the next regular heartbeat.
pub const IMMEDIATE_HEARTBEATS: u32 = 4;
/// The server's default `gateway_down_threshold_s`: a gateway is "not alive" this long after
/// its last heartbeat.
pub const SERVER_DOWN_THRESHOLD: Duration = Duration::from_secs(90);
/// Longest heartbeat gap the budget ever causes, half the server's down threshold: stretching
/// stops at an interval whose jittered maximum stays below it (40 s). An interval configured
/// longer than this is kept as configured.
pub const MAX_HEARTBEAT_GAP: Duration = Duration::from_secs(45);
/// Heartbeat interval jitter, as a fraction of the interval (±10 %).
pub const HEARTBEAT_JITTER: f64 = 0.10;
/// Slots kept free when following the server's own `RateLimit-Remaining` count.
pub const SERVER_MARGIN: u32 = 1;
/// Pause after a 429 that carries neither `Retry-After` nor `RateLimit-Reset`.
pub const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(60);
/// Shortest interval between regular hash checks, however generous the server's limit: a
/// deletion is still seen within 20 s, and an idle gateway does not hammer its server.
pub const MIN_CHECK_INTERVAL: Duration = Duration::from_secs(10);

/// The kind of a request, for sharing the budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// `POST /heartbeat`: first claim on the budget.
    Heartbeat,
    /// `GET /config/check` and `GET /config`: the rest.
    Sync,
}

/// What the server last said about its window.
#[derive(Debug, Clone, Copy)]
struct ServerView {
    remaining: u32,
    reset_at: Instant,
    sent_since: u32,
}

/// The request budget. See the module documentation.
#[derive(Debug, Clone)]
pub struct Budget {
    limit: u32,
    window: Duration,
    configured_heartbeat: Duration,
    heartbeat: Duration,
    /// Our requests: send time, class, and whether the server is believed to count it
    /// (cleared, oldest first, when the server reports more remaining than the log implies).
    log: VecDeque<(Instant, Class, bool)>,
    server: Option<ServerView>,
    paused_until: Option<Instant>,
}

/// A budget shared by the sync thread and the heartbeat thread.
pub type SharedBudget = Arc<Mutex<Budget>>;

impl Budget {
    /// The server's limits ([`SERVER_LIMIT`] per [`SERVER_WINDOW`]) with heartbeats every
    /// `heartbeat_interval` (`GC_HEARTBEAT_INTERVAL_S`).
    pub fn new(heartbeat_interval: Duration) -> Budget {
        Budget::with_limit(SERVER_LIMIT, SERVER_WINDOW, heartbeat_interval)
    }

    /// Custom limits (tests, or a server announcing a smaller `RateLimit-Limit`).
    pub fn with_limit(limit: u32, window: Duration, heartbeat_interval: Duration) -> Budget {
        let mut b = Budget {
            limit,
            window,
            configured_heartbeat: heartbeat_interval,
            heartbeat: heartbeat_interval,
            log: VecDeque::new(),
            server: None,
            paused_until: None,
        };
        b.plan();
        b
    }

    /// Wraps the budget for sharing between threads.
    pub fn shared(self) -> SharedBudget {
        Arc::new(Mutex::new(self))
    }

    /// Requests of ours allowed into any window.
    fn cap(&self) -> u32 {
        self.limit.saturating_sub(SAFETY_MARGIN).max(2)
    }

    /// Most heartbeats per window at interval `interval` with jitter.
    fn heartbeat_slots_for(&self, interval: Duration) -> u32 {
        let shortest = interval.as_secs_f64() * (1.0 - HEARTBEAT_JITTER);
        if shortest <= 0.0 {
            return u32::MAX;
        }
        (self.window.as_secs_f64() / shortest)
            .ceil()
            .min(f64::from(u32::MAX)) as u32
    }

    /// Check slots per window that [`MAX_CHECK_INTERVAL`] needs.
    fn wanted_check_slots(&self) -> u32 {
        (self.window.as_secs_f64() / MAX_CHECK_INTERVAL.as_secs_f64()).ceil() as u32
    }

    /// Longest interval the heartbeat is stretched to: its jittered maximum stays below
    /// [`MAX_HEARTBEAT_GAP`].
    fn longest_stretch() -> Duration {
        Duration::from_secs((MAX_HEARTBEAT_GAP.as_secs_f64() / (1.0 + HEARTBEAT_JITTER)) as u64)
    }

    /// Stretches the heartbeat interval when it would not leave the checks of
    /// [`MAX_CHECK_INTERVAL`] and the [`SYNC_RESERVE`], up to [`Budget::longest_stretch`].
    fn plan(&mut self) {
        let cap = self.cap();
        let max_regular = cap
            .saturating_sub(SYNC_RESERVE + self.wanted_check_slots() + IMMEDIATE_HEARTBEATS)
            .max(1);
        self.heartbeat = self.configured_heartbeat;
        if self.heartbeat_slots_for(self.heartbeat) > max_regular {
            let secs =
                self.window.as_secs_f64() / (f64::from(max_regular) * (1.0 - HEARTBEAT_JITTER));
            let stretched = Duration::from_secs(secs.ceil() as u64).min(Self::longest_stretch());
            self.heartbeat = stretched.max(self.configured_heartbeat);
        }
    }

    /// The heartbeat interval to use: the configured one, or longer when stretched.
    pub fn heartbeat_interval(&self) -> Duration {
        self.heartbeat
    }

    /// `Some((configured, used))` when the configured heartbeat interval did not fit.
    pub fn heartbeat_stretched(&self) -> Option<(Duration, Duration)> {
        (self.heartbeat != self.configured_heartbeat)
            .then_some((self.configured_heartbeat, self.heartbeat))
    }

    /// Heartbeat slots per window: the regular ones at the shortest jittered interval, plus
    /// [`IMMEDIATE_HEARTBEATS`].
    pub fn heartbeat_slots(&self) -> u32 {
        self.heartbeat_slots_for(self.heartbeat)
            .saturating_add(IMMEDIATE_HEARTBEATS)
    }

    /// The rate-limit window.
    pub fn window(&self) -> Duration {
        self.window
    }

    /// Sync (check + fetch) slots per window.
    pub fn sync_slots(&self) -> u32 {
        self.cap().saturating_sub(self.heartbeat_slots()).max(1)
    }

    fn live(&self, now: Instant) -> impl Iterator<Item = &(Instant, Class, bool)> {
        let window = self.window;
        self.log
            .iter()
            .filter(move |(t, _, _)| now.saturating_duration_since(*t) < window)
    }

    /// Our requests in the window ending now.
    pub fn sent_in_window(&self, now: Instant) -> usize {
        self.live(now).count()
    }

    /// Our requests in the window ending now that the server is believed to count.
    pub fn counted_in_window(&self, now: Instant) -> usize {
        self.live(now).filter(|e| e.2).count()
    }

    /// Earliest time `>= now` at which fewer than `n` of the matching entries are live:
    /// `class` None means every entry the server counts (the total cap); a class means all
    /// of its entries, counted or not (its share is a sliding bound on what we send).
    fn earliest_below(&self, now: Instant, n: u32, class: Option<Class>) -> Instant {
        let times: Vec<Instant> = self
            .live(now)
            .filter(|(_, c, counted)| class.map_or(*counted, |k| k == *c))
            .map(|(t, _, _)| *t)
            .collect();
        let n = n as usize;
        if times.len() < n {
            return now;
        }
        // The log is in time order: drop the oldest `len - n + 1`.
        times[times.len() - n] + self.window
    }

    fn server_available(&self, now: Instant) -> Option<(u32, Instant)> {
        let s = self.server?;
        (now < s.reset_at).then(|| (s.remaining.saturating_sub(s.sent_since), s.reset_at))
    }

    /// Heartbeats due before `reset_at`, counted from `t`.
    fn heartbeats_until(&self, t: Instant, reset_at: Instant) -> u32 {
        let shortest = self.heartbeat.as_secs_f64() * (1.0 - HEARTBEAT_JITTER);
        let left = reset_at.saturating_duration_since(t).as_secs_f64();
        if shortest <= 0.0 {
            return u32::MAX;
        }
        (left / shortest).ceil().min(f64::from(u32::MAX)) as u32
    }

    /// When a request of `class` may be sent, at the earliest (`now` when it may go now).
    pub fn earliest(&self, class: Class, now: Instant) -> Instant {
        let mut at = now;
        if let Some(p) = self.paused_until {
            at = at.max(p);
        }
        at = at.max(self.earliest_below(now, self.cap(), None));
        if class == Class::Sync {
            at = at.max(self.earliest_below(now, self.sync_slots(), Some(Class::Sync)));
        }
        if let Some((avail, reset_at)) = self.server_available(now) {
            let server_at = match class {
                Class::Heartbeat if avail >= 1 => now,
                Class::Heartbeat => reset_at,
                Class::Sync => {
                    // After this request, enough must remain for the heartbeats due before
                    // the reset: ceil((reset - t) / h) <= k  <=>  t >= reset - k * h.
                    let k = i64::from(avail) - 1 - i64::from(SERVER_MARGIN);
                    if k < 0 {
                        reset_at
                    } else {
                        let shortest = self.heartbeat.mul_f64(1.0 - HEARTBEAT_JITTER);
                        let span = shortest.saturating_mul(u32::try_from(k).unwrap_or(u32::MAX));
                        reset_at.checked_sub(span).unwrap_or(now).max(now)
                    }
                }
            };
            at = at.max(server_at);
        }
        at
    }

    /// Whether a request of `class` may go now.
    pub fn allows(&self, class: Class, now: Instant) -> bool {
        self.earliest(class, now) <= now
    }

    /// Takes a slot for a request of `class` about to be sent now. Returns false (and takes
    /// nothing) when the budget does not allow it.
    pub fn try_acquire(&mut self, class: Class, now: Instant) -> bool {
        if !self.allows(class, now) {
            return false;
        }
        self.prune(now);
        self.log.push_back((now, class, true));
        if let Some(s) = &mut self.server {
            s.sent_since = s.sent_since.saturating_add(1);
        }
        true
    }

    fn prune(&mut self, now: Instant) {
        while let Some((t, _, _)) = self.log.front() {
            if now.saturating_duration_since(*t) >= self.window {
                self.log.pop_front();
            } else {
                break;
            }
        }
        if let Some(p) = self.paused_until {
            if now >= p {
                self.paused_until = None;
            }
        }
    }

    /// Takes in what an answer's headers said. The server's `RateLimit-Limit` becomes ours (a
    /// server configured for more requests lets heartbeats run at their configured pace, one
    /// configured for fewer is respected); `RateLimit-Remaining` with `RateLimit-Reset` holds
    /// until that reset.
    pub fn observe(&mut self, now: Instant, rate: &RateInfo) {
        self.prune(now);
        if let Some(limit) = rate.limit {
            if limit > 0 && limit != self.limit {
                self.limit = limit;
                self.plan();
            }
        }
        if let Some(remaining) = rate.remaining {
            self.believe_more_remaining(now, remaining);
        }
        if let (Some(remaining), Some(reset_s)) = (rate.remaining, rate.reset_s) {
            self.server = Some(ServerView {
                remaining,
                reset_at: now + Duration::from_secs(reset_s),
                sent_since: 0,
            });
        }
    }

    /// The server wins when it counts fewer of our requests than our log (it does not count
    /// failed ones; its fixed window restarted): the oldest entries stop counting against the
    /// total cap until the log holds what the server counted, plus one for a request still in
    /// flight on the other thread. They still count against the sync share, so a burst of
    /// pushes cannot use the freed room; heartbeats can.
    fn believe_more_remaining(&mut self, now: Instant, remaining: u32) {
        let server_counted = self.limit.saturating_sub(remaining) as usize + 1;
        let mut counted = self.counted_in_window(now);
        for entry in self.log.iter_mut() {
            if counted <= server_counted {
                break;
            }
            if entry.2 {
                entry.2 = false;
                counted -= 1;
            }
        }
    }

    /// A 429: nothing at all goes out before `Retry-After` (else `RateLimit-Reset`, else
    /// [`DEFAULT_RETRY_AFTER`]).
    pub fn rate_limited(&mut self, now: Instant, rate: &RateInfo) {
        let wait = rate
            .retry_after_s
            .or(rate.reset_s)
            .map_or(DEFAULT_RETRY_AFTER, Duration::from_secs);
        let until = now + wait;
        self.paused_until = Some(self.paused_until.map_or(until, |p| p.max(until)));
        self.server = Some(ServerView {
            remaining: 0,
            reset_at: until,
            sent_since: 0,
        });
    }

    /// The end of a 429 pause, if one is running at `now`.
    pub fn paused_until(&self, now: Instant) -> Option<Instant> {
        self.paused_until.filter(|p| *p > now)
    }

    /// The interval between regular hash checks: the sync slots (less [`SYNC_RESERVE`]) spread
    /// evenly over the window (18 s at heartbeat intervals up to 30 s), and, while the server
    /// reports fewer remaining requests, what it leaves after the heartbeats spread evenly
    /// until its reset; never below [`MIN_CHECK_INTERVAL`].
    pub fn check_interval(&self, now: Instant) -> Duration {
        let slots = self.sync_slots().saturating_sub(SYNC_RESERVE).max(1);
        let mut interval = (self.window / slots).max(MIN_CHECK_INTERVAL);
        if let Some((avail, reset_at)) = self.server_available(now) {
            let left = i64::from(avail)
                - i64::from(self.heartbeats_until(now, reset_at))
                - i64::from(SERVER_MARGIN);
            if left > 0 {
                let spread = reset_at.saturating_duration_since(now) / left as u32;
                interval = interval.max(spread);
            }
        }
        interval
    }

    /// Requests left for us right now: the smaller of our own window and the server's count.
    pub fn remaining(&self, now: Instant) -> u32 {
        let own = self
            .cap()
            .saturating_sub(u32::try_from(self.counted_in_window(now)).unwrap_or(u32::MAX));
        match self.server_available(now) {
            Some((avail, _)) => own.min(avail),
            None => own,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HB30: Duration = Duration::from_secs(30);

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn default_plan_gives_34_plus_4_heartbeats_and_a_check_every_18_s() {
        let b = Budget::new(HB30);
        let now = Instant::now();
        assert_eq!(b.heartbeat_slots(), 34 + IMMEDIATE_HEARTBEATS);
        assert_eq!(b.sync_slots(), 57);
        assert_eq!(b.check_interval(now), MAX_CHECK_INTERVAL);
        assert_eq!(b.heartbeat_stretched(), None);
        assert!(
            b.heartbeat_slots() + b.sync_slots() <= SERVER_LIMIT - SAFETY_MARGIN,
            "the plan itself fits the limit"
        );
    }

    #[test]
    fn the_servers_announced_limit_replaces_ours_both_ways() {
        let t0 = Instant::now();
        let mut b = Budget::new(secs(5));
        assert!(
            b.heartbeat_stretched().is_some(),
            "100/15 min cannot carry 5 s beats"
        );
        let generous = RateInfo {
            limit: Some(1000),
            ..RateInfo::default()
        };
        b.observe(t0, &generous);
        assert_eq!(b.heartbeat_stretched(), None);
        assert_eq!(b.heartbeat_interval(), secs(5));
        assert_eq!(
            b.check_interval(t0),
            MIN_CHECK_INTERVAL,
            "generous, not hammering"
        );
        let strict = RateInfo {
            limit: Some(50),
            ..RateInfo::default()
        };
        b.observe(t0, &strict);
        assert!(b.heartbeat_interval() > secs(5));
        assert!(b.sync_slots() + b.heartbeat_slots() <= 50);
    }

    #[test]
    fn too_frequent_heartbeats_are_stretched_rather_than_the_checks() {
        let t0 = Instant::now();
        for configured in [1, 5, 10, 18, 25, 29] {
            let b = Budget::new(secs(configured));
            let (c, used) = b.heartbeat_stretched().expect("stretched");
            assert_eq!(c, secs(configured));
            assert_eq!(used, secs(30), "{configured} s");
            assert_eq!(b.check_interval(t0), MAX_CHECK_INTERVAL, "{configured} s");
            assert!(b.heartbeat_slots() + b.sync_slots() <= SERVER_LIMIT - SAFETY_MARGIN);
        }
        // Longer intervals are kept and leave more checks.
        for configured in [30, 45, 60, 300] {
            let b = Budget::new(secs(configured));
            assert_eq!(b.heartbeat_stretched(), None, "{configured} s");
            assert!(b.check_interval(t0) <= MAX_CHECK_INTERVAL, "{configured} s");
        }
    }

    #[test]
    fn stretching_never_makes_a_gap_of_half_the_down_threshold() {
        // A server announcing a small limit: heartbeats keep their gap, checks get fewer.
        for limit in [20, 40, 60, 80] {
            let mut b = Budget::new(secs(5));
            b.observe(
                Instant::now(),
                &RateInfo {
                    limit: Some(limit),
                    ..RateInfo::default()
                },
            );
            let longest = b.heartbeat_interval().mul_f64(1.0 + HEARTBEAT_JITTER);
            assert!(longest < MAX_HEARTBEAT_GAP, "limit {limit}: {longest:?}");
            assert_eq!(b.heartbeat_interval(), secs(40).min(b.heartbeat_interval()));
        }
        assert!(SERVER_DOWN_THRESHOLD / 2 == MAX_HEARTBEAT_GAP);
    }

    #[test]
    fn server_counting_fewer_of_our_requests_wins() {
        let t0 = Instant::now();
        let mut b = Budget::new(HB30);
        // Our log is full: 95 requests, 57 of them sync (some failed, which the server does
        // not count).
        let (mut sync, mut hb) = (0, 0);
        for i in 0..200 {
            let at = t0 + Duration::from_millis(i);
            if b.try_acquire(Class::Sync, at) {
                sync += 1;
            } else if b.try_acquire(Class::Heartbeat, at) {
                hb += 1;
            }
        }
        assert_eq!((sync, hb), (57, 38));
        let now = t0 + secs(1);
        assert!(!b.allows(Class::Heartbeat, now));
        assert_eq!(b.remaining(now), 0);
        let rate = |remaining| RateInfo {
            limit: Some(100),
            remaining: Some(remaining),
            reset_s: Some(600),
            retry_after_s: None,
        };
        // The server counted 90 of its 100: we believe 91 (one may be in flight).
        b.observe(now, &rate(10));
        assert_eq!(b.counted_in_window(now), 91);
        assert!(b.allows(Class::Heartbeat, now), "the server wins");
        assert_eq!(b.remaining(now), 4);
        // It says 24 remain: heartbeats go, the sync share still holds (a burst of pushes
        // cannot spend what the server's window restart freed).
        b.observe(now, &rate(24));
        assert_eq!(b.counted_in_window(now), 77);
        assert_eq!(b.sent_in_window(now), 95);
        assert!(b.allows(Class::Heartbeat, now));
        assert!(!b.allows(Class::Sync, now));
        assert_eq!(b.remaining(now), 18);
        // Fewer remaining than we think: believed too (until its reset).
        b.observe(now, &rate(3));
        assert_eq!(b.remaining(now), 3);
    }

    #[test]
    fn own_log_caps_every_window_and_frees_slots_as_they_age() {
        let t0 = Instant::now();
        let mut b = Budget::new(HB30);
        let mut sent = 0;
        for i in 0..200 {
            if b.try_acquire(Class::Heartbeat, t0 + Duration::from_millis(i)) {
                sent += 1;
            }
        }
        assert_eq!(
            sent, 95,
            "heartbeats may use everything but the safety margin"
        );
        assert!(!b.allows(Class::Heartbeat, t0 + secs(899)));
        assert_eq!(
            b.earliest(Class::Heartbeat, t0 + secs(1)),
            t0 + SERVER_WINDOW
        );
        assert!(b.allows(Class::Heartbeat, t0 + SERVER_WINDOW));
    }

    #[test]
    fn sync_requests_cannot_take_the_heartbeat_share() {
        let t0 = Instant::now();
        let mut b = Budget::new(HB30);
        let mut sent = 0;
        for i in 0..200 {
            if b.try_acquire(Class::Sync, t0 + Duration::from_millis(i)) {
                sent += 1;
            }
        }
        assert_eq!(sent, 57);
        assert!(b.allows(Class::Heartbeat, t0 + secs(1)));
        assert!(!b.allows(Class::Sync, t0 + secs(1)));
    }

    #[test]
    fn retry_after_stops_everything_until_it_passes() {
        let t0 = Instant::now();
        let mut b = Budget::new(HB30);
        let rate = RateInfo {
            limit: Some(100),
            remaining: Some(0),
            reset_s: Some(827),
            retry_after_s: Some(827),
        };
        b.rate_limited(t0, &rate);
        for class in [Class::Heartbeat, Class::Sync] {
            assert_eq!(b.earliest(class, t0), t0 + secs(827));
            assert!(!b.allows(class, t0 + secs(826)));
            assert!(b.allows(class, t0 + secs(827)));
        }
        assert_eq!(b.paused_until(t0 + secs(1)), Some(t0 + secs(827)));
    }

    #[test]
    fn server_reporting_fewer_remaining_is_believed() {
        let t0 = Instant::now();
        let mut b = Budget::new(HB30);
        // Other gateways behind the same NAT used most of the window: 3 left, reset in 600 s.
        b.observe(
            t0,
            &RateInfo {
                limit: Some(100),
                remaining: Some(3),
                reset_s: Some(600),
                retry_after_s: None,
            },
        );
        assert_eq!(b.remaining(t0), 3);
        // 600 s of heartbeats need more than 3 requests: no checks until the last
        // (shortest, 27 s) heartbeat interval before the reset.
        assert_eq!(b.earliest(Class::Sync, t0), t0 + secs(600 - 27));
        // Heartbeats still get the 3.
        for i in 0..3 {
            assert!(b.try_acquire(Class::Heartbeat, t0 + secs(30 * i)));
        }
        assert!(!b.allows(Class::Heartbeat, t0 + secs(90)));
        assert_eq!(b.earliest(Class::Heartbeat, t0 + secs(90)), t0 + secs(600));
        assert!(b.allows(Class::Heartbeat, t0 + secs(600)));
    }

    #[test]
    fn server_remaining_zero_blocks_until_its_reset() {
        let t0 = Instant::now();
        let mut b = Budget::new(HB30);
        b.observe(
            t0,
            &RateInfo {
                limit: Some(100),
                remaining: Some(0),
                reset_s: Some(120),
                retry_after_s: None,
            },
        );
        assert_eq!(b.earliest(Class::Heartbeat, t0), t0 + secs(120));
        assert_eq!(b.earliest(Class::Sync, t0), t0 + secs(120));
    }

    #[test]
    fn checks_allowed_near_reset_when_server_leaves_enough_for_heartbeats() {
        let t0 = Instant::now();
        let mut b = Budget::new(HB30);
        b.observe(
            t0,
            &RateInfo {
                limit: Some(100),
                remaining: Some(10),
                reset_s: Some(600),
                retry_after_s: None,
            },
        );
        // k = 10 - 1 - 1 = 8 heartbeats of 27 s fit in the last 216 s before the reset.
        assert_eq!(b.earliest(Class::Sync, t0), t0 + secs(600 - 216));
        // And the check cadence follows what the server leaves.
        let later = t0 + secs(500);
        let ci = b.check_interval(later);
        assert!(ci >= secs(16), "{ci:?}");
    }

    #[test]
    fn smaller_server_limit_lowers_ours() {
        let t0 = Instant::now();
        let mut b = Budget::new(HB30);
        b.observe(
            t0,
            &RateInfo {
                limit: Some(60),
                remaining: None,
                reset_s: None,
                retry_after_s: None,
            },
        );
        assert!(b.heartbeat_slots() + b.sync_slots() <= 60 - SAFETY_MARGIN);
        assert!(b.heartbeat_stretched().is_some());
    }
}
