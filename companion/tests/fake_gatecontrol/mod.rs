//! A fake GateControl server for tests: the gateway API of protocol §3, replaying the real
//! fixtures (`companion/tests/data`, copied from `shared/protocol/fixtures`).
//!
//! It listens on `127.0.0.1:0` and enforces what the real server enforces:
//! - the rate limit (100 successful requests per 15 min per client, express-rate-limit style:
//!   a fixed window from the first request, checked before auth, failed answers not counted),
//!   with `RateLimit-Policy/Limit/Remaining/Reset` on every answer it produces and a 429 with
//!   `Retry-After` and the fixture's body once exhausted;
//! - auth: `Authorization: Bearer <t>` with the scheme exactly (else 401
//!   `missing_bearer_token`), `gc_gw_` + 64 lowercase hex (else 401 `invalid_token_format`),
//!   the expected token (else 403 `invalid_token`); unknown paths get the admin API's 401;
//! - `/config/check?hash=`: 304 with an empty body when the (percent-decoded) hash equals the
//!   current `config_hash` exactly, else 200 `{"config_hash":...}`; `/config`: the document,
//!   with an ETag and `If-None-Match` → 304;
//! - heartbeat: bodies over 16 KiB get 413 before anything else; without
//!   `Content-Type: application/json` the body is stored as `{}`; malformed JSON and wrongly
//!   typed fields get the real 400 answers.
//!
//! Tests can switch the config document ([`FakeGateControl::set_config_fixture`]), change the
//! rate limit, inject faults (a response cut mid-body, a status), and read every request as
//! received: method, raw target, headers in order with their original case, body, and the
//! connection it came on ([`Recorded`]).
//!
//! The HTTP/1.1 server is hand-written on `std::net` (about 150 lines) rather than tiny_http,
//! because tests need what tiny_http hides: cutting a response mid-body and closing the
//! socket, and telling connections apart. Keep-alive works as in Node (`timeout=5`).
//!
//! Use from another test crate: `mod fake_gatecontrol;` next to this directory.
#![allow(dead_code)]

pub mod discovery;

use std::collections::VecDeque;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The fixture directory of the companion's tests.
pub fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data")
}

/// The server's request limit per window.
pub const LIMIT: u32 = 100;
/// The server's rate-limit window.
pub const WINDOW: Duration = Duration::from_secs(900);
/// Largest request body accepted on the gateway API (`Content-Length` pre-check).
pub const MAX_BODY: usize = 16 * 1024;
/// Idle keep-alive timeout, as Node's default.
pub const KEEP_ALIVE: Duration = Duration::from_secs(5);
/// Largest request head accepted.
const MAX_HEAD: usize = 16 * 1024;

/// One request as the server received it, and the status it got.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// Which TCP connection it came on (1, 2, ... in accept order).
    pub conn: u64,
    /// `GET`, `POST`, ...
    pub method: String,
    /// The request target exactly as sent: path and raw query.
    pub target: String,
    /// Headers in order, names in the case they were sent.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
    /// The status answered.
    pub status: u16,
}

impl Recorded {
    /// The path, without the query.
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }

    /// The raw query (after `?`), if any.
    pub fn raw_query(&self) -> Option<&str> {
        self.target.split_once('?').map(|(_, q)| q)
    }

    /// A query parameter, percent-decoded as the server (Express) decodes it.
    pub fn query_param(&self, name: &str) -> Option<String> {
        query_param(self.raw_query()?, name)
    }

    /// Every value of a header (name compared case-insensitively).
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The value of a header that must be present once; None when absent or repeated.
    pub fn header(&self, name: &str) -> Option<&str> {
        match self.header_all(name).as_slice() {
            [one] => Some(one),
            _ => None,
        }
    }
}

/// A misbehaviour for the next request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Answer normally but send only the head and half the body, then close the socket.
    TruncateBody,
    /// Close the connection without answering.
    CloseWithoutAnswer,
    /// Answer with this status and a JSON error body (after counting and auth).
    Status(u16),
}

struct State {
    fixtures: PathBuf,
    api_token: String,
    config: Vec<u8>,
    config_hash: String,
    limit: u32,
    window: Duration,
    window_reset: Option<Instant>,
    count: u32,
    requests: Vec<Recorded>,
    heartbeats: Vec<serde_json::Value>,
    faults: VecDeque<Fault>,
    next_conn: u64,
    discovery: discovery::Ingest,
}

