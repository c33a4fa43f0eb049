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
    agent_env, both_modes, control_request, product_binary, require_root, start_agent, tcp_echo,
    wait_until, EchoServer, GatewayRole, HarnessError, KeyPair, Netns, NetstackMode, Result,
    Testbed, TestbedOptions, VethPair, WgPeer, GW_LAN_IP, GW_TUNNEL_IP, HUB_NAME, HUB_TUNNEL_IP,
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

// ---------------------------------------------------------------------------------------------
// "Near" failover: gatelet (gateway A, the testbed's agent) and keepalived (gateway B, Debian's
// keepalived with the reference's vrrp_instance) on one LAN bridge with the client.
//
//  ns lan: br0 192.168.60.60 (the client) -- veth -- ns gw  (agent, 192.168.60.2)
//                                          -- veth -- ns gwb (keepalived, 192.168.60.3)
// ---------------------------------------------------------------------------------------------

const POOL_A: Ipv4Addr = Ipv4Addr::new(192, 168, 60, 2);
const POOL_B: Ipv4Addr = Ipv4Addr::new(192, 168, 60, 3);
const POOL_CLIENT: Ipv4Addr = Ipv4Addr::new(192, 168, 60, 60);
const POOL_VIP: Ipv4Addr = Ipv4Addr::new(192, 168, 60, 250);
/// The target is 4 s (3 × advert_int + skew = 3.41 s, measured 3.3-3.5 s here); the bound
/// asserted leaves one more second for a loaded CI box and the 100 ms polling.
const FAILOVER_LIMIT: Duration = Duration::from_secs(5);

struct Pool {
    keepalived: Option<gatelet_tests_hw::Process>,
    /// Gateway B as a second gatelet-agent, with its own tunnel (10.8.0.3) over its own veth
    /// to the hub.
    b_agent: Option<gatelet_tests_hw::Agent>,
    b_veth: Option<VethPair>,
    _b_echo: Option<EchoServer>,
    _nas: EchoServer,
    gwb: Netns,
    lan: Netns,
    tb: Testbed,
}

/// Joins `ns` to the bridge in `lan` with `addr/24`.
fn join_bridge(lan: &Netns, ns: &Netns, addr: Ipv4Addr) -> Result<()> {
    let name = gatelet_tests_hw::unique_ifname();
    let peer = format!("{name}b");
    gatelet_tests_hw::run(std::process::Command::new("ip").args([
        "link",
        "add",
        &name,
        "netns",
        ns.name(),
        "type",
        "veth",
        "peer",
        "name",
        &peer,
        "netns",
        lan.name(),
    ]))?;
    lan.ip(&["link", "set", &peer, "master", "br0", "up"])?;
    ns.ip(&["addr", "add", &format!("{addr}/24"), "dev", &name])?;
    ns.ip(&["link", "set", &name, "up"])?;
    Ok(())
}

/// `keepalived_b`: gateway B will be keepalived (with an echo standing in for its proxy),
/// else a second agent.
fn pool(keepalived_b: bool) -> Pool {
    require_root().unwrap();
    let binary = product_binary("gatelet-agent").unwrap();
    let tb = Testbed::start_with(&GatewayRole::Agent(binary), &TestbedOptions::default()).unwrap();
    let lan = ok(&tb, Netns::new("lan"));
    let gwb = ok(&tb, Netns::new("gwb"));
    ok(&tb, lan.ip(&["link", "add", "br0", "type", "bridge"]));
    ok(
        &tb,
        lan.ip(&["addr", "add", &format!("{POOL_CLIENT}/24"), "dev", "br0"]),
    );
    ok(&tb, lan.ip(&["link", "set", "br0", "up"]));
    ok(&tb, join_bridge(&lan, &tb.gw_ns, POOL_A));
    ok(&tb, join_bridge(&lan, &gwb, POOL_B));
    let nas = ok(
        &tb,
        EchoServer::start(&tb.hub_ns, SocketAddr::from((HUB_TUNNEL_IP, NAS_PORT))),
    );
    // Gateway B's stand-in for the reference's egress proxy: an echo on every address.
    let b_echo = keepalived_b.then(|| {
        ok(
            &tb,
            EchoServer::start(&gwb, SocketAddr::from((Ipv4Addr::UNSPECIFIED, EGRESS_PORT))),
        )
    });
    ok(&tb, tb.wait_handshake(None, Duration::from_secs(20)));
    Pool {
        keepalived: None,
        b_agent: None,
        b_veth: None,
        _b_echo: b_echo,
        _nas: nas,
        gwb,
        lan,
        tb,
    }
}

