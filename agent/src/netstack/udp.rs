//! The UDP handle the relays use: a bound port of the tunnel address.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::task::{Context, Poll};

use smoltcp::iface::SocketHandle;
use smoltcp::socket::udp::SendError;
use smoltcp::wire::{IpAddress, IpEndpoint};
use tokio::io::ReadBuf;

use super::stack::Shared;

/// IPv4 and UDP headers: what a datagram adds to its payload.
const HEADERS: usize = 28;

/// A bound UDP port of the stack. Shared by reference (`&self` methods), like tokio's.
#[derive(Debug)]
pub struct UdpSocket {
    shared: Arc<Shared>,
    handle: SocketHandle,
    local: SocketAddr,
}

impl UdpSocket {
    pub(super) fn new(shared: Arc<Shared>, handle: SocketHandle, local: SocketAddr) -> Self {
        UdpSocket {
            shared,
            handle,
            local,
        }
    }

    /// The next datagram and its sender; a datagram longer than `buf` is cut.
    pub fn poll_recv_from(
        &self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<SocketAddr>> {
        self.shared.with(|s| {
            let sock = s.udp_socket(self.handle);
            match sock.recv() {
                Ok((data, meta)) => {
                    let n = data.len().min(buf.remaining());
                    buf.put_slice(&data[..n]);
                    let IpAddress::Ipv4(ip) = meta.endpoint.addr;
                    Poll::Ready(Ok(SocketAddr::new(ip.into(), meta.endpoint.port)))
                }
                Err(_exhausted) => {
                    sock.register_recv_waker(cx.waker());
                    Poll::Pending
                }
            }
        })
    }

    /// The next datagram and its sender.
    pub async fn recv_from(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        let mut rb = ReadBuf::new(buf);
        let from = std::future::poll_fn(|cx| self.poll_recv_from(cx, &mut rb)).await?;
        Ok((rb.filled().len(), from))
    }

    /// Sends `buf` to `target`, waiting while the send queue is full. A datagram that does
    /// not fit in one tunnel packet is dropped (as a lost packet: the stack does not
    /// fragment).
    pub fn poll_send_to(
        &self,
        cx: &mut Context<'_>,
        buf: &[u8],
        target: SocketAddr,
    ) -> Poll<io::Result<usize>> {
        let IpAddr::V4(ip) = target.ip() else {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::AddrNotAvailable,
                "the tunnel stack speaks IPv4 only",
            )));
        };
        self.shared.with(|s| {
            if buf.len() + HEADERS > usize::from(s.config.mtu) {
                tracing::debug!(len = buf.len(), "netstack dropped a datagram over the MTU");
                return Poll::Ready(Ok(buf.len()));
            }
            let sock = s.udp_socket(self.handle);
            match sock.send_slice(buf, IpEndpoint::new(ip.into(), target.port())) {
                Ok(()) => {
                    s.want_poll();
                    Poll::Ready(Ok(buf.len()))
                }
                Err(SendError::BufferFull) => {
                    sock.register_send_waker(cx.waker());
                    Poll::Pending
                }
                Err(SendError::Unaddressable) => Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("cannot send to {target}"),
                ))),
            }
        })
    }

    /// Sends `buf` to `target`.
    pub async fn send_to(&self, buf: &[u8], target: SocketAddr) -> io::Result<usize> {
        std::future::poll_fn(|cx| self.poll_send_to(cx, buf, target)).await
    }

    /// The address it is bound to.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }
}

impl Drop for UdpSocket {
    fn drop(&mut self) {
        let port = self.local.port();
        self.shared.with(|s| s.remove_udp(port));
    }
}
