//! One companion per state directory.
//!
//! Two daemons on one state directory would both write the store and the second would replace
//! the first one's status socket (`status` then says NOT RUNNING while the first one runs). The
//! daemon therefore takes an exclusive `flock(2)` on `<state dir>/companion.lock` before it
//! touches anything else and holds it until it exits; the kernel releases it when the process
//! dies, however it dies, so a stale file never blocks a restart. The file holds the owner's
//! pid, for the message the second daemon prints. It is never removed (removing a lock file
//! races with the next daemon locking it).

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

/// Name of the lock file in the state directory.
pub const LOCK_FILE: &str = "companion.lock";
/// The longest pid line read back from a lock file.
const MAX_PID_BYTES: u64 = 32;

/// Why the lock was not taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another live process holds it.
    #[error(
        "another gatelet-companion{} already runs with the state directory {}; one companion per \
         state directory: stop that one first",
        pid.map_or(String::new(), |p| format!(" (pid {p})")),
        dir.display()
    )]
    Held {
        /// The state directory.
        dir: PathBuf,
        /// The holder's pid, as it wrote it.
        pid: Option<u32>,
    },
    /// The file could not be opened, locked or written.
    #[error("cannot lock {}: {source}", path.display())]
    Io {
        /// The lock file.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
}

/// The held lock; released when dropped (or when the process exits).
#[derive(Debug)]
pub struct InstanceLock {
    _file: Flock<File>,
    path: PathBuf,
}

impl InstanceLock {
    /// Takes the lock of `state_dir` (which must exist) without waiting, and writes our pid.
    pub fn acquire(state_dir: &Path) -> Result<InstanceLock, LockError> {
        let path = state_dir.join(LOCK_FILE);
        let io = |source| LockError::Io {
            path: path.clone(),
            source,
        };
        let file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(io)?;
        let mut file = match lock_exclusive_nonblocking(file) {
            Ok(locked) => locked,
            Err((file, Errno::EWOULDBLOCK)) => {
                let mut text = String::new();
                let _ = (&file).take(MAX_PID_BYTES).read_to_string(&mut text);
                return Err(LockError::Held {
                    dir: state_dir.to_path_buf(),
                    pid: text.trim().parse().ok(),
                });
            }
            Err((_, e)) => return Err(io(e.into())),
        };
        file.set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| writeln!(file, "{}", std::process::id()))
            .map_err(io)?;
        Ok(InstanceLock { _file: file, path })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// `flock(LOCK_EX | LOCK_NB)`, retried on EINTR: the file back with the error when another open
/// file description holds the lock (EWOULDBLOCK) or the call fails.
fn lock_exclusive_nonblocking(mut file: File) -> Result<Flock<File>, (File, Errno)> {
    loop {
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Err((f, Errno::EINTR)) => file = f,
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_the_same_directory_is_refused_with_the_holders_pid() {
        let dir = tempfile::tempdir().unwrap();
        let first = InstanceLock::acquire(dir.path()).unwrap();
        let err = InstanceLock::acquire(dir.path()).unwrap_err();
        let pid = std::process::id();
        assert!(
            matches!(err, LockError::Held { pid: Some(p), .. } if p == pid),
            "{err:?}"
        );
        assert!(err.to_string().contains(&format!("(pid {pid})")), "{err}");
        drop(first);
        let again = InstanceLock::acquire(dir.path()).expect("released on drop");
        assert_eq!(
            std::fs::read_to_string(again.path()).unwrap(),
            format!("{pid}\n")
        );
    }

    #[test]
    fn a_missing_directory_is_an_io_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let err = InstanceLock::acquire(&dir.path().join("missing")).unwrap_err();
        assert!(matches!(err, LockError::Io { .. }), "{err:?}");
        assert!(err.to_string().contains("companion.lock"), "{err}");
    }
}
