//! The Internet checksum (RFC 1071): the ones' complement sum of 16-bit big-endian words, as
//! IPv4, ICMP, TCP, UDP and VRRP headers carry it. One implementation for the TUN offloads
//! (`netif::vnet`), the VRRP advertisements and the egress pings (`scan_egress`).

/// Ones' complement sum of `data` added to `sum` (folded to 16 bits, or 0 when all is zero).
///
/// Eight bytes at a time into a 64-bit sum with end-around carry, which is the same sum of
/// 16-bit big-endian words modulo 0xffff (2^16 = 1 there): the checksum of every segment of a
/// TSO frame runs over its whole payload, and two bytes per step cost 6 % of the encrypting
/// path's CPU (perf).
pub fn sum(data: &[u8], sum: u32) -> u32 {
    let mut acc = u64::from(sum);
    let mut words = data.chunks_exact(8);
    for w in &mut words {
        let (s, carry) = acc.overflowing_add(u64::from_be_bytes(w.try_into().unwrap_or_default()));
        acc = s + u64::from(carry);
    }
    let mut pairs = words.remainder().chunks_exact(2);
    for c in &mut pairs {
        acc += u64::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = pairs.remainder() {
        acc += u64::from(*last) << 8;
    }
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u32
}

/// Folds a sum to 16 bits with end-around carry.
pub fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// The checksum field's value for `data` (the complement of its folded sum): 0 over data
/// that already carries a correct checksum.
pub fn internet(data: &[u8]) -> u16 {
    !fold(sum(data, 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The plain definition: 16-bit big-endian words, an odd last byte padded with zero.
    fn reference_sum(data: &[u8], sum: u32) -> u16 {
        let mut sum = u64::from(sum);
        for c in data.chunks(2) {
            sum += u64::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
        }
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        sum as u16
    }

    #[test]
    fn checksum_eight_bytes_at_a_time_equals_the_sum_of_16_bit_words() {
        let mut rng = fastrand::Rng::with_seed(7);
        for len in (0..80).chain([1499, 1500, 65_535]) {
            for _ in 0..20 {
                let mut data = vec![0u8; len + 3];
                data.iter_mut().for_each(|b| *b = rng.u8(..));
                // All-ones data makes every carry happen.
                if rng.bool() {
                    data.fill(0xff);
                }
                let start = rng.usize(..4);
                let (slice, seed) = (&data[start..start + len], rng.u32(..0x2_0000));
                assert_eq!(
                    fold(sum(slice, seed)),
                    reference_sum(slice, seed),
                    "len {len}, start {start}, seed {seed:#x}"
                );
            }
        }
        assert_eq!(fold(sum(&[], 0)), 0);
    }

    #[test]
    fn rfc_1071_examples() {
        // RFC 1071 section 3's words sum to 0xddf2.
        assert_eq!(
            fold(sum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7], 0)),
            0xddf2
        );
        assert_eq!(internet(&[0x01]), !0x0100);
        let mut b = vec![
            0x45u8, 0, 0, 20, 0, 0, 0, 0, 64, 6, 0, 0, 10, 8, 0, 1, 10, 8, 0, 2,
        ];
        let c = internet(&b);
        b[10..12].copy_from_slice(&c.to_be_bytes());
        assert_eq!(internet(&b), 0, "a correct checksum sums to zero");
    }
}
