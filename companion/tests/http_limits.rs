//! The companion's HTTP server (`gatelet_companion::http`) held to its limits on loopback, with
//! shrunken timeouts and budgets: body and head caps refused before reading, head and body
//! timeouts, the connection budget's per-source eviction, the worker queue's 503, and the PROXY
//! v2 header trusted only where configured.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gatelet_agent_api::proxy_v2;
use gatelet_companion::http::{self, Limits, Request, Responder, Response};

const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// A server on 127.0.0.1:0 answering `<peer ip> <body length>`; `/slow` sleeps 400 ms first.
struct Server {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl Server {
    fn start(limits: Limits) -> Server {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let handler: http::Handler = Arc::new(|req: Request, out: Responder| {
            if req.path() == "/slow" {
                std::thread::sleep(Duration::from_millis(400));
            }
            let body = format!("{} {}", req.peer.ip(), req.body.len());
            out.send(&Response::new(200, "text/plain", body.into_bytes()));
        });
        let s = stop.clone();
        std::thread::spawn(move || http::serve(l, limits, handler, &s, "test"));
        Server { addr, stop }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn small() -> Limits {
    Limits {
        head_timeout: Duration::from_millis(300),
        body_timeout: Duration::from_millis(300),
        ..Limits::default()
    }
}

/// A connection from a chosen loopback source address.
fn connect_from(src: Ipv4Addr, to: SocketAddr) -> TcpStream {
    use std::os::fd::FromRawFd;
    // SAFETY: plain socket calls on a fresh descriptor that TcpStream then owns.
    let s = unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        assert!(fd >= 0);
        let sa = |ip: Ipv4Addr, port: u16| libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: port.to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from(ip).to_be(),
            },
            sin_zero: [0; 8],
        };
        let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        let local = sa(src, 0);
        assert_eq!(
            libc::bind(fd, (&local as *const libc::sockaddr_in).cast(), len),
            0
        );
        let SocketAddr::V4(to) = to else { panic!() };
        let remote = sa(*to.ip(), to.port());
        assert_eq!(
            libc::connect(fd, (&remote as *const libc::sockaddr_in).cast(), len),
            0
        );
        TcpStream::from_raw_fd(fd)
    };
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s
}

fn conn(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s
}

