//! Backend connections: plain or TLS streams, and a small idle pool per target.
//!
//! A connection goes back to the pool only when its last response was read completely, nothing
//! followed it, and both sides allowed keep-alive. The pool keeps at most a few idle connections
//! per target, each for a bounded time; a connection the backend closed or sent anything on
//! meanwhile is noticed on take ([`Backend::is_stale`]) and dropped.

use std::collections::HashMap;
use std::io;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::sys::sock::Peek;
use tokio_rustls::client::TlsStream;

use super::route::Target;

/// A connection to a LAN backend.
pub(crate) enum Backend {
    /// Plain HTTP.
    Plain(TcpStream),
    /// HTTPS (`backend_https`).
    Tls(Box<TlsStream<TcpStream>>),
}

impl Backend {
    fn tcp(&self) -> &TcpStream {
        match self {
            Backend::Plain(s) => s,
            Backend::Tls(s) => s.get_ref().0,
        }
    }

    /// True when the backend closed the connection or anything is waiting on it between two
    /// exchanges: bytes in the socket, or (HTTPS) plaintext the TLS layer decrypted and nobody
    /// read. Such a connection must not carry another request: whatever is waiting would be
    /// taken for the next response (issue 8, item 5).
    ///
    /// The socket is asked (`recv(MSG_PEEK)`) only when the runtime has seen it readable since
    /// it was last found empty: the last read of a response that did not fill the buffer, or a
    /// peek that found nothing, clears its readiness, and any byte or FIN arriving afterwards
    /// sets it again at the runtime's next poll of the kernel (edge-triggered epoll). A reused
    /// connection's next request arrives through such a poll, so what the backend sent before
    /// that request is seen; a byte arriving in the microseconds between that poll and the
    /// check is not (the same race the module documentation of `http` describes for bytes
    /// after the request). Issue 15: the peek had been one system call per request.
    pub(crate) fn is_stale(&mut self) -> bool {
        if let Backend::Tls(s) = self {
            match s.get_mut().1.process_new_packets() {
                Ok(io) if io.plaintext_bytes_to_read() > 0 || io.peer_has_closed() => return true,
                Ok(_) => {}
                Err(_) => return true,
            }
        }
        let tcp = self.tcp();
        let fd = tcp.as_raw_fd();
        // `try_io` runs the peek only when the socket is marked readable, and clears the mark
        // when the peek finds nothing (WouldBlock).
        match tcp.try_io(Interest::READABLE, || match crate::sys::sock::peek(fd) {
            Ok(Peek::Empty) => Err(io::ErrorKind::WouldBlock.into()),
            other => other,
        }) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => false,
            // Closed, or surplus bytes (for HTTPS possibly a late TLS record, also not worth
            // the risk), or an error.
            Ok(_) | Err(_) => true,
        }
    }
}

impl AsyncRead for Backend {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Backend::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Backend::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Backend {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Backend::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Backend::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Backend::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Backend::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Backend::Plain(s) => Pin::new(s).poll_flush(cx),
            Backend::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Backend::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Backend::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// What identifies interchangeable backend connections.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct PoolKey {
    /// Where the connection goes.
    pub(crate) target: Target,
    /// The SNI name for HTTPS backends; None for plain HTTP.
    pub(crate) tls_sni: Option<String>,
}

struct Idle {
    conn: Backend,
    since: Instant,
}

/// Idle backend connections, a few per target.
pub(crate) struct Pool {
    idle: Mutex<HashMap<PoolKey, Vec<Idle>>>,
    per_target: usize,
    timeout: Duration,
}

impl Pool {
    /// A pool keeping at most `per_target` idle connections per key, each at most `timeout`.
    pub(crate) fn new(per_target: usize, timeout: Duration) -> Self {
        Pool {
            idle: Mutex::new(HashMap::new()),
            per_target,
            timeout,
        }
    }

    /// The most recently used live idle connection for `key`, if any.
    pub(crate) fn take(&self, key: &PoolKey) -> Option<Backend> {
        let mut map = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let list = map.get_mut(key)?;
        let now = Instant::now();
        let mut found = None;
        while let Some(mut idle) = list.pop() {
            if now.duration_since(idle.since) < self.timeout && !idle.conn.is_stale() {
                found = Some(idle.conn);
                break;
            }
        }
        if list.is_empty() {
            map.remove(key);
        }
        found
    }

    /// Keeps `conn` for reuse (dropped when the target already has enough idle connections).
    pub(crate) fn put(&self, key: PoolKey, conn: Backend) {
        if self.per_target == 0 {
            return;
        }
        let mut map = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let list = map.entry(key).or_default();
        if list.len() >= self.per_target {
            list.remove(0);
        }
        list.push(Idle {
            conn,
            since: Instant::now(),
        });
    }

    /// Closes idle connections older than the timeout.
    pub(crate) fn sweep(&self) {
        let mut map = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        map.retain(|_, list| {
            list.retain(|i| now.duration_since(i.since) < self.timeout);
            !list.is_empty()
        });
    }

    /// Number of idle connections held (all targets).
    #[cfg(test)]
    pub(crate) fn idle_count(&self) -> usize {
        let map = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        map.values().map(Vec::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    async fn pair(l: &TcpListener) -> (Backend, TcpStream) {
        let c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (s, _) = l.accept().await.unwrap();
        (Backend::Plain(c), s)
    }

    fn key() -> PoolKey {
        PoolKey {
            target: Target {
                host: "127.0.0.1".into(),
                port: 1,
            },
            tls_sni: None,
        }
    }

    #[tokio::test]
    async fn pool_is_bounded_per_target_and_skips_closed_connections() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let pool = Pool::new(2, Duration::from_secs(30));
        let mut servers = Vec::new();
        for _ in 0..3 {
            let (b, s) = pair(&l).await;
            pool.put(key(), b);
            servers.push(s);
        }
        assert_eq!(pool.idle_count(), 2);
        // The newest idle connection's peer closes: take skips it and returns the other one.
        drop(servers.pop());
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(pool.take(&key()).is_some());
        assert!(pool.take(&key()).is_none());
        assert_eq!(pool.idle_count(), 0);
    }

    #[tokio::test]
    async fn idle_connections_expire() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let pool = Pool::new(4, Duration::from_millis(100));
        let (b, _s) = pair(&l).await;
        pool.put(key(), b);
        tokio::time::sleep(Duration::from_millis(150)).await;
        pool.sweep();
        assert_eq!(pool.idle_count(), 0);
        let (b, _s2) = pair(&l).await;
        pool.put(key(), b);
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert!(pool.take(&key()).is_none());
    }
}
