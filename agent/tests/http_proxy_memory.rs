//! Streaming memory of the HTTP proxy, alone in its test binary so that no other test's
//! allocations move the process RSS it measures.
#![allow(dead_code)]

include!("common/http.rs");

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
