//! The heartbeat body stays under the server's 16 KiB limit with 500 routes, keeps what
//! matters (failed listeners, unreachable routes) and says how much it left out; and it has
//! the shape the server reads (fixtures/heartbeat-request.json).

use gatelet_agent_api::control::{
    AgentStatus, ListenerState, Reachability, RouteKind, RouteStatus, TunnelStatus,
};
use gatelet_companion::heartbeat::{
    self_check, Heartbeat, SelfCheckInput, MAX_HEARTBEAT_BYTES, MAX_STATUS_BYTES,
};
use gatelet_companion::telemetry::{collect, TelemetrySource};
use serde_json::Value;

const ROUTES: usize = 500;

fn is_failed(i: usize) -> bool {
    i.is_multiple_of(13)
}

fn is_unreachable(i: usize) -> bool {
    i % 7 == 3
}

/// 250 HTTP routes with long domains and 250 L4 routes; every 13th L4 listener failed,
/// every 7th route unreachable.
fn big_agent() -> AgentStatus {
    let routes = (0..ROUTES)
        .map(|i| {
            let l4 = i % 2 == 1;
            let port = 20_000 + i as u16;
            RouteStatus {
                id: i as u64 + 1,
                kind: if l4 { RouteKind::L4 } else { RouteKind::Http },
                name: if l4 {
                    format!("l4:{port}")
                } else {
                    format!("service-number-{i}.some-long-home-domain.example.org")
                },
                listen_port: l4.then_some(port),
                tcp: if l4 && is_failed(i) {
                    ListenerState::Failed {
                        reason: "address in use".into(),
                    }
                } else {
                    ListenerState::Listening
                },
                udp: l4.then_some(ListenerState::Listening),
                active_connections: 0,
                bytes: 0,
                refused: 0,
                failures: 0,
                last_error: None,
                reachability: Some(Reachability {
                    reachable: !is_unreachable(i),
                    latency_ms: Some(2),
                    last_checked_at: 1_795_345_500_000,
                    method: None,
                }),
            }
        })
        .collect();
    AgentStatus {
        agent_version: "0.1.0".into(),
        tunnel: TunnelStatus {
            handshake_age_s: Some(14),
            ..Default::default()
        },
        http_proxy: Some(ListenerState::Listening),
        api_relay: Some(ListenerState::Listening),
        routes,
        ..Default::default()
    }
}

fn heartbeat(agent: Option<&AgentStatus>) -> Heartbeat {
    let check = self_check(&SelfCheckInput {
        agent,
        configured_l4_routes: None,
        api_serving: true,
        dns_resolve_ok: Some(true),
    });
    Heartbeat {
        check,
        hostname: "home-gw-box".into(),
        config_hash: Some(
            "sha256:7a03de71d95adb86fda87c5bfebc7791915b233fd9c035769ee0cc3ecca9fca0".into(),
        ),
        uptime_s: 1234,
        telemetry: collect(&TelemetrySource {
            state_dir: std::env::temp_dir(),
            tunnel_iface: "gatelet0".into(),
            tunnel_ip: None,
            lan_hints: Default::default(),
        }),
    }
}

