//! The route manager on loopback (127.0.0.1 stands in for the tunnel IP).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use gatelet_agent_api::control::{
    AgentConfig, EgressRoute, EgressStatus, HttpRoute, L4Route, ListenerState, RouteStatus,
};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

use super::{RouteManager, Settings};

const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// A server that greets each connection with `tag` and a newline, then echoes.
async fn tagged_echo(tag: &'static str) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                if s.write_all(format!("{tag}\n").as_bytes()).await.is_err() {
                    return;
                }
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

/// The key the API relay signs its PROXY headers with in these tests.
fn test_proxy_key() -> gatelet_agent_api::proxy_v2::HeaderKey {
    gatelet_agent_api::proxy_v2::HeaderKey::derive(&[9; 32])
}

/// A stand-in companion: reads the relay's signed PROXY v2 header, greets with `api <caller ip>`,
/// then echoes.
async fn proxy_echo() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut head = [0u8; 16];
                s.read_exact(&mut head).await.unwrap();
                let n = usize::from(u16::from_be_bytes([head[14], head[15]]));
                let mut rest = vec![0u8; n];
                s.read_exact(&mut rest).await.unwrap();
                let mut all = head.to_vec();
                all.extend_from_slice(&rest);
                let gatelet_agent_api::proxy_v2::Decoded::Header {
                    source: Some(src),
                    authentic: true,
                    ..
                } = gatelet_agent_api::proxy_v2::decode(&all, Some(&test_proxy_key())).unwrap()
                else {
                    panic!("no signed PROXY header with a source")
                };
                let greeting = format!("api {}\n", src.ip());
                if s.write_all(greeting.as_bytes()).await.is_err() {
                    return;
                }
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

