//! `X-Gateway-Token` checking and the failed-auth rate limit.
//!
//! The limiter is a pure state machine over a caller-supplied `Instant`, so its rules are
//! tested without sleeping. Its table is bounded: past [`AUTH_TABLE_CAP`] addresses, expired
//! entries go first, then the least recently seen.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use subtle::ConstantTimeEq;

/// Failed attempts from one address allowed within [`AUTH_FAILURE_WINDOW`].
pub const AUTH_FAILURE_LIMIT: u32 = 10;
/// The window over which failures are counted.
pub const AUTH_FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// How long an address that went over the limit gets 429 for a failed attempt.
pub const AUTH_BLOCK: Duration = Duration::from_secs(5 * 60);
/// Most addresses the limiter remembers at once.
pub const AUTH_TABLE_CAP: usize = 256;

/// Whether `given` equals `expected`, in time independent of where they differ.
pub fn token_matches(given: &[u8], expected: &[u8]) -> bool {
    given.ct_eq(expected).into()
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    window_start: Instant,
    failures: u32,
    blocked_until: Option<Instant>,
    last_seen: Instant,
}

/// Counts failed authentications per source address and blocks noisy ones for a while.
/// A correct token is never refused by this limiter (callers consult it only on failure).
#[derive(Debug)]
pub struct FailureLimiter {
    entries: HashMap<IpAddr, Entry>,
    limit: u32,
    window: Duration,
    block: Duration,
    cap: usize,
}

impl Default for FailureLimiter {
    fn default() -> Self {
        Self::new(
            AUTH_FAILURE_LIMIT,
            AUTH_FAILURE_WINDOW,
            AUTH_BLOCK,
            AUTH_TABLE_CAP,
        )
    }
}

impl FailureLimiter {
    /// A limiter allowing `limit` failures per `window`, then blocking for `block`,
    /// remembering at most `cap` addresses (at least 1).
    pub fn new(limit: u32, window: Duration, block: Duration, cap: usize) -> Self {
        FailureLimiter {
            entries: HashMap::new(),
            limit,
            window,
            block,
            cap: cap.max(1),
        }
    }

    /// How much longer `ip` stays blocked, if it is.
    pub fn blocked_for(&self, ip: IpAddr, now: Instant) -> Option<Duration> {
        let until = self.entries.get(&ip)?.blocked_until?;
        (until > now).then(|| until - now)
    }

    /// Records one failed attempt from `ip`.
    pub fn record_failure(&mut self, ip: IpAddr, now: Instant) {
        if !self.entries.contains_key(&ip) && self.entries.len() >= self.cap {
            self.evict(now);
        }
        let e = self.entries.entry(ip).or_insert(Entry {
            window_start: now,
            failures: 0,
            blocked_until: None,
            last_seen: now,
        });
        e.last_seen = now;
        if e.blocked_until.is_some_and(|u| u <= now) {
            e.blocked_until = None;
            e.failures = 0;
            e.window_start = now;
        }
        if now.duration_since(e.window_start) >= self.window {
            e.window_start = now;
            e.failures = 0;
        }
        e.failures = e.failures.saturating_add(1);
        if e.failures >= self.limit && e.blocked_until.is_none() {
            e.blocked_until = Some(now + self.block);
        }
    }

    /// Addresses currently remembered.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no address is remembered.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn evict(&mut self, now: Instant) {
        let (window, before) = (self.window, self.entries.len());
        self.entries.retain(|_, e| match e.blocked_until {
            Some(u) => u > now,
            None => now.duration_since(e.window_start) < window,
        });
        if self.entries.len() < before {
            return;
        }
        if let Some(oldest) = self
            .entries
            .iter()
            .min_by_key(|(_, e)| (e.blocked_until.is_some_and(|u| u > now), e.last_seen))
            .map(|(ip, _)| *ip)
        {
            self.entries.remove(&oldest);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn ip(n: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, 8, 0, n))
    }

    #[test]
    fn tenth_failure_in_a_minute_blocks_that_address_only() {
        let t0 = Instant::now();
        let mut l = FailureLimiter::default();
        for i in 0..9 {
            l.record_failure(ip(1), t0 + Duration::from_secs(i));
            assert_eq!(l.blocked_for(ip(1), t0 + Duration::from_secs(i)), None);
        }
        l.record_failure(ip(1), t0 + Duration::from_secs(9));
        let now = t0 + Duration::from_secs(10);
        assert!(l.blocked_for(ip(1), now).is_some());
        assert_eq!(l.blocked_for(ip(2), now), None);
        // The block ends after AUTH_BLOCK.
        let later = t0 + Duration::from_secs(9) + AUTH_BLOCK;
        assert_eq!(l.blocked_for(ip(1), later), None);
    }

    #[test]
    fn failures_spread_over_more_than_the_window_never_block() {
        let t0 = Instant::now();
        let mut l = FailureLimiter::default();
        for i in 0..100u64 {
            let now = t0 + Duration::from_secs(i * 7);
            l.record_failure(ip(1), now);
            assert_eq!(l.blocked_for(ip(1), now), None, "blocked at failure {i}");
        }
    }

    #[test]
    fn table_stays_bounded_and_keeps_blocked_addresses_over_idle_ones() {
        let t0 = Instant::now();
        let mut l = FailureLimiter::new(2, Duration::from_secs(60), Duration::from_secs(300), 4);
        l.record_failure(ip(1), t0);
        l.record_failure(ip(1), t0);
        for n in 2..50 {
            l.record_failure(ip(n), t0 + Duration::from_secs(u64::from(n)));
            assert!(l.len() <= 4);
        }
        assert!(l.blocked_for(ip(1), t0 + Duration::from_secs(50)).is_some());
    }

    #[test]
    fn token_comparison_needs_every_byte() {
        assert!(token_matches(b"abc", b"abc"));
        assert!(!token_matches(b"abd", b"abc"));
        assert!(!token_matches(b"ab", b"abc"));
        assert!(!token_matches(b"", b"abc"));
    }
}
