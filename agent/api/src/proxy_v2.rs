//! PROXY protocol version 2 (haproxy.org/download/2.9/doc/proxy-protocol.txt), the part
//! gatelet uses: the agent's management API relay prefixes each connection to the companion
//! with the caller's real address, so the companion's failed-auth limiter counts per caller
//! instead of per relay.
//!
//! Only TCP over IPv4/IPv6 and the LOCAL command are produced or understood.
//!
//! Any local user can connect to the companion on loopback, so a header is believed only when
//! it proves it comes from the agent: a TLV of type [`TLV_TAG`] carrying an HMAC-SHA256 over
//! the command, family and addresses, keyed by a [`HeaderKey`] both daemons derive from
//! `WG_PRIVATE_KEY` (gateway.env, readable only by root and the gatelet group). Without the
//! tag a local user could claim a new source address on every try and never meet the
//! companion's failed-auth limit. The companion still takes headers only from loopback peers.

use std::net::{IpAddr, SocketAddr};

use ring::hmac;

/// The 12 bytes every v2 header starts with.
pub const SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// Longest address block (with TLVs) accepted; longer headers are refused as malformed.
pub const MAX_ADDRESS_BLOCK: usize = 512;
/// The TLV type of the agent's tag (the first of the range the spec leaves to applications).
pub const TLV_TAG: u8 = 0xE0;
/// Bytes of the tag (HMAC-SHA256).
pub const TAG_LEN: usize = 32;
/// What the tag's HMAC covers first, so the key signs nothing else by accident.
const TAG_CONTEXT: &[u8] = b"gatelet PROXY v2 header from the agent\0";

/// The key that signs and checks the agent's headers.
#[derive(Clone)]
pub struct HeaderKey(hmac::Key);

impl HeaderKey {
    /// The key both daemons derive from the WireGuard private key of gateway.env:
    /// HMAC-SHA256(private key, context), so the private key itself is never used twice.
    pub fn derive(wg_private_key: &[u8; 32]) -> HeaderKey {
        let outer = hmac::Key::new(hmac::HMAC_SHA256, wg_private_key);
        let derived = hmac::sign(&outer, b"gatelet PROXY v2 header key");
        HeaderKey(hmac::Key::new(hmac::HMAC_SHA256, derived.as_ref()))
    }

    /// The tag of a header's command/family byte pair and address block (without TLVs).
    fn tag(&self, cmd_fam: &[u8], addresses: &[u8]) -> hmac::Tag {
        let mut ctx = hmac::Context::with_key(&self.0);
        ctx.update(TAG_CONTEXT);
        ctx.update(cmd_fam);
        ctx.update(addresses);
        ctx.sign()
    }

    /// Whether `tag` is this key's tag of the header (constant time).
    fn verify(&self, cmd_fam: &[u8], addresses: &[u8], tag: &[u8]) -> bool {
        let mut msg = Vec::with_capacity(TAG_CONTEXT.len() + 2 + addresses.len());
        msg.extend_from_slice(TAG_CONTEXT);
        msg.extend_from_slice(cmd_fam);
        msg.extend_from_slice(addresses);
        hmac::verify(&self.0, &msg, tag).is_ok()
    }
}

impl std::fmt::Debug for HeaderKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HeaderKey(..)")
    }
}

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
        /// It carries the tag of the key [`decode`] was given (false without a key).
        authentic: bool,
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

/// The header announcing a TCP connection from `source` to `destination`, with `key`'s tag.
/// Both must be of the same family (an IPv4 source with an IPv6 destination is sent as IPv6,
/// mapped).
pub fn encode(source: SocketAddr, destination: SocketAddr, key: &HeaderKey) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + 36 + 3 + TAG_LEN);
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
    let tag = key.tag(&out[12..14], &out[16..]);
    out.push(TLV_TAG);
    out.extend_from_slice(&(TAG_LEN as u16).to_be_bytes());
    out.extend_from_slice(tag.as_ref());
    let block = (out.len() - 16) as u16;
    out[14..16].copy_from_slice(&block.to_be_bytes());
    out
}

/// The value of the first TLV of type `kind` in `tlvs`, if the list is well formed up to it.
fn find_tlv(mut tlvs: &[u8], kind: u8) -> Option<&[u8]> {
    while tlvs.len() >= 3 {
        let len = usize::from(u16::from_be_bytes([tlvs[1], tlvs[2]]));
        let value = tlvs.get(3..3 + len)?;
        if tlvs[0] == kind {
            return Some(value);
        }
        tlvs = &tlvs[3 + len..];
    }
    None
}

