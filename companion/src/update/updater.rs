//! `gatelet-companion update`: the updater process. It runs as root (from a unit the flag
//! file triggers, and at boot while a journal exists), takes up the queued request or
//! resumes the journal, restarts the daemons with `systemctl`, judges their health from
//! the companion's status socket, and exits when the update has ended.
//!
//! Without `GATELET_UPDATE_URL` a queued request is answered at once with a failed
//! `last-pull` ("self-update is not configured"), so the server shows "failed" rather than
//! "updating" for 15 minutes.

use std::io;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use gatelet_agent_api::env::{EnvFile, GatewayEnv, ENV_PATH_VAR};

use super::driver::{Driver, Host, Source};
use super::fetch::Fetcher;
use super::health;
use super::machine::Limits;
use super::settings::{self, TARGET};
use super::slots::LastPull;
use crate::cli::RunArgs;
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

/// Restarts the units with `systemctl`.
struct Systemd;

impl Host for Systemd {
    fn restart(&mut self) -> io::Result<()> {
        let status = std::process::Command::new("systemctl")
            .arg("restart")
            .args(UNITS)
            .status()?;
        if status.success() {
            Ok(())
        } else {
            Err(io::Error::other(format!("systemctl restart: {status}")))
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

/// Runs the updater; exit 0 when nothing is left to do.
pub fn run(args: &RunArgs) -> ExitCode {
    let level = gatelet_agent_api::logging::parse_level(&args.log_level)
        .unwrap_or(tracing::level_filters::LevelFilter::INFO);
    gatelet_agent_api::logging::init("gatelet-update", level, &[]);
    let var = std::env::var(ENV_PATH_VAR).ok();
    let path = GatewayEnv::resolve_path(args.env.as_deref(), var.as_deref());
    let env = match std::fs::read_to_string(&path)
        .map_err(|e| e.to_string())
        .and_then(|t| EnvFile::parse(&t).map_err(|e| e.to_string()))
    {
        Ok(env) => env,
        Err(e) => {
            eprintln!("gatelet-companion update: {}: {e}", path.display());
            return ExitCode::from(EXIT_CONFIG);
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
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot answer the self-update request");
                    ExitCode::FAILURE
                }
            };
        }
        Err(e) => {
            eprintln!("gatelet-companion update: {}: {e}", path.display());
            return ExitCode::from(EXIT_CONFIG);
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
        running: env!("CARGO_PKG_VERSION")
            .parse()
            .expect("own version parses"),
        installed,
    };
    let limits = Limits::default();
    let result = Driver::new(
        &args.state_dir,
        Path::new(DEFAULT_UPDATE_DIR),
        Fetcher::new(REQUEST_TIMEOUT),
        source,
        Systemd,
        limits,
    )
    .and_then(|mut d| {
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
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            tracing::error!(
                "update still in progress after the updater's bound; the journal resumes it"
            );
            ExitCode::FAILURE
        }
        Err(e) => {
            tracing::error!(error = %e, "updater failed; the journal resumes it");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
