//! The update state machine (sans-IO): what to do next, given the persisted journal, an
//! input and the time.
//!
//! One update is one [`Journal`], persisted (atomically) by the driver *before* it carries
//! out the [`Action`]s a step returns, so a power cut at any point resumes from a state
//! that matches the disk:
//!
//! 1. [`Phase::Fetch`]: fetch and verify the signed manifest; decide install or
//!    already-current ([`super::manifest::offer`]).
//! 2. [`Phase::Download`]: download the binaries into the inactive slot (resumable, capped
//!    at the manifest's sizes) and verify their SHA-256. The active slot is untouched, so
//!    an interruption here leaves the old version running; a boot resumes (and counts as
//!    an attempt).
//! 3. [`Phase::Trial`]: the journal names the slot to go back to; then the stable symlink
//!    is switched to the new slot (one `rename(2)`) and the daemons are restarted. The new
//!    version is kept only if [`Health`] is all good within [`Limits::health_deadline`] and
//!    it has not started more than [`Limits::max_boots`] times; otherwise
//! 4. [`Phase::RollingBack`]: switch back, restart, and on the next start (the old version)
//!    report the failure.
//!
//! Every update ends with [`Action::Finish`], which the driver turns into the `last-pull`
//! record the heartbeat reports (`last_pull_request_id`, `last_pull_ok`, `last_pull_at`).

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// One of the two binary slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Slot {
    /// Slot `a`.
    A,
    /// Slot `b`.
    B,
}

impl Slot {
    /// The other slot.
    pub fn other(self) -> Slot {
        match self {
            Slot::A => Slot::B,
            Slot::B => Slot::A,
        }
    }

    /// The slot's directory name.
    pub fn name(self) -> &'static str {
        match self {
            Slot::A => "a",
            Slot::B => "b",
        }
    }
}

/// Bounds on one update.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Time from the switch to a healthy new version before rolling back (the reference
    /// updater waits 300 s for health).
    pub health_deadline: Duration,
    /// Starts of the new version allowed before it counts as crash-looping.
    pub max_boots: u32,
    /// Fetch or download attempts (a boot mid-phase counts as one).
    pub max_attempts: u32,
    /// Wait between attempts.
    pub retry_after: Duration,
    /// Time from the request until the download must be done (the server gives up at 15
    /// minutes).
    pub overall: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            health_deadline: Duration::from_secs(300),
            max_boots: 3,
            max_attempts: 3,
            retry_after: Duration::from_secs(20),
            overall: Duration::from_secs(10 * 60),
        }
    }
}

/// The persisted record of the update in progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Journal {
    /// The server's request id (reported back as `last_pull_request_id`).
    pub request_id: String,
    /// The version the server asked for (may be null).
    pub target_version: Option<String>,
    /// When the request was taken up (ms since the epoch).
    pub requested_at_ms: u64,
    /// The slot running when the request was taken up.
    pub active: Slot,
    /// Where the update is.
    pub phase: Phase,
}

/// Where an update is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
// Externally tagged (`{"trial": {…}}`): an internally tagged enum costs ~10 KB more code.
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Fetching and verifying the manifest.
    Fetch {
        /// Attempts started so far.
        attempts: u32,
        /// Not before this time (ms).
        not_before_ms: u64,
    },
    /// Downloading and verifying the binaries into the inactive slot.
    Download {
        /// The manifest's version.
        version: String,
        /// Attempts started so far.
        attempts: u32,
        /// Not before this time (ms).
        not_before_ms: u64,
    },
    /// Switched (or switching) to the new slot, waiting for health.
    Trial {
        /// The version on trial.
        version: String,
        /// When the switch was decided (ms).
        switched_at_ms: u64,
        /// Starts of the companion seen in this phase.
        boots: u32,
    },
    /// Over: the `last-pull` record is being written (again after a cut).
    Done {
        /// Success.
        ok: bool,
        /// The version now running, when it changed.
        version: Option<String>,
        /// Why it failed.
        reason: Option<String>,
    },
    /// Going back to the previous slot.
    RollingBack {
        /// Why (reported in `last-pull`).
        reason: String,
    },
}

