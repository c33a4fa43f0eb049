//! The local diagnostics page: what `gatelet-companion status` shows, as an HTML page (`/`)
//! and as JSON (`/status.json`), for someone on the LAN with a browser.
//!
//! The page ([`page`]) says in one word whether all is well and why ([`view`]), then the
//! tunnel, sync, heartbeat, a route table with each route's state, charts of the last hour and
//! the recent events. The server renders its first state (readable without JavaScript); its
//! script and style sheet are embedded in the binary (`/assets/page.js`, `/assets/page.css`,
//! about 12 KB together) and redraw it from `status.json` every 5 s: that JSON is the status
//! report plus the page's `view`, whose `history` is a fixed ring of samples ([`history`]:
//! one per 30 s, one hour) that a thread of this page takes from the agent's last status.
//!
//! Secret-free (tokens and keys never reach the snapshot). It listens where
//! `GATELET_DIAG_LISTEN` says (default [`DEFAULT_LISTEN`], loopback only).
//!
//! Who may look ([`Access`]): on a loopback listen address the page is open. On any other
//! address it needs a login, with the password whose hash `gatelet-companion diag-password`
//! stored in `<state dir>/diag-password` ([`password`]); without that file the page is not
//! served at all ([`Access::for_listen`] says why, the daemon logs it and runs on). Callers
//! from loopback (`curl` on the box) stay open either way: the listener takes no PROXY
//! header, so a loopback peer is the box itself. Logins are limited per address
//! ([`limiter`]: 30 attempts per 15 min, 5 wrong passwords lock the address out for 30 min);
//! a login starts a session ([`session`]: HttpOnly, SameSite=Strict cookie, server-side
//! table, CSRF token per session for actions). Every login, wrong password, lockout and
//! action is written to the store's events table (kinds in [`audit`]).
//!
//! Actions (`POST /action/sync`, `/action/wake`, `/action/probe` with a `route_id`) need the
//! caller's CSRF token: a session's own, or for loopback and open access a per-process token
//! the page carries (so another site open in a browser on the box cannot act).
//!
//! Caveat: a GateControl route whose LAN target is this box's loopback address and this
//! port would reach the page as a loopback caller; route validation does not refuse such
//! targets today.
//!
//! `/metrics` ([`metrics`], Prometheus text) follows the same rules, and also opens to
//! `Authorization: Bearer <token>` for scrapers ([`scrape_token`]: the token that
//! `gatelet-companion diag-metrics-token` printed).

pub mod form;
pub mod history;
pub mod limiter;
pub mod metrics;
pub mod page;
pub mod password;
pub mod scrape_token;
pub mod session;
pub mod view;

use std::net::{IpAddr, SocketAddr, TcpListener};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use ring::rand::SystemRandom;

use gatelet_agent_api::control::{
    ProbeRequest, Request as AgentRequest, Response as AgentResponse, WakeRequest,
};

use crate::agent_link::AgentLink;
use crate::http::{self, Request, Responder, Response};
use crate::state::{now_ms, Shared};
use crate::status::{report, Report};
use crate::store::Store;
use form::{field, form_fields};
use history::History;
use limiter::{AfterFailure, LoginLimiter, Refusal};
use page::{login_page, page};
use password::PasswordHash;
use scrape_token::ScrapeToken;
use session::{NewSession, Sessions, COOKIE};

/// Where the page listens unless `GATELET_DIAG_LISTEN` says otherwise.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9877";

/// Event kinds the page writes to the store (the audit trail).
pub mod audit {
    /// A login succeeded (detail: the address).
    pub const LOGIN: &str = "diag_login";
    /// A wrong password (detail: the address and the tries left).
    pub const LOGIN_FAILED: &str = "diag_login_failed";
    /// An address was locked out.
    pub const LOCKOUT: &str = "diag_lockout";
    /// A session was ended by its user.
    pub const LOGOUT: &str = "diag_logout";
    /// An action (sync now, wake, re-probe) was asked for (detail: what, who, the outcome).
    pub const ACTION: &str = "diag_action";
}

/// Wait for the agent's answer to a re-probe.
const PROBE_TIMEOUT_MS: u64 = 2_500;
/// How long a wake asked for on the page waits for the host (on its own thread).
const WAKE_TIMEOUT_MS: u64 = 30_000;

/// What the page's actions act on, passed in by the daemon.
#[derive(Clone)]
pub struct Actions {
    /// Asks the sync loop for a config check now.
    pub sync_now: crate::mgmt::Notify,
    /// The agent's control socket (wake, probe); None: those actions answer 503.
    pub agent: Option<AgentLink>,
}

impl std::fmt::Debug for Actions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Actions")
            .field("agent", &self.agent)
            .finish_non_exhaustive()
    }
}

/// Who may see the page.
#[derive(Debug, Clone)]
pub enum Access {
    /// Everyone who reaches the listener (a loopback listen address).
    Open,
    /// Loopback callers, and others after a login with this password.
    Login(PasswordHash),
}

