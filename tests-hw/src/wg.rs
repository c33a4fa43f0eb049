//! Userspace WireGuard peers (wireguard-go, boringtun-cli) run in a namespace and configured
//! with `wg` and `ip`, as a hub or as a reference gateway.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::keys::write_secret;
use crate::netns::WG_SOCKET_DIR;
use crate::process::run;
use crate::tempdir::next_seq;
use crate::{wait_until, HarnessError, KeyPair, Netns, Process, Result};

/// How long a userspace implementation gets to create its control socket.
pub const START_TIMEOUT: Duration = Duration::from_secs(10);

/// Which userspace WireGuard to run. Both speak the same control protocol, so `wg` configures
/// either.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WgImpl {
    /// `wireguard-go -f <ifname>` from PATH, with `GOMAXPROCS=procs` when given.
    WireguardGo {
        /// Go's OS threads running Go code (its default: one per core).
        procs: Option<u16>,
    },
    /// `boringtun-cli --foreground --disable-drop-privileges <ifname>` at this path, with
    /// `--threads threads` when given.
    BoringtunCli {
        /// The binary.
        path: PathBuf,
        /// Its worker threads (its default: 4).
        threads: Option<u16>,
    },
}

impl WgImpl {
    /// wireguard-go with its default settings.
    pub const WIREGUARD_GO: WgImpl = WgImpl::WireguardGo { procs: None };

    /// boringtun-cli at `path` with its default settings.
    pub fn boringtun_cli(path: PathBuf) -> WgImpl {
        WgImpl::BoringtunCli {
            path,
            threads: None,
        }
    }

    /// Every setting of the baselines worth trying on this machine, for the benches to
    /// compare the agent with each at its best: wireguard-go with its default GOMAXPROCS and,
    /// on more than one core, with 1; boringtun-cli (at `boringtun`) with its default 4
    /// threads, 1 and 2.
    pub fn baselines(boringtun: &std::path::Path) -> Vec<WgImpl> {
        // The machine's cores, not this thread's affinity: a bench pinned to its load core
        // still runs the gateway on another.
        // SAFETY: sysconf(3) has no preconditions.
        let cores = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
        let mut all = vec![WgImpl::WIREGUARD_GO];
        if cores > 1 {
            all.push(WgImpl::WireguardGo { procs: Some(1) });
        }
        for threads in [None, Some(1), Some(2)] {
            all.push(WgImpl::BoringtunCli {
                path: boringtun.to_owned(),
                threads,
            });
        }
        all
    }

    /// A short name for tables and messages.
    pub fn label(&self) -> &'static str {
        match self {
            WgImpl::WireguardGo { .. } => "wireguard-go",
            WgImpl::BoringtunCli { .. } => "boringtun-cli",
        }
    }

    /// The name with the setting that is not the default, e.g. `boringtun-cli --threads 1`.
    pub fn describe(&self) -> String {
        match self {
            WgImpl::WireguardGo { procs: Some(n) } => format!("wireguard-go GOMAXPROCS={n}"),
            WgImpl::BoringtunCli {
                threads: Some(n), ..
            } => format!("boringtun-cli --threads {n}"),
            _ => self.label().into(),
        }
    }
}

/// One peer of a [`WgInterface`], as `wg set ... peer` takes it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WgPeer {
    /// The peer's public key (base64).
    pub public_key: String,
    /// Optional preshared key (base64).
    pub preshared_key: Option<String>,
    /// Source addresses accepted from the peer and routed to it.
    pub allowed_ips: Vec<String>,
    /// `ip:port` to send to before the peer has made contact.
    pub endpoint: Option<String>,
    /// Keepalive interval in seconds.
    pub persistent_keepalive: Option<u16>,
}

/// A userspace WireGuard interface running in a namespace; the process is killed on drop.
#[derive(Debug)]
pub struct WgInterface {
    ns: String,
    ifname: String,
    key_file: PathBuf,
    process: Process,
}

/// A unique interface name `hw<pid>x<seq>` (at most 15 bytes): the implementations' control
/// sockets live in one directory shared by all namespaces.
pub fn unique_ifname() -> String {
    format!("hw{}x{}", std::process::id(), next_seq() % 100_000)
}

