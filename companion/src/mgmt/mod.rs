//! The management API the GateControl server calls (protocol §6).
//!
//! Served with tiny_http on a loopback address; the agent relays the tunnel side
//! (`<tunnel ip>:GC_API_PORT`) to it. [`serve`] takes an already-bound server and a shutdown
//! flag, so tests bind `127.0.0.1:0` and stop it themselves.
//!
//! Request path: accept ([`serve`], one thread) → a bounded queue → a small fixed pool of
//! workers ([`WORKERS`]) → [`dispatch`]: size cap, token check (constant time) with the
//! failed-auth limiter ([`auth`]), then one handler per endpoint ([`wol`], [`probe`],
//! [`self_update`], status and the small ones here). When the queue is full the acceptor
//! answers 503 itself; a wake (which may wait 300 s) holds at most [`MAX_CONCURRENT_WAKES`]
//! workers, so status and pushes keep flowing.

pub mod auth;
pub mod lan_scan;
pub mod probe;
pub mod self_update;
pub mod wol;

use std::io::Read;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gatelet_agent_api::env::{Cidr, Secret};
use serde_json::{json, Value};

use crate::agent_link::AgentLink;
use crate::heartbeat::{self_check, DnsCheck, SelfCheckInput, MAX_STATUS_BYTES};
use crate::state::Shared;

