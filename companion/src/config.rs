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
//! Egress routes are parsed and kept, but the agent does not serve them yet: they are listed in
//! [`Validated::unsupported`], which is shown in status and history but is not a failure.
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

use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use gatelet_agent_api::control::{AgentConfig, HttpRoute, L4Route, WolTarget};
use gatelet_agent_api::env::{DEFAULT_API_PORT, DEFAULT_PROXY_PORT};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::state::RejectedRoute;

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

/// Why an egress route is listed in [`Validated::unsupported`].
pub const EGRESS_UNSUPPORTED: &str = "egress routes are not supported by gatelet yet";

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

/// One egress route, as the server describes it (kept, not served yet).
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
    /// Routes that are not served but are not failures either, with the reason: egress routes
    /// (not supported yet), and an L4 route whose port and target repeat an earlier one (the
    /// server's TCP and UDP twins; the earlier route serves both). Shown in status and history.
    pub unsupported: Vec<RejectedRoute>,
    /// The egress routes of the document, parsed where possible.
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
        self.agent.http_routes.len() + self.agent.l4_routes.len()
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

/// How strictly fields are checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Server payload: unknown fields ignored.
    Server,
    /// Our own routes file: unknown fields are errors.
    File,
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

/// Reads, parses and validates the standalone routes file at `path`. Returns the validation
/// result and the raw text (to store as last-known-good).
pub fn load_routes_file(
    path: &Path,
    ports: ReservedPorts,
) -> Result<(Validated, String), ConfigError> {
    let bytes = read_bounded(path)?;
    let text = String::from_utf8(bytes).map_err(|e| ConfigError::Json {
        origin: format!("routes file {}", path.display()),
        line: 1,
        column: 1,
        message: format!(
            "not UTF-8 text (invalid byte at offset {})",
            e.utf8_error().valid_up_to()
        ),
    })?;
    let v = parse_routes_text(&text, &format!("routes file {}", path.display()), ports)?;
    Ok((v, text))
}

