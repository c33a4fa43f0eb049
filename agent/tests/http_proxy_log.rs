//! The HTTP proxy's access log, alone in its test binary: it installs a subscriber, and tracing's
//! per-callsite interest cache must not be shared with tests that run without one.
#![allow(dead_code)]

include!("common/http.rs");

/// Collects what the access log writes (thread-local subscriber: the test runtime is
/// current-thread, so the proxy's tasks log on this thread).
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

#[tokio::test]
async fn access_log_has_one_line_per_request_without_query_or_header_values() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let a = start_backend("a").await;
    let p = start_proxy(vec![route(7, "a.example", a.addr)], ProxyConfig::default()).await;
    let mut c = Client::connect(p.addr).await;
    c.get(
        "a.example",
        "/login?token=s3cret",
        "Authorization: Bearer hunter2\r\nCookie: sid=abc\r\n",
    )
    .await;
    c.get("nowhere.example", "/x", "").await;
    let log = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("gatelet_agent::http::access"))
        .collect();
    assert_eq!(lines.len(), 2, "{log}");
    assert!(
        lines[0].contains("method=\"GET\"") || lines[0].contains("method=GET"),
        "{}",
        lines[0]
    );
    assert!(lines[0].contains("/login"), "{}", lines[0]);
    assert!(
        lines[0].contains("status=200") && lines[0].contains("route=7"),
        "{}",
        lines[0]
    );
    assert!(lines[1].contains("status=502"), "{}", lines[1]);
    for secret in ["s3cret", "token", "hunter2", "sid=abc"] {
        assert!(!log.contains(secret), "{secret} leaked into the log: {log}");
    }
}
