//! The companion's side of the agent's control socket (contract in `gatelet_agent_api::control`).
//!
//! One short-lived connection per request keeps this simple and robust: the agent may restart
//! at any time, and a stale connection is never reused. Every call has a timeout, so no caller
//! ever blocks on a stuck agent longer than it asked for.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use gatelet_agent_api::control::{Request, Response, MAX_LINE_BYTES};

/// Why a control-socket call failed.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The socket could not be reached (agent not running, wrong path, permissions).
    #[error("agent control socket {path}: {source}")]
    Connect {
        /// The socket path.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The agent did not answer in time, or the connection broke.
    #[error("agent control socket: {0}")]
    Io(#[from] std::io::Error),
    /// The agent answered something that is not a response of our contract.
    #[error("agent sent an unreadable answer: {0}")]
    Protocol(String),
}

/// A handle on the agent's control socket. Cheap to clone.
#[derive(Debug, Clone)]
pub struct AgentLink {
    path: PathBuf,
}

impl AgentLink {
    /// A link to the socket at `path` (not connected until a request is made).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        AgentLink { path: path.into() }
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Sends one request and waits at most `timeout` for its answer.
    pub fn request(&self, req: &Request, timeout: Duration) -> Result<Response, LinkError> {
        let stream = UnixStream::connect(&self.path).map_err(|source| LinkError::Connect {
            path: self.path.display().to_string(),
            source,
        })?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        let mut line = serde_json::to_vec(req).map_err(|e| LinkError::Protocol(e.to_string()))?;
        line.push(b'\n');
        (&stream).write_all(&line)?;
        let mut reader = BufReader::new(&stream).take(MAX_LINE_BYTES as u64);
        let mut answer = Vec::new();
        reader.read_until(b'\n', &mut answer)?;
        if answer.last() != Some(&b'\n') {
            return Err(LinkError::Protocol(
                "connection closed before a full answer".into(),
            ));
        }
        serde_json::from_slice(&answer).map_err(|e| LinkError::Protocol(e.to_string()))
    }
}
