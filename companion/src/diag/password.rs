//! The diagnostics page's password: a PBKDF2-HMAC-SHA256 hash (ring, already linked for TLS)
//! kept in `<state dir>/diag-password`, written by `gatelet-companion diag-password`.
//!
//! Format, one line: `pbkdf2-sha256$<iterations>$<salt hex>$<hash hex>`. The iteration count
//! travels with the hash so it can be raised later without breaking stored files; it is
//! bounded on parse so a mistyped file cannot make one login take minutes.

use std::io::Write;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};

use ring::pbkdf2;
use ring::rand::{SecureRandom, SystemRandom};

/// The file name under the state directory.
pub const FILE_NAME: &str = "diag-password";
/// Iterations used for new hashes (OWASP's 2023 figure for PBKDF2-HMAC-SHA256 is 600,000;
/// a router's CPU makes that about a second, so we take a sixth: ~0.2 s per login on a
/// Cortex-A53, with logins limited per address).
pub const ITERATIONS: u32 = 100_000;
/// Iteration counts a stored hash may carry.
pub const ITERATIONS_RANGE: std::ops::RangeInclusive<u32> = 1_000..=5_000_000;
/// Longest password accepted (bytes).
pub const MAX_PASSWORD: usize = 1024;
/// Shortest password accepted when setting one.
pub const MIN_PASSWORD: usize = 8;

const PREFIX: &str = "pbkdf2-sha256";
const SALT_LEN: usize = 16;
const HASH_LEN: usize = 32;
static ALG: pbkdf2::Algorithm = pbkdf2::PBKDF2_HMAC_SHA256;

/// A parsed password hash.
#[derive(Clone, PartialEq, Eq)]
pub struct PasswordHash {
    iterations: NonZeroU32,
    salt: Vec<u8>,
    hash: [u8; HASH_LEN],
}

impl std::fmt::Debug for PasswordHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PasswordHash({PREFIX}, {} iterations)", self.iterations)
    }
}

/// Why a password or a hash file was refused.
#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    /// The file's line is not `pbkdf2-sha256$N$salt$hash`.
    #[error("not a gatelet password hash (expected {PREFIX}$<iterations>$<salt hex>$<hash hex>)")]
    Malformed,
    /// The iteration count is outside [`ITERATIONS_RANGE`].
    #[error("iteration count {0} outside 1000..=5000000")]
    Iterations(u64),
    /// The password to set is too short or too long.
    #[error("the password must be {MIN_PASSWORD} to {MAX_PASSWORD} bytes")]
    Length,
    /// No randomness from the system.
    #[error("the system random source failed")]
    Random,
    /// Reading or writing the file.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect()
}

impl PasswordHash {
    /// Hashes `password` with a fresh salt and `iterations` (at least 1,000 in use: see
    /// [`ITERATIONS`]; tests pass fewer to stay fast in debug builds).
    pub fn new(
        password: &[u8],
        iterations: u32,
        rng: &dyn SecureRandom,
    ) -> Result<Self, PasswordError> {
        if !(MIN_PASSWORD..=MAX_PASSWORD).contains(&password.len()) {
            return Err(PasswordError::Length);
        }
        let iterations = NonZeroU32::new(iterations).ok_or(PasswordError::Iterations(0))?;
        let mut salt = vec![0u8; SALT_LEN];
        rng.fill(&mut salt).map_err(|_| PasswordError::Random)?;
        let mut hash = [0u8; HASH_LEN];
        pbkdf2::derive(ALG, iterations, &salt, password, &mut hash);
        Ok(PasswordHash {
            iterations,
            salt,
            hash,
        })
    }

    /// Parses one line of the file format.
    pub fn parse(line: &str) -> Result<Self, PasswordError> {
        let mut parts = line.trim().split('$');
        let (Some(PREFIX), Some(n), Some(salt), Some(hash), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(PasswordError::Malformed);
        };
        let n: u64 = n.parse().map_err(|_| PasswordError::Malformed)?;
        let iterations = u32::try_from(n)
            .ok()
            .filter(|n| ITERATIONS_RANGE.contains(n))
            .and_then(NonZeroU32::new)
            .ok_or(PasswordError::Iterations(n))?;
        let salt = unhex(salt)
            .filter(|s| (8..=64).contains(&s.len()))
            .ok_or(PasswordError::Malformed)?;
        let hash: [u8; HASH_LEN] = unhex(hash)
            .and_then(|h| h.try_into().ok())
            .ok_or(PasswordError::Malformed)?;
        Ok(PasswordHash {
            iterations,
            salt,
            hash,
        })
    }

    /// The file format (no newline).
    pub fn encode(&self) -> String {
        format!(
            "{PREFIX}${}${}${}",
            self.iterations,
            hex(&self.salt),
            hex(&self.hash)
        )
    }

