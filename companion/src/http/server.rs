//! The I/O thread, the worker pool and the request/response types (see the module docs).

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gatelet_agent_api::eviction;
use gatelet_agent_api::proxy_v2::{self, Decoded};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use super::chunked::{decode_chunked, ChunkError};
use super::head::{parse_head, Framing, Head};

/// How long a connection that got an error answer is read (and discarded) before closing.
pub const LINGER: Duration = Duration::from_secs(1);
/// Bytes read and discarded while lingering, at most.
pub const LINGER_BYTES: usize = 64 * 1024;
/// Longest wait in `poll` (how often the shutdown flag is looked at).
const POLL_MAX: Duration = Duration::from_millis(200);
/// New connections accepted per loop turn at most (the open ones are read in between).
const ACCEPTS_PER_TURN: usize = 16;
/// Raw bytes a chunked body may take beyond the body cap (sizes, extensions, trailers).
const CHUNK_OVERHEAD: usize = 4096;
/// Refusals are logged at most this often, with their count.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// The server's bounds. [`Limits::default`] is what the companion uses.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Request head size cap, in bytes (431 beyond).
    pub max_head: usize,
    /// Request body size cap, in bytes (413 beyond).
    pub max_body: usize,
    /// Time from accept to a complete head (408 after).
    pub head_timeout: Duration,
    /// Time from the head to a complete body (408 after).
    pub body_timeout: Duration,
    /// Time a worker may spend writing an answer.
    pub write_timeout: Duration,
    /// Connections being read at once (the budget).
    pub max_connections: usize,
    /// Worker threads running handlers.
    pub workers: usize,
    /// Complete requests waiting for a worker before the I/O thread answers 503.
    pub queue: usize,
    /// Honour a PROXY v2 header from loopback peers when it carries this key's tag (the
    /// agent's API relay; `gatelet_agent_api::proxy_v2`). A header without it is refused
    /// (400). None: no header is read.
    pub proxy_key: Option<proxy_v2::HeaderKey>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_head: 16 * 1024,
            max_body: 16 * 1024,
            head_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(5),
            max_connections: 64,
            workers: 4,
            queue: 16,
            proxy_key: None,
        }
    }
}

/// A complete request.
#[derive(Debug)]
pub struct Request {
    /// Method, target and header fields.
    pub head: Head,
    /// The body (at most [`Limits::max_body`] bytes).
    pub body: Vec<u8>,
    /// The caller: the socket peer, or the PROXY header's source from a loopback peer.
    pub peer: SocketAddr,
}

impl Request {
    /// The method.
    pub fn method(&self) -> &str {
        &self.head.method
    }

    /// The target without its query.
    pub fn path(&self) -> &str {
        self.head.target.split('?').next().unwrap_or("")
    }

    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.head.header(name)
    }
}

/// An answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Header fields besides `Content-Length` and `Connection`.
    pub headers: Vec<(&'static str, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl Response {
    /// An answer with a `Content-Type`.
    pub fn new(status: u16, content_type: &str, body: Vec<u8>) -> Response {
        Response {
            status,
            headers: vec![("Content-Type", content_type.to_owned())],
            body,
        }
    }

    /// `{"error": code}`.
    pub fn json_error(status: u16, code: &str) -> Response {
        let body = format!("{{\"error\":\"{code}\"}}").into_bytes();
        Response::new(status, "application/json", body)
    }

    /// The bytes on the wire.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(128 + self.body.len());
        out.extend_from_slice(
            format!("HTTP/1.1 {} {}\r\n", self.status, reason(self.status)).as_bytes(),
        );
        for (k, v) in &self.headers {
            out.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
        }
        out.extend_from_slice(
            format!(
                "Content-Length: {}\r\nConnection: close\r\n\r\n",
                self.body.len()
            )
            .as_bytes(),
        );
        out.extend_from_slice(&self.body);
        out
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        202 => "Accepted",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        413 => "Content Too Large",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "",
    }
}

/// Sends the answer of one request (on a worker thread).
#[derive(Debug)]
pub struct Responder {
    stream: TcpStream,
}

