//! The diagnostics page on a LAN address (issue 13, item 3), against the real companion in the
//! testbed's gateway namespace, asked from the LAN namespace over a veth:
//! - `GATELET_DIAG_LISTEN=0.0.0.0:9877` without a password: the companion says at start that it
//!   does not serve the page and why, keeps running, and nothing answers on the port;
//! - with the hash that `gatelet-companion diag-password` wrote: a LAN caller is sent to the
//!   login form (the JSON answers 401), loopback on the box stays open; the right password
//!   gives an `HttpOnly; SameSite=Strict` session cookie that opens the page; five wrong
//!   passwords lock the address out (429, `Retry-After`), even for the right password;
//! - through the page's forms (session CSRF token), a wake and a re-probe of a route: the wake
//!   appears as the agent's `wake` event, both as `diag_action` audit rows; without the token:
//!   403;
//! - the login and the lockout are in the events table;
//! - `/metrics` from the LAN needs the bearer token `gatelet-companion diag-metrics-token`
//!   printed, shows the live tunnel and an HTTP route's own bytes after a request through it
//!   from the hub, and passes `promtool check metrics` (Debian's
//!   `prometheus` package; tests-hw/test.sh installs it).
//!
//! Bounded: every request has a 5 s timeout, every wait 20 s. Needs root.

use std::io::Write as _;
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::Duration;

use gatelet_tests_hw::{
    config_document, document_hash, fixture_port, header, http_request, require_root, wait_until,
    write_secret, Companion, Deployment, HttpResponse, HttpRouteDoc, Netns, GW_LAN_SIDE_IP,
    LAN_HTTP_IP, LAN_SERVICE_PORT,
};

const PORT: u16 = 9877;
const PASSWORD: &str = "lan page password";
const IO: Duration = Duration::from_secs(5);
const WAIT: Duration = Duration::from_secs(20);
const APP: &str = "app.diag.test";
const WOL_MAC: &str = "02:00:00:00:00:01";

fn request(
    ns: &Netns,
    addr: SocketAddr,
    method: &str,
    path: &str,
    cookie: Option<&str>,
    body: Option<&str>,
) -> HttpResponse {
    let mut headers = vec![("Host", "gw")];
    if let Some(c) = cookie {
        headers.push(("Cookie", c));
    }
    http_request(ns, addr, method, path, &headers, body, IO).unwrap()
}

/// Runs `gatelet-companion <args>` with `stdin`, wants success; its stdout.
fn cli(d: &Deployment, args: &[&std::ffi::OsStr], stdin: &str) -> String {
    let mut child = Command::new(&d.companion_binary)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap()
}

/// A deployment (hub, agent, LAN, fake server) and a gateway.env for the companion with the
/// page on every address; the companion is not started.
fn deployment(doc: &serde_json::Value) -> (Deployment, std::path::PathBuf) {
    require_root().unwrap();
    let mut d = Deployment::start_network().unwrap();
    d.start_gatecontrol(doc).unwrap();
    let env_path = d.testbed.gw_ns.dir().join("gateway-diag.env");
    let env = std::fs::read_to_string(d.testbed.agent().unwrap().env_path()).unwrap();
    write_secret(
        &env_path,
        &format!("{}\nGATELET_DIAG_LISTEN=0.0.0.0:{PORT}", env.trim_end()),
    )
    .unwrap();
    (d, env_path)
}

fn state_dir(d: &Deployment) -> std::path::PathBuf {
    d.testbed.gw_ns.dir().join("companion").join("state")
}

fn start_companion(d: &Deployment, env: &std::path::Path) -> Companion {
    let agent = d.testbed.agent().unwrap();
    Companion::start(&d.testbed.gw_ns, &d.companion_binary, env, agent.socket()).unwrap()
}

