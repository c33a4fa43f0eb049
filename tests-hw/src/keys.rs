//! WireGuard keys made by `wg genkey`, `wg pubkey` and `wg genpsk`.

use std::fmt;
use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::process::run;
use crate::{HarnessError, Result};

/// A Curve25519 key pair in WireGuard's base64. `Debug` hides the private key.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyPair {
    /// The private key (base64).
    pub private: String,
    /// The public key (base64).
    pub public: String,
}

impl fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyPair")
            .field("private", &"<redacted>")
            .field("public", &self.public)
            .finish()
    }
}

impl KeyPair {
    /// A fresh key pair from `wg genkey | wg pubkey`.
    pub fn generate() -> Result<KeyPair> {
        let private = run(Command::new("wg").arg("genkey"))?.trim().to_owned();
        let mut child = Command::new("wg")
            .arg("pubkey")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| HarnessError::Spawn {
                what: "wg pubkey".into(),
                source,
            })?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(format!("{private}\n").as_bytes())
                .map_err(|e| HarnessError::io("write to wg pubkey", e))?;
        }
        let out = child
            .wait_with_output()
            .map_err(|e| HarnessError::io("wait for wg pubkey", e))?;
        let public = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        if !out.status.success() || public.len() != 44 {
            return Err(HarnessError::Parse {
                what: "wg pubkey".into(),
                detail: format!(
                    "expected a 44-character base64 key ({}): {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            });
        }
        Ok(KeyPair { private, public })
    }
}

/// A fresh preshared key from `wg genpsk`.
pub fn generate_psk() -> Result<String> {
    Ok(run(Command::new("wg").arg("genpsk"))?.trim().to_owned())
}

/// Writes a secret to `path` readable by its owner only (for `wg set ... private-key FILE`).
pub fn write_secret(path: &Path, secret: &str) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| HarnessError::io(format!("create {}", path.display()), e))?;
    f.write_all(format!("{secret}\n").as_bytes())
        .map_err(|e| HarnessError::io(format!("write {}", path.display()), e))
}
