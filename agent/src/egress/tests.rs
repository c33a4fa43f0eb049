//! The proxy against real loopback sockets; the tunnel side dials a kernel socket (the
//! netstack's own connect is tested in `netstack::tests`).

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::*;

struct KernelDial;

impl Dial for KernelDial {
    async fn dial(&self, to: SocketAddr) -> io::Result<Stream> {
        TcpStream::connect(to).await.map(Stream::Kernel)
    }
}

/// An echo server on loopback.
async fn echo_server() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

struct Proxy {
    addr: SocketAddr,
    counters: Arc<EgressCounters>,
    _stop: watch::Sender<bool>,
}

async fn proxy_to(target: Target) -> Proxy {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let counters = Arc::new(EgressCounters::default());
    let (stop, rx) = watch::channel(false);
    tokio::spawn(serve(l, target, Arc::new(KernelDial), counters.clone(), rx));
    Proxy {
        addr,
        counters,
        _stop: stop,
    }
}

fn target_of(addr: SocketAddr) -> Target {
    Target::from_url(&format!("http://{addr}/")).unwrap()
}

/// Sends `request`, returns the status line's code and the rest of what came back until the
/// proxy closed (bounded).
async fn ask(proxy: SocketAddr, request: &[u8]) -> (u16, String) {
    let mut c = TcpStream::connect(proxy).await.unwrap();
    c.write_all(request).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), c.read_to_end(&mut out))
        .await
        .expect("the proxy answers and closes")
        .unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let code = text
        .get(9..12)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    (code, text)
}

#[test]
fn targets_come_from_the_url() {
    let t = |u: &str| Target::from_url(u);
    assert_eq!(
        t("http://10.8.0.1:3000").unwrap(),
        Target {
            host: "10.8.0.1".into(),
            port: 3000
        }
    );
    assert_eq!(t("HTTPS://gc.example.org/api").unwrap().port, 443);
    assert_eq!(t("http://gc.example.org").unwrap().port, 80);
    assert_eq!(t("http://[fd00::1]:8080/").unwrap().host, "fd00::1");
    for bad in [
        "ftp://x",
        "http://",
        "http://:80",
        "http://u@h:1",
        "http://h:0",
        "http://h:x",
    ] {
        assert!(t(bad).is_err(), "{bad}");
    }
    let t = t("http://Gc.Example.org:3000").unwrap();
    assert!(t.matches("gc.example.org:3000"));
    assert!(!t.matches("gc.example.org:3001"));
    assert!(!t.matches("gc.example.org"));
    assert!(!t.matches("other.org:3000"));
}

#[tokio::test]
async fn a_connect_to_the_server_is_relayed_both_ways_with_bytes_sent_early() {
    let echo = echo_server().await;
    let p = proxy_to(target_of(echo)).await;
    let mut c = TcpStream::connect(p.addr).await.unwrap();
    // ureq writes the head alone; a client may send its first bytes with it.
    c.write_all(format!("CONNECT {echo} HTTP/1.1\r\nHost: {echo}\r\n\r\nearly").as_bytes())
        .await
        .unwrap();
    let ok = b"HTTP/1.1 200 Connection established\r\n\r\n";
    let mut buf = vec![0u8; ok.len() + 5];
    c.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf[..ok.len()], ok);
    assert_eq!(&buf[ok.len()..], b"early");
    c.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    let mut back = [0u8; 18];
    c.read_exact(&mut back).await.unwrap();
    assert_eq!(&back, b"GET / HTTP/1.1\r\n\r\n");
    assert_eq!(p.counters.relay.tcp_active.load(Ordering::Relaxed), 1);
    // Half-close reaches the echo server, whose close comes back.
    c.shutdown().await.unwrap();
    let mut rest = Vec::new();
    c.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty());
    // The request each way, and the early bytes on their way back.
    assert!(p.counters.relay.bytes.load(Ordering::Relaxed) >= 2 * 18 + 5);
}

