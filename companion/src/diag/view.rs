//! What the page shows, worked out once from a status [`Report`]: the verdict in one word and
//! why, the tunnel, sync and heartbeat as labelled rows, the routes with their states, the
//! recent events and the charts' series. The server renders it into the first HTML
//! ([`super::page`]); `status.json` carries it as `view` for the page's script to redraw.
//! Plain data, no HTML: every renderer escapes.

use gatelet_agent_api::control::{
    EgressRoute, EgressStatus, ListenerState, RouteKind, RouteStatus,
};
use serde::Serialize;

use super::history::Series;
use crate::status::Report;

/// A tunnel without a handshake for this long has no session (WireGuard's reject-after time:
/// the agent's 25 s keepalive keeps it far younger).
pub const HANDSHAKE_STALE_S: u64 = 180;

/// The whole page.
#[derive(Debug, Clone, Serialize)]
pub struct View {
    /// When this view was made (ms since the epoch, the box's clock): ages count from here.
    pub now_ms: u64,
    /// All well or not.
    pub verdict: Verdict,
    /// The tunnel's rows.
    pub tunnel: Vec<Row>,
    /// The sync's rows.
    pub sync: Vec<Row>,
    /// Routes the server sent that the companion refused, and why.
    pub rejected: Vec<Rejected>,
    /// The heartbeat's rows.
    pub heartbeat: Vec<Row>,
    /// Every route of the config in force.
    pub routes: Vec<RouteView>,
    /// Newest events first.
    pub events: Vec<EventView>,
    /// The last hour, for the charts.
    pub history: Series,
    /// Whether the caller may use the action buttons.
    pub can_act: bool,
}

/// The header's word.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verdict {
    /// `ok`, `degraded` or `down` (also the CSS class).
    pub level: &'static str,
    /// `OK`, `Degraded` or `Down`.
    pub word: &'static str,
    /// Why, in plain words (empty when all is well).
    pub reasons: Vec<String>,
}

/// One labelled value. `value` may contain `{ago}`, which renderers replace with the age of
/// `at_ms` ("12 s ago"), so it keeps counting between updates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Row {
    /// What it is.
    pub label: &'static str,
    /// Its value.
    pub value: String,
    /// The time `{ago}` stands for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub at_ms: Option<u64>,
    /// `good`, `bad`, `warn` or empty: the colour.
    pub tone: &'static str,
}

fn row(label: &'static str, value: impl Into<String>, tone: &'static str) -> Row {
    Row {
        label,
        value: value.into(),
        at_ms: None,
        tone,
    }
}

fn row_at(label: &'static str, value: impl Into<String>, at_ms: u64, tone: &'static str) -> Row {
    Row {
        at_ms: Some(at_ms),
        ..row(label, value, tone)
    }
}

/// A refused route.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rejected {
    /// `http`, `l4` or `egress`.
    pub kind: String,
    /// Its id, when readable.
    pub id: Option<u64>,
    /// Why.
    pub reason: String,
}

/// One route's line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RouteView {
    /// The route id (for the actions).
    pub id: u64,
    /// `http`, `l4` or `egress` (a LAN listener relaying into the tunnel).
    pub kind: &'static str,
    /// Domain, `l4:<port>`, or `egress:<port>`.
    pub name: String,
    /// `host:port` on the LAN (egress: in the tunnel, and who may use it).
    pub target: String,
    /// `listening`, `failed`, `idle` or `not served`.
    pub listener: &'static str,
    /// Why it failed (listener, or the route's last error).
    pub reason: Option<String>,
    /// `up`, `down` or `unprobed`.
    pub target_state: &'static str,
    /// How the target was judged (`12 ms`, `by udp_reply`), when known.
    pub target_detail: Option<String>,
    /// Open connections.
    pub connections: u64,
    /// Bytes both ways.
    pub bytes: u64,
    /// Refused and failed connections.
    pub refused: u64,
    /// Connections whose target could not be reached.
    pub failures: u64,
    /// Whether it has Wake-on-LAN (a wake button).
    pub wol: bool,
}