fn read_bounded(path: &Path) -> Result<Vec<u8>, ConfigError> {
    let io = |source| ConfigError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let mut bytes = Vec::new();
    file.take(MAX_ROUTES_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    if bytes.len() as u64 > MAX_ROUTES_FILE_BYTES {
        return Err(ConfigError::TooLarge {
            path: path.to_path_buf(),
            max: MAX_ROUTES_FILE_BYTES,
        });
    }
    Ok(bytes)
}

fn parse_json(text: &str, origin: &str) -> Result<Value, ConfigError> {
    serde_json::from_str(text).map_err(|e| ConfigError::Json {
        origin: origin.to_string(),
        line: e.line(),
        column: e.column(),
        message: e.to_string(),
    })
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Top-level keys of the document schema (also the keys the canonical hash keeps).
const TOP_KEYS: &[&str] = &[
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
const HTTP_HASH_KEYS: &[&str] = &[
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
const HTTP_FILE_KEYS: &[&str] = &[
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
const L4_KEYS: &[&str] = &[
    "id",
    "listen_port",
    "target_lan_host",
    "target_lan_port",
    "wol_enabled",
    "wol_mac",
];

/// Keys of an egress route (hashed, and allowed in a routes file).
const EGRESS_KEYS: &[&str] = &[
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
const EGRESS_ARRAY_KEYS: &[&str] = &["allowed_source_ips", "near_peers"];

/// A route array of the document; empty for a missing or null key.
fn route_array<'a>(
    obj: &'a Map<String, Value>,
    field: &'static str,
    origin: &str,
) -> Result<&'a [Value], ConfigError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(&[]),
        Some(Value::Array(a)) => Ok(a),
        Some(other) => Err(ConfigError::NotAnArray {
            origin: origin.to_string(),
            field,
            got: type_name(other),
        }),
    }
}

fn validate(
    doc: &Value,
    ports: ReservedPorts,
    mode: Mode,
    origin: &str,
) -> Result<Validated, ConfigError> {
    let obj = doc.as_object().ok_or_else(|| ConfigError::NotAnObject {
        origin: origin.to_string(),
        got: type_name(doc),
    })?;
    let http = route_array(obj, "routes", origin)?;
    let l4 = route_array(obj, "l4_routes", origin)?;
    let egress = route_array(obj, "egress_routes", origin)?;
    if mode == Mode::File {
        if let Some(key) = obj
            .keys()
            .find(|k| !TOP_KEYS.contains(&k.as_str()) && k.as_str() != "config_hash")
        {
            return Err(ConfigError::UnknownKey {
                origin: origin.to_string(),
                key: key.clone(),
            });
        }
    }

    let canonical = canonical_hash(doc);
    let config_hash = match mode {
        Mode::Server => obj
            .get("config_hash")
            .and_then(Value::as_str)
            .map(str::to_string),
        // A copied server document may carry the server's hash; the file's own hash wins.
        Mode::File => Some(canonical.clone()),
    };

    let mut rejected = Vec::new();
    let mut agent = AgentConfig {
        config_hash: config_hash.clone(),
        http_routes: Vec::new(),
        l4_routes: Vec::new(),
    };

    let mut domains: HashMap<String, u64> = HashMap::new();
    let mut ids: HashSet<u64> = HashSet::new();
    for route in http {
        match http_route(route, mode) {
            Ok(r) => {
                if let Some(reason) = ports.own_service(&r.target_host, r.target_port) {
                    rejected.push(reject(KIND_HTTP, Some(r.id), reason));
                } else if !ids.insert(r.id) {
                    rejected.push(reject(
                        KIND_HTTP,
                        Some(r.id),
                        format!("duplicate id {}: another HTTP route already has it", r.id),
                    ));
                } else if let Some(first) = domains.get(&r.domain) {
                    rejected.push(reject(
                        KIND_HTTP,
                        Some(r.id),
                        format!(
                            "domain {} is already served by HTTP route {first}",
                            r.domain
                        ),
                    ));
                } else {
                    domains.insert(r.domain.clone(), r.id);
                    agent.http_routes.push(r);
                }
            }
            Err((id, reason)) => rejected.push(reject(KIND_HTTP, id, reason)),
        }
    }

    let mut unsupported = Vec::new();
    // listen port -> index in agent.l4_routes
    let mut listen: HashMap<u16, usize> = HashMap::new();
    let mut ids: HashSet<u64> = HashSet::new();
    for route in l4 {
        match l4_route(route, mode) {
            Ok(r) => {
                let port = r.listen_port;
                if let Some(reason) = ports.own_service(&r.target_host, r.target_port) {
                    rejected.push(reject(KIND_L4, Some(r.id), reason));
                } else if !ids.insert(r.id) {
                    rejected.push(reject(
                        KIND_L4,
                        Some(r.id),
                        format!("duplicate id {}: another L4 route already has it", r.id),
                    ));
                } else if port == ports.proxy {
                    rejected.push(reject(
                        KIND_L4,
                        Some(r.id),
                        format!("listen_port {port} collides with GC_PROXY_PORT (the HTTP proxy)"),
                    ));
                } else if port == ports.api {
                    rejected.push(reject(
                        KIND_L4,
                        Some(r.id),
                        format!(
                            "listen_port {port} collides with GC_API_PORT (the management API)"
                        ),
                    ));
                } else if let Some(first) = listen.get(&port).map(|&i| &agent.l4_routes[i]) {
                    if first.target_host == r.target_host && first.target_port == r.target_port {
                        // The server's TCP and UDP twins of one service: already served.
                        unsupported.push(reject(
                            KIND_L4,
                            Some(r.id),
                            format!(
                                "listen_port {port} is served by L4 route {} with the same \
                                 target (every L4 port carries both TCP and UDP)",
                                first.id
                            ),
                        ));
                    } else {
                        rejected.push(reject(
                            KIND_L4,
                            Some(r.id),
                            format!(
                                "listen_port {port} is already used by L4 route {}",
                                first.id
                            ),
                        ));
                    }
                } else {
                    listen.insert(port, agent.l4_routes.len());
                    agent.l4_routes.push(r);
                }
            }
            Err((id, reason)) => rejected.push(reject(KIND_L4, id, reason)),
        }
    }

    let mut kept = Vec::new();
    for route in egress {
        if mode == Mode::File {
            if let Err((id, reason)) = unknown_fields(route, EGRESS_KEYS) {
                rejected.push(reject(KIND_EGRESS, id, reason));
                continue;
            }
        }
        match serde_json::from_value::<EgressRoute>(route.clone()) {
            Ok(e) => {
                unsupported.push(reject(KIND_EGRESS, Some(e.id), EGRESS_UNSUPPORTED.into()));
                kept.push(e);
            }
            Err(err) => unsupported.push(reject(
                KIND_EGRESS,
                route.get("id").and_then(Value::as_u64),
                format!("{EGRESS_UNSUPPORTED} (and this one is malformed: {err})"),
            )),
        }
    }

    let validated = Validated {
        config_hash,
        canonical_hash: canonical,
        agent,
        rejected,
        unsupported,
        egress: kept,
        route_count: http.len() + l4.len() + egress.len(),
    };
    let served = http.len() + l4.len();
    if served > 0 && validated.applied_count() == 0 {
        return Err(ConfigError::AllRoutesRejected {
            origin: origin.to_string(),
            validated: Box::new(validated),
        });
    }
    Ok(validated)
}

fn reject(kind: &str, id: Option<u64>, reason: String) -> RejectedRoute {
    RejectedRoute {
        kind: kind.to_string(),
        id,
        reason,
    }
}

/// A route-level failure: the id when readable, and the reason.
type RouteErr = (Option<u64>, String);

fn unknown_fields(route: &Value, allowed: &[&str]) -> Result<(), RouteErr> {
    let Some(obj) = route.as_object() else {
        return Ok(()); // reported by the route parser
    };
    match obj.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(k) => Err((
            obj.get("id").and_then(Value::as_u64),
            format!(
                "unknown field `{k}` (routes files are checked strictly; allowed: {})",
                allowed.join(", ")
            ),
        )),
        None => Ok(()),
    }
}

fn route_id(obj: &Map<String, Value>) -> Result<u64, RouteErr> {
    match obj.get("id") {
        Some(Value::Number(n)) => match n.as_u64() {
            Some(id) if id > 0 => Ok(id),
            _ => Err((None, format!("id {n} is not a positive integer"))),
        },
        None | Some(Value::Null) => Err((None, "id is missing".into())),
        Some(other) => Err((
            None,
            format!("id must be a positive integer, got {}", type_name(other)),
        )),
    }
}

fn port_field(obj: &Map<String, Value>, key: &str, id: u64) -> Result<u16, RouteErr> {
    match obj.get(key) {
        None | Some(Value::Null) => Err((Some(id), format!("{key} is missing"))),
        Some(Value::Number(n)) => match n.as_u64() {
            Some(p @ 1..=65535) => Ok(p as u16),
            _ => Err((Some(id), format!("{key} {n} is not a port from 1 to 65535"))),
        },
        Some(other) => Err((
            Some(id),
            format!(
                "{key} must be a port from 1 to 65535, got {}",
                type_name(other)
            ),
        )),
    }
}

fn bool_field(obj: &Map<String, Value>, key: &str, id: u64) -> Result<bool, RouteErr> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(other) => Err((
            Some(id),
            format!("{key} must be true or false, got {}", type_name(other)),
        )),
    }
}

fn target_host(obj: &Map<String, Value>, id: u64) -> Result<String, RouteErr> {
    match obj.get("target_lan_host") {
        None | Some(Value::Null) => Err((
            Some(id),
            "target_lan_host is null: the route has no LAN target on this gateway".into(),
        )),
        Some(Value::String(s)) => {
            if is_valid_target_host(s) {
                Ok(s.clone())
            } else {
                Err((
                    Some(id),
                    format!("target_lan_host {s:?} is not an IPv4 address or a host name"),
                ))
            }
        }
        Some(other) => Err((
            Some(id),
            format!(
                "target_lan_host must be an IPv4 address or host name, got {}",
                type_name(other)
            ),
        )),
    }
}

