//! When heartbeats go out: the first at start, then every (budget-adjusted) heartbeat interval
//! with ±[`HEARTBEAT_JITTER`] jitter, at once when asked (a new config was applied), never two
//! in flight, and never against the [`Budget`]. Pure, like the rest of `sync`.

use std::time::{Duration, Instant};

use super::budget::{Budget, Class, HEARTBEAT_JITTER};

/// The heartbeat timetable.
#[derive(Debug, Clone)]
pub struct HeartbeatSchedule {
    next_due: Instant,
    in_flight: bool,
    rng: fastrand::Rng,
}

impl HeartbeatSchedule {
    /// A schedule whose first heartbeat is due at `now`.
    pub fn new(now: Instant, rng: fastrand::Rng) -> HeartbeatSchedule {
        HeartbeatSchedule {
            next_due: now,
            in_flight: false,
            rng,
        }
    }

    /// Asks for a heartbeat as soon as the budget allows (after applying a new config). If one
    /// is in flight, the next one follows it at once.
    pub fn request_now(&mut self, now: Instant) {
        self.next_due = self.next_due.min(now);
    }

    /// When the next heartbeat is due (before budget gating).
    pub fn next_due(&self) -> Instant {
        self.next_due
    }

    /// When [`HeartbeatSchedule::poll`] should be called next: `None` while one is in flight
    /// (call [`HeartbeatSchedule::on_done`] first).
    pub fn poll_timeout(&self, budget: &Budget) -> Option<Instant> {
        (!self.in_flight).then(|| budget.earliest(Class::Heartbeat, self.next_due))
    }

    /// Whether to send a heartbeat now. When true, a budget slot was taken, the schedule
    /// marks it in flight and sets the next due time (`now` + interval ± jitter).
    pub fn poll(&mut self, now: Instant, budget: &mut Budget) -> bool {
        if self.in_flight || now < self.next_due || !budget.try_acquire(Class::Heartbeat, now) {
            return false;
        }
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
            let at = s.poll_timeout(&budget).unwrap();
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
        assert_eq!(s.poll_timeout(&budget), None);
        assert!(!s.poll(t0 + Duration::from_secs(2), &mut budget));
        s.on_done();
        let at = s.poll_timeout(&budget).unwrap();
        assert!(at <= t0 + Duration::from_secs(2));
        assert!(s.poll(t0 + Duration::from_secs(2), &mut budget));
    }
}
