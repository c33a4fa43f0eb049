//! Refusals at a cap are logged as rate-limited summary lines with counts (issue 8), for the
//! HTTP proxy and the L4 TCP and UDP relays. Alone in its test binary: it installs log
//! subscribers, and tracing's per-callsite interest cache must not be shared with tests that
//! run without one.
#![allow(dead_code)]

include!("common/http.rs");

use gatelet_agent::forward::tcp::{self, ConnectionLimit, TcpConfig, TcpRoute};
use gatelet_agent::forward::udp::{self, UdpConfig, UdpRoute};
use gatelet_agent::forward::{RouteCounters, TargetCell};
use gatelet_agent::target::Target;
use tokio::net::UdpSocket;

/// The summary interval the tests use.
const INTERVAL: Duration = Duration::from_millis(400);

/// Collects what the log writes (thread-local subscriber: the test runtime is current-thread,
/// so every task logs on this thread).
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

impl Captured {
    fn install(&self) -> tracing::subscriber::DefaultGuard {
        let writer = self.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_max_level(tracing::Level::WARN)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::set_default(subscriber)
    }

    /// The WARN lines containing `needle`.
    fn lines(&self, needle: &str) -> Vec<String> {
        let log = String::from_utf8(self.0.lock().unwrap().clone()).unwrap();
        log.lines()
            .filter(|l| l.contains("WARN") && l.contains(needle))
            .map(str::to_owned)
            .collect()
    }
}

#[tokio::test]
async fn http_refusals_are_summed_into_one_line_per_interval() {
    let captured = Captured::default();
    let _guard = captured.install();
    let a = start_backend("a").await;
    let p = start_proxy(
        vec![route(1, "a.example", a.addr)],
        ProxyConfig {
            max_connections: 4,
            max_requests_per_route: 4,
            refusal_log_interval: INTERVAL,
            ..ProxyConfig::default()
        },
    )
    .await;
    // Four uploads in flight fill every slot.
    let mut held = Vec::new();
    for _ in 0..4 {
        let mut c = Client::connect(p.addr).await;
        c.send(b"POST / HTTP/1.1\r\nHost: a.example\r\nContent-Length: 10\r\n\r\n")
            .await;
        held.push(c);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    // 40 more connections are closed at accept.
    for _ in 0..40 {
        let mut c = Client::connect(p.addr).await;
        assert!(c.closed().await);
    }
    assert_eq!(HttpStats::get(&p.stats.refused), 40);
    // One WARN line for 40 refusals (there used to be one per refused connection).
    assert_eq!(captured.lines("HTTP proxy").len(), 1);
    let lines = captured.lines("new connection(s)");
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert!(
        lines[0].contains("closed 1 new connection(s)"),
        "{}",
        lines[0]
    );
    // The rest comes as one summary line once the interval has passed.
    tokio::time::sleep(INTERVAL * 3).await;
    let lines = captured.lines("new connection(s)");
    assert_eq!(lines.len(), 2, "{lines:#?}");
    assert!(
        lines[1].contains("closed 39 new connection(s) in the last"),
        "{}",
        lines[1]
    );
    assert!(lines[1].contains("(40 in all)"), "{}", lines[1]);
}

/// A TCP echo server on loopback.
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

fn target(addr: SocketAddr) -> Target {
    Target {
        host: addr.ip().to_string(),
        port: addr.port(),
    }
}

#[tokio::test]
async fn tcp_relay_refusals_are_summed_into_one_line_per_interval() {
    let captured = Captured::default();
    let _guard = captured.install();
    let echo = echo_server().await;
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let counters = Arc::new(RouteCounters::default());
    let (_stop, stop_rx) = watch::channel(false);
    let (_kill, kill_rx) = watch::channel(false);
    let route = TcpRoute {
        target: TargetCell::new(target(echo)),
        counters: counters.clone(),
        config: Arc::new(TcpConfig {
            max_per_route: 1,
            refusal_log_interval: INTERVAL,
            ..TcpConfig::default()
        }),
        global: ConnectionLimit::new(100),
        kill: kill_rx,
        waker: None,
        sources: None,
        via: Default::default(),
    };
    tokio::spawn(tcp::serve(l, route, stop_rx));
    let mut first = TcpStream::connect(addr).await.unwrap();
    first.write_all(b"x").await.unwrap();
    let mut b = [0u8; 1];
    first.read_exact(&mut b).await.unwrap();
    for _ in 0..30 {
        let mut c = TcpStream::connect(addr).await.unwrap();
        let r = tokio::time::timeout(STEP, c.read(&mut b)).await.unwrap();
        assert!(r.is_err(), "{r:?}");
    }
    assert_eq!(counters.refused.load(Ordering::Relaxed), 30);
    let lines = captured.lines("L4 TCP route");
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert!(
        lines[0].contains("reset 1 new connection(s) at a connection cap"),
        "{}",
        lines[0]
    );
    tokio::time::sleep(INTERVAL * 3).await;
    let lines = captured.lines("L4 TCP route");
    assert_eq!(lines.len(), 2, "{lines:#?}");
    assert!(
        lines[1].contains("reset 29 new connection(s) in the last"),
        "{}",
        lines[1]
    );
    assert!(lines[1].contains("; 30 in all"), "{}", lines[1]);
}

#[tokio::test]
async fn udp_relay_drops_are_summed_into_one_line_per_interval() {
    let captured = Captured::default();
    let _guard = captured.install();
    let echo = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let echo_addr = echo.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 2048];
        while let Ok((n, peer)) = echo.recv_from(&mut buf).await {
            let _ = echo.send_to(&buf[..n], peer).await;
        }
    });
    let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = s.local_addr().unwrap();
    let counters = Arc::new(RouteCounters::default());
    let (_stop, stop_rx) = watch::channel(false);
    let (_kill, kill_rx) = watch::channel(false);
    let route = UdpRoute {
        target: TargetCell::new(target(echo_addr)),
        counters: counters.clone(),
        config: Arc::new(UdpConfig {
            max_sessions: 1,
            refusal_log_interval: INTERVAL,
            ..UdpConfig::default()
        }),
        kill: kill_rx,
        waker: None,
    };
    tokio::spawn(udp::serve(Arc::new(s.into()), route, stop_rx));
    let a = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    a.send_to(b"a", addr).await.unwrap();
    let mut buf = [0u8; 16];
    tokio::time::timeout(STEP, a.recv_from(&mut buf))
        .await
        .unwrap()
        .unwrap();
    // 20 other clients: one session only, their datagrams are dropped.
    let others: Vec<UdpSocket> = {
        let mut v = Vec::new();
        for _ in 0..20 {
            v.push(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        }
        v
    };
    for o in &others {
        o.send_to(b"o", addr).await.unwrap();
    }
    let deadline = std::time::Instant::now() + STEP;
    while counters.refused.load(Ordering::Relaxed) < 20 {
        assert!(std::time::Instant::now() < deadline, "drops not counted");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let lines = captured.lines("L4 UDP route");
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert!(lines[0].contains("dropped 1 datagram(s)"), "{}", lines[0]);
    tokio::time::sleep(INTERVAL * 3).await;
    let lines = captured.lines("L4 UDP route");
    assert_eq!(lines.len(), 2, "{lines:#?}");
    assert!(
        lines[1].contains("dropped 19 datagram(s) from new clients in the last"),
        "{}",
        lines[1]
    );
    assert!(lines[1].contains("; 20 in all"), "{}", lines[1]);
}
