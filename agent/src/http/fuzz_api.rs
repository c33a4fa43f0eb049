//! The proxy's head parsers and chunked decoder, reachable by the fuzz targets in `fuzz/`.
//!
//! Not an API: hidden from the docs, and it may change with the parsers at any time. Each
//! function calls the code the proxy runs, unchanged, and returns plain public values.

use std::net::IpAddr;

use gatelet_agent_api::control::HttpRoute;

use super::body::{BodyKind, Chunked};
use super::head::{prepare_request, prepare_response, RequestContext, ResponseContext};

/// Most header fields the head parsers accept.
pub const MAX_HEADERS: usize = super::head::MAX_HEADERS;

/// How a message body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body.
    None,
    /// Exactly this many bytes.
    Length(u64),
    /// Chunked.
    Chunked,
    /// Until the sender closes.
    UntilClose,
}

impl From<BodyKind> for Framing {
    fn from(k: BodyKind) -> Self {
        match k {
            BodyKind::None => Framing::None,
            BodyKind::Length(n) => Framing::Length(n),
            BodyKind::Chunked => Framing::Chunked,
            BodyKind::UntilClose => Framing::UntilClose,
        }
    }
}

/// What the proxy made of a request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    /// Length of the head in the input.
    pub head_len: usize,
    /// Method.
    pub method: String,
    /// Path without the query.
    pub path: String,
    /// Normalized host the route was looked up by.
    pub host: Option<String>,
    /// Body framing.
    pub framing: Framing,
    /// The client allows another request on the connection.
    pub keep_alive: bool,
    /// HTTP/1.0.
    pub http10: bool,
    /// Upgrade requested.
    pub upgrade: bool,
    /// Index of the matching route.
    pub route: Option<usize>,
    /// The head sent to the backend.
    pub out: Vec<u8>,
}

/// [`prepare_request`]: Ok(None) when incomplete, Err with the answer's status code.
pub fn request_head(
    buf: &[u8],
    routes: &[HttpRoute],
    client_ip: IpAddr,
) -> Result<Option<RequestHead>, u16> {
    let ctx = RequestContext { routes, client_ip };
    let r = prepare_request(buf, &ctx).map_err(|e| e.status())?;
    Ok(r.map(|r| RequestHead {
        head_len: r.head_len,
        method: r.method().to_owned(),
        path: r.path().to_owned(),
        host: r.host,
        framing: r.body.into(),
        keep_alive: r.keep_alive,
        http10: r.http10,
        upgrade: r.upgrade,
        route: r.route,
        out: r.out,
    }))
}

/// What the proxy made of a response head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseHead {
    /// Length of the head in the input.
    pub head_len: usize,
    /// Status code.
    pub status: u16,
    /// An interim (1xx, not 101) response.
    pub interim: bool,
    /// A 101 to an upgrade request.
    pub upgrade: bool,
    /// Body framing.
    pub framing: Framing,
    /// The backend connection may be reused.
    pub backend_keep_alive: bool,
    /// The head sent to the client.
    pub out: Vec<u8>,
}

/// [`prepare_response`] for a request that was `HEAD` (`is_head`), asked for an upgrade, and
/// whose client connection stays open: Ok(None) when incomplete, Err with the answer's status.
pub fn response_head(
    buf: &[u8],
    is_head: bool,
    upgrade: bool,
    client_keep_alive: bool,
) -> Result<Option<ResponseHead>, u16> {
    let ctx = ResponseContext {
        is_head,
        upgrade,
        client_keep_alive,
    };
    let r = prepare_response(buf, ctx).map_err(|e| e.status())?;
    Ok(r.map(|r| ResponseHead {
        head_len: r.head_len,
        status: r.status,
        interim: r.interim,
        upgrade: r.upgrade,
        framing: r.body.into(),
        backend_keep_alive: r.backend_keep_alive,
        out: r.out,
    }))
}

/// The proxy's chunked-framing tracker.
#[derive(Debug, Default)]
pub struct ChunkedDecoder(Chunked);

impl ChunkedDecoder {
    /// How many bytes of `input` belong to the body; Err with the framing error.
    pub fn feed(&mut self, input: &[u8]) -> Result<usize, String> {
        self.0.feed(input).map_err(|e| e.to_string())
    }

    /// The whole chunked body (last chunk and trailers) has been seen.
    pub fn is_done(&self) -> bool {
        self.0.is_done()
    }
}
