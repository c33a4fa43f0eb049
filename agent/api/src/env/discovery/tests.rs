use super::*;
use crate::env::{EnvFile, GatewayEnv};

const SERVER_FILE: &str = include_str!("../../../testdata/gateway-env.txt");

fn parse_with(extra: &str) -> Result<GatewayEnv, EnvError> {
    EnvFile::parse(&format!("{SERVER_FILE}\n{extra}\n")).and_then(|f| GatewayEnv::from_file(&f))
}

#[test]
fn discovery_keys_default_parse_and_reject_garbage() {
    let d = parse_with("").unwrap().discovery;
    assert_eq!(d, DiscoveryEnv::default());
    let d = parse_with(
        "GC_DISCOVERY_MAX_PREFIX=24\nGC_DISCOVERY_TIMEOUT_MS=20000\nGC_DISCOVERY_CONCURRENCY=64",
    )
    .unwrap();
    assert!(d.unknown_keys.is_empty(), "{:?}", d.unknown_keys);
    assert_eq!(
        d.discovery,
        DiscoveryEnv {
            max_prefix: 24,
            timeout: Duration::from_millis(20_000),
            concurrency: 64
        }
    );
    for (key, bad) in [
        ("GC_DISCOVERY_MAX_PREFIX", "8"),
        ("GC_DISCOVERY_MAX_PREFIX", "/22"),
        ("GC_DISCOVERY_TIMEOUT_MS", "60000"),
        ("GC_DISCOVERY_TIMEOUT_MS", "45s"),
        ("GC_DISCOVERY_CONCURRENCY", "0"),
        ("GC_DISCOVERY_CONCURRENCY", "100000"),
    ] {
        let e = parse_with(&format!("{key}={bad}")).unwrap_err();
        assert_eq!(e.key.as_deref(), Some(key), "{key}={bad}: {e}");
        assert!(e.line.is_some(), "{key}: {e}");
        assert!(e.to_string().contains("must be"), "{e}");
    }
}
