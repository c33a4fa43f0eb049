//! TUN with `IFF_VNET_HDR`: every packet carries a 10-byte `virtio_net_hdr`, which lets the
//! agent hand the kernel one large TCP segment instead of many small ones (receive
//! coalescing, as GRO does in a NIC driver).
//!
//! Most of the cost of a packet delivered through a TUN device is the kernel's TCP/IP
//! receive path, paid once per write. [`Coalescer`] merges consecutive in-order segments of
//! one IPv4 TCP flow from a batch into a single write of up to 64 KiB marked
//! `GSO_TCPV4` + `NEEDS_CSUM`, and, when the device takes UDP segmentation offload (Linux
//! 6.2), consecutive datagrams of one IPv4 UDP flow into one `GSO_UDP_L4` write; everything
//! else passes through unchanged with an empty header. The kernel treats a merged segment
//! like one that came out of GRO (and splits it again if it forwards it, or before a socket
//! that did not ask for UDP GRO).
//!
//! In the other direction the device is given checksum, TSO and (where the kernel has it) USO
//! offloads, so the kernel hands over TCP segments or runs of UDP datagrams of up to 64 KiB
//! and leaves checksums partial: [`Segments`] cuts such a frame into MTU-sized packets with
//! complete checksums, as a NIC would.
use crate::checksum;
use crate::sys::ring::Ring;

/// Size of `struct virtio_net_hdr`.
pub const VNET_HDR_LEN: usize = 10;
/// Largest IPv4 packet a merged segment may become.
const MAX_IP_LEN: usize = 65_535;
const VIRTIO_NET_HDR_F_NEEDS_CSUM: u8 = 1;
const VIRTIO_NET_HDR_GSO_TCPV4: u8 = 1;
const VIRTIO_NET_HDR_GSO_UDP_L4: u8 = 5;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
/// Datagrams joined into one UDP frame at most (the kernel's `UDP_MAX_SEGMENTS` is 128).
const MAX_UDP_SEGMENTS: usize = 64;
const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_PSH: u8 = 0x08;
const TCP_ACK: u8 = 0x10;
const TCP_URG: u8 = 0x20;
const TCP_ECE: u8 = 0x40;
const TCP_CWR: u8 = 0x80;

/// A TCP segment or UDP datagram that may be merged: IPv4 without options or fragmentation,
/// some payload; TCP with ACK set and only PSH besides.
#[derive(Debug, Clone, Copy)]
struct Segment {
    /// `IPPROTO_TCP` or `IPPROTO_UDP`.
    proto: u8,
    /// The TCP header's length, or 8 (UDP).
    l4_hdr_len: usize,
    /// TCP only (0 for UDP).
    seq: u32,
    payload_len: usize,
    /// TCP only (0 for UDP).
    flags: u8,
}

/// `p` as a [`Segment`], if it is one; UDP only when `udp` (the device takes UDP segments).
fn mergeable(p: &[u8], udp: bool) -> Option<Segment> {
    if p.len() < 28 || p[0] != 0x45 {
        return None;
    }
    if usize::from(u16::from_be_bytes([p[2], p[3]])) != p.len() {
        return None;
    }
    // More-fragments flag or a fragment offset: not a whole segment.
    if u16::from_be_bytes([p[6], p[7]]) & 0x3fff != 0 {
        return None;
    }
    match p[9] {
        IPPROTO_TCP if p.len() >= 40 => {
            let l4_hdr_len = usize::from(p[32] >> 4) * 4;
            if l4_hdr_len < 20 || 20 + l4_hdr_len >= p.len() {
                return None;
            }
            let flags = p[33];
            if flags & TCP_ACK == 0
                || flags & (TCP_FIN | TCP_SYN | TCP_RST | TCP_URG | TCP_ECE | TCP_CWR) != 0
            {
                return None;
            }
            Some(Segment {
                proto: IPPROTO_TCP,
                l4_hdr_len,
                seq: u32::from_be_bytes([p[24], p[25], p[26], p[27]]),
                payload_len: p.len() - 20 - l4_hdr_len,
                flags,
            })
        }
        IPPROTO_UDP if udp && p.len() > 28 => {
            // The UDP length must be the packet's: no trailing bytes to lose.
            if usize::from(u16::from_be_bytes([p[24], p[25]])) != p.len() - 20 {
                return None;
            }
            Some(Segment {
                proto: IPPROTO_UDP,
                l4_hdr_len: 8,
                seq: 0,
                payload_len: p.len() - 28,
                flags: 0,
            })
        }
        _ => None,
    }
}

