//! `gateway.env`: the `KEY=value` file the GateControl server generates (protocol §2).
//!
//! Reading happens in two steps, so that each is testable on its own:
//! 1. [`EnvFile::parse`] turns text into keys and values, remembering each key's line. It
//!    accepts everything the server writes, plus CRLF line ends, a UTF-8 BOM, `export KEY=...`,
//!    single or double quotes and trailing ` # comments`.
//! 2. [`GatewayEnv::from_file`] validates every known key and applies defaults.
//!
//! Every error names the file, the line, the key and what was expected, in one line, e.g.
//! `gateway.env line 7: GC_API_TOKEN must be gc_gw_ followed by 64 lowercase hex characters`.
//! An error quotes at most [`MAX_QUOTED_CHARS`] characters of a bad value or key (a 2 MB line
//! is not echoed whole), and a key given twice is an error naming both lines: the server never
//! writes one, so a second line is a hand edit whose intent is not clear.
//!
//! Layout: `file` is step 1 and the error type, `reader` step 2's tools (one key read with its
//! line; the syntax of single values), `values` the typed values (keys, secrets, endpoints,
//! ranges), `modes` the agent's mode keys, `discovery` the LAN scan keys; this file holds the
//! defaults, [`GatewayEnv`] and its validation of every known key.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

mod discovery;
mod file;
mod modes;
mod reader;
mod values;

pub use discovery::{
    DiscoveryEnv, DEFAULT_DISCOVERY_CONCURRENCY, DEFAULT_DISCOVERY_MAX_PREFIX,
    DEFAULT_DISCOVERY_TIMEOUT,
};
use file::quoted;
pub use file::{EnvError, EnvFile, EnvValue, MAX_KEY_LEN, MAX_QUOTED_CHARS};
pub use modes::{DatapathThreads, NetstackMode};
use reader::{
    iface_pattern, is_lower_hex, parse_host_port, parse_list, port, seconds, unreadable_hint,
    Reader,
};
pub use values::{Cidr, Endpoint, Key, Secret};

/// Where the daemons look when neither `--env` nor `$GATEWAY_ENV_PATH` is given.
pub const DEFAULT_ENV_PATH: &str = "/etc/gatelet/gateway.env";
/// The environment variable naming the file.
pub const ENV_PATH_VAR: &str = "GATEWAY_ENV_PATH";
/// `GC_PROXY_PORT` when absent.
pub const DEFAULT_PROXY_PORT: u16 = 8080;
/// `GC_API_PORT` when absent.
pub const DEFAULT_API_PORT: u16 = 9876;
/// `GC_HEARTBEAT_INTERVAL_S` when absent.
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(30);
/// `GC_POLL_INTERVAL_S` when absent.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(300);
/// `GATELET_TUN_NAME` when absent.
pub const DEFAULT_TUN_NAME: &str = "gatelet0";
/// `GATELET_MTU` when absent: WireGuard's usual 1420 (1500 minus 80 bytes of IPv6+UDP+WG).
pub const DEFAULT_MTU: u16 = 1420;
/// `GATELET_DIAG_LISTEN` when absent: the diagnostics page on loopback only.
pub const DEFAULT_DIAG_LISTEN: SocketAddr =
    SocketAddr::V4(std::net::SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9877));

