//! The HTTP reverse proxy end to end on loopback: a raw-socket client, `gatelet_agent::http`
//! serving a route table, and small backends written here (plain, TLS, upgrade-capable,
//! silent). No root, no network beyond 127.0.0.1.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gatelet_agent::http::{serve_with, ProxyConfig};
use gatelet_agent::routes::{HttpStats, HttpTable};
use gatelet_agent_api::control::HttpRoute;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Upper bound for any single test step (nothing here should take more than a fraction).
const STEP: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------------------------
// Proxy under test

struct Proxy {
    addr: SocketAddr,
    stats: Arc<HttpStats>,
    _stop: watch::Sender<bool>,
}

fn route(id: u64, domain: &str, target: SocketAddr) -> HttpRoute {
    HttpRoute {
        id,
        domain: domain.into(),
        target_host: target.ip().to_string(),
        target_port: target.port(),
        backend_https: false,
        wol: None,
    }
}

async fn start_proxy(routes: Vec<HttpRoute>, config: ProxyConfig) -> Proxy {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stats = Arc::new(HttpStats::default());
    let (stop, rx) = watch::channel(false);
    tokio::spawn(serve_with(
        listener,
        HttpTable::new(routes),
        stats.clone(),
        rx,
        config,
    ));
    Proxy {
        addr,
        stats,
        _stop: stop,
    }
}

// ---------------------------------------------------------------------------------------------
// Backends

/// What a test backend saw.
#[derive(Default)]
struct Seen {
    accepted: AtomicUsize,
    heads: Mutex<Vec<String>>,
    sni: Mutex<Vec<Option<String>>>,
}

struct Backend {
    addr: SocketAddr,
    seen: Arc<Seen>,
}

impl Backend {
    fn heads(&self) -> Vec<String> {
        self.seen.heads.lock().unwrap().clone()
    }
    fn accepted(&self) -> usize {
        self.seen.accepted.load(Ordering::SeqCst)
    }
}

async fn start_backend(name: &'static str) -> Backend {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Seen::default());
    let s = seen.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            s.accepted.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(backend_conn(BufReader::new(stream), s.clone(), name));
        }
    });
    Backend { addr, seen }
}

fn tls_acceptor(domain: &str) -> tokio_rustls::TlsAcceptor {
    let key = rcgen::generate_simple_self_signed(vec![domain.to_string()]).unwrap();
    let cert = key.cert.der().clone();
    let der = rustls::pki_types::PrivateKeyDer::Pkcs8(rustls::pki_types::PrivatePkcs8KeyDer::from(
        key.signing_key.serialize_der(),
    ));
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![cert], der)
    .unwrap();
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

async fn start_tls_backend(name: &'static str, domain: &str) -> Backend {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Seen::default());
    let s = seen.clone();
    let acceptor = tls_acceptor(domain);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            s.accepted.fetch_add(1, Ordering::SeqCst);
            let Ok(tls) = acceptor.accept(stream).await else {
                continue;
            };
            let sni = tls.get_ref().1.server_name().map(str::to_owned);
            s.sni.lock().unwrap().push(sni);
            tokio::spawn(backend_conn(BufReader::new(tls), s.clone(), name));
        }
    });
    Backend { addr, seen }
}

/// A backend that accepts and never answers.
async fn start_silent_backend() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    (addr, task)
}

/// A port nothing listens on.
async fn closed_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

