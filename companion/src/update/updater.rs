//! `gatelet-update`: the updater process, a binary of its own (`src/bin/gatelet-update.rs`)
//! so that the daemon never carries the update code. It runs as root (from
//! `gatelet-update.service`, which the flag file and a boot with a journal start), takes up
//! the queued request or resumes the journal, restarts the daemons (`systemctl`, or the
//! `--restart-command` of a host without systemd), judges their health from the
//! companion's status socket, and exits when the update has ended.
//!
//! With `--watch SECS` it stays resident instead and runs an update whenever the flag or a
//! journal appears (`watch`): OpenWrt's procd has no path units.
//!
//! Without `GATELET_UPDATE_URL` a queued request is answered at once with a failed
//! `last-pull` ("self-update is not configured"), so the server shows "failed" rather than
//! "updating" for 15 minutes.

use std::io;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use gatelet_agent_api::env::{EnvFile, GatewayEnv, ENV_PATH_VAR};

use super::driver::{Driver, Host, Source};
use super::fetch::Fetcher;
use super::health;
use super::machine::Limits;
use super::manifest::Version;
use super::settings::{self, TARGET};
use super::slots::{LastPull, Slots};
use crate::cli::{UsageError, DEFAULT_STATE_DIR, DEFAULT_STATUS_SOCKET};
use crate::daemon::EXIT_CONFIG;
use crate::state::now_ms;
use crate::telemetry::PENDING_UPDATE_FILE;

/// Where the updater keeps the slots and its journal: root's, outside the daemons' state
/// dir (which their user can write).
pub const DEFAULT_UPDATE_DIR: &str = "/var/lib/gatelet-update";
/// Time between health checks.
pub const TICK: Duration = Duration::from_secs(2);
/// Longest a single HTTP request of the update may take (a binary of a few MiB).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(300);
/// The units restarted onto the new version, in order.
pub const UNITS: [&str; 2] = ["gatelet-agent.service", "gatelet-companion.service"];
/// Exit status of a usage error.
pub const EXIT_USAGE: u8 = 64;
/// Test hook: the updater kills itself (SIGKILL, as a power cut stops it) when it reaches
/// this point of an update (one of [`super::driver::CUT_POINTS`]). For tests-hw's power-cut
/// test; whoever can set a root service's environment can stop it anyway.
pub const CUT_AT_VAR: &str = "GATELET_UPDATE_CUT_AT";

/// Usage text of `gatelet-update`.
pub const USAGE: &str = "\
usage: gatelet-update [--env PATH] [--state-dir DIR] [--update-dir DIR]
                      [--status-socket PATH] [--restart-command PROG[ ARG...]]
                      [--health-deadline SECS] [--seed-by-link] [--watch SECS]
                      [--log-level LEVEL]
       gatelet-update --version

Runs the queued self-update (the flag <state dir>/pending-update) or resumes an interrupted
one (<update dir>/journal.json) to its end, then exits; as root, from gatelet-update.service
(docs/self-update.md). Nothing queued and no journal: exits 0 at once.

  --env PATH             gateway.env (default: $GATEWAY_ENV_PATH, else /etc/gatelet/gateway.env)
  --state-dir DIR        the daemons' state dir: flag and last-pull (default /var/lib/gatelet)
  --update-dir DIR       slots a/b, current, journal (default /var/lib/gatelet-update)
  --status-socket PATH   the companion's status socket (default /run/gatelet/companion.sock)
  --restart-command CMD  restarts both daemons (split on spaces, no shell; default:
                         systemctl restart gatelet-agent.service gatelet-companion.service)
  --health-deadline SECS time the new version gets to become healthy before it is rolled
                         back (default 300, at least 10)
  --seed-by-link         keep the installed binaries as the first slot through symlinks,
                         not copies (a read-only image's /usr/bin: OpenWrt)
  --watch SECS           stay resident: look for the flag or a journal at once and then
                         every SECS (1 to 3600), run each update to its end (OpenWrt)
  --log-level LEVEL      error, warn, info (default), debug, trace
";

/// Options of `gatelet-update`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Args {
    /// `--env`.
    pub env: Option<PathBuf>,
    /// `--state-dir`.
    pub state_dir: PathBuf,
    /// `--update-dir`.
    pub update_dir: PathBuf,
    /// `--status-socket`.
    pub status_socket: PathBuf,
    /// `--restart-command`, split: program and arguments (empty: systemctl).
    pub restart_command: Vec<String>,
    /// `--health-deadline`.
    pub health_deadline: Duration,
    /// `--log-level`.
    pub log_level: String,
    /// `--seed-by-link`.
    pub seed_by_link: bool,
    /// `--watch`: the interval between looks for work.
    pub watch: Option<Duration>,
}