/// The running fake server. Stops when dropped.
pub struct FakeGateControl {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

/// Reads `GC_API_TOKEN` from the fixture `gateway-env.txt`.
pub fn fixture_api_token(fixtures: &Path) -> io::Result<String> {
    let text = std::fs::read_to_string(fixtures.join("gateway-env.txt"))?;
    text.lines()
        .find_map(|l| l.strip_prefix("GC_API_TOKEN="))
        .map(|t| t.trim().to_owned())
        .ok_or_else(|| io::Error::other("gateway-env.txt has no GC_API_TOKEN"))
}

fn hash_of(doc: &[u8]) -> io::Result<String> {
    let v: serde_json::Value = serde_json::from_slice(doc)
        .map_err(|e| io::Error::other(format!("config document is not JSON: {e}")))?;
    v.get("config_hash")
        .and_then(|h| h.as_str())
        .map(str::to_owned)
        .ok_or_else(|| io::Error::other("config document has no config_hash"))
}

impl FakeGateControl {
    /// Starts on `127.0.0.1:0` with the fixtures of `fixtures` (`gateway-config.json` as the
    /// current config, `gateway-env.txt`'s `GC_API_TOKEN` as the only valid token).
    pub fn start(fixtures: impl AsRef<Path>) -> io::Result<FakeGateControl> {
        let fixtures = fixtures.as_ref().to_path_buf();
        let token = fixture_api_token(&fixtures)?;
        FakeGateControl::start_with_token(fixtures, &token)
    }

    /// Starts with the companion's fixtures.
    pub fn start_default() -> io::Result<FakeGateControl> {
        FakeGateControl::start(fixture_dir())
    }

    /// Starts with `api_token` as the only valid token.
    pub fn start_with_token(
        fixtures: impl AsRef<Path>,
        api_token: &str,
    ) -> io::Result<FakeGateControl> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        FakeGateControl::start_on(listener, fixtures, api_token)
    }

    /// Starts on an already bound `listener` (the demo binds the hub's tunnel address).
    pub fn start_on(
        listener: TcpListener,
        fixtures: impl AsRef<Path>,
        api_token: &str,
    ) -> io::Result<FakeGateControl> {
        let fixtures = fixtures.as_ref().to_path_buf();
        let config = std::fs::read(fixtures.join("gateway-config.json"))?;
        let config_hash = hash_of(&config)?;
        let addr = listener.local_addr()?;
        let state = Arc::new(Mutex::new(State {
            fixtures,
            api_token: api_token.to_owned(),
            config,
            config_hash,
            limit: LIMIT,
            window: WINDOW,
            window_reset: None,
            count: 0,
            requests: Vec::new(),
            heartbeats: Vec::new(),
            faults: VecDeque::new(),
            next_conn: 0,
            discovery: discovery::Ingest::default(),
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let accept = {
            let (state, stop) = (state.clone(), stop.clone());
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    let conn = {
                        let mut s = lock(&state);
                        s.next_conn += 1;
                        s.next_conn
                    };
                    let (state, stop) = (state.clone(), stop.clone());
                    std::thread::spawn(move || serve_connection(stream, conn, &state, &stop));
                }
            })
        };
        Ok(FakeGateControl {
            addr,
            state,
            stop,
            accept: Some(accept),
        })
    }

    /// `http://127.0.0.1:<port>`, the `GC_SERVER_URL` to use.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves `name` from the fixture directory as the config document from now on.
    pub fn set_config_fixture(&self, name: &str) -> io::Result<()> {
        let path = lock(&self.state).fixtures.join(name);
        self.set_config(std::fs::read(path)?)
    }

    /// Serves `doc` (JSON with a `config_hash`) as the config document from now on.
    pub fn set_config(&self, doc: Vec<u8>) -> io::Result<()> {
        let hash = hash_of(&doc)?;
        let mut s = lock(&self.state);
        s.config = doc;
        s.config_hash = hash;
        Ok(())
    }

    /// The current document's `config_hash`.
    pub fn config_hash(&self) -> String {
        lock(&self.state).config_hash.clone()
    }

    /// The current document.
    pub fn config(&self) -> Vec<u8> {
        lock(&self.state).config.clone()
    }

    /// A new limit and window; the current window starts over.
    pub fn set_rate_limit(&self, limit: u32, window: Duration) {
        let mut s = lock(&self.state);
        s.limit = limit;
        s.window = window;
        s.window_reset = None;
        s.count = 0;
    }

