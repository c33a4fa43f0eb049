//! A self-update release for the tests: a minisign key made at test time, a release directory
//! (manifest written by `deploy/release-manifest.sh`, signed with `minisign -S -l`, binaries
//! under `<triple>/`), a static HTTP server for it (`python3 -m http.server`, no Range support,
//! so resumed downloads start over: the updater copes) and same-length version patching that
//! turns a build into "the next release".
//!
//! Why patched copies for the next release: the updater treats binaries as opaque bytes (size
//! and SHA-256 from the signed manifest), and the health gate needs the new daemons to REPORT
//! the new version (`agent_version`, `companion_version`). Rebuilding the workspace with another
//! version would cost a second full build (minutes, GBs of target dir) in every test run;
//! replacing the `CARGO_PKG_VERSION` bytes (`0.1.0` -> `0.1.1`, same length, so every `&str`
//! stays valid) gives binaries that run the same code and say they are the next release.
//! Every occurrence is replaced (a dependency's `0.1.0` in a panic location too: harmless).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::{run, wait_until, workspace_root, HarnessError, Netns, Process, Result};

/// How long the release server gets to listen.
pub const RELEASE_SERVER_START_TIMEOUT: Duration = Duration::from_secs(15);

/// A minisign key pair (unencrypted secret key, `minisign -G -W`) in a directory of the test.
#[derive(Debug)]
pub struct MinisignKey {
    secret: PathBuf,
    /// The base64 line of the public key (what `GATELET_UPDATE_PUBKEY` takes).
    pub public_line: String,
}

impl MinisignKey {
    /// Makes a new key pair `<dir>/<name>.{pub,sec}`.
    pub fn generate(dir: &Path, name: &str) -> Result<MinisignKey> {
        let public = dir.join(format!("{name}.pub"));
        let secret = dir.join(format!("{name}.sec"));
        run(Command::new("minisign")
            .args(["-G", "-f", "-W", "-p"])
            .arg(&public)
            .arg("-s")
            .arg(&secret))?;
        let text = std::fs::read_to_string(&public)
            .map_err(|e| HarnessError::io(format!("read {}", public.display()), e))?;
        let public_line = text
            .lines()
            .nth(1)
            .ok_or_else(|| HarnessError::Parse {
                what: public.display().to_string(),
                detail: format!("no key line in {text:?}"),
            })?
            .to_owned();
        Ok(MinisignKey {
            secret,
            public_line,
        })
    }

    /// Signs `file` into `<file>.minisig` (legacy mode, which gatelet verifies).
    pub fn sign(&self, file: &Path, comment: &str) -> Result<()> {
        run(Command::new("minisign")
            .args(["-S", "-l", "-s"])
            .arg(&self.secret)
            .arg("-m")
            .arg(file)
            .args(["-t", comment]))
        .map(drop)
    }
}

/// Copies `src` to `dst` with every `from` replaced by `to` (same length); returns how many
/// were replaced (an error if none).
pub fn patch_version(src: &Path, dst: &Path, from: &str, to: &str) -> Result<usize> {
    if from.len() != to.len() {
        return Err(HarnessError::Parse {
            what: "patch_version".into(),
            detail: format!("{from:?} and {to:?} differ in length"),
        });
    }
    let mut bytes =
        std::fs::read(src).map_err(|e| HarnessError::io(format!("read {}", src.display()), e))?;
    let (from, to) = (from.as_bytes(), to.as_bytes());
    let mut count = 0;
    let mut i = 0;
    while i + from.len() <= bytes.len() {
        if &bytes[i..i + from.len()] == from {
            bytes[i..i + from.len()].copy_from_slice(to);
            count += 1;
            i += from.len();
        } else {
            i += 1;
        }
    }
    if count == 0 {
        return Err(HarnessError::Parse {
            what: src.display().to_string(),
            detail: format!("no {:?} to patch", String::from_utf8_lossy(from)),
        });
    }
    write_executable(dst, &bytes)?;
    Ok(count)
}

/// Writes `bytes` to `path`, mode 0755.
pub fn write_executable(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| HarnessError::io(format!("create {}", dir.display()), e))?;
    }
    std::fs::write(path, bytes)
        .map_err(|e| HarnessError::io(format!("write {}", path.display()), e))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| HarnessError::io(format!("chmod {}", path.display()), e))
}

