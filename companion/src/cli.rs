//! Command line: `gatelet-companion [run] [options]`, `gatelet-companion status [--json]` and
//! `gatelet-companion diag-password [--state-dir DIR]`.
//!
//! Hand-written (no argument-parsing crate): the grammar is tiny and every byte of the
//! binary is resident memory on a router.

use std::net::SocketAddr;
use std::path::PathBuf;

use gatelet_agent_api::control::DEFAULT_SOCKET_PATH;

/// Default state directory (SQLite store, self-update flag).
pub const DEFAULT_STATE_DIR: &str = "/var/lib/gatelet";
/// Default path of the companion's own status socket (read by `status`).
pub const DEFAULT_STATUS_SOCKET: &str = "/run/gatelet/companion.sock";

/// Usage text, printed by `--help` and after a usage error.
pub const USAGE: &str = "\
usage: gatelet-companion [run] [--env PATH] [--state-dir DIR] [--control-socket PATH]
                         [--status-socket PATH] [--mgmt-listen ADDR:PORT] [--log-level LEVEL]
       gatelet-companion status [--json | --health] [--status-socket PATH]
                                [--control-socket PATH] [--state-dir DIR]
       gatelet-companion diag-password [--state-dir DIR]
       gatelet-companion diag-metrics-token [--state-dir DIR]
       gatelet-companion --version

  --env PATH             gateway.env (default: $GATEWAY_ENV_PATH, else /etc/gatelet/gateway.env)
  --state-dir DIR        persistent state (default /var/lib/gatelet)
  --control-socket PATH  the agent's control socket (default /run/gatelet/agent.sock)
  --status-socket PATH   this daemon's status socket (default /run/gatelet/companion.sock)
  --mgmt-listen ADDR     management API listener (default 127.0.0.1:<GC_API_PORT>; the agent
                         relays <tunnel ip>:<GC_API_PORT> to it)
  --log-level LEVEL      error, warn, info (default), debug, trace
  status --health        one line, exit 0 when the daemon answers on its status socket and
                         reaches the agent, else 1 (a container HEALTHCHECK: no shell needed)
  diag-password          reads a password (one line) from stdin and stores its hash in
                         <state dir>/diag-password: the diagnostics page's login, required
                         when GATELET_DIAG_LISTEN is not a loopback address (read at start)
  diag-metrics-token     makes a new bearer token for scraping /metrics, prints it once and
                         stores its SHA-256 in <state dir>/diag-metrics-token (read at start)
";

/// Options of the daemon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunArgs {
    /// `--env`.
    pub env: Option<PathBuf>,
    /// `--state-dir`.
    pub state_dir: PathBuf,
    /// `--control-socket`.
    pub control_socket: PathBuf,
    /// `--status-socket`.
    pub status_socket: PathBuf,
    /// `--mgmt-listen`.
    pub mgmt_listen: Option<SocketAddr>,
    /// `--log-level`.
    pub log_level: String,
}

/// Options of `status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusArgs {
    /// `--json`: machine-readable output.
    pub json: bool,
    /// `--health`: a one-line verdict and exit code only.
    pub health: bool,
    /// Where the running daemon answers.
    pub status_socket: PathBuf,
    /// The agent's socket, asked directly when the daemon is not running.
    pub control_socket: PathBuf,
    /// The store, read directly when the daemon is not running.
    pub state_dir: PathBuf,
}

/// What the command line asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Run the daemon.
    Run(RunArgs),
    /// Print the status of the running daemon.
    Status(StatusArgs),
    /// Set the diagnostics page's password (from stdin) under this state directory.
    DiagPassword(PathBuf),
    /// Make a new `/metrics` bearer token under this state directory.
    DiagMetricsToken(PathBuf),
    /// Print usage.
    Help,
    /// Print the version.
    Version,
}

