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

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;

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

/// `GATELET_NETSTACK`: where the tunnel's packets are terminated.
///
/// The default is [`NetstackMode::Auto`]: a box where the agent may open and configure a TUN
/// device (root, or `CAP_NET_ADMIN` and `/dev/net/tun`) keeps the kernel stack it has today,
/// and a box where it may not (an unprivileged NAS container) works instead of exiting; the
/// agent logs why it fell back and reports the mode in its status and the heartbeat, so a
/// lost privilege does not go unnoticed. `kernel` makes a missing TUN device fatal again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NetstackMode {
    /// The TUN device and the kernel's TCP/IP stack; failing to set it up is fatal.
    Kernel,
    /// The userspace stack (smoltcp) inside the agent: no device, no privilege.
    Userspace,
    /// The TUN device when it can be opened and configured, else the userspace stack.
    #[default]
    Auto,
}

impl NetstackMode {
    /// `kernel`, `userspace` or `auto`.
    pub fn parse(v: &str) -> Option<Self> {
        match v {
            "kernel" => Some(NetstackMode::Kernel),
            "userspace" => Some(NetstackMode::Userspace),
            "auto" => Some(NetstackMode::Auto),
            _ => None,
        }
    }

    /// Its `GATELET_NETSTACK` spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            NetstackMode::Kernel => "kernel",
            NetstackMode::Userspace => "userspace",
            NetstackMode::Auto => "auto",
        }
    }
}

impl fmt::Display for NetstackMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `GATELET_DATAPATH_THREADS`: how many threads carry the tunnel's packets (TUN device only;
/// the userspace stack's data path has one thread).
///
/// With two, one thread reads the interface, encrypts and sends to the hub while the other
/// receives from the hub, decrypts and writes the interface; they share the WireGuard state
/// behind a lock held only for bookkeeping, never while encrypting or decrypting.
/// [`DatapathThreads::Auto`] (the default) takes two only with three cores or more: measured on
/// two cores (`tests-hw/bench/tunnel.sh --agent-threads 1,2`), two threads gained nothing
/// measurable against a hub that was the bottleneck, and cost 2.3 times the CPU per byte when
/// both had to share one core (a busy router); with more cores there is a spare one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DatapathThreads {
    /// One thread on one or two cores, two on three or more.
    #[default]
    Auto,
    /// One thread for both directions.
    One,
    /// A thread per direction.
    Two,
}

impl DatapathThreads {
    /// `auto`, `1` or `2`.
    pub fn parse(v: &str) -> Option<Self> {
        match v {
            "auto" => Some(DatapathThreads::Auto),
            "1" => Some(DatapathThreads::One),
            "2" => Some(DatapathThreads::Two),
            _ => None,
        }
    }

    /// The number of threads on a box where the agent may run on `cores` cores.
    pub fn resolve(self, cores: usize) -> usize {
        match self {
            DatapathThreads::Auto if cores <= 2 => 1,
            DatapathThreads::Auto => 2,
            DatapathThreads::One => 1,
            DatapathThreads::Two => 2,
        }
    }
}

/// Most characters of a value or key an error message quotes; longer ones are cut, with
/// their full length in bytes.
pub const MAX_QUOTED_CHARS: usize = 80;

/// Longest key accepted (the server's are under 32 characters).
pub const MAX_KEY_LEN: usize = 128;

/// `s` quoted for an error message, cut after [`MAX_QUOTED_CHARS`] characters.
fn quoted(s: &str) -> String {
    match s.char_indices().nth(MAX_QUOTED_CHARS) {
        None => format!("{s:?}"),
        Some((cut, _)) => format!("{:?}... ({} bytes in all)", &s[..cut], s.len()),
    }
}

/// A bad `gateway.env`: what, where, and what is expected. Displayed as one line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct EnvError {
    /// The file, when read from one.
    pub path: Option<PathBuf>,
    /// 1-based line number, when the problem is on a line.
    pub line: Option<usize>,
    /// The key concerned, when one is.
    pub key: Option<String>,
    /// What is wrong and what is expected.
    pub message: String,
}

impl fmt::Display for EnvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.path {
            Some(p) => write!(f, "{}", p.display())?,
            None => f.write_str("gateway.env")?,
        }
        if let Some(line) = self.line {
            write!(f, " line {line}")?;
        }
        f.write_str(": ")?;
        if let Some(key) = &self.key {
            write!(f, "{key} ")?;
        }
        f.write_str(&self.message)
    }
}

