//! The HTTP reverse proxy on `GC_PROXY_PORT` (HTTP/1.1, streaming, keep-alive on both sides).
//!
//! The hub's reverse proxy sends every HTTP route's requests to this listener (a
//! `crate::stack::Listener` on the tunnel side: kernel or smoltcp; backends are reached with
//! kernel sockets, plain or TLS); each request is
//! routed by `X-Gateway-Target-Domain` (else the authority of an absolute-form target, else
//! `Host`) through the live [`HttpTable`] and relayed to the route's LAN backend, plain or HTTPS.
//!
//! A backend connection carries another request only when nothing is waiting on it after the
//! end of the previous response (surplus bytes close it). What cannot be caught: bytes a backend
//! sends after it has received the next request are indistinguishable from its answer to that
//! request (as for any HTTP/1.1 proxy that keeps backend connections).
//!
//! Files follow the request path:
//! - `admit`: the connection cap (evicting the longest-waiting connection when full) and the
//!   caps per route on requests in flight and on upgraded connections.
//! - `conn`: the accepted connection's request loop, backend exchange, retries, error answers.
//! - `head`: request and response heads (httparse), framing, hop-by-hop and forwarding headers.
//! - `route`: host normalization, route lookup, the `X-Gateway-Target` policy.
//! - `body`: body framing (length, chunked with trailers, until close) and the streaming copy.
//! - `pool`: backend connections (plain or TLS) and the small idle pool per target.
//! - `tls`: HTTPS to LAN backends without certificate verification (why: see there).
//! - `upgrade`: the raw two-way relay after `101 Switching Protocols`.
//! - `error_page`: 4xx/5xx answers, HTML for browsers and JSON for API clients.
//! - `log`: the access-log line.
//! - `fuzz_api`: the head parsers and the chunked decoder for the fuzz targets in `fuzz/` (hidden).
//!
//! Memory: a connection holds no buffer while idle between requests; while it reads a request
//! head it holds one buffer of up to [`DEFAULT_HEAD_LIMIT_BYTES`] (client side, starting at
//! 2 KiB), and while a request goes to a backend a second one (backend side); they also carry
//! bodies. Released 2 KiB buffers are reused (a free list of at most 64 per thread, see `buf`). The proxy's
//! own answers (4xx, 502, 503) need no backend buffer. Every wait is bounded by one of the
//! timeouts below; connections and requests in flight are capped (see `admit`).

mod admit;
mod body;
mod buf;
mod conn;
mod error_page;
#[doc(hidden)]
pub mod fuzz_api;
mod head;
mod log;
mod pool;
mod route;
mod table;
mod tls;
mod upgrade;

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use rustls::ClientConfig;
use tokio::sync::watch;

use crate::forward::refusals::{RefusalLog, RefusalReport, REFUSAL_LOG_INTERVAL};
use crate::stack::Listener;
use crate::wol::Waker;

pub use table::{HttpStats, HttpTable, InFlight, RouteHttpCounters};

