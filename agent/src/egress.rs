//! The way out into the tunnel for the companion in userspace mode: a loopback HTTP CONNECT
//! proxy that opens a connection of the smoltcp stack to GateControl (`GC_SERVER_URL`).
//!
//! With a TUN device the kernel routes the companion's requests to the hub's tunnel address
//! (`http://10.8.0.1:3000`, what the pairing file gives) into the tunnel. With the tunnel
//! ending in the agent's own stack nothing on the box can send into it, so the agent listens
//! on `127.0.0.1` (a kernel port chosen by the kernel, reported in the control API status as
//! `tunnel_proxy`) and the companion's GateControl client uses it as its HTTP proxy.
//!
//! It is no open proxy: it accepts only `CONNECT <host>:<port>` of `GC_SERVER_URL` (403 for
//! any other target, 405 for another method, 400 for anything else), reads at most
//! [`HEAD_LIMIT`] bytes of request head within [`HEAD_TIMEOUT`], and serves at most
//! [`MAX_CONNECTIONS`] connections at once (503 beyond). The host is resolved at each
//! connect (an IP address in the pairing file's URL: no lookup); the connection goes out of
//! the tunnel address through [`Dial`] (the netstack), and bytes are then relayed both ways
//! by `forward::tcp::relay_io`, as for the L4 routes (half-close, idle timeout).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};

use crate::forward::tcp::{relay_io, TcpConfig};
use crate::forward::RouteCounters;
use crate::netstack::Netstack;
use crate::stack::Stream;

/// The longest request head read, in bytes.
pub const HEAD_LIMIT: usize = 1024;
/// Time allowed for the whole request head.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 16;
/// Time allowed to connect through the tunnel (the netstack gives up after its own
/// `connect_timeout` too).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// The one target the proxy reaches: `GC_SERVER_URL`'s host and port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Host as written in the URL (a name, an IPv4 address, or an IPv6 address without
    /// brackets).
    pub host: String,
    /// The URL's port, or 80 / 443 for its scheme.
    pub port: u16,
}

impl Target {
    /// The host and port of an `http://` or `https://` URL.
    pub fn from_url(url: &str) -> Result<Target, String> {
        let bad = || format!("{url:?} is not an http:// or https:// URL with a host");
        let (rest, default_port) = if let Some(r) = strip_prefix_ci(url, "http://") {
            (r, 80)
        } else if let Some(r) = strip_prefix_ci(url, "https://") {
            (r, 443)
        } else {
            return Err(bad());
        };
        let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
        if authority.contains('@') {
            return Err(bad());
        }
        let (host, port) = split_authority(authority).ok_or_else(bad)?;
        let port = match port {
            Some(p) => p,
            None => default_port,
        };
        Ok(Target {
            host: host.to_owned(),
            port,
        })
    }

    /// Whether the authority of a CONNECT request names this target.
    fn matches(&self, authority: &str) -> bool {
        match split_authority(authority) {
            Some((host, Some(port))) => port == self.port && host.eq_ignore_ascii_case(&self.host),
            _ => false,
        }
    }
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

/// `host[:port]` or `[v6][:port]`: the host (without brackets) and the port if given.
fn split_authority(a: &str) -> Option<(&str, Option<u16>)> {
    let (host, port) = if let Some(r) = a.strip_prefix('[') {
        let (h, after) = r.split_once(']')?;
        match after {
            "" => (h, None),
            p => (h, Some(p.strip_prefix(':')?)),
        }
    } else {
        match a.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (a, None),
        }
    };
    if host.is_empty() || host.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return None;
    }
    let port = match port {
        Some(p) => Some(p.parse::<u16>().ok().filter(|p| *p != 0)?),
        None => None,
    };
    Some((host, port))
}

/// Opens a connection into the tunnel (the netstack in the agent; a kernel socket in tests).
pub trait Dial: Send + Sync + 'static {
    /// A connection to `to`, established.
    fn dial(&self, to: SocketAddr) -> impl Future<Output = io::Result<Stream>> + Send;
}

impl Dial for Netstack {
    async fn dial(&self, to: SocketAddr) -> io::Result<Stream> {
        let s = self.connect_tcp(to).await?;
        Ok(Stream::Userspace(Box::new(s)))
    }
}

/// Counters of the proxy.
#[derive(Debug, Default)]
pub struct EgressCounters {
    /// Relay counters of the tunnelled connections (open ones, bytes, failed connects).
    pub relay: RouteCounters,
    /// Requests refused: another target, another method, a bad or slow head, the cap.
    pub refused: std::sync::atomic::AtomicU64,
}

/// Serves the proxy on `listener` (a loopback kernel socket) until `stop` turns true.
pub async fn serve<D: Dial>(
    listener: TcpListener,
    target: Target,
    dial: Arc<D>,
    counters: Arc<EgressCounters>,
    stop: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let target = Arc::new(target);
    loop {
        let (conn, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "tunnel proxy: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = crate::forward::wait_true(stop.clone()) => return,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            counters
                .refused
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            // Answered without a task of its own (a flood of connections costs no tasks): the
            // short answer fits the new socket's send buffer; then it is closed.
            let _ = conn.try_write(&answer(503, "too many connections"));
            continue;
        };
        let (target, dial, counters) = (target.clone(), dial.clone(), counters.clone());
        tokio::spawn(async move {
            let _slot = slot;
            if let Err(e) = handle(conn, &target, &*dial, &counters).await {
                tracing::debug!(error = %e, "tunnel proxy: connection ended");
            }
        });
    }
}