/// One value of the file and the line it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvValue {
    /// 1-based line number.
    pub line: usize,
    /// The value with quotes and comments removed.
    pub value: String,
}

/// The raw keys and values of a `gateway.env`, before validation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EnvFile {
    values: BTreeMap<String, EnvValue>,
}

impl EnvFile {
    /// Parses `KEY=value` lines. A key given twice is an error naming both lines.
    pub fn parse(text: &str) -> Result<Self, EnvError> {
        let mut values: BTreeMap<String, EnvValue> = BTreeMap::new();
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        for (idx, raw) in text.split('\n').enumerate() {
            let line_no = idx + 1;
            let line = raw.strip_suffix('\r').unwrap_or(raw).trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let line = line
                .strip_prefix("export ")
                .map(str::trim_start)
                .unwrap_or(line);
            let err = |key: Option<&str>, message: String| EnvError {
                path: None,
                line: Some(line_no),
                key: key.map(str::to_owned),
                message,
            };
            let Some((key, rest)) = line.split_once('=') else {
                return Err(err(None, "is not KEY=value".into()));
            };
            let key = key.trim_end();
            if key.len() > MAX_KEY_LEN {
                return Err(err(
                    None,
                    format!(
                        "has a key of {} bytes, {} (at most {MAX_KEY_LEN})",
                        key.len(),
                        quoted(key)
                    ),
                ));
            }
            if !is_valid_key(key) {
                return Err(err(
                    None,
                    format!(
                        "has an invalid key {} (letters, digits and _ expected)",
                        quoted(key)
                    ),
                ));
            }
            let value = parse_value(rest.trim_start()).map_err(|m| err(Some(key), m))?;
            if let Some(first) = values.get(key) {
                return Err(err(
                    Some(key),
                    format!(
                        "is given twice, on lines {} and {line_no}: keep one of them",
                        first.line
                    ),
                ));
            }
            values.insert(
                key.to_owned(),
                EnvValue {
                    line: line_no,
                    value,
                },
            );
        }
        Ok(EnvFile { values })
    }

    /// The value of `key` and its line, if present.
    pub fn get(&self, key: &str) -> Option<&EnvValue> {
        self.values.get(key)
    }

    /// Every key in the file, sorted.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.values.keys().map(String::as_str)
    }
}

fn is_valid_key(key: &str) -> bool {
    let mut chars = key.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Value after `=`: `"double"` (with `\"`, `\\`, `\n` escapes), `'single'` (literal) or bare
/// (ends at ` #`). After a closing quote only white space or a comment may follow.
fn parse_value(rest: &str) -> Result<String, String> {
    let quote = match rest.chars().next() {
        Some(q @ ('"' | '\'')) => q,
        _ => {
            let end = rest
                .char_indices()
                .find(|&(i, c)| c == '#' && i > 0 && rest[..i].ends_with([' ', '\t']))
                .map_or(rest.len(), |(i, _)| i);
            return Ok(rest[..end].trim_end().to_owned());
        }
    };
    let mut out = String::new();
    let mut chars = rest[1..].char_indices();
    while let Some((i, c)) = chars.next() {
        if c == quote {
            let tail = rest[1 + i + 1..].trim_start();
            if tail.is_empty() || tail.starts_with('#') {
                return Ok(out);
            }
            return Err(format!(
                "has text after the closing quote: {}",
                quoted(tail)
            ));
        }
        if c == '\\' && quote == '"' {
            match chars.next() {
                Some((_, 'n')) => out.push('\n'),
                Some((_, e)) => out.push(e),
                None => break,
            }
        } else {
            out.push(c);
        }
    }
    Err(format!("has an unterminated {quote} quote"))
}

/// A 32-byte WireGuard key. Its `Debug` never shows the bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct Key(pub [u8; 32]);

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Key(<redacted>)")
    }
}

/// A token or other secret string. Its `Debug` and `Display` never show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// The secret itself: only for putting on the wire or comparing in constant time.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// `WG_ENDPOINT`: a host name or address, and a port. Resolved by the agent, again and again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Host name or IP address (without brackets).
    pub host: String,
    /// UDP port.
    pub port: u16,
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// An address with a prefix length (`10.8.0.1/32`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    /// The address (host bits may be set, as in `WG_ADDRESS`).
    pub addr: IpAddr,
    /// Prefix length.
    pub prefix: u8,
}

