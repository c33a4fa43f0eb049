//! Network interfaces by name: the `ifreq` ioctls (MTU, flags, IPv4 address and netmask), the
//! interface index, and the TUN clone device (attach by name, offloads).

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use super::{check, owned};

const TUN_CLONE_PATH: &[u8] = b"/dev/net/tun\0";

fn ifreq(name: &str) -> libc::ifreq {
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    req
}

/// The index of interface `name`, None when there is no such interface.
pub fn ifindex(name: &str) -> Option<u32> {
    let cname = std::ffi::CString::new(name).ok()?;
    // SAFETY: `cname` is a valid NUL-terminated string.
    let idx = unsafe { libc::if_nametoindex(cname.as_ptr()) };
    (idx != 0).then_some(idx)
}

/// Opens `/dev/net/tun` (read-write, non-blocking, close-on-exec).
pub fn open_tun_clone() -> io::Result<OwnedFd> {
    // SAFETY: the path is NUL-terminated; the result is checked.
    let fd = unsafe {
        libc::open(
            TUN_CLONE_PATH.as_ptr().cast(),
            libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
        )
    };
    owned(fd)
}

/// `TUNSETIFF`: attaches `fd` (from [`open_tun_clone`]) to the device `name`, creating it,
/// with `flags` (`IFF_TUN | IFF_NO_PI | ...`).
pub fn tun_attach(fd: RawFd, name: &str, flags: libc::c_int) -> io::Result<()> {
    let mut req = ifreq(name);
    req.ifr_ifru.ifru_flags = flags as libc::c_short;
    // SAFETY: `req` is a valid ifreq for TUNSETIFF and outlives the call.
    check(unsafe { libc::ioctl(fd, libc::TUNSETIFF as libc::Ioctl, &mut req) }).map(drop)
}

/// `TUNSETOFFLOAD`: the offloads (`TUN_F_*`) the device hands over.
pub fn tun_set_offload(fd: RawFd, offloads: libc::c_uint) -> io::Result<()> {
    // SAFETY: TUNSETOFFLOAD takes its argument by value.
    check(unsafe {
        libc::ioctl(
            fd,
            libc::TUNSETOFFLOAD as libc::Ioctl,
            offloads as libc::c_ulong,
        )
    })
    .map(drop)
}

/// Which IPv4 address of an interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum V4 {
    /// Its address (`SIOC[GS]IFADDR`).
    Address,
    /// Its netmask (`SIOC[GS]IFNETMASK`).
    Netmask,
}

/// An `AF_INET` datagram socket, the handle for interface ioctls.
#[derive(Debug)]
pub struct IfSocket(OwnedFd);

impl IfSocket {
    /// Opens the socket.
    pub fn open() -> io::Result<Self> {
        // SAFETY: plain socket(2) call; the result is checked.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        owned(fd).map(IfSocket)
    }

    fn ioctl(&self, request: libc::c_ulong, req: &mut libc::ifreq) -> io::Result<()> {
        // SAFETY: `req` is a valid ifreq for these interface requests and outlives the call.
        check(unsafe { libc::ioctl(self.0.as_raw_fd(), request as libc::Ioctl, req) }).map(drop)
    }

    /// The MTU of `name`.
    pub fn mtu(&self, name: &str) -> io::Result<i32> {
        let mut req = ifreq(name);
        self.ioctl(libc::SIOCGIFMTU, &mut req)?;
        // SAFETY: SIOCGIFMTU filled the mtu member.
        Ok(unsafe { req.ifr_ifru.ifru_mtu })
    }

    /// Sets the MTU of `name`.
    pub fn set_mtu(&self, name: &str, mtu: i32) -> io::Result<()> {
        let mut req = ifreq(name);
        req.ifr_ifru.ifru_mtu = mtu;
        self.ioctl(libc::SIOCSIFMTU, &mut req)
    }

    /// The flags (`IFF_*`) of `name`.
    pub fn flags(&self, name: &str) -> io::Result<libc::c_short> {
        let mut req = ifreq(name);
        self.ioctl(libc::SIOCGIFFLAGS, &mut req)?;
        // SAFETY: SIOCGIFFLAGS filled the flags member.
        Ok(unsafe { req.ifr_ifru.ifru_flags })
    }

    /// Sets the flags of `name`.
    pub fn set_flags(&self, name: &str, flags: libc::c_short) -> io::Result<()> {
        let mut req = ifreq(name);
        req.ifr_ifru.ifru_flags = flags;
        self.ioctl(libc::SIOCSIFFLAGS, &mut req)
    }

    /// The hardware (MAC) address of `name`.
    pub fn hwaddr(&self, name: &str) -> io::Result<[u8; 6]> {
        let mut req = ifreq(name);
        self.ioctl(libc::SIOCGIFHWADDR, &mut req)?;
        // SAFETY: SIOCGIFHWADDR filled the hwaddr member.
        let sa = unsafe { req.ifr_ifru.ifru_hwaddr };
        let mut mac = [0u8; 6];
        for (m, b) in mac.iter_mut().zip(sa.sa_data.iter()) {
            *m = *b as u8;
        }
        Ok(mac)
    }

    /// An IPv4 address of `name` (`EADDRNOTAVAIL` when it has none).
    pub fn ipv4(&self, name: &str, which: V4) -> io::Result<Ipv4Addr> {
        let mut req = ifreq(name);
        let request = match which {
            V4::Address => libc::SIOCGIFADDR,
            V4::Netmask => libc::SIOCGIFNETMASK,
        };
        self.ioctl(request, &mut req)?;
        // SAFETY: the kernel filled an AF_INET sockaddr, which sockaddr_in overlays.
        let sin: libc::sockaddr_in = unsafe {
            std::ptr::read_unaligned((&req.ifr_ifru.ifru_addr as *const libc::sockaddr).cast())
        };
        Ok(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)))
    }

    /// Sets an IPv4 address of `name`.
    pub fn set_ipv4(&self, name: &str, which: V4, addr: Ipv4Addr) -> io::Result<()> {
        let mut req = ifreq(name);
        let sin = super::sockaddr_in(addr, 0);
        // SAFETY: sockaddr_in fits in the sockaddr member it is written over.
        unsafe {
            std::ptr::write_unaligned(
                (&mut req.ifr_ifru.ifru_addr as *mut libc::sockaddr).cast(),
                sin,
            );
        }
        let request = match which {
            V4::Address => libc::SIOCSIFADDR,
            V4::Netmask => libc::SIOCSIFNETMASK,
        };
        self.ioctl(request, &mut req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_has_an_index_an_mtu_and_127_0_0_1() {
        assert!(ifindex("lo").is_some());
        assert_eq!(ifindex("no-such-if0"), None);
        let s = IfSocket::open().unwrap();
        assert!(s.mtu("lo").unwrap() > 0);
        assert!(s.flags("lo").unwrap() & libc::IFF_LOOPBACK as libc::c_short != 0);
        assert_eq!(s.ipv4("lo", V4::Address).unwrap(), Ipv4Addr::LOCALHOST);
        assert_eq!(
            s.ipv4("lo", V4::Netmask).unwrap(),
            Ipv4Addr::new(255, 0, 0, 0)
        );
        assert!(s.mtu("no-such-if0").is_err());
    }
}