/// One event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EventView {
    /// Last occurrence (ms since the epoch).
    pub at_ms: u64,
    /// Its kind (`wake`, `push`, `sync_error`, `diag_login`...).
    pub kind: String,
    /// What happened.
    pub detail: String,
    /// Occurrences coalesced.
    pub count: u64,
}

/// Bytes for a human: `512 B`, `1.5 KiB`, `3.2 MiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i < UNITS.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[i])
    }
}

/// An age for a human: `12 s ago`, `5 min ago`, `3 h ago`, `2 d ago`.
pub fn ago(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..=119 => format!("{s} s ago"),
        120..=7199 => format!("{} min ago", s / 60),
        7200..=172_799 => format!("{} h ago", s / 3600),
        _ => format!("{} d ago", s / 86_400),
    }
}

fn sync_state_words(state: &str) -> (&'static str, &'static str) {
    match state {
        "in_sync" => ("in sync", "good"),
        "starting" => ("starting", ""),
        "backing_off" => ("failing, retrying later", "bad"),
        "rate_limited" => ("paused: the server's request budget is used up", "warn"),
        "offline_serving_last_good" => ("server unreachable: serving the last good config", "bad"),
        "" => ("not started", ""),
        _ => ("unknown", "warn"),
    }
}

fn listener(l: &ListenerState) -> (&'static str, Option<String>) {
    match l {
        ListenerState::Listening => ("listening", None),
        ListenerState::Idle => ("idle", None),
        ListenerState::Failed { reason } => ("failed", Some(reason.clone())),
    }
}

fn route_view(
    kind: RouteKind,
    id: u64,
    name: String,
    target: String,
    wol: bool,
    agent: Option<&RouteStatus>,
) -> RouteView {
    let kind_word = match kind {
        RouteKind::Http => "http",
        RouteKind::L4 => "l4",
    };
    let Some(r) = agent else {
        return RouteView {
            id,
            kind: kind_word,
            name,
            target,
            listener: "not served",
            reason: Some("the agent does not run this route (yet)".into()),
            target_state: "unprobed",
            target_detail: None,
            connections: 0,
            bytes: 0,
            refused: 0,
            failures: 0,
            wol,
        };
    };
    let (mut state, mut reason) = listener(&r.tcp);
    if let Some((udp, why)) = r.udp.as_ref().map(listener) {
        if udp == "failed" && state != "failed" {
            state = "failed";
            reason = why.map(|w| format!("UDP: {w}"));
        }
    }
    let (target_state, target_detail) = match &r.reachability {
        None => ("unprobed", None),
        Some(p) if p.reachable => (
            "up",
            Some(match p.method.as_deref() {
                None | Some("tcp") => format!("{} ms", p.latency_ms.unwrap_or(0)),
                Some(m) => format!("by {m}"),
            }),
        ),
        Some(_) => ("down", r.last_error.clone()),
    };
    RouteView {
        id,
        kind: kind_word,
        name,
        target,
        listener: state,
        reason,
        target_state,
        target_detail,
        connections: r.active_connections,
        bytes: r.bytes,
        refused: r.refused,
        failures: r.failures,
        wol,
    }
}

/// An egress route's line: its LAN listener (on the VIP's port) and the tunnel target. It has
/// no reachability probe and no Wake-on-LAN; `refused` counts connections from sources
/// outside its allowlist too.
fn egress_view(r: &EgressRoute, agent: Option<&EgressStatus>) -> RouteView {
    let sources = if r.allowed_sources.is_empty() {
        "nobody".to_owned()
    } else {
        r.allowed_sources.join(", ")
    };
    let (listener, reason, connections, bytes, refused, failures) = match agent {
        None => (
            "not served",
            Some("the agent does not run this route (yet)".to_owned()),
            0,
            0,
            0,
            0,
        ),
        Some(e) => {
            let (state, why) = if e.bound {
                ("listening", None)
            } else {
                (
                    "failed",
                    Some(
                        e.bind_error
                            .clone()
                            .unwrap_or_else(|| "not bound yet".into()),
                    ),
                )
            };
            (
                state,
                why,
                e.active_connections,
                e.bytes,
                e.refused + e.source_drops,
                e.failures,
            )
        }
    };
    RouteView {
        id: r.id,
        kind: "egress",
        name: format!("egress:{} (VIP {})", r.lan_listen_port, r.vip_ip),
        target: format!("tunnel {}:{} from {sources}", r.target_host, r.target_port),
        listener,
        reason,
        target_state: "unprobed",
        target_detail: None,
        connections,
        bytes,
        refused,
        failures,
        wol: false,
    }
}