/// What `gatelet-update`'s command line asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Run the updater.
    Run(Args),
    /// Print usage.
    Help,
    /// Print the version.
    Version,
}

/// Parses the arguments after the program name.
pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Command, UsageError> {
    let mut args = args.into_iter();
    let mut out = Args {
        env: None,
        state_dir: DEFAULT_STATE_DIR.into(),
        update_dir: DEFAULT_UPDATE_DIR.into(),
        status_socket: DEFAULT_STATUS_SOCKET.into(),
        restart_command: Vec::new(),
        health_deadline: Limits::default().health_deadline,
        log_level: "info".into(),
        seed_by_link: false,
        watch: None,
    };
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_owned(), Some(v.to_owned())),
            _ => (arg.clone(), None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| args.next())
                .ok_or_else(|| UsageError(format!("{flag} needs a value")))
        };
        match flag.as_str() {
            "-h" | "--help" => return Ok(Command::Help),
            "-V" | "--version" => return Ok(Command::Version),
            "--env" => out.env = Some(value()?.into()),
            "--state-dir" => out.state_dir = value()?.into(),
            "--update-dir" => out.update_dir = value()?.into(),
            "--status-socket" => out.status_socket = value()?.into(),
            "--restart-command" => {
                let v = value()?;
                out.restart_command = v.split_whitespace().map(str::to_owned).collect();
                if out.restart_command.is_empty() {
                    return Err(UsageError("--restart-command is empty".into()));
                }
            }
            "--health-deadline" => {
                let v = value()?;
                match v.parse::<u64>() {
                    Ok(secs) if (10..=3600).contains(&secs) => {
                        out.health_deadline = Duration::from_secs(secs)
                    }
                    _ => {
                        return Err(UsageError(format!(
                            "--health-deadline must be 10 to 3600 seconds, not {v:?}"
                        )))
                    }
                }
            }
            "--seed-by-link" => out.seed_by_link = true,
            "--watch" => {
                let v = value()?;
                match v.parse::<u64>() {
                    Ok(secs) if (1..=3600).contains(&secs) => {
                        out.watch = Some(Duration::from_secs(secs))
                    }
                    _ => {
                        return Err(UsageError(format!(
                            "--watch must be 1 to 3600 seconds, not {v:?}"
                        )))
                    }
                }
            }
            "--log-level" => {
                let v = value()?;
                if gatelet_agent_api::logging::parse_level(&v).is_none() {
                    return Err(UsageError(format!(
                        "--log-level must be error, warn, info, debug or trace, not {v:?}"
                    )));
                }
                out.log_level = v;
            }
            _ => return Err(UsageError(format!("unknown argument {arg:?}"))),
        }
    }
    if out.update_dir.starts_with(&out.state_dir) {
        return Err(UsageError(
            "--update-dir must not be inside --state-dir (the daemons' user can write there)"
                .into(),
        ));
    }
    Ok(Command::Run(out))
}

