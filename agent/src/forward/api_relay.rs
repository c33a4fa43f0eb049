//! The management API relay: `<tunnel ip>:GC_API_PORT` → the companion on loopback.
//!
//! Kept apart from the L4 routes so a flood on it cannot fill their caps, nor theirs fill its:
//! - its own budget ([`API_RELAY_MAX_CONNECTIONS`]) outside the routes' global cap; when it is
//!   full a new connection still gets in, by closing the oldest connection of the source
//!   address holding the most (one flooding address evicts only itself; a lone caller's fresh
//!   request gets through a flood from its own address too, since the oldest goes first);
//! - a short idle timeout ([`API_RELAY_IDLE_TIMEOUT`]; the companion cuts a slow request
//!   head after 10 s on its side);
//! - each connection to the companion starts with a PROXY v2 header naming the caller, so the
//!   companion's failed-auth limiter counts per caller (it trusts the header from loopback only).

use std::collections::BTreeMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gatelet_agent_api::{eviction, proxy_v2};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::{oneshot, watch};

use super::tcp::{self, TcpConfig};
use super::{wait_true, RouteCounters};
use crate::stack::{self, Listener, Stream};

/// Relayed API connections open at once: below the companion's budget of 64 (its
/// `companion/src/http` server), so that this relay, which knows each caller's address at
/// accept, is the one that evicts under a flood, and the companion keeps room for callers on
/// loopback (was 128: relayed connections 65-128 only made the companion evict).
pub const API_RELAY_MAX_CONNECTIONS: usize = 48;
/// A relayed API connection with no byte moving for this long is closed (between one and two
/// periods after the last byte).
pub const API_RELAY_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause after a failed accept.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// The relay's settings.
#[derive(Debug, Clone)]
pub struct ApiRelay {
    /// The companion's listener.
    pub target: SocketAddr,
    /// The relay's counters (`tcp_active`, `refused` counts evictions, `bytes`).
    pub counters: Arc<RouteCounters>,
    /// Relay tuning (its idle timeout is the relay's).
    pub config: Arc<TcpConfig>,
    /// Open connections at most.
    pub max_connections: usize,
    /// Turns true when open connections must close.
    pub kill: watch::Receiver<bool>,
    /// Signs each connection's PROXY header, so the companion believes it.
    pub key: proxy_v2::HeaderKey,
}

impl ApiRelay {
    /// A relay to `target` with [`API_RELAY_MAX_CONNECTIONS`] and [`API_RELAY_IDLE_TIMEOUT`]
    /// over `base` tuning.
    pub fn new(
        target: SocketAddr,
        counters: Arc<RouteCounters>,
        base: &TcpConfig,
        kill: watch::Receiver<bool>,
        key: proxy_v2::HeaderKey,
    ) -> Self {
        ApiRelay {
            target,
            counters,
            config: Arc::new(TcpConfig {
                idle_timeout: API_RELAY_IDLE_TIMEOUT,
                ..base.clone()
            }),
            max_connections: API_RELAY_MAX_CONNECTIONS,
            kill,
            key,
        }
    }
}

/// Open connections by age (ids grow), with their source and the switch that closes them.
#[derive(Default)]
struct Registry {
    next: u64,
    open: BTreeMap<u64, (IpAddr, oneshot::Sender<()>)>,
}

impl Registry {
    /// The oldest connection of the source with the most connections.
    fn victim(&self) -> Option<u64> {
        eviction::oldest_of_busiest(self.open.iter().map(|(id, (ip, _))| (*ip, *id)))
    }
}

/// Removes a connection from the registry and the active count when its task ends.
struct Entry {
    id: u64,
    registry: Arc<Mutex<Registry>>,
    counters: Arc<RouteCounters>,
}

impl Drop for Entry {
    fn drop(&mut self) {
        lock(&self.registry).open.remove(&self.id);
        self.counters.tcp_active.fetch_sub(1, Ordering::AcqRel);
    }
}

