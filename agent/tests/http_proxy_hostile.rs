//! The HTTP proxy against hostile or broken peers (issue 8): a backend that sends bytes after the
//! end of a response, ambiguous request heads (RFC 9112), broken chunked framing, and a flood of
//! slow clients on one route. Loopback only.
#![allow(dead_code)]

include!("common/http.rs");

// ---------------------------------------------------------------------------------------------
// A backend that sends surplus bytes after each response

/// When the surplus bytes go out, relative to the response they follow.
#[derive(Clone, Copy, Debug)]
enum Surplus {
    /// In the same write as the response.
    SameWrite,
    /// In a second write right after the response.
    NextWrite,
    /// 100 ms after the response.
    After100ms,
}

/// A complete fake response: whoever gets it was handed bytes meant for nobody.
const EVIL: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nEVIL";

/// Answers every request with `200` and the request path as body, followed by [`EVIL`] sent
/// as `surplus` says (only on the first request of each backend connection). Counts accepts.
async fn start_surplus_backend(surplus: Surplus) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let acc = accepted.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            acc.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut r = BufReader::new(stream);
                let mut first = true;
                while let Some(head) = read_head(&mut r).await {
                    let path = head.split(' ').nth(1).unwrap_or("/").to_string();
                    let resp = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{path}",
                        path.len()
                    );
                    let mut out = resp.into_bytes();
                    let w = r.get_mut();
                    match (first, surplus) {
                        (true, Surplus::SameWrite) => {
                            out.extend_from_slice(EVIL);
                            let _ = w.write_all(&out).await;
                        }
                        (true, Surplus::NextWrite) => {
                            let _ = w.write_all(&out).await;
                            let _ = w.write_all(EVIL).await;
                        }
                        (true, Surplus::After100ms) => {
                            let _ = w.write_all(&out).await;
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            let _ = w.write_all(EVIL).await;
                        }
                        (false, _) => {
                            let _ = w.write_all(&out).await;
                        }
                    }
                    first = false;
                }
            });
        }
    });
    (addr, accepted)
}

/// Two requests on one client connection; `pipelined` sends both at once, else the second
/// goes `gap` after the first response. Returns both bodies.
async fn two_requests(proxy: SocketAddr, pipelined: bool, gap: Duration) -> (String, String) {
    let mut c = Client::connect(proxy).await;
    let one = "GET /first HTTP/1.1\r\nHost: a.example\r\n\r\n";
    let two = "GET /second HTTP/1.1\r\nHost: a.example\r\n\r\n";
    if pipelined {
        c.send(format!("{one}{two}").as_bytes()).await;
        let a = c.response().await.text();
        let b = c.response().await.text();
        return (a, b);
    }
    c.send(one.as_bytes()).await;
    let a = c.response().await.text();
    tokio::time::sleep(gap).await;
    c.send(two.as_bytes()).await;
    let b = c.response().await.text();
    (a, b)
}

async fn surplus_is_never_handed_on(surplus: Surplus, pipelined: bool, gap: Duration) {
    let (addr, accepted) = start_surplus_backend(surplus).await;
    let p = start_proxy(vec![route(1, "a.example", addr)], ProxyConfig::default()).await;
    for round in 0..6 {
        // A connection that got the second request went to the pool with its own surplus
        // on the way: let it arrive before the next round (bytes a backend sends after it
        // received the next request cannot be told from its answer, see the module docs).
        tokio::time::sleep(gap).await;
        let (a, b) = two_requests(p.addr, pipelined, gap).await;
        assert_eq!(a, "/first", "{surplus:?} round {round}");
        assert_eq!(
            b, "/second",
            "{surplus:?} round {round}: the second request got another response"
        );
    }
    // Every connection with surplus was closed, never reused: two per round.
    assert_eq!(accepted.load(Ordering::SeqCst), 12, "{surplus:?}");
}

#[tokio::test]
async fn surplus_in_the_same_write_closes_the_backend_connection_pipelined() {
    surplus_is_never_handed_on(Surplus::SameWrite, true, Duration::ZERO).await;
}

#[tokio::test]
async fn surplus_in_a_second_write_closes_the_backend_connection_pipelined() {
    surplus_is_never_handed_on(Surplus::NextWrite, true, Duration::ZERO).await;
}

#[tokio::test]
async fn surplus_sent_at_once_closes_the_backend_connection() {
    surplus_is_never_handed_on(Surplus::NextWrite, false, Duration::from_millis(5)).await;
}

