//! One client connection from the hub: a loop of requests (keep-alive), each routed, forwarded
//! to a backend connection from the pool (or a new one) and answered, with the proxy's own
//! error answers when no backend response can be relayed.

use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

use gatelet_agent_api::control::HttpRoute;

use super::admit::Ticket;
use super::body::{bounded, copy_body, write_two, BodyKind, CopyError};
use super::buf::IoBuf;
use super::error_page::{render, ProxyError};
use super::head::{
    prepare_request, prepare_response, Request, RequestContext, Response, ResponseContext,
};
use super::log::{access, Access};
use super::pool::{Backend, PoolKey};
use super::route::Choice;
use super::upgrade::relay;
use super::HttpStats;
use super::{tls, Refusal, Shared};
use crate::stack::Stream;

/// How long a connection idle between requests keeps its buffers and backend connection (for
/// the next request of a busy client) before it lets them go.
const BUFFER_GRACE: Duration = Duration::from_millis(250);
/// Longest wait for the client to close after the proxy closed its side.
const LINGER_TIME: Duration = Duration::from_secs(2);
/// Most unread request bytes discarded while waiting for the client to close.
const LINGER_MAX_BYTES: usize = 256 * 1024;
/// Most interim (1xx) responses relayed before the final one.
const MAX_INTERIM_RESPONSES: usize = 8;

/// Nagle's algorithm on a client connection: on until just before the connection's second write.
///
/// Nagle holds a small write back only while earlier data is unacknowledged, so the first write
/// of a connection always goes out at once. A connection whose only answer is one write (head
/// and whole body buffered: a client that sends `Connection: close`, the benchmark's
/// connection-per-request case) therefore never needs TCP_NODELAY; that spares a `setsockopt`
/// per connection, which nginx does not make either (issue 15). Before any other write (an
/// interim response, a body streamed in more than one write, an upgraded connection, the
/// answers to a later request) it is set, once: a small write behind unacknowledged data would
/// otherwise wait for the client's (possibly delayed) acknowledgement.
pub(crate) struct NoDelay {
    /// The kernel socket's descriptor (None: a smoltcp connection, which sends at once anyway,
    /// or TCP_NODELAY already set). The socket outlives every use: `serve_requests` owns it.
    fd: Option<RawFd>,
}

impl NoDelay {
    fn new(client: &Stream) -> Self {
        NoDelay {
            fd: client.as_kernel().map(AsRawFd::as_raw_fd),
        }
    }

    /// Turns Nagle's algorithm off (a system call the first time only).
    pub(crate) fn set(&mut self) {
        if let Some(fd) = self.fd.take() {
            let _ = crate::sys::sock::set_int(fd, libc::IPPROTO_TCP, libc::TCP_NODELAY, 1);
        }
    }
}

