//! Request and response heads: parsed with `httparse`, inspected (framing, keep-alive,
//! upgrade, routing headers) and rewritten for the other side in one pass.
//!
//! Rewriting follows RFC 9110 §7.6.1: hop-by-hop fields (`Connection` and the fields it names,
//! `Keep-Alive`, `TE`, `Trailer`, `Upgrade`, `Proxy-*`) are not forwarded, except `Upgrade` on
//! an upgrade. The body framing fields are kept because bodies are relayed verbatim.
//!
//! Ambiguous heads get the RFC 9112 answers: two `Host` fields, `Content-Length` with
//! `Transfer-Encoding`, differing lengths, `Transfer-Encoding` in HTTP/1.0 are a 400 (and the
//! connection closes); equal lengths (`4, 4`) go on as one normalized field; an absolute-form
//! target's authority replaces `Host` and the request goes on in origin-form.

use std::borrow::Cow;
use std::io::Write;
use std::net::IpAddr;

use gatelet_agent_api::control::HttpRoute;

use super::body::BodyKind;
use super::error_page::{wants_html, ProxyError};
use super::route::{effective_target, find, normalize_host, Choice};

/// Most header fields accepted in one head (more is answered like an oversized head).
pub(crate) const MAX_HEADERS: usize = 128;

/// A request head, inspected and rewritten for the backend.
#[derive(Debug)]
pub(crate) struct Request {
    /// Length of the head in the client's buffer (body bytes follow).
    pub(crate) head_len: usize,
    /// Length of the method at the start of `out` (see [`Request::method`]).
    method_len: usize,
    /// Length of the path without its query, after the method and a space in `out` (see
    /// [`Request::path`]).
    path_len: usize,
    /// The normalized host the route was looked up by (`X-Gateway-Target-Domain` or `Host`).
    pub(crate) host: Option<String>,
    /// `HEAD` request: the response has no body whatever its headers say.
    pub(crate) is_head: bool,
    /// How the request body is delimited.
    pub(crate) body: BodyKind,
    /// The client allows another request on this connection.
    pub(crate) keep_alive: bool,
    /// An HTTP/1.0 request (forwarded as 1.0 with `Connection: close`).
    pub(crate) http10: bool,
    /// The client asks for a protocol upgrade (WebSocket and others).
    pub(crate) upgrade: bool,
    /// The client accepts `text/html` (error pages in HTML rather than JSON).
    pub(crate) wants_html: bool,
    /// Index of the matching route in the snapshot, if any.
    pub(crate) route: Option<usize>,
    /// Where the request goes (when a route matched).
    pub(crate) choice: Option<Choice>,
    /// The head to send to the backend.
    pub(crate) out: Vec<u8>,
}

impl Request {
    /// The request method (for the access log).
    pub(crate) fn method(&self) -> &str {
        std::str::from_utf8(&self.out[..self.method_len]).unwrap_or("")
    }

    /// The request path without its query (for the access log: queries may carry tokens).
    pub(crate) fn path(&self) -> &str {
        let start = self.method_len + 1;
        std::str::from_utf8(&self.out[start..start + self.path_len]).unwrap_or("")
    }
}

fn is(name: &str, lower: &str) -> bool {
    name.eq_ignore_ascii_case(lower)
}

/// The comma-separated tokens of a field value, trimmed.
fn tokens(v: &[u8]) -> impl Iterator<Item = &[u8]> {
    v.split(|&b| b == b',')
        .map(|t| t.trim_ascii())
        .filter(|t| !t.is_empty())
}