/// The release directory served at `/`: `manifest.json` (+ `.minisig`) and `<triple>/<binary>`.
#[derive(Debug)]
pub struct ReleaseDir {
    /// The directory.
    pub dir: PathBuf,
}

impl ReleaseDir {
    /// Publishes `version` for `triple` from `bins` (holding gatelet-agent and
    /// gatelet-companion): copies them under `<triple>/`, writes the manifest with
    /// `deploy/release-manifest.sh` and signs it with `key`. Replaces what was there.
    pub fn publish(
        &self,
        version: &str,
        triple: &str,
        bins: &Path,
        key: &MinisignKey,
    ) -> Result<()> {
        let dest = self.dir.join(triple);
        for name in ["gatelet-agent", "gatelet-companion"] {
            let from = bins.join(name);
            let bytes = std::fs::read(&from)
                .map_err(|e| HarnessError::io(format!("read {}", from.display()), e))?;
            write_executable(&dest.join(name), &bytes)?;
        }
        let script = workspace_root().join("deploy/release-manifest.sh");
        let manifest = run(Command::new("bash")
            .arg(&script)
            .arg(version)
            .arg(format!("{triple}={}", dest.display())))?;
        let path = self.manifest_path();
        std::fs::write(&path, manifest)
            .map_err(|e| HarnessError::io(format!("write {}", path.display()), e))?;
        key.sign(&path, &format!("gatelet {version}"))
    }

    /// `manifest.json`.
    pub fn manifest_path(&self) -> PathBuf {
        self.dir.join("manifest.json")
    }

    /// Flips one byte in the middle of the published `<triple>/<name>` (a corrupted download:
    /// the size still matches the manifest, the SHA-256 does not).
    pub fn corrupt(&self, triple: &str, name: &str) -> Result<()> {
        let path = self.dir.join(triple).join(name);
        let mut bytes = std::fs::read(&path)
            .map_err(|e| HarnessError::io(format!("read {}", path.display()), e))?;
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x5a;
        write_executable(&path, &bytes)
    }
}

/// `python3 -m http.server` serving a [`ReleaseDir`] in a namespace, on port 0.
#[derive(Debug)]
pub struct ReleaseServer {
    process: Process,
    /// Where it listens.
    pub addr: SocketAddr,
    /// What it serves.
    pub release: ReleaseDir,
}

impl ReleaseServer {
    /// Starts the server in `ns` on `ip`, port 0, serving a new `<ns dir>/release`, and waits
    /// until it says where it listens.
    pub fn start(ns: &Netns, ip: Ipv4Addr) -> Result<ReleaseServer> {
        let dir = ns.dir().join("release");
        std::fs::create_dir_all(&dir)
            .map_err(|e| HarnessError::io(format!("create {}", dir.display()), e))?;
        let mut cmd = ns.command("python3");
        cmd.args(["-u", "-m", "http.server", "--bind"])
            .arg(ip.to_string())
            .arg("--directory")
            .arg(&dir)
            .arg("0");
        let process = ns.spawn("release-server", cmd)?;
        let port = serving_port(&process, "the release server")?;
        Ok(ReleaseServer {
            process,
            addr: SocketAddr::from((ip, port)),
            release: ReleaseDir { dir },
        })
    }

    /// The manifest's URL.
    pub fn manifest_url(&self) -> String {
        format!("http://{}/manifest.json", self.addr)
    }

    /// Its request log (one line per request, with the status).
    pub fn log(&self) -> String {
        self.process.log()
    }
}

/// The port a Python `http.server` (or a server printing its banner) says it listens on:
/// waits for "Serving HTTP on 10.77.1.1 port 41234 (http://10.77.1.1:41234/) ..." in its log.
pub fn serving_port(process: &Process, what: &str) -> Result<u16> {
    wait_until(
        &format!("{what} to listen"),
        RELEASE_SERVER_START_TIMEOUT,
        || {
            Ok::<_, HarnessError>(process.log().lines().find_map(|l| {
                l.strip_prefix("Serving HTTP on ")?
                    .split_whitespace()
                    .nth(2)?
                    .parse::<u16>()
                    .ok()
            }))
        },
    )
}