#[tokio::test]
async fn anything_but_a_connect_to_the_server_is_refused() {
    let echo = echo_server().await;
    let p = proxy_to(target_of(echo)).await;
    let other = SocketAddr::new(echo.ip(), echo.port().wrapping_add(1).max(1));
    let cases: Vec<(Vec<u8>, u16)> = vec![
        (
            format!("CONNECT {other} HTTP/1.1\r\n\r\n").into_bytes(),
            403,
        ),
        (b"CONNECT 192.168.1.10:22 HTTP/1.1\r\n\r\n".to_vec(), 403),
        (
            format!("CONNECT {} HTTP/1.1\r\n\r\n", echo.ip()).into_bytes(),
            403,
        ),
        (
            format!("GET http://{echo}/ HTTP/1.1\r\n\r\n").into_bytes(),
            405,
        ),
        (b"\x16\x03\x01garbage\r\n\r\n".to_vec(), 400),
        (b"CONNECT  HTTP/1.1 x\r\n\r\n".to_vec(), 400),
        // No end of head within the limit: the proxy reads 1 KiB and stops.
        ([b"CONNECT ".as_slice(), &[b'a'; 4000]].concat(), 400),
        // Closed before the head ended.
        (b"CONNECT x".to_vec(), 400),
    ];
    for (req, code) in cases {
        let mut c = TcpStream::connect(p.addr).await.unwrap();
        c.write_all(&req).await.unwrap();
        if req == b"CONNECT x" {
            c.shutdown().await.unwrap();
        }
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), c.read_to_end(&mut out))
            .await
            .expect("answered");
        let text = String::from_utf8_lossy(&out);
        assert!(
            text.starts_with(&format!("HTTP/1.1 {code} ")),
            "{:?} -> {text:?}",
            String::from_utf8_lossy(&req[..req.len().min(40)])
        );
    }
    assert_eq!(p.counters.refused.load(Ordering::Relaxed), 8);
    assert_eq!(p.counters.relay.bytes.load(Ordering::Relaxed), 0);
}

#[tokio::test(start_paused = true)]
async fn a_slow_head_is_answered_408_after_the_head_timeout() {
    let echo = echo_server().await;
    let p = proxy_to(target_of(echo)).await;
    let mut c = TcpStream::connect(p.addr).await.unwrap();
    let t0 = tokio::time::Instant::now();
    c.write_all(b"CONNECT ").await.unwrap();
    let mut out = Vec::new();
    c.read_to_end(&mut out).await.unwrap();
    assert!(String::from_utf8_lossy(&out).starts_with("HTTP/1.1 408 "));
    let waited = t0.elapsed();
    assert!(waited >= HEAD_TIMEOUT && waited < HEAD_TIMEOUT + Duration::from_secs(1));
}

#[tokio::test]
async fn connections_beyond_the_cap_get_503_and_a_slot_frees_on_close() {
    let echo = echo_server().await;
    let p = proxy_to(target_of(echo)).await;
    let mut held = Vec::new();
    for _ in 0..MAX_CONNECTIONS {
        let mut c = TcpStream::connect(p.addr).await.unwrap();
        c.write_all(b"CONN").await.unwrap();
        held.push(c);
    }
    // The proxy has taken all of them once this one is refused (bounded wait).
    let (code, _) = ask(p.addr, b"").await;
    assert_eq!(code, 503);
    drop(held.pop());
    let mut ok = false;
    for _ in 0..100 {
        let mut c = TcpStream::connect(p.addr).await.unwrap();
        c.write_all(format!("CONNECT {echo} HTTP/1.1\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut buf = [0u8; 12];
        if c.read_exact(&mut buf).await.is_ok() && &buf == b"HTTP/1.1 200" {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(ok, "a closed connection frees its slot");
}

#[tokio::test]
async fn an_unreachable_server_is_answered_502_with_the_reason() {
    let gone = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = gone.local_addr().unwrap();
    drop(gone);
    let p = proxy_to(target_of(addr)).await;
    let (code, text) = ask(
        p.addr,
        format!("CONNECT {addr} HTTP/1.1\r\n\r\n").as_bytes(),
    )
    .await;
    assert_eq!(code, 502);
    assert!(text.contains("through the tunnel"), "{text}");
    assert_eq!(p.counters.relay.target_failures.load(Ordering::Relaxed), 1);
}
