//! The local diagnostics page: what `gatelet-companion status` shows, as a small HTML page
//! (`/`) and as JSON (`/status.json`), for someone on the LAN with a browser.
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
//! `/metrics` ([`metrics`], Prometheus text) follows the same rules, and also opens to
//! `Authorization: Bearer <token>` for scrapers ([`scrape_token`]: the token that
//! `gatelet-companion diag-metrics-token` printed).

pub mod limiter;
pub mod metrics;
pub mod password;
pub mod scrape_token;
pub mod session;

use std::net::{IpAddr, SocketAddr, TcpListener};
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use ring::rand::SystemRandom;

use crate::http::{self, Request, Responder, Response};
use crate::state::{now_ms, Shared};
use crate::status::{render, report};
use crate::store::Store;
use limiter::{AfterFailure, LoginLimiter, Refusal};
use password::PasswordHash;
use scrape_token::ScrapeToken;
use session::{NewSession, Sessions, COOKIE};

/// Where the page listens unless `GATELET_DIAG_LISTEN` says otherwise.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9877";
/// How often the page reloads itself.
const REFRESH_S: u32 = 5;

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

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "body{font-family:sans-serif;margin:1.5em;max-width:60em}\
     pre{background:#f4f4f4;padding:1em;overflow-x:auto}\
     .err{color:#b00020}form{margin:1em 0}input{font-size:1em;padding:.3em}";

/// The HTML page for a rendered status text; `csrf` adds a logout button (a session).
pub fn page(status_text: &str, csrf: Option<&str>) -> String {
    let logout = csrf.map_or(String::new(), |t| {
        format!(
            "<form method=\"post\" action=\"/logout\"><input type=\"hidden\" name=\"csrf\" \
             value=\"{}\"><button>Log out</button></form>",
            escape(t)
        )
    });
    format!(
        "<!doctype html><html><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"refresh\" content=\"{REFRESH_S}\">\
         <meta name=\"viewport\" content=\"width=device-width\">\
         <title>gatelet</title><style>{STYLE}</style></head><body>\
         <h1>gatelet</h1><pre>{}</pre><p><a href=\"/status.json\">status.json</a></p>{logout}\
         </body></html>",
        escape(status_text)
    )
}

/// The login form, with a message (already plain text) above it.
pub fn login_page(message: &str) -> String {
    let msg = if message.is_empty() {
        String::new()
    } else {
        format!("<p class=\"err\" id=\"msg\">{}</p>", escape(message))
    };
    format!(
        "<!doctype html><html><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width\">\
         <title>gatelet: log in</title><style>{STYLE}</style></head><body>\
         <h1>gatelet</h1>{msg}<form method=\"post\" action=\"/login\">\
         <label>Password <input type=\"password\" name=\"password\" id=\"password\" \
         autocomplete=\"current-password\" autofocus required></label> \
         <button id=\"login\">Log in</button></form></body></html>"
    )
}

/// The diagnostics page's server limits: the defaults of [`http::Limits`] with one worker, a
/// budget of 16 connections and no PROXY header (nothing relays to this page).
pub fn limits() -> http::Limits {
    http::Limits {
        max_connections: 16,
        workers: 1,
        queue: 4,
        proxy_from_loopback: false,
        ..http::Limits::default()
    }
}

/// Decodes an `application/x-www-form-urlencoded` body into its fields (`+` and `%XX`);
/// None when it is not valid UTF-8 after decoding or has a broken escape.
pub fn form_fields(body: &[u8]) -> Option<Vec<(String, String)>> {
    fn decode(s: &[u8]) -> Option<String> {
        let mut out = Vec::with_capacity(s.len());
        let mut i = 0;
        while i < s.len() {
            match s[i] {
                b'+' => out.push(b' '),
                b'%' => {
                    let h = s.get(i + 1..i + 3)?;
                    let h = std::str::from_utf8(h).ok()?;
                    out.push(u8::from_str_radix(h, 16).ok()?);
                    i += 2;
                }
                b => out.push(b),
            }
            i += 1;
        }
        String::from_utf8(out).ok()
    }
    body.split(|&b| b == b'&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let mut it = kv.splitn(2, |&b| b == b'=');
            let k = decode(it.next().unwrap_or_default())?;
            let v = decode(it.next().unwrap_or_default())?;
            Some((k, v))
        })
        .collect()
}

fn field<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// The page's server state: the access rule, login limiter and sessions.
struct Gate {
    access: Access,
    scrape: Option<ScrapeToken>,
    limiter: Mutex<LoginLimiter>,
    sessions: Mutex<Sessions>,
    rng: SystemRandom,
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
                    (Some(t), Some(b)) => t.matches(b),
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
            ("GET", "/" | "/status.json") => {
                let csrf = match &caller {
                    Caller::Anonymous if path == "/" => return redirect("/login"),
                    Caller::Anonymous => return Response::json_error(401, "login_required"),
                    Caller::Local => None,
                    Caller::Session { csrf, .. } => Some(csrf.as_str()),
                };
                let r = report(shared, store);
                if path == "/" {
                    html(200, page(&render(&r, now_ms()), csrf))
                } else {
                    let body = serde_json::to_string(&r).unwrap_or_else(|_| "{}".into());
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
    shutdown: Arc<AtomicBool>,
) {
    if let Ok(addr) = listener.local_addr() {
        let login = matches!(access, Access::Login(_));
        tracing::info!(%addr, login, "diagnostics page serving");
    }
    let gate = Gate {
        access,
        scrape,
        limiter: Mutex::new(LoginLimiter::default()),
        sessions: Mutex::new(Sessions::default()),
        rng: SystemRandom::new(),
    };
    let handler: http::Handler = Arc::new(move |req: Request, out: Responder| {
        let mut resp = gate.respond(&req, &shared, store.as_deref());
        for (k, v) in [
            ("Cache-Control", "no-store"),
            ("X-Content-Type-Options", "nosniff"),
            ("X-Frame-Options", "DENY"),
            ("Referrer-Policy", "no-referrer"),
            (
                "Content-Security-Policy",
                "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; \
                 frame-ancestors 'none'",
            ),
        ] {
            resp.headers.push((k, v.into()));
        }
        out.send(&resp);
    });
    http::serve(listener, limits(), handler, &shutdown, "diag");
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
            limiter: Mutex::new(LoginLimiter::default()),
            sessions: Mutex::new(Sessions::default()),
            rng: SystemRandom::new(),
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
    fn page_escapes_what_it_shows() {
        let p = page("route <script>alert(1)</script> & \"x\"", None);
        assert!(!p.contains("<script>"));
        assert!(p.contains("&lt;script&gt;alert(1)&lt;/script&gt; &amp; &quot;x&quot;"));
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
            std::thread::spawn(move || serve(server, shared, None, Access::Open, None, stop))
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
        stop.store(true, Ordering::Relaxed);
        t.join().unwrap();
        assert!(html.starts_with("HTTP/1.1 200"), "{html}");
        assert!(html.contains("config:    sha256:feed"), "{html}");
        assert!(json.contains("\"config_hash\":\"sha256:feed\""), "{json}");
        assert!(missing.starts_with("HTTP/1.1 404"), "{missing}");
    }
}