/// A port free for both TCP and UDP on loopback right now.
fn free_port() -> u16 {
    for _ in 0..50 {
        let t = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = t.local_addr().unwrap().port();
        if std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port");
}

fn l4(id: u64, port: u16, to: SocketAddr) -> L4Route {
    L4Route {
        id,
        listen_port: port,
        target_host: to.ip().to_string(),
        target_port: to.port(),
        wol: None,
    }
}

fn config(hash: &str, routes: Vec<L4Route>) -> AgentConfig {
    AgentConfig {
        egress_routes: Vec::new(),
        config_hash: Some(hash.into()),
        http_routes: vec![],
        l4_routes: routes,
    }
}

fn settings() -> Settings {
    let mut s = Settings::new(LOOPBACK);
    s.grace = Duration::from_millis(400);
    s.retry_initial = Duration::from_millis(100);
    s.retry_max = Duration::from_millis(200);
    s
}

struct Conn(BufReader<TcpStream>);

impl Conn {
    /// Connects to the route on `port` and reads the target's greeting.
    async fn open(port: u16) -> (Conn, String) {
        let s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let mut c = Conn(BufReader::new(s));
        let tag = c.line().await;
        (c, tag)
    }

    async fn line(&mut self) -> String {
        let mut l = String::new();
        tokio::time::timeout(Duration::from_secs(5), self.0.read_line(&mut l))
            .await
            .expect("a line within 5 s")
            .unwrap();
        l.trim_end().to_owned()
    }

    async fn echo(&mut self, msg: &str) {
        self.0
            .get_mut()
            .write_all(format!("{msg}\n").as_bytes())
            .await
            .unwrap();
        assert_eq!(self.line().await, msg);
    }

    async fn closed(&mut self) -> bool {
        let mut b = [0u8; 1];
        matches!(
            tokio::time::timeout(Duration::from_secs(5), self.0.read(&mut b)).await,
            Ok(Ok(0) | Err(_))
        )
    }
}

fn route(status: &[RouteStatus], port: u16) -> RouteStatus {
    status
        .iter()
        .find(|r| r.listen_port == Some(port))
        .cloned()
        .unwrap_or_else(|| panic!("no route on port {port} in {status:?}"))
}

#[tokio::test]
async fn unchanged_route_keeps_its_connection_when_another_route_changes() {
    let (a, b, c) = (
        tagged_echo("a").await,
        tagged_echo("b").await,
        tagged_echo("c").await,
    );
    let (p1, p2) = (free_port(), free_port());
    let m = RouteManager::new(settings());
    m.start().unwrap();
    let applied = m.apply(config("h1", vec![l4(1, p1, a), l4(2, p2, b)]));
    assert_eq!(route(&applied, p1).tcp, ListenerState::Listening);
    assert_eq!(route(&applied, p1).udp, Some(ListenerState::Listening));
    let (mut kept, tag) = Conn::open(p1).await;
    assert_eq!(tag, "a");
    m.apply(config("h2", vec![l4(1, p1, a), l4(2, p2, c)]));
    kept.echo("still here").await;
    assert_eq!(m.status().config_hash.as_deref(), Some("h2"));
    assert_eq!(route(&m.status().routes, p1).active_connections, 1);
}

#[tokio::test]
async fn changed_target_applies_to_new_connections_while_old_ones_go_on() {
    let (a, b) = (tagged_echo("a").await, tagged_echo("b").await);
    let p = free_port();
    let m = RouteManager::new(settings());
    m.start().unwrap();
    m.apply(config("h1", vec![l4(7, p, a)]));
    let (mut old, tag) = Conn::open(p).await;
    assert_eq!(tag, "a");
    m.apply(config("h2", vec![l4(7, p, b)]));
    let (mut new, tag) = Conn::open(p).await;
    assert_eq!(tag, "b", "new connection goes to the new target");
    old.echo("old one").await;
    new.echo("new one").await;
    assert_eq!(route(&m.status().routes, p).active_connections, 2);
}

#[tokio::test]
async fn removed_route_stops_accepting_and_closes_after_the_grace_period() {
    let a = tagged_echo("a").await;
    let p = free_port();
    let m = RouteManager::new(settings());
    m.start().unwrap();
    m.apply(config("h1", vec![l4(1, p, a)]));
    let (mut open, _) = Conn::open(p).await;
    let removed_at = std::time::Instant::now();
    let applied = m.apply(config("h2", vec![]));
    assert!(applied.is_empty());
    // Stops accepting at once (give the accept loop a moment to drop the listener).
    let mut refused = false;
    for _ in 0..40 {
        if TcpStream::connect(("127.0.0.1", p)).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        refused,
        "port {p} still accepts after the route was removed"
    );
    // The open connection works during the grace period, then is closed.
    open.echo("in grace").await;
    assert!(open.closed().await);
    let took = removed_at.elapsed();
    assert!(
        took >= Duration::from_millis(350) && took < Duration::from_secs(3),
        "closed after {took:?}, grace is 400 ms"
    );
}

#[tokio::test]
async fn a_route_re_added_while_draining_takes_its_listeners_back_at_once() {
    // One target port answering on TCP (greeting "t", then echo) and on UDP (echo).
    let (tcp_target, echo) = loop {
        let t = tagged_echo("t").await;
        if let Ok(u) = UdpSocket::bind(t).await {
            break (t, u);
        }
    };
    tokio::spawn(async move {
        let mut buf = [0u8; 1500];
        while let Ok((n, peer)) = echo.recv_from(&mut buf).await {
            let _ = echo.send_to(&buf[..n], peer).await;
        }
    });
    let echo_addr = tcp_target;
    let p = free_port();
    let mut s = settings();
    s.grace = Duration::from_secs(30);
    let m = RouteManager::new(s);
    m.start().unwrap();
    // One UDP session and one TCP connection open, then the route goes and comes back.
    m.apply(config("h1", vec![l4(1, p, echo_addr)]));
    let c = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let round_trip = |msg: &'static [u8]| {
        let c = &c;
        async move {
            c.send_to(msg, ("127.0.0.1", p)).await.unwrap();
            let mut buf = [0u8; 64];
            let (n, _) = tokio::time::timeout(Duration::from_secs(5), c.recv_from(&mut buf))
                .await
                .expect("a UDP answer within 5 s")
                .unwrap();
            buf[..n].to_vec()
        }
    };
    assert_eq!(round_trip(b"before").await, b"before");
    let (mut open, _) = Conn::open(p).await;
    m.apply(config("h2", vec![]));
    tokio::time::sleep(Duration::from_millis(50)).await;
    let readded = m.apply(config("h3", vec![l4(1, p, echo_addr)]));
    let r = route(&readded, p);
    // At once: without taking the socket back, UDP fails with "address in use" for 30 s.
    assert_eq!(r.udp, Some(ListenerState::Listening), "{r:?}");
    assert_eq!(r.tcp, ListenerState::Listening, "{r:?}");
    assert_eq!(round_trip(b"after").await, b"after");
    let (_new, tag) = Conn::open(p).await;
    assert_eq!(tag, "t");
    open.echo("old connection still in grace").await;
}

