//! `/metrics`: the companion's view in the Prometheus text format (version 0.0.4), rendered
//! from a [`Snapshot`] by a pure function.
//!
//! Names carry their unit and counters end in `_total`. The tunnel and route series are the
//! agent's counters as its last status reported them (they restart from 0 with the agent, a
//! counter reset to Prometheus); the sync, heartbeat, wake and endpoint-change counts are the
//! companion's since it started ([`crate::state::Counters`]). A series whose value is unknown
//! (no handshake yet, the agent not answering) is left out rather than reported as 0.
//!
//! For an HTTP route, "connections" are its requests in flight and "refusals" its 503s at the
//! route's cap; for an L4 route, its open TCP connections plus UDP sessions, and the
//! connections or datagrams turned away at a cap.

use std::fmt::Write as _;

use gatelet_agent_api::control::{ListenerState, RouteKind};

use crate::state::Snapshot;

/// The `Content-Type` of the answer.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A label value with `\`, `"` and newlines escaped.
fn label(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

struct Out(String);

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }
    fn sample(&mut self, name: &str, labels: &str, value: impl std::fmt::Display) {
        if labels.is_empty() {
            let _ = writeln!(self.0, "{name} {value}");
        } else {
            let _ = writeln!(self.0, "{name}{{{labels}}} {value}");
        }
    }
    fn one(&mut self, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
        self.family(name, kind, help);
        self.sample(name, "", value);
    }
}

