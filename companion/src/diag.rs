//! The local diagnostics page: what `gatelet-companion status` shows, as a small HTML page
//! (`/`) and as JSON (`/status.json`), for someone on the LAN with a browser.
//!
//! Read-only and secret-free (tokens and keys never reach the snapshot). It listens where
//! `GATELET_DIAG_LISTEN` says (default [`DEFAULT_LISTEN`], loopback only): a LAN address is
//! an explicit choice of whoever installs the gateway.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::state::{now_ms, Shared};
use crate::status::{render, report};
use crate::store::Store;

/// Where the page listens unless `GATELET_DIAG_LISTEN` says otherwise.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9877";
/// How often the page reloads itself.
const REFRESH_S: u32 = 5;
/// How long the acceptor waits before looking at the shutdown flag again.
const ACCEPT_POLL: Duration = Duration::from_millis(250);

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            c => out.push(c),
        }
    }
    out
}

/// The HTML page for a rendered status text.
pub fn page(status_text: &str) -> String {
    format!(
        "<!doctype html><html><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"refresh\" content=\"{REFRESH_S}\">\
         <meta name=\"viewport\" content=\"width=device-width\">\
         <title>gatelet</title><style>body{{font-family:sans-serif;margin:1.5em}}\
         pre{{background:#f4f4f4;padding:1em;overflow-x:auto}}</style></head><body>\
         <h1>gatelet</h1><pre>{}</pre><p><a href=\"/status.json\">status.json</a></p>\
         </body></html>",
        escape(status_text)
    )
}

/// Serves the page on `server` until `shutdown` is set. One request at a time: each answer
/// is built from memory in microseconds.
pub fn serve(
    server: tiny_http::Server,
    shared: Shared,
    store: Option<Arc<Mutex<Store>>>,
    shutdown: Arc<AtomicBool>,
) {
    tracing::info!(addr = %server.server_addr(), "diagnostics page serving");
    while !shutdown.load(Ordering::Relaxed) {
        let req = match server.recv_timeout(ACCEPT_POLL) {
            Ok(Some(r)) => r,
            Ok(None) => continue,
            Err(e) => {
                tracing::warn!(error = %e, "diagnostics page accept failed");
                std::thread::sleep(ACCEPT_POLL);
                continue;
            }
        };
        let r = report(&shared, store.as_deref());
        let (body, kind, code) = match (req.method(), req.url()) {
            (tiny_http::Method::Get, "/") => {
                (page(&render(&r, now_ms())), "text/html; charset=utf-8", 200)
            }
            (tiny_http::Method::Get, "/status.json") => (
                serde_json::to_string(&r).unwrap_or_else(|_| "{}".into()),
                "application/json",
                200,
            ),
            _ => ("not found\n".into(), "text/plain", 404),
        };
        let mut resp = tiny_http::Response::from_string(body).with_status_code(code);
        for (k, v) in [
            ("Content-Type", kind),
            ("Cache-Control", "no-store"),
            ("X-Content-Type-Options", "nosniff"),
        ] {
            if let Ok(h) = tiny_http::Header::from_bytes(k, v) {
                resp.add_header(h);
            }
        }
        let _ = req.respond(resp);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_escapes_what_it_shows() {
        let p = page("route <script>alert(1)</script> & \"x\"");
        assert!(!p.contains("<script>"));
        assert!(p.contains("&lt;script&gt;alert(1)&lt;/script&gt; &amp; &quot;x&quot;"));
    }

    #[test]
    fn serves_html_and_json_and_404() {
        let server = tiny_http::Server::http("127.0.0.1:0").unwrap();
        let addr = server.server_addr().to_ip().unwrap();
        let shared = Shared::default();
        shared.lock().sync.config_hash = Some("sha256:feed".into());
        let stop = Arc::new(AtomicBool::new(false));
        let t = {
            let (shared, stop) = (shared.clone(), stop.clone());
            std::thread::spawn(move || serve(server, shared, None, stop))
        };
        let get = |path: &str| {
            use std::io::{Read, Write};
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            write!(
                s,
                "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            )
            .unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).unwrap();
            out
        };
        let html = get("/");
        let json = get("/status.json");
        let missing = get("/nope");
        stop.store(true, Ordering::Relaxed);
        t.join().unwrap();
        assert!(html.starts_with("HTTP/1.1 200"), "{html}");
        assert!(html.contains("config:    sha256:feed"), "{html}");
        assert!(json.contains("\"config_hash\":\"sha256:feed\""), "{json}");
        assert!(missing.starts_with("HTTP/1.1 404"), "{missing}");
    }
}
