//! Which route a request belongs to, and which LAN target it goes to.
//!
//! The hub names the route with `X-Gateway-Target-Domain` (else the `Host` header is used) and
//! may name a failover target with `X-Gateway-Target: host:port`. The failover target is only
//! taken when the route's configuration allows it (see [`effective_target`]): the header comes
//! over the tunnel, but the route table is what the gateway's owner configured.

use std::net::{IpAddr, Ipv4Addr};

use gatelet_agent_api::control::HttpRoute;

/// A LAN backend address as written in a route (`host` is an IP address or a name).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Target {
    /// IP address or host name (IPv6 without brackets).
    pub(crate) host: String,
    /// TCP port.
    pub(crate) port: u16,
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

/// The host part of a `Host` (or `X-Gateway-Target-Domain`) value: port stripped, lowercase,
/// trailing dot stripped. None when empty or not text.
pub(crate) fn normalize_host(raw: &[u8]) -> Option<String> {
    let s = std::str::from_utf8(raw).ok()?.trim();
    let host = if let Some(rest) = s.strip_prefix('[') {
        // [v6]:port
        rest.split(']').next()?
    } else {
        match s.rsplit_once(':') {
            Some((h, p)) if !h.contains(':') && p.bytes().all(|b| b.is_ascii_digit()) => h,
            _ => s,
        }
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.is_empty() {
        return None;
    }
    Some(host.to_ascii_lowercase())
}

/// The index of the route for `host` (already normalized), if any.
pub(crate) fn find(routes: &[HttpRoute], host: &str) -> Option<usize> {
    routes.iter().position(|r| {
        let d = r.domain.strip_suffix('.').unwrap_or(&r.domain);
        d.eq_ignore_ascii_case(host)
    })
}

/// Parses `host:port` or `[v6]:port`.
pub(crate) fn parse_target(raw: &[u8]) -> Option<Target> {
    let s = std::str::from_utf8(raw).ok()?.trim();
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (h, p) = rest.split_once("]:")?;
        (h, p)
    } else {
        let (h, p) = s.rsplit_once(':')?;
        if h.contains(':') {
            return None;
        }
        (h, p)
    };
    if host.is_empty() {
        return None;
    }
    Some(Target {
        host: host.to_ascii_lowercase(),
        port: port.parse().ok()?,
    })
}

fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// RFC 1918 private IPv4 address (10/8, 172.16/12, 192.168/16).
fn is_private_lan(host: &str) -> bool {
    host.parse::<Ipv4Addr>().is_ok_and(|ip| ip.is_private())
}

/// The outcome of looking at `X-Gateway-Target`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Choice {
    /// No header: the configured target.
    Configured(Target),
    /// The header was allowed and names this target.
    Honoured(Target),
    /// The header named something the route does not allow; the configured target is used.
    Refused(Target),
}

impl Choice {
    /// The target to connect to.
    pub(crate) fn target(&self) -> &Target {
        match self {
            Choice::Configured(t) | Choice::Honoured(t) | Choice::Refused(t) => t,
        }
    }
}

/// Decides the target for `route` given the request's `X-Gateway-Target` value (if any).
///
/// Honoured when it names the configured target itself, or when the configured target is a
/// loopback address and the header names an RFC 1918 address with the same port (the server's
/// failover for routes that point at the gateway itself). Anything else, including a malformed
/// value, is refused: the configured target is used.
pub(crate) fn effective_target(route: &HttpRoute, header: Option<&[u8]>) -> Choice {
    let configured = Target {
        host: route.target_host.to_ascii_lowercase(),
        port: route.target_port,
    };
    let Some(raw) = header else {
        return Choice::Configured(configured);
    };
    let Some(asked) = parse_target(raw) else {
        return Choice::Refused(configured);
    };
    let same = asked == configured
        || (asked.port == configured.port
            && matches!((asked.host.parse::<IpAddr>(), configured.host.parse::<IpAddr>()), (Ok(a), Ok(c)) if a == c));
    if same {
        return Choice::Honoured(configured);
    }
    if is_loopback(&configured.host) && is_private_lan(&asked.host) && asked.port == configured.port
    {
        return Choice::Honoured(asked);
    }
    Choice::Refused(configured)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(host: &str, port: u16) -> HttpRoute {
        HttpRoute {
            id: 7,
            domain: "app.example.com".into(),
            target_host: host.into(),
            target_port: port,
            backend_https: false,
            wol: None,
        }
    }

    #[test]
    fn host_is_normalized() {
        assert_eq!(
            normalize_host(b"App.Example.COM:8443").as_deref(),
            Some("app.example.com")
        );
        assert_eq!(
            normalize_host(b"app.example.com.").as_deref(),
            Some("app.example.com")
        );
        assert_eq!(normalize_host(b"[::1]:80").as_deref(), Some("::1"));
        assert_eq!(normalize_host(b"  x  ").as_deref(), Some("x"));
        assert_eq!(normalize_host(b""), None);
        assert_eq!(normalize_host(b":80"), None);
    }

    #[test]
    fn configured_target_is_honoured() {
        let r = route("192.168.1.10", 80);
        assert_eq!(
            effective_target(&r, Some(b"192.168.1.10:80")),
            Choice::Honoured(Target {
                host: "192.168.1.10".into(),
                port: 80
            })
        );
        assert!(matches!(effective_target(&r, None), Choice::Configured(_)));
    }

    #[test]
    fn loopback_target_may_fail_over_to_a_private_lan_address_on_the_same_port() {
        let r = route("127.0.0.1", 8080);
        assert_eq!(
            effective_target(&r, Some(b"10.1.2.3:8080")),
            Choice::Honoured(Target {
                host: "10.1.2.3".into(),
                port: 8080
            })
        );
        assert!(matches!(
            effective_target(&r, Some(b"10.1.2.3:22")),
            Choice::Refused(_)
        ));
        assert!(matches!(
            effective_target(&r, Some(b"8.8.8.8:8080")),
            Choice::Refused(_)
        ));
        assert!(matches!(
            effective_target(&r, Some(b"172.32.0.1:8080")),
            Choice::Refused(_)
        ));
        assert!(matches!(
            effective_target(&route("localhost", 80), Some(b"192.168.0.2:80")),
            Choice::Honoured(_)
        ));
    }

    #[test]
    fn other_targets_are_refused() {
        let r = route("192.168.1.10", 80);
        for bad in [
            &b"192.168.1.11:80"[..],
            b"192.168.1.10:81",
            b"garbage",
            b"[::1]:80",
            b":80",
        ] {
            assert_eq!(
                effective_target(&r, Some(bad)),
                Choice::Refused(Target {
                    host: "192.168.1.10".into(),
                    port: 80
                }),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
