//! The config document (protocol §4): tolerant parsing, route-by-route validation, the canonical
//! hash, translation to the agent's [`AgentConfig`], and the standalone routes file.
//!
//! # Server documents
//!
//! The server's document grows new fields over time, so nothing here denies unknown fields. The
//! whole document is refused only when it is not a JSON object, or when `routes`, `l4_routes` or
//! `egress_routes` is present but not an array. Every other problem is local to one route: that
//! route is rejected alone, with a [`RejectedRoute`] saying why, and the others apply.
//!
//! One exception, decided here: when the document holds HTTP or L4 routes and **every one** of
//! them is rejected, the document as a whole counts as bad ([`ConfigError::AllRoutesRejected`]):
//! it does not replace the last good config. Such a document is almost certainly a server or
//! translation fault, and serving nothing would turn one bug into a full outage. A document that
//! holds no HTTP or L4 routes at all (the admin deleted them) is a valid, empty config.
//!
//! When two routes claim the same domain (HTTP) or listen port (L4), the first in document order
//! is kept and the later one rejected; an L4 route that repeats an earlier one's port AND target
//! is not an error (the server may list a service's TCP and UDP sides separately, and every L4
//! port carries both): it is listed in [`Validated::unsupported`] as served by the first.
//!
//! Egress routes are validated one by one like the others (`validate::egress_route`: `vip_ip`
//! an IPv4 address, `vip_prefix` 1-32 (default 24), `lan_listen_port` 1024-65535 and not taken by the
//! proxy, the management API, an L4 route or an earlier egress route, `tunnel_target_host` an
//! IPv4 address, `tunnel_target_port` a port). In `allowed_source_ips` a bare address means
//! `/32` and an entry that does not parse is skipped (listed in [`Validated::warnings`] with
//! the reason, and logged; an empty list denies everybody); so is an invalid `near_peers` entry. Whether
//! the VIP lies in the gateway's LAN subnets is the server's check (it validates against the
//! `lan_subnets` we report); the agent listens on every address whatever the VIP.
//!
//! # The canonical hash
//!
//! [`canonical_hash`] recomputes `config_hash` as protocol §4 describes. It is a diagnostic only:
//! the server's string is what gets stored and echoed, and a mismatch is a warning.
//!
//! # Standalone routes file
//!
//! `GATELET_ROUTES_FILE` holds the same JSON shape without `config_hash`; its canonical hash takes
//! the place of the server's. Since we own that file, it is checked strictly: an unknown
//! top-level key is an error and a route with an unknown field is rejected, so typos are caught.
//! [`RoutesFileWatcher`] tells when the file changed (polled; metadata first, content hash to
//! confirm).
//!
//! # Layout
//!
//! This file holds the document's types and schema and the entry points; `validate` checks it
//! route by route, `fields` the syntax of single fields, `hash` the canonical hash and
//! `routes_file` reads and watches the standalone file. The submodules take the types and the
//! schema from here; between them, only `validate` uses others (`hash` and `fields`).

use std::path::PathBuf;
use std::time::Duration;

use gatelet_agent_api::control::AgentConfig;
use gatelet_agent_api::env::{DEFAULT_API_PORT, DEFAULT_PROXY_PORT};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::state::RejectedRoute;

mod fields;
mod hash;
mod routes_file;
mod validate;

pub use fields::{egress_source, is_valid_hostname, is_valid_target_host, normalize_mac};
pub use hash::{canonical_hash, canonical_text};
pub use routes_file::{load_routes_file, RoutesFileWatcher};
use validate::{validate, Mode};

/// Largest routes file read, in bytes (a thousand routes take about 200 KiB).
pub const MAX_ROUTES_FILE_BYTES: u64 = 4 * 1024 * 1024;

/// Prefix of every config hash.
pub const HASH_PREFIX: &str = "sha256:";

/// A file whose modification time is this close to the moment we last read it may have been
/// written again within the same timestamp tick: its content is re-hashed even when its
/// metadata looks unchanged (the "racily clean" rule of git's index).
pub const RACY_WINDOW: Duration = Duration::from_secs(2);

/// `kind` of a [`RejectedRoute`] for an HTTP route.
pub const KIND_HTTP: &str = "http";
/// `kind` of a [`RejectedRoute`] for an L4 route.
pub const KIND_L4: &str = "l4";
/// `kind` of a [`RejectedRoute`] for an egress route.
pub const KIND_EGRESS: &str = "egress";

/// Lowest `lan_listen_port` of an egress route (the server allocates from 14450 up).
pub const EGRESS_MIN_PORT: u16 = 1024;

/// This box's own ports that routes may not take: on the tunnel IP the HTTP proxy and the
/// management API; as a target on loopback the management API and the diagnostics page (both
/// trust loopback callers: the API takes a PROXY header only from them, the page asks them
/// for no login, so a route to them would hand that trust to the hub's users).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReservedPorts {
    /// `GC_PROXY_PORT`.
    pub proxy: u16,
    /// `GC_API_PORT`.
    pub api: u16,
    /// The diagnostics page's port when loopback reaches it (it listens on a loopback or a
    /// wildcard address), from `GATELET_DIAG_LISTEN`.
    pub diag: Option<u16>,
}

