//! The TUN device, with ioctls on `/dev/net/tun` and an `AF_INET` socket (no `ip` process).
//!
//! [`TunDevice::open`] creates the device or attaches to one of the same name: a device a
//! crashed agent left behind, or one an administrator pre-created (`ip tuntap add dev gatelet0
//! mode tun user gatelet`) so that the agent runs without `CAP_NET_ADMIN`. A device of that
//! name that cannot be attached to (a TAP device, or not a TUN device at all) is deleted and
//! created again. [`TunDevice::configure`] sets only what differs from the wanted state, and
//! without the privilege to change something it logs what stays as it is instead of failing.
//! Dropping the device closes it: the kernel then removes a device the agent created; a
//! pre-created persistent one stays.

use std::fs;
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use gatelet_agent_api::env::Cidr;

use super::netlink::{network_of, Netlink};
use super::NetifError;
use crate::sys;
use crate::sys::iface::V4;

/// `IFF_PERSIST` as the kernel reports it in `/sys/class/net/<name>/tun_flags`.
const IFF_PERSIST: u32 = 0x0800;

/// What the device should look like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunConfig {
    /// IPv4 address and prefix (`WG_ADDRESS`).
    pub address: Cidr,
    /// MTU in bytes (`GATELET_MTU`).
    pub mtu: u16,
    /// Networks routed into the device (`WG_ALLOWED_IPS`).
    pub routes: Vec<Cidr>,
}

/// An open TUN device (IFF_TUN | IFF_NO_PI | IFF_VNET_HDR, non-blocking): read and write
/// whole IP packets, each behind a `virtio_net_hdr` (see [`super::vnet`]).
#[derive(Debug)]
pub struct TunDevice {
    fd: OwnedFd,
    name: String,
    ifindex: u32,
    persistent: bool,
    /// The kernel took the USO offloads (see [`TunDevice::udp_segments`]).
    udp_segments: bool,
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() < libc::IFNAMSIZ
        && !name.contains(['/', ':', ' ', '\t', '\n', '\0'])
}

fn ifindex_of(name: &str) -> Option<u32> {
    sys::iface::ifindex(name)
}

/// `tun_flags` of an existing TUN/TAP device, None when no such TUN/TAP device exists.
fn tun_flags(name: &str) -> Option<u32> {
    let text = fs::read_to_string(format!("/sys/class/net/{name}/tun_flags")).ok()?;
    u32::from_str_radix(text.trim().trim_start_matches("0x"), 16).ok()
}

fn set_iff(fd: RawFd, name: &str) -> io::Result<()> {
    sys::iface::tun_attach(
        fd,
        name,
        libc::IFF_TUN | libc::IFF_NO_PI | libc::IFF_VNET_HDR,
    )
}

fn open_clone() -> Result<OwnedFd, NetifError> {
    sys::iface::open_tun_clone().map_err(|e| {
        if e.raw_os_error() == Some(libc::EACCES) {
            // File permissions, which CAP_NET_ADMIN does not override.
            return NetifError::Sys {
                action: "cannot open /dev/net/tun".into(),
                source: e,
                hint: "; the device node must be readable and writable by the agent's user or \
                       group: install systemd/gatelet.tmpfiles.conf (it makes the node 0660 \
                       root:gatelet) and run `systemd-tmpfiles --create gatelet.conf`",
            };
        }
        NetifError::sys("cannot open /dev/net/tun", e)
    })
}

