//! Resolution of the hub's endpoint name, on a blocking thread (never on the packet path).

use std::net::{SocketAddr, ToSocketAddrs};

use gatelet_agent_api::env::Endpoint;

/// Every address of `endpoint`, in the resolver's order of preference, or a one-line error.
/// Blocks: call it from `spawn_blocking`.
pub fn resolve(endpoint: &Endpoint) -> Result<Vec<SocketAddr>, String> {
    (endpoint.host.as_str(), endpoint.port)
        .to_socket_addrs()
        .map(|addrs| addrs.collect())
        .map_err(|e| {
            format!("cannot resolve the hub endpoint {endpoint}: {e}; check WG_ENDPOINT and DNS")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literal_address_resolves_to_itself() {
        let e = Endpoint {
            host: "127.0.0.1".into(),
            port: 51820,
        };
        assert_eq!(
            resolve(&e).unwrap(),
            vec!["127.0.0.1:51820".parse().unwrap()]
        );
    }

    #[test]
    fn unknown_name_is_an_error_naming_the_endpoint() {
        let e = Endpoint {
            host: "no-such-host.invalid".into(),
            port: 1,
        };
        let msg = resolve(&e).unwrap_err();
        assert!(msg.contains("no-such-host.invalid:1"), "{msg}");
    }
}
