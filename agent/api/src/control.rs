//! The agent's control-socket contract.
//!
//! Framing: a Unix stream socket (default [`DEFAULT_SOCKET_PATH`]); the client writes one
//! [`Request`] as a single line of JSON, the agent answers with one [`Response`] line. A
//! connection may carry any number of request/response pairs, in order.
//!
//! Versioning: the first request of a connection may be [`Request::Hello`]; the agent answers
//! with its own version. Fields added after version 1 must be `#[serde(default)]`.

use serde::{Deserialize, Serialize};

/// Version of this contract. Bump on an incompatible change.
pub const API_VERSION: u32 = 1;

/// Where the agent listens unless told otherwise (`--control-socket`).
pub const DEFAULT_SOCKET_PATH: &str = "/run/gatelet/agent.sock";

/// Largest request or response line either side accepts, in bytes.
pub const MAX_LINE_BYTES: usize = 4 * 1024 * 1024;

/// A request from the companion to the agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Announce the client's contract version; answered by [`Response::Hello`].
    Hello {
        /// The client's [`API_VERSION`].
        version: u32,
    },
    /// Replace the running route set by this one (the agent applies the difference).
    Apply {
        /// The complete desired configuration.
        config: AgentConfig,
    },
    /// Ask for the agent's current status; answered by [`Response::Status`].
    Status,
    /// Wake a LAN host with magic packets and wait until it answers.
    Wake(WakeRequest),
    /// Check whether a LAN target accepts a TCP connection.
    Probe(ProbeRequest),
}

/// The agent's answer to one [`Request`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Response {
    /// Answer to [`Request::Hello`].
    Hello {
        /// The agent's [`API_VERSION`].
        version: u32,
        /// The agent's build version (crate version).
        agent_version: String,
    },
    /// Answer to [`Request::Apply`]: what the agent now runs.
    Applied {
        /// The hash of the applied config, as given in [`AgentConfig::config_hash`].
        config_hash: Option<String>,
        /// Per-route outcome (listening, or failed with a reason).
        routes: Vec<RouteStatus>,
    },
    /// Answer to [`Request::Status`].
    Status(Box<AgentStatus>),
    /// Answer to [`Request::Wake`].
    Woke(WakeResult),
    /// Answer to [`Request::Probe`].
    Probed(ProbeResult),
    /// The request could not be carried out.
    Error {
        /// What went wrong, for a human.
        message: String,
    },
}

/// The complete route set the agent should serve. Built by the companion from the server's
/// config document (or a standalone routes file) after route-by-route validation, so every
/// route here is well-formed; the agent may still fail to bind one.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentConfig {
    /// The server's `config_hash` this config came from (opaque), if any.
    #[serde(default)]
    pub config_hash: Option<String>,
    /// HTTP routes served by the reverse proxy on `GC_PROXY_PORT`.
    #[serde(default)]
    pub http_routes: Vec<HttpRoute>,
    /// L4 routes: TCP and UDP relays on their own listen ports.
    #[serde(default)]
    pub l4_routes: Vec<L4Route>,
}

/// One HTTP route: requests for `domain` go to `target_host:target_port`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpRoute {
    /// The server's route id.
    pub id: u64,
    /// Lowercase host name the route answers for.
    pub domain: String,
    /// LAN host (IP address or name) of the backend.
    pub target_host: String,
    /// LAN port of the backend.
    pub target_port: u16,
    /// Speak HTTPS to the backend (certificate not verified: LAN devices are self-signed).
    #[serde(default)]
    pub backend_https: bool,
    /// Wake-on-LAN for the backend, when enabled.
    #[serde(default)]
    pub wol: Option<WolTarget>,
}

/// One L4 route: TCP and UDP on `listen_port` (tunnel IP) relayed to `target_host:target_port`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct L4Route {
    /// The server's route id.
    pub id: u64,
    /// Port on the tunnel IP, for both TCP and UDP.
    pub listen_port: u16,
    /// LAN host (IP address or name) of the target.
    pub target_host: String,
    /// LAN port of the target.
    pub target_port: u16,
    /// Wake-on-LAN for the target, when enabled.
    #[serde(default)]
    pub wol: Option<WolTarget>,
}

/// A host that can be woken.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WolTarget {
    /// MAC address, normalised to lowercase `aa:bb:cc:dd:ee:ff`.
    pub mac: String,
    /// Optional SecureOn password (4 or 6 bytes), as hex.
    #[serde(default)]
    pub secureon: Option<String>,
}

