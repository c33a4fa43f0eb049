//! The HTTP reverse proxy on `GC_PROXY_PORT` (HTTP/1.1, streaming, keep-alive on both sides).
//!
//! The hub's reverse proxy sends every HTTP route's requests to this listener; each request is
//! routed by `X-Gateway-Target-Domain` (else `Host`) through the live [`HttpTable`] and relayed
//! to the route's LAN backend, plain or HTTPS.
//!
//! Files follow the request path:
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
//! Memory: a connection holds no buffer while idle between requests; while a request is in
//! flight it holds two fixed buffers of [`DEFAULT_HEAD_LIMIT_BYTES`] (client side and backend
//! side), which also carry bodies. Every wait is bounded by one of the timeouts below.

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
mod tls;
mod upgrade;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use rustls::ClientConfig;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

use crate::routes::{HttpStats, HttpTable};

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
/// Idle backend connections kept per target.
pub const DEFAULT_POOL_IDLE_PER_TARGET: usize = 4;
/// How long an idle backend connection is kept.
pub const DEFAULT_POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Most client connections served at once (more are closed at accept).
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
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
}

impl Shared {
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
/// (or its sender is dropped), with the default limits ([`ProxyConfig::default`]).
///
/// On shutdown it stops accepting at once; requests in flight finish (within their timeouts)
/// and idle keep-alive connections close.
pub async fn serve(
    listener: TcpListener,
    table: HttpTable,
    stats: Arc<HttpStats>,
    shutdown: watch::Receiver<bool>,
) {
    serve_with(listener, table, stats, shutdown, ProxyConfig::default()).await
}

/// [`serve`] with explicit limits and timeouts.
pub async fn serve_with(
    listener: TcpListener,
    table: HttpTable,
    stats: Arc<HttpStats>,
    mut shutdown: watch::Receiver<bool>,
    config: ProxyConfig,
) {
    let limit = Arc::new(Semaphore::new(config.max_connections.max(1)));
    let shared = Arc::new(Shared {
        table,
        stats,
        pool: pool::Pool::new(config.pool_idle_per_target, config.pool_idle_timeout),
        config,
        tls: OnceLock::new(),
    });
    let mut sweep = tokio::time::interval(POOL_SWEEP_INTERVAL);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = conn::stopped(&mut shutdown) => break,
            _ = sweep.tick() => shared.pool.sweep(),
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let Ok(permit) = limit.clone().try_acquire_owned() else {
                        tracing::warn!(peer = %peer.ip(), "HTTP proxy at its connection limit; closing a new connection");
                        continue;
                    };
                    let shared = shared.clone();
                    let rx = shutdown.clone();
                    tokio::spawn(async move {
                        conn::run(shared, stream, peer, rx).await;
                        drop(permit);
                    });
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
