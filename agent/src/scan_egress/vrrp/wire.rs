//! The VRRP version 2 advertisement (RFC 3768 §5) as keepalived sends it: IP protocol 112,
//! TTL 255, no authentication (type 0, the 8 authentication bytes zero), the checksum over the
//! VRRP message alone (no pseudo-header in version 2).
//!
//! ```text
//!  0: version 2 | type 1   1: VRID   2: priority   3: count of addresses
//!  4: auth type            5: advertisement interval (s)   6-7: checksum
//!  8: addresses (4 each)   then 8 bytes of authentication data
//! ```
//!
//! Decoding never panics and allocates at most 255 addresses (the count is one byte); anything
//! malformed is an error saying what.

use std::net::Ipv4Addr;

/// IP protocol number of VRRP.
pub const IPPROTO_VRRP: u8 = 112;
/// The TTL every advertisement is sent with and must arrive with (RFC 3768 §7.1).
pub const VRRP_TTL: u8 = 255;
/// VRRP version spoken.
pub const VERSION: u8 = 2;
/// The only packet type: an advertisement.
pub const TYPE_ADVERTISEMENT: u8 = 1;
/// Authentication type "none" (keepalived's default without an `authentication` block).
pub const AUTH_NONE: u8 = 0;
/// Bytes of the fixed header.
pub const HEADER_LEN: usize = 8;
/// Bytes of authentication data after the addresses (version 2).
pub const AUTH_LEN: usize = 8;
/// Priority of a master that stops (the backups take over after the skew time).
pub const PRIORITY_STOP: u8 = 0;
/// Priority of the address owner.
pub const PRIORITY_OWNER: u8 = 255;

/// One advertisement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Advert {
    /// Virtual router id.
    pub vrid: u8,
    /// Sender's priority (0: it stops being master).
    pub priority: u8,
    /// Advertisement interval in seconds.
    pub advert_int_s: u8,
    /// Authentication type (0 here).
    pub auth_type: u8,
    /// The virtual addresses.
    pub addrs: Vec<Ipv4Addr>,
}

/// Why a packet is not a valid advertisement.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// Shorter than its headers and addresses say.
    #[error("truncated: {got} bytes, need {need}")]
    Truncated {
        /// Bytes there.
        got: usize,
        /// Bytes needed.
        need: usize,
    },
    /// Not IPv4, or a bad IP header.
    #[error("bad IP header: {0}")]
    Ip(&'static str),
    /// Not protocol 112.
    #[error("IP protocol {0} is not VRRP")]
    Protocol(u8),
    /// TTL other than 255: it crossed a router.
    #[error("TTL {0} is not 255")]
    Ttl(u8),
    /// Another VRRP version or packet type.
    #[error("version {version} type {kind} is not a VRRPv2 advertisement")]
    Version {
        /// The version nibble.
        version: u8,
        /// The type nibble.
        kind: u8,
    },
    /// The checksum does not add up.
    #[error("bad checksum")]
    Checksum,
}

/// The Internet checksum (RFC 1071) of `data`.
pub fn checksum(data: &[u8]) -> u16 {
    crate::checksum::internet(data)
}

impl Advert {
    /// The VRRP message (the IP payload), checksum filled in. At most 255 addresses are
    /// written (the count is one byte).
    pub fn encode(&self) -> Vec<u8> {
        let addrs = &self.addrs[..self.addrs.len().min(255)];
        let mut b = Vec::with_capacity(HEADER_LEN + 4 * addrs.len() + AUTH_LEN);
        b.push((VERSION << 4) | TYPE_ADVERTISEMENT);
        b.push(self.vrid);
        b.push(self.priority);
        b.push(addrs.len() as u8);
        b.push(self.auth_type);
        b.push(self.advert_int_s);
        b.extend_from_slice(&[0, 0]);
        for a in addrs {
            b.extend_from_slice(&a.octets());
        }
        b.extend_from_slice(&[0; AUTH_LEN]);
        let c = checksum(&b);
        b[6..8].copy_from_slice(&c.to_be_bytes());
        b
    }

    /// Decodes a VRRP message (the IP payload, as long as the IP header says).
    pub fn decode(b: &[u8]) -> Result<Advert, WireError> {
        if b.len() < HEADER_LEN {
            return Err(WireError::Truncated {
                got: b.len(),
                need: HEADER_LEN,
            });
        }
        let (version, kind) = (b[0] >> 4, b[0] & 0x0f);
        if version != VERSION || kind != TYPE_ADVERTISEMENT {
            return Err(WireError::Version { version, kind });
        }
        let count = usize::from(b[3]);
        // keepalived always sends the 8 authentication bytes in version 2; RFC 3768 has them
        // too. Require them, as keepalived does.
        let need = HEADER_LEN + 4 * count + AUTH_LEN;
        if b.len() < need {
            return Err(WireError::Truncated { got: b.len(), need });
        }
        if checksum(b) != 0 {
            return Err(WireError::Checksum);
        }
        let addrs = b[HEADER_LEN..HEADER_LEN + 4 * count]
            .chunks_exact(4)
            .map(|c| Ipv4Addr::new(c[0], c[1], c[2], c[3]))
            .collect();
        Ok(Advert {
            vrid: b[1],
            priority: b[2],
            advert_int_s: b[5],
            auth_type: b[4],
            addrs,
        })
    }
}

/// An advertisement as received on a raw IPv4 socket (the IP header included): the sender,
/// and the advertisement. The TTL must be 255 and the protocol 112.
pub fn decode_ipv4(p: &[u8]) -> Result<(Ipv4Addr, Advert), WireError> {
    if p.len() < 20 {
        return Err(WireError::Truncated {
            got: p.len(),
            need: 20,
        });
    }
    if p[0] >> 4 != 4 {
        return Err(WireError::Ip("not IPv4"));
    }
    let ihl = usize::from(p[0] & 0x0f) * 4;
    if ihl < 20 {
        return Err(WireError::Ip("header length under 20"));
    }
    let total = usize::from(u16::from_be_bytes([p[2], p[3]]));
    if total < ihl {
        return Err(WireError::Ip("total length under the header length"));
    }
    if p.len() < total {
        return Err(WireError::Truncated {
            got: p.len(),
            need: total,
        });
    }
    if p[9] != IPPROTO_VRRP {
        return Err(WireError::Protocol(p[9]));
    }
    if p[8] != VRRP_TTL {
        return Err(WireError::Ttl(p[8]));
    }
    let src = Ipv4Addr::new(p[12], p[13], p[14], p[15]);
    Ok((src, Advert::decode(&p[ihl..total])?))
}

/// A gratuitous ARP request for `ip` from `mac` (sender and target address both `ip`, target
/// hardware address zero), the 28-byte ARP message for Ethernet and IPv4.
pub fn gratuitous_arp(mac: [u8; 6], ip: Ipv4Addr) -> [u8; 28] {
    let mut a = [0u8; 28];
    a[0..2].copy_from_slice(&1u16.to_be_bytes()); // Ethernet
    a[2..4].copy_from_slice(&0x0800u16.to_be_bytes()); // IPv4
    a[4] = 6;
    a[5] = 4;
    a[6..8].copy_from_slice(&1u16.to_be_bytes()); // request
    a[8..14].copy_from_slice(&mac);
    a[14..18].copy_from_slice(&ip.octets());
    a[24..28].copy_from_slice(&ip.octets());
    a
}