fn connection_has(headers: &[httparse::Header<'_>], token: &str) -> bool {
    headers
        .iter()
        .filter(|h| is(h.name, "connection"))
        .any(|h| tokens(h.value).any(|t| t.eq_ignore_ascii_case(token.as_bytes())))
}

/// Hop-by-hop fields never forwarded as they are (RFC 9110 §7.6.1, plus `Proxy-*`).
fn is_hop_by_hop(name: &str) -> bool {
    is(name, "connection")
        || is(name, "keep-alive")
        || is(name, "te")
        || is(name, "trailer")
        || is(name, "upgrade")
        || name.len() >= 5 && name[..5].eq_ignore_ascii_case("proxy")
}

/// Most `Connection` tokens gathered by [`ConnectionTokens`].
const KEPT_TOKENS: usize = 8;

/// The tokens of a head's `Connection` fields, gathered once per head: asking for each field
/// whether `Connection` names it scanned every field again (quadratic in the number of fields;
/// 6 % of the proxy's instructions per request, issue 15).
struct ConnectionTokens<'h, 'b> {
    headers: &'h [httparse::Header<'b>],
    tokens: [&'b [u8]; KEPT_TOKENS],
    len: usize,
    /// More tokens than kept: asked through [`connection_has`] instead.
    overflow: bool,
}

impl<'h, 'b> ConnectionTokens<'h, 'b> {
    fn of(headers: &'h [httparse::Header<'b>]) -> Self {
        let mut t = ConnectionTokens {
            headers,
            tokens: [&[]; KEPT_TOKENS],
            len: 0,
            overflow: false,
        };
        for h in headers.iter().filter(|h| is(h.name, "connection")) {
            for token in tokens(h.value) {
                if t.len == KEPT_TOKENS {
                    t.overflow = true;
                    return t;
                }
                t.tokens[t.len] = token;
                t.len += 1;
            }
        }
        t
    }

    /// True when a `Connection` field lists `token` (case-insensitive).
    fn has(&self, token: &str) -> bool {
        if self.overflow {
            return connection_has(self.headers, token);
        }
        self.tokens[..self.len]
            .iter()
            .any(|t| t.eq_ignore_ascii_case(token.as_bytes()))
    }

    /// A field the `Connection` header nominates as hop-by-hop (framing and `Host` are never
    /// dropped that way: that would desynchronize or misroute the message).
    fn nominates(&self, name: &str) -> bool {
        if self.len == 0 && !self.overflow {
            return false;
        }
        if is(name, "content-length") || is(name, "transfer-encoding") || is(name, "host") {
            return false;
        }
        self.has(name)
    }
}