#[tokio::test]
async fn port_taken_by_another_socket_fails_that_route_alone_and_recovers() {
    let a = tagged_echo("a").await;
    let (taken, free) = (free_port(), free_port());
    let squatter = std::net::TcpListener::bind(("127.0.0.1", taken)).unwrap();
    let m = RouteManager::new(settings());
    m.start().unwrap();
    let applied = m.apply(config("h1", vec![l4(1, taken, a), l4(2, free, a)]));
    match &route(&applied, taken).tcp {
        ListenerState::Failed { reason } => assert!(reason.contains("in use"), "{reason}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        route(&applied, taken).tcp.heartbeat_word(),
        "listener_failed"
    );
    // UDP on the same port was free: that half listens.
    assert_eq!(route(&applied, taken).udp, Some(ListenerState::Listening));
    assert_eq!(route(&applied, free).tcp, ListenerState::Listening);
    let (_c, tag) = Conn::open(free).await;
    assert_eq!(tag, "a");

    drop(squatter);
    let mut recovered = false;
    for _ in 0..100 {
        if route(&m.status().routes, taken).tcp == ListenerState::Listening {
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(recovered, "{:?}", m.status());
    let (_c, tag) = Conn::open(taken).await;
    assert_eq!(tag, "a");
}

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[tokio::test]
async fn saved_config_is_served_by_a_new_manager_at_start() {
    let dir = TempDir(std::env::temp_dir().join(format!(
        "gatelet-routes-{}-{}",
        std::process::id(),
        line!()
    )));
    std::fs::create_dir_all(&dir.0).unwrap();
    let a = tagged_echo("a").await;
    let p = free_port();
    let mut s = settings();
    s.state_dir = Some(dir.0.clone());
    {
        let m = RouteManager::new(s.clone());
        m.start().unwrap();
        m.apply(config("saved", vec![l4(1, p, a)]));
        let (_c, tag) = Conn::open(p).await;
        assert_eq!(tag, "a");
        tokio::time::timeout(Duration::from_secs(5), m.wait_saved())
            .await
            .expect("saved within 5 s");
    }
    // The old manager is gone: its listener is closed.
    let mut closed = false;
    for _ in 0..40 {
        if TcpStream::connect(("127.0.0.1", p)).await.is_err() {
            closed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(closed, "dropped manager still listens");

    let started = std::time::Instant::now();
    let m = RouteManager::new(s);
    m.start().unwrap();
    let (mut c, tag) = Conn::open(p).await;
    assert_eq!(tag, "a");
    c.echo("after restart").await;
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(m.status().config_hash.as_deref(), Some("saved"));
}

#[tokio::test]
async fn api_relay_reaches_the_companion_and_http_proxy_listens() {
    let api = proxy_echo().await;
    let relay_port = free_port();
    let proxy_port = free_port();
    let mut s = settings();
    s.api_relay = Some(super::ApiRelaySettings {
        port: relay_port,
        target: api,
        key: test_proxy_key(),
    });
    s.proxy_port = Some(proxy_port);
    let m = RouteManager::new(s);
    m.start().unwrap();
    let st = m.status();
    assert_eq!(st.api_relay, Some(ListenerState::Listening));
    assert_eq!(st.http_proxy, Some(ListenerState::Listening));
    let (mut c, tag) = Conn::open(relay_port).await;
    assert_eq!(
        tag, "api 127.0.0.1",
        "the relay names the caller in a PROXY v2 header"
    );
    c.echo("GET /api/health").await;
    // HTTP routes appear in status under their domain, with the proxy's state.
    let web = tagged_echo("web").await;
    m.apply(AgentConfig {
        egress_routes: Vec::new(),
        config_hash: Some("h".into()),
        http_routes: vec![HttpRoute {
            id: 9,
            domain: "app.example".into(),
            target_host: web.ip().to_string(),
            target_port: web.port(),
            backend_https: false,
            wol: None,
        }],
        l4_routes: vec![],
    });
    assert_eq!(m.http_table().current().len(), 1);
    let routes = m.status().routes;
    assert_eq!(routes.len(), 1);
    assert_eq!(routes[0].name, "app.example");
    assert_eq!(routes[0].tcp, ListenerState::Listening);
}

#[tokio::test]
async fn reachability_of_targets_is_probed_and_cached() {
    let up = tagged_echo("up").await;
    let gone = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let down = gone.local_addr().unwrap();
    drop(gone);
    let (p1, p2) = (free_port(), free_port());
    let m = RouteManager::new(settings());
    m.start().unwrap();
    m.apply(config("h", vec![l4(1, p1, up), l4(2, p2, down)]));
    let mut seen = None;
    for _ in 0..100 {
        let st = m.status();
        let (r1, r2) = (route(&st.routes, p1), route(&st.routes, p2));
        if let (Some(a), Some(b)) = (r1.reachability, r2.reachability) {
            seen = Some((a, b));
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (a, b) = seen.expect("both targets probed within 2 s of the apply");
    assert!(a.reachable && a.latency_ms.is_some(), "{a:?}");
    assert!(!b.reachable && b.latency_ms.is_none(), "{b:?}");
    assert!(a.last_checked_at > 0);
}

#[tokio::test]
async fn a_udp_only_target_is_reachable_and_says_how() {
    // A UDP service that answers only real requests (not an empty datagram), on a port where
    // nothing listens on TCP; and one that answers anything.
    let picky = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let picky_addr = picky.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = [0u8; 1500];
        while let Ok((n, peer)) = picky.recv_from(&mut buf).await {
            if n > 0 {
                let _ = picky.send_to(&buf[..n], peer).await;
            }
        }
    });
    let echo = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let echo_addr = echo.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = [0u8; 1500];
        while let Ok((n, peer)) = echo.recv_from(&mut buf).await {
            let _ = echo.send_to(&buf[..n], peer).await;
        }
    });
    let (p1, p2) = (free_port(), free_port());
    let mut s = settings();
    s.probe_interval = Duration::from_millis(300);
    let m = RouteManager::new(s);
    m.start().unwrap();
    m.apply(config(
        "h",
        vec![l4(1, p1, echo_addr), l4(2, p2, picky_addr)],
    ));
    let reach = |port: u16| route(&m.status().routes, port).reachability;
    let wait = |port: u16, want: &'static str| {
        let reach = &reach;
        async move {
            for _ in 0..100 {
                if let Some(r) = reach(port).filter(|r| r.method.as_deref() == Some(want)) {
                    return r;
                }
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
            panic!("port {port}: no {want} verdict, last {:?}", reach(port));
        }
    };
    let r = wait(p1, "udp_probe").await;
    assert!(r.reachable && r.latency_ms.is_some(), "{r:?}");
    // Silent to an empty datagram, and loopback has no neighbour entry: down so far.
    let r = wait(p2, "tcp+udp").await;
    assert!(!r.reachable, "{r:?}");
    // Once it has answered a relayed datagram, it is up by that.
    let c = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    c.send_to(b"hello", ("127.0.0.1", p2)).await.unwrap();
    let mut buf = [0u8; 64];
    tokio::time::timeout(Duration::from_secs(5), c.recv_from(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let r = wait(p2, "udp_reply").await;
    assert!(r.reachable, "{r:?}");
}

#[tokio::test]
async fn udp_route_relays_datagrams() {
    let echo = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let echo_addr = echo.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = [0u8; 1500];
        while let Ok((n, peer)) = echo.recv_from(&mut buf).await {
            let _ = echo.send_to(&buf[..n], peer).await;
        }
    });
    let p = free_port();
    let m = RouteManager::new(settings());
    m.start().unwrap();
    m.apply(config("h", vec![l4(1, p, echo_addr)]));
    let c = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    c.send_to(b"dgram", ("127.0.0.1", p)).await.unwrap();
    let mut buf = [0u8; 64];
    let (n, _) = tokio::time::timeout(Duration::from_secs(5), c.recv_from(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf[..n], b"dgram");
    let r = route(&m.status().routes, p);
    assert_eq!(r.active_connections, 1);
    assert_eq!(r.bytes, 10);
}

/// An HTTP backend answering every request with `200` and `body`.
async fn http_backend(body: &'static str) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut s = BufReader::new(s);
                loop {
                    let mut line = String::new();
                    match s.read_line(&mut line).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) if line == "\r\n" => {
                            let resp = format!(
                                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                                body.len()
                            );
                            if s.get_mut().write_all(resp.as_bytes()).await.is_err() {
                                return;
                            }
                        }
                        Ok(_) => {}
                    }
                }
            });
        }
    });
    addr
}

