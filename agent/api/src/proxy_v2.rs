//! PROXY protocol version 2 (haproxy.org/download/2.9/doc/proxy-protocol.txt), the part
//! gatelet uses: the agent's management API relay prefixes each connection to the companion
//! with the caller's real address, so the companion's failed-auth limiter counts per caller
//! instead of per relay.
//!
//! Only TCP over IPv4/IPv6 and the LOCAL command are produced or understood; TLVs are skipped.
//! The companion trusts the header only on connections from loopback (the agent's hop).

use std::net::{IpAddr, SocketAddr};

/// The 12 bytes every v2 header starts with.
pub const SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// Longest address block (with TLVs) accepted; longer headers are refused as malformed.
pub const MAX_ADDRESS_BLOCK: usize = 512;

/// What a buffer starts with, as far as PROXY v2 goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decoded {
    /// Too few bytes yet to tell (a prefix of the signature or of a header).
    Incomplete,
    /// The buffer does not start with the signature: no header.
    Absent,
    /// A header of `len` bytes naming the original `source` (None: LOCAL, or a family
    /// other than TCP over IP).
    Header {
        /// The original caller's address.
        source: Option<SocketAddr>,
        /// Bytes the header takes at the start of the buffer.
        len: usize,
    },
}

/// Why a header that starts with the signature cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    /// Version other than 2, or a command other than LOCAL or PROXY.
    #[error("PROXY header: unsupported version or command")]
    Unsupported,
    /// The address block is shorter than its family needs, or over [`MAX_ADDRESS_BLOCK`].
    #[error("PROXY header: bad address block length")]
    BadLength,
}

/// The header announcing a TCP connection from `source` to `destination`. Both must be of
/// the same family (an IPv4 source with an IPv6 destination is sent as IPv6, mapped).
pub fn encode(source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + 36);
    out.extend_from_slice(&SIGNATURE);
    out.push(0x21); // version 2, PROXY
    match (source.ip(), destination.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            out.push(0x11);
            out.extend_from_slice(&12u16.to_be_bytes());
            out.extend_from_slice(&s.octets());
            out.extend_from_slice(&d.octets());
        }
        (s, d) => {
            let v6 = |ip: IpAddr| match ip {
                IpAddr::V4(v4) => v4.to_ipv6_mapped(),
                IpAddr::V6(v6) => v6,
            };
            out.push(0x21);
            out.extend_from_slice(&36u16.to_be_bytes());
            out.extend_from_slice(&v6(s).octets());
            out.extend_from_slice(&v6(d).octets());
        }
    }
    out.extend_from_slice(&source.port().to_be_bytes());
    out.extend_from_slice(&destination.port().to_be_bytes());
    out
}

/// Reads a PROXY v2 header at the start of `buf`, if there is one. Never reads past the
/// header's announced length; a header announcing more than [`MAX_ADDRESS_BLOCK`] is an error.
pub fn decode(buf: &[u8]) -> Result<Decoded, ProxyError> {
    let n = buf.len().min(SIGNATURE.len());
    if buf[..n] != SIGNATURE[..n] {
        return Ok(Decoded::Absent);
    }
    if buf.len() < 16 {
        return Ok(Decoded::Incomplete);
    }
    let (ver_cmd, fam) = (buf[12], buf[13]);
    let block = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    if ver_cmd >> 4 != 2 || ver_cmd & 0x0f > 1 {
        return Err(ProxyError::Unsupported);
    }
    if block > MAX_ADDRESS_BLOCK {
        return Err(ProxyError::BadLength);
    }
    let len = 16 + block;
    if buf.len() < len {
        return Ok(Decoded::Incomplete);
    }
    let a = &buf[16..len];
    let source = match (ver_cmd & 0x0f, fam) {
        (0, _) => None,
        (_, 0x11) => {
            if a.len() < 12 {
                return Err(ProxyError::BadLength);
            }
            let ip: [u8; 4] = [a[0], a[1], a[2], a[3]];
            let port = u16::from_be_bytes([a[8], a[9]]);
            Some(SocketAddr::from((ip, port)))
        }
        (_, 0x21) => {
            if a.len() < 36 {
                return Err(ProxyError::BadLength);
            }
            let mut ip = [0u8; 16];
            ip.copy_from_slice(&a[..16]);
            let port = u16::from_be_bytes([a[32], a[33]]);
            let ip = std::net::Ipv6Addr::from(ip);
            let ip = ip.to_ipv4_mapped().map_or(IpAddr::V6(ip), IpAddr::V4);
            Some(SocketAddr::new(ip, port))
        }
        _ => None,
    };
    Ok(Decoded::Header { source, len })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_and_ipv6_round_trip_and_leave_what_follows() {
        for (s, d) in [
            ("10.8.0.1:40000", "10.8.0.2:9876"),
            ("[fd00::1]:40000", "[fd00::2]:9876"),
            ("10.8.0.1:5", "[fd00::2]:9876"),
        ] {
            let (s, d): (SocketAddr, SocketAddr) = (s.parse().unwrap(), d.parse().unwrap());
            let mut buf = encode(s, d);
            let len = buf.len();
            buf.extend_from_slice(b"GET / HTTP/1.1\r\n");
            assert_eq!(
                decode(&buf),
                Ok(Decoded::Header {
                    source: Some(s),
                    len
                })
            );
            for cut in 0..len {
                assert_eq!(decode(&buf[..cut]), Ok(Decoded::Incomplete), "cut {cut}");
            }
        }
    }

    #[test]
    fn plain_http_is_no_header_and_bad_headers_are_errors() {
        assert_eq!(decode(b"GET / HTTP/1.1\r\n"), Ok(Decoded::Absent));
        assert_eq!(decode(b"\r\n\r\nGET"), Ok(Decoded::Absent));
        let mut h = encode("1.2.3.4:5".parse().unwrap(), "5.6.7.8:9".parse().unwrap());
        h[12] = 0x31;
        assert_eq!(decode(&h), Err(ProxyError::Unsupported));
        h[12] = 0x21;
        h[14..16].copy_from_slice(&4u16.to_be_bytes());
        assert_eq!(decode(&h), Err(ProxyError::BadLength));
        h[14..16].copy_from_slice(&u16::MAX.to_be_bytes());
        assert_eq!(decode(&h), Err(ProxyError::BadLength));
        // LOCAL: a header, no address.
        let mut local = SIGNATURE.to_vec();
        local.extend_from_slice(&[0x20, 0x00, 0, 0]);
        assert_eq!(
            decode(&local),
            Ok(Decoded::Header {
                source: None,
                len: 16
            })
        );
    }
}