impl Cidr {
    /// Whether `ip` lies in this network.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl std::str::FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, prefix) = s.split_once('/').ok_or("has no /prefix")?;
        let addr: IpAddr = addr.parse().map_err(|_| "has no valid IP address")?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix: u8 = prefix
            .parse()
            .ok()
            .filter(|p| *p <= max)
            .ok_or("has an invalid prefix length")?;
        Ok(Cidr { addr, prefix })
    }
}

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

/// Reads one key: `Ok(None)` when absent or empty, errors carry the key's line.
struct Reader<'a> {
    file: &'a EnvFile,
}

impl Reader<'_> {
    fn error(&self, key: &str, message: impl Into<String>) -> EnvError {
        EnvError {
            path: None,
            line: self.file.get(key).map(|v| v.line),
            key: Some(key.to_owned()),
            message: message.into(),
        }
    }

    fn opt(&self, key: &str) -> Option<&str> {
        self.file
            .get(key)
            .map(|v| v.value.as_str())
            .filter(|v| !v.is_empty())
    }

    fn required(&self, key: &str, expected: &str) -> Result<&str, EnvError> {
        match self.file.get(key) {
            None => Err(self.error(key, format!("is missing ({expected})"))),
            Some(v) if v.value.is_empty() => Err(self.error(key, format!("is empty ({expected})"))),
            Some(v) => Ok(&v.value),
        }
    }

    fn parsed<T>(
        &self,
        key: &str,
        expected: &str,
        parse: impl FnOnce(&str) -> Option<T>,
    ) -> Result<Option<T>, EnvError> {
        match self.opt(key) {
            None => Ok(None),
            Some(v) => parse(v)
                .map(Some)
                .ok_or_else(|| self.error(key, format!("must be {expected}, not {}", quoted(v)))),
        }
    }

    fn key(&self, key: &str) -> Result<Option<Key>, EnvError> {
        match self.opt(key) {
            None => Ok(None),
            Some(v) => decode_key(v).map(Some).ok_or_else(|| {
                self.error(
                    key,
                    "must be a base64 WireGuard key (44 characters encoding 32 bytes)",
                )
            }),
        }
    }
}

fn decode_key(v: &str) -> Option<Key> {
    let bytes = base64::engine::general_purpose::STANDARD.decode(v).ok()?;
    Some(Key(bytes.try_into().ok()?))
}

fn is_lower_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn parse_host_port(v: &str) -> Option<(String, Option<u16>)> {
    if let Some(rest) = v.strip_prefix('[') {
        let (host, tail) = rest.split_once(']')?;
        host.parse::<std::net::Ipv6Addr>().ok()?;
        let port = match tail {
            "" => None,
            t => Some(
                t.strip_prefix(':')?
                    .parse::<u16>()
                    .ok()
                    .filter(|p| *p > 0)?,
            ),
        };
        return Some((host.to_owned(), port));
    }
    let (host, port) = match v.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => (h, Some(p.parse::<u16>().ok().filter(|p| *p > 0)?)),
        _ => (v, None),
    };
    let valid_host = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b':'));
    valid_host.then(|| (host.to_owned(), port))
}

fn parse_list<T>(v: &str, parse: impl Fn(&str) -> Option<T>) -> Option<Vec<T>> {
    v.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(parse)
        .collect()
}

/// An interface name (1 to 15 characters, no `/`, space or `:`), optionally ending in `*`.
fn iface_pattern(s: &str) -> Option<String> {
    let name = s.strip_suffix('*').unwrap_or(s);
    let ok = !name.is_empty()
        && name.len() <= 15
        && !name.contains(['/', ' ', ':', '*'])
        && name.bytes().all(|b| b.is_ascii_graphic());
    ok.then(|| s.to_owned())
}

fn port(v: &str) -> Option<u16> {
    v.parse::<u16>().ok().filter(|p| *p > 0)
}

fn seconds(v: &str) -> Option<Duration> {
    v.parse::<u64>()
        .ok()
        .filter(|s| (1..=86_400).contains(s))
        .map(Duration::from_secs)
}

