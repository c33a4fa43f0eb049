//! Egress routes ("scan to NAS") end to end on real namespaces. Needs root.
//!
//! ```text
//!  ns cl (printer) 192.168.77.60 --veth-- 192.168.77.1 ns gw (gatelet-agent)  --tunnel--  ns hub
//!  ns st (stranger) 192.168.78.61 --veth-- 192.168.78.1                                  wireguard-go 10.8.0.1
//!                                                                                        "NAS": echo on 10.8.0.1:9445
//! ```
//!
//! The agent gets (on its control socket, as the companion would) an egress route on LAN port
//! 14450 into the tunnel to the hub's 10.8.0.1:9445 (standing in for the hub's internal L4
//! route to the far NAS), allowed from the printer only, and an ordinary L4 route (tunnel IP
//! port 7100 to an echo on the gateway's veth) to compare throughput with. Both netstack modes
//! (`both_modes!`): in userspace mode the egress connection goes through the agent's smoltcp
//! stack, as uid 65534 with no capability.
//!
//! Not here yet: the VRRP failover cases (gatelet and keepalived pools); see the README.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use gatelet_agent_api::control::{
    AgentConfig, EgressRoute, EgressStatus, L4Route, Request, Response,
};
use gatelet_tests_hw::{
    both_modes, control_request, product_binary, require_root, tcp_echo, wait_until, EchoServer,
    GatewayRole, HarnessError, Netns, NetstackMode, Result, Testbed, TestbedOptions, VethPair,
    GW_LAN_IP, GW_TUNNEL_IP, HUB_TUNNEL_IP,
};

/// The gateway's address on the printer's LAN.
const GW_PRINTER_LAN_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 1);
/// The printer (allowed).
const PRINTER_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 60);
/// The gateway's address on the stranger's LAN.
const GW_STRANGER_LAN_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 78, 1);
/// A LAN host outside the allowlist.
const STRANGER_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 78, 61);
/// The egress route's LAN port (the server allocates from 14450 up).
const EGRESS_PORT: u16 = 14450;
/// The "NAS" behind the hub.
const NAS_PORT: u16 = 9445;
/// The L4 route compared with.
const L4_PORT: u16 = 7100;
/// Bytes echoed by the throughput comparison, each way.
const BULK_BYTES: usize = 16 * 1024 * 1024;

struct Bed {
    // Dropped first: the extra veths and namespaces, then the testbed.
    _nas: EchoServer,
    _lan_echo: EchoServer,
    _veths: (VethPair, VethPair),
    printer: Netns,
    stranger: Netns,
    tb: Testbed,
}

fn ok<T>(tb: &Testbed, r: Result<T>) -> T {
    r.unwrap_or_else(|e| {
        let agent = tb.agent().map(|a| a.log()).unwrap_or_default();
        panic!("{e}\n--- agent log ---\n{agent}")
    })
}

fn egress_route() -> EgressRoute {
    EgressRoute {
        id: 1,
        vip_ip: "192.168.77.250".into(),
        vip_prefix: 24,
        lan_listen_port: EGRESS_PORT,
        target_host: HUB_TUNNEL_IP.to_string(),
        target_port: NAS_PORT,
        allowed_sources: vec![format!("{PRINTER_IP}/32")],
        near_peers: vec![],
    }
}

