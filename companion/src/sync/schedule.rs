//! When heartbeats go out: the first at start, then every (budget-adjusted) heartbeat interval
//! with ±[`HEARTBEAT_JITTER`] jitter after the previous one, never two in flight, and never
//! against the [`Budget`]. When asked (a config with a new hash was applied) one goes out
//! early: [`EARLY_DEBOUNCE`] after the last request (a burst of applies is answered once, with
//! its final hash), but no later than [`EARLY_MAX_WAIT`] after the first, well inside the 10 s
//! the server's pool changes wait for it. At most [`IMMEDIATE_HEARTBEATS`] go out early per
//! window; beyond them a request waits for the next regular heartbeat, which carries the same
//! news. Requests coalesce: however many arrive before a heartbeat is sent, one heartbeat
//! answers them. That keeps the heartbeats inside the share the budget reserved for them (see
//! [`super::budget`]). Pure, like the rest of `sync`.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::budget::{Budget, Class, HEARTBEAT_JITTER, IMMEDIATE_HEARTBEATS};

/// Quiet time after the last request before an early heartbeat goes: applies closer than
/// this (an admin's burst of edits, each pushed) share one.
pub const EARLY_DEBOUNCE: Duration = Duration::from_millis(1500);
/// Longest wait of a request for its early heartbeat, however long the burst.
pub const EARLY_MAX_WAIT: Duration = Duration::from_secs(6);
/// Delay of the retry after a heartbeat the server did not get (no answer, 5xx): with the
/// longest regular interval (33 s at 30 s) the server still hears from us within 45 s.
/// Retries are early heartbeats, so they share [`IMMEDIATE_HEARTBEATS`].
pub const FAILED_RETRY_DELAY: Duration = Duration::from_secs(5);

/// The heartbeat timetable.
#[derive(Debug, Clone)]
pub struct HeartbeatSchedule {
    next_due: Instant,
    /// A pending request for an early heartbeat: (first, last) request times.
    wanted: Option<(Instant, Instant)>,
    /// A pending retry of a failed heartbeat.
    retry_at: Option<Instant>,
    immediates: VecDeque<Instant>,
    in_flight: bool,
    rng: fastrand::Rng,
}

impl HeartbeatSchedule {
    /// A schedule whose first heartbeat is due at `now`.
    pub fn new(now: Instant, rng: fastrand::Rng) -> HeartbeatSchedule {
        HeartbeatSchedule {
            next_due: now,
            wanted: None,
            retry_at: None,
            immediates: VecDeque::new(),
            in_flight: false,
            rng,
        }
    }

    /// Asks for an early heartbeat (after applying a config with a new hash). If one is in
    /// flight, another follows it (its body predates the news).
    pub fn request_now(&mut self, now: Instant) {
        let first = self.wanted.map_or(now, |(first, _)| first);
        self.wanted = Some((first, now));
    }

    /// When the next regular heartbeat is due (before budget gating).
    pub fn next_due(&self) -> Instant {
        self.next_due
    }

    /// The heartbeat just sent got no answer or a 5xx: try again [`FAILED_RETRY_DELAY`]
    /// after `now` (if the early quota allows; else at the regular time).
    pub fn retry_soon(&mut self, now: Instant) {
        self.retry_at = Some(now + FAILED_RETRY_DELAY);
    }

    /// When an early heartbeat may go, at the earliest: None (any time) while fewer than
    /// [`IMMEDIATE_HEARTBEATS`] went early within the window before `now`.
    fn immediate_free_at(&self, now: Instant, window: Duration) -> Option<Instant> {
        let live: Vec<Instant> = self
            .immediates
            .iter()
            .copied()
            .filter(|t| now.saturating_duration_since(*t) < window)
            .collect();
        let n = IMMEDIATE_HEARTBEATS as usize;
        (live.len() >= n).then(|| live[live.len() - n] + window)
    }

    /// When the next heartbeat is due: the regular time, or earlier for a pending request.
    fn due(&self, now: Instant, budget: &Budget) -> Instant {
        let requested = self
            .wanted
            .map(|(first, last)| (last + EARLY_DEBOUNCE).min(first + EARLY_MAX_WAIT));
        let early = match (requested, self.retry_at) {
            (Some(a), Some(b)) => a.min(b),
            (a, b) => match a.or(b) {
                Some(t) => t,
                None => return self.next_due,
            },
        };
        let early = match self.immediate_free_at(now, budget.window()) {
            Some(free_at) => early.max(free_at),
            None => early,
        };
        self.next_due.min(early)
    }