impl ReservedPorts {
    /// The ports of a parsed `gateway.env`.
    pub fn from_env(env: &gatelet_agent_api::env::GatewayEnv) -> Self {
        ReservedPorts {
            proxy: env.proxy_port,
            api: env.api_port,
            diag: env
                .diag_listen
                .filter(|a| a.ip().is_loopback() || a.ip().is_unspecified())
                .map(|a| a.port()),
        }
    }

    /// Why a route may not target `host:port`: it is one of this box's own services on
    /// loopback. Host names are judged by spelling (`localhost` and its subdomains).
    pub fn own_service(&self, host: &str, port: u16) -> Option<String> {
        let loopback = match host.parse::<std::net::IpAddr>() {
            Ok(ip) => ip.is_loopback(),
            Err(_) => {
                let h = host.trim_end_matches('.').to_ascii_lowercase();
                h == "localhost" || h.ends_with(".localhost")
            }
        };
        let what = if !loopback {
            return None;
        } else if port == self.api {
            "the management API"
        } else if Some(port) == self.diag {
            "the diagnostics page"
        } else {
            return None;
        };
        Some(format!(
            "target {host}:{port} is {what} of this gateway, which trusts loopback callers: a \
             route may not lead there"
        ))
    }
}

impl Default for ReservedPorts {
    fn default() -> Self {
        ReservedPorts {
            proxy: DEFAULT_PROXY_PORT,
            api: DEFAULT_API_PORT,
            diag: Some(gatelet_agent_api::env::DEFAULT_DIAG_LISTEN.port()),
        }
    }
}

/// One egress route, as the server describes it (what [`egress_route`] validates).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EgressRoute {
    /// The server's route id.
    pub id: u64,
    /// Virtual IP the LAN reaches the service on.
    #[serde(default)]
    pub vip_ip: Option<String>,
    /// Prefix length of the virtual IP.
    #[serde(default)]
    pub vip_prefix: Option<u8>,
    /// Port of the LAN-side listener.
    #[serde(default)]
    pub lan_listen_port: Option<u16>,
    /// Host inside the tunnel the listener forwards to.
    #[serde(default)]
    pub tunnel_target_host: Option<String>,
    /// Port inside the tunnel the listener forwards to.
    #[serde(default)]
    pub tunnel_target_port: Option<u16>,
    /// Source CIDRs allowed to use the listener (empty means nobody).
    #[serde(default)]
    pub allowed_source_ips: Vec<String>,
    /// LAN IPs of pool siblings.
    #[serde(default)]
    pub near_peers: Vec<String>,
}

/// A config document after validation: what the agent gets, and what was left out and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Validated {
    /// The hash to store and echo: the server's `config_hash` string exactly as given (None when
    /// the server sent none), or the canonical hash of a standalone routes file.
    pub config_hash: Option<String>,
    /// Our own recomputation of the canonical hash (diagnostic only).
    pub canonical_hash: String,
    /// The routes that passed validation, ready for the agent.
    pub agent: AgentConfig,
    /// Routes rejected one by one, with the reason.
    pub rejected: Vec<RejectedRoute>,
    /// Routes that are not served but are not failures either, with the reason: an L4 route
    /// whose port and target repeat an earlier one (the server's TCP and UDP twins; the
    /// earlier route serves both). Shown in status and history.
    pub unsupported: Vec<RejectedRoute>,
    /// Parts of applied routes that were left out, with the reason: entries of an egress
    /// route's `allowed_source_ips` or `near_peers` that do not parse. Logged when applied.
    #[serde(default)]
    pub warnings: Vec<RejectedRoute>,
    /// The egress routes of the document as the server gave them, where they parse (the
    /// validated ones are in `agent.egress_routes`).
    pub egress: Vec<EgressRoute>,
    /// Number of entries in `routes`, `l4_routes` and `egress_routes` together.
    pub route_count: usize,
}

impl Validated {
    /// The warning to log when the server's hash differs from our recomputation, if it does.
    /// Never a reason to reject: the server's hashing library is the authority.
    pub fn hash_mismatch(&self) -> Option<String> {
        match &self.config_hash {
            Some(h) if *h != self.canonical_hash => Some(format!(
                "config_hash {h} from the server differs from the locally recomputed {}; \
                 using the server's value (the local hash is only a diagnostic)",
                self.canonical_hash
            )),
            _ => None,
        }
    }

    /// Number of routes handed to the agent.
    pub fn applied_count(&self) -> usize {
        self.agent.http_routes.len() + self.agent.l4_routes.len() + self.agent.egress_routes.len()
    }
}

