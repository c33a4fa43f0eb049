//! Cryptokey routing: which addresses may talk through the tunnel.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use gatelet_agent_api::env::Cidr;

/// The networks of `WG_ALLOWED_IPS`: the only sources accepted from the hub and the only
/// destinations sent to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedIps {
    nets: Vec<Cidr>,
}

impl AllowedIps {
    /// The allowed networks.
    pub fn new(nets: Vec<Cidr>) -> Self {
        AllowedIps { nets }
    }

    /// Whether `ip` lies in one of the networks.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.nets.iter().any(|n| n.contains(ip))
    }

    /// The networks, as configured.
    pub fn nets(&self) -> &[Cidr] {
        &self.nets
    }
}

/// The source address of an IPv4 or IPv6 packet, None when it is neither or too short.
pub fn source_ip(packet: &[u8]) -> Option<IpAddr> {
    address_at(packet, 12, 8)
}

/// The destination address of an IPv4 or IPv6 packet, None when it is neither or too short.
pub fn destination_ip(packet: &[u8]) -> Option<IpAddr> {
    address_at(packet, 16, 24)
}

fn address_at(packet: &[u8], v4_offset: usize, v6_offset: usize) -> Option<IpAddr> {
    match packet.first()? >> 4 {
        4 if packet.len() >= 20 => {
            let b: [u8; 4] = packet.get(v4_offset..v4_offset + 4)?.try_into().ok()?;
            Some(IpAddr::V4(Ipv4Addr::from(b)))
        }
        6 if packet.len() >= 40 => {
            let b: [u8; 16] = packet.get(v6_offset..v6_offset + 16)?.try_into().ok()?;
            Some(IpAddr::V6(Ipv6Addr::from(b)))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4_packet(src: [u8; 4], dst: [u8; 4]) -> [u8; 20] {
        let mut p = [0u8; 20];
        p[0] = 0x45;
        p[12..16].copy_from_slice(&src);
        p[16..20].copy_from_slice(&dst);
        p
    }

    #[test]
    fn addresses_are_read_from_ipv4_and_ipv6_headers() {
        let p = v4_packet([10, 8, 0, 1], [10, 8, 0, 2]);
        assert_eq!(source_ip(&p), Some("10.8.0.1".parse().unwrap()));
        assert_eq!(destination_ip(&p), Some("10.8.0.2".parse().unwrap()));
        let mut p6 = [0u8; 40];
        p6[0] = 0x60;
        p6[23] = 1;
        p6[39] = 2;
        assert_eq!(source_ip(&p6), Some("::1".parse().unwrap()));
        assert_eq!(destination_ip(&p6), Some("::2".parse().unwrap()));
        assert_eq!(source_ip(&p[..19]), None);
        assert_eq!(source_ip(&[]), None);
    }

    #[test]
    fn only_listed_networks_are_allowed() {
        let a = AllowedIps::new(vec![
            "10.8.0.1/32".parse().unwrap(),
            "192.168.5.0/24".parse().unwrap(),
        ]);
        assert!(a.contains("10.8.0.1".parse().unwrap()));
        assert!(a.contains("192.168.5.77".parse().unwrap()));
        assert!(!a.contains("10.8.0.3".parse().unwrap()));
        assert!(!a.contains("::1".parse().unwrap()));
    }
}
