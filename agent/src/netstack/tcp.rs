//! The TCP handles the relays use: a listener on a port of the tunnel address, and accepted
//! connections with half-close (`poll_shutdown` sends our FIN; reading goes on).

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use smoltcp::iface::SocketHandle;
use smoltcp::socket::tcp::{RecvError, State};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::stack::{closed_error, Shared};

/// A listening TCP port of the stack; dropping it stops accepting (connections already
/// accepted are not affected; connections not yet accepted are reset).
#[derive(Debug)]
pub struct TcpListener {
    shared: Arc<Shared>,
    local: SocketAddr,
}

impl TcpListener {
    pub(super) fn new(shared: Arc<Shared>, local: SocketAddr) -> Self {
        TcpListener { shared, local }
    }

    /// The next established connection and its peer.
    pub fn poll_accept(&self, cx: &mut Context<'_>) -> Poll<io::Result<(TcpStream, SocketAddr)>> {
        let port = self.local.port();
        match self.shared.with(|s| s.accept(port, cx.waker())) {
            Some((handle, peer)) => Poll::Ready(Ok((
                TcpStream {
                    shared: self.shared.clone(),
                    handle,
                    local: self.local,
                    peer,
                    reset: false,
                },
                peer,
            ))),
            None => Poll::Pending,
        }
    }

    /// The next established connection and its peer.
    pub async fn accept(&self) -> io::Result<(TcpStream, SocketAddr)> {
        std::future::poll_fn(|cx| self.poll_accept(cx)).await
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }
}

impl Drop for TcpListener {
    fn drop(&mut self) {
        let port = self.local.port();
        self.shared.with(|s| s.remove_listener(port));
    }
}

/// An outbound connection of the stack while its handshake goes on
/// ([`super::Netstack::start_connect`]): a future of the established [`TcpStream`]; dropping
/// it closes the connection.
#[derive(Debug)]
pub struct Connecting {
    stream: Option<TcpStream>,
}

impl Connecting {
    pub(super) fn new(
        shared: Arc<Shared>,
        handle: SocketHandle,
        local: SocketAddr,
        peer: SocketAddr,
    ) -> Self {
        Connecting {
            stream: Some(TcpStream {
                shared,
                handle,
                local,
                peer,
                reset: false,
            }),
        }
    }

    /// The local address (tunnel IP and the ephemeral port).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.stream.as_ref().map(|s| s.local)
    }
}

impl std::future::Future for Connecting {
    type Output = io::Result<TcpStream>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Some(s) = self.stream.as_ref() else {
            return Poll::Ready(Err(io::Error::other("polled after completion")));
        };
        let h = s.handle;
        match s.shared.with(|i| i.poll_connected(h, cx.waker())) {
            Poll::Ready(Ok(())) => Poll::Ready(Ok(self.stream.take().expect("checked"))),
            // The stream's drop frees the socket.
            Poll::Ready(Err(e)) => {
                self.stream = None;
                Poll::Ready(Err(e))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

/// A TCP connection of the stack (accepted, or opened by [`super::Netstack::connect_tcp`]). Reads return 0 at the peer's FIN;
/// `poll_shutdown` sends our FIN (half-close: reading goes on); dropping it closes gracefully
/// (FIN), [`TcpStream::reset`] aborts (RST).
#[derive(Debug)]
pub struct TcpStream {
    shared: Arc<Shared>,
    handle: SocketHandle,
    local: SocketAddr,
    peer: SocketAddr,
    reset: bool,
}

impl TcpStream {
    /// The peer (the hub-side client).
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.peer)
    }

    /// The local address (tunnel IP and the listening port).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }

    /// Ready when a read would not wait (data, FIN or an error), without consuming anything.
    pub fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.shared.with(|s| {
            let sock = s.tcp(self.handle);
            if sock.can_recv() || !sock.may_recv() {
                Poll::Ready(Ok(()))
            } else {
                sock.register_recv_waker(cx.waker());
                Poll::Pending
            }
        })
    }

    /// Waits until a read would not wait (see [`TcpStream::poll_read_ready`]).
    pub async fn readable(&self) -> io::Result<()> {
        std::future::poll_fn(|cx| self.poll_read_ready(cx)).await
    }

    /// Sends our FIN now (reading goes on).
    pub fn shutdown_write(&self) {
        self.shared.with(|s| {
            s.tcp(self.handle).close();
            s.want_poll();
        });
    }

    /// Aborts the connection with a RST.
    pub fn reset(mut self) {
        self.reset = true;
    }

    /// Bytes received and not read yet, bytes written and not acknowledged yet.
    pub fn queued(&self) -> (usize, usize) {
        self.shared.with(|s| {
            let sock = s.tcp(self.handle);
            (sock.recv_queue(), sock.send_queue())
        })
    }
}

impl Drop for TcpStream {
    fn drop(&mut self) {
        let (h, reset) = (self.handle, self.reset);
        self.shared.with(|s| {
            let sock = s.tcp(h);
            if reset {
                sock.abort();
            } else {
                sock.close();
            }
            s.orphan(h);
        });
    }
}

impl AsyncRead for TcpStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let h = self.handle;
        self.shared.with(|s| {
            let sock = s.tcp(h);
            match sock.recv_slice(buf.initialize_unfilled()) {
                Ok(0) if buf.remaining() > 0 => {
                    sock.register_recv_waker(cx.waker());
                    Poll::Pending
                }
                Ok(n) => {
                    buf.advance(n);
                    if let Some(c) = s.conns.get_mut(&h) {
                        c.rx_dirty = true;
                    }
                    // The window opened: smoltcp may owe the peer an update.
                    s.want_poll();
                    Poll::Ready(Ok(()))
                }
                Err(RecvError::Finished) => Poll::Ready(Ok(())),
                Err(RecvError::InvalidState) => Poll::Ready(Err(closed_error(State::Closed))),
            }
        })
    }
}

impl AsyncWrite for TcpStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let h = self.handle;
        self.shared.with(|s| s.tcp_write(h, buf, cx.waker()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Written bytes are in the send ring; the data path sends them without a flush.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.shutdown_write();
        Poll::Ready(Ok(()))
    }
}
