//! Routes end to end on real namespaces (see `Deployment`): the hub (wireguard-go + the fake
//! GateControl on 10.8.0.1:3000) hands a config to the gateway's companion over the tunnel, the
//! companion applies it to gatelet-agent, and traffic from the hub reaches LAN services through
//! the agent's HTTP proxy and L4 relays. Needs root.
//!
//! Every case but the taken-port one runs in both netstack modes (`both_modes!`: `<case>::kernel`,
//! `<case>::userspace`); in userspace mode the agent is uid 65534 with no capability and no TUN
//! device, and the companion reaches the fake server on 10.8.0.1:3000 through the agent's
//! loopback proxy into the tunnel (`gatecontrol_addr`).

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use gatelet_agent_api::control::ListenerState;
use gatelet_tests_hw::{
    both_modes, config_document, connect, document_hash, fixture_port, fixture_value, http_request,
    read_all_from, require_root, tcp_echo, udp_socket, wait_until, websocket_accept, ws_read_frame,
    ws_write_frame, Deployment, HarnessError, HttpRouteDoc, L4RouteDoc, NetstackMode, Result,
    BANNER1, BANNER2, GW_LAN_SIDE_IP, GW_TUNNEL_IP, GW_WAN_IP, HTTP_BANNER, HUB_TUNNEL_IP,
    LAN_BANNER1_IP, LAN_BANNER2_IP, LAN_ECHO_IP, LAN_HTTP_IP, LAN_SERVICE_PORT, LAN_WS_IP,
    WS_BINARY, WS_CLOSE, WS_TEXT,
};

/// The HTTP route's domain.
const APP_DOMAIN: &str = "app.e2e.test";
/// The WebSocket route's domain.
const WS_DOMAIN: &str = "ws.e2e.test";
/// L4 route A: TCP and UDP echo.
const ECHO_PORT: u16 = 7001;
/// L4 route B: a banner server (changed or removed by the tests).
const BANNER_PORT: u16 = 7002;
/// An L4 port another process holds before the route arrives, and keeps.
const TAKEN_PORT: u16 = 7003;
/// An L4 port another process holds before the route arrives and then frees.
const RETRY_PORT: u16 = 7004;
/// Timeout of one request or connection from a test client.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// A port that must not answer has to fail (refused or timed out) within this.
const CLOSED_TIMEOUT: Duration = Duration::from_secs(1);
/// Connect and read timeout of one attempt while polling for routes to answer.
const POLL_IO_TIMEOUT: Duration = Duration::from_millis(500);
/// After a reboot with the server gone, every route answers within this of the agent's start.
const REBOOT_DEADLINE: Duration = Duration::from_secs(2);
/// How long a change pushed through the management API may take to reach the agent.
const PUSH_TIMEOUT: Duration = Duration::from_secs(15);
/// How long the companion gets to report a failed listener in a heartbeat: it stretches
/// `GC_HEARTBEAT_INTERVAL_S=2` to 30 s (33 s with jitter) to fit the server's rate limit
/// with a hash check every 18 s; a little slack.
const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(40);
/// The agent retries a failed bind 5 s after the failure, then 10 s later; a little slack.
const BIND_RETRY_TIMEOUT: Duration = Duration::from_secs(20);
/// Bytes echoed through the L4 route with a half-close.
const ECHO_BYTES: usize = 256 * 1024;
/// One round of the long-running transfer on route A.
const ROUND_BYTES: usize = 4 * 1024;

fn http_route(id: u64, domain: &str, host: std::net::Ipv4Addr) -> HttpRouteDoc {
    HttpRouteDoc {
        id,
        domain: domain.into(),
        host: host.to_string(),
        port: LAN_SERVICE_PORT,
    }
}

fn l4_route(id: u64, listen_port: u16, host: std::net::Ipv4Addr) -> L4RouteDoc {
    L4RouteDoc {
        id,
        listen_port,
        host: host.to_string(),
        port: LAN_SERVICE_PORT,
    }
}