/// Largest request or response head, in bytes (a larger request head is answered with 431).
pub const DEFAULT_HEAD_LIMIT_BYTES: usize = 16 * 1024;
/// Time for a request head to arrive completely (then 408).
pub const DEFAULT_HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an idle client connection is kept open between requests.
pub const DEFAULT_KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(60);
/// Time to connect to a backend, TLS handshake included (then 504).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Time for the backend's response head after the request was sent (then 504).
pub const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest stall of a body transfer (no byte read or written) before the exchange is dropped.
pub const DEFAULT_IO_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest silence in both directions of an upgraded (WebSocket) connection.
pub const DEFAULT_UPGRADE_IDLE_TIMEOUT: Duration = Duration::from_secs(600);
/// Idle backend connections kept per target, and more while they are all in use at once (up
/// to [`DEFAULT_MAX_REQUESTS_PER_ROUTE`] per target and [`DEFAULT_MAX_CONNECTIONS`] in all;
/// see `pool`). The runtime serves the requests that became ready together in one batch: each
/// takes a backend connection and gives it back at its answer, so the pool must hold about a
/// batch's worth, or the surplus is closed and opened again by the next batch (issue 15: with
/// 4, a benchmark of 50 clients sending `Connection: close` opened a backend connection for 4
/// requests in 5; with a fixed 32, for 3 in 20). Each idle connection costs a socket and a
/// file descriptor for at most [`DEFAULT_POOL_IDLE_TIMEOUT`].
pub const DEFAULT_POOL_IDLE_PER_TARGET: usize = 32;
/// How long an idle backend connection is kept.
pub const DEFAULT_POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Most client connections open at once. When all are taken, a new connection takes the slot
/// of the connection that has waited longest for a request (see `admit`); it is closed at
/// accept only when every slot has a request in flight.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
/// Most requests in flight per route (upgrade requests and WebSocket connections not
/// included); more are answered 503, so one route's flood leaves connection slots to the
/// other routes.
pub const DEFAULT_MAX_REQUESTS_PER_ROUTE: usize = 256;
/// Most upgrade requests and upgraded (WebSocket) connections open per route; more are
/// answered 503. A budget apart from [`DEFAULT_MAX_REQUESTS_PER_ROUTE`], as an upgraded
/// connection holds its slot for its whole life (issue 15).
pub const DEFAULT_MAX_UPGRADES_PER_ROUTE: usize = 512;
/// Pause after a failed accept (for example out of file descriptors).
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);
/// How often expired idle backend connections are closed.
const POOL_SWEEP_INTERVAL: Duration = Duration::from_secs(10);

/// Limits and timeouts of the proxy; [`Default`] gives the `DEFAULT_*` constants.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// Largest request or response head, in bytes.
    pub head_limit: usize,
    /// See [`DEFAULT_HEAD_TIMEOUT`].
    pub head_timeout: Duration,
    /// See [`DEFAULT_KEEP_ALIVE_TIMEOUT`].
    pub keep_alive_timeout: Duration,
    /// See [`DEFAULT_CONNECT_TIMEOUT`].
    pub connect_timeout: Duration,
    /// See [`DEFAULT_RESPONSE_TIMEOUT`].
    pub response_timeout: Duration,
    /// See [`DEFAULT_IO_IDLE_TIMEOUT`].
    pub io_idle_timeout: Duration,
    /// See [`DEFAULT_UPGRADE_IDLE_TIMEOUT`].
    pub upgrade_idle_timeout: Duration,
    /// See [`DEFAULT_POOL_IDLE_PER_TARGET`].
    pub pool_idle_per_target: usize,
    /// See [`DEFAULT_POOL_IDLE_TIMEOUT`].
    pub pool_idle_timeout: Duration,
    /// See [`DEFAULT_MAX_CONNECTIONS`].
    pub max_connections: usize,
    /// See [`DEFAULT_MAX_REQUESTS_PER_ROUTE`].
    pub max_requests_per_route: usize,
    /// See [`DEFAULT_MAX_UPGRADES_PER_ROUTE`].
    pub max_upgrades_per_route: usize,
    /// At most one log line per this interval and kind of refusal (connections refused or
    /// evicted at the cap, requests refused at a route's cap), with the counts.
    pub refusal_log_interval: Duration,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            head_limit: DEFAULT_HEAD_LIMIT_BYTES,
            head_timeout: DEFAULT_HEAD_TIMEOUT,
            keep_alive_timeout: DEFAULT_KEEP_ALIVE_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            response_timeout: DEFAULT_RESPONSE_TIMEOUT,
            io_idle_timeout: DEFAULT_IO_IDLE_TIMEOUT,
            upgrade_idle_timeout: DEFAULT_UPGRADE_IDLE_TIMEOUT,
            pool_idle_per_target: DEFAULT_POOL_IDLE_PER_TARGET,
            pool_idle_timeout: DEFAULT_POOL_IDLE_TIMEOUT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_requests_per_route: DEFAULT_MAX_REQUESTS_PER_ROUTE,
            max_upgrades_per_route: DEFAULT_MAX_UPGRADES_PER_ROUTE,
            refusal_log_interval: REFUSAL_LOG_INTERVAL,
        }
    }
}

