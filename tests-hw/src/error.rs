//! The harness's one error type.

use std::io;
use std::time::Duration;

/// Everything that can go wrong while setting up or driving a hardware test.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    /// The tests are not running as root, so no network namespace can be created.
    #[error(
        "needs root for network namespaces (uid is {uid}): run the tests-hw tests as root, \
         e.g. `sudo -E cargo test -p gatelet-tests-hw`; CI runs them as root"
    )]
    NotRoot {
        /// The effective uid the tests run with.
        uid: u32,
    },
    /// A program could not be started at all.
    #[error("could not start {what}: {source}; is it installed and on PATH?")]
    Spawn {
        /// The command line.
        what: String,
        /// Why it could not start.
        #[source]
        source: io::Error,
    },
    /// A program ran and failed.
    #[error("{what} failed ({status}): {output}")]
    Command {
        /// The command line.
        what: String,
        /// Its exit status.
        status: String,
        /// Its standard error (or output) trimmed.
        output: String,
    },
    /// Reading or writing a file or socket failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done, to which path.
        what: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A bounded wait ran out before its condition held.
    #[error("timed out after {waited:?} waiting for {what}; last seen: {last}")]
    Timeout {
        /// The condition waited for.
        what: String,
        /// How long was waited.
        waited: Duration,
        /// The last observation (or error) before giving up.
        last: String,
    },
    /// `cargo build` of the product binaries failed.
    #[error("building {what} failed: {detail}")]
    Build {
        /// The packages and profile.
        what: String,
        /// Cargo's complaint, or what was not found.
        detail: String,
    },
    /// The agent's control socket answered something unusable.
    #[error("agent control socket {path}: {detail}")]
    Control {
        /// The socket path.
        path: String,
        /// What went wrong.
        detail: String,
    },
    /// A tool printed something the harness could not interpret.
    #[error("unexpected output from {what}: {detail}")]
    Parse {
        /// The tool.
        what: String,
        /// What was expected and what came.
        detail: String,
    },
}

/// Result with [`HarnessError`].
pub type Result<T, E = HarnessError> = std::result::Result<T, E>;

impl HarnessError {
    /// An [`HarnessError::Io`] with context.
    pub fn io(what: impl Into<String>, source: io::Error) -> Self {
        HarnessError::Io {
            what: what.into(),
            source,
        }
    }
}
