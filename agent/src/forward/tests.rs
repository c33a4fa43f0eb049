//! Relays on loopback: echo, half-close, timeouts, caps, UDP sessions.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream, UdpSocket};
use tokio::sync::watch;

use super::tcp::{self, ConnectionLimit, TcpConfig, TcpRoute};
use super::udp::{self, UdpConfig, UdpRoute};
use super::{RouteCounters, TargetCell};
use crate::target::Target;

/// A TCP echo server on loopback; each connection echoes until EOF, then closes.
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

struct Relay {
    addr: SocketAddr,
    counters: Arc<RouteCounters>,
    _stop: watch::Sender<bool>,
    kill: watch::Sender<bool>,
}

async fn tcp_relay(to: SocketAddr, config: TcpConfig, global: Arc<ConnectionLimit>) -> Relay {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let counters = Arc::new(RouteCounters::default());
    let (stop, stop_rx) = watch::channel(false);
    let (kill, kill_rx) = watch::channel(false);
    let route = TcpRoute {
        target: TargetCell::new(target(to)),
        counters: counters.clone(),
        config: Arc::new(config),
        global,
        kill: kill_rx,
        waker: None,
        sources: None,
        via: Default::default(),
    };
    tokio::spawn(tcp::serve(l, route, stop_rx));
    Relay {
        addr,
        counters,
        _stop: stop,
        kill,
    }
}

async fn default_relay(to: SocketAddr) -> Relay {
    tcp_relay(to, TcpConfig::default(), ConnectionLimit::new(100)).await
}

async fn echo_round(c: &mut TcpStream, msg: &[u8]) {
    c.write_all(msg).await.unwrap();
    let mut got = vec![0u8; msg.len()];
    tokio::time::timeout(Duration::from_secs(5), c.read_exact(&mut got))
        .await
        .expect("echo within 5 s")
        .unwrap();
    assert_eq!(got, msg);
}

async fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..200 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test]
async fn tcp_echo_goes_through_the_relay_and_bytes_are_counted() {
    for splice in [false, true] {
        let echo = echo_server().await;
        let r = tcp_relay(
            echo,
            TcpConfig {
                splice,
                ..TcpConfig::default()
            },
            ConnectionLimit::new(100),
        )
        .await;
        let mut c = TcpStream::connect(r.addr).await.unwrap();
        let pipes_before = tcp::pipes_made();
        let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let (mut rd, mut wr) = c.split();
        let send = async {
            wr.write_all(&big).await.unwrap();
        };
        let mut got = vec![0u8; big.len()];
        let recv = rd.read_exact(&mut got);
        let (_, n) = tokio::join!(send, recv);
        n.unwrap();
        assert_eq!(got, big, "splice={splice}");
        // A bulk direction goes over to splice after its first 64 KiB, each with its pipe.
        let pipes = if splice { 2 } else { 0 };
        assert_eq!(tcp::pipes_made() - pipes_before, pipes, "splice={splice}");
        echo_round(&mut c, b"ping").await;
        assert_eq!(r.counters.tcp_active.load(Ordering::Relaxed), 1);
        drop(c);
        let counters = r.counters.clone();
        wait_for("connection count back to 0", || {
            counters.tcp_active.load(Ordering::Relaxed) == 0
        })
        .await;
        // Both directions of 300 004 bytes.
        assert_eq!(r.counters.bytes.load(Ordering::Relaxed), 2 * 300_004);
    }
}

#[tokio::test]
async fn short_exchanges_are_copied_without_a_pipe_even_with_splice_on() {
    let echo = echo_server().await;
    let r = tcp_relay(echo, TcpConfig::default(), ConnectionLimit::new(100)).await;
    assert!(TcpConfig::default().splice);
    let before = tcp::pipes_made();
    for _ in 0..20 {
        let mut c = TcpStream::connect(r.addr).await.unwrap();
        echo_round(&mut c, &[7u8; 1024]).await;
    }
    assert_eq!(tcp::pipes_made(), before, "a 1 KiB exchange made a pipe");
}

