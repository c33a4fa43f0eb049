use std::path::Path;

use gatelet_agent_api::control::{HttpRoute, WolTarget};
use serde_json::json;

use super::fields::*;
use super::hash::*;
use super::routes_file::*;
use super::*;

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
fn egress_routes_of_the_fixture_reach_the_agent() {
    let v = parse_document(
        &fixture("gateway-config-with-egress.json"),
        ReservedPorts::default(),
    )
    .unwrap();
    assert!(v.rejected.is_empty(), "{:?}", v.rejected);
    assert!(v.unsupported.is_empty(), "{:?}", v.unsupported);
    assert!(v.warnings.is_empty(), "{:?}", v.warnings);
    assert_eq!(
        v.agent.egress_routes,
        vec![gatelet_agent_api::control::EgressRoute {
            id: 1,
            vip_ip: "192.168.1.250".into(),
            vip_prefix: 24,
            lan_listen_port: 14450,
            target_host: "10.8.0.1".into(),
            target_port: 2222,
            allowed_sources: vec!["192.168.1.60/32".into()],
            near_peers: vec![],
        }]
    );
    assert_eq!(v.egress[0].lan_listen_port, Some(14450));
    assert_eq!(v.applied_count(), 5);
    assert_eq!(v.route_count, 5);
    // A document whose only routes are broken egress routes is bad as a whole, like one
    // whose HTTP and L4 routes are all broken.
    let only = json!({"egress_routes": [{"id": 7}]});
    let e = validate_document(&only, ReservedPorts::default()).unwrap_err();
    assert!(matches!(e, ConfigError::AllRoutesRejected { .. }), "{e}");
}

#[test]
fn egress_routes_are_checked_one_by_one() {
    let good = || {
        json!({"id": 5, "vip_ip": "192.168.1.250", "vip_prefix": 24, "lan_listen_port": 14450,
               "tunnel_target_host": "10.8.0.1", "tunnel_target_port": 2222,
               "allowed_source_ips": ["192.168.1.60/32"], "near_peers": ["192.168.1.3"]})
    };
    let with = |k: &str, v: Value| {
        let mut r = good();
        r[k] = v;
        r
    };
    let without = |k: &str| {
        let mut r = good();
        r.as_object_mut().unwrap().remove(k);
        r
    };
    // (case, route, Err(reason part) or Ok((allowed_sources, near_peers, skipped count)))
    type Want = Result<(Vec<&'static str>, Vec<&'static str>, usize), &'static str>;
    let cases: Vec<(&str, Value, Want)> = vec![
        (
            "the server's shape",
            good(),
            Ok((vec!["192.168.1.60/32"], vec!["192.168.1.3"], 0)),
        ),
        (
            "a bare address is /32, host bits cleared, duplicates merged",
            with(
                "allowed_source_ips",
                json!(["192.168.1.60", "10.1.2.3/8", "10.0.0.0/8"]),
            ),
            Ok((
                vec!["192.168.1.60/32", "10.0.0.0/8"],
                vec!["192.168.1.3"],
                0,
            )),
        ),
        (
            "invalid sources are skipped with a reason, the rest kept",
            with(
                "allowed_source_ips",
                json!(["printer", "192.168.1.7/33", "fd00::1", 5, "192.168.1.8"]),
            ),
            Ok((vec!["192.168.1.8/32"], vec!["192.168.1.3"], 4)),
        ),
        (
            "an empty allowlist is kept (it denies everybody)",
            with("allowed_source_ips", json!([])),
            Ok((vec![], vec!["192.168.1.3"], 0)),
        ),
        (
            "missing arrays are empty",
            without("near_peers"),
            Ok((vec!["192.168.1.60/32"], vec![], 0)),
        ),
        (
            "invalid peers are skipped",
            with(
                "near_peers",
                json!(["gw2", "0.0.0.0", "192.168.1.250", "192.168.1.4"]),
            ),
            Ok((vec!["192.168.1.60/32"], vec!["192.168.1.4"], 3)),
        ),
        ("vip missing", without("vip_ip"), Err("vip_ip is missing")),
        (
            "vip not IPv4",
            with("vip_ip", json!("nas.lan")),
            Err("vip_ip \"nas.lan\" is not an IPv4 address"),
        ),
        (
            "prefix out of range",
            with("vip_prefix", json!(33)),
            Err("vip_prefix 33"),
        ),
        (
            "port below 1024",
            with("lan_listen_port", json!(445)),
            Err("lan_listen_port 445 is below 1024"),
        ),
        (
            "port out of range",
            with("lan_listen_port", json!(70000)),
            Err("lan_listen_port 70000 is not a port"),
        ),
        (
            "target host a name",
            with("tunnel_target_host", json!("hub")),
            Err("tunnel_target_host \"hub\" is not an IPv4 address"),
        ),
        (
            "target port missing",
            without("tunnel_target_port"),
            Err("tunnel_target_port is missing"),
        ),
        (
            "allowlist not an array",
            with("allowed_source_ips", json!("192.168.1.60")),
            Err("allowed_source_ips must be an array"),
        ),
    ];
    for (name, route, want) in cases {
        let doc = json!({"l4_routes": [{"id": 1, "listen_port": 2222,
            "target_lan_host": "192.168.1.20", "target_lan_port": 22}],
            "egress_routes": [route]});
        let v = validate_document(&doc, ReservedPorts::default()).unwrap();
        match want {
            Ok((sources, peers, skipped)) => {
                assert!(v.rejected.is_empty(), "{name}: {:?}", v.rejected);
                let e = &v.agent.egress_routes[0];
                assert_eq!(e.allowed_sources, sources, "{name}");
                assert_eq!(e.near_peers, peers, "{name}");
                assert_eq!(v.warnings.len(), skipped, "{name}: {:?}", v.warnings);
                assert!(
                    v.warnings
                        .iter()
                        .all(|u| u.id == Some(5) && u.reason.contains("skipped")),
                    "{name}"
                );
                // Every route is counted once: applied, rejected or unsupported.
                assert!(v.unsupported.is_empty(), "{name}");
                assert_eq!(
                    v.applied_count() + v.rejected.len(),
                    v.route_count,
                    "{name}"
                );
            }
            Err(part) => {
                assert!(v.agent.egress_routes.is_empty(), "{name}");
                assert_eq!(v.rejected.len(), 1, "{name}");
                assert_eq!(v.rejected[0].kind, KIND_EGRESS);
                assert!(
                    v.rejected[0].reason.contains(part),
                    "{name}: {:?} lacks {part:?}",
                    v.rejected[0].reason
                );
                assert_eq!(v.agent.l4_routes.len(), 1, "{name}: the others apply");
            }
        }
    }
}

