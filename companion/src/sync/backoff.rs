//! Exponential backoff with full jitter (AWS "Exponential Backoff And Jitter"): after the
//! n-th consecutive failure the delay is uniform in `[0, min(cap, start * 2^(n-1))]`.
//!
//! Full jitter spreads gateways that failed together (a server restart) over the whole
//! interval, and keeps the first retry at boot within [`BACKOFF_START`]. No clock inside: the
//! caller adds the delay to its own `now`. The random source is injected for repeatable tests.

use std::time::Duration;

/// Upper bound of the first delay.
pub const BACKOFF_START: Duration = Duration::from_secs(5);
/// Largest upper bound, however many failures.
pub const BACKOFF_CAP: Duration = Duration::from_secs(5 * 60);

/// Backoff state: the number of consecutive failures.
#[derive(Debug, Clone)]
pub struct Backoff {
    start: Duration,
    cap: Duration,
    failures: u32,
    rng: fastrand::Rng,
}

impl Backoff {
    /// [`BACKOFF_START`] to [`BACKOFF_CAP`], drawing from `rng`.
    pub fn new(rng: fastrand::Rng) -> Backoff {
        Backoff::with_limits(BACKOFF_START, BACKOFF_CAP, rng)
    }

    /// Custom limits (`cap` is raised to `start` if smaller).
    pub fn with_limits(start: Duration, cap: Duration, rng: fastrand::Rng) -> Backoff {
        Backoff {
            start,
            cap: cap.max(start),
            failures: 0,
            rng,
        }
    }

    /// The upper bound of the delay the next failure will draw from.
    pub fn ceiling(&self) -> Duration {
        let doublings = self.failures.min(31);
        self.start
            .checked_mul(1u32 << doublings)
            .map_or(self.cap, |d| d.min(self.cap))
    }

    /// Records a failure and returns how long to wait before the next attempt: uniform in
    /// `[0, ceiling]`, with millisecond resolution.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling_ms = u64::try_from(self.ceiling().as_millis()).unwrap_or(u64::MAX);
        self.failures = self.failures.saturating_add(1);
        Duration::from_millis(self.rng.u64(0..=ceiling_ms))
    }

    /// Records a success: the next failure starts again at [`BACKOFF_START`].
    pub fn reset(&mut self) {
        self.failures = 0;
    }

    /// Consecutive failures so far.
    pub fn failures(&self) -> u32 {
        self.failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_delay_is_within_start_and_uses_the_whole_range() {
        let mut max = Duration::ZERO;
        let mut min = BACKOFF_START;
        for seed in 0..500 {
            let mut b = Backoff::new(fastrand::Rng::with_seed(seed));
            let d = b.next_delay();
            assert!(d <= BACKOFF_START, "first delay {d:?} above 5 s");
            max = max.max(d);
            min = min.min(d);
        }
        // Full jitter: the draws cover [0, 5 s], not a narrow band around it.
        assert!(min < Duration::from_millis(250), "min {min:?}");
        assert!(max > Duration::from_millis(4750), "max {max:?}");
    }

    #[test]
    fn ceiling_doubles_then_stays_at_the_cap() {
        let mut b = Backoff::new(fastrand::Rng::with_seed(7));
        let mut ceilings = Vec::new();
        for _ in 0..12 {
            ceilings.push(b.ceiling().as_secs());
            let d = b.next_delay();
            assert!(d <= BACKOFF_CAP);
        }
        assert_eq!(
            ceilings,
            vec![5, 10, 20, 40, 80, 160, 300, 300, 300, 300, 300, 300]
        );
        for _ in 0..100 {
            b.next_delay();
        }
        assert_eq!(b.ceiling(), BACKOFF_CAP, "no overflow after many failures");
    }

    #[test]
    fn delays_grow_on_average_with_failures() {
        // Mean of uniform [0, c] is c/2: check the sample means follow the ceilings.
        for (failures, ceiling) in [(0u32, 5.0f64), (3, 40.0), (8, 300.0)] {
            let mut sum = 0.0;
            let n = 400;
            for seed in 0..n {
                let mut b = Backoff::new(fastrand::Rng::with_seed(seed));
                for _ in 0..failures {
                    b.next_delay();
                }
                sum += b.next_delay().as_secs_f64();
            }
            let mean = sum / n as f64;
            assert!(
                (mean - ceiling / 2.0).abs() < ceiling * 0.08,
                "after {failures} failures mean {mean} vs ceiling {ceiling}"
            );
        }
    }

    #[test]
    fn reset_returns_to_the_start() {
        let mut b = Backoff::new(fastrand::Rng::with_seed(1));
        for _ in 0..6 {
            b.next_delay();
        }
        assert!(b.ceiling() > BACKOFF_START);
        b.reset();
        assert_eq!(b.failures(), 0);
        assert_eq!(b.ceiling(), BACKOFF_START);
        assert!(b.next_delay() <= BACKOFF_START);
    }

    #[test]
    fn same_seed_gives_same_delays() {
        let mut a = Backoff::new(fastrand::Rng::with_seed(42));
        let mut b = Backoff::new(fastrand::Rng::with_seed(42));
        for _ in 0..10 {
            assert_eq!(a.next_delay(), b.next_delay());
        }
    }
}