impl TunDevice {
    /// Creates the TUN device `name`, or attaches to an existing one.
    pub fn open(name: &str) -> Result<Self, NetifError> {
        if !valid_name(name) {
            return Err(NetifError::BadName(name.to_owned()));
        }
        let mut persistent = tun_flags(name).is_some_and(|f| f & IFF_PERSIST != 0);
        let fd = open_clone()?;
        if let Err(e) = set_iff(fd.as_raw_fd(), name) {
            // EINVAL: the name belongs to a TAP device, a multi-queue TUN device or another
            // kind of interface. It is ours by name: replace it, once.
            let idx = ifindex_of(name);
            if e.raw_os_error() != Some(libc::EINVAL) || idx.is_none() {
                return Err(NetifError::sys(
                    format!("cannot create or attach TUN device {name}"),
                    e,
                ));
            }
            tracing::warn!(
                device = name,
                "replacing an interface of the same name that is not a usable TUN device"
            );
            let mut nl =
                Netlink::open().map_err(|e| NetifError::sys("cannot open a netlink socket", e))?;
            if let Some(idx) = idx {
                nl.del_link(idx).map_err(|e| {
                    NetifError::sys(format!("cannot delete the old interface {name}"), e)
                })?;
            }
            // The replacement is the agent's own: gone when the agent closes it.
            persistent = false;
            set_iff(fd.as_raw_fd(), name)
                .map_err(|e| NetifError::sys(format!("cannot create TUN device {name}"), e))?;
        }
        // Checksum, TSO and (Linux 6.2) USO offloads: the kernel may hand over partial
        // checksums and TCP or UDP segments up to 64 KiB, which the data path completes and
        // cuts (see `vnet`). A kernel that takes USO also takes UDP segments written to the
        // device, which the data path then joins (`vnet::Coalescer`).
        let offloads = libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6;
        let uso = libc::TUN_F_USO4 | libc::TUN_F_USO6;
        let udp_segments = sys::iface::tun_set_offload(fd.as_raw_fd(), offloads | uso).is_ok();
        if udp_segments {
            tracing::info!(
                device = name,
                "TUN offloads: checksum, TCP and UDP segmentation (TSO, USO)"
            );
        } else {
            if let Err(e) = sys::iface::tun_set_offload(fd.as_raw_fd(), offloads) {
                tracing::info!(
                    device = name,
                    error = %e,
                    "TUN offloads unavailable; the kernel segments and checksums itself"
                );
            }
        }
        let ifindex = ifindex_of(name).ok_or_else(|| {
            NetifError::sys(
                format!("TUN device {name} has no interface index"),
                io::Error::last_os_error(),
            )
        })?;
        if persistent {
            tracing::info!(
                device = name,
                "attached to a pre-created persistent TUN device"
            );
        }
        Ok(TunDevice {
            fd,
            name: name.to_owned(),
            ifindex,
            persistent,
            udp_segments,
        })
    }

    /// Whether the device takes UDP segmentation offload (Linux 6.2): UDP datagrams of one
    /// flow may be written joined as one `GSO_UDP_L4` frame.
    pub fn udp_segments(&self) -> bool {
        self.udp_segments
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether the interface was deleted (or replaced by another of the same name) while
    /// the agent held it.
    pub fn is_gone(&self) -> bool {
        ifindex_of(&self.name) != Some(self.ifindex)
    }

    /// Whether the device existed as a persistent device before the agent attached (it then
    /// outlives the agent).
    pub fn is_persistent(&self) -> bool {
        self.persistent
    }

    /// Brings the device to `cfg`: MTU, address, up, routes. Changes only what differs;
    /// what cannot be changed for lack of privilege is logged and left as it is.
    pub fn configure(&self, cfg: &TunConfig) -> Result<(), NetifError> {
        let IpAddr::V4(addr) = cfg.address.addr else {
            return Err(NetifError::sys(
                format!("cannot address {}", self.name),
                io::Error::new(io::ErrorKind::InvalidInput, "WG_ADDRESS must be IPv4"),
            ));
        };
        let ctl = IoctlSocket::open()?;
        let mut skipped: Vec<String> = Vec::new();
        let mut check = |what: String, r: Result<(), NetifError>| -> Result<(), NetifError> {
            match r {
                Err(e) if e.is_permission() => {
                    skipped.push(what);
                    Ok(())
                }
                other => other,
            }
        };

        if ctl.mtu(&self.name)? != i32::from(cfg.mtu) {
            check(
                format!("set MTU {}", cfg.mtu),
                ctl.set_mtu(&self.name, cfg.mtu),
            )?;
        }
        let netmask = Ipv4Addr::from(
            u32::MAX
                .checked_shl(32 - u32::from(cfg.address.prefix))
                .unwrap_or(0),
        );
        let current = ctl.addr(&self.name, V4::Address)?;
        let current_mask = ctl.addr(&self.name, V4::Netmask)?;
        if current != Some(addr) || current_mask != Some(netmask) {
            check(
                format!("set address {}", cfg.address),
                ctl.set_addr(&self.name, V4::Address, addr)
                    .and_then(|()| ctl.set_addr(&self.name, V4::Netmask, netmask)),
            )?;
        }
        let flags = ctl.flags(&self.name)?;
        if flags & libc::IFF_UP as libc::c_short == 0 {
            check(
                "bring it up".into(),
                ctl.set_flags(&self.name, flags | libc::IFF_UP as libc::c_short),
            )?;
        }

        let mut nl =
            Netlink::open().map_err(|e| NetifError::sys("cannot open a netlink socket", e))?;
        for route in &cfg.routes {
            let net = network_of(route);
            match nl.add_route(&net, self.ifindex) {
                Ok(()) => tracing::debug!(route = %net, device = %self.name, "route added"),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    tracing::debug!(route = %net, "route already present")
                }
                Err(e) if matches!(e.raw_os_error(), Some(libc::EPERM) | Some(libc::EACCES)) => {
                    if !has_ipv4_route(&self.name, &net) {
                        skipped.push(format!("add route {net}"))
                    }
                }
                Err(e) if net.addr.is_ipv6() => {
                    tracing::warn!(route = %net, error = %e, "cannot add an IPv6 route (IPv6 disabled on the device?)")
                }
                Err(e) => {
                    return Err(NetifError::sys(
                        format!("cannot add route {net} via {}", self.name),
                        e,
                    ))
                }
            }
        }
        if !skipped.is_empty() {
            tracing::warn!(
                device = %self.name,
                skipped = %skipped.join(", "),
                "no CAP_NET_ADMIN: using the device as it is configured; configure it as root if the tunnel does not work"
            );
        }
        Ok(())
    }
}

