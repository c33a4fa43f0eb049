//! The companion's system layer: the calls std does not offer, and the only module of the crate
//! allowed `unsafe` (the crate root denies it everywhere else). Where nix covers a call it is
//! used (statvfs, access, uname, getifaddrs, signal); the raw `libc` calls left are the LAN
//! sweep's non-blocking connect, `SO_ERROR` and `poll(2)` over a borrowed slice of descriptors
//! (nix's `PollFd` ties each entry to a borrow, which the sweep's table of probes cannot hold),
//! and `sysconf`.
#![allow(unsafe_code)]

use std::io;
use std::net::SocketAddrV4;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// Readable (`POLLIN`).
pub const READABLE: i16 = libc::POLLIN;
/// Writable (`POLLOUT`): a connect finished, one way or the other.
pub const WRITABLE: i16 = libc::POLLOUT;

/// Starts a non-blocking connect to `addr`. The descriptor is closed on drop.
pub fn connect_start(addr: SocketAddrV4) -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the result is checked before use.
    let fd = unsafe {
        libc::socket(
            libc::AF_INET,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor owned by nobody else.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: addr.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*addr.ip()).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: `sin` is a valid sockaddr_in of the length passed.
    let r = unsafe {
        libc::connect(
            owned.as_raw_fd(),
            &sin as *const libc::sockaddr_in as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if r == 0 {
        return Ok(owned);
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EINPROGRESS) {
        Ok(owned)
    } else {
        Err(e)
    }
}

/// The pending error of a socket (`SO_ERROR`): None when the connect succeeded.
pub fn socket_error(fd: RawFd) -> io::Result<Option<io::Error>> {
    let mut err: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `err` and `len` are valid out pointers of the sizes given.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ERROR,
            &mut err as *mut libc::c_int as *mut libc::c_void,
            &mut len,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((err != 0).then(|| io::Error::from_raw_os_error(err)))
}

/// One descriptor to wait on.
#[derive(Debug, Clone, Copy)]
#[repr(transparent)]
pub struct PollFd(libc::pollfd);

impl PollFd {
    /// Waits for `events` on `fd`.
    pub fn new(fd: RawFd, events: i16) -> PollFd {
        PollFd(libc::pollfd {
            fd,
            events,
            revents: 0,
        })
    }

    /// Whether anything happened (including errors and hang-ups).
    pub fn ready(&self) -> bool {
        self.0.revents != 0
    }
}

/// `poll(2)`: waits at most `timeout_ms` for any of `fds`. EINTR counts as nothing ready.
pub fn poll(fds: &mut [PollFd], timeout_ms: i32) -> io::Result<usize> {
    // SAFETY: PollFd is repr-compatible (a newtype of libc::pollfd), the slice is valid for
    // its length.
    let r = unsafe {
        libc::poll(
            fds.as_mut_ptr() as *mut libc::pollfd,
            fds.len() as libc::nfds_t,
            timeout_ms,
        )
    };
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::Interrupted {
            return Ok(0);
        }
        return Err(e);
    }
    Ok(r as usize)
}

/// The kernel's release (`uname -r`).
pub fn kernel_release() -> Option<String> {
    let u = nix::sys::utsname::uname().ok()?;
    Some(u.release().to_string_lossy().into_owned())
}

/// This box's host name (`uname -n`).
pub fn node_name() -> Option<String> {
    let u = nix::sys::utsname::uname().ok()?;
    Some(u.nodename().to_string_lossy().into_owned())
}

/// Processors online (`sysconf(_SC_NPROCESSORS_ONLN)`): the machine's, not this process's
/// affinity or a container's CPU quota.
pub fn cpus_online() -> Option<u32> {
    // SAFETY: sysconf reads a system value; no memory is involved.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    u32::try_from(n).ok().filter(|n| *n > 0)
}

/// Sizes of the file system holding `path`, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FsSpace {
    /// All of it.
    pub total: u64,
    /// What an unprivileged user may still write.
    pub available: u64,
    /// In use.
    pub used: u64,
    /// Mounted read-only.
    pub read_only: bool,
}