#[tokio::test]
async fn surplus_after_100_ms_closes_the_backend_connection() {
    // The next request comes 150 ms after the response: the surplus (at 100 ms) is waiting
    // on the backend connection, which is still attached to the client connection (250 ms).
    surplus_is_never_handed_on(Surplus::After100ms, false, Duration::from_millis(150)).await;
}

/// Surplus on a connection that went to the pool (client connection closed) is found too.
#[tokio::test]
async fn surplus_on_a_pooled_connection_closes_it() {
    let (addr, accepted) = start_surplus_backend(Surplus::After100ms).await;
    let p = start_proxy(vec![route(1, "a.example", addr)], ProxyConfig::default()).await;
    let mut c = Client::connect(p.addr).await;
    assert_eq!(c.get("a.example", "/first", "").await.text(), "/first");
    drop(c);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut c = Client::connect(p.addr).await;
    assert_eq!(c.get("a.example", "/second", "").await.text(), "/second");
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}

/// The same over HTTPS to the backend: surplus 100 ms after the response arrives as a TLS
/// record while the backend connection waits attached (then pooled); it is never decrypted as
/// the next response.
#[tokio::test]
async fn tls_surplus_after_100_ms_closes_the_backend_connection() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let acc = accepted.clone();
    let acceptor = tls_acceptor("a.example");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            acc.fetch_add(1, Ordering::SeqCst);
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                let mut r = BufReader::new(tls);
                let mut first = true;
                while let Some(head) = read_head(&mut r).await {
                    let path = head.split(' ').nth(1).unwrap_or("/").to_string();
                    let resp = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{path}",
                        path.len()
                    );
                    let w = r.get_mut();
                    let _ = w.write_all(resp.as_bytes()).await;
                    let _ = w.flush().await;
                    if first {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        let _ = w.write_all(EVIL).await;
                        let _ = w.flush().await;
                    }
                    first = false;
                }
            });
        }
    });
    let mut r = route(1, "a.example", addr);
    r.backend_https = true;
    let p = start_proxy(vec![r], ProxyConfig::default()).await;
    for round in 0..3 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        let (a, b) = two_requests(p.addr, false, Duration::from_millis(150)).await;
        assert_eq!(a, "/first", "round {round}");
        assert_eq!(
            b, "/second",
            "round {round}: the second request got another response"
        );
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 6);
}

// ---------------------------------------------------------------------------------------------
// RFC 9112 answers to ambiguous heads

#[tokio::test]
async fn two_host_headers_are_a_400_and_reach_no_backend() {
    let a = start_backend("a").await;
    let b = start_backend("b").await;
    let p = start_proxy(
        vec![route(1, "a.example", a.addr), route(2, "b.example", b.addr)],
        ProxyConfig::default(),
    )
    .await;
    let mut c = Client::connect(p.addr).await;
    c.send(b"GET / HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n\r\n")
        .await;
    let r = c.response().await;
    assert_eq!(r.status, 400, "{}", r.head);
    assert!(c.closed().await);
    assert_eq!(a.accepted() + b.accepted(), 0);
}

#[tokio::test]
async fn absolute_form_authority_wins_over_host_and_is_forwarded_in_origin_form() {
    let a = start_backend("a").await;
    let b = start_backend("b").await;
    let p = start_proxy(
        vec![route(1, "a.example", a.addr), route(2, "b.example", b.addr)],
        ProxyConfig::default(),
    )
    .await;
    let mut c = Client::connect(p.addr).await;
    let r = c
        .get("a.example", "http://B.example:8080/path/x?q=1", "")
        .await;
    assert_eq!(r.status, 200, "{}", r.head);
    assert_eq!(r.header("x-backend"), Some("b"));
    assert_eq!(a.accepted(), 0);
    let head = &b.heads()[0];
    assert!(head.starts_with("GET /path/x?q=1 HTTP/1.1\r\n"), "{head}");
    assert_eq!(header(head, "host"), Some("B.example:8080"), "{head}");
    assert_eq!(head.matches("\r\nHost:").count(), 1, "{head}");
    // No path: "/".
    let r = c.get("a.example", "http://b.example", "").await;
    assert_eq!(r.status, 200);
    assert!(
        b.heads()[1].starts_with("GET / HTTP/1.1\r\n"),
        "{}",
        b.heads()[1]
    );
    // A scheme that is not HTTP, or user info in the authority: 400.
    let mut c = Client::connect(p.addr).await;
    let r = c.get("a.example", "ftp://b.example/", "").await;
    assert_eq!(r.status, 400);
    let mut c = Client::connect(p.addr).await;
    let r = c.get("a.example", "http://user@b.example/", "").await;
    assert_eq!(r.status, 400);
}

