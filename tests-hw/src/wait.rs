//! Bounded waits: poll a condition until it holds or a deadline passes.

use std::fmt::Display;
use std::thread;
use std::time::{Duration, Instant};

use crate::{HarnessError, Result};

/// How often [`wait_until`] polls.
pub const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// Polls `probe` every [`POLL_INTERVAL`] until it returns `Ok(Some(value))`, for at most
/// `timeout`. `Ok(None)` and `Err(_)` both mean "not yet"; the last of them is reported in the
/// [`HarnessError::Timeout`] so a failing test says what it saw.
pub fn wait_until<T, E: Display>(
    what: &str,
    timeout: Duration,
    mut probe: impl FnMut() -> std::result::Result<Option<T>, E>,
) -> Result<T> {
    let start = Instant::now();
    loop {
        let last = match probe() {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => "condition not met yet".to_owned(),
            Err(e) => e.to_string(),
        };
        let waited = start.elapsed();
        if waited >= timeout {
            return Err(HarnessError::Timeout {
                what: what.into(),
                waited,
                last,
            });
        }
        thread::sleep(POLL_INTERVAL.min(timeout - waited));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_until_returns_the_value_once_the_condition_holds() {
        let mut n = 0;
        let v = wait_until("n reaches 3", Duration::from_secs(5), || {
            n += 1;
            Ok::<_, String>((n >= 3).then_some(n))
        })
        .unwrap();
        assert_eq!(v, 3);
    }

    #[test]
    fn wait_until_gives_up_at_the_deadline_and_reports_the_last_error() {
        let start = Instant::now();
        let err = wait_until("never", Duration::from_millis(250), || {
            Err::<Option<()>, _>("still broken")
        })
        .unwrap_err();
        assert!(start.elapsed() < Duration::from_secs(2));
        let text = err.to_string();
        assert!(
            text.contains("never") && text.contains("still broken"),
            "{text}"
        );
    }
}