/// The reference's vrrp_instance for egress route 1 at index 0 on gateway B. Its chk_tunnel
/// pings the LAN client instead of the hub (B has no tunnel here), every second.
fn keepalived_conf(iface: &str) -> String {
    format!(
        "global_defs {{\n  script_user root\n  enable_script_security\n}}\n\
         vrrp_script chk_tunnel {{\n  script \"/usr/bin/ping -c1 -W2 {POOL_CLIENT}\"\n  \
         interval 1\n  rise 1\n  fall 2\n}}\n\
         vrrp_instance EGRESS_1 {{\n  state BACKUP\n  interface {iface}\n  \
         virtual_router_id 52\n  priority 150\n  advert_int 1\n  nopreempt\n  \
         unicast_src_ip {POOL_B}\n  unicast_peer {{\n    {POOL_A}\n  }}\n  \
         virtual_ipaddress {{\n    {POOL_VIP}/24\n  }}\n  track_script {{\n    chk_tunnel\n  }}\n}}\n"
    )
}

fn start_keepalived(p: &mut Pool) {
    let iface = ok(
        &p.tb,
        p.gwb
            .ip(&["-o", "-4", "addr", "show", "to", &POOL_B.to_string()]),
    );
    let iface = iface.split_whitespace().nth(1).unwrap().to_owned();
    let dir = p.gwb.dir().to_owned();
    let conf = dir.join("keepalived.conf");
    std::fs::write(&conf, keepalived_conf(&iface)).unwrap();
    let mut cmd = p.gwb.command("keepalived");
    cmd.args(["-n", "-l", "-D", "-P", "-f"])
        .arg(&conf)
        .arg("-p")
        .arg(dir.join("keepalived.pid"))
        .arg("-r")
        .arg(dir.join("vrrp.pid"));
    p.keepalived = Some(ok(&p.tb, p.gwb.spawn("keepalived", cmd)));
}

fn has_vip(ns: &Netns) -> bool {
    ns.ip(&["-4", "addr", "show"])
        .map(|o| o.contains(&format!("{POOL_VIP}/24")))
        .unwrap_or(false)
}

fn wait_vip(p: &Pool, ns: &Netns, within: Duration) -> Duration {
    let started = Instant::now();
    ok(
        &p.tb,
        wait_until(&format!("the VIP on {}", ns.name()), within, || {
            Ok::<_, HarnessError>(has_vip(ns).then_some(()))
        }),
    );
    started.elapsed()
}

fn apply_pool_route(p: &Pool) {
    apply_pool_route_to(p, ok(&p.tb, p.tb.agent()), POOL_B);
}

fn apply_pool_route_to(p: &Pool, agent: &gatelet_tests_hw::Agent, peer: Ipv4Addr) {
    let config = AgentConfig {
        config_hash: Some("pool".into()),
        egress_routes: vec![EgressRoute {
            vip_ip: POOL_VIP.to_string(),
            allowed_sources: vec![format!("{POOL_CLIENT}/32")],
            near_peers: vec![peer.to_string()],
            ..egress_route()
        }],
        ..AgentConfig::default()
    };
    if let Response::Error { message } = ok(
        &p.tb,
        control_request(agent.socket(), &Request::Apply { config }),
    ) {
        panic!("the agent refused the config: {message}");
    }
}

fn role(p: &Pool) -> String {
    role_of(p, ok(&p.tb, p.tb.agent()))
}

fn role_of(p: &Pool, agent: &gatelet_tests_hw::Agent) -> String {
    ok(&p.tb, agent.status())
        .scan_egress_near
        .map(|n| n.role)
        .unwrap_or_default()
}

/// Starts gateway B as a second agent with its own tunnel to the hub.
fn start_agent_b(p: &mut Pool) {
    const B_TUNNEL_IP: Ipv4Addr = Ipv4Addr::new(10, 8, 0, 3);
    const HUB_B_SIDE: Ipv4Addr = Ipv4Addr::new(10, 77, 2, 1);
    let tb = &p.tb;
    let veth = ok(
        tb,
        VethPair::new(
            &tb.hub_ns,
            &format!("{HUB_B_SIDE}/24"),
            &p.gwb,
            "10.77.2.2/24",
        ),
    );
    ok(tb, p.gwb.set_hosts(&[(HUB_B_SIDE.into(), HUB_NAME)]));
    let key = ok(tb, KeyPair::generate());
    ok(
        tb,
        tb.hub.set_peer(&WgPeer {
            public_key: key.public.clone(),
            preshared_key: tb.psk.clone(),
            allowed_ips: vec![format!("{B_TUNNEL_IP}/32")],
            endpoint: None,
            persistent_keepalive: None,
        }),
    );
    let mut env = agent_env(&key, &tb.hub_key, tb.psk.as_deref());
    env.tunnel_ip = B_TUNNEL_IP.to_string();
    env.address = format!("{B_TUNNEL_IP}/32");
    let binary = product_binary("gatelet-agent").unwrap();
    let agent = ok(tb, start_agent(&p.gwb, &binary, &env, NetstackMode::Kernel));
    ok(
        tb,
        agent
            .wait_handshake(u64::MAX, Duration::from_secs(20))
            .map(drop),
    );
    p.b_veth = Some(veth);
    p.b_agent = Some(agent);
}

