//! UDP relay: one LAN-side socket per hub-side client address.
//!
//! The listening socket (tunnel IP; a `crate::stack::Datagram`, kernel or smoltcp) receives a client's datagram; the relay finds or creates
//! that client's session, a socket connected to the route's target, and sends the payload from
//! it. Replies read on the session socket go back to the client from the listening socket. A
//! session with no datagram either way for [`DEFAULT_SESSION_IDLE`] ends; at most
//! [`DEFAULT_MAX_SESSIONS_PER_ROUTE`] live at once (datagrams opening more are dropped and
//! counted as refused).

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use tokio::io::ReadBuf;
use tokio::net::UdpSocket;
use tokio::sync::watch;
use tokio::time::Instant;

use super::refusals::{RefusalLog, RefusalReport, REFUSAL_LOG_INTERVAL};
use super::{wait_true, RouteCounters, TargetCell};
use crate::stack::Datagram;
use crate::target::resolve;
use crate::wol::{UdpGate, Waker};

/// A session with no datagram either way for this long ends.
pub const DEFAULT_SESSION_IDLE: Duration = Duration::from_secs(60);
/// Live sessions per route at most.
pub const DEFAULT_MAX_SESSIONS_PER_ROUTE: usize = 1024;
/// Largest datagram relayed, in bytes (the largest a UDP socket can receive).
const MAX_DATAGRAM: usize = 65_535;
/// Time allowed to resolve a target given by name when a session opens.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(2);

/// Tuning of a UDP relay.
#[derive(Debug, Clone)]
pub struct UdpConfig {
    /// End a session after this long without a datagram either way.
    pub idle_timeout: Duration,
    /// Live sessions per route at most.
    pub max_sessions: usize,
    /// At most one log line per this interval about datagrams dropped at the cap.
    pub refusal_log_interval: Duration,
}

impl Default for UdpConfig {
    fn default() -> Self {
        UdpConfig {
            idle_timeout: DEFAULT_SESSION_IDLE,
            max_sessions: DEFAULT_MAX_SESSIONS_PER_ROUTE,
            refusal_log_interval: REFUSAL_LOG_INTERVAL,
        }
    }
}

/// Everything a UDP relay needs besides its socket.
#[derive(Debug, Clone)]
pub struct UdpRoute {
    /// Where new sessions go.
    pub target: TargetCell,
    /// The route's counters.
    pub counters: Arc<RouteCounters>,
    /// Tuning.
    pub config: Arc<UdpConfig>,
    /// Turns true when the route's sessions must end (end of the grace period).
    pub kill: watch::Receiver<bool>,
    /// Wakes a silent target of a route with `wol` (None: no Wake-on-LAN).
    pub waker: Option<Waker>,
}

struct Session {
    lan: UdpSocket,
    /// Milliseconds since the relay's start at the last datagram either way.
    last: AtomicU64,
    /// Wake-on-LAN: holds the session's first datagrams while its target wakes.
    wol: Option<Arc<UdpGate>>,
}

type Sessions = Arc<Mutex<HashMap<SocketAddr, Arc<Session>>>>;

