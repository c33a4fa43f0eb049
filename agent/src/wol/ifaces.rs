//! Which interfaces magic packets go out on: every physical LAN interface (IPv4, up,
//! broadcast-capable), never loopback, the tunnel, container bridges, veths or VPNs, unless an
//! explicit allow list (`GATELET_WOL_INTERFACES`) names them; `GATELET_WOL_EXCLUDE` removes more.

use std::io;
use std::net::Ipv4Addr;

/// Name prefixes of interfaces that are never a physical LAN (containers, VMs, VPNs).
pub const EXCLUDED_PREFIXES: &[&str] = &[
    "docker",
    "br-",
    "veth",
    "virbr",
    "vnet",
    "wg",
    "tun",
    "tap",
    "tailscale",
    "zt",
    "ppp",
    "ipsec",
    "vti",
    "gre",
    "lxc",
    "cni",
    "flannel",
    "cali",
    "nebula",
    "utun",
];

/// One IPv4 address of one interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Iface {
    /// Interface name.
    pub name: String,
    /// The interface's IPv4 address.
    pub addr: Ipv4Addr,
    /// Its netmask.
    pub netmask: Ipv4Addr,
    /// IFF_UP.
    pub up: bool,
    /// IFF_LOOPBACK.
    pub loopback: bool,
    /// IFF_BROADCAST.
    pub broadcast: bool,
}

impl Iface {
    /// The directed broadcast address of the interface's subnet.
    pub fn directed_broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) | !u32::from(self.netmask))
    }
}

/// The selection rules: the tunnel's name, and the configured allow and deny lists (names,
/// a trailing `*` matches a prefix).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IfaceFilter {
    /// The tunnel interface (never used).
    pub tun_name: String,
    /// When not empty, only these interfaces (even veths or bridges).
    pub allow: Vec<String>,
    /// Never these interfaces.
    pub exclude: Vec<String>,
}

fn matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => pattern == name,
    }
}

impl IfaceFilter {
    /// Whether `iface` gets magic packets.
    pub fn accepts(&self, iface: &Iface) -> bool {
        if !iface.up || iface.loopback || !iface.broadcast || iface.name == self.tun_name {
            return false;
        }
        if iface.netmask == Ipv4Addr::BROADCAST || iface.addr.is_loopback() {
            return false;
        }
        if self.exclude.iter().any(|p| matches(p, &iface.name)) {
            return false;
        }
        if !self.allow.is_empty() {
            return self.allow.iter().any(|p| matches(p, &iface.name));
        }
        !EXCLUDED_PREFIXES.iter().any(|p| iface.name.starts_with(p))
    }

    /// The accepted interfaces of `all`, in order, one entry per (name, directed broadcast).
    pub fn select(&self, all: &[Iface]) -> Vec<Iface> {
        let mut out: Vec<Iface> = Vec::new();
        for i in all.iter().filter(|i| self.accepts(i)) {
            let dup = out
                .iter()
                .any(|o| o.name == i.name && o.directed_broadcast() == i.directed_broadcast());
            if !dup {
                out.push(i.clone());
            }
        }
        out
    }
}

/// Interface addresses read at most (a namespace with more is not a home gateway's).
const MAX_ADDRS: usize = 4096;

/// Every IPv4 address of every interface of this network namespace (getifaddrs).
pub fn list() -> io::Result<Vec<Iface>> {
    Ok(crate::sys::ifaddrs::list(MAX_ADDRS)?
        .into_iter()
        .map(|a| Iface {
            name: a.name,
            addr: a.addr,
            netmask: a.netmask,
            up: a.flags & libc::IFF_UP != 0,
            loopback: a.flags & libc::IFF_LOOPBACK != 0,
            broadcast: a.flags & libc::IFF_BROADCAST != 0,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iface(name: &str, addr: [u8; 4], prefix: u32) -> Iface {
        Iface {
            name: name.into(),
            addr: addr.into(),
            netmask: Ipv4Addr::from(u32::MAX.checked_shl(32 - prefix).unwrap_or(0)),
            up: true,
            loopback: false,
            broadcast: true,
        }
    }

    fn fake() -> Vec<Iface> {
        let mut lo = iface("lo", [127, 0, 0, 1], 8);
        lo.loopback = true;
        let mut down = iface("eth1", [10, 1, 0, 2], 24);
        down.up = false;
        let mut p2p = iface("eth2", [10, 2, 0, 2], 24);
        p2p.broadcast = false;
        vec![
            lo,
            iface("eth0", [192, 168, 1, 5], 24),
            iface("eth0", [192, 168, 1, 6], 24),
            down,
            p2p,
            iface("gatelet0", [10, 8, 0, 2], 24),
            iface("docker0", [172, 17, 0, 1], 16),
            iface("br-1a2b", [172, 18, 0, 1], 16),
            iface("veth12", [10, 3, 0, 1], 24),
            iface("virbr0", [192, 168, 122, 1], 24),
            iface("wg0", [10, 9, 0, 1], 24),
            iface("tailscale0", [100, 64, 0, 1], 10),
            iface("zt0", [10, 147, 0, 1], 16),
            iface("tun0", [10, 4, 0, 1], 24),
            iface("enp3s0", [10, 0, 0, 7], 16),
            iface("br0", [192, 168, 2, 1], 24),
        ]
    }

    fn names(v: &[Iface]) -> Vec<&str> {
        v.iter().map(|i| i.name.as_str()).collect()
    }

    #[test]
    fn default_selection_keeps_only_physical_lan_interfaces() {
        let f = IfaceFilter {
            tun_name: "gatelet0".into(),
            ..Default::default()
        };
        let sel = f.select(&fake());
        // eth0 once (both addresses share a broadcast), a host bridge br0 is a LAN.
        assert_eq!(names(&sel), ["eth0", "enp3s0", "br0"]);
        assert_eq!(sel[0].directed_broadcast(), Ipv4Addr::new(192, 168, 1, 255));
        assert_eq!(sel[1].directed_broadcast(), Ipv4Addr::new(10, 0, 255, 255));
    }

    #[test]
    fn allow_list_overrides_exclusions_even_for_veth() {
        let f = IfaceFilter {
            tun_name: "gatelet0".into(),
            allow: vec![
                "veth12".into(),
                "docker*".into(),
                "lo".into(),
                "gatelet0".into(),
            ],
            exclude: vec![],
        };
        // Loopback and the tunnel stay out whatever the list says.
        assert_eq!(names(&f.select(&fake())), ["docker0", "veth12"]);
    }

    #[test]
    fn exclude_list_removes_interfaces() {
        let f = IfaceFilter {
            tun_name: "gatelet0".into(),
            allow: vec![],
            exclude: vec!["enp*".into(), "br0".into()],
        };
        assert_eq!(names(&f.select(&fake())), ["eth0"]);
    }

    #[test]
    fn listing_this_namespace_finds_loopback() {
        let all = list().unwrap();
        assert!(
            all.iter().any(|i| i.loopback && i.addr.is_loopback()),
            "{all:?}"
        );
    }
}