#[test]
fn lan_page_needs_a_password_a_login_and_locks_out_guessers() {
    // One HTTP route with Wake-on-LAN (to an address that is up: the wake ends at once).
    let mut doc = config_document(
        &[HttpRouteDoc {
            id: 1,
            domain: APP.into(),
            host: LAN_HTTP_IP.to_string(),
            port: LAN_SERVICE_PORT,
        }],
        &[],
    );
    doc["routes"][0]["wol_enabled"] = true.into();
    doc["routes"][0]["wol_mac"] = WOL_MAC.into();
    let (d, env_path) = deployment(&doc);
    let gw = &d.testbed.gw_ns;
    let lan_addr = SocketAddr::from((GW_LAN_SIDE_IP, PORT));
    let local_addr = SocketAddr::from(([127, 0, 0, 1], PORT));

    // 1. No password: refused at start, said so, the rest runs on.
    let mut c = start_companion(&d, &env_path);
    wait_until("the companion to refuse the LAN page", WAIT, || {
        Ok::<_, String>(
            c.log()
                .contains("not serving the diagnostics page on 0.0.0.0:9877")
                .then_some(()),
        )
    })
    .unwrap();
    let log = c.log();
    assert!(log.contains("diag-password"), "{log}");
    assert!(c.process().try_exit().unwrap().is_none(), "{log}");
    let refused = d
        .lan
        .ns
        .enter(|| TcpStream::connect_timeout(&lan_addr, IO))
        .unwrap();
    assert!(refused.is_err(), "something answers on {lan_addr}");
    c.process().terminate();
    drop(c);

    // 2. The password, set with the CLI (stdin), then a restart.
    let state_dir = state_dir(&d);
    cli(
        &d,
        &[
            "diag-password".as_ref(),
            "--state-dir".as_ref(),
            state_dir.as_os_str(),
        ],
        &format!("{PASSWORD}\n"),
    );
    let stored = std::fs::read_to_string(state_dir.join("diag-password")).unwrap();
    assert!(stored.starts_with("pbkdf2-sha256$100000$"), "{stored}");
    assert!(!stored.contains(PASSWORD));

    let c = start_companion(&d, &env_path);
    d.wait_applied(&document_hash(&doc))
        .unwrap_or_else(|e| panic!("{e}\n{}", c.log()));
    let lan = &d.lan.ns;
    wait_until("the LAN page to answer", WAIT, || {
        Ok::<_, String>(
            http_request(lan, lan_addr, "GET", "/status.json", &[], None, IO)
                .ok()
                .map(|r| r.status),
        )
    })
    .map(|status| assert_eq!(status, 401, "{}", c.log()))
    .unwrap();

    // 3. Anonymous LAN caller: the form; loopback on the box: open.
    let r = request(lan, lan_addr, "GET", "/", None, None);
    assert_eq!(r.status, 303, "{}", r.head);
    assert_eq!(header(&r.head, "location"), Some("/login"));
    let r = request(lan, lan_addr, "GET", "/login", None, None);
    assert!(r.body.contains("type=\"password\""), "{}", r.body);
    assert_eq!(
        request(gw, local_addr, "GET", "/status.json", None, None).status,
        200
    );

    // 4. A wrong password, then the right one: a strict session cookie that opens the page.
    let r = request(
        lan,
        lan_addr,
        "POST",
        "/login",
        None,
        Some("password=guess"),
    );
    assert_eq!(r.status, 401, "{}", r.body);
    let right = format!("password={}", PASSWORD.replace(' ', "+"));
    let r = request(lan, lan_addr, "POST", "/login", None, Some(&right));
    assert_eq!(r.status, 303, "{}\n{}", r.head, r.body);
    let set_cookie = header(&r.head, "set-cookie").unwrap().to_owned();
    assert!(
        set_cookie.contains("HttpOnly") && set_cookie.contains("SameSite=Strict"),
        "{set_cookie}"
    );
    let cookie = set_cookie.split(';').next().unwrap().to_owned();
    let r = request(lan, lan_addr, "GET", "/status.json", Some(&cookie), None);
    assert_eq!(r.status, 200, "{}", r.body);
    let r = request(lan, lan_addr, "GET", "/", Some(&cookie), None);
    assert!(
        r.status == 200 && r.body.contains("name=\"csrf\""),
        "{}",
        r.body
    );
    let r = request(
        lan,
        lan_addr,
        "GET",
        "/status.json",
        Some("gatelet_diag=forged"),
        None,
    );
    assert_eq!(r.status, 401);

    // Actions through the page: its form's CSRF token, a wake and a re-probe of the route.
    let page = request(lan, lan_addr, "GET", "/", Some(&cookie), None).body;
    let csrf = page
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|v| v.split('"').next())
        .unwrap()
        .to_owned();
    assert!(page.contains("action=\"/action/wake\""), "{page}");
    let r = request(
        lan,
        lan_addr,
        "POST",
        "/action/wake",
        Some(&cookie),
        Some("route_id=1"),
    );
    assert_eq!(r.status, 403, "no CSRF token: {}", r.body);
    for action in ["wake", "probe"] {
        let body = format!("csrf={csrf}&route_id=1");
        let r = request(
            lan,
            lan_addr,
            "POST",
            &format!("/action/{action}"),
            Some(&cookie),
            Some(&body),
        );
        assert_eq!(r.status, 303, "{action}: {}\n{}", r.head, r.body);
    }
    let lan_ip = LAN_HTTP_IP;
    let events = |d: &Deployment| -> Vec<String> {
        let status: serde_json::Value = serde_json::from_str(
            &request(
                &d.testbed.gw_ns,
                local_addr,
                "GET",
                "/status.json",
                None,
                None,
            )
            .body,
        )
        .unwrap();
        status["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                format!(
                    "{} {}",
                    e["kind"].as_str().unwrap(),
                    e["detail"].as_str().unwrap()
                )
            })
            .collect()
    };
    let seen = wait_until("the page's wake in the events", WAIT, || {
        let ev = events(&d);
        Ok::<_, String>(
            ev.iter()
                .any(|e| e.starts_with(&format!("wake wake {WOL_MAC} by diag: up after")))
                .then_some(ev),
        )
    })
    .unwrap_or_else(|e| panic!("{e}: {:#?}\n{}", events(&d), c.log()));
    for want in [
        format!("diag_action wake of {APP} ({WOL_MAC}) asked by {lan_ip}"),
        format!(
            "diag_action re-probe of {APP} ({lan_ip}:{LAN_SERVICE_PORT}) by {lan_ip}: reachable"
        ),
    ] {
        assert!(seen.contains(&want), "{want} not in {seen:#?}");
    }

    // 5. Five wrong passwords lock this address out, the right one included.
    for i in 0..4 {
        let r = request(
            lan,
            lan_addr,
            "POST",
            "/login",
            None,
            Some("password=guess"),
        );
        assert_eq!(r.status, 401, "wrong password {i}: {}", r.body);
    }
    let r = request(
        lan,
        lan_addr,
        "POST",
        "/login",
        None,
        Some("password=guess"),
    );
    assert_eq!(r.status, 429, "{}", r.body);
    assert_eq!(header(&r.head, "retry-after"), Some("1800"));
    let r = request(lan, lan_addr, "POST", "/login", None, Some(&right));
    assert_eq!(r.status, 429, "{}", r.body);
    assert!(header(&r.head, "set-cookie").is_none());

    // 6. The audit trail.
    let status: serde_json::Value =
        serde_json::from_str(&request(gw, local_addr, "GET", "/status.json", None, None).body)
            .unwrap();
    let events: Vec<String> = status["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            format!(
                "{} {}",
                e["kind"].as_str().unwrap(),
                e["detail"].as_str().unwrap()
            )
        })
        .collect();
    for want in [
        format!("diag_login login from {lan_ip}"),
        format!("diag_lockout {lan_ip} locked out for 30 min after 5 wrong passwords"),
        format!("diag_login_failed wrong password from {lan_ip}"),
    ] {
        assert!(events.contains(&want), "{want} not in {events:#?}");
    }
    drop(c);
}

