//! Login attempts per source address: at most [`ATTEMPTS`] per [`WINDOW`], and
//! [`FAILURES`] wrong passwords within the window lock the address out for [`LOCKOUT`].
//!
//! A pure state machine over caller-supplied `Instant`s (tested in virtual time). IPv6
//! callers are counted per /64 (one host owns a whole /64). The table holds at most `cap`
//! sources: idle ones (window over, not locked) are dropped first, then the least recently
//! seen unlocked one; when every entry is a live lockout, a new source is refused until one
//! expires, so an attacker with many addresses cannot grow memory nor wash out lockouts
//! (it has spent `cap` x [`FAILURES`] guesses by then; loopback is never limited).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::time::{Duration, Instant};

/// Login attempts (right or wrong) one source may make per [`WINDOW`].
pub const ATTEMPTS: u32 = 30;
/// Wrong passwords within [`WINDOW`] that lock a source out.
pub const FAILURES: u32 = 5;
/// The counting window.
pub const WINDOW: Duration = Duration::from_secs(15 * 60);
/// How long a locked-out source is refused.
pub const LOCKOUT: Duration = Duration::from_secs(30 * 60);
/// Sources remembered at most.
pub const TABLE_CAP: usize = 1024;

/// Why an attempt may not go ahead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Too many wrong passwords: locked out for this long still.
    LockedOut(Duration),
    /// Too many attempts in the window: wait this long.
    TooMany(Duration),
    /// The table is full of live lockouts: try again later.
    Full,
}

impl Refusal {
    /// Seconds to put in `Retry-After`.
    pub fn retry_after_s(self) -> u64 {
        match self {
            Refusal::LockedOut(d) | Refusal::TooMany(d) => d.as_secs().max(1),
            Refusal::Full => 60,
        }
    }
}

/// What a failure led to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterFailure {
    /// Still allowed to try, this many wrong passwords left in the window.
    Left(u32),
    /// This failure locked the source out.
    LockedOut,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    window_start: Instant,
    attempts: u32,
    failures: u32,
    locked_until: Option<Instant>,
    last_seen: Instant,
}

/// The limiter (see the module docs).
#[derive(Debug)]
pub struct LoginLimiter {
    entries: HashMap<IpAddr, Entry>,
    cap: usize,
}

impl Default for LoginLimiter {
    fn default() -> Self {
        Self::new(TABLE_CAP)
    }
}

/// The key a source is counted under: IPv4 as is, IPv6 by its /64.
pub fn source_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

impl LoginLimiter {
    /// A limiter remembering at most `cap` sources (at least 1).
    pub fn new(cap: usize) -> Self {
        LoginLimiter {
            entries: HashMap::new(),
            cap: cap.max(1),
        }
    }

    /// Sources remembered.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no source is remembered.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether `ip` is locked out now (for the page: no form while locked).
    pub fn locked_for(&self, ip: IpAddr, now: Instant) -> Option<Duration> {
        let until = self.entries.get(&source_key(ip))?.locked_until?;
        (until > now).then(|| until - now)
    }

    /// Counts one login attempt from `ip`, or says why it may not go ahead (then nothing is
    /// counted and the password must not be checked).
    pub fn begin(&mut self, ip: IpAddr, now: Instant) -> Result<(), Refusal> {
        let key = source_key(ip);
        if !self.entries.contains_key(&key) && self.entries.len() >= self.cap && !self.evict(now) {
            return Err(Refusal::Full);
        }
        let e = self.entries.entry(key).or_insert(Entry {
            window_start: now,
            attempts: 0,
            failures: 0,
            locked_until: None,
            last_seen: now,
        });
        e.last_seen = now;
        if let Some(until) = e.locked_until {
            if until > now {
                return Err(Refusal::LockedOut(until - now));
            }
            *e = Entry {
                window_start: now,
                attempts: 0,
                failures: 0,
                locked_until: None,
                last_seen: now,
            };
        }
        if now.duration_since(e.window_start) >= WINDOW {
            e.window_start = now;
            e.attempts = 0;
            e.failures = 0;
        }
        if e.attempts >= ATTEMPTS {
            return Err(Refusal::TooMany(
                (e.window_start + WINDOW).saturating_duration_since(now),
            ));
        }
        e.attempts += 1;
        Ok(())
    }

    /// Records that the attempt begun for `ip` had a wrong password.
    pub fn failed(&mut self, ip: IpAddr, now: Instant) -> AfterFailure {
        let Some(e) = self.entries.get_mut(&source_key(ip)) else {
            return AfterFailure::Left(FAILURES);
        };
        e.failures = e.failures.saturating_add(1);
        if e.failures >= FAILURES {
            e.locked_until = Some(now + LOCKOUT);
            AfterFailure::LockedOut
        } else {
            AfterFailure::Left(FAILURES - e.failures)
        }
    }

    /// Records that the attempt begun for `ip` succeeded: its wrong passwords are forgotten
    /// (its attempts still count).
    pub fn succeeded(&mut self, ip: IpAddr) {
        if let Some(e) = self.entries.get_mut(&source_key(ip)) {
            e.failures = 0;
        }
    }

