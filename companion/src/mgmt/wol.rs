//! `POST /api/wol`: validate, check the whitelist, hand the wake to the agent.
//!
//! Validation answers 400 with `{"error": code, "detail": sentence}` and never reaches the
//! agent: `lan_host` (the host probed to see it woke) must be an IPv4 address inside the
//! gateway's own LAN subnets (never the hub, nothing off-LAN); `timeout_ms` must be a whole
//! number of milliseconds (absent or null: [`DEFAULT_WAKE_TIMEOUT_MS`]; above
//! [`MAX_WAKE_TIMEOUT_MS`]: capped), so -5, 1e30 or "x" are refused instead of holding one of
//! the two wake slots for a default wait.

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
    let lan_host = match lan_host(ctx, body.get("lan_host")) {
        Ok(h) => h,
        Err(r) => return r,
    };
    let port = match body.get("lan_host_port") {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_u64().and_then(|p| u16::try_from(p).ok()) {
            Some(p) if p > 0 => Some(p),
            _ => return Reply::error(400, "invalid_lan_host_port"),
        },
    };
    let timeout_ms = match timeout_ms(body.get("timeout_ms")) {
        Ok(t) => t,
        Err(detail) => return bad_request("invalid_timeout_ms", &detail),
    };
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

/// Longest excerpt of a bad value quoted back in an error.
const MAX_QUOTED: usize = 40;

fn bad_request(code: &str, detail: &str) -> Reply {
    Reply::json(400, &json!({ "error": code, "detail": detail }))
}

/// A JSON value for an error message, cut after [`MAX_QUOTED`] characters.
fn excerpt(v: &Value) -> String {
    let s = v.to_string();
    match s.char_indices().nth(MAX_QUOTED) {
        None => s,
        Some((cut, _)) => format!("{}...", &s[..cut]),
    }
}

/// `timeout_ms`: absent or null is the default; a JSON integer from 0 up is taken (0 means
/// the default, as on the control socket; above the maximum is capped, as documented);
/// anything else (negative, fractional, 1e30, a string) is an error.
fn timeout_ms(v: Option<&Value>) -> Result<u64, String> {
    match v {
        None | Some(Value::Null) => Ok(DEFAULT_WAKE_TIMEOUT_MS),
        Some(v) => match v.as_u64() {
            Some(0) => Ok(DEFAULT_WAKE_TIMEOUT_MS),
            Some(ms) => Ok(ms.min(MAX_WAKE_TIMEOUT_MS)),
            None => Err(format!(
                "timeout_ms must be a whole number of milliseconds (at most {MAX_WAKE_TIMEOUT_MS} \
                 are used; absent means {DEFAULT_WAKE_TIMEOUT_MS}), not {}",
                excerpt(v)
            )),
        },
    }
}

