//! The container deployment's share of the update code: what the host-side updater
//! (`deploy/gatelet-container-update.sh`) cannot decide in a shell script. It runs these as
//! `gatelet-companion container-plan` / `container-report` from the image that is running
//! (`docker run --rm`), so the trust anchor (the built-in release key, plus
//! `GATELET_UPDATE_PUBKEY`) and the version rules are this crate's, in one place. Subcommands
//! of the companion rather than of `gatelet-update`: the image then carries no third binary
//! (about 2 MB); the companion already links what they need (ring, serde_json), so they
//! add little to it:
//!
//! - [`plan`]: the queued request (the flag file) and the fetched manifest and signature in,
//!   the decision out: install `image` (the manifest's image by digest), "already current",
//!   or refuse with a reason. The manifest is verified before anything in it is read.
//! - [`Report`]: writes the `last-pull` record (the flashed updater's format plus
//!   `image_digest`, the digest of the image left running) and removes the flag.
//! - [`image_digest`]: the companion's heartbeat reads `image_digest` from that record.
//!
//! Versions: the running version is this binary's own (it runs from the running image). A
//! manifest never moves to an older version, except when the request names exactly that
//! version as `target_version` (an explicit downgrade the server asked for; a replayed old
//! manifest alone is still "already current").

use std::io;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use gatelet_agent_api::env::EnvFile;
use serde_json::{json, Value};

use super::manifest::{self, Offer, Version};
use super::minisign::PublicKey;
use super::settings;
use super::slots::LastPull;
use crate::cli::{UsageError, DEFAULT_STATE_DIR};
use crate::mgmt::self_update::{write_atomically, LAST_PULL_FILE};
use crate::telemetry::PENDING_UPDATE_FILE;

/// What the host-side updater is to do with a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Pull `image` (by digest) and recreate the services; `version` must then be reported.
    Install {
        /// The release version.
        version: Version,
        /// `name@sha256:<64 hex>`.
        image: String,
    },
    /// The running version already satisfies the request: report success, pull nothing.
    Current,
    /// Answer the request with this failure, pull nothing.
    Refuse(String),
}

/// Decides on a verified manifest. `target` is the request's `target_version`.
pub fn decide(m: &manifest::Manifest, running: &Version, target: Option<&str>) -> Plan {
    let explicit_downgrade = target
        .and_then(|t| t.parse::<Version>().ok())
        .is_some_and(|t| t == m.version && m.version < *running);
    let offer = if explicit_downgrade {
        Ok(Offer::Install)
    } else {
        manifest::offer(&m.version, running, target)
    };
    match offer {
        Ok(Offer::AlreadyCurrent) => Plan::Current,
        Ok(Offer::Install) => match &m.image {
            Some(image) => Plan::Install {
                version: m.version.clone(),
                image: image.clone(),
            },
            None => Plan::Refuse(format!(
                "the release {} has no container image (manifest field \"image\")",
                m.version
            )),
        },
        Err(e) => Plan::Refuse(e.to_string()),
    }
}

/// The request in the flag file: `(request_id, target_version)`; `None` if it has no id.
pub fn request(flag: &[u8]) -> Option<(String, Option<String>)> {
    let v: Value = serde_json::from_slice(flag).ok()?;
    let id = v["request_id"].as_str().filter(|s| !s.is_empty())?;
    Some((
        id.to_owned(),
        v["target_version"].as_str().map(str::to_owned),
    ))
}

/// Verifies `manifest` with `signature` against `keys` and decides for the request.
pub fn plan(
    manifest_bytes: &[u8],
    signature: &str,
    keys: &[PublicKey],
    running: &Version,
    target: Option<&str>,
) -> Plan {
    match manifest::verify(manifest_bytes, signature, keys) {
        Ok(m) => decide(&m, running, target),
        Err(e) => Plan::Refuse(e.to_string()),
    }
}

/// The `image_digest` of the `last-pull` record in `state_dir` (`sha256:<64 hex>`), if any.
pub fn image_digest(state_dir: &Path) -> Option<String> {
    let bytes = std::fs::read(state_dir.join(LAST_PULL_FILE)).ok()?;
    if bytes.len() > 16 * 1024 {
        return None;
    }
    let v: Value = serde_json::from_slice(&bytes).ok()?;
    let d = v["image_digest"].as_str()?;
    is_digest(d).then(|| d.to_owned())
}