/// `statvfs(2)` of `path`.
// The field types differ by target (u32 on 32-bit glibc), hence the casts.
#[allow(clippy::unnecessary_cast)]
pub fn fs_space(path: &std::path::Path) -> Option<FsSpace> {
    let st = nix::sys::statvfs::statvfs(path).ok()?;
    let frsize = st.fragment_size() as u64;
    Some(FsSpace {
        total: (st.blocks() as u64).saturating_mul(frsize),
        available: (st.blocks_available() as u64).saturating_mul(frsize),
        used: (st.blocks() as u64)
            .saturating_sub(st.blocks_free() as u64)
            .saturating_mul(frsize),
        read_only: st.flags().contains(nix::sys::statvfs::FsFlags::ST_RDONLY),
    })
}

/// Whether this process may write in `path` (`access(W_OK)`), without writing.
pub fn may_write(path: &std::path::Path) -> bool {
    nix::unistd::access(path, nix::unistd::AccessFlags::W_OK).is_ok()
}

/// One IPv4 address of an interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceV4 {
    /// The interface's name.
    pub name: String,
    /// The address.
    pub addr: std::net::Ipv4Addr,
    /// Its prefix length (32 without a netmask).
    pub prefix: u8,
    /// A loopback interface.
    pub loopback: bool,
}

/// Every IPv4 address of every interface (`getifaddrs(3)`), at most `max` of them; empty when
/// the call fails.
pub fn interfaces_v4(max: usize) -> Vec<InterfaceV4> {
    let Ok(list) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    list.filter_map(|ifa| {
        let addr = ifa.address.as_ref()?.as_sockaddr_in()?.ip();
        let prefix = ifa
            .netmask
            .as_ref()
            .and_then(|m| m.as_sockaddr_in())
            .map_or(32, |m| u32::from(m.ip()).count_ones() as u8);
        Some(InterfaceV4 {
            name: ifa.interface_name,
            addr,
            prefix,
            loopback: ifa
                .flags
                .contains(nix::net::if_::InterfaceFlags::IFF_LOOPBACK),
        })
    })
    .take(max)
    .collect()
}

/// Calls `on_signal` on SIGTERM and SIGINT, and ignores SIGPIPE (a peer that hangs up is an
/// error from `write`, not the end of the process). `on_signal` runs in signal context: it may
/// only do async-signal-safe things, such as storing to an atomic.
pub fn on_termination(on_signal: extern "C" fn(libc::c_int)) -> nix::Result<()> {
    use nix::sys::signal::{signal, SigHandler, Signal};
    // SAFETY: the handler is the caller's contract (async-signal-safe, documented above);
    // SIG_IGN needs nothing.
    unsafe {
        signal(Signal::SIGTERM, SigHandler::Handler(on_signal))?;
        signal(Signal::SIGINT, SigHandler::Handler(on_signal))?;
        signal(Signal::SIGPIPE, SigHandler::SigIgn)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_is_listed_with_its_prefix_and_flag() {
        let all = interfaces_v4(4096);
        let lo = all
            .iter()
            .find(|i| i.addr == std::net::Ipv4Addr::LOCALHOST)
            .expect("127.0.0.1 in getifaddrs");
        assert_eq!((lo.prefix, lo.loopback), (8, true), "{lo:?}");
        assert!(interfaces_v4(0).is_empty());
    }

    #[test]
    fn the_root_file_system_has_a_size_and_the_kernel_a_release() {
        let root = fs_space(std::path::Path::new("/")).expect("statvfs /");
        assert!(root.total > 0 && root.used <= root.total && root.available <= root.total);
        assert!(fs_space(std::path::Path::new("/no/such/path")).is_none());
        assert!(!kernel_release().unwrap_or_default().is_empty());
        assert!(cpus_online().is_some_and(|n| n >= 1));
        assert!(may_write(tempfile::tempdir().unwrap().path()));
    }
}
