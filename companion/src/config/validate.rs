//! Route-by-route validation of a config document: each HTTP, L4 and egress route checked
//! alone (a bad one is rejected with its reason, the others apply), duplicates resolved in
//! document order, and the whole document refused only as the module documentation says.

use std::collections::{HashMap, HashSet};

use gatelet_agent_api::control::{AgentConfig, HttpRoute, L4Route, WolTarget};
use serde_json::{Map, Value};

use super::fields::{
    egress_source, is_unicast_mac, is_valid_hostname, is_valid_target_host, normalize_mac,
};
use super::hash::canonical_hash;
use super::{
    ConfigError, EgressRoute, ReservedPorts, Validated, EGRESS_KEYS, EGRESS_MIN_PORT,
    HTTP_FILE_KEYS, KIND_EGRESS, KIND_HTTP, KIND_L4, L4_KEYS, TOP_KEYS,
};
use crate::state::RejectedRoute;

/// How strictly fields are checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Mode {
    /// Server payload: unknown fields ignored.
    Server,
    /// Our own routes file: unknown fields are errors.
    File,
}

pub(super) fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A route array of the document; empty for a missing or null key.
pub(super) fn route_array<'a>(
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

pub(super) fn validate(
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
        egress_routes: Vec::new(),
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
    let mut warnings = Vec::new();
    let mut ids: HashSet<u64> = HashSet::new();
    // LAN port -> egress route id
    let mut lan_ports: HashMap<u16, u64> = HashMap::new();
    for route in egress {
        if mode == Mode::File {
            if let Err((id, reason)) = unknown_fields(route, EGRESS_KEYS) {
                rejected.push(reject(KIND_EGRESS, id, reason));
                continue;
            }
        }
        if let Ok(e) = serde_json::from_value::<EgressRoute>(route.clone()) {
            kept.push(e);
        }
        let (r, skipped) = match egress_route(route) {
            Ok(ok) => ok,
            Err((id, reason)) => {
                rejected.push(reject(KIND_EGRESS, id, reason));
                continue;
            }
        };
        let port = r.lan_listen_port;
        let taken = if !ids.insert(r.id) {
            Some(format!(
                "duplicate id {}: another egress route already has it",
                r.id
            ))
        } else if port == ports.proxy {
            Some(format!(
                "lan_listen_port {port} collides with GC_PROXY_PORT (the HTTP proxy)"
            ))
        } else if port == ports.api {
            Some(format!(
                "lan_listen_port {port} collides with GC_API_PORT (the management API)"
            ))
        } else if let Some(&i) = listen.get(&port) {
            Some(format!(
                "lan_listen_port {port} is the listen port of L4 route {} (the egress \
                 listener binds every address)",
                agent.l4_routes[i].id
            ))
        } else {
            lan_ports.get(&port).map(|first| {
                format!("lan_listen_port {port} is already used by egress route {first}")
            })
        };
        if let Some(reason) = taken {
            rejected.push(reject(KIND_EGRESS, Some(r.id), reason));
            continue;
        }
        for reason in skipped {
            warnings.push(reject(KIND_EGRESS, Some(r.id), reason));
        }
        lan_ports.insert(port, r.id);
        agent.egress_routes.push(r);
    }

    let validated = Validated {
        config_hash,
        canonical_hash: canonical,
        agent,
        rejected,
        unsupported,
        warnings,
        egress: kept,
        route_count: http.len() + l4.len() + egress.len(),
    };
    let served = http.len() + l4.len() + egress.len();
    if served > 0 && validated.applied_count() == 0 {
        return Err(ConfigError::AllRoutesRejected {
            origin: origin.to_string(),
            validated: Box::new(validated),
        });
    }
    Ok(validated)
}

pub(super) fn reject(kind: &str, id: Option<u64>, reason: String) -> RejectedRoute {
    RejectedRoute {
        kind: kind.to_string(),
        id,
        reason,
    }
}

/// A route-level failure: the id when readable, and the reason.
type RouteErr = (Option<u64>, String);

