//! The standalone routes file (`GATELET_ROUTES_FILE`): read with a size bound, and watched for
//! changes.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use sha2::{Digest, Sha256};

use super::{
    parse_routes_text, ConfigError, ReservedPorts, Validated, MAX_ROUTES_FILE_BYTES, RACY_WINDOW,
};

/// Reads, parses and validates the standalone routes file at `path`. Returns the validation
/// result and the raw text (to store as last-known-good).
pub fn load_routes_file(
    path: &Path,
    ports: ReservedPorts,
) -> Result<(Validated, String), ConfigError> {
    let bytes = read_bounded(path)?;
    let text = String::from_utf8(bytes).map_err(|e| ConfigError::Json {
        origin: format!("routes file {}", path.display()),
        line: 1,
        column: 1,
        message: format!(
            "not UTF-8 text (invalid byte at offset {})",
            e.utf8_error().valid_up_to()
        ),
    })?;
    let v = parse_routes_text(&text, &format!("routes file {}", path.display()), ports)?;
    Ok((v, text))
}

pub(super) fn read_bounded(path: &Path) -> Result<Vec<u8>, ConfigError> {
    let io = |source| ConfigError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let mut bytes = Vec::new();
    file.take(MAX_ROUTES_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    if bytes.len() as u64 > MAX_ROUTES_FILE_BYTES {
        return Err(ConfigError::TooLarge {
            path: path.to_path_buf(),
            max: MAX_ROUTES_FILE_BYTES,
        });
    }
    Ok(bytes)
}

/// What identifies a version of the routes file without reading it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Fingerprint {
    len: u64,
    mtime: Option<SystemTime>,
    ctime: (i64, i64),
    ino: u64,
}

impl Fingerprint {
    fn of(meta: &std::fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt;
        Fingerprint {
            len: meta.len(),
            mtime: meta.modified().ok(),
            ctime: (meta.ctime(), meta.ctime_nsec()),
            ino: meta.ino(),
        }
    }
}

/// Tells when the standalone routes file changed, by polling: metadata (size, mtime, ctime,
/// inode) first, so an unchanged file costs one `stat`, then a SHA-256 of the content to confirm,
/// so a `touch` or an identical rewrite is not a change.
#[derive(Debug)]
pub struct RoutesFileWatcher {
    path: PathBuf,
    seen: Option<Fingerprint>,
    content: Option<[u8; 32]>,
    read_at: Option<SystemTime>,
}

impl RoutesFileWatcher {
    /// A watcher that has seen nothing yet: its first [`changed`](Self::changed) on a readable
    /// file returns true.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        RoutesFileWatcher {
            path: path.into(),
            seen: None,
            content: None,
            read_at: None,
        }
    }

    /// The watched file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// True when the file's content differs from what this watcher saw last time. A missing or
    /// unreadable file is not a change (the last good config stays); when it comes back with
    /// the same content, that is not a change either.
    pub fn changed(&mut self) -> bool {
        let Ok(meta) = std::fs::metadata(&self.path) else {
            self.seen = None;
            return false;
        };
        let fp = Fingerprint::of(&meta);
        if self.seen.as_ref() == Some(&fp) && !self.racy(&fp) {
            return false;
        }
        let Ok(bytes) = read_bounded(&self.path) else {
            self.seen = None;
            return false;
        };
        let digest: [u8; 32] = Sha256::digest(&bytes).into();
        self.seen = Some(fp);
        self.read_at = Some(SystemTime::now());
        if self.content == Some(digest) {
            return false;
        }
        self.content = Some(digest);
        true
    }

    /// Whether the file was modified so close to our last read that a same-size rewrite within
    /// the same timestamp tick could hide behind identical metadata.
    fn racy(&self, fp: &Fingerprint) -> bool {
        match (fp.mtime, self.read_at) {
            (Some(m), Some(r)) => match r.duration_since(m) {
                Ok(d) => d < RACY_WINDOW,
                Err(_) => true, // mtime in the future of our read: cannot be sure
            },
            _ => true,
        }
    }
}