#[tokio::test]
async fn half_close_is_forwarded_both_ways() {
    for splice in [false, true] {
        // Server: reads until the client's EOF, then answers and closes.
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server_addr = l.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut req = Vec::new();
            s.read_to_end(&mut req).await.unwrap();
            s.write_all(b"reply to ").await.unwrap();
            s.write_all(&req).await.unwrap();
            s.shutdown().await.unwrap();
            // Second connection: the server finishes first, the client speaks after.
            let (mut s, _) = l.accept().await.unwrap();
            s.write_all(b"banner").await.unwrap();
            s.shutdown().await.unwrap();
            let mut late = Vec::new();
            s.read_to_end(&mut late).await.unwrap();
            late
        });
        let r = tcp_relay(
            server_addr,
            TcpConfig {
                splice,
                ..TcpConfig::default()
            },
            ConnectionLimit::new(100),
        )
        .await;

        let mut c = TcpStream::connect(r.addr).await.unwrap();
        c.write_all(b"hello").await.unwrap();
        c.shutdown().await.unwrap();
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut answer))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(answer, b"reply to hello", "splice={splice}");

        let mut c = TcpStream::connect(r.addr).await.unwrap();
        let mut banner = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut banner))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(banner, b"banner");
        c.write_all(b"still talking").await.unwrap();
        c.shutdown().await.unwrap();
        let late = tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(late, b"still talking");
    }
}

#[tokio::test]
async fn refused_target_resets_the_client_and_is_counted() {
    let gone = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead = gone.local_addr().unwrap();
    drop(gone);
    let r = default_relay(dead).await;
    let mut c = TcpStream::connect(r.addr).await.unwrap();
    let mut buf = [0u8; 8];
    let res = tokio::time::timeout(Duration::from_secs(5), c.read(&mut buf))
        .await
        .unwrap();
    assert!(
        matches!(&res, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset),
        "{res:?}"
    );
    assert_eq!(r.counters.target_failures.load(Ordering::Relaxed), 1);
    let err = r.counters.last_error().unwrap();
    assert!(err.contains(&dead.to_string()), "{err}");
}

