//! gatelet-agent with exactly what `systemd/gatelet-agent.service` gives it, without systemd:
//! the user and group `gatelet` made by `systemd-sysusers`, a fresh machine's `/dev/net/tun`
//! after the installer's tmpfiles rule, and CAP_NET_ADMIN as its only capability (ambient,
//! effective, bounding; so no CAP_NET_RAW) — see `gatelet_tests_hw::ServiceUser`. It must
//! create its own TUN device, carry traffic through the tunnel and send Wake-on-LAN magic
//! packets into the LAN. Needs root.

use std::net::{Ipv4Addr, UdpSocket};
use std::time::Duration;

use gatelet_agent_api::control::{Request, Response, WakeRequest};
use gatelet_tests_hw::{
    control_request, fixture_gc_lines, product_binary, require_root, Agent, Gateway, GatewayRole,
    Netns, ServiceUser, Testbed, TestbedOptions, VethPair, GW_LAN_SIDE_IP, HANDSHAKE_TIMEOUT,
    LAN_SUBNET_PREFIX,
};

/// The gateway's end of the LAN veth (`VethPair` names it after the other namespace's role).
const GW_LAN_IFACE: &str = "v-lan";
/// CAP_NET_ADMIN (bit 12) alone, as /proc/<pid>/status prints a capability set.
const NET_ADMIN_ONLY: &str = "0000000000001000";
/// Bytes echoed through the tunnel.
const ECHO_BYTES: usize = 64 * 1024;
/// How long the LAN waits for a magic packet.
const CAPTURE_TIMEOUT: Duration = Duration::from_secs(5);
/// A magic packet: 6 x 0xFF, then the MAC 16 times.
const MAGIC_LEN: usize = 6 + 16 * 6;

#[test]
fn agent_with_only_the_units_capability_makes_its_tun_device_carries_traffic_and_wakes_the_lan() {
    require_root().unwrap();
    let binary = product_binary("gatelet-agent").unwrap();
    let mut extra = fixture_gc_lines().unwrap();
    extra.push(("GATELET_WOL_INTERFACES".into(), GW_LAN_IFACE.into()));
    let options = TestbedOptions {
        agent_env_extra: extra.clone(),
        ..TestbedOptions::default()
    };
    let mut tb = Testbed::start_with(&GatewayRole::Agent(binary.clone()), &options).unwrap();
    let Gateway::Agent(root_agent) = &mut tb.gateway else {
        unreachable!("an agent testbed")
    };
    // A clean exit removes its TUN device: the next agent must create its own.
    root_agent.process().terminate();

    let lan = Netns::new("lan").unwrap();
    let _veth = VethPair::new(
        &tb.gw_ns,
        &format!("{GW_LAN_SIDE_IP}/{LAN_SUBNET_PREFIX}"),
        &lan,
        &format!("192.168.50.10/{LAN_SUBNET_PREFIX}"),
    )
    .unwrap();
    let listener = lan
        .enter(|| UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 9)))
        .unwrap()
        .unwrap();
    listener.set_read_timeout(Some(CAPTURE_TIMEOUT)).unwrap();

    let user = ServiceUser::create(&tb.gw_ns.dir().join("installer-root")).unwrap();
    let mut env = gatelet_tests_hw::agent_env(&tb.gw_key, &tb.hub_key, tb.psk.as_deref());
    env.extra = extra;
    let cmd = user.command_with_caps(&tb.gw_ns, &binary, &["net_admin"]);
    let agent = Agent::start_command(&tb.gw_ns, &env, Some(user.ids()), cmd);
    tb.gateway = Gateway::Agent(agent.unwrap());
    let agent = tb.agent().unwrap();

    let status = std::fs::read_to_string(format!("/proc/{}/status", agent.pid())).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.split_whitespace().next().unwrap_or("").to_owned())
            .unwrap_or_default()
    };
    assert_eq!(field("Uid:"), user.ids().0.to_string(), "{status}");
    assert_eq!(field("Gid:"), user.ids().1.to_string(), "{status}");
    for set in ["CapEff:", "CapPrm:", "CapBnd:"] {
        assert_eq!(field(set), NET_ADMIN_ONLY, "{set} {status}");
    }

    tb.wait_handshake(None, HANDSHAKE_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}\n--- agent log ---\n{}", agent.log()));
    tb.check_traffic_both_ways(ECHO_BYTES).unwrap();

    let mac = [0x02, 0x00, 0x5e, 0x01, 0x02, 0x03];
    let mac_text = mac
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":");
    let resp = control_request(
        agent.socket(),
        &Request::Wake(WakeRequest {
            mac: mac_text,
            lan_host: None,
            port: None,
            timeout_ms: 1_000,
            trigger: "api".into(),
        }),
    )
    .unwrap();
    let Response::Woke(w) = resp else {
        panic!("expected Woke, got {resp:?}");
    };
    assert!(w.success, "{w:?}\n--- agent log ---\n{}", agent.log());
    assert!(
        w.sent_on.iter().all(|s| s.iface == GW_LAN_IFACE && s.ok),
        "{w:?}"
    );
    let mut buf = [0u8; 256];
    let (n, from) = listener
        .recv_from(&mut buf)
        .expect("a magic packet in the LAN");
    assert_eq!(n, MAGIC_LEN);
    assert_eq!(&buf[..6], &[0xFF; 6]);
    assert!(buf[6..n].chunks(6).all(|c| c == mac), "{:?}", &buf[..n]);
    assert_eq!(from.ip(), std::net::IpAddr::from(GW_LAN_SIDE_IP));
}
