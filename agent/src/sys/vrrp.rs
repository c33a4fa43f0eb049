//! The sockets of the egress routes' VRRP (`crate::scan_egress::vrrp`): a raw IPv4 socket for
//! protocol 112 (needs `CAP_NET_RAW`), a packet socket for gratuitous ARP (`CAP_NET_RAW`) and
//! a raw ICMP socket for the tunnel check's pings (`CAP_NET_RAW`).
//! The messages themselves are built outside this module.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, OwnedFd};

use super::{check, check_size, owned, sockaddr_in};

/// IP TOS of VRRP packets: internetwork control (0xc0), as keepalived sends them.
const VRRP_TOS: libc::c_int = 0xc0;
const ETH_P_ARP: u16 = 0x0806;

fn set(fd: &OwnedFd, level: libc::c_int, name: libc::c_int, value: libc::c_int) -> io::Result<()> {
    // SAFETY: `value` outlives the call and the length matches its type.
    check(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    })
    .map(drop)
}

/// A non-blocking raw socket for IP protocol `proto`, sending from `local` with TTL 255 and
/// TOS 0xc0; receives carry the IP header.
pub fn raw_v4(proto: u8, local: Ipv4Addr) -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2) call; the result is checked.
    let fd = owned(unsafe {
        libc::socket(
            libc::AF_INET,
            libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            libc::c_int::from(proto),
        )
    })?;
    set(&fd, libc::IPPROTO_IP, libc::IP_TTL, 255)?;
    set(&fd, libc::IPPROTO_IP, libc::IP_MULTICAST_TTL, 255)?;
    set(&fd, libc::IPPROTO_IP, libc::IP_TOS, VRRP_TOS)?;
    let sin = sockaddr_in(local, 0);
    // SAFETY: `sin` is a valid sockaddr_in and outlives the call.
    check(unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&sin as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    })?;
    Ok(fd)
}

/// A non-blocking raw ICMP socket, unbound (the route to the destination picks the source:
/// the tunnel address for the hub), for the tunnel check's echo requests.
pub fn raw_icmp() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2) call; the result is checked.
    owned(unsafe {
        libc::socket(
            libc::AF_INET,
            libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            libc::IPPROTO_ICMP,
        )
    })
}

/// Sends `payload` (the IP payload) to `to` on a raw socket.
pub fn send_to_v4(fd: &OwnedFd, payload: &[u8], to: Ipv4Addr) -> io::Result<usize> {
    let sin = sockaddr_in(to, 0);
    // SAFETY: `payload` and `sin` are valid for the lengths given.
    check_size(unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            payload.as_ptr().cast(),
            payload.len(),
            0,
            (&sin as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    })
}

/// Receives one packet (IP header included) into `buf`; `WouldBlock` when none is waiting.
pub fn recv(fd: &OwnedFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for writes of its length.
    check_size(unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) })
}

/// Broadcasts the ARP message `arp` (28 bytes, built by the caller) on interface `ifindex`,
/// the link layer header made by the kernel.
pub fn send_arp_broadcast(ifindex: u32, arp: &[u8]) -> io::Result<()> {
    // SAFETY: plain socket(2) call; the result is checked.
    let fd = owned(unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            libc::c_int::from(ETH_P_ARP.to_be()),
        )
    })?;
    // SAFETY: all-zero is a valid sockaddr_ll; the fields that matter are set below.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as libc::c_ushort;
    sll.sll_protocol = ETH_P_ARP.to_be();
    sll.sll_ifindex = ifindex as libc::c_int;
    sll.sll_halen = 6;
    sll.sll_addr[..6].copy_from_slice(&[0xff; 6]);
    // SAFETY: `arp` and `sll` are valid for the lengths given.
    check_size(unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            arp.as_ptr().cast(),
            arp.len(),
            0,
            (&sll as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    })
    .map(drop)
}
