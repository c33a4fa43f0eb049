//! gatelet-agent as the gateway against wireguard-go as the hub, on real network namespaces
//! (see `Testbed`): handshake, traffic both ways, a hub that moves behind its name,
//! cryptokey routing and a rekey forced by the hub. Needs root.

use std::net::Ipv4Addr;
use std::thread;
use std::time::{Duration, Instant};

use gatelet_tests_hw::{
    both_modes, product_binary, require_root, wait_until, GatewayRole, HarnessError, NetstackMode,
    Process, Result, TempDir, Testbed, TestbedOptions, WgPeer, GW_TUNNEL_IP, HUB_PORT,
    HUB_TUNNEL_IP,
};

/// A handshake between two processes on one host takes milliseconds; this is generous.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(20);
/// The agent re-resolves `WG_ENDPOINT` after 3 minutes without a handshake; allow 20 s more
/// for the handshake that follows.
const MOVED_HUB_DEADLINE: Duration = Duration::from_secs(180 + 20);
/// Bytes echoed over TCP through the tunnel (many full-size packets).
const ECHO_BYTES: usize = 256 * 1024;
/// Where the hub moves to in the re-resolution test.
const MOVED_HUB_LAN_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 1, 3);
/// A tunnel address the hub owns but the gateway's WG_ALLOWED_IPS (10.8.0.1/32) excludes.
const FOREIGN_TUNNEL_IP: Ipv4Addr = Ipv4Addr::new(10, 8, 0, 99);
/// How long a datagram that should be dropped gets to (wrongly) arrive.
const DROP_WAIT: Duration = Duration::from_secs(2);

fn agent_testbed() -> Testbed {
    agent_testbed_in(NetstackMode::Kernel)
}

/// The standard testbed with the agent in `mode` (userspace: as uid 65534, no capability, no
/// device; checked at start).
fn agent_testbed_in(mode: NetstackMode) -> Testbed {
    require_root().unwrap();
    let binary = product_binary("gatelet-agent").unwrap();
    let options = TestbedOptions {
        mode,
        ..TestbedOptions::default()
    };
    Testbed::start_with(&GatewayRole::Agent(binary), &options).unwrap()
}

/// Unwraps, or panics with the agent's and the hub's logs so a failure explains itself.
fn ok<T>(tb: &Testbed, r: Result<T>) -> T {
    r.unwrap_or_else(|e| {
        let agent = tb.agent().map(|a| a.log()).unwrap_or_default();
        panic!(
            "{e}\n--- agent log ---\n{agent}\n--- hub log ---\n{}",
            tb.hub.process().log()
        )
    })
}

both_modes!(
    agent_completes_a_handshake_with_a_wireguard_go_hub_found_by_name,
    handshake_with_a_hub_found_by_name
);
fn handshake_with_a_hub_found_by_name(mode: NetstackMode) {
    let tb = agent_testbed_in(mode);
    ok(&tb, tb.wait_handshake(None, HANDSHAKE_TIMEOUT));
    let status = ok(&tb, tb.agent_status());
    assert!(status.tunnel.handshake_age_s.is_some(), "{status:?}");
    let want_mode = if mode.has_tun() { "tun" } else { "netstack" };
    assert_eq!(status.tunnel.mode, want_mode, "{status:?}");
    assert!(!status.agent_version.is_empty(), "{status:?}");
    assert_eq!(
        status.tunnel.endpoint.as_deref(),
        Some(format!("{}:{HUB_PORT}", tb.hub_lan_ip).as_str()),
        "the agent should report the address {} resolved from hub.test",
        tb.hub_lan_ip
    );
    if !mode.has_tun() {
        // No device at all (checked at start: no gatelet0, no /dev/net/tun open, no capability).
        return;
    }
    // The TUN device as the issue asks: default name and MTU, WG_ADDRESS, up, a route for
    // each of WG_ALLOWED_IPS.
    let link = ok(&tb, tb.gw_ns.ip(&["-o", "link", "show", "gatelet0"]));
    assert!(link.contains("mtu 1420") && link.contains(",UP"), "{link}");
    let addr = ok(&tb, tb.gw_ns.ip(&["-o", "addr", "show", "dev", "gatelet0"]));
    assert!(addr.contains(&format!("inet {GW_TUNNEL_IP}/32")), "{addr}");
    let routes = ok(&tb, tb.gw_ns.ip(&["route", "show", "dev", "gatelet0"]));
    assert!(
        routes
            .lines()
            .any(|r| r.starts_with(&HUB_TUNNEL_IP.to_string())),
        "no route to {HUB_TUNNEL_IP} via gatelet0: {routes}"
    );
}

