//! TCP relay: accept on the tunnel side, connect to the LAN target, copy both ways.
//!
//! Per connection: one task, two directions polled together. Each direction owns a
//! [`DEFAULT_BUFFER_BYTES`] buffer only while data is in flight (taken when the source is
//! readable, given back to a small per-thread pool when it runs dry), so idle connections cost
//! no buffer memory; a bulk direction grows its buffer up to [`DEFAULT_MAX_BUFFER_BYTES`]. With
//! [`TcpConfig::splice`] the bytes move socket → pipe → socket with `splice(2)` instead
//! (Linux; the pipe is created on first data). End of stream on one side becomes
//! `shutdown(SHUT_WR)` on the other while the other direction keeps flowing (half-close).
//!
//! The tunnel side is a `crate::stack::Stream`: a kernel socket (TUN mode), where the copy and
//! splice paths above run between two kernel sockets, or a connection of the smoltcp stack,
//! where [`relay_io`] copies through AsyncRead/AsyncWrite with the same lazily taken pooled
//! buffers, half-close, idle timeout and counters. LAN-side sockets are always kernel sockets.
//!
//! The same relay serves the egress routes (`crate::scan_egress`) the other way round: the
//! listener is a kernel socket on the LAN, [`TcpRoute::sources`] admits only the allowlisted
//! peers, and [`Via::Tunnel`] connects into the tunnel through the `crate::stack::Stack`.

use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;

use super::refusals::{RefusalLog, RefusalReport, REFUSAL_LOG_INTERVAL};
use super::{wait_true, RouteCounters, TargetCell};
use crate::scan_egress::SourceCell;
use crate::stack::{self, Listener, Stack, Stream};
use crate::sys::pipe::splice;
use crate::target;
use crate::wol::{connect_or_wake, Waker};

/// Time allowed to connect to the LAN target.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A connection with no byte moving either way for this long is closed (checked once per
/// period, so it closes between one and two periods after the last byte).
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);
/// Buffer per direction while data is in flight, in bytes.
pub const DEFAULT_BUFFER_BYTES: usize = 16 * 1024;
/// A direction whose reads keep filling its buffer (a bulk transfer) doubles it up to this,
/// in bytes.
pub const DEFAULT_MAX_BUFFER_BYTES: usize = 64 * 1024;
/// Open connections per route before new ones are refused with a reset.
pub const DEFAULT_MAX_CONNECTIONS_PER_ROUTE: usize = 1024;
/// Open relayed connections over all routes before new ones are refused with a reset.
pub const DEFAULT_MAX_CONNECTIONS_TOTAL: usize = 4096;
/// Pause after a failed accept (for example out of file descriptors), so it does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// Bytes moved per `splice(2)` call at most (the default pipe capacity).
pub(super) const SPLICE_CHUNK: usize = 256 * 1024;
/// Bytes a direction copies before it switches to splice: a short exchange (a request and its
/// answer) never pays for the pipe (two descriptors and its buffer), a bulk transfer moves
/// all but its start without copying.
pub(super) const SPLICE_AFTER_BYTES: usize = 64 * 1024;

/// Tuning of a TCP relay.
#[derive(Debug, Clone)]
pub struct TcpConfig {
    /// Time allowed to connect to the target.
    pub connect_timeout: Duration,
    /// Close a connection after this long without traffic.
    pub idle_timeout: Duration,
    /// Buffer per direction while data is in flight, in bytes (copy mode).
    pub buffer_bytes: usize,
    /// Size a bulk direction's buffer may grow to, in bytes (copy mode).
    pub max_buffer_bytes: usize,
    /// Open connections per route at most.
    pub max_per_route: usize,
    /// Move bytes with `splice(2)` through a pipe instead of copying through a buffer, once a
    /// direction has copied 64 KiB (`SPLICE_AFTER_BYTES`). On by default: both ends are kernel
    /// sockets in TUN mode, and on a quiet machine it measured 1.40–1.52x HAProxy against
    /// 1.12–1.32x for copying, at about 30 % less CPU (tests-hw/bench/l4-relay.sh). Applies
    /// between two kernel sockets only: a connection of the userspace stack is copied by
    /// [`relay_io`] whatever this says.
    pub splice: bool,
    /// At most one log line per this interval about connections refused at a cap.
    pub refusal_log_interval: Duration,
}

