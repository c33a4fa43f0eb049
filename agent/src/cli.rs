//! The `gatelet-agent` command line.

use std::ffi::OsString;
use std::path::PathBuf;

use gatelet_agent_api::control::DEFAULT_SOCKET_PATH;
use gatelet_agent_api::env::NetstackMode;

/// Exit code for a bad command line or a bad `gateway.env` (BSD `EX_USAGE`).
pub const EXIT_USAGE: u8 = 64;
/// Log level when `--log-level` is not given.
pub const DEFAULT_LOG_LEVEL: tracing::Level = tracing::Level::INFO;

/// Help text for `--help`.
pub const USAGE: &str = "\
Usage: gatelet-agent --state-dir DIR [--env PATH] [--control-socket PATH] [--control-group GROUP]
                     [--log-level LEVEL] [--netstack kernel|userspace|auto]

gatelet data plane: WireGuard tunnel to the hub over a TUN device, control socket for the
companion.

  --env PATH             gateway.env to read (default: $GATEWAY_ENV_PATH, else
                         /etc/gatelet/gateway.env)
  --state-dir DIR        directory for the agent's saved state (created 0750 if missing)
  --control-socket PATH  control socket (default /run/gatelet/agent.sock; its directory is
                         created 0750 if missing)
  --control-group GROUP  group (name or gid) of the control socket, and of its directory when
                         the agent creates it: the group the companion runs as, so that it can
                         connect when the two run as different users (default: the agent's)
  --log-level LEVEL      error, warn, info, debug or trace (default info)
  --netstack MODE        where the tunnel ends: kernel (a TUN device; needs CAP_NET_ADMIN and
                         /dev/net/tun), userspace (a TCP/IP stack inside the agent; no
                         privilege) or auto (kernel when the device can be set up, else
                         userspace); overrides GATELET_NETSTACK (default auto)
  --help, --version

Exit codes: 0 clean exit, 1 runtime failure, 64 bad usage or bad gateway.env.";

/// Validated command-line options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Args {
    /// `--env`, if given (else `$GATEWAY_ENV_PATH`, else the default).
    pub env: Option<PathBuf>,
    /// `--state-dir`.
    pub state_dir: PathBuf,
    /// `--control-socket`.
    pub control_socket: PathBuf,
    /// `--control-group`, as given (a name or a gid; resolved by the caller).
    pub control_group: Option<String>,
    /// `--log-level`.
    pub log_level: tracing::Level,
    /// `--netstack`, if given (it overrides `GATELET_NETSTACK`).
    pub netstack: Option<NetstackMode>,
}

/// What the command line asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Run the agent.
    Run(Args),
    /// Print [`USAGE`] and exit 0.
    Help,
    /// Print the version and exit 0.
    Version,
}

/// A bad command line, as one line for stderr.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0} (see gatelet-agent --help)")]
pub struct UsageError(String);

fn parse_level(v: &str) -> Option<tracing::Level> {
    match v.to_ascii_lowercase().as_str() {
        "error" => Some(tracing::Level::ERROR),
        "warn" | "warning" => Some(tracing::Level::WARN),
        "info" => Some(tracing::Level::INFO),
        "debug" => Some(tracing::Level::DEBUG),
        "trace" => Some(tracing::Level::TRACE),
        _ => None,
    }
}