async fn http_get(port: u16, host: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let req = format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut out))
        .await
        .expect("answer within 5 s")
        .unwrap();
    out
}

#[tokio::test]
async fn http_routes_applied_to_the_manager_reach_the_proxy() {
    let web = http_backend("hello from web").await;
    let proxy_port = free_port();
    let mut s = settings();
    s.proxy_port = Some(proxy_port);
    let m = RouteManager::new(s);
    m.start().unwrap();
    let with_route = |id| AgentConfig {
        egress_routes: Vec::new(),
        config_hash: Some(format!("h{id}")),
        http_routes: vec![HttpRoute {
            id,
            domain: "app.example".into(),
            target_host: web.ip().to_string(),
            target_port: web.port(),
            backend_https: false,
            wol: None,
        }],
        l4_routes: vec![],
    };
    m.apply(with_route(1));
    let out = http_get(proxy_port, "App.Example:8080").await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.ends_with("hello from web"), "{out}");
    // The route's status carries its own bytes (they were 0 before per-route counters).
    let st = m.status();
    let r = st.routes.iter().find(|r| r.id == 1).unwrap();
    assert!(r.bytes >= out.len() as u64, "{r:?}");
    assert_eq!((r.active_connections, r.refused, r.failures), (0, 0, 0));
    m.apply(config("none", vec![]));
    let out = http_get(proxy_port, "app.example").await;
    assert!(out.starts_with("HTTP/1.1 502"), "{out}");
}