both_modes!(agent_works_without_a_preshared_key, without_a_preshared_key);
fn without_a_preshared_key(mode: NetstackMode) {
    require_root().unwrap();
    let binary = product_binary("gatelet-agent").unwrap();
    let options = TestbedOptions {
        preshared_key: false,
        mode,
        ..Default::default()
    };
    let tb = Testbed::start_with(&GatewayRole::Agent(binary), &options).unwrap();
    ok(&tb, tb.wait_handshake(None, HANDSHAKE_TIMEOUT));
    ok(&tb, tb.check_traffic_both_ways(ECHO_BYTES));
}

both_modes!(agent_carries_ping_and_tcp_echo_both_ways, ping_and_tcp_echo);
fn ping_and_tcp_echo(mode: NetstackMode) {
    let tb = agent_testbed_in(mode);
    ok(&tb, tb.wait_handshake(None, HANDSHAKE_TIMEOUT));
    let before = ok(&tb, tb.agent_status()).tunnel;
    ok(&tb, tb.check_traffic_both_ways(ECHO_BYTES));
    let after = ok(&tb, tb.agent_status()).tunnel;
    assert!(
        after.rx_bytes >= before.rx_bytes + ECHO_BYTES as u64
            && after.tx_bytes >= before.tx_bytes + ECHO_BYTES as u64,
        "the agent's byte counters should grow by at least the echoed payload: {before:?} -> {after:?}"
    );
    assert!(
        after.rx_packets > before.rx_packets && after.tx_packets > before.tx_packets,
        "{before:?} -> {after:?}"
    );
}

both_modes!(
    agent_finds_the_hub_again_after_it_moves_to_a_new_address_behind_the_same_name,
    hub_moves_behind_its_name
);
fn hub_moves_behind_its_name(mode: NetstackMode) {
    let mut tb = agent_testbed_in(mode);
    ok(&tb, tb.wait_handshake(None, HANDSHAKE_TIMEOUT));
    let moved = tb.move_hub(MOVED_HUB_LAN_IP);
    ok(&tb, moved);
    let moved = Instant::now();
    // The new hub has no session and no endpoint for the gateway: only the agent can
    // re-establish the tunnel, by resolving hub.test again.
    ok(&tb, tb.wait_handshake(None, MOVED_HUB_DEADLINE));
    let took = moved.elapsed();
    eprintln!("agent found the moved hub after {took:?}");
    let status = ok(&tb, tb.agent_status());
    assert_eq!(
        status.tunnel.endpoint.as_deref(),
        Some(format!("{MOVED_HUB_LAN_IP}:{HUB_PORT}").as_str()),
        "{status:?}"
    );
    ok(&tb, tb.check_traffic_both_ways(ECHO_BYTES));
}

/// With the gateway sending (as the companion's heartbeats do), unanswered data leads to
/// handshake initiations after 15 s (boringtun), and unanswered initiations to a new
/// resolution after 15 s (the agent): well under a minute.
const MOVED_HUB_WHILE_SENDING_DEADLINE: Duration = Duration::from_secs(60);

#[test]
fn agent_finds_a_moved_hub_within_a_minute_while_the_gateway_sends() {
    let mut tb = agent_testbed();
    ok(&tb, tb.wait_handshake(None, HANDSHAKE_TIMEOUT));
    let mut cmd = tb.gw_ns.command("ping");
    cmd.args(["-n", "-i", "1", "-W", "1"])
        .arg(HUB_TUNNEL_IP.to_string());
    let _pinger = ok(&tb, tb.gw_ns.spawn("ping-while-moving", cmd));
    let moved = tb.move_hub(MOVED_HUB_LAN_IP);
    ok(&tb, moved);
    let start = Instant::now();
    ok(
        &tb,
        tb.wait_handshake(None, MOVED_HUB_WHILE_SENDING_DEADLINE),
    );
    eprintln!(
        "agent found the moved hub while sending after {:?}",
        start.elapsed()
    );
    let status = ok(&tb, tb.agent_status());
    assert_eq!(
        status.tunnel.endpoint.as_deref(),
        Some(format!("{MOVED_HUB_LAN_IP}:{HUB_PORT}").as_str()),
        "{status:?}"
    );
}

