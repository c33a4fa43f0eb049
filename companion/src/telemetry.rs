//! Telemetry for the heartbeat: what this box is and what its LAN looks like.
//!
//! Everything here is a cheap local read: `/proc`, `uname`, `statvfs`, `getifaddrs`. Nothing
//! shells out, nothing touches the network, nothing is written (the state-dir writability
//! probe creates and removes one empty file, at most every [`WRITE_PROBE_INTERVAL`]). The
//! parsers are pure functions over the files' text, so they are tested without a real `/proc`.

use std::fs;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use gatelet_agent_api::env::Cidr;
use serde::Serialize;

/// The self-update flag file in the state dir (same name as the reference gateway's).
pub const PENDING_UPDATE_FILE: &str = "pending-update";

/// A collection slower than this is logged as a warning (it delays the heartbeat: reading
/// `/proc`, the state dir's disk usage and its write probe on a slow SD card or under emulation
/// take tens to hundreds of milliseconds, which is normal and logged at debug level).
pub const SLOW_COLLECTION: Duration = Duration::from_secs(1);

/// How often the state-dir writability probe really creates a file; in between, a
/// permission and read-only-mount check answers (flash wear: no file churn per heartbeat).
pub const WRITE_PROBE_INTERVAL: Duration = Duration::from_secs(10 * 60);

/// Interface name prefixes that are never the LAN: containers, bridges of VMs, VPNs.
pub const NON_LAN_PREFIXES: &[&str] = &[
    "lo",
    "docker",
    "br-",
    "veth",
    "virbr",
    "wg",
    "tun",
    "tap",
    "tailscale",
    "zt",
    "nebula",
    "gatecontrol",
    "gatelet",
];

/// Where collection reads from; the defaults are the real system paths.
#[derive(Debug, Clone)]
pub struct TelemetrySource {
    /// The state dir: disk usage, writability and the self-update flag.
    pub state_dir: PathBuf,
    /// The tunnel interface (never a LAN), e.g. `gatelet0`.
    pub tunnel_iface: String,
    /// The tunnel address (never a LAN address, whatever interface carries it).
    pub tunnel_ip: Option<Ipv4Addr>,
    /// What tells the LAN from the uplink when the default route cannot.
    pub lan_hints: LanHints,
}

/// Supplies the IPv4 targets of the routes in force.
pub type RouteTargets = Arc<dyn Fn() -> Vec<Ipv4Addr> + Send + Sync>;

/// What tells the LAN from the uplink: the LAN is the interface the routes' targets are on;
/// the uplink is the one that reaches the WireGuard endpoint. Both matter with two
/// interfaces and no default route (or a default route on the uplink).
#[derive(Clone, Default)]
pub struct LanHints {
    /// The WireGuard endpoint, when it is an address literal (no lookup happens here).
    pub wg_endpoint: Option<SocketAddr>,
    /// The routes' targets.
    pub route_targets: Option<RouteTargets>,
}

impl std::fmt::Debug for LanHints {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LanHints")
            .field("wg_endpoint", &self.wg_endpoint)
            .field("route_targets", &self.route_targets.is_some())
            .finish()
    }
}

impl LanHints {
    /// The local address the kernel would use towards the WireGuard endpoint: a UDP
    /// `connect` only looks up the route, nothing is sent.
    fn uplink_addr(&self) -> Option<Ipv4Addr> {
        let ep = self.wg_endpoint?;
        let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).ok()?;
        s.connect(ep).ok()?;
        match s.local_addr().ok()?.ip() {
            std::net::IpAddr::V4(ip) if !ip.is_unspecified() => Some(ip),
            _ => None,
        }
    }

    fn targets(&self) -> Vec<Ipv4Addr> {
        self.route_targets.as_ref().map(|f| f()).unwrap_or_default()
    }
}

/// Disk usage of the filesystem holding the state dir, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Disk {
    /// Size of the filesystem.
    pub total: u64,
    /// Space available to the companion.
    pub free: u64,
    /// Space in use.
    pub used: u64,
}