#[tokio::test]
async fn a_wildcard_bind_address_is_refused() {
    let a = tagged_echo("a").await;
    let p = free_port();
    let m = RouteManager::new(Settings::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED)));
    m.start().unwrap();
    let applied = m.apply(config("h", vec![l4(1, p, a)]));
    match &route(&applied, p).tcp {
        ListenerState::Failed { reason } => assert!(reason.contains("wildcard"), "{reason}"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        route(&applied, p).udp,
        Some(ListenerState::Failed { .. })
    ));
}

#[tokio::test]
async fn the_api_relay_has_its_own_budget_when_the_routes_cap_is_full() {
    let echo = tagged_echo("echo").await;
    let api = proxy_echo().await;
    let (route_port, relay_port) = (free_port(), free_port());
    let mut s = settings();
    s.max_connections_total = 2;
    s.api_relay = Some(super::ApiRelaySettings {
        port: relay_port,
        target: api,
        key: test_proxy_key(),
    });
    let m = RouteManager::new(s);
    m.start().unwrap();
    m.apply(config("h", vec![l4(1, route_port, echo)]));
    let (_a, _) = Conn::open(route_port).await;
    let (_b, _) = Conn::open(route_port).await;
    // The routes' global cap is full: a third route connection is refused...
    let mut third = Conn(BufReader::new(
        TcpStream::connect(("127.0.0.1", route_port)).await.unwrap(),
    ));
    assert!(third.closed().await, "the routes' cap of 2 refuses a third");
    // ...and the management API relay still answers.
    let (mut c, tag) = Conn::open(relay_port).await;
    assert_eq!(tag, "api 127.0.0.1");
    c.echo("GET /api/status").await;
}

