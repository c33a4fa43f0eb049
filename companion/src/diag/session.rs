//! Login sessions of the diagnostics page: a random 256-bit token in an HttpOnly,
//! SameSite=Strict cookie, and a server-side table keyed by the token's SHA-256 (a lookup
//! reveals nothing about other tokens through its timing, and the table holds no usable
//! token). Each session carries its own CSRF token for actions. Sessions end after
//! [`IDLE`] unused or [`MAX_AGE`] in all; the table holds at most `cap` (the least recently
//! used goes first when a new login needs room).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use ring::rand::SecureRandom;
use sha2::{Digest, Sha256};

use crate::mgmt::auth::token_matches;

/// The cookie's name.
pub const COOKIE: &str = "gatelet_diag";
/// A session unused this long ends.
pub const IDLE: Duration = Duration::from_secs(30 * 60);
/// A session ends this long after the login, used or not.
pub const MAX_AGE: Duration = Duration::from_secs(12 * 3600);
/// Sessions held at most.
pub const TABLE_CAP: usize = 32;

#[derive(Debug)]
struct Session {
    csrf: String,
    created: Instant,
    last_used: Instant,
}

/// A new session's tokens (given to the browser once).
#[derive(Debug, Clone)]
pub struct NewSession {
    /// The cookie value.
    pub token: String,
    /// The CSRF token the page sends with actions.
    pub csrf: String,
}

/// The session table.
#[derive(Debug)]
pub struct Sessions {
    table: HashMap<[u8; 32], Session>,
    cap: usize,
}

impl Default for Sessions {
    fn default() -> Self {
        Self::new(TABLE_CAP)
    }
}

fn key(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

fn random_hex(rng: &dyn SecureRandom) -> Option<String> {
    let mut b = [0u8; 32];
    rng.fill(&mut b).ok()?;
    Some(b.iter().map(|b| format!("{b:02x}")).collect())
}

impl Sessions {
    /// A table of at most `cap` sessions (at least 1).
    pub fn new(cap: usize) -> Self {
        Sessions {
            table: HashMap::new(),
            cap: cap.max(1),
        }
    }

    /// Live and stale sessions held.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// Whether none is held.
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    fn live(s: &Session, now: Instant) -> bool {
        now.duration_since(s.last_used) < IDLE && now.duration_since(s.created) < MAX_AGE
    }

    /// Starts a session; None only when the system has no randomness.
    pub fn create(&mut self, rng: &dyn SecureRandom, now: Instant) -> Option<NewSession> {
        self.table.retain(|_, s| Self::live(s, now));
        while self.table.len() >= self.cap {
            let oldest = self
                .table
                .iter()
                .min_by_key(|(_, s)| s.last_used)
                .map(|(k, _)| *k)?;
            self.table.remove(&oldest);
        }
        let new = NewSession {
            token: random_hex(rng)?,
            csrf: random_hex(rng)?,
        };
        self.table.insert(
            key(&new.token),
            Session {
                csrf: new.csrf.clone(),
                created: now,
                last_used: now,
            },
        );
        Some(new)
    }

    /// The CSRF token of the live session `token` names (and marks it used), or None.
    pub fn check(&mut self, token: &str, now: Instant) -> Option<String> {
        let k = key(token);
        let s = self.table.get_mut(&k)?;
        if !Self::live(s, now) {
            self.table.remove(&k);
            return None;
        }
        s.last_used = now;
        Some(s.csrf.clone())
    }

    /// Whether `given` is the CSRF token of the live session `token` (constant-time).
    pub fn csrf_ok(&mut self, token: &str, given: &str, now: Instant) -> bool {
        self.check(token, now)
            .is_some_and(|csrf| token_matches(given.as_bytes(), csrf.as_bytes()))
    }

    /// Ends the session `token` names.
    pub fn end(&mut self, token: &str) {
        self.table.remove(&key(token));
    }
}

/// The value of cookie `name` in a `Cookie` header.
pub fn cookie<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.split(';').find_map(|kv| {
        let (k, v) = kv.trim().split_once('=')?;
        (k == name).then_some(v)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::rand::SystemRandom;

    #[test]
    fn session_lives_until_idle_or_max_age_and_carries_its_csrf() {
        let (rng, t0) = (SystemRandom::new(), Instant::now());
        let mut s = Sessions::default();
        let n = s.create(&rng, t0).unwrap();
        assert_eq!(n.token.len(), 64);
        assert_ne!(n.token, n.csrf);
        assert_eq!(s.check(&n.token, t0).as_deref(), Some(n.csrf.as_str()));
        assert!(s.check("nope", t0).is_none());
        assert!(s.csrf_ok(&n.token, &n.csrf, t0));
        assert!(!s.csrf_ok(&n.token, "", t0));
        assert!(!s.csrf_ok(&n.token, &n.token, t0));
        // Used every 29 minutes it lives to MAX_AGE, not beyond.
        let mut t = t0;
        while t + Duration::from_secs(29 * 60) < t0 + MAX_AGE {
            t += Duration::from_secs(29 * 60);
            assert!(s.check(&n.token, t).is_some());
        }
        assert!(s.check(&n.token, t0 + MAX_AGE).is_none());
        // Idle for 30 minutes: gone.
        let m = s.create(&rng, t0).unwrap();
        assert!(s.check(&m.token, t0 + IDLE).is_none());
        // Ended: gone.
        let e = s.create(&rng, t0).unwrap();
        s.end(&e.token);
        assert!(s.check(&e.token, t0).is_none());
    }

    #[test]
    fn table_is_bounded_least_recently_used_first() {
        let (rng, t0) = (SystemRandom::new(), Instant::now());
        let mut s = Sessions::new(4);
        let first = s.create(&rng, t0).unwrap();
        let mut last = None;
        for i in 1..100u64 {
            assert!(s.check(&first.token, t0 + Duration::from_secs(i)).is_some());
            last = s.create(&rng, t0 + Duration::from_secs(i));
            assert!(s.len() <= 4);
        }
        // The one in use survived the churn.
        assert!(s
            .check(&first.token, t0 + Duration::from_secs(100))
            .is_some());
        assert!(s
            .check(&last.unwrap().token, t0 + Duration::from_secs(100))
            .is_some());
    }

    #[test]
    fn cookie_header_is_split() {
        let h = "a=1; gatelet_diag=abc; b=2";
        assert_eq!(cookie(h, COOKIE), Some("abc"));
        assert_eq!(cookie("gatelet_diagx=1", COOKIE), None);
    }
}