/// One IPv4 LAN subnet of this box.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LanSubnet {
    /// Interface name.
    pub iface: String,
    /// This box's own address on it.
    pub addr: Ipv4Addr,
    /// Prefix length.
    pub prefix: u8,
    /// Whether it carries the default route (exactly one is primary when any exist).
    pub primary: bool,
}

impl LanSubnet {
    /// The network address (host bits cleared).
    pub fn network(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) & prefix_mask(self.prefix))
    }

    /// The subnet as a [`Cidr`] with the network address.
    pub fn cidr(&self) -> Cidr {
        Cidr {
            addr: self.network().into(),
            prefix: self.prefix,
        }
    }

    /// Whether `ip` lies in this subnet.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let mask = prefix_mask(self.prefix);
        u32::from(ip) & mask == u32::from(self.addr) & mask
    }
}

impl Serialize for LanSubnet {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("LanSubnet", 3)?;
        st.serialize_field("cidr", &self.cidr().to_string())?;
        st.serialize_field("iface", &self.iface)?;
        st.serialize_field("primary", &self.primary)?;
        st.end()
    }
}

/// The `telemetry` object of the heartbeat (protocol §5).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Telemetry {
    /// The companion's crate version.
    pub gateway_version: String,
    /// Always `linux`.
    pub os_platform: String,
    /// Kernel release (`uname -r`).
    pub os_release: Option<String>,
    /// CPU architecture in the reference's words (`x64`, `arm64`, `arm`).
    pub arch: String,
    /// Online CPUs.
    pub cpu_cores: u32,
    /// Load average over 1, 5 and 15 minutes.
    pub cpu_load_avg: Vec<f64>,
    /// Memory size in bytes.
    pub mem_total: Option<u64>,
    /// Available memory in bytes (`MemAvailable`).
    pub mem_free: Option<u64>,
    /// `mem_total - mem_free`.
    pub mem_used: Option<u64>,
    /// Disk of the state dir.
    pub disk: Option<Disk>,
    /// `nameserver` lines of `/etc/resolv.conf`.
    pub dns_resolvers: Vec<String>,
    /// Next hop of the default route.
    pub default_gateway_ip: Option<String>,
    /// Primary private IPv4 LAN address (the server uses it for failover rewrites).
    pub lan_ip: Option<String>,
    /// LAN subnets.
    pub lan_subnets: Vec<LanSubnet>,
    /// LAN scans are supported (`/api/lan-scan`).
    pub lan_discovery: bool,
    /// The scan categories the server's UI offers: `[{key, label}]`.
    pub lan_discovery_categories: serde_json::Value,
    /// Whether the state dir accepts writes.
    pub state_dir_writable: bool,
    /// When the self-updater last finished an update (ms since the epoch; the `last-pull`
    /// record in the state dir, null without one).
    pub last_pull_at: Option<u64>,
    /// Whether that update worked.
    pub last_pull_ok: Option<bool>,
    /// The server's request id it answers.
    pub last_pull_request_id: Option<String>,
    /// The digest of the container image running (`sha256:<hex>`), from the `last-pull`
    /// record the host-side container updater writes; null elsewhere.
    pub image_digest: Option<String>,
    /// Whether the self-update flag file exists.
    pub pending_update: bool,
    /// Egress routes are supported (the server's UI offers them only then).
    pub scan_egress: bool,
    /// The agent's egress listeners (at most [`MAX_EGRESS_LISTENERS`]; empty when the agent
    /// is unreachable).
    pub scan_egress_listeners: Vec<EgressListener>,
    /// The egress failover state: the VIPs and this gateway's role in their pool.
    pub scan_egress_near: EgressNear,
}

/// Most egress listeners reported in one heartbeat (the body must stay under 16 KiB whatever
/// the server configures; about 150 bytes each).
pub const MAX_EGRESS_LISTENERS: usize = 32;
/// Longest `bind_error` reported, in characters.
const MAX_BIND_ERROR_CHARS: usize = 200;