/// What to do about a `gateway.env` this process may not read, in one line: `me` is the
/// process's (uid, gid), `file` the file's (uid, gid, mode), when known. The file holds the
/// WireGuard private key, so the advice is group-readable (0640), never world-readable.
fn unreadable_hint(path: &Path, me: Option<(u32, u32)>, file: Option<(u32, u32, u32)>) -> String {
    let p = path.display();
    let who = match me {
        Some((uid, gid)) => format!("this process (uid {uid}, gid {gid})"),
        None => "this process".to_owned(),
    };
    let gid = me.map_or_else(|| "<gid of gatelet>".to_owned(), |(_, g)| g.to_string());
    let file = match file {
        Some((uid, fgid, mode)) => {
            format!(" (owner {uid}, group {fgid}, mode {:04o})", mode & 0o7777)
        }
        None => String::new(),
    };
    format!(
        "cannot be read by {who}: permission denied{file}; make it readable by the daemons' \
         group but not by everyone (it holds the WireGuard private key): \
         chgrp {gid} {p} && chmod 0640 {p} (its directory needs search permission for that \
         group too)"
    )
}

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

// --- LAN discovery keys (issue 11) -------------------------------------------------------

/// `GC_DISCOVERY_MAX_PREFIX` when absent: the smallest subnet size scanned is a /22.
pub const DEFAULT_DISCOVERY_MAX_PREFIX: u8 = 22;
/// `GC_DISCOVERY_TIMEOUT_MS` when absent: the server's own scan timeout.
pub const DEFAULT_DISCOVERY_TIMEOUT: Duration = Duration::from_millis(45_000);
/// `GC_DISCOVERY_CONCURRENCY` when absent: TCP probes in flight at most.
pub const DEFAULT_DISCOVERY_CONCURRENCY: u16 = 128;

/// The LAN discovery settings (`GC_DISCOVERY_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiscoveryEnv {
    /// `GC_DISCOVERY_MAX_PREFIX`: a requested subnet must have at least this prefix length
    /// (16 to 30; 22 means at most 1022 hosts).
    pub max_prefix: u8,
    /// `GC_DISCOVERY_TIMEOUT_MS`: the longest a scan runs (1000 to 55000: the server gives up
    /// 60 s after its request).
    pub timeout: Duration,
    /// `GC_DISCOVERY_CONCURRENCY`: the most TCP connects in flight (1 to 1024).
    pub concurrency: u16,
}

impl Default for DiscoveryEnv {
    fn default() -> Self {
        DiscoveryEnv {
            max_prefix: DEFAULT_DISCOVERY_MAX_PREFIX,
            timeout: DEFAULT_DISCOVERY_TIMEOUT,
            concurrency: DEFAULT_DISCOVERY_CONCURRENCY,
        }
    }
}

impl DiscoveryEnv {
    fn read(r: &Reader<'_>) -> Result<Self, EnvError> {
        let d = DiscoveryEnv::default();
        Ok(DiscoveryEnv {
            max_prefix: r
                .parsed(
                    "GC_DISCOVERY_MAX_PREFIX",
                    "a prefix length from 16 to 30",
                    |v| v.parse::<u8>().ok().filter(|p| (16..=30).contains(p)),
                )?
                .unwrap_or(d.max_prefix),
            timeout: r
                .parsed(
                    "GC_DISCOVERY_TIMEOUT_MS",
                    "milliseconds from 1000 to 55000",
                    |v| {
                        v.parse::<u64>()
                            .ok()
                            .filter(|ms| (1_000..=55_000).contains(ms))
                            .map(Duration::from_millis)
                    },
                )?
                .unwrap_or(d.timeout),
            concurrency: r
                .parsed("GC_DISCOVERY_CONCURRENCY", "a number from 1 to 1024", |v| {
                    v.parse::<u16>().ok().filter(|c| (1..=1024).contains(c))
                })?
                .unwrap_or(d.concurrency),
        })
    }
}

#[cfg(test)]
mod discovery_tests {
    use super::*;

    const SERVER_FILE: &str = include_str!("../testdata/gateway-env.txt");

    fn parse_with(extra: &str) -> Result<GatewayEnv, EnvError> {
        EnvFile::parse(&format!("{SERVER_FILE}\n{extra}\n")).and_then(|f| GatewayEnv::from_file(&f))
    }