// Egress routes: a LAN-side listener (127.0.0.1 stands in for the LAN address) relayed
// "into the tunnel" (kernel mode: an ordinary connect, here to a loopback echo).

fn egress(id: u64, port: u16, to: SocketAddr, sources: &[&str]) -> EgressRoute {
    EgressRoute {
        id,
        vip_ip: "192.168.1.250".into(),
        vip_prefix: 24,
        lan_listen_port: port,
        target_host: to.ip().to_string(),
        target_port: to.port(),
        allowed_sources: sources.iter().map(|s| s.to_string()).collect(),
        near_peers: vec![],
    }
}

fn egress_config(hash: &str, routes: Vec<EgressRoute>) -> AgentConfig {
    AgentConfig {
        egress_routes: routes,
        ..config(hash, vec![])
    }
}

fn egress_settings() -> Settings {
    let mut s = settings();
    s.egress_bind_ip = LOOPBACK;
    s
}

fn egress_status(m: &RouteManager, port: u16) -> EgressStatus {
    m.status()
        .egress
        .into_iter()
        .find(|e| e.lan_listen_port == port)
        .unwrap_or_else(|| panic!("no egress listener on {port}"))
}

/// Connects to 127.0.0.1:`port` from the source address `from`.
async fn connect_from(from: Ipv4Addr, port: u16) -> TcpStream {
    let s = tokio::net::TcpSocket::new_v4().unwrap();
    s.bind(SocketAddr::new(IpAddr::V4(from), 0)).unwrap();
    tokio::time::timeout(
        Duration::from_secs(5),
        s.connect(SocketAddr::new(LOOPBACK, port)),
    )
    .await
    .expect("connect within 5 s")
    .unwrap()
}

/// Opens an egress connection from `from` and reads the target's greeting (None: the
/// connection was closed or reset without one).
async fn egress_open(from: Ipv4Addr, port: u16) -> (Conn, Option<String>) {
    let mut c = Conn(BufReader::new(connect_from(from, port).await));
    let mut l = String::new();
    let got = tokio::time::timeout(Duration::from_secs(5), c.0.read_line(&mut l))
        .await
        .expect("an answer or a close within 5 s");
    let tag = match got {
        Ok(n) if n > 0 => Some(l.trim_end().to_owned()),
        _ => None,
    };
    (c, tag)
}

const PRINTER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
const STRANGER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 3);

#[tokio::test]
async fn egress_relays_allowed_sources_and_drops_and_counts_the_others() {
    let nas = tagged_echo("nas").await;
    let p = free_port();
    let m = RouteManager::new(egress_settings());
    m.start().unwrap();
    m.apply(egress_config("e1", vec![egress(1, p, nas, &["127.0.0.2"])]));
    let st = egress_status(&m, p);
    assert!(st.bound, "{st:?}");
    assert_eq!(st.bind_error, None);
    assert_eq!(st.lan_bind_ip, "127.0.0.1");
    assert_eq!(st.id, 1);

    let (_, tag) = egress_open(STRANGER, p).await;
    assert_eq!(tag, None, "a source outside the allowlist gets nothing");
    assert_eq!(egress_status(&m, p).source_drops, 1);

    let (mut c, tag) = egress_open(PRINTER, p).await;
    assert_eq!(tag.as_deref(), Some("nas"));
    c.echo("scan page 1").await;
    let st = egress_status(&m, p);
    assert_eq!(st.active_connections, 1);
    assert_eq!(st.source_drops, 1);
    assert!(st.bytes > 0);
    // Half-close: our end of stream reaches the NAS, whose close comes back.
    c.0.get_mut().shutdown().await.unwrap();
    assert!(c.closed().await, "the close travels both ways");

    let near = m
        .status()
        .egress_near
        .expect("near state with egress routes");
    assert_eq!(near.vips, vec!["192.168.1.250".to_string()]);
    assert_eq!(near.role, "none");
}