#[tokio::test]
async fn connect_to_a_target_that_never_answers_times_out() {
    // A listener with backlog 0 whose queue is full drops further SYNs: connects hang.
    let sock = TcpSocket::new_v4().unwrap();
    sock.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let full = sock.listen(0).unwrap();
    let addr = full.local_addr().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..4 {
        if let Ok(Ok(s)) =
            tokio::time::timeout(Duration::from_millis(300), TcpStream::connect(addr)).await
        {
            fillers.push(s);
        }
    }
    let started = std::time::Instant::now();
    let r = crate::target::connect(&target(addr), Duration::from_millis(400)).await;
    let err = r.expect_err("the full listener must not accept");
    assert_eq!(err.kind(), std::io::ErrorKind::TimedOut, "{err}");
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn caps_refuse_with_a_reset_and_count_it() {
    let echo = echo_server().await;
    // Per-route cap of 1.
    let r = tcp_relay(
        echo,
        TcpConfig {
            max_per_route: 1,
            ..TcpConfig::default()
        },
        ConnectionLimit::new(100),
    )
    .await;
    let mut first = TcpStream::connect(r.addr).await.unwrap();
    echo_round(&mut first, b"a").await;
    let mut second = TcpStream::connect(r.addr).await.unwrap();
    let mut buf = [0u8; 1];
    let res = tokio::time::timeout(Duration::from_secs(5), second.read(&mut buf))
        .await
        .unwrap();
    assert!(
        matches!(&res, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset),
        "{res:?}"
    );
    assert_eq!(r.counters.refused.load(Ordering::Relaxed), 1);
    let err = r.counters.last_error().unwrap();
    assert!(err.contains("refused 1 connection"), "{err}");
    echo_round(&mut first, b"still fine").await;

    // Global cap of 1 shared by two routes.
    let global = ConnectionLimit::new(1);
    let a = tcp_relay(echo, TcpConfig::default(), global.clone()).await;
    let b = tcp_relay(echo, TcpConfig::default(), global.clone()).await;
    let mut on_a = TcpStream::connect(a.addr).await.unwrap();
    echo_round(&mut on_a, b"a").await;
    let mut on_b = TcpStream::connect(b.addr).await.unwrap();
    let res = tokio::time::timeout(Duration::from_secs(5), on_b.read(&mut buf))
        .await
        .unwrap();
    assert!(res.is_err(), "{res:?}");
    assert_eq!(b.counters.refused.load(Ordering::Relaxed), 1);
    assert_eq!(global.open(), 1);
}

#[tokio::test]
async fn idle_connection_is_closed_and_kill_closes_open_ones() {
    let echo = echo_server().await;
    let r = tcp_relay(
        echo,
        TcpConfig {
            idle_timeout: Duration::from_millis(200),
            ..TcpConfig::default()
        },
        ConnectionLimit::new(100),
    )
    .await;
    let mut c = TcpStream::connect(r.addr).await.unwrap();
    echo_round(&mut c, b"x").await;
    let mut buf = [0u8; 1];
    let started = std::time::Instant::now();
    let res = tokio::time::timeout(Duration::from_secs(5), c.read(&mut buf))
        .await
        .expect("closed by the idle timeout");
    assert!(!matches!(res, Ok(n) if n > 0), "{res:?}");
    assert!(started.elapsed() < Duration::from_secs(2));

    let r = default_relay(echo).await;
    let mut c = TcpStream::connect(r.addr).await.unwrap();
    echo_round(&mut c, b"x").await;
    r.kill.send(true).unwrap();
    let res = tokio::time::timeout(Duration::from_secs(5), c.read(&mut buf))
        .await
        .expect("closed by kill");
    assert!(!matches!(res, Ok(n) if n > 0), "{res:?}");
}

/// A UDP echo server on loopback.
async fn udp_echo() -> SocketAddr {
    let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = s.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65_535];
        while let Ok((n, peer)) = s.recv_from(&mut buf).await {
            let _ = s.send_to(&buf[..n], peer).await;
        }
    });
    addr
}

async fn udp_relay(to: SocketAddr, config: UdpConfig) -> (Relay, SocketAddr) {
    let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = s.local_addr().unwrap();
    let counters = Arc::new(RouteCounters::default());
    let (stop, stop_rx) = watch::channel(false);
    let (kill, kill_rx) = watch::channel(false);
    let route = UdpRoute {
        target: TargetCell::new(target(to)),
        counters: counters.clone(),
        config: Arc::new(config),
        kill: kill_rx,
        waker: None,
    };
    tokio::spawn(udp::serve(Arc::new(s.into()), route, stop_rx));
    (
        Relay {
            addr,
            counters,
            _stop: stop,
            kill,
        },
        addr,
    )
}

async fn udp_round(c: &UdpSocket, to: SocketAddr, msg: &[u8]) {
    c.send_to(msg, to).await.unwrap();
    let mut buf = [0u8; 2048];
    let (n, from) = tokio::time::timeout(Duration::from_secs(5), c.recv_from(&mut buf))
        .await
        .expect("udp reply within 5 s")
        .unwrap();
    assert_eq!(&buf[..n], msg);
    assert_eq!(from, to, "the reply comes from the listening socket");
}