fn lock(m: &Mutex<Registry>) -> std::sync::MutexGuard<'_, Registry> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Accepts on `listener` (the tunnel side, kernel or smoltcp) until `stop` turns true, relaying
/// each connection to the companion.
pub async fn serve(listener: impl Into<Listener>, relay: ApiRelay, stop: watch::Receiver<bool>) {
    let listener = listener.into();
    let registry = Arc::new(Mutex::new(Registry::default()));
    let local = listener.local_addr().ok();
    let stopped = wait_true(stop);
    tokio::pin!(stopped);
    loop {
        let (client, peer) = tokio::select! {
            _ = &mut stopped => return,
            r = listener.accept() => match r {
                Ok(v) => v,
                Err(e) => {
                    relay.counters.set_error(format!("accept: {e}"));
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        let (closed_tx, closed_rx) = oneshot::channel();
        let entry = {
            let mut reg = lock(&registry);
            if reg.open.len() >= relay.max_connections.max(1) {
                if let Some(id) = reg.victim() {
                    if let Some((_, close)) = reg.open.remove(&id) {
                        let _ = close.send(());
                    }
                    let n = relay.counters.refused.fetch_add(1, Ordering::Relaxed) + 1;
                    relay.counters.set_error(format!(
                        "budget of {} connections full: closed {n} oldest connection(s) of \
                         the busiest source so far",
                        relay.max_connections
                    ));
                }
            }
            reg.next += 1;
            let id = reg.next;
            reg.open.insert(id, (peer.ip(), closed_tx));
            relay.counters.tcp_active.fetch_add(1, Ordering::AcqRel);
            Entry {
                id,
                registry: registry.clone(),
                counters: relay.counters.clone(),
            }
        };
        let relay = relay.clone();
        let destination = local.unwrap_or(peer);
        tokio::spawn(async move {
            let _entry = entry;
            let kill = relay.kill.clone();
            tokio::select! {
                r = connection(client, peer, destination, &relay) => {
                    if let Err(e) = r {
                        tracing::debug!(%peer, error = %e, "API relay connection ended with an error");
                    }
                }
                _ = closed_rx => {}
                _ = wait_true(kill) => {}
            }
        });
    }
}

async fn connection(
    mut client: Stream,
    peer: SocketAddr,
    destination: SocketAddr,
    relay: &ApiRelay,
) -> io::Result<()> {
    let connect = TcpStream::connect(relay.target);
    let mut server = match tokio::time::timeout(relay.config.connect_timeout, connect).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            relay
                .counters
                .target_failures
                .fetch_add(1, Ordering::Relaxed);
            client.reset();
            return Err(e);
        }
        Err(_) => {
            relay
                .counters
                .target_failures
                .fetch_add(1, Ordering::Relaxed);
            client.reset();
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "companion did not answer",
            ));
        }
    };
    let _ = server.set_nodelay(true);
    let _ = client.set_nodelay(true);
    server
        .write_all(&proxy_v2::encode(peer, destination, &relay.key))
        .await?;
    let r = tcp::relay_stream(&mut client, &mut server, &relay.config, &relay.counters).await;
    if r.is_err() {
        client.reset();
        stack::reset(server);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;
    use tokio::io::AsyncReadExt;
    use tokio::net::{TcpListener, TcpSocket};

    fn test_key() -> proxy_v2::HeaderKey {
        proxy_v2::HeaderKey::derive(&[7; 32])
    }

    /// A stand-in companion that reports each connection's PROXY source on `tx`, then holds it.
    async fn companion() -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<SocketAddr>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let tx = tx.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 16];
                    if s.read_exact(&mut buf).await.is_err() {
                        return;
                    }
                    let block = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
                    buf.resize(16 + block, 0);
                    if s.read_exact(&mut buf[16..]).await.is_err() {
                        return;
                    }
                    // Only a header the relay signed counts.
                    if let Ok(proxy_v2::Decoded::Header {
                        source: Some(src),
                        authentic: true,
                        ..
                    }) = proxy_v2::decode(&buf, Some(&test_key()))
                    {
                        let _ = tx.send(src);
                    }
                    let mut sink = [0u8; 64];
                    while matches!(s.read(&mut sink).await, Ok(n) if n > 0) {}
                });
            }
        });
        (addr, rx)
    }

    async fn connect_from(src: Ipv4Addr, to: SocketAddr) -> TcpStream {
        let s = TcpSocket::new_v4().unwrap();
        s.bind(SocketAddr::from((src, 0))).unwrap();
        s.connect(to).await.unwrap()
    }

    async fn closed(s: &mut TcpStream) -> bool {
        let mut b = [0u8; 1];
        matches!(
            tokio::time::timeout(Duration::from_secs(5), s.read(&mut b)).await,
            Ok(Ok(0) | Err(_))
        )
    }

    async fn open(s: &mut TcpStream) -> bool {
        let mut b = [0u8; 1];
        tokio::time::timeout(Duration::from_millis(200), s.read(&mut b))
            .await
            .is_err()
    }

    async fn start(
        max: usize,
    ) -> (
        SocketAddr,
        tokio::sync::mpsc::UnboundedReceiver<SocketAddr>,
        Arc<RouteCounters>,
        watch::Sender<bool>,
    ) {
        let (target, rx) = companion().await;
        let counters = Arc::new(RouteCounters::default());
        let mut relay = ApiRelay::new(
            target,
            counters.clone(),
            &TcpConfig::default(),
            watch::channel(false).1,
            test_key(),
        );
        relay.max_connections = max;
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let (stop_tx, stop) = watch::channel(false);
        tokio::spawn(serve(l, relay, stop));
        (addr, rx, counters, stop_tx)
    }

    #[tokio::test]
    async fn the_companion_learns_the_callers_address() {
        let (addr, mut seen, _, _stop) = start(8).await;
        let c = connect_from(Ipv4Addr::new(127, 0, 0, 7), addr).await;
        let src = tokio::time::timeout(Duration::from_secs(5), seen.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(src.ip(), IpAddr::V4(Ipv4Addr::new(127, 0, 0, 7)));
        assert_eq!(src.port(), c.local_addr().unwrap().port());
    }

    #[tokio::test]
    async fn a_full_budget_evicts_the_busiest_sources_oldest_and_spares_the_others() {
        let (addr, mut seen, counters, _stop) = start(4).await;
        let (flooder, other) = (Ipv4Addr::new(127, 0, 0, 2), Ipv4Addr::new(127, 0, 0, 3));
        let mut quiet = connect_from(other, addr).await;
        seen.recv().await.unwrap();
        let mut first = connect_from(flooder, addr).await;
        seen.recv().await.unwrap();
        let mut flood = Vec::new();
        for _ in 0..20 {
            flood.push(connect_from(flooder, addr).await);
            seen.recv().await.unwrap();
        }
        assert!(closed(&mut first).await, "the flooder's oldest was closed");
        assert!(
            open(&mut quiet).await,
            "the other source's connection survived the flood"
        );
        let newest = flood.last_mut().unwrap();
        assert!(open(newest).await, "the newest connection is open");
        assert_eq!(counters.refused.load(Ordering::Relaxed), 22 - 4);
        assert!(counters.tcp_active.load(Ordering::Relaxed) <= 4);
    }
}