impl Responder {
    /// Writes `response` and closes the connection.
    pub fn send(self, response: &Response) {
        let mut s = &self.stream;
        if let Err(e) = s.write_all(&response.encode()) {
            tracing::debug!(error = %e, "HTTP answer not delivered");
        }
        let _ = self.stream.shutdown(Shutdown::Write);
    }
}

/// Runs one request: called on a worker thread; must call [`Responder::send`] (a dropped
/// responder closes the connection without an answer).
pub type Handler = Arc<dyn Fn(Request, Responder) + Send + Sync>;

enum Stage {
    /// Reading the head (and the PROXY header before it); `scanned` bytes of it were already
    /// looked at for line ends.
    Head { proxy_checked: bool, scanned: usize },
    /// Reading the body.
    Body { head: Head },
    /// An error answer went out; reading and discarding until the deadline.
    Linger { left: usize },
}

struct Conn {
    stream: TcpStream,
    peer: SocketAddr,
    seq: u64,
    buf: Vec<u8>,
    stage: Stage,
    deadline: Instant,
}

enum Step {
    Keep,
    Close,
    Dispatch(Request),
    Refuse(Response),
}

struct Refusals {
    count: u64,
    last_log: Option<Instant>,
}

impl Refusals {
    fn note(&mut self, name: &str, what: &str, now: Instant) {
        self.count += 1;
        if self
            .last_log
            .is_none_or(|t| now.duration_since(t) >= LOG_EVERY)
        {
            tracing::warn!(
                server = name,
                count = self.count,
                last = what,
                "connections refused or cut since the last report"
            );
            self.count = 0;
            self.last_log = Some(now);
        }
    }
}