impl Default for TcpConfig {
    fn default() -> Self {
        TcpConfig {
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            buffer_bytes: DEFAULT_BUFFER_BYTES,
            max_buffer_bytes: DEFAULT_MAX_BUFFER_BYTES,
            max_per_route: DEFAULT_MAX_CONNECTIONS_PER_ROUTE,
            splice: true,
            refusal_log_interval: REFUSAL_LOG_INTERVAL,
        }
    }
}

/// A cap on open connections shared by every route.
#[derive(Debug)]
pub struct ConnectionLimit {
    open: AtomicUsize,
    max: usize,
}

impl ConnectionLimit {
    /// A cap of `max` open connections.
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(ConnectionLimit {
            open: AtomicUsize::new(0),
            max,
        })
    }

    /// Open connections now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    fn try_take(self: &Arc<Self>) -> Option<Slot> {
        let mut cur = self.open.load(Ordering::Relaxed);
        loop {
            if cur >= self.max {
                return None;
            }
            match self
                .open
                .compare_exchange_weak(cur, cur + 1, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => return Some(Slot(self.clone())),
                Err(v) => cur = v,
            }
        }
    }
}

struct Slot(Arc<ConnectionLimit>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Decrements a route's open-connection count when the connection ends.
struct RouteSlot(Arc<RouteCounters>);

impl RouteSlot {
    fn try_take(counters: &Arc<RouteCounters>, max: usize) -> Option<Self> {
        let mut cur = counters.tcp_active.load(Ordering::Relaxed);
        loop {
            if cur >= max as u64 {
                return None;
            }
            match counters.tcp_active.compare_exchange_weak(
                cur,
                cur + 1,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Some(RouteSlot(counters.clone())),
                Err(v) => cur = v,
            }
        }
    }
}

impl Drop for RouteSlot {
    fn drop(&mut self) {
        self.0.tcp_active.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Where a relay's connections go.
#[derive(Debug, Clone, Default)]
pub enum Via {
    /// To the route's target on the LAN (the L4 routes), waking it when the route says so.
    #[default]
    Lan,
    /// Into the tunnel through this stack, to the target's IP address (the egress routes).
    Tunnel(Stack),
}

/// Everything an accept loop needs besides its listener.
#[derive(Debug, Clone)]
pub struct TcpRoute {
    /// Where new connections go.
    pub target: TargetCell,
    /// The route's counters.
    pub counters: Arc<RouteCounters>,
    /// Tuning.
    pub config: Arc<TcpConfig>,
    /// The cap shared by all routes.
    pub global: Arc<ConnectionLimit>,
    /// Turns true when the route's open connections must close (end of the grace period).
    pub kill: watch::Receiver<bool>,
    /// Wakes a silent target of a route with `wol` (None: no Wake-on-LAN).
    pub waker: Option<Waker>,
    /// When set, only peers this allowlist admits are relayed; the others are reset at once
    /// and counted in `source_drops` (before any connect or buffer).
    pub sources: Option<SourceCell>,
    /// Where connections go.
    pub via: Via,
}

/// Accepts on `listener` (the tunnel side: a kernel or a smoltcp listener) until `stop` turns
/// true, relaying each connection to the current target. Connections already open keep going
/// until `route.kill` turns true.
pub async fn serve(listener: impl Into<Listener>, route: TcpRoute, stop: watch::Receiver<bool>) {
    let listener = listener.into();
    // Accepted connections start with TCP_NODELAY and keepalive from the listener: five
    // system calls per route instead of per connection.
    let inherited = match listener.set_stream_options() {
        Ok(()) => true,
        Err(e) => {
            tracing::debug!(error = %e, "cannot set socket options on the listener");
            false
        }
    };
    let stopped = wait_true(stop);
    tokio::pin!(stopped);
    let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
    // One summary line per interval under a flood, not one per refused connection.
    let mut refusals = RefusalLog::new(route.config.refusal_log_interval);
    loop {
        let due = refusals.due();
        let client = tokio::select! {
            _ = &mut stopped => return,
            _ = tokio::time::sleep_until(due.unwrap_or_else(tokio::time::Instant::now)), if due.is_some() => {
                if let Some(r) = refusals.flush(tokio::time::Instant::now()) {
                    log_refusals(port, &route, r);
                }
                continue;
            }
            r = listener.accept() => match r {
                Ok((s, peer)) => {
                    if let Some(sources) = &route.sources {
                        if !sources.get().admits(peer.ip()) {
                            drop_source(s, peer, &route);
                            continue;
                        }
                    }
                    s
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    route.counters.set_error(format!("accept: {e}"));
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        let route_slot = RouteSlot::try_take(&route.counters, route.config.max_per_route);
        let global_slot = route_slot.as_ref().and_then(|_| route.global.try_take());
        let (Some(route_slot), Some(global_slot)) = (route_slot, global_slot) else {
            let n = route.counters.refused.fetch_add(1, Ordering::Relaxed) + 1;
            route.counters.set_error(format!(
                "refused {n} connection(s) so far: {} open on this route (cap {}), {} on all \
                 routes (cap {})",
                route.counters.tcp_active.load(Ordering::Relaxed),
                route.config.max_per_route,
                route.global.open(),
                route.global.max,
            ));
            client.reset();
            if let Some(r) = refusals.refused(tokio::time::Instant::now()) {
                log_refusals(port, &route, r);
            }
            continue;
        };
        let route = route.clone();
        tokio::spawn(async move {
            let kill = route.kill.clone();
            tokio::select! {
                _ = connection(client, &route, inherited) => {}
                _ = wait_true(kill) => {}
            }
            drop(route_slot);
            drop(global_slot);
        });
    }
}

/// Resets a connection from a source outside the allowlist and counts it.
fn drop_source(client: Stream, peer: std::net::SocketAddr, route: &TcpRoute) {
    let n = route.counters.source_drops.fetch_add(1, Ordering::Relaxed) + 1;
    route.counters.set_error(format!(
        "dropped {n} connection(s) from sources outside the allowlist (last: {})",
        peer.ip()
    ));
    // Debug only: anyone on the LAN can cause these.
    tracing::debug!(%peer, "connection from a source outside the allowlist dropped");
    client.reset();
}

fn log_refusals(port: u16, route: &TcpRoute, r: RefusalReport) {
    let since = r.since();
    tracing::warn!(
        port,
        refused = r.count,
        total = r.total,
        "L4 TCP route on port {port}: reset {} new connection(s){since} at a connection cap: {} \
         open on this route (cap {}), {} on all routes (cap {}); {} in all",
        r.count,
        route.counters.tcp_active.load(Ordering::Relaxed),
        route.config.max_per_route,
        route.global.open(),
        route.global.max,
        r.total,
    );
}

/// Relays one accepted connection; `inherited`: it has the listener's TCP_NODELAY and
/// keepalive already.
async fn connection(client: Stream, route: &TcpRoute, inherited: bool) {
    if !inherited {
        let _ = client.set_nodelay(true);
        let _ = client.set_keepalive();
    }
    match &route.via {
        Via::Lan => lan_connection(client, route).await,
        Via::Tunnel(stack) => tunnel_connection(client, stack, route).await,
    }
}

fn target_failed(route: &TcpRoute, target: &target::Target, e: &dyn std::fmt::Display) {
    route
        .counters
        .target_failures
        .fetch_add(1, Ordering::Relaxed);
    route
        .counters
        .set_error(format!("connect to {target}: {e}"));
    tracing::debug!(%target, error = %e, "cannot reach the route's target");
}

/// An egress connection: a LAN client relayed into the tunnel.
async fn tunnel_connection(mut client: Stream, stack: &Stack, route: &TcpRoute) {
    let target = route.target.get();
    let Ok(ip) = target.host.parse::<std::net::IpAddr>() else {
        target_failed(route, &target, &"not an IP address");
        client.reset();
        return;
    };
    let to = std::net::SocketAddr::new(ip, target.port);
    let mut server = match stack.connect_tcp(to, route.config.connect_timeout).await {
        Ok(s) => s,
        Err(e) => {
            target_failed(route, &target, &e);
            client.reset();
            return;
        }
    };
    // Keepalive: from `relay_stream` (a userspace stream has none to set).
    let _ = server.set_nodelay(true);
    let (config, counters) = (&route.config, &route.counters);
    // Between two kernel sockets (TUN mode) the kernel-to-kernel paths (splice); with the
    // userspace stack on the tunnel side, the AsyncRead/AsyncWrite copy.
    let result = match (&mut client, &mut server) {
        (c, Stream::Kernel(s)) => relay_stream(c, s, config, counters).await,
        (Stream::Kernel(c), s) => relay_stream(s, c, config, counters).await,
        (c, s) => relay_io(c, s, config, counters).await,
    };
    if let Err(e) = result {
        if e.kind() != io::ErrorKind::TimedOut {
            tracing::debug!(%target, error = %e, "egress connection ended with an error");
        }
        client.reset();
        server.reset();
    }
}

async fn lan_connection(mut client: Stream, route: &TcpRoute) {
    let target = route.target.get();
    let first = target::connect(&target, route.config.connect_timeout).await;
    // Wake-on-LAN: a route with `wol` holds the connection while its target wakes.
    let server = match connect_or_wake(
        first,
        &target,
        route.config.connect_timeout,
        route.waker.as_ref(),
    )
    .await
    {
        Ok(s) => s,
        Err(e) => {
            target_failed(route, &target, &e);
            client.reset();
            return;
        }
    };
    let mut server = server;
    let _ = server.set_nodelay(true);
    let result = relay_stream(&mut client, &mut server, &route.config, &route.counters).await;
    if let Err(e) = result {
        if e.kind() != io::ErrorKind::TimedOut {
            tracing::debug!(%target, error = %e, "relayed connection ended with an error");
        }
        client.reset();
        stack::reset(server);
    }
}

/// Relays between a tunnel-side `client` and a LAN-side `server` (see [`relay`]): between two
/// kernel sockets with [`relay`] itself (splice or the readiness-based copy; it turns keepalive
/// on for `server` if the connection lasts), else with the AsyncRead/AsyncWrite copy of
/// [`relay_io`] (`server` gets keepalive first).
pub async fn relay_stream(
    client: &mut Stream,
    server: &mut TcpStream,
    config: &TcpConfig,
    counters: &RouteCounters,
) -> io::Result<()> {
    match client.as_kernel() {
        Some(k) => relay(k, server, config, counters).await,
        None => {
            let _ = stack::set_keepalive(server);
            relay_io(client, server, config, counters).await
        }
    }
}

/// One direction of a relayed connection.
#[derive(Default)]
struct Half {
    buf: Option<Box<[u8]>>,
    /// Buffer size this direction has grown to (0 until it grows).
    size: usize,
    pipe: Option<(OwnedFd, OwnedFd)>,
    /// Bytes this direction copied (saturating; compared with [`SPLICE_AFTER_BYTES`]).
    copied: usize,
    /// Moving with splice from now on (the copy buffer was empty when it switched).
    spliced: bool,
    start: usize,
    end: usize,
    eof: bool,
    done: bool,
    /// The other direction is done: at this one's end of stream the connection closes, and
    /// the close sends our FIN, so no `shutdown(SHUT_WR)` first.
    last: bool,
    /// Written since the last flush (copy through AsyncWrite).
    unflushed: bool,
}

/// Bytes of free relay buffers kept for reuse per thread, at most (a buffer taken from the pool
/// needs no zeroing; idle connections hold none).
const BUFFER_POOL_MAX_BYTES: usize = 256 * 1024;

thread_local! {
    static BUFFER_POOL: std::cell::RefCell<Vec<Box<[u8]>>> = const { std::cell::RefCell::new(Vec::new()) };
}

fn take_buffer(size: usize) -> Box<[u8]> {
    #[cfg(test)]
    COUNTS.with(|c| c.buffers_out.set(c.buffers_out.get() + 1));
    BUFFER_POOL
        .with(|p| {
            let mut p = p.borrow_mut();
            let i = p.iter().position(|b| b.len() == size)?;
            Some(p.swap_remove(i))
        })
        .unwrap_or_else(|| vec![0u8; size].into_boxed_slice())
}

/// What this thread's relays did, counted for tests.
#[cfg(test)]
struct TestCounts {
    /// Relay buffers held now.
    buffers_out: std::cell::Cell<isize>,
    /// Splice pipes made so far.
    pipes_made: std::cell::Cell<usize>,
    /// Reads that found nothing (EAGAIN) after their direction had moved data.
    wasted_reads: std::cell::Cell<usize>,
}

#[cfg(test)]
thread_local! {
    static COUNTS: TestCounts = const {
        TestCounts {
            buffers_out: std::cell::Cell::new(0),
            pipes_made: std::cell::Cell::new(0),
            wasted_reads: std::cell::Cell::new(0),
        }
    };
}

/// Relay buffers this thread's relays hold now (tests: an idle connection must hold none).
#[cfg(test)]
pub(super) fn buffers_out() -> usize {
    COUNTS.with(|c| c.buffers_out.get().max(0) as usize)
}

/// Splice pipes this thread's relays made so far (tests: short exchanges make none).
#[cfg(test)]
pub(super) fn pipes_made() -> usize {
    COUNTS.with(|c| c.pipes_made.get())
}

/// Reads of the copy path on this thread that found nothing (EAGAIN) after their direction
/// had moved data (tests: a short read is taken as having drained the socket).
#[cfg(test)]
pub(super) fn wasted_reads() -> usize {
    COUNTS.with(|c| c.wasted_reads.get())
}

fn give_buffer(b: Box<[u8]>) {
    #[cfg(test)]
    COUNTS.with(|c| c.buffers_out.set(c.buffers_out.get() - 1));
    BUFFER_POOL.with(|p| {
        let mut p = p.borrow_mut();
        if (p.len() + 1) * b.len() <= BUFFER_POOL_MAX_BYTES {
            p.push(b);
        }
    });
}

impl Drop for Half {
    fn drop(&mut self) {
        if let Some(b) = self.buf.take() {
            give_buffer(b);
        }
    }
}

fn would_block(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock
}

impl Half {
    /// Copy mode: moves what `from` has to `to` until `from` would block or ends; with
    /// `splice`, hands over to [`Half::poll_splice`] once [`SPLICE_AFTER_BYTES`] were copied
    /// and the buffer is empty.
    #[allow(clippy::too_many_arguments)]
    fn poll_copy(
        &mut self,
        cx: &mut Context<'_>,
        from: &TcpStream,
        to: &TcpStream,
        (initial, max): (usize, usize),
        splice: bool,
        counters: &RouteCounters,
        active: &mut bool,
    ) -> Poll<io::Result<()>> {
        loop {
            if self.start < self.end {
                ready!(to.poll_write_ready(cx))?;
                let Some(buf) = self.buf.as_ref() else {
                    return Poll::Ready(Err(io::Error::other("relay buffer lost")));
                };
                match to.try_write(&buf[self.start..self.end]) {
                    Ok(n) => {
                        self.start += n;
                        self.copied = self.copied.saturating_add(n);
                        counters.add_bytes(n);
                        *active = true;
                    }
                    Err(e) if would_block(&e) => continue,
                    Err(e) => return Poll::Ready(Err(e)),
                }
                continue;
            }
            if self.eof {
                if !self.last {
                    stack::shutdown_write(to);
                }
                self.done = true;
                if let Some(b) = self.buf.take() {
                    give_buffer(b);
                }
                return Poll::Ready(Ok(()));
            }
            if splice && self.copied >= SPLICE_AFTER_BYTES {
                // A bulk transfer: the rest without copying.
                if let Some(b) = self.buf.take() {
                    give_buffer(b);
                }
                (self.start, self.end, self.spliced) = (0, 0, true);
                return self.poll_splice(cx, from, to, counters, active);
            }
            match from.poll_read_ready(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {
                    // Nothing to read: no buffer while the connection idles (a short read
                    // cleared the readiness instead of a read that finds EAGAIN, so this is
                    // where a drained direction waits).
                    if let Some(b) = self.buf.take() {
                        give_buffer(b);
                    }
                    return Poll::Pending;
                }
            }
            // A direction whose reads fill the buffer is a bulk transfer: it grows (doubling,
            // up to `max`) for fewer system calls per byte.
            let want = self.size.max(initial);
            if self.buf.as_ref().is_some_and(|b| b.len() < want) {
                if let Some(b) = self.buf.take() {
                    give_buffer(b);
                }
            }
            let buf = self.buf.get_or_insert_with(|| take_buffer(want));
            let len = buf.len();
            match from.try_read(buf) {
                Ok(0) => self.eof = true,
                Ok(n) => {
                    self.start = 0;
                    self.end = n;
                    *active = true;
                    if n == len && len < max {
                        self.size = (len * 2).min(max);
                    } else if n < len {
                        // A short read took all the socket had: forget its readiness without
                        // the read that would fail with EAGAIN. Data or a FIN arriving later
                        // is a new edge, and a FIN that came with this data stays as the
                        // read-closed readiness, which clearing keeps.
                        let _ = from.try_io(Interest::READABLE, || {
                            Err::<(), _>(io::ErrorKind::WouldBlock.into())
                        });
                    }
                }
                Err(e) if would_block(&e) => {
                    #[cfg(test)]
                    if self.copied > 0 {
                        COUNTS.with(|c| c.wasted_reads.set(c.wasted_reads.get() + 1));
                    }
                    // Ran dry: the readiness wait above gives the buffer back.
                    continue;
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    /// Copy through AsyncRead/AsyncWrite (a userspace stream on one side): the same lazily
    /// taken, growing, pooled buffer as [`Half::poll_copy`]; the read waits for readiness
    /// first, so an idle direction holds no buffer; end of stream becomes `poll_shutdown`
    /// (our FIN) on the other side.
    #[allow(clippy::too_many_arguments)]
    fn poll_copy_io<F, T>(
        &mut self,
        cx: &mut Context<'_>,
        from: &mut F,
        to: &mut T,
        (initial, max): (usize, usize),
        counters: &RouteCounters,
        active: &mut bool,
    ) -> Poll<io::Result<()>>
    where
        F: ReadReady + AsyncRead + Unpin,
        T: AsyncWrite + Unpin,
    {
        loop {
            if self.start < self.end {
                let Some(buf) = self.buf.as_ref() else {
                    return Poll::Ready(Err(io::Error::other("relay buffer lost")));
                };
                let n = ready!(Pin::new(&mut *to).poll_write(cx, &buf[self.start..self.end]))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                self.start += n;
                self.unflushed = true;
                counters.add_bytes(n);
                *active = true;
                continue;
            }
            if self.unflushed {
                ready!(Pin::new(&mut *to).poll_flush(cx))?;
                self.unflushed = false;
            }
            if self.eof {
                // Our FIN; an error here (the peer is gone) ends this direction all the same.
                let _ = ready!(Pin::new(&mut *to).poll_shutdown(cx));
                self.done = true;
                if let Some(b) = self.buf.take() {
                    give_buffer(b);
                }
                return Poll::Ready(Ok(()));
            }
            if from.poll_ready_to_read(cx)?.is_pending() {
                // Nothing to read: no buffer while the connection idles (after a read the
                // userspace stream says so here, not with a read that would block).
                if let Some(b) = self.buf.take() {
                    give_buffer(b);
                }
                return Poll::Pending;
            }
            let want = self.size.max(initial);
            if self.buf.as_ref().is_some_and(|b| b.len() < want) {
                if let Some(b) = self.buf.take() {
                    give_buffer(b);
                }
            }
            let buf = self.buf.get_or_insert_with(|| take_buffer(want));
            let len = buf.len();
            let mut rb = ReadBuf::new(buf);
            match Pin::new(&mut *from).poll_read(cx, &mut rb) {
                Poll::Ready(Ok(())) => {
                    let n = rb.filled().len();
                    if n == 0 {
                        self.eof = true;
                    } else {
                        self.start = 0;
                        self.end = n;
                        *active = true;
                        if n == len && len < max {
                            self.size = (len * 2).min(max);
                        }
                    }
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {
                    // Ran dry: give the buffer back while the connection idles.
                    if let Some(b) = self.buf.take() {
                        give_buffer(b);
                    }
                    return Poll::Pending;
                }
            }
        }
    }

    /// Splice mode: socket → pipe → socket without copying through user space.
    fn poll_splice(
        &mut self,
        cx: &mut Context<'_>,
        from: &TcpStream,
        to: &TcpStream,
        counters: &RouteCounters,
        active: &mut bool,
    ) -> Poll<io::Result<()>> {
        loop {
            if self.pipe.is_none() {
                self.pipe = Some(crate::sys::pipe::pipe(SPLICE_CHUNK)?);
                #[cfg(test)]
                COUNTS.with(|c| c.pipes_made.set(c.pipes_made.get() + 1));
            }
            let Some((pr, pw)) = self.pipe.as_ref() else {
                return Poll::Ready(Err(io::Error::other("relay pipe lost")));
            };
            let (pr, pw) = (pr.as_raw_fd(), pw.as_raw_fd());
            if self.end > 0 {
                ready!(to.poll_write_ready(cx))?;
                match to.try_io(Interest::WRITABLE, || splice(pr, to.as_raw_fd(), self.end)) {
                    Ok(n) => {
                        self.end -= n;
                        counters.add_bytes(n);
                        *active = true;
                    }
                    Err(e) if would_block(&e) => continue,
                    Err(e) => return Poll::Ready(Err(e)),
                }
                continue;
            }
            if self.eof {
                if !self.last {
                    stack::shutdown_write(to);
                }
                self.done = true;
                self.pipe = None;
                return Poll::Ready(Ok(()));
            }
            ready!(from.poll_read_ready(cx))?;
            match from.try_io(Interest::READABLE, || {
                splice(from.as_raw_fd(), pw, SPLICE_CHUNK)
            }) {
                Ok(0) => self.eof = true,
                Ok(n) => {
                    self.end = n;
                    *active = true;
                }
                Err(e) if would_block(&e) => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

/// A relay's idle timeout, checked once per period: it fires when a whole period passed
/// without a byte either way (so between one and two periods after the last byte).
///
/// The same timer carries one earlier wake-up, `early`: [`relay`] turns TCP keepalive on for
/// the socket it connected only once the connection has lasted [`stack::KEEPALIVE_IDLE`]
/// (the first probe would not go out sooner anyway), so a short connection never pays the
/// four `setsockopt` calls.
struct IdleTimer {
    sleep: Pin<Box<tokio::time::Sleep>>,
    period: Duration,
    active: bool,
    /// The first idle check, while the early wake-up is still to come.
    check_at: Option<tokio::time::Instant>,
}

impl IdleTimer {
    /// `early`: a one-off wake-up after this long (ignored unless shorter than `period`).
    fn new(period: Duration, early: Option<Duration>) -> Self {
        let now = tokio::time::Instant::now();
        let (first, check_at) = match early.filter(|e| *e < period) {
            Some(e) => (now + e, Some(now + period)),
            None => (now + period, None),
        };
        IdleTimer {
            sleep: Box::pin(tokio::time::sleep_until(first)),
            period,
            active: false,
            check_at,
        }
    }

    /// Ready when the connection idled a whole period; `active`: bytes moved in this poll.
    /// Calls `on_early` at the early wake-up (once).
    fn poll(&mut self, cx: &mut Context<'_>, active: bool, on_early: impl FnOnce()) -> Poll<()> {
        self.active |= active;
        let mut on_early = Some(on_early);
        while self.sleep.as_mut().poll(cx).is_ready() {
            if let Some(at) = self.check_at.take() {
                if let Some(f) = on_early.take() {
                    f();
                }
                self.sleep.as_mut().reset(at);
                continue;
            }
            if !self.active {
                return Poll::Ready(());
            }
            self.active = false;
            let next = tokio::time::Instant::now() + self.period;
            self.sleep.as_mut().reset(next);
        }
        Poll::Pending
    }
}

/// Relays between `a` and `b` until both directions ended (each end of stream forwarded as a
/// half-close, except the last one, which the caller's close sends), an error occurs, or
/// nothing moved for `config.idle_timeout` (an error of kind `TimedOut`). `b` is the side the
/// relay connected: it gets TCP keepalive once the connection has lasted
/// [`stack::KEEPALIVE_IDLE`] (`a` came from a listener and has it already).
pub async fn relay(
    a: &TcpStream,
    b: &TcpStream,
    config: &TcpConfig,
    counters: &RouteCounters,
) -> io::Result<()> {
    // a → b, then b → a.
    let mut halves = [Half::default(), Half::default()];
    let mut timer = IdleTimer::new(config.idle_timeout, Some(stack::KEEPALIVE_IDLE));
    std::future::poll_fn(|cx| {
        let mut active = false;
        for i in 0..2 {
            let (from, to) = if i == 0 { (a, b) } else { (b, a) };
            let other_done = halves[1 - i].done;
            let half = &mut halves[i];
            if half.done {
                continue;
            }
            half.last = other_done;
            let r = if half.spliced {
                half.poll_splice(cx, from, to, counters, &mut active)
            } else {
                let sizes = (config.buffer_bytes, config.max_buffer_bytes);
                half.poll_copy(cx, from, to, sizes, config.splice, counters, &mut active)
            };
            if let Poll::Ready(Err(e)) = r {
                return Poll::Ready(Err(e));
            }
        }
        if halves.iter().all(|h| h.done) {
            return Poll::Ready(Ok(()));
        }
        let keepalive = || {
            if let Err(e) = stack::set_keepalive(b) {
                tracing::debug!(error = %e, "cannot turn keepalive on for a relayed connection");
            }
        };
        match timer.poll(cx, active, keepalive) {
            Poll::Ready(()) => {
                Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "idle timeout")))
            }
            Poll::Pending => Poll::Pending,
        }
    })
    .await
}

/// Readiness to read without consuming: what [`relay_io`] waits for before it takes a buffer.
pub trait ReadReady {
    /// Ready when a read would not wait (data, end of stream or an error).
    fn poll_ready_to_read(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
}

impl ReadReady for TcpStream {
    fn poll_ready_to_read(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_read_ready(cx)
    }
}

impl ReadReady for Stream {
    fn poll_ready_to_read(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_read_ready(cx)
    }
}

/// [`relay`] through AsyncRead/AsyncWrite, for a tunnel side that is not a kernel socket: the
/// same half-close, idle timeout, counters and lazily taken pooled buffers (copy mode; no
/// splice, which needs two kernel sockets).
pub async fn relay_io<A, B>(
    a: &mut A,
    b: &mut B,
    config: &TcpConfig,
    counters: &RouteCounters,
) -> io::Result<()>
where
    A: ReadReady + AsyncRead + AsyncWrite + Unpin,
    B: ReadReady + AsyncRead + AsyncWrite + Unpin,
{
    let mut ab = Half::default();
    let mut ba = Half::default();
    let idle = config.idle_timeout;
    let sizes = (config.buffer_bytes, config.max_buffer_bytes);
    let mut timer = IdleTimer::new(idle, None);
    std::future::poll_fn(|cx| {
        let mut active = false;
        if !ab.done {
            if let Poll::Ready(Err(e)) = ab.poll_copy_io(cx, a, b, sizes, counters, &mut active) {
                return Poll::Ready(Err(e));
            }
        }
        if !ba.done {
            if let Poll::Ready(Err(e)) = ba.poll_copy_io(cx, b, a, sizes, counters, &mut active) {
                return Poll::Ready(Err(e));
            }
        }
        if ab.done && ba.done {
            return Poll::Ready(Ok(()));
        }
        match timer.poll(cx, active, || {}) {
            Poll::Ready(()) => {
                Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "idle timeout")))
            }
            Poll::Pending => Poll::Pending,
        }
    })
    .await
}