    /// When [`HeartbeatSchedule::poll`] should be called next: `None` while one is in flight
    /// (call [`HeartbeatSchedule::on_done`] first). `now` is the caller's current time.
    pub fn poll_timeout(&self, now: Instant, budget: &Budget) -> Option<Instant> {
        (!self.in_flight).then(|| budget.earliest(Class::Heartbeat, self.due(now, budget)))
    }

    /// Whether to send a heartbeat now. When true, a budget slot was taken, the schedule
    /// marks it in flight and sets the next due time (`now` + interval ± jitter).
    pub fn poll(&mut self, now: Instant, budget: &mut Budget) -> bool {
        if self.in_flight || now < self.due(now, budget) {
            return false;
        }
        let early = now < self.next_due;
        if !budget.try_acquire(Class::Heartbeat, now) {
            return false;
        }
        if early {
            let window = budget.window();
            while self
                .immediates
                .front()
                .is_some_and(|t| now.saturating_duration_since(*t) >= window)
            {
                self.immediates.pop_front();
            }
            self.immediates.push_back(now);
        }
        self.wanted = None;
        self.retry_at = None;
        self.in_flight = true;
        self.next_due = now + self.jittered(budget.heartbeat_interval());
        true
    }

    /// The heartbeat sent by the last successful [`HeartbeatSchedule::poll`] has finished
    /// (whatever the outcome).
    pub fn on_done(&mut self) {
        self.in_flight = false;
    }