async fn read_head<S: AsyncRead + Unpin>(r: &mut BufReader<S>) -> Option<String> {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).await.ok()? == 0 {
            return None;
        }
        head.push_str(&line);
        if line == "\r\n" {
            return Some(head);
        }
    }
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().skip(1).find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// Reads a body framed by `head` (request or response), calling `sink` on each piece.
/// Returns the trailer lines of a chunked body.
async fn read_body<S: AsyncRead + Unpin>(
    r: &mut BufReader<S>,
    head: &str,
    mut sink: impl FnMut(&[u8]),
) -> Vec<String> {
    let mut buf = vec![0u8; 32 * 1024];
    if header(head, "transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        loop {
            let mut line = String::new();
            r.read_line(&mut line).await.unwrap();
            let size = usize::from_str_radix(line.trim().split(';').next().unwrap(), 16).unwrap();
            if size == 0 {
                let mut trailers = Vec::new();
                loop {
                    let mut t = String::new();
                    r.read_line(&mut t).await.unwrap();
                    if t == "\r\n" {
                        return trailers;
                    }
                    trailers.push(t.trim_end().to_string());
                }
            }
            let mut left = size;
            while left > 0 {
                let n = left.min(buf.len());
                r.read_exact(&mut buf[..n]).await.unwrap();
                sink(&buf[..n]);
                left -= n;
            }
            let mut crlf = [0u8; 2];
            r.read_exact(&mut crlf).await.unwrap();
            assert_eq!(&crlf, b"\r\n");
        }
    } else if let Some(len) = header(head, "content-length") {
        let mut left: u64 = len.parse().unwrap();
        while left > 0 {
            let n = (left as usize).min(buf.len());
            r.read_exact(&mut buf[..n]).await.unwrap();
            sink(&buf[..n]);
            left -= n as u64;
        }
        vec![]
    } else {
        vec![]
    }
}

fn pattern(i: u64) -> u8 {
    (i % 251) as u8
}

async fn backend_conn<S: AsyncRead + AsyncWrite + Unpin>(
    mut r: BufReader<S>,
    seen: Arc<Seen>,
    name: &str,
) {
    while let Some(head) = read_head(&mut r).await {
        seen.heads.lock().unwrap().push(head.clone());
        let path = head.split(' ').nth(1).unwrap_or("/").to_string();
        if header(&head, "expect").is_some_and(|v| v.eq_ignore_ascii_case("100-continue")) {
            r.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await.unwrap();
        }
        let (mut len, mut sum) = (0u64, 0u64);
        let trailers = read_body(&mut r, &head, |b| {
            len += b.len() as u64;
            sum = b.iter().fold(sum, |s, &x| s.wrapping_add(x as u64));
        })
        .await;
        let w = &mut r;
        if path == "/chunked" {
            let mut out = format!(
                "HTTP/1.1 200 OK\r\nX-Backend: {name}\r\nTransfer-Encoding: chunked\r\nTrailer: X-Done\r\n\r\n"
            );
            for part in ["hello ", "chunked ", "world"] {
                out.push_str(&format!("{:x}\r\n{part}\r\n", part.len()));
            }
            out.push_str("0\r\nX-Done: yes\r\n\r\n");
            w.write_all(out.as_bytes()).await.unwrap();
        } else if let Some(n) = path.strip_prefix("/big/") {
            let n: u64 = n.parse().unwrap();
            w.write_all(
                format!("HTTP/1.1 200 OK\r\nX-Backend: {name}\r\nContent-Length: {n}\r\n\r\n")
                    .as_bytes(),
            )
            .await
            .unwrap();
            let mut sent = 0u64;
            let mut chunk = vec![0u8; 64 * 1024];
            while sent < n {
                let k = (n - sent).min(chunk.len() as u64) as usize;
                for (i, b) in chunk[..k].iter_mut().enumerate() {
                    *b = pattern(sent + i as u64);
                }
                if w.write_all(&chunk[..k]).await.is_err() {
                    return;
                }
                sent += k as u64;
            }
        } else if path == "/ws" {
            w.write_all(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n",
            )
            .await
            .unwrap();
            let mut buf = [0u8; 4096];
            loop {
                match r.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if r.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                }
            }
            // Half-close seen: answer after the client's end, then close.
            let _ = r.write_all(b"bye").await;
            let _ = r.shutdown().await;
            return;
        } else {
            let body = format!(
                "backend={name}\nlen={len}\nsum={sum}\ntrailers={}\n---\n{head}",
                trailers.join("|")
            );
            w.write_all(
                format!(
                    "HTTP/1.1 200 OK\r\nX-Backend: {name}\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                )
                .as_bytes(),
            )
            .await
            .unwrap();
        }
        let _ = w.flush().await;
    }
}