fn lock(s: &Sessions) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, Arc<Session>>> {
    match s.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

fn millis_since(base: Instant) -> u64 {
    u64::try_from(base.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// After this many receive errors in a row, the serve loop pauses [`RECV_ERROR_BACKOFF`]
/// between receives (a broken socket must not spin).
const RECV_ERRORS_BEFORE_BACKOFF: u32 = 16;
/// Pause between receives after [`RECV_ERRORS_BEFORE_BACKOFF`] errors in a row.
const RECV_ERROR_BACKOFF: Duration = Duration::from_millis(100);

thread_local! {
    /// One datagram buffer per thread, lent to a serve loop while it receives: an idle UDP
    /// route holds none (each would otherwise hold [`MAX_DATAGRAM`] bytes).
    static RECV_BUFFER: std::cell::RefCell<Option<Box<[u8]>>> = const { std::cell::RefCell::new(None) };
}

fn take_recv_buffer() -> Box<[u8]> {
    RECV_BUFFER
        .with(|b| b.borrow_mut().take())
        .unwrap_or_else(|| vec![0u8; MAX_DATAGRAM].into_boxed_slice())
}

fn give_recv_buffer(buf: Box<[u8]>) {
    RECV_BUFFER.with(|b| {
        let mut b = b.borrow_mut();
        if b.is_none() {
            *b = Some(buf);
        }
    });
}

/// The next datagram on `socket`, in a buffer lent for it (give it back with
/// [`give_recv_buffer`]); while nothing arrives the loop holds no buffer.
async fn recv(socket: &Datagram) -> (Box<[u8]>, io::Result<(usize, SocketAddr)>) {
    std::future::poll_fn(|cx| {
        let mut buf = take_recv_buffer();
        let mut rb = ReadBuf::new(&mut buf);
        match socket.poll_recv_from(cx, &mut rb) {
            Poll::Pending => {
                give_recv_buffer(buf);
                Poll::Pending
            }
            Poll::Ready(r) => {
                let n = rb.filled().len();
                Poll::Ready((buf, r.map(|from| (n, from))))
            }
        }
    })
    .await
}

/// Receives on `socket` (the tunnel side: a kernel or a smoltcp socket) until `stop` turns
/// true, relaying each client's datagrams through its own session. Sessions already open keep
/// going until they idle out or `route.kill` fires; they hold the socket (their replies leave
/// from it), so a route re-added while they drain takes the same socket back instead of
/// binding anew (see `routes::UdpSockets`).
pub async fn serve(socket: Arc<Datagram>, route: UdpRoute, stop: watch::Receiver<bool>) {
    let sessions: Sessions = Arc::default();
    let base = Instant::now();
    let stopped = wait_true(stop);
    tokio::pin!(stopped);
    let port = socket.local_addr().map(|a| a.port()).unwrap_or(0);
    // One summary line per interval under a flood, not one per dropped datagram.
    let mut refusals = RefusalLog::new(route.config.refusal_log_interval);
    let mut errors = 0u32;
    loop {
        let due = refusals.due();
        let (buf, r) = tokio::select! {
            _ = &mut stopped => return,
            _ = tokio::time::sleep_until(due.unwrap_or_else(Instant::now)), if due.is_some() => {
                if let Some(r) = refusals.flush(Instant::now()) {
                    log_refusals(port, &route, r);
                }
                continue;
            }
            r = recv(&socket) => r,
        };
        match r {
            Ok((n, peer)) => {
                errors = 0;
                let refused = datagram(&socket, &sessions, &route, base, peer, &buf[..n]).await;
                give_recv_buffer(buf);
                if refused {
                    if let Some(r) = refusals.refused(Instant::now()) {
                        log_refusals(port, &route, r);
                    }
                }
            }
            Err(e) => {
                give_recv_buffer(buf);
                // An ICMP error for an earlier reply, typically; nothing to relay.
                tracing::debug!(error = %e, "udp receive error");
                errors += 1;
                if errors >= RECV_ERRORS_BEFORE_BACKOFF {
                    route.counters.set_error(format!("udp receive: {e}"));
                    tokio::select! {
                        _ = &mut stopped => return,
                        _ = tokio::time::sleep(RECV_ERROR_BACKOFF) => {}
                    }
                }
            }
        }
    }
}

fn log_refusals(port: u16, route: &UdpRoute, r: RefusalReport) {
    let since = r.since();
    tracing::warn!(
        port,
        refused = r.count,
        total = r.total,
        "L4 UDP route on port {port}: dropped {} datagram(s) from new clients{since}: {} \
         sessions open (cap); {} in all",
        r.count,
        route.config.max_sessions,
        r.total,
    );
}

/// Relays one datagram from `peer`. True when it was dropped because the session cap was
/// reached.
async fn datagram(
    listen: &Arc<Datagram>,
    sessions: &Sessions,
    route: &UdpRoute,
    base: Instant,
    peer: SocketAddr,
    data: &[u8],
) -> bool {
    let existing = lock(sessions).get(&peer).cloned();
    let session = match existing {
        Some(s) => s,
        None => {
            if lock(sessions).len() >= route.config.max_sessions {
                let n = route.counters.refused.fetch_add(1, Ordering::Relaxed) + 1;
                route.counters.set_error(format!(
                    "dropped {n} datagram(s) from new clients so far: {} UDP sessions open (cap)",
                    route.config.max_sessions
                ));
                return true;
            }
            match open_session(route).await {
                Ok(lan) => {
                    let target = route.target.get();
                    let gate = route
                        .waker
                        .as_ref()
                        .and_then(|w| UdpGate::for_target(&target, w));
                    let s = Arc::new(Session {
                        lan,
                        last: AtomicU64::new(millis_since(base)),
                        wol: gate.as_ref().map(|(g, _)| g.clone()),
                    });
                    if let Some((gate, wol)) = gate {
                        let s = s.clone();
                        tokio::spawn(async move {
                            for d in gate.open_when_up(&target, &wol).await {
                                let _ = s.lan.send(&d).await;
                            }
                        });
                    }
                    lock(sessions).insert(peer, s.clone());
                    route.counters.udp_sessions.fetch_add(1, Ordering::Relaxed);
                    tokio::spawn(session_task(
                        listen.clone(),
                        peer,
                        s.clone(),
                        route.clone(),
                        sessions.clone(),
                        base,
                    ));
                    s
                }
                Err(e) => {
                    let target = route.target.get();
                    route
                        .counters
                        .target_failures
                        .fetch_add(1, Ordering::Relaxed);
                    route.counters.set_error(format!("udp to {target}: {e}"));
                    return false;
                }
            }
        }
    };
    session.last.store(millis_since(base), Ordering::Relaxed);
    if session.wol.as_ref().is_some_and(|g| g.hold(data)) {
        return false;
    }
    match session.lan.send(data).await {
        Ok(n) => route.counters.add_bytes(n),
        Err(e) => route
            .counters
            .set_error(format!("udp to {}: {e}", route.target.get())),
    }
    false
}

async fn open_session(route: &UdpRoute) -> io::Result<UdpSocket> {
    let target = route.target.get();
    let addrs = tokio::time::timeout(RESOLVE_TIMEOUT, resolve(&target))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "resolve timed out"))??;
    let addr = addrs[0];
    let local: IpAddr = if addr.is_ipv4() {
        Ipv4Addr::UNSPECIFIED.into()
    } else {
        Ipv6Addr::UNSPECIFIED.into()
    };
    let sock = UdpSocket::bind(SocketAddr::new(local, 0)).await?;
    sock.connect(addr).await?;
    Ok(sock)
}

async fn session_task(
    listen: Arc<Datagram>,
    peer: SocketAddr,
    session: Arc<Session>,
    route: UdpRoute,
    sessions: Sessions,
    base: Instant,
) {
    let idle = route.config.idle_timeout;
    let idle_ms = u64::try_from(idle.as_millis()).unwrap_or(u64::MAX);
    let killed = wait_true(route.kill.clone());
    tokio::pin!(killed);
    let mut deadline = base + Duration::from_millis(session.last.load(Ordering::Relaxed)) + idle;
    loop {
        tokio::select! {
            _ = &mut killed => break,
            _ = tokio::time::sleep_until(deadline) => {
                let last = session.last.load(Ordering::Relaxed);
                if millis_since(base).saturating_sub(last) >= idle_ms {
                    break;
                }
                deadline = base + Duration::from_millis(last) + idle;
            }
            r = session.lan.readable() => {
                if r.is_err() {
                    break;
                }
                let mut buf = vec![0u8; MAX_DATAGRAM];
                loop {
                    match session.lan.try_recv(&mut buf) {
                        Ok(n) => {
                            session.last.store(millis_since(base), Ordering::Relaxed);
                            route
                                .counters
                                .udp_answered_ms
                                .store(crate::probe::unix_ms(), Ordering::Relaxed);
                            match listen.send_to(&buf[..n], peer).await {
                                Ok(n) => route.counters.add_bytes(n),
                                Err(e) => {
                                    route.counters.set_error(format!("udp reply to {peer}: {e}"));
                                }
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) => {
                            // ICMP port unreachable from the target, typically.
                            route
                                .counters
                                .set_error(format!("udp from {}: {e}", route.target.get()));
                            break;
                        }
                    }
                }
            }
        }
    }
    {
        let mut map = lock(&sessions);
        if map.get(&peer).is_some_and(|s| Arc::ptr_eq(s, &session)) {
            map.remove(&peer);
        }
    }
    route.counters.udp_sessions.fetch_sub(1, Ordering::Relaxed);
}
