use super::file::*;
use super::reader::*;
use super::*;

/// The file a GateControl server generates, as in protocol/fixtures/gateway-env.txt.
const SERVER_FILE: &str = include_str!("../../testdata/gateway-env.txt");

fn parse(text: &str) -> Result<GatewayEnv, EnvError> {
    EnvFile::parse(text).and_then(|f| GatewayEnv::from_file(&f))
}

/// The server's file with `key` set to `value` (in place, or appended when absent).
fn with(key: &str, value: &str) -> String {
    let mut out = String::new();
    let mut found = false;
    for line in SERVER_FILE.lines() {
        if line.starts_with(&format!("{key}=")) {
            out.push_str(&format!("{key}={value}\n"));
            found = true;
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    if !found {
        out.push_str(&format!("{key}={value}\n"));
    }
    out
}

#[test]
fn server_generated_file_parses_with_every_key() {
    let env = parse(SERVER_FILE).unwrap();
    assert_eq!(env.server_url.as_deref(), Some("http://10.8.0.1:3000"));
    assert!(env
        .api_token
        .as_ref()
        .unwrap()
        .expose()
        .starts_with("gc_gw_0123"));
    assert_eq!(env.tunnel_ip, Ipv4Addr::new(10, 8, 0, 2));
    assert_eq!(env.proxy_port, 8080);
    assert_eq!(env.api_port, 9876);
    assert_eq!(env.heartbeat_interval, Duration::from_secs(30));
    assert_eq!(env.poll_interval, Duration::from_secs(300));
    assert_eq!(env.wg_endpoint.host, "gc-testbed.invalid");
    assert_eq!(env.wg_endpoint.port, 51820);
    assert!(env.wg_preshared_key.is_some());
    assert_eq!(env.wg_allowed_ips[0].to_string(), "10.8.0.1/32");
    assert_eq!(env.wg_dns, vec!["10.8.0.1".parse::<IpAddr>().unwrap()]);
    assert_eq!(env.tun_name, DEFAULT_TUN_NAME);
    assert!(env.unknown_keys.is_empty());
}

#[test]
fn crlf_export_quotes_and_trailing_comments_are_accepted() {
    let text = SERVER_FILE
        .replace(
            "GC_PROXY_PORT=8080",
            "export GC_PROXY_PORT=\"8081\"  # proxy",
        )
        .replace("GC_API_PORT=9876", "GC_API_PORT='9877'")
        .replace(
            "GC_POLL_INTERVAL_S=300",
            "GC_POLL_INTERVAL_S=120 # two minutes",
        )
        .replace('\n', "\r\n");
    let env = parse(&format!("\u{feff}{text}")).unwrap();
    assert_eq!(env.proxy_port, 8081);
    assert_eq!(env.api_port, 9877);
    assert_eq!(env.poll_interval, Duration::from_secs(120));
}

#[test]
fn hash_inside_an_unquoted_value_is_kept() {
    let f = EnvFile::parse("A=x#y\nB=\"p # q\" # c\n").unwrap();
    assert_eq!(f.get("A").unwrap().value, "x#y");
    assert_eq!(f.get("B").unwrap().value, "p # q");
}

#[test]
fn bad_token_names_line_and_key() {
    let e = parse(&with("GC_API_TOKEN", "gc_gw_XYZ")).unwrap_err();
    assert_eq!(
        e.to_string(),
        "gateway.env line 6: GC_API_TOKEN must be gc_gw_ followed by 64 lowercase hex \
         characters, not \"gc_gw_XYZ\""
    );
}

#[test]
fn empty_server_public_key_is_a_clear_error() {
    let e = parse(&with("WG_SERVER_PUBLIC_KEY", "")).unwrap_err();
    assert_eq!(e.key.as_deref(), Some("WG_SERVER_PUBLIC_KEY"));
    assert_eq!(e.line, Some(19));
    assert!(e.to_string().contains("is empty"), "{e}");
}

#[test]
fn missing_required_key_is_named() {
    let text: String = SERVER_FILE
        .lines()
        .filter(|l| !l.starts_with("WG_PRIVATE_KEY="))
        .map(|l| format!("{l}\n"))
        .collect();
    let e = parse(&text).unwrap_err();
    assert_eq!(e.key.as_deref(), Some("WG_PRIVATE_KEY"));
    assert_eq!(e.line, None);
    assert!(e.to_string().contains("is missing"), "{e}");
}

#[test]
fn every_validated_key_rejects_garbage() {
    for (key, bad) in [
        ("GC_SERVER_URL", "ftp://x"),
        ("GC_GATEWAY_TOKEN", "FEDCBA"),
        ("GC_TUNNEL_IP", "0.0.0.0"),
        ("GC_PROXY_PORT", "70000"),
        ("GC_API_PORT", "0"),
        ("GC_HEARTBEAT_INTERVAL_S", "soon"),
        ("GC_POLL_INTERVAL_S", "-1"),
        ("WG_PRIVATE_KEY", "short"),
        ("WG_PRESHARED_KEY", "!!"),
        ("WG_ENDPOINT", "hub.example.com"),
        ("WG_ADDRESS", "10.8.0.9/32"),
        ("WG_ALLOWED_IPS", "0.0.0.0/0"),
        ("WG_DNS", "resolver"),
        ("GATELET_DIAG_LISTEN", "everywhere"),
        ("GATELET_WOL_INTERFACES", "eth0,a/b"),
        ("GATELET_WOL_EXCLUDE", "averyveryverylongname0"),
    ] {
        let e = parse(&with(key, bad)).unwrap_err();
        assert_eq!(e.key.as_deref(), Some(key), "{key}={bad}: {e}");
        assert!(e.line.is_some(), "{key}: {e}");
    }
}

#[test]
fn datapath_threads_default_to_auto_which_takes_two_only_with_three_cores_or_more() {
    let env = parse(SERVER_FILE).unwrap();
    assert_eq!(env.datapath_threads, DatapathThreads::Auto);
    assert_eq!(
        [1, 2, 3, 4].map(|c| DatapathThreads::Auto.resolve(c)),
        [1, 1, 2, 2]
    );
    for (v, want, threads) in [
        ("1", DatapathThreads::One, 1),
        ("2", DatapathThreads::Two, 2),
        ("auto", DatapathThreads::Auto, 2),
    ] {
        let env = parse(&with("GATELET_DATAPATH_THREADS", v)).unwrap();
        assert_eq!(env.datapath_threads, want);
        assert_eq!(env.datapath_threads.resolve(4), threads);
        assert_eq!(want.resolve(1).min(threads), want.resolve(1));
        assert!(env.unknown_keys.is_empty());
    }
    for bad in ["0", "3", "two", "-1"] {
        let e = parse(&with("GATELET_DATAPATH_THREADS", bad)).unwrap_err();
        assert_eq!(
            e.key.as_deref(),
            Some("GATELET_DATAPATH_THREADS"),
            "{bad:?}"
        );
        assert!(e.to_string().contains("must be auto, 1 or 2"), "{e}");
    }
}

#[test]
fn netstack_mode_defaults_to_auto_and_refuses_other_words() {
    assert_eq!(parse(SERVER_FILE).unwrap().netstack, NetstackMode::Auto);
    for (v, want) in [
        ("kernel", NetstackMode::Kernel),
        ("userspace", NetstackMode::Userspace),
        ("auto", NetstackMode::Auto),
    ] {
        let env = parse(&with("GATELET_NETSTACK", v)).unwrap();
        assert_eq!(env.netstack, want);
        assert_eq!(want.to_string(), v);
        assert!(env.unknown_keys.is_empty());
    }
    let env = parse(&with("GATELET_NETSTACK", "")).unwrap();
    assert_eq!(
        env.netstack,
        NetstackMode::Auto,
        "empty is absent, as for every key"
    );
    for bad in ["smoltcp", "Kernel", "tun"] {
        let e = parse(&with("GATELET_NETSTACK", bad)).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("GATELET_NETSTACK"), "{bad:?}");
        assert!(
            e.to_string().contains("must be kernel, userspace or auto"),
            "{e}"
        );
    }
}

#[test]
fn wol_interface_lists_are_parsed_and_default_to_empty() {
    let env = parse(SERVER_FILE).unwrap();
    assert!(env.wol_interfaces.is_empty() && env.wol_exclude.is_empty());
    let text = with("GATELET_WOL_INTERFACES", "veth-lan0, eth1,enp*");
    let env = parse(&text).unwrap();
    assert_eq!(env.wol_interfaces, ["veth-lan0", "eth1", "enp*"]);
    let env = parse(&with("GATELET_WOL_EXCLUDE", "docker*,eth9")).unwrap();
    assert_eq!(env.wol_exclude, ["docker*", "eth9"]);
    assert!(env.unknown_keys.is_empty());
    for bad in ["*", "e*th0", "eth 0", "a:b"] {
        let e = parse(&with("GATELET_WOL_EXCLUDE", bad)).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("GATELET_WOL_EXCLUDE"), "{bad}");
    }
}