/// Keeps [`HttpStats::active`] right whatever way the connection ends.
struct ActiveGuard(Arc<Shared>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0
            .stats
            .active
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Makes the first read of a just accepted connection wait for the runtime to see its first
/// bytes, as nginx does, instead of trying the socket at once.
///
/// tokio (1.54) takes an accepted socket for readable, so its first read goes to the kernel
/// before any readiness event. The client's request usually arrives after the handshake that
/// made the connection acceptable, and that read then fails with EAGAIN: 0.93 wasted system
/// calls per request in the `Connection: close` benchmark (issue 15). This clears that
/// assumed readiness without a system call. Call it right after the accept, in the same poll
/// of the same task, on a current-thread runtime: no readiness event can have been recorded
/// for the socket yet, so only the assumption is cleared; bytes that arrived before (or after)
/// the accept still produce their event (the socket was registered edge-triggered after it was
/// accepted, and registering reports what is already there).
pub(crate) fn await_first_bytes(client: &Stream) {
    if let Some(s) = client.as_kernel() {
        let _ = s.try_io(tokio::io::Interest::READABLE, || {
            Err::<(), _>(std::io::ErrorKind::WouldBlock.into())
        });
    }
}

/// Resolves when shutdown is asked for (or its sender is gone).
pub(crate) async fn stopped(rx: &mut watch::Receiver<bool>) {
    loop {
        if *rx.borrow_and_update() {
            return;
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}

/// Serves the requests of one client connection until it closes, fails, idles out or the
/// proxy shuts down.
pub(crate) async fn run(
    shared: Arc<Shared>,
    client: Stream,
    peer: SocketAddr,
    shutdown: watch::Receiver<bool>,
    mut ticket: Ticket,
) {
    HttpStats::add(&shared.stats.active, 1);
    let _active = ActiveGuard(shared.clone());
    // The backend connection of the previous request stays with this client connection (no
    // pool round trip, one backend connection per busy client connection); it goes to the
    // pool when the client connection ends.
    let mut attached: Option<(PoolKey, Backend)> = None;
    serve_requests(&shared, client, peer, shutdown, &mut attached, &mut ticket).await;
    if let Some((key, backend)) = attached {
        shared.pool.put(key, backend);
    }
}

async fn serve_requests(
    shared: &Arc<Shared>,
    mut client: Stream,
    peer: SocketAddr,
    mut shutdown: watch::Receiver<bool>,
    attached: &mut Option<(PoolKey, Backend)>,
    ticket: &mut Ticket,
) {
    let mut nodelay = NoDelay::new(&client);
    let cfg = &shared.config;
    let mut cbuf: Option<IoBuf> = None;
    let mut bbuf: Option<IoBuf> = None;
    let mut first = true;
    let accepted = Instant::now();
    let eviction = ticket.eviction();
    loop {
        // No request in flight: the connection may be evicted (see `admit`) until its next
        // request head is complete.
        ticket.waiting();
        if cbuf.as_ref().is_none_or(IoBuf::is_empty) {
            // Wait for the next request. A busy connection keeps its buffers and its backend
            // connection; one idle for longer than BUFFER_GRACE frees the buffers and hands
            // the backend connection to the (bounded) pool.
            let wait = if first {
                cfg.head_timeout
            } else {
                cfg.keep_alive_timeout
            };
            let deadline = Instant::now() + wait;
            loop {
                let holding = cbuf.is_some() || bbuf.is_some() || attached.is_some();
                let until = if holding {
                    deadline.min(Instant::now() + BUFFER_GRACE)
                } else {
                    deadline
                };
                tokio::select! {
                    r = tokio::time::timeout_at(until, client.readable()) => match r {
                        Ok(Ok(())) => break,
                        Ok(Err(_)) => return,
                        Err(_) if holding && Instant::now() < deadline => {
                            cbuf = None;
                            bbuf = None;
                            if let Some((key, backend)) = attached.take() {
                                shared.pool.put(key, backend);
                            }
                        }
                        Err(_) => return,
                    },
                    _ = stopped(&mut shutdown) => return,
                    _ = eviction.wait() => return,
                }
            }
        }
        // The whole first head within the header timeout of the accept; a later one within
        // the header timeout of its first byte.
        let head_deadline = if first {
            accepted + cfg.head_timeout
        } else {
            // A second request: its answer may follow an earlier write (see `NoDelay`).
            nodelay.set();
            Instant::now() + cfg.head_timeout
        };
        first = false;
        let cb = cbuf.get_or_insert_with(|| IoBuf::new(cfg.head_limit));
        let started = Instant::now();
        let routes = shared.table.current();
        let read = tokio::select! {
            r = read_request(&mut client, cb, &routes, peer, head_deadline) => r,
            _ = eviction.wait() => return,
        };
        let req = match read {
            Some(Ok(r)) if !ticket.busy() => {
                // Evicted as the head completed: closed like any waiting connection.
                drop(r);
                return;
            }
            Some(Ok(r)) => r,
            Some(Err(err)) => {
                HttpStats::add(&shared.stats.requests, 1);
                HttpStats::add(&shared.stats.errors, 1);
                let page = render(err, false, true);
                if bounded(cfg.io_idle_timeout, client.write_all(&page))
                    .await
                    .is_ok()
                {
                    // Still evictable: nothing left to do but let the answer arrive.
                    tokio::select! {
                        _ = linger_close(&mut client, cb) => {}
                        _ = eviction.wait() => {}
                    }
                }
                tracing::info!(
                    target: "gatelet_agent::http::access",
                    status = err.status(),
                    peer = %peer.ip(),
                    "request rejected: {}",
                    err.message()
                );
                return;
            }
            None => return,
        };
        HttpStats::add(&shared.stats.requests, 1);
        cb.consume(req.head_len);
        let stopping = *shutdown.borrow();
        // Boxed: the request's state (heads, both directions' futures) lives on the heap only
        // while a request is in flight, so an idle connection's task stays small.
        let keep = Box::pin(handle(
            shared,
            attached,
            &mut client,
            &mut nodelay,
            cb,
            &mut bbuf,
            &req,
            &routes,
            !stopping,
            started,
        ))
        .await;
        if !keep || *shutdown.borrow() {
            // Done with this connection: its slot may go to a new one while the answer drains,
            // and its backend connection to the pool now (not after the linger, which lasts
            // until the client closes: with `Connection: close` on every request, each
            // lingering connection held a backend connection the next one had to open anew).
            if let Some((key, backend)) = attached.take() {
                shared.pool.put(key, backend);
            }
            if !req.keep_alive && req.body == BodyKind::None && cb.is_empty() {
                // The client asked to close (`Connection: close`, or HTTP/1.0) and everything it
                // sent was read: it sends nothing more (RFC 9112, section 9.6), so closing
                // cannot reset the answer. Closing at once spares the linger's wait for the
                // client's close: a wake-up, a shutdown and a read per connection, and the
                // task and its socket for a round trip (issue 15). Like nginx's lingering
                // close "only if necessary".
                return;
            }
            ticket.waiting();
            tokio::select! {
                _ = linger_close(&mut client, cb) => {}
                _ = eviction.wait() => {}
            }
            return;
        }
    }
}

/// Ends a connection whose input may still hold unread request bytes: closing a socket with
/// unread input sends a reset, which can destroy the answer before the client reads it. So the
/// write side is shut down first and the input drained for a bounded time and amount.
async fn linger_close(client: &mut Stream, buf: &mut IoBuf) {
    let _ = bounded(LINGER_TIME, client.shutdown()).await;
    let deadline = Instant::now() + LINGER_TIME;
    let mut drained = 0usize;
    while drained < LINGER_MAX_BYTES {
        buf.consume(buf.len());
        match tokio::time::timeout_at(deadline, buf.fill_from(client)).await {
            Ok(Ok(n)) if n > 0 => drained += n,
            _ => return,
        }
    }
}

/// Reads and prepares one request head. None when the client closed or broke the connection
/// before a complete head (nothing to answer).
async fn read_request(
    client: &mut Stream,
    cb: &mut IoBuf,
    routes: &[HttpRoute],
    peer: SocketAddr,
    deadline: Instant,
) -> Option<Result<Request, ProxyError>> {
    let ctx = RequestContext {
        routes,
        client_ip: peer.ip(),
    };
    loop {
        if !cb.is_empty() {
            match prepare_request(cb.filled(), &ctx) {
                Ok(Some(r)) => return Some(Ok(r)),
                Ok(None) => {}
                Err(e) => return Some(Err(e)),
            }
            if cb.is_full() {
                return Some(Err(ProxyError::HeadTooLarge));
            }
        }
        match tokio::time::timeout_at(deadline, cb.fill_from(client)).await {
            Err(_) => return Some(Err(ProxyError::HeadTimeout)),
            Ok(Ok(0)) | Ok(Err(_)) => return None,
            Ok(Ok(_)) => {}
        }
    }
}

/// The result of one request/response exchange with a backend connection.
enum Exchange {
    /// The response went to the client completely (or the upgraded relay ended).
    Done {
        status: u16,
        bytes: u64,
        client_keep_alive: bool,
        backend_reusable: bool,
    },
    /// Nothing went to the client yet: answer `err`. `retryable` when a reused connection
    /// turned out closed before it saw the request; `client_in_sync` when the request body was
    /// consumed whole (the client connection may carry another request).
    Failed {
        err: ProxyError,
        retryable: bool,
        client_in_sync: bool,
    },
    /// The exchange broke after the response head went out, or the client went away.
    Broken { status: u16, bytes: u64 },
}

/// Routes, forwards and answers one request. Returns whether the client connection stays open.
#[allow(clippy::too_many_arguments)]
async fn handle(
    shared: &Arc<Shared>,
    attached: &mut Option<(PoolKey, Backend)>,
    client: &mut Stream,
    nodelay: &mut NoDelay,
    cb: &mut IoBuf,
    bbuf: &mut Option<IoBuf>,
    req: &Request,
    routes: &[HttpRoute],
    may_keep_alive: bool,
    started: Instant,
) -> bool {
    let cfg = &shared.config;
    let (Some(ri), Some(choice)) = (req.route, req.choice.as_ref()) else {
        HttpStats::add(&shared.stats.errors, 1);
        let keep = may_keep_alive && req.keep_alive && req.body == BodyKind::None;
        let page = render(ProxyError::NoRoute, req.wants_html, !keep);
        let ok = bounded(cfg.io_idle_timeout, client.write_all(&page))
            .await
            .is_ok();
        log(req, ProxyError::NoRoute.status(), 0, started, None, None);
        return keep && ok;
    };
    let route = &routes[ri];
    let rc = shared.stats.route(route.id);
    HttpStats::add(&rc.requests, 1);
    // Held while the request is in flight (an upgraded connection's whole life).
    // Counted in the route's `active` (and `upgraded`) until dropped.
    let Some(_in_flight) = shared.admission.enter_route(&rc, req.upgrade) else {
        HttpStats::add(&shared.stats.errors, 1);
        HttpStats::add(&rc.refused, 1);
        shared.refused(Refusal::RouteBusy(route.id));
        let keep = may_keep_alive && req.keep_alive && req.body == BodyKind::None;
        let page = render(ProxyError::RouteBusy, req.wants_html, !keep);
        let ok = bounded(cfg.io_idle_timeout, client.write_all(&page))
            .await
            .is_ok();
        log(
            req,
            ProxyError::RouteBusy.status(),
            0,
            started,
            Some(route.id),
            None,
        );
        return keep && ok;
    };
    if let Choice::Refused(_) = choice {
        HttpStats::add(&shared.stats.refused_target_overrides, 1);
        // Counted in HttpStats; logged at debug only, as the hub may send it on every request.
        tracing::debug!(
            route = route.id,
            "X-Gateway-Target names a target this route does not allow; using the configured target"
        );
    }
    let target = choice.target();
    let key = PoolKey {
        target: target.clone(),
        tls_sni: route.backend_https.then(|| route.domain.clone()),
    };
    let client_keep_alive = may_keep_alive && req.keep_alive;
    let mut result = None;
    for attempt in 0..2 {
        let pooled = if attempt == 0 {
            match attached.take() {
                // Used at most BUFFER_GRACE ago (else it went to the pool), but it is checked
                // all the same (without a system call unless the socket turned readable, see
                // `Backend::is_stale`): surplus bytes after the last response must never be
                // taken for the next one (a close in the window after the check is retried
                // below).
                Some((k, mut b)) if k == key => (!b.is_stale()).then_some(b),
                Some((k, b)) => {
                    shared.pool.put(k, b);
                    shared.pool.take(&key)
                }
                None => shared.pool.take(&key),
            }
        } else {
            None
        };
        let reused = pooled.is_some();
        let mut backend = match pooled {
            Some(b) => b,
            None => match connect(shared, &key).await {
                Ok(b) => b,
                Err(err) => {
                    // Wake-on-LAN: a silent or refusing backend of a route with `wol` is woken;
                    // the request waits for it (a browser gets the "waking up" page instead).
                    let hold = match (&route.wol, shared.waker.as_ref(), err) {
                        (
                            Some(wol),
                            Some(waker),
                            ProxyError::Unreachable | ProxyError::ConnectTimeout,
                        ) => {
                            let wait = if req.wants_html {
                                crate::wol::BROWSER_WAIT
                            } else {
                                crate::wol::HOLD_TIMEOUT
                            };
                            let (host, port) = (&key.target.host, key.target.port);
                            waker.hold_wol(wol, host, port, "http", wait).await
                        }
                        _ => crate::wol::Hold::NotWol,
                    };
                    let retry = match hold {
                        crate::wol::Hold::Up => connect(shared, &key).await.ok(),
                        crate::wol::Hold::StillWaking if req.wants_html => {
                            let page = crate::wol::waking_page(&route.domain);
                            let _ = bounded(cfg.io_idle_timeout, client.write_all(&page)).await;
                            log(req, 503, 0, started, Some(route.id), Some(&key));
                            return false;
                        }
                        _ => None,
                    };
                    if let Some(b) = retry {
                        b
                    } else {
                        result = Some(Exchange::Failed {
                            err,
                            retryable: false,
                            client_in_sync: req.body == BodyKind::None,
                        });
                        break;
                    }
                }
            },
        };
        // Allocated only for a backend exchange (not for the proxy's own answers).
        let bb = bbuf.get_or_insert_with(|| IoBuf::new(cfg.head_limit));
        let ex = exchange(
            shared,
            client,
            nodelay,
            cb,
            &mut backend,
            bb,
            req,
            client_keep_alive,
        )
        .await;
        match ex {
            Exchange::Failed {
                retryable: true, ..
            } if reused => continue,
            Exchange::Done {
                backend_reusable: true,
                ..
            } => *attached = Some((key.clone(), backend)),
            _ => {}
        }
        result = Some(ex);
        break;
    }
    let route_log = Some(route.id);
    match result {
        Some(Exchange::Done {
            status,
            bytes,
            client_keep_alive,
            ..
        }) => {
            HttpStats::add(&shared.stats.bytes, bytes);
            HttpStats::add(&rc.bytes, bytes);
            log(req, status, bytes, started, route_log, Some(&key));
            client_keep_alive
        }
        Some(Exchange::Broken { status, bytes }) => {
            // Not an answer of the proxy's own: `errors` does not count it (the log line does).
            HttpStats::add(&shared.stats.bytes, bytes);
            HttpStats::add(&rc.bytes, bytes);
            log(req, status, bytes, started, route_log, Some(&key));
            false
        }
        Some(Exchange::Failed {
            err,
            client_in_sync,
            ..
        }) => {
            HttpStats::add(&shared.stats.errors, 1);
            HttpStats::add(&rc.failures, 1);
            let keep = client_keep_alive && client_in_sync;
            let page = render(err, req.wants_html, !keep);
            let ok = bounded(cfg.io_idle_timeout, client.write_all(&page))
                .await
                .is_ok();
            tracing::debug!(route = route.id, upstream = %key.target, "backend failed: {}", err.message());
            log(req, err.status(), 0, started, route_log, Some(&key));
            keep && ok
        }
        None => false,
    }
}

fn log(
    req: &Request,
    status: u16,
    bytes: u64,
    started: Instant,
    route: Option<u64>,
    key: Option<&PoolKey>,
) {
    access(&Access {
        method: req.method(),
        host: req.host.as_deref().unwrap_or("-"),
        path: req.path(),
        status,
        bytes,
        ms: started.elapsed().as_millis() as u64,
        route,
        upstream: key.map(|k| &k.target),
    });
}

/// A new connection to the backend (TCP, then TLS for HTTPS routes), within the connect timeout.
async fn connect(shared: &Shared, key: &PoolKey) -> Result<Backend, ProxyError> {
    let cfg = &shared.config;
    let fut = async {
        let tcp = TcpStream::connect((key.target.host.as_str(), key.target.port))
            .await
            .map_err(|_| ProxyError::Unreachable)?;
        let _ = tcp.set_nodelay(true);
        match &key.tls_sni {
            None => Ok(Backend::Plain(tcp)),
            Some(sni) => {
                let config = shared.tls_config().ok_or(ProxyError::TlsFailed)?;
                match tls::connect(tcp, sni, config).await {
                    Ok(s) => Ok(Backend::Tls(Box::new(s))),
                    Err(e) => {
                        tracing::debug!(upstream = %key.target, error = %e, "backend TLS handshake failed");
                        Err(ProxyError::TlsFailed)
                    }
                }
            }
        }
    };
    match tokio::time::timeout(cfg.connect_timeout, fut).await {
        Ok(r) => r,
        Err(_) => Err(ProxyError::ConnectTimeout),
    }
}

/// Why no response head came from the backend.
enum HeadFailure {
    /// The backend closed (or reset) before sending a byte.
    Closed,
    /// Anything else: invalid, too large, or a read error after some bytes.
    Invalid,
    /// Forwarding an interim response to the client failed.
    ClientGone,
}

/// Reads the backend's response head, relaying interim (1xx) responses to the client.
async fn read_response<BR, CW>(
    br: &mut BR,
    bb: &mut IoBuf,
    cw: &mut CW,
    nodelay: &mut NoDelay,
    ctx: ResponseContext,
    forward_interim: bool,
    idle: std::time::Duration,
) -> Result<Response, HeadFailure>
where
    BR: tokio::io::AsyncRead + Unpin,
    CW: tokio::io::AsyncWrite + Unpin,
{
    let mut interim = 0;
    loop {
        if !bb.is_empty() {
            match prepare_response(bb.filled(), ctx) {
                Ok(Some(resp)) if resp.interim => {
                    interim += 1;
                    if interim > MAX_INTERIM_RESPONSES {
                        return Err(HeadFailure::Invalid);
                    }
                    bb.consume(resp.head_len);
                    if forward_interim {
                        // The final response follows this write.
                        nodelay.set();
                        bounded(idle, write_two(cw, &resp.out, &[]))
                            .await
                            .map_err(|_| HeadFailure::ClientGone)?;
                    }
                    continue;
                }
                Ok(Some(resp)) => return Ok(resp),
                Ok(None) => {}
                Err(_) => return Err(HeadFailure::Invalid),
            }
            if bb.is_full() {
                return Err(HeadFailure::Invalid);
            }
        }
        match bb.fill_from(br).await {
            Ok(0) | Err(_) if bb.is_empty() && interim == 0 => return Err(HeadFailure::Closed),
            Ok(0) | Err(_) => return Err(HeadFailure::Invalid),
            Ok(_) => {}
        }
    }
}

/// Sends the request on `backend` and relays the response (or the upgraded stream).
#[allow(clippy::too_many_arguments)]
async fn exchange(
    shared: &Shared,
    client: &mut Stream,
    nodelay: &mut NoDelay,
    cb: &mut IoBuf,
    backend: &mut Backend,
    bb: &mut IoBuf,
    req: &Request,
    client_keep_alive: bool,
) -> Exchange {
    let cfg = &shared.config;
    let idle = cfg.io_idle_timeout;
    // The backend buffer belongs to the previous backend connection: anything left in it
    // (surplus after a response, which made that connection unusable) is not this one's.
    bb.consume(bb.len());
    let (mut cr, mut cw) = client.split();
    let (mut br, mut bw) = tokio::io::split(backend);
    let ctx = ResponseContext {
        is_head: req.is_head,
        upgrade: req.upgrade,
        client_keep_alive,
    };
    let client_in_sync =
        |u: &Option<Result<u64, CopyError>>| req.body == BodyKind::None || matches!(u, Some(Ok(_)));
    // The upload and download futures borrow both connections; they live in this block only,
    // so an upgrade can take the connections over afterwards.
    let (resp, uploaded, downloaded) = {
        let upload = copy_body(&mut cr, cb, &mut bw, req.body, &req.out, idle);
        tokio::pin!(upload);
        let mut uploaded: Option<Result<u64, CopyError>> = None;
        let head = {
            let read = read_response(&mut br, bb, &mut cw, nodelay, ctx, !req.http10, idle);
            tokio::pin!(read);
            let timer = tokio::time::sleep(cfg.response_timeout);
            tokio::pin!(timer);
            loop {
                tokio::select! {
                    r = &mut read => break r,
                    r = &mut upload, if uploaded.is_none() => {
                        match &r {
                            // Broken chunked framing before any response: a 400 (RFC 9112),
                            // then the connection closes (its input is out of sync).
                            Err(CopyError::Framing(_)) => {
                                return Exchange::Failed {
                                    err: ProxyError::BadRequest,
                                    retryable: false,
                                    client_in_sync: false,
                                };
                            }
                            // The client went away or stalled: nothing sensible to answer.
                            Err(CopyError::Read(_) | CopyError::Truncated) => {
                                return Exchange::Broken { status: 0, bytes: 0 };
                            }
                            Err(e) if e.is_timeout() => return Exchange::Broken { status: 0, bytes: 0 },
                            _ => {}
                        }
                        timer.as_mut().reset(Instant::now() + cfg.response_timeout);
                        uploaded = Some(r);
                    }
                    _ = &mut timer, if uploaded.is_some() => {
                        return Exchange::Failed {
                            err: ProxyError::ResponseTimeout,
                            retryable: false,
                            client_in_sync: client_in_sync(&uploaded),
                        };
                    }
                }
            }
        };
        let resp = match head {
            Ok(r) => r,
            Err(HeadFailure::ClientGone) => {
                return Exchange::Broken {
                    status: 0,
                    bytes: 0,
                }
            }
            Err(fail) => {
                // Closed before a single byte, on a request without body: a reused connection
                // the backend had closed meanwhile; the request never reached it.
                let retryable = matches!(fail, HeadFailure::Closed) && req.body == BodyKind::None;
                return Exchange::Failed {
                    err: ProxyError::BadResponse,
                    retryable,
                    client_in_sync: client_in_sync(&uploaded),
                };
            }
        };
        bb.consume(resp.head_len);
        // An answer that goes out in one write (its head and its whole body, already
        // buffered) leaves Nagle's algorithm as it is (see `NoDelay`).
        let one_write = match resp.body {
            BodyKind::None => true,
            BodyKind::Length(n) => n <= bb.len() as u64,
            BodyKind::Chunked | BodyKind::UntilClose => false,
        };
        if resp.upgrade || !one_write {
            nodelay.set();
        }
        if resp.upgrade {
            if uploaded.is_none() {
                // An upgrade request has no body: the upload is only its head.
                match tokio::time::timeout(idle, &mut upload).await {
                    Ok(r @ Ok(_)) => uploaded = Some(r),
                    _ => {
                        return Exchange::Broken {
                            status: 101,
                            bytes: 0,
                        }
                    }
                }
            }
            (resp, uploaded, None)
        } else {
            let downloaded = {
                let download = copy_body(&mut br, bb, &mut cw, resp.body, &resp.out, idle);
                tokio::pin!(download);
                loop {
                    tokio::select! {
                        r = &mut download => break r,
                        // An upload error does not stop the response; neither connection is
                        // reused after it.
                        r = &mut upload, if uploaded.is_none() => uploaded = Some(r),
                    }
                }
            };
            (resp, uploaded, Some(downloaded))
        }
    };
    let head_bytes = (req.out.len() + resp.out.len()) as u64;
    let up_bytes = match &uploaded {
        Some(Ok(n)) => *n,
        _ => 0,
    };
    let Some(downloaded) = downloaded else {
        if bounded(idle, write_two(&mut cw, &resp.out, &[]))
            .await
            .is_err()
        {
            return Exchange::Broken {
                status: 101,
                bytes: 0,
            };
        }
        let (up, down) = relay(
            &mut cr,
            &mut cw,
            cb,
            &mut br,
            &mut bw,
            bb,
            cfg.upgrade_idle_timeout,
        )
        .await;
        return Exchange::Done {
            status: 101,
            bytes: head_bytes + up + down,
            client_keep_alive: false,
            backend_reusable: false,
        };
    };
    match downloaded {
        Ok(n) => {
            let upload_ok = matches!(uploaded, Some(Ok(_)));
            Exchange::Done {
                status: resp.status,
                bytes: head_bytes + up_bytes + n,
                client_keep_alive: client_keep_alive
                    && upload_ok
                    && resp.body != BodyKind::UntilClose,
                backend_reusable: resp.backend_keep_alive
                    && upload_ok
                    && !req.http10
                    && bb.is_empty(),
            }
        }
        Err(_) => Exchange::Broken {
            status: resp.status,
            bytes: head_bytes + up_bytes,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    async fn read_head(s: &mut TcpStream) -> Vec<u8> {
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut b = [0u8; 1];
            if s.read(&mut b).await.unwrap() == 0 {
                break;
            }
            head.push(b[0]);
        }
        head
    }

    /// A backend answering every request head on its connections with `10` bytes of body:
    /// `first` bytes at once with the head, the rest only after `more` says so (when `first`
    /// is under 10).
    async fn backend(first: usize, more: tokio::sync::mpsc::Receiver<()>) -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let more = Arc::new(tokio::sync::Mutex::new(more));
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let more = more.clone();
                tokio::spawn(async move {
                    while !read_head(&mut s).await.is_empty() {
                        let mut out = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n".to_vec();
                        out.extend_from_slice(&b"0123456789"[..first]);
                        s.write_all(&out).await.unwrap();
                        if first < 10 {
                            more.lock().await.recv().await;
                            s.write_all(&b"0123456789"[first..]).await.unwrap();
                        }
                    }
                });
            }
        });
        addr
    }

    /// A client connection served by `run` towards `backend`, with a second descriptor of the
    /// proxy's side of it (to read its socket options) and the shutdown sender to keep.
    async fn served(backend: SocketAddr) -> (TcpStream, std::net::TcpStream, watch::Sender<bool>) {
        let table = crate::http::HttpTable::new(vec![HttpRoute {
            id: 1,
            domain: "t.test".into(),
            target_host: "127.0.0.1".into(),
            target_port: backend.port(),
            backend_https: false,
            wol: None,
        }]);
        let shared = Arc::new(Shared::new(
            table,
            Arc::default(),
            super::super::ProxyConfig::default(),
            None,
        ));
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (s, peer) = l.accept().await.unwrap();
        let s = s.into_std().unwrap();
        let dup = s.try_clone().unwrap();
        let s = TcpStream::from_std(s).unwrap();
        let super::super::admit::Admit::Admitted(ticket) = shared.admission.admit() else {
            panic!("no slot");
        };
        let (tx, rx) = watch::channel(false);
        tokio::spawn(run(shared, s.into(), peer, rx, ticket));
        (c, dup, tx)
    }

    async fn answer(c: &mut TcpStream) -> Vec<u8> {
        let mut got = read_head(c).await;
        let mut body = [0u8; 10];
        c.read_exact(&mut body).await.unwrap();
        got.extend_from_slice(&body);
        got
    }

    /// Nagle's algorithm stays on for a connection's first answer when it is one write (the
    /// `Connection: close` case: no `setsockopt`); a second request, or a body streamed in
    /// more than one write, turns it off first (see `NoDelay`).
    #[tokio::test]
    async fn nodelay_only_from_the_second_write_on() {
        let (_tx, more) = tokio::sync::mpsc::channel(1);
        let addr = backend(10, more).await;
        // Connection: close, one write.
        let (mut c, proxy_side, _stop) = served(addr).await;
        c.write_all(b"GET / HTTP/1.1\r\nHost: t.test\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        // (Read by its length: the second descriptor keeps the socket open, no end of stream.)
        let all = answer(&mut c).await;
        assert!(all.ends_with(b"\r\n\r\n0123456789"), "{all:?}");
        assert!(!proxy_side.nodelay().unwrap(), "one answer in one write");
        // Keep-alive: the first answer leaves it, the second request turns it off.
        let (mut c, proxy_side, _stop) = served(addr).await;
        let req = b"GET / HTTP/1.1\r\nHost: t.test\r\n\r\n";
        c.write_all(req).await.unwrap();
        assert!(answer(&mut c).await.ends_with(b"0123456789"));
        assert!(!proxy_side.nodelay().unwrap());
        c.write_all(req).await.unwrap();
        assert!(answer(&mut c).await.ends_with(b"0123456789"));
        assert!(
            proxy_side.nodelay().unwrap(),
            "set before the second answer"
        );
        // A body in two parts (the second sent only once the first arrived): set before the
        // first write, whether the connection closes or not.
        let (tx, more) = tokio::sync::mpsc::channel(1);
        let addr = backend(4, more).await;
        let (mut c, proxy_side, _stop) = served(addr).await;
        c.write_all(b"GET / HTTP/1.1\r\nHost: t.test\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let head = read_head(&mut c).await;
        assert!(head.starts_with(b"HTTP/1.1 200"));
        let mut part = [0u8; 4];
        c.read_exact(&mut part).await.unwrap();
        assert!(proxy_side.nodelay().unwrap(), "set before a streamed body");
        tx.send(()).await.unwrap();
        let mut rest = [0u8; 6];
        c.read_exact(&mut rest).await.unwrap();
        assert_eq!(&rest, b"456789");
    }

    /// An idle keep-alive connection costs its task plus the socket: keep the task small.
    #[tokio::test]
    async fn connection_task_is_small() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let shared = Arc::new(Shared::new(
            crate::http::HttpTable::default(),
            Arc::default(),
            super::super::ProxyConfig::default(),
            None,
        ));
        let super::super::admit::Admit::Admitted(ticket) = shared.admission.admit() else {
            panic!("no slot");
        };
        let (_tx, rx) = watch::channel(false);
        let fut = run(shared, c.into(), "127.0.0.1:1".parse().unwrap(), rx, ticket);
        let size = std::mem::size_of_val(&fut);
        assert!(size <= 1536, "connection future is {size} bytes");
    }
}