both_modes!(
    packets_from_outside_wg_allowed_ips_do_not_reach_the_gateway,
    foreign_packets_dropped
);
fn foreign_packets_dropped(mode: NetstackMode) {
    let tb = agent_testbed_in(mode);
    ok(&tb, tb.wait_handshake(None, HANDSHAKE_TIMEOUT));
    let sent_before = ok(&tb, tb.hub.transfer(&tb.gw_key.public)).1;
    let dropped_before = ok(&tb, tb.agent_status()).tunnel.rx_dropped_not_allowed;
    let (received, delivered_after) = ok(
        &tb,
        tb.foreign_then_allowed_datagrams(FOREIGN_TUNNEL_IP, DROP_WAIT),
    );
    assert_eq!(
        received, b"allowed",
        "the first datagram to arrive must be the one from {HUB_TUNNEL_IP}, not from {FOREIGN_TUNNEL_IP}"
    );
    assert_eq!(
        delivered_after, None,
        "a datagram from {FOREIGN_TUNNEL_IP} (outside WG_ALLOWED_IPS) reached the gateway"
    );
    // The hub did encrypt and send the foreign datagrams: the agent received and dropped them.
    let sent_after = ok(&tb, tb.hub.transfer(&tb.gw_key.public)).1;
    assert!(
        sent_after >= sent_before + 4 * 32,
        "the hub should have sent the datagrams into the tunnel ({sent_before} -> {sent_after} bytes)"
    );
    let dropped_after = ok(&tb, tb.agent_status()).tunnel.rx_dropped_not_allowed;
    assert!(
        dropped_after >= dropped_before + 3,
        "the agent should count the 3 foreign datagrams it dropped: {dropped_before} -> {dropped_after}"
    );
}

both_modes!(
    agent_accepts_a_new_handshake_forced_by_the_hub_and_keeps_carrying_traffic,
    handshake_forced_by_the_hub
);
fn handshake_forced_by_the_hub(mode: NetstackMode) {
    let tb = agent_testbed_in(mode);
    let first = ok(&tb, tb.wait_handshake(None, HANDSHAKE_TIMEOUT));
    let gw_endpoint = ok(&tb, tb.hub.endpoint(&tb.gw_key.public));
    let gw_endpoint = gw_endpoint.expect("after a handshake the hub knows the gateway's endpoint");
    // Let the session age, so that a new handshake is visible in both sides' clocks.
    thread::sleep(Duration::from_secs(3));
    // Forget the session on the hub and initiate a fresh one from the hub's side.
    ok(&tb, tb.hub.remove_peer(&tb.gw_key.public));
    ok(
        &tb,
        tb.hub.set_peer(&WgPeer {
            public_key: tb.gw_key.public.clone(),
            preshared_key: tb.psk.clone(),
            allowed_ips: vec![format!("{GW_TUNNEL_IP}/32")],
            endpoint: Some(gw_endpoint),
            persistent_keepalive: None,
        }),
    );
    let _ = gatelet_tests_hw::ping(&tb.hub_ns, &GW_TUNNEL_IP.to_string(), 1);
    let second = ok(&tb, tb.wait_handshake(Some(first), HANDSHAKE_TIMEOUT));
    assert!(second > first);
    let age = ok(
        &tb,
        wait_until(
            "the agent's handshake age to restart",
            HANDSHAKE_TIMEOUT,
            || {
                let s = tb.agent_status()?;
                Ok::<_, HarnessError>(s.tunnel.handshake_age_s.filter(|age| *age <= 1))
            },
        ),
    );
    assert!(age <= 1);
    ok(&tb, tb.check_traffic_both_ways(ECHO_BYTES));
}