/// Merges a batch's packets into as few TUN writes as it can. Feed packets with
/// [`Coalescer::push`], then [`Coalescer::flush`] at the end of the batch; both call `write`
/// with each finished frame (header included).
#[derive(Debug)]
pub struct Coalescer {
    /// Whether UDP datagrams are merged too (the device takes `GSO_UDP_L4` frames).
    udp: bool,
    /// 64 KiB in an anonymous map (resident only where written).
    buf: Ring,
    /// Bytes of `buf` in use (0: nothing pending).
    len: usize,
    /// The pending frame is a mergeable segment that may still grow.
    open: Option<Segment>,
    segments: usize,
    gso_size: usize,
    next_seq: u32,
}

impl Coalescer {
    /// An empty coalescer with its 64 KiB buffer; it merges UDP datagrams too when `udp`
    /// (only for a device that took the USO offloads: an older kernel refuses the frames).
    pub fn new(udp: bool) -> Self {
        Coalescer {
            udp,
            buf: Ring::zeroed(VNET_HDR_LEN + MAX_IP_LEN),
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
        let seg = mergeable(packet, self.udp);
        if let (Some(seg), Some(_)) = (seg, self.open) {
            if self.can_append(packet, &seg) {
                let start = 20 + seg.l4_hdr_len;
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
        let same_flow = seg.proto == first.proto
            && seg.l4_hdr_len == first.l4_hdr_len
            && seg.payload_len <= self.gso_size
            && self.len - VNET_HDR_LEN + seg.payload_len <= MAX_IP_LEN
            // TOS, flags (DF), TTL, protocol, addresses, ports.
            && p[1] == h[1]
            && p[6] == h[6]
            && p[8..10] == h[8..10]
            && p[12..24] == h[12..24];
        if !same_flow {
            return false;
        }
        if first.proto == IPPROTO_UDP {
            return self.segments < MAX_UDP_SEGMENTS;
        }
        // In order; acknowledgement, window; options (timestamps included) byte for byte.
        let hdrs = 20 + first.l4_hdr_len;
        seg.seq == self.next_seq
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
                self.seal(first);
            }
        }
        write(&self.buf[..self.len]);
        self.len = 0;
        self.open = None;
        self.segments = 0;
    }

    /// Fixes the IPv4 header (and UDP's length) of a merged segment and fills the virtio
    /// header: GSO over `gso_size`, the TCP or UDP checksum left to the kernel (the field
    /// holds the pseudo-header sum).
    fn seal(&mut self, first: Segment) {
        let ip_len = self.len - VNET_HDR_LEN;
        let ip = &mut self.buf[VNET_HDR_LEN..self.len];
        ip[2..4].copy_from_slice(&(ip_len as u16).to_be_bytes());
        ip[10..12].fill(0);
        let ip_sum = !checksum::fold(checksum::sum(&ip[..20], 0));
        ip[10..12].copy_from_slice(&ip_sum.to_be_bytes());
        let l4_len = ip_len - 20;
        let pseudo = checksum::fold(checksum::sum(
            &ip[12..20],
            u32::from(first.proto) + l4_len as u32,
        ));
        let (gso, csum_offset) = if first.proto == IPPROTO_UDP {
            ip[24..26].copy_from_slice(&(l4_len as u16).to_be_bytes());
            ip[26..28].copy_from_slice(&pseudo.to_be_bytes());
            (VIRTIO_NET_HDR_GSO_UDP_L4, 6u16)
        } else {
            ip[36..38].copy_from_slice(&pseudo.to_be_bytes());
            (VIRTIO_NET_HDR_GSO_TCPV4, 16u16)
        };
        let hdr = &mut self.buf[..VNET_HDR_LEN];
        hdr[0] = VIRTIO_NET_HDR_F_NEEDS_CSUM;
        hdr[1] = gso;
        hdr[2..4].copy_from_slice(&((20 + first.l4_hdr_len) as u16).to_ne_bytes());
        hdr[4..6].copy_from_slice(&(self.gso_size as u16).to_ne_bytes());
        hdr[6..8].copy_from_slice(&20u16.to_ne_bytes());
        hdr[8..10].copy_from_slice(&csum_offset.to_ne_bytes());
    }
}

const VIRTIO_NET_HDR_GSO_NONE: u8 = 0;
const VIRTIO_NET_HDR_GSO_TCPV6: u8 = 4;
const VIRTIO_NET_HDR_GSO_ECN: u8 = 0x80;

/// The packets in one frame read from the device: the packet itself (its checksum completed
/// when the kernel left it partial), or the segments of a TCP or UDP GSO frame. Call
/// [`Segments::next`] until it returns None.
#[derive(Debug)]
pub struct Segments<'a> {
    packet: &'a [u8],
    needs_csum: bool,
    gso: u8,
    gso_size: usize,
    csum_start: usize,
    csum_offset: usize,
    /// Payload bytes already cut (GSO), or 1 once the single packet went out.
    offset: usize,
    index: u16,
    done: bool,
}