/// Two HTTP routes (app, ws), L4 A (echo) and L4 B (banner one).
fn standard_routes() -> (Vec<HttpRouteDoc>, Vec<L4RouteDoc>) {
    (
        vec![
            http_route(1, APP_DOMAIN, LAN_HTTP_IP),
            http_route(2, WS_DOMAIN, LAN_WS_IP),
        ],
        vec![
            l4_route(3, ECHO_PORT, LAN_ECHO_IP),
            l4_route(4, BANNER_PORT, LAN_BANNER1_IP),
        ],
    )
}

/// The standard deployment with the agent in `mode` (userspace: uid 65534, no capability, no
/// device; the fake server on the hub's tunnel address, see `gatecontrol_addr`).
fn deployment(mode: NetstackMode) -> Deployment {
    require_root().unwrap();
    let (http, l4) = standard_routes();
    Deployment::start_in(&config_document(&http, &l4), mode).unwrap()
}

/// Unwraps, or panics with the logs of agent, companion and fake server.
fn ok<T>(d: &Deployment, r: Result<T>) -> T {
    r.unwrap_or_else(|e| panic!("{e}\n{}", d.logs()))
}

fn proxy_addr() -> SocketAddr {
    Deployment::tunnel_addr(fixture_port("GC_PROXY_PORT").unwrap())
}

fn api_port() -> u16 {
    fixture_port("GC_API_PORT").unwrap()
}

/// Asks the companion, from the hub, to fetch the config again (as the server does).
fn push_config_changed(d: &Deployment) {
    let token = fixture_value("GC_GATEWAY_TOKEN").unwrap();
    let r = ok(
        d,
        http_request(
            &d.testbed.hub_ns,
            Deployment::tunnel_addr(api_port()),
            "POST",
            "/api/config-changed",
            &[("X-Gateway-Token", &token)],
            Some("{}"),
            IO_TIMEOUT,
        ),
    );
    assert_eq!(r.status, 200, "config-changed answered {r:?}\n{}", d.logs());
}

/// Serves `doc` from the fake server, pushes, and waits for the agent to run it.
fn change_config(d: &Deployment, doc: &serde_json::Value) {
    ok(d, d.gatecontrol().and_then(|g| g.set_config(doc)));
    let start = Instant::now();
    push_config_changed(d);
    let hash = document_hash(doc);
    ok(
        d,
        wait_until("the pushed config to be applied", PUSH_TIMEOUT, || {
            let s = d.agent_status()?;
            Ok::<_, HarnessError>((s.config_hash.as_deref() == Some(hash.as_str())).then_some(()))
        }),
    );
    eprintln!("pushed config applied after {:?}", start.elapsed());
}

/// Whether a TCP connect from `ns` to `addr` fails (refused, or no answer) within
/// [`CLOSED_TIMEOUT`].
fn connect_fails(
    ns: &gatelet_tests_hw::Netns,
    addr: SocketAddr,
) -> std::result::Result<(), String> {
    let start = Instant::now();
    match connect(ns, addr, CLOSED_TIMEOUT) {
        Ok(_) => Err(format!("{addr} accepted a connection from {}", ns.name())),
        Err(_) if start.elapsed() <= CLOSED_TIMEOUT + Duration::from_millis(200) => Ok(()),
        Err(e) => Err(format!("{addr} took {:?} to fail: {e}", start.elapsed())),
    }
}

/// One short TCP echo with [`POLL_IO_TIMEOUT`] for connect and reads (for polling).
fn quick_echo(ns: &gatelet_tests_hw::Netns, addr: SocketAddr, msg: &[u8]) -> Result<Vec<u8>> {
    let mut conn = connect(ns, addr, POLL_IO_TIMEOUT)?;
    let io = |e| HarnessError::io(format!("echo through {addr}"), e);
    conn.write_all(msg).map_err(io)?;
    conn.shutdown(std::net::Shutdown::Write).map_err(io)?;
    let mut back = Vec::new();
    conn.read_to_end(&mut back).map_err(io)?;
    Ok(back)
}

