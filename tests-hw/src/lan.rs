//! The gateway's LAN: a namespace joined to the gateway by a veth, with one address per
//! service (an HTTP server, a WebSocket echo, a TCP and a UDP echo, TCP banner servers), and
//! the clients the tests use to talk to them through the gateway.
//!
//! ```text
//!  ns gw  v-lan 192.168.50.1/24  <---- veth ---->  ns lan  v-gw 192.168.50.10..14/24
//! ```
//!
//! The servers are threads of the test process whose sockets were made inside the LAN
//! namespace ([`Netns::enter`]); each stops and is joined on drop.

use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use crate::{EchoServer, HarnessError, Netns, Result, VethPair, ECHO_IO_TIMEOUT};

/// The gateway's address on the LAN.
pub const GW_LAN_SIDE_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 1);
/// The HTTP server's address.
pub const LAN_HTTP_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 10);
/// The WebSocket echo's address.
pub const LAN_WS_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 11);
/// The TCP and UDP echo's address.
pub const LAN_ECHO_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 12);
/// The first banner server's address.
pub const LAN_BANNER1_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 13);
/// The second banner server's address.
pub const LAN_BANNER2_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 14);
/// The port every LAN service listens on (each on its own address).
pub const LAN_SERVICE_PORT: u16 = 8000;
/// The prefix length of the LAN.
pub const LAN_SUBNET_PREFIX: u8 = 24;
/// Largest request head the LAN HTTP and WebSocket servers read, in bytes.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// How often a server's accept loop looks at its stop flag.
const ACCEPT_POLL: Duration = Duration::from_millis(20);

/// What the HTTP server answers first in every body, followed by the request head it saw.
pub const HTTP_BANNER: &str = "lan-http-backend\n";
/// The first banner server's greeting.
pub const BANNER1: &str = "banner-one\n";
/// The second banner server's greeting.
pub const BANNER2: &str = "banner-two\n";

/// The LAN namespace with its veth to the gateway and every service running.
#[derive(Debug)]
pub struct Lan {
    /// The HTTP server (body: [`HTTP_BANNER`] then the request head as received).
    pub http: TcpService,
    /// The WebSocket echo.
    pub ws: TcpService,
    /// The TCP echo (echoes until EOF, then closes: half-close works).
    pub tcp_echo: EchoServer,
    /// The UDP echo (same address and port as the TCP echo).
    pub udp_echo: UdpEcho,
    /// Sends [`BANNER1`] and closes.
    pub banner1: TcpService,
    /// Sends [`BANNER2`] and closes.
    pub banner2: TcpService,
    /// The veth gateway <-> LAN.
    pub veth: VethPair,
    /// The LAN namespace.
    pub ns: Netns,
}

impl Lan {
    /// Creates the LAN namespace next to `gw`, wires it and starts every service.
    pub fn start(gw: &Netns) -> Result<Lan> {
        let ns = Netns::new("lan")?;
        let veth = VethPair::new(
            gw,
            &format!("{GW_LAN_SIDE_IP}/{LAN_SUBNET_PREFIX}"),
            &ns,
            &format!("{LAN_HTTP_IP}/{LAN_SUBNET_PREFIX}"),
        )?;
        let ifname = veth.ifname_in(&ns).to_owned();
        for ip in [LAN_WS_IP, LAN_ECHO_IP, LAN_BANNER1_IP, LAN_BANNER2_IP] {
            ns.ip(&[
                "addr",
                "add",
                &format!("{ip}/{LAN_SUBNET_PREFIX}"),
                "dev",
                &ifname,
            ])?;
        }
        let at = |ip: Ipv4Addr| SocketAddr::from((ip, LAN_SERVICE_PORT));
        Ok(Lan {
            http: TcpService::start(&ns, at(LAN_HTTP_IP), Arc::new(serve_http))?,
            ws: TcpService::start(&ns, at(LAN_WS_IP), Arc::new(serve_websocket_echo))?,
            tcp_echo: EchoServer::start(&ns, at(LAN_ECHO_IP))?,
            udp_echo: UdpEcho::start(&ns, at(LAN_ECHO_IP))?,
            banner1: TcpService::start(&ns, at(LAN_BANNER1_IP), Arc::new(|c| banner(c, BANNER1)))?,
            banner2: TcpService::start(&ns, at(LAN_BANNER2_IP), Arc::new(|c| banner(c, BANNER2)))?,
            veth,
            ns,
        })
    }
}

/// Serves one connection.
pub type Handler = Arc<dyn Fn(TcpStream) + Send + Sync>;

