//! The agent's system layer: the calls std and tokio do not offer, and the only place in the
//! crate where `unsafe` is allowed (the crate root denies it everywhere else). Each function
//! takes and returns safe types (descriptors, slices, addresses, `io::Result`); the modules
//! above decide what an error means.
//!
//! - [`fd`]: `read`/`write` on a raw descriptor (the TUN device).
//! - [`iface`]: interfaces by name: `ifreq` ioctls, the interface index, the TUN clone device.
//! - [`netlink`]: the `NETLINK_ROUTE` socket (open, send to the kernel, receive).
//! - [`mmsg`]: `recvmmsg`/`sendmmsg` over a batch of equal slots, socket buffer sizes.
//! - [`sock`]: socket options and calls on a descriptor: integers and bytes, bind, a
//!   non-blocking peek, a broadcast UDP socket pinned to an interface.
//! - [`ifaddrs`]: every IPv4 address of every interface (`getifaddrs`).
//! - [`pipe`]: pipes and `splice(2)` for the relays, the open-files limit.
//! - [`ring`]: the userspace stack's socket rings, anonymous maps committed page by page.
//!
//! One `unsafe` call outside this module is allowed: `Ring::storage` lends a map to a smoltcp
//! socket for as long as the socket lives, which only its owner (`crate::netstack`) can
//! promise; the two functions that call it say why it holds.
#![allow(unsafe_code)]

pub mod fd;
pub mod iface;
pub mod ifaddrs;
pub mod mmsg;
pub mod netlink;
pub mod pipe;
pub mod ring;
pub mod sock;

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{FromRawFd, OwnedFd};

/// A system call's integer result: the error of `errno` when negative.
fn check(rc: libc::c_int) -> io::Result<usize> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc as usize)
    }
}

/// A system call's `ssize_t` result: the error of `errno` when negative.
fn check_size(rc: libc::ssize_t) -> io::Result<usize> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc as usize)
    }
}

/// Takes ownership of a descriptor a call just returned (the error of `errno` when negative).
fn owned(fd: libc::c_int) -> io::Result<OwnedFd> {
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor the call returned and nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn sockaddr_in(addr: Ipv4Addr, port: u16) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(addr).to_be(),
        },
        sin_zero: [0; 8],
    }
}