/// `Some(true)` when the last transfer coding is chunked, `Some(false)` for another final
/// coding, None without `Transfer-Encoding`.
fn transfer_chunked(headers: &[httparse::Header<'_>]) -> Option<bool> {
    let mut last: Option<&[u8]> = None;
    for h in headers.iter().filter(|h| is(h.name, "transfer-encoding")) {
        if let Some(t) = tokens(h.value).last() {
            last = Some(t);
        } else if last.is_none() {
            last = Some(b"");
        }
    }
    last.map(|t| t.eq_ignore_ascii_case(b"chunked"))
}

/// The `Content-Length` (all copies and list members must agree). Err on an invalid value.
fn content_length(headers: &[httparse::Header<'_>]) -> Result<Option<u64>, ()> {
    let mut found: Option<u64> = None;
    for h in headers.iter().filter(|h| is(h.name, "content-length")) {
        for t in h.value.split(|&b| b == b',').map(|t| t.trim_ascii()) {
            if t.is_empty() || t.len() > 19 || !t.iter().all(u8::is_ascii_digit) {
                return Err(());
            }
            let v: u64 = std::str::from_utf8(t)
                .map_err(|_| ())?
                .parse()
                .map_err(|_| ())?;
            if found.is_some_and(|f| f != v) {
                return Err(());
            }
            found = Some(v);
        }
    }
    Ok(found)
}

/// Splits an absolute-form request target (`http://authority/path?query`, RFC 9112 §3.2.2)
/// into its authority and the origin-form to forward (`/` when the path is empty). None for
/// origin-form and `*`; Err for any other form: another scheme, user info (deprecated, RFC 9110
/// §4.2.4), an empty host.
fn split_absolute(target: &str) -> Option<Result<(&str, Cow<'_, str>), ()>> {
    if target.starts_with('/') || target == "*" {
        return None;
    }
    let Some((scheme, rest)) = target.split_once("://") else {
        return Some(Err(()));
    };
    if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
        return Some(Err(()));
    }
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    if authority.contains('@') || normalize_host(authority.as_bytes()).is_none() {
        return Some(Err(()));
    }
    let tail = tail.split('#').next().unwrap_or("");
    let origin = if tail.starts_with('/') {
        Cow::Borrowed(tail)
    } else {
        Cow::Owned(format!("/{tail}"))
    };
    Some(Ok((authority, origin)))
}

fn push_header(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// What a request head needs from its surroundings.
pub(crate) struct RequestContext<'a> {
    /// The routes as of this request.
    pub(crate) routes: &'a [HttpRoute],
    /// The client's address (appended to `X-Forwarded-For`).
    pub(crate) client_ip: IpAddr,
}

/// Parses and rewrites the request head at the start of `buf`. Ok(None) when the head is not
/// complete yet.
pub(crate) fn prepare_request(
    buf: &[u8],
    ctx: &RequestContext<'_>,
) -> Result<Option<Request>, ProxyError> {
    let mut storage = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut storage);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(ProxyError::HeadTooLarge),
        Err(_) => return Err(ProxyError::BadRequest),
    };
    let (Some(method), Some(target), Some(minor)) = (req.method, req.path, req.version) else {
        return Err(ProxyError::BadRequest);
    };
    if method == "CONNECT" {
        // A tunnel request is not for a reverse proxy (and its 2xx has no framing to follow).
        return Err(ProxyError::BadRequest);
    }
    let headers: &[httparse::Header<'_>] = req.headers;
    let header = |name: &str| headers.iter().find(|h| is(h.name, name)).map(|h| h.value);
    let count = |name: &str| headers.iter().filter(|h| is(h.name, name)).count();

    // RFC 9112 §6.1: Content-Length with Transfer-Encoding, a final coding other than chunked,
    // and Transfer-Encoding in an HTTP/1.0 message all make the framing unreliable: 400, and
    // the connection closes after the answer. Differing lengths likewise (§6.3); equal ones
    // ("4, 4" or two fields) are forwarded as one normalized field.
    let te = transfer_chunked(headers);
    let length = content_length(headers).map_err(|()| ProxyError::BadRequest)?;
    let body = match (te, length) {
        (Some(_), Some(_)) | (Some(false), _) => return Err(ProxyError::BadRequest),
        (Some(true), None) if minor == 0 => return Err(ProxyError::BadRequest),
        (Some(true), None) => BodyKind::Chunked,
        (None, Some(0)) | (None, None) => BodyKind::None,
        (None, Some(n)) => BodyKind::Length(n),
    };
    // RFC 9112 §3.2: more than one Host is a 400. The same for the hub's routing header: two
    // of them would route on one and leave the other to guess.
    if count("host") > 1 || count("x-gateway-target-domain") > 1 {
        return Err(ProxyError::BadRequest);
    }
    // RFC 9112 §3.2.2: the authority of an absolute-form target replaces Host; the request
    // goes on in origin-form with a Host that matches.
    let (authority, target) = match split_absolute(target) {
        Some(Ok((authority, origin))) => (Some(authority), origin),
        Some(Err(())) => return Err(ProxyError::BadRequest),
        None => (None, Cow::Borrowed(target)),
    };
    let connection = ConnectionTokens::of(headers);
    let keep_alive = minor == 1 && !connection.has("close");
    let upgrade = minor == 1 && header("upgrade").is_some() && connection.has("upgrade");
    let host_field = authority.map(str::as_bytes).or(header("host"));
    let host = match header("x-gateway-target-domain") {
        Some(v) => normalize_host(v),
        None => host_field.and_then(normalize_host),
    };
    let route = host.as_deref().and_then(|h| find(ctx.routes, h));
    let choice = route.map(|i| effective_target(&ctx.routes[i], header("x-gateway-target")));
    // The method and the path are read from `out` (no string of their own per request).
    let path_len = target.split('?').next().unwrap_or(&target).len();

    let mut out = Vec::with_capacity(head_len + 160);
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(if minor == 1 {
        b" HTTP/1.1\r\n"
    } else {
        b" HTTP/1.0\r\n"
    });
    let mut forwarded_for: Vec<&[u8]> = Vec::new();
    let (mut has_proto, mut has_fwd_host) = (false, false);
    let mut length = length;
    let authority_used = authority.is_some();
    let mut authority = authority;
    for h in headers {
        let name = h.name;
        if name.len() >= 10 && name[..10].eq_ignore_ascii_case("x-gateway-") {
            continue;
        }
        if is_hop_by_hop(name) || connection.nominates(name) {
            continue;
        }
        if is(name, "x-forwarded-for") {
            forwarded_for.push(h.value);
            continue;
        }
        if is(name, "content-length") {
            // Only one, normalized (there is at least one: `length` is Some).
            if let Some(n) = length.take() {
                let _ = write!(out, "Content-Length: {n}\r\n");
            }
            continue;
        }
        if is(name, "host") {
            if let Some(a) = authority.take() {
                push_header(&mut out, "Host", a.as_bytes());
                continue;
            }
            if authority_used {
                continue;
            }
        }
        has_proto |= is(name, "x-forwarded-proto");
        has_fwd_host |= is(name, "x-forwarded-host");
        push_header(&mut out, name, h.value);
    }
    let domain = route.map(|i| ctx.routes[i].domain.as_str());
    if let Some(a) = authority {
        // Absolute-form without a Host field.
        push_header(&mut out, "Host", a.as_bytes());
    } else if host_field.is_none() {
        if let Some(d) = domain {
            push_header(&mut out, "Host", d.as_bytes());
        }
    }
    out.extend_from_slice(b"X-Forwarded-For: ");
    for v in &forwarded_for {
        out.extend_from_slice(v.trim_ascii());
        out.extend_from_slice(b", ");
    }
    // Formatted in place (writing to a Vec cannot fail): no string per request.
    let _ = write!(out, "{}", ctx.client_ip);
    out.extend_from_slice(b"\r\n");
    if !has_proto {
        push_header(&mut out, "X-Forwarded-Proto", b"http");
    }
    if !has_fwd_host {
        match (host_field, domain) {
            (Some(h), _) => push_header(&mut out, "X-Forwarded-Host", h),
            (None, Some(d)) => push_header(&mut out, "X-Forwarded-Host", d.as_bytes()),
            (None, None) => {}
        }
    }
    if upgrade {
        if let Some(u) = header("upgrade") {
            push_header(&mut out, "Connection", b"upgrade");
            push_header(&mut out, "Upgrade", u);
        }
    } else if minor == 0 {
        push_header(&mut out, "Connection", b"close");
    }
    out.extend_from_slice(b"\r\n");

    Ok(Some(Request {
        head_len,
        method_len: method.len(),
        path_len,
        host,
        is_head: method == "HEAD",
        body,
        keep_alive,
        http10: minor == 0,
        upgrade,
        wants_html: header("accept").is_some_and(wants_html),
        route,
        choice,
        out,
    }))
}

