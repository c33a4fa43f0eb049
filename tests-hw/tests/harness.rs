//! Proves the harness itself with wireguard-go on both sides: if these fail, the interop
//! tests of gatelet-agent say nothing about the agent.

use std::net::Ipv4Addr;
use std::time::Duration;

use gatelet_tests_hw::{
    require_root, Gateway, GatewayRole, Netns, Testbed, WgImpl, WgPeer, HUB_LAN_IP, HUB_PORT,
    HUB_TUNNEL_IP, KEEPALIVE_S,
};

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(20);

#[test]
fn reference_gateway_handshakes_and_carries_ping_and_tcp_both_ways() {
    require_root().unwrap();
    let tb = Testbed::start(&GatewayRole::Userspace(WgImpl::WIREGUARD_GO)).unwrap();
    tb.wait_handshake(None, HANDSHAKE_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}\nhub log:\n{}", tb.hub.process().log()));
    tb.check_traffic_both_ways(256 * 1024).unwrap();
}

#[test]
fn a_namespace_and_its_hosts_file_are_removed_on_drop() {
    require_root().unwrap();
    let ns = Netns::new("drop").unwrap();
    let name = ns.name().to_owned();
    ns.set_hosts(&[(HUB_TUNNEL_IP.into(), "x.test")]).unwrap();
    let hosts = std::path::Path::new("/etc/netns").join(&name).join("hosts");
    assert!(hosts.exists());
    let resolved = ns.exec(&["getent", "hosts", "x.test"]).unwrap();
    assert!(resolved.contains(&HUB_TUNNEL_IP.to_string()), "{resolved}");
    let mut sleeper = ns.command("sleep");
    sleeper.arg("300");
    let sleeper = ns.spawn("sleeper", sleeper).unwrap();
    let pid = sleeper.pid();
    // `ip netns exec` enters the namespace a moment after the spawn: only a process inside it
    // is the namespace's to clean up.
    gatelet_tests_hw::wait_until(
        "the sleeper to enter the namespace",
        Duration::from_secs(5),
        || {
            use std::os::unix::fs::MetadataExt;
            let inside = std::fs::metadata(format!("/proc/{pid}/ns/net")).map(|m| m.ino());
            let ns_ino = std::fs::metadata(format!("/run/netns/{name}")).map(|m| m.ino());
            Ok::<_, String>(match (inside, ns_ino) {
                (Ok(a), Ok(b)) if a == b => Some(()),
                _ => None,
            })
        },
    )
    .unwrap();
    std::mem::forget(sleeper); // leave it to the namespace's own cleanup
    drop(ns);
    let list =
        gatelet_tests_hw::run(std::process::Command::new("ip").args(["netns", "list"])).unwrap();
    assert!(!list.contains(&name), "{name} still listed: {list}");
    assert!(!hosts.exists());
    gatelet_tests_hw::wait_until("the sleeper to die", Duration::from_secs(5), || {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"));
        Ok::<_, String>(match stat {
            Err(_) => Some(()),
            Ok(s) if s.contains(") Z ") => Some(()),
            Ok(_) => None,
        })
    })
    .unwrap();
}

/// The negative control of the agent's allowed-IPs test: with a gateway that accepts the whole
/// tunnel subnet, the datagram from the foreign address does arrive (first), so nothing in the
/// topology (reverse-path filtering, routing) drops it on the agent's behalf.
#[test]
fn foreign_tunnel_source_reaches_a_gateway_whose_allowed_ips_include_it() {
    require_root().unwrap();
    let tb = Testbed::start(&GatewayRole::Userspace(WgImpl::WIREGUARD_GO)).unwrap();
    let Gateway::Userspace(gw) = &tb.gateway else {
        unreachable!("started as userspace")
    };
    gw.set_peer(&WgPeer {
        public_key: tb.hub_key.public.clone(),
        preshared_key: tb.psk.clone(),
        allowed_ips: vec!["10.8.0.0/24".into()],
        endpoint: Some(format!("{HUB_LAN_IP}:{HUB_PORT}")),
        persistent_keepalive: Some(KEEPALIVE_S),
    })
    .unwrap();
    tb.wait_handshake(None, HANDSHAKE_TIMEOUT).unwrap();
    let (first, _) = tb
        .foreign_then_allowed_datagrams(Ipv4Addr::new(10, 8, 0, 99), Duration::from_secs(2))
        .unwrap();
    assert_eq!(first, b"foreign");
}
