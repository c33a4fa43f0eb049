//! MAC addresses: one normal form, so that every comparison (the `/api/wol` whitelist, a
//! route's `wol_mac`, a magic packet) sees the same text.

/// Normalises a MAC address to lowercase `aa:bb:cc:dd:ee:ff`. Accepts any case, and six
/// groups of two hex digits separated by `:` or `-`, three groups of four separated by `.`, or
/// twelve hex digits without separators. Surrounding whitespace is ignored. None when `s` is
/// not a MAC address in one of these forms.
pub fn normalize(s: &str) -> Option<String> {
    let s = s.trim();
    let groups: Vec<&str> = if s.len() == 12 {
        vec![s]
    } else if s.contains(':') {
        s.split(':').collect()
    } else if s.contains('-') {
        s.split('-').collect()
    } else if s.contains('.') {
        s.split('.').collect()
    } else {
        return None;
    };
    let shape_ok = match groups.len() {
        1 => groups[0].len() == 12,
        3 => s.contains('.') && groups.iter().all(|g| g.len() == 4),
        6 => !s.contains('.') && groups.iter().all(|g| g.len() == 2),
        _ => false,
    };
    if !shape_ok {
        return None;
    }
    let hex: String = groups.concat();
    if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let hex = hex.to_ascii_lowercase();
    let pairs: Vec<&str> = (0..6).map(|i| &hex[2 * i..2 * i + 2]).collect();
    Some(pairs.join(":"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_addresses_normalise_from_every_common_form() {
        for input in [
            "AA:BB:CC:DD:EE:0F",
            "aa-bb-cc-dd-ee-0f",
            "AABB.CCDD.EE0F",
            "aabbccddee0f",
            "Aa:bB:cc:DD:ee:0f",
            " aa:bb:cc:dd:ee:0f\n",
        ] {
            assert_eq!(
                normalize(input).as_deref(),
                Some("aa:bb:cc:dd:ee:0f"),
                "{input}"
            );
        }
        for bad in [
            "",
            "aa:bb:cc:dd:ee",
            "aa:bb:cc:dd:ee:0f:11",
            "aa:bb:cc:dd:ee:0g",
            "aa:bb-cc:dd:ee:0f",
            "a:bb:cc:dd:ee:0ff",
            "aabb.ccdd.ee0f.1122",
            "aa.bb.cc.dd.ee.0f",
            "aabbccddee0",
            "gabbccddee0f",
        ] {
            assert_eq!(normalize(bad), None, "{bad:?}");
        }
    }
}