/// What the daemons report about the running version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Health {
    /// The agent answers on its control socket.
    pub agent_ready: bool,
    /// The companion's threads are up.
    pub companion_ready: bool,
    /// The tunnel has a recent handshake.
    pub handshake: bool,
    /// The config in force is the server's current one.
    pub config_in_sync: bool,
}

impl Health {
    fn missing(&self) -> Vec<&'static str> {
        let mut m = Vec::new();
        for (ok, name) in [
            (self.agent_ready, "agent not ready"),
            (self.companion_ready, "companion not ready"),
            (self.handshake, "no tunnel handshake"),
            (self.config_in_sync, "config not in sync"),
        ] {
            if !ok {
                m.push(name);
            }
        }
        m
    }
}

/// The outcome of fetching the manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fetched {
    /// A newer release to install.
    Install {
        /// Its version.
        version: String,
    },
    /// Nothing to do: the running version satisfies the request.
    AlreadyCurrent,
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// The companion started (once per process), running `version` from `active`.
    Boot {
        /// The version this process is.
        version: String,
        /// The slot the stable symlink points at.
        active: Slot,
    },
    /// The server asked for an update (the flag file).
    Request {
        /// Its request id.
        request_id: String,
        /// The version asked for.
        target_version: Option<String>,
        /// The slot the stable symlink points at.
        active: Slot,
    },
    /// The manifest fetch finished.
    Fetched(Result<Fetched, String>),
    /// The download into the inactive slot finished (`Ok` only if sizes and hashes match).
    Staged(Result<(), String>),
    /// Time passed; the running version's health now.
    Tick(Health),
    /// The `last-pull` record of [`Action::Finish`] is on disk.
    Reported,
}

/// What the driver must do, in order, after persisting the journal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Fetch and verify the manifest; answer with [`Input::Fetched`].
    Fetch,
    /// Download `version` into `slot` and verify it; answer with [`Input::Staged`].
    Stage {
        /// The version.
        version: String,
        /// The inactive slot.
        slot: Slot,
    },
    /// Point the stable symlink at `slot` (atomically).
    Activate(Slot),
    /// Restart both daemons (under the service manager).
    Restart,
    /// The update is over: write `last-pull` and remove the flag (both idempotent), then
    /// answer [`Input::Reported`], which ends the journal.
    Finish {
        /// Success.
        ok: bool,
        /// The version now running.
        version: Option<String>,
        /// Why it failed.
        reason: Option<String>,
    },
}

impl Action {
    /// A short name for the log.
    pub fn name(&self) -> &'static str {
        match self {
            Action::Fetch => "fetch",
            Action::Stage { .. } => "stage",
            Action::Activate(Slot::A) => "activate a",
            Action::Activate(Slot::B) => "activate b",
            Action::Restart => "restart",
            Action::Finish { .. } => "finish",
        }
    }
}

/// The state machine's state: the journal (if an update is in progress) and the limits.
#[derive(Debug, Clone)]
pub struct Machine {
    /// The update in progress.
    pub journal: Option<Journal>,
    limits: Limits,
}

impl Machine {
    /// Resumes from a persisted journal (or none).
    pub fn new(journal: Option<Journal>, limits: Limits) -> Self {
        Self { journal, limits }
    }

