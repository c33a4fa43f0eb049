//! Reachability of a LAN target: resolve, TCP connect with a timeout, measure; and for targets
//! that refuse TCP (UDP-only services), a UDP check ([`udp_check`]).

use std::io;
use std::time::{Duration, Instant};

use gatelet_agent_api::control::{ProbeRequest, ProbeResult};
use tokio::net::TcpStream;

/// Longest connect timeout a probe may ask for.
pub const MAX_PROBE_TIMEOUT: Duration = Duration::from_secs(30);
/// Timeout when the request asks for 0 ms.
pub const DEFAULT_PROBE_TIMEOUT: Duration = Duration::from_secs(3);

fn describe(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => "refused".into(),
        io::ErrorKind::TimedOut => "timeout".into(),
        _ => match e.raw_os_error() {
            Some(libc::EHOSTUNREACH) => "host unreachable".into(),
            Some(libc::ENETUNREACH) => "network unreachable".into(),
            _ => e.to_string(),
        },
    }
}

/// Connects to `req.host:req.port` within `req.timeout_ms` (capped at [`MAX_PROBE_TIMEOUT`]),
/// trying each address of the host in turn until the time is up.
pub async fn probe(req: &ProbeRequest) -> ProbeResult {
    let timeout = match req.timeout_ms {
        0 => DEFAULT_PROBE_TIMEOUT,
        ms => Duration::from_millis(ms).min(MAX_PROBE_TIMEOUT),
    };
    let start = Instant::now();
    let attempt = async {
        let addrs = tokio::net::lookup_host((req.host.as_str(), req.port))
            .await
            .map_err(|e| format!("cannot resolve {}: {e}", req.host))?;
        let mut last = format!("{} has no address", req.host);
        for addr in addrs {
            match TcpStream::connect(addr).await {
                Ok(_) => return Ok(()),
                Err(e) => last = describe(&e),
            }
        }
        Err(last)
    };
    let outcome = match tokio::time::timeout(timeout, attempt).await {
        Ok(r) => r,
        Err(_) => Err("timeout".to_owned()),
    };
    let latency_ms = u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX);
    ProbeResult {
        reachable: outcome.is_ok(),
        latency_ms,
        error: outcome.err(),
    }
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The neighbour table the UDP check reads.
pub const NEIGHBOUR_TABLE: &str = "/proc/net/arp";

/// What a UDP check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UdpVerdict {
    /// The target answered the empty datagram, after this many ms.
    Answered(u64),
    /// No answer, no ICMP port-unreachable, and the host is in the neighbour table with a
    /// complete entry: a UDP service that stays silent on an empty datagram.
    SilentNeighbour,
    /// Port unreachable (ICMP), or silence from a host that is not a complete neighbour.
    Down(String),
}

/// Sends one empty datagram to `host:port` from a connected socket and waits `timeout` for
/// an answer or an ICMP port-unreachable (which a connected socket reports as refused). Silence
/// counts as up only when the host's neighbour entry in `neighbours` (`/proc/net/arp` text
/// reader) is complete, i.e. it answered ARP just now.
pub async fn udp_check(
    host: &str,
    port: u16,
    timeout: Duration,
    neighbours: impl Fn() -> String,
) -> UdpVerdict {
    let start = Instant::now();
    let addr = match tokio::net::lookup_host((host, port)).await {
        Ok(mut a) => match a.next() {
            Some(a) => a,
            None => return UdpVerdict::Down(format!("{host} has no address")),
        },
        Err(e) => return UdpVerdict::Down(format!("cannot resolve {host}: {e}")),
    };
    let local: std::net::SocketAddr = if addr.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        ([0u16; 8], 0).into()
    };
    let sock = match tokio::net::UdpSocket::bind(local).await {
        Ok(s) => s,
        Err(e) => return UdpVerdict::Down(format!("udp socket: {e}")),
    };
    if let Err(e) = sock.connect(addr).await {
        return UdpVerdict::Down(describe(&e));
    }
    if let Err(e) = sock.send(&[]).await {
        return UdpVerdict::Down(describe(&e));
    }
    let mut buf = [0u8; 512];
    match tokio::time::timeout(timeout, sock.recv(&mut buf)).await {
        Ok(Ok(_)) => UdpVerdict::Answered(u64::try_from(start.elapsed().as_millis()).unwrap_or(0)),
        Ok(Err(e)) if e.kind() == io::ErrorKind::ConnectionRefused => {
            UdpVerdict::Down("udp port unreachable".into())
        }
        Ok(Err(e)) => UdpVerdict::Down(describe(&e)),
        Err(_) => {
            let ip = addr.ip().to_string();
            if complete_neighbour(&neighbours(), &ip) {
                UdpVerdict::SilentNeighbour
            } else {
                UdpVerdict::Down("no udp answer and no neighbour entry".into())
            }
        }
    }
}

