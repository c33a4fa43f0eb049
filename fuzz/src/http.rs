//! The proxy's HTTP/1.x parsers: request head, response head, chunked framing.

use std::net::IpAddr;

use gatelet_agent::http::fuzz_api::{
    request_head, response_head, ChunkedDecoder, Framing, RequestHead, MAX_HEADERS,
};
use gatelet_agent_api::control::HttpRoute;

use crate::{alloc_peak, assert_alloc_bound};

/// Headers a reparse may hold: the proxy adds up to six fields to a head of [`MAX_HEADERS`].
const REPARSE_HEADERS: usize = MAX_HEADERS + 8;

/// Peak allocation allowed per head byte, and in total beyond that. A head is copied once into
/// the rewritten head (plus a few added fields) and its method, path and host once more.
const HEAD_BYTES_PER_BYTE: usize = 4;
const HEAD_FIXED_BYTES: usize = 2048;

fn routes() -> Vec<HttpRoute> {
    ["a.example", "b.example", "xn--bcher-kva.example"]
        .iter()
        .enumerate()
        .map(|(i, d)| HttpRoute {
            id: i as u64 + 1,
            domain: (*d).to_owned(),
            target_host: format!("192.168.1.{}", i + 10),
            target_port: 80,
            backend_https: false,
            wol: None,
        })
        .collect()
}

fn lower(b: &str) -> String {
    b.to_ascii_lowercase()
}

/// The tokens of a `Connection` field value.
fn tokens(v: &[u8]) -> Vec<String> {
    v.split(|&b| b == b',')
        .map(|t| String::from_utf8_lossy(t.trim_ascii()).to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect()
}

/// Fields that must never reach the other side as the peer sent them.
fn is_hop_by_hop(name: &str) -> bool {
    matches!(
        name,
        "connection" | "keep-alive" | "te" | "trailer" | "upgrade"
    ) || name.starts_with("proxy")
}

/// The request head parser: whatever the client sends, the head the backend gets is one valid
/// HTTP/1.x request head that a second pass reads as the same request (method, target,
/// version, body framing, upgrade, route), without hop-by-hop or `X-Gateway-*` fields, with
/// exactly one `X-Forwarded-For` ending in the client's address.
pub fn check_request_head(data: &[u8]) {
    let routes = routes();
    let client: IpAddr = "100.64.0.7".parse().unwrap();
    let (r, peak) = alloc_peak(|| request_head(data, &routes, client));
    let r = match r {
        Ok(None) => return,
        Err(status) => {
            assert!(matches!(status, 400 | 431), "request refused with {status}");
            return;
        }
        Ok(Some(r)) => r,
    };
    assert_alloc_bound(
        "request head",
        peak,
        r.head_len,
        HEAD_BYTES_PER_BYTE,
        HEAD_FIXED_BYTES,
    );
    assert!(r.head_len <= data.len());
    assert!(
        data[..r.head_len].ends_with(b"\n"),
        "head ends inside a line"
    );

    // The original's fields, as a second, independent parse sees them.
    let mut storage = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut orig = httparse::Request::new(&mut storage);
    assert_eq!(orig.parse(data), Ok(httparse::Status::Complete(r.head_len)));
    let by_header = orig
        .headers
        .iter()
        .any(|h| h.name.eq_ignore_ascii_case("x-gateway-target-domain"));
    let nominated: Vec<String> = orig
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("connection"))
        .flat_map(|h| tokens(h.value))
        .filter(|t| !matches!(t.as_str(), "content-length" | "transfer-encoding" | "host"))
        .collect();
    let target = orig.path.unwrap();

    // The rewritten head: exactly one complete request head, nothing after it.
    let mut storage = [httparse::EMPTY_HEADER; REPARSE_HEADERS];
    let mut out = httparse::Request::new(&mut storage);
    assert_eq!(
        out.parse(&r.out),
        Ok(httparse::Status::Complete(r.out.len())),
        "rewritten head is not one request head: {:?}",
        String::from_utf8_lossy(&r.out)
    );
    assert_eq!(out.method, Some(r.method.as_str()));
    assert_eq!(
        out.path,
        Some(expected_origin_form(target).as_str()),
        "target changed"
    );
    assert_eq!(out.version, Some(if r.http10 { 0 } else { 1 }));
    let mut xff = 0;
    for h in out.headers.iter() {
        let name = lower(h.name);
        assert!(!name.starts_with("x-gateway-"), "{name} forwarded");
        if name == "x-forwarded-for" {
            xff += 1;
            assert!(h.value.ends_with(client.to_string().as_bytes()));
        }
        if is_hop_by_hop(&name) {
            // Only the proxy's own: `Connection: close` on 1.0, the upgrade pair.
            let ours = match name.as_str() {
                "connection" => {
                    (r.upgrade && h.value == b"upgrade") || (r.http10 && h.value == b"close")
                }
                "upgrade" => r.upgrade,
                _ => false,
            };
            assert!(ours, "hop-by-hop {name} forwarded");
        } else if !name.starts_with("x-forwarded-") {
            // (The proxy sets its own `X-Forwarded-*` when the client's were dropped.)
            assert!(!nominated.contains(&name), "{name} named by Connection");
        }
    }
    assert_eq!(xff, 1, "X-Forwarded-For fields");

    // A second pass reads the same request (when the added fields still fit its limit).
    if out.headers.len() > MAX_HEADERS {
        return;
    }
    let again = request_head(&r.out, &routes, client);
    let again: RequestHead = match again {
        Ok(Some(a)) => a,
        other => panic!(
            "rewritten head {:?} reparses as {other:?}",
            String::from_utf8_lossy(&r.out)
        ),
    };
    assert_eq!(again.head_len, r.out.len());
    assert_eq!(again.method, r.method);
    assert_eq!(again.path, r.path);
    assert_eq!(again.http10, r.http10);
    assert_eq!(again.framing, r.framing, "body framing changed");
    assert_eq!(again.upgrade, r.upgrade);
    if !by_header {
        assert_eq!(again.route, r.route, "route changed");
        assert_eq!(again.host, r.host, "host changed");
    }
}