impl<'a> Segments<'a> {
    /// Parses the header of `frame`; None when it is malformed or of a kind not offered (UDP
    /// fragmentation offload, ECN).
    pub fn new(frame: &'a [u8]) -> Option<Self> {
        if frame.len() <= VNET_HDR_LEN {
            return None;
        }
        let h = &frame[..VNET_HDR_LEN];
        let ne = |i: usize| usize::from(u16::from_ne_bytes([h[i], h[i + 1]]));
        let gso = h[1];
        if gso & VIRTIO_NET_HDR_GSO_ECN != 0
            || !matches!(
                gso,
                VIRTIO_NET_HDR_GSO_NONE
                    | VIRTIO_NET_HDR_GSO_TCPV4
                    | VIRTIO_NET_HDR_GSO_TCPV6
                    | VIRTIO_NET_HDR_GSO_UDP_L4
            )
        {
            return None;
        }
        let seg = Segments {
            packet: &frame[VNET_HDR_LEN..],
            needs_csum: h[0] & VIRTIO_NET_HDR_F_NEEDS_CSUM != 0,
            gso,
            gso_size: ne(4),
            csum_start: ne(6),
            csum_offset: ne(8),
            offset: 0,
            index: 0,
            done: false,
        };
        if seg.needs_csum && seg.csum_start + seg.csum_offset + 2 > seg.packet.len() {
            return None;
        }
        if gso != VIRTIO_NET_HDR_GSO_NONE && seg.gso_size == 0 {
            return None;
        }
        Some(seg)
    }