/// Largest request body accepted, in bytes (larger: 413).
pub const MAX_BODY_BYTES: usize = 16 * 1024;
/// Worker threads handling requests.
pub const WORKERS: usize = 4;
/// Requests waiting for a worker before the acceptor answers 503.
pub const QUEUE_DEPTH: usize = 16;
/// Wakes in progress at once (each holds a worker for up to its timeout).
pub const MAX_CONCURRENT_WAKES: usize = 2;
/// How often the acceptor looks at the shutdown flag.
pub const ACCEPT_POLL: Duration = Duration::from_millis(200);
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

    fn into_response(self) -> tiny_http::Response<std::io::Cursor<Vec<u8>>> {
        let mut r = tiny_http::Response::from_data(self.body).with_status_code(self.status);
        if let Ok(h) = tiny_http::Header::from_bytes(&b"Content-Type"[..], &b"application/json"[..])
        {
            r = r.with_header(h);
        }
        if let Some(s) = self.retry_after {
            if let Ok(h) = tiny_http::Header::from_bytes(&b"Retry-After"[..], s.to_string()) {
                r = r.with_header(h);
            }
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

/// Serves the management API on `server` until `shutdown` is set. Blocks the calling thread
/// (the acceptor); requests run on [`WORKERS`] threads. Workers finish the request they hold
/// after shutdown (a wake may take up to its timeout) and are not waited for.
pub fn serve(server: tiny_http::Server, ctx: MgmtContext, shutdown: Arc<AtomicBool>) {
    if ctx.gateway_token.is_none() {
        tracing::warn!(
            "management API disabled: GC_GATEWAY_TOKEN is not set, so every call except \
             /api/health answers 403; set it in gateway.env to let the server reach this gateway"
        );
    }
    ctx.serving.store(true, Ordering::SeqCst);
    let serving = ctx.serving.clone();
    let shared = Arc::new(Server {
        ctx,
        limiter: Mutex::new(auth::FailureLimiter::default()),
        wakes: AtomicUsize::new(0),
        self_update: Mutex::new(()),
    });
    let (tx, rx) = sync_channel::<tiny_http::Request>(QUEUE_DEPTH);
    let rx = Arc::new(Mutex::new(rx));
    for i in 0..WORKERS {
        let (rx, s) = (rx.clone(), shared.clone());
        let spawned = std::thread::Builder::new()
            .name(format!("mgmt-{i}"))
            .spawn(move || worker(&rx, &s));
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start a management API worker thread");
        }
    }
    tracing::info!(addr = %server.server_addr(), "management API serving");
    while !shutdown.load(Ordering::SeqCst) {
        let req = match server.recv_timeout(ACCEPT_POLL) {
            Ok(Some(r)) => r,
            Ok(None) => continue,
            Err(e) => {
                tracing::warn!(error = %e, "management API accept failed; retrying");
                std::thread::sleep(ACCEPT_POLL);
                continue;
            }
        };
        match tx.try_send(req) {
            Ok(()) => {}
            Err(TrySendError::Full(req)) => {
                let mut r = Reply::error(503, "busy");
                r.retry_after = Some(1);
                respond(req, r);
            }
            Err(TrySendError::Disconnected(req)) => {
                respond(req, Reply::error(503, "shutting_down"));
                break;
            }
        }
    }
    serving.store(false, Ordering::SeqCst);
}

fn worker(rx: &Mutex<Receiver<tiny_http::Request>>, s: &Server) {
    loop {
        // The lock is held only while waiting for the next request, never while handling.
        let next = rx.lock().unwrap_or_else(|p| p.into_inner()).recv();
        let Ok(req) = next else { return };
        handle(req, s);
    }
}

fn respond(req: tiny_http::Request, reply: Reply) {
    if let Err(e) = req.respond(reply.into_response()) {
        tracing::debug!(error = %e, "management API: answer not delivered");
    }
}

fn handle(mut req: tiny_http::Request, s: &Server) {
    let started = Instant::now();
    let method = req.method().as_str().to_owned();
    let path = req.url().split('?').next().unwrap_or("").to_owned();
    let reply = match prepare(&mut req, &method, &path, s) {
        Ok(body) => {
            if path == "/api/config-changed" {
                // Answer first, then tell the sync engine: the server waits only 2 s.
                respond(req, Reply::json(200, &json!({"ok": true})));
                (s.ctx.on_config_changed)();
                tracing::info!("config change pushed by the server");
                return;
            }
            route(&method, &path, body.as_ref(), s)
        }
        Err(r) => r,
    };
    tracing::debug!(
        %method, %path, status = reply.status,
        took_ms = started.elapsed().as_millis() as u64,
        "management API call"
    );
    respond(req, reply);
}

/// Everything before the handler: health, size cap, auth, method, body.
fn prepare(
    req: &mut tiny_http::Request,
    method: &str,
    path: &str,
    s: &Server,
) -> Result<Option<Value>, Reply> {
    if path == "/api/health" {
        return Err(if method == "GET" {
            Reply::json(200, &json!({"ok": true}))
        } else {
            Reply::error(405, "method_not_allowed")
        });
    }
    if req.body_length().is_some_and(|n| n > MAX_BODY_BYTES) {
        return Err(Reply::error(413, "payload_too_large"));
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
    read_json_body(req)
}

fn authenticate(req: &tiny_http::Request, s: &Server) -> Result<(), Reply> {
    let Some(expected) = s.ctx.gateway_token.as_ref() else {
        return Err(Reply::error(403, "management_api_disabled"));
    };
    let given = req
        .headers()
        .iter()
        .find(|h| h.field.equiv(TOKEN_HEADER))
        .map(|h| h.value.as_str().as_bytes());
    if given.is_some_and(|g| auth::token_matches(g, expected.expose().as_bytes())) {
        return Ok(());
    }
    let ip = req
        .remote_addr()
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |a| a.ip());
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

fn read_json_body(req: &mut tiny_http::Request) -> Result<Option<Value>, Reply> {
    let mut buf = Vec::new();
    req.as_reader()
        .take(MAX_BODY_BYTES as u64 + 1)
        .read_to_end(&mut buf)
        .map_err(|_| Reply::error(400, "body_unreadable"))?;
    if buf.len() > MAX_BODY_BYTES {
        return Err(Reply::error(413, "payload_too_large"));
    }
    if buf.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    serde_json::from_slice(&buf)
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