#[test]
fn agent_exits_64_with_one_clear_line_for_a_bad_gateway_env() {
    let binary = product_binary("gatelet-agent").unwrap();
    let dir = TempDir::new("badenv").unwrap();
    let env = dir.path().join("gateway.env");
    std::fs::write(
        &env,
        "GC_TUNNEL_IP=10.8.0.2\n\
         WG_PRIVATE_KEY=yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=\n\
         WG_SERVER_PUBLIC_KEY=HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw=\n\
         WG_ENDPOINT=hub.test\n\
         WG_ADDRESS=10.8.0.2/32\n\
         WG_ALLOWED_IPS=10.8.0.1/32\n",
    )
    .unwrap();
    let mut cmd = std::process::Command::new(&binary);
    cmd.arg("--env")
        .arg(&env)
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .arg("--control-socket")
        .arg(dir.path().join("agent.sock"));
    let mut agent = Process::spawn("gatelet-agent", cmd, &dir.path().join("agent.log")).unwrap();
    let status = agent.wait_exit(Duration::from_secs(10)).unwrap();
    let output = agent.log();
    assert_eq!(
        status.code(),
        Some(64),
        "exit status {status}, output:\n{output}"
    );
    let lines: Vec<&str> = output.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one line, got:\n{output}");
    assert!(
        lines[0].contains("WG_ENDPOINT") && lines[0].contains("gateway.env"),
        "the line should name the file and the key: {}",
        lines[0]
    );
}

#[test]
fn agent_removes_its_tun_device_on_a_clean_exit() {
    let mut tb = agent_testbed();
    ok(&tb, tb.wait_handshake(None, HANDSHAKE_TIMEOUT));
    ok(&tb, tb.gw_ns.ip(&["link", "show", "gatelet0"]));
    let gatelet_tests_hw::Gateway::Agent(agent) = &mut tb.gateway else {
        unreachable!("agent_testbed starts the agent")
    };
    let status = agent.process().terminate();
    assert!(
        status.is_some_and(|s| s.success()),
        "SIGTERM should end the agent cleanly, got {status:?}:\n{}",
        agent.log()
    );
    let left = tb.gw_ns.ip(&["link", "show", "gatelet0"]);
    assert!(
        left.is_err(),
        "gatelet0 is still there after a clean exit: {left:?}"
    );
}

#[test]
fn agent_comes_back_after_a_crash_over_a_leftover_tun_device_and_socket_file() {
    let mut tb = agent_testbed();
    ok(&tb, tb.wait_handshake(None, HANDSHAKE_TIMEOUT));
    let binary = product_binary("gatelet-agent").unwrap();
    let env = gatelet_tests_hw::agent_env(&tb.gw_key, &tb.hub_key, tb.psk.as_deref());
    let gatelet_tests_hw::Gateway::Agent(agent) = &mut tb.gateway else {
        unreachable!("agent_testbed starts the agent")
    };
    let status = agent.process().crash();
    assert!(status.is_some(), "the agent did not die of SIGKILL");
    let socket = agent.socket().to_owned();
    assert!(
        socket.exists(),
        "the crash should leave the control socket file behind"
    );
    // A plain TUN device dies with its last file descriptor; a persistent one (as an agent
    // using a pre-created device leaves behind) stays, with its address and routes gone.
    ok(
        &tb,
        tb.gw_ns
            .ip(&["tuntap", "add", "dev", "gatelet0", "mode", "tun"]),
    );
    let first = ok(&tb, tb.hub_handshake()).expect("handshake before the crash");
    thread::sleep(Duration::from_secs(1));
    let restarted = gatelet_tests_hw::Agent::start(&tb.gw_ns, &binary, &env);
    let restarted = ok(&tb, restarted);
    tb.gateway = gatelet_tests_hw::Gateway::Agent(restarted);
    ok(&tb, tb.wait_handshake(Some(first), HANDSHAKE_TIMEOUT));
    ok(&tb, tb.check_traffic_both_ways(ECHO_BYTES));
}