/// What every connection of one proxy shares.
pub(crate) struct Shared {
    table: HttpTable,
    stats: Arc<HttpStats>,
    config: ProxyConfig,
    pool: pool::Pool,
    /// Built on the first HTTPS backend connection (most gateways never need it).
    tls: OnceLock<Option<Arc<ClientConfig>>>,
    admission: Arc<admit::Admission>,
    refusals: Mutex<Refusals>,
    /// Wakes the silent backend of a route with `wol` (None: no Wake-on-LAN).
    waker: Option<Waker>,
}

/// What the proxy turned away, for the rate-limited summary lines.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Refusal {
    /// A new connection closed at accept: every slot had a request in flight.
    Connection,
    /// A waiting connection closed to make room for a new one.
    Evicted,
    /// A request answered 503: this route had its cap of requests in flight.
    RouteBusy(u64),
}

struct Refusals {
    connection: RefusalLog,
    evicted: RefusalLog,
    route_busy: RefusalLog,
    last_busy_route: u64,
}

impl Shared {
    fn new(
        table: HttpTable,
        stats: Arc<HttpStats>,
        config: ProxyConfig,
        waker: Option<Waker>,
    ) -> Self {
        Shared {
            table,
            waker,
            stats,
            pool: pool::Pool::new(
                config.pool_idle_per_target,
                config.max_requests_per_route,
                config.max_connections,
                config.pool_idle_timeout,
            ),
            admission: admit::Admission::new(
                config.max_connections,
                config.max_requests_per_route,
                config.max_upgrades_per_route,
            ),
            refusals: Mutex::new(Refusals {
                connection: RefusalLog::new(config.refusal_log_interval),
                evicted: RefusalLog::new(config.refusal_log_interval),
                route_busy: RefusalLog::new(config.refusal_log_interval),
                last_busy_route: 0,
            }),
            config,
            tls: OnceLock::new(),
        }
    }

    /// Counts a refusal; writes a summary line when one is due (at most one per interval and
    /// kind, see [`RefusalLog`]).
    pub(crate) fn refused(&self, what: Refusal) {
        let counter = match what {
            Refusal::Connection => &self.stats.refused,
            Refusal::Evicted => &self.stats.evicted,
            Refusal::RouteBusy(_) => &self.stats.route_busy,
        };
        HttpStats::add(counter, 1);
        let mut logs = self.refusals.lock().unwrap_or_else(|p| p.into_inner());
        let now = tokio::time::Instant::now();
        let report = match what {
            Refusal::Connection => logs.connection.refused(now),
            Refusal::Evicted => logs.evicted.refused(now),
            Refusal::RouteBusy(route) => {
                logs.last_busy_route = route;
                logs.route_busy.refused(now)
            }
        };
        if let Some(r) = report {
            self.log_refusals(what, r);
        }
    }