/// One entry of `scan_egress_listeners`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EgressListener {
    /// The egress route's id.
    pub id: u64,
    /// Whether the listener is bound.
    pub bound: bool,
    /// Why not (the agent retries).
    pub bind_error: Option<String>,
    /// The address it listens on (`0.0.0.0`: every address).
    pub lan_bind_ip: String,
    /// The listen port.
    pub lan_listen_port: u16,
    /// Connections dropped because their source is outside the allowlist.
    pub source_drops: u64,
}

/// `scan_egress_near`: the egress VIPs and the role of this gateway (`none`, `master`,
/// `backup`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EgressNear {
    /// The VIPs of the egress routes (at most [`MAX_EGRESS_LISTENERS`]).
    pub vips: Vec<String>,
    /// `none` when no failover runs (or the agent is unreachable), else `master` or `backup`.
    pub role: String,
}

impl Default for EgressNear {
    fn default() -> Self {
        EgressNear {
            vips: Vec::new(),
            role: "none".into(),
        }
    }
}

impl Telemetry {
    /// Fills the egress fields from the agent's status (None: unreachable, nothing known).
    pub fn set_egress(&mut self, agent: Option<&gatelet_agent_api::control::AgentStatus>) {
        let Some(agent) = agent else {
            self.scan_egress_listeners.clear();
            self.scan_egress_near = EgressNear::default();
            return;
        };
        self.scan_egress_listeners = agent
            .scan_egress
            .iter()
            .take(MAX_EGRESS_LISTENERS)
            .map(|e| EgressListener {
                id: e.id,
                bound: e.bound,
                bind_error: e
                    .bind_error
                    .as_ref()
                    .map(|b| b.chars().take(MAX_BIND_ERROR_CHARS).collect()),
                lan_bind_ip: e.lan_bind_ip.clone(),
                lan_listen_port: e.lan_listen_port,
                source_drops: e.source_drops,
            })
            .collect();
        self.scan_egress_near = match &agent.scan_egress_near {
            Some(n) => EgressNear {
                vips: n.vips.iter().take(MAX_EGRESS_LISTENERS).cloned().collect(),
                role: match n.role.as_str() {
                    r @ ("master" | "backup") => r.to_owned(),
                    _ => "none".to_owned(),
                },
            },
            None => EgressNear::default(),
        };
    }
}

/// Collects everything. Every part that cannot be read is reported as null/empty, never
/// as an error: telemetry must not fail a heartbeat.
pub fn collect(src: &TelemetrySource) -> Telemetry {
    let started = Instant::now();
    let (default_gw, default_iface) = read("/proc/net/route")
        .as_deref()
        .and_then(parse_default_route)
        .map_or((None, None), |(gw, iface)| (Some(gw), Some(iface)));
    let subnets = lan_subnets_with(src, default_gw, default_iface.as_deref());
    let mem = read("/proc/meminfo").as_deref().map(parse_meminfo);
    let (mem_total, mem_free) = mem.unwrap_or((None, None));
    let last_pull = crate::update::slots::LastPull::read(&src.state_dir);
    let t = Telemetry {
        gateway_version: env!("CARGO_PKG_VERSION").to_owned(),
        os_platform: "linux".to_owned(),
        os_release: uname_release(),
        arch: reference_arch(std::env::consts::ARCH).to_owned(),
        cpu_cores: cpu_cores(),
        cpu_load_avg: read("/proc/loadavg")
            .as_deref()
            .and_then(parse_loadavg)
            .map(|l| l.to_vec())
            .unwrap_or_default(),
        mem_total,
        mem_free,
        mem_used: mem_total.zip(mem_free).map(|(t, f)| t.saturating_sub(f)),
        disk: disk_usage(&src.state_dir),
        dns_resolvers: read("/etc/resolv.conf")
            .as_deref()
            .map(parse_resolv_conf)
            .unwrap_or_default(),
        default_gateway_ip: default_gw.map(|ip| ip.to_string()),
        lan_ip: primary_lan_ip(&subnets).map(|ip| ip.to_string()),
        lan_subnets: subnets,
        lan_discovery: true,
        lan_discovery_categories: crate::discovery::categories::catalogue(),
        state_dir_writable: state_dir_writable(&src.state_dir),
        last_pull_at: last_pull.as_ref().map(|l| l.pulled_at_ms),
        last_pull_ok: last_pull.as_ref().map(|l| l.ok),
        last_pull_request_id: last_pull.map(|l| l.request_id),
        image_digest: crate::update::container::image_digest(&src.state_dir),
        pending_update: src.state_dir.join(PENDING_UPDATE_FILE).exists(),
        scan_egress: true,
        scan_egress_listeners: Vec::new(),
        scan_egress_near: EgressNear::default(),
    };
    let took = started.elapsed();
    if took > SLOW_COLLECTION {
        tracing::warn!(
            took_ms = took.as_millis() as u64,
            "telemetry collection was slow"
        );
    } else {
        tracing::debug!(took_ms = took.as_millis() as u64, "telemetry collected");
    }
    t
}