    #[test]
    fn discovery_keys_default_parse_and_reject_garbage() {
        let d = parse_with("").unwrap().discovery;
        assert_eq!(d, DiscoveryEnv::default());
        let d = parse_with(
            "GC_DISCOVERY_MAX_PREFIX=24\nGC_DISCOVERY_TIMEOUT_MS=20000\nGC_DISCOVERY_CONCURRENCY=64",
        )
        .unwrap();
        assert!(d.unknown_keys.is_empty(), "{:?}", d.unknown_keys);
        assert_eq!(
            d.discovery,
            DiscoveryEnv {
                max_prefix: 24,
                timeout: Duration::from_millis(20_000),
                concurrency: 64
            }
        );
        for (key, bad) in [
            ("GC_DISCOVERY_MAX_PREFIX", "8"),
            ("GC_DISCOVERY_MAX_PREFIX", "/22"),
            ("GC_DISCOVERY_TIMEOUT_MS", "60000"),
            ("GC_DISCOVERY_TIMEOUT_MS", "45s"),
            ("GC_DISCOVERY_CONCURRENCY", "0"),
            ("GC_DISCOVERY_CONCURRENCY", "100000"),
        ] {
            let e = parse_with(&format!("{key}={bad}")).unwrap_err();
            assert_eq!(e.key.as_deref(), Some(key), "{key}={bad}: {e}");
            assert!(e.line.is_some(), "{key}: {e}");
            assert!(e.to_string().contains("must be"), "{e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The file a GateControl server generates, as in protocol/fixtures/gateway-env.txt.
    const SERVER_FILE: &str = include_str!("../testdata/gateway-env.txt");

    fn parse(text: &str) -> Result<GatewayEnv, EnvError> {
        EnvFile::parse(text).and_then(|f| GatewayEnv::from_file(&f))
    }

    /// The server's file with `key` set to `value` (in place, or appended when absent).
    fn with(key: &str, value: &str) -> String {
        let mut out = String::new();
        let mut found = false;
        for line in SERVER_FILE.lines() {
            if line.starts_with(&format!("{key}=")) {
                out.push_str(&format!("{key}={value}\n"));
                found = true;
            } else {
                out.push_str(line);
                out.push('\n');
            }
        }
        if !found {
            out.push_str(&format!("{key}={value}\n"));
        }
        out
    }

    #[test]
    fn server_generated_file_parses_with_every_key() {
        let env = parse(SERVER_FILE).unwrap();
        assert_eq!(env.server_url.as_deref(), Some("http://10.8.0.1:3000"));
        assert!(env
            .api_token
            .as_ref()
            .unwrap()
            .expose()
            .starts_with("gc_gw_0123"));
        assert_eq!(env.tunnel_ip, Ipv4Addr::new(10, 8, 0, 2));
        assert_eq!(env.proxy_port, 8080);
        assert_eq!(env.api_port, 9876);
        assert_eq!(env.heartbeat_interval, Duration::from_secs(30));
        assert_eq!(env.poll_interval, Duration::from_secs(300));
        assert_eq!(env.wg_endpoint.host, "gc-testbed.invalid");
        assert_eq!(env.wg_endpoint.port, 51820);
        assert!(env.wg_preshared_key.is_some());
        assert_eq!(env.wg_allowed_ips[0].to_string(), "10.8.0.1/32");
        assert_eq!(env.wg_dns, vec!["10.8.0.1".parse::<IpAddr>().unwrap()]);
        assert_eq!(env.tun_name, DEFAULT_TUN_NAME);
        assert!(env.unknown_keys.is_empty());
    }

    #[test]
    fn crlf_export_quotes_and_trailing_comments_are_accepted() {
        let text = SERVER_FILE
            .replace(
                "GC_PROXY_PORT=8080",
                "export GC_PROXY_PORT=\"8081\"  # proxy",
            )
            .replace("GC_API_PORT=9876", "GC_API_PORT='9877'")
            .replace(
                "GC_POLL_INTERVAL_S=300",
                "GC_POLL_INTERVAL_S=120 # two minutes",
            )
            .replace('\n', "\r\n");
        let env = parse(&format!("\u{feff}{text}")).unwrap();
        assert_eq!(env.proxy_port, 8081);
        assert_eq!(env.api_port, 9877);
        assert_eq!(env.poll_interval, Duration::from_secs(120));
    }

    #[test]
    fn hash_inside_an_unquoted_value_is_kept() {
        let f = EnvFile::parse("A=x#y\nB=\"p # q\" # c\n").unwrap();
        assert_eq!(f.get("A").unwrap().value, "x#y");
        assert_eq!(f.get("B").unwrap().value, "p # q");
    }

    #[test]
    fn bad_token_names_line_and_key() {
        let e = parse(&with("GC_API_TOKEN", "gc_gw_XYZ")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "gateway.env line 6: GC_API_TOKEN must be gc_gw_ followed by 64 lowercase hex \
             characters, not \"gc_gw_XYZ\""
        );
    }

    #[test]
    fn empty_server_public_key_is_a_clear_error() {
        let e = parse(&with("WG_SERVER_PUBLIC_KEY", "")).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("WG_SERVER_PUBLIC_KEY"));
        assert_eq!(e.line, Some(19));
        assert!(e.to_string().contains("is empty"), "{e}");
    }

    #[test]
    fn missing_required_key_is_named() {
        let text: String = SERVER_FILE
            .lines()
            .filter(|l| !l.starts_with("WG_PRIVATE_KEY="))
            .map(|l| format!("{l}\n"))
            .collect();
        let e = parse(&text).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("WG_PRIVATE_KEY"));
        assert_eq!(e.line, None);
        assert!(e.to_string().contains("is missing"), "{e}");
    }

    #[test]
    fn every_validated_key_rejects_garbage() {
        for (key, bad) in [
            ("GC_SERVER_URL", "ftp://x"),
            ("GC_GATEWAY_TOKEN", "FEDCBA"),
            ("GC_TUNNEL_IP", "0.0.0.0"),
            ("GC_PROXY_PORT", "70000"),
            ("GC_API_PORT", "0"),
            ("GC_HEARTBEAT_INTERVAL_S", "soon"),
            ("GC_POLL_INTERVAL_S", "-1"),
            ("WG_PRIVATE_KEY", "short"),
            ("WG_PRESHARED_KEY", "!!"),
            ("WG_ENDPOINT", "hub.example.com"),
            ("WG_ADDRESS", "10.8.0.9/32"),
            ("WG_ALLOWED_IPS", "0.0.0.0/0"),
            ("WG_DNS", "resolver"),
            ("GATELET_DIAG_LISTEN", "everywhere"),
            ("GATELET_WOL_INTERFACES", "eth0,a/b"),
            ("GATELET_WOL_EXCLUDE", "averyveryverylongname0"),
        ] {
            let e = parse(&with(key, bad)).unwrap_err();
            assert_eq!(e.key.as_deref(), Some(key), "{key}={bad}: {e}");
            assert!(e.line.is_some(), "{key}: {e}");
        }
    }

    #[test]
    fn datapath_threads_default_to_auto_which_takes_two_only_with_three_cores_or_more() {
        let env = parse(SERVER_FILE).unwrap();
        assert_eq!(env.datapath_threads, DatapathThreads::Auto);
        assert_eq!(
            [1, 2, 3, 4].map(|c| DatapathThreads::Auto.resolve(c)),
            [1, 1, 2, 2]
        );
        for (v, want, threads) in [
            ("1", DatapathThreads::One, 1),
            ("2", DatapathThreads::Two, 2),
            ("auto", DatapathThreads::Auto, 2),
        ] {
            let env = parse(&with("GATELET_DATAPATH_THREADS", v)).unwrap();
            assert_eq!(env.datapath_threads, want);
            assert_eq!(env.datapath_threads.resolve(4), threads);
            assert_eq!(want.resolve(1).min(threads), want.resolve(1));
            assert!(env.unknown_keys.is_empty());
        }
        for bad in ["0", "3", "two", "-1"] {
            let e = parse(&with("GATELET_DATAPATH_THREADS", bad)).unwrap_err();
            assert_eq!(
                e.key.as_deref(),
                Some("GATELET_DATAPATH_THREADS"),
                "{bad:?}"
            );
            assert!(e.to_string().contains("must be auto, 1 or 2"), "{e}");
        }
    }

    #[test]
    fn netstack_mode_defaults_to_auto_and_refuses_other_words() {
        assert_eq!(parse(SERVER_FILE).unwrap().netstack, NetstackMode::Auto);
        for (v, want) in [
            ("kernel", NetstackMode::Kernel),
            ("userspace", NetstackMode::Userspace),
            ("auto", NetstackMode::Auto),
        ] {
            let env = parse(&with("GATELET_NETSTACK", v)).unwrap();
            assert_eq!(env.netstack, want);
            assert_eq!(want.to_string(), v);
            assert!(env.unknown_keys.is_empty());
        }
        let env = parse(&with("GATELET_NETSTACK", "")).unwrap();
        assert_eq!(
            env.netstack,
            NetstackMode::Auto,
            "empty is absent, as for every key"
        );
        for bad in ["smoltcp", "Kernel", "tun"] {
            let e = parse(&with("GATELET_NETSTACK", bad)).unwrap_err();
            assert_eq!(e.key.as_deref(), Some("GATELET_NETSTACK"), "{bad:?}");
            assert!(
                e.to_string().contains("must be kernel, userspace or auto"),
                "{e}"
            );
        }
    }

    #[test]
    fn wol_interface_lists_are_parsed_and_default_to_empty() {
        let env = parse(SERVER_FILE).unwrap();
        assert!(env.wol_interfaces.is_empty() && env.wol_exclude.is_empty());
        let text = with("GATELET_WOL_INTERFACES", "veth-lan0, eth1,enp*");
        let env = parse(&text).unwrap();
        assert_eq!(env.wol_interfaces, ["veth-lan0", "eth1", "enp*"]);
        let env = parse(&with("GATELET_WOL_EXCLUDE", "docker*,eth9")).unwrap();
        assert_eq!(env.wol_exclude, ["docker*", "eth9"]);
        assert!(env.unknown_keys.is_empty());
        for bad in ["*", "e*th0", "eth 0", "a:b"] {
            let e = parse(&with("GATELET_WOL_EXCLUDE", bad)).unwrap_err();
            assert_eq!(e.key.as_deref(), Some("GATELET_WOL_EXCLUDE"), "{bad}");
        }
    }

    #[test]
    fn syntax_error_names_the_line() {
        let e = EnvFile::parse("# c\n\nNOT A LINE\n").unwrap_err();
        assert_eq!(e.to_string(), "gateway.env line 3: is not KEY=value");
        let e = EnvFile::parse("A=\"open\n").unwrap_err();
        assert_eq!(e.line, Some(1));
        assert_eq!(e.key.as_deref(), Some("A"));
    }

    #[test]
    fn a_huge_bad_value_is_quoted_only_in_part() {
        let huge = "x".repeat(2 << 20);
        let cases = [
            with("GC_SERVER_URL", &huge),
            with("WG_ENDPOINT", &huge),
            with("WG_ALLOWED_IPS", &huge),
            with("GATELET_DIAG_LISTEN", &huge),
            with("GC_API_PORT", &format!("\"1\" {huge}")),
            format!("{SERVER_FILE}{huge}=1\n"),
            format!("{SERVER_FILE}A{huge}=\"x\n"),
        ];
        for (i, text) in cases.iter().enumerate() {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.len() < 300, "case {i}: {} bytes: {}", e.len(), &e[..300]);
            assert!(
                e.contains(&"x".repeat(MAX_QUOTED_CHARS - 1)),
                "case {i}: {e}"
            );
            assert!(e.contains(" bytes in all)"), "case {i}: {e}");
        }
        // Short values are still quoted whole, as before.
        let e = parse(&with("GC_API_PORT", "99999")).unwrap_err();
        assert!(e.to_string().ends_with("not \"99999\""), "{e}");
        // Multi-byte characters are cut on a character boundary.
        assert_eq!(
            quoted(&"é".repeat(100)).matches('é').count(),
            MAX_QUOTED_CHARS
        );
    }