/// The response head parser: the head the client gets is one valid response head that a
/// second pass reads with the same status and framing; hop-by-hop fields are gone; a response
/// on a connection that closes says so.
pub fn check_response_head(data: &[u8]) {
    let Some((&flags, head)) = data.split_first() else {
        return;
    };
    let (is_head, upgrade, keep_alive) = (flags & 1 != 0, flags & 2 != 0, flags & 4 != 0);
    let (r, peak) = alloc_peak(|| response_head(head, is_head, upgrade, keep_alive));
    let r = match r {
        Ok(None) => return,
        Err(status) => {
            assert_eq!(status, 502, "bad response answered with {status}");
            return;
        }
        Ok(Some(r)) => r,
    };
    assert_alloc_bound(
        "response head",
        peak,
        r.head_len,
        HEAD_BYTES_PER_BYTE,
        HEAD_FIXED_BYTES,
    );
    assert!(r.head_len <= head.len());
    if is_head || r.interim || r.upgrade || r.status == 204 || r.status == 304 {
        assert_eq!(r.framing, Framing::None);
    }
    assert!(!r.upgrade || upgrade, "101 without an upgrade request");
    if r.framing == Framing::UntilClose {
        assert!(
            !r.backend_keep_alive,
            "reuse of a connection that must close"
        );
    }

    let mut storage = [httparse::EMPTY_HEADER; REPARSE_HEADERS];
    let mut out = httparse::Response::new(&mut storage);
    assert_eq!(
        out.parse(&r.out),
        Ok(httparse::Status::Complete(r.out.len())),
        "rewritten head is not one response head: {:?}",
        String::from_utf8_lossy(&r.out)
    );
    assert_eq!(out.code, Some(r.status));
    let mut close = false;
    for h in out.headers.iter() {
        let name = lower(h.name);
        if name == "connection" {
            close |= h.value == b"close";
            assert!(h.value == b"close" || (r.upgrade && h.value == b"upgrade"));
        } else if name == "upgrade" {
            assert!(r.upgrade, "Upgrade forwarded without 101");
        } else {
            assert!(!is_hop_by_hop(&name), "hop-by-hop {name} forwarded");
        }
        if r.framing == Framing::Chunked {
            assert_ne!(name, "content-length", "Content-Length next to chunked");
        }
    }
    if !r.interim && !r.upgrade && (!keep_alive || r.framing == Framing::UntilClose) {
        assert!(close, "closing connection without Connection: close");
    }
    if out.headers.len() > MAX_HEADERS {
        return;
    }
    let again = match response_head(&r.out, is_head, upgrade, keep_alive) {
        Ok(Some(a)) => a,
        other => panic!(
            "rewritten head {:?} reparses as {other:?}",
            String::from_utf8_lossy(&r.out)
        ),
    };
    assert_eq!(again.head_len, r.out.len());
    assert_eq!(again.status, r.status);
    assert_eq!(again.interim, r.interim);
    assert_eq!(again.upgrade, r.upgrade);
    assert_eq!(again.framing, r.framing, "body framing changed");
}