/// Serves `listener` until `shutdown` is set: blocks the calling thread (the I/O thread) and
/// starts `limits.workers` worker threads named `<name>-<i>`, which end once the queue closes
/// (a handler already running finishes first; they are not waited for).
pub fn serve(
    listener: TcpListener,
    limits: Limits,
    handler: Handler,
    shutdown: &AtomicBool,
    name: &str,
) {
    if let Err(e) = listener.set_nonblocking(true) {
        tracing::error!(server = name, error = %e, "cannot make the listener nonblocking");
        return;
    }
    let (tx, rx) = sync_channel::<(Request, TcpStream)>(limits.queue);
    let rx = Arc::new(Mutex::new(rx));
    for i in 0..limits.workers.max(1) {
        let (rx, h, wt) = (rx.clone(), handler.clone(), limits.write_timeout);
        let spawned = std::thread::Builder::new()
            .name(format!("{name}-{i}"))
            .spawn(move || worker(&rx, &h, wt));
        if let Err(e) = spawned {
            tracing::error!(server = name, error = %e, "cannot start a worker thread");
        }
    }
    let mut conns: Vec<Conn> = Vec::new();
    let mut seq = 0u64;
    let mut refusals = Refusals {
        count: 0,
        last_log: None,
    };
    while !shutdown.load(Ordering::SeqCst) {
        let now = Instant::now();
        let wait = conns
            .iter()
            .map(|c| c.deadline.saturating_duration_since(now))
            .min()
            .unwrap_or(POLL_MAX)
            .min(POLL_MAX);
        let ready: Vec<bool>;
        let listener_ready;
        {
            let mut fds = Vec::with_capacity(conns.len() + 1);
            fds.push(PollFd::new(listener.as_fd(), PollFlags::POLLIN));
            fds.extend(
                conns
                    .iter()
                    .map(|c| PollFd::new(c.stream.as_fd(), PollFlags::POLLIN)),
            );
            let ms = u16::try_from(wait.as_millis() + 1).unwrap_or(u16::MAX);
            match poll(&mut fds, PollTimeout::from(ms)) {
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => {
                    tracing::warn!(server = name, error = %e, "poll failed");
                    std::thread::sleep(POLL_MAX);
                    continue;
                }
            }
            listener_ready = has_events(&fds[0]);
            ready = fds[1..].iter().map(has_events).collect();
        }
        let now = Instant::now();
        // Read what arrived; act on what is complete or refused.
        for i in (0..conns.len()).rev() {
            let step = if ready[i] {
                advance(&mut conns[i], &limits, now)
            } else if conns[i].deadline <= now {
                match conns[i].stage {
                    Stage::Linger { .. } => Step::Close,
                    _ => Step::Refuse(Response::json_error(408, "request_timeout")),
                }
            } else {
                Step::Keep
            };
            match step {
                Step::Keep => {}
                Step::Close => {
                    conns.swap_remove(i);
                }
                Step::Refuse(r) => {
                    refusals.note(name, reason(r.status), now);
                    refuse(&mut conns[i], &r, now);
                }
                Step::Dispatch(req) => {
                    let c = conns.swap_remove(i);
                    let _ = c.stream.set_nonblocking(false);
                    match tx.try_send((req, c.stream)) {
                        Ok(()) => {}
                        Err(TrySendError::Full((_, s)) | TrySendError::Disconnected((_, s))) => {
                            refusals.note(name, "busy", now);
                            let mut r = Response::json_error(503, "busy");
                            r.headers.push(("Retry-After", "1".into()));
                            let _ = s.set_write_timeout(Some(limits.write_timeout));
                            Responder { stream: s }.send(&r);
                        }
                    }
                }
            }
        }
        if !listener_ready {
            continue;
        }
        for _ in 0..ACCEPTS_PER_TURN {
            let (stream, peer) = match listener.accept() {
                Ok(v) => v,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    tracing::debug!(server = name, error = %e, "accept failed");
                    break;
                }
            };
            if stream.set_nonblocking(true).is_err() {
                continue;
            }
            if conns.len() >= limits.max_connections.max(1) {
                if let Some(victim) = pick_victim(&conns) {
                    conns.swap_remove(victim);
                    refusals.note(name, "evicted for a newer connection", now);
                }
            }
            seq += 1;
            let proxy_checked = !(limits.proxy_key.is_some() && peer.ip().is_loopback());
            conns.push(Conn {
                stream,
                peer,
                seq,
                buf: Vec::new(),
                stage: Stage::Head {
                    proxy_checked,
                    scanned: 0,
                },
                deadline: now + limits.head_timeout,
            });
        }
    }
}

fn has_events(f: &PollFd<'_>) -> bool {
    f.revents().is_some_and(|r| !r.is_empty())
}

/// The connection to close for a newcomer: a lingering one first, else the oldest of the
/// source address that holds the most.
fn pick_victim(conns: &[Conn]) -> Option<usize> {
    if let Some(i) = conns
        .iter()
        .enumerate()
        .filter(|(_, c)| matches!(c.stage, Stage::Linger { .. }))
        .min_by_key(|(_, c)| c.seq)
        .map(|(i, _)| i)
    {
        return Some(i);
    }
    let conns = conns.iter().enumerate();
    eviction::oldest_of_busiest(conns.map(|(i, c)| (c.peer.ip(), (c.seq, i)))).map(|(_, i)| i)
}

fn refuse(c: &mut Conn, r: &Response, now: Instant) {
    // A small answer into an empty send buffer: one nonblocking write.
    let _ = (&c.stream).write(&r.encode());
    let _ = c.stream.shutdown(Shutdown::Write);
    c.buf = Vec::new();
    c.stage = Stage::Linger { left: LINGER_BYTES };
    c.deadline = now + LINGER;
}