#[test]
fn syntax_error_names_the_line() {
    let e = EnvFile::parse("# c\n\nNOT A LINE\n").unwrap_err();
    assert_eq!(e.to_string(), "gateway.env line 3: is not KEY=value");
    let e = EnvFile::parse("A=\"open\n").unwrap_err();
    assert_eq!(e.line, Some(1));
    assert_eq!(e.key.as_deref(), Some("A"));
}

#[test]
fn a_huge_bad_value_is_quoted_only_in_part() {
    let huge = "x".repeat(2 << 20);
    let cases = [
        with("GC_SERVER_URL", &huge),
        with("WG_ENDPOINT", &huge),
        with("WG_ALLOWED_IPS", &huge),
        with("GATELET_DIAG_LISTEN", &huge),
        with("GC_API_PORT", &format!("\"1\" {huge}")),
        format!("{SERVER_FILE}{huge}=1\n"),
        format!("{SERVER_FILE}A{huge}=\"x\n"),
    ];
    for (i, text) in cases.iter().enumerate() {
        let e = parse(text).unwrap_err().to_string();
        assert!(e.len() < 300, "case {i}: {} bytes: {}", e.len(), &e[..300]);
        assert!(
            e.contains(&"x".repeat(MAX_QUOTED_CHARS - 1)),
            "case {i}: {e}"
        );
        assert!(e.contains(" bytes in all)"), "case {i}: {e}");
    }
    // Short values are still quoted whole, as before.
    let e = parse(&with("GC_API_PORT", "99999")).unwrap_err();
    assert!(e.to_string().ends_with("not \"99999\""), "{e}");
    // Multi-byte characters are cut on a character boundary.
    assert_eq!(
        quoted(&"é".repeat(100)).matches('é').count(),
        MAX_QUOTED_CHARS
    );
}

