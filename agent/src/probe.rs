//! TCP reachability of a LAN target: resolve, connect with a timeout, measure.

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

#[cfg(test)]
mod tests {
    use super::*;

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