    /// Whether `password` matches, compared in constant time (ring's `verify`). Oversized
    /// passwords are refused before any hashing.
    pub fn verify(&self, password: &[u8]) -> bool {
        password.len() <= MAX_PASSWORD
            && pbkdf2::verify(ALG, self.iterations, &self.salt, password, &self.hash).is_ok()
    }
}

/// `<state_dir>/diag-password`.
pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join(FILE_NAME)
}

/// Reads the hash under `state_dir`: `Ok(None)` when there is no file.
pub fn load(state_dir: &Path) -> Result<Option<PasswordHash>, PasswordError> {
    let p = path(state_dir);
    match std::fs::read_to_string(&p) {
        Ok(s) => PasswordHash::parse(&s).map(Some),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(PasswordError::Io { path: p, source }),
    }
}

/// Writes `hash` under `state_dir` (mode 0600, through a temporary file and a rename, so a
/// crash leaves the old hash or the new one).
pub fn store(state_dir: &Path, hash: &PasswordHash) -> Result<PathBuf, PasswordError> {
    use std::os::unix::fs::OpenOptionsExt;
    let p = path(state_dir);
    let tmp = state_dir.join(format!(".{FILE_NAME}.tmp"));
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| PasswordError::Io { path, source }
    };
    std::fs::create_dir_all(state_dir).map_err(io(state_dir))?;
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io(&tmp))?;
    writeln!(f, "{}", hash.encode()).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    std::fs::rename(&tmp, &p).map_err(io(&p))?;
    Ok(p)
}

/// `gatelet-companion diag-password`: reads one line (the password) from `input` and stores
/// its hash under `state_dir`.
pub fn set_from<R: std::io::BufRead>(
    state_dir: &Path,
    input: &mut R,
) -> Result<PathBuf, PasswordError> {
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::Read::take(&mut *input, MAX_PASSWORD as u64 + 2),
        &mut line,
    )
    .map_err(|source| PasswordError::Io {
        path: "stdin".into(),
        source,
    })?;
    let password = line.strip_suffix('\n').unwrap_or(&line);
    let password = password.strip_suffix('\r').unwrap_or(password);
    let hash = PasswordHash::new(password.as_bytes(), ITERATIONS, &SystemRandom::new())?;
    store(state_dir, &hash)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_round_trips_and_verifies_only_the_password() {
        let rng = SystemRandom::new();
        let h = PasswordHash::new(b"correct horse", 1000, &rng).unwrap();
        let back = PasswordHash::parse(&h.encode()).unwrap();
        assert_eq!(back, h);
        assert!(back.verify(b"correct horse"));
        assert!(!back.verify(b"correct horsf"));
        assert!(!back.verify(b""));
        assert!(!back.verify(&[b'a'; MAX_PASSWORD + 1]));
        // Two hashes of one password differ (fresh salt).
        assert_ne!(PasswordHash::new(b"correct horse", 1000, &rng).unwrap(), h);
        assert!(!format!("{h:?}").contains(&hex(&h.hash)));
    }

    #[test]
    fn bad_files_and_passwords_are_refused_with_a_reason() {
        let rng = SystemRandom::new();
        assert!(matches!(
            PasswordHash::new(b"short", 1000, &rng),
            Err(PasswordError::Length)
        ));
        let good = PasswordHash::new(b"long enough", 1000, &rng)
            .unwrap()
            .encode();
        for bad in [
            "",
            "hunter2",
            &good.replace("pbkdf2-sha256", "md5"),
            &format!("{good}$x"),
            &good.replacen("$1000$", "$1000$zz", 1),
        ] {
            assert!(
                matches!(PasswordHash::parse(bad), Err(PasswordError::Malformed)),
                "{bad}"
            );
        }
        for n in ["999", "5000001", "99999999999"] {
            assert!(matches!(
                PasswordHash::parse(&good.replacen("$1000$", &format!("${n}$"), 1)),
                Err(PasswordError::Iterations(_))
            ));
        }
    }

    #[test]
    fn file_is_written_0600_and_read_back() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        assert!(load(dir.path()).unwrap().is_none());
        let mut input = &b"a good password\nnext line\n"[..];
        let p = set_from(dir.path(), &mut input).unwrap();
        let mode = std::fs::metadata(&p).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let h = load(dir.path()).unwrap().unwrap();
        assert!(h.verify(b"a good password"));
        assert!(!h.verify(b"a good password\n"));
        let mut short = &b"short\n"[..];
        assert!(matches!(
            set_from(dir.path(), &mut short),
            Err(PasswordError::Length)
        ));
        // The refused password left the stored hash alone.
        assert!(load(dir.path())
            .unwrap()
            .unwrap()
            .verify(b"a good password"));
    }
}
