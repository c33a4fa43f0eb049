//! gatelet-companion as a process in the gateway's namespace, next to the agent.

use std::path::{Path, PathBuf};

use crate::{HarnessError, Netns, Process, Result};

/// gatelet-companion running in a namespace with its state dir (SQLite store) and status
/// socket under `<ns dir>/companion`; killed on drop. Starting it again in the same namespace
/// reuses the same state dir.
#[derive(Debug)]
pub struct Companion {
    process: Process,
    binary: PathBuf,
    state_dir: PathBuf,
    control_socket: PathBuf,
    status_socket: PathBuf,
}

impl Companion {
    /// Starts `binary --env <env> --state-dir ... --control-socket <agent socket>
    /// --status-socket ...` in `ns`. Does not wait for anything: the companion retries the agent
    /// and the server by itself.
    pub fn start(
        ns: &Netns,
        binary: &Path,
        env: &Path,
        control_socket: &Path,
    ) -> Result<Companion> {
        let dir = ns.dir().join("companion");
        let state_dir = dir.join("state");
        std::fs::create_dir_all(&state_dir)
            .map_err(|e| HarnessError::io(format!("create {}", state_dir.display()), e))?;
        let status_socket = dir.join("companion.sock");
        let mut cmd = ns.command(binary);
        cmd.arg("--env")
            .arg(env)
            .arg("--state-dir")
            .arg(&state_dir)
            .arg("--control-socket")
            .arg(control_socket)
            .arg("--status-socket")
            .arg(&status_socket);
        let process = ns.spawn("gatelet-companion", cmd)?;
        Ok(Companion {
            process,
            binary: binary.into(),
            state_dir,
            control_socket: control_socket.into(),
            status_socket,
        })
    }

    /// `gatelet-companion status --json`, run in `ns`, parsed.
    pub fn status_json(&self, ns: &Netns) -> Result<serde_json::Value> {
        let mut cmd = ns.command(&self.binary);
        cmd.arg("status")
            .arg("--json")
            .arg("--status-socket")
            .arg(&self.status_socket)
            .arg("--control-socket")
            .arg(&self.control_socket)
            .arg("--state-dir")
            .arg(&self.state_dir);
        let out = crate::run(&mut cmd)?;
        serde_json::from_str(&out).map_err(|e| HarnessError::Parse {
            what: "gatelet-companion status --json".into(),
            detail: format!("{e} in {out:?}"),
        })
    }

    /// The companion's process (pid, log, exit).
    pub fn process(&mut self) -> &mut Process {
        &mut self.process
    }

    /// What the companion has logged so far.
    pub fn log(&self) -> String {
        self.process.log()
    }
}