/// A new connection from the client to VIP:port is echoed.
fn vip_works(p: &Pool) {
    let to = SocketAddr::from((POOL_VIP, EGRESS_PORT));
    let data = payload(64 * 1024);
    let back = ok(&p.tb, tcp_echo(&p.lan, to, &data));
    assert!(
        back == data,
        "{} of {} bytes came back",
        back.len(),
        data.len()
    );
}

/// A new connection from the client to VIP:445 (the SMB port) is echoed: the port-445 redirect
/// leads it to the egress listener.
fn smb_port_works(p: &Pool) {
    let to = SocketAddr::from((POOL_VIP, 445));
    let data = payload(64 * 1024);
    let back = ok(&p.tb, tcp_echo(&p.lan, to, &data));
    assert!(
        back == data,
        "{} of {} bytes came back",
        back.len(),
        data.len()
    );
}

fn logs(p: &Pool) -> String {
    let agent = p.tb.agent().map(|a| a.log()).unwrap_or_default();
    let k = p.keepalived.as_ref().map(|k| k.log()).unwrap_or_default();
    let b = p.b_agent.as_ref().map(|a| a.log()).unwrap_or_default();
    format!("--- agent ---\n{agent}\n--- keepalived ---\n{k}\n--- agent B ---\n{b}")
}

#[test]
fn gatelet_master_fails_over_to_a_keepalived_backup() {
    let mut p = pool(true);
    apply_pool_route(&p);
    // Healthy after two samples 5 s apart, then master after 3.41 s alone.
    wait_vip(&p, &p.tb.gw_ns, Duration::from_secs(20));
    assert_eq!(role(&p), "master", "{}", logs(&p));
    start_keepalived(&mut p);
    // keepalived sees gatelet's adverts and stays backup (nopreempt, equal priority).
    std::thread::sleep(Duration::from_secs(6));
    assert!(
        !has_vip(&p.gwb),
        "keepalived took the VIP from a live master\n{}",
        logs(&p)
    );
    assert!(has_vip(&p.tb.gw_ns));
    vip_works(&p);
    // Kill gatelet (no step-down): keepalived takes over after its master down interval.
    if let gatelet_tests_hw::Gateway::Agent(a) = &mut p.tb.gateway {
        a.process().crash();
    }
    let took = wait_vip(&p, &p.gwb, Duration::from_secs(10));
    println!("failover gatelet -> keepalived: {} ms", took.as_millis());
    assert!(took <= FAILOVER_LIMIT, "took {took:?}\n{}", logs(&p));
    vip_works(&p);
}

#[test]
fn keepalived_master_fails_over_to_a_gatelet_backup() {
    let mut p = pool(true);
    start_keepalived(&mut p);
    wait_vip(&p, &p.gwb, Duration::from_secs(20));
    apply_pool_route(&p);
    // gatelet: fault until two health samples, then backup behind keepalived's adverts.
    ok(
        &p.tb,
        wait_until("gatelet to be backup", Duration::from_secs(20), || {
            Ok::<_, HarnessError>((role(&p) == "backup").then_some(()))
        }),
    );
    std::thread::sleep(Duration::from_secs(5));
    assert!(
        !has_vip(&p.tb.gw_ns),
        "gatelet took the VIP from a live master\n{}",
        logs(&p)
    );
    assert_eq!(role(&p), "backup");
    // Kill keepalived's whole process group hard: its VRRP child would otherwise notice the
    // parent's death and step down with priority 0 (a graceful handover, not a failure).
    let pgid = p.keepalived.as_ref().unwrap().pid();
    ok(
        &p.tb,
        gatelet_tests_hw::run(std::process::Command::new("kill").args([
            "-KILL",
            "--",
            &format!("-{pgid}"),
        ])),
    );
    let took = wait_vip(&p, &p.tb.gw_ns, Duration::from_secs(10));
    println!("failover keepalived -> gatelet: {} ms", took.as_millis());
    assert!(took <= FAILOVER_LIMIT, "took {took:?}\n{}", logs(&p));
    assert_eq!(role(&p), "master");
    vip_works(&p);
}

