//! A LAN scan from request to closing batch, in one process on loopback: the scanner's
//! answers to `/api/lan-scan` bodies, a real sweep of 127.0.0.0/24 (the gateway's "own"
//! subnet here) finding a real listener, and the batches at the fake GateControl, which
//! checks every limit of the real server's ingest. The namespaced version with mDNS, SSDP
//! and a host that drops SYNs is `tests-hw/tests/lan_scan_e2e.rs`.

#[path = "fake_gatecontrol/mod.rs"]
mod fake_gatecontrol;

use std::net::{Ipv4Addr, TcpListener};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fake_gatecontrol::FakeGateControl;
use gatelet_agent_api::env::{DiscoveryEnv, EnvFile, GatewayEnv};
use gatelet_companion::client::Client;
use gatelet_companion::discovery::Scanner;
use gatelet_companion::sync::Budget;
use serde_json::{json, Value};

fn api_token() -> gatelet_agent_api::env::Secret {
    let file = EnvFile::parse(include_str!("data/gateway-env.txt")).unwrap();
    GatewayEnv::from_file(&file).unwrap().api_token.unwrap()
}

fn exchange(name: &str) -> Value {
    let path = fake_gatecontrol::fixture_dir().join(name);
    serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap()
}

fn answer(fixture: &Value, when: &str) -> (u16, Value) {
    let a = fixture["answers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["when"].as_str().unwrap().starts_with(when))
        .unwrap_or_else(|| panic!("no answer {when:?} in the fixture"));
    (a["status"].as_u64().unwrap() as u16, a["body"].clone())
}

#[test]
fn the_fixtures_exchanges_are_answered_as_the_server_and_reference_do() {
    // Our /api/lan-scan answers, from the fixture's request.
    let lan = exchange("lan-scan-exchange.json");
    let own = Arc::new(|| {
        vec![(
            "192.168.1.0/24".parse().unwrap(),
            Ipv4Addr::new(192, 168, 1, 5),
        )]
    });
    let scanner = Scanner::new(own, DiscoveryEnv::default(), None);
    let mut req = lan["request"]["body"].clone();
    req.as_object_mut().unwrap().remove("request_id");
    assert_eq!(scanner.start(&req), answer(&lan, "no request_id"));
    let mut req = lan["request"]["body"].clone();
    req["subnets"] = json!([]);
    assert_eq!(scanner.start(&req), answer(&lan, "no or empty subnets"));
    req["subnets"] = json!(["192.168.1.0/25"]);
    assert_eq!(scanner.start(&req), answer(&lan, "no requested subnet"));
    let ok = gatelet_companion::discovery::validate(
        &lan["request"]["body"],
        &[(
            "192.168.1.0/24".parse().unwrap(),
            Ipv4Addr::new(192, 168, 1, 5),
        )],
        &DiscoveryEnv::default(),
    )
    .unwrap();
    assert_eq!(
        (202, gatelet_companion::discovery::accepted(&ok)),
        answer(&lan, "accepted")
    );

    // The fake's /discovery answers, from the fixture's batch.
    let disc = exchange("discovery-exchange.json");
    let batch = &disc["request"]["body"];
    let mut ingest = fake_gatecontrol::discovery::Ingest::default();
    let now = Instant::now();
    assert_eq!(ingest.take(batch, now), answer(&disc, "accepted"));
    assert_eq!(
        ingest.take(&json!({"devices": []}), now),
        answer(&disc, "no request_id")
    );
    let other = json!({"request_id": "other", "devices": [], "done": true});
    assert_eq!(
        ingest.take(&other, now),
        answer(&disc, "another request_id")
    );
    // Two counted so far (a batch without request_id is refused before the count); 60 pass.
    for _ in 0..58 {
        ingest.take(batch, now);
    }
    assert_eq!(ingest.take(batch, now), answer(&disc, "more than 60"));
    // Our encoder produces the fixture's shape.
    let v: Value =
        serde_json::from_slice(&gatelet_companion::discovery::batch::encode("r", &[], true)[0])
            .unwrap();
    assert_eq!(v, json!({"request_id": "r", "devices": [], "done": true}));
}

#[test]
fn a_scan_is_accepted_once_finds_a_listener_and_closes_within_the_limits() {
    let server = FakeGateControl::start_default().unwrap();
    let client = Client::new(&server.url(), api_token());
    let budget = Budget::new(Duration::from_secs(30)).shared();
    // A listener on a loopback address of the "LAN", on a port of the iot category.
    let listener = TcpListener::bind((Ipv4Addr::new(127, 0, 0, 77), 8123)).unwrap();
    let port = listener.local_addr().unwrap().port();
    let own = Arc::new(|| vec![("127.0.0.0/24".parse().unwrap(), Ipv4Addr::LOCALHOST)]);
    let scanner = Scanner::new(own, DiscoveryEnv::default(), Some((client, budget.clone())));

    let body = |id: &str, subnets: Value| {
        json!({"request_id": id, "subnets": subnets, "category_mode": "include",
               "categories": ["iot"], "active_scan": true, "timeout_ms": 45000})
    };
    assert_eq!(
        scanner.start(&json!({"subnets": ["127.0.0.0/24"]})),
        (400, json!({"error": "request_id_required"}))
    );
    assert_eq!(
        scanner.start(&body("r0", json!([]))),
        (400, json!({"error": "subnets_required"}))
    );
    assert_eq!(
        scanner.start(&body("r0", json!(["192.168.1.0/24", "127.0.0.0/16"]))),
        (403, json!({"error": "no_valid_subnets"}))
    );
    server.begin_scan("scan-1");
    let started = Instant::now();
    assert_eq!(
        scanner.start(&body("scan-1", json!(["127.0.0.0/24"]))),
        (
            202,
            json!({"accepted": true, "request_id": "scan-1", "subnets_scanned": ["127.0.0.0/24"]})
        )
    );
    assert_eq!(
        scanner.start(&body("scan-2", json!(["127.0.0.0/24"]))),
        (409, json!({"error": "scan_in_progress"}))
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while scanner.busy() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let took = started.elapsed();
    assert!(!scanner.busy(), "the scan did not end within 30 s");
    let batches = server.discovery_batches();
    let statuses: Vec<u16> = server
        .requests()
        .iter()
        .filter(|r| r.path() == "/api/v1/gateway/discovery")
        .map(|r| r.status)
        .collect();
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    let last = batches.last().expect("a closing batch");
    assert_eq!(last["request_id"], "scan-1");
    assert_eq!(last["done"], true);
    assert!(batches[..batches.len() - 1]
        .iter()
        .all(|b| b["done"] == false));
    let found = last["devices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["ip"] == "127.0.0.77")
        .unwrap_or_else(|| panic!("127.0.0.77 not reported: {last}"));
    assert!(
        found["ports"]
            .as_array()
            .unwrap()
            .contains(&json!({"port": port, "source": "tcp", "service_hint": null})),
        "{found}"
    );
    // Every batch took a slot of the shared budget.
    let used = budget.lock().unwrap().sent_in_window(Instant::now());
    assert_eq!(used, batches.len());
    println!("loopback /24 scan: {} batches in {took:?}", batches.len());
    // Idle again: the next scan is accepted.
    server.begin_scan("scan-3");
    assert_eq!(
        scanner.start(&body("scan-3", json!(["127.0.0.0/24"]))).0,
        202
    );
}