both_modes!(
    http_routes_by_host_and_by_x_gateway_target_domain_without_leaking_gateway_headers,
    http_routes_by_host
);
fn http_routes_by_host(mode: NetstackMode) {
    let d = deployment(mode);
    let hub = &d.testbed.hub_ns;
    let by_host = ok(
        &d,
        http_request(
            hub,
            proxy_addr(),
            "GET",
            "/by-host",
            &[("Host", APP_DOMAIN)],
            None,
            IO_TIMEOUT,
        ),
    );
    assert_eq!(by_host.status, 200, "{by_host:?}\n{}", d.logs());
    assert!(by_host.body.starts_with(HTTP_BANNER), "{by_host:?}");
    assert!(by_host.body.contains("GET /by-host "), "{by_host:?}");

    // The server's shape: Host is the public name, the route is in X-Gateway-Target-Domain,
    // the configured target in X-Gateway-Target.
    let target = format!("{LAN_HTTP_IP}:{LAN_SERVICE_PORT}");
    let by_header = ok(
        &d,
        http_request(
            hub,
            proxy_addr(),
            "GET",
            "/by-header",
            &[
                ("Host", "public.example.com"),
                ("X-Gateway-Target-Domain", "APP.e2e.test"),
                ("X-Gateway-Target", &target),
            ],
            None,
            IO_TIMEOUT,
        ),
    );
    assert_eq!(by_header.status, 200, "{by_header:?}\n{}", d.logs());
    assert!(by_header.body.starts_with(HTTP_BANNER), "{by_header:?}");
    let seen = by_header.body.to_ascii_lowercase();
    assert!(seen.contains("get /by-header "), "{by_header:?}");
    assert!(
        !seen.contains("x-gateway-"),
        "the backend saw X-Gateway-* headers:\n{}",
        by_header.body
    );
    assert!(
        seen.contains("x-forwarded-for: 10.8.0.1"),
        "{}",
        by_header.body
    );

    // Negative control: a name without a route is not served by the app backend.
    let unknown = ok(
        &d,
        http_request(
            hub,
            proxy_addr(),
            "GET",
            "/",
            &[("Host", "nobody.e2e.test")],
            None,
            IO_TIMEOUT,
        ),
    );
    assert_eq!(unknown.status, 502, "{unknown:?}");
    assert!(!unknown.body.contains(HTTP_BANNER), "{unknown:?}");
}

both_modes!(websocket_echo_through_the_http_proxy, websocket_echo);
fn websocket_echo(mode: NetstackMode) {
    let d = deployment(mode);
    let mut conn = ok(&d, connect(&d.testbed.hub_ns, proxy_addr(), IO_TIMEOUT));
    let key = "dGhlIHNhbXBsZSBub25jZQ==";
    let req = format!(
        "GET /echo HTTP/1.1\r\nHost: {WS_DOMAIN}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    conn.write_all(req.as_bytes()).unwrap();
    // Read the 101 head byte by byte so no frame byte is consumed with it.
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = conn
            .read(&mut b)
            .unwrap_or_else(|e| panic!("reading the 101 after {head:?}: {e}\n{}", d.logs()));
        assert_eq!(
            n,
            1,
            "EOF after {:?}\n{}",
            String::from_utf8_lossy(&head),
            d.logs()
        );
        head.push(b[0]);
    }
    let head = String::from_utf8_lossy(&head).to_string();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}\n{}", d.logs());
    assert!(
        head.contains(&websocket_accept(key)),
        "no matching Sec-WebSocket-Accept: {head}"
    );
    let mask = [0x12, 0x34, 0x56, 0x78];
    ws_write_frame(&mut conn, WS_TEXT, b"hello through gatelet", Some(mask)).unwrap();
    let (op, payload) = ws_read_frame(&mut conn).unwrap();
    assert_eq!(
        (op, payload.as_slice()),
        (WS_TEXT, &b"hello through gatelet"[..])
    );
    let big: Vec<u8> = (0..70_000).map(|i| (i % 253) as u8).collect();
    ws_write_frame(&mut conn, WS_BINARY, &big, Some(mask)).unwrap();
    let (op, payload) = ws_read_frame(&mut conn).unwrap();
    assert_eq!(op, WS_BINARY);
    assert!(
        payload == big,
        "binary echo differs ({} bytes back)",
        payload.len()
    );
    ws_write_frame(&mut conn, WS_CLOSE, &[0x03, 0xe8], Some(mask)).unwrap();
    let (op, _) = ws_read_frame(&mut conn).unwrap();
    assert_eq!(op, WS_CLOSE);
}

