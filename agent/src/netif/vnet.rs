//! TUN with `IFF_VNET_HDR`: every packet carries a 10-byte `virtio_net_hdr`, which lets the
//! agent hand the kernel one large TCP segment instead of many small ones (receive
//! coalescing, as GRO does in a NIC driver).
//!
//! Most of the cost of a packet delivered through a TUN device is the kernel's TCP/IP
//! receive path, paid once per write. [`Coalescer`] merges consecutive in-order segments of
//! one IPv4 TCP flow from a batch into a single write of up to 64 KiB marked
//! `GSO_TCPV4` + `NEEDS_CSUM`; everything else passes through unchanged with an empty header.
//! The kernel treats a merged segment like one that came out of GRO (and splits it again if
//! it forwards it). No offloads are enabled for the other direction, so packets read from
//! the device always carry an empty header.

/// Size of `struct virtio_net_hdr`.
pub const VNET_HDR_LEN: usize = 10;
/// Largest IPv4 packet a merged segment may become.
const MAX_IP_LEN: usize = 65_535;
const VIRTIO_NET_HDR_F_NEEDS_CSUM: u8 = 1;
const VIRTIO_NET_HDR_GSO_TCPV4: u8 = 1;
const IPPROTO_TCP: u8 = 6;
const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_PSH: u8 = 0x08;
const TCP_ACK: u8 = 0x10;
const TCP_URG: u8 = 0x20;
const TCP_ECE: u8 = 0x40;
const TCP_CWR: u8 = 0x80;

/// A TCP segment that may be merged: IPv4 without options or fragmentation, ACK set, only
/// PSH besides, some payload.
#[derive(Debug, Clone, Copy)]
struct Segment {
    tcp_hdr_len: usize,
    seq: u32,
    payload_len: usize,
    flags: u8,
}

fn mergeable(p: &[u8]) -> Option<Segment> {
    if p.len() < 40 || p[0] != 0x45 || p[9] != IPPROTO_TCP {
        return None;
    }
    if usize::from(u16::from_be_bytes([p[2], p[3]])) != p.len() {
        return None;
    }
    // More-fragments flag or a fragment offset: not a whole segment.
    if u16::from_be_bytes([p[6], p[7]]) & 0x3fff != 0 {
        return None;
    }
    let tcp_hdr_len = usize::from(p[32] >> 4) * 4;
    if tcp_hdr_len < 20 || 20 + tcp_hdr_len >= p.len() {
        return None;
    }
    let flags = p[33];
    if flags & TCP_ACK == 0
        || flags & (TCP_FIN | TCP_SYN | TCP_RST | TCP_URG | TCP_ECE | TCP_CWR) != 0
    {
        return None;
    }
    Some(Segment {
        tcp_hdr_len,
        seq: u32::from_be_bytes([p[24], p[25], p[26], p[27]]),
        payload_len: p.len() - 20 - tcp_hdr_len,
        flags,
    })
}

/// Ones' complement sum of `data` added to `sum` (not folded).
fn sum16(data: &[u8], mut sum: u32) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(*last) << 8;
    }
    sum
}

fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// Merges a batch's packets into as few TUN writes as it can. Feed packets with
/// [`Coalescer::push`], then [`Coalescer::flush`] at the end of the batch; both call `write`
/// with each finished frame (header included).
#[derive(Debug)]
pub struct Coalescer {
    buf: Vec<u8>,
    /// Bytes of `buf` in use (0: nothing pending).
    len: usize,
    /// The pending frame is a mergeable segment that may still grow.
    open: Option<Segment>,
    segments: usize,
    gso_size: usize,
    next_seq: u32,
}

impl Default for Coalescer {
    fn default() -> Self {
        Self::new()
    }
}

impl Coalescer {
    /// An empty coalescer with its 64 KiB buffer.
    pub fn new() -> Self {
        Coalescer {
            buf: vec![0; VNET_HDR_LEN + MAX_IP_LEN],
            len: 0,
            open: None,
            segments: 0,
            gso_size: 0,
            next_seq: 0,
        }
    }