/// `sha256:<64 lowercase hex>`.
pub fn is_digest(d: &str) -> bool {
    d.strip_prefix("sha256:").is_some_and(|h| {
        h.len() == 64
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// The end of a container update, as `container-report` writes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// Success.
    pub ok: bool,
    /// Why it failed.
    pub reason: Option<String>,
    /// The version running now, when it changed.
    pub version: Option<String>,
    /// The digest of the image running now.
    pub image_digest: Option<String>,
}

impl Report {
    /// Answers the queued request in `state_dir` (the flag's `request_id`) with a
    /// `last-pull` record, then removes the flag. `Ok(false)`: no request was queued.
    pub fn answer(&self, state_dir: &Path, now_ms: u64) -> io::Result<bool> {
        let flag = state_dir.join(PENDING_UPDATE_FILE);
        let Some(bytes) = super::driver::read_flag(&flag)? else {
            return Ok(false);
        };
        if let Some((request_id, _)) = request(&bytes) {
            let lp = LastPull {
                request_id,
                ok: self.ok,
                pulled_at_ms: now_ms,
                version: self.version.clone(),
                reason: self.reason.clone(),
            };
            write_atomically(
                state_dir,
                LAST_PULL_FILE,
                &json!({
                    "request_id": lp.request_id,
                    "ok": lp.ok,
                    "pulled_at": lp.pulled_at_ms,
                    "version": lp.version,
                    "reason": lp.reason,
                    "image_digest": self.image_digest,
                }),
            )?;
        }
        std::fs::remove_file(flag)?;
        Ok(true)
    }
}

/// Usage of the container subcommands.
pub const USAGE: &str = "\
usage: gatelet-companion container-plan [--env PATH] [--state-dir DIR] --manifest FILE --signature FILE
       gatelet-companion container-report [--state-dir DIR] (--ok | --failed REASON)
                                          [--version V] [--image-digest sha256:HEX]

For the host-side container updater (deploy/gatelet-container-update.sh), run from the image
that is running. container-plan reads the queued request (<state dir>/pending-update), verifies
the fetched manifest and its minisign signature against the trusted keys (built in, plus
GATELET_UPDATE_PUBKEY from gateway.env) and prints the decision as key=value lines:
action=none (nothing queued), action=current, action=install with version= and image=
(NAME@sha256:HEX), or action=refuse with reason= (exit 1). container-report answers the queued
request with the last-pull record and removes the flag (exit 3: nothing was queued).
";

/// A parsed container subcommand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `container-plan`.
    Plan {
        /// `--env`.
        env: PathBuf,
        /// `--state-dir`.
        state_dir: PathBuf,
        /// `--manifest`.
        manifest: PathBuf,
        /// `--signature`.
        signature: PathBuf,
    },
    /// `container-report`.
    Report {
        /// `--state-dir`.
        state_dir: PathBuf,
        /// What to write.
        report: Report,
    },
}

/// Parses `container-plan …` / `container-report …` (the subcommand name first); `None` if
/// the first argument is neither.
pub fn parse(args: &[String]) -> Option<Result<Command, UsageError>> {
    let (sub, rest) = args.split_first()?;
    if sub != "container-plan" && sub != "container-report" {
        return None;
    }
    Some(parse_sub(sub == "container-plan", rest))
}

fn parse_sub(is_plan: bool, rest: &[String]) -> Result<Command, UsageError> {
    let mut env = PathBuf::from(gatelet_agent_api::env::DEFAULT_ENV_PATH);
    let mut state_dir = PathBuf::from(DEFAULT_STATE_DIR);
    let (mut manifest, mut signature) = (None, None);
    let mut report = Report {
        ok: false,
        reason: None,
        version: None,
        image_digest: None,
    };
    let mut outcome = false;
    let mut it = rest.iter();
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .cloned()
                .ok_or_else(|| UsageError(format!("{flag} needs a value")))
        };
        match (is_plan, flag.as_str()) {
            (_, "-h" | "--help") => return Err(UsageError("usage".into())),
            (_, "--state-dir") => state_dir = value()?.into(),
            (true, "--env") => env = value()?.into(),
            (true, "--manifest") => manifest = Some(PathBuf::from(value()?)),
            (true, "--signature") => signature = Some(PathBuf::from(value()?)),
            (false, "--ok") => {
                report.ok = true;
                outcome = true;
            }
            (false, "--failed") => {
                report.reason = Some(one_line(&value()?));
                outcome = true;
            }
            (false, "--version") => {
                let v = value()?;
                v.parse::<Version>().map_err(UsageError)?;
                report.version = Some(v);
            }
            (false, "--image-digest") => {
                let d = value()?;
                if !is_digest(&d) {
                    return Err(UsageError(format!(
                        "--image-digest must be sha256:<64 hex digits>, not {d:?}"
                    )));
                }
                report.image_digest = Some(d);
            }
            _ => return Err(UsageError(format!("unknown argument {flag:?}"))),
        }
    }
    if is_plan {
        let (Some(manifest), Some(signature)) = (manifest, signature) else {
            return Err(UsageError(
                "container-plan needs --manifest and --signature".into(),
            ));
        };
        Ok(Command::Plan {
            env,
            state_dir,
            manifest,
            signature,
        })
    } else if !outcome || (report.ok && report.reason.is_some()) {
        Err(UsageError(
            "container-report needs exactly one of --ok and --failed".into(),
        ))
    } else {
        Ok(Command::Report { state_dir, report })
    }
}