    /// Makes room for one entry; false when every entry is a live lockout.
    fn evict(&mut self, now: Instant) -> bool {
        let before = self.entries.len();
        self.entries.retain(|_, e| match e.locked_until {
            Some(u) => u > now,
            None => now.duration_since(e.window_start) < WINDOW,
        });
        if self.entries.len() < before {
            return true;
        }
        let victim = self
            .entries
            .iter()
            .filter(|(_, e)| e.locked_until.is_none())
            .min_by_key(|(_, e)| e.last_seen)
            .map(|(k, _)| *k);
        match victim {
            Some(k) => {
                self.entries.remove(&k);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn ip(n: u32) -> IpAddr {
        IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + n))
    }
    fn at(t0: Instant, s: u64) -> Instant {
        t0 + Duration::from_secs(s)
    }

    #[test]
    fn fifth_wrong_password_locks_the_address_for_30_minutes() {
        let t0 = Instant::now();
        let mut l = LoginLimiter::default();
        for i in 0..4 {
            l.begin(ip(1), at(t0, i)).unwrap();
            assert_eq!(l.failed(ip(1), at(t0, i)), AfterFailure::Left(4 - i as u32));
        }
        l.begin(ip(1), at(t0, 4)).unwrap();
        assert_eq!(l.failed(ip(1), at(t0, 4)), AfterFailure::LockedOut);
        // Locked: even the right password is not checked.
        assert_eq!(
            l.begin(ip(1), at(t0, 5)),
            Err(Refusal::LockedOut(LOCKOUT - Duration::from_secs(1)))
        );
        assert!(l.locked_for(ip(1), at(t0, 5)).is_some());
        // Another address is not affected.
        assert_eq!(l.begin(ip(2), at(t0, 5)), Ok(()));
        // One second before the end still locked, then free with a clean slate.
        assert!(l.begin(ip(1), at(t0, 4 + 30 * 60 - 1)).is_err());
        assert_eq!(l.begin(ip(1), at(t0, 4 + 30 * 60)), Ok(()));
        assert_eq!(l.failed(ip(1), at(t0, 4 + 30 * 60)), AfterFailure::Left(4));
    }

    #[test]
    fn thirty_attempts_per_15_minutes_even_when_right() {
        let t0 = Instant::now();
        let mut l = LoginLimiter::default();
        for i in 0..30 {
            l.begin(ip(1), at(t0, i)).unwrap();
            l.succeeded(ip(1));
        }
        assert_eq!(
            l.begin(ip(1), at(t0, 30)),
            Err(Refusal::TooMany(Duration::from_secs(15 * 60 - 30)))
        );
        assert_eq!(l.begin(ip(1), at(t0, 15 * 60)), Ok(()));
    }

    #[test]
    fn a_success_forgets_wrong_passwords_and_old_failures_expire() {
        let t0 = Instant::now();
        let mut l = LoginLimiter::default();
        for i in 0..4 {
            l.begin(ip(1), at(t0, i)).unwrap();
            l.failed(ip(1), at(t0, i));
        }
        l.begin(ip(1), at(t0, 10)).unwrap();
        l.succeeded(ip(1));
        for i in 0..4 {
            l.begin(ip(1), at(t0, 20 + i)).unwrap();
            assert_ne!(l.failed(ip(1), at(t0, 20 + i)), AfterFailure::LockedOut);
        }
        // Four more, but the window turned over: no lockout.
        l.begin(ip(1), at(t0, 20 + 15 * 60)).unwrap();
        assert_eq!(l.failed(ip(1), at(t0, 20 + 15 * 60)), AfterFailure::Left(4));
    }

    #[test]
    fn ipv6_counts_per_64() {
        let t0 = Instant::now();
        let mut l = LoginLimiter::default();
        for i in 0..5u16 {
            let a = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 1, 0, 0, 0, i + 1));
            l.begin(a, t0).unwrap();
            l.failed(a, t0);
        }
        let same64 = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 1, 9, 9, 9, 9));
        let other64 = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 2, 0, 0, 0, 1));
        assert!(matches!(l.begin(same64, t0), Err(Refusal::LockedOut(_))));
        assert_eq!(l.begin(other64, t0), Ok(()));
        let mapped: IpAddr = "::ffff:10.0.0.7".parse().unwrap();
        assert_eq!(source_key(mapped), ip(7));
    }

    #[test]
    fn many_addresses_cannot_grow_the_table_nor_wash_out_lockouts() {
        let t0 = Instant::now();
        let mut l = LoginLimiter::new(8);
        // 8 addresses locked out.
        for n in 0..8 {
            for _ in 0..5 {
                l.begin(ip(n), t0).unwrap();
                l.failed(ip(n), t0);
            }
        }
        // A flood of new addresses: refused, table bounded, lockouts kept.
        for n in 100..10_000 {
            assert_eq!(l.begin(ip(n), at(t0, 1)), Err(Refusal::Full));
            assert!(l.len() <= 8);
        }
        assert!(l.locked_for(ip(0), at(t0, 2)).is_some());
        // Once the lockouts expire, newcomers get in.
        assert_eq!(l.begin(ip(100), at(t0, 30 * 60)), Ok(()));
        // Unlocked entries are evicted least recently seen first, locked ones kept.
        let mut l = LoginLimiter::new(3);
        for _ in 0..5 {
            l.begin(ip(1), t0).unwrap();
            l.failed(ip(1), t0);
        }
        for n in 2..50 {
            l.begin(ip(n), at(t0, u64::from(n))).unwrap();
            assert!(l.len() <= 3);
        }
        assert!(l.locked_for(ip(1), at(t0, 60)).is_some());
    }
}
