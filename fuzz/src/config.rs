//! The config document of the server (`parse_document`) and the standalone routes file
//! (`parse_routes_text`), and the canonical hash.

use std::collections::HashSet;

use gatelet_agent_api::control::{Request, WolTarget};
use gatelet_companion::config::{
    canonical_hash, canonical_text, is_valid_hostname, is_valid_target_host, normalize_mac,
    parse_document, parse_routes_text, ConfigError, ReservedPorts, Validated, HASH_PREFIX,
};
use serde_json::Value;

use crate::{alloc_peak, assert_alloc_bound};

/// Peak allocation allowed per input byte, and in total beyond that. The JSON tree costs tens
/// of bytes per input byte at worst (`[[],[],...]`: a 32-byte value per 3 bytes, with a
/// vector's doubling), the schema-parsed copy, the canonical text and the routes once more.
const CONFIG_BYTES_PER_BYTE: usize = 160;
const CONFIG_FIXED_BYTES: usize = 64 * 1024;

fn assert_hash(h: &str) {
    let hex = h.strip_prefix(HASH_PREFIX).expect("hash prefix");
    assert!(
        hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')),
        "{h:?}"
    );
}

fn assert_wol(wol: &Option<WolTarget>) {
    if let Some(w) = wol {
        assert_eq!(
            normalize_mac(&w.mac).as_deref(),
            Some(w.mac.as_str()),
            "MAC not normal"
        );
        let first = u8::from_str_radix(&w.mac[..2], 16).unwrap();
        assert!(
            first & 1 == 0 && w.mac != "00:00:00:00:00:00",
            "{} wakes no one",
            w.mac
        );
    }
}

/// What validation promises about the routes handed to the agent.
fn assert_valid(v: &Validated, ports: ReservedPorts) {
    assert_hash(&v.canonical_hash);
    assert_eq!(v.agent.config_hash, v.config_hash);
    assert_eq!(
        v.applied_count() + v.rejected.len() + v.unsupported.len(),
        v.route_count,
        "a route is lost or counted twice"
    );
    let (mut ids, mut domains) = (HashSet::new(), HashSet::new());
    for r in &v.agent.http_routes {
        assert!(r.id > 0 && ids.insert(r.id), "HTTP id {}", r.id);
        assert!(is_valid_hostname(&r.domain, true), "domain {:?}", r.domain);
        assert!(domains.insert(&r.domain), "two routes for {}", r.domain);
        assert!(is_valid_target_host(&r.target_host), "{:?}", r.target_host);
        assert_ne!(r.target_port, 0);
        assert_wol(&r.wol);
    }
    let (mut ids, mut listen) = (HashSet::new(), HashSet::new());
    for r in &v.agent.l4_routes {
        assert!(r.id > 0 && ids.insert(r.id), "L4 id {}", r.id);
        assert!(
            listen.insert(r.listen_port),
            "two routes on {}",
            r.listen_port
        );
        assert!(![0, ports.proxy, ports.api].contains(&r.listen_port));
        assert!(is_valid_target_host(&r.target_host), "{:?}", r.target_host);
        assert_ne!(r.target_port, 0);
        assert_wol(&r.wol);
    }
    // What the companion sends the agent comes back unchanged over the control socket.
    let line = serde_json::to_string(&Request::Apply {
        config: v.agent.clone(),
    })
    .unwrap();
    assert!(!line.contains('\n'));
    match serde_json::from_str::<Request>(&line).unwrap() {
        Request::Apply { config } => assert_eq!(config, v.agent),
        other => panic!("{other:?}"),
    }
}

/// Both parsers: a validated document holds only well-formed routes, no two on one domain,
/// listen port or id; every route is applied, rejected or listed as unsupported, exactly once;
/// a document refused as a whole had all its routes rejected; the canonical hash does not
/// depend on formatting, key order or array order (the canonical text of a document hashes
/// like the document); the routes file's hash is its canonical hash; memory is bounded.
pub fn check(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let ports = ReservedPorts {
        proxy: 8080,
        api: 9876,
        diag: Some(8088),
    };
    let ((), peak) = alloc_peak(|| {
        for file in [false, true] {
            let r = if file {
                parse_routes_text(&text, "routes file fuzz", ports)
            } else {
                parse_document(&text, ports)
            };
            match r {
                Ok(v) => {
                    assert_valid(&v, ports);
                    if file {
                        assert_eq!(v.config_hash.as_ref(), Some(&v.canonical_hash));
                    }
                }
                Err(ConfigError::AllRoutesRejected { validated, .. }) => {
                    assert_eq!(validated.applied_count(), 0);
                    assert!(!validated.rejected.is_empty());
                }
                Err(
                    ConfigError::Json { .. }
                    | ConfigError::NotAnObject { .. }
                    | ConfigError::NotAnArray { .. }
                    | ConfigError::UnknownKey { .. },
                ) => {}
                Err(e) => panic!("unexpected error for text input: {e}"),
            }
        }
    });
    assert_alloc_bound(
        "config document",
        peak,
        text.len(),
        CONFIG_BYTES_PER_BYTE,
        CONFIG_FIXED_BYTES,
    );

    let Ok(doc) = serde_json::from_str::<Value>(&text) else {
        return;
    };
    let h = canonical_hash(&doc);
    assert_hash(&h);
    // serde_json reads floats best-effort (no `float_roundtrip` feature): a long mantissa may
    // read back one unit off after printing. Such a document's hash cannot be stable under
    // re-reading, whatever the canonical form; the properties below are for the others.
    let printed: Value = serde_json::from_str(&doc.to_string()).unwrap();
    if printed != doc {
        return;
    }
    let canonical: Value = serde_json::from_str(&canonical_text(&doc))
        .unwrap_or_else(|e| panic!("canonical text is not JSON: {e}"));
    assert_eq!(
        canonical_hash(&canonical),
        h,
        "canonical text hashes differently"
    );
    let pretty: Value = serde_json::from_str(&serde_json::to_string_pretty(&doc).unwrap()).unwrap();
    assert_eq!(canonical_hash(&pretty), h, "formatting changed the hash");
}