#[test]
fn five_hundred_routes_fit_in_16_kib_keeping_failed_and_unreachable_first() {
    let agent = big_agent();
    let mut hb = heartbeat(Some(&agent));
    let untrimmed = serde_json::to_vec(&hb).unwrap().len();
    assert!(
        untrimmed > MAX_HEARTBEAT_BYTES,
        "test must need trimming: {untrimmed}"
    );

    let started = std::time::Instant::now();
    let bytes = hb.encode_bounded(MAX_HEARTBEAT_BYTES).unwrap();
    println!(
        "500 routes: untrimmed {untrimmed} bytes, sent {} bytes, trimming took {:?}",
        bytes.len(),
        started.elapsed()
    );
    assert!(bytes.len() <= MAX_HEARTBEAT_BYTES, "{} bytes", bytes.len());
    let v: Value = serde_json::from_slice(&bytes).expect("valid JSON");

    let listeners = v["tcp_listeners"].as_array().expect("tcp_listeners array");
    let reach = v["route_reachability"].as_array().expect("array");
    let total_l4 = (0..ROUTES).filter(|i| i % 2 == 1).count();
    let omitted_l = v["tcp_listeners_omitted"].as_u64().unwrap_or(0) as usize;
    let omitted_r = v["route_reachability_omitted"].as_u64().unwrap_or(0) as usize;
    assert_eq!(listeners.len() + omitted_l, total_l4);
    assert_eq!(reach.len() + omitted_r, ROUTES);
    assert!(omitted_r > 0, "something had to be left out");

    // Every failed listener is kept, and they come first.
    let failed_expected = (0..ROUTES).filter(|i| i % 2 == 1 && is_failed(*i)).count();
    let failed: Vec<&Value> = listeners
        .iter()
        .filter(|l| l["status"] == "listener_failed")
        .collect();
    assert_eq!(failed.len(), failed_expected);
    assert!(listeners[..failed_expected]
        .iter()
        .all(|l| l["status"] == "listener_failed"));

    // Every unreachable route is kept, first; what was dropped is reachable ones.
    let unreachable_expected = (0..ROUTES).filter(|i| is_unreachable(*i)).count();
    let unreachable = reach.iter().filter(|r| r["reachable"] == false).count();
    assert_eq!(unreachable, unreachable_expected);
    assert!(reach[..unreachable_expected]
        .iter()
        .all(|r| r["reachable"] == false));

    // The rest of the body is intact.
    assert_eq!(v["l4_routes_configured"], total_l4);
    assert_eq!(v["l4_listeners_missing"], failed_expected);
    assert_eq!(v["overall_healthy"], false);
    assert!(v["uptime_s"].is_number());
    assert!(v["telemetry"].is_object());

    // Deterministic: the same input trims the same way.
    let again = heartbeat(Some(&agent)).encode_bounded(MAX_HEARTBEAT_BYTES);
    let again: Value = serde_json::from_slice(&again.unwrap()).unwrap();
    assert_eq!(again["tcp_listeners"], v["tcp_listeners"]);
    assert_eq!(again["route_reachability"], v["route_reachability"]);
}

#[test]
fn a_small_body_is_sent_whole_without_omitted_counts() {
    let mut agent = big_agent();
    agent.routes.truncate(6);
    let mut hb = heartbeat(Some(&agent));
    let whole = serde_json::to_vec(&hb).unwrap();
    let bytes = hb.encode_bounded(MAX_HEARTBEAT_BYTES).unwrap();
    assert_eq!(bytes, whole);
    let v: Value = serde_json::from_slice(&bytes).unwrap();
    assert!(v.get("tcp_listeners_omitted").is_none());
    assert!(v.get("route_reachability_omitted").is_none());
}

#[test]
fn status_answer_of_500_routes_fits_in_64_kib() {
    let agent = big_agent();
    let check = heartbeat(Some(&agent)).check;
    let bytes = check.encode_bounded(MAX_STATUS_BYTES).unwrap();
    assert!(bytes.len() <= MAX_STATUS_BYTES);
    let v: Value = serde_json::from_slice(&bytes).unwrap();
    assert!(v.get("telemetry").is_none());
    assert!(v["tcp_listeners"].is_array());
}

#[test]
fn body_has_every_field_and_type_the_server_reads() {
    let fixture: Value = serde_json::from_str(include_str!("data/heartbeat-request.json")).unwrap();
    let mut agent = big_agent();
    agent.routes.truncate(4);
    let mut hb = heartbeat(Some(&agent));
    let v: Value =
        serde_json::from_slice(&hb.encode_bounded(MAX_HEARTBEAT_BYTES).unwrap()).unwrap();
    for key in fixture.as_object().unwrap().keys() {
        assert!(v.get(key).is_some(), "missing top-level field {key}");
    }
    // Fields of the Node.js reference that have no meaning here.
    let reference_only = [
        "node_version",
        "wg_tools_version",
        "scan_egress",
        "image_digest",
        "scan_egress_listeners",
        "scan_egress_near",
    ];
    for key in fixture["telemetry"].as_object().unwrap().keys() {
        if !reference_only.contains(&key.as_str()) {
            assert!(v["telemetry"].get(key).is_some(), "missing telemetry.{key}");
        }
    }
    for b in [
        "http_proxy_healthy",
        "api_healthy",
        "dns_resolve_ok",
        "overall_healthy",
    ] {
        assert!(v[b].is_boolean(), "{b} must be boolean");
    }
    assert!(v["tcp_listeners"].is_array());
    assert!(v["uptime_s"].is_number());
    assert_eq!(v["telemetry"]["os_platform"], "linux");
    assert_eq!(v["telemetry"]["lan_discovery"], true);
    assert_eq!(v["telemetry"]["lan_discovery_categories"][0]["key"], "web");
    assert!(v["telemetry"]["last_pull_at"].is_null());
    assert!(v["telemetry"]["pending_update"].is_boolean());
    let r = &v["route_reachability"][0];
    for k in [
        "route_id",
        "domain",
        "reachable",
        "latency_ms",
        "last_checked_at",
    ] {
        assert!(r.get(k).is_some(), "route_reachability entry lacks {k}");
    }
}
