//! The one seam through which the route executor binds and accepts on the tunnel side.
//!
//! The tunnel ends either in the kernel (a TUN device: the listeners are ordinary tokio sockets
//! on the tunnel IP) or in the agent's own smoltcp stack (`crate::netstack`, no device and no
//! privilege). [`Stack`] binds in either; what it hands out — a [`Listener`], the [`Stream`]s it
//! accepts, a [`Datagram`] socket — is what the L4 relays (`crate::forward`), the HTTP proxy
//! (`crate::http`) and the management API relay are written against, once. LAN-side sockets
//! (connects to route targets, the companion) stay ordinary kernel sockets in both modes.
//!
//! Why enums and not a generic `S: Stack` parameter: the mode is chosen at run time
//! (`GATELET_NETSTACK=auto` decides after trying the TUN device), so a generic executor would
//! still need both instantiations in the binary — the relays, the proxy (its request loop,
//! body copies, upgrade relay) and the API relay compiled twice, for a binary that must stay
//! small (the container image must stay ≤ 6 MB; it is 5.43 MB). One `match` per I/O call on a
//! two-variant enum costs a predictable branch; the code exists once. Where the kernel mode
//! has a faster path (splice and readiness-based copies between two kernel sockets in
//! `forward::tcp`), the caller asks [`Stream::as_kernel`] and takes it.
//!
//! Bind errors keep their clear reasons ([`bind_reason`]): address in use, address not
//! available, and a wildcard address refused (a listener there would expose the routes on
//! the LAN).

#![deny(unsafe_code)]

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use socket2::{SockRef, TcpKeepalive};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::netstack::{self, Netstack};

/// TCP keepalive on the tunnel and LAN sides: idle time before the first probe.
pub const KEEPALIVE_IDLE: Duration = Duration::from_secs(60);
/// TCP keepalive: time between probes.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// TCP keepalive: unanswered probes before the kernel drops the connection.
pub const KEEPALIVE_PROBES: u32 = 6;

/// Where the tunnel's sockets live. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub enum Stack {
    /// Kernel sockets on the tunnel IP (TUN mode).
    #[default]
    Kernel,
    /// Sockets of the agent's smoltcp stack (userspace mode).
    Userspace(Netstack),
}

impl Stack {
    /// `kernel` or `userspace`, for logs and status.
    pub fn name(&self) -> &'static str {
        match self {
            Stack::Kernel => "kernel",
            Stack::Userspace(_) => "userspace",
        }
    }

    /// A TCP listener on `addr`; the error says why in words ([`bind_reason`]).
    pub fn bind_tcp(&self, addr: SocketAddr) -> Result<Listener, String> {
        refuse_wildcard(addr)?;
        match self {
            Stack::Kernel => {
                let l = std::net::TcpListener::bind(addr).map_err(|e| bind_reason(addr, &e))?;
                l.set_nonblocking(true)
                    .and_then(|()| tokio::net::TcpListener::from_std(l))
                    .map(Listener::Kernel)
                    .map_err(|e| bind_reason(addr, &e))
            }
            Stack::Userspace(n) => n
                .bind_tcp(addr)
                .map(Listener::Userspace)
                .map_err(|e| bind_reason(addr, &e)),
        }
    }

    /// A UDP socket on `addr` (as [`Stack::bind_tcp`]).
    pub fn bind_udp(&self, addr: SocketAddr) -> Result<Datagram, String> {
        refuse_wildcard(addr)?;
        match self {
            Stack::Kernel => {
                let s = std::net::UdpSocket::bind(addr).map_err(|e| bind_reason(addr, &e))?;
                s.set_nonblocking(true)
                    .and_then(|()| tokio::net::UdpSocket::from_std(s))
                    .map(Datagram::Kernel)
                    .map_err(|e| bind_reason(addr, &e))
            }
            Stack::Userspace(n) => n
                .bind_udp(addr)
                .map(Datagram::Userspace)
                .map_err(|e| bind_reason(addr, &e)),
        }
    }
}