/// Restarts the daemons: `systemctl restart` of [`UNITS`], or the given command; stops
/// the process at the cut point, if one was asked for ([`CUT_AT_VAR`]).
struct Restarter {
    command: Vec<String>,
    cut_at: Option<String>,
}

impl Host for Restarter {
    fn at(&mut self, point: &str) {
        if self.cut_at.as_deref() == Some(point) {
            tracing::warn!(point, "{CUT_AT_VAR}: killing the updater here");
            let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
        }
    }

    fn restart(&mut self) -> io::Result<()> {
        let mut cmd = match self.command.split_first() {
            Some((prog, args)) => {
                let mut c = std::process::Command::new(prog);
                c.args(args);
                c
            }
            None => {
                // A unit that hit its start limit (a crash-looping version on trial) refuses
                // `restart` until its failure is reset; that must not block the rollback.
                let _ = std::process::Command::new("systemctl")
                    .arg("reset-failed")
                    .args(UNITS)
                    .status();
                let mut c = std::process::Command::new("systemctl");
                c.arg("restart").args(UNITS);
                c
            }
        };
        let status = cmd.status()?;
        if status.success() {
            Ok(())
        } else {
            Err(io::Error::other(format!("restart command: {status}")))
        }
    }

    fn now_ms(&self) -> u64 {
        now_ms()
    }
}

/// Answers a queued request when updates are not configured; true if there was one.
pub fn refuse_unconfigured(state_dir: &Path, now_ms: u64) -> io::Result<bool> {
    let flag = state_dir.join(PENDING_UPDATE_FILE);
    let Some(bytes) = super::driver::read_flag(&flag)? else {
        return Ok(false);
    };
    let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
    if let Some(request_id) = v["request_id"].as_str() {
        LastPull {
            request_id: request_id.to_owned(),
            ok: false,
            pulled_at_ms: now_ms,
            version: None,
            reason: Some(format!(
                "self-update is not configured: set {} in gateway.env",
                settings::URL_KEY
            )),
        }
        .write(state_dir)?;
    }
    std::fs::remove_file(flag)?;
    Ok(true)
}

/// The version the daemons run: the active slot's, else (never updated: they are the
/// installed binaries, from the same release as this updater) this binary's own. Not the
/// updater's own after an update (the updater is not replaced): comparing a manifest with
/// that would re-offer, or downgrade to, a release older than the one running.
pub fn running_version(slots: &Slots) -> Version {
    let own: Version = env!("CARGO_PKG_VERSION")
        .parse()
        .expect("own version parses");
    let recorded = slots
        .active()
        .ok()
        .flatten()
        .and_then(|slot| slots.version(slot))
        .and_then(|v| v.parse().ok());
    recorded.unwrap_or(own)
}

/// The cut point asked for in [`CUT_AT_VAR`]'s value: a known point, else none (logged).
fn cut_at(value: Option<String>) -> Option<String> {
    let v = value.filter(|v| !v.is_empty())?;
    if super::driver::CUT_POINTS.contains(&v.as_str()) {
        Some(v)
    } else {
        tracing::warn!(value = v, "{CUT_AT_VAR} names no cut point; ignored");
        None
    }
}

/// Runs the updater: once (exit 0 when nothing is left to do), or resident with `--watch`
/// (never returns: the service manager stops it with a signal).
pub fn run(args: &Args) -> ExitCode {
    let level = gatelet_agent_api::logging::parse_level(&args.log_level)
        .unwrap_or(tracing::level_filters::LevelFilter::INFO);
    gatelet_agent_api::logging::init("gatelet-update", level, &[]);
    let Some(interval) = args.watch else {
        return ExitCode::from(update_once(args));
    };
    tracing::info!(
        interval_s = interval.as_secs(),
        "watching for self-update requests"
    );
    super::watch::watch(
        || super::watch::pending(&args.state_dir, &args.update_dir),
        || update_once(args) == 0,
        std::thread::sleep,
        interval,
        super::watch::FAILED_RUN_BACKOFF,
        None,
    );
    ExitCode::SUCCESS
}