/// The LAN subnets of this box right now (for `/api/probe`'s scope check and telemetry).
pub fn lan_subnets(src: &TelemetrySource) -> Vec<LanSubnet> {
    let (gw, iface) = read("/proc/net/route")
        .as_deref()
        .and_then(parse_default_route)
        .map_or((None, None), |(gw, iface)| (Some(gw), Some(iface)));
    lan_subnets_with(src, gw, iface.as_deref())
}

fn lan_subnets_with(
    src: &TelemetrySource,
    default_gw: Option<Ipv4Addr>,
    default_iface: Option<&str>,
) -> Vec<LanSubnet> {
    let addrs = interface_addrs();
    let uplink = src
        .lan_hints
        .uplink_addr()
        .and_then(|ip| addrs.iter().find(|a| a.addr == ip))
        .map(|a| a.iface.clone());
    let mut subnets = select_lan_subnets(
        &addrs,
        &src.tunnel_iface,
        src.tunnel_ip,
        default_gw,
        default_iface,
    );
    choose_primary(&mut subnets, &src.lan_hints.targets(), uplink.as_deref());
    subnets
}

/// Re-picks the primary subnet with what the default route cannot know, and puts it first
/// (the server takes the first as the scan scope): the subnet holding the most route
/// targets; else, when one interface reaches the WireGuard endpoint and others exist, the
/// current primary if it is not on that uplink, else the first that is not.
pub fn choose_primary(subnets: &mut [LanSubnet], targets: &[Ipv4Addr], uplink: Option<&str>) {
    if subnets.is_empty() {
        return;
    }
    let by_targets = subnets
        .iter()
        .enumerate()
        .map(|(i, s)| (targets.iter().filter(|t| s.contains(**t)).count(), i))
        .filter(|(n, _)| *n > 0)
        .max_by_key(|(n, i)| (*n, std::cmp::Reverse(*i)))
        .map(|(_, i)| i);
    let current = subnets.iter().position(|s| s.primary);
    let off_uplink = |i: usize| uplink != Some(subnets[i].iface.as_str());
    let pick = by_targets
        .or(current.filter(|i| off_uplink(*i)))
        .or_else(|| (0..subnets.len()).find(|i| off_uplink(*i)))
        .or(current)
        .unwrap_or(0);
    for (i, s) in subnets.iter_mut().enumerate() {
        s.primary = i == pick;
    }
    subnets[..=pick].rotate_right(1);
}

/// One IPv4 address of an interface, as `getifaddrs` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IfAddr {
    /// Interface name.
    pub iface: String,
    /// Address.
    pub addr: Ipv4Addr,
    /// Prefix length from the netmask.
    pub prefix: u8,
    /// `IFF_LOOPBACK` is set.
    pub loopback: bool,
}

