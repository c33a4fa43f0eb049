//! The management API the GateControl server calls (protocol §6).
//!
//! Served by [`crate::http`] (bounded head, body, time and connections) on a loopback address;
//! the agent relays the tunnel side (`<tunnel ip>:GC_API_PORT`) to it, prefixing each
//! connection with a PROXY v2 header so the caller's real address reaches the failed-auth
//! limiter (signed: only the agent, which holds gateway.env's WireGuard key, can name a caller;
//! see `gatelet_agent_api::proxy_v2`). [`serve`] takes an already-bound listener and a shutdown flag, so tests bind
//! `127.0.0.1:0` and stop it themselves.
//!
//! Request path: the server's I/O thread reads a complete request → a bounded queue → a small
//! fixed pool of workers ([`WORKERS`]) → `handle`: token check (constant time) with the
//! failed-auth limiter ([`auth`]), then one handler per endpoint ([`wol`], [`probe`],
//! [`self_update`], status and the small ones here), chosen in `route`. When the queue is
//! full the I/O thread answers 503 itself; a wake (which may wait 300 s) holds at most
//! [`MAX_CONCURRENT_WAKES`] workers, so status and pushes keep flowing.

pub mod auth;
pub mod lan_scan;
pub mod probe;
pub mod self_update;
pub mod wol;

use std::net::{IpAddr, TcpListener};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use gatelet_agent_api::env::{Cidr, Secret};
use serde_json::{json, Value};

use crate::agent_link::AgentLink;
use crate::heartbeat::{self_check, DnsCheck, SelfCheckInput, MAX_STATUS_BYTES};
use crate::http::{self, Request, Responder, Response};
use crate::state::Shared;

/// Largest request body accepted, in bytes (larger: 413).
pub const MAX_BODY_BYTES: usize = 16 * 1024;
/// Worker threads handling requests.
pub const WORKERS: usize = 4;
/// Requests waiting for a worker before the acceptor answers 503.
pub const QUEUE_DEPTH: usize = 16;
/// Wakes in progress at once (each holds a worker for up to its timeout).
pub const MAX_CONCURRENT_WAKES: usize = 2;
/// The request header carrying the push token.
pub const TOKEN_HEADER: &str = "X-Gateway-Token";

/// A callback with no arguments (the push signal).
pub type Notify = Arc<dyn Fn() + Send + Sync>;
/// Supplies the gateway's LAN subnets (the scope of `/api/probe` and `/api/wol`'s host).
pub type SubnetProvider = Arc<dyn Fn() -> Vec<Cidr> + Send + Sync>;
/// Supplies the MACs the config allows to be woken.
pub type MacProvider = Arc<dyn Fn() -> Vec<String> + Send + Sync>;
/// Wall-clock milliseconds since the Unix epoch.
pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// Everything the management API needs. Build with [`MgmtContext::new`], then set the
/// providers the daemon has (all fields are public).
#[derive(Clone)]
pub struct MgmtContext {
    /// `GC_GATEWAY_TOKEN`; None disables every endpoint but `/api/health` (403).
    pub gateway_token: Option<Secret>,
    /// The shared status cache (`/api/status` reads only this).
    pub shared: Shared,
    /// The agent's control socket (wake, probe).
    pub agent: AgentLink,
    /// Called after `/api/config-changed` has been answered (the sync engine's push signal).
    pub on_config_changed: Notify,
    /// The state dir (self-update flag).
    pub state_dir: PathBuf,
    /// The gateway's LAN subnets.
    pub lan_subnets: SubnetProvider,
    /// The WoL whitelist: every `wol_mac` of the current config.
    pub wol_whitelist: MacProvider,
    /// `GC_LAN_PROBE_TARGET`: the probe target when a request names none.
    pub lan_probe_target: Option<(String, Option<u16>)>,
    /// The DNS check whose cached result `/api/status` reports.
    pub dns: Option<DnsCheck>,
    /// Wall clock (self-update timestamps and cooldown, probe timestamps).
    pub clock: Clock,
    /// Set while [`serve`] runs (the heartbeat's `api_healthy` reads it).
    pub serving: Arc<AtomicBool>,
    /// LAN scans (`/api/lan-scan`); None answers 501.
    pub lan_scan: Option<crate::discovery::Scanner>,
    /// The key of the agent's PROXY headers (`HeaderKey::derive` of `WG_PRIVATE_KEY`): a
    /// relayed caller is known by its own address, so the failed-auth limit counts per
    /// caller. None: no header is read, every caller counts as the relay's address.
    pub proxy_key: Option<gatelet_agent_api::proxy_v2::HeaderKey>,
}

impl std::fmt::Debug for MgmtContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MgmtContext")
            .field("token_set", &self.gateway_token.is_some())
            .field("agent", &self.agent)
            .field("state_dir", &self.state_dir)
            .finish_non_exhaustive()
    }
}