/// Parses the arguments after the program name. Accepts `--opt value` and `--opt=value`.
pub fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Command, UsageError> {
    let mut env = None;
    let mut state_dir = None;
    let mut control_socket = None;
    let mut control_group = None;
    let mut log_level = None;
    let mut netstack = None;
    let mut it = args.into_iter();
    while let Some(arg) = it.next() {
        let arg = arg
            .into_string()
            .map_err(|a| UsageError(format!("argument {a:?} is not valid UTF-8")))?;
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n.to_owned(), Some(v.to_owned())),
            _ => (arg.clone(), None),
        };
        match name.as_str() {
            "--help" | "-h" => return Ok(Command::Help),
            "--version" | "-V" => return Ok(Command::Version),
            "--env" | "--state-dir" | "--control-socket" | "--control-group" | "--log-level"
            | "--netstack" => {}
            other => return Err(UsageError(format!("unknown argument {other:?}"))),
        }
        let value = match inline {
            Some(v) => v,
            None => it
                .next()
                .and_then(|v| v.into_string().ok())
                .ok_or_else(|| UsageError(format!("{name} needs a value")))?,
        };
        if value.is_empty() {
            return Err(UsageError(format!("{name} needs a non-empty value")));
        }
        let slot_taken = match name.as_str() {
            "--env" => env.replace(PathBuf::from(&value)).is_some(),
            "--state-dir" => state_dir.replace(PathBuf::from(&value)).is_some(),
            "--control-socket" => control_socket.replace(PathBuf::from(&value)).is_some(),
            "--control-group" => control_group.replace(value.clone()).is_some(),
            "--netstack" => {
                let mode = NetstackMode::parse(&value).ok_or_else(|| {
                    UsageError(format!(
                        "--netstack must be kernel, userspace or auto, not {value:?}"
                    ))
                })?;
                netstack.replace(mode).is_some()
            }
            _ => {
                let level = parse_level(&value).ok_or_else(|| {
                    UsageError(format!(
                        "--log-level must be error, warn, info, debug or trace, not {value:?}"
                    ))
                })?;
                log_level.replace(level).is_some()
            }
        };
        if slot_taken {
            return Err(UsageError(format!("{name} given twice")));
        }
    }
    let state_dir = state_dir.ok_or_else(|| UsageError("--state-dir DIR is required".into()))?;
    Ok(Command::Run(Args {
        env,
        state_dir,
        control_socket: control_socket.unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET_PATH)),
        control_group,
        log_level: log_level.unwrap_or(DEFAULT_LOG_LEVEL),
        netstack,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(args: &[&str]) -> Result<Command, UsageError> {
        parse(args.iter().map(OsString::from))
    }

    #[test]
    fn full_command_line_parses_in_both_spellings() {
        let c = p(&[
            "--env",
            "/e",
            "--state-dir=/s",
            "--control-socket",
            "/c.sock",
            "--control-group=gatelet",
            "--log-level=debug",
            "--netstack",
            "userspace",
        ])
        .unwrap();
        assert_eq!(
            c,
            Command::Run(Args {
                env: Some("/e".into()),
                state_dir: "/s".into(),
                control_socket: "/c.sock".into(),
                control_group: Some("gatelet".into()),
                log_level: tracing::Level::DEBUG,
                netstack: Some(NetstackMode::Userspace),
            })
        );
    }

    #[test]
    fn defaults_apply_when_options_are_absent() {
        let Command::Run(a) = p(&["--state-dir", "/s"]).unwrap() else {
            panic!("not a run")
        };
        assert_eq!(a.env, None);
        assert_eq!(a.control_socket, PathBuf::from(DEFAULT_SOCKET_PATH));
        assert_eq!(a.control_group, None);
        assert_eq!(a.log_level, DEFAULT_LOG_LEVEL);
        assert_eq!(a.netstack, None, "gateway.env decides");
    }

    #[test]
    fn bad_usage_is_explained_in_one_line() {
        for (args, want) in [
            (&["--state-dir"][..], "--state-dir needs a value"),
            (&["--bogus"][..], "unknown argument \"--bogus\""),
            (&[][..], "--state-dir DIR is required"),
            (
                &["--state-dir", "/s", "--log-level", "loud"][..],
                "--log-level must be",
            ),
            (
                &["--state-dir", "/a", "--state-dir", "/b"][..],
                "given twice",
            ),
            (
                &["--state-dir", "/s", "--netstack=smoltcp"][..],
                "--netstack must be kernel, userspace or auto, not \"smoltcp\"",
            ),
        ] {
            let e = p(args).unwrap_err().to_string();
            assert!(e.contains(want), "{args:?}: {e}");
            assert!(!e.contains('\n'));
        }
    }

    #[test]
    fn help_and_version_win() {
        assert_eq!(p(&["--help"]).unwrap(), Command::Help);
        assert_eq!(p(&["--version", "--bogus"]).unwrap(), Command::Version);
    }
}