// ---------------------------------------------------------------------------------------------
// Client

struct Client {
    r: BufReader<TcpStream>,
}

struct Resp {
    status: u16,
    head: String,
    body: Vec<u8>,
    trailers: Vec<String>,
}

impl Resp {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    fn header(&self, name: &str) -> Option<&str> {
        header(&self.head, name)
    }
}

impl Client {
    async fn connect(addr: SocketAddr) -> Client {
        Client {
            r: BufReader::new(TcpStream::connect(addr).await.unwrap()),
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.r.get_mut().write_all(bytes).await.unwrap();
    }

    async fn response(&mut self) -> Resp {
        tokio::time::timeout(STEP, async {
            let head = read_head(&mut self.r).await.expect("a response head");
            let status = head.split(' ').nth(1).unwrap().parse().unwrap();
            let mut body = Vec::new();
            let trailers = read_body(&mut self.r, &head, |b| body.extend_from_slice(b)).await;
            Resp {
                status,
                head,
                body,
                trailers,
            }
        })
        .await
        .expect("response within the step timeout")
    }

    async fn get(&mut self, host: &str, path: &str, extra: &str) -> Resp {
        self.send(format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n").as_bytes())
            .await;
        self.response().await
    }

    /// True when the server closed the connection (EOF within a short wait).
    async fn closed(&mut self) -> bool {
        let mut b = [0u8; 1];
        matches!(
            tokio::time::timeout(Duration::from_secs(5), self.r.read(&mut b)).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    }
}

fn rss_kib() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

// ---------------------------------------------------------------------------------------------
// Tests

#[tokio::test]
async fn routes_by_host_case_insensitive_with_port_and_trailing_dot() {
    let a = start_backend("a").await;
    let b = start_backend("b").await;
    let p = start_proxy(
        vec![route(1, "a.example", a.addr), route(2, "b.example", b.addr)],
        ProxyConfig::default(),
    )
    .await;
    let mut c = Client::connect(p.addr).await;
    let r = c.get("A.Example:8080", "/", "").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-backend"), Some("a"));
    let r = c.get("b.example.", "/", "").await;
    assert_eq!(r.header("x-backend"), Some("b"));
    let r = c.get("c.example", "/", "").await;
    assert_eq!(r.status, 502);
    assert_eq!(HttpStats::get(&p.stats.requests), 3);
    assert_eq!(HttpStats::get(&p.stats.errors), 1);
}

#[tokio::test]
async fn routes_by_x_gateway_target_domain_over_host() {
    let a = start_backend("a").await;
    let b = start_backend("b").await;
    let p = start_proxy(
        vec![route(1, "a.example", a.addr), route(2, "b.example", b.addr)],
        ProxyConfig::default(),
    )
    .await;
    let mut c = Client::connect(p.addr).await;
    let r = c
        .get(
            "a.example",
            "/",
            "X-Gateway-Target-Domain: B.EXAMPLE:443\r\n",
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-backend"), Some("b"));
    // The client's Host is kept for the backend.
    assert!(b.heads()[0].contains("Host: a.example\r\n"));
    let r = c
        .get(
            "a.example",
            "/",
            "x-gateway-target-domain: nowhere.example\r\n",
        )
        .await;
    assert_eq!(r.status, 502);
}

#[tokio::test]
async fn x_gateway_target_is_honoured_for_the_configured_target_and_refused_otherwise() {
    let a = start_backend("a").await;
    let other = start_backend("other").await;
    let p = start_proxy(vec![route(1, "a.example", a.addr)], ProxyConfig::default()).await;
    let mut c = Client::connect(p.addr).await;
    let r = c
        .get(
            "a.example",
            "/",
            &format!("X-Gateway-Target: {}\r\n", a.addr),
        )
        .await;
    assert_eq!(r.header("x-backend"), Some("a"));
    assert_eq!(HttpStats::get(&p.stats.refused_target_overrides), 0);
    // Another backend (even on loopback, and even a live one): refused, configured target used.
    let r = c
        .get(
            "a.example",
            "/",
            &format!("X-Gateway-Target: {}\r\n", other.addr),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-backend"), Some("a"));
    assert_eq!(other.accepted(), 0);
    assert_eq!(HttpStats::get(&p.stats.refused_target_overrides), 1);
    let r = c
        .get("a.example", "/", "X-Gateway-Target: 192.168.1.1:22\r\n")
        .await;
    assert_eq!(r.header("x-backend"), Some("a"));
    assert_eq!(HttpStats::get(&p.stats.refused_target_overrides), 2);
}

#[tokio::test]
async fn gateway_headers_are_removed_and_forwarding_headers_set() {
    let a = start_backend("a").await;
    let p = start_proxy(vec![route(1, "a.example", a.addr)], ProxyConfig::default()).await;
    let mut c = Client::connect(p.addr).await;
    let r = c
        .get(
            "a.example",
            "/x?token=secret",
            &format!(
                "X-Gateway-Target-Domain: a.example\r\nx-gateway-target: {}\r\nX-GATEWAY-TARGET: {}\r\n\
                 X-Forwarded-For: 203.0.113.9\r\nX-Forwarded-Proto: https\r\nConnection: X-Drop\r\nX-Drop: 1\r\n",
                a.addr, a.addr
            ),
        )
        .await;
    assert_eq!(r.status, 200);
    let head = &a.heads()[0];
    assert!(!head.to_ascii_lowercase().contains("x-gateway-"), "{head}");
    assert!(head.starts_with("GET /x?token=secret HTTP/1.1\r\n"));
    assert_eq!(
        header(head, "x-forwarded-for"),
        Some("203.0.113.9, 127.0.0.1")
    );
    assert_eq!(header(head, "x-forwarded-proto"), Some("https"));
    assert_eq!(head.matches("X-Forwarded-Proto").count(), 1);
    assert_eq!(header(head, "x-forwarded-host"), Some("a.example"));
    assert_eq!(header(head, "x-drop"), None);
    assert_eq!(header(head, "connection"), None);

    let r = c
        .get("a.example", "/", "X-Forwarded-Host: orig.example\r\n")
        .await;
    assert_eq!(r.status, 200);
    let head = &a.heads()[1];
    assert_eq!(header(head, "x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(header(head, "x-forwarded-proto"), Some("http"));
    assert_eq!(header(head, "x-forwarded-host"), Some("orig.example"));
}

#[tokio::test]
async fn chunked_bodies_stream_through_and_keep_alive_stays_in_sync() {
    let a = start_backend("a").await;
    let p = start_proxy(vec![route(1, "a.example", a.addr)], ProxyConfig::default()).await;
    let mut c = Client::connect(p.addr).await;
    c.send(
        b"POST /post HTTP/1.1\r\nHost: a.example\r\nTransfer-Encoding: chunked\r\n\r\n\
          5;ext=1\r\nhello\r\n1\r\n \r\n5\r\nworld\r\n0\r\nX-Sum: 42\r\n\r\n",
    )
    .await;
    let r = c.response().await;
    assert_eq!(r.status, 200);
    let text = r.text();
    assert!(text.contains("len=11\n"), "{text}");
    assert!(text.contains("trailers=X-Sum: 42\n"), "{text}");
    // Second request on the same client connection: a chunked response with a trailer.
    let r = c.get("a.example", "/chunked", "").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "hello chunked world");
    assert_eq!(r.trailers, vec!["X-Done: yes".to_string()]);
    // And a third, still in sync.
    let r = c.get("a.example", "/", "").await;
    assert_eq!(r.status, 200);
    assert_eq!(a.heads().len(), 3);
    // One backend connection carried all three (pool reuse).
    assert_eq!(a.accepted(), 1);
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    let a = start_backend("a").await;
    let p = start_proxy(vec![route(1, "a.example", a.addr)], ProxyConfig::default()).await;
    let mut c = Client::connect(p.addr).await;
    c.send(b"GET /one HTTP/1.1\r\nHost: a.example\r\n\r\nGET /chunked HTTP/1.1\r\nHost: a.example\r\n\r\n")
        .await;
    assert!(c.response().await.text().contains("GET /one "));
    assert_eq!(c.response().await.text(), "hello chunked world");
}

#[tokio::test]
async fn large_bodies_stream_without_buffering() {
    const SIZE: u64 = 50 * 1024 * 1024;
    let a = start_backend("a").await;
    let p = start_proxy(vec![route(1, "a.example", a.addr)], ProxyConfig::default()).await;
    let before = rss_kib();
    let mut c = Client::connect(p.addr).await;
    c.send(
        format!("POST /post HTTP/1.1\r\nHost: a.example\r\nContent-Length: {SIZE}\r\n\r\n")
            .as_bytes(),
    )
    .await;
    let mut chunk = vec![0u8; 64 * 1024];
    let mut sent = 0u64;
    let mut sum = 0u64;
    while sent < SIZE {
        let k = (SIZE - sent).min(chunk.len() as u64) as usize;
        for (i, b) in chunk[..k].iter_mut().enumerate() {
            *b = pattern(sent + i as u64);
            sum = sum.wrapping_add(*b as u64);
        }
        c.send(&chunk[..k]).await;
        sent += k as u64;
    }
    let r = c.response().await;
    let text = r.text();
    assert!(text.contains(&format!("len={SIZE}\n")), "{text}");
    assert!(text.contains(&format!("sum={sum}\n")), "{text}");

    c.send(format!("GET /big/{SIZE} HTTP/1.1\r\nHost: a.example\r\n\r\n").as_bytes())
        .await;
    let head = read_head(&mut c.r).await.unwrap();
    assert!(head.starts_with("HTTP/1.1 200"));
    let mut got = 0u64;
    let mut ok = true;
    read_body(&mut c.r, &head, |b| {
        for &x in b {
            ok &= x == pattern(got);
            got += 1;
        }
    })
    .await;
    assert!(ok, "body bytes altered");
    assert_eq!(got, SIZE);
    let grown = rss_kib().saturating_sub(before);
    assert!(
        grown < 16 * 1024,
        "RSS grew by {grown} KiB while streaming 2 x 50 MiB"
    );
    // Still keep-alive afterwards.
    assert_eq!(c.get("a.example", "/", "").await.status, 200);
}

#[tokio::test]
async fn upgrade_relays_both_ways_with_half_close() {
    let a = start_backend("a").await;
    let p = start_proxy(vec![route(1, "a.example", a.addr)], ProxyConfig::default()).await;
    let mut c = Client::connect(p.addr).await;
    c.send(b"GET /ws HTTP/1.1\r\nHost: a.example\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\nearly ")
        .await;
    let head = tokio::time::timeout(STEP, read_head(&mut c.r))
        .await
        .unwrap()
        .unwrap();
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    assert_eq!(header(&head, "upgrade"), Some("echo"));
    assert!(a.heads()[0].contains("Upgrade: echo\r\n"));
    c.send(b"ping").await;
    let mut got = vec![0u8; 10];
    tokio::time::timeout(STEP, c.r.read_exact(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&got, b"early ping");
    // Half-close from the client: the backend still answers after seeing our end.
    c.r.get_mut().shutdown().await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(STEP, c.r.read_to_end(&mut rest))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(rest, b"bye");
}

#[tokio::test]
async fn https_backend_with_self_signed_certificate_and_sni_from_the_domain() {
    let b = start_tls_backend("tls", "secure.example").await;
    let mut r = route(9, "secure.example", b.addr);
    r.backend_https = true;
    let p = start_proxy(vec![r], ProxyConfig::default()).await;
    let mut c = Client::connect(p.addr).await;
    let resp = c.get("Secure.Example", "/", "").await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("x-backend"), Some("tls"));
    let resp = c.get("secure.example", "/chunked", "").await;
    assert_eq!(resp.text(), "hello chunked world");
    assert_eq!(
        *b.seen.sni.lock().unwrap(),
        vec![Some("secure.example".to_string())]
    );
    assert_eq!(b.accepted(), 1);
}

#[tokio::test]
async fn refused_backend_is_502_and_silent_backend_is_504() {
    let refused = closed_port().await;
    let (silent, _task) = start_silent_backend().await;
    let config = ProxyConfig {
        response_timeout: Duration::from_millis(300),
        ..ProxyConfig::default()
    };
    let p = start_proxy(
        vec![
            route(1, "down.example", refused),
            route(2, "mute.example", silent),
        ],
        config,
    )
    .await;
    let mut c = Client::connect(p.addr).await;
    let r = c
        .get("down.example", "/", "Accept: application/json\r\n")
        .await;
    assert_eq!(r.status, 502);
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["status"], 502);
    assert!(v["error"].is_string());
    // The connection stays usable after a 502 on a body-less request.
    let started = std::time::Instant::now();
    let r = c.get("mute.example", "/", "").await;
    assert_eq!(r.status, 504);
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(HttpStats::get(&p.stats.errors), 2);
}

#[tokio::test]
async fn error_pages_are_html_for_browsers_and_json_otherwise() {
    let p = start_proxy(vec![], ProxyConfig::default()).await;
    let mut c = Client::connect(p.addr).await;
    let r = c
        .get(
            "x.example",
            "/",
            "Accept: text/html,application/xhtml+xml,*/*;q=0.8\r\n",
        )
        .await;
    assert_eq!(r.status, 502);
    assert!(r.header("content-type").unwrap().starts_with("text/html"));
    assert!(r.text().contains("502"));
    let r = c.get("x.example", "/", "").await;
    assert_eq!(r.header("content-type"), Some("application/json"));
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["status"], 502);
}

#[tokio::test]
async fn oversized_request_head_is_431_and_closed() {
    let a = start_backend("a").await;
    let p = start_proxy(vec![route(1, "a.example", a.addr)], ProxyConfig::default()).await;
    let mut c = Client::connect(p.addr).await;
    let big = "x".repeat(20 * 1024);
    c.send(format!("GET / HTTP/1.1\r\nHost: a.example\r\nX-Big: {big}\r\n\r\n").as_bytes())
        .await;
    let r = c.response().await;
    assert_eq!(r.status, 431);
    assert!(c.closed().await);
    assert_eq!(a.accepted(), 0);
}

#[tokio::test]
async fn slow_request_head_is_408() {
    let p = start_proxy(
        vec![],
        ProxyConfig {
            head_timeout: Duration::from_millis(200),
            ..ProxyConfig::default()
        },
    )
    .await;
    let mut c = Client::connect(p.addr).await;
    c.send(b"GET / HTTP/1.1\r\nHost: a").await;
    let r = c.response().await;
    assert_eq!(r.status, 408);
    assert!(c.closed().await);
}

#[tokio::test]
async fn stale_pooled_connection_is_replaced_transparently() {
    // A backend that answers one request per connection but claims keep-alive, then closes.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let acc = accepted.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            acc.fetch_add(1, Ordering::SeqCst);
            let mut r = BufReader::new(s);
            if read_head(&mut r).await.is_some() {
                let _ = r
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                    .await;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    });
    let p = start_proxy(vec![route(1, "a.example", addr)], ProxyConfig::default()).await;
    let mut c = Client::connect(p.addr).await;
    for _ in 0..3 {
        let r = c.get("a.example", "/", "").await;
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), "ok");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn http10_request_is_forwarded_as_10_and_the_connection_closes() {
    let a = start_backend("a").await;
    let p = start_proxy(vec![route(1, "a.example", a.addr)], ProxyConfig::default()).await;
    let mut c = Client::connect(p.addr).await;
    c.send(b"GET /ten HTTP/1.0\r\nHost: a.example\r\n\r\n")
        .await;
    let r = c.response().await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("connection"), Some("close"));
    assert!(c.closed().await);
    let head = &a.heads()[0];
    assert!(head.starts_with("GET /ten HTTP/1.0\r\n"), "{head}");
    assert_eq!(header(head, "connection"), Some("close"));
}

#[tokio::test]
async fn shutdown_stops_accepting_and_closes_idle_connections() {
    let a = start_backend("a").await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, rx) = watch::channel(false);
    let server = tokio::spawn(serve_with(
        listener,
        HttpTable::new(vec![route(1, "a.example", a.addr)]),
        Arc::new(HttpStats::default()),
        rx,
        ProxyConfig::default(),
    ));
    let mut c = Client::connect(addr).await;
    assert_eq!(c.get("a.example", "/", "").await.status, 200);
    stop.send(true).unwrap();
    tokio::time::timeout(STEP, server).await.unwrap().unwrap();
    // The idle keep-alive connection is closed, and nothing accepts new ones.
    assert!(c.closed().await);
    assert!(TcpStream::connect(addr).await.is_err());
}

#[tokio::test]
async fn route_changes_apply_to_the_next_request() {
    let a = start_backend("a").await;
    let b = start_backend("b").await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let table = HttpTable::new(vec![route(1, "x.example", a.addr)]);
    let (_stop, rx) = watch::channel(false);
    tokio::spawn(serve_with(
        listener,
        table.clone(),
        Arc::new(HttpStats::default()),
        rx,
        ProxyConfig::default(),
    ));
    let mut c = Client::connect(addr).await;
    assert_eq!(
        c.get("x.example", "/", "").await.header("x-backend"),
        Some("a")
    );
    table.replace(vec![route(1, "x.example", b.addr)]);
    // Same client connection: the new target is used at once.
    assert_eq!(
        c.get("x.example", "/", "").await.header("x-backend"),
        Some("b")
    );
    table.replace(vec![]);
    assert_eq!(c.get("x.example", "/", "").await.status, 502);
}

#[tokio::test]
async fn expect_continue_is_relayed_before_the_body() {
    let a = start_backend("a").await;
    let p = start_proxy(vec![route(1, "a.example", a.addr)], ProxyConfig::default()).await;
    let mut c = Client::connect(p.addr).await;
    c.send(b"PUT /post HTTP/1.1\r\nHost: a.example\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n")
        .await;
    // The client holds its body until the interim answer comes through the proxy.
    let interim = tokio::time::timeout(STEP, read_head(&mut c.r))
        .await
        .unwrap()
        .unwrap();
    assert!(interim.starts_with("HTTP/1.1 100 "), "{interim}");
    c.send(b"data").await;
    let r = c.response().await;
    assert_eq!(r.status, 200);
    assert!(r.text().contains("len=4\n"));
}

/// Collects what the access log writes (thread-local subscriber: the test runtime is
/// current-thread, so the proxy's tasks log on this thread).
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn access_log_has_one_line_per_request_without_query_or_header_values() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let a = start_backend("a").await;
    let p = start_proxy(vec![route(7, "a.example", a.addr)], ProxyConfig::default()).await;
    let mut c = Client::connect(p.addr).await;
    c.get(
        "a.example",
        "/login?token=s3cret",
        "Authorization: Bearer hunter2\r\nCookie: sid=abc\r\n",
    )
    .await;
    c.get("nowhere.example", "/x", "").await;
    let log = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("gatelet_agent::http::access"))
        .collect();
    assert_eq!(lines.len(), 2, "{log}");
    assert!(
        lines[0].contains("method=\"GET\"") || lines[0].contains("method=GET"),
        "{}",
        lines[0]
    );
    assert!(lines[0].contains("/login"), "{}", lines[0]);
    assert!(
        lines[0].contains("status=200") && lines[0].contains("route=7"),
        "{}",
        lines[0]
    );
    assert!(lines[1].contains("status=502"), "{}", lines[1]);
    for secret in ["s3cret", "token", "hunter2", "sid=abc"] {
        assert!(!log.contains(secret), "{secret} leaked into the log: {log}");
    }
}