impl Access {
    /// The access rule for a page on `listen`, with the password file under `state_dir`;
    /// an error (to log) when the page must not be served.
    pub fn for_listen(listen: SocketAddr, state_dir: &Path) -> Result<Access, String> {
        if listen.ip().is_loopback() {
            return Ok(Access::Open);
        }
        let file = password::path(state_dir);
        match password::load(state_dir) {
            Ok(Some(h)) => Ok(Access::Login(h)),
            Ok(None) => Err(format!(
                "not serving the diagnostics page on {listen}: a non-loopback address needs a \
                 password and {} does not exist (set one with `gatelet-companion diag-password \
                 --state-dir {}`, or set GATELET_DIAG_LISTEN to a loopback address or off)",
                file.display(),
                state_dir.display()
            )),
            Err(e) => Err(format!(
                "not serving the diagnostics page on {listen}: its password file is unusable: \
                 {e} ({}; set it again with `gatelet-companion diag-password`)",
                file.display()
            )),
        }
    }
}

/// The diagnostics page's server limits: the defaults of [`http::Limits`] with one worker, a
/// budget of 16 connections and no PROXY header (nothing relays to this page).
pub fn limits() -> http::Limits {
    http::Limits {
        max_connections: 16,
        workers: 1,
        queue: 4,
        proxy_key: None,
        ..http::Limits::default()
    }
}

/// The page's server state: the access rule, login limiter and sessions.
struct Gate {
    access: Access,
    scrape: Option<ScrapeToken>,
    actions: Option<Actions>,
    /// The CSRF token of callers without a session (loopback, open access): actions from a
    /// page on the box need it too, so another site open in a browser there cannot act.
    local_csrf: String,
    /// A wake runs on its own thread; one at a time.
    waking: Arc<AtomicBool>,
    limiter: Mutex<LoginLimiter>,
    sessions: Mutex<Sessions>,
    rng: SystemRandom,
    /// The last hour of samples, for the charts.
    history: Arc<Mutex<History>>,
}

/// What `/status.json` answers: the status report (the same fields as `gatelet-companion
/// status --json`) and the page's [`view::View`] of it.
#[derive(serde::Serialize)]
struct PageStatus {
    #[serde(flatten)]
    report: Report,
    view: view::View,
}

/// Who is asking.
enum Caller {
    /// Open access or a loopback caller.
    Local,
    /// A live session, with its token and CSRF token.
    Session { token: String, csrf: String },
    /// Nobody known.
    Anonymous,
}

fn html(status: u16, body: String) -> Response {
    Response::new(status, "text/html; charset=utf-8", body.into_bytes())
}

fn redirect(to: &str) -> Response {
    let mut r = Response::new(303, "text/plain", Vec::new());
    r.headers.push(("Location", to.into()));
    r
}

fn audit(store: Option<&Mutex<Store>>, kind: &str, detail: &str) {
    tracing::info!(kind, detail, "diagnostics page");
    if let Some(store) = store {
        let mut s = store.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = s.add_event(kind, detail) {
            tracing::warn!(error = %e, kind, "cannot record an audit event");
        }
    }
}

/// Whether a POST came from a page of this origin: an `Origin` header, when the browser
/// sends one, must name the `Host` the request went to.
fn same_origin(req: &Request) -> bool {
    let Some(origin) = req.header("origin") else {
        return true;
    };
    let host = req.header("host").unwrap_or_default();
    let origin = origin.trim_ascii();
    let rest = origin
        .strip_prefix(b"http://")
        .or_else(|| origin.strip_prefix(b"https://"));
    rest.is_some_and(|r| r == host.trim_ascii())
}

