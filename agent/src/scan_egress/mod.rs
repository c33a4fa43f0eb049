//! Egress routes ("scan to NAS"): LAN-side TCP listeners whose connections are relayed INTO
//! the tunnel, to an internal L4 route on the hub that leads to a NAS on another site.
//!
//! A printer on this site scans to SMB on a LAN "NAS" address, which is really a virtual IP
//! (VIP) of the gateway pool; the gateway accepts on `lan_listen_port`, checks the peer against
//! the route's source allowlist ([`Allowlist`]), connects through the tunnel to
//! `target_host:target_port` and relays both ways. The relay is the L4 relay's
//! (`crate::forward::tcp`, with `Via::Tunnel` and a source allowlist): connect timeout, idle
//! timeout, half-close, per-route and global caps, counters. The route manager
//! (`crate::routes`) owns the listeners and changes them live through its plan.
//!
//! # Where the listener binds
//!
//! On every address (`0.0.0.0:lan_listen_port`), like the reference gateway, never on the VIP
//! alone: the VIP moves between the gateways of a pool, and the port-445 redirect
//! (`REDIRECT` in nat prerouting) rewrites the destination to the primary address of the
//! incoming interface, not to the VIP. The allowlist, checked on every accept, is what limits
//! who may use the listener; an empty allowlist refuses everyone. Listening on every address
//! also exposes the port on the tunnel side in TUN mode; a tunnel peer is refused by the
//! allowlist like any other source outside it.
//!
//! The allowlist is a defence in depth, not the trust boundary (a LAN source address can be
//! spoofed): the NAS's own SMB authentication is.
//!
//! # Failover and the port-445 redirect
//!
//! For routes with `near_peers`, [`near`] runs VRRP ([`vrrp`]: wire format, state machine,
//! rise/fall health) against the other gateways of the pool, keepalived or gatelet, holding
//! the VIP on the master; [`ping`] is its tunnel check and [`redirect`] its nf_tables rule
//! sending VIP:445 to the listener. A route without peers runs none of them (nothing adds its
//! VIP).

#![deny(unsafe_code)]

pub mod near;
pub mod ping;
pub mod redirect;
pub mod vrrp;

use std::net::IpAddr;
use std::sync::{Arc, RwLock};

use gatelet_agent_api::env::Cidr;

/// The sources allowed to use an egress listener.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Allowlist {
    nets: Vec<Cidr>,
}

impl Allowlist {
    /// The allowlist of `entries` (`a.b.c.d/n`, or a bare address meaning `/32`); entries
    /// that do not parse are skipped (the companion already left them out with a reason).
    pub fn parse(entries: &[String]) -> Self {
        let nets = entries
            .iter()
            .filter_map(|e| parse_source(e).ok())
            .collect();
        Allowlist { nets }
    }

    /// Whether `ip` may connect (never, with an empty list). An IPv4-mapped IPv6 peer is
    /// checked as its IPv4 address.
    pub fn admits(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        self.nets.iter().any(|n| n.contains(ip))
    }

    /// Number of networks in the list.
    pub fn len(&self) -> usize {
        self.nets.len()
    }

    /// True when nobody is admitted.
    pub fn is_empty(&self) -> bool {
        self.nets.is_empty()
    }
}

/// One allowlist entry: `a.b.c.d/n`, or a bare IPv4 address (`/32`). IPv4 only: the egress
/// routes serve an IPv4 LAN.
pub fn parse_source(entry: &str) -> Result<Cidr, String> {
    let entry = entry.trim();
    let cidr = if entry.contains('/') {
        entry
            .parse::<Cidr>()
            .map_err(|e| format!("{entry:?} {e}"))?
    } else {
        let addr: IpAddr = entry
            .parse()
            .map_err(|_| format!("{entry:?} is not an IP address or CIDR"))?;
        Cidr { addr, prefix: 32 }
    };
    if !cidr.addr.is_ipv4() {
        return Err(format!("{entry:?} is not IPv4"));
    }
    Ok(cidr)
}

/// A route's current allowlist, shared between the manager (writer, on a config change) and
/// its accept loop (reader, once per connection).
#[derive(Debug, Clone, Default)]
pub struct SourceCell(Arc<RwLock<Arc<Allowlist>>>);

impl SourceCell {
    /// A cell holding `list`.
    pub fn new(list: Allowlist) -> Self {
        SourceCell(Arc::new(RwLock::new(Arc::new(list))))
    }

    /// The allowlist as of now.
    pub fn get(&self) -> Arc<Allowlist> {
        match self.0.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Applies `list` to new connections.
    pub fn set(&self, list: Allowlist) {
        let l = Arc::new(list);
        match self.0.write() {
            Ok(mut g) => *g = l,
            Err(p) => *p.into_inner() = l,
        }
    }
}

#[cfg(test)]
mod tests;