/// Picks the LAN subnets out of every interface address: IPv4 only, no loopback, no tunnel
/// (by name or by address), no container/VM/VPN interfaces, no /0 or /32; one entry per
/// subnet. Primary: the subnet holding the default gateway, else the default route's
/// interface, else the first.
pub fn select_lan_subnets(
    addrs: &[IfAddr],
    tunnel_iface: &str,
    tunnel_ip: Option<Ipv4Addr>,
    default_gw: Option<Ipv4Addr>,
    default_iface: Option<&str>,
) -> Vec<LanSubnet> {
    let mut out: Vec<LanSubnet> = Vec::new();
    for a in addrs {
        if a.loopback
            || a.addr.is_loopback()
            || a.iface == tunnel_iface
            || Some(a.addr) == tunnel_ip
            || !(1..=31).contains(&a.prefix)
            || NON_LAN_PREFIXES.iter().any(|p| a.iface.starts_with(p))
        {
            continue;
        }
        let s = LanSubnet {
            iface: a.iface.clone(),
            addr: a.addr,
            prefix: a.prefix,
            primary: false,
        };
        if out.iter().any(|o| o.cidr() == s.cidr()) {
            continue;
        }
        out.push(s);
    }
    let primary = default_gw
        .and_then(|gw| out.iter().position(|s| s.contains(gw)))
        .or_else(|| default_iface.and_then(|i| out.iter().position(|s| s.iface == i)))
        .or(if out.is_empty() { None } else { Some(0) });
    if let Some(i) = primary {
        out[i].primary = true;
    }
    out
}

/// The primary private (RFC 1918) address among the LAN subnets: the primary subnet's if it
/// is private, else the first private one.
pub fn primary_lan_ip(subnets: &[LanSubnet]) -> Option<Ipv4Addr> {
    let mut private = subnets.iter().filter(|s| s.addr.is_private());
    let first = private.clone().next();
    private.find(|s| s.primary).or(first).map(|s| s.addr)
}

/// The reference gateway's (Node.js `process.arch`) name for a Rust target architecture.
pub fn reference_arch(rust_arch: &str) -> &str {
    match rust_arch {
        "x86_64" => "x64",
        "aarch64" => "arm64",
        "arm" => "arm",
        "x86" => "ia32",
        "powerpc64" => "ppc64",
        other => other,
    }
}

/// `/proc/loadavg` → the three load averages.
pub fn parse_loadavg(text: &str) -> Option<[f64; 3]> {
    let mut it = text.split_whitespace().map(|v| v.parse::<f64>().ok());
    Some([it.next()??, it.next()??, it.next()??])
}

/// `/proc/meminfo` → (`MemTotal`, `MemAvailable` or else `MemFree`), in bytes.
pub fn parse_meminfo(text: &str) -> (Option<u64>, Option<u64>) {
    let field = |name: &str| {
        text.lines().find_map(|l| {
            let rest = l.strip_prefix(name)?.strip_prefix(':')?;
            let kib: u64 = rest.split_whitespace().next()?.parse().ok()?;
            Some(kib.saturating_mul(1024))
        })
    };
    (
        field("MemTotal"),
        field("MemAvailable").or_else(|| field("MemFree")),
    )
}

/// `/etc/resolv.conf` → the `nameserver` addresses, in order.
pub fn parse_resolv_conf(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            (w.next() == Some("nameserver"))
                .then(|| w.next())
                .flatten()
                .map(str::to_owned)
        })
        .collect()
}

