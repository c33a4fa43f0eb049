//! The Wake-on-LAN magic packet: 6 × `0xFF`, the MAC 16 times, then an optional SecureOn
//! password of 4 or 6 bytes. Pure functions, no I/O.

/// Length of a magic packet without a SecureOn password.
pub const MAGIC_LEN: usize = 6 + 16 * 6;
/// How many times the MAC is repeated.
pub const MAC_REPEATS: usize = 16;

/// Why a MAC or a SecureOn password was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    /// The MAC is not 6 hex bytes in any usual notation.
    #[error("{0:?} is not a MAC address (6 hex bytes like aa:bb:cc:dd:ee:ff)")]
    BadMac(String),
    /// The SecureOn password is not 4 or 6 bytes of hex.
    #[error(
        "SecureOn password must be 4 or 6 bytes as hex (8 or 12 hex digits), got {0} characters"
    )]
    BadSecureOn(usize),
}

/// Parses a MAC in any notation [`gatelet_agent_api::mac::normalize`] accepts.
pub fn parse_mac(s: &str) -> Result<[u8; 6], PacketError> {
    let norm = gatelet_agent_api::mac::normalize(s).ok_or_else(|| PacketError::BadMac(s.into()))?;
    let mut out = [0u8; 6];
    let mut parts = norm.split(':');
    for b in &mut out {
        let part = parts.next().ok_or_else(|| PacketError::BadMac(s.into()))?;
        *b = u8::from_str_radix(part, 16).map_err(|_| PacketError::BadMac(s.into()))?;
    }
    Ok(out)
}

/// Parses a SecureOn password: 4 or 6 bytes as hex, separators `:`/`-` allowed.
pub fn parse_secureon(s: &str) -> Result<Vec<u8>, PacketError> {
    let hex: String = s.chars().filter(|c| !matches!(c, ':' | '-')).collect();
    if !(hex.len() == 8 || hex.len() == 12) || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(PacketError::BadSecureOn(s.len()));
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| {
            u8::from_str_radix(&hex[i..i + 2], 16).map_err(|_| PacketError::BadSecureOn(s.len()))
        })
        .collect()
}

/// The magic packet for `mac`, with `secureon` appended when given (4 or 6 bytes).
pub fn magic_packet(mac: [u8; 6], secureon: Option<&[u8]>) -> Result<Vec<u8>, PacketError> {
    let extra = match secureon {
        None => &[][..],
        Some(p) if p.len() == 4 || p.len() == 6 => p,
        Some(p) => return Err(PacketError::BadSecureOn(p.len() * 2)),
    };
    let mut out = Vec::with_capacity(MAGIC_LEN + extra.len());
    out.extend_from_slice(&[0xFF; 6]);
    for _ in 0..MAC_REPEATS {
        out.extend_from_slice(&mac);
    }
    out.extend_from_slice(extra);
    Ok(out)
}

/// True when `buf` is a magic packet for `mac` (with or without a SecureOn password).
pub fn is_magic_for(buf: &[u8], mac: [u8; 6]) -> bool {
    matches!(buf.len(), MAGIC_LEN | 106 | 108)
        && buf[..6] == [0xFF; 6]
        && buf[6..MAGIC_LEN].chunks(6).all(|c| c == mac)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [0x00, 0x11, 0x22, 0xaa, 0xbb, 0xcc];

    #[test]
    fn packet_is_sync_stream_then_mac_sixteen_times() {
        let p = magic_packet(MAC, None).unwrap();
        assert_eq!(p.len(), 102);
        assert_eq!(&p[..6], &[0xFF; 6]);
        for i in 0..16 {
            assert_eq!(&p[6 + i * 6..12 + i * 6], &MAC, "repeat {i}");
        }
        let mut expected = vec![0xFFu8; 6];
        for _ in 0..16 {
            expected.extend_from_slice(&[0x00, 0x11, 0x22, 0xaa, 0xbb, 0xcc]);
        }
        assert_eq!(p, expected);
        assert!(is_magic_for(&p, MAC));
        assert!(!is_magic_for(&p, [0; 6]));
    }

    #[test]
    fn secureon_password_is_appended_after_the_macs() {
        let p4 = magic_packet(MAC, Some(&[1, 2, 3, 4])).unwrap();
        assert_eq!(p4.len(), 106);
        assert_eq!(&p4[102..], &[1, 2, 3, 4]);
        let p6 = magic_packet(MAC, Some(&[1, 2, 3, 4, 5, 6])).unwrap();
        assert_eq!(&p6[102..], &[1, 2, 3, 4, 5, 6]);
        assert!(is_magic_for(&p6, MAC));
        assert!(magic_packet(MAC, Some(&[1, 2, 3])).is_err());
    }

    #[test]
    fn mac_and_password_notations_parse() {
        for s in [
            "00:11:22:AA:BB:CC",
            "00-11-22-aa-bb-cc",
            "0011.22aa.bbcc",
            "001122aabbcc",
        ] {
            assert_eq!(parse_mac(s), Ok(MAC), "{s}");
        }
        assert!(parse_mac("00:11:22:aa:bb").is_err());
        assert!(parse_mac("zz:11:22:aa:bb:cc").is_err());
        assert_eq!(
            parse_secureon("01:02:03:04:05:06"),
            Ok(vec![1, 2, 3, 4, 5, 6])
        );
        assert_eq!(parse_secureon("0a0b0c0d"), Ok(vec![10, 11, 12, 13]));
        assert!(parse_secureon("0102030").is_err());
        assert!(parse_secureon("01020304050").is_err());
        assert!(parse_secureon("gg020304").is_err());
    }
}
