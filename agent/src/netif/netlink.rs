//! Minimal rtnetlink: add a route via a device, add and remove an IPv4 address, delete a link. Messages are built by hand;
//! each request waits for the kernel's acknowledgement.

use std::io;
use std::net::IpAddr;
use std::os::fd::OwnedFd;

use gatelet_agent_api::env::Cidr;

const NLMSG_HDR_LEN: usize = 16;
const NLM_F_REQUEST: u16 = 0x01;
const NLM_F_ACK: u16 = 0x04;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const NLMSG_ERROR: u16 = 2;
/// Acknowledgement buffer: an error message quotes our request, which is small.
const ACK_BUF_LEN: usize = 1024;

/// A `NETLINK_ROUTE` socket.
#[derive(Debug)]
pub struct Netlink {
    fd: OwnedFd,
    seq: u32,
}

/// `network` with host bits cleared (the kernel rejects a route whose address has them).
pub fn network_of(cidr: &Cidr) -> Cidr {
    let addr = match cidr.addr {
        IpAddr::V4(a) => {
            let mask = u32::MAX
                .checked_shl(32 - u32::from(cidr.prefix))
                .unwrap_or(0);
            IpAddr::V4((u32::from(a) & mask).into())
        }
        IpAddr::V6(a) => {
            let mask = u128::MAX
                .checked_shl(128 - u32::from(cidr.prefix))
                .unwrap_or(0);
            IpAddr::V6((u128::from(a) & mask).into())
        }
    };
    Cidr {
        addr,
        prefix: cidr.prefix,
    }
}

