//! `gatelet-update --watch SECS`: the updater as a resident process, for a service manager
//! without path units (OpenWrt's procd runs it from `/etc/init.d/gatelet-update`).
//!
//! Every `SECS` it looks for work ([`pending`]: the flag file or a journal; two `lstat`s,
//! nothing read, nothing allocated) and, when there is some, runs one update in-process to
//! its end (the same code as a one-shot `gatelet-update`), then goes back to watching. Its
//! first look is at once: a journal left by a power cut is resumed at boot, and that start
//! counts a boot of the version on trial (the boot-counting rollback). It restarts the
//! daemons through `--restart-command` (`/etc/init.d/gatelet restart`), a service of its own
//! that does not include the watcher, so it never restarts itself mid-update; if it is
//! killed anyway, procd respawns it and the journal resumes the update.
//!
//! An update that failed (its journal left for the next try, or the flag could not be
//! answered) is retried after [`FAILED_RUN_BACKOFF`], not at the next look: a broken
//! `gateway.env` must not turn into an update attempt every few seconds.

use std::path::Path;
use std::time::Duration;

use super::slots::JOURNAL;
use crate::telemetry::PENDING_UPDATE_FILE;

/// Wait after a failed update run before the next one.
pub const FAILED_RUN_BACKOFF: Duration = Duration::from_secs(120);

/// Whether there is work: a queued request (the flag in `state_dir`, whatever it holds:
/// the updater reads it as untrusted) or an update in progress (the journal in
/// `update_dir`).
pub fn pending(state_dir: &Path, update_dir: &Path) -> bool {
    std::fs::symlink_metadata(state_dir.join(PENDING_UPDATE_FILE)).is_ok()
        || std::fs::symlink_metadata(update_dir.join(JOURNAL)).is_ok()
}

/// What the watch loop did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counts {
    /// Looks for work.
    pub checks: u64,
    /// Update runs (successful or not).
    pub runs: u64,
}

/// Looks for work with `pending` at once and then every `interval` (through `sleep`: the
/// process's clock, a virtual one in tests), running `update` (true: it ended well) when
/// there is some; after a failed run the next look waits `backoff` instead. Stops after
/// `max_checks` looks (`None`: never; the daemon's form).
pub fn watch(
    mut pending: impl FnMut() -> bool,
    mut update: impl FnMut() -> bool,
    mut sleep: impl FnMut(Duration),
    interval: Duration,
    backoff: Duration,
    max_checks: Option<u64>,
) -> Counts {
    let mut counts = Counts::default();
    loop {
        let mut failed = false;
        if pending() {
            counts.runs += 1;
            failed = !update();
        }
        counts.checks += 1;
        if max_checks.is_some_and(|m| counts.checks >= m) {
            return counts;
        }
        sleep(if failed { backoff } else { interval });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::fs;

    const TICK: Duration = Duration::from_secs(10);

    struct Dirs {
        _tmp: tempfile::TempDir,
        state: std::path::PathBuf,
        update: std::path::PathBuf,
    }

    fn dirs() -> Dirs {
        let tmp = tempfile::tempdir().unwrap();
        let state = tmp.path().join("state");
        let update = tmp.path().join("update");
        fs::create_dir_all(&state).unwrap();
        fs::create_dir_all(&update).unwrap();
        Dirs {
            _tmp: tmp,
            state,
            update,
        }
    }

    #[test]
    fn no_flag_and_no_journal_runs_nothing() {
        let d = dirs();
        let slept = Cell::new(Duration::ZERO);
        let c = watch(
            || pending(&d.state, &d.update),
            || panic!("no update without work"),
            |t| slept.set(slept.get() + t),
            TICK,
            FAILED_RUN_BACKOFF,
            Some(50),
        );
        assert_eq!(
            c,
            Counts {
                checks: 50,
                runs: 0
            }
        );
        assert_eq!(slept.get(), TICK * 49);
    }

    #[test]
    fn a_flag_appearing_is_taken_up_by_one_run() {
        let d = dirs();
        let flag = d.state.join(PENDING_UPDATE_FILE);
        let now = Cell::new(Duration::ZERO);
        let ran_at = Cell::new(None);
        let c = watch(
            || pending(&d.state, &d.update),
            || {
                // The updater answers the request: the flag goes.
                ran_at.set(Some(now.get()));
                fs::remove_file(&flag).unwrap();
                true
            },
            |t| {
                now.set(now.get() + t);
                // The companion queues a request 35 s after the watcher started.
                if now.get() == Duration::from_secs(40) {
                    fs::write(&flag, br#"{"request_id":"r1"}"#).unwrap();
                }
            },
            TICK,
            FAILED_RUN_BACKOFF,
            Some(20),
        );
        assert_eq!(c.runs, 1);
        assert_eq!(
            ran_at.get(),
            Some(Duration::from_secs(40)),
            "at the next look"
        );
    }

    #[test]
    fn a_journal_at_start_is_resumed_at_once() {
        let d = dirs();
        let journal = d.update.join(JOURNAL);
        fs::write(&journal, b"{}").unwrap();
        let slept = Cell::new(Duration::ZERO);
        let first_run_after = Cell::new(None);
        let c = watch(
            || pending(&d.state, &d.update),
            || {
                first_run_after.set(first_run_after.get().or(Some(slept.get())));
                fs::remove_file(&journal).unwrap();
                true
            },
            |t| slept.set(slept.get() + t),
            TICK,
            FAILED_RUN_BACKOFF,
            Some(5),
        );
        assert_eq!(c, Counts { checks: 5, runs: 1 });
        assert_eq!(
            first_run_after.get(),
            Some(Duration::ZERO),
            "before any sleep"
        );
    }

    #[test]
    fn a_planted_symlink_flag_counts_as_work_for_the_updater_to_remove() {
        let d = dirs();
        std::os::unix::fs::symlink("/nonexistent", d.state.join(PENDING_UPDATE_FILE)).unwrap();
        assert!(pending(&d.state, &d.update));
    }

    #[test]
    fn a_failing_run_is_retried_after_the_backoff_not_every_look() {
        let d = dirs();
        fs::write(d.state.join(PENDING_UPDATE_FILE), b"{}").unwrap();
        let now = Cell::new(Duration::ZERO);
        let runs_at = std::cell::RefCell::new(Vec::new());
        let c = watch(
            || pending(&d.state, &d.update),
            || {
                runs_at.borrow_mut().push(now.get().as_secs());
                false
            },
            |t| now.set(now.get() + t),
            TICK,
            FAILED_RUN_BACKOFF,
            Some(3),
        );
        assert_eq!(c.runs, 3);
        assert_eq!(*runs_at.borrow(), [0, 120, 240]);
    }
}