/// Reads a PROXY v2 header at the start of `buf`, if there is one, and checks its tag with
/// `key`. Never reads past the header's announced length; a header announcing more than
/// [`MAX_ADDRESS_BLOCK`] is an error.
pub fn decode(buf: &[u8], key: Option<&HeaderKey>) -> Result<Decoded, ProxyError> {
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
    let addresses = match (ver_cmd & 0x0f, fam) {
        (0, _) => 0,
        (_, 0x11) => 12,
        (_, 0x21) => 36,
        _ => 0,
    };
    let authentic = match (key, a.get(..addresses), a.get(addresses..)) {
        (Some(key), Some(addr), Some(tlvs)) => {
            find_tlv(tlvs, TLV_TAG).is_some_and(|tag| key.verify(&buf[12..14], addr, tag))
        }
        _ => false,
    };
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
    Ok(Decoded::Header {
        source,
        len,
        authentic,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> HeaderKey {
        HeaderKey::derive(&[b; 32])
    }

    #[test]
    fn ipv4_and_ipv6_round_trip_and_leave_what_follows() {
        for (s, d) in [
            ("10.8.0.1:40000", "10.8.0.2:9876"),
            ("[fd00::1]:40000", "[fd00::2]:9876"),
            ("10.8.0.1:5", "[fd00::2]:9876"),
        ] {
            let (s, d): (SocketAddr, SocketAddr) = (s.parse().unwrap(), d.parse().unwrap());
            let mut buf = encode(s, d, &key(1));
            let len = buf.len();
            buf.extend_from_slice(b"GET / HTTP/1.1\r\n");
            assert_eq!(
                decode(&buf, Some(&key(1))),
                Ok(Decoded::Header {
                    source: Some(s),
                    len,
                    authentic: true,
                })
            );
            for cut in 0..len {
                assert_eq!(
                    decode(&buf[..cut], Some(&key(1))),
                    Ok(Decoded::Incomplete),
                    "cut {cut}"
                );
            }
        }
    }

    /// A header is authentic only with the tag of the same key over the same addresses: not
    /// with another key, without a key, without the TLV, or with any address byte changed.
    #[test]
    fn only_the_keys_own_tag_over_the_same_addresses_is_authentic() {
        let h = encode(
            "10.9.9.9:40000".parse().unwrap(),
            "10.8.0.2:9876".parse().unwrap(),
            &key(1),
        );
        let authentic = |buf: &[u8], k: Option<&HeaderKey>| match decode(buf, k) {
            Ok(Decoded::Header { authentic, .. }) => authentic,
            other => panic!("{other:?}"),
        };
        assert!(authentic(&h, Some(&key(1))));
        assert!(!authentic(&h, Some(&key(2))));
        assert!(!authentic(&h, None));
        // Each address or port byte (16..28) changed: a claimed other source.
        for i in 16..28 {
            let mut forged = h.clone();
            forged[i] ^= 1;
            assert!(!authentic(&forged, Some(&key(1))), "byte {i}");
        }
        // Each tag byte changed.
        for i in h.len() - TAG_LEN..h.len() {
            let mut forged = h.clone();
            forged[i] ^= 0x80;
            assert!(!authentic(&forged, Some(&key(1))), "tag byte {i}");
        }
        // No TLV at all (the header of a plain PROXY v2 sender): a header, not authentic.
        let mut plain = h[..28].to_vec();
        plain[14..16].copy_from_slice(&12u16.to_be_bytes());
        assert!(!authentic(&plain, Some(&key(1))));
        // A TLV that claims more than the block holds: not authentic, no read past it.
        let mut cut = h.clone();
        let n = cut.len();
        cut[29..31].copy_from_slice(&500u16.to_be_bytes());
        assert!(!authentic(&cut[..n], Some(&key(1))));
        // The key is never printed.
        assert_eq!(format!("{:?}", key(1)), "HeaderKey(..)");
    }

    #[test]
    fn plain_http_is_no_header_and_bad_headers_are_errors() {
        let k = Some(key(1));
        let k = k.as_ref();
        assert_eq!(decode(b"GET / HTTP/1.1\r\n", k), Ok(Decoded::Absent));
        assert_eq!(decode(b"\r\n\r\nGET", k), Ok(Decoded::Absent));
        let mut h = encode(
            "1.2.3.4:5".parse().unwrap(),
            "5.6.7.8:9".parse().unwrap(),
            &key(1),
        );
        h[12] = 0x31;
        assert_eq!(decode(&h, k), Err(ProxyError::Unsupported));
        h[12] = 0x21;
        h[14..16].copy_from_slice(&4u16.to_be_bytes());
        assert_eq!(decode(&h, k), Err(ProxyError::BadLength));
        h[14..16].copy_from_slice(&u16::MAX.to_be_bytes());
        assert_eq!(decode(&h, k), Err(ProxyError::BadLength));
        // LOCAL: a header, no address.
        let mut local = SIGNATURE.to_vec();
        local.extend_from_slice(&[0x20, 0x00, 0, 0]);
        assert_eq!(
            decode(&local, k),
            Ok(Decoded::Header {
                source: None,
                len: 16,
                authentic: false,
            })
        );
    }
}
