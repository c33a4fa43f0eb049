//! The HTTP reverse proxy end to end on loopback: a raw-socket client, `gatelet_agent::http`
//! serving a route table, and small backends written here (plain, TLS, upgrade-capable,
//! silent). No root, no network beyond 127.0.0.1.
// Not every shared helper is used by every test binary.
#![allow(dead_code)]

include!("common/http.rs");

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
async fn each_route_counts_its_own_requests_bytes_and_failures() {
    let a = start_backend("a").await;
    let down = closed_port().await;
    let p = start_proxy(
        vec![
            route(1, "a.example", a.addr),
            route(2, "down.example", down),
        ],
        ProxyConfig::default(),
    )
    .await;
    let mut c = Client::connect(p.addr).await;
    for _ in 0..2 {
        assert_eq!(c.get("a.example", "/", "").await.status, 200);
    }
    assert_eq!(c.get("down.example", "/", "").await.status, 502);
    assert_eq!(c.get("nowhere.example", "/", "").await.status, 502);
    let ra = p.stats.route_if_any(1).unwrap();
    let rd = p.stats.route_if_any(2).unwrap();
    assert_eq!(HttpStats::get(&ra.requests), 2);
    assert_eq!(HttpStats::get(&ra.failures), 0);
    assert_eq!(HttpStats::get(&ra.active), 0);
    assert_eq!(HttpStats::get(&ra.bytes), HttpStats::get(&p.stats.bytes));
    assert!(HttpStats::get(&ra.bytes) > 0);
    assert_eq!(HttpStats::get(&rd.requests), 1);
    assert_eq!(HttpStats::get(&rd.failures), 1);
    assert_eq!(HttpStats::get(&rd.bytes), 0);
    // A request matching no route creates no counters.
    assert!(p.stats.route_if_any(3).is_none());
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
    // Far more than the limit: the proxy answers without reading the rest.
    let big = "x".repeat(200 * 1024);
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
        None,
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
        None,
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

#[tokio::test]
async fn backend_that_never_accepts_is_504_after_the_connect_timeout() {
    // A listener with a full accept queue: the kernel drops further SYNs, so connect hangs.
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let full = sock.listen(0).unwrap();
    let addr = full.local_addr().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..4 {
        let s = tokio::net::TcpSocket::new_v4().unwrap();
        if let Ok(Ok(c)) = tokio::time::timeout(Duration::from_millis(200), s.connect(addr)).await {
            fillers.push(c);
        }
    }
    let p = start_proxy(
        vec![route(1, "full.example", addr)],
        ProxyConfig {
            connect_timeout: Duration::from_millis(300),
            ..ProxyConfig::default()
        },
    )
    .await;
    let mut c = Client::connect(p.addr).await;
    let started = std::time::Instant::now();
    let r = c.get("full.example", "/", "").await;
    assert_eq!(r.status, 504);
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert!(started.elapsed() < Duration::from_secs(5));
    drop(full);
}

#[tokio::test]
async fn connection_close_requests_share_one_backend_connection() {
    // Each client asks for `Connection: close` and keeps its socket open after the answer (the
    // proxy lingers until the client closes). The backend connection must go back to the
    // pool at the answer, not after the linger: else every new client needs a new one
    // (issue 15: a backend connect per request in the close benchmark).
    let b = start_backend("b").await;
    let p = start_proxy(vec![route(1, "a.example", b.addr)], ProxyConfig::default()).await;
    let mut lingering = Vec::new();
    for _ in 0..5 {
        let mut c = Client::connect(p.addr).await;
        let r = c.get("a.example", "/", "Connection: close\r\n").await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("connection"), Some("close"));
        lingering.push(c);
    }
    assert_eq!(b.accepted(), 1, "one backend connection for five clients");
    // They asked to close and sent nothing more: the proxy closes without waiting for them.
    let until = std::time::Instant::now() + Duration::from_secs(5);
    while HttpStats::get(&p.stats.active) > 0 && std::time::Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(HttpStats::get(&p.stats.active), 0, "no connection lingers");
    for c in &mut lingering {
        assert!(c.closed().await);
    }
}

#[tokio::test]
async fn open_upgrades_leave_the_request_budget_alone_and_have_a_cap_of_their_own() {
    // One request in flight per route, two upgrades: two open upgraded connections do not
    // stop a plain request (issue 15: WebSockets had held request slots for up to 600 s),
    // and a third upgrade is answered 503.
    let a = start_backend("a").await;
    let config = ProxyConfig {
        max_requests_per_route: 1,
        max_upgrades_per_route: 2,
        ..ProxyConfig::default()
    };
    let p = start_proxy(vec![route(1, "a.example", a.addr)], config).await;
    let upgrade =
        b"GET /ws HTTP/1.1\r\nHost: a.example\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n";
    let mut open = Vec::new();
    for _ in 0..2 {
        let mut c = Client::connect(p.addr).await;
        c.send(upgrade).await;
        let head = tokio::time::timeout(STEP, read_head(&mut c.r))
            .await
            .unwrap()
            .unwrap();
        assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
        open.push(c);
    }
    let mut c = Client::connect(p.addr).await;
    assert_eq!(c.get("a.example", "/", "").await.status, 200);
    let mut third = Client::connect(p.addr).await;
    third.send(upgrade).await;
    assert_eq!(third.response().await.status, 503);
    // The upgraded connections still relay.
    open[0].send(b"ping").await;
    let mut got = [0u8; 4];
    tokio::time::timeout(STEP, open[0].r.read_exact(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&got, b"ping");
}