    /// Counts `n` requests from other gateways behind the same address.
    pub fn add_foreign_requests(&self, n: u32) {
        let mut s = lock(&self.state);
        let now = Instant::now();
        ensure_window(&mut s, now);
        s.count += n;
    }

    /// Queues a fault for the next request.
    pub fn inject(&self, fault: Fault) {
        lock(&self.state).faults.push_back(fault);
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Recorded> {
        lock(&self.state).requests.clone()
    }

    /// Forgets the recorded requests and heartbeats.
    pub fn clear_requests(&self) {
        let mut s = lock(&self.state);
        s.requests.clear();
        s.heartbeats.clear();
    }

    /// Heartbeat bodies as the server stored them (`{}` when sent without JSON content type).
    pub fn heartbeats(&self) -> Vec<serde_json::Value> {
        lock(&self.state).heartbeats.clone()
    }

    /// The discovery batches accepted so far, in order.
    pub fn discovery_batches(&self) -> Vec<serde_json::Value> {
        lock(&self.state).discovery.batches.clone()
    }

    /// What the server does when it sends `/api/lan-scan`: opens the scan `request_id`.
    pub fn begin_scan(&self, request_id: &str) {
        lock(&self.state).discovery.begin(request_id);
    }

    /// Waits (at most `timeout`) until `pred` holds for the recorded requests; returns them.
    pub fn wait_for(
        &self,
        timeout: Duration,
        pred: impl Fn(&[Recorded]) -> bool,
    ) -> Result<Vec<Recorded>, Vec<Recorded>> {
        let deadline = Instant::now() + timeout;
        loop {
            let reqs = self.requests();
            if pred(&reqs) {
                return Ok(reqs);
            }
            if Instant::now() >= deadline {
                return Err(reqs);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for FakeGateControl {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|p| p.into_inner())
}

fn ensure_window(s: &mut State, now: Instant) -> Instant {
    match s.window_reset {
        Some(r) if now < r => r,
        _ => {
            s.count = 0;
            let r = now + s.window;
            s.window_reset = Some(r);
            r
        }
    }
}

/// Percent-decodes like Node's querystring (`+` is a space; bad escapes stay as they are).
pub fn percent_decode(s: &str) -> String {
    fn hex(c: u8) -> Option<u8> {
        (c as char).to_digit(16).map(|d| d as u8)
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'+' {
            out.push(b' ');
            i += 1;
            continue;
        }
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push(h * 16 + l);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(k) == name).then(|| percent_decode(v))
    })
}

struct Request {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    close: bool,
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        413 => "Payload Too Large",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

fn json(status: u16, body: &serde_json::Value) -> Answer {
    Answer {
        status,
        headers: vec![(
            "Content-Type".into(),
            "application/json; charset=utf-8".into(),
        )],
        body: body.to_string().into_bytes(),
        close: false,
    }
}

enum Head {
    Request(Request),
    /// Body over the limit: answered 413 without reading it.
    TooLarge(Request),
    Closed,
}

fn read_request(reader: &mut BufReader<TcpStream>) -> io::Result<Head> {
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Ok(Head::Closed);
    }
    let mut parts = line.trim_end().splitn(3, ' ');
    let (Some(method), Some(target), Some(_version)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(io::Error::other(format!("bad request line {line:?}")));
    };
    let (method, target) = (method.to_owned(), target.to_owned());
    let mut headers = Vec::new();
    let mut head_len = line.len();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 {
            return Ok(Head::Closed);
        }
        head_len += h.len();
        if head_len > MAX_HEAD {
            return Err(io::Error::other("request head too large"));
        }
        let h = h.trim_end_matches(['\r', '\n']);
        if h.is_empty() {
            break;
        }
        let (n, v) = h
            .split_once(':')
            .ok_or_else(|| io::Error::other(format!("bad header {h:?}")))?;
        headers.push((n.to_owned(), v.trim().to_owned()));
    }
    let mut req = Request {
        method,
        target,
        headers,
        body: Vec::new(),
    };
    let len: usize = match req.header("content-length") {
        Some(v) => v
            .parse()
            .map_err(|_| io::Error::other("bad content-length"))?,
        None => 0,
    };
    let cap = if req.target.starts_with("/api/v1/gateway/discovery") {
        discovery::MAX_DISCOVERY_BODY
    } else {
        MAX_BODY
    };
    if len > cap {
        return Ok(Head::TooLarge(req));
    }
    req.body = vec![0; len];
    reader.read_exact(&mut req.body)?;
    Ok(Head::Request(req))
}

fn serve_connection(stream: TcpStream, conn: u64, state: &Mutex<State>, stop: &AtomicBool) {
    let _ = stream.set_read_timeout(Some(KEEP_ALIVE));
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    for _ in 0..10_000 {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let (req, too_large) = match read_request(&mut reader) {
            Ok(Head::Request(r)) => (r, false),
            Ok(Head::TooLarge(r)) => (r, true),
            Ok(Head::Closed) | Err(_) => break,
        };
        let fault = lock(state).faults.pop_front();
        if fault == Some(Fault::CloseWithoutAnswer) {
            record(state, conn, &req, 0);
            let _ = writer.shutdown(Shutdown::Both);
            return;
        }
        let mut answer = if too_large {
            let mut a = json(
                413,
                &serde_json::json!({"ok": false, "error": "Payload too large"}),
            );
            a.close = true;
            a
        } else {
            handle(state, &req, fault.clone())
        };
        record(state, conn, &req, answer.status);
        answer
            .headers
            .push(("Content-Length".into(), answer.body.len().to_string()));
        if answer.close {
            answer.headers.push(("Connection".into(), "close".into()));
        } else {
            answer
                .headers
                .push(("Connection".into(), "keep-alive".into()));
            answer.headers.push((
                "Keep-Alive".into(),
                format!("timeout={}", KEEP_ALIVE.as_secs()),
            ));
        }
        let mut out = format!("HTTP/1.1 {} {}\r\n", answer.status, reason(answer.status));
        for (n, v) in &answer.headers {
            out.push_str(&format!("{n}: {v}\r\n"));
        }
        out.push_str("\r\n");
        let mut bytes = out.into_bytes();
        if fault == Some(Fault::TruncateBody) {
            bytes.extend_from_slice(&answer.body[..answer.body.len() / 2]);
            let _ = writer.write_all(&bytes);
            let _ = writer.flush();
            let _ = writer.shutdown(Shutdown::Both);
            return;
        }
        bytes.extend_from_slice(&answer.body);
        if writer
            .write_all(&bytes)
            .and_then(|_| writer.flush())
            .is_err()
            || answer.close
        {
            let _ = writer.shutdown(Shutdown::Both);
            return;
        }
    }
}

fn record(state: &Mutex<State>, conn: u64, req: &Request, status: u16) {
    lock(state).requests.push(Recorded {
        conn,
        method: req.method.clone(),
        target: req.target.clone(),
        headers: req.headers.clone(),
        body: req.body.clone(),
        status,
    });
}

/// Validates the heartbeat fields the server type-checks.
fn heartbeat_type_error(v: &serde_json::Value) -> Option<&'static str> {
    let field = |k: &str| v.get(k).filter(|x| !x.is_null());
    if field("tcp_listeners").is_some_and(|x| !x.is_array()) {
        return Some("tcp_listeners must be array");
    }
    if field("http_proxy_healthy").is_some_and(|x| !x.is_boolean()) {
        return Some("http_proxy_healthy must be boolean");
    }
    if field("uptime_s").is_some_and(|x| !x.is_number()) {
        return Some("uptime_s must be number");
    }
    None
}