    /// Adds one IP packet.
    pub fn push(&mut self, packet: &[u8], write: &mut impl FnMut(&[u8])) {
        if packet.len() > MAX_IP_LEN {
            return;
        }
        let seg = mergeable(packet);
        if let (Some(seg), Some(_)) = (seg, self.open) {
            if self.can_append(packet, &seg) {
                let start = 20 + seg.tcp_hdr_len;
                let end = self.len + seg.payload_len;
                self.buf[self.len..end].copy_from_slice(&packet[start..]);
                self.len = end;
                self.segments += 1;
                self.next_seq = self.next_seq.wrapping_add(seg.payload_len as u32);
                if seg.flags & TCP_PSH != 0 {
                    self.buf[VNET_HDR_LEN + 33] |= TCP_PSH;
                }
                if seg.payload_len < self.gso_size || seg.flags & TCP_PSH != 0 {
                    self.finish(write);
                }
                return;
            }
        }
        self.finish(write);
        self.buf[..VNET_HDR_LEN].fill(0);
        self.buf[VNET_HDR_LEN..VNET_HDR_LEN + packet.len()].copy_from_slice(packet);
        self.len = VNET_HDR_LEN + packet.len();
        self.segments = 1;
        match seg {
            Some(seg) if seg.flags & TCP_PSH == 0 => {
                self.open = Some(seg);
                self.gso_size = seg.payload_len;
                self.next_seq = seg.seq.wrapping_add(seg.payload_len as u32);
            }
            _ => self.finish(write),
        }
    }

    /// Writes what is pending.
    pub fn flush(&mut self, write: &mut impl FnMut(&[u8])) {
        self.finish(write);
    }

    fn can_append(&self, p: &[u8], seg: &Segment) -> bool {
        let Some(first) = self.open else {
            return false;
        };
        let h = &self.buf[VNET_HDR_LEN..];
        let hdrs = 20 + first.tcp_hdr_len;
        seg.tcp_hdr_len == first.tcp_hdr_len
            && seg.seq == self.next_seq
            && seg.payload_len <= self.gso_size
            && self.len - VNET_HDR_LEN + seg.payload_len <= MAX_IP_LEN
            // TOS, flags (DF), TTL, protocol, addresses.
            && p[1] == h[1]
            && p[6] == h[6]
            && p[8..10] == h[8..10]
            && p[12..20] == h[12..20]
            // Ports; acknowledgement, window; options (timestamps included) byte for byte.
            && p[20..24] == h[20..24]
            && p[28..32] == h[28..32]
            && p[34..36] == h[34..36]
            && p[40..hdrs] == h[40..hdrs]
    }

    fn finish(&mut self, write: &mut impl FnMut(&[u8])) {
        if self.len == 0 {
            return;
        }
        if self.segments > 1 {
            if let Some(first) = self.open {
                self.seal(first.tcp_hdr_len);
            }
        }
        write(&self.buf[..self.len]);
        self.len = 0;
        self.open = None;
        self.segments = 0;
    }

