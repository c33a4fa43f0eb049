//! Socket options and calls on a descriptor that std and tokio do not offer.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use super::{check, check_size, owned, sockaddr_in};

/// `setsockopt` with an `int` value.
pub fn set_int(
    fd: RawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: passes a pointer to a c_int that lives for the call, with its size.
    check(unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    })
    .map(drop)
}

/// `setsockopt` with a byte string value (`SO_BINDTODEVICE` takes the interface name).
pub fn set_bytes(fd: RawFd, level: libc::c_int, name: libc::c_int, value: &[u8]) -> io::Result<()> {
    // SAFETY: `value` is a live buffer of the given length for the duration of the call.
    check(unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            value.as_ptr().cast(),
            value.len() as libc::socklen_t,
        )
    })
    .map(drop)
}

/// A non-blocking, close-on-exec IPv4 UDP socket, not yet bound.
pub fn udp_v4() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the result is checked and owned at once.
    owned(unsafe {
        libc::socket(
            libc::AF_INET,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            0,
        )
    })
}

/// Binds `fd` to `addr:port`.
pub fn bind_v4(fd: &OwnedFd, addr: Ipv4Addr, port: u16) -> io::Result<()> {
    let sin = sockaddr_in(addr, port);
    // SAFETY: binds to a sockaddr_in that lives for the call, with its size.
    check(unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&sin as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    })
    .map(drop)
}

/// What a non-blocking one-byte `MSG_PEEK` sees on a stream socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peek {
    /// Bytes are waiting (left in place).
    Data,
    /// The peer closed its side.
    Closed,
    /// Nothing is waiting.
    Empty,
}

/// Looks at the socket's receive queue without taking anything or waiting.
pub fn peek(fd: RawFd) -> io::Result<Peek> {
    let mut byte = 0u8;
    // SAFETY: recv into a one-byte buffer we own; MSG_PEEK leaves the data in place and
    // MSG_DONTWAIT never blocks.
    let r = check_size(unsafe {
        libc::recv(
            fd,
            (&mut byte as *mut u8).cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    });
    match r {
        Ok(0) => Ok(Peek::Closed),
        Ok(_) => Ok(Peek::Data),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(Peek::Empty),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn peek_tells_data_from_nothing_from_a_close_and_takes_nothing() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut a = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (b, _) = l.accept().unwrap();
        assert_eq!(peek(b.as_raw_fd()).unwrap(), Peek::Empty);
        a.write_all(b"x").unwrap();
        let until = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while peek(b.as_raw_fd()).unwrap() != Peek::Data && std::time::Instant::now() < until {
            std::thread::yield_now();
        }
        assert_eq!(peek(b.as_raw_fd()).unwrap(), Peek::Data, "still there");
        let mut buf = [0u8; 1];
        std::io::Read::read_exact(&mut &b, &mut buf).unwrap();
        drop(a);
        while peek(b.as_raw_fd()).unwrap() != Peek::Closed && std::time::Instant::now() < until {
            std::thread::yield_now();
        }
        assert_eq!(peek(b.as_raw_fd()).unwrap(), Peek::Closed);
    }

    #[test]
    fn a_udp_socket_binds_to_loopback_with_options() {
        let s = udp_v4().unwrap();
        set_int(s.as_raw_fd(), libc::SOL_SOCKET, libc::SO_BROADCAST, 1).unwrap();
        bind_v4(&s, Ipv4Addr::LOCALHOST, 0).unwrap();
        let std_sock = std::net::UdpSocket::from(s);
        assert!(std_sock.local_addr().unwrap().ip().is_loopback());
        assert!(std_sock.broadcast().unwrap());
    }
}