/// A usage error (exit code 64).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// Parses the arguments after the program name.
pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Command, UsageError> {
    let mut args = args.into_iter().peekable();
    let diag = args.peek().cloned();
    if let Some(sub @ ("diag-password" | "diag-metrics-token")) = diag.as_deref() {
        args.next();
        let mut state_dir = PathBuf::from(DEFAULT_STATE_DIR);
        while let Some(arg) = args.next() {
            match arg.split_once('=') {
                Some(("--state-dir", v)) => state_dir = v.into(),
                None if arg == "--state-dir" => {
                    state_dir = args
                        .next()
                        .ok_or_else(|| UsageError("--state-dir needs a value".into()))?
                        .into()
                }
                _ if arg == "-h" || arg == "--help" => return Ok(Command::Help),
                _ => return Err(UsageError(format!("unknown argument {arg:?}"))),
            }
        }
        return Ok(if sub == "diag-password" {
            Command::DiagPassword(state_dir)
        } else {
            Command::DiagMetricsToken(state_dir)
        });
    }
    let status = match args.peek().map(String::as_str) {
        Some("status") => {
            args.next();
            true
        }
        Some("run") => {
            args.next();
            false
        }
        _ => false,
    };
    let mut run = RunArgs {
        env: None,
        state_dir: DEFAULT_STATE_DIR.into(),
        control_socket: DEFAULT_SOCKET_PATH.into(),
        status_socket: DEFAULT_STATUS_SOCKET.into(),
        mgmt_listen: None,
        log_level: "info".into(),
    };
    let mut json = false;
    let mut health = false;
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_owned(), Some(v.to_owned())),
            _ => (arg.clone(), None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| args.next())
                .ok_or_else(|| UsageError(format!("{flag} needs a value")))
        };
        match flag.as_str() {
            "-h" | "--help" => return Ok(Command::Help),
            "-V" | "--version" => return Ok(Command::Version),
            "--json" if status => json = true,
            "--health" if status => health = true,
            "--env" if !status => run.env = Some(value()?.into()),
            "--state-dir" => run.state_dir = value()?.into(),
            "--control-socket" => run.control_socket = value()?.into(),
            "--status-socket" => run.status_socket = value()?.into(),
            "--mgmt-listen" if !status => {
                let v = value()?;
                run.mgmt_listen = Some(v.parse().map_err(|_| {
                    UsageError(format!("--mgmt-listen must be ADDR:PORT, not {v:?}"))
                })?);
            }
            "--log-level" if !status => {
                let v = value()?;
                if gatelet_agent_api::logging::parse_level(&v).is_none() {
                    return Err(UsageError(format!(
                        "--log-level must be error, warn, info, debug or trace, not {v:?}"
                    )));
                }
                run.log_level = v;
            }
            _ => return Err(UsageError(format!("unknown argument {arg:?}"))),
        }
    }
    Ok(if status {
        if json && health {
            return Err(UsageError("--json and --health exclude each other".into()));
        }
        Command::Status(StatusArgs {
            json,
            health,
            status_socket: run.status_socket,
            control_socket: run.control_socket,
            state_dir: run.state_dir,
        })
    } else {
        Command::Run(run)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn run_is_the_default_command_with_documented_defaults() {
        let Command::Run(r) = parse(args("")).unwrap() else {
            panic!("expected run")
        };
        assert_eq!(r.state_dir, PathBuf::from(DEFAULT_STATE_DIR));
        assert_eq!(r.control_socket, PathBuf::from(DEFAULT_SOCKET_PATH));
        assert_eq!(r.env, None);
    }

    #[test]
    fn flags_take_separate_or_inline_values() {
        let c = parse(args(
            "run --env /e --state-dir=/s --mgmt-listen 127.0.0.1:1",
        ))
        .unwrap();
        let Command::Run(r) = c else { panic!() };
        assert_eq!(r.env, Some("/e".into()));
        assert_eq!(r.state_dir, PathBuf::from("/s"));
        assert_eq!(r.mgmt_listen, Some("127.0.0.1:1".parse().unwrap()));
    }

    #[test]
    fn status_json_is_parsed() {
        let Command::Status(s) = parse(args("status --json --status-socket /x")).unwrap() else {
            panic!()
        };
        assert!(s.json);
        assert!(!s.health);
        assert_eq!(s.status_socket, PathBuf::from("/x"));
        let Command::Status(s) = parse(args("status --health")).unwrap() else {
            panic!()
        };
        assert!(s.health && !s.json);
        assert!(parse(args("status --health --json")).is_err());
        assert!(parse(args("run --health")).is_err());
    }

    #[test]
    fn diag_password_takes_a_state_dir() {
        assert_eq!(
            parse(args("diag-password")).unwrap(),
            Command::DiagPassword(DEFAULT_STATE_DIR.into())
        );
        assert_eq!(
            parse(args("diag-password --state-dir /tmp/s")).unwrap(),
            Command::DiagPassword("/tmp/s".into())
        );
        assert_eq!(
            parse(args("diag-password --state-dir=/tmp/t")).unwrap(),
            Command::DiagPassword("/tmp/t".into())
        );
        assert_eq!(
            parse(args("diag-metrics-token --state-dir /tmp/u")).unwrap(),
            Command::DiagMetricsToken("/tmp/u".into())
        );
        assert!(parse(args("diag-password --json")).is_err());
        assert!(parse(args("diag-password --state-dir")).is_err());
    }

    #[test]
    fn usage_errors_say_what_is_wrong() {
        assert_eq!(
            parse(args("--bogus")).unwrap_err().0,
            "unknown argument \"--bogus\""
        );
        assert_eq!(parse(args("--env")).unwrap_err().0, "--env needs a value");
        assert!(parse(args("--log-level loud"))
            .unwrap_err()
            .0
            .contains("loud"));
        assert!(parse(args("status --env /x")).is_err());
    }
}