fn wol_target(obj: &Map<String, Value>, id: u64) -> Result<Option<WolTarget>, RouteErr> {
    if !bool_field(obj, "wol_enabled", id)? {
        return Ok(None);
    }
    let mac = match obj.get("wol_mac") {
        None | Some(Value::Null) => {
            return Err((
                Some(id),
                "wol_enabled is true but wol_mac is missing".into(),
            ))
        }
        Some(Value::String(s)) => s,
        Some(other) => {
            return Err((
                Some(id),
                format!(
                    "wol_mac must be a MAC address string, got {}",
                    type_name(other)
                ),
            ))
        }
    };
    match normalize_mac(mac) {
        Some(m) if is_unicast_mac(&m) => Ok(Some(WolTarget {
            mac: m,
            secureon: None,
        })),
        Some(m) => Err((
            Some(id),
            format!("wol_mac {m} is not a single device's address (zero, broadcast or multicast)"),
        )),
        None => Err((
            Some(id),
            format!("wol_enabled is true but wol_mac {mac:?} is not a MAC address"),
        )),
    }
}

fn route_object(route: &Value) -> Result<&Map<String, Value>, RouteErr> {
    route.as_object().ok_or_else(|| {
        (
            None,
            format!("a route must be a JSON object, got {}", type_name(route)),
        )
    })
}

fn http_route(route: &Value, mode: Mode) -> Result<HttpRoute, RouteErr> {
    let obj = route_object(route)?;
    if mode == Mode::File {
        unknown_fields(route, HTTP_FILE_KEYS)?;
    }
    let id = route_id(obj)?;
    let domain = match obj.get("domain") {
        Some(Value::String(d)) if is_valid_hostname(d, true) => d.clone(),
        Some(Value::String(d)) => {
            return Err((
                Some(id),
                format!("domain {d:?} is not a valid lowercase host name"),
            ))
        }
        None | Some(Value::Null) => return Err((Some(id), "domain is missing".into())),
        Some(other) => {
            return Err((
                Some(id),
                format!("domain must be a host name, got {}", type_name(other)),
            ))
        }
    };
    match obj.get("target_kind") {
        None | Some(Value::Null) => {}
        Some(Value::String(k)) if k == "gateway" => {}
        Some(other) => {
            return Err((
                Some(id),
                format!(
                    "target_kind {other} is not \"gateway\": this route is not served by a gateway"
                ),
            ))
        }
    }
    let target_host = target_host(obj, id)?;
    let target_port = port_field(obj, "target_lan_port", id)?;
    let backend_https = bool_field(obj, "backend_https", id)?;
    let wol = wol_target(obj, id)?;
    Ok(HttpRoute {
        id,
        domain,
        target_host,
        target_port,
        backend_https,
        wol,
    })
}

fn l4_route(route: &Value, mode: Mode) -> Result<L4Route, RouteErr> {
    let obj = route_object(route)?;
    if mode == Mode::File {
        unknown_fields(route, L4_KEYS)?;
    }
    let id = route_id(obj)?;
    let listen_port = port_field(obj, "listen_port", id)?;
    let target_host = target_host(obj, id)?;
    let target_port = port_field(obj, "target_lan_port", id)?;
    let wol = wol_target(obj, id)?;
    Ok(L4Route {
        id,
        listen_port,
        target_host,
        target_port,
        wol,
    })
}

/// Whether `s` is a DNS host name: dot-separated labels of 1 to 63 letters, digits and hyphens,
/// no label starting or ending with a hyphen, 253 characters at most, and a last label that is
/// not all digits (so `192.168.1.300` is not taken for a name). With `lowercase_only`,
/// uppercase letters are refused.
pub fn is_valid_hostname(s: &str, lowercase_only: bool) -> bool {
    if s.is_empty() || s.len() > 253 {
        return false;
    }
    let labels_ok = s.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label.bytes().all(|b| {
                b.is_ascii_digit()
                    || b == b'-'
                    || b.is_ascii_lowercase()
                    || (!lowercase_only && b.is_ascii_uppercase())
            })
    });
    let last_numeric = s
        .rsplit('.')
        .next()
        .is_some_and(|l| l.bytes().all(|b| b.is_ascii_digit()));
    labels_ok && !last_numeric
}

/// Whether `s` is a usable LAN target: a dotted IPv4 address (not `0.0.0.0`, broadcast or
/// multicast) or a host name (any case).
pub fn is_valid_target_host(s: &str) -> bool {
    if let Ok(ip) = s.parse::<Ipv4Addr>() {
        return !ip.is_unspecified() && !ip.is_broadcast() && !ip.is_multicast();
    }
    is_valid_hostname(s, false)
}

pub use gatelet_agent_api::mac::normalize as normalize_mac;

/// Whether a normalised MAC names one device: not all zero, not broadcast, group bit clear.
fn is_unicast_mac(mac: &str) -> bool {
    let first = u8::from_str_radix(&mac[..2], 16).unwrap_or(1);
    mac != "00:00:00:00:00:00" && first & 1 == 0
}