/// Reads into `c.buf` until it holds `cap` bytes, the socket would block, or the peer ended.
/// Returns whether the peer ended.
fn fill(c: &mut Conn, cap: usize) -> io::Result<bool> {
    let mut scratch = [0u8; 4096];
    while c.buf.len() < cap {
        let room = (cap - c.buf.len()).min(scratch.len());
        match (&c.stream).read(&mut scratch[..room]) {
            Ok(0) => return Ok(true),
            Ok(n) => c.buf.extend_from_slice(&scratch[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(false)
}

fn advance(c: &mut Conn, limits: &Limits, now: Instant) -> Step {
    if let Stage::Linger { left } = &mut c.stage {
        let mut scratch = [0u8; 4096];
        loop {
            match (&c.stream).read(&mut scratch) {
                Ok(0) => return Step::Close,
                Ok(n) if n >= *left => return Step::Close,
                Ok(n) => *left -= n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Step::Keep,
                Err(_) => return Step::Close,
            }
        }
    }
    loop {
        let cap = cap_of(&c.stage, limits);
        let ended = match fill(c, cap) {
            Ok(e) => e,
            Err(_) => return Step::Close,
        };
        let was_head = matches!(c.stage, Stage::Head { .. });
        let step = parse(c, limits, now);
        let Step::Keep = step else { return step };
        let is_head = matches!(c.stage, Stage::Head { .. });
        if ended {
            return Step::Close;
        }
        if was_head && !is_head {
            // The head is complete: read on under the body's cap.
            continue;
        }
        if c.buf.len() >= cap {
            return Step::Refuse(if is_head {
                Response::json_error(431, "request_header_fields_too_large")
            } else {
                Response::json_error(413, "payload_too_large")
            });
        }
        return Step::Keep;
    }
}

/// Bytes the connection's buffer may hold in `stage`.
fn cap_of(stage: &Stage, limits: &Limits) -> usize {
    match stage {
        Stage::Head { .. } => limits.max_head,
        Stage::Body { head } => match head.framing {
            Framing::Length(n) => head.len + n as usize,
            _ => head.len + limits.max_body + CHUNK_OVERHEAD,
        },
        Stage::Linger { .. } => 0,
    }
}

/// Whether the bytes after `scanned` let the head parser decide anything: the request line
/// ended there (a bad one is refused early), or the blank line that ends the head arrived.
fn head_decidable(buf: &[u8], scanned: usize) -> bool {
    let scanned = scanned.min(buf.len());
    let first_line_ends_now = !buf[..scanned].contains(&b'\n') && buf[scanned..].contains(&b'\n');
    // The terminator may straddle the previous read: look back up to 2 bytes.
    let tail = &buf[scanned.saturating_sub(2)..];
    let blank_line =
        tail.windows(2).any(|w| w == b"\n\n") || tail.windows(3).any(|w| w == b"\n\r\n");
    first_line_ends_now || blank_line
}

/// Moves the connection through its stages as far as the buffered bytes allow.
fn parse(c: &mut Conn, limits: &Limits, now: Instant) -> Step {
    loop {
        match &mut c.stage {
            Stage::Linger { .. } => return Step::Keep,
            Stage::Head {
                proxy_checked,
                scanned,
            } => {
                if !*proxy_checked {
                    match proxy_v2::decode(&c.buf, limits.proxy_key.as_ref()) {
                        Ok(Decoded::Incomplete) => return Step::Keep,
                        Ok(Decoded::Absent) => {}
                        Ok(Decoded::Header {
                            authentic: false, ..
                        }) => {
                            // Not the agent's: a local user naming a source of their choice.
                            return Step::Refuse(Response::json_error(400, "bad_proxy_header"));
                        }
                        Ok(Decoded::Header { source, len, .. }) => {
                            if let Some(src) = source {
                                c.peer = src;
                            }
                            c.buf.drain(..len);
                        }
                        Err(_) => {
                            return Step::Refuse(Response::json_error(400, "bad_proxy_header"))
                        }
                    }
                    *proxy_checked = true;
                }
                // The parser reads the whole buffer each time: give it the buffer only when it
                // can decide something, so a head sent a byte at a time costs O(n), not O(n²).
                let decidable = head_decidable(&c.buf, *scanned);
                *scanned = c.buf.len();
                if !decidable {
                    return Step::Keep;
                }
                let head = match parse_head(&c.buf) {
                    Ok(Some(h)) => h,
                    Ok(None) => return Step::Keep,
                    Err(e) => return Step::Refuse(Response::json_error(e.status(), error_code(e))),
                };
                match head.framing {
                    Framing::Length(n) if n > limits.max_body as u64 => {
                        return Step::Refuse(Response::json_error(413, "payload_too_large"))
                    }
                    Framing::None => {
                        return Step::Dispatch(Request {
                            head,
                            body: Vec::new(),
                            peer: c.peer,
                        })
                    }
                    _ => {}
                }
                if head
                    .header("expect")
                    .is_some_and(|v| v.trim_ascii().eq_ignore_ascii_case(b"100-continue"))
                {
                    // The body fits: say so now rather than let the client wait (curl: 1 s).
                    let _ = (&c.stream).write(b"HTTP/1.1 100 Continue\r\n\r\n");
                }
                c.deadline = now + limits.body_timeout;
                c.stage = Stage::Body { head };
            }
            Stage::Body { head } => {
                let raw = &c.buf[head.len..];
                let body = match head.framing {
                    Framing::Length(n) => {
                        let n = n as usize;
                        if raw.len() < n {
                            return Step::Keep;
                        }
                        raw[..n].to_vec()
                    }
                    _ => match decode_chunked(raw, limits.max_body) {
                        Ok(Some((body, _))) => body,
                        Ok(None) => return Step::Keep,
                        Err(ChunkError::TooLarge) => {
                            return Step::Refuse(Response::json_error(413, "payload_too_large"))
                        }
                        Err(ChunkError::Malformed) => {
                            return Step::Refuse(Response::json_error(400, "bad_chunked_body"))
                        }
                    },
                };
                let Stage::Body { head } =
                    std::mem::replace(&mut c.stage, Stage::Linger { left: 0 })
                else {
                    return Step::Close;
                };
                return Step::Dispatch(Request {
                    head,
                    body,
                    peer: c.peer,
                });
            }
        }
    }
}

fn error_code(e: super::head::HeadError) -> &'static str {
    use super::head::HeadError as E;
    match e {
        E::Malformed => "bad_request",
        E::TooManyHeaders => "request_header_fields_too_large",
        E::BadLength => "bad_content_length",
        E::Ambiguous => "ambiguous_framing",
        E::UnsupportedCoding => "transfer_coding_not_supported",
    }
}

fn worker(rx: &Mutex<Receiver<(Request, TcpStream)>>, handler: &Handler, write_timeout: Duration) {
    loop {
        // The lock is held only while waiting for the next request, never while handling.
        let next = rx.lock().unwrap_or_else(|p| p.into_inner()).recv();
        let Ok((req, stream)) = next else { return };
        let _ = stream.set_write_timeout(Some(write_timeout));
        handler(req, Responder { stream });
    }
}

#[cfg(test)]
mod tests {
    use super::head_decidable;

    /// Feeds `head` a byte at a time and returns the prefix lengths at which the parser runs.
    fn parser_runs(head: &[u8]) -> Vec<usize> {
        let mut scanned = 0;
        let mut runs = Vec::new();
        for end in 1..=head.len() {
            if head_decidable(&head[..end], scanned) {
                runs.push(end);
            }
            scanned = end;
        }
        runs
    }

    #[test]
    fn a_head_sent_a_byte_at_a_time_is_parsed_twice_not_per_byte() {
        let mut head = b"GET /status.json HTTP/1.1\r\n".to_vec();
        for i in 0..500 {
            head.extend_from_slice(format!("X-Filler-{i}: some value\r\n").as_bytes());
        }
        head.extend_from_slice(b"\r\n");
        // Once when the request line ends (a bad one is refused early), once at the blank line.
        assert_eq!(parser_runs(&head), vec![27, head.len()]);
        assert_eq!(parser_runs(b"GET / HTTP/1.1\n\n"), vec![15, 16]);
    }

    #[test]
    fn a_terminator_split_across_reads_is_seen() {
        let head = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        for cut in 1..head.len() {
            assert!(head_decidable(head, cut), "cut at {cut}");
        }
        assert!(!head_decidable(b"GET / HTTP/1.1\r\nHost: a\r\n", 16));
    }
}