both_modes!(l4_tcp_echo_keeps_the_half_close, l4_tcp_half_close);
fn l4_tcp_half_close(mode: NetstackMode) {
    let d = deployment(mode);
    let payload: Vec<u8> = (0..ECHO_BYTES).map(|i| (i % 251) as u8).collect();
    // tcp_echo shuts down its write side after the payload and reads until the relay closes:
    // every byte comes back only if the relay passes the FIN on and keeps the other direction.
    let back = ok(
        &d,
        tcp_echo(
            &d.testbed.hub_ns,
            Deployment::tunnel_addr(ECHO_PORT),
            &payload,
        ),
    );
    assert_eq!(back.len(), payload.len(), "{}", d.logs());
    assert!(back == payload, "the echo differs from what was sent");
}

both_modes!(l4_udp_echo_on_the_same_port, l4_udp_echo);
fn l4_udp_echo(mode: NetstackMode) {
    let d = deployment(mode);
    let sock = ok(
        &d,
        udp_socket(&d.testbed.hub_ns, (HUB_TUNNEL_IP, 0).into(), IO_TIMEOUT),
    );
    let to = Deployment::tunnel_addr(ECHO_PORT);
    let mut buf = [0u8; 2048];
    for i in 0..3 {
        let msg = format!("datagram {i} through gatelet");
        sock.send_to(msg.as_bytes(), to).unwrap();
        let (n, from) = sock
            .recv_from(&mut buf)
            .unwrap_or_else(|e| panic!("no UDP echo of {msg:?}: {e}\n{}", d.logs()));
        assert_eq!(from, to);
        assert_eq!(&buf[..n], msg.as_bytes());
    }
    let big = vec![0xab; 1200];
    sock.send_to(&big, to).unwrap();
    let (n, _) = sock.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..n], &big[..]);
}