/// A validated `gateway.env`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayEnv {
    /// `GC_SERVER_URL` without a trailing `/`; None means standalone mode.
    pub server_url: Option<String>,
    /// `GC_API_TOKEN` (present whenever `server_url` is).
    pub api_token: Option<Secret>,
    /// `GC_GATEWAY_TOKEN`, the push token the management API checks. None disables the
    /// management API (only allowed in standalone mode).
    pub gateway_token: Option<Secret>,
    /// `GC_TUNNEL_IP`: every tunnel-side listener binds here.
    pub tunnel_ip: Ipv4Addr,
    /// `GC_PROXY_PORT`.
    pub proxy_port: u16,
    /// `GC_API_PORT`.
    pub api_port: u16,
    /// `GC_HEARTBEAT_INTERVAL_S`.
    pub heartbeat_interval: Duration,
    /// `GC_POLL_INTERVAL_S`.
    pub poll_interval: Duration,
    /// `GC_LAN_PROBE_TARGET`: default `/api/probe` target (host, optional port).
    pub lan_probe_target: Option<(String, Option<u16>)>,
    /// `WG_PRIVATE_KEY`.
    pub wg_private_key: Key,
    /// `WG_PUBLIC_KEY` (informational).
    pub wg_public_key: Option<Key>,
    /// `WG_PRESHARED_KEY`, None when empty or absent.
    pub wg_preshared_key: Option<Key>,
    /// `WG_ENDPOINT`.
    pub wg_endpoint: Endpoint,
    /// `WG_SERVER_PUBLIC_KEY`.
    pub wg_server_public_key: Key,
    /// `WG_ADDRESS`.
    pub wg_address: Cidr,
    /// `WG_ALLOWED_IPS`: the only sources accepted from the tunnel and the only routes installed.
    pub wg_allowed_ips: Vec<Cidr>,
    /// `WG_DNS`.
    pub wg_dns: Vec<IpAddr>,
    /// `GATELET_ROUTES_FILE`: the routes of standalone mode.
    pub routes_file: Option<PathBuf>,
    /// `GATELET_TUN_NAME`.
    pub tun_name: String,
    /// `GATELET_MTU`.
    pub mtu: u16,
    /// `GATELET_NETSTACK` (default `auto`).
    pub netstack: NetstackMode,
    /// `GATELET_DATAPATH_THREADS` (default `auto`).
    pub datapath_threads: DatapathThreads,
    /// `GATELET_DIAG_LISTEN`: where the diagnostics page listens; None when `off`.
    pub diag_listen: Option<SocketAddr>,
    /// `GATELET_WOL_INTERFACES`: when not empty, magic packets go out on these interfaces only
    /// (names; a trailing `*` matches a prefix), even ones excluded by default (veth, bridges).
    pub wol_interfaces: Vec<String>,
    /// `GATELET_WOL_EXCLUDE`: interfaces that never get magic packets (same syntax).
    pub wol_exclude: Vec<String>,
    /// The LAN discovery keys (`GC_DISCOVERY_*`).
    pub discovery: DiscoveryEnv,
    /// Keys the file has that gatelet does not know (newer servers add some): warn, ignore.
    pub unknown_keys: Vec<String>,
}

const KNOWN_KEYS: &[&str] = &[
    "GC_SERVER_URL",
    "GC_API_TOKEN",
    "GC_GATEWAY_TOKEN",
    "GC_TUNNEL_IP",
    "GC_PROXY_PORT",
    "GC_API_PORT",
    "GC_HEARTBEAT_INTERVAL_S",
    "GC_POLL_INTERVAL_S",
    "GC_LAN_PROBE_TARGET",
    "WG_PRIVATE_KEY",
    "WG_PUBLIC_KEY",
    "WG_PRESHARED_KEY",
    "WG_ENDPOINT",
    "WG_SERVER_PUBLIC_KEY",
    "WG_ADDRESS",
    "WG_ALLOWED_IPS",
    "WG_DNS",
    "GATELET_ROUTES_FILE",
    "GATELET_TUN_NAME",
    "GATELET_MTU",
    "GATELET_NETSTACK",
    "GATELET_DATAPATH_THREADS",
    "GATELET_DIAG_LISTEN",
    "GATELET_WOL_INTERFACES",
    "GATELET_WOL_EXCLUDE",
    "GC_DISCOVERY_MAX_PREFIX",
    "GC_DISCOVERY_TIMEOUT_MS",
    "GC_DISCOVERY_CONCURRENCY",
    // Read by gatelet-update (companion/src/update/settings.rs), not by the daemons.
    "GATELET_UPDATE_URL",
    "GATELET_UPDATE_PUBKEY",
];

impl GatewayEnv {
    /// Reads and validates the file at `path`.
    pub fn load(path: &Path) -> Result<Self, EnvError> {
        let with_path = |mut e: EnvError| {
            e.path = Some(path.to_owned());
            e
        };
        let text = std::fs::read_to_string(path).map_err(|e| {
            let message = if e.kind() == std::io::ErrorKind::PermissionDenied {
                use std::os::unix::fs::MetadataExt;
                // The process's own ids without libc: /proc/self belongs to them.
                let me = std::fs::metadata("/proc/self")
                    .ok()
                    .map(|m| (m.uid(), m.gid()));
                let file = std::fs::metadata(path)
                    .ok()
                    .map(|m| (m.uid(), m.gid(), m.mode()));
                unreadable_hint(path, me, file)
            } else {
                format!("cannot be read: {e}")
            };
            with_path(EnvError {
                path: None,
                line: None,
                key: None,
                message,
            })
        })?;
        EnvFile::parse(&text)
            .and_then(|f| Self::from_file(&f))
            .map_err(with_path)
    }

    /// The file to read: `--env` if given, else `$GATEWAY_ENV_PATH`, else the default.
    pub fn resolve_path(cli: Option<&Path>, env_var: Option<&str>) -> PathBuf {
        cli.map(Path::to_owned)
            .or_else(|| env_var.filter(|v| !v.is_empty()).map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from(DEFAULT_ENV_PATH))
    }