/// The canonical hash of a config document (protocol §4), `sha256:` + 64 lowercase hex.
///
/// The document is schema-parsed: unknown keys are dropped (at the top level `config_hash`
/// itself too), route defaults are filled in (`protocol: "http"` on HTTP routes, `wol_enabled:
/// false` on HTTP and L4 routes, `[]` for an egress route's missing arrays), members whose value
/// is null are dropped, object keys are sorted, every array is sorted by its elements'
/// canonical text, there is no whitespace and integers have no decimal point. A missing
/// top-level array stays missing: the protocol's vector `{}` hashes the text `{}`.
///
/// Diagnostic only; see [`Validated::hash_mismatch`].
pub fn canonical_hash(doc: &Value) -> String {
    let text = canonical_text(&schema_parse(doc));
    let digest = Sha256::digest(text.as_bytes());
    let mut out = String::with_capacity(HASH_PREFIX.len() + 64);
    out.push_str(HASH_PREFIX);
    for b in digest {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

fn schema_parse(doc: &Value) -> Value {
    let Some(obj) = doc.as_object() else {
        return doc.clone();
    };
    let mut out = Map::new();
    for key in TOP_KEYS {
        let Some(v) = obj.get(*key) else { continue };
        let v = match (*key, v) {
            ("routes", Value::Array(a)) => Value::Array(
                a.iter()
                    .map(|r| schema_route(r, HTTP_HASH_KEYS, &[("protocol", "http".into())], &[]))
                    .collect(),
            ),
            ("l4_routes", Value::Array(a)) => Value::Array(
                a.iter()
                    .map(|r| schema_route(r, L4_KEYS, &[], &[]))
                    .collect(),
            ),
            ("egress_routes", Value::Array(a)) => Value::Array(
                a.iter()
                    .map(|r| schema_route(r, EGRESS_KEYS, &[], EGRESS_ARRAY_KEYS))
                    .collect(),
            ),
            _ => v.clone(),
        };
        out.insert((*key).to_string(), v);
    }
    Value::Object(out)
}

fn schema_route(
    route: &Value,
    keys: &[&str],
    defaults: &[(&str, Value)],
    array_keys: &[&str],
) -> Value {
    let Some(obj) = route.as_object() else {
        return route.clone();
    };
    let mut out = Map::new();
    for key in keys {
        if let Some(v) = obj.get(*key).filter(|v| !v.is_null()) {
            out.insert((*key).to_string(), v.clone());
        }
    }
    for (key, default) in defaults {
        out.entry(*key).or_insert_with(|| default.clone());
    }
    if keys.contains(&"wol_enabled") {
        out.entry("wol_enabled").or_insert(Value::Bool(false));
    }
    for key in array_keys {
        out.entry(*key).or_insert_with(|| Value::Array(Vec::new()));
    }
    Value::Object(out)
}

/// The canonical text of a JSON value (see [`canonical_hash`]).
pub fn canonical_text(v: &Value) -> String {
    match v {
        Value::Object(m) => {
            let mut members: Vec<(&String, &Value)> =
                m.iter().filter(|(_, v)| !v.is_null()).collect();
            members.sort_by(|a, b| a.0.cmp(b.0));
            let inner: Vec<String> = members
                .into_iter()
                .map(|(k, v)| format!("{}:{}", json_string(k), canonical_text(v)))
                .collect();
            format!("{{{}}}", inner.join(","))
        }
        Value::Array(a) => {
            let mut items: Vec<String> = a.iter().map(canonical_text).collect();
            items.sort();
            format!("[{}]", items.join(","))
        }
        Value::Number(n) => match n.as_f64() {
            // An integral float (5000.0) prints as the integer, as JavaScript does.
            Some(f) if n.is_f64() && f.fract() == 0.0 && f.abs() < 9.007_199_254_740_992e15 => {
                format!("{}", f as i64)
            }
            _ => n.to_string(),
        },
        Value::String(s) => json_string(s),
        Value::Bool(b) => b.to_string(),
        Value::Null => "null".into(),
    }
}

fn json_string(s: &str) -> String {
    // serde_json never fails to serialise a string.
    serde_json::to_string(s).unwrap_or_default()
}

/// What identifies a version of the routes file without reading it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Fingerprint {
    len: u64,
    mtime: Option<SystemTime>,
    ctime: (i64, i64),
    ino: u64,
}

impl Fingerprint {
    fn of(meta: &std::fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt;
        Fingerprint {
            len: meta.len(),
            mtime: meta.modified().ok(),
            ctime: (meta.ctime(), meta.ctime_nsec()),
            ino: meta.ino(),
        }
    }
}

/// Tells when the standalone routes file changed, by polling: metadata (size, mtime, ctime,
/// inode) first, so an unchanged file costs one `stat`, then a SHA-256 of the content to confirm,
/// so a `touch` or an identical rewrite is not a change.
#[derive(Debug)]
pub struct RoutesFileWatcher {
    path: PathBuf,
    seen: Option<Fingerprint>,
    content: Option<[u8; 32]>,
    read_at: Option<SystemTime>,
}

impl RoutesFileWatcher {
    /// A watcher that has seen nothing yet: its first [`changed`](Self::changed) on a readable
    /// file returns true.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        RoutesFileWatcher {
            path: path.into(),
            seen: None,
            content: None,
            read_at: None,
        }
    }

    /// The watched file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// True when the file's content differs from what this watcher saw last time. A missing or
    /// unreadable file is not a change (the last good config stays); when it comes back with
    /// the same content, that is not a change either.
    pub fn changed(&mut self) -> bool {
        let Ok(meta) = std::fs::metadata(&self.path) else {
            self.seen = None;
            return false;
        };
        let fp = Fingerprint::of(&meta);
        if self.seen.as_ref() == Some(&fp) && !self.racy(&fp) {
            return false;
        }
        let Ok(bytes) = read_bounded(&self.path) else {
            self.seen = None;
            return false;
        };
        let digest: [u8; 32] = Sha256::digest(&bytes).into();
        self.seen = Some(fp);
        self.read_at = Some(SystemTime::now());
        if self.content == Some(digest) {
            return false;
        }
        self.content = Some(digest);
        true
    }

    /// Whether the file was modified so close to our last read that a same-size rewrite within
    /// the same timestamp tick could hide behind identical metadata.
    fn racy(&self, fp: &Fingerprint) -> bool {
        match (fp.mtime, self.read_at) {
            (Some(m), Some(r)) => match r.duration_since(m) {
                Ok(d) => d < RACY_WINDOW,
                Err(_) => true, // mtime in the future of our read: cannot be sure
            },
            _ => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fixture(name: &str) -> String {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data")
            .join(name);
        std::fs::read_to_string(&path).unwrap()
    }

    const FIXTURES: &[&str] = &[
        "gateway-config.json",
        "gateway-config-empty.json",
        "gateway-config-after-change.json",
        "gateway-config-backend-https.json",
        "gateway-config-with-egress.json",
    ];

    fn good_http() -> Value {
        json!({"id": 1, "domain": "nas.home.lan", "target_kind": "gateway",
               "target_lan_host": "192.168.1.10", "target_lan_port": 5000,
               "protocol": "http", "wol_enabled": true, "wol_mac": "AA:BB:CC:DD:EE:01"})
    }

    fn good_l4() -> Value {
        json!({"id": 2, "listen_port": 2222, "target_lan_host": "192.168.1.20",
               "target_lan_port": 22, "wol_enabled": false})
    }

    fn doc_with(http: Vec<Value>, l4: Vec<Value>) -> Value {
        json!({"config_hash_version": 2, "peer_id": 1, "routes": http, "l4_routes": l4,
               "egress_routes": [], "config_hash": "sha256:abc"})
    }

    #[test]
    fn canonical_hash_of_empty_object_matches_protocol_vector() {
        assert_eq!(
            canonical_hash(&json!({})),
            "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
        );
    }

    #[test]
    fn fixture_hashes_match_the_documented_schema() {
        for name in FIXTURES {
            let doc: Value = serde_json::from_str(&fixture(name)).unwrap();
            let v = validate_document(&doc, ReservedPorts::default()).unwrap();
            assert_eq!(
                Some(v.canonical_hash.clone()),
                v.config_hash,
                "{name}: canonical text {}",
                canonical_text(&schema_parse(&doc))
            );
            assert_eq!(v.hash_mismatch(), None, "{name}");
        }
    }

    #[test]
    fn canonical_hash_ignores_order_whitespace_unknown_keys_and_nulls() {
        let a = json!({"routes": [good_http(), json!({"id": 9, "domain": "b.lan",
            "target_lan_host": "h", "target_lan_port": 80})], "l4_routes": [good_l4()]});
        let b: Value = serde_json::from_str(
            r#"{ "l4_routes": [ {"target_lan_port": 22.0, "id": 2, "listen_port": 2222,
                 "target_lan_host": "192.168.1.20", "future": {"x": 1}, "wol_mac": null} ],
                 "config_hash": "sha256:whatever", "new_top_level": true,
                 "routes": [ {"id": 9, "domain": "b.lan", "target_lan_host": "h",
                   "target_lan_port": 80, "protocol": "http", "wol_enabled": false},
                   {"wol_mac": "AA:BB:CC:DD:EE:01", "wol_enabled": true, "protocol": "http",
                    "target_lan_port": 5000, "target_lan_host": "192.168.1.10",
                    "target_kind": "gateway", "domain": "nas.home.lan", "id": 1} ] }"#,
        )
        .unwrap();
        assert_eq!(canonical_hash(&a), canonical_hash(&b));
        let c = json!({"routes": [good_http()], "l4_routes": [good_l4()]});
        assert_ne!(
            canonical_hash(&a),
            canonical_hash(&c),
            "a dropped route changes the hash"
        );
    }

    #[test]
    fn canonical_text_fills_route_defaults_and_keeps_missing_top_level_arrays_missing() {
        let doc = json!({"routes": [{"id": 1}], "egress_routes": [{"id": 3}]});
        assert_eq!(
            canonical_text(&schema_parse(&doc)),
            r#"{"egress_routes":[{"allowed_source_ips":[],"id":3,"near_peers":[]}],"routes":[{"id":1,"protocol":"http","wol_enabled":false}]}"#
        );
    }

    #[test]
    fn server_hash_is_kept_verbatim_and_a_mismatch_is_only_a_warning() {
        let v = validate_document(
            &doc_with(vec![good_http()], vec![]),
            ReservedPorts::default(),
        )
        .unwrap();
        assert_eq!(v.config_hash.as_deref(), Some("sha256:abc"));
        assert_eq!(v.agent.config_hash.as_deref(), Some("sha256:abc"));
        assert!(v.hash_mismatch().unwrap().contains("sha256:abc"));
        assert_eq!(v.applied_count(), 1);
    }

    #[test]
    fn fixture_document_translates_to_the_agent_config() {
        let v = parse_document(&fixture("gateway-config.json"), ReservedPorts::default()).unwrap();
        assert!(v.rejected.is_empty(), "{:?}", v.rejected);
        assert_eq!(v.route_count, 4);
        assert_eq!(
            v.agent.http_routes,
            vec![HttpRoute {
                id: 1,
                domain: "nas.testbed.lan".into(),
                target_host: "192.168.1.10".into(),
                target_port: 5000,
                backend_https: false,
                wol: Some(WolTarget {
                    mac: "aa:bb:cc:dd:ee:01".into(),
                    secureon: None
                }),
            }]
        );
        let ports: Vec<u16> = v.agent.l4_routes.iter().map(|r| r.listen_port).collect();
        assert_eq!(ports, vec![2222, 51900, 13389]);
        let https = parse_document(
            &fixture("gateway-config-backend-https.json"),
            ReservedPorts::default(),
        )
        .unwrap();
        assert!(https.agent.http_routes[0].backend_https);
    }

    #[test]
    fn unknown_fields_in_server_documents_are_ignored() {
        let mut http = good_http();
        http["new_feature"] = json!({"a": 1});
        let mut doc = doc_with(vec![http], vec![good_l4()]);
        doc["brand_new"] = json!([1, 2]);
        let v = validate_document(&doc, ReservedPorts::default()).unwrap();
        assert!(v.rejected.is_empty());
        assert_eq!(v.applied_count(), 2);
    }

    /// Each case: (is_http, route, expected reason fragment, expected rejected id).
    fn rejection_cases() -> Vec<(bool, Value, &'static str, Option<u64>)> {
        let mut cases = Vec::new();
        let http = |f: &dyn Fn(&mut Value)| {
            let mut r = good_http();
            r["id"] = json!(50);
            r["domain"] = json!("other.home.lan");
            f(&mut r);
            r
        };
        let l4 = |f: &dyn Fn(&mut Value)| {
            let mut r = good_l4();
            r["id"] = json!(60);
            r["listen_port"] = json!(3333);
            f(&mut r);
            r
        };
        cases.push((
            true,
            json!("nope"),
            "a route must be a JSON object, got a string",
            None,
        ));
        cases.push((
            true,
            http(&|r| {
                r.as_object_mut().unwrap().remove("id");
            }),
            "id is missing",
            None,
        ));
        cases.push((
            true,
            http(&|r| r["id"] = json!("50")),
            "id must be a positive integer, got a string",
            None,
        ));
        cases.push((
            true,
            http(&|r| r["id"] = json!(0)),
            "id 0 is not a positive integer",
            None,
        ));
        cases.push((
            true,
            http(&|r| r["id"] = json!(-3)),
            "id -3 is not a positive integer",
            None,
        ));
        cases.push((
            true,
            http(&|r| r["domain"] = json!("Other.home.lan")),
            "domain \"Other.home.lan\" is not a valid lowercase host name",
            Some(50),
        ));
        cases.push((
            true,
            http(&|r| r["domain"] = json!("bad_name.lan")),
            "not a valid lowercase host name",
            Some(50),
        ));
        cases.push((
            true,
            http(&|r| r["domain"] = json!("-a.lan")),
            "not a valid lowercase host name",
            Some(50),
        ));
        cases.push((
            true,
            http(&|r| r["domain"] = json!(null)),
            "domain is missing",
            Some(50),
        ));
        cases.push((
            true,
            http(&|r| r["domain"] = json!("nas.home.lan")),
            "domain nas.home.lan is already served by HTTP route 1",
            Some(50),
        ));
        cases.push((
            true,
            http(&|r| r["id"] = json!(1)),
            "duplicate id 1: another HTTP route already has it",
            Some(1),
        ));
        cases.push((
            true,
            http(&|r| r["target_lan_host"] = json!(null)),
            "target_lan_host is null: the route has no LAN target on this gateway",
            Some(50),
        ));
        cases.push((
            true,
            http(&|r| r["target_lan_host"] = json!("192.168.1.300")),
            "target_lan_host \"192.168.1.300\" is not an IPv4 address or a host name",
            Some(50),
        ));
        cases.push((
            true,
            http(&|r| r["target_lan_host"] = json!("nas:80")),
            "is not an IPv4 address or a host name",
            Some(50),
        ));
        cases.push((
            true,
            http(&|r| r["target_lan_host"] = json!("0.0.0.0")),
            "is not an IPv4 address or a host name",
            Some(50),
        ));
        cases.push((
            true,
            http(&|r| r["target_lan_host"] = json!(42)),
            "target_lan_host must be an IPv4 address or host name, got a number",
            Some(50),
        ));
        cases.push((
            true,
            http(&|r| r["target_lan_port"] = json!(0)),
            "target_lan_port 0 is not a port from 1 to 65535",
            Some(50),
        ));
        cases.push((
            true,
            http(&|r| r["target_lan_port"] = json!(65536)),
            "target_lan_port 65536 is not a port from 1 to 65535",
            Some(50),
        ));
        cases.push((
            true,
            http(&|r| r["target_lan_port"] = json!(null)),
            "target_lan_port is missing",
            Some(50),
        ));
        cases.push((
            true,
            http(&|r| r["target_kind"] = json!("direct")),
            "target_kind \"direct\" is not \"gateway\"",
            Some(50),
        ));
        cases.push((
            true,
            http(&|r| r["backend_https"] = json!("yes")),
            "backend_https must be true or false, got a string",
            Some(50),
        ));
        cases.push((
            true,
            http(&|r| r["wol_mac"] = json!("AA:BB:CC:DD:EE")),
            "wol_enabled is true but wol_mac \"AA:BB:CC:DD:EE\" is not a MAC address",
            Some(50),
        ));
        cases.push((
            true,
            http(&|r| {
                r.as_object_mut().unwrap().remove("wol_mac");
            }),
            "wol_enabled is true but wol_mac is missing",
            Some(50),
        ));
        cases.push((
            true,
            http(&|r| r["wol_mac"] = json!("ff:ff:ff:ff:ff:ff")),
            "wol_mac ff:ff:ff:ff:ff:ff is not a single device's address",
            Some(50),
        ));
        cases.push((
            true,
            http(&|r| r["wol_enabled"] = json!(1)),
            "wol_enabled must be true or false, got a number",
            Some(50),
        ));
        cases.push((
            false,
            l4(&|r| r["listen_port"] = json!(8080)),
            "listen_port 8080 collides with GC_PROXY_PORT (the HTTP proxy)",
            Some(60),
        ));
        cases.push((
            false,
            l4(&|r| r["listen_port"] = json!(9876)),
            "listen_port 9876 collides with GC_API_PORT (the management API)",
            Some(60),
        ));
        cases.push((
            false,
            l4(&|r| {
                r["listen_port"] = json!(2222);
                r["target_lan_port"] = json!(2223);
            }),
            "listen_port 2222 is already used by L4 route 2",
            Some(60),
        ));
        cases.push((
            false,
            l4(&|r| r["id"] = json!(2)),
            "duplicate id 2: another L4 route already has it",
            Some(2),
        ));
        cases.push((
            false,
            l4(&|r| r["listen_port"] = json!(0)),
            "listen_port 0 is not a port from 1 to 65535",
            Some(60),
        ));
        cases.push((
            false,
            l4(&|r| r["listen_port"] = json!("3333")),
            "listen_port must be a port from 1 to 65535, got a string",
            Some(60),
        ));
        cases.push((
            false,
            l4(&|r| r["target_lan_host"] = json!(null)),
            "target_lan_host is null",
            Some(60),
        ));
        cases.push((
            false,
            l4(&|r| r["target_lan_port"] = json!(70000)),
            "target_lan_port 70000 is not a port",
            Some(60),
        ));
        cases.push((
            false,
            l4(&|r| {
                r["wol_enabled"] = json!(true);
                r["wol_mac"] = json!("zz:bb:cc:dd:ee:ff");
            }),
            "wol_mac \"zz:bb:cc:dd:ee:ff\" is not a MAC address",
            Some(60),
        ));
        cases
    }

    #[test]
    fn each_bad_route_is_rejected_alone_with_its_reason() {
        for (is_http, bad, reason, id) in rejection_cases() {
            let (http, l4) = if is_http {
                (vec![good_http(), bad.clone()], vec![good_l4()])
            } else {
                (vec![good_http()], vec![good_l4(), bad.clone()])
            };
            let v = validate_document(&doc_with(http, l4), ReservedPorts::default())
                .unwrap_or_else(|e| panic!("{bad}: whole document refused: {e}"));
            assert_eq!(v.rejected.len(), 1, "{bad}: {:?}", v.rejected);
            let r = &v.rejected[0];
            assert!(
                r.reason.contains(reason),
                "{bad}: got {:?}, want {reason:?}",
                r.reason
            );
            assert_eq!(r.kind, if is_http { KIND_HTTP } else { KIND_L4 }, "{bad}");
            assert_eq!(r.id, id, "{bad}");
            // The good routes still apply, untouched.
            assert_eq!(v.agent.http_routes.len(), 1, "{bad}");
            assert_eq!(v.agent.http_routes[0].id, 1, "{bad}");
            assert_eq!(v.agent.http_routes[0].domain, "nas.home.lan", "{bad}");
            assert_eq!(v.agent.l4_routes.len(), 1, "{bad}");
            assert_eq!(v.agent.l4_routes[0].id, 2, "{bad}");
            assert_eq!(v.agent.l4_routes[0].listen_port, 2222, "{bad}");
        }
    }

    #[test]
    fn an_l4_twin_with_the_same_port_and_target_is_served_once_not_rejected() {
        let mut twin = good_l4();
        twin["id"] = json!(9);
        let v = validate_document(
            &doc_with(vec![], vec![good_l4(), twin]),
            ReservedPorts::default(),
        )
        .unwrap();
        assert!(v.rejected.is_empty(), "{:?}", v.rejected);
        assert_eq!(v.agent.l4_routes.len(), 1);
        assert_eq!(v.agent.l4_routes[0].id, 2);
        assert_eq!(v.unsupported.len(), 1);
        assert_eq!(v.unsupported[0].id, Some(9));
        assert!(v.unsupported[0]
            .reason
            .starts_with("listen_port 2222 is served by L4 route 2 with the same target"));
    }

    #[test]
    fn example_routes_file_loads_cleanly() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/routes-standalone.json");
        let (v, _) = load_routes_file(&path, ReservedPorts::default()).unwrap();
        assert!(v.rejected.is_empty(), "{:?}", v.rejected);
        assert_eq!(v.agent.http_routes.len(), 2);
        assert_eq!(v.agent.l4_routes.len(), 2);
        assert!(v.agent.http_routes[1].backend_https);
        assert_eq!(
            v.agent.http_routes[0].wol.as_ref().map(|w| w.mac.as_str()),
            Some("00:11:32:aa:bb:cc")
        );
    }

    #[test]
    fn routes_to_the_boxs_own_loopback_services_are_rejected_alone() {
        let ports = ReservedPorts {
            proxy: 8080,
            api: 9876,
            diag: Some(8088),
        };
        // (host, port, rejected)
        let table = [
            ("127.0.0.1", 8088, true),
            ("127.3.2.1", 8088, true),
            ("127.0.0.1", 9876, true),
            ("localhost", 8088, true),
            ("LocalHost", 9876, true),
            ("api.localhost", 8088, true),
            ("127.0.0.1", 8123, false), // a service of the box itself, e.g. Home Assistant
            ("192.168.1.10", 8088, false),
            ("notlocalhost", 8088, false),
        ];
        for (host, port, refused) in table {
            let mut http = good_http();
            http["target_lan_host"] = json!(host);
            http["target_lan_port"] = json!(port);
            let mut l4 = good_l4();
            l4["target_lan_host"] = json!(host);
            l4["target_lan_port"] = json!(port);
            let mut fine = good_http();
            fine["id"] = json!(77);
            fine["domain"] = json!("fine.example.com");
            let v = validate_document(&doc_with(vec![http, fine], vec![l4]), ports).unwrap();
            let reasons: Vec<_> = v.rejected.iter().map(|r| r.reason.as_str()).collect();
            if refused {
                assert_eq!(reasons.len(), 2, "{host}:{port}: {reasons:?}");
                assert!(reasons
                    .iter()
                    .all(|r| r.contains("trusts loopback callers")));
                assert_eq!(v.agent.http_routes.len(), 1, "the other route stays");
            } else {
                assert!(reasons.is_empty(), "{host}:{port}: {reasons:?}");
            }
        }
        // A page on a LAN address asks loopback callers to log in too: nothing to protect.
        let lan_page = ReservedPorts {
            diag: None,
            ..ports
        };
        assert_eq!(lan_page.own_service("127.0.0.1", 8088), None);
    }

    #[test]
    fn reserved_ports_follow_the_gateway_env() {
        let ports = ReservedPorts {
            proxy: 2222,
            api: 9999,
            diag: None,
        };
        let err = validate_document(&doc_with(vec![], vec![good_l4()]), ports).unwrap_err();
        match err {
            ConfigError::AllRoutesRejected { validated, .. } => {
                assert!(validated.rejected[0]
                    .reason
                    .contains("collides with GC_PROXY_PORT"))
            }
            e => panic!("unexpected {e}"),
        }
    }

    #[test]
    fn a_document_whose_routes_are_all_rejected_is_bad_as_a_whole() {
        let mut bad = good_http();
        bad["target_lan_host"] = json!(null);
        let mut bad_l4 = good_l4();
        bad_l4["listen_port"] = json!(8080);
        let err = validate_document(&doc_with(vec![bad], vec![bad_l4]), ReservedPorts::default())
            .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("all 2 routes were rejected"), "{text}");
        assert!(text.contains("keeping the last good config"), "{text}");
        match err {
            ConfigError::AllRoutesRejected { validated, .. } => {
                assert_eq!(validated.rejected.len(), 2);
                assert_eq!(validated.config_hash.as_deref(), Some("sha256:abc"));
            }
            e => panic!("unexpected {e}"),
        }
    }

    #[test]
    fn a_document_without_routes_is_a_valid_empty_config() {
        let v = parse_document(
            &fixture("gateway-config-empty.json"),
            ReservedPorts::default(),
        )
        .unwrap();
        assert_eq!(v.applied_count(), 0);
        assert_eq!(v.route_count, 0);
        let v = validate_document(&json!({"routes": null}), ReservedPorts::default()).unwrap();
        assert_eq!(v.applied_count(), 0);
        assert_eq!(v.config_hash, None);
    }

    #[test]
    fn egress_routes_are_kept_and_listed_as_unsupported_not_rejected() {
        let v = parse_document(
            &fixture("gateway-config-with-egress.json"),
            ReservedPorts::default(),
        )
        .unwrap();
        assert!(v.rejected.is_empty());
        assert_eq!(v.unsupported.len(), 1);
        assert_eq!(v.unsupported[0].kind, KIND_EGRESS);
        assert_eq!(v.unsupported[0].id, Some(1));
        assert_eq!(v.unsupported[0].reason, EGRESS_UNSUPPORTED);
        assert_eq!(v.egress[0].lan_listen_port, Some(14450));
        assert_eq!(
            v.egress[0].allowed_source_ips,
            vec!["192.168.1.60/32".to_string()]
        );
        assert_eq!(v.applied_count(), 4);
        assert_eq!(v.route_count, 5);
        // An egress-only document is valid (nothing the agent serves was rejected).
        let only = json!({"egress_routes": [{"id": 7}]});
        let v = validate_document(&only, ReservedPorts::default()).unwrap();
        assert_eq!(v.unsupported.len(), 1);
    }

    #[test]
    fn whole_document_errors_only_for_non_objects_and_non_array_route_lists() {
        let p = ReservedPorts::default();
        let e = parse_document("[1,2]", p).unwrap_err();
        assert_eq!(
            e.to_string(),
            "server config document: the config document must be a JSON object, got an array"
        );
        let e = validate_document(&json!({"l4_routes": {"id": 1}}), p).unwrap_err();
        assert_eq!(
            e.to_string(),
            "server config document: `l4_routes` must be an array of routes, got an object"
        );
        let e = parse_document("{\"routes\": [", p).unwrap_err();
        assert!(matches!(e, ConfigError::Json { line: 1, .. }), "{e}");
        assert!(validate_document(&json!({"config_hash": 5, "peer_id": "x"}), p).is_ok());
    }

    #[test]
    fn host_name_rules() {
        assert!(is_valid_hostname("nas.testbed.lan", true));
        assert!(is_valid_hostname("a-1.b", true));
        assert!(is_valid_hostname("localhost", true));
        assert!(!is_valid_hostname("NAS.lan", true));
        assert!(is_valid_hostname("NAS.lan", false));
        assert!(!is_valid_hostname("a..b", true));
        assert!(!is_valid_hostname("a.b.", true));
        assert!(!is_valid_hostname(&"a".repeat(64), true));
        assert!(!is_valid_hostname("*.example.com", true));
        assert!(!is_valid_hostname("10.0.0.1", true));
        assert!(is_valid_target_host("10.0.0.1"));
        assert!(is_valid_target_host("printer"));
        assert!(!is_valid_target_host("255.255.255.255"));
        assert!(!is_valid_target_host("224.0.0.1"));
        assert!(!is_valid_target_host("fe80::1"));
    }

    fn temp_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "gatelet-config-{tag}-{}-{}",
            std::process::id(),
            crate::state::now_ms()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn routes_file_hash_is_its_canonical_hash_and_typos_are_caught() {
        let dir = temp_dir("file");
        let path = dir.join("routes.json");
        let text = r#"{"routes":[{"id":1,"domain":"nas.lan","target_lan_host":"10.0.0.5",
            "target_lan_port":80}],"l4_routes":[{"id":2,"listen_port":2222,
            "target_lan_host":"10.0.0.6","target_lan_port":22,"tagret":"x"}]}"#;
        std::fs::write(&path, text).unwrap();
        let (v, raw) = load_routes_file(&path, ReservedPorts::default()).unwrap();
        assert_eq!(raw, text);
        let doc: Value = serde_json::from_str(text).unwrap();
        assert_eq!(
            v.config_hash.as_deref(),
            Some(canonical_hash(&doc).as_str())
        );
        assert_eq!(v.agent.config_hash, v.config_hash);
        assert_eq!(v.hash_mismatch(), None);
        assert_eq!(v.applied_count(), 1);
        assert_eq!(v.rejected.len(), 1);
        assert!(
            v.rejected[0].reason.starts_with("unknown field `tagret`"),
            "{:?}",
            v.rejected
        );

        std::fs::write(&path, r#"{"route":[]}"#).unwrap();
        let e = load_routes_file(&path, ReservedPorts::default()).unwrap_err();
        assert!(
            e.to_string().contains("unknown top-level key `route`"),
            "{e}"
        );
        let missing = dir.join("absent.json");
        let e = load_routes_file(&missing, ReservedPorts::default()).unwrap_err();
        assert!(e.to_string().starts_with("cannot read routes file"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn routes_file_watcher_reports_content_changes_only() {
        let dir = temp_dir("watch");
        let path = dir.join("routes.json");
        let mut w = RoutesFileWatcher::new(&path);
        assert!(!w.changed(), "a missing file is not a change");
        std::fs::write(&path, "{\"routes\":[]}").unwrap();
        assert!(w.changed(), "first sight of the file");
        assert!(!w.changed(), "nothing happened");
        std::fs::write(&path, "{\"routes\":[]}").unwrap();
        assert!(!w.changed(), "identical rewrite");
        // Same size, different content, immediately: caught by the racy-window re-hash.
        std::fs::write(&path, "{\"routes\":[ ]").unwrap();
        assert!(w.changed(), "same-size rewrite");
        std::fs::write(&path, "{\"l4_routes\":[]}").unwrap();
        assert!(w.changed(), "edit");
        std::fs::remove_file(&path).unwrap();
        assert!(!w.changed(), "deletion keeps the last config");
        std::fs::write(&path, "{\"l4_routes\":[]}").unwrap();
        assert!(!w.changed(), "restored with the same content");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