/// The view of `report` at `now_ms`, with the charts' `history`.
pub fn build(report: &Report, history: Series, can_act: bool, now_ms: u64) -> View {
    let s = &report.snapshot;
    let mut reasons = Vec::new();
    let mut down = false;
    let agent = s.agent.as_ref().filter(|_| s.agent_reachable);

    // Tunnel.
    let mut tunnel = Vec::new();
    match agent {
        None => {
            let why = s.agent_error.as_deref().unwrap_or("not asked yet");
            reasons.push(format!("the agent does not answer ({why})"));
            down = true;
            tunnel.push(row("Agent", format!("not answering: {why}"), "bad"));
        }
        Some(a) => {
            let t = &a.tunnel;
            match t.handshake_age_s {
                None => {
                    reasons.push("no handshake with the hub yet".into());
                    down = true;
                    tunnel.push(row("Handshake", "none yet", "bad"));
                }
                Some(age) if age > HANDSHAKE_STALE_S => {
                    reasons.push(format!("no handshake with the hub for {} min", age / 60));
                    down = true;
                    tunnel.push(row("Handshake", format!("{age} s ago (stale)"), "bad"));
                }
                Some(age) => tunnel.push(row("Handshake", format!("{age} s ago"), "good")),
            }
            tunnel.push(row(
                "Hub",
                t.endpoint.clone().unwrap_or_else(|| "not resolved".into()),
                if t.endpoint.is_some() { "" } else { "bad" },
            ));
            tunnel.push(row(
                "Traffic",
                format!("{} in, {} out", bytes(t.rx_bytes), bytes(t.tx_bytes)),
                "",
            ));
            let mode = match t.mode.as_str() {
                "tun" => "kernel (TUN device)".to_owned(),
                "netstack" => match &t.mode_reason {
                    Some(why) => format!("userspace network stack ({why})"),
                    None => "userspace network stack".into(),
                },
                _ => String::new(),
            };
            if !mode.is_empty() {
                tunnel.push(row("Mode", mode, ""));
            }
            if let Some(e) = &t.last_error {
                tunnel.push(row("Last error", e.clone(), "warn"));
            }
            tunnel.push(row("Agent", a.agent_version.clone(), ""));
        }
    }

    // Sync.
    let mut sync = Vec::new();
    let standalone = s.sync.mode == "standalone";
    if standalone {
        sync.push(row("Mode", "standalone: routes from the local file", ""));
    } else {
        let (words, tone) = sync_state_words(&s.sync.state);
        sync.push(row("Mode", "GateControl server", ""));
        sync.push(row("State", words, tone));
        let server = match s.sync.state.as_str() {
            "in_sync" | "rate_limited" => ("reachable", "good"),
            "backing_off" | "offline_serving_last_good" => ("unreachable", "bad"),
            _ => ("not asked yet", ""),
        };
        sync.push(row("Server", server.0, server.1));
        if tone == "bad" {
            reasons.push(format!("sync: {words}"));
        }
        match s.sync.last_success_ms {
            Some(at) => sync.push(row_at("Last success", "{ago}", at, "")),
            None => sync.push(row("Last success", "none yet", "")),
        }
        if let Some(b) = s.sync.budget_remaining {
            sync.push(row(
                "Budget left",
                b.to_string(),
                if b == 0 { "warn" } else { "" },
            ));
        }
    }
    if let Some(e) = &s.sync.last_error {
        sync.push(row("Last error", e.clone(), "bad"));
    }
    let hash = s
        .sync
        .config_hash
        .as_ref()
        .or(report.last_good_hash.as_ref());
    sync.push(row(
        "Config",
        hash.cloned().unwrap_or_else(|| "none".into()),
        "",
    ));
    let rejected: Vec<Rejected> = s
        .sync
        .rejected_routes
        .iter()
        .map(|r| Rejected {
            kind: r.kind.clone(),
            id: r.id,
            reason: r.reason.clone(),
        })
        .collect();
    if !rejected.is_empty() {
        reasons.push(match rejected.len() {
            1 => "1 route rejected by the companion".into(),
            n => format!("{n} routes rejected by the companion"),
        });
    }

    // Heartbeat.
    let heartbeat = match &s.heartbeat {
        Some(h) if h.ok => vec![row_at(
            "Last",
            format!("accepted {{ago}} ({} bytes)", h.body_bytes),
            h.at_ms,
            "good",
        )],
        Some(h) => {
            let err = h.error.clone().unwrap_or_else(|| "failed".into());
            reasons.push(format!("heartbeat failed ({err})"));
            vec![row_at(
                "Last",
                format!("FAILED {{ago}}: {err}"),
                h.at_ms,
                "bad",
            )]
        }
        None if standalone => vec![row("Last", "not sent (standalone)", "")],
        None => vec![row("Last", "none yet", "")],
    };

    // Routes.
    let agent_routes = agent.map(|a| a.routes.as_slice()).unwrap_or(&[]);
    let mut routes = Vec::new();
    if let Some(c) = &s.config {
        for r in &c.http_routes {
            let found = agent_routes
                .iter()
                .find(|a| a.kind == RouteKind::Http && a.id == r.id);
            let target = format!("{}:{}", r.target_host, r.target_port);
            let wol = r.wol.is_some();
            routes.push(route_view(
                RouteKind::Http,
                r.id,
                r.domain.clone(),
                target,
                wol,
                found,
            ));
        }
        for r in &c.l4_routes {
            let found = agent_routes
                .iter()
                .find(|a| a.kind == RouteKind::L4 && a.id == r.id);
            let target = format!("{}:{}", r.target_host, r.target_port);
            let name = format!("l4:{}", r.listen_port);
            routes.push(route_view(
                RouteKind::L4,
                r.id,
                name,
                target,
                r.wol.is_some(),
                found,
            ));
        }
        for r in &c.egress_routes {
            let found = agent.and_then(|a| {
                a.scan_egress
                    .iter()
                    .find(|e| e.id == r.id && e.lan_listen_port == r.lan_listen_port)
            });
            routes.push(egress_view(r, found));
        }
    }
    for r in &routes {
        if r.listener == "failed" {
            let why = r.reason.as_deref().unwrap_or("no reason given");
            reasons.push(format!("{}: listener failed ({why})", r.name));
        } else if r.listener == "not served" && agent.is_some() {
            reasons.push(format!("{}: not served by the agent", r.name));
        }
        if r.target_state == "down" {
            reasons.push(format!("{}: target {} is down", r.name, r.target));
        }
    }

    let (level, word) = if down {
        ("down", "Down")
    } else if reasons.is_empty() {
        ("ok", "OK")
    } else {
        ("degraded", "Degraded")
    };
    View {
        now_ms,
        verdict: Verdict {
            level,
            word,
            reasons,
        },
        tunnel,
        sync,
        rejected,
        heartbeat,
        routes,
        events: report
            .events
            .iter()
            .map(|e| EventView {
                at_ms: e.last_at_ms,
                kind: e.kind.clone(),
                detail: e.detail.clone(),
                count: e.count,
            })
            .collect(),
        history,
        can_act,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{HeartbeatStatus, RejectedRoute};
    use gatelet_agent_api::control::{AgentConfig, AgentStatus, L4Route, Reachability};

    fn l4(id: u64, port: u16) -> L4Route {
        L4Route {
            id,
            listen_port: port,
            target_host: "192.168.1.20".into(),
            target_port: 22,
            wol: None,
        }
    }

    fn status(id: u64, tcp: ListenerState, reachable: Option<bool>) -> RouteStatus {
        RouteStatus {
            id,
            kind: RouteKind::L4,
            name: format!("l4:{id}"),
            listen_port: None,
            tcp,
            udp: None,
            active_connections: 3,
            bytes: 2048,
            refused: 0,
            failures: 0,
            last_error: reachable.filter(|r| !r).map(|_| "refused".into()),
            reachability: reachable.map(|reachable| Reachability {
                reachable,
                latency_ms: Some(4),
                last_checked_at: 1,
                method: None,
            }),
        }
    }

    fn report(routes: Vec<RouteStatus>, hs: Option<u64>) -> Report {
        let mut r = Report {
            daemon_running: true,
            ..Report::default()
        };
        let s = &mut r.snapshot;
        s.sync.mode = "server".into();
        s.sync.state = "in_sync".into();
        s.sync.last_success_ms = Some(90_000);
        s.config = Some(AgentConfig {
            config_hash: Some("sha256:ab".into()),
            http_routes: vec![],
            l4_routes: vec![l4(1, 2201), l4(2, 2202), l4(3, 2203)],
            egress_routes: Vec::new(),
        });
        let mut a = AgentStatus::default();
        a.tunnel.handshake_age_s = hs;
        a.tunnel.endpoint = Some("10.0.0.1:51820".into());
        a.routes = routes;
        s.agent = Some(a);
        s.agent_reachable = true;
        s.heartbeat = Some(HeartbeatStatus {
            at_ms: 95_000,
            ok: true,
            error: None,
            body_bytes: 300,
        });
        r
    }

    #[test]
    fn all_well_is_ok_with_no_reasons() {
        let r = report(
            vec![
                status(1, ListenerState::Listening, Some(true)),
                status(2, ListenerState::Listening, None),
                status(3, ListenerState::Listening, Some(true)),
            ],
            Some(20),
        );
        let v = build(&r, Series::default(), true, 100_000);
        assert_eq!((v.verdict.level, v.verdict.word), ("ok", "OK"));
        assert!(v.verdict.reasons.is_empty(), "{:?}", v.verdict.reasons);
        assert_eq!(v.routes[0].target_detail.as_deref(), Some("4 ms"));
        assert_eq!(v.routes[1].target_state, "unprobed");
        assert!(v
            .sync
            .contains(&row_at("Last success", "{ago}", 90_000, "")));
        assert!(v.sync.contains(&row("Server", "reachable", "good")));
    }

    #[test]
    fn a_failed_listener_a_down_target_and_a_rejected_route_degrade_with_reasons() {
        let failed = ListenerState::Failed {
            reason: "address in use".into(),
        };
        let mut r = report(
            vec![
                status(1, failed, None),
                status(2, ListenerState::Listening, Some(false)),
            ],
            Some(20),
        );
        r.snapshot.sync.rejected_routes = vec![RejectedRoute {
            kind: "l4".into(),
            id: Some(9),
            reason: "listen_port 22 is reserved".into(),
        }];
        let v = build(&r, Series::default(), false, 100_000);
        assert_eq!(v.verdict.word, "Degraded");
        assert_eq!(
            v.verdict.reasons,
            vec![
                "1 route rejected by the companion",
                "l4:2201: listener failed (address in use)",
                "l4:2202: target 192.168.1.20:22 is down",
                "l4:2203: not served by the agent",
            ]
        );
        assert_eq!(v.routes[0].listener, "failed");
        assert_eq!(v.routes[1].target_state, "down");
        assert_eq!(v.routes[1].target_detail.as_deref(), Some("refused"));
        assert_eq!(v.routes[2].listener, "not served");
        assert_eq!(v.rejected[0].reason, "listen_port 22 is reserved");
    }

    /// Egress routes are on the page too: their LAN listener, the tunnel target and who may
    /// use it; one that cannot bind degrades the verdict with its reason.
    #[test]
    fn egress_routes_show_their_listener_and_a_failed_bind_degrades() {
        let egress = |id: u64, port: u16| EgressRoute {
            id,
            vip_ip: "192.168.1.250".into(),
            vip_prefix: 24,
            lan_listen_port: port,
            target_host: "10.8.0.1".into(),
            target_port: 445,
            allowed_sources: vec!["192.168.1.0/24".into()],
            near_peers: Vec::new(),
        };
        let bound = |id: u64, port: u16, bound: bool| EgressStatus {
            id,
            bound,
            bind_error: (!bound).then(|| "address in use".into()),
            lan_bind_ip: "0.0.0.0".into(),
            lan_listen_port: port,
            source_drops: 3,
            active_connections: 2,
            bytes: 4096,
            refused: 1,
            failures: 0,
            last_error: None,
        };
        let mut r = report(
            vec![
                status(1, ListenerState::Listening, None),
                status(2, ListenerState::Listening, None),
                status(3, ListenerState::Listening, None),
            ],
            Some(20),
        );
        if let Some(c) = r.snapshot.config.as_mut() {
            c.egress_routes = vec![egress(7, 445), egress(8, 139), egress(9, 3389)];
        }
        if let Some(a) = r.snapshot.agent.as_mut() {
            a.scan_egress = vec![bound(7, 445, true), bound(8, 139, false)];
        }
        let v = build(&r, Series::default(), true, 100_000);
        let e: Vec<&RouteView> = v.routes.iter().filter(|r| r.kind == "egress").collect();
        assert_eq!(e.len(), 3);
        assert_eq!(e[0].name, "egress:445 (VIP 192.168.1.250)");
        assert_eq!(e[0].target, "tunnel 10.8.0.1:445 from 192.168.1.0/24");
        assert_eq!(
            (e[0].listener, e[0].connections, e[0].bytes),
            ("listening", 2, 4096)
        );
        assert_eq!(e[0].refused, 4, "cap refusals and allowlist drops");
        assert_eq!(e[1].listener, "failed");
        assert_eq!(e[2].listener, "not served");
        assert_eq!(v.verdict.word, "Degraded");
        assert_eq!(
            v.verdict.reasons,
            vec![
                "egress:139 (VIP 192.168.1.250): listener failed (address in use)",
                "egress:3389 (VIP 192.168.1.250): not served by the agent",
            ]
        );
    }

    #[test]
    fn no_handshake_or_no_agent_is_down() {
        let v = build(&report(vec![], None), Series::default(), false, 0);
        assert_eq!(v.verdict.word, "Down");
        assert_eq!(v.verdict.reasons[0], "no handshake with the hub yet");
        let v = build(&report(vec![], Some(600)), Series::default(), false, 0);
        assert_eq!(v.verdict.reasons[0], "no handshake with the hub for 10 min");
        let mut r = report(vec![], Some(5));
        r.snapshot.agent_reachable = false;
        r.snapshot.agent_error = Some("connection refused".into());
        let v = build(&r, Series::default(), false, 0);
        assert_eq!(v.verdict.word, "Down");
        assert_eq!(
            v.verdict.reasons[0],
            "the agent does not answer (connection refused)"
        );
    }

    #[test]
    fn standalone_says_so_once_and_a_failing_sync_is_a_reason() {
        let mut r = report(vec![], Some(5));
        r.snapshot.config = None;
        r.snapshot.sync.mode = "standalone".into();
        r.snapshot.sync.state = "standalone".into();
        r.snapshot.heartbeat = None;
        let v = build(&r, Series::default(), false, 0);
        let text: Vec<String> = v.sync.iter().map(|r| r.value.clone()).collect();
        assert_eq!(text[0], "standalone: routes from the local file");
        assert!(!text.iter().any(|t| t.contains("standalone, standalone")));
        assert_eq!(v.heartbeat[0].value, "not sent (standalone)");
        assert_eq!(v.verdict.word, "OK");
        let mut r = report(vec![], Some(5));
        r.snapshot.config = None;
        r.snapshot.sync.state = "offline_serving_last_good".into();
        r.snapshot.sync.last_error = Some("connect timed out".into());
        let v = build(&r, Series::default(), false, 0);
        assert_eq!(
            v.verdict.reasons,
            vec!["sync: server unreachable: serving the last good config"]
        );
        assert!(v
            .sync
            .contains(&row("Last error", "connect timed out", "bad")));
    }

    #[test]
    fn human_units() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(5 * 1024 * 1024), "5.0 MiB");
        assert_eq!(ago(12_400), "12 s ago");
        assert_eq!(ago(300_000), "5 min ago");
        assert_eq!(ago(3 * 3_600_000), "3 h ago");
    }
}