    #[test]
    fn a_key_given_twice_is_an_error_naming_both_lines() {
        let text = "A=1\n# c\nB=2\nexport A=1\n";
        let e = EnvFile::parse(text).unwrap_err();
        assert_eq!(e.line, Some(4));
        assert_eq!(e.key.as_deref(), Some("A"));
        assert_eq!(
            e.to_string(),
            "gateway.env line 4: A is given twice, on lines 1 and 4: keep one of them"
        );
        let e = parse(&format!("{SERVER_FILE}GC_PROXY_PORT=8081\n")).unwrap_err();
        assert!(
            e.to_string().contains("GC_PROXY_PORT is given twice"),
            "{e}"
        );
    }

    #[test]
    fn standalone_file_needs_no_server_keys() {
        let text: String = SERVER_FILE
            .lines()
            .filter(|l| !l.starts_with("GC_SERVER_URL") && !l.starts_with("GC_API_TOKEN"))
            .map(|l| format!("{l}\n"))
            .collect();
        let env = parse(&text).unwrap();
        assert!(env.server_url.is_none());
    }

    #[test]
    fn diagnostics_page_listens_on_loopback_unless_told() {
        assert_eq!(
            parse(SERVER_FILE).unwrap().diag_listen,
            Some(DEFAULT_DIAG_LISTEN)
        );
        let lan = parse(&with("GATELET_DIAG_LISTEN", "192.168.1.5:8088")).unwrap();
        assert_eq!(lan.diag_listen, Some("192.168.1.5:8088".parse().unwrap()));
        assert_eq!(
            parse(&with("GATELET_DIAG_LISTEN", "off"))
                .unwrap()
                .diag_listen,
            None
        );
    }

