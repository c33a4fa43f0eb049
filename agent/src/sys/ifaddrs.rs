//! Every IPv4 address of every interface of this network namespace (`getifaddrs(3)`).

use std::io;
use std::net::Ipv4Addr;

/// One IPv4 address of an interface, with its netmask and flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IfAddrV4 {
    /// The interface's name.
    pub name: String,
    /// The address.
    pub addr: Ipv4Addr,
    /// Its netmask.
    pub netmask: Ipv4Addr,
    /// The interface's flags (`IFF_*`).
    pub flags: libc::c_int,
}

fn v4(sa: *const libc::sockaddr) -> Option<Ipv4Addr> {
    if sa.is_null() {
        return None;
    }
    // SAFETY: getifaddrs hands out valid sockaddrs; the family says how to read it.
    unsafe {
        if libc::c_int::from((*sa).sa_family) != libc::AF_INET {
            return None;
        }
        let sin = &*(sa as *const libc::sockaddr_in);
        Some(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)))
    }
}

/// The IPv4 addresses (with a netmask) of every interface, at most `max`.
pub fn list(max: usize) -> io::Result<Vec<IfAddrV4>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we free below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut out = Vec::new();
    let mut cur = head;
    while !cur.is_null() && out.len() < max {
        // SAFETY: `cur` is a node of the list getifaddrs returned, not yet freed.
        let ifa = unsafe { &*cur };
        if let (Some(addr), Some(netmask)) = (v4(ifa.ifa_addr), v4(ifa.ifa_netmask)) {
            if !ifa.ifa_name.is_null() {
                // SAFETY: ifa_name is a NUL-terminated string owned by the list.
                let name = unsafe { std::ffi::CStr::from_ptr(ifa.ifa_name) }
                    .to_string_lossy()
                    .into_owned();
                out.push(IfAddrV4 {
                    name,
                    addr,
                    netmask,
                    flags: ifa.ifa_flags as libc::c_int,
                });
            }
        }
        cur = ifa.ifa_next;
    }
    // SAFETY: frees the list getifaddrs allocated, once.
    unsafe { libc::freeifaddrs(head) };
    Ok(out)
}