    /// The next packet, built in `scratch` when it had to change (which must hold an MTU-sized
    /// packet); None when the frame is exhausted or malformed.
    pub fn next<'b>(&mut self, scratch: &'b mut [u8]) -> Option<&'b [u8]>
    where
        'a: 'b,
    {
        if self.done {
            return None;
        }
        if self.gso == VIRTIO_NET_HDR_GSO_NONE {
            self.done = true;
            let p = self.packet;
            if !self.needs_csum {
                return Some(p);
            }
            let out = scratch.get_mut(..p.len())?;
            out.copy_from_slice(p);
            let field = self.csum_start + self.csum_offset;
            let mut sum = !checksum::fold(checksum::sum(&out[self.csum_start..], 0));
            if sum == 0 && self.udp() {
                sum = 0xffff;
            }
            out[field..field + 2].copy_from_slice(&sum.to_be_bytes());
            return Some(out);
        }
        self.next_segment(scratch)
    }

    fn udp(&self) -> bool {
        match self.packet[0] >> 4 {
            4 => self.packet.get(9) == Some(&IPPROTO_UDP),
            _ => self.packet.get(6) == Some(&IPPROTO_UDP),
        }
    }

    /// The next segment of a GSO frame: headers copied, lengths, IPv4 id and checksums made
    /// whole; TCP's sequence number advanced and FIN/PSH kept for the last, CWR for the first.
    fn next_segment<'b>(&mut self, scratch: &'b mut [u8]) -> Option<&'b [u8]> {
        let p = self.packet;
        let v4 = match self.gso {
            VIRTIO_NET_HDR_GSO_TCPV4 => true,
            VIRTIO_NET_HDR_GSO_TCPV6 => false,
            _ => p[0] >> 4 == 4,
        };
        let udp = self.gso == VIRTIO_NET_HDR_GSO_UDP_L4;
        let want = if udp { IPPROTO_UDP } else { IPPROTO_TCP };
        let ip_len = if v4 { usize::from(p[0] & 0x0f) * 4 } else { 40 };
        let proto = if v4 { p.get(9) } else { p.get(6) };
        if proto != Some(&want) || p.len() < ip_len + 20 {
            self.done = true;
            return None;
        }
        let t = ip_len;
        let l4_len = if udp {
            8
        } else {
            usize::from(p[t + 12] >> 4) * 4
        };
        let hdrs = ip_len + l4_len;
        if l4_len < 8 || p.len() <= hdrs {
            self.done = true;
            return None;
        }
        let payload = &p[hdrs..];
        let start = self.offset;
        let end = (start + self.gso_size).min(payload.len());
        if start >= end {
            self.done = true;
            return None;
        }
        let last = end == payload.len();
        let len = hdrs + end - start;
        let out = scratch.get_mut(..len)?;
        out[..hdrs].copy_from_slice(&p[..hdrs]);
        out[hdrs..].copy_from_slice(&payload[start..end]);
        if v4 {
            out[2..4].copy_from_slice(&(len as u16).to_be_bytes());
            let id = u16::from_be_bytes([p[4], p[5]]).wrapping_add(self.index);
            out[4..6].copy_from_slice(&id.to_be_bytes());
            out[10..12].fill(0);
            let ip_sum = !checksum::fold(checksum::sum(&out[..ip_len], 0));
            out[10..12].copy_from_slice(&ip_sum.to_be_bytes());
        } else {
            out[4..6].copy_from_slice(&((len - 40) as u16).to_be_bytes());
        }
        let seg_len = (len - ip_len) as u32;
        let field = if udp {
            out[t + 4..t + 6].copy_from_slice(&(seg_len as u16).to_be_bytes());
            t + 6
        } else {
            let seq = u32::from_be_bytes([p[t + 4], p[t + 5], p[t + 6], p[t + 7]])
                .wrapping_add(start as u32);
            out[t + 4..t + 8].copy_from_slice(&seq.to_be_bytes());
            if !last {
                out[t + 13] &= !(TCP_FIN | TCP_PSH);
            }
            if self.index > 0 {
                out[t + 13] &= !TCP_CWR;
            }
            t + 16
        };
        out[field..field + 2].fill(0);
        let addrs = if v4 { &out[12..20] } else { &out[8..40] };
        let pseudo = checksum::sum(addrs, u32::from(want) + seg_len);
        let mut sum = !checksum::fold(checksum::sum(&out[t..], pseudo));
        if sum == 0 && udp {
            // UDP's "no checksum" is 0; a computed 0 is sent as all ones.
            sum = 0xffff;
        }
        out[field..field + 2].copy_from_slice(&sum.to_be_bytes());
        self.offset = end;
        self.index = self.index.wrapping_add(1);
        self.done = last;
        Some(out)
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
        let ip_sum = !checksum::fold(checksum::sum(&p[..20], 0));
        p[10..12].copy_from_slice(&ip_sum.to_be_bytes());
        let tcp_sum = !checksum::fold(checksum::sum(
            &p[20..],
            checksum::sum(&p[12..20], 6 + (p.len() - 20) as u32),
        ));
        p[36..38].copy_from_slice(&tcp_sum.to_be_bytes());
        p
    }

    /// What a coalescer (merging UDP too when `udp`) writes for `packets`.
    fn run_with(udp: bool, packets: &[Vec<u8>]) -> Vec<Vec<u8>> {
        let mut c = Coalescer::new(udp);
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
        let out = run_with(
            false,
            &[
                tcp(1000, &a, TCP_ACK),
                tcp(1100, &b, TCP_ACK),
                tcp(1200, &c, TCP_ACK | TCP_PSH),
            ],
        );
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
            checksum::fold(checksum::sum(&ip[..20], 0)),
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
        let sum = !checksum::fold(checksum::sum(&full[20..], 0));
        full[36..38].copy_from_slice(&sum.to_be_bytes());
        let pseudo = checksum::sum(&full[12..20], 6 + (full.len() - 20) as u32);
        assert_eq!(
            checksum::fold(checksum::sum(&full[20..], pseudo)),
            0xffff,
            "TCP checksum verifies"
        );
    }

    #[test]
    fn gaps_other_flows_and_control_segments_are_not_merged() {
        let p = [9u8; 50];
        let mut other_flow = tcp(1050, &p, TCP_ACK);
        other_flow[23] ^= 1;
        let out = run_with(
            false,
            &[
                tcp(1000, &p, TCP_ACK),
                tcp(1100, &p, TCP_ACK), // gap: 1050 expected
                other_flow,             // another port
                tcp(1150, &p, TCP_ACK | TCP_FIN),
                vec![0x60; 48], // IPv6 passes through
            ],
        );
        assert_eq!(out.len(), 5);
        for f in &out {
            assert_eq!(&f[..VNET_HDR_LEN], &[0u8; VNET_HDR_LEN], "plain header");
        }
        assert_eq!(out[0][VNET_HDR_LEN..], tcp(1000, &p, TCP_ACK)[..]);
    }

    #[test]
    fn a_short_segment_ends_the_merge() {
        let out = run_with(
            false,
            &[
                tcp(0, &[1; 100], TCP_ACK),
                tcp(100, &[2; 60], TCP_ACK),
                tcp(160, &[3; 100], TCP_ACK),
            ],
        );
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].len(), VNET_HDR_LEN + 40 + 160);
        assert_eq!(out[1][1], 0, "single segment: no GSO");
    }

    fn vnet(flags: u8, gso: u8, hdr_len: u16, gso_size: u16, cs: u16, co: u16) -> Vec<u8> {
        let mut h = vec![flags, gso];
        for v in [hdr_len, gso_size, cs, co] {
            h.extend_from_slice(&v.to_ne_bytes());
        }
        h
    }

    fn tcp_checksum_ok(p: &[u8]) -> bool {
        let pseudo = checksum::sum(&p[12..20], 6 + (p.len() - 20) as u32);
        checksum::fold(checksum::sum(&p[20..], pseudo)) == 0xffff
    }

    #[test]
    fn gso_frame_is_cut_into_segments_with_valid_headers() {
        let payload: Vec<u8> = (0..250u32).map(|i| i as u8).collect();
        let mut big = tcp(5000, &payload, TCP_ACK | TCP_PSH);
        big[4..6].copy_from_slice(&100u16.to_be_bytes()); // IP id
                                                          // As the kernel hands it over: pseudo-header sum in the checksum field.
        let pseudo = checksum::fold(checksum::sum(&big[12..20], 6 + (big.len() - 20) as u32));
        big[36..38].copy_from_slice(&pseudo.to_be_bytes());
        let mut frame = vnet(
            VIRTIO_NET_HDR_F_NEEDS_CSUM,
            VIRTIO_NET_HDR_GSO_TCPV4,
            40,
            100,
            20,
            16,
        );
        frame.extend_from_slice(&big);
        let mut segs = Segments::new(&frame).unwrap();
        let mut scratch = vec![0u8; 1500];
        let mut out = Vec::new();
        while let Some(s) = segs.next(&mut scratch) {
            out.push(s.to_vec());
        }
        assert_eq!(out.len(), 3);
        let mut joined = Vec::new();
        for (i, s) in out.iter().enumerate() {
            assert_eq!(usize::from(u16::from_be_bytes([s[2], s[3]])), s.len());
            assert_eq!(
                checksum::fold(checksum::sum(&s[..20], 0)),
                0xffff,
                "IPv4 checksum of segment {i}"
            );
            assert!(tcp_checksum_ok(s), "TCP checksum of segment {i}");
            assert_eq!(u16::from_be_bytes([s[4], s[5]]), 100 + i as u16);
            let seq = u32::from_be_bytes([s[24], s[25], s[26], s[27]]);
            assert_eq!(seq, 5000 + 100 * i as u32);
            assert_eq!(s[33] & TCP_PSH != 0, i == 2, "PSH only on the last");
            joined.extend_from_slice(&s[40..]);
        }
        assert_eq!(joined, payload);
    }

    #[test]
    fn partial_checksum_of_a_single_packet_is_completed() {
        let mut p = tcp(1, &[7u8; 33], TCP_ACK);
        let pseudo = checksum::fold(checksum::sum(&p[12..20], 6 + (p.len() - 20) as u32));
        p[36..38].copy_from_slice(&pseudo.to_be_bytes());
        let mut frame = vnet(VIRTIO_NET_HDR_F_NEEDS_CSUM, 0, 0, 0, 20, 16);
        frame.extend_from_slice(&p);
        let mut segs = Segments::new(&frame).unwrap();
        let mut scratch = vec![0u8; 1500];
        let s = segs.next(&mut scratch).unwrap().to_vec();
        assert!(tcp_checksum_ok(&s));
        assert!(segs.next(&mut scratch).is_none());

        let mut plain = vec![0u8; VNET_HDR_LEN];
        plain.extend_from_slice(&tcp(1, &[1], TCP_ACK));
        let mut segs = Segments::new(&plain).unwrap();
        assert_eq!(segs.next(&mut scratch).unwrap(), &plain[VNET_HDR_LEN..]);
        let mut ufo = vnet(0, 3, 28, 100, 0, 0);
        ufo.extend_from_slice(&tcp(1, &[1; 300], TCP_ACK));
        assert!(
            Segments::new(&ufo).is_none(),
            "UDP fragmentation offload is not offered"
        );
    }

    /// An IPv4 UDP datagram of flow 10.8.0.1:4433 -> 10.8.0.2:50000, IP id `id`, with valid
    /// checksums.
    fn udp(id: u16, payload: &[u8]) -> Vec<u8> {
        let mut p = vec![0u8; 28];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&((28 + payload.len()) as u16).to_be_bytes());
        p[4..6].copy_from_slice(&id.to_be_bytes());
        p[8] = 64;
        p[9] = IPPROTO_UDP;
        p[12..16].copy_from_slice(&[10, 8, 0, 1]);
        p[16..20].copy_from_slice(&[10, 8, 0, 2]);
        p[20..22].copy_from_slice(&4433u16.to_be_bytes());
        p[22..24].copy_from_slice(&50000u16.to_be_bytes());
        p[24..26].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        p.extend_from_slice(payload);
        let ip_sum = !checksum::fold(checksum::sum(&p[..20], 0));
        p[10..12].copy_from_slice(&ip_sum.to_be_bytes());
        let mut sum = !checksum::fold(checksum::sum(
            &p[20..],
            checksum::sum(&p[12..20], 17 + (p.len() - 20) as u32),
        ));
        if sum == 0 {
            sum = 0xffff;
        }
        p[26..28].copy_from_slice(&sum.to_be_bytes());
        p
    }

    #[test]
    fn udp_datagrams_of_one_flow_become_one_frame_that_cuts_back_into_them() {
        let sizes = [100usize, 100, 100, 40];
        let sent: Vec<Vec<u8>> = sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| udp(7 + i as u16, &vec![i as u8 + 1; n]))
            .collect();
        let out = run_with(true, &sent);
        assert_eq!(out.len(), 1, "one write");
        let f = &out[0];
        assert_eq!(f[0], VIRTIO_NET_HDR_F_NEEDS_CSUM);
        assert_eq!(f[1], VIRTIO_NET_HDR_GSO_UDP_L4);
        assert_eq!(u16::from_ne_bytes([f[2], f[3]]), 28, "hdr_len");
        assert_eq!(u16::from_ne_bytes([f[4], f[5]]), 100, "gso_size");
        assert_eq!(u16::from_ne_bytes([f[6], f[7]]), 20, "csum_start");
        assert_eq!(u16::from_ne_bytes([f[8], f[9]]), 6, "csum_offset");
        let ip = &f[VNET_HDR_LEN..];
        assert_eq!(ip.len(), 28 + 340);
        assert_eq!(usize::from(u16::from_be_bytes([ip[2], ip[3]])), ip.len());
        assert_eq!(
            usize::from(u16::from_be_bytes([ip[24], ip[25]])),
            ip.len() - 20
        );
        assert_eq!(checksum::fold(checksum::sum(&ip[..20], 0)), 0xffff);
        // The kernel cuts it as Segments does: the datagrams come back byte for byte.
        let mut segs = Segments::new(f).unwrap();
        let mut scratch = vec![0u8; 1500];
        let mut back = Vec::new();
        while let Some(s) = segs.next(&mut scratch) {
            back.push(s.to_vec());
        }
        assert_eq!(back, sent);
    }

    #[test]
    fn udp_is_joined_only_with_the_offload_within_one_flow_and_up_to_the_cap() {
        let p = [5u8; 10];
        // Without USO (an older kernel), every datagram is its own write.
        let out = run_with(false, &[udp(0, &p), udp(1, &p), udp(2, &p)]);
        assert_eq!(out.len(), 3);
        // Another port, a longer datagram after a shorter one, or a length field that
        // does not match, ends a run.
        let mut other = udp(3, &p);
        other[23] ^= 1;
        let mut bad_len = udp(6, &p);
        bad_len[25] -= 1;
        let out = run_with(
            true,
            &[
                udp(0, &p),
                udp(1, &p),
                other,
                udp(4, &[1; 5]),
                udp(5, &p),
                bad_len,
            ],
        );
        let kinds: Vec<u8> = out.iter().map(|f| f[1]).collect();
        assert_eq!(
            kinds,
            [VIRTIO_NET_HDR_GSO_UDP_L4, 0, 0, 0, 0],
            "{} frames",
            out.len()
        );
        // At most MAX_UDP_SEGMENTS per frame.
        let many: Vec<Vec<u8>> = (0..70).map(|i| udp(i, &p)).collect();
        let out = run_with(true, &many);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].len(), VNET_HDR_LEN + 28 + MAX_UDP_SEGMENTS * p.len());
    }
}