impl Gate {
    fn caller(&self, req: &Request, now: Instant) -> Caller {
        if matches!(self.access, Access::Open) || req.peer.ip().is_loopback() {
            return Caller::Local;
        }
        let token = req
            .header("cookie")
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| session::cookie(h, COOKIE));
        let Some(token) = token else {
            return Caller::Anonymous;
        };
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        match sessions.check(token, now) {
            Some(csrf) => Caller::Session {
                token: token.to_owned(),
                csrf,
            },
            None => Caller::Anonymous,
        }
    }

    fn login(&self, req: &Request, store: Option<&Mutex<Store>>, now: Instant) -> Response {
        let Access::Login(hash) = &self.access else {
            return redirect("/");
        };
        let ip: IpAddr = req.peer.ip();
        let began = self
            .limiter
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .begin(ip, now);
        if let Err(refusal) = began {
            let msg = match refusal {
                Refusal::LockedOut(d) => format!(
                    "Too many wrong passwords from this address: locked out for {} more \
                     minutes.",
                    d.as_secs().div_ceil(60)
                ),
                Refusal::TooMany(d) => format!(
                    "Too many login attempts from this address: try again in {} minutes.",
                    d.as_secs().div_ceil(60)
                ),
                Refusal::Full => "Too many addresses are locked out: try again later.".into(),
            };
            let mut r = html(429, login_page(&msg));
            r.headers
                .push(("Retry-After", refusal.retry_after_s().to_string()));
            return r;
        }
        let fields = form_fields(&req.body).unwrap_or_default();
        let given = field(&fields, "password").unwrap_or_default();
        if hash.verify(given.as_bytes()) {
            self.limiter
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .succeeded(ip);
            let new = self
                .sessions
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .create(&self.rng, now);
            let Some(NewSession { token, .. }) = new else {
                return html(500, login_page("No randomness for a session; try again."));
            };
            audit(store, audit::LOGIN, &format!("login from {ip}"));
            let mut r = redirect("/");
            r.headers.push((
                "Set-Cookie",
                format!(
                    "{COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}",
                    session::MAX_AGE.as_secs()
                ),
            ));
            return r;
        }
        let after = self
            .limiter
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .failed(ip, now);
        match after {
            AfterFailure::Left(n) => {
                audit(
                    store,
                    audit::LOGIN_FAILED,
                    &format!("wrong password from {ip}"),
                );
                html(
                    401,
                    login_page(&format!(
                        "Wrong password ({n} more before this address is locked out)."
                    )),
                )
            }
            AfterFailure::LockedOut => {
                audit(
                    store,
                    audit::LOCKOUT,
                    &format!(
                        "{ip} locked out for {} min after {} wrong passwords",
                        limiter::LOCKOUT.as_secs() / 60,
                        limiter::FAILURES
                    ),
                );
                let mut r = html(
                    429,
                    login_page(&format!(
                        "Wrong password. Too many wrong passwords from this address: locked \
                         out for {} minutes.",
                        limiter::LOCKOUT.as_secs() / 60
                    )),
                );
                r.headers
                    .push(("Retry-After", limiter::LOCKOUT.as_secs().to_string()));
                r
            }
        }
    }

    /// Checks a scraper's bearer token under the login limiter: a wrong token counts as a
    /// wrong password, and a locked-out address is refused (429) whatever it sends. A right
    /// token is not counted as an attempt: a scraper polls every few seconds for good.
    fn check_bearer(
        &self,
        token: &ScrapeToken,
        given: &[u8],
        ip: IpAddr,
        now: Instant,
    ) -> Result<bool, Response> {
        let refuse = |retry_after_s: u64| {
            let mut r = Response::json_error(429, "too_many_attempts");
            r.headers.push(("Retry-After", retry_after_s.to_string()));
            r
        };
        let mut limiter = self.limiter.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(left) = limiter.locked_for(ip, now) {
            return Err(refuse(left.as_secs().max(1)));
        }
        if token.matches(given) {
            return Ok(true);
        }
        if let Err(refusal) = limiter.begin(ip, now) {
            return Err(refuse(refusal.retry_after_s()));
        }
        limiter.failed(ip, now);
        Ok(false)
    }

    /// Carries out action `what` (`sync`, `wake`, `probe`) for an authorised caller `who`;
    /// every one lands in the events table.
    fn act(
        &self,
        what: &str,
        route_id: Option<u64>,
        shared: &Shared,
        store: Option<&Mutex<Store>>,
        who: IpAddr,
    ) -> Result<(), Response> {
        let Some(actions) = &self.actions else {
            return Err(Response::json_error(503, "actions_unavailable"));
        };
        if what == "sync" {
            (actions.sync_now)();
            audit(store, audit::ACTION, &format!("sync now asked by {who}"));
            return Ok(());
        }
        if what != "wake" && what != "probe" {
            return Err(Response::json_error(404, "no_such_action"));
        }
        let Some(id) = route_id else {
            return Err(Response::json_error(400, "route_id_required"));
        };
        let route = {
            let snap = shared.lock();
            snap.config.as_ref().and_then(|c| {
                let http = c.http_routes.iter().map(|r| {
                    (
                        r.id,
                        r.domain.clone(),
                        &r.target_host,
                        r.target_port,
                        &r.wol,
                    )
                });
                let l4 = c.l4_routes.iter().map(|r| {
                    (
                        r.id,
                        format!("l4:{}", r.listen_port),
                        &r.target_host,
                        r.target_port,
                        &r.wol,
                    )
                });
                http.chain(l4)
                    .find(|r| r.0 == id)
                    .map(|(_, name, host, port, wol)| {
                        (
                            name,
                            host.clone(),
                            port,
                            wol.as_ref().map(|w| w.mac.clone()),
                        )
                    })
            })
        };
        let Some((name, host, port, mac)) = route else {
            return Err(Response::json_error(404, "no_such_route"));
        };
        let Some(agent) = actions.agent.clone() else {
            return Err(Response::json_error(503, "agent_unavailable"));
        };
        if what == "probe" {
            let req = AgentRequest::Probe(ProbeRequest {
                host: host.clone(),
                port,
                timeout_ms: PROBE_TIMEOUT_MS,
            });
            let wait = std::time::Duration::from_millis(PROBE_TIMEOUT_MS + 1_000);
            let outcome = match agent.request(&req, wait) {
                Ok(AgentResponse::Probed(p)) if p.reachable => "reachable".to_owned(),
                Ok(AgentResponse::Probed(p)) => format!(
                    "unreachable ({})",
                    p.error.unwrap_or_else(|| "no answer".into())
                ),
                Ok(AgentResponse::Error { message }) => format!("agent error: {message}"),
                Ok(_) => "unexpected agent answer".into(),
                Err(e) => format!("agent not reached: {e}"),
            };
            audit(
                store,
                audit::ACTION,
                &format!("re-probe of {name} ({host}:{port}) by {who}: {outcome}"),
            );
            return Ok(());
        }
        let Some(mac) = mac else {
            return Err(Response::json_error(409, "route_has_no_wol"));
        };
        if self.waking.swap(true, Ordering::AcqRel) {
            return Err(Response::json_error(429, "wake_in_progress"));
        }
        audit(
            store,
            audit::ACTION,
            &format!("wake of {name} ({mac}) asked by {who}"),
        );
        let req = AgentRequest::Wake(WakeRequest {
            mac,
            lan_host: Some(host),
            port: Some(port),
            timeout_ms: WAKE_TIMEOUT_MS,
            trigger: "diag".into(),
        });
        let waking = self.waking.clone();
        // The agent reports the outcome in its status; the supervisor records it as a `wake`
        // event. This thread only waits for the agent, so the page's one worker does not.
        let spawned = std::thread::Builder::new()
            .name("diag-wake".into())
            .spawn(move || {
                let wait = std::time::Duration::from_millis(WAKE_TIMEOUT_MS + 3_000);
                if let Err(e) = agent.request(&req, wait) {
                    tracing::warn!(error = %e, "wake from the diagnostics page: agent not reached");
                }
                waking.store(false, Ordering::Release);
            });
        if spawned.is_err() {
            self.waking.store(false, Ordering::Release);
            return Err(Response::json_error(503, "busy"));
        }
        Ok(())
    }

    fn respond(&self, req: &Request, shared: &Shared, store: Option<&Mutex<Store>>) -> Response {
        let now = Instant::now();
        let caller = self.caller(req, now);
        let path = req.path();
        match (req.method(), path) {
            ("GET", "/login") => match caller {
                Caller::Anonymous => html(200, login_page("")),
                _ => redirect("/"),
            },
            ("POST", "/login") if !same_origin(req) => Response::json_error(403, "cross_origin"),
            ("POST", "/login") => self.login(req, store, now),
            ("POST", "/logout") => {
                let Caller::Session { token, csrf } = caller else {
                    return redirect("/login");
                };
                let fields = form_fields(&req.body).unwrap_or_default();
                let given = field(&fields, "csrf").unwrap_or_default();
                if !same_origin(req)
                    || !crate::mgmt::auth::token_matches(given.as_bytes(), csrf.as_bytes())
                {
                    return Response::json_error(403, "bad_csrf_token");
                }
                self.sessions
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .end(&token);
                audit(
                    store,
                    audit::LOGOUT,
                    &format!("logout from {}", req.peer.ip()),
                );
                let mut r = redirect("/login");
                r.headers.push((
                    "Set-Cookie",
                    format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"),
                ));
                r
            }
            ("GET", "/metrics") => {
                let bearer = req
                    .header("authorization")
                    .and_then(|v| v.trim_ascii().strip_prefix(b"Bearer "))
                    .map(<[u8]>::trim_ascii);
                let scraper = match (&self.scrape, bearer) {
                    (Some(t), Some(b)) if matches!(caller, Caller::Anonymous) => {
                        match self.check_bearer(t, b, req.peer.ip(), now) {
                            Ok(ok) => ok,
                            Err(refused) => return refused,
                        }
                    }
                    _ => false,
                };
                if matches!(caller, Caller::Anonymous) && !scraper {
                    let mut r = Response::json_error(401, "login_or_bearer_token_required");
                    r.headers.push(("WWW-Authenticate", "Bearer".into()));
                    return r;
                }
                let body = metrics::render(&shared.snapshot());
                Response::new(200, metrics::CONTENT_TYPE, body.into_bytes())
            }
            ("POST", p) if p.starts_with("/action/") => {
                let csrf = match &caller {
                    Caller::Anonymous => return redirect("/login"),
                    Caller::Local => self.local_csrf.as_str(),
                    Caller::Session { csrf, .. } => csrf.as_str(),
                };
                let fields = form_fields(&req.body).unwrap_or_default();
                let given = field(&fields, "csrf").unwrap_or_default();
                if !same_origin(req)
                    || !crate::mgmt::auth::token_matches(given.as_bytes(), csrf.as_bytes())
                {
                    return Response::json_error(403, "bad_csrf_token");
                }
                let who = req.peer.ip();
                let route_id = field(&fields, "route_id").and_then(|v| v.parse::<u64>().ok());
                match self.act(&p["/action/".len()..], route_id, shared, store, who) {
                    Ok(()) => redirect("/"),
                    Err(r) => r,
                }
            }
            ("GET", page::CSS_PATH) => Response::new(
                200,
                "text/css; charset=utf-8",
                page::CSS.as_bytes().to_vec(),
            ),
            ("GET", page::JS_PATH) => Response::new(
                200,
                "text/javascript; charset=utf-8",
                page::JS.as_bytes().to_vec(),
            ),
            ("GET", "/" | "/status.json") => {
                let (csrf, logout) = match &caller {
                    Caller::Anonymous if path == "/" => return redirect("/login"),
                    Caller::Anonymous => return Response::json_error(401, "login_required"),
                    Caller::Local => (self.local_csrf.as_str(), false),
                    Caller::Session { csrf, .. } => (csrf.as_str(), true),
                };
                let report = report(shared, store);
                let series = self
                    .history
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .series();
                let view = view::build(&report, series, self.actions.is_some(), now_ms());
                if path == "/" {
                    html(200, page(&view, csrf, logout))
                } else {
                    let body = serde_json::to_string(&PageStatus { report, view })
                        .unwrap_or_else(|_| "{}".into());
                    Response::new(200, "application/json", body.into_bytes())
                }
            }
            _ => Response::new(404, "text/plain", b"not found\n".to_vec()),
        }
    }
}