#[test]
fn a_key_given_twice_is_an_error_naming_both_lines() {
    let text = "A=1\n# c\nB=2\nexport A=1\n";
    let e = EnvFile::parse(text).unwrap_err();
    assert_eq!(e.line, Some(4));
    assert_eq!(e.key.as_deref(), Some("A"));
    assert_eq!(
        e.to_string(),
        "gateway.env line 4: A is given twice, on lines 1 and 4: keep one of them"
    );
    let e = parse(&format!("{SERVER_FILE}GC_PROXY_PORT=8081\n")).unwrap_err();
    assert!(
        e.to_string().contains("GC_PROXY_PORT is given twice"),
        "{e}"
    );
}

#[test]
fn standalone_file_needs_no_server_keys() {
    let text: String = SERVER_FILE
        .lines()
        .filter(|l| !l.starts_with("GC_SERVER_URL") && !l.starts_with("GC_API_TOKEN"))
        .map(|l| format!("{l}\n"))
        .collect();
    let env = parse(&text).unwrap();
    assert!(env.server_url.is_none());
}

#[test]
fn diagnostics_page_listens_on_loopback_unless_told() {
    assert_eq!(
        parse(SERVER_FILE).unwrap().diag_listen,
        Some(DEFAULT_DIAG_LISTEN)
    );
    let lan = parse(&with("GATELET_DIAG_LISTEN", "192.168.1.5:8088")).unwrap();
    assert_eq!(lan.diag_listen, Some("192.168.1.5:8088".parse().unwrap()));
    assert_eq!(
        parse(&with("GATELET_DIAG_LISTEN", "off"))
            .unwrap()
            .diag_listen,
        None
    );
}