    #[test]
    fn unknown_keys_are_kept_for_a_warning() {
        let env = parse(&format!("{SERVER_FILE}GC_FUTURE_KEY=1\n")).unwrap();
        assert_eq!(env.unknown_keys, vec!["GC_FUTURE_KEY".to_owned()]);
        // The updater's keys are gatelet's own (the image boot test found both daemons
        // warning about them).
        let env = parse(&format!(
            "{SERVER_FILE}GATELET_UPDATE_URL=http://r/m.json\nGATELET_UPDATE_PUBKEY=RWQ\n"
        ))
        .unwrap();
        assert!(env.unknown_keys.is_empty(), "{:?}", env.unknown_keys);
    }

    #[test]
    fn secrets_never_show_in_debug_output() {
        let env = parse(SERVER_FILE).unwrap();
        let dbg = format!("{env:?}");
        assert!(!dbg.contains("0123456789abcdef"), "{dbg}");
        assert!(!dbg.contains("fedcba"), "{dbg}");
    }

    #[test]
    fn load_error_carries_the_path() {
        let e = GatewayEnv::load(Path::new("/nonexistent/gateway.env")).unwrap_err();
        assert!(e
            .to_string()
            .starts_with("/nonexistent/gateway.env: cannot be read"));
    }

    #[test]
    fn unreadable_file_says_what_to_do() {
        let m = unreadable_hint(
            Path::new("/etc/gatelet/gateway.env"),
            Some((65532, 65532)),
            Some((0, 0, 0o100600)),
        );
        assert!(m.contains("uid 65532, gid 65532"), "{m}");
        assert!(m.contains("owner 0, group 0, mode 0600"), "{m}");
        assert!(
            m.contains(
                "chgrp 65532 /etc/gatelet/gateway.env && chmod 0640 /etc/gatelet/gateway.env"
            ),
            "{m}"
        );
        assert!(!m.contains('\n'));
        let m = unreadable_hint(Path::new("/e"), None, None);
        assert!(m.contains("chgrp <gid of gatelet> /e"), "{m}");
    }

    #[test]
    fn path_precedence_is_cli_then_variable_then_default() {
        let cli = Path::new("/a");
        assert_eq!(GatewayEnv::resolve_path(Some(cli), Some("/b")), cli);
        assert_eq!(GatewayEnv::resolve_path(None, Some("/b")), Path::new("/b"));
        assert_eq!(
            GatewayEnv::resolve_path(None, None),
            Path::new(DEFAULT_ENV_PATH)
        );
    }

    #[test]
    fn cidr_contains() {
        let c: Cidr = "192.168.1.0/24".parse().unwrap();
        assert!(c.contains("192.168.1.77".parse().unwrap()));
        assert!(!c.contains("192.168.2.1".parse().unwrap()));
        let host: Cidr = "10.8.0.1/32".parse().unwrap();
        assert!(host.contains("10.8.0.1".parse().unwrap()));
        assert!(!host.contains("10.8.0.2".parse().unwrap()));
    }
}