#[tokio::test]
async fn an_empty_allowlist_admits_nobody() {
    let nas = tagged_echo("nas").await;
    let p = free_port();
    let m = RouteManager::new(egress_settings());
    m.start().unwrap();
    m.apply(egress_config("e1", vec![egress(1, p, nas, &[])]));
    for from in [PRINTER, STRANGER, Ipv4Addr::LOCALHOST] {
        let (_, tag) = egress_open(from, p).await;
        assert_eq!(tag, None, "{from} is refused");
    }
    assert_eq!(egress_status(&m, p).source_drops, 3);
}

#[tokio::test]
async fn egress_changes_apply_to_new_connections_without_dropping_open_ones() {
    let (nas, nas2) = (tagged_echo("nas").await, tagged_echo("nas2").await);
    let (p, q) = (free_port(), free_port());
    let m = RouteManager::new(egress_settings());
    m.start().unwrap();
    m.apply(egress_config(
        "e1",
        vec![
            egress(1, p, nas, &["127.0.0.2"]),
            egress(2, q, nas, &["127.0.0.2"]),
        ],
    ));
    let (mut old, tag) = egress_open(PRINTER, p).await;
    assert_eq!(tag.as_deref(), Some("nas"));
    let (mut other, _) = egress_open(PRINTER, q).await;

    // New sources and a new target on p; q untouched.
    m.apply(egress_config(
        "e2",
        vec![
            egress(1, p, nas2, &["127.0.0.3/32"]),
            egress(2, q, nas, &["127.0.0.2"]),
        ],
    ));
    old.echo("open before the change").await;
    other.echo("the other route").await;
    let (_, tag) = egress_open(PRINTER, p).await;
    assert_eq!(tag, None, "the printer is no longer allowed on p");
    let (mut new, tag) = egress_open(STRANGER, p).await;
    assert_eq!(
        tag.as_deref(),
        Some("nas2"),
        "new connections use the new target"
    );
    new.echo("new one").await;

    // p removed: stops accepting at once, its open connections close after the grace.
    m.apply(egress_config("e3", vec![egress(2, q, nas, &["127.0.0.2"])]));
    assert_eq!(m.status().egress.len(), 1);
    let mut refused = false;
    for _ in 0..50 {
        let s = tokio::net::TcpSocket::new_v4().unwrap();
        s.bind(SocketAddr::new(IpAddr::V4(STRANGER), 0)).unwrap();
        if s.connect(SocketAddr::new(LOOPBACK, p)).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(refused, "the removed listener is closed");
    assert!(old.closed().await, "closed after the grace period");
    other.echo("q is untouched").await;
}

#[tokio::test]
async fn an_unreachable_tunnel_target_is_counted_and_the_client_reset() {
    // A port nobody listens on.
    let dead = SocketAddr::new(LOOPBACK, free_port());
    let p = free_port();
    let m = RouteManager::new(egress_settings());
    m.start().unwrap();
    m.apply(egress_config(
        "e1",
        vec![egress(4, p, dead, &["127.0.0.0/8"])],
    ));
    let (_, tag) = egress_open(PRINTER, p).await;
    assert_eq!(tag, None);
    let st = egress_status(&m, p);
    assert_eq!(st.failures, 1);
    assert!(
        st.last_error
            .as_deref()
            .unwrap_or("")
            .contains("connect to"),
        "{st:?}"
    );
}

#[tokio::test]
async fn a_taken_egress_port_reports_the_bind_error_and_recovers() {
    let nas = tagged_echo("nas").await;
    let squatter = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let p = squatter.local_addr().unwrap().port();
    let m = RouteManager::new(egress_settings());
    m.start().unwrap();
    m.apply(egress_config("e1", vec![egress(1, p, nas, &["127.0.0.2"])]));
    let st = egress_status(&m, p);
    assert!(!st.bound);
    assert!(
        st.bind_error
            .as_deref()
            .unwrap_or("")
            .contains("address in use"),
        "{st:?}"
    );
    drop(squatter);
    let mut bound = false;
    for _ in 0..100 {
        if egress_status(&m, p).bound {
            bound = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(bound, "retried until bound");
    let (_, tag) = egress_open(PRINTER, p).await;
    assert_eq!(tag.as_deref(), Some("nas"));
}