both_modes!(
    a_route_change_mid_transfer_leaves_other_connections_untouched,
    route_change_mid_transfer
);
fn route_change_mid_transfer(mode: NetstackMode) {
    let d = deployment(mode);
    let hub = &d.testbed.hub_ns;
    assert_eq!(
        ok(
            &d,
            read_all_from(hub, Deployment::tunnel_addr(BANNER_PORT), IO_TIMEOUT)
        ),
        BANNER1
    );
    // A long transfer on route A: rounds of ROUND_BYTES written and read back, until told
    // to stop.
    let mut conn = ok(
        &d,
        connect(hub, Deployment::tunnel_addr(ECHO_PORT), IO_TIMEOUT),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let rounds = Arc::new(AtomicU64::new(0));
    let transfer = {
        let (stop, rounds) = (stop.clone(), rounds.clone());
        thread::spawn(move || -> std::result::Result<u64, String> {
            let mut back = vec![0u8; ROUND_BYTES];
            let mut i: u64 = 0;
            while !stop.load(Ordering::Relaxed) {
                let chunk: Vec<u8> = (0..ROUND_BYTES).map(|j| (i as usize + j) as u8).collect();
                conn.write_all(&chunk)
                    .map_err(|e| format!("round {i}: write: {e}"))?;
                conn.read_exact(&mut back)
                    .map_err(|e| format!("round {i}: read: {e}"))?;
                if back != chunk {
                    return Err(format!("round {i}: echo differs"));
                }
                i += 1;
                rounds.store(i, Ordering::Relaxed);
            }
            Ok(i)
        })
    };
    ok(
        &d,
        wait_until("the transfer on route A to run", IO_TIMEOUT, || {
            Ok::<_, HarnessError>((rounds.load(Ordering::Relaxed) >= 10).then_some(()))
        }),
    );
    let (http, mut l4) = standard_routes();
    l4[1] = l4_route(4, BANNER_PORT, LAN_BANNER2_IP);
    change_config(&d, &config_document(&http, &l4));
    let at_apply = rounds.load(Ordering::Relaxed);
    // New connections on B go to the new target at once.
    assert_eq!(
        ok(
            &d,
            read_all_from(hub, Deployment::tunnel_addr(BANNER_PORT), IO_TIMEOUT)
        ),
        BANNER2
    );
    ok(
        &d,
        wait_until(
            "the transfer on route A to go on after the apply",
            IO_TIMEOUT,
            || {
                Ok::<_, HarnessError>(
                    (rounds.load(Ordering::Relaxed) >= at_apply + 50).then_some(()),
                )
            },
        ),
    );
    stop.store(true, Ordering::Relaxed);
    let total = transfer.join().unwrap();
    let total = total.unwrap_or_else(|e| panic!("route A's connection broke: {e}\n{}", d.logs()));
    eprintln!("route A: {total} rounds of {ROUND_BYTES} bytes, {at_apply} before the apply");
}

both_modes!(a_removed_route_stops_accepting, removed_route);
fn removed_route(mode: NetstackMode) {
    let d = deployment(mode);
    let hub = &d.testbed.hub_ns;
    assert_eq!(
        ok(
            &d,
            read_all_from(hub, Deployment::tunnel_addr(BANNER_PORT), IO_TIMEOUT)
        ),
        BANNER1
    );
    let (http, mut l4) = standard_routes();
    l4.truncate(1);
    change_config(&d, &config_document(&http, &l4));
    let err = connect(hub, Deployment::tunnel_addr(BANNER_PORT), IO_TIMEOUT)
        .expect_err("the removed route's port still accepts connections");
    match err {
        HarnessError::Io { source, .. } => {
            assert_eq!(
                source.kind(),
                std::io::ErrorKind::ConnectionRefused,
                "{source}"
            )
        }
        other => panic!("{other}"),
    }
    let back = ok(
        &d,
        tcp_echo(hub, Deployment::tunnel_addr(ECHO_PORT), b"still here"),
    );
    assert_eq!(back, b"still here");
    let status = ok(&d, d.agent_status());
    assert!(
        status
            .routes
            .iter()
            .all(|r| r.listen_port != Some(BANNER_PORT)),
        "{:?}",
        status.routes
    );
}

/// Kernel mode only: in userspace mode the listen ports are the agent's own smoltcp stack's, and
/// no other process can take one.
#[test]
fn a_port_taken_by_another_process_is_reported_as_listener_failed_and_retried() {
    require_root().unwrap();
    let t0 = Instant::now();
    let mut d = Deployment::start_network().unwrap();
    // Two ports are taken before the routes arrive: TAKEN_PORT stays taken (the heartbeat must
    // report it), RETRY_PORT is freed as soon as the failure shows (the agent must retry it).
    let squat = |port: u16| {
        d.testbed
            .gw_ns
            .enter(|| TcpListener::bind((GW_TUNNEL_IP, port)))
            .and_then(|r| r.map_err(|e| HarnessError::io(format!("bind port {port}"), e)))
    };
    let taken = ok(&d, squat(TAKEN_PORT));
    let retry = ok(&d, squat(RETRY_PORT));
    let (http, mut l4) = standard_routes();
    l4.push(l4_route(5, TAKEN_PORT, LAN_BANNER2_IP));
    l4.push(l4_route(6, RETRY_PORT, LAN_BANNER2_IP));
    let doc = config_document(&http, &l4);
    let started = d.start_gatecontrol(&doc).and_then(|()| d.start_companion());
    ok(&d, started);
    let status = ok(&d, d.wait_applied(&document_hash(&doc)));
    let route = |port: u16| {
        status
            .routes
            .iter()
            .find(|r| r.listen_port == Some(port))
            .unwrap_or_else(|| panic!("no route on port {port}: {:?}", status.routes))
            .clone()
    };
    for port in [TAKEN_PORT, RETRY_PORT] {
        let r = route(port);
        assert!(matches!(r.tcp, ListenerState::Failed { .. }), "{r:?}");
    }
    drop(retry);
    assert_eq!(route(ECHO_PORT).tcp, ListenerState::Listening);
    assert_eq!(route(BANNER_PORT).tcp, ListenerState::Listening);
    // The rest of the config works.
    let hub = &d.testbed.hub_ns;
    let echoed = tcp_echo(hub, Deployment::tunnel_addr(ECHO_PORT), b"others work");
    assert_eq!(ok(&d, echoed), b"others work");
    let banner = read_all_from(hub, Deployment::tunnel_addr(BANNER_PORT), IO_TIMEOUT);
    assert_eq!(ok(&d, banner), BANNER1);
    // Once its port is free the agent binds it by itself.
    let bound = wait_until(
        "the agent to bind the freed port",
        BIND_RETRY_TIMEOUT,
        || {
            let s = d.agent_status()?;
            let listening = s
                .routes
                .iter()
                .any(|r| r.listen_port == Some(RETRY_PORT) && r.tcp == ListenerState::Listening);
            Ok::<_, HarnessError>(listening.then_some(()))
        },
    );
    ok(&d, bound);
    eprintln!("freed port bound {:?} after the start", t0.elapsed());
    let banner = read_all_from(hub, Deployment::tunnel_addr(RETRY_PORT), IO_TIMEOUT);
    assert_eq!(ok(&d, banner), BANNER2);
    // The server hears about the port still taken in a heartbeat.
    let needle = format!("{{\"port\":{TAKEN_PORT},\"status\":\"listener_failed\"}}");
    let reported = wait_until(
        "a heartbeat reporting listener_failed",
        HEARTBEAT_TIMEOUT,
        || {
            let log = d.gatecontrol()?.log();
            Ok::<_, HarnessError>(log.lines().any(|l| l.contains(&needle)).then_some(()))
        },
    );
    ok(&d, reported);
    eprintln!(
        "listener_failed in a heartbeat {:?} after the start",
        t0.elapsed()
    );
    let r = ok(&d, d.agent_status());
    let still = r.routes.iter().find(|r| r.listen_port == Some(TAKEN_PORT));
    assert!(
        still.is_some_and(|r| matches!(r.tcp, ListenerState::Failed { .. })),
        "{still:?}"
    );
    drop(taken);
}

both_modes!(
    after_a_reboot_with_the_server_gone_every_route_answers_within_two_seconds,
    reboot_without_server
);
fn reboot_without_server(mode: NetstackMode) {
    let mut d = deployment(mode);
    // The reboot: companion, agent and server go away.
    if let Some(c) = d.companion.as_mut() {
        c.process().terminate();
    }
    d.stop_agent();
    if let Some(g) = d.gatecontrol.as_mut() {
        g.stop();
    }
    let hub_ns_name = d.testbed.hub_ns.name().to_owned();
    let start = Instant::now();
    let restarted = d.restart_agent();
    ok(&d, restarted);
    let hub = &d.testbed.hub_ns;
    let answered = wait_until(
        "every route to answer after the restart",
        REBOOT_DEADLINE * 5,
        || {
            let echo = quick_echo(hub, Deployment::tunnel_addr(ECHO_PORT), b"reboot")?;
            let banner = read_all_from(hub, Deployment::tunnel_addr(BANNER_PORT), POLL_IO_TIMEOUT)?;
            let page = http_request(
                hub,
                proxy_addr(),
                "GET",
                "/",
                &[("Host", APP_DOMAIN)],
                None,
                POLL_IO_TIMEOUT,
            )?;
            Ok::<_, HarnessError>(
                (echo == b"reboot" && banner == BANNER1 && page.body.starts_with(HTTP_BANNER))
                    .then(|| start.elapsed()),
            )
        },
    );
    let elapsed = answered.unwrap_or_else(|e| panic!("{e} (hub {hub_ns_name})\n{}", d.logs()));
    eprintln!("routes answered {elapsed:?} after the agent's start (server gone, no companion)");
    assert!(
        elapsed <= REBOOT_DEADLINE,
        "routes answered only {elapsed:?} after the agent's start\n{}",
        d.logs()
    );
    // The companion comes back without its server and keeps the last known good config.
    let hash = ok(&d, d.agent_status()).config_hash;
    let started = d.start_companion();
    ok(&d, started);
    let companion_status = ok(
        &d,
        wait_until(
            "the companion to report its stored config",
            IO_TIMEOUT,
            || {
                let c = d
                    .companion
                    .as_ref()
                    .ok_or_else(|| "no companion".to_owned())?;
                let v = c.status_json(&d.testbed.gw_ns).map_err(|e| e.to_string())?;
                Ok::<_, String>(v["daemon_running"].as_bool().unwrap_or(false).then_some(v))
            },
        ),
    );
    assert_eq!(
        companion_status["last_good_hash"].as_str(),
        hash.as_deref(),
        "{companion_status}"
    );
    thread::sleep(Duration::from_secs(2));
    assert_eq!(ok(&d, d.agent_status()).config_hash, hash);
    assert_eq!(
        ok(
            &d,
            tcp_echo(
                &d.testbed.hub_ns,
                Deployment::tunnel_addr(ECHO_PORT),
                b"still"
            )
        ),
        b"still"
    );
}

both_modes!(
    the_management_api_answers_on_the_tunnel_ip_and_nowhere_else,
    management_api_on_tunnel_ip_only
);
fn management_api_on_tunnel_ip_only(mode: NetstackMode) {
    let d = deployment(mode);
    let hub = &d.testbed.hub_ns;
    let api = Deployment::tunnel_addr(api_port());
    let health = ok(
        &d,
        http_request(hub, api, "GET", "/api/health", &[], None, IO_TIMEOUT),
    );
    assert_eq!(health.status, 200, "{health:?}");
    let body: serde_json::Value = serde_json::from_str(&health.body).unwrap();
    assert_eq!(body, serde_json::json!({"ok": true}));
    let token = fixture_value("GC_GATEWAY_TOKEN").unwrap();
    let status = ok(
        &d,
        http_request(
            hub,
            api,
            "GET",
            "/api/status",
            &[("X-Gateway-Token", &token)],
            None,
            IO_TIMEOUT,
        ),
    );
    assert_eq!(status.status, 200, "{}", status.head);
    let no_token = ok(
        &d,
        http_request(hub, api, "GET", "/api/status", &[], None, IO_TIMEOUT),
    );
    assert!(
        no_token.status == 401 || no_token.status == 403,
        "{}",
        no_token.head
    );
    // Nowhere else: not on the gateway's WAN address from the hub, not on its LAN address from
    // the LAN; neither are the proxy and the L4 routes.
    let lan = &d.lan.ns;
    for port in [api_port(), proxy_addr().port(), ECHO_PORT] {
        connect_fails(hub, (GW_WAN_IP, port).into()).unwrap_or_else(|e| panic!("{e}"));
        connect_fails(lan, (GW_LAN_SIDE_IP, port).into()).unwrap_or_else(|e| panic!("{e}"));
    }
}
