//! Answers the proxy gives itself (no route, backend down, timeouts, bad requests): a short HTML
//! page when the client accepts `text/html`, else JSON `{"error":"...","status":502}`.

use std::fmt::Write as _;

/// An error status the proxy answers with, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ProxyError {
    /// The request head is malformed or its framing is ambiguous (400).
    BadRequest,
    /// The request head did not arrive within the header timeout (408).
    HeadTimeout,
    /// The request head exceeds the header size limit (431).
    HeadTooLarge,
    /// No route for the requested host (502).
    NoRoute,
    /// The backend refused the connection or cannot be reached (502).
    Unreachable,
    /// The TLS handshake with the backend failed (502).
    TlsFailed,
    /// The backend answered something that is not a valid HTTP/1.x response (502).
    BadResponse,
    /// The backend did not accept the connection in time (504).
    ConnectTimeout,
    /// The backend did not send its response head in time (504).
    ResponseTimeout,
    /// The route has its cap of requests in flight (503).
    RouteBusy,
}

impl ProxyError {
    /// The HTTP status code.
    pub(crate) fn status(self) -> u16 {
        match self {
            ProxyError::BadRequest => 400,
            ProxyError::HeadTimeout => 408,
            ProxyError::HeadTooLarge => 431,
            ProxyError::NoRoute
            | ProxyError::Unreachable
            | ProxyError::TlsFailed
            | ProxyError::BadResponse => 502,
            ProxyError::RouteBusy => 503,
            ProxyError::ConnectTimeout | ProxyError::ResponseTimeout => 504,
        }
    }

    /// The reason phrase of [`ProxyError::status`].
    pub(crate) fn reason(self) -> &'static str {
        match self.status() {
            400 => "Bad Request",
            408 => "Request Timeout",
            431 => "Request Header Fields Too Large",
            502 => "Bad Gateway",
            503 => "Service Unavailable",
            _ => "Gateway Timeout",
        }
    }

    /// A short explanation for the client (no internal detail).
    pub(crate) fn message(self) -> &'static str {
        match self {
            ProxyError::BadRequest => "malformed request",
            ProxyError::HeadTimeout => "request header not received in time",
            ProxyError::HeadTooLarge => "request header too large",
            ProxyError::NoRoute => "no route for this host",
            ProxyError::Unreachable => "the backend cannot be reached",
            ProxyError::TlsFailed => "TLS handshake with the backend failed",
            ProxyError::BadResponse => "invalid response from the backend",
            ProxyError::ConnectTimeout => "the backend did not accept the connection in time",
            ProxyError::ResponseTimeout => "the backend did not answer in time",
            ProxyError::RouteBusy => "too many requests in flight for this route; retry shortly",
        }
    }
}

/// The complete response (head and body) for `err`; `html` picks the page over JSON; `close`
/// adds `Connection: close`.
pub(crate) fn render(err: ProxyError, html: bool, close: bool) -> Vec<u8> {
    let status = err.status();
    let (ctype, body) = if html {
        (
            "text/html; charset=utf-8",
            format!(
                "<!DOCTYPE html>\n<html><head><title>{status} {reason}</title></head>\
                 <body><h1>{status} {reason}</h1><p>{msg}.</p><hr><p>gatelet</p></body></html>\n",
                reason = err.reason(),
                msg = err.message()
            ),
        )
    } else {
        (
            "application/json",
            format!("{{\"error\":\"{}\",\"status\":{status}}}", err.message()),
        )
    };
    let mut out = String::with_capacity(body.len() + 160);
    let _ = write!(
        out,
        "HTTP/1.1 {status} {}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nCache-Control: no-store\r\n",
        err.reason(),
        body.len()
    );
    if close {
        out.push_str("Connection: close\r\n");
    }
    out.push_str("\r\n");
    out.push_str(&body);
    out.into_bytes()
}

/// True when an `Accept` header value lists `text/html` (browsers do; API clients do not).
pub(crate) fn wants_html(accept: &[u8]) -> bool {
    accept.split(|&b| b == b',').any(|item| {
        let media = item.split(|&b| b == b';').next().unwrap_or(&[]);
        media.trim_ascii().eq_ignore_ascii_case(b"text/html")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_body_names_error_and_status_and_length_is_exact() {
        let r = String::from_utf8(render(ProxyError::NoRoute, false, true)).unwrap();
        let (head, body) = r.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 502 Bad Gateway\r\n"));
        assert!(head.contains("Connection: close"));
        assert!(head.contains(&format!("Content-Length: {}", body.len())));
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["status"], 502);
        assert_eq!(v["error"], "no route for this host");
    }

    #[test]
    fn html_is_chosen_from_accept() {
        assert!(wants_html(
            b"text/html,application/xhtml+xml;q=0.9,*/*;q=0.8"
        ));
        assert!(wants_html(b"Text/HTML; q=1"));
        assert!(!wants_html(b"application/json"));
        assert!(!wants_html(b"*/*"));
        let r = String::from_utf8(render(ProxyError::ResponseTimeout, true, false)).unwrap();
        assert!(r.starts_with("HTTP/1.1 504 Gateway Timeout\r\n"));
        assert!(r.contains("text/html"));
        assert!(!r.contains("Connection: close"));
    }
}
