//! The local diagnostics page: what `gatelet-companion status` shows, as a small HTML page
//! (`/`) and as JSON (`/status.json`), for someone on the LAN with a browser.
//!
//! Read-only and secret-free (tokens and keys never reach the snapshot). It listens where
//! `GATELET_DIAG_LISTEN` says (default [`DEFAULT_LISTEN`], loopback only): a LAN address is
//! an explicit choice of whoever installs the gateway.

use std::net::TcpListener;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use crate::http::{self, Request, Responder, Response};
use crate::state::{now_ms, Shared};
use crate::status::{render, report};
use crate::store::Store;

/// Where the page listens unless `GATELET_DIAG_LISTEN` says otherwise.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9877";
/// How often the page reloads itself.
const REFRESH_S: u32 = 5;

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

/// The diagnostics page's server limits: the defaults of [`http::Limits`] with one worker, a
/// budget of 16 connections and no PROXY header (nothing relays to this page).
pub fn limits() -> http::Limits {
    http::Limits {
        max_connections: 16,
        workers: 1,
        queue: 4,
        proxy_from_loopback: false,
        ..http::Limits::default()
    }
}

/// Serves the page on `listener` until `shutdown` is set, with [`limits`]: each answer is
/// built from memory in microseconds, so one worker suffices.
pub fn serve(
    listener: TcpListener,
    shared: Shared,
    store: Option<Arc<Mutex<Store>>>,
    shutdown: Arc<AtomicBool>,
) {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "diagnostics page serving");
    }
    let handler: http::Handler = Arc::new(move |req: Request, out: Responder| {
        let r = report(&shared, store.as_deref());
        let (body, kind, code) = match (req.method(), req.head.target.as_str()) {
            ("GET", "/") => (page(&render(&r, now_ms())), "text/html; charset=utf-8", 200),
            ("GET", "/status.json") => (
                serde_json::to_string(&r).unwrap_or_else(|_| "{}".into()),
                "application/json",
                200,
            ),
            _ => ("not found\n".into(), "text/plain", 404),
        };
        let mut resp = Response::new(code, kind, body.into_bytes());
        resp.headers.push(("Cache-Control", "no-store".into()));
        resp.headers
            .push(("X-Content-Type-Options", "nosniff".into()));
        out.send(&resp);
    });
    http::serve(listener, limits(), handler, &shutdown, "diag");
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;

    #[test]
    fn page_escapes_what_it_shows() {
        let p = page("route <script>alert(1)</script> & \"x\"");
        assert!(!p.contains("<script>"));
        assert!(p.contains("&lt;script&gt;alert(1)&lt;/script&gt; &amp; &quot;x&quot;"));
    }

    #[test]
    fn serves_html_and_json_and_404() {
        let server = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = server.local_addr().unwrap();
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