    /// When the next summary line is due, if refusals wait to be reported.
    fn refusals_due(&self) -> Option<tokio::time::Instant> {
        let logs = self.refusals.lock().unwrap_or_else(|p| p.into_inner());
        [
            logs.connection.due(),
            logs.evicted.due(),
            logs.route_busy.due(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Writes the summary lines that are due.
    fn flush_refusals(&self) {
        let mut logs = self.refusals.lock().unwrap_or_else(|p| p.into_inner());
        let now = tokio::time::Instant::now();
        let route = logs.last_busy_route;
        let due = [
            (Refusal::Connection, logs.connection.flush(now)),
            (Refusal::Evicted, logs.evicted.flush(now)),
            (Refusal::RouteBusy(route), logs.route_busy.flush(now)),
        ];
        drop(logs);
        for (what, report) in due {
            if let Some(r) = report {
                self.log_refusals(what, r);
            }
        }
    }

    fn log_refusals(&self, what: Refusal, r: RefusalReport) {
        let since = r.since();
        let (n, total) = (r.count, r.total);
        match what {
            Refusal::Connection => tracing::warn!(
                refused = n,
                total,
                "HTTP proxy: every connection slot ({}) has a request in flight; closed {n} new \
                 connection(s){since} ({total} in all)",
                self.admission.max_connections()
            ),
            Refusal::Evicted => tracing::warn!(
                evicted = n,
                total,
                "HTTP proxy at its connection cap ({}): closed {n} connection(s) waiting for a \
                 request{since} to make room for new ones ({total} in all)",
                self.admission.max_connections()
            ),
            Refusal::RouteBusy(route) => tracing::warn!(
                route_busy = n,
                total,
                last_route = route,
                "HTTP proxy: answered 503 to {n} request(s){since} on routes at their cap of {} \
                 requests (or {} upgrades) in flight, last on route {route} ({total} in all)",
                self.admission.max_per_route(),
                self.config.max_upgrades_per_route
            ),
        }
    }

    /// The TLS client configuration for backends (None if it cannot be built).
    fn tls_config(&self) -> Option<Arc<ClientConfig>> {
        self.tls
            .get_or_init(|| match tls::client_config() {
                Ok(c) => Some(c),
                Err(e) => {
                    tracing::error!(error = %e, "cannot set up TLS for HTTPS backends");
                    None
                }
            })
            .clone()
    }
}

/// Serves the HTTP proxy on `listener` with the routes of `table` until `shutdown` turns true
/// (or its sender is dropped), with the default limits ([`ProxyConfig::default`]) and no
/// Wake-on-LAN.
///
/// On shutdown it stops accepting at once; requests in flight finish (within their timeouts)
/// and idle keep-alive connections close.
pub async fn serve(
    listener: impl Into<Listener>,
    table: HttpTable,
    stats: Arc<HttpStats>,
    shutdown: watch::Receiver<bool>,
) {
    serve_with(
        listener,
        table,
        stats,
        shutdown,
        ProxyConfig::default(),
        None,
    )
    .await
}

/// [`serve`] with explicit limits and timeouts, and the `waker` that wakes the silent backend
/// of a route with `wol`.
pub async fn serve_with(
    listener: impl Into<Listener>,
    table: HttpTable,
    stats: Arc<HttpStats>,
    mut shutdown: watch::Receiver<bool>,
    config: ProxyConfig,
    waker: Option<Waker>,
) {
    let listener = listener.into();
    let shared = Arc::new(Shared::new(table, stats, config, waker));
    let mut sweep = tokio::time::interval(POOL_SWEEP_INTERVAL);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // See `conn::await_first_bytes`: safe only where no driver turn can come between the
    // accept and the call (the agent's runtime).
    let current_thread = tokio::runtime::Handle::current().runtime_flavor()
        == tokio::runtime::RuntimeFlavor::CurrentThread;
    loop {
        let due = shared.refusals_due();
        tokio::select! {
            _ = conn::stopped(&mut shutdown) => break,
            _ = sweep.tick() => shared.pool.sweep(),
            _ = tokio::time::sleep_until(due.unwrap_or_else(tokio::time::Instant::now)), if due.is_some() => {
                shared.flush_refusals();
            }
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    if current_thread {
                        conn::await_first_bytes(&stream);
                    }
                    let ticket = match shared.admission.admit() {
                        admit::Admit::Admitted(t) => t,
                        admit::Admit::Evicted(t) => {
                            shared.refused(Refusal::Evicted);
                            t
                        }
                        admit::Admit::Refused => {
                            shared.refused(Refusal::Connection);
                            continue;
                        }
                    };
                    tokio::spawn(conn::run(shared.clone(), stream, peer, shutdown.clone(), ticket));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "HTTP proxy accept failed; retrying shortly");
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                }
            },
        }
    }
    tracing::debug!("HTTP proxy stopped accepting");
}
