//! `POST /api/wol`: validate, check the whitelist, hand the wake to the agent.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use gatelet_agent_api::control::{Request, Response, WakeRequest};
use serde_json::{json, Value};

use super::{in_scope, MgmtContext, Reply};
use crate::agent_link::LinkError;

/// Longest wait for a host to wake, in milliseconds (larger requests are capped).
pub const MAX_WAKE_TIMEOUT_MS: u64 = 300_000;
/// Wait when the request names none (the reference's default), in milliseconds.
pub const DEFAULT_WAKE_TIMEOUT_MS: u64 = 60_000;
/// Extra time the control-socket call gets beyond the wake timeout. The server waits
/// `timeout_ms + 5 s`, so this stays below 5 s to answer before it gives up.
pub const WAKE_SOCKET_MARGIN: Duration = Duration::from_secs(3);

pub use gatelet_agent_api::mac::normalize as normalize_mac;

/// Handles one wake request (body already parsed and authorised).
pub fn handle(ctx: &MgmtContext, body: &Value) -> Reply {
    let Some(mac) = body
        .get("mac")
        .and_then(Value::as_str)
        .and_then(normalize_mac)
    else {
        return Reply::error(400, "invalid_mac");
    };
    let lan_host = match body.get("lan_host") {
        None | Some(Value::Null) => None,
        Some(Value::String(h)) if host_allowed(ctx, h) => Some(h.clone()),
        Some(_) => return Reply::error(400, "lan_host_must_be_rfc1918"),
    };
    let port = match body.get("lan_host_port") {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_u64().and_then(|p| u16::try_from(p).ok()) {
            Some(p) if p > 0 => Some(p),
            _ => return Reply::error(400, "invalid_lan_host_port"),
        },
    };
    let timeout_ms = body
        .get("timeout_ms")
        .and_then(Value::as_u64)
        .unwrap_or(DEFAULT_WAKE_TIMEOUT_MS)
        .min(MAX_WAKE_TIMEOUT_MS);
    let whitelisted = (ctx.wol_whitelist)()
        .iter()
        .filter_map(|m| normalize_mac(m))
        .any(|m| m == mac);
    if !whitelisted {
        tracing::warn!(%mac, "wake refused: MAC is not a wol_mac of any route");
        return Reply::error(403, "mac_not_whitelisted");
    }
    let req = Request::Wake(WakeRequest {
        mac: mac.clone(),
        lan_host,
        port,
        timeout_ms,
        trigger: "api".into(),
    });
    let wait = Duration::from_millis(timeout_ms) + WAKE_SOCKET_MARGIN;
    tracing::info!(%mac, timeout_ms, "wake requested by the server");
    match ctx.agent.request(&req, wait) {
        Ok(Response::Woke(w)) if w.success => Reply::json(
            200,
            &json!({"success": true, "elapsed_ms": w.elapsed_ms, "sent_on": w.sent_on}),
        ),
        Ok(Response::Woke(w)) => Reply::json(
            200,
            &json!({
                "success": false,
                "reason": w.reason.unwrap_or_else(|| "timeout".into()),
                "elapsed_ms": w.elapsed_ms,
                "sent_on": w.sent_on,
            }),
        ),
        Ok(Response::Error { message }) => Reply::json(
            502,
            &json!({"success": false, "error": "agent_error", "message": message}),
        ),
        Ok(_) => agent_failure(502, "agent_protocol_error", "unexpected answer to a wake"),
        Err(e) => link_failure(&e),
    }
}

/// The JSON answer for a failed control-socket call: 503 unreachable, 504 timeout, 502
/// unreadable answer.
pub fn link_failure(e: &LinkError) -> Reply {
    match e {
        LinkError::Connect { .. } => agent_failure(503, "agent_unreachable", &e.to_string()),
        LinkError::Io(io)
            if matches!(
                io.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            agent_failure(504, "agent_timeout", &e.to_string())
        }
        LinkError::Io(_) => agent_failure(503, "agent_unreachable", &e.to_string()),
        LinkError::Protocol(_) => agent_failure(502, "agent_protocol_error", &e.to_string()),
    }
}

fn agent_failure(status: u16, code: &str, detail: &str) -> Reply {
    tracing::warn!(error = code, detail, "management API: agent call failed");
    Reply::json(
        status,
        &json!({"success": false, "error": code, "detail": detail}),
    )
}

/// A wake's probe host must be a private IPv4 address or one in the gateway's own LAN.
fn host_allowed(ctx: &MgmtContext, host: &str) -> bool {
    match host.parse::<Ipv4Addr>() {
        Ok(ip) => ip.is_private() || in_scope(IpAddr::V4(ip), &(ctx.lan_subnets)()),
        Err(_) => false,
    }
}