#[test]
fn egress_ports_may_not_collide() {
    let e = |id: u64, port: u16| {
        json!({"id": id, "vip_ip": "192.168.1.250", "lan_listen_port": port,
               "tunnel_target_host": "10.8.0.1", "tunnel_target_port": 2222,
               "allowed_source_ips": ["192.168.1.60"]})
    };
    let p = ReservedPorts::default();
    let doc = json!({
        "l4_routes": [{"id": 1, "listen_port": 14451, "target_lan_host": "192.168.1.20",
                       "target_lan_port": 22}],
        "egress_routes": [e(1, 14450), e(2, 14450), e(3, 14451), e(4, p.proxy), e(5, p.api),
                          e(1, 14460), e(6, 14460)]
    });
    let v = validate_document(&doc, p).unwrap();
    let got: Vec<(Option<u64>, &str)> = v
        .rejected
        .iter()
        .map(|r| (r.id, r.reason.as_str()))
        .collect();
    let want_parts = [
        (Some(2), "already used by egress route 1"),
        (Some(3), "listen port of L4 route 1"),
        (Some(4), "GC_PROXY_PORT"),
        (Some(5), "GC_API_PORT"),
        (Some(1), "duplicate id 1"),
    ];
    assert_eq!(got.len(), want_parts.len(), "{got:?}");
    for ((id, reason), (wid, part)) in got.iter().zip(want_parts) {
        assert_eq!(*id, wid);
        assert!(reason.contains(part), "{reason:?} lacks {part:?}");
    }
    let served: Vec<u64> = v.agent.egress_routes.iter().map(|r| r.id).collect();
    assert_eq!(served, vec![1, 6]);
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
