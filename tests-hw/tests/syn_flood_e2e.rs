//! A SYN flood from the tunnel, in both netstack modes (issue 9: anything reachable from the
//! tunnel gets bounded memory before authentication; in userspace mode the agent's own stack
//! holds the half-open connections, in kernel mode the kernel does). Needs root, `python3` and
//! `nft`.
//!
//! The hub sends [`SYNS`] SYNs from random source ports to an L4 route (raw IPv4 packets into
//! its WireGuard interface, from a small Python script) and drops its own kernel's RSTs to the
//! answers (nftables), so every SYN stays half-open at the gateway. Then: the agent's RSS grew by
//! at most [`MAX_RSS_GROWTH_KIB`], its control socket answers, and the route carries a real
//! connection again within [`RECOVERY_DEADLINE`] of the flood's end.

use std::time::{Duration, Instant};

use gatelet_tests_hw::{
    both_modes, memory_kib, product_binary, require_root, tcp_echo, wait_until, EchoServer,
    GatewayRole, HarnessError, NetstackMode, Result, Testbed, TestbedOptions, ECHO_ROUTE_PORT,
    GW_LAN_IP, GW_TUNNEL_IP, HUB_TUNNEL_IP,
};

/// SYNs in the flood (more than the userspace stack's whole socket budget).
const SYNS: u32 = 5000;
/// The agent's RSS may grow by this much under the flood.
const MAX_RSS_GROWTH_KIB: u64 = 8 * 1024;
/// After the flood a real connection must get through within this.
const RECOVERY_DEADLINE: Duration = Duration::from_secs(60);
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(20);

/// Sends `count` SYNs from `src` (random ports) to `dst:port` through the routing table (the
/// hub's WireGuard interface), as raw IPv4 with checksums.
const SYN_SCRIPT: &str = r#"
import random, socket, struct, sys
src, dst, port, count = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
def csum(b):
    if len(b) % 2: b += b"\0"
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    while s >> 16: s = (s & 0xffff) + (s >> 16)
    return ~s & 0xffff
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
sa, da = socket.inet_aton(src), socket.inet_aton(dst)
for i in range(count):
    sport = random.randint(20000, 65000)
    tcp = struct.pack("!HHIIBBHHH", sport, port, random.getrandbits(32), 0, 5 << 4, 0x02, 64240, 0, 0)
    tcp = tcp[:16] + struct.pack("!H", csum(sa + da + struct.pack("!BBH", 0, 6, len(tcp)) + tcp)) + tcp[18:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), i & 0xffff, 0, 64, 6, 0, sa, da)
    ip = ip[:10] + struct.pack("!H", csum(ip)) + ip[12:]
    s.sendto(ip + tcp, (dst, 0))
"#;

both_modes!(a_syn_flood_from_the_tunnel_is_bounded, syn_flood -> Result<()>);

fn syn_flood(mode: NetstackMode) -> Result<()> {
    require_root()?;
    let binary = product_binary("gatelet-agent")?;
    let options = TestbedOptions {
        mode,
        ..TestbedOptions::default()
    };
    let tb = Testbed::start_with(&GatewayRole::Agent(binary), &options)?;
    tb.wait_handshake(None, HANDSHAKE_TIMEOUT)?;
    let server = EchoServer::start(&tb.gw_ns, (GW_LAN_IP, 0).into())?;
    tb.apply_l4_route(ECHO_ROUTE_PORT, server.addr())?;
    let route = (GW_TUNNEL_IP, ECHO_ROUTE_PORT).into();
    assert_eq!(tcp_echo(&tb.hub_ns, route, b"before")?, b"before");
    let pid = tb.agent()?.pid();
    let (_, rss_before) = memory_kib(pid)?;

    // The hub's kernel would answer each SYN-ACK with a RST and free the gateway's socket.
    tb.hub_ns
        .exec(&["nft", "add", "table", "inet", "hwt_flood"])?;
    tb.hub_ns.exec(&[
        "nft",
        "add chain inet hwt_flood out { type filter hook output priority 0 ; }",
    ])?;
    tb.hub_ns.exec(&[
        "nft",
        "add",
        "rule",
        "inet",
        "hwt_flood",
        "out",
        "tcp",
        "flags",
        "rst",
        "drop",
    ])?;
    let started = Instant::now();
    tb.hub_ns.exec(&[
        "python3",
        "-c",
        SYN_SCRIPT,
        &HUB_TUNNEL_IP.to_string(),
        &GW_TUNNEL_IP.to_string(),
        &ECHO_ROUTE_PORT.to_string(),
        &SYNS.to_string(),
    ])?;
    let sent_in = started.elapsed();
    // Let the gateway take them all in (and answer, into the hub's RST-dropping filter).
    std::thread::sleep(Duration::from_secs(2));
    let status = tb.agent_status()?;
    let (_, rss_during) = memory_kib(pid)?;
    eprintln!(
        "{mode}: {SYNS} SYNs sent in {sent_in:?}; agent RSS {rss_before} -> {rss_during} KiB, \
         tunnel rx_packets {}",
        status.tunnel.rx_packets
    );
    assert!(
        rss_during <= rss_before + MAX_RSS_GROWTH_KIB,
        "{mode}: the agent's RSS grew from {rss_before} to {rss_during} KiB under {SYNS} SYNs"
    );
    // The flood is over: a real connection gets through again (half-open ones expire or are
    // evicted).
    let flood_end = Instant::now();
    wait_until(
        "a real connection through the flooded route",
        RECOVERY_DEADLINE,
        || {
            Ok::<_, HarnessError>(
                tcp_echo(&tb.hub_ns, route, b"after")
                    .ok()
                    .filter(|b| b == b"after"),
            )
        },
    )?;
    eprintln!(
        "{mode}: the route carried a connection again {:?} after the flood",
        flood_end.elapsed()
    );
    tb.agent_status()?;
    Ok(())
}