/// A response head, inspected and rewritten for the client.
#[derive(Debug)]
pub(crate) struct Response {
    /// Length of the head in the backend's buffer.
    pub(crate) head_len: usize,
    /// Status code.
    pub(crate) status: u16,
    /// An interim (1xx other than 101) response: forwarded, then the final one follows.
    pub(crate) interim: bool,
    /// A `101 Switching Protocols` to an upgrade request: raw bytes follow both ways.
    pub(crate) upgrade: bool,
    /// How the response body is delimited.
    pub(crate) body: BodyKind,
    /// The backend allows another request on this connection.
    pub(crate) backend_keep_alive: bool,
    /// The head to send to the client.
    pub(crate) out: Vec<u8>,
}

/// What a response head needs from its request.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ResponseContext {
    /// The request was `HEAD`.
    pub(crate) is_head: bool,
    /// The request asked for an upgrade.
    pub(crate) upgrade: bool,
    /// The connection to the client stays open after this response (else `Connection: close`).
    pub(crate) client_keep_alive: bool,
}

/// Parses and rewrites the response head at the start of `buf`. Ok(None) when not complete;
/// Err when it is not a valid HTTP/1.x response (or too large).
pub(crate) fn prepare_response(
    buf: &[u8],
    ctx: ResponseContext,
) -> Result<Option<Response>, ProxyError> {
    let mut storage = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut storage);
    let head_len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(ProxyError::BadResponse),
    };
    let (Some(status), Some(minor)) = (resp.code, resp.version) else {
        return Err(ProxyError::BadResponse);
    };
    if status < 100 {
        // Three digits, but not a status (RFC 9110 §15): `HTTP/1.1 1 ...` is no head either.
        return Err(ProxyError::BadResponse);
    }
    let reason = resp.reason.unwrap_or("");
    let headers: &[httparse::Header<'_>] = resp.headers;
    let upgrade = status == 101;
    if upgrade && !ctx.upgrade {
        return Err(ProxyError::BadResponse);
    }
    let interim = (100..200).contains(&status) && !upgrade;
    let chunked = transfer_chunked(headers);
    if chunked.is_some() && minor == 0 {
        // RFC 9112 §6.1: Transfer-Encoding in HTTP/1.0 means faulty framing.
        return Err(ProxyError::BadResponse);
    }
    let length = content_length(headers);
    let body = if ctx.is_head || interim || upgrade || status == 204 || status == 304 {
        BodyKind::None
    } else {
        match (chunked, length) {
            (Some(true), _) => BodyKind::Chunked,
            (Some(false), _) => BodyKind::UntilClose,
            (None, Err(())) => return Err(ProxyError::BadResponse),
            (None, Ok(Some(n))) => BodyKind::Length(n),
            (None, Ok(None)) => BodyKind::UntilClose,
        }
    };
    // Both framings (RFC 9112 §6.3: Transfer-Encoding wins, Content-Length is removed): a
    // possible response splitting attempt, so the backend connection is not used again.
    let both_framings = chunked.is_some() && headers.iter().any(|h| is(h.name, "content-length"));
    let connection = ConnectionTokens::of(headers);
    let backend_keep_alive =
        minor == 1 && !connection.has("close") && body != BodyKind::UntilClose && !both_framings;
    let close = !ctx.client_keep_alive || body == BodyKind::UntilClose;
    // Equal lengths ("4, 4", or two fields) go on as one normalized field.
    let mut normalized = match (chunked, length) {
        (None, Ok(Some(n))) => Some(n),
        _ => None,
    };

    let mut out = Vec::with_capacity(head_len + 64);
    let _ = write!(out, "HTTP/1.1 {status} {reason}\r\n");
    for h in headers {
        let name = h.name;
        if is_hop_by_hop(name) || connection.nominates(name) {
            continue;
        }
        if is(name, "content-length") {
            if chunked.is_some() {
                continue;
            }
            if let Ok(Some(_)) = length {
                if let Some(n) = normalized.take() {
                    let _ = write!(out, "Content-Length: {n}\r\n");
                }
                continue;
            }
        }
        push_header(&mut out, name, h.value);
    }
    if upgrade {
        push_header(&mut out, "Connection", b"upgrade");
        if let Some(u) = headers.iter().find(|h| is(h.name, "upgrade")) {
            push_header(&mut out, "Upgrade", u.value);
        }
    } else if close && !interim {
        push_header(&mut out, "Connection", b"close");
    }
    out.extend_from_slice(b"\r\n");
    Ok(Some(Response {
        head_len,
        status,
        interim,
        upgrade,
        body,
        backend_keep_alive,
        out,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routes() -> Vec<HttpRoute> {
        vec![
            HttpRoute {
                id: 1,
                domain: "a.example".into(),
                target_host: "127.0.0.1".into(),
                target_port: 80,
                backend_https: false,
                wol: None,
            },
            HttpRoute {
                id: 2,
                domain: "b.example".into(),
                target_host: "10.0.0.2".into(),
                target_port: 8080,
                backend_https: false,
                wol: None,
            },
        ]
    }

    fn prep(head: &str) -> Result<Option<Request>, ProxyError> {
        let r = routes();
        let ctx = RequestContext {
            routes: &r,
            client_ip: "100.64.0.1".parse().unwrap(),
        };
        prepare_request(head.as_bytes(), &ctx)
    }

    fn out(r: &Request) -> String {
        String::from_utf8(r.out.clone()).unwrap()
    }

    #[test]
    fn routing_header_wins_over_host_and_is_removed_with_its_sibling() {
        let r = prep("GET /x?token=s HTTP/1.1\r\nHost: a.example\r\nx-gateway-target-domain: B.Example:443\r\nX-GATEWAY-TARGET: 10.0.0.2:8080\r\nX-Gateway-Target: 1.2.3.4:1\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(r.route, Some(1));
        assert_eq!(r.path(), "/x");
        assert_eq!(r.method(), "GET");
        let o = out(&r);
        assert!(!o.to_ascii_lowercase().contains("x-gateway"), "{o}");
        assert!(o.starts_with("GET /x?token=s HTTP/1.1\r\n"));
        assert!(o.contains("Host: a.example\r\n"));
    }

    #[test]
    fn forwarding_headers_are_appended_kept_and_set() {
        let r = prep("GET / HTTP/1.1\r\nHost: a.example:8080\r\nX-Forwarded-For: 1.1.1.1\r\nx-forwarded-for: 2.2.2.2\r\nX-Forwarded-Proto: https\r\n\r\n")
            .unwrap()
            .unwrap();
        let o = out(&r);
        assert!(
            o.contains("X-Forwarded-For: 1.1.1.1, 2.2.2.2, 100.64.0.1\r\n"),
            "{o}"
        );
        assert!(o.contains("X-Forwarded-Proto: https\r\n"));
        assert!(!o.contains("X-Forwarded-Proto: http\r\n"));
        assert!(o.contains("X-Forwarded-Host: a.example:8080\r\n"));
        let r = prep("GET / HTTP/1.1\r\nHost: a.example\r\nX-Forwarded-Host: orig\r\n\r\n")
            .unwrap()
            .unwrap();
        let o = out(&r);
        assert!(o.contains("X-Forwarded-Proto: http\r\n"));
        assert_eq!(o.matches("X-Forwarded-Host").count(), 1);
    }

    #[test]
    fn hop_by_hop_fields_are_dropped_but_not_framing() {
        let r = prep("POST / HTTP/1.1\r\nHost: a.example\r\nConnection: keep-alive, X-Secret, Content-Length\r\nKeep-Alive: 5\r\nX-Secret: 1\r\nProxy-Authorization: x\r\nTE: trailers\r\nContent-Length: 3\r\n\r\nabc")
            .unwrap()
            .unwrap();
        let o = out(&r);
        for gone in [
            "Connection",
            "Keep-Alive",
            "X-Secret",
            "Proxy-Authorization",
            "TE:",
        ] {
            assert!(!o.contains(gone), "{gone} in {o}");
        }
        assert!(o.contains("Content-Length: 3\r\n"));
        assert_eq!(r.body, BodyKind::Length(3));
        assert_eq!(&"POST / HTTP/1.1\r\nHost: a.example\r\nConnection: keep-alive, X-Secret, Content-Length\r\nKeep-Alive: 5\r\nX-Secret: 1\r\nProxy-Authorization: x\r\nTE: trailers\r\nContent-Length: 3\r\n\r\n".len(), &r.head_len);
    }

    #[test]
    fn upgrade_keeps_upgrade_fields() {
        let r = prep("GET /ws HTTP/1.1\r\nHost: a.example\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n").unwrap().unwrap();
        assert!(r.upgrade);
        let o = out(&r);
        assert!(
            o.contains("Connection: upgrade\r\nUpgrade: websocket\r\n"),
            "{o}"
        );
    }

    #[test]
    fn ambiguous_or_invalid_framing_is_a_bad_request() {
        for bad in [
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n",
            "GET / HTTP/1.1\r\nHost a\r\n\r\n",
            "CONNECT a.example:443 HTTP/1.1\r\nHost: a.example:443\r\n\r\n",
        ] {
            assert_eq!(prep(bad).unwrap_err(), ProxyError::BadRequest, "{bad}");
        }
        assert!(prep("GET / HTTP/1.1\r\nHost: a").unwrap().is_none());
        let r = prep("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(r.body, BodyKind::Chunked);
        assert_eq!(r.route, None);
    }

    #[test]
    fn rfc9112_answers_to_ambiguous_heads() {
        for bad in [
            "GET / HTTP/1.1\r\nHost: a.example\r\nhost: b.example\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a.example\r\nX-Gateway-Target-Domain: a.example\r\nX-Gateway-Target-Domain: b.example\r\n\r\n",
            "POST / HTTP/1.0\r\nHost: a.example\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a.example\r\nContent-Length: 4, 5\r\n\r\n",
            "GET ftp://a.example/ HTTP/1.1\r\nHost: a.example\r\n\r\n",
            "GET http://u:p@a.example/ HTTP/1.1\r\nHost: a.example\r\n\r\n",
            "GET http:///x HTTP/1.1\r\nHost: a.example\r\n\r\n",
            "GET a.example/x HTTP/1.1\r\nHost: a.example\r\n\r\n",
        ] {
            assert_eq!(prep(bad).unwrap_err(), ProxyError::BadRequest, "{bad}");
        }
        // Absolute-form: the authority routes and becomes the only Host.
        let r = prep("GET HTTP://b.example:8080?x=1 HTTP/1.1\r\nHost: a.example\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(r.route, Some(1));
        assert_eq!(r.path(), "/");
        let o = out(&r);
        assert!(
            o.starts_with("GET /?x=1 HTTP/1.1\r\nHost: b.example:8080\r\n"),
            "{o}"
        );
        assert_eq!(o.matches("\r\nHost:").count(), 1, "{o}");
        assert!(o.contains("X-Forwarded-Host: b.example:8080\r\n"), "{o}");
        // Without a Host field at all.
        let r = prep("GET http://a.example/p#frag HTTP/1.1\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(r.route, Some(0));
        assert!(out(&r).starts_with("GET /p HTTP/1.1\r\n"));
        assert!(out(&r).contains("\r\nHost: a.example\r\n"));
        // Equal lengths: one normalized field where the first one was.
        let r = prep("POST / HTTP/1.1\r\nContent-Length: 007, 7\r\nHost: a.example\r\ncontent-length: 7\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(r.body, BodyKind::Length(7));
        let o = out(&r);
        assert!(
            o.starts_with("POST / HTTP/1.1\r\nContent-Length: 7\r\nHost: a.example\r\n"),
            "{o}"
        );
        assert_eq!(
            o.to_ascii_lowercase().matches("content-length").count(),
            1,
            "{o}"
        );
        let r = prep("POST / HTTP/1.1\r\nHost: a.example\r\nContent-Length: 0\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(r.body, BodyKind::None);
        assert!(out(&r).contains("Content-Length: 0\r\n"));
    }

    #[test]
    fn response_lengths_are_normalized_and_both_framings_end_reuse() {
        let ctx = ResponseContext {
            is_head: false,
            upgrade: false,
            client_keep_alive: true,
        };
        let r = prepare_response(
            b"HTTP/1.1 200 OK\r\nContent-Length: 3, 3\r\nContent-Length: 3\r\n\r\n",
            ctx,
        )
        .unwrap()
        .unwrap();
        assert_eq!(r.body, BodyKind::Length(3));
        assert!(r.backend_keep_alive);
        assert_eq!(
            String::from_utf8(r.out).unwrap(),
            "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n"
        );
        let r = prepare_response(
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
            ctx,
        )
        .unwrap()
        .unwrap();
        assert_eq!(r.body, BodyKind::Chunked);
        assert!(!r.backend_keep_alive);
        assert_eq!(
            prepare_response(
                b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                ctx
            )
            .unwrap_err(),
            ProxyError::BadResponse
        );
    }

    #[test]
    fn response_framing_and_keep_alive() {
        let ctx = ResponseContext {
            is_head: false,
            upgrade: false,
            client_keep_alive: true,
        };
        let r = prepare_response(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nKeep-Alive: timeout=5\r\n\r\nhello",
            ctx,
        )
        .unwrap()
        .unwrap();
        assert_eq!(r.body, BodyKind::Length(5));
        assert!(r.backend_keep_alive);
        assert_eq!(
            String::from_utf8(r.out).unwrap(),
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"
        );
        let r = prepare_response(b"HTTP/1.1 200 OK\r\n\r\n", ctx)
            .unwrap()
            .unwrap();
        assert_eq!(r.body, BodyKind::UntilClose);
        assert!(!r.backend_keep_alive);
        assert!(String::from_utf8(r.out)
            .unwrap()
            .contains("Connection: close\r\n"));
        let head = ResponseContext {
            is_head: true,
            ..ctx
        };
        let r = prepare_response(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", head)
            .unwrap()
            .unwrap();
        assert_eq!(r.body, BodyKind::None);
        let r = prepare_response(
            b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n",
            ctx,
        )
        .unwrap()
        .unwrap();
        assert_eq!(r.body, BodyKind::None);
        let r = prepare_response(b"HTTP/1.1 100 Continue\r\n\r\n", ctx)
            .unwrap()
            .unwrap();
        assert!(r.interim);
        let r = prepare_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 9\r\nConnection: close\r\n\r\n", ctx).unwrap().unwrap();
        assert_eq!(r.body, BodyKind::Chunked);
        assert!(!r.backend_keep_alive);
        assert!(!String::from_utf8(r.out).unwrap().contains("Content-Length"));
        assert_eq!(
            prepare_response(b"HTTP/1.1 101 Switching Protocols\r\n\r\n", ctx).unwrap_err(),
            ProxyError::BadResponse
        );
        assert_eq!(
            prepare_response(b"SSH-2.0-OpenSSH\r\n\r\n", ctx).unwrap_err(),
            ProxyError::BadResponse
        );
    }

    #[test]
    fn status_below_100_is_a_bad_response() {
        // Found by fuzz/http_response_head: `001` was sent on as `HTTP/1.1 1 ...`.
        let ctx = ResponseContext {
            is_head: false,
            upgrade: true,
            client_keep_alive: true,
        };
        for head in [&b"HTTP/1.1 001 X\r\n\r\n"[..], b"HTTP/1.1 099 X\r\n\r\n"] {
            assert_eq!(
                prepare_response(head, ctx).unwrap_err(),
                ProxyError::BadResponse
            );
        }
        let r = prepare_response(b"HTTP/1.1 999 X\r\nContent-Length: 0\r\n\r\n", ctx)
            .unwrap()
            .unwrap();
        assert!(r.out.starts_with(b"HTTP/1.1 999 X\r\n"));
    }
}