/// `/proc/net/route` → the default route's gateway and interface (lowest metric wins).
pub fn parse_default_route(text: &str) -> Option<(Ipv4Addr, String)> {
    const RTF_UP: u32 = 0x1;
    const RTF_GATEWAY: u32 = 0x2;
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let c: Vec<&str> = l.split_whitespace().collect();
            if c.len() < 8 || c[1] != "00000000" || c[7] != "00000000" {
                return None;
            }
            let flags = u32::from_str_radix(c[3], 16).ok()?;
            if flags & (RTF_UP | RTF_GATEWAY) != RTF_UP | RTF_GATEWAY {
                return None;
            }
            // The kernel prints the address in host (little-endian) byte order.
            let gw = u32::from_str_radix(c[2], 16).ok()?;
            let metric: u32 = c[6].parse().ok()?;
            Some((metric, Ipv4Addr::from(gw.swap_bytes()), c[0].to_owned()))
        })
        .min_by_key(|(metric, _, _)| *metric)
        .map(|(_, gw, iface)| (gw, iface))
}

fn prefix_mask(prefix: u8) -> u32 {
    u32::MAX
        .checked_shl(32 - u32::from(prefix.min(32)))
        .unwrap_or(0)
}

fn read(path: &str) -> Option<String> {
    fs::read_to_string(path).ok()
}

fn uname_release() -> Option<String> {
    crate::sys::kernel_release()
}

/// This box's host name (`uname -n`), or `unknown`.
pub fn hostname() -> String {
    crate::sys::node_name().unwrap_or_else(|| "unknown".to_owned())
}

fn cpu_cores() -> u32 {
    crate::sys::cpus_online()
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get() as u32))
}

fn disk_usage(path: &Path) -> Option<Disk> {
    let st = crate::sys::fs_space(path)?;
    Some(Disk {
        total: st.total,
        free: st.available,
        used: st.used,
    })
}

static WRITE_PROBE: Mutex<Option<(PathBuf, Instant, bool)>> = Mutex::new(None);

/// Whether the state dir accepts writes. A real create-and-remove probe runs at most every
/// [`WRITE_PROBE_INTERVAL`]; in between the answer is the probe's result combined with a
/// no-write check (`access(W_OK)` and a read-only mount flag).
pub fn state_dir_writable(dir: &Path) -> bool {
    let cheap = cheap_writable(dir);
    if !cheap {
        return false;
    }
    let mut cache = WRITE_PROBE.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((p, at, ok)) = cache.as_ref() {
        if p == dir && at.elapsed() < WRITE_PROBE_INTERVAL {
            return *ok;
        }
    }
    let ok = probe_write(dir);
    *cache = Some((dir.to_owned(), Instant::now(), ok));
    ok
}

fn cheap_writable(dir: &Path) -> bool {
    crate::sys::may_write(dir) && crate::sys::fs_space(dir).is_some_and(|st| !st.read_only)
}

fn probe_write(dir: &Path) -> bool {
    let name = format!(".gatelet-write-probe-{}", std::process::id());
    let p = dir.join(name);
    let created = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&p)
        .is_ok();
    let removed = fs::remove_file(&p).is_ok();
    created && removed
}

/// Every IPv4 address of every interface (via `getifaddrs`; empty when it fails). Bounded: a
/// box with thousands of addresses reports the first [`MAX_INTERFACE_ADDRS`].
pub fn interface_addrs() -> Vec<IfAddr> {
    crate::sys::interfaces_v4(MAX_INTERFACE_ADDRS)
        .into_iter()
        .map(|i| IfAddr {
            iface: i.name,
            addr: i.addr,
            prefix: i.prefix,
            loopback: i.loopback,
        })
        .collect()
}

/// Interface addresses read at most (the list used to stop at 4,096 nodes).
pub const MAX_INTERFACE_ADDRS: usize = 4096;

#[cfg(test)]
mod tests {
    use super::*;

    fn ifa(iface: &str, addr: [u8; 4], prefix: u8) -> IfAddr {
        IfAddr {
            iface: iface.into(),
            addr: addr.into(),
            prefix,
            loopback: iface == "lo",
        }
    }

