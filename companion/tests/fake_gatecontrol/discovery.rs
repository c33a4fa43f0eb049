//! `POST /api/v1/gateway/discovery` as the real server takes it (GateControl 1.118.2,
//! `routes/api/gateway.js` and `services/discoveryCache.js`): a 512 KiB body cap for this
//! path only, `request_id` required (400 `request_id_required`), 60 batches a minute per
//! gateway (202 `{ok, accepted:false, reason:"rate_limited"}`), batches merge by IP per
//! `request_id`, a different `request_id` while a scan is open is dropped (`stale_request`).
//!
//! Where the real server silently cuts what exceeds its limits, the fake refuses the batch
//! with 400 `limit_exceeded: <what>`, so a test sees any batch the real server would have
//! truncated.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// The body cap of this path.
pub const MAX_DISCOVERY_BODY: usize = 512 * 1024;
/// Devices the server keeps per batch.
pub const MAX_DEVICES: usize = 2000;
/// Ports it keeps per device.
pub const MAX_PORTS: usize = 64;
/// Batches per gateway and minute.
pub const MAX_PER_MINUTE: usize = 60;

/// What the fake knows about scans.
#[derive(Debug, Default)]
pub struct Ingest {
    recent: VecDeque<Instant>,
    /// The open scan's request id.
    pub current: Option<String>,
    /// Every accepted batch, in order.
    pub batches: Vec<Value>,
    /// Devices per request id, merged by IP.
    pub devices: BTreeMap<String, BTreeMap<String, Value>>,
}

/// The first limit `body` exceeds, if any.
pub fn limit_error(body: &Value) -> Option<String> {
    let devices = body.get("devices").and_then(Value::as_array)?;
    if devices.len() > MAX_DEVICES {
        return Some(format!("{} devices", devices.len()));
    }
    let chars = |v: &Value| v.as_str().map_or(0, |s| s.chars().count());
    for d in devices {
        let ip = d["ip"].as_str().unwrap_or("");
        if ip.parse::<std::net::Ipv4Addr>().is_err() {
            return Some(format!("ip {ip:?}"));
        }
        if chars(&d["hostname"]) > 255 {
            return Some(format!("{ip}: hostname length"));
        }
        if let Some(mac) = d["mac"].as_str() {
            let ok = mac.len() == 17
                && mac.split(':').count() == 6
                && mac
                    .split(':')
                    .all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()));
            if !ok {
                return Some(format!("{ip}: mac {mac:?}"));
            }
        }
        let ports = d["ports"].as_array().map_or(&[][..], Vec::as_slice);
        if ports.len() > MAX_PORTS {
            return Some(format!("{ip}: {} ports", ports.len()));
        }
        for p in ports {
            if !p["port"].as_u64().is_some_and(|n| (1..=65535).contains(&n)) {
                return Some(format!("{ip}: port {}", p["port"]));
            }
            if !matches!(p["source"].as_str(), Some("mdns" | "ssdp" | "tcp"))
                || chars(&p["source"]) > 16
            {
                return Some(format!("{ip}: source {}", p["source"]));
            }
            if chars(&p["service_hint"]) > 128 {
                return Some(format!("{ip}: service_hint length"));
            }
        }
        let sources = d["sources"].as_array().map_or(0, Vec::len);
        if sources > 4 {
            return Some(format!("{ip}: {sources} sources"));
        }
    }
    None
}

impl Ingest {
    /// Takes one batch: (status, answer).
    pub fn take(&mut self, body: &Value, now: Instant) -> (u16, Value) {
        let Some(id) = body
            .get("request_id")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
        else {
            return (400, json!({"error": "request_id_required"}));
        };
        while self
            .recent
            .front()
            .is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(60))
        {
            self.recent.pop_front();
        }
        self.recent.push_back(now);
        if self.recent.len() > MAX_PER_MINUTE {
            return (
                202,
                json!({"ok": true, "accepted": false, "reason": "rate_limited"}),
            );
        }
        if let Some(e) = limit_error(body) {
            return (400, json!({"error": format!("limit_exceeded: {e}")}));
        }
        if self.current.as_deref().is_some_and(|c| c != id) {
            return (
                202,
                json!({"ok": true, "accepted": false, "reason": "stale_request"}),
            );
        }
        let done = body.get("done") == Some(&Value::Bool(true));
        self.current = (!done).then(|| id.to_owned());
        let merged = self.devices.entry(id.to_owned()).or_default();
        for d in body["devices"].as_array().into_iter().flatten() {
            let ip = d["ip"].as_str().unwrap_or_default().to_owned();
            let e = merged
                .entry(ip)
                .or_insert_with(|| json!({"ip": d["ip"], "ports": []}));
            for k in ["hostname", "mac"] {
                if e[k].is_null() && !d[k].is_null() {
                    e[k] = d[k].clone();
                }
            }
            for p in d["ports"].as_array().into_iter().flatten() {
                let ports = e["ports"].as_array_mut().expect("ports is an array");
                if !ports
                    .iter()
                    .any(|q| q["port"] == p["port"] && q["source"] == p["source"])
                {
                    ports.push(p.clone());
                }
            }
        }
        self.batches.push(body.clone());
        (200, json!({"ok": true}))
    }

    /// The server's side of `/api/lan-scan`: a scan with this id is open from now on.
    pub fn begin(&mut self, request_id: &str) {
        self.current = Some(request_id.to_owned());
    }
}