#[tokio::test]
async fn udp_echo_uses_one_session_per_client_and_sessions_expire() {
    let echo = udp_echo().await;
    let (r, addr) = udp_relay(
        echo,
        UdpConfig {
            idle_timeout: Duration::from_millis(300),
            max_sessions: 2,
            ..UdpConfig::default()
        },
    )
    .await;
    let a = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let b = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let c = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    udp_round(&a, addr, b"from a").await;
    udp_round(&a, addr, b"again a").await;
    udp_round(&b, addr, b"from b").await;
    assert_eq!(r.counters.udp_sessions.load(Ordering::Relaxed), 2);
    // The cap: a third client's datagram is dropped and counted.
    c.send_to(b"from c", addr).await.unwrap();
    let counters = r.counters.clone();
    wait_for("refused datagram", || {
        counters.refused.load(Ordering::Relaxed) == 1
    })
    .await;
    assert_eq!(
        r.counters.bytes.load(Ordering::Relaxed),
        2 * (6 + 7 + 6) as u64
    );
    // Idle sessions end; a new datagram opens a new one.
    wait_for("sessions expired", || {
        counters.udp_sessions.load(Ordering::Relaxed) == 0
    })
    .await;
    udp_round(&c, addr, b"from c later").await;
    assert_eq!(r.counters.udp_sessions.load(Ordering::Relaxed), 1);
    r.kill.send(true).unwrap();
    wait_for("sessions killed", || {
        counters.udp_sessions.load(Ordering::Relaxed) == 0
    })
    .await;
}

/// Runs `relay` next to `traffic` (which never ends on its own) until the relay ends, within
/// 5 s; `what` names the end the test waits for.
async fn until_relay_ends<R>(
    relay: impl std::future::Future<Output = R>,
    traffic: impl std::future::Future<Output = ()>,
    what: &str,
) -> R {
    tokio::time::timeout(Duration::from_secs(5), async {
        tokio::select! {
            r = relay => r,
            _ = traffic => unreachable!("the traffic ended first"),
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{what} within 5 s"))
}

/// Two connected loopback pairs: (client, its accepted end) and (the relay's LAN-side end,
/// the server's accepted end).
async fn two_pairs() -> ((TcpStream, TcpStream), (TcpStream, TcpStream)) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
    let (a, _) = l.accept().await.unwrap();
    let b = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
    let (s, _) = l.accept().await.unwrap();
    ((c, a), (b, s))
}

/// After a 1 KiB exchange no read finds only EAGAIN: a short read is taken as having drained
/// the socket (before, each direction made one such read: six reads instead of four).
#[tokio::test]
async fn a_short_exchange_makes_no_read_that_finds_nothing() {
    let ((mut c, a), (b, mut s)) = two_pairs().await;
    let counters = RouteCounters::default();
    let before = tcp::wasted_reads();
    let config = TcpConfig::default();
    let relay = tcp::relay(&a, &b, &config, &counters);
    let traffic = async {
        c.write_all(&[1u8; 1024]).await.unwrap();
        let mut req = [0u8; 1024];
        s.read_exact(&mut req).await.unwrap();
        s.write_all(&req).await.unwrap();
        let mut back = [0u8; 1024];
        c.read_exact(&mut back).await.unwrap();
        assert_eq!(back, req);
        c.shutdown().await.unwrap();
        assert_eq!(
            s.read(&mut req).await.unwrap(),
            0,
            "the client's FIN went through"
        );
        s.shutdown().await.unwrap();
        std::future::pending::<()>().await
    };
    let r = until_relay_ends(relay, traffic, "the relay ends").await;
    assert!(r.is_ok(), "{r:?}");
    assert_eq!(tcp::wasted_reads() - before, 0);
    assert_eq!(counters.bytes.load(Ordering::Relaxed), 2048);
    // The last end of stream is not forwarded with shutdown(2) by the relay: dropping the
    // sockets (the connection's end) closes them, and the close sends the FIN.
    drop((a, b));
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut rest))
        .await
        .expect("the client sees the end of stream within 5 s")
        .unwrap();
    assert!(rest.is_empty());
}