impl MgmtContext {
    /// A context with no LAN subnets, an empty whitelist, no push receiver and the system
    /// clock: safe defaults that refuse rather than allow.
    pub fn new(
        gateway_token: Option<Secret>,
        shared: Shared,
        agent: AgentLink,
        state_dir: impl Into<PathBuf>,
    ) -> Self {
        MgmtContext {
            gateway_token,
            shared,
            agent,
            on_config_changed: Arc::new(|| {}),
            state_dir: state_dir.into(),
            lan_subnets: Arc::new(Vec::new),
            wol_whitelist: Arc::new(Vec::new),
            lan_probe_target: None,
            dns: None,
            clock: Arc::new(crate::state::now_ms),
            serving: Arc::default(),
            lan_scan: None,
            proxy_key: None,
        }
    }
}

/// An answer: status, JSON body, optional `Retry-After` seconds.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// JSON body.
    pub body: Vec<u8>,
    /// `Retry-After` header value in seconds.
    pub retry_after: Option<u64>,
}

impl Reply {
    /// A JSON answer.
    pub fn json(status: u16, body: &Value) -> Reply {
        Reply {
            status,
            body: serde_json::to_vec(body).unwrap_or_else(|_| b"{}".to_vec()),
            retry_after: None,
        }
    }

    /// `{"error": code}` with `status`.
    pub fn error(status: u16, code: &str) -> Reply {
        Reply::json(status, &json!({ "error": code }))
    }

    fn into_response(self) -> Response {
        let mut r = Response::new(self.status, "application/json", self.body);
        if let Some(s) = self.retry_after {
            r.headers.push(("Retry-After", s.to_string()));
        }
        r
    }
}

/// State shared by the workers.
struct Server {
    ctx: MgmtContext,
    limiter: Mutex<auth::FailureLimiter>,
    wakes: AtomicUsize,
    self_update: Mutex<()>,
}

/// The server limits of the management API: [`http::Limits::default`] with [`WORKERS`],
/// [`QUEUE_DEPTH`] and [`MAX_BODY_BYTES`].
pub fn limits() -> http::Limits {
    http::Limits {
        workers: WORKERS,
        queue: QUEUE_DEPTH,
        max_body: MAX_BODY_BYTES,
        ..http::Limits::default()
    }
}

/// Serves the management API on `listener` with [`limits`] until `shutdown` is set. Blocks
/// the calling thread (the server's I/O thread); requests run on [`WORKERS`] threads.
/// Workers finish the request they hold after shutdown (a wake may take up to its timeout)
/// and are not waited for.
pub fn serve(listener: TcpListener, ctx: MgmtContext, shutdown: Arc<AtomicBool>) {
    let limits = http::Limits {
        proxy_key: ctx.proxy_key.clone(),
        ..limits()
    };
    serve_with(listener, ctx, shutdown, limits);
}

/// [`serve`] with other limits (tests shrink the budget and timeouts).
pub fn serve_with(
    listener: TcpListener,
    ctx: MgmtContext,
    shutdown: Arc<AtomicBool>,
    limits: http::Limits,
) {
    if ctx.gateway_token.is_none() {
        tracing::warn!(
            "management API disabled: GC_GATEWAY_TOKEN is not set, so every call except \
             /api/health answers 403; set it in gateway.env to let the server reach this gateway"
        );
    }
    ctx.serving.store(true, Ordering::SeqCst);
    let serving = ctx.serving.clone();
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "management API serving");
    }
    let shared = Arc::new(Server {
        ctx,
        limiter: Mutex::new(auth::FailureLimiter::default()),
        wakes: AtomicUsize::new(0),
        self_update: Mutex::new(()),
    });
    let handler: http::Handler = Arc::new(move |req, out| handle(req, out, &shared));
    http::serve(listener, limits, handler, &shutdown, "mgmt");
    serving.store(false, Ordering::SeqCst);
}

fn handle(req: Request, out: Responder, s: &Server) {
    let started = Instant::now();
    let (method, path) = (req.method(), req.path());
    let reply = match prepare(&req, method, path, s) {
        Ok(body) => {
            if path == "/api/config-changed" {
                // Answer first, then tell the sync engine: the server waits only 2 s.
                out.send(&Reply::json(200, &json!({"ok": true})).into_response());
                (s.ctx.on_config_changed)();
                tracing::info!("config change pushed by the server");
                return;
            }
            route(method, path, body.as_ref(), s)
        }
        Err(r) => r,
    };
    tracing::debug!(
        %method, %path, status = reply.status,
        took_ms = started.elapsed().as_millis() as u64,
        "management API call"
    );
    out.send(&reply.into_response());
}

