//! gatelet-agent as the gateway: its `gateway.env`, the process in a namespace, and a client
//! for its control socket.

use std::io::{BufRead as _, BufReader, Write as _};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use gatelet_agent_api::control::{AgentStatus, Request, Response};

use crate::keys::write_secret;
use crate::{wait_until, HarnessError, Netns, Process, Result};

/// How long one control-socket request may take.
pub const CONTROL_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the agent gets to start answering on its control socket.
pub const AGENT_START_TIMEOUT: Duration = Duration::from_secs(15);

/// The tunnel part of a `gateway.env`, as the GateControl server writes it.
#[derive(Clone, PartialEq, Eq)]
pub struct GatewayEnv {
    /// `GC_TUNNEL_IP`, e.g. `10.8.0.2`.
    pub tunnel_ip: String,
    /// `WG_PRIVATE_KEY`.
    pub private_key: String,
    /// `WG_PUBLIC_KEY` (informational).
    pub public_key: String,
    /// `WG_PRESHARED_KEY`; None leaves the line out.
    pub preshared_key: Option<String>,
    /// `WG_ENDPOINT`: `host:port`, host name allowed.
    pub endpoint: String,
    /// `WG_SERVER_PUBLIC_KEY`.
    pub server_public_key: String,
    /// `WG_ADDRESS`, e.g. `10.8.0.2/32`.
    pub address: String,
    /// `WG_ALLOWED_IPS`, e.g. `10.8.0.1/32`.
    pub allowed_ips: String,
    /// `GATELET_TUN_NAME`; None leaves the default.
    pub tun_name: Option<String>,
    /// `GATELET_MTU`; None leaves the default.
    pub mtu: Option<u16>,
    /// Further `KEY=value` lines, written last.
    pub extra: Vec<(String, String)>,
}

impl std::fmt::Debug for GatewayEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayEnv")
            .field("tunnel_ip", &self.tunnel_ip)
            .field("endpoint", &self.endpoint)
            .field("address", &self.address)
            .field("allowed_ips", &self.allowed_ips)
            .finish_non_exhaustive()
    }
}

impl GatewayEnv {
    /// The file's text.
    pub fn render(&self) -> String {
        let mut lines = vec![
            "# written by gatelet-tests-hw".to_owned(),
            format!("GC_TUNNEL_IP={}", self.tunnel_ip),
            format!("WG_PRIVATE_KEY={}", self.private_key),
            format!("WG_PUBLIC_KEY={}", self.public_key),
            format!("WG_ENDPOINT={}", self.endpoint),
            format!("WG_SERVER_PUBLIC_KEY={}", self.server_public_key),
            format!("WG_ADDRESS={}", self.address),
            format!("WG_ALLOWED_IPS={}", self.allowed_ips),
        ];
        if let Some(psk) = &self.preshared_key {
            lines.push(format!("WG_PRESHARED_KEY={psk}"));
        }
        if let Some(name) = &self.tun_name {
            lines.push(format!("GATELET_TUN_NAME={name}"));
        }
        if let Some(mtu) = self.mtu {
            lines.push(format!("GATELET_MTU={mtu}"));
        }
        for (k, v) in &self.extra {
            lines.push(format!("{k}={v}"));
        }
        lines.join("\n") + "\n"
    }

    /// Writes the file with mode 0600 (it holds keys).
    pub fn write(&self, path: &Path) -> Result<()> {
        write_secret(path, self.render().trim_end())
    }
}

/// Sends one request on the control socket at `socket` and reads the one-line answer.
pub fn control_request(socket: &Path, request: &Request) -> Result<Response> {
    let err = |detail: String| HarnessError::Control {
        path: socket.display().to_string(),
        detail,
    };
    let mut stream = UnixStream::connect(socket).map_err(|e| err(format!("connect: {e}")))?;
    stream
        .set_read_timeout(Some(CONTROL_TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(CONTROL_TIMEOUT)))
        .map_err(|e| err(format!("set timeouts: {e}")))?;
    let mut line = serde_json::to_string(request).map_err(|e| err(format!("encode: {e}")))?;
    line.push('\n');
    stream
        .write_all(line.as_bytes())
        .map_err(|e| err(format!("write: {e}")))?;
    let mut answer = String::new();
    BufReader::new(&stream)
        .read_line(&mut answer)
        .map_err(|e| err(format!("read: {e}")))?;
    serde_json::from_str(answer.trim_end()).map_err(|e| {
        err(format!(
            "answer {:?} is not a Response: {e}",
            answer.trim_end()
        ))
    })
}

/// gatelet-agent running in a namespace with its own env file, state dir and control socket.
/// Killed on drop.
#[derive(Debug)]
pub struct Agent {
    process: Process,
    socket: PathBuf,
    env_path: PathBuf,
}