/// Keepalive on the connected side comes only when the connection lasts: not for a short
/// exchange, and once [`crate::stack::KEEPALIVE_IDLE`] passed, with the agent's parameters.
#[tokio::test(start_paused = true)]
async fn the_connected_side_gets_keepalive_once_the_connection_lasts() {
    let ((mut c, a), (b, mut s)) = two_pairs().await;
    let counters = RouteCounters::default();
    let config = TcpConfig::default();
    let relay = tcp::relay(&a, &b, &config, &counters);
    let check = async {
        let mut one = [0u8; 1];
        c.write_all(b"x").await.unwrap();
        s.read_exact(&mut one).await.unwrap();
        let sock = socket2::SockRef::from(&b);
        assert!(
            !sock.keepalive().unwrap(),
            "no keepalive for a fresh connection"
        );
        tokio::time::sleep(crate::stack::KEEPALIVE_IDLE - Duration::from_secs(1)).await;
        assert!(
            !sock.keepalive().unwrap(),
            "no keepalive before KEEPALIVE_IDLE"
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(
            sock.keepalive().unwrap(),
            "keepalive once the connection lasted"
        );
        assert_eq!(
            sock.tcp_keepalive_time().unwrap(),
            crate::stack::KEEPALIVE_IDLE
        );
        assert_eq!(
            sock.tcp_keepalive_interval().unwrap(),
            crate::stack::KEEPALIVE_INTERVAL
        );
        assert_eq!(
            sock.tcp_keepalive_retries().unwrap(),
            crate::stack::KEEPALIVE_PROBES
        );
        // Still relaying.
        s.write_all(b"y").await.unwrap();
        c.read_exact(&mut one).await.unwrap();
        assert_eq!(&one, b"y");
    };
    tokio::select! {
        r = relay => panic!("the relay ended: {r:?}"),
        () = check => {}
    }
}

/// The AsyncRead/AsyncWrite relay (the one a userspace tunnel-side stream takes), here between
/// two kernel sockets.
#[tokio::test]
async fn relay_io_copies_both_ways_forwards_half_close_and_counts() {
    let ((mut c, a), (mut b, mut s)) = two_pairs().await;
    let counters = Arc::new(RouteCounters::default());
    let task = {
        let counters = counters.clone();
        tokio::spawn(async move {
            let mut a = crate::stack::Stream::from(a);
            tcp::relay_io(&mut a, &mut b, &TcpConfig::default(), &counters).await
        })
    };
    // A bulk upload (its buffer grows), then our FIN.
    let upload: Vec<u8> = (0..300_000u32).map(|i| i as u8).collect();
    c.write_all(&upload).await.unwrap();
    c.shutdown().await.unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut got))
        .await
        .expect("the upload and the FIN within 5 s")
        .unwrap();
    assert!(got == upload, "the upload arrived whole and in order");
    // The other direction still flows after the half-close.
    s.write_all(b"reply").await.unwrap();
    s.shutdown().await.unwrap();
    let mut back = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut back))
        .await
        .expect("the reply and the FIN within 5 s")
        .unwrap();
    assert_eq!(back, b"reply");
    let r = tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("the relay ends when both directions did")
        .unwrap();
    assert!(r.is_ok(), "{r:?}");
    assert_eq!(counters.bytes.load(Ordering::Relaxed), 300_000 + 5);
}

#[tokio::test]
async fn relay_io_ends_an_idle_connection_with_timed_out() {
    let ((mut c, a), (mut b, mut s)) = two_pairs().await;
    let counters = RouteCounters::default();
    let config = TcpConfig {
        idle_timeout: Duration::from_millis(200),
        ..TcpConfig::default()
    };
    let mut a = crate::stack::Stream::from(a);
    let relay = tcp::relay_io(&mut a, &mut b, &config, &counters);
    let traffic = async {
        echo_byte(&mut c, &mut s).await;
        std::future::pending::<()>().await
    };
    let r = until_relay_ends(relay, traffic, "the idle timeout ends the relay").await;
    assert_eq!(r.unwrap_err().kind(), std::io::ErrorKind::TimedOut);
    assert_eq!(counters.bytes.load(Ordering::Relaxed), 1);
}