#[test]
fn lan_metrics_need_the_scrape_token_and_pass_promtool() {
    let doc = config_document(
        &[HttpRouteDoc {
            id: 1,
            domain: APP.into(),
            host: LAN_HTTP_IP.to_string(),
            port: LAN_SERVICE_PORT,
        }],
        &[],
    );
    let (d, env_path) = deployment(&doc);
    let state_dir = state_dir(&d);
    cli(
        &d,
        &[
            "diag-password".as_ref(),
            "--state-dir".as_ref(),
            state_dir.as_os_str(),
        ],
        &format!("{PASSWORD}\n"),
    );
    let token = cli(
        &d,
        &[
            "diag-metrics-token".as_ref(),
            "--state-dir".as_ref(),
            state_dir.as_os_str(),
        ],
        "",
    );
    let token = token.trim().to_owned();
    assert_eq!(token.len(), 64, "{token}");
    let c = start_companion(&d, &env_path);
    let (lan, lan_addr) = (&d.lan.ns, SocketAddr::from((GW_LAN_SIDE_IP, PORT)));
    let bearer = format!("Bearer {token}");
    d.wait_applied(&document_hash(&doc))
        .unwrap_or_else(|e| panic!("{e}\n{}", c.log()));
    // One request through the HTTP route, from the hub.
    let proxy = Deployment::tunnel_addr(fixture_port("GC_PROXY_PORT").unwrap());
    let r = http_request(
        &d.testbed.hub_ns,
        proxy,
        "GET",
        "/",
        &[("Host", APP)],
        None,
        IO,
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.head);
    // The agent's tunnel series and the route's own bytes appear once the companion has
    // polled the agent.
    let route = format!("route_id=\"1\",kind=\"http\",name=\"{APP}\"");
    let text = wait_until(
        "/metrics to show the tunnel and the route's bytes",
        WAIT,
        || {
            let r = http_request(
                lan,
                lan_addr,
                "GET",
                "/metrics",
                &[("Authorization", &bearer)],
                None,
                IO,
            );
            Ok::<_, String>(r.ok().filter(|r| r.status == 200).and_then(|r| {
                let bytes = r
                    .body
                    .lines()
                    .find_map(|l| l.strip_prefix(&format!("gatelet_route_bytes_total{{{route}}} ")))
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0);
                (r.body.contains("gatelet_tunnel_handshake_age_seconds ") && bytes > 0)
                    .then_some(r.body)
            }))
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", c.log()));
    for want in [
        &format!("gatelet_route_failures_total{{{route}}} 0\n"),
        &format!("gatelet_route_listening{{{route},protocol=\"tcp\"}} 1\n"),
        "gatelet_agent_up 1\n",
        "# TYPE gatelet_tunnel_receive_bytes_total counter\n",
        "# TYPE gatelet_sync_checks_total counter\n",
    ] {
        assert!(text.contains(want), "{want} not in\n{text}");
    }
    // Without the token, or with another one: 401.
    let r = request(lan, lan_addr, "GET", "/metrics", None, None);
    assert_eq!(r.status, 401);
    let wrong = format!("Bearer {}", "0".repeat(64));
    let r = http_request(
        lan,
        lan_addr,
        "GET",
        "/metrics",
        &[("Authorization", &wrong)],
        None,
        IO,
    )
    .unwrap();
    assert_eq!(r.status, 401);
    // promtool's own parser and linter.
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus; tests-hw/test.sh installs it)");
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool: {out:?}\n{text}"
    );
    drop(c);
}