/// Whether `/proc/net/route` lists `net` via `dev` (IPv4 only; false when unknown).
fn has_ipv4_route(dev: &str, net: &Cidr) -> bool {
    let IpAddr::V4(addr) = net.addr else {
        return false;
    };
    let mask = u32::MAX
        .checked_shl(32 - u32::from(net.prefix))
        .unwrap_or(0);
    let Ok(table) = fs::read_to_string("/proc/net/route") else {
        return false;
    };
    table.lines().skip(1).any(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        // Destination and Mask: the address bytes read as a host-order u32, in hex.
        let bytes = |i: usize| {
            f.get(i)
                .and_then(|v| u32::from_str_radix(v, 16).ok())
                .map(u32::to_ne_bytes)
        };
        f.first() == Some(&dev)
            && bytes(1) == Some(addr.octets())
            && bytes(7) == Some(mask.to_be_bytes())
    })
}

impl std::os::fd::AsFd for TunDevice {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for TunDevice {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// The interface ioctls, with errors that name the device.
struct IoctlSocket(sys::iface::IfSocket);

impl IoctlSocket {
    fn open() -> Result<Self, NetifError> {
        sys::iface::IfSocket::open()
            .map(IoctlSocket)
            .map_err(|e| NetifError::sys("cannot open a socket for interface ioctls", e))
    }

    fn mtu(&self, name: &str) -> Result<i32, NetifError> {
        self.0
            .mtu(name)
            .map_err(|e| NetifError::sys(format!("cannot read the MTU of {name}"), e))
    }

    fn set_mtu(&self, name: &str, mtu: u16) -> Result<(), NetifError> {
        self.0
            .set_mtu(name, i32::from(mtu))
            .map_err(|e| NetifError::sys(format!("cannot set MTU {mtu} on {name}"), e))
    }

    fn flags(&self, name: &str) -> Result<libc::c_short, NetifError> {
        self.0
            .flags(name)
            .map_err(|e| NetifError::sys(format!("cannot read the flags of {name}"), e))
    }

    fn set_flags(&self, name: &str, flags: libc::c_short) -> Result<(), NetifError> {
        self.0
            .set_flags(name, flags)
            .map_err(|e| NetifError::sys(format!("cannot bring {name} up"), e))
    }

    /// The IPv4 address (or netmask); None when the device has none.
    fn addr(&self, name: &str, which: V4) -> Result<Option<Ipv4Addr>, NetifError> {
        match self.0.ipv4(name, which) {
            Ok(a) => Ok(Some(a)),
            Err(e) if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) => Ok(None),
            Err(e) => Err(NetifError::sys(
                format!("cannot read the address of {name}"),
                e,
            )),
        }
    }

    fn set_addr(&self, name: &str, which: V4, addr: Ipv4Addr) -> Result<(), NetifError> {
        self.0
            .set_ipv4(name, which, addr)
            .map_err(|e| NetifError::sys(format!("cannot set address {addr} on {name}"), e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_route_is_found_in_proc_net_route() {
        // Every Linux host routes nothing via "lo" in the main table but lists its own
        // default/link routes; compare with a route that surely exists when any does.
        let table = fs::read_to_string("/proc/net/route").unwrap_or_default();
        let Some(line) = table.lines().nth(1) else {
            return;
        };
        let f: Vec<&str> = line.split_whitespace().collect();
        let dest = u32::from_str_radix(f[1], 16).unwrap().to_ne_bytes();
        let mask = u32::from_str_radix(f[7], 16).unwrap().to_ne_bytes();
        let net = Cidr {
            addr: IpAddr::V4(Ipv4Addr::from(dest)),
            prefix: u32::from_be_bytes(mask).count_ones() as u8,
        };
        assert!(has_ipv4_route(f[0], &net), "{line}");
        assert!(!has_ipv4_route("no-such-dev", &net));
    }

    #[test]
    fn interface_names_are_checked_before_any_system_call() {
        assert!(valid_name("gatelet0"));
        assert!(!valid_name(""));
        assert!(!valid_name("a-name-that-is-too-long"));
        assert!(!valid_name("bad/name"));
        assert!(matches!(
            TunDevice::open("bad name"),
            Err(NetifError::BadName(_))
        ));
    }
}
