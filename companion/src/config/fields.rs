//! The syntax of single fields: host names, targets, MAC addresses, egress source ranges.

use std::net::Ipv4Addr;

use gatelet_agent_api::env::Cidr;

/// One `allowed_source_ips` entry: `a.b.c.d/n`, or a bare IPv4 address meaning `/32`; the
/// network address is normalised (host bits cleared).
pub fn egress_source(entry: &str) -> Result<Cidr, String> {
    let e = entry.trim();
    let cidr = if e.contains('/') {
        e.parse::<Cidr>()
            .map_err(|why| format!("{entry:?} {why}"))?
    } else {
        let addr = e
            .parse::<std::net::IpAddr>()
            .map_err(|_| format!("{entry:?} is not an IP address or CIDR"))?;
        Cidr { addr, prefix: 32 }
    };
    match cidr.addr {
        std::net::IpAddr::V4(a) => {
            let mask = u32::MAX
                .checked_shl(32 - u32::from(cidr.prefix))
                .unwrap_or(0);
            Ok(Cidr {
                addr: std::net::Ipv4Addr::from(u32::from(a) & mask).into(),
                prefix: cidr.prefix,
            })
        }
        std::net::IpAddr::V6(_) => Err(format!("{entry:?} is not IPv4 (the LAN side is IPv4)")),
    }
}

/// Whether `s` is a DNS host name: dot-separated labels of 1 to 63 letters, digits and hyphens,
/// no label starting or ending with a hyphen, 253 characters at most, and a last label that is
/// not all digits (so `192.168.1.300` is not taken for a name). With `lowercase_only`,
/// uppercase letters are refused.
pub fn is_valid_hostname(s: &str, lowercase_only: bool) -> bool {
    if s.is_empty() || s.len() > 253 {
        return false;
    }
    let labels_ok = s.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label.bytes().all(|b| {
                b.is_ascii_digit()
                    || b == b'-'
                    || b.is_ascii_lowercase()
                    || (!lowercase_only && b.is_ascii_uppercase())
            })
    });
    let last_numeric = s
        .rsplit('.')
        .next()
        .is_some_and(|l| l.bytes().all(|b| b.is_ascii_digit()));
    labels_ok && !last_numeric
}

/// Whether `s` is a usable LAN target: a dotted IPv4 address (not `0.0.0.0`, broadcast or
/// multicast) or a host name (any case).
pub fn is_valid_target_host(s: &str) -> bool {
    if let Ok(ip) = s.parse::<Ipv4Addr>() {
        return !ip.is_unspecified() && !ip.is_broadcast() && !ip.is_multicast();
    }
    is_valid_hostname(s, false)
}

pub use gatelet_agent_api::mac::normalize as normalize_mac;

/// Whether a normalised MAC names one device: not all zero, not broadcast, group bit clear.
pub(super) fn is_unicast_mac(mac: &str) -> bool {
    let first = u8::from_str_radix(&mac[..2], 16).unwrap_or(1);
    mac != "00:00:00:00:00:00" && first & 1 == 0
}
