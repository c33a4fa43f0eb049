//! When heartbeats go out: the first at start, then every (budget-adjusted) heartbeat interval
//! with ±[`HEARTBEAT_JITTER`] jitter after the previous one, never two in flight, and never
//! against the [`Budget`]. When asked (a config with a new hash was applied) one goes out at
//! once, if fewer than [`IMMEDIATE_HEARTBEATS`] went out early in the last window; otherwise
//! the request waits for the next regular heartbeat, which carries the same news. Requests
//! coalesce: however many arrive before a heartbeat is sent, one heartbeat answers them. That
//! keeps the heartbeats inside the share the budget reserved for them (see [`super::budget`]).
//! Pure, like the rest of `sync`.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::budget::{Budget, Class, HEARTBEAT_JITTER, IMMEDIATE_HEARTBEATS};

/// The heartbeat timetable.
#[derive(Debug, Clone)]
pub struct HeartbeatSchedule {
    next_due: Instant,
    wanted_now: bool,
    immediates: VecDeque<Instant>,
    in_flight: bool,
    rng: fastrand::Rng,
}

impl HeartbeatSchedule {
    /// A schedule whose first heartbeat is due at `now`.
    pub fn new(now: Instant, rng: fastrand::Rng) -> HeartbeatSchedule {
        HeartbeatSchedule {
            next_due: now,
            wanted_now: false,
            immediates: VecDeque::new(),
            in_flight: false,
            rng,
        }
    }

    /// Asks for a heartbeat as soon as possible (after applying a new config). If one is in
    /// flight, the next one may follow it at once (its body predates the news).
    pub fn request_now(&mut self, _now: Instant) {
        self.wanted_now = true;
    }

    /// When the next regular heartbeat is due (before budget gating).
    pub fn next_due(&self) -> Instant {
        self.next_due
    }

    /// When an early heartbeat may go, at the earliest: `now` while fewer than
    /// [`IMMEDIATE_HEARTBEATS`] went early within the window before.
    fn immediate_free_at(&self, now: Instant, window: Duration) -> Instant {
        let live: Vec<Instant> = self
            .immediates
            .iter()
            .copied()
            .filter(|t| now.saturating_duration_since(*t) < window)
            .collect();
        let n = IMMEDIATE_HEARTBEATS as usize;
        if live.len() < n {
            now
        } else {
            live[live.len() - n] + window
        }
    }

    /// When the next heartbeat is due: the regular time, or earlier for a pending request.
    fn due(&self, now: Instant, budget: &Budget) -> Instant {
        if self.wanted_now {
            self.next_due
                .min(self.immediate_free_at(now, budget.window()))
        } else {
            self.next_due
        }
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
        self.wanted_now = false;
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
    fn never_two_in_flight_and_request_now_follows_at_once() {
        let t0 = Instant::now();
        let mut budget = Budget::new(Duration::from_secs(30));
        let mut s = HeartbeatSchedule::new(t0, fastrand::Rng::with_seed(3));
        assert!(s.poll(t0, &mut budget));
        s.request_now(t0 + Duration::from_secs(1));
        assert_eq!(s.poll_timeout(t0 + Duration::from_secs(1), &budget), None);
        assert!(!s.poll(t0 + Duration::from_secs(2), &mut budget));
        s.on_done();
        let at = s
            .poll_timeout(t0 + Duration::from_secs(2), &budget)
            .unwrap();
        assert!(at <= t0 + Duration::from_secs(2));
        assert!(s.poll(t0 + Duration::from_secs(2), &mut budget));
    }

    #[test]
    fn early_heartbeats_are_limited_per_window_and_requests_coalesce() {
        let t0 = Instant::now();
        let mut budget = Budget::new(Duration::from_secs(30));
        let mut s = HeartbeatSchedule::new(t0, fastrand::Rng::with_seed(5));
        assert!(s.poll(t0, &mut budget));
        s.on_done();
        // 25 applied configs, one every 1.1 s: the first IMMEDIATE_HEARTBEATS go at once,
        // the rest wait for the regular heartbeat.
        let mut sent = Vec::new();
        for i in 1..=25u32 {
            let at = t0 + Duration::from_millis(1100) * i;
            s.request_now(at);
            s.request_now(at); // coalesced
            if s.poll(at, &mut budget) {
                sent.push(at);
                s.on_done();
            }
        }
        assert_eq!(sent.len(), IMMEDIATE_HEARTBEATS as usize, "{sent:?}");
        // Still wanted: due at the regular time, not before.
        let last = *sent.last().unwrap();
        let due = s.poll_timeout(last, &budget).unwrap();
        assert!(due >= last + Duration::from_secs(27), "{:?}", due - last);
        assert!(due <= last + Duration::from_secs(33), "{:?}", due - last);
        // Once the early ones age out of the window, a request goes at once again.
        let later = t0 + budget.window() + Duration::from_secs(60);
        let mut t = due;
        while t < later {
            assert!(s.poll(t, &mut budget));
            s.on_done();
            t = s.poll_timeout(t, &budget).unwrap();
        }
        let now = t - Duration::from_secs(5);
        s.request_now(now);
        assert_eq!(s.poll_timeout(now, &budget), Some(now));
        assert!(s.poll(now, &mut budget));
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
