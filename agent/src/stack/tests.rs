//! The kernel side of the seam on loopback (the userspace side is tested with the netstack).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;

const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

#[test]
fn a_wildcard_address_is_refused_with_its_reason() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .unwrap();
    let _g = rt.enter();
    let addr = SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0));
    let e = Stack::Kernel.bind_tcp(addr).unwrap_err();
    assert!(
        e.starts_with("refusing to listen on the wildcard address"),
        "{e}"
    );
    let e = Stack::Kernel.bind_udp(addr).unwrap_err();
    assert!(
        e.starts_with("refusing to listen on the wildcard address"),
        "{e}"
    );
}

#[tokio::test]
async fn bind_errors_say_address_in_use_and_not_available() {
    let l = Stack::Kernel
        .bind_tcp(SocketAddr::new(LOOPBACK, 0))
        .unwrap();
    let taken = l.local_addr().unwrap();
    let e = Stack::Kernel.bind_tcp(taken).unwrap_err();
    assert!(e.starts_with("address in use: "), "{e}");
    let u = Stack::Kernel
        .bind_udp(SocketAddr::new(LOOPBACK, 0))
        .unwrap();
    let e = Stack::Kernel.bind_udp(u.local_addr().unwrap()).unwrap_err();
    assert!(e.starts_with("address in use: "), "{e}");
    // TEST-NET-1: configured on no interface of a test machine.
    let e = Stack::Kernel
        .bind_tcp(SocketAddr::from(([192, 0, 2, 1], 0)))
        .unwrap_err();
    assert!(e.starts_with("address not available: 192.0.2.1"), "{e}");
}

/// A listener of the kernel stack and a client connected to it, accepted.
async fn pair() -> (Stream, tokio::net::TcpStream) {
    let l = Stack::Kernel
        .bind_tcp(SocketAddr::new(LOOPBACK, 0))
        .unwrap();
    let client = tokio::net::TcpStream::connect(l.local_addr().unwrap())
        .await
        .unwrap();
    let (s, peer) = l.accept().await.unwrap();
    assert_eq!(peer, client.local_addr().unwrap());
    assert_eq!(s.peer_addr().unwrap(), peer);
    assert_eq!(s.local_addr().unwrap(), client.peer_addr().unwrap());
    (s, client)
}

#[tokio::test]
async fn shutdown_write_is_a_half_close() {
    let (mut s, mut client) = pair().await;
    s.write_all(b"bye").await.unwrap();
    s.shutdown_write();
    let mut got = Vec::new();
    client.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"bye");
    // Reading goes on after our FIN.
    client.write_all(b"still here").await.unwrap();
    let mut buf = [0u8; 10];
    s.readable().await.unwrap();
    s.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"still here");
}

#[tokio::test]
async fn reset_sends_a_reset_not_a_fin() {
    let (s, mut client) = pair().await;
    s.reset();
    let mut buf = [0u8; 1];
    let r = tokio::time::timeout(Duration::from_secs(5), client.read(&mut buf))
        .await
        .unwrap();
    assert_eq!(
        r.map_err(|e| e.kind()),
        Err(std::io::ErrorKind::ConnectionReset)
    );
}

/// `TCP_NODELAY` on, and keepalive with the agent's idle time, interval and probe count.
fn assert_nodelay_and_keepalive(k: &tokio::net::TcpStream) {
    assert!(k.nodelay().unwrap());
    let sock = SockRef::from(k);
    assert!(sock.keepalive().unwrap());
    assert_eq!(sock.tcp_keepalive_time().unwrap(), KEEPALIVE_IDLE);
    assert_eq!(sock.tcp_keepalive_interval().unwrap(), KEEPALIVE_INTERVAL);
    assert_eq!(sock.tcp_keepalive_retries().unwrap(), KEEPALIVE_PROBES);
}

#[tokio::test]
async fn keepalive_and_nodelay_are_set_on_kernel_streams() {
    let (s, _client) = pair().await;
    s.set_nodelay(true).unwrap();
    s.set_keepalive().unwrap();
    assert_nodelay_and_keepalive(s.as_kernel().unwrap());
}

#[tokio::test]
async fn accepted_streams_inherit_nodelay_and_keepalive_from_their_listener() {
    let l = Listener::from(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap());
    l.set_stream_options().unwrap();
    let _client = tokio::net::TcpStream::connect(l.local_addr().unwrap())
        .await
        .unwrap();
    let (s, _) = l.accept().await.unwrap();
    assert_nodelay_and_keepalive(s.as_kernel().unwrap());
}

#[tokio::test]
async fn split_halves_work_at_once() {
    let (mut s, mut client) = pair().await;
    client.write_all(b"ping").await.unwrap();
    let (mut r, mut w) = s.split();
    let mut buf = [0u8; 4];
    let (read, wrote) = tokio::join!(r.read_exact(&mut buf), w.write_all(b"pong"));
    read.unwrap();
    wrote.unwrap();
    assert_eq!(&buf, b"ping");
    let mut back = [0u8; 4];
    client.read_exact(&mut back).await.unwrap();
    assert_eq!(&back, b"pong");
}

#[tokio::test]
async fn datagrams_go_both_ways() {
    let d = Stack::Kernel
        .bind_udp(SocketAddr::new(LOOPBACK, 0))
        .unwrap();
    let peer = tokio::net::UdpSocket::bind((LOOPBACK, 0)).await.unwrap();
    peer.send_to(b"hello", d.local_addr().unwrap())
        .await
        .unwrap();
    let mut buf = [0u8; 3];
    let (n, from) = d.recv_from(&mut buf).await.unwrap();
    assert_eq!((n, &buf[..n]), (3, &b"hel"[..]), "a longer datagram is cut");
    assert_eq!(from, peer.local_addr().unwrap());
    d.send_to(b"back", from).await.unwrap();
    let mut b = [0u8; 8];
    let (n, _) = peer.recv_from(&mut b).await.unwrap();
    assert_eq!(&b[..n], b"back");
}
