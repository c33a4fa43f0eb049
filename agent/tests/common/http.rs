// Shared by the http_proxy*.rs test binaries (included with `include!`): the proxy under
// test, small backends (plain, TLS, upgrade-capable, silent) and a raw-socket client.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gatelet_agent::http::{serve_with, ProxyConfig};
use gatelet_agent::http::{HttpStats, HttpTable};
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
        None,
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