/// Everything before the handler: health, auth, method, body (its size is capped by the
/// server: [`MAX_BODY_BYTES`]).
fn prepare(req: &Request, method: &str, path: &str, s: &Server) -> Result<Option<Value>, Reply> {
    if path == "/api/health" {
        return Err(if method == "GET" {
            Reply::json(200, &json!({"ok": true}))
        } else {
            Reply::error(405, "method_not_allowed")
        });
    }
    authenticate(req, s)?;
    let expected = match path {
        "/api/status" => "GET",
        "/api/config-changed"
        | "/api/wol"
        | "/api/probe"
        | "/api/self-update"
        | "/api/lan-scan" => "POST",
        _ => return Err(Reply::error(404, "not_found")),
    };
    if method != expected {
        return Err(Reply::error(405, "method_not_allowed"));
    }
    json_body(&req.body)
}

fn authenticate(req: &Request, s: &Server) -> Result<(), Reply> {
    let Some(expected) = s.ctx.gateway_token.as_ref() else {
        return Err(Reply::error(403, "management_api_disabled"));
    };
    let given = req.header(TOKEN_HEADER);
    if given.is_some_and(|g| auth::token_matches(g, expected.expose().as_bytes())) {
        return Ok(());
    }
    let ip = req.peer.ip();
    let now = Instant::now();
    let mut limiter = s.limiter.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(left) = limiter.blocked_for(ip, now) {
        let mut r = Reply::error(429, "too_many_failed_auth");
        r.retry_after = Some(left.as_secs().max(1));
        return Err(r);
    }
    limiter.record_failure(ip, now);
    drop(limiter);
    tracing::warn!(%ip, missing = given.is_none(), "management API call with a bad token");
    Err(match given {
        None => Reply::error(401, "missing_gateway_token"),
        Some(_) => Reply::error(403, "invalid_token"),
    })
}

fn json_body(buf: &[u8]) -> Result<Option<Value>, Reply> {
    if buf.len() > MAX_BODY_BYTES {
        return Err(Reply::error(413, "payload_too_large"));
    }
    if buf.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    serde_json::from_slice(buf)
        .map(Some)
        .map_err(|_| Reply::error(400, "invalid_json"))
}

fn route(method: &str, path: &str, body: Option<&Value>, s: &Server) -> Reply {
    let empty = Value::Object(Default::default());
    let body_or_empty = body.unwrap_or(&empty);
    match (method, path) {
        ("GET", "/api/status") => status(&s.ctx),
        ("POST", "/api/wol") => {
            if s.wakes.fetch_add(1, Ordering::SeqCst) >= MAX_CONCURRENT_WAKES {
                s.wakes.fetch_sub(1, Ordering::SeqCst);
                let mut r = Reply::error(503, "wol_busy");
                r.retry_after = Some(5);
                return r;
            }
            let r = wol::handle(&s.ctx, body_or_empty);
            s.wakes.fetch_sub(1, Ordering::SeqCst);
            r
        }
        ("POST", "/api/probe") => probe::handle(&s.ctx, body),
        ("POST", "/api/self-update") => {
            let _one_at_a_time = s.self_update.lock().unwrap_or_else(|p| p.into_inner());
            self_update::handle(&s.ctx, body_or_empty)
        }
        ("POST", "/api/lan-scan") => lan_scan::handle(&s.ctx, body),
        _ => Reply::error(404, "not_found"),
    }
}

/// `/api/status`: the self-check from the cached snapshot. Never calls the agent.
fn status(ctx: &MgmtContext) -> Reply {
    let snap = ctx.shared.snapshot();
    let configured = snap.configured_l4_routes();
    let check = self_check(&SelfCheckInput {
        agent: snap.agent.as_ref().filter(|_| snap.agent_reachable),
        configured_l4_routes: configured,
        api_serving: true,
        dns_resolve_ok: ctx.dns.as_ref().and_then(DnsCheck::get),
    });
    match check.encode_bounded(MAX_STATUS_BYTES) {
        Ok(body) => Reply {
            status: 200,
            body,
            retry_after: None,
        },
        Err(e) => {
            tracing::error!(error = %e, "cannot encode /api/status");
            Reply::error(500, "status_unavailable")
        }
    }
}

/// A [`SubnetProvider`] reading this box's interfaces on each call (cheap: one
/// `getifaddrs`), so a DHCP change is seen by the next probe.
pub fn system_subnets(src: crate::telemetry::TelemetrySource) -> SubnetProvider {
    Arc::new(move || {
        crate::telemetry::lan_subnets(&src)
            .iter()
            .map(crate::telemetry::LanSubnet::cidr)
            .collect()
    })
}

/// Whether `ip` lies in one of `subnets`.
pub fn in_scope(ip: IpAddr, subnets: &[Cidr]) -> bool {
    subnets.iter().any(|c| c.contains(ip))
}