/// Serves the page on `listener` under `access` until `shutdown` is set, with [`limits`]:
/// each answer is built from memory in microseconds (a login: one PBKDF2, ~0.2 s on a
/// router), so one worker suffices.
pub fn serve(
    listener: TcpListener,
    shared: Shared,
    store: Option<Arc<Mutex<Store>>>,
    access: Access,
    scrape: Option<ScrapeToken>,
    actions: Option<Actions>,
    shutdown: Arc<AtomicBool>,
) {
    if let Ok(addr) = listener.local_addr() {
        let login = matches!(access, Access::Login(_));
        tracing::info!(%addr, login, "diagnostics page serving");
    }
    let rng = SystemRandom::new();
    let history = Arc::new(Mutex::new(History::default()));
    let shared_for_history = shared.clone();
    let mut local = [0u8; 32];
    if ring::rand::SecureRandom::fill(&rng, &mut local).is_err() {
        tracing::error!("no randomness for the diagnostics page's CSRF token: not serving it");
        return;
    }
    let gate = Gate {
        access,
        scrape,
        actions,
        local_csrf: local.iter().map(|b| format!("{b:02x}")).collect(),
        waking: Arc::new(AtomicBool::new(false)),
        limiter: Mutex::new(LoginLimiter::default()),
        sessions: Mutex::new(Sessions::default()),
        rng,
        history: history.clone(),
    };
    let handler: http::Handler = Arc::new(move |req: Request, out: Responder| {
        let mut resp = gate.respond(&req, &shared, store.as_deref());
        for (k, v) in [
            ("Cache-Control", "no-store"),
            ("X-Content-Type-Options", "nosniff"),
            ("X-Frame-Options", "DENY"),
            // Not `no-referrer`: under it a browser sends `Origin: null` with the page's own
            // form posts, which the same-origin check refuses (the login never worked).
            ("Referrer-Policy", "same-origin"),
            (
                "Content-Security-Policy",
                "default-src 'none'; style-src 'self'; script-src 'self'; connect-src 'self'; \
                 form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
            ),
        ] {
            resp.headers.push((k, v.into()));
        }
        out.send(&resp);
    });
    std::thread::scope(|scope| {
        scope.spawn(|| sample(&shared_for_history, &history, &shutdown));
        http::serve(listener, limits(), handler, &shutdown, "diag");
    });
}