/// The metrics page for `s`.
pub fn render(s: &Snapshot) -> String {
    let mut o = Out(String::with_capacity(4096));
    let c = &s.counters;
    o.one(
        "gatelet_companion_start_time_seconds",
        "gauge",
        "When the companion started, in seconds since the Unix epoch.",
        s.started_at_ms / 1000,
    );
    o.one(
        "gatelet_agent_up",
        "gauge",
        "Whether the agent answered the companion's last status call (1) or not (0).",
        u8::from(s.agent_reachable),
    );
    o.one(
        "gatelet_tunnel_endpoint_changes_total",
        "counter",
        "Times the agent reported a new hub endpoint since the companion started.",
        c.tunnel_endpoint_changes,
    );
    if let Some(a) = s.agent.as_ref().filter(|_| s.agent_reachable) {
        let t = &a.tunnel;
        o.one(
            "gatelet_tunnel_receive_bytes_total",
            "counter",
            "Bytes received from the hub through the tunnel (decrypted), since the agent started.",
            t.rx_bytes,
        );
        o.one(
            "gatelet_tunnel_transmit_bytes_total",
            "counter",
            "Bytes sent to the hub through the tunnel (before encryption), since the agent started.",
            t.tx_bytes,
        );
        o.one(
            "gatelet_tunnel_receive_packets_total",
            "counter",
            "Packets received from the hub through the tunnel, since the agent started.",
            t.rx_packets,
        );
        o.one(
            "gatelet_tunnel_transmit_packets_total",
            "counter",
            "Packets sent to the hub through the tunnel, since the agent started.",
            t.tx_packets,
        );
        o.family(
            "gatelet_tunnel_dropped_packets_total",
            "counter",
            "Packets dropped because their address is outside the tunnel's allowed IPs.",
        );
        o.sample(
            "gatelet_tunnel_dropped_packets_total",
            "direction=\"receive\"",
            t.rx_dropped_not_allowed,
        );
        o.sample(
            "gatelet_tunnel_dropped_packets_total",
            "direction=\"transmit\"",
            t.tx_dropped_not_allowed,
        );
        if let Some(age) = t.handshake_age_s {
            o.one(
                "gatelet_tunnel_handshake_age_seconds",
                "gauge",
                "Seconds since the last WireGuard handshake with the hub.",
                age,
            );
        }
        o.one(
            "gatelet_agent_uptime_seconds",
            "gauge",
            "Seconds since the agent started.",
            a.uptime_s,
        );
        let routes =
            |o: &mut Out, f: &dyn Fn(&mut Out, &str, &gatelet_agent_api::control::RouteStatus)| {
                for r in &a.routes {
                    let kind = match r.kind {
                        RouteKind::Http => "http",
                        RouteKind::L4 => "l4",
                    };
                    let labels = format!(
                        "route_id=\"{}\",kind=\"{kind}\",name=\"{}\"",
                        r.id,
                        label(&r.name)
                    );
                    f(o, &labels, r);
                }
            };
        o.family(
            "gatelet_route_listening",
            "gauge",
            "Whether the route's listener is bound (1) or failed or idle (0), per protocol.",
        );
        routes(&mut o, &|o, l, r| {
            let up = |st: &ListenerState| u8::from(matches!(st, ListenerState::Listening));
            o.sample(
                "gatelet_route_listening",
                &format!("{l},protocol=\"tcp\""),
                up(&r.tcp),
            );
            if let Some(udp) = &r.udp {
                o.sample(
                    "gatelet_route_listening",
                    &format!("{l},protocol=\"udp\""),
                    up(udp),
                );
            }
        });
        o.family(
            "gatelet_route_connections",
            "gauge",
            "Connections (L4) or requests in flight (HTTP) on the route now.",
        );
        routes(&mut o, &|o, l, r| {
            o.sample("gatelet_route_connections", l, r.active_connections);
        });
        o.family(
            "gatelet_route_bytes_total",
            "counter",
            "Bytes relayed through the route in both directions.",
        );
        routes(&mut o, &|o, l, r| {
            o.sample("gatelet_route_bytes_total", l, r.bytes)
        });
        o.family(
            "gatelet_route_refusals_total",
            "counter",
            "Connections (L4) or requests (HTTP, 503) turned away at the route's cap.",
        );
        routes(&mut o, &|o, l, r| {
            o.sample("gatelet_route_refusals_total", l, r.refused)
        });
        o.family(
            "gatelet_route_failures_total",
            "counter",
            "Connections or requests whose LAN target could not be reached or failed.",
        );
        routes(&mut o, &|o, l, r| {
            o.sample("gatelet_route_failures_total", l, r.failures)
        });
        o.family(
            "gatelet_route_target_up",
            "gauge",
            "Whether the route's LAN target answered the agent's last probe.",
        );
        routes(&mut o, &|o, l, r| {
            if let Some(p) = &r.reachability {
                o.sample("gatelet_route_target_up", l, u8::from(p.reachable));
            }
        });
    }
    o.one(
        "gatelet_sync_checks_total",
        "counter",
        "Config checks sent to the server since the companion started.",
        c.sync_checks,
    );
    o.one(
        "gatelet_sync_check_failures_total",
        "counter",
        "Config checks that failed (transport, status, rate limit).",
        c.sync_check_failures,
    );
    o.one(
        "gatelet_sync_fetches_total",
        "counter",
        "Config fetches sent to the server since the companion started.",
        c.sync_fetches,
    );
    o.one(
        "gatelet_sync_fetch_failures_total",
        "counter",
        "Config fetches that failed or whose config could not be applied.",
        c.sync_fetch_failures,
    );
    if let Some(b) = s.sync.budget_remaining {
        o.one(
            "gatelet_sync_budget_remaining_requests",
            "gauge",
            "Requests to the server left in the current rate-limit window.",
            b,
        );
    }
    if let Some(ms) = s.sync.last_success_ms {
        o.one(
            "gatelet_sync_last_success_timestamp_seconds",
            "gauge",
            "When the last sync request succeeded, in seconds since the Unix epoch.",
            ms / 1000,
        );
    }
    o.family(
        "gatelet_heartbeats_total",
        "counter",
        "Heartbeats sent to the server since the companion started, by result.",
    );
    o.sample("gatelet_heartbeats_total", "result=\"ok\"", c.heartbeats_ok);
    o.sample(
        "gatelet_heartbeats_total",
        "result=\"failed\"",
        c.heartbeats_failed,
    );
    o.family(
        "gatelet_wakes_total",
        "counter",
        "Wake-on-LAN requests carried out by the agent since the companion started, by result.",
    );
    o.sample("gatelet_wakes_total", "result=\"ok\"", c.wakes_ok);
    o.sample("gatelet_wakes_total", "result=\"failed\"", c.wakes_failed);
    o.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use gatelet_agent_api::control::{AgentStatus, RouteStatus, TunnelStatus};

    #[test]
    fn agent_down_leaves_its_series_out() {
        let text = render(&Snapshot::default());
        assert!(text.contains("gatelet_agent_up 0\n"));
        assert!(!text.contains("gatelet_tunnel_receive_bytes_total"));
        assert!(text.contains("gatelet_heartbeats_total{result=\"ok\"} 0\n"));
    }

    #[test]
    fn renders_tunnel_routes_and_counters_with_escaped_labels() {
        let mut s = Snapshot {
            agent_reachable: true,
            ..Snapshot::default()
        };
        s.counters.sync_checks = 7;
        s.counters.wakes_failed = 2;
        s.sync.budget_remaining = Some(55);
        s.agent = Some(AgentStatus {
            agent_version: "t".into(),
            uptime_s: 9,
            config_hash: None,
            tunnel: TunnelStatus {
                handshake_age_s: Some(12),
                rx_bytes: 1000,
                tx_bytes: 2000,
                ..TunnelStatus::default()
            },
            http_proxy: None,
            api_relay: None,
            tunnel_proxy: None,
            routes: vec![RouteStatus {
                id: 4,
                kind: RouteKind::L4,
                name: "nas \"a\"\\b\nc".into(),
                listen_port: Some(2222),
                tcp: ListenerState::Listening,
                udp: Some(ListenerState::Failed {
                    reason: "in use".into(),
                }),
                active_connections: 3,
                bytes: 4096,
                refused: 5,
                failures: 6,
                last_error: None,
                reachability: None,
            }],
            wakes: Vec::new(),
        });
        let text = render(&s);
        let l = "route_id=\"4\",kind=\"l4\",name=\"nas \\\"a\\\"\\\\b\\nc\"";
        for want in [
            "gatelet_tunnel_receive_bytes_total 1000\n".to_owned(),
            "gatelet_tunnel_handshake_age_seconds 12\n".into(),
            format!("gatelet_route_listening{{{l},protocol=\"tcp\"}} 1\n"),
            format!("gatelet_route_listening{{{l},protocol=\"udp\"}} 0\n"),
            format!("gatelet_route_connections{{{l}}} 3\n"),
            format!("gatelet_route_bytes_total{{{l}}} 4096\n"),
            format!("gatelet_route_refusals_total{{{l}}} 5\n"),
            format!("gatelet_route_failures_total{{{l}}} 6\n"),
            "gatelet_sync_checks_total 7\n".into(),
            "gatelet_sync_budget_remaining_requests 55\n".into(),
            "gatelet_wakes_total{result=\"failed\"} 2\n".into(),
        ] {
            assert!(text.contains(&want), "{want} not in\n{text}");
        }
        // Every family is declared once, before its samples.
        let types: Vec<&str> = text.lines().filter(|l| l.starts_with("# TYPE")).collect();
        let mut dedup = types.clone();
        dedup.sort();
        dedup.dedup();
        assert_eq!(types.len(), dedup.len());
        assert!(!text.contains("gatelet_route_target_up{"));
    }
}