    #[test]
    fn default_route_is_decoded_from_little_endian_hex() {
        let text =
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
            eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
            wlan0\t00000000\t0101A8C0\t0003\t0\t0\t600\t00000000\t0\t0\t0\n\
            eth0\t00000000\t010200C0\t0003\t0\t0\t100\t00000000\t0\t0\t0\n";
        assert_eq!(
            parse_default_route(text),
            Some((Ipv4Addr::new(192, 0, 2, 1), "eth0".into()))
        );
        assert_eq!(parse_default_route("Iface\n"), None);
    }

    #[test]
    fn meminfo_reports_available_not_free_in_bytes() {
        let text = "MemTotal:        4006556 kB\nMemFree:          200000 kB\nMemAvailable:    2803916 kB\n";
        assert_eq!(
            parse_meminfo(text),
            (Some(4006556 * 1024), Some(2803916 * 1024))
        );
        assert_eq!(
            parse_meminfo("MemTotal: 10 kB\nMemFree: 4 kB\n"),
            (Some(10240), Some(4096))
        );
    }

    #[test]
    fn loadavg_and_resolvers_parse() {
        assert_eq!(
            parse_loadavg("0.12 0.08 0.05 1/123 4567\n"),
            Some([0.12, 0.08, 0.05])
        );
        assert_eq!(parse_loadavg("garbage"), None);
        let r = "# comment\nsearch lan\nnameserver 10.8.0.1\nnameserver  192.168.1.1 \noptions x\n";
        assert_eq!(parse_resolv_conf(r), vec!["10.8.0.1", "192.168.1.1"]);
    }

    #[test]
    fn arch_uses_the_reference_names() {
        assert_eq!(reference_arch("x86_64"), "x64");
        assert_eq!(reference_arch("aarch64"), "arm64");
        assert_eq!(reference_arch("arm"), "arm");
        assert_eq!(reference_arch("riscv64"), "riscv64");
    }

    #[test]
    fn lan_subnets_exclude_tunnel_containers_and_host_routes() {
        let addrs = vec![
            ifa("lo", [127, 0, 0, 1], 8),
            ifa("gatelet0", [10, 8, 0, 2], 24),
            ifa("eth9", [10, 8, 0, 2], 24),
            ifa("docker0", [172, 17, 0, 1], 16),
            ifa("br-1234", [172, 18, 0, 1], 16),
            ifa("veth0a", [169, 254, 1, 1], 16),
            ifa("wg0", [10, 9, 0, 1], 24),
            ifa("tailscale0", [100, 64, 0, 1], 10),
            ifa("eth1", [203, 0, 113, 7], 32),
            ifa("wlan0", [10, 0, 0, 9], 8),
            ifa("eth0", [192, 168, 1, 5], 24),
            ifa("eth0", [192, 168, 1, 6], 24),
        ];
        let s = select_lan_subnets(
            &addrs,
            "gatelet0",
            Some(Ipv4Addr::new(10, 8, 0, 2)),
            Some(Ipv4Addr::new(192, 168, 1, 1)),
            Some("eth0"),
        );
        let cidrs: Vec<String> = s.iter().map(|s| s.cidr().to_string()).collect();
        assert_eq!(cidrs, vec!["10.0.0.0/8", "192.168.1.0/24"]);
        assert!(!s[0].primary && s[1].primary, "{s:?}");
        let mut s = s;
        choose_primary(&mut s, &[], None);
        assert_eq!(s[0].cidr().to_string(), "192.168.1.0/24", "primary first");
        assert!(s[0].primary && !s[1].primary);
        assert_eq!(primary_lan_ip(&s), Some(Ipv4Addr::new(192, 168, 1, 5)));
        let json = serde_json::to_string(&s[0]).unwrap();
        assert_eq!(
            json,
            r#"{"cidr":"192.168.1.0/24","iface":"eth0","primary":true}"#
        );
    }