/// Everything until the server closes (a reset ends it too).
fn answer(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = s.read(&mut buf) {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn send(addr: SocketAddr, raw: &[u8]) -> String {
    let mut s = conn(addr);
    s.write_all(raw).unwrap();
    answer(&mut s)
}

fn status(a: &str) -> u16 {
    a.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

fn body(a: &str) -> &str {
    a.split_once("\r\n\r\n").map_or("", |(_, b)| b)
}

#[test]
fn declared_bodies_over_the_cap_get_413_at_once_and_16_kib_is_accepted() {
    let srv = Server::start(small());
    for declared in ["1000000000000", "16385", "18446744073709551615"] {
        let start = Instant::now();
        let a = send(
            srv.addr,
            format!("POST / HTTP/1.1\r\nContent-Length: {declared}\r\n\r\n").as_bytes(),
        );
        assert_eq!(status(&a), 413, "{declared}: {a}");
        assert!(
            start.elapsed() < Duration::from_millis(250),
            "{declared}: answered late"
        );
    }
    // A chunk size over the cap is refused before its bytes arrive.
    let a = send(
        srv.addr,
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n4001\r\n",
    );
    assert_eq!(status(&a), 413, "{a}");
    let mut exact = b"POST / HTTP/1.1\r\nContent-Length: 16384\r\n\r\n".to_vec();
    exact.extend_from_slice(&[b'x'; 16384]);
    let a = send(srv.addr, &exact);
    assert_eq!((status(&a), body(&a)), (200, "127.0.0.1 16384"), "{a}");
    let a = send(
        srv.addr,
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    );
    assert_eq!((status(&a), body(&a)), (200, "127.0.0.1 3"), "{a}");
}

#[test]
fn expect_100_continue_is_answered_before_the_body_and_not_when_it_is_too_big() {
    let srv = Server::start(small());
    let mut s = conn(srv.addr);
    s.write_all(b"POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n")
        .unwrap();
    let mut interim = [0u8; 25];
    s.read_exact(&mut interim).unwrap();
    assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    s.write_all(b"hello").unwrap();
    let a = answer(&mut s);
    assert_eq!((status(&a), body(&a)), (200, "127.0.0.1 5"), "{a}");
    let a = send(
        srv.addr,
        b"POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 99999\r\n\r\n",
    );
    assert_eq!(status(&a), 413, "no 100 Continue first: {a}");
}

#[test]
fn a_head_over_16_kib_gets_431_however_much_more_is_sent() {
    let srv = Server::start(small());
    let mut s = conn(srv.addr);
    s.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
    let _ = s.write_all(b"GET / HTTP/1.1\r\nX-Long: ");
    let chunk = [b'a'; 8192];
    let mut sent = 0usize;
    // The server stops reading at 16 KiB, answers, then reads (and drops) at most 64 KiB more.
    while sent < 8 * 1024 * 1024 {
        match s.write(&chunk) {
            Ok(n) => sent += n,
            Err(_) => break,
        }
    }
    let a = answer(&mut s);
    assert!(sent < 8 * 1024 * 1024, "the server kept taking bytes");
    assert!(a.is_empty() || status(&a) == 431, "{a}");
    // And the answer itself, when the client stops at the cap.
    let mut head = b"GET / HTTP/1.1\r\nX-Long: ".to_vec();
    head.resize(16 * 1024 + 10, b'a');
    assert_eq!(status(&send(srv.addr, &head)), 431);
    let many: String = (0..100).map(|i| format!("X-{i}: y\r\n")).collect();
    let a = send(srv.addr, format!("GET / HTTP/1.1\r\n{many}\r\n").as_bytes());
    assert_eq!(status(&a), 431, "{a}");
}

#[test]
fn slow_heads_and_slow_bodies_get_408_after_their_timeouts() {
    let srv = Server::start(small());
    for partial in [
        &b""[..],
        b"GET / HTTP/1.1\r\nHost",
        b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc",
    ] {
        let start = Instant::now();
        let a = send(srv.addr, partial);
        let took = start.elapsed();
        assert_eq!(status(&a), 408, "{a}");
        assert!(
            took >= Duration::from_millis(290) && took < Duration::from_secs(2),
            "408 after {took:?}"
        );
    }
}

#[test]
fn ambiguous_or_unsupported_framing_is_refused() {
    let srv = Server::start(small());
    for (raw, want) in [
        (
            &b"POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
            400,
        ),
        (b"POST / HTTP/1.1\r\nContent-Length: 4, 5\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
        (
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            400,
        ),
        (b"NOT HTTP AT ALL\r\n\r\n", 400),
    ] {
        let a = send(srv.addr, raw);
        assert_eq!(status(&a), want, "{}: {a}", String::from_utf8_lossy(raw));
    }
    let a = send(
        srv.addr,
        b"POST / HTTP/1.1\r\nContent-Length: 2, 2\r\n\r\nab",
    );
    assert_eq!((status(&a), body(&a)), (200, "127.0.0.1 2"), "{a}");
}

#[test]
fn a_full_budget_evicts_the_busiest_sources_oldest_and_new_requests_are_served() {
    // Default (10 s) timeouts: only the budget may close a connection here.
    let srv = Server::start(Limits {
        max_connections: 4,
        ..Limits::default()
    });
    let (flood, quiet) = (Ipv4Addr::new(127, 0, 0, 2), Ipv4Addr::new(127, 0, 0, 3));
    let mut other = connect_from(quiet, srv.addr);
    std::thread::sleep(Duration::from_millis(50));
    let mut held: Vec<TcpStream> = (0..10)
        .map(|_| {
            let s = connect_from(flood, srv.addr);
            std::thread::sleep(Duration::from_millis(10));
            s
        })
        .collect();
    // A request from the flooding address itself is served (it evicts that address's oldest).
    let mut s = connect_from(flood, srv.addr);
    s.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
    let a = answer(&mut s);
    assert_eq!((status(&a), body(&a)), (200, "127.0.0.2 0"), "{a}");
    // The quiet address's connection survived the flood.
    other.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
    let a = answer(&mut other);
    assert_eq!((status(&a), body(&a)), (200, "127.0.0.3 0"), "{a}");
    // The flood's oldest was closed without an answer.
    assert_eq!(answer(&mut held[0]), "");
}

#[test]
fn a_full_worker_queue_answers_503_from_the_io_thread() {
    let srv = Server::start(Limits {
        workers: 1,
        queue: 1,
        ..small()
    });
    let mut slow: Vec<TcpStream> = (0..3)
        .map(|_| {
            let mut s = conn(srv.addr);
            s.write_all(b"GET /slow HTTP/1.1\r\n\r\n").unwrap();
            std::thread::sleep(Duration::from_millis(50));
            s
        })
        .collect();
    let statuses: Vec<u16> = slow.iter_mut().map(|s| status(&answer(s))).collect();
    assert_eq!(statuses, vec![200, 200, 503]);
}

#[test]
fn a_proxy_header_names_the_caller_only_where_trusted() {
    let key = proxy_v2::HeaderKey::derive(&[3; 32]);
    let (from, to) = (
        "10.9.9.9:40000".parse().unwrap(),
        "10.8.0.2:9876".parse().unwrap(),
    );
    let with = |header: Vec<u8>| {
        let mut raw = header;
        raw.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
        raw
    };
    let raw = with(proxy_v2::encode(from, to, &key));
    let trusted = Server::start(Limits {
        proxy_key: Some(key.clone()),
        ..small()
    });
    let a = send(trusted.addr, &raw);
    assert_eq!((status(&a), body(&a)), (200, "10.9.9.9 0"), "{a}");
    // Split across reads, too.
    let mut s = conn(trusted.addr);
    s.write_all(&raw[..7]).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    s.write_all(&raw[7..]).unwrap();
    let a = answer(&mut s);
    assert_eq!(body(&a), "10.9.9.9 0", "{a}");
    // A local user who cannot read gateway.env: a header signed with another key, or with no
    // tag at all, is refused rather than believed.
    let forged = with(proxy_v2::encode(
        from,
        to,
        &proxy_v2::HeaderKey::derive(&[4; 32]),
    ));
    let a = send(trusted.addr, &forged);
    assert_eq!(status(&a), 400, "{a}");
    let signed = proxy_v2::encode(from, to, &key);
    let mut untagged = signed[..28].to_vec();
    untagged[14..16].copy_from_slice(&12u16.to_be_bytes());
    let a = send(trusted.addr, &with(untagged));
    assert_eq!(status(&a), 400, "{a}");
    // Without a key (the diagnostics page) no header is read at all.
    let untrusted = Server::start(small());
    let a = send(untrusted.addr, &raw);
    assert_eq!(status(&a), 400, "{a}");
}