#[test]
fn unknown_keys_are_kept_for_a_warning() {
    let env = parse(&format!("{SERVER_FILE}GC_FUTURE_KEY=1\n")).unwrap();
    assert_eq!(env.unknown_keys, vec!["GC_FUTURE_KEY".to_owned()]);
    // The updater's keys are gatelet's own (the image boot test found both daemons
    // warning about them).
    let env = parse(&format!(
        "{SERVER_FILE}GATELET_UPDATE_URL=http://r/m.json\nGATELET_UPDATE_PUBKEY=RWQ\n"
    ))
    .unwrap();
    assert!(env.unknown_keys.is_empty(), "{:?}", env.unknown_keys);
}

#[test]
fn secrets_never_show_in_debug_output() {
    let env = parse(SERVER_FILE).unwrap();
    let dbg = format!("{env:?}");
    assert!(!dbg.contains("0123456789abcdef"), "{dbg}");
    assert!(!dbg.contains("fedcba"), "{dbg}");
}

#[test]
fn load_error_carries_the_path() {
    let e = GatewayEnv::load(Path::new("/nonexistent/gateway.env")).unwrap_err();
    assert!(e
        .to_string()
        .starts_with("/nonexistent/gateway.env: cannot be read"));
}

#[test]
fn unreadable_file_says_what_to_do() {
    let m = unreadable_hint(
        Path::new("/etc/gatelet/gateway.env"),
        Some((65532, 65532)),
        Some((0, 0, 0o100600)),
    );
    assert!(m.contains("uid 65532, gid 65532"), "{m}");
    assert!(m.contains("owner 0, group 0, mode 0600"), "{m}");
    assert!(
        m.contains("chgrp 65532 /etc/gatelet/gateway.env && chmod 0640 /etc/gatelet/gateway.env"),
        "{m}"
    );
    assert!(!m.contains('\n'));
    let m = unreadable_hint(Path::new("/e"), None, None);
    assert!(m.contains("chgrp <gid of gatelet> /e"), "{m}");
}

#[test]
fn path_precedence_is_cli_then_variable_then_default() {
    let cli = Path::new("/a");
    assert_eq!(GatewayEnv::resolve_path(Some(cli), Some("/b")), cli);
    assert_eq!(GatewayEnv::resolve_path(None, Some("/b")), Path::new("/b"));
    assert_eq!(
        GatewayEnv::resolve_path(None, None),
        Path::new(DEFAULT_ENV_PATH)
    );
}

#[test]
fn cidr_contains() {
    let c: Cidr = "192.168.1.0/24".parse().unwrap();
    assert!(c.contains("192.168.1.77".parse().unwrap()));
    assert!(!c.contains("192.168.2.1".parse().unwrap()));
    let host: Cidr = "10.8.0.1/32".parse().unwrap();
    assert!(host.contains("10.8.0.1".parse().unwrap()));
    assert!(!host.contains("10.8.0.2".parse().unwrap()));
}