    /// Fixes the IPv4 header of a merged segment and fills the virtio header: GSO over
    /// `gso_size`, TCP checksum left to the kernel (the field holds the pseudo-header sum).
    fn seal(&mut self, tcp_hdr_len: usize) {
        let ip_len = self.len - VNET_HDR_LEN;
        let ip = &mut self.buf[VNET_HDR_LEN..self.len];
        ip[2..4].copy_from_slice(&(ip_len as u16).to_be_bytes());
        ip[10..12].fill(0);
        let ip_sum = !fold(sum16(&ip[..20], 0));
        ip[10..12].copy_from_slice(&ip_sum.to_be_bytes());
        let tcp_len = (ip_len - 20) as u32;
        let pseudo = sum16(&ip[12..20], u32::from(IPPROTO_TCP) + tcp_len);
        ip[36..38].copy_from_slice(&fold(pseudo).to_be_bytes());
        let hdr = &mut self.buf[..VNET_HDR_LEN];
        hdr[0] = VIRTIO_NET_HDR_F_NEEDS_CSUM;
        hdr[1] = VIRTIO_NET_HDR_GSO_TCPV4;
        hdr[2..4].copy_from_slice(&((20 + tcp_hdr_len) as u16).to_ne_bytes());
        hdr[4..6].copy_from_slice(&(self.gso_size as u16).to_ne_bytes());
        hdr[6..8].copy_from_slice(&20u16.to_ne_bytes());
        hdr[8..10].copy_from_slice(&16u16.to_ne_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An IPv4 TCP segment of flow 10.8.0.1:5201 -> 10.8.0.2:40000 with a valid checksum.
    fn tcp(seq: u32, payload: &[u8], flags: u8) -> Vec<u8> {
        let mut p = vec![0u8; 40];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&((40 + payload.len()) as u16).to_be_bytes());
        p[6] = 0x40; // DF
        p[8] = 64;
        p[9] = IPPROTO_TCP;
        p[12..16].copy_from_slice(&[10, 8, 0, 1]);
        p[16..20].copy_from_slice(&[10, 8, 0, 2]);
        p[20..22].copy_from_slice(&5201u16.to_be_bytes());
        p[22..24].copy_from_slice(&40000u16.to_be_bytes());
        p[24..28].copy_from_slice(&seq.to_be_bytes());
        p[28..32].copy_from_slice(&7u32.to_be_bytes());
        p[32] = 5 << 4;
        p[33] = flags;
        p[34..36].copy_from_slice(&512u16.to_be_bytes());
        p.extend_from_slice(payload);
        let ip_sum = !fold(sum16(&p[..20], 0));
        p[10..12].copy_from_slice(&ip_sum.to_be_bytes());
        let tcp_sum = !fold(sum16(
            &p[20..],
            sum16(&p[12..20], 6 + (p.len() - 20) as u32),
        ));
        p[36..38].copy_from_slice(&tcp_sum.to_be_bytes());
        p
    }

    fn run(packets: &[Vec<u8>]) -> Vec<Vec<u8>> {
        let mut c = Coalescer::new();
        let mut out = Vec::new();
        let mut w = |f: &[u8]| out.push(f.to_vec());
        for p in packets {
            c.push(p, &mut w);
        }
        c.flush(&mut w);
        out
    }

    #[test]
    fn in_order_segments_of_one_flow_become_one_gso_frame() {
        let a = [1u8; 100];
        let b = [2u8; 100];
        let c = [3u8; 40];
        let out = run(&[
            tcp(1000, &a, TCP_ACK),
            tcp(1100, &b, TCP_ACK),
            tcp(1200, &c, TCP_ACK | TCP_PSH),
        ]);
        assert_eq!(out.len(), 1);
        let f = &out[0];
        assert_eq!(f[0], VIRTIO_NET_HDR_F_NEEDS_CSUM);
        assert_eq!(f[1], VIRTIO_NET_HDR_GSO_TCPV4);
        assert_eq!(u16::from_ne_bytes([f[4], f[5]]), 100, "gso_size");
        assert_eq!(u16::from_ne_bytes([f[6], f[7]]), 20, "csum_start");
        assert_eq!(u16::from_ne_bytes([f[8], f[9]]), 16, "csum_offset");
        let ip = &f[VNET_HDR_LEN..];
        assert_eq!(ip.len(), 40 + 240);
        assert_eq!(usize::from(u16::from_be_bytes([ip[2], ip[3]])), ip.len());
        assert_eq!(
            fold(sum16(&ip[..20], 0)),
            0xffff,
            "valid IPv4 header checksum"
        );
        assert_eq!(&ip[40..140], &a[..]);
        assert_eq!(&ip[140..240], &b[..]);
        assert_eq!(&ip[240..], &c[..]);
        assert_ne!(ip[33] & TCP_PSH, 0, "PSH of the last segment kept");
        // Completing the checksum as the kernel does (sum from csum_start over the field,
        // which holds the pseudo-header sum; store the complement) gives a valid checksum.
        let mut full = ip.to_vec();
        let sum = !fold(sum16(&full[20..], 0));
        full[36..38].copy_from_slice(&sum.to_be_bytes());
        let pseudo = sum16(&full[12..20], 6 + (full.len() - 20) as u32);
        assert_eq!(
            fold(sum16(&full[20..], pseudo)),
            0xffff,
            "TCP checksum verifies"
        );
    }

    #[test]
    fn gaps_other_flows_and_control_segments_are_not_merged() {
        let p = [9u8; 50];
        let mut other_flow = tcp(1050, &p, TCP_ACK);
        other_flow[23] ^= 1;
        let out = run(&[
            tcp(1000, &p, TCP_ACK),
            tcp(1100, &p, TCP_ACK), // gap: 1050 expected
            other_flow,             // another port
            tcp(1150, &p, TCP_ACK | TCP_FIN),
            vec![0x60; 48], // IPv6 passes through
        ]);
        assert_eq!(out.len(), 5);
        for f in &out {
            assert_eq!(&f[..VNET_HDR_LEN], &[0u8; VNET_HDR_LEN], "plain header");
        }
        assert_eq!(out[0][VNET_HDR_LEN..], tcp(1000, &p, TCP_ACK)[..]);
    }

    #[test]
    fn a_short_segment_ends_the_merge() {
        let out = run(&[
            tcp(0, &[1; 100], TCP_ACK),
            tcp(100, &[2; 60], TCP_ACK),
            tcp(160, &[3; 100], TCP_ACK),
        ]);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].len(), VNET_HDR_LEN + 40 + 160);
        assert_eq!(out[1][1], 0, "single segment: no GSO");
    }
}
