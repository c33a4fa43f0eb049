//! A scratch directory removed on drop, and the unique names every test resource carries.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use crate::{HarnessError, Result, PREFIX};

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A number unique within this test process (for names of namespaces, interfaces, files).
pub fn next_seq() -> u32 {
    SEQ.fetch_add(1, Ordering::Relaxed)
}

/// `hwt-<pid>-<seq>-<label>`: the owner's pid lets [`crate::sweep_leftovers`] tell a crashed
/// run's leftovers from a live parallel run's.
pub fn unique_name(label: &str) -> String {
    format!("{PREFIX}{}-{}-{label}", std::process::id(), next_seq())
}

/// A directory under the system temp dir, removed with everything in it on drop.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// Creates `<tmp>/hwt-<pid>-<seq>-<label>`.
    pub fn new(label: &str) -> Result<TempDir> {
        let path = std::env::temp_dir().join(unique_name(label));
        std::fs::create_dir_all(&path)
            .map_err(|e| HarnessError::io(format!("create {}", path.display()), e))?;
        Ok(TempDir { path })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}