    /// Handles one input at `now_ms`; the driver persists [`Machine::journal`] (or removes
    /// it when `None`) and then carries out the actions in order.
    pub fn step(&mut self, input: Input, now_ms: u64) -> Vec<Action> {
        let Some(mut j) = self.journal.take() else {
            return self.idle(input, now_ms);
        };
        let lim = self.limits;
        let ms = |d: Duration| d.as_millis() as u64;
        let overdue = now_ms.saturating_sub(j.requested_at_ms) > ms(lim.overall);
        let (phase, actions) = match (j.phase.clone(), input) {
            // A second request while one is in progress is ignored (the flag handler's
            // cooldown already refuses most).
            (phase, Input::Request { .. }) => (Some(phase), vec![]),
            (Phase::Fetch { .. }, Input::Fetched(Ok(Fetched::AlreadyCurrent))) => {
                done(true, None, None)
            }
            (Phase::Fetch { .. }, Input::Fetched(Ok(Fetched::Install { version }))) => (
                Some(Phase::Download {
                    version: version.clone(),
                    attempts: 1,
                    not_before_ms: now_ms,
                }),
                vec![Action::Stage {
                    version,
                    slot: j.active.other(),
                }],
            ),
            (Phase::Fetch { attempts, .. }, Input::Fetched(Err(e))) => {
                if attempts >= lim.max_attempts || overdue {
                    done(false, None, Some(format!("manifest: {e}")))
                } else {
                    let next = now_ms + ms(lim.retry_after);
                    (
                        Some(Phase::Fetch {
                            attempts,
                            not_before_ms: next,
                        }),
                        vec![],
                    )
                }
            }
            (Phase::Download { version, .. }, Input::Staged(Ok(()))) => (
                Some(Phase::Trial {
                    version,
                    switched_at_ms: now_ms,
                    boots: 0,
                }),
                vec![Action::Activate(j.active.other()), Action::Restart],
            ),
            (
                Phase::Download {
                    version, attempts, ..
                },
                Input::Staged(Err(e)),
            ) => {
                if attempts >= lim.max_attempts || overdue {
                    done(false, None, Some(format!("download: {e}")))
                } else {
                    (
                        Some(Phase::Download {
                            version,
                            attempts,
                            not_before_ms: now_ms + ms(lim.retry_after),
                        }),
                        vec![],
                    )
                }
            }
            // Retry a fetch or download when its time has come.
            (
                Phase::Fetch {
                    attempts,
                    not_before_ms,
                },
                Input::Tick(_),
            ) if now_ms >= not_before_ms => {
                if overdue {
                    done(false, None, Some("timed out".into()))
                } else {
                    (
                        Some(Phase::Fetch {
                            attempts: attempts + 1,
                            not_before_ms,
                        }),
                        vec![Action::Fetch],
                    )
                }
            }
            (
                Phase::Download {
                    version,
                    attempts,
                    not_before_ms,
                },
                Input::Tick(_),
            ) if now_ms >= not_before_ms => {
                if overdue {
                    done(false, None, Some("timed out".into()))
                } else {
                    (
                        Some(Phase::Download {
                            version: version.clone(),
                            attempts: attempts + 1,
                            not_before_ms,
                        }),
                        vec![Action::Stage {
                            version,
                            slot: j.active.other(),
                        }],
                    )
                }
            }
            // A restart before the switch (power cut, SIGKILL): the old version runs; go
            // on where we were, counting the interruption as an attempt.
            (
                Phase::Fetch { attempts, .. } | Phase::Download { attempts, .. },
                Input::Boot { active, .. },
            ) if active == j.active => {
                let phase = j.phase.clone();
                if attempts >= lim.max_attempts || overdue {
                    let what = match phase {
                        Phase::Fetch { .. } => "manifest fetch",
                        _ => "download",
                    };
                    done(
                        false,
                        None,
                        Some(format!("{what} interrupted {attempts} times")),
                    )
                } else {
                    (Some(retry_now(phase, now_ms)), vec![])
                }
            }
            (
                Phase::Trial {
                    version,
                    switched_at_ms,
                    boots,
                },
                Input::Boot {
                    version: running,
                    active,
                },
            ) => {
                if active == j.active {
                    // The switch never happened (cut between the journal and the rename),
                    // or something outside switched back.
                    done(
                        false,
                        None,
                        Some(format!("{version} was not started (switch interrupted)")),
                    )
                } else if running != version {
                    rollback(
                        format!("the new slot runs {running}, not {version}"),
                        j.active,
                    )
                } else if boots + 1 > lim.max_boots {
                    rollback(
                        format!("{version} restarted {} times (crash loop)", boots + 1),
                        j.active,
                    )
                } else {
                    (
                        Some(Phase::Trial {
                            version,
                            switched_at_ms,
                            boots: boots + 1,
                        }),
                        vec![],
                    )
                }
            }
            (
                Phase::Trial {
                    version,
                    switched_at_ms,
                    boots,
                },
                Input::Tick(health),
            ) if boots > 0 => {
                let missing = health.missing();
                if missing.is_empty() {
                    done(true, Some(version), None)
                } else if now_ms.saturating_sub(switched_at_ms) > ms(lim.health_deadline) {
                    rollback(
                        format!(
                            "{version} not healthy within {} s: {}",
                            lim.health_deadline.as_secs(),
                            missing.join(", ")
                        ),
                        j.active,
                    )
                } else {
                    (Some(j.phase.clone()), vec![])
                }
            }
            // Switched but this process is still the old one (restart pending): a deadline
            // still applies, in case the restart never comes.
            (
                Phase::Trial {
                    version,
                    switched_at_ms,
                    ..
                },
                Input::Tick(_),
            ) if now_ms.saturating_sub(switched_at_ms) > ms(lim.health_deadline) => rollback(
                format!("{version} did not start within the deadline"),
                j.active,
            ),
            (Phase::RollingBack { reason }, Input::Boot { active, .. }) if active == j.active => {
                done(false, None, Some(reason))
            }
            // Rolling back but the new slot still runs (cut before the switch back): again.
            (Phase::RollingBack { reason }, Input::Boot { .. }) => (
                Some(Phase::RollingBack { reason }),
                vec![Action::Activate(j.active), Action::Restart],
            ),
            (Phase::Done { .. }, Input::Reported) => (None, vec![]),
            // Cut before the record was written, or writing failed: again.
            (
                Phase::Done {
                    ok,
                    version,
                    reason,
                },
                Input::Boot { .. } | Input::Tick(_),
            ) => done(ok, version, reason),
            (phase, _) => (Some(phase), vec![]),
        };
        if let Some(phase) = phase {
            j.phase = phase;
            self.journal = Some(j);
        }
        actions
    }