/// One run of the updater: the queued request or the journal, to its end. Reads gateway.env
/// afresh (a resident watcher sees its changes). Returns the exit status: 0 when nothing is
/// left to do.
pub fn update_once(args: &Args) -> u8 {
    let var = std::env::var(ENV_PATH_VAR).ok();
    let path = GatewayEnv::resolve_path(args.env.as_deref(), var.as_deref());
    let env = match std::fs::read_to_string(&path)
        .map_err(|e| e.to_string())
        .and_then(|t| EnvFile::parse(&t).map_err(|e| e.to_string()))
    {
        Ok(env) => env,
        Err(e) => {
            eprintln!("gatelet-update: {}: {e}", path.display());
            return EXIT_CONFIG;
        }
    };
    let settings = match settings::from_env(&env) {
        Ok(Some(s)) => s,
        Ok(None) => {
            return match refuse_unconfigured(&args.state_dir, now_ms()) {
                Ok(had) => {
                    if had {
                        tracing::warn!(
                            "self-update requested but {} is not set",
                            settings::URL_KEY
                        );
                    }
                    // A journal from before the setting was removed cannot go on: say so,
                    // and fail (a watcher then backs off instead of rereading every look).
                    if Slots::new(&args.update_dir)
                        .load_journal()
                        .ok()
                        .flatten()
                        .is_some()
                    {
                        tracing::error!(
                            "an update is in progress but {} is not set: set it again to finish it",
                            settings::URL_KEY
                        );
                        return 1;
                    }
                    0
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot answer the self-update request");
                    1
                }
            };
        }
        Err(e) => {
            eprintln!("gatelet-update: {}: {e}", path.display());
            return EXIT_CONFIG;
        }
    };
    // The binaries next to this one (the units start both from the same directory).
    let installed = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_owned))
        .unwrap_or_else(|| "/usr/bin".into());
    let source = Source {
        manifest_url: settings.manifest_url,
        keys: settings.keys,
        triple: TARGET.to_owned(),
        running: running_version(&Slots::new(&args.update_dir)),
        installed,
        seed_by_link: args.seed_by_link,
    };
    let limits = Limits {
        health_deadline: args.health_deadline,
        ..Limits::default()
    };
    let result = Driver::new(
        &args.state_dir,
        &args.update_dir,
        Fetcher::new(REQUEST_TIMEOUT),
        source,
        Restarter {
            command: args.restart_command.clone(),
            cut_at: cut_at(std::env::var(CUT_AT_VAR).ok()),
        },
        limits,
    )
    .and_then(|mut d| {
        d.restart_after_a_cut()?;
        d.boot()?;
        // Enough ticks for every attempt and the health deadline, with room to spare.
        let span = limits.overall + limits.health_deadline + Duration::from_secs(120);
        let ticks = (span.as_secs() / TICK.as_secs()) as u32;
        let socket = args.status_socket.clone();
        let ended = d.run_to_end(
            |version| {
                let report = crate::status::fetch_from_daemon(&socket).ok();
                health::from_report(report.as_ref(), version)
            },
            std::thread::sleep,
            TICK,
            ticks,
        )?;
        tracing::info!(ended, bytes = d.bytes_downloaded, "updater done");
        Ok(ended)
    });
    match result {
        Ok(true) => 0,
        Ok(false) => {
            tracing::error!(
                "update still in progress after the updater's bound; the journal resumes it"
            );
            1
        }
        Err(e) => {
            tracing::error!(error = %e, "updater failed; the journal resumes it");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn command_line_defaults_and_options() {
        let Command::Run(a) = parse(argv("")).unwrap() else {
            panic!("expected run")
        };
        assert_eq!(a.state_dir, PathBuf::from(DEFAULT_STATE_DIR));
        assert_eq!(a.update_dir, PathBuf::from(DEFAULT_UPDATE_DIR));
        assert!(a.restart_command.is_empty());
        let Command::Run(a) = parse(vec![
            "--env=/e".into(),
            "--state-dir".into(),
            "/s".into(),
            "--update-dir=/u".into(),
            "--restart-command".into(),
            "/etc/init.d/gatelet  restart".into(),
        ])
        .unwrap() else {
            panic!("expected run")
        };
        assert_eq!(a.env, Some("/e".into()));
        assert_eq!(
            (a.state_dir.as_path(), a.update_dir.as_path()),
            (Path::new("/s"), Path::new("/u"))
        );
        assert_eq!(a.restart_command, ["/etc/init.d/gatelet", "restart"]);
        assert_eq!(parse(argv("--version")).unwrap(), Command::Version);
        assert!(parse(argv("--mgmt-listen 127.0.0.1:1")).is_err());
        assert!(parse(argv("--restart-command")).is_err());
        assert!(parse(vec!["--restart-command= ".into()]).is_err());
        assert!(parse(argv("--state-dir /s --update-dir /s/u")).is_err());
        let Command::Run(a) = parse(argv("--health-deadline 40")).unwrap() else {
            panic!("expected run")
        };
        assert_eq!(a.health_deadline, Duration::from_secs(40));
        assert!(parse(argv("--health-deadline 5")).is_err());
        assert!(parse(argv("--health-deadline soon")).is_err());
        let Command::Run(a) = parse(argv("--watch 10 --seed-by-link")).unwrap() else {
            panic!("expected run")
        };
        assert_eq!(a.watch, Some(Duration::from_secs(10)));
        assert!(a.seed_by_link);
        let Command::Run(a) = parse(argv("")).unwrap() else {
            panic!("expected run")
        };
        assert_eq!((a.watch, a.seed_by_link), (None, false));
        assert!(parse(argv("--watch 0")).is_err());
        assert!(parse(argv("--watch 3601")).is_err());
        assert!(parse(argv("--watch")).is_err());
    }

    #[test]
    fn the_cut_point_must_be_a_known_one() {
        assert_eq!(cut_at(None), None);
        assert_eq!(cut_at(Some(String::new())), None);
        assert_eq!(cut_at(Some("activate b".into())), Some("activate b".into()));
        assert_eq!(cut_at(Some("somewhere".into())), None);
    }

    #[test]
    fn the_running_version_is_the_active_slots() {
        let d = tempfile::tempdir().unwrap();
        let slots = Slots::new(d.path());
        let own = env!("CARGO_PKG_VERSION");
        assert_eq!(running_version(&slots).to_string(), own);
        slots
            .set_version(super::super::machine::Slot::B, Some("9.8.7"))
            .unwrap();
        assert_eq!(running_version(&slots).to_string(), own, "b is not active");
        slots.activate(super::super::machine::Slot::B).unwrap();
        assert_eq!(running_version(&slots).to_string(), "9.8.7");
    }

    #[test]
    fn an_unconfigured_box_answers_the_request_at_once() {
        let d = tempfile::tempdir().unwrap();
        assert!(!refuse_unconfigured(d.path(), 5).unwrap());
        assert_eq!(LastPull::read(d.path()), None);
        std::fs::write(
            d.path().join(PENDING_UPDATE_FILE),
            br#"{"request_id":"q1","target_version":null}"#,
        )
        .unwrap();
        assert!(refuse_unconfigured(d.path(), 5).unwrap());
        let lp = LastPull::read(d.path()).unwrap();
        assert_eq!(
            (lp.request_id.as_str(), lp.ok, lp.pulled_at_ms),
            ("q1", false, 5)
        );
        assert!(lp.reason.unwrap().contains("GATELET_UPDATE_URL"));
        assert!(!d.path().join(PENDING_UPDATE_FILE).exists());
    }
}
