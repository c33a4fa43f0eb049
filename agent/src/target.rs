//! Where a route's traffic goes on the LAN: the [`Target`] (host and port), its resolution
//! and the LAN-side TCP connect. The lowest layer of the data path: the relays
//! (`crate::forward`), the HTTP proxy (`crate::http`), Wake-on-LAN (`crate::wol`) and the route
//! manager all use it; it uses none of them. LAN-side sockets are always ordinary kernel
//! sockets, whatever stack terminates the tunnel (`crate::stack`).

use std::io;
use std::time::Duration;

use tokio::net::TcpStream;

/// Where a route's traffic goes: a LAN host (IP address or name) and port.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Target {
    /// LAN host (IP address or name).
    pub host: String,
    /// LAN port.
    pub port: u16,
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// Resolves `target` (an IP literal needs no lookup).
pub async fn resolve(target: &Target) -> io::Result<Vec<std::net::SocketAddr>> {
    if let Ok(ip) = target.host.parse::<std::net::IpAddr>() {
        return Ok(vec![std::net::SocketAddr::new(ip, target.port)]);
    }
    let addrs: Vec<_> = tokio::net::lookup_host((target.host.as_str(), target.port))
        .await?
        .collect();
    if addrs.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("{} has no address", target.host),
        ));
    }
    Ok(addrs)
}

/// Connects to the first address of `target` that answers within `timeout` in total.
pub async fn connect(target: &Target, timeout: Duration) -> io::Result<TcpStream> {
    let attempt = async {
        let mut last = None;
        for addr in resolve(target).await? {
            match TcpStream::connect(addr).await {
                Ok(s) => return Ok(s),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| io::Error::other("no address")))
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(r) => r,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("no answer within {} ms", timeout.as_millis()),
        )),
    }
}
