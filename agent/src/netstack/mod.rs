//! The userspace network stack (smoltcp) that terminates the tunnel when no TUN device can be
//! used (`GATELET_NETSTACK=userspace`): the decrypted packets for the tunnel IP go into a
//! smoltcp interface inside the agent, and the relays, the HTTP proxy and the API relay accept
//! on its sockets through the handles below, exactly as they do on kernel sockets.
//!
//! SKELETON: the signatures below are the contract between the route executor (`crate::stack`)
//! and this module; the bodies are being written.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// How the stack is set up.
#[derive(Debug, Clone)]
pub struct NetstackConfig {
    /// The tunnel IP (`WG_ADDRESS`), the stack's only address.
    pub address: Ipv4Addr,
    /// Its prefix length.
    pub prefix_len: u8,
    /// The tunnel MTU: the largest IP packet the stack sends.
    pub mtu: u16,
}

/// The stack: a cheap handle (clone it); shared by the data path (packets in and out) and the
/// relays (sockets).
#[derive(Debug, Clone)]
pub struct Netstack {
    _private: (),
}

impl Netstack {
    /// A stack with the address of `config` and no sockets.
    pub fn new(config: NetstackConfig) -> Self {
        let _ = config;
        todo!("netstack")
    }

    /// A TCP listener on `addr` (the stack's address and a port). Fails with `AddrInUse` when
    /// the port already has a listener, `AddrNotAvailable` for another address.
    pub fn bind_tcp(&self, addr: SocketAddr) -> io::Result<TcpListener> {
        let _ = addr;
        todo!("netstack")
    }

    /// A UDP socket on `addr` (as [`Netstack::bind_tcp`]).
    pub fn bind_udp(&self, addr: SocketAddr) -> io::Result<UdpSocket> {
        let _ = addr;
        todo!("netstack")
    }
}

/// A listening TCP port of the stack; dropping it stops accepting (connections already
/// accepted are not affected; connections not yet accepted are reset).
#[derive(Debug)]
pub struct TcpListener {
    _private: (),
}

impl TcpListener {
    /// The next established connection and its peer.
    pub fn poll_accept(&self, cx: &mut Context<'_>) -> Poll<io::Result<(TcpStream, SocketAddr)>> {
        let _ = cx;
        todo!("netstack")
    }

    /// The next established connection and its peer.
    pub async fn accept(&self) -> io::Result<(TcpStream, SocketAddr)> {
        std::future::poll_fn(|cx| self.poll_accept(cx)).await
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        todo!("netstack")
    }
}

/// An accepted TCP connection of the stack. Reads return 0 at the peer's FIN;
/// `poll_shutdown` sends our FIN (half-close: reading goes on); dropping it closes gracefully
/// (FIN), [`TcpStream::reset`] aborts (RST).
#[derive(Debug)]
pub struct TcpStream {
    _private: (),
}

impl TcpStream {
    /// The peer (the hub-side client).
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        todo!("netstack")
    }

    /// The local address (tunnel IP and the listening port).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        todo!("netstack")
    }

    /// Ready when a read would not wait (data, FIN or an error), without consuming anything.
    pub fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let _ = cx;
        todo!("netstack")
    }

    /// Waits until a read would not wait (see [`TcpStream::poll_read_ready`]).
    pub async fn readable(&self) -> io::Result<()> {
        std::future::poll_fn(|cx| self.poll_read_ready(cx)).await
    }

    /// Sends our FIN now (reading goes on).
    pub fn shutdown_write(&self) {
        todo!("netstack")
    }

    /// Aborts the connection with a RST.
    pub fn reset(self) {
        todo!("netstack")
    }
}

impl AsyncRead for TcpStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let _ = (cx, buf);
        todo!("netstack")
    }
}

impl AsyncWrite for TcpStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let _ = (cx, buf);
        todo!("netstack")
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let _ = cx;
        todo!("netstack")
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let _ = cx;
        todo!("netstack")
    }
}

/// A bound UDP port of the stack. Shared by reference (`&self` methods), like tokio's.
#[derive(Debug)]
pub struct UdpSocket {
    _private: (),
}

impl UdpSocket {
    /// The next datagram and its sender; a datagram longer than `buf` is cut.
    pub fn poll_recv_from(
        &self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<SocketAddr>> {
        let _ = (cx, buf);
        todo!("netstack")
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
        let _ = (cx, buf, target);
        todo!("netstack")
    }

    /// Sends `buf` to `target`.
    pub async fn send_to(&self, buf: &[u8], target: SocketAddr) -> io::Result<usize> {
        std::future::poll_fn(|cx| self.poll_send_to(cx, buf, target)).await
    }

    /// The address it is bound to.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        todo!("netstack")
    }
}