fn is_token_format(t: &str) -> bool {
    t.strip_prefix("gc_gw_").is_some_and(|hex| {
        hex.len() == 64
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

fn handle(state: &Mutex<State>, req: &Request, fault: Option<Fault>) -> Answer {
    let path = req.target.split('?').next().unwrap_or("").to_owned();
    if !path.starts_with("/api/v1/gateway/") {
        return json(404, &serde_json::json!({"error": "not_found"}));
    }
    // express.json() runs before the limiter: malformed JSON never reaches it.
    let is_json = req
        .header("content-type")
        .is_some_and(|c| c.to_ascii_lowercase().starts_with("application/json"));
    let parsed_body = if req.method == "POST" && is_json && !req.body.is_empty() {
        match serde_json::from_slice::<serde_json::Value>(&req.body) {
            Ok(v) => Some(v),
            Err(_) => return json(400, &serde_json::json!({"error": "Internal server error"})),
        }
    } else {
        None
    };

    let mut s = lock(state);
    let now = Instant::now();
    let reset = ensure_window(&mut s, now);
    let reset_s = (reset - now).as_secs_f64().ceil() as u64;
    s.count += 1;
    let rate_headers = |count: u32, limit: u32, window: Duration| -> Vec<(String, String)> {
        vec![
            (
                "RateLimit-Policy".into(),
                format!("{limit};w={}", window.as_secs()),
            ),
            ("RateLimit-Limit".into(), limit.to_string()),
            (
                "RateLimit-Remaining".into(),
                limit.saturating_sub(count).to_string(),
            ),
            ("RateLimit-Reset".into(), reset_s.to_string()),
        ]
    };
    let mut headers = rate_headers(s.count, s.limit, s.window);
    let mut answer = if s.count > s.limit {
        headers.push(("Retry-After".into(), reset_s.to_string()));
        let body = std::fs::read(s.fixtures.join("ratelimit-429-response.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .unwrap_or_else(|| {
                serde_json::json!({"ok": false, "error": "Too many requests, please try again later"})
            });
        json(429, &body)
    } else {
        route(&mut s, req, &path, parsed_body, fault)
    };
    if answer.status >= 400 {
        // skipFailedRequests: only successful answers (304 included) count.
        s.count -= 1;
    }
    headers.append(&mut answer.headers);
    answer.headers = headers;
    answer
}

fn route(
    s: &mut State,
    req: &Request,
    path: &str,
    parsed_body: Option<serde_json::Value>,
    fault: Option<Fault>,
) -> Answer {
    let known = matches!(
        (req.method.as_str(), path),
        ("GET", "/api/v1/gateway/config/check")
            | ("GET", "/api/v1/gateway/config")
            | ("POST", "/api/v1/gateway/heartbeat")
            | ("POST", "/api/v1/gateway/discovery")
    );
    if !known {
        return json(
            401,
            &serde_json::json!({"ok": false, "error": "Unauthorized"}),
        );
    }
    let auth = req.header("authorization").unwrap_or("");
    let Some(token) = auth.strip_prefix("Bearer ") else {
        return json(401, &serde_json::json!({"error": "missing_bearer_token"}));
    };
    if !is_token_format(token) {
        return json(401, &serde_json::json!({"error": "invalid_token_format"}));
    }
    if token != s.api_token {
        return json(403, &serde_json::json!({"error": "invalid_token"}));
    }
    if let Some(Fault::Status(code)) = fault {
        return json(
            code,
            &serde_json::json!({"error": format!("injected {code}")}),
        );
    }
    let etag = format!(
        "W/\"{:x}-{}\"",
        s.config.len(),
        s.config_hash.get(7..27).unwrap_or("")
    );
    match path {
        "/api/v1/gateway/config/check" => {
            let target: String = req.target.clone();
            let hash = target
                .split_once('?')
                .and_then(|(_, q)| query_param(q, "hash"));
            if hash.as_deref() == Some(s.config_hash.as_str()) {
                Answer {
                    status: 304,
                    headers: Vec::new(),
                    body: Vec::new(),
                    close: false,
                }
            } else {
                json(200, &serde_json::json!({"config_hash": s.config_hash}))
            }
        }
        "/api/v1/gateway/config" => {
            if req.header("if-none-match") == Some(etag.as_str()) {
                return Answer {
                    status: 304,
                    headers: vec![("ETag".into(), etag)],
                    body: Vec::new(),
                    close: false,
                };
            }
            Answer {
                status: 200,
                headers: vec![
                    (
                        "Content-Type".into(),
                        "application/json; charset=utf-8".into(),
                    ),
                    ("ETag".into(), etag),
                ],
                body: s.config.clone(),
                close: false,
            }
        }
        "/api/v1/gateway/discovery" => {
            let body = parsed_body.unwrap_or_else(|| serde_json::json!({}));
            let (status, answer) = s.discovery.take(&body, Instant::now());
            json(status, &answer)
        }
        _ => {
            // Without a JSON content type the body parser leaves req.body = {}.
            let body = parsed_body.unwrap_or_else(|| serde_json::json!({}));
            if let Some(e) = heartbeat_type_error(&body) {
                return json(400, &serde_json::json!({"error": e}));
            }
            s.heartbeats.push(body);
            json(200, &serde_json::json!({"ok": true}))
        }
    }
}