/// State of one listener.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum ListenerState {
    /// Bound and accepting.
    Listening,
    /// Could not be bound; the agent retries.
    Failed {
        /// Why (for example `address in use`).
        reason: String,
    },
    /// Not configured (for example no HTTP routes yet).
    Idle,
}

impl ListenerState {
    /// The heartbeat's word for this state (`listening` or `listener_failed`).
    pub fn heartbeat_word(&self) -> &'static str {
        match self {
            ListenerState::Failed { .. } => "listener_failed",
            _ => "listening",
        }
    }
}

/// Kind of a route, in status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RouteKind {
    /// An HTTP route behind the reverse proxy.
    Http,
    /// An L4 (TCP and UDP) route.
    L4,
}

/// Cached result of the agent's scheduled reachability probe of a route's LAN target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reachability {
    /// Whether the target answered (see `method`).
    pub reachable: bool,
    /// Connect latency in milliseconds, when reachable.
    pub latency_ms: Option<u64>,
    /// When the probe ran, in milliseconds since the Unix epoch.
    pub last_checked_at: u64,
    /// How it was decided: `tcp` (a TCP connect), or, for an L4 target that refuses TCP,
    /// `udp_reply` (the target answered a relayed datagram lately), `udp_probe` (it answered
    /// an empty datagram) or `neighbour` (no ICMP port-unreachable for an empty datagram and
    /// a complete neighbour entry: a UDP-only service that stays silent). None: an older
    /// agent (TCP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
}

/// Status of one route as the agent runs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteStatus {
    /// The server's route id.
    pub id: u64,
    /// HTTP or L4.
    pub kind: RouteKind,
    /// Domain of an HTTP route; `l4:<port>` for an L4 route (as the heartbeat names it).
    pub name: String,
    /// The L4 listen port (None for HTTP routes).
    #[serde(default)]
    pub listen_port: Option<u16>,
    /// TCP listener state (L4), or the proxy's state (HTTP).
    pub tcp: ListenerState,
    /// UDP listener state (L4 only).
    #[serde(default)]
    pub udp: Option<ListenerState>,
    /// Open connections (TCP) plus live sessions (UDP).
    #[serde(default)]
    pub active_connections: u64,
    /// Bytes relayed in both directions since the route started.
    #[serde(default)]
    pub bytes: u64,
    /// Connections (L4: TCP, plus UDP datagrams over the session cap) or requests (HTTP: 503
    /// at the route's cap of requests in flight) turned away since the route started.
    #[serde(default)]
    pub refused: u64,
    /// Connections or requests whose target could not be reached (HTTP: 502/504 from the
    /// proxy) since the route started.
    #[serde(default)]
    pub failures: u64,
    /// Last error seen on this route.
    #[serde(default)]
    pub last_error: Option<String>,
    /// Last reachability probe of the target, if one ran.
    #[serde(default)]
    pub reachability: Option<Reachability>,
}

/// The tunnel's state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TunnelStatus {
    /// Seconds since the last completed handshake; None before the first.
    #[serde(default)]
    pub handshake_age_s: Option<u64>,
    /// Bytes received from the hub (decrypted payload).
    #[serde(default)]
    pub rx_bytes: u64,
    /// Bytes sent to the hub (payload before encryption).
    #[serde(default)]
    pub tx_bytes: u64,
    /// Packets received from the hub.
    #[serde(default)]
    pub rx_packets: u64,
    /// Packets sent to the hub.
    #[serde(default)]
    pub tx_packets: u64,
    /// The hub endpoint in use (`ip:port`), once resolved.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// The last tunnel error (resolve failure, send failure...).
    #[serde(default)]
    pub last_error: Option<String>,
    /// Network interface mode: `tun` (a TUN device, the kernel's TCP/IP stack) or `netstack`
    /// (the userspace stack inside the agent). Empty from an agent older than both.
    #[serde(default)]
    pub mode: String,
    /// Why this mode: set when `GATELET_NETSTACK=auto` fell back to the userspace stack
    /// (the TUN device could not be opened or configured, and the error).
    #[serde(default)]
    pub mode_reason: Option<String>,
    /// Decrypted packets dropped because their source is outside `WG_ALLOWED_IPS`.
    #[serde(default)]
    pub rx_dropped_not_allowed: u64,
    /// Packets to the tunnel dropped because their destination is outside `WG_ALLOWED_IPS`.
    #[serde(default)]
    pub tx_dropped_not_allowed: u64,
}

