//! The canonical hash of a config document (protocol §4).

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::{EGRESS_ARRAY_KEYS, EGRESS_KEYS, HASH_PREFIX, HTTP_HASH_KEYS, L4_KEYS, TOP_KEYS};

/// The canonical hash of a config document (protocol §4), `sha256:` + 64 lowercase hex.
///
/// The document is schema-parsed: unknown keys are dropped (at the top level `config_hash`
/// itself too), route defaults are filled in (`protocol: "http"` on HTTP routes, `wol_enabled:
/// false` on HTTP and L4 routes, `[]` for an egress route's missing arrays), members whose value
/// is null are dropped, object keys are sorted, every array is sorted by its elements'
/// canonical text, there is no whitespace and integers have no decimal point. A missing
/// top-level array stays missing: the protocol's vector `{}` hashes the text `{}`.
///
/// Diagnostic only; see [`Validated::hash_mismatch`].
pub fn canonical_hash(doc: &Value) -> String {
    let text = canonical_text(&schema_parse(doc));
    let digest = Sha256::digest(text.as_bytes());
    let mut out = String::with_capacity(HASH_PREFIX.len() + 64);
    out.push_str(HASH_PREFIX);
    for b in digest {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

pub(super) fn schema_parse(doc: &Value) -> Value {
    let Some(obj) = doc.as_object() else {
        return doc.clone();
    };
    let mut out = Map::new();
    for key in TOP_KEYS {
        let Some(v) = obj.get(*key) else { continue };
        let v = match (*key, v) {
            ("routes", Value::Array(a)) => Value::Array(
                a.iter()
                    .map(|r| schema_route(r, HTTP_HASH_KEYS, &[("protocol", "http".into())], &[]))
                    .collect(),
            ),
            ("l4_routes", Value::Array(a)) => Value::Array(
                a.iter()
                    .map(|r| schema_route(r, L4_KEYS, &[], &[]))
                    .collect(),
            ),
            ("egress_routes", Value::Array(a)) => Value::Array(
                a.iter()
                    .map(|r| schema_route(r, EGRESS_KEYS, &[], EGRESS_ARRAY_KEYS))
                    .collect(),
            ),
            _ => v.clone(),
        };
        out.insert((*key).to_string(), v);
    }
    Value::Object(out)
}

pub(super) fn schema_route(
    route: &Value,
    keys: &[&str],
    defaults: &[(&str, Value)],
    array_keys: &[&str],
) -> Value {
    let Some(obj) = route.as_object() else {
        return route.clone();
    };
    let mut out = Map::new();
    for key in keys {
        if let Some(v) = obj.get(*key).filter(|v| !v.is_null()) {
            out.insert((*key).to_string(), v.clone());
        }
    }
    for (key, default) in defaults {
        out.entry(*key).or_insert_with(|| default.clone());
    }
    if keys.contains(&"wol_enabled") {
        out.entry("wol_enabled").or_insert(Value::Bool(false));
    }
    for key in array_keys {
        out.entry(*key).or_insert_with(|| Value::Array(Vec::new()));
    }
    Value::Object(out)
}

/// The canonical text of a JSON value (see [`canonical_hash`]).
pub fn canonical_text(v: &Value) -> String {
    match v {
        Value::Object(m) => {
            let mut members: Vec<(&String, &Value)> =
                m.iter().filter(|(_, v)| !v.is_null()).collect();
            members.sort_by(|a, b| a.0.cmp(b.0));
            let inner: Vec<String> = members
                .into_iter()
                .map(|(k, v)| format!("{}:{}", json_string(k), canonical_text(v)))
                .collect();
            format!("{{{}}}", inner.join(","))
        }
        Value::Array(a) => {
            let mut items: Vec<String> = a.iter().map(canonical_text).collect();
            items.sort();
            format!("[{}]", items.join(","))
        }
        Value::Number(n) => match n.as_f64() {
            // An integral float (5000.0) prints as the integer, as JavaScript does.
            Some(f) if n.is_f64() && f.fract() == 0.0 && f.abs() < 9.007_199_254_740_992e15 => {
                format!("{}", f as i64)
            }
            _ => n.to_string(),
        },
        Value::String(s) => json_string(s),
        Value::Bool(b) => b.to_string(),
        Value::Null => "null".into(),
    }
}

pub(super) fn json_string(s: &str) -> String {
    // serde_json never fails to serialise a string.
    serde_json::to_string(s).unwrap_or_default()
}