/// On a fresh machine `/dev/net/tun` is 0600 root:root: the agent, running as the service user
/// without CAP_DAC_OVERRIDE, can only open it once the installer's tmpfiles rule
/// (systemd/gatelet.tmpfiles.conf) made it 0660 root:gatelet. The test creates the user with
/// systemd-sysusers and applies the rule with systemd-tmpfiles to a fresh node, in the agent's
/// private mount namespace (`gatelet_tests_hw::ServiceUser`).
#[test]
fn agent_runs_without_any_capability_on_a_precreated_persistent_tun_device() {
    let mut tb = agent_testbed();
    let gatelet_tests_hw::Gateway::Agent(agent) = &mut tb.gateway else {
        unreachable!("agent_testbed starts the agent")
    };
    agent.process().terminate();
    let user = ok(
        &tb,
        gatelet_tests_hw::ServiceUser::create(&tb.gw_ns.dir().join("installer-root")),
    );
    let (uid, gid) = user.ids();
    // What an installer does once, as root: a persistent device owned by the service user,
    // with its address, MTU and route.
    let (uid, gid) = (uid.to_string(), gid.to_string());
    let setup: [&[&str]; 4] = [
        &[
            "tuntap", "add", "dev", "gatelet0", "mode", "tun", "user", &uid, "group", &gid,
        ],
        &[
            "addr",
            "add",
            &format!("{GW_TUNNEL_IP}/32"),
            "dev",
            "gatelet0",
        ],
        &["link", "set", "gatelet0", "mtu", "1420", "up"],
        &[
            "route",
            "add",
            &format!("{HUB_TUNNEL_IP}/32"),
            "dev",
            "gatelet0",
        ],
    ];
    for args in setup {
        ok(&tb, tb.gw_ns.ip(args));
    }
    let binary = product_binary("gatelet-agent").unwrap();
    let env = gatelet_tests_hw::agent_env(&tb.gw_key, &tb.hub_key, tb.psk.as_deref());
    let unprivileged = gatelet_tests_hw::Agent::start_command(
        &tb.gw_ns,
        &env,
        Some(user.ids()),
        user.command(&tb.gw_ns, &binary),
    );
    tb.gateway = gatelet_tests_hw::Gateway::Agent(ok(&tb, unprivileged));
    let pid = ok(&tb, tb.agent()).pid();
    let proc_status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        proc_status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.split_whitespace().collect::<Vec<_>>())
            .unwrap_or_default()
    };
    assert_eq!(field("Uid:")[0], uid, "{proc_status}");
    assert_eq!(field("Gid:")[0], gid, "{proc_status}");
    assert_eq!(field("CapEff:"), ["0000000000000000"], "{proc_status}");
    ok(&tb, tb.wait_handshake(None, HANDSHAKE_TIMEOUT));
    ok(&tb, tb.check_traffic_both_ways(ECHO_BYTES));
}

/// The agent's `PersistentKeepalive`, in seconds.
const KEEPALIVE: Duration = Duration::from_secs(25);

both_modes!(
    agent_sends_a_keepalive_within_25_seconds_on_an_idle_tunnel,
    keepalive_on_an_idle_tunnel
);
fn keepalive_on_an_idle_tunnel(mode: NetstackMode) {
    let tb = agent_testbed_in(mode);
    ok(&tb, tb.wait_handshake(None, HANDSHAKE_TIMEOUT));
    // Let the handshake's own packets settle, then watch an idle tunnel: only a keepalive
    // (32 bytes on the wire) can make the hub's receive counter move.
    thread::sleep(Duration::from_secs(1));
    let (rx_before, _) = ok(&tb, tb.hub.transfer(&tb.gw_key.public));
    let start = Instant::now();
    ok(
        &tb,
        wait_until(
            "a keepalive from the agent",
            KEEPALIVE + Duration::from_secs(3),
            || {
                let (rx, _) = tb.hub.transfer(&tb.gw_key.public)?;
                Ok::<_, HarnessError>((rx > rx_before).then_some(()))
            },
        ),
    );
    eprintln!("keepalive after {:?} of idleness", start.elapsed());
}

both_modes!(
    agent_keeps_resolving_an_unknown_hub_name_and_connects_once_it_resolves,
    unknown_hub_name_resolves_later
);
fn unknown_hub_name_resolves_later(mode: NetstackMode) {
    let mut tb = agent_testbed_in(mode);
    let gatelet_tests_hw::Gateway::Agent(agent) = &mut tb.gateway else {
        unreachable!("agent_testbed starts the agent")
    };
    agent.process().terminate();
    ok(&tb, tb.gw_ns.set_hosts(&[])); // hub.test does not resolve
    let binary = product_binary("gatelet-agent").unwrap();
    let env = gatelet_tests_hw::agent_env(&tb.gw_key, &tb.hub_key, tb.psk.as_deref());
    let restarted = gatelet_tests_hw::start_agent(&tb.gw_ns, &binary, &env, mode);
    tb.gateway = gatelet_tests_hw::Gateway::Agent(ok(&tb, restarted));
    let error = ok(
        &tb,
        wait_until(
            "the agent to report the resolve failure",
            HANDSHAKE_TIMEOUT,
            || {
                let s = tb.agent_status()?;
                Ok::<_, HarnessError>(s.tunnel.last_error)
            },
        ),
    );
    assert!(
        error.contains("hub.test"),
        "last_error should name the endpoint: {error}"
    );
    let status = ok(&tb, tb.agent_status());
    assert_eq!(status.tunnel.handshake_age_s, None, "{status:?}");
    // The name appears (DNS fixed): the agent must pick it up by itself, without a restart.
    ok(
        &tb,
        tb.gw_ns.set_hosts(&[(
            gatelet_tests_hw::HUB_LAN_IP.into(),
            gatelet_tests_hw::HUB_NAME,
        )]),
    );
    ok(&tb, tb.wait_handshake(None, HANDSHAKE_TIMEOUT));
    ok(&tb, tb.check_traffic_both_ways(ECHO_BYTES));
}