impl Agent {
    /// Writes `env` and starts `binary --env ... --state-dir ... --control-socket ...` in
    /// `ns`, then waits until the control socket answers a status request. Extra environment
    /// (e.g. `RUST_LOG`) is inherited from the test.
    pub fn start(ns: &Netns, binary: &Path, env: &GatewayEnv) -> Result<Agent> {
        Agent::start_as(ns, binary, env, None)
    }

    /// As [`Agent::start`]; with `run_as = Some((uid, gid))` the agent runs as that user with
    /// no capabilities at all (via `setpriv`), and its files are given to that user.
    pub fn start_as(
        ns: &Netns,
        binary: &Path,
        env: &GatewayEnv,
        run_as: Option<(u32, u32)>,
    ) -> Result<Agent> {
        let cmd = match run_as {
            None => ns.command(binary),
            Some((uid, gid)) => {
                let mut c = ns.command("setpriv");
                c.arg(format!("--reuid={uid}"))
                    .arg(format!("--regid={gid}"))
                    .args([
                        "--clear-groups",
                        "--inh-caps=-all",
                        "--bounding-set=-all",
                        "--",
                    ])
                    .arg(binary);
                c
            }
        };
        Agent::start_command(ns, env, run_as, cmd)
    }

    /// As [`Agent::start`], with `cmd` the command line that runs the agent in `ns` (made with
    /// [`Netns::command`]; the agent's `--env`, `--state-dir` and `--control-socket` are
    /// appended). With `owner = Some((uid, gid))` the agent's files are given to that user.
    pub fn start_command(
        ns: &Netns,
        env: &GatewayEnv,
        owner: Option<(u32, u32)>,
        mut cmd: Command,
    ) -> Result<Agent> {
        let dir = ns.dir().join("agent");
        let state = dir.join("state");
        std::fs::create_dir_all(&state)
            .map_err(|e| HarnessError::io(format!("create {}", state.display()), e))?;
        let env_path = dir.join("gateway.env");
        env.write(&env_path)?;
        let socket = dir.join("agent.sock");
        if let Some((uid, gid)) = owner {
            for path in [&dir, &state, &env_path] {
                std::os::unix::fs::chown(path, Some(uid), Some(gid)).map_err(|e| {
                    HarnessError::io(format!("chown {} to {uid}", path.display()), e)
                })?;
            }
        }
        cmd.arg("--env")
            .arg(&env_path)
            .arg("--state-dir")
            .arg(&state)
            .arg("--control-socket")
            .arg(&socket);
        let process = ns.spawn("gatelet-agent", cmd)?;
        let mut agent = Agent {
            process,
            socket,
            env_path,
        };
        let socket = agent.socket.clone();
        let started = wait_until(
            "gatelet-agent to answer on its control socket",
            AGENT_START_TIMEOUT,
            || {
                if let Some(status) = agent.process.try_exit()? {
                    return Err(HarnessError::Command {
                        what: "gatelet-agent".into(),
                        status: status.to_string(),
                        output: agent.process.log(),
                    });
                }
                Ok::<_, HarnessError>(control_request(&socket, &Request::Status).ok())
            },
        );
        match started {
            Ok(_) => Ok(agent),
            Err(e) => Err(HarnessError::Command {
                what: "gatelet-agent start".into(),
                status: e.to_string(),
                output: agent.process.log(),
            }),
        }
    }

    /// The agent's status, from its control socket.
    pub fn status(&self) -> Result<AgentStatus> {
        match control_request(&self.socket, &Request::Status)? {
            Response::Status(s) => Ok(*s),
            other => Err(HarnessError::Control {
                path: self.socket.display().to_string(),
                detail: format!("expected a status answer, got {other:?}"),
            }),
        }
    }

    /// Waits until the tunnel reports a handshake no older than `max_age_s` seconds.
    pub fn wait_handshake(&self, max_age_s: u64, timeout: Duration) -> Result<AgentStatus> {
        wait_until("the agent to report a handshake", timeout, || {
            let s = self.status()?;
            Ok::<_, HarnessError>(
                s.tunnel
                    .handshake_age_s
                    .is_some_and(|age| age <= max_age_s)
                    .then_some(s),
            )
        })
    }

    /// The agent's pid.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// The control socket path.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The gateway.env the agent was started with.
    pub fn env_path(&self) -> &Path {
        &self.env_path
    }

    /// The agent's process (pid, log, exit).
    pub fn process(&mut self) -> &mut Process {
        &mut self.process
    }

    /// What the agent has logged so far.
    pub fn log(&self) -> String {
        self.process.log()
    }
}

/// Peak and current resident memory of `pid` in KiB, from `/proc/<pid>/status`
/// (`VmHWM`, `VmRSS`).
pub fn memory_kib(pid: u32) -> Result<(u64, u64)> {
    let path = format!("/proc/{pid}/status");
    let text =
        std::fs::read_to_string(&path).map_err(|e| HarnessError::io(format!("read {path}"), e))?;
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .ok_or_else(|| HarnessError::Parse {
                what: path.clone(),
                detail: format!("no {name} line in kB"),
            })
    };
    Ok((field("VmHWM:")?, field("VmRSS:")?))
}