fn push_attr(buf: &mut Vec<u8>, kind: u16, data: &[u8]) {
    let len = 4 + data.len();
    buf.extend_from_slice(&(len as u16).to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(data);
    while !buf.len().is_multiple_of(4) {
        buf.push(0);
    }
}

fn header(buf: &mut Vec<u8>, kind: u16, flags: u16, seq: u32) {
    buf.extend_from_slice(&0u32.to_ne_bytes()); // length, patched by `finish`
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(&(flags | NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
    buf.extend_from_slice(&seq.to_ne_bytes());
    buf.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel fills it in
}

fn finish(buf: &mut [u8]) {
    let len = buf.len() as u32;
    buf[..4].copy_from_slice(&len.to_ne_bytes());
}

/// The `RTM_NEWROUTE` message for `dst` via interface `ifindex` in the main table.
pub fn new_route_message(dst: &Cidr, ifindex: u32, seq: u32) -> Vec<u8> {
    let net = network_of(dst);
    let mut m = Vec::with_capacity(64);
    header(&mut m, libc::RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL, seq);
    let family = match net.addr {
        IpAddr::V4(_) => libc::AF_INET,
        IpAddr::V6(_) => libc::AF_INET6,
    };
    // struct rtmsg
    m.extend_from_slice(&[
        family as u8,
        net.prefix,
        0, // src_len
        0, // tos
        libc::RT_TABLE_MAIN,
        libc::RTPROT_BOOT,
        libc::RT_SCOPE_LINK,
        libc::RTN_UNICAST,
    ]);
    m.extend_from_slice(&0u32.to_ne_bytes()); // rtm_flags
    match net.addr {
        IpAddr::V4(a) => push_attr(&mut m, libc::RTA_DST, &a.octets()),
        IpAddr::V6(a) => push_attr(&mut m, libc::RTA_DST, &a.octets()),
    }
    push_attr(&mut m, libc::RTA_OIF, &ifindex.to_ne_bytes());
    finish(&mut m);
    m
}

/// The `RTM_NEWADDR` (`add`) or `RTM_DELADDR` message for `addr/prefix` on interface
/// `ifindex`.
pub fn addr_message(
    add: bool,
    addr: std::net::Ipv4Addr,
    prefix: u8,
    ifindex: u32,
    seq: u32,
) -> Vec<u8> {
    let mut m = Vec::with_capacity(48);
    if add {
        header(&mut m, libc::RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL, seq);
    } else {
        header(&mut m, libc::RTM_DELADDR, 0, seq);
    }
    // struct ifaddrmsg: family, prefixlen, flags, scope, index
    m.extend_from_slice(&[libc::AF_INET as u8, prefix, 0, libc::RT_SCOPE_UNIVERSE]);
    m.extend_from_slice(&ifindex.to_ne_bytes());
    push_attr(&mut m, libc::IFA_LOCAL, &addr.octets());
    push_attr(&mut m, libc::IFA_ADDRESS, &addr.octets());
    finish(&mut m);
    m
}

/// The `RTM_DELLINK` message for interface `ifindex`.
pub fn del_link_message(ifindex: u32, seq: u32) -> Vec<u8> {
    let mut m = Vec::with_capacity(32);
    header(&mut m, libc::RTM_DELLINK, 0, seq);
    // struct ifinfomsg: family, pad, type, index, flags, change
    m.extend_from_slice(&[libc::AF_UNSPEC as u8, 0]);
    m.extend_from_slice(&0u16.to_ne_bytes());
    m.extend_from_slice(&(ifindex as i32).to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    finish(&mut m);
    m
}

/// The errno of an acknowledgement for `seq` (0 = success), None if `buf` is not one.
pub fn parse_ack(buf: &[u8], seq: u32) -> Option<i32> {
    let mut off = 0;
    while off + NLMSG_HDR_LEN <= buf.len() {
        let len = u32::from_ne_bytes(buf[off..off + 4].try_into().ok()?) as usize;
        let kind = u16::from_ne_bytes(buf[off + 4..off + 6].try_into().ok()?);
        let mseq = u32::from_ne_bytes(buf[off + 8..off + 12].try_into().ok()?);
        if len < NLMSG_HDR_LEN || off + len > buf.len() {
            return None;
        }
        if kind == NLMSG_ERROR && mseq == seq && len >= NLMSG_HDR_LEN + 4 {
            let body = off + NLMSG_HDR_LEN;
            let err = i32::from_ne_bytes(buf[body..body + 4].try_into().ok()?);
            return Some(-err);
        }
        off += (len + 3) & !3;
    }
    None
}

impl Netlink {
    /// Opens a `NETLINK_ROUTE` socket.
    pub fn open() -> io::Result<Self> {
        let fd = crate::sys::netlink::open_route(std::time::Duration::from_secs(5))?;
        Ok(Netlink { fd, seq: 1 })
    }

    /// Adds a route for `dst` via interface `ifindex`. An identical existing route is an
    /// `AlreadyExists` error, which callers usually accept.
    pub fn add_route(&mut self, dst: &Cidr, ifindex: u32) -> io::Result<()> {
        self.seq += 1;
        let msg = new_route_message(dst, ifindex, self.seq);
        self.request(&msg)
    }

    /// Adds `addr/prefix` to interface `ifindex` (`AlreadyExists` when it is there).
    pub fn add_addr(
        &mut self,
        addr: std::net::Ipv4Addr,
        prefix: u8,
        ifindex: u32,
    ) -> io::Result<()> {
        self.seq += 1;
        let msg = addr_message(true, addr, prefix, ifindex, self.seq);
        self.request(&msg)
    }

    /// Removes `addr/prefix` from interface `ifindex` (`EADDRNOTAVAIL` when it is not there).
    pub fn del_addr(
        &mut self,
        addr: std::net::Ipv4Addr,
        prefix: u8,
        ifindex: u32,
    ) -> io::Result<()> {
        self.seq += 1;
        let msg = addr_message(false, addr, prefix, ifindex, self.seq);
        self.request(&msg)
    }

    /// Deletes interface `ifindex`.
    pub fn del_link(&mut self, ifindex: u32) -> io::Result<()> {
        self.seq += 1;
        let msg = del_link_message(ifindex, self.seq);
        self.request(&msg)
    }

    fn request(&mut self, msg: &[u8]) -> io::Result<()> {
        crate::sys::netlink::send_to_kernel(&self.fd, msg)?;
        let mut buf = [0u8; ACK_BUF_LEN];
        for _ in 0..8 {
            let n = crate::sys::netlink::recv(&self.fd, &mut buf)?;
            match parse_ack(&buf[..n], self.seq) {
                Some(0) => return Ok(()),
                Some(errno) => return Err(io::Error::from_raw_os_error(errno)),
                None => continue,
            }
        }
        Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "no acknowledgement from the kernel",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_message_has_rtmsg_destination_and_interface() {
        let cidr: Cidr = "10.8.0.77/24".parse().unwrap();
        let m = new_route_message(&cidr, 7, 42);
        assert_eq!(m.len(), 16 + 12 + 8 + 8);
        assert_eq!(
            u32::from_ne_bytes(m[0..4].try_into().unwrap()) as usize,
            m.len()
        );
        assert_eq!(
            u16::from_ne_bytes(m[4..6].try_into().unwrap()),
            libc::RTM_NEWROUTE
        );
        assert_eq!(m[16], libc::AF_INET as u8);
        assert_eq!(m[17], 24);
        // RTA_DST holds the network, host bits cleared.
        assert_eq!(&m[28 + 4..28 + 8], &[10, 8, 0, 0]);
        assert_eq!(u32::from_ne_bytes(m[40..44].try_into().unwrap()), 7);
    }

    #[test]
    fn addr_messages_carry_ifaddrmsg_local_and_address() {
        let ip = std::net::Ipv4Addr::new(192, 168, 1, 250);
        let m = addr_message(true, ip, 24, 7, 9);
        assert_eq!(m.len(), 16 + 8 + 8 + 8);
        assert_eq!(
            u32::from_ne_bytes(m[..4].try_into().unwrap()) as usize,
            m.len()
        );
        assert_eq!(
            u16::from_ne_bytes(m[4..6].try_into().unwrap()),
            libc::RTM_NEWADDR
        );
        let flags = u16::from_ne_bytes(m[6..8].try_into().unwrap());
        assert_eq!(flags, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL);
        assert_eq!(u32::from_ne_bytes(m[8..12].try_into().unwrap()), 9);
        assert_eq!(
            &m[16..20],
            &[libc::AF_INET as u8, 24, 0, libc::RT_SCOPE_UNIVERSE]
        );
        assert_eq!(u32::from_ne_bytes(m[20..24].try_into().unwrap()), 7);
        assert_eq!(
            u16::from_ne_bytes(m[26..28].try_into().unwrap()),
            libc::IFA_LOCAL
        );
        assert_eq!(&m[28..32], &ip.octets());
        assert_eq!(
            u16::from_ne_bytes(m[34..36].try_into().unwrap()),
            libc::IFA_ADDRESS
        );
        assert_eq!(&m[36..40], &ip.octets());
        let d = addr_message(false, ip, 24, 7, 10);
        assert_eq!(
            u16::from_ne_bytes(d[4..6].try_into().unwrap()),
            libc::RTM_DELADDR
        );
        assert_eq!(
            u16::from_ne_bytes(d[6..8].try_into().unwrap()),
            NLM_F_REQUEST | NLM_F_ACK
        );
    }

    #[test]
    fn ack_parsing_reads_the_errno_of_our_sequence() {
        let mut ack = Vec::new();
        header(&mut ack, NLMSG_ERROR, 0, 9);
        ack.extend_from_slice(&(-libc::EEXIST).to_ne_bytes());
        finish(&mut ack);
        assert_eq!(parse_ack(&ack, 9), Some(libc::EEXIST));
        assert_eq!(parse_ack(&ack, 10), None);
        assert_eq!(parse_ack(&ack[..10], 9), None);
    }

    #[test]
    fn ipv6_network_clears_host_bits() {
        let c: Cidr = "fd00::1234/64".parse().unwrap();
        assert_eq!(network_of(&c).to_string(), "fd00::/64");
    }
}