/// How often the sampler looks at the agent's last status (the supervisor refreshes it every
/// [`crate::supervisor::STATUS_INTERVAL`]); [`History`] keeps one sample per
/// [`history::INTERVAL_MS`] and the newest as an open one.
const SAMPLE_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Feeds `history` from `shared` until `shutdown` is set.
fn sample(shared: &Shared, history: &Mutex<History>, shutdown: &AtomicBool) {
    while !shutdown.load(Ordering::Relaxed) {
        let agent = {
            let s = shared.lock();
            s.agent.clone().filter(|_| s.agent_reachable)
        };
        history
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .record(now_ms(), agent.as_ref());
        let until = Instant::now() + SAMPLE_EVERY;
        while Instant::now() < until && !shutdown.load(Ordering::Relaxed) {
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;

    fn lan_gate(password: &str) -> Gate {
        let hash = PasswordHash::new(password.as_bytes(), 1000, &SystemRandom::new()).unwrap();
        Gate {
            access: Access::Login(hash),
            scrape: None,
            actions: None,
            local_csrf: "local-csrf".into(),
            waking: Arc::new(AtomicBool::new(false)),
            limiter: Mutex::new(LoginLimiter::default()),
            sessions: Mutex::new(Sessions::default()),
            rng: SystemRandom::new(),
            history: Arc::default(),
        }
    }

    fn req(peer: &str, raw: &str) -> Request {
        let head = crate::http::parse_head(raw.as_bytes()).unwrap().unwrap();
        let body = raw.as_bytes()[head.len..].to_vec();
        Request {
            head,
            body,
            peer: peer.parse().unwrap(),
        }
    }

    fn post(peer: &str, path: &str, cookie: &str, body: &str) -> Request {
        req(
            peer,
            &format!(
                "POST {path} HTTP/1.1\r\nHost: gw:9877\r\nCookie: {cookie}\r\n\
                 Content-Type: application/x-www-form-urlencoded\r\n\
                 Content-Length: {}\r\n\r\n{body}",
                body.len()
            ),
        )
    }

    fn get(peer: &str, path: &str, cookie: &str) -> Request {
        req(
            peer,
            &format!("GET {path} HTTP/1.1\r\nHost: gw:9877\r\nCookie: {cookie}\r\n\r\n"),
        )
    }

    fn header<'a>(r: &'a Response, name: &str) -> Option<&'a str> {
        r.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    fn body(r: &Response) -> String {
        String::from_utf8_lossy(&r.body).into_owned()
    }

    const LAN: &str = "192.168.1.50:40000";

    #[test]
    fn lan_caller_logs_in_gets_a_strict_cookie_and_logs_out_with_csrf() {
        let dir = tempfile::tempdir().unwrap();
        let db = Mutex::new(Store::open(dir.path()).unwrap());
        let (gate, shared) = (lan_gate("a good password"), Shared::default());
        let store = Some(&db);
        // Anonymous: the page redirects to the form, the JSON says 401, nothing leaks.
        let r = gate.respond(&get(LAN, "/", ""), &shared, store);
        assert_eq!((r.status, header(&r, "Location")), (303, Some("/login")));
        let r = gate.respond(
            &get(LAN, "/status.json", "gatelet_diag=forged"),
            &shared,
            store,
        );
        assert_eq!(r.status, 401);
        assert!(body(&gate.respond(&get(LAN, "/login", ""), &shared, store))
            .contains("type=\"password\""));
        // Loopback stays open.
        let r = gate.respond(&get("127.0.0.1:5000", "/status.json", ""), &shared, store);
        assert_eq!(r.status, 200);
        // A wrong password: 401 and an audit row; the right one: a session cookie.
        let r = gate.respond(&post(LAN, "/login", "", "password=nope"), &shared, store);
        assert_eq!(r.status, 401);
        assert!(body(&r).contains("4 more"), "{}", body(&r));
        let r = gate.respond(
            &post(LAN, "/login", "", "password=a+good%20password"),
            &shared,
            store,
        );
        assert_eq!(r.status, 303, "{}", body(&r));
        let cookie = header(&r, "Set-Cookie").unwrap().to_owned();
        assert!(cookie.contains("; HttpOnly") && cookie.contains("; SameSite=Strict"));
        let pair = cookie.split(';').next().unwrap().to_owned();
        let r = gate.respond(&get(LAN, "/", &pair), &shared, store);
        assert_eq!(r.status, 200);
        let page = body(&r);
        let csrf = page
            .split("name=\"csrf\" value=\"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap()
            .to_owned();
        assert_eq!(csrf.len(), 64);
        // The cookie alone (another site's form) cannot act: the CSRF token is needed.
        let r = gate.respond(&post(LAN, "/logout", &pair, "csrf=bad"), &shared, store);
        assert_eq!(r.status, 403);
        let mut cross = post(LAN, "/logout", &pair, &format!("csrf={csrf}"));
        cross
            .head
            .headers
            .push(("Origin".into(), b"http://evil.example".to_vec()));
        assert_eq!(gate.respond(&cross, &shared, store).status, 403);
        let r = gate.respond(
            &post(LAN, "/logout", &pair, &format!("csrf={csrf}")),
            &shared,
            store,
        );
        assert_eq!((r.status, header(&r, "Location")), (303, Some("/login")));
        assert_eq!(
            gate.respond(&get(LAN, "/status.json", &pair), &shared, store)
                .status,
            401
        );
        let kinds: Vec<String> = db
            .lock()
            .unwrap()
            .events(10)
            .unwrap()
            .into_iter()
            .map(|e| format!("{} {}", e.kind, e.detail))
            .collect();
        assert!(kinds.contains(&"diag_login_failed wrong password from 192.168.1.50".into()));
        assert!(kinds.contains(&"diag_login login from 192.168.1.50".into()));
        assert!(kinds.contains(&"diag_logout logout from 192.168.1.50".into()));
    }

    #[test]
    fn five_wrong_passwords_lock_the_address_out_even_for_the_right_one() {
        let dir = tempfile::tempdir().unwrap();
        let db = Mutex::new(Store::open(dir.path()).unwrap());
        let (gate, shared) = (lan_gate("a good password"), Shared::default());
        let store = Some(&db);
        for i in 0..4 {
            let r = gate.respond(&post(LAN, "/login", "", "password=x"), &shared, store);
            assert_eq!(r.status, 401, "attempt {i}");
        }
        let r = gate.respond(&post(LAN, "/login", "", "password=x"), &shared, store);
        assert_eq!(r.status, 429);
        assert_eq!(header(&r, "Retry-After"), Some("1800"));
        let r = gate.respond(
            &post(LAN, "/login", "", "password=a+good+password"),
            &shared,
            store,
        );
        assert_eq!(r.status, 429);
        assert!(header(&r, "Set-Cookie").is_none());
        assert!(body(&r).contains("locked out"));
        // Another address still logs in.
        let r = gate.respond(
            &post("192.168.1.51:1", "/login", "", "password=a+good+password"),
            &shared,
            store,
        );
        assert_eq!(r.status, 303);
        let ev = db.lock().unwrap().events(10).unwrap();
        assert!(ev.iter().any(|e| e.kind == audit::LOCKOUT
            && e.detail == "192.168.1.50 locked out for 30 min after 5 wrong passwords"));
    }

    #[test]
    fn lan_listen_without_a_password_is_refused_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let lan: SocketAddr = "192.168.1.5:9877".parse().unwrap();
        let e = Access::for_listen(lan, dir.path()).unwrap_err();
        assert!(
            e.contains("needs a password") && e.contains("diag-password"),
            "{e}"
        );
        assert!(matches!(
            Access::for_listen("127.0.0.1:9877".parse().unwrap(), dir.path()),
            Ok(Access::Open)
        ));
        std::fs::write(password::path(dir.path()), "garbage\n").unwrap();
        let e = Access::for_listen(lan, dir.path()).unwrap_err();
        assert!(e.contains("unusable"), "{e}");
        let mut input = &b"a good password\n"[..];
        password::set_from(dir.path(), &mut input).unwrap();
        assert!(matches!(
            Access::for_listen(lan, dir.path()),
            Ok(Access::Login(_))
        ));
    }

    #[test]
    fn form_fields_decode_and_refuse_broken_escapes() {
        assert_eq!(
            form_fields(b"a=1+2&b=%26%3D&c").unwrap(),
            vec![
                ("a".into(), "1 2".into()),
                ("b".into(), "&=".into()),
                ("c".into(), String::new())
            ]
        );
        assert!(form_fields(b"a=%2").is_none());
        assert!(form_fields(b"a=%zz").is_none());
        assert!(form_fields(b"a=%ff").is_none());
    }

    #[test]
    fn metrics_need_a_session_loopback_or_the_scrape_token() {
        let dir = tempfile::tempdir().unwrap();
        let (token, _) = scrape_token::create(dir.path(), &SystemRandom::new()).unwrap();
        let mut gate = lan_gate("a good password");
        gate.scrape = scrape_token::load(dir.path()).unwrap();
        let shared = Shared::default();
        let with = |auth: &str| {
            req(
                LAN,
                &format!("GET /metrics HTTP/1.1\r\nHost: gw\r\nAuthorization: {auth}\r\n\r\n"),
            )
        };
        let r = gate.respond(&get(LAN, "/metrics", ""), &shared, None);
        assert_eq!(r.status, 401);
        assert_eq!(header(&r, "WWW-Authenticate"), Some("Bearer"));
        assert_eq!(
            gate.respond(&with("Bearer nope"), &shared, None).status,
            401
        );
        assert_eq!(
            gate.respond(&with(&format!("Basic {token}")), &shared, None)
                .status,
            401
        );
        let r = gate.respond(&with(&format!("Bearer {token}")), &shared, None);
        assert_eq!(r.status, 200);
        assert_eq!(header(&r, "Content-Type"), Some(metrics::CONTENT_TYPE));
        // Wrong tokens count as wrong passwords: after the fifth the address is locked out,
        // the right token included, while another address still scrapes.
        let from = |peer: &str, token: &str| {
            req(
                peer,
                &format!(
                    "GET /metrics HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {token}\r\n\r\n"
                ),
            )
        };
        // A scraper polls for good: right tokens are not counted as attempts.
        for _ in 0..100 {
            assert_eq!(gate.respond(&from(LAN, &token), &shared, None).status, 200);
        }
        let guesser = "192.168.1.66:5000";
        for _ in 0..limiter::FAILURES {
            assert_eq!(
                gate.respond(&from(guesser, "guess"), &shared, None).status,
                401
            );
        }
        let locked = gate.respond(&from(guesser, &token), &shared, None);
        assert_eq!(locked.status, 429);
        assert!(header(&locked, "Retry-After").is_some());
        assert_eq!(gate.respond(&from(LAN, &token), &shared, None).status, 200);
        assert!(body(&r).contains("gatelet_agent_up 0\n"));
        let local = gate.respond(&get("127.0.0.1:1", "/metrics", ""), &shared, None);
        assert_eq!(local.status, 200);
        let login = gate.respond(
            &post(LAN, "/login", "", "password=a+good+password"),
            &shared,
            None,
        );
        let cookie = header(&login, "Set-Cookie").unwrap();
        let pair = cookie.split(';').next().unwrap();
        assert_eq!(
            gate.respond(&get(LAN, "/metrics", pair), &shared, None)
                .status,
            200
        );
    }

    #[test]
    fn actions_need_the_csrf_token_and_are_audited() {
        use std::sync::atomic::AtomicUsize;
        let dir = tempfile::tempdir().unwrap();
        let db = Mutex::new(Store::open(dir.path()).unwrap());
        let store = Some(&db);
        let syncs = Arc::new(AtomicUsize::new(0));
        let mut gate = lan_gate("a good password");
        gate.actions = Some(Actions {
            sync_now: {
                let syncs = syncs.clone();
                Arc::new(move || {
                    syncs.fetch_add(1, Ordering::SeqCst);
                })
            },
            agent: None,
        });
        let shared = Shared::default();
        // Anonymous from the LAN: to the login form, nothing done.
        let r = gate.respond(
            &post(LAN, "/action/sync", "", "csrf=local-csrf"),
            &shared,
            store,
        );
        assert_eq!((r.status, header(&r, "Location")), (303, Some("/login")));
        // Loopback: the page's own token is needed (another site in a browser on the box
        // cannot act), then the action runs and is recorded.
        let local = "127.0.0.1:4000";
        let r = gate.respond(&post(local, "/action/sync", "", ""), &shared, store);
        assert_eq!(r.status, 403);
        let page = body(&gate.respond(&get(local, "/", ""), &shared, store));
        assert!(page.contains("value=\"local-csrf\""), "{page}");
        assert!(!page.contains("/logout"));
        let r = gate.respond(
            &post(local, "/action/sync", "", "csrf=local-csrf"),
            &shared,
            store,
        );
        assert_eq!(r.status, 303);
        assert_eq!(syncs.load(Ordering::SeqCst), 1);
        // A session: its own token, not the local one.
        let login = gate.respond(
            &post(LAN, "/login", "", "password=a+good+password"),
            &shared,
            store,
        );
        let cookie = header(&login, "Set-Cookie").unwrap();
        let pair = cookie.split(';').next().unwrap().to_owned();
        let r = gate.respond(
            &post(LAN, "/action/sync", &pair, "csrf=local-csrf"),
            &shared,
            store,
        );
        assert_eq!(r.status, 403);
        assert_eq!(syncs.load(Ordering::SeqCst), 1);
        let page = body(&gate.respond(&get(LAN, "/", &pair), &shared, store));
        let csrf = page
            .split("name=\"csrf\" value=\"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap()
            .to_owned();
        let ok = |path: &str, extra: &str| {
            gate.respond(
                &post(LAN, path, &pair, &format!("csrf={csrf}{extra}")),
                &shared,
                store,
            )
        };
        assert_eq!(ok("/action/sync", "").status, 303);
        assert_eq!(syncs.load(Ordering::SeqCst), 2);
        assert_eq!(ok("/action/wake", "").status, 400);
        assert_eq!(ok("/action/wake", "&route_id=9").status, 404);
        assert_eq!(ok("/action/nope", "").status, 404);
        let details: Vec<String> = db
            .lock()
            .unwrap()
            .events(20)
            .unwrap()
            .into_iter()
            .filter(|e| e.kind == audit::ACTION)
            .map(|e| format!("{} x{}", e.detail, e.count))
            .collect();
        assert!(
            details.contains(&"sync now asked by 127.0.0.1 x1".into()),
            "{details:?}"
        );
        assert!(
            details.contains(&"sync now asked by 192.168.1.50 x1".into()),
            "{details:?}"
        );
    }

    #[test]
    fn serves_html_and_json_and_404() {
        let server = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = server.local_addr().unwrap();
        let shared = Shared::default();
        shared.lock().sync.config_hash = Some("sha256:feed".into());
        let stop = Arc::new(AtomicBool::new(false));
        let t = {
            let (shared, stop) = (shared.clone(), stop.clone());
            std::thread::spawn(move || serve(server, shared, None, Access::Open, None, None, stop))
        };
        let get = |path: &str| {
            use std::io::{Read, Write};
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            write!(
                s,
                "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            )
            .unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).unwrap();
            out
        };
        let html = get("/");
        let json = get("/status.json");
        let missing = get("/nope");
        let js = get(page::JS_PATH);
        stop.store(true, Ordering::Relaxed);
        t.join().unwrap();
        assert!(html.starts_with("HTTP/1.1 200"), "{html}");
        assert!(html.contains("<dd class=\"\">sha256:feed</dd>"), "{html}");
        assert!(html.contains("<span id=\"word\">Down</span>"), "{html}");
        assert!(json.contains("\"config_hash\":\"sha256:feed\""), "{json}");
        assert!(json.contains("\"view\":{\"now_ms\":"), "{json}");
        assert!(
            json.contains("\"history\":{\"interval_ms\":30000"),
            "{json}"
        );
        assert!(missing.starts_with("HTTP/1.1 404"), "{missing}");
        assert!(html.contains("Referrer-Policy: same-origin\r\n"), "{html}");
        assert!(html.contains("script-src 'self'"), "{html}");
        assert!(
            js.starts_with("HTTP/1.1 200") && js.contains("text/javascript"),
            "{js}"
        );
        assert!(js.ends_with(page::JS), "{js}");
    }
}
