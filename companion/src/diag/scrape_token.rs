//! The bearer token a Prometheus scraper shows for `/metrics` on a LAN listener: 256 random
//! bits that `gatelet-companion diag-metrics-token` prints once; only its SHA-256 is kept, in
//! `<state dir>/diag-metrics-token` (mode 0600), and a presented token is hashed and compared
//! in constant time.

use std::io::Write;
use std::path::{Path, PathBuf};

use ring::rand::SecureRandom;
use sha2::{Digest, Sha256};

use crate::mgmt::auth::token_matches;

/// The file name under the state directory.
pub const FILE_NAME: &str = "diag-metrics-token";

/// The stored hash of the token.
#[derive(Clone, PartialEq, Eq)]
pub struct ScrapeToken([u8; 32]);

impl std::fmt::Debug for ScrapeToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ScrapeToken(..)")
    }
}

impl ScrapeToken {
    /// Whether `given` (the bearer token as sent) is the token.
    pub fn matches(&self, given: &[u8]) -> bool {
        let h: [u8; 32] = Sha256::digest(given).into();
        token_matches(&h, &self.0)
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}

/// Reads the stored hash under `state_dir`: `Ok(None)` without a file, an error (to log) for
/// a file that is not 64 hex digits.
pub fn load(state_dir: &Path) -> Result<Option<ScrapeToken>, String> {
    let p = state_dir.join(FILE_NAME);
    let text = match std::fs::read_to_string(&p) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{}: {e}", p.display())),
    };
    let t = text.trim();
    let bytes: Option<Vec<u8>> =
        (t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit())).then(|| {
            (0..64)
                .step_by(2)
                .filter_map(|i| u8::from_str_radix(&t[i..i + 2], 16).ok())
                .collect()
        });
    bytes
        .and_then(|b| b.try_into().ok())
        .map(|h| Some(ScrapeToken(h)))
        .ok_or_else(|| format!("{}: not a SHA-256 in hex", p.display()))
}

/// Makes a new token, stores its hash under `state_dir` (replacing any older one) and returns
/// the token and the file.
pub fn create(state_dir: &Path, rng: &dyn SecureRandom) -> Result<(String, PathBuf), String> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut raw = [0u8; 32];
    rng.fill(&mut raw)
        .map_err(|_| "the system random source failed".to_owned())?;
    let token = hex(&raw);
    let p = state_dir.join(FILE_NAME);
    let tmp = state_dir.join(format!(".{FILE_NAME}.tmp"));
    let err = |e: std::io::Error| format!("{}: {e}", tmp.display());
    std::fs::create_dir_all(state_dir).map_err(|e| format!("{}: {e}", state_dir.display()))?;
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(err)?;
    writeln!(f, "{}", hex(&Sha256::digest(token.as_bytes()))).map_err(err)?;
    f.sync_all().map_err(err)?;
    std::fs::rename(&tmp, &p).map_err(|e| format!("{}: {e}", p.display()))?;
    Ok((token, p))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::rand::SystemRandom;

    #[test]
    fn created_token_matches_only_itself_and_is_not_stored() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load(dir.path()).unwrap(), None);
        let (token, path) = create(dir.path(), &SystemRandom::new()).unwrap();
        assert_eq!(token.len(), 64);
        let stored = std::fs::read_to_string(&path).unwrap();
        assert!(!stored.contains(&token));
        let t = load(dir.path()).unwrap().unwrap();
        assert!(t.matches(token.as_bytes()));
        assert!(!t.matches(&token.as_bytes()[1..]));
        assert!(!t.matches(b""));
        std::fs::write(&path, "zz\n").unwrap();
        assert!(load(dir.path()).unwrap_err().contains("not a SHA-256"));
    }
}