/// Feeds `input` to a fresh decoder in pieces of `step` bytes, as the proxy does with what each
/// read brings. Returns the bytes taken, whether the body ended, and the error if any.
fn feed_in_steps(input: &[u8], step: usize) -> (usize, bool, Option<String>) {
    let mut d = ChunkedDecoder::default();
    let mut used = 0;
    for part in input.chunks(step.max(1)) {
        match d.feed(part) {
            Ok(n) => {
                assert!(n <= part.len());
                used += n;
                if d.is_done() {
                    assert_eq!(d.feed(b"0\r\n\r\n"), Ok(0), "bytes taken after the end");
                    return (used, true, None);
                }
                assert_eq!(n, part.len(), "stopped early without being done");
            }
            Err(e) => return (used, false, Some(e)),
        }
    }
    (used, false, None)
}

/// Encodes a chunked body from `data` (chunk sizes, extensions, trailers drawn from its
/// bytes) and returns it, plus where in `data` the rest begins.
fn encode_chunked(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut rest = data;
    let mut take = |n: usize| {
        let n = n.min(rest.len());
        let (a, b) = rest.split_at(n);
        rest = b;
        a
    };
    loop {
        let ctl = take(1).first().copied().unwrap_or(0);
        let len = usize::from(ctl & 0x3f);
        if len == 0 {
            break;
        }
        let chunk = take(len);
        if chunk.is_empty() {
            break;
        }
        // Leading zeros (up to 15 digits in all) and either case of hex digit.
        let zeros = usize::from(ctl >> 6);
        let hex = if ctl & 0x80 != 0 {
            format!("{:X}", chunk.len())
        } else {
            format!("{:x}", chunk.len())
        };
        out.extend(std::iter::repeat_n(b'0', zeros));
        out.extend_from_slice(hex.as_bytes());
        if ctl & 0x40 != 0 {
            out.extend_from_slice(b";name=\"v\\\"x\"; flag");
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(chunk);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n");
    // Trailer fields: visible bytes only, never starting a line with CR.
    let n = usize::from(take(1).first().copied().unwrap_or(0) % 4);
    for i in 0..n {
        let v: Vec<u8> = take(16)
            .iter()
            .map(|b| if b.is_ascii_graphic() { *b } else { b'x' })
            .collect();
        out.extend_from_slice(format!("X-T{i}: ").as_bytes());
        out.extend_from_slice(&v);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// The chunked decoder: raw input gives the same answer however it is split into reads, and
/// never takes a byte past the end of the body; an encoded body is found to end exactly where
/// it ends, whatever follows it and however it is split.
pub fn check_chunked(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let step = usize::from(mode >> 1) + 1;
    if mode & 1 == 0 {
        // Raw bytes: splitting must not change the outcome.
        let ((whole, split, bytewise), peak) = alloc_peak(|| {
            (
                feed_in_steps(rest, rest.len()),
                feed_in_steps(rest, step),
                feed_in_steps(rest, 1),
            )
        });
        // The decoder itself allocates nothing; only its error message does.
        assert_alloc_bound("chunked decoder", peak, 0, 0, 1024);
        for other in [&split, &bytewise] {
            assert_eq!(whole.1, other.1, "done differs by split");
            assert_eq!(
                whole.2.is_some(),
                other.2.is_some(),
                "error differs by split"
            );
            if whole.1 {
                assert_eq!(whole.0, other.0, "end differs by split");
            }
        }
    } else {
        // A body we encode, followed by the rest of the input (the next message).
        let body = encode_chunked(rest);
        let mut input = body.clone();
        input.extend_from_slice(rest);
        for s in [input.len(), step, 1] {
            let (used, done, err) = feed_in_steps(&input, s);
            assert_eq!(err, None, "valid chunked body refused");
            assert!(done, "valid chunked body not ended");
            assert_eq!(used, body.len(), "end of body misplaced (step {s})");
        }
    }
}

/// The target the proxy must forward, worked out here independently of the proxy's code: an
/// origin-form target (or `*`) as it came; an absolute-form one (RFC 9112 §3.2.2; the proxy
/// accepted it, so its scheme and authority were valid) as its path and query, without the
/// fragment, `/` first.
fn expected_origin_form(target: &str) -> String {
    if target.starts_with('/') || target == "*" {
        return target.to_string();
    }
    let rest = target.split_once("://").map_or(target, |(_, rest)| rest);
    let tail = &rest[rest.find(['/', '?', '#']).unwrap_or(rest.len())..];
    let tail = tail.split('#').next().unwrap_or("");
    if tail.starts_with('/') {
        tail.to_string()
    } else {
        format!("/{tail}")
    }
}