#[tokio::test]
async fn equal_content_lengths_are_forwarded_as_one() {
    let a = start_backend("a").await;
    let p = start_proxy(vec![route(1, "a.example", a.addr)], ProxyConfig::default()).await;
    let mut c = Client::connect(p.addr).await;
    c.send(b"POST /x HTTP/1.1\r\nHost: a.example\r\nContent-Length: 4, 4\r\n\r\nabcd")
        .await;
    let r = c.response().await;
    assert_eq!(r.status, 200, "{}", r.head);
    assert!(r.text().contains("len=4\n"));
    c.send(
        b"POST /y HTTP/1.1\r\nHost: a.example\r\nContent-Length: 4\r\ncontent-length: 4\r\n\r\nabcd",
    )
    .await;
    let r = c.response().await;
    assert_eq!(r.status, 200, "{}", r.head);
    for head in a.heads() {
        let lower = head.to_ascii_lowercase();
        assert_eq!(lower.matches("content-length").count(), 1, "{head}");
        assert!(head.contains("Content-Length: 4\r\n"), "{head}");
    }
    // Differing lengths: 400 and closed.
    c.send(b"POST /z HTTP/1.1\r\nHost: a.example\r\nContent-Length: 4, 5\r\n\r\nabcd")
        .await;
    assert_eq!(c.response().await.status, 400);
    assert!(c.closed().await);
    assert_eq!(a.heads().len(), 2);
}

#[tokio::test]
async fn content_length_with_transfer_encoding_is_a_400_and_closes() {
    let a = start_backend("a").await;
    let p = start_proxy(vec![route(1, "a.example", a.addr)], ProxyConfig::default()).await;
    let mut c = Client::connect(p.addr).await;
    c.send(b"POST /x HTTP/1.1\r\nHost: a.example\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a.example\r\n\r\n")
        .await;
    assert_eq!(c.response().await.status, 400);
    assert!(c.closed().await);
    // HTTP/1.0 with Transfer-Encoding: framing faulty (RFC 9112 6.1).
    let mut c = Client::connect(p.addr).await;
    c.send(b"POST /x HTTP/1.0\r\nHost: a.example\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
        .await;
    assert_eq!(c.response().await.status, 400);
    assert!(c.closed().await);
    assert_eq!(a.accepted(), 0);
}

/// A response with both framings: chunked wins, Content-Length is dropped, and the backend
/// connection is not reused.
#[tokio::test]
async fn response_with_content_length_and_chunked_is_relayed_chunked_and_not_reused() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let acc = accepted.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            acc.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut r = BufReader::new(stream);
                while read_head(&mut r).await.is_some() {
                    let _ = r
                        .get_mut()
                        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n")
                        .await;
                }
            });
        }
    });
    let p = start_proxy(vec![route(1, "a.example", addr)], ProxyConfig::default()).await;
    let mut c = Client::connect(p.addr).await;
    for _ in 0..2 {
        let r = c.get("a.example", "/", "").await;
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), "ok");
        assert_eq!(r.header("content-length"), None, "{}", r.head);
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn bad_chunk_framing_is_answered_400_not_a_silent_close() {
    let a = start_backend("a").await;
    let p = start_proxy(vec![route(1, "a.example", a.addr)], ProxyConfig::default()).await;
    for bad in [
        &b"5\r\nhello\r\nzz\r\n"[..],
        b"5\r\nhelloXX",
        b"10000000000000000\r\n",
    ] {
        let mut c = Client::connect(p.addr).await;
        c.send(b"POST /x HTTP/1.1\r\nHost: a.example\r\nTransfer-Encoding: chunked\r\n\r\n")
            .await;
        c.send(bad).await;
        let r = c.response().await;
        assert_eq!(
            r.status,
            400,
            "{:?}: {}",
            String::from_utf8_lossy(bad),
            r.head
        );
        assert_eq!(r.header("connection"), Some("close"));
        assert!(c.closed().await);
    }
}

// ---------------------------------------------------------------------------------------------
// Floods: one route's slow clients must not take the other routes down

/// A small proxy: 64 connections, 16 requests in flight per route.
fn small_caps() -> ProxyConfig {
    ProxyConfig {
        max_connections: 64,
        max_requests_per_route: 16,
        ..ProxyConfig::default()
    }
}

/// Times one request for `host` on a new connection.
async fn timed_get(proxy: SocketAddr, host: &str) -> (u16, Duration) {
    let start = std::time::Instant::now();
    let mut c = Client::connect(proxy).await;
    let r = c.get(host, "/", "").await;
    (r.status, start.elapsed())
}