/// A config document that cannot be used as a whole.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The text is not JSON.
    #[error("{origin}: not valid JSON at line {line}, column {column}: {message}")]
    Json {
        /// Where the document came from (`server config document`, `routes file <path>`).
        origin: String,
        /// 1-based line of the error.
        line: usize,
        /// 1-based column of the error.
        column: usize,
        /// The parser's message.
        message: String,
    },
    /// The document is JSON but not an object.
    #[error("{origin}: the config document must be a JSON object, got {got}")]
    NotAnObject {
        /// Where the document came from.
        origin: String,
        /// The JSON type found.
        got: &'static str,
    },
    /// `routes`, `l4_routes` or `egress_routes` is not an array.
    #[error("{origin}: `{field}` must be an array of routes, got {got}")]
    NotAnArray {
        /// Where the document came from.
        origin: String,
        /// The offending key.
        field: &'static str,
        /// The JSON type found.
        got: &'static str,
    },
    /// A routes file has a top-level key we do not know (probably a typo).
    #[error(
        "{origin}: unknown top-level key `{key}`; expected only routes, l4_routes, \
         egress_routes (and optionally peer_id, config_hash_version)"
    )]
    UnknownKey {
        /// Where the document came from.
        origin: String,
        /// The unknown key.
        key: String,
    },
    /// Every HTTP and L4 route of the document was rejected: the document is treated as bad and
    /// the last good config stays in force. `validated` holds the reasons, for the history.
    #[error(
        "{origin}: all {} routes were rejected, keeping the last good config; first reason: {}",
        validated.rejected.len(),
        first_reason(validated)
    )]
    AllRoutesRejected {
        /// Where the document came from.
        origin: String,
        /// The validation result, with every route in `rejected`.
        validated: Box<Validated>,
    },
    /// The routes file could not be read.
    #[error("cannot read routes file {}: {source}; check GATELET_ROUTES_FILE and the file's permissions", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// The routes file is larger than [`MAX_ROUTES_FILE_BYTES`].
    #[error("routes file {} is larger than {max} bytes; split or trim it", path.display())]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// The limit.
        max: u64,
    },
}

fn first_reason(v: &Validated) -> String {
    v.rejected
        .first()
        .map(|r| match r.id {
            Some(id) => format!("{} route {id}: {}", r.kind, r.reason),
            None => format!("{} route: {}", r.kind, r.reason),
        })
        .unwrap_or_default()
}

/// Parses and validates the server's config document (the body of `GET /config`).
pub fn parse_document(text: &str, ports: ReservedPorts) -> Result<Validated, ConfigError> {
    let origin = "server config document";
    let doc = parse_json(text, origin)?;
    validate(&doc, ports, Mode::Server, origin)
}

/// Validates an already-parsed server config document.
pub fn validate_document(doc: &Value, ports: ReservedPorts) -> Result<Validated, ConfigError> {
    validate(doc, ports, Mode::Server, "server config document")
}

/// Parses and validates the text of a standalone routes file. `origin` names it in errors.
/// The result's `config_hash` is the canonical hash of the document.
pub fn parse_routes_text(
    text: &str,
    origin: &str,
    ports: ReservedPorts,
) -> Result<Validated, ConfigError> {
    let doc = parse_json(text, origin)?;
    validate(&doc, ports, Mode::File, origin)
}

fn parse_json(text: &str, origin: &str) -> Result<Value, ConfigError> {
    serde_json::from_str(text).map_err(|e| ConfigError::Json {
        origin: origin.to_string(),
        line: e.line(),
        column: e.column(),
        message: e.to_string(),
    })
}

/// Top-level keys of the document schema (also the keys the canonical hash keeps).
pub(super) const TOP_KEYS: &[&str] = &[
    "config_hash_version",
    "peer_id",
    "routes",
    "l4_routes",
    "egress_routes",
];

/// Keys of an HTTP route that the canonical hash keeps.
///
/// `backend_https` is listed in protocol §4 but is NOT part of the hashed schema: all five
/// fixture documents hash to their `config_hash` only when it is left out (with it, the two
/// fixtures that carry it do not match), and §6 notes that a push is "sent even when nothing
/// hashed changed". `fixture_hashes_match_the_documented_schema` checks this.
pub(super) const HTTP_HASH_KEYS: &[&str] = &[
    "id",
    "domain",
    "target_kind",
    "target_lan_host",
    "target_lan_port",
    "protocol",
    "wol_enabled",
    "wol_mac",
];

/// Keys of an HTTP route that a routes file may use.
pub(super) const HTTP_FILE_KEYS: &[&str] = &[
    "id",
    "domain",
    "target_kind",
    "target_lan_host",
    "target_lan_port",
    "protocol",
    "backend_https",
    "wol_enabled",
    "wol_mac",
];

/// Keys of an L4 route (hashed, and allowed in a routes file).
pub(super) const L4_KEYS: &[&str] = &[
    "id",
    "listen_port",
    "target_lan_host",
    "target_lan_port",
    "wol_enabled",
    "wol_mac",
];

/// Keys of an egress route (hashed, and allowed in a routes file).
pub(super) const EGRESS_KEYS: &[&str] = &[
    "id",
    "vip_ip",
    "vip_prefix",
    "lan_listen_port",
    "tunnel_target_host",
    "tunnel_target_port",
    "allowed_source_ips",
    "near_peers",
];

/// Array fields of an egress route that default to `[]` in the hashed schema.
pub(super) const EGRESS_ARRAY_KEYS: &[&str] = &["allowed_source_ips", "near_peers"];

#[cfg(test)]
mod tests;