/// A TCP listener in a namespace handing each connection to a [`Handler`] on its own thread.
pub struct TcpService {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for TcpService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpService")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl TcpService {
    /// Binds `addr` inside `ns` and serves every connection with `handler`.
    pub fn start(ns: &Netns, addr: SocketAddr, handler: Handler) -> Result<TcpService> {
        let listener = ns
            .enter(|| TcpListener::bind(addr))?
            .map_err(|e| HarnessError::io(format!("bind TCP {addr} in {}", ns.name()), e))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| HarnessError::io(format!("set {addr} non-blocking"), e))?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        let h = handler.clone();
                        thread::spawn(move || {
                            if conn.set_nonblocking(false).is_ok()
                                && conn.set_read_timeout(Some(ECHO_IO_TIMEOUT)).is_ok()
                            {
                                h(conn)
                            }
                        });
                    }
                    Err(_) => thread::sleep(ACCEPT_POLL),
                }
            }
        });
        Ok(TcpService {
            addr,
            stop,
            thread: Some(thread),
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for TcpService {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A UDP echo in a namespace: every datagram goes back to its sender.
#[derive(Debug)]
pub struct UdpEcho {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl UdpEcho {
    /// Binds `addr` inside `ns` and echoes.
    pub fn start(ns: &Netns, addr: SocketAddr) -> Result<UdpEcho> {
        let sock = ns
            .enter(|| UdpSocket::bind(addr))?
            .map_err(|e| HarnessError::io(format!("bind UDP {addr} in {}", ns.name()), e))?;
        sock.set_read_timeout(Some(ACCEPT_POLL * 5))
            .map_err(|e| HarnessError::io(format!("set a read timeout on UDP {addr}"), e))?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = thread::spawn(move || {
            let mut buf = [0u8; 65536];
            while !flag.load(Ordering::Relaxed) {
                if let Ok((n, from)) = sock.recv_from(&mut buf) {
                    let _ = sock.send_to(&buf[..n], from);
                }
            }
        });
        Ok(UdpEcho {
            addr,
            stop,
            thread: Some(thread),
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for UdpEcho {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn banner(mut conn: TcpStream, text: &str) {
    let _ = conn.write_all(text.as_bytes());
}

/// Reads up to the end of a request or response head; returns the head (without the blank
/// line) and whatever came after it. None on EOF before a complete head, or a head too big.
pub fn read_head(conn: &mut TcpStream, pending: &mut Vec<u8>) -> Option<(String, Vec<u8>)> {
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&pending[..end]).into_owned();
            let rest = pending[end + 4..].to_vec();
            pending.clear();
            return Some((head, rest));
        }
        if pending.len() > MAX_HEAD_BYTES {
            return None;
        }
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => return None,
            Ok(n) => pending.extend_from_slice(&buf[..n]),
        }
    }
}

/// The value of header `name` (case-insensitive) in a head.
pub fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// The HTTP backend: keep-alive, GET or a body with Content-Length; answers 200 with
/// [`HTTP_BANNER`] and the request head it received.
fn serve_http(mut conn: TcpStream) {
    let mut pending = Vec::new();
    while let Some((head, mut rest)) = read_head(&mut conn, &mut pending) {
        let len: usize = header(&head, "content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut buf = [0u8; 4096];
        while rest.len() < len {
            match conn.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => rest.extend_from_slice(&buf[..n]),
            }
        }
        pending = rest.split_off(len);
        let body = format!("{HTTP_BANNER}{head}\n");
        let answer = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        if conn.write_all(answer.as_bytes()).is_err() {
            return;
        }
    }
}

/// The WebSocket echo: answers the upgrade with 101 and echoes every data frame with the same
/// opcode; answers a close frame with a close frame and ends.
fn serve_websocket_echo(mut conn: TcpStream) {
    let mut pending = Vec::new();
    let Some((head, rest)) = read_head(&mut conn, &mut pending) else {
        return;
    };
    let Some(key) = header(&head, "sec-websocket-key") else {
        let _ = conn.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n");
        return;
    };
    let answer = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {}\r\n\r\n",
        websocket_accept(key)
    );
    if conn.write_all(answer.as_bytes()).is_err() {
        return;
    }
    let mut reader = Prefixed {
        pending: rest,
        conn,
    };
    while let Ok((opcode, payload)) = ws_read_frame(&mut reader) {
        let ok = ws_write_frame(&mut reader.conn, opcode, &payload, None).is_ok();
        if !ok || opcode == WS_CLOSE {
            return;
        }
    }
}

/// A stream that first yields bytes already read past a head.
struct Prefixed {
    pending: Vec<u8>,
    conn: TcpStream,
}

impl std::io::Read for Prefixed {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.pending.is_empty() {
            return self.conn.read(buf);
        }
        let n = buf.len().min(self.pending.len());
        buf[..n].copy_from_slice(&self.pending[..n]);
        self.pending.drain(..n);
        Ok(n)
    }
}

/// WebSocket text frame opcode.
pub const WS_TEXT: u8 = 1;
/// WebSocket binary frame opcode.
pub const WS_BINARY: u8 = 2;
/// WebSocket close frame opcode.
pub const WS_CLOSE: u8 = 8;
/// Largest frame payload [`ws_read_frame`] accepts, in bytes.
pub const WS_MAX_PAYLOAD: u64 = 1 << 20;

/// Writes one final frame; `mask` (clients must mask) scrambles the payload.
pub fn ws_write_frame(
    w: &mut impl std::io::Write,
    opcode: u8,
    payload: &[u8],
    mask: Option<[u8; 4]>,
) -> std::io::Result<()> {
    let mut frame = vec![0x80 | opcode];
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        n @ 0..=125 => frame.push(mask_bit | n as u8),
        n @ 126..=0xffff => {
            frame.push(mask_bit | 126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            frame.push(mask_bit | 127);
            frame.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    match mask {
        Some(m) => {
            frame.extend_from_slice(&m);
            frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ m[i % 4]));
        }
        None => frame.extend_from_slice(payload),
    }
    w.write_all(&frame)
}

/// Reads one frame (unmasking it); returns its opcode and payload.
pub fn ws_read_frame(r: &mut impl std::io::Read) -> std::io::Result<(u8, Vec<u8>)> {
    let mut h = [0u8; 2];
    r.read_exact(&mut h)?;
    let opcode = h[0] & 0x0f;
    let masked = h[1] & 0x80 != 0;
    let len = match h[1] & 0x7f {
        126 => {
            let mut b = [0u8; 2];
            r.read_exact(&mut b)?;
            u64::from(u16::from_be_bytes(b))
        }
        127 => {
            let mut b = [0u8; 8];
            r.read_exact(&mut b)?;
            u64::from_be_bytes(b)
        }
        n => u64::from(n),
    };
    if len > WS_MAX_PAYLOAD {
        return Err(std::io::Error::other(format!(
            "WebSocket frame of {len} bytes is over the {WS_MAX_PAYLOAD}-byte limit"
        )));
    }
    let mut mask = [0u8; 4];
    if masked {
        r.read_exact(&mut mask)?;
    }
    let mut payload = vec![0u8; len as usize];
    r.read_exact(&mut payload)?;
    if masked {
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= mask[i % 4];
        }
    }
    Ok((opcode, payload))
}

/// `Sec-WebSocket-Accept` for `key` (RFC 6455 §4.2.2): base64(SHA-1(key + GUID)).
pub fn websocket_accept(key: &str) -> String {
    const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
    base64(&sha1(format!("{key}{GUID}").as_bytes()))
}

/// SHA-1 (FIPS 180-4), for the WebSocket handshake only.
pub fn sha1(data: &[u8]) -> [u8; 20] {
    let mut h: [u32; 5] = [0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0];
    let mut msg = data.to_vec();
    let bit_len = (data.len() as u64).wrapping_mul(8);
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&bit_len.to_be_bytes());
    for chunk in msg.chunks_exact(64) {
        let mut w = [0u32; 80];
        for (i, word) in chunk.chunks_exact(4).enumerate() {
            w[i] = u32::from_be_bytes([word[0], word[1], word[2], word[3]]);
        }
        for i in 16..80 {
            w[i] = (w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16]).rotate_left(1);
        }
        let [mut a, mut b, mut c, mut d, mut e] = h;
        for (i, wi) in w.iter().enumerate() {
            let (f, k) = match i {
                0..=19 => ((b & c) | (!b & d), 0x5A827999),
                20..=39 => (b ^ c ^ d, 0x6ED9EBA1),
                40..=59 => ((b & c) | (b & d) | (c & d), 0x8F1BBCDC),
                _ => (b ^ c ^ d, 0xCA62C1D6),
            };
            let t = a
                .rotate_left(5)
                .wrapping_add(f)
                .wrapping_add(e)
                .wrapping_add(k)
                .wrapping_add(*wi);
            e = d;
            d = c;
            c = b.rotate_left(30);
            b = a;
            a = t;
        }
        for (hv, v) in h.iter_mut().zip([a, b, c, d, e]) {
            *hv = hv.wrapping_add(v);
        }
    }
    let mut out = [0u8; 20];
    for (i, v) in h.iter().enumerate() {
        out[i * 4..i * 4 + 4].copy_from_slice(&v.to_be_bytes());
    }
    out
}