/// Control characters (a newline would end the key=value line) become spaces.
fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// Runs a parsed container subcommand.
pub fn run(cmd: &Command) -> ExitCode {
    match cmd {
        Command::Plan {
            env,
            state_dir,
            manifest,
            signature,
        } => run_plan(env, state_dir, manifest, signature),
        Command::Report { state_dir, report } => {
            match report.answer(state_dir, crate::state::now_ms()) {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => {
                    eprintln!("gatelet-companion container-report: no request queued");
                    ExitCode::from(3)
                }
                Err(e) => {
                    eprintln!("gatelet-companion container-report: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn run_plan(env: &Path, state_dir: &Path, manifest: &Path, signature: &Path) -> ExitCode {
    let refuse = |reason: &str| {
        println!("action=refuse\nreason={}", one_line(reason));
        ExitCode::FAILURE
    };
    let flag = match super::driver::read_flag(&state_dir.join(PENDING_UPDATE_FILE)) {
        Ok(Some(bytes)) => bytes,
        Ok(None) => {
            println!("action=none");
            return ExitCode::SUCCESS;
        }
        Err(e) => return refuse(&format!("reading the request: {e}")),
    };
    let Some((_, target)) = request(&flag) else {
        return refuse("the queued request has no request_id");
    };
    let keys = match std::fs::read_to_string(env)
        .map_err(|e| format!("{}: {e}", env.display()))
        .and_then(|t| EnvFile::parse(&t).map_err(|e| format!("{}: {e}", env.display())))
        .and_then(|e| settings::from_env(&e).map_err(|e| e.to_string()))
    {
        Ok(Some(s)) => s.keys,
        Ok(None) => {
            return refuse(&format!(
                "self-update is not configured: set {} in gateway.env",
                settings::URL_KEY
            ))
        }
        Err(e) => return refuse(&e),
    };
    let bytes = match read_capped(manifest, manifest::MAX_MANIFEST_BYTES) {
        Ok(b) => b,
        Err(e) => return refuse(&format!("manifest: {e}")),
    };
    let sig = match read_capped(signature, 4096).map(String::from_utf8) {
        Ok(Ok(s)) => s,
        Ok(Err(_)) => return refuse("manifest signature: not UTF-8"),
        Err(e) => return refuse(&format!("manifest signature: {e}")),
    };
    let running: Version = env!("CARGO_PKG_VERSION")
        .parse()
        .expect("own version parses");
    match plan(&bytes, &sig, &keys, &running, target.as_deref()) {
        Plan::Install { version, image } => {
            println!("action=install\nversion={version}\nimage={image}");
            ExitCode::SUCCESS
        }
        Plan::Current => {
            println!("action=current\nversion={running}");
            ExitCode::SUCCESS
        }
        Plan::Refuse(reason) => refuse(&reason),
    }
}

fn read_capped(path: &Path, max: usize) -> io::Result<Vec<u8>> {
    use std::io::Read;
    let mut bytes = Vec::new();
    std::fs::File::open(path)?
        .take(max as u64 + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() > max {
        return Err(io::Error::other(format!("larger than {max} bytes")));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIX: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/update/");

    fn fixture(name: &str) -> String {
        std::fs::read_to_string(format!("{FIX}{name}")).unwrap()
    }

    fn v(s: &str) -> Version {
        s.parse().unwrap()
    }

    fn signed() -> manifest::Manifest {
        let keys = [PublicKey::parse(&fixture("release-a.pub")).unwrap()];
        manifest::verify(
            fixture("manifest.json").as_bytes(),
            &fixture("manifest.json.minisig"),
            &keys,
        )
        .unwrap()
    }

    const IMAGE: &str =
        "reg:5000/gatelet@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn decisions_up_current_refused_and_the_explicit_downgrade() {
        let mut m = signed(); // 0.2.0
        assert_eq!(
            decide(&m, &v("0.1.0"), None),
            Plan::Refuse(
                "the release 0.2.0 has no container image (manifest field \"image\")".into()
            )
        );
        m.image = Some(IMAGE.into());
        let install = Plan::Install {
            version: v("0.2.0"),
            image: IMAGE.into(),
        };
        assert_eq!(decide(&m, &v("0.1.0"), None), install);
        assert_eq!(decide(&m, &v("0.1.0"), Some("0.2.0")), install);
        assert_eq!(decide(&m, &v("0.2.0"), None), Plan::Current);
        // A replayed older manifest: never installed unasked.
        assert_eq!(decide(&m, &v("0.3.0"), None), Plan::Current);
        assert_eq!(decide(&m, &v("0.3.0"), Some("0.2.1")), Plan::Current);
        // Asked for exactly that older version: the downgrade.
        assert_eq!(decide(&m, &v("0.3.0"), Some("v0.2.0")), install);
        assert!(matches!(
            decide(&m, &v("0.1.0"), Some("0.2.5")),
            Plan::Refuse(r) if r.contains("older than the requested 0.2.5")
        ));
    }

    #[test]
    fn plan_verifies_before_deciding() {
        let keys = [PublicKey::parse(&fixture("release-a.pub")).unwrap()];
        let other = [PublicKey::parse(&fixture("release-b.pub")).unwrap()];
        let m = fixture("manifest.json");
        let sig = fixture("manifest.json.minisig");
        assert!(matches!(
            plan(m.as_bytes(), &sig, &keys, &v("0.1.0"), None),
            Plan::Refuse(r) if r.contains("no container image")
        ));
        assert!(matches!(
            plan(m.as_bytes(), &sig, &other, &v("0.1.0"), None),
            Plan::Refuse(r) if r.contains("not a trusted release key")
        ));
        let tampered = m.replace("0.2.0", "0.2.1");
        assert!(matches!(
            plan(tampered.as_bytes(), &sig, &keys, &v("0.1.0"), None),
            Plan::Refuse(r) if r.starts_with("manifest signature")
        ));
    }

    #[test]
    fn the_report_answers_the_queued_request_with_the_digest() {
        let d = tempfile::tempdir().unwrap();
        let r = Report {
            ok: false,
            reason: Some("0.1.3 not healthy within 90 s".into()),
            version: None,
            image_digest: Some(format!("sha256:{}", "ab".repeat(32))),
        };
        assert!(!r.answer(d.path(), 5).unwrap(), "nothing queued");
        assert_eq!(image_digest(d.path()), None);
        std::fs::write(
            d.path().join(PENDING_UPDATE_FILE),
            br#"{"request_id":"r-7","target_version":"0.1.3"}"#,
        )
        .unwrap();
        assert!(r.answer(d.path(), 1_764_000_000_000).unwrap());
        assert!(!d.path().join(PENDING_UPDATE_FILE).exists());
        let lp = LastPull::read(d.path()).unwrap();
        assert_eq!(
            (lp.request_id.as_str(), lp.ok, lp.pulled_at_ms),
            ("r-7", false, 1_764_000_000_000)
        );
        assert_eq!(lp.reason.as_deref(), Some("0.1.3 not healthy within 90 s"));
        assert_eq!(image_digest(d.path()), r.image_digest);
    }

    #[test]
    fn usage() {
        let args = |s: &str| s.split(' ').map(str::to_owned).collect::<Vec<_>>();
        assert_eq!(parse(&args("--state-dir x")), None);
        assert!(matches!(
            parse(&args("container-plan --manifest m --signature s")),
            Some(Ok(Command::Plan { .. }))
        ));
        assert!(parse(&args("container-plan --manifest m"))
            .unwrap()
            .is_err());
        assert!(parse(&args("container-report --state-dir s"))
            .unwrap()
            .is_err());
        assert!(parse(&args("container-report --ok --failed x"))
            .unwrap()
            .is_err());
        assert!(
            parse(&args("container-report --ok --image-digest sha256:12"))
                .unwrap()
                .is_err()
        );
        let Some(Ok(Command::Report { report, .. })) =
            parse(&args("container-report --failed a\nb --version 0.1.2"))
        else {
            panic!()
        };
        assert_eq!(report.reason.as_deref(), Some("a b"));
        assert_eq!(report.version.as_deref(), Some("0.1.2"));
    }
}