/// Everything the agent reports about itself.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentStatus {
    /// The agent's build version.
    #[serde(default)]
    pub agent_version: String,
    /// Seconds since the agent started.
    #[serde(default)]
    pub uptime_s: u64,
    /// Hash of the config the agent runs (from the companion or its own saved copy).
    #[serde(default)]
    pub config_hash: Option<String>,
    /// The WireGuard tunnel.
    #[serde(default)]
    pub tunnel: TunnelStatus,
    /// The HTTP proxy listener on `GC_PROXY_PORT`; None until the data plane serves it.
    #[serde(default)]
    pub http_proxy: Option<ListenerState>,
    /// The management API relay on `GC_API_PORT`; None until the data plane serves it.
    #[serde(default)]
    pub api_relay: Option<ListenerState>,
    /// Every configured route.
    #[serde(default)]
    pub routes: Vec<RouteStatus>,
    /// Recent wakes, newest last.
    #[serde(default)]
    pub wakes: Vec<WakeResult>,
    /// In userspace network stack mode with `GC_SERVER_URL` set: the agent's loopback HTTP
    /// CONNECT proxy (`127.0.0.1:port`) into the tunnel, which reaches only that URL's host
    /// and port. The companion sends its GateControl requests through it when the server
    /// lies in the tunnel (nothing else on the box can reach the tunnel then). None in TUN
    /// mode and from older agents.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tunnel_proxy: Option<String>,
}

/// Ask the agent to wake a host (`/api/wol`, or a companion-side trigger).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WakeRequest {
    /// MAC address, normalised (lowercase, colons).
    pub mac: String,
    /// Host to probe while waiting for it to wake.
    #[serde(default)]
    pub lan_host: Option<String>,
    /// Port to probe on `lan_host`.
    #[serde(default)]
    pub port: Option<u16>,
    /// How long to wait for the host, in milliseconds (capped by the agent at 300 000).
    pub timeout_ms: u64,
    /// What asked for the wake (`api`, `http`, `l4`).
    #[serde(default)]
    pub trigger: String,
}

/// Where one magic packet went.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SentOn {
    /// Interface name.
    pub iface: String,
    /// Destination broadcast address.
    pub broadcast: String,
    /// Whether every send on this interface succeeded.
    pub ok: bool,
    /// The error, when one send failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Outcome of a wake.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WakeResult {
    /// Normalised MAC that was woken.
    pub mac: String,
    /// What asked for it.
    #[serde(default)]
    pub trigger: String,
    /// True when the host answered within the timeout (or no probe target was known and
    /// the packets were sent).
    pub success: bool,
    /// Milliseconds from the first packet to the host answering (or to giving up).
    pub elapsed_ms: u64,
    /// `timeout` or another reason, when not successful.
    #[serde(default)]
    pub reason: Option<String>,
    /// Per-interface report.
    #[serde(default)]
    pub sent_on: Vec<SentOn>,
    /// When the wake started, ms since the Unix epoch.
    #[serde(default)]
    pub at_ms: u64,
}

/// Ask the agent to TCP-connect to a LAN target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeRequest {
    /// Host (IP address or name).
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// Connect timeout in milliseconds.
    pub timeout_ms: u64,
}

/// Outcome of a probe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeResult {
    /// Whether the connect succeeded.
    pub reachable: bool,
    /// Connect latency in milliseconds.
    pub latency_ms: u64,
    /// The error, when not reachable (`refused`, `timeout`, ...).
    #[serde(default)]
    pub error: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_round_trips_as_one_json_line() {
        let req = Request::Apply {
            config: AgentConfig {
                config_hash: Some("sha256:ab".into()),
                http_routes: vec![],
                l4_routes: vec![L4Route {
                    id: 2,
                    listen_port: 2222,
                    target_host: "192.168.1.20".into(),
                    target_port: 22,
                    wol: None,
                }],
            },
        };
        let line = serde_json::to_string(&req).unwrap();
        assert!(!line.contains('\n'));
        assert!(line.starts_with(r#"{"op":"apply""#), "{line}");
        let back: Request = serde_json::from_str(&line).unwrap();
        assert_eq!(back, req);
    }

    #[test]
    fn status_from_an_older_agent_without_new_fields_still_parses() {
        let s: AgentStatus = serde_json::from_str(r#"{"agent_version":"0.1.0"}"#).unwrap();
        assert_eq!(s.agent_version, "0.1.0");
        assert!(s.routes.is_empty());
        assert_eq!(s.tunnel.handshake_age_s, None);
    }

    #[test]
    fn failed_listener_maps_to_the_heartbeat_word() {
        let f = ListenerState::Failed {
            reason: "address in use".into(),
        };
        assert_eq!(f.heartbeat_word(), "listener_failed");
        assert_eq!(ListenerState::Listening.heartbeat_word(), "listening");
    }
}