    fn idle(&mut self, input: Input, now_ms: u64) -> Vec<Action> {
        match input {
            Input::Request {
                request_id,
                target_version,
                active,
            } => {
                self.journal = Some(Journal {
                    request_id,
                    target_version,
                    requested_at_ms: now_ms,
                    active,
                    phase: Phase::Fetch {
                        attempts: 1,
                        not_before_ms: now_ms,
                    },
                });
                vec![Action::Fetch]
            }
            _ => vec![],
        }
    }
}

fn finish(ok: bool, version: Option<String>, reason: Option<String>) -> Action {
    Action::Finish {
        ok,
        version,
        reason,
    }
}

fn done(ok: bool, version: Option<String>, reason: Option<String>) -> (Option<Phase>, Vec<Action>) {
    (
        Some(Phase::Done {
            ok,
            version: version.clone(),
            reason: reason.clone(),
        }),
        vec![finish(ok, version, reason)],
    )
}

fn rollback(reason: String, previous: Slot) -> (Option<Phase>, Vec<Action>) {
    (
        Some(Phase::RollingBack { reason }),
        vec![Action::Activate(previous), Action::Restart],
    )
}

/// After an interrupted attempt: due now (the next tick starts the next attempt).
fn retry_now(phase: Phase, now_ms: u64) -> Phase {
    match phase {
        Phase::Fetch { attempts, .. } => Phase::Fetch {
            attempts,
            not_before_ms: now_ms,
        },
        Phase::Download {
            version, attempts, ..
        } => Phase::Download {
            version,
            attempts,
            not_before_ms: now_ms,
        },
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    const OLD: &str = "0.1.0";
    const NEW: &str = "0.2.0";
    const TICK_MS: u64 = 5_000;

    /// A simulated box: two slots, the stable symlink, the running version, the journal
    /// on disk. The machine is driven exactly as the daemon drives it; a crash throws
    /// away the in-memory machine and boots from what was persisted.
    struct Box {
        m: Machine,
        disk: Option<Journal>,
        active: Slot,
        slots: [Option<String>; 2],
        running: Option<String>,
        now: u64,
        finished: Vec<(bool, Option<String>, Option<String>)>,
        /// What a fetch answers.
        fetch: Result<Fetched, String>,
        /// Whether staging (download + verify) works.
        stage_ok: bool,
        /// Whether the new version becomes healthy.
        new_healthy: bool,
        /// Crash (power cut) when this many actions have been carried out.
        crash_at: Option<usize>,
        done_actions: usize,
        inputs: VecDeque<Input>,
    }

    fn idx(s: Slot) -> usize {
        match s {
            Slot::A => 0,
            Slot::B => 1,
        }
    }

    impl Box {
        fn new() -> Self {
            Self {
                m: Machine::new(None, Limits::default()),
                disk: None,
                active: Slot::A,
                slots: [Some(OLD.into()), None],
                running: Some(OLD.into()),
                now: 1_000_000,
                finished: vec![],
                fetch: Ok(Fetched::Install {
                    version: NEW.into(),
                }),
                stage_ok: true,
                new_healthy: true,
                crash_at: None,
                done_actions: 0,
                inputs: VecDeque::new(),
            }
        }

        fn request(&mut self) {
            self.inputs.push_back(Input::Request {
                request_id: "r1".into(),
                target_version: Some(NEW.into()),
                active: self.active,
            });
        }

        /// Starts what the symlink points at.
        fn boot(&mut self) {
            let v = self.slots[idx(self.active)].clone();
            assert!(v.is_some(), "the active slot is empty: neither version");
            self.running = v.clone();
            self.m = Machine::new(self.disk.clone(), Limits::default());
            self.inputs.push_back(Input::Boot {
                version: v.unwrap(),
                active: self.active,
            });
        }

        fn health(&self) -> Health {
            let new = self.running.as_deref() == Some(NEW);
            let up = self.running.is_some();
            Health {
                agent_ready: up,
                companion_ready: up,
                handshake: up && (!new || self.new_healthy),
                config_in_sync: up,
            }
        }

        /// Runs until the update finishes or `max_ms` of virtual time passes.
        fn run(&mut self, max_ms: u64) {
            let end = self.now + max_ms;
            while self.now < end && (self.finished.is_empty() || self.disk.is_some()) {
                let input = self.inputs.pop_front().unwrap_or_else(|| {
                    self.now += TICK_MS;
                    Input::Tick(self.health())
                });
                let actions = self.m.step(input, self.now);
                self.disk = self.m.journal.clone();
                for a in actions {
                    if self.crash_at == Some(self.done_actions) {
                        self.crash_at = None;
                        self.inputs.clear();
                        self.now += TICK_MS;
                        self.boot();
                        break;
                    }
                    self.done_actions += 1;
                    match a {
                        Action::Fetch => self.inputs.push_back(Input::Fetched(self.fetch.clone())),
                        Action::Stage { version, slot } => {
                            assert_ne!(slot, self.active, "staging over the running slot");
                            self.slots[idx(slot)] = Some(version);
                            let r = if self.stage_ok {
                                Ok(())
                            } else {
                                Err("sha256 mismatch".into())
                            };
                            self.inputs.push_back(Input::Staged(r));
                        }
                        Action::Activate(s) => self.active = s,
                        Action::Restart => {
                            self.inputs.clear();
                            self.boot();
                            break;
                        }
                        Action::Finish {
                            ok,
                            version,
                            reason,
                        } => {
                            self.finished.push((ok, version, reason));
                            self.disk = None;
                        }
                    }
                }
            }
        }

        fn running_version(&self) -> Option<&str> {
            self.running.as_deref()
        }
    }

    #[test]
    fn good_update_switches_and_reports_success() {
        let mut b = Box::new();
        b.request();
        b.run(3_600_000);
        assert_eq!(b.finished, vec![(true, Some(NEW.into()), None)]);
        assert_eq!(b.running_version(), Some(NEW));
        assert_eq!(b.active, Slot::B);
        assert_eq!(b.slots[0].as_deref(), Some(OLD), "the old slot is kept");
        assert!(b.disk.is_none());
    }

    #[test]
    fn unhealthy_new_version_is_rolled_back_after_the_deadline() {
        let mut b = Box::new();
        b.new_healthy = false;
        b.request();
        let start = b.now;
        b.run(3_600_000);
        let (ok, _, reason) = &b.finished[0];
        assert!(!ok);
        let reason = reason.as_deref().unwrap();
        assert!(
            reason.contains("not healthy within 300 s: no tunnel handshake"),
            "{reason}"
        );
        assert_eq!(b.running_version(), Some(OLD));
        assert_eq!(b.active, Slot::A);
        let took = b.now - start;
        assert!((300_000..=330_000).contains(&took), "{took} ms");
    }

    #[test]
    fn failed_download_retries_then_reports_without_switching() {
        let mut b = Box::new();
        b.stage_ok = false;
        b.request();
        b.run(3_600_000);
        assert_eq!(b.finished.len(), 1);
        assert_eq!(
            b.finished[0],
            (false, None, Some("download: sha256 mismatch".into()))
        );
        assert_eq!(b.active, Slot::A);
        assert_eq!(b.running_version(), Some(OLD));
    }

    #[test]
    fn bad_manifest_reports_after_bounded_attempts() {
        let mut b = Box::new();
        b.fetch = Err("signature does not match the content".into());
        b.request();
        let start = b.now;
        b.run(3_600_000);
        assert_eq!(
            b.finished,
            vec![(
                false,
                None,
                Some("manifest: signature does not match the content".into())
            )]
        );
        // Three attempts, 20 s apart.
        assert!(b.now - start <= 60_000, "{}", b.now - start);
        assert_eq!(b.running_version(), Some(OLD));
    }

    #[test]
    fn already_current_reports_success_without_installing() {
        let mut b = Box::new();
        b.fetch = Ok(Fetched::AlreadyCurrent);
        b.request();
        b.run(60_000);
        assert_eq!(b.finished, vec![(true, None, None)]);
        assert_eq!(b.slots[1], None);
    }

    #[test]
    fn power_cut_at_every_step_leaves_a_version_and_one_report() {
        // Count the actions of an uninterrupted run, then cut power before each one.
        let mut clean = Box::new();
        clean.request();
        clean.run(3_600_000);
        let steps = clean.done_actions;
        assert!(steps >= 5, "{steps}");
        for cut in 0..=steps {
            for healthy in [true, false] {
                let mut b = Box::new();
                b.new_healthy = healthy;
                b.crash_at = Some(cut);
                b.request();
                b.run(3_600_000);
                assert_eq!(b.finished.len(), 1, "cut {cut}: {:?}", b.finished);
                let (ok, _, reason) = &b.finished[0];
                let running = b.running_version().map(str::to_owned);
                if *ok {
                    assert!(healthy, "cut {cut}");
                    assert_eq!(running.as_deref(), Some(NEW), "cut {cut}");
                } else {
                    assert_eq!(running.as_deref(), Some(OLD), "cut {cut}: {reason:?}");
                    assert!(reason.is_some());
                }
                assert_eq!(b.slots[idx(b.active)], running, "cut {cut}");
            }
        }
    }

    #[test]
    fn journal_round_trips_through_json() {
        let j = Journal {
            request_id: "r".into(),
            target_version: None,
            requested_at_ms: 5,
            active: Slot::B,
            phase: Phase::Trial {
                version: NEW.into(),
                switched_at_ms: 7,
                boots: 2,
            },
        };
        let text = serde_json::to_string(&j).unwrap();
        assert!(text.contains(r#""phase":{"trial":{"#), "{text}");
        assert_eq!(serde_json::from_str::<Journal>(&text).unwrap(), j);
    }

    #[test]
    fn crash_loop_of_the_new_version_is_rolled_back() {
        // The new version dies after its update code counted the start (a panic later
        // in start-up): the boot count ends the loop.
        let mut m = Machine::new(None, Limits::default());
        let t = 1_000;
        m.step(
            Input::Request {
                request_id: "r".into(),
                target_version: None,
                active: Slot::A,
            },
            t,
        );
        m.step(
            Input::Fetched(Ok(Fetched::Install {
                version: NEW.into(),
            })),
            t,
        );
        m.step(Input::Staged(Ok(())), t);
        let boot = || Input::Boot {
            version: NEW.into(),
            active: Slot::B,
        };
        for i in 0..3 {
            assert_eq!(m.step(boot(), t + i), vec![], "boot {i}");
        }
        assert_eq!(
            m.step(boot(), t + 4),
            vec![Action::Activate(Slot::A), Action::Restart]
        );
        let out = m.step(
            Input::Boot {
                version: OLD.into(),
                active: Slot::A,
            },
            t + 5,
        );
        assert_eq!(
            out,
            vec![finish(
                false,
                None,
                Some(format!("{NEW} restarted 4 times (crash loop)"))
            )]
        );
        assert!(m.journal.is_some(), "kept until the record is written");
        assert_eq!(m.step(Input::Reported, t + 6), vec![]);
        assert!(m.journal.is_none());
    }
}