/// `lan_host`: absent or null means no probe; otherwise an IPv4 address in one of the
/// gateway's LAN subnets (the hub and anything off-LAN are refused).
fn lan_host(ctx: &MgmtContext, v: Option<&Value>) -> Result<Option<String>, Reply> {
    let h = match v {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(h)) => h,
        Some(v) => {
            return Err(bad_request(
                "invalid_lan_host",
                &format!(
                    "lan_host must be an IPv4 address string, not {}",
                    excerpt(v)
                ),
            ))
        }
    };
    let Ok(ip) = h.parse::<Ipv4Addr>() else {
        return Err(bad_request(
            "invalid_lan_host",
            &format!(
                "lan_host must be an IPv4 address, not {}",
                excerpt(&Value::String(h.clone()))
            ),
        ));
    };
    let subnets = (ctx.lan_subnets)();
    if in_scope(IpAddr::V4(ip), &subnets) && !ip.is_unspecified() && !ip.is_broadcast() {
        return Ok(Some(h.clone()));
    }
    let scope: Vec<String> = subnets.iter().map(ToString::to_string).collect();
    tracing::warn!(lan_host = %ip, "wake refused: lan_host is outside the LAN");
    Err(bad_request(
        "lan_host_out_of_lan_scope",
        &format!(
            "lan_host {ip} is not in the gateway's LAN subnets ({}); it would not be probed",
            if scope.is_empty() {
                "none found".to_owned()
            } else {
                scope.join(", ")
            }
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent_link::AgentLink;
    use crate::state::Shared;
    use gatelet_agent_api::env::Cidr;
    use std::sync::Arc;

    /// A context whose agent socket does not exist (nothing on disk is touched): anything
    /// reaching the agent answers 503.
    fn ctx() -> MgmtContext {
        let absent = std::path::Path::new("/nonexistent/gatelet-wol-test");
        let mut ctx = MgmtContext::new(
            None,
            Shared::default(),
            AgentLink::new(absent.join("agent.sock")),
            absent,
        );
        ctx.lan_subnets = Arc::new(|| vec!["192.168.1.0/24".parse::<Cidr>().unwrap()]);
        ctx.wol_whitelist = Arc::new(|| vec!["AA:BB:CC:DD:EE:04".to_owned()]);
        ctx
    }

    fn call(ctx: &MgmtContext, body: &str) -> (u16, Value) {
        let r = handle(ctx, &serde_json::from_str(body).unwrap());
        (r.status, serde_json::from_slice(&r.body).unwrap())
    }

    #[test]
    fn lan_host_outside_the_lan_is_refused_before_the_agent() {
        let ctx = ctx();
        // The hub (private, but not LAN), other private nets, public, junk.
        for host in [
            "10.8.0.1",
            "172.16.0.1",
            "192.168.2.40",
            "8.8.8.8",
            "0.0.0.0",
            "255.255.255.255",
        ] {
            let body = format!(r#"{{"mac":"AA:BB:CC:DD:EE:04","lan_host":"{host}"}}"#);
            let (s, b) = call(&ctx, &body);
            assert_eq!(s, 400, "{host}: {b}");
            assert_eq!(b["error"], "lan_host_out_of_lan_scope", "{host}: {b}");
            let detail = b["detail"].as_str().unwrap();
            assert!(
                detail.contains(host) && detail.contains("192.168.1.0/24"),
                "{detail}"
            );
        }
        for bad in [r#""hub.example""#, "42", r#"["192.168.1.40"]"#] {
            let body = format!(r#"{{"mac":"AA:BB:CC:DD:EE:04","lan_host":{bad}}}"#);
            let (s, b) = call(&ctx, &body);
            assert_eq!(
                (s, &b["error"]),
                (400, &json!("invalid_lan_host")),
                "{bad}: {b}"
            );
        }
        // Inside the LAN the request goes on to the agent (absent here: 503).
        let (s, b) = call(
            &ctx,
            r#"{"mac":"AA:BB:CC:DD:EE:04","lan_host":"192.168.1.40","timeout_ms":60000}"#,
        );
        assert_eq!((s, &b["error"]), (503, &json!("agent_unreachable")), "{b}");
        // No LAN found: nothing is in scope.
        let mut none = ctx.clone();
        none.lan_subnets = Arc::new(Vec::new);
        let (s, b) = call(
            &none,
            r#"{"mac":"AA:BB:CC:DD:EE:04","lan_host":"192.168.1.40"}"#,
        );
        assert_eq!(s, 400, "{b}");
        assert!(b["detail"].as_str().unwrap().contains("none found"), "{b}");
    }

    #[test]
    fn bad_timeouts_are_refused_and_valid_ones_keep_range_and_default() {
        let ctx = ctx();
        let long = format!("\"{}\"", "x".repeat(10_000));
        for bad in [
            "-5",
            "1e30",
            "\"x\"",
            "\"60000\"",
            "1.5",
            "true",
            "{}",
            &long,
        ] {
            let body = format!(r#"{{"mac":"AA:BB:CC:DD:EE:04","timeout_ms":{bad}}}"#);
            let (s, b) = call(&ctx, &body);
            assert_eq!(s, 400, "{bad}: {b}");
            assert_eq!(b["error"], "invalid_timeout_ms", "{bad}: {b}");
            let detail = b["detail"].as_str().unwrap();
            assert!(detail.starts_with("timeout_ms must be"), "{detail}");
            assert!(detail.len() < 200, "{} bytes", detail.len());
        }
        let ms = |v: &str| timeout_ms(Some(&serde_json::from_str(v).unwrap()));
        assert_eq!(timeout_ms(None), Ok(DEFAULT_WAKE_TIMEOUT_MS));
        assert_eq!(ms("null"), Ok(DEFAULT_WAKE_TIMEOUT_MS));
        assert_eq!(ms("0"), Ok(DEFAULT_WAKE_TIMEOUT_MS));
        assert_eq!(ms("45000"), Ok(45_000));
        assert_eq!(ms("900000"), Ok(MAX_WAKE_TIMEOUT_MS));
        assert_eq!(ms("18446744073709551615"), Ok(MAX_WAKE_TIMEOUT_MS));
        assert!(ms("18446744073709551616").is_err(), "beyond u64 is a float");
    }
}
