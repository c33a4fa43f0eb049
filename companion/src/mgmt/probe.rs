//! `POST /api/probe`: a TCP connect to a LAN target, limited to the gateway's own subnets.
//!
//! The target is resolved here (an address literal, or a name resolved with a capped wait)
//! and every address it resolves to must be in scope; the agent then probes the address we
//! checked, not the name, so a second lookup cannot send it elsewhere.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use gatelet_agent_api::control::{ProbeRequest, Request, Response};
use serde_json::{json, Value};

use super::{in_scope, MgmtContext, Reply};

/// The agent's connect timeout for a probe.
pub const PROBE_CONNECT_TIMEOUT: Duration = Duration::from_millis(2_500);
/// The control-socket wait for a probe's answer (the server waits 5 s in all).
pub const PROBE_SOCKET_TIMEOUT: Duration = Duration::from_millis(3_000);
/// Longest wait for a target name to resolve.
pub const PROBE_RESOLVE_TIMEOUT: Duration = Duration::from_millis(1_000);
/// Port probed when neither the request nor `GC_LAN_PROBE_TARGET` names one.
pub const DEFAULT_PROBE_PORT: u16 = 80;
/// Name lookups that may still be running at once (a stuck resolver cannot pile up threads).
pub const MAX_PENDING_LOOKUPS: usize = 4;

static PENDING_LOOKUPS: AtomicUsize = AtomicUsize::new(0);

/// Handles one probe request (authorised; `body` is the parsed JSON, if any).
pub fn handle(ctx: &MgmtContext, body: Option<&Value>) -> Reply {
    let started = Instant::now();
    let echo = body.cloned().unwrap_or(Value::Null);
    let body_host = body
        .and_then(|b| b.get("host"))
        .and_then(Value::as_str)
        .filter(|h| !h.trim().is_empty());
    let body_port = match body.and_then(|b| b.get("port")) {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_u64().and_then(|p| u16::try_from(p).ok()) {
            Some(p) if p > 0 => Some(p),
            _ => return Reply::error(400, "invalid_port"),
        },
    };
    let (host, port) = match (body_host, &ctx.lan_probe_target) {
        (Some(h), _) => (h.trim().to_owned(), body_port.unwrap_or(DEFAULT_PROBE_PORT)),
        (None, Some((h, p))) => (h.clone(), body_port.or(*p).unwrap_or(DEFAULT_PROBE_PORT)),
        (None, None) => return Reply::error(400, "no_probe_target"),
    };
    let target = json!({"host": host, "port": port});
    let answer = |result: Value, rejected: Option<&str>| {
        let mut v = json!({
            "gateway_timestamp": (ctx.clock)(),
            "probe_latency_ms": started.elapsed().as_millis() as u64,
            "probe_result": result,
            "probed_target": target,
            "echo": echo,
        });
        if let Some(r) = rejected {
            v["rejected"] = json!(r);
        }
        Reply::json(200, &v)
    };

    let addrs = match resolve(&host, port) {
        Some(a) if !a.is_empty() => a,
        _ => return answer(Value::Null, Some("unresolvable")),
    };
    let subnets = (ctx.lan_subnets)();
    if !addrs.iter().all(|a| in_scope(a.ip(), &subnets)) {
        tracing::warn!(%host, port, "probe refused: target outside the gateway's LAN");
        return answer(Value::Null, Some("out_of_lan_scope"));
    }
    let ip = addrs[0].ip();
    let req = Request::Probe(ProbeRequest {
        host: ip.to_string(),
        port,
        timeout_ms: PROBE_CONNECT_TIMEOUT.as_millis() as u64,
    });
    let result = match ctx.agent.request(&req, PROBE_SOCKET_TIMEOUT) {
        Ok(Response::Probed(p)) => json!({
            "reachable": p.reachable,
            "latency_ms": p.reachable.then_some(p.latency_ms),
            "error": p.error,
        }),
        Ok(Response::Error { message }) => {
            json!({"reachable": false, "latency_ms": null, "error": format!("agent: {message}")})
        }
        Ok(_) => json!({"reachable": false, "latency_ms": null, "error": "agent_protocol_error"}),
        Err(e) => {
            tracing::warn!(error = %e, "probe: agent call failed");
            json!({"reachable": false, "latency_ms": null, "error": "agent_unreachable"})
        }
    };
    answer(result, None)
}

/// The target's addresses: a literal at once, a name through the system resolver with at
/// most [`PROBE_RESOLVE_TIMEOUT`] of waiting. None when it does not resolve in time.
fn resolve(host: &str, port: u16) -> Option<Vec<SocketAddr>> {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return Some(vec![SocketAddr::new(ip, port)]);
    }
    if PENDING_LOOKUPS.fetch_add(1, Ordering::SeqCst) >= MAX_PENDING_LOOKUPS {
        PENDING_LOOKUPS.fetch_sub(1, Ordering::SeqCst);
        return None;
    }
    let (tx, rx) = mpsc::channel();
    let name = host.to_owned();
    let spawned = std::thread::Builder::new()
        .name("probe-lookup".into())
        .spawn(move || {
            let r = (name.as_str(), port)
                .to_socket_addrs()
                .map(|it| it.collect::<Vec<_>>());
            PENDING_LOOKUPS.fetch_sub(1, Ordering::SeqCst);
            let _ = tx.send(r);
        });
    if spawned.is_err() {
        PENDING_LOOKUPS.fetch_sub(1, Ordering::SeqCst);
        return None;
    }
    rx.recv_timeout(PROBE_RESOLVE_TIMEOUT).ok()?.ok()
}
