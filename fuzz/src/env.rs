//! The `gateway.env` parser (`EnvFile::parse`) and validator (`GatewayEnv::from_file`).

use std::net::IpAddr;
use std::time::Duration;

use gatelet_agent_api::env::{EnvFile, GatewayEnv};

use crate::{alloc_peak, assert_alloc_bound};

/// Peak allocation allowed per input byte, and in total beyond that. The file is held once as
/// keys and values, the validated copy once more, and an error may quote a value escaped
/// (`\u{1}` is six bytes for one).
const ENV_BYTES_PER_BYTE: usize = 32;
const ENV_FIXED_BYTES: usize = 16 * 1024;

/// `value` as a double-quoted `gateway.env` value.
fn quoted(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn is_lower_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn is_iface_pattern(p: &str) -> bool {
    let name = p.strip_suffix('*').unwrap_or(p);
    !name.is_empty()
        && name.len() <= 15
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && !b"/:*".contains(&b))
}

/// Everything the validator promises about an accepted file, checked field by field.
fn assert_valid(env: &GatewayEnv) {
    if let Some(url) = &env.server_url {
        assert!(
            url.starts_with("http://") || url.starts_with("https://"),
            "{url:?}"
        );
        assert!(
            !url.ends_with('/') && !url.contains(char::is_whitespace),
            "{url:?}"
        );
        let token = env
            .api_token
            .as_ref()
            .expect("server URL without API token");
        assert!(
            token
                .expose()
                .strip_prefix("gc_gw_")
                .is_some_and(|h| is_lower_hex(h, 64)),
            "bad API token accepted"
        );
        let push = env
            .gateway_token
            .as_ref()
            .expect("server URL without push token");
        assert!(is_lower_hex(push.expose(), 64), "bad push token accepted");
    }
    let ip = env.tunnel_ip;
    assert!(
        !ip.is_unspecified() && !ip.is_broadcast() && !ip.is_multicast(),
        "{ip}"
    );
    assert_eq!(
        env.wg_address.addr,
        IpAddr::V4(ip),
        "WG_ADDRESS without the tunnel IP"
    );
    assert!(env.wg_address.prefix <= 32);
    assert!(env.proxy_port != 0 && env.api_port != 0);
    assert_ne!(env.proxy_port, env.api_port, "API and proxy on one port");
    for d in [env.heartbeat_interval, env.poll_interval] {
        assert!(
            (Duration::from_secs(1)..=Duration::from_secs(86_400)).contains(&d),
            "{d:?}"
        );
    }
    if let Some((host, port)) = &env.lan_probe_target {
        assert!(!host.is_empty() && *port != Some(0), "{host:?} {port:?}");
    }
    assert!(!env.wg_endpoint.host.is_empty() && env.wg_endpoint.port != 0);
    assert!(!env.wg_allowed_ips.is_empty(), "no allowed IPs");
    for c in &env.wg_allowed_ips {
        assert!(c.prefix > 0, "{c} routes everything into the tunnel");
        assert!(c.prefix <= if c.addr.is_ipv4() { 32 } else { 128 }, "{c}");
    }
    let tun = &env.tun_name;
    assert!(
        !tun.is_empty() && tun.len() <= 15 && !tun.contains(['/', ' ', ':']),
        "{tun:?}"
    );
    assert!((576..=9000).contains(&env.mtu), "MTU {}", env.mtu);
    for p in env.wol_interfaces.iter().chain(&env.wol_exclude) {
        assert!(is_iface_pattern(p), "interface pattern {p:?}");
    }
}

/// The parser and validator: an accepted file re-written with every value double-quoted
/// parses to the same keys and values (quoting and escapes are undone exactly); a validated
/// file holds only values the validator allows; an error names a line of the file; memory is
/// bounded by the input size.
pub fn check(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let lines = text.split('\n').count();
    let ((file, env), peak) = alloc_peak(|| {
        let file = EnvFile::parse(&text);
        let env = file.as_ref().ok().map(GatewayEnv::from_file);
        let env = env.map(|e| e.map(|e| assert_valid(&e)).map_err(|e| e.to_string()));
        (file, env)
    });
    assert_alloc_bound(
        "gateway.env",
        peak,
        text.len(),
        ENV_BYTES_PER_BYTE,
        ENV_FIXED_BYTES,
    );
    let file = match file {
        Ok(f) => f,
        Err(e) => {
            let line = e.line.expect("syntax error without a line");
            assert!(
                (1..=lines).contains(&line),
                "error on line {line} of {lines}"
            );
            return;
        }
    };
    if let Some(Err(msg)) = &env {
        assert!(!msg.is_empty());
    }

    let mut again = String::new();
    for key in file.keys() {
        let v = &file.get(key).expect("listed key").value;
        again.push_str(key);
        again.push('=');
        again.push_str(&quoted(v));
        again.push('\n');
    }
    let reparsed = EnvFile::parse(&again).unwrap_or_else(|e| panic!("{again:?}: {e}"));
    assert!(file.keys().eq(reparsed.keys()), "keys changed");
    for key in file.keys() {
        assert_eq!(
            file.get(key).map(|v| &v.value),
            reparsed.get(key).map(|v| &v.value),
            "value of {key} changed"
        );
    }
}
