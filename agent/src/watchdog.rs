//! The systemd watchdog keep-alive, sent only while the agent's loops are turning.
//!
//! systemd restarts a unit that stops sending `WATCHDOG=1` within `WatchdogSec=`. Sending it
//! from a timer of its own would only prove that the timer runs; the data path lives on its own
//! thread and could stall (stuck in a send, a loop that never yields) while the timer goes on.
//! So every loop that must stay alive holds a [`CheckIn`] and calls [`CheckIn::beat`] each time
//! it turns; [`run`] sends the keep-alive once per period, and only when every loop beat since
//! the previous period. [`run`] itself runs on the relay runtime, so a stalled relay runtime
//! stops the keep-alive as well.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::MissedTickBehavior;

/// A loop's check-in counter: the loop beats, the watchdog reads.
#[derive(Debug, Clone, Default)]
pub struct CheckIn(Arc<AtomicU64>);

impl CheckIn {
    /// A counter at zero.
    pub fn new() -> CheckIn {
        CheckIn::default()
    }

    /// Says that the loop turned (one relaxed atomic increment: cheap enough for every turn).
    pub fn beat(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    fn count(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// The decision without any I/O: which loops did not beat since the last look.
#[derive(Debug)]
pub struct Watchdog {
    loops: Vec<(&'static str, CheckIn, u64)>,
}

impl Watchdog {
    /// Watches the named loops. Their beats so far do not count: each must beat again before
    /// the first keep-alive.
    pub fn new(loops: impl IntoIterator<Item = (&'static str, CheckIn)>) -> Watchdog {
        Watchdog {
            loops: loops
                .into_iter()
                .map(|(name, c)| {
                    let seen = c.count();
                    (name, c, seen)
                })
                .collect(),
        }
    }

    /// Called once per period: Ok when every loop beat since the previous call (send the
    /// keep-alive), else the names of those that did not.
    pub fn check(&mut self) -> Result<(), Vec<&'static str>> {
        let mut stalled = Vec::new();
        for (name, c, seen) in &mut self.loops {
            let now = c.count();
            if now == *seen {
                stalled.push(*name);
            }
            *seen = now;
        }
        if stalled.is_empty() {
            Ok(())
        } else {
            Err(stalled)
        }
    }
}

/// Every `period`, calls `send` (which sends `WATCHDOG=1`) when [`Watchdog::check`] says all
/// loops are alive; logs once when a loop stalls and once when it recovers. Runs until dropped.
/// The first look is one period after the start, so the loops have a full period to beat.
pub async fn run(period: Duration, mut watchdog: Watchdog, mut send: impl FnMut()) {
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut stalled = false;
    loop {
        tick.tick().await;
        match watchdog.check() {
            Ok(()) => {
                if stalled {
                    tracing::info!("all loops turn again; watchdog keep-alive resumed");
                    stalled = false;
                }
                send();
            }
            Err(names) => {
                if !stalled {
                    tracing::error!(
                        loops = %names.join(","),
                        period_ms = period.as_millis() as u64,
                        "a loop did not turn for a whole watchdog period; withholding the \
                         keep-alive so that the service manager restarts the agent"
                    );
                    stalled = true;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;

    const PERIOD: Duration = Duration::from_secs(15);

    #[test]
    fn check_needs_a_beat_from_every_loop_since_the_last_check() {
        let (a, b) = (CheckIn::new(), CheckIn::new());
        a.beat();
        let mut w = Watchdog::new([("datapath", a.clone()), ("relays", b.clone())]);
        assert_eq!(
            w.check(),
            Err(vec!["datapath", "relays"]),
            "beats before new() do not count"
        );
        a.beat();
        b.beat();
        assert_eq!(w.check(), Ok(()));
        b.beat();
        assert_eq!(w.check(), Err(vec!["datapath"]));
        a.beat();
        assert_eq!(w.check(), Err(vec!["relays"]));
    }

    /// A loop that beats every 250 ms (the data path's timer tick) until `stop` is set.
    fn beating(c: CheckIn, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut t = tokio::time::interval(Duration::from_millis(250));
            while !stop.load(Ordering::Relaxed) {
                t.tick().await;
                c.beat();
            }
        })
    }

    #[tokio::test(start_paused = true)]
    async fn keep_alive_is_sent_each_period_while_the_loop_turns_and_stops_when_it_stalls() {
        let c = CheckIn::new();
        let stop = Arc::new(AtomicBool::new(false));
        let _loop = beating(c.clone(), stop.clone());
        let sent = Arc::new(AtomicU64::new(0));
        let counter = sent.clone();
        let _wd = tokio::spawn(run(PERIOD, Watchdog::new([("datapath", c)]), move || {
            counter.fetch_add(1, Ordering::Relaxed);
        }));
        tokio::time::sleep(PERIOD * 4 + PERIOD / 2).await;
        assert_eq!(sent.load(Ordering::Relaxed), 4, "one keep-alive per period");

        stop.store(true, Ordering::Relaxed);
        // The period in which the loop stopped may still count once; none after that.
        tokio::time::sleep(PERIOD).await;
        let at_stall = sent.load(Ordering::Relaxed);
        assert_eq!(at_stall, 5, "the period in which the loop stopped");
        tokio::time::sleep(PERIOD * 10).await;
        assert_eq!(
            sent.load(Ordering::Relaxed),
            at_stall,
            "no keep-alive while the loop is stalled"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn keep_alive_resumes_when_the_loop_turns_again() {
        let c = CheckIn::new();
        let sent = Arc::new(AtomicU64::new(0));
        let counter = sent.clone();
        let _wd = tokio::spawn(run(
            PERIOD,
            Watchdog::new([("datapath", c.clone())]),
            move || {
                counter.fetch_add(1, Ordering::Relaxed);
            },
        ));
        tokio::time::sleep(PERIOD * 3 + PERIOD / 2).await;
        assert_eq!(sent.load(Ordering::Relaxed), 0, "never beat: never sent");
        let stop = Arc::new(AtomicBool::new(false));
        let _loop = beating(c, stop);
        tokio::time::sleep(PERIOD * 2).await;
        assert_eq!(sent.load(Ordering::Relaxed), 2);
    }
}
