//! Backend connections: plain or TLS streams, and a small idle pool per target.
//!
//! A connection goes back to the pool only when its last response was read completely, nothing
//! followed it, and both sides allowed keep-alive. The pool keeps a few idle connections per
//! target, each for a bounded time; a connection the backend closed or sent anything on
//! meanwhile is noticed on take ([`Backend::is_stale`]) and dropped.
//!
//! How many: `per_target`, more while the target's connections are all in use at once. A
//! connection coming back to a full list replaces the least recently used one, unless that one
//! came back less than [`GROW_WHEN_USED_WITHIN`] ago: then every idle connection of the target
//! was taken within that time, the load needs more of them, and the list grows (up to
//! `max_per_target`, and `max_total` over all targets). Closing it instead would only have the
//! next burst of requests connect again (issue 15: with a fixed 32, 50 clients sending
//! `Connection: close` had 0.15 backend connects per request). Idle connections beyond need
//! expire like the others, after the idle timeout.

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

/// A full target list grows when its least recently used connection came back this recently
/// (see the module documentation).
pub(crate) const GROW_WHEN_USED_WITHIN: Duration = Duration::from_secs(1);

struct Idle {
    conn: Backend,
    since: Instant,
}

#[derive(Default)]
struct Lists {
    by_target: HashMap<PoolKey, Vec<Idle>>,
    /// Idle connections over all targets.
    total: usize,
}

/// Idle backend connections, a few per target.
pub(crate) struct Pool {
    idle: Mutex<Lists>,
    per_target: usize,
    max_per_target: usize,
    max_total: usize,
    timeout: Duration,
}

impl Pool {
    /// A pool keeping `per_target` idle connections per key, up to `max_per_target` while they
    /// are all in use at once, `max_total` in all, each at most `timeout`.
    pub(crate) fn new(
        per_target: usize,
        max_per_target: usize,
        max_total: usize,
        timeout: Duration,
    ) -> Self {
        Pool {
            idle: Mutex::new(Lists::default()),
            per_target,
            max_per_target: max_per_target.max(per_target),
            max_total,
            timeout,
        }
    }

    /// The most recently used live idle connection for `key`, if any.
    pub(crate) fn take(&self, key: &PoolKey) -> Option<Backend> {
        let mut lists = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let Lists { by_target, total } = &mut *lists;
        let list = by_target.get_mut(key)?;
        let now = Instant::now();
        let mut found = None;
        while let Some(mut idle) = list.pop() {
            *total -= 1;
            if now.duration_since(idle.since) < self.timeout && !idle.conn.is_stale() {
                found = Some(idle.conn);
                break;
            }
        }
        if list.is_empty() {
            by_target.remove(key);
        }
        found
    }

    /// Keeps `conn` for reuse; when the target's list is full (see the module documentation),
    /// in place of its least recently used connection, or of nothing when the pool holds
    /// `max_total` (then `conn` is closed).
    pub(crate) fn put(&self, key: PoolKey, conn: Backend) {
        if self.per_target == 0 {
            return;
        }
        let mut lists = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let Lists { by_target, total } = &mut *lists;
        let now = Instant::now();
        let full = *total >= self.max_total;
        if full && !by_target.contains_key(&key) {
            // Nothing of this target to replace (lists are never empty).
            return;
        }
        let list = by_target.entry(key).or_default();
        if list.len() >= self.per_target || full {
            let busy = list
                .first()
                .is_some_and(|lru| now.duration_since(lru.since) < GROW_WHEN_USED_WITHIN);
            if full || !busy || list.len() >= self.max_per_target {
                list.remove(0);
                *total -= 1;
            }
        }
        list.push(Idle { conn, since: now });
        *total += 1;
    }

    /// Closes idle connections older than the timeout.
    pub(crate) fn sweep(&self) {
        let mut lists = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        lists.by_target.retain(|_, list| {
            list.retain(|i| now.duration_since(i.since) < self.timeout);
            !list.is_empty()
        });
        lists.total = lists.by_target.values().map(Vec::len).sum();
    }

    /// Number of idle connections held (all targets).
    #[cfg(test)]
    pub(crate) fn idle_count(&self) -> usize {
        let lists = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let sum = lists.by_target.values().map(Vec::len).sum();
        assert_eq!(lists.total, sum);
        sum
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
        let pool = Pool::new(2, 2, 100, Duration::from_secs(30));
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
        let pool = Pool::new(4, 4, 100, Duration::from_millis(100));
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

    /// A full list grows while all its connections are in use within a second (a burst wider
    /// than `per_target`), up to `max_per_target` and `max_total`; otherwise the least
    /// recently used one makes room.
    #[tokio::test(start_paused = true)]
    async fn a_list_grows_only_while_all_of_it_is_in_use() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let pool = Pool::new(2, 4, 5, Duration::from_secs(30));
        let mut servers = Vec::new();
        // A burst of 6 connections coming back together: the list grows to 4, no further.
        for _ in 0..6 {
            let (b, s) = pair(&l).await;
            pool.put(key(), b);
            servers.push(s);
        }
        assert_eq!(pool.idle_count(), 4);
        // Quiet for longer than the growth window: a connection coming back replaces the least
        // recently used one (the list does not grow).
        tokio::time::advance(GROW_WHEN_USED_WITHIN).await;
        let (b, s) = pair(&l).await;
        pool.put(key(), b);
        servers.push(s);
        assert_eq!(pool.idle_count(), 4);
        // The total cap: another target gets its per-target share only while the pool holds
        // fewer than max_total.
        let other = PoolKey {
            target: Target {
                host: "127.0.0.2".into(),
                port: 1,
            },
            tls_sni: None,
        };
        for _ in 0..3 {
            let (b, s) = pair(&l).await;
            pool.put(other.clone(), b);
            servers.push(s);
        }
        assert_eq!(pool.idle_count(), 5, "max_total");
        assert!(pool.take(&other).is_some());
        assert!(
            pool.take(&other).is_none(),
            "one of the other target's was kept"
        );
    }
}
