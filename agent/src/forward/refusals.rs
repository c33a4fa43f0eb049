//! Rate-limited logging of refusals (connections or datagrams turned away at a cap).
//!
//! Under a flood a line per refusal would be thousands of lines; [`RefusalLog`] reports the first
//! refusal after a quiet interval at once and sums the later ones into at most one line per
//! interval, with the count since the last line and the total. Sans-IO: the caller passes the
//! time and writes the line.

use std::time::Duration;

use tokio::time::Instant;

/// How often at most a refusal summary line is written (per [`RefusalLog`]).
pub const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// What one summary line reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RefusalReport {
    /// Refusals since the previous line.
    pub count: u64,
    /// Refusals since the start.
    pub total: u64,
    /// Time since the previous line (zero for the first line).
    pub over: Duration,
}

impl RefusalReport {
    /// " in the last N s" for a line after the first, empty for the first (for the log text).
    pub fn since(&self) -> String {
        if self.over.is_zero() {
            String::new()
        } else {
            format!(" in the last {} s", self.over.as_secs())
        }
    }
}

/// Counts refusals and says when a summary line is due.
#[derive(Debug)]
pub struct RefusalLog {
    interval: Duration,
    last_line: Option<Instant>,
    pending: u64,
    total: u64,
}

impl RefusalLog {
    /// A log writing at most one line per `interval`.
    pub fn new(interval: Duration) -> Self {
        RefusalLog {
            interval,
            last_line: None,
            pending: 0,
            total: 0,
        }
    }

    /// Counts one refusal at `now`; Some when a line is due now.
    pub fn refused(&mut self, now: Instant) -> Option<RefusalReport> {
        self.pending += 1;
        self.total += 1;
        self.flush(now)
    }

    /// The line for refusals not reported yet, when its interval has passed.
    pub fn flush(&mut self, now: Instant) -> Option<RefusalReport> {
        if self.pending == 0 {
            return None;
        }
        let over = match self.last_line {
            Some(t) if now.saturating_duration_since(t) < self.interval => return None,
            Some(t) => now.saturating_duration_since(t),
            None => Duration::ZERO,
        };
        self.last_line = Some(now);
        Some(RefusalReport {
            count: std::mem::take(&mut self.pending),
            total: self.total,
            over,
        })
    }

    /// When [`RefusalLog::flush`] will have a line, if refusals are waiting to be reported.
    pub fn due(&self) -> Option<Instant> {
        if self.pending == 0 {
            return None;
        }
        Some(
            self.last_line
                .map_or_else(Instant::now, |t| t + self.interval),
        )
    }

    /// Refusals since the start.
    pub fn total(&self) -> u64 {
        self.total
    }
}

impl Default for RefusalLog {
    fn default() -> Self {
        RefusalLog::new(REFUSAL_LOG_INTERVAL)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_flood_gives_one_line_per_interval_with_counts() {
        let mut log = RefusalLog::new(Duration::from_secs(10));
        let mut lines = Vec::new();
        // 77 refusals a second for 25 s.
        for _ in 0..25 * 77 {
            if let Some(r) = log.refused(Instant::now()) {
                lines.push(r);
            }
            tokio::time::advance(Duration::from_millis(13)).await;
        }
        if let Some(due) = log.due() {
            tokio::time::advance(due.saturating_duration_since(Instant::now())).await;
            lines.extend(log.flush(Instant::now()));
        }
        assert_eq!(lines.len(), 4, "{lines:?}");
        assert_eq!(lines[0].count, 1);
        assert_eq!(lines[0].over, Duration::ZERO);
        assert!(lines[1].over >= Duration::from_secs(10));
        assert_eq!(
            lines.iter().map(|l| l.count).sum::<u64>(),
            25 * 77,
            "every refusal is counted once"
        );
        assert_eq!(lines.last().unwrap().total, 25 * 77);
        assert!(log.due().is_none());
        assert!(log.flush(Instant::now()).is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_refusal_after_a_quiet_interval_is_reported_at_once() {
        let mut log = RefusalLog::new(Duration::from_secs(10));
        assert!(log.refused(Instant::now()).is_some());
        tokio::time::advance(Duration::from_secs(11)).await;
        let r = log.refused(Instant::now()).unwrap();
        assert_eq!((r.count, r.total), (1, 2));
    }

    #[test]
    fn the_first_line_names_no_interval_and_later_ones_do() {
        let first = RefusalReport {
            count: 3,
            total: 3,
            over: Duration::ZERO,
        };
        let later = RefusalReport {
            over: Duration::from_secs(10),
            ..first
        };
        assert_eq!(first.since(), "");
        assert_eq!(later.since(), " in the last 10 s");
    }
}