    /// Validates every known key and applies defaults.
    pub fn from_file(file: &EnvFile) -> Result<Self, EnvError> {
        let r = Reader { file };

        let server_url = r.parsed("GC_SERVER_URL", "an http:// or https:// URL", |v| {
            let rest = v
                .strip_prefix("http://")
                .or_else(|| v.strip_prefix("https://"))?;
            let host = rest.split('/').next()?;
            (!host.is_empty() && !v.contains(char::is_whitespace))
                .then(|| v.trim_end_matches('/').to_owned())
        })?;
        let api_token = r.parsed(
            "GC_API_TOKEN",
            "gc_gw_ followed by 64 lowercase hex characters",
            |v| {
                v.strip_prefix("gc_gw_")
                    .filter(|hex| is_lower_hex(hex, 64))
                    .map(|_| Secret(v.to_owned()))
            },
        )?;
        let gateway_token = r.parsed("GC_GATEWAY_TOKEN", "64 lowercase hex characters", |v| {
            is_lower_hex(v, 64).then(|| Secret(v.to_owned()))
        })?;
        if server_url.is_some() {
            r.required(
                "GC_API_TOKEN",
                "gc_gw_ followed by 64 lowercase hex characters; needed with GC_SERVER_URL",
            )?;
            r.required(
                "GC_GATEWAY_TOKEN",
                "64 lowercase hex characters; needed with GC_SERVER_URL",
            )?;
        }

        let wg_address = r.parsed(
            "WG_ADDRESS",
            "an IPv4 address with prefix, like 10.8.0.2/32",
            |v| v.parse::<Cidr>().ok().filter(|c| c.addr.is_ipv4()),
        )?;
        let tunnel_ip = r.parsed(
            "GC_TUNNEL_IP",
            "an IPv4 address other than 0.0.0.0, like 10.8.0.2",
            |v| {
                v.parse::<Ipv4Addr>()
                    .ok()
                    .filter(|ip| !ip.is_unspecified() && !ip.is_broadcast() && !ip.is_multicast())
            },
        )?;
        let (tunnel_ip, wg_address) = match (tunnel_ip, wg_address) {
            (Some(ip), Some(addr)) if addr.addr != IpAddr::V4(ip) => {
                return Err(r.error(
                    "WG_ADDRESS",
                    format!("must hold GC_TUNNEL_IP {ip}, not {}", addr.addr),
                ))
            }
            (Some(ip), Some(addr)) => (ip, addr),
            (Some(ip), None) => (
                ip,
                Cidr {
                    addr: IpAddr::V4(ip),
                    prefix: 32,
                },
            ),
            (None, Some(addr)) => match addr.addr {
                IpAddr::V4(ip) => (ip, addr),
                IpAddr::V6(_) => unreachable!("filtered to IPv4 above"),
            },
            (None, None) => {
                r.required("GC_TUNNEL_IP", "the gateway's IPv4 tunnel address")?;
                unreachable!("required() fails for an absent key")
            }
        };

        let proxy_port = r
            .parsed("GC_PROXY_PORT", "a port from 1 to 65535", port)?
            .unwrap_or(DEFAULT_PROXY_PORT);
        let api_port = r
            .parsed("GC_API_PORT", "a port from 1 to 65535", port)?
            .unwrap_or(DEFAULT_API_PORT);
        if api_port == proxy_port {
            return Err(r.error(
                "GC_API_PORT",
                format!("must differ from GC_PROXY_PORT (both are {api_port})"),
            ));
        }
        let heartbeat_interval = r
            .parsed(
                "GC_HEARTBEAT_INTERVAL_S",
                "whole seconds from 1 to 86400",
                seconds,
            )?
            .unwrap_or(DEFAULT_HEARTBEAT_INTERVAL);
        let poll_interval = r
            .parsed(
                "GC_POLL_INTERVAL_S",
                "whole seconds from 1 to 86400",
                seconds,
            )?
            .unwrap_or(DEFAULT_POLL_INTERVAL);
        let lan_probe_target =
            r.parsed("GC_LAN_PROBE_TARGET", "host or host:port", parse_host_port)?;

        let wg_private_key = match r.key("WG_PRIVATE_KEY")? {
            Some(k) => k,
            None => {
                r.required(
                    "WG_PRIVATE_KEY",
                    "the gateway's base64 WireGuard private key",
                )?;
                unreachable!()
            }
        };
        let wg_public_key = r.key("WG_PUBLIC_KEY")?;
        let wg_preshared_key = r.key("WG_PRESHARED_KEY")?;
        if file
            .get("WG_SERVER_PUBLIC_KEY")
            .is_some_and(|v| v.value.is_empty())
        {
            return Err(r.error(
                "WG_SERVER_PUBLIC_KEY",
                "is empty: the server could not read its own WireGuard public key; put the hub's \
                 public key (wg show <interface> public-key, on the server) on this line",
            ));
        }
        let wg_server_public_key = match r.key("WG_SERVER_PUBLIC_KEY")? {
            Some(k) => k,
            None => {
                r.required(
                    "WG_SERVER_PUBLIC_KEY",
                    "the hub's base64 WireGuard public key",
                )?;
                unreachable!()
            }
        };
        let endpoint = r.required("WG_ENDPOINT", "the hub's UDP endpoint as host:port")?;
        let wg_endpoint = match parse_host_port(endpoint) {
            Some((host, Some(port))) => Endpoint { host, port },
            _ => {
                return Err(r.error(
                    "WG_ENDPOINT",
                    format!(
                        "must be host:port (like hub.example.com:51820), not {}",
                        quoted(endpoint)
                    ),
                ))
            }
        };
        let allowed = r.required(
            "WG_ALLOWED_IPS",
            "the hub's tunnel address, like 10.8.0.1/32",
        )?;
        let wg_allowed_ips = parse_list(allowed, |s| s.parse::<Cidr>().ok()).ok_or_else(|| {
            r.error(
                "WG_ALLOWED_IPS",
                format!(
                    "must be comma-separated CIDRs like 10.8.0.1/32, not {}",
                    quoted(allowed)
                ),
            )
        })?;
        if let Some(all) = wg_allowed_ips.iter().find(|c| c.prefix == 0) {
            return Err(r.error(
                "WG_ALLOWED_IPS",
                format!("must not contain {all}: gatelet never routes everything into the tunnel"),
            ));
        }
        let wg_dns = r
            .parsed("WG_DNS", "comma-separated IP addresses", |v| {
                parse_list(v, |s| s.parse::<IpAddr>().ok())
            })?
            .unwrap_or_default();

        let routes_file = r.opt("GATELET_ROUTES_FILE").map(PathBuf::from);
        let tun_name = r
            .parsed(
                "GATELET_TUN_NAME",
                "an interface name of 1 to 15 characters",
                |v| (v.len() <= 15 && !v.contains(['/', ' ', ':'])).then(|| v.to_owned()),
            )?
            .unwrap_or_else(|| DEFAULT_TUN_NAME.to_owned());
        let mtu = r
            .parsed("GATELET_MTU", "an MTU from 576 to 9000", |v| {
                v.parse::<u16>().ok().filter(|m| (576..=9000).contains(m))
            })?
            .unwrap_or(DEFAULT_MTU);
        let netstack = r
            .parsed(
                "GATELET_NETSTACK",
                "kernel, userspace or auto",
                NetstackMode::parse,
            )?
            .unwrap_or_default();
        let datapath_threads = r
            .parsed(
                "GATELET_DATAPATH_THREADS",
                "auto, 1 or 2",
                DatapathThreads::parse,
            )?
            .unwrap_or_default();

        let diag_listen = match r.opt("GATELET_DIAG_LISTEN") {
            None => Some(DEFAULT_DIAG_LISTEN),
            Some("off") => None,
            Some(v) => Some(v.parse::<SocketAddr>().map_err(|_| {
                r.error(
                    "GATELET_DIAG_LISTEN",
                    format!(
                        "must be ADDR:PORT (like 192.168.1.5:9877) or off, not {}",
                        quoted(v)
                    ),
                )
            })?),
        };

        let iface_list = "comma-separated interface names (a trailing * matches a prefix)";
        let wol_interfaces = r
            .parsed("GATELET_WOL_INTERFACES", iface_list, |v| {
                parse_list(v, iface_pattern)
            })?
            .unwrap_or_default();
        let wol_exclude = r
            .parsed("GATELET_WOL_EXCLUDE", iface_list, |v| {
                parse_list(v, iface_pattern)
            })?
            .unwrap_or_default();

        let discovery = DiscoveryEnv::read(&r)?;

        let unknown_keys = file
            .keys()
            .filter(|k| !KNOWN_KEYS.contains(k))
            .map(str::to_owned)
            .collect();

        Ok(GatewayEnv {
            server_url,
            api_token,
            gateway_token,
            tunnel_ip,
            proxy_port,
            api_port,
            heartbeat_interval,
            poll_interval,
            lan_probe_target,
            wg_private_key,
            wg_public_key,
            wg_preshared_key,
            wg_endpoint,
            wg_server_public_key,
            wg_address,
            wg_allowed_ips,
            wg_dns,
            routes_file,
            tun_name,
            mtu,
            netstack,
            datapath_threads,
            diag_listen,
            wol_interfaces,
            wol_exclude,
            discovery,
            unknown_keys,
        })
    }
}

#[cfg(test)]
mod tests;