impl Stack {
    /// A TCP connection INTO the tunnel to `to` within `timeout` (the egress routes): in
    /// kernel mode an ordinary socket, which the routing table sends through the TUN device;
    /// in userspace mode a connection of the smoltcp stack from the tunnel address.
    pub async fn connect_tcp(&self, to: SocketAddr, timeout: Duration) -> io::Result<Stream> {
        let attempt = async {
            match self {
                Stack::Kernel => tokio::net::TcpStream::connect(to).await.map(Stream::Kernel),
                Stack::Userspace(n) => n
                    .connect_tcp(to)
                    .await
                    .map(|s| Stream::Userspace(Box::new(s))),
            }
        };
        match tokio::time::timeout(timeout, attempt).await {
            Ok(r) => r,
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no answer within {} ms", timeout.as_millis()),
            )),
        }
    }
}

/// Why binding `addr` failed, in words.
pub fn bind_reason(addr: SocketAddr, e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::AddrInUse => format!("address in use: {addr} is taken by another socket"),
        io::ErrorKind::AddrNotAvailable => {
            format!(
                "address not available: {} is not configured (yet)",
                addr.ip()
            )
        }
        io::ErrorKind::PermissionDenied => format!("permission denied binding {addr}"),
        _ => format!("cannot bind {addr}: {e}"),
    }
}

/// Listeners belong on the tunnel IP only: a wildcard address would expose routes on the LAN.
pub fn refuse_wildcard(addr: SocketAddr) -> Result<(), String> {
    if addr.ip().is_unspecified() {
        return Err(format!(
            "refusing to listen on the wildcard address {addr}: set GC_TUNNEL_IP to the tunnel IP"
        ));
    }
    Ok(())
}

/// A listening TCP port on the tunnel side.
#[derive(Debug)]
pub enum Listener {
    /// A kernel listener.
    Kernel(tokio::net::TcpListener),
    /// A listener of the smoltcp stack.
    Userspace(netstack::TcpListener),
}

impl From<tokio::net::TcpListener> for Listener {
    fn from(l: tokio::net::TcpListener) -> Self {
        Listener::Kernel(l)
    }
}

impl Listener {
    /// The next connection and its peer.
    pub fn poll_accept(&self, cx: &mut Context<'_>) -> Poll<io::Result<(Stream, SocketAddr)>> {
        match self {
            Listener::Kernel(l) => l
                .poll_accept(cx)
                .map(|r| r.map(|(s, a)| (Stream::Kernel(s), a))),
            Listener::Userspace(l) => l
                .poll_accept(cx)
                .map(|r| r.map(|(s, a)| (Stream::Userspace(Box::new(s)), a))),
        }
    }

    /// The next connection and its peer.
    pub async fn accept(&self) -> io::Result<(Stream, SocketAddr)> {
        std::future::poll_fn(|cx| self.poll_accept(cx)).await
    }

    /// Sets `TCP_NODELAY` and TCP keepalive ([`set_keepalive`]) on the listening socket, so
    /// that every connection it accepts starts with them (Linux copies a listener's socket
    /// options into the sockets it accepts): per route once, not per connection. The smoltcp
    /// stack's connections need neither.
    pub fn set_stream_options(&self) -> io::Result<()> {
        match self {
            Listener::Kernel(l) => {
                let sock = SockRef::from(l);
                sock.set_tcp_nodelay(true)?;
                sock.set_tcp_keepalive(&keepalive())
            }
            Listener::Userspace(_) => Ok(()),
        }
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        match self {
            Listener::Kernel(l) => l.local_addr(),
            Listener::Userspace(l) => l.local_addr(),
        }
    }
}

/// An accepted connection on the tunnel side: AsyncRead + AsyncWrite, with `poll_shutdown`
/// sending our FIN while reading goes on (half-close).
#[derive(Debug)]
pub enum Stream {
    /// A kernel socket.
    Kernel(tokio::net::TcpStream),
    /// A connection of the smoltcp stack (boxed: it is larger than a kernel socket, and every
    /// proxy and relay task holds a `Stream`; kernel mode keeps its small tasks).
    Userspace(Box<netstack::TcpStream>),
}

impl From<tokio::net::TcpStream> for Stream {
    fn from(s: tokio::net::TcpStream) -> Self {
        Stream::Kernel(s)
    }
}

impl Stream {
    /// The kernel socket, when it is one (for the kernel-to-kernel fast paths).
    pub fn as_kernel(&self) -> Option<&tokio::net::TcpStream> {
        match self {
            Stream::Kernel(s) => Some(s),
            Stream::Userspace(_) => None,
        }
    }