#[test]
fn a_gatelet_only_pool_fails_over_and_the_new_master_relays_through_its_own_tunnel() {
    let mut p = pool(false);
    apply_pool_route(&p);
    wait_vip(&p, &p.tb.gw_ns, Duration::from_secs(20));
    start_agent_b(&mut p);
    let b = p.b_agent.take().unwrap();
    apply_pool_route_to(&p, &b, POOL_A);
    ok(
        &p.tb,
        wait_until("agent B to be backup", Duration::from_secs(20), || {
            Ok::<_, HarnessError>((role_of(&p, &b) == "backup").then_some(()))
        }),
    );
    std::thread::sleep(Duration::from_secs(5));
    p.b_agent = Some(b);
    assert!(
        !has_vip(&p.gwb),
        "B took the VIP from a live master\n{}",
        logs(&p)
    );
    assert_eq!(role(&p), "master");
    vip_works(&p);
    smb_port_works(&p);
    let tables = ok(
        &p.tb,
        p.tb.gw_ns
            .exec(&["nft", "list", "table", "ip", "gatelet_egress_1"]),
    );
    assert!(
        tables.contains("redirect to :14450") && tables.contains("192.168.60.250"),
        "{tables}"
    );
    if let gatelet_tests_hw::Gateway::Agent(a) = &mut p.tb.gateway {
        a.process().crash();
    }
    let took = wait_vip(&p, &p.gwb, Duration::from_secs(10));
    println!("failover gatelet -> gatelet: {} ms", took.as_millis());
    assert!(took <= FAILOVER_LIMIT, "took {took:?}\n{}", logs(&p));
    assert_eq!(role_of(&p, p.b_agent.as_ref().unwrap()), "master");
    // B relays the new connection through its own tunnel to the NAS behind the hub, on the
    // listener's port and through the port-445 redirect.
    vip_works(&p);
    smb_port_works(&p);
    let st = ok(&p.tb, p.b_agent.as_ref().unwrap().status());
    assert!(st.scan_egress[0].bytes > 0, "{:?}", st.scan_egress);
    // The route removed: the redirect goes with it.
    let b = p.b_agent.take().unwrap();
    let config = AgentConfig {
        config_hash: Some("none".into()),
        ..AgentConfig::default()
    };
    let _ = ok(
        &p.tb,
        control_request(b.socket(), &Request::Apply { config }),
    );
    ok(
        &p.tb,
        wait_until("the redirect table to go", Duration::from_secs(5), || {
            let rules = p.gwb.exec(&["nft", "list", "tables"])?;
            Ok::<_, HarnessError>((!rules.contains("gatelet_egress_1")).then_some(()))
        }),
    );
    assert!(!has_vip(&p.gwb), "a removed route's master removes its VIP");
    p.b_agent = Some(b);
}

/// The tunnel check (one ping of the hub every 5 s, 2 s timeout, fall 2) notices a cut tunnel
/// within about 5-12 s; the master then steps down (priority 0) and the backup takes over
/// after its skew time. Bound with slack for a loaded box.
const CUT_FAILOVER_LIMIT: Duration = Duration::from_secs(20);

#[test]
fn gatelet_master_whose_tunnel_is_cut_hands_over_to_keepalived() {
    let mut p = pool(true);
    apply_pool_route(&p);
    wait_vip(&p, &p.tb.gw_ns, Duration::from_secs(20));
    start_keepalived(&mut p);
    std::thread::sleep(Duration::from_secs(3));
    assert!(!has_vip(&p.gwb), "{}", logs(&p));
    // Cut the tunnel: the hub forgets the gateway (its pings go unanswered).
    ok(&p.tb, p.tb.hub.remove_peer(&p.tb.gw_key.public));
    let took = wait_vip(&p, &p.gwb, CUT_FAILOVER_LIMIT);
    println!(
        "failover after a tunnel cut, gatelet -> keepalived: {} ms",
        took.as_millis()
    );
    ok(
        &p.tb,
        wait_until("the VIP to leave gateway A", Duration::from_secs(2), || {
            Ok::<_, HarnessError>((!has_vip(&p.tb.gw_ns)).then_some(()))
        }),
    );
    assert_eq!(role(&p), "none", "fault is neither master nor backup");
    vip_works(&p);
}