/// Whether `/proc/net/arp` text has a complete entry (flag 0x2) with a MAC for `ip`.
pub fn complete_neighbour(table: &str, ip: &str) -> bool {
    table.lines().skip(1).any(|l| {
        let c: Vec<&str> = l.split_whitespace().collect();
        c.len() >= 4
            && c[0] == ip
            && u32::from_str_radix(c[2].trim_start_matches("0x"), 16).is_ok_and(|f| f & 0x2 != 0)
            && c[3] != "00:00:00:00:00:00"
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_complete_neighbour_entries_count() {
        let t = "IP address HW type Flags HW address Mask Device\n\
                 10.0.0.5 0x1 0x2 aa:bb:cc:dd:ee:ff * eth0\n\
                 10.0.0.6 0x1 0x0 00:00:00:00:00:00 * eth0\n";
        assert!(complete_neighbour(t, "10.0.0.5"));
        assert!(!complete_neighbour(t, "10.0.0.6"));
        assert!(!complete_neighbour(t, "10.0.0.7"));
    }

    #[tokio::test]
    async fn udp_check_tells_an_answer_a_closed_port_and_silence_apart() {
        let echo = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let port = echo.local_addr().unwrap().port();
        let silent = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let silent_port = silent.local_addr().unwrap().port();
        tokio::spawn(async move {
            let mut b = [0u8; 64];
            while let Ok((_, peer)) = echo.recv_from(&mut b).await {
                let _ = echo.send_to(b"pong", peer).await;
            }
        });
        let t = Duration::from_millis(300);
        let none = String::new;
        assert!(matches!(
            udp_check("127.0.0.1", port, t, none).await,
            UdpVerdict::Answered(_)
        ));
        let closed = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let closed_port = closed.local_addr().unwrap().port();
        drop(closed);
        assert_eq!(
            udp_check("127.0.0.1", closed_port, t, none).await,
            UdpVerdict::Down("udp port unreachable".into())
        );
        assert!(matches!(
            udp_check("127.0.0.1", silent_port, t, none).await,
            UdpVerdict::Down(_)
        ));
        let table = || "h\n127.0.0.1 0x1 0x2 aa:bb:cc:dd:ee:01 * lo\n".to_owned();
        assert_eq!(
            udp_check("127.0.0.1", silent_port, t, table).await,
            UdpVerdict::SilentNeighbour
        );
        drop(silent);
    }

    #[tokio::test]
    async fn listening_port_is_reachable_and_closed_port_is_refused() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let ok = probe(&ProbeRequest {
            host: "127.0.0.1".into(),
            port,
            timeout_ms: 1000,
        })
        .await;
        assert!(ok.reachable, "{ok:?}");
        drop(l);
        let refused = probe(&ProbeRequest {
            host: "127.0.0.1".into(),
            port,
            timeout_ms: 1000,
        })
        .await;
        assert!(!refused.reachable);
        assert_eq!(refused.error.as_deref(), Some("refused"));
    }
}
