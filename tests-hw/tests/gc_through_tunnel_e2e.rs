//! The companion reaches GateControl on the hub's tunnel address (`http://10.8.0.1:3000`, what
//! the pairing file gives) in both network stack modes: config sync, heartbeats, a push and
//! the routes it brings, answered from the hub. Kernel mode goes through `gatelet0`; userspace
//! mode (agent uid 65534, no capability, no device) through the agent's loopback CONNECT proxy
//! into its smoltcp stack, and nothing else in the gateway's namespace reaches the server
//! (checked). Needs root.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use gatelet_tests_hw::{
    both_modes, config_document, connect, document_hash, fixture_value, gatecontrol_addr,
    http_request, require_root, tcp_echo, wait_until, Deployment, HarnessError, L4RouteDoc,
    NetstackMode, Result, GW_TUNNEL_IP, HUB_TUNNEL_IP, LAN_ECHO_IP, LAN_SERVICE_PORT,
};

/// The L4 route's port on the tunnel IP.
const ECHO_PORT: u16 = 7001;
/// The port of the route the push adds.
const PUSHED_PORT: u16 = 7002;
/// Time allowed for a heartbeat to reach the server (the fixture's interval is shorter).
const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(60);
/// Time allowed for a pushed config to be applied.
const PUSH_TIMEOUT: Duration = Duration::from_secs(15);
/// Time allowed for one connect in the checks.
const IO_TIMEOUT: Duration = Duration::from_secs(5);

fn l4(id: u64, port: u16) -> L4RouteDoc {
    L4RouteDoc {
        id,
        listen_port: port,
        host: LAN_ECHO_IP.to_string(),
        port: LAN_SERVICE_PORT,
    }
}

fn ok<T>(d: &Deployment, r: Result<T>) -> T {
    r.unwrap_or_else(|e| panic!("{e}\n{}", d.logs()))
}

both_modes!(
    config_sync_heartbeat_and_push_reach_gatecontrol_on_the_tunnel_address,
    sync_through_the_tunnel
);
fn sync_through_the_tunnel(mode: NetstackMode) {
    require_root().unwrap();
    assert_eq!(
        gatecontrol_addr(mode),
        SocketAddr::from((HUB_TUNNEL_IP, 3000)),
        "the server on the hub's tunnel address in both modes"
    );
    let start = Instant::now();
    // Config sync: start_in returns once the agent runs the server's config.
    let doc = config_document(&[], &[l4(1, ECHO_PORT)]);
    let d = Deployment::start_in(&doc, mode).unwrap();
    eprintln!(
        "{mode}: first config applied {:?} after start",
        start.elapsed()
    );

    let status = ok(&d, d.agent_status());
    match mode {
        NetstackMode::Kernel => assert_eq!(status.tunnel_proxy, None, "no proxy with a TUN"),
        NetstackMode::Userspace => {
            let proxy: SocketAddr = status
                .tunnel_proxy
                .as_deref()
                .unwrap_or_else(|| panic!("no tunnel_proxy in {status:?}\n{}", d.logs()))
                .parse()
                .unwrap();
            assert!(proxy.ip().is_loopback(), "{proxy}");
            // Negative control: nothing but the agent's proxy leads from the gateway's
            // namespace to the server.
            assert!(
                connect(&d.testbed.gw_ns, gatecontrol_addr(mode), IO_TIMEOUT).is_err(),
                "the gateway's namespace reaches the server without the tunnel"
            );
        }
    }

    // Heartbeats reach the server.
    ok(
        &d,
        wait_until("a heartbeat at the server", HEARTBEAT_TIMEOUT, || {
            let log = d.gatecontrol()?.log();
            Ok::<_, HarnessError>(log.contains("/heartbeat -> 200").then_some(()))
        }),
    );

    // The route of the synced config answers from the hub.
    let back = ok(
        &d,
        tcp_echo(
            &d.testbed.hub_ns,
            SocketAddr::from((GW_TUNNEL_IP, ECHO_PORT)),
            b"through the tunnel",
        ),
    );
    assert_eq!(back, b"through the tunnel");

    // A push from the hub (the management API on the tunnel IP): the companion fetches the
    // new config from the server and the agent runs its new route.
    let pushed = config_document(&[], &[l4(1, ECHO_PORT), l4(2, PUSHED_PORT)]);
    ok(&d, d.gatecontrol().and_then(|g| g.set_config(&pushed)));
    let token = fixture_value("GC_GATEWAY_TOKEN").unwrap();
    let api_port: u16 = fixture_value("GC_API_PORT").unwrap().parse().unwrap();
    let r = ok(
        &d,
        http_request(
            &d.testbed.hub_ns,
            Deployment::tunnel_addr(api_port),
            "POST",
            "/api/config-changed",
            &[("X-Gateway-Token", &token)],
            Some("{}"),
            IO_TIMEOUT,
        ),
    );
    assert_eq!(r.status, 200, "config-changed answered {r:?}\n{}", d.logs());
    let t = Instant::now();
    let hash = document_hash(&pushed);
    ok(
        &d,
        wait_until("the pushed config to be applied", PUSH_TIMEOUT, || {
            let s = d.agent_status()?;
            Ok::<_, HarnessError>((s.config_hash.as_deref() == Some(hash.as_str())).then_some(()))
        }),
    );
    eprintln!("{mode}: pushed config applied after {:?}", t.elapsed());
    let back = ok(
        &d,
        tcp_echo(
            &d.testbed.hub_ns,
            SocketAddr::from((GW_TUNNEL_IP, PUSHED_PORT)),
            b"pushed",
        ),
    );
    assert_eq!(back, b"pushed");
}