#[tokio::test]
async fn slow_request_heads_on_one_route_leave_the_others_answering() {
    let a = start_backend("a").await;
    let b = start_backend("b").await;
    let p = start_proxy(
        vec![route(1, "a.example", a.addr), route(2, "b.example", b.addr)],
        small_caps(),
    )
    .await;
    // 100 clients (more than the 64 slots) that never finish their head.
    let mut slow = Vec::new();
    for _ in 0..100 {
        let mut s = TcpStream::connect(p.addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: a.example\r\nX-Slow: ")
            .await
            .unwrap();
        slow.push(s);
    }
    for round in 0..3 {
        let (status, took) = timed_get(p.addr, "b.example").await;
        assert_eq!(status, 200, "round {round}");
        assert!(took < Duration::from_secs(1), "round {round}: {took:?}");
    }
    // The newest slow clients evicted the oldest ones; the cap holds.
    assert!(HttpStats::get(&p.stats.evicted) >= 36);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(HttpStats::get(&p.stats.active) <= 64);
    assert_eq!(HttpStats::get(&p.stats.refused), 0);
}

#[tokio::test]
async fn a_route_at_its_cap_answers_503_and_the_others_still_answer() {
    let a = start_backend("a").await;
    let b = start_backend("b").await;
    let p = start_proxy(
        vec![route(1, "a.example", a.addr), route(2, "b.example", b.addr)],
        small_caps(),
    )
    .await;
    // 100 clients on route a that announce a body and never send it: requests in flight.
    let mut slow = Vec::new();
    for _ in 0..100 {
        let mut c = Client::connect(p.addr).await;
        c.send(b"POST /upload HTTP/1.1\r\nHost: a.example\r\nContent-Length: 1000\r\n\r\n")
            .await;
        slow.push(c);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // 16 are in flight (no answer); every other one got a 503 and was closed (the body is
    // not read), or was evicted while its head was still waiting (closed without answer).
    let (mut in_flight, mut busy, mut evicted) = (0, 0, 0);
    for c in slow.iter_mut() {
        match tokio::time::timeout(Duration::from_millis(100), read_head(&mut c.r)).await {
            Err(_) => in_flight += 1,
            Ok(None) => evicted += 1,
            Ok(Some(head)) => {
                assert!(head.starts_with("HTTP/1.1 503 "), "{head}");
                assert_eq!(header(&head, "connection"), Some("close"));
                busy += 1;
            }
        }
    }
    assert_eq!(in_flight, 16);
    assert_eq!(busy + evicted, 84);
    assert_eq!(HttpStats::get(&p.stats.route_busy), busy);
    // Per route: the refusals are route a's, and its 16 requests are in flight.
    let ra = p.stats.route_if_any(1).unwrap();
    assert_eq!(HttpStats::get(&ra.refused), busy);
    assert_eq!(HttpStats::get(&ra.active), 16);
    for round in 0..3 {
        let (status, took) = timed_get(p.addr, "b.example").await;
        assert_eq!(status, 200, "round {round}");
        assert!(took < Duration::from_secs(1), "round {round}: {took:?}");
    }
    // A request on the full route without a body: 503, and the connection stays usable.
    let mut c = Client::connect(p.addr).await;
    let r = c.get("a.example", "/", "").await;
    assert_eq!(r.status, 503);
    assert_eq!(c.get("b.example", "/", "").await.status, 200);
    // The slow uploads end: route a answers again.
    drop(slow);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(timed_get(p.addr, "a.example").await.0, 200);
}

#[tokio::test]
async fn the_header_timeout_counts_from_the_accept() {
    let a = start_backend("a").await;
    let p = start_proxy(
        vec![route(1, "a.example", a.addr)],
        ProxyConfig {
            head_timeout: Duration::from_millis(600),
            ..ProxyConfig::default()
        },
    )
    .await;
    let start = std::time::Instant::now();
    let (rd, mut wr) = TcpStream::connect(p.addr).await.unwrap().into_split();
    // Silent for most of the timeout, then one byte every 20 ms (a whole head would take
    // 1.2 s).
    let writer = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        for b in b"GET / HTTP/1.1\r\nHost: a.example\r\nX-Slow: yes\r\n" {
            if wr.write_all(&[*b]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        wr
    });
    let head = tokio::time::timeout(STEP, read_head(&mut BufReader::new(rd)))
        .await
        .unwrap()
        .unwrap();
    let took = start.elapsed();
    assert!(head.starts_with("HTTP/1.1 408 "), "{head}");
    assert!(took < Duration::from_millis(900), "408 after {took:?}");
    drop(writer.await);
}