/// WireGuard's REKEY_AFTER_TIME: the initiator starts a new handshake after this, when sending.
const REKEY_AFTER_TIME: Duration = Duration::from_secs(120);
/// Pings sent at 0.5 s intervals across the timed rekey (about 140 s).
const REKEY_PINGS: u32 = 280;

both_modes!(
    agent_rekeys_after_two_minutes_under_traffic_without_losing_packets,
    rekey_under_traffic
);
/// Kernel mode: the gateway pings the hub. Userspace mode: nothing in the gateway's namespace
/// can send into the tunnel, so the hub pings the agent's stack, whose replies are the agent's
/// traffic (the agent initiated the session, so it is the one that rekeys).
fn rekey_under_traffic(mode: NetstackMode) {
    let tb = agent_testbed_in(mode);
    let first = ok(&tb, tb.wait_handshake(None, HANDSHAKE_TIMEOUT));
    let (ns, target) = if mode.has_tun() {
        (&tb.gw_ns, HUB_TUNNEL_IP)
    } else {
        (&tb.hub_ns, GW_TUNNEL_IP)
    };
    let mut cmd = ns.command("ping");
    cmd.args(["-n", "-i", "0.5", "-W", "2", "-c", &REKEY_PINGS.to_string()])
        .arg(target.to_string());
    let mut pinger = ok(&tb, ns.spawn("ping-across-rekey", cmd));
    let second = ok(
        &tb,
        tb.wait_handshake(Some(first), REKEY_AFTER_TIME + Duration::from_secs(30)),
    );
    assert!(
        second >= first + REKEY_AFTER_TIME.as_secs() - 5,
        "{first} -> {second}"
    );
    let status = ok(
        &tb,
        pinger.wait_exit(Duration::from_secs(REKEY_PINGS as u64)),
    );
    let log = pinger.log();
    let summary = log
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .unwrap_or_else(|| panic!("no ping summary ({status}):\n{log}"));
    let numbers: Vec<u32> = summary
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse().ok())
        .collect();
    let (sent, received) = (numbers[0], numbers[1]);
    assert!(
        sent == REKEY_PINGS && received + 1 >= sent,
        "at most one ping may be lost across the rekey: {summary}"
    );
}

/// A thread per direction (`GATELET_DATAPATH_THREADS=2`, what `auto` picks on 3 or more
/// cores): the encrypting thread runs, and ping and a 256 KiB TCP echo go both ways.
#[test]
fn agent_with_a_thread_per_direction_carries_ping_and_tcp_echo_both_ways() {
    require_root().unwrap();
    let binary = product_binary("gatelet-agent").unwrap();
    let options = TestbedOptions {
        agent_env_extra: vec![("GATELET_DATAPATH_THREADS".into(), "2".into())],
        ..TestbedOptions::default()
    };
    let tb = Testbed::start_with(&GatewayRole::Agent(binary), &options).unwrap();
    ok(&tb, tb.wait_handshake(None, HANDSHAKE_TIMEOUT));
    let pid = ok(&tb, tb.agent()).pid();
    let threads: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|c| c.trim().to_owned())
        .collect();
    assert!(
        threads.iter().any(|t| t == "gatelet-encrypt"),
        "no encrypting thread among {threads:?}"
    );
    let before = ok(&tb, tb.agent_status()).tunnel;
    ok(&tb, tb.check_traffic_both_ways(ECHO_BYTES));
    let after = ok(&tb, tb.agent_status()).tunnel;
    assert!(
        after.rx_bytes >= before.rx_bytes + ECHO_BYTES as u64
            && after.tx_bytes >= before.tx_bytes + ECHO_BYTES as u64,
        "{before:?} -> {after:?}"
    );
}