fn bed(mode: NetstackMode) -> Bed {
    require_root().unwrap();
    let binary = product_binary("gatelet-agent").unwrap();
    let options = TestbedOptions {
        mode,
        ..TestbedOptions::default()
    };
    let tb = Testbed::start_with(&GatewayRole::Agent(binary), &options).unwrap();
    let printer = ok(&tb, Netns::new("printer"));
    let stranger = ok(&tb, Netns::new("stranger"));
    let veths = (
        ok(
            &tb,
            VethPair::new(
                &tb.gw_ns,
                &format!("{GW_PRINTER_LAN_IP}/24"),
                &printer,
                &format!("{PRINTER_IP}/24"),
            ),
        ),
        ok(
            &tb,
            VethPair::new(
                &tb.gw_ns,
                &format!("{GW_STRANGER_LAN_IP}/24"),
                &stranger,
                &format!("{STRANGER_IP}/24"),
            ),
        ),
    );
    let nas = ok(
        &tb,
        EchoServer::start(&tb.hub_ns, SocketAddr::from((HUB_TUNNEL_IP, NAS_PORT))),
    );
    let lan_echo = ok(
        &tb,
        EchoServer::start(&tb.gw_ns, SocketAddr::from((GW_LAN_IP, 0))),
    );
    let config = AgentConfig {
        config_hash: Some("egress-e2e".into()),
        http_routes: Vec::new(),
        l4_routes: vec![L4Route {
            id: 2,
            listen_port: L4_PORT,
            target_host: GW_LAN_IP.to_string(),
            target_port: lan_echo.addr().port(),
            wol: None,
        }],
        egress_routes: vec![egress_route()],
    };
    let agent = ok(&tb, tb.agent());
    if let Response::Error { message } = ok(
        &tb,
        control_request(agent.socket(), &Request::Apply { config }),
    ) {
        panic!("the agent refused the config: {message}");
    }
    ok(&tb, tb.wait_handshake(None, Duration::from_secs(20)));
    ok(
        &tb,
        wait_until(
            "the egress listener to be bound",
            Duration::from_secs(10),
            || Ok::<_, HarnessError>(listener(&tb)?.filter(|e| e.bound)),
        ),
    );
    Bed {
        _nas: nas,
        _lan_echo: lan_echo,
        _veths: veths,
        printer,
        stranger,
        tb,
    }
}

fn listener(tb: &Testbed) -> Result<Option<EgressStatus>> {
    Ok(tb
        .agent_status()?
        .scan_egress
        .into_iter()
        .find(|e| e.lan_listen_port == EGRESS_PORT))
}

fn payload(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8).collect()
}

both_modes!(
    egress_relays_the_printer_into_the_tunnel_and_refuses_a_stranger,
    relay_and_refuse
);
fn relay_and_refuse(mode: NetstackMode) {
    let b = bed(mode);
    let tb = &b.tb;
    let st = ok(tb, listener(tb)).unwrap();
    assert_eq!(st.lan_bind_ip, "0.0.0.0");
    assert_eq!(st.source_drops, 0);

    // The printer reaches the NAS through the tunnel; half-close carries the end of the data.
    let data = payload(256 * 1024);
    let to = SocketAddr::from((GW_PRINTER_LAN_IP, EGRESS_PORT));
    let back = ok(tb, tcp_echo(&b.printer, to, &data));
    assert!(
        back == data,
        "{} of {} bytes came back",
        back.len(),
        data.len()
    );

    // A stranger is refused (reset before anything is relayed) and counted.
    let to = SocketAddr::from((GW_STRANGER_LAN_IP, EGRESS_PORT));
    let refused = tcp_echo(&b.stranger, to, b"let me in");
    assert!(
        refused.as_ref().map_or(true, |v| v.is_empty()),
        "the stranger got {refused:?}"
    );
    let st = ok(tb, listener(tb)).unwrap();
    assert_eq!(st.source_drops, 1, "{st:?}");
    assert!(st.bytes >= 2 * data.len() as u64, "{st:?}");
    let near = ok(tb, tb.agent_status()).scan_egress_near.unwrap();
    assert_eq!(near.role, "none");

    // Throughput in the same run: the egress relay (LAN -> tunnel) against the L4 relay
    // (tunnel -> LAN), each echoing BULK_BYTES.
    let bulk = payload(BULK_BYTES);
    let measure = |ns: &Netns, to: SocketAddr| {
        let started = Instant::now();
        let back = ok(tb, tcp_echo(ns, to, &bulk));
        let took = started.elapsed();
        assert!(
            back == bulk,
            "{} of {} bytes came back",
            back.len(),
            bulk.len()
        );
        (BULK_BYTES as f64 / (1024.0 * 1024.0)) / took.as_secs_f64()
    };
    let egress = measure(
        &b.printer,
        SocketAddr::from((GW_PRINTER_LAN_IP, EGRESS_PORT)),
    );
    let l4 = measure(&tb.hub_ns, SocketAddr::from((GW_TUNNEL_IP, L4_PORT)));
    println!(
        "scan_egress throughput ({}): egress relay {egress:.1} MiB/s, L4 relay {l4:.1} MiB/s \
         ({} MiB echoed each, both directions through the tunnel)",
        mode.as_str(),
        BULK_BYTES / (1024 * 1024)
    );
}