/// What a request head asks for.
#[derive(Debug, PartialEq, Eq)]
enum Head {
    /// A CONNECT to the target: where the head ends, and how much was read (the bytes
    /// after the head go to the tunnel first).
    Connect { end: usize, read: usize },
    /// Refused with this status and reason.
    Refuse(u16, &'static str),
}

/// Reads the head (bounded in size and time) and checks it.
async fn read_head(conn: &mut TcpStream, buf: &mut [u8; HEAD_LIMIT], target: &Target) -> Head {
    let mut len = 0;
    let read = async {
        loop {
            if let Some(end) = find_end(&buf[..len]) {
                return Some(end);
            }
            if len == buf.len() {
                return None;
            }
            match conn.read(&mut buf[len..]).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => len += n,
            }
        }
    };
    match tokio::time::timeout(HEAD_TIMEOUT, read).await {
        Err(_) => Head::Refuse(408, "request head too slow"),
        Ok(None) if len == HEAD_LIMIT => Head::Refuse(400, "request head too long"),
        Ok(None) => Head::Refuse(400, "incomplete request head"),
        Ok(Some(end)) => match check(&buf[..end], target) {
            Ok(()) => Head::Connect { end, read: len },
            Err((code, why)) => Head::Refuse(code, why),
        },
    }
}

/// The end of the head (after the blank line).
fn find_end(b: &[u8]) -> Option<usize> {
    b.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}

/// Checks a complete head against the target.
fn check(head: &[u8], target: &Target) -> Result<(), (u16, &'static str)> {
    let garbage = (400, "not an HTTP request");
    let text = std::str::from_utf8(head).map_err(|_| garbage)?;
    let line = text.split("\r\n").next().unwrap_or_default();
    let mut parts = line.split(' ');
    let (Some(method), Some(authority), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(garbage);
    };
    if !version.starts_with("HTTP/1.") || method.is_empty() {
        return Err(garbage);
    }
    if method != "CONNECT" {
        return Err((405, "only CONNECT to the GateControl server"));
    }
    if !target.matches(authority) {
        return Err((
            403,
            "only the GateControl server (GC_SERVER_URL) is reachable",
        ));
    }
    Ok(())
}

async fn respond(conn: &mut TcpStream, code: u16, why: &str) -> io::Result<()> {
    conn.write_all(&answer(code, why)).await
}

/// The bytes of an answer with `code` (a plain-text body saying `why`, except for 200).
fn answer(code: u16, why: &str) -> Vec<u8> {
    let reason = match code {
        200 => "Connection established",
        400 => "Bad Request",
        403 => "Forbidden",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Gateway Timeout",
    };
    let msg = if code == 200 {
        format!("HTTP/1.1 200 {reason}\r\n\r\n")
    } else {
        format!(
            "HTTP/1.1 {code} {reason}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\
             connection: close\r\n\r\n{why}\n",
            why.len() + 1
        )
    };
    msg.into_bytes()
}

/// Resolves the target (IPv4: the stack's only family).
async fn resolve(target: &Target) -> io::Result<SocketAddr> {
    tokio::net::lookup_host((target.host.as_str(), target.port))
        .await?
        .find(SocketAddr::is_ipv4)
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("{} has no IPv4 address", target.host),
            )
        })
}

async fn handle<D: Dial>(
    mut conn: TcpStream,
    target: &Target,
    dial: &D,
    counters: &EgressCounters,
) -> io::Result<()> {
    let mut buf = [0u8; HEAD_LIMIT];
    let (end, read) = match read_head(&mut conn, &mut buf, target).await {
        Head::Connect { end, read } => (end, read),
        Head::Refuse(code, why) => {
            counters
                .refused
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::debug!(code, why, "tunnel proxy: request refused");
            return respond(&mut conn, code, why).await;
        }
    };
    let to = match tokio::time::timeout(CONNECT_TIMEOUT, async {
        let to = resolve(target).await?;
        dial.dial(to).await
    })
    .await
    {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(e)) => Err((502, e.to_string())),
        Err(_) => Err((504, "timed out".to_owned())),
    };
    let mut tunnel = match to {
        Ok(s) => s,
        Err((code, e)) => {
            counters
                .relay
                .target_failures
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let why = format!(
                "cannot reach {}:{} through the tunnel: {e}",
                target.host, target.port
            );
            tracing::warn!("{why}");
            counters.relay.set_error(why.clone());
            return respond(&mut conn, code, &why).await;
        }
    };
    respond(&mut conn, 200, "").await?;
    if read > end {
        tunnel.write_all(&buf[end..read]).await?;
    }
    let active = &counters.relay.tcp_active;
    active.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut client = Stream::Kernel(conn);
    let r = relay_io(
        &mut client,
        &mut tunnel,
        &TcpConfig::default(),
        &counters.relay,
    )
    .await;
    active.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    r
}

#[cfg(test)]
mod tests;