/// One byte from `c` through the relay to `s`.
async fn echo_byte(c: &mut TcpStream, s: &mut TcpStream) {
    c.write_all(b"x").await.unwrap();
    let mut one = [0u8; 1];
    s.read_exact(&mut one).await.unwrap();
}

/// A kernel stream that, like the userspace stack's, says "not ready" when nothing is waiting
/// instead of letting a read find out (its readiness is a peek; a waiting reader is polled
/// again at once).
struct PeekReady(TcpStream);

impl tcp::ReadReady for PeekReady {
    fn poll_ready_to_read(
        &self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use std::os::fd::AsRawFd;
        match crate::sys::sock::peek(self.0.as_raw_fd()) {
            Ok(crate::sys::sock::Peek::Empty) => {
                cx.waker().wake_by_ref();
                std::task::Poll::Pending
            }
            Ok(_) => std::task::Poll::Ready(Ok(())),
            Err(e) => std::task::Poll::Ready(Err(e)),
        }
    }
}

impl tokio::io::AsyncRead for PeekReady {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for PeekReady {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

async fn pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
    let (b, _) = l.accept().await.unwrap();
    (a, b)
}

/// The kernel relay gives both buffers back once a short exchange drained both directions:
/// 1,000 idle relayed connections held 34 KiB each (tests-hw/bench/l4-rss.sh: 36 MiB) when a
/// short read, which clears the readiness instead of reading to EAGAIN, left the buffer held.
#[tokio::test(flavor = "current_thread")]
async fn an_idle_kernel_relay_holds_no_buffer_after_a_short_exchange() {
    let ((mut c, a), (b, mut s)) = two_pairs().await;
    let counters = RouteCounters::default();
    let config = TcpConfig::default();
    let relay = tcp::relay(&a, &b, &config, &counters);
    let traffic = async {
        c.write_all(&[1u8; 100]).await.unwrap();
        let mut req = [0u8; 100];
        s.read_exact(&mut req).await.unwrap();
        s.write_all(&req).await.unwrap();
        let mut back = [0u8; 100];
        c.read_exact(&mut back).await.unwrap();
        // Let the relay poll both idle directions a few times (it shares this thread).
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
        assert_eq!(
            tcp::buffers_out(),
            0,
            "both directions gave their buffer back"
        );
    };
    tokio::select! {
        r = relay => panic!("the relay ended: {r:?}"),
        _ = traffic => {}
    }
}

/// The generic relay (a userspace stream on one side) gives both buffers back once the bytes
/// moved: 1,000 idle relayed connections held 32 KiB each before (two 16 KiB buffers).
#[tokio::test(flavor = "current_thread")]
async fn an_idle_userspace_relay_holds_no_buffer_after_moving_bytes() {
    let (mut hub, tunnel_side) = pair().await;
    let (lan_side, mut lan) = pair().await;
    let config = TcpConfig::default();
    let counters = RouteCounters::default();
    let relay = tokio::spawn(async move {
        let mut a = PeekReady(tunnel_side);
        let mut b = PeekReady(lan_side);
        tcp::relay_io(&mut a, &mut b, &config, &counters).await
    });
    hub.write_all(b"x").await.unwrap();
    let mut one = [0u8; 1];
    lan.read_exact(&mut one).await.unwrap();
    lan.write_all(b"y").await.unwrap();
    hub.read_exact(&mut one).await.unwrap();
    assert_eq!(&one, b"y");
    // Let the relay poll both idle directions a few times (it shares this thread).
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
    assert_eq!(
        tcp::buffers_out(),
        0,
        "both directions gave their buffer back"
    );
    relay.abort();
}