pub(super) fn unknown_fields(route: &Value, allowed: &[&str]) -> Result<(), RouteErr> {
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

pub(super) fn route_id(obj: &Map<String, Value>) -> Result<u64, RouteErr> {
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

pub(super) fn port_field(obj: &Map<String, Value>, key: &str, id: u64) -> Result<u16, RouteErr> {
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

pub(super) fn bool_field(obj: &Map<String, Value>, key: &str, id: u64) -> Result<bool, RouteErr> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(other) => Err((
            Some(id),
            format!("{key} must be true or false, got {}", type_name(other)),
        )),
    }
}

pub(super) fn target_host(obj: &Map<String, Value>, id: u64) -> Result<String, RouteErr> {
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

pub(super) fn wol_target(obj: &Map<String, Value>, id: u64) -> Result<Option<WolTarget>, RouteErr> {
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

pub(super) fn route_object(route: &Value) -> Result<&Map<String, Value>, RouteErr> {
    route.as_object().ok_or_else(|| {
        (
            None,
            format!("a route must be a JSON object, got {}", type_name(route)),
        )
    })
}

pub(super) fn http_route(route: &Value, mode: Mode) -> Result<HttpRoute, RouteErr> {
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

pub(super) fn l4_route(route: &Value, mode: Mode) -> Result<L4Route, RouteErr> {
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

/// An egress route, checked; with the reasons for the `allowed_source_ips` and `near_peers`
/// entries that were skipped.
pub(super) fn egress_route(
    route: &Value,
) -> Result<(gatelet_agent_api::control::EgressRoute, Vec<String>), RouteErr> {
    let obj = route_object(route)?;
    let id = route_id(obj)?;
    let ipv4 = |key: &str| -> Result<std::net::Ipv4Addr, RouteErr> {
        match obj.get(key) {
            None | Some(Value::Null) => Err((Some(id), format!("{key} is missing"))),
            Some(Value::String(s)) => s
                .parse()
                .map_err(|_| (Some(id), format!("{key} {s:?} is not an IPv4 address"))),
            Some(other) => Err((
                Some(id),
                format!("{key} must be an IPv4 address, got {}", type_name(other)),
            )),
        }
    };
    let vip = ipv4("vip_ip")?;
    let vip_prefix = match obj.get("vip_prefix") {
        None | Some(Value::Null) => 24,
        Some(Value::Number(n)) => match n.as_u64() {
            Some(p @ 1..=32) => p as u8,
            _ => {
                return Err((
                    Some(id),
                    format!("vip_prefix {n} is not a prefix length from 1 to 32"),
                ))
            }
        },
        Some(other) => {
            return Err((
                Some(id),
                format!("vip_prefix must be a number, got {}", type_name(other)),
            ))
        }
    };
    let lan_listen_port = port_field(obj, "lan_listen_port", id)?;
    if lan_listen_port < EGRESS_MIN_PORT {
        return Err((
            Some(id),
            format!(
                "lan_listen_port {lan_listen_port} is below {EGRESS_MIN_PORT} (the port-445 \
                 redirect leads to a high port)"
            ),
        ));
    }
    let target = ipv4("tunnel_target_host")?;
    let target_port = port_field(obj, "tunnel_target_port", id)?;
    let mut skipped = Vec::new();
    let mut strings = |key: &str| -> Result<Vec<String>, RouteErr> {
        match obj.get(key) {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(Value::Array(a)) => Ok(a
                .iter()
                .filter_map(|v| match v {
                    Value::String(s) => Some(s.clone()),
                    other => {
                        skipped.push(format!("{key} entry {other} skipped: not a string"));
                        None
                    }
                })
                .collect()),
            Some(other) => Err((
                Some(id),
                format!("{key} must be an array, got {}", type_name(other)),
            )),
        }
    };
    let sources = strings("allowed_source_ips")?;
    let peers = strings("near_peers")?;
    let mut allowed_sources = Vec::new();
    for s in sources {
        match egress_source(&s) {
            Ok(c) => {
                let c = c.to_string();
                if !allowed_sources.contains(&c) {
                    allowed_sources.push(c);
                }
            }
            Err(e) => skipped.push(format!("allowed_source_ips entry skipped: {e}")),
        }
    }
    let mut near_peers = Vec::new();
    for p in peers {
        match p.trim().parse::<std::net::Ipv4Addr>() {
            Ok(ip) if !ip.is_unspecified() && ip != vip => near_peers.push(ip.to_string()),
            _ => skipped.push(format!(
                "near_peers entry {p:?} skipped: not a peer's IPv4 address"
            )),
        }
    }
    Ok((
        gatelet_agent_api::control::EgressRoute {
            id,
            vip_ip: vip.to_string(),
            vip_prefix,
            lan_listen_port,
            target_host: target.to_string(),
            target_port,
            allowed_sources,
            near_peers,
        },
        skipped,
    ))
}