/// Standard base64 with padding.
pub fn base64(data: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in data.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                out.push(ABC[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// An HTTP response as [`http_request`] read it.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    /// The status code.
    pub status: u16,
    /// The head (status line and headers).
    pub head: String,
    /// The body (de-chunked).
    pub body: String,
}

/// Connects from `ns` to `addr` (timeout `timeout`), sends `method path` with `headers`,
/// `Connection: close` and `body` (JSON, if any), and reads the whole response.
pub fn http_request(
    ns: &Netns,
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
    timeout: Duration,
) -> Result<HttpResponse> {
    let mut conn = connect(ns, addr, timeout)?;
    let mut req = format!("{method} {path} HTTP/1.1\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    let body = body.unwrap_or("");
    if !body.is_empty() {
        req.push_str("Content-Type: application/json\r\n");
    }
    req.push_str(&format!(
        "Connection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    ));
    let io = |e| HarnessError::io(format!("HTTP {method} {path} to {addr}"), e);
    conn.write_all(req.as_bytes()).map_err(io)?;
    let mut raw = Vec::new();
    conn.read_to_end(&mut raw).map_err(io)?;
    let parse_err = |detail: String| HarnessError::Parse {
        what: format!("HTTP response from {addr}"),
        detail,
    };
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| {
            parse_err(format!(
                "no complete head in {:?}",
                String::from_utf8_lossy(&raw)
            ))
        })?;
    let head = String::from_utf8_lossy(&raw[..end]).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| parse_err(format!("bad status line in {head:?}")))?;
    let mut body = raw[end + 4..].to_vec();
    if header(&head, "transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        body = dechunk(&body).ok_or_else(|| parse_err("bad chunked body".into()))?;
    }
    Ok(HttpResponse {
        status,
        head,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

fn dechunk(mut b: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = b.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&b[..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        b = &b[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(b.get(..size)?);
        b = b.get(size + 2..)?;
    }
}

/// A TCP connection from `ns` to `addr` with `timeout` for connecting and for each read and
/// write.
pub fn connect(ns: &Netns, addr: SocketAddr, timeout: Duration) -> Result<TcpStream> {
    let conn = ns
        .enter(|| TcpStream::connect_timeout(&addr, timeout))?
        .map_err(|e| HarnessError::io(format!("connect to {addr} from {}", ns.name()), e))?;
    conn.set_read_timeout(Some(timeout))
        .and_then(|()| conn.set_write_timeout(Some(timeout)))
        .map_err(|e| HarnessError::io(format!("set timeouts on the connection to {addr}"), e))?;
    Ok(conn)
}

/// Connects from `ns` to `addr` and reads everything until the server closes.
pub fn read_all_from(ns: &Netns, addr: SocketAddr, timeout: Duration) -> Result<String> {
    let mut conn = connect(ns, addr, timeout)?;
    let _ = conn.shutdown(Shutdown::Write);
    let mut out = String::new();
    conn.read_to_string(&mut out)
        .map_err(|e| HarnessError::io(format!("read from {addr}"), e))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn websocket_accept_matches_the_rfc_6455_example() {
        assert_eq!(
            websocket_accept("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn sha1_and_base64_match_known_values() {
        let hex: String = sha1(b"abc").iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, "a9993e364706816aba3e25717850c26c9cd0d89d");
        assert_eq!(base64(b"foob"), "Zm9vYg==");
        assert_eq!(base64(b"fooba"), "Zm9vYmE=");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
    }

    #[test]
    fn websocket_frames_round_trip_masked_and_unmasked() {
        for len in [0, 5, 125, 126, 70_000] {
            let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            for mask in [None, Some([1, 2, 3, 4])] {
                let mut wire = Vec::new();
                ws_write_frame(&mut wire, WS_BINARY, &payload, mask).unwrap();
                let (op, back) = ws_read_frame(&mut wire.as_slice()).unwrap();
                assert_eq!((op, back.len()), (WS_BINARY, payload.len()));
                assert_eq!(back, payload);
            }
        }
    }

    #[test]
    fn chunked_bodies_are_joined() {
        assert_eq!(
            dechunk(b"3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n").unwrap(),
            b"abcde"
        );
    }
}