impl WgInterface {
    /// Starts `imp` in `ns` with `key`, `listen_port` (None: any), `addresses` (CIDRs) and
    /// `mtu`, and brings the interface up. Add peers with [`WgInterface::set_peer`].
    pub fn start(
        ns: &Netns,
        imp: &WgImpl,
        key: &KeyPair,
        listen_port: Option<u16>,
        addresses: &[&str],
        mtu: u16,
    ) -> Result<WgInterface> {
        let ifname = unique_ifname();
        let mut cmd = match imp {
            WgImpl::WireguardGo { procs } => {
                let mut c = ns.command("wireguard-go");
                c.args(["-f", &ifname]);
                if let Some(n) = procs {
                    c.env("GOMAXPROCS", n.to_string());
                }
                c
            }
            WgImpl::BoringtunCli { path, threads } => {
                let mut c = ns.command(path);
                c.args(["--foreground", "--disable-drop-privileges", &ifname]);
                if let Some(n) = threads {
                    c.args(["--threads", &n.to_string()]);
                }
                c
            }
        };
        cmd.env("WG_PROCESS_FOREGROUND", "1");
        let mut process = ns.spawn(&format!("{}-{ifname}", imp.label()), cmd)?;
        let socket = Path::new(WG_SOCKET_DIR).join(format!("{ifname}.sock"));
        wait_until(
            &format!("{} control socket {}", imp.label(), socket.display()),
            START_TIMEOUT,
            || {
                if let Some(status) = process.try_exit()? {
                    return Err(HarnessError::Command {
                        what: imp.label().into(),
                        status: status.to_string(),
                        output: process.log(),
                    });
                }
                Ok::<_, HarnessError>(socket.exists().then_some(()))
            },
        )?;
        let key_file = ns.dir().join(format!("{ifname}.key"));
        write_secret(&key_file, &key.private)?;
        let wg = WgInterface {
            ns: ns.name().into(),
            ifname,
            key_file,
            process,
        };
        let key_path = wg.key_file.to_string_lossy().into_owned();
        let mut args = vec!["set", &wg.ifname, "private-key", &key_path];
        let port;
        if let Some(p) = listen_port {
            port = p.to_string();
            args.extend(["listen-port", &port]);
        }
        wg.wg(&args)?;
        for addr in addresses {
            ns.ip(&["addr", "add", addr, "dev", &wg.ifname])?;
        }
        ns.ip(&["link", "set", &wg.ifname, "mtu", &mtu.to_string(), "up"])?;
        Ok(wg)
    }

    /// The interface name.
    pub fn ifname(&self) -> &str {
        &self.ifname
    }

    /// Stops the implementation (SIGTERM, then SIGKILL); the interface and its socket go away.
    pub fn stop(&mut self) {
        self.process.terminate();
    }

    /// The implementation's process (pid, log).
    pub fn process(&self) -> &Process {
        &self.process
    }

    /// Runs `wg args...` (the control socket is reachable from any namespace).
    pub fn wg(&self, args: &[&str]) -> Result<String> {
        run(Command::new("wg").args(args))
    }

    /// Adds or replaces a peer.
    pub fn set_peer(&self, peer: &WgPeer) -> Result<()> {
        let psk_file = self
            .key_file
            .with_file_name(format!("{}-{}.psk", self.ifname, next_seq()));
        let allowed = peer.allowed_ips.join(",");
        let mut args: Vec<String> = vec![
            "set".into(),
            self.ifname.clone(),
            "peer".into(),
            peer.public_key.clone(),
            "allowed-ips".into(),
            allowed,
        ];
        if let Some(psk) = &peer.preshared_key {
            write_secret(&psk_file, psk)?;
            args.extend(["preshared-key".into(), psk_file.to_string_lossy().into()]);
        }
        if let Some(ep) = &peer.endpoint {
            args.extend(["endpoint".into(), ep.clone()]);
        }
        if let Some(k) = peer.persistent_keepalive {
            args.extend(["persistent-keepalive".into(), k.to_string()]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let r = self.wg(&args);
        let _ = std::fs::remove_file(&psk_file);
        r.map(drop)
    }

    /// Removes a peer (its session is forgotten).
    pub fn remove_peer(&self, public_key: &str) -> Result<()> {
        self.wg(&["set", &self.ifname, "peer", public_key, "remove"])
            .map(drop)
    }

    /// Adds a route to `cidr` through this interface, in its namespace.
    pub fn add_route(&self, cidr: &str) -> Result<()> {
        run(Command::new("ip").args(["-n", &self.ns, "route", "add", cidr, "dev", &self.ifname]))
            .map(drop)
    }

    /// Unix time (s) of the last handshake with `public_key`; None before the first.
    pub fn latest_handshake(&self, public_key: &str) -> Result<Option<u64>> {
        let out = self.wg(&["show", &self.ifname, "latest-handshakes"])?;
        let t = self.peer_field(&out, public_key, "latest-handshakes")?;
        let t: u64 = t.parse().map_err(|_| HarnessError::Parse {
            what: "wg show latest-handshakes".into(),
            detail: format!("a number of seconds, got {t:?}"),
        })?;
        Ok((t != 0).then_some(t))
    }

    /// The endpoint (`ip:port`) the interface has for `public_key`; None when unknown.
    pub fn endpoint(&self, public_key: &str) -> Result<Option<String>> {
        let out = self.wg(&["show", &self.ifname, "endpoints"])?;
        let e = self.peer_field(&out, public_key, "endpoints")?;
        Ok((e != "(none)").then(|| e.to_owned()))
    }

    /// Bytes received from and sent to `public_key` (encrypted size, as `wg show` counts).
    pub fn transfer(&self, public_key: &str) -> Result<(u64, u64)> {
        let out = self.wg(&["show", &self.ifname, "transfer"])?;
        let line = self.peer_field(&out, public_key, "transfer")?;
        let mut it = line.split_whitespace().map(str::parse::<u64>);
        match (it.next(), it.next()) {
            (Some(Ok(rx)), Some(Ok(tx))) => Ok((rx, tx)),
            _ => Err(HarnessError::Parse {
                what: "wg show transfer".into(),
                detail: format!("two byte counts, got {line:?}"),
            }),
        }
    }

    fn peer_field<'a>(&self, out: &'a str, public_key: &str, what: &str) -> Result<&'a str> {
        out.lines()
            .find_map(|l| l.strip_prefix(public_key))
            .map(str::trim)
            .ok_or_else(|| HarnessError::Parse {
                what: format!("wg show {} {what}", self.ifname),
                detail: format!("no line for peer {public_key}: {out:?}"),
            })
    }
}