    fn jittered(&mut self, interval: Duration) -> Duration {
        let factor = 1.0 - HEARTBEAT_JITTER + 2.0 * HEARTBEAT_JITTER * self.rng.f64();
        interval.mul_f64(factor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_heartbeat_at_start_then_interval_with_ten_percent_jitter() {
        let t0 = Instant::now();
        let mut budget = Budget::new(Duration::from_secs(30));
        let mut s = HeartbeatSchedule::new(t0, fastrand::Rng::with_seed(3));
        assert!(s.poll(t0, &mut budget));
        let mut gaps = Vec::new();
        let mut last = t0;
        for _ in 0..200 {
            s.on_done();
            let at = s.poll_timeout(last, &budget).unwrap();
            assert!(
                s.poll(at, &mut budget) || {
                    // Budget-gated: wait for it.
                    let b_at = budget.earliest(Class::Heartbeat, at);
                    s.poll(b_at, &mut budget)
                }
            );
            gaps.push((at - last).as_secs_f64());
            last = at;
        }
        let min = gaps.iter().cloned().fold(f64::MAX, f64::min);
        let max = gaps.iter().cloned().fold(0.0, f64::max);
        assert!(min >= 27.0 && max <= 33.0, "gaps {min}..{max}");
        assert!(max - min > 4.0, "jitter is actually applied: {min}..{max}");
    }

    #[test]
    fn never_two_in_flight_and_a_request_follows_after_the_debounce() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut budget = Budget::new(Duration::from_secs(30));
        let mut s = HeartbeatSchedule::new(t0, fastrand::Rng::with_seed(3));
        assert!(s.poll(t0, &mut budget));
        s.request_now(t0 + ms(1000));
        assert_eq!(s.poll_timeout(t0 + ms(1000), &budget), None);
        assert!(!s.poll(t0 + ms(2600), &mut budget), "in flight");
        s.on_done();
        let at = s.poll_timeout(t0 + ms(2600), &budget).unwrap();
        assert_eq!(at, t0 + ms(1000) + EARLY_DEBOUNCE);
        assert!(s.poll(t0 + ms(2600), &mut budget));
    }

    /// Steps `s` every 100 ms from `from` for `span`, calling `request` first at each step;
    /// returns the send times.
    fn run(
        s: &mut HeartbeatSchedule,
        budget: &mut Budget,
        from: Instant,
        span: Duration,
        mut request: impl FnMut(Duration) -> bool,
    ) -> Vec<Instant> {
        let mut sent = Vec::new();
        let mut elapsed = Duration::ZERO;
        while elapsed <= span {
            let t = from + elapsed;
            if request(elapsed) {
                s.request_now(t);
            }
            if s.poll(t, budget) {
                sent.push(t);
                s.on_done();
            }
            elapsed += Duration::from_millis(100);
        }
        sent
    }

    #[test]
    fn a_failed_heartbeat_is_retried_after_5_s_within_the_early_quota() {
        let t0 = Instant::now();
        let mut budget = Budget::new(Duration::from_secs(30));
        let mut s = HeartbeatSchedule::new(t0, fastrand::Rng::with_seed(5));
        let mut t = t0;
        let mut sent = Vec::new();
        // The server is down for 60 s: every heartbeat fails.
        while t < t0 + Duration::from_secs(120) {
            assert!(s.poll(t, &mut budget));
            sent.push((t - t0).as_secs_f64());
            s.on_done();
            if t < t0 + Duration::from_secs(60) {
                s.retry_soon(t);
            }
            t = s.poll_timeout(t, &budget).unwrap();
        }
        assert_eq!(&sent[..5], [0.0, 5.0, 10.0, 15.0, 20.0], "{sent:?}");
        // The quota is spent: regular heartbeats from then on.
        assert!(sent[5] >= 47.0, "{sent:?}");
    }

    #[test]
    fn one_early_heartbeat_after_a_quiet_moment_answers_many_requests() {
        let t0 = Instant::now();
        let mut budget = Budget::new(Duration::from_secs(30));
        let mut s = HeartbeatSchedule::new(t0, fastrand::Rng::with_seed(5));
        assert!(s.poll(t0, &mut budget));
        s.on_done();
        // Five applies 300 ms apart, from 2 s on: one heartbeat, 1.5 s after the last.
        let sent = run(&mut s, &mut budget, t0, Duration::from_secs(10), |e| {
            let ms = e.as_millis();
            (2000..=3200).contains(&ms) && ms % 300 == 200
        });
        let ms: Vec<u128> = sent.iter().map(|t| (*t - t0).as_millis()).collect();
        assert_eq!(ms, [3200 + 1500]);
    }

    #[test]
    fn early_heartbeats_are_limited_per_window_and_a_burst_waits_at_most_6_s() {
        let t0 = Instant::now();
        let mut budget = Budget::new(Duration::from_secs(30));
        let mut s = HeartbeatSchedule::new(t0, fastrand::Rng::with_seed(5));
        assert!(s.poll(t0, &mut budget));
        s.on_done();
        // 60 applies 1.1 s apart (66 s): never quiet for 1.5 s, so each early heartbeat goes
        // 6 s after the first request it answers; 4 of them, then only regular ones.
        let start = t0 + Duration::from_secs(1);
        let sent = run(&mut s, &mut budget, start, Duration::from_secs(70), |e| {
            e.as_millis() % 1100 == 0 && e < Duration::from_secs(66)
        });
        let at: Vec<f64> = sent.iter().map(|t| (*t - start).as_secs_f64()).collect();
        assert_eq!(at[0], 6.0, "{at:?}");
        let early = at.iter().filter(|a| **a < 28.0).count();
        assert_eq!(early, IMMEDIATE_HEARTBEATS as usize, "{at:?}");
        for w in at.windows(2).skip(IMMEDIATE_HEARTBEATS as usize - 1) {
            assert!(
                w[1] - w[0] >= 27.0 - 1e-9,
                "regular spacing after the early ones: {at:?}"
            );
        }
        // Once the early ones age out of the window, a request is answered early again.
        let later = start + budget.window() + Duration::from_secs(10);
        let mut t = *sent.last().unwrap();
        while t < later {
            t = s.poll_timeout(t, &budget).unwrap();
            assert!(s.poll(t, &mut budget));
            s.on_done();
        }
        s.request_now(t + Duration::from_secs(1));
        assert_eq!(
            s.poll_timeout(t + Duration::from_secs(1), &budget),
            Some(t + Duration::from_secs(1) + EARLY_DEBOUNCE)
        );
    }

    #[test]
    fn heartbeats_never_wait_for_our_own_log_whatever_the_sync_traffic() {
        let t0 = Instant::now();
        let mut budget = Budget::new(Duration::from_secs(30));
        let mut s = HeartbeatSchedule::new(t0, fastrand::Rng::with_seed(6));
        let mut last = t0;
        let mut t = t0;
        let mut longest = Duration::ZERO;
        for step in 0..20_000u32 {
            t = t0 + Duration::from_millis(250) * step;
            // Sync takes every slot it can; configs are applied every 5 s.
            budget.try_acquire(Class::Sync, t);
            if step % 20 == 0 {
                s.request_now(t);
            }
            if s.poll(t, &mut budget) {
                longest = longest.max(t - last);
                last = t;
                s.on_done();
            }
        }
        longest = longest.max(t - last);
        assert!(longest <= Duration::from_secs(33), "{longest:?}");
        assert!(budget.sent_in_window(t) <= 95);
    }
}