    #[test]
    fn the_lan_is_where_the_route_targets_are_not_the_uplink() {
        // Two interfaces, no default route: eth0 (first) reaches the hub, eth1 has the targets.
        let addrs = vec![
            ifa("eth0", [203, 0, 113, 7], 24),
            ifa("eth1", [192, 168, 50, 1], 24),
        ];
        let base = select_lan_subnets(&addrs, "gatelet0", None, None, None);
        assert!(base[0].primary, "without hints the first wins");
        let table: &[(&[Ipv4Addr], Option<&str>, &str)] = &[
            (&[Ipv4Addr::new(192, 168, 50, 20)], None, "eth1"),
            (&[], Some("eth0"), "eth1"),
            (&[Ipv4Addr::new(192, 168, 50, 20)], Some("eth1"), "eth1"),
            (&[Ipv4Addr::new(8, 8, 8, 8)], Some("eth1"), "eth0"),
            (&[], None, "eth0"),
        ];
        for (targets, uplink, want) in table {
            let mut s = base.clone();
            choose_primary(&mut s, targets, *uplink);
            assert_eq!(s[0].iface, *want, "{targets:?} {uplink:?}");
            assert!(s[0].primary && !s[1].primary);
            let ip = primary_lan_ip(&s).map(|ip| ip.to_string());
            if *want == "eth1" {
                assert_eq!(ip.as_deref(), Some("192.168.50.1"));
            }
        }
    }

    #[test]
    fn collection_is_cheap_and_fills_what_the_system_has() {
        let src = TelemetrySource {
            state_dir: std::env::temp_dir(),
            tunnel_iface: "gatelet0".into(),
            tunnel_ip: None,
            lan_hints: LanHints::default(),
        };
        let started = Instant::now();
        let t = collect(&src);
        let took = started.elapsed();
        println!("telemetry collection took {took:?}");
        assert!(took < Duration::from_millis(500), "took {took:?}");
        assert_eq!(t.os_platform, "linux");
        assert!(t.cpu_cores >= 1);
        assert_eq!(t.cpu_load_avg.len(), 3);
        assert!(t.mem_total.is_some() && t.disk.is_some());
        assert!(t.state_dir_writable);
        assert!(t.lan_discovery);
        assert_eq!(t.lan_discovery_categories[0]["key"], "web");
    }

    #[test]
    fn last_pull_fields_come_from_the_record() {
        let d = tempfile::tempdir().unwrap();
        let src = TelemetrySource {
            state_dir: d.path().to_owned(),
            tunnel_iface: "gatelet0".into(),
            tunnel_ip: None,
            lan_hints: LanHints::default(),
        };
        let t = collect(&src);
        assert_eq!((t.last_pull_at, t.last_pull_ok), (None, None));
        crate::update::slots::LastPull {
            request_id: "req-7".into(),
            ok: true,
            pulled_at_ms: 1_764_000_000_000,
            version: Some("0.2.0".into()),
            reason: None,
        }
        .write(d.path())
        .unwrap();
        let t = collect(&src);
        assert_eq!(t.last_pull_request_id.as_deref(), Some("req-7"));
        assert_eq!(t.last_pull_ok, Some(true));
        assert_eq!(t.last_pull_at, Some(1_764_000_000_000));
        assert_eq!(t.image_digest, None, "a flashed box's record has no image");
        let digest = format!("sha256:{}", "0f".repeat(32));
        std::fs::write(
            d.path().join(PENDING_UPDATE_FILE),
            br#"{"request_id":"req-8","target_version":null}"#,
        )
        .unwrap();
        crate::update::container::Report {
            ok: true,
            reason: None,
            version: Some("0.2.1".into()),
            image_digest: Some(digest.clone()),
        }
        .answer(d.path(), 1_764_000_000_001)
        .unwrap();
        let t = collect(&src);
        assert_eq!(t.last_pull_request_id.as_deref(), Some("req-8"));
        assert_eq!(t.image_digest, Some(digest));
        assert_eq!(
            serde_json::to_value(&t).unwrap()["image_digest"],
            t.image_digest.as_deref().unwrap()
        );
    }
}