    /// The peer (the hub-side client).
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        match self {
            Stream::Kernel(s) => s.peer_addr(),
            Stream::Userspace(s) => s.peer_addr(),
        }
    }

    /// The local address (tunnel IP and the listening port).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        match self {
            Stream::Kernel(s) => s.local_addr(),
            Stream::Userspace(s) => s.local_addr(),
        }
    }

    /// Ready when a read would not wait (data, end of stream or an error), consuming nothing.
    pub fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            Stream::Kernel(s) => s.poll_read_ready(cx),
            Stream::Userspace(s) => s.poll_read_ready(cx),
        }
    }

    /// Waits until a read would not wait (see [`Stream::poll_read_ready`]).
    pub async fn readable(&self) -> io::Result<()> {
        std::future::poll_fn(|cx| self.poll_read_ready(cx)).await
    }

    /// Sends our FIN now; reading goes on.
    pub fn shutdown_write(&self) {
        match self {
            Stream::Kernel(s) => shutdown_write(s),
            Stream::Userspace(s) => s.shutdown_write(),
        }
    }

    /// Aborts the connection with a reset (SO_LINGER 0 on a kernel socket).
    pub fn reset(self) {
        match self {
            Stream::Kernel(s) => reset(s),
            Stream::Userspace(s) => (*s).reset(),
        }
    }

    /// Nagle off (kernel sockets; the smoltcp stack sends at once anyway).
    pub fn set_nodelay(&self, on: bool) -> io::Result<()> {
        match self {
            Stream::Kernel(s) => s.set_nodelay(on),
            Stream::Userspace(_) => Ok(()),
        }
    }

    /// TCP keepalive ([`set_keepalive`]) on a kernel socket; the smoltcp stack's connections
    /// are bounded by the relays' idle timeouts instead.
    pub fn set_keepalive(&self) -> io::Result<()> {
        match self {
            Stream::Kernel(s) => set_keepalive(s),
            Stream::Userspace(_) => Ok(()),
        }
    }

    /// The read and write sides, borrowed, to be used at the same time (as
    /// `tokio::net::TcpStream::split`).
    pub fn split(&mut self) -> (ReadHalf<'_>, WriteHalf<'_>) {
        match self {
            Stream::Kernel(s) => {
                let (r, w) = s.split();
                (ReadHalf::Kernel(r), WriteHalf::Kernel(w))
            }
            Stream::Userspace(s) => {
                let (r, w) = tokio::io::split(&mut **s);
                (ReadHalf::Userspace(r), WriteHalf::Userspace(w))
            }
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Kernel(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Userspace(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

/// `AsyncWrite` for an enum whose `Kernel` and `Userspace` variants both implement it: each call
/// goes to the variant (one definition for [`Stream`] and [`WriteHalf`]).
macro_rules! async_write_by_variant {
    ($t:ty, $e:ident) => {
        impl AsyncWrite for $t {
            fn poll_write(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &[u8],
            ) -> Poll<io::Result<usize>> {
                match self.get_mut() {
                    $e::Kernel(s) => Pin::new(s).poll_write(cx, buf),
                    $e::Userspace(s) => Pin::new(s).poll_write(cx, buf),
                }
            }

            fn poll_write_vectored(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                bufs: &[io::IoSlice<'_>],
            ) -> Poll<io::Result<usize>> {
                match self.get_mut() {
                    $e::Kernel(s) => Pin::new(s).poll_write_vectored(cx, bufs),
                    $e::Userspace(s) => Pin::new(s).poll_write_vectored(cx, bufs),
                }
            }

            fn is_write_vectored(&self) -> bool {
                match self {
                    $e::Kernel(s) => s.is_write_vectored(),
                    $e::Userspace(s) => s.is_write_vectored(),
                }
            }

            fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    $e::Kernel(s) => Pin::new(s).poll_flush(cx),
                    $e::Userspace(s) => Pin::new(s).poll_flush(cx),
                }
            }

            fn poll_shutdown(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
            ) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    $e::Kernel(s) => Pin::new(s).poll_shutdown(cx),
                    $e::Userspace(s) => Pin::new(s).poll_shutdown(cx),
                }
            }
        }
    };
}

async_write_by_variant!(Stream, Stream);

/// The read side of [`Stream::split`].
#[derive(Debug)]
pub enum ReadHalf<'a> {
    /// Of a kernel socket.
    Kernel(tokio::net::tcp::ReadHalf<'a>),
    /// Of a smoltcp connection.
    Userspace(tokio::io::ReadHalf<&'a mut netstack::TcpStream>),
}

/// The write side of [`Stream::split`].
#[derive(Debug)]
pub enum WriteHalf<'a> {
    /// Of a kernel socket.
    Kernel(tokio::net::tcp::WriteHalf<'a>),
    /// Of a smoltcp connection.
    Userspace(tokio::io::WriteHalf<&'a mut netstack::TcpStream>),
}

impl AsyncRead for ReadHalf<'_> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ReadHalf::Kernel(s) => Pin::new(s).poll_read(cx, buf),
            ReadHalf::Userspace(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

async_write_by_variant!(WriteHalf<'_>, WriteHalf);

/// A bound UDP port on the tunnel side. Shared by reference (`&self` methods).
#[derive(Debug)]
pub enum Datagram {
    /// A kernel socket.
    Kernel(tokio::net::UdpSocket),
    /// A socket of the smoltcp stack.
    Userspace(netstack::UdpSocket),
}

impl From<tokio::net::UdpSocket> for Datagram {
    fn from(s: tokio::net::UdpSocket) -> Self {
        Datagram::Kernel(s)
    }
}

impl Datagram {
    /// The next datagram into `buf` and its sender; a datagram longer than `buf` is cut.
    pub fn poll_recv_from(
        &self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<SocketAddr>> {
        match self {
            Datagram::Kernel(s) => s.poll_recv_from(cx, buf),
            Datagram::Userspace(s) => s.poll_recv_from(cx, buf),
        }
    }

    /// The next datagram and its sender.
    pub async fn recv_from(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        let mut rb = ReadBuf::new(buf);
        let from = std::future::poll_fn(|cx| self.poll_recv_from(cx, &mut rb)).await?;
        Ok((rb.filled().len(), from))
    }

    /// Sends `buf` to `target`, waiting while the send queue is full.
    pub fn poll_send_to(
        &self,
        cx: &mut Context<'_>,
        buf: &[u8],
        target: SocketAddr,
    ) -> Poll<io::Result<usize>> {
        match self {
            Datagram::Kernel(s) => s.poll_send_to(cx, buf, target),
            Datagram::Userspace(s) => s.poll_send_to(cx, buf, target),
        }
    }

    /// Sends `buf` to `target`.
    pub async fn send_to(&self, buf: &[u8], target: SocketAddr) -> io::Result<usize> {
        std::future::poll_fn(|cx| self.poll_send_to(cx, buf, target)).await
    }

    /// The address it is bound to.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        match self {
            Datagram::Kernel(s) => s.local_addr(),
            Datagram::Userspace(s) => s.local_addr(),
        }
    }
}

/// Closes a kernel stream with a reset (SO_LINGER 0) instead of a FIN.
pub fn reset(stream: tokio::net::TcpStream) {
    let _ = SockRef::from(&stream).set_linger(Some(Duration::ZERO));
    drop(stream);
}

/// Sends a kernel stream's FIN now (`shutdown(SHUT_WR)`); reading goes on.
pub fn shutdown_write(stream: &tokio::net::TcpStream) {
    let _ = SockRef::from(stream).shutdown(std::net::Shutdown::Write);
}

/// Turns TCP keepalive on for a kernel stream with [`KEEPALIVE_IDLE`],
/// [`KEEPALIVE_INTERVAL`] and [`KEEPALIVE_PROBES`].
pub fn set_keepalive(stream: &tokio::net::TcpStream) -> io::Result<()> {
    SockRef::from(stream).set_tcp_keepalive(&keepalive())
}

fn keepalive() -> TcpKeepalive {
    TcpKeepalive::new()
        .with_time(KEEPALIVE_IDLE)
        .with_interval(KEEPALIVE_INTERVAL)
        .with_retries(KEEPALIVE_PROBES)
}

#[cfg(test)]
mod tests;
