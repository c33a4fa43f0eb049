//! Wake-on-LAN end to end on real namespaces. Needs root.
//!
//! - The magic packets as the LAN sees them: sockets bound to the LAN's directed broadcast and
//!   to 255.255.255.255 in the LAN namespace check bytes, destinations, port, source and the
//!   three rounds about 100 ms apart; only the allowed interface (`GATELET_WOL_INTERFACES=v-lan`,
//!   a veth, which the default selection would exclude) gets them.
//! - "Sleeping hosts": a helper thread in the LAN namespace listens on UDP port 9; only when a
//!   valid magic packet for its MAC arrives does its IP address appear on the LAN (before that,
//!   the gateway's ARP gets no answer: the host is silent, not refusing) and its HTTP service
//!   start. Woken through the tunnel from the hub by an HTTP request, by an L4 TCP connection and
//!   by `POST /api/wol` (management API, companion, agent), plus the 403 and 400 answers.
//!
//! Both tests run in both netstack modes (`<case>::kernel`, `<case>::userspace`: the agent as
//! uid 65534 with no capability and no TUN device).

use std::fs::File;
use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use gatelet_agent_api::control::{Request, Response, WakeRequest};
use gatelet_tests_hw::{
    both_modes, control_request, document_hash, fixture_port, fixture_value, gc_lines_for,
    http_request, product_binary, require_root, udp_socket, wait_until, Deployment, GatewayRole,
    HarnessError, Lan, Netns, NetstackMode, Result, Testbed, TestbedOptions, VethPair,
    GW_LAN_SIDE_IP, GW_TUNNEL_IP, HANDSHAKE_TIMEOUT, HUB_TUNNEL_IP, LAN_SUBNET_PREFIX, NETNS_RUN,
};

/// The gateway's end of the LAN veth (`VethPair` names it after the other namespace's role).
const GW_LAN_IFACE: &str = "v-lan";
/// The LAN's directed broadcast (192.168.50.0/24).
const LAN_BROADCAST: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 255);
/// UDP port of magic packets.
const WOL_PORT: u16 = 9;
/// Port of a sleeping host's service.
const SLEEPER_PORT: u16 = 8000;
/// What a woken host's service answers.
const AWAKE_BODY: &str = "awake\n";
/// How long a capture waits for a packet that should come.
const CAPTURE_TIMEOUT: Duration = Duration::from_secs(3);
/// A request that waits for a wake: connect failure (about 3 s of ARP), up to 30 s of holding.
const WAKE_IO_TIMEOUT: Duration = Duration::from_secs(45);
/// Poll interval of the helper threads' non-blocking sockets.
const HELPER_POLL: Duration = Duration::from_millis(20);

const MAC_HTTP: [u8; 6] = [0x02, 0x00, 0x5e, 0x10, 0x00, 0x20];
const MAC_L4: [u8; 6] = [0x02, 0x00, 0x5e, 0x10, 0x00, 0x21];
const MAC_API: [u8; 6] = [0x02, 0x00, 0x5e, 0x10, 0x00, 0x22];
const IP_HTTP: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 20);
const IP_L4: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 21);
const IP_API: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 22);
const MAC_SLOW: [u8; 6] = [0x02, 0x00, 0x5e, 0x10, 0x00, 0x23];
const IP_SLOW: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 23);
const MAC_UDP: [u8; 6] = [0x02, 0x00, 0x5e, 0x10, 0x00, 0x24];
const IP_UDP: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 24);
const L4_UDP_PORT: u16 = 7103;
const WOL_DOMAIN: &str = "nas.wol.test";
/// A host that boots longer than a browser is held ([`BROWSER_HOLD`]).
const SLOW_DOMAIN: &str = "slow.wol.test";
/// Boot time of the sleeping hosts after their magic packet.
const BOOT: Duration = Duration::from_secs(2);
/// Boot time of the slow host.
const SLOW_BOOT: Duration = Duration::from_secs(14);
/// How long the agent holds a browser before the "waking up" page (agent's `BROWSER_WAIT`).
const BROWSER_HOLD: Duration = Duration::from_secs(10);
const L4_PORT: u16 = 7101;
const L4_API_PORT: u16 = 7102;

fn mac_text(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn magic(mac: [u8; 6]) -> Vec<u8> {
    let mut p = vec![0xFF; 6];
    for _ in 0..16 {
        p.extend_from_slice(&mac);
    }
    p
}

fn io_err(what: String) -> impl FnOnce(std::io::Error) -> HarnessError {
    move |e| HarnessError::io(what, e)
}

/// A UDP socket with SO_REUSEADDR and SO_BROADCAST bound to `addr` (a broadcast address
/// receives only datagrams sent to it), in the calling thread's namespace.
fn broadcast_listener(addr: SocketAddrV4Like) -> std::io::Result<UdpSocket> {
    // SAFETY: plain socket(2); owned right away.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is fresh and ours.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    for opt in [libc::SO_REUSEADDR, libc::SO_BROADCAST] {
        let one: libc::c_int = 1;
        // SAFETY: a c_int that lives for the call, with its size.
        let r = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                opt,
                (&one as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if r != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    // SAFETY: all-zero is a valid sockaddr_in; fields set below.
    let mut sin: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    sin.sin_family = libc::AF_INET as libc::sa_family_t;
    sin.sin_port = addr.1.to_be();
    sin.sin_addr.s_addr = u32::from(addr.0).to_be();
    // SAFETY: binds to a sockaddr_in that lives for the call, with its size.
    let r = unsafe {
        libc::bind(
            owned.as_raw_fd(),
            (&sin as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(UdpSocket::from(owned))
}

type SocketAddrV4Like = (Ipv4Addr, u16);

/// Joins the calling thread to namespace `name`.
fn join_netns(name: &str) -> std::io::Result<()> {
    let f = File::open(Path::new(NETNS_RUN).join(name))?;
    // SAFETY: setns(2) on a valid namespace fd changes only this thread's network namespace.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// A host in the LAN namespace that sleeps until a magic packet for its MAC arrives: then its
/// address is added to the LAN interface and its HTTP service starts.
struct Sleeper {
    stop: Arc<AtomicBool>,
    woke_at: Arc<Mutex<Option<Instant>>>,
    thread: Option<JoinHandle<()>>,
}

impl Sleeper {
    /// Starts the host; after its magic packet it takes `boot` to come up with `service`.
    fn start(
        ns: &Netns,
        ifname: &str,
        ip: Ipv4Addr,
        mac: [u8; 6],
        boot: Duration,
        service: Service,
    ) -> Result<Sleeper> {
        let stop = Arc::new(AtomicBool::new(false));
        let woke_at = Arc::new(Mutex::new(None));
        let (ready_tx, ready_rx) = mpsc::channel();
        let (ns_name, ifname) = (ns.name().to_owned(), ifname.to_owned());
        let (flag, woke) = (stop.clone(), woke_at.clone());
        let thread = thread::spawn(move || {
            let setup = join_netns(&ns_name).and_then(|()| {
                let s = broadcast_listener((Ipv4Addr::UNSPECIFIED, WOL_PORT))?;
                s.set_read_timeout(Some(HELPER_POLL))?;
                Ok(s)
            });
            let udp = match setup {
                Ok(s) => {
                    let _ = ready_tx.send(Ok(()));
                    s
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            let mut buf = [0u8; 512];
            while !flag.load(Ordering::Relaxed) {
                let Ok((n, _)) = udp.recv_from(&mut buf) else {
                    continue;
                };
                if buf[..n] == magic(mac)[..] {
                    *woke.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
                    break;
                }
            }
            let booted = Instant::now() + boot;
            while Instant::now() < booted && !flag.load(Ordering::Relaxed) {
                thread::sleep(HELPER_POLL);
            }
            if flag.load(Ordering::Relaxed) {
                return;
            }
            let cidr = format!("{ip}/{LAN_SUBNET_PREFIX}");
            let _ = Command::new("ip")
                .args(["-n", &ns_name, "addr", "add", &cidr, "dev", &ifname])
                .status();
            if service == Service::UdpEcho {
                udp_echo(ip, &flag);
                return;
            }
            let Ok(listener) = TcpListener::bind((ip, SLEEPER_PORT)) else {
                return;
            };
            if listener.set_nonblocking(true).is_err() {
                return;
            }
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => serve_awake(conn),
                    Err(_) => thread::sleep(HELPER_POLL),
                }
            }
        });
        match ready_rx.recv_timeout(CAPTURE_TIMEOUT) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(HarnessError::io(format!("sleeper {ip}: UDP port 9"), e)),
            Err(_) => {
                return Err(HarnessError::Parse {
                    what: format!("sleeper {ip}"),
                    detail: "did not start".into(),
                })
            }
        }
        Ok(Sleeper {
            stop,
            woke_at,
            thread: Some(thread),
        })
    }

    fn woke_at(&self) -> Option<Instant> {
        *self.woke_at.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for Sleeper {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What a woken host serves on [`SLEEPER_PORT`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Service {
    /// HTTP (any request gets 200 [`AWAKE_BODY`]); also used for L4 TCP.
    Http,
    /// A UDP echo only: TCP connections to the host are refused (reset).
    UdpEcho,
}

/// Echoes UDP datagrams on `ip`:[`SLEEPER_PORT`] until `stop`.
fn udp_echo(ip: Ipv4Addr, stop: &AtomicBool) {
    let Ok(sock) = UdpSocket::bind((ip, SLEEPER_PORT)) else {
        return;
    };
    if sock.set_read_timeout(Some(HELPER_POLL)).is_err() {
        return;
    }
    let mut buf = [0u8; 2048];
    while !stop.load(Ordering::Relaxed) {
        if let Ok((n, from)) = sock.recv_from(&mut buf) {
            let _ = sock.send_to(&buf[..n], from);
        }
    }
}

/// Reads a request head (or anything, for L4), answers 200 with [`AWAKE_BODY`] and closes.
fn serve_awake(mut conn: TcpStream) {
    let _ = conn.set_nonblocking(false);
    let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 64 * 1024 {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let _ = conn.write_all(
        format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{AWAKE_BODY}",
            AWAKE_BODY.len()
        )
        .as_bytes(),
    );
}

/// Calls `f` until it gives `Some`, for at most `timeout`.
fn wait_until_ok<T>(timeout: Duration, mut f: impl FnMut() -> Result<Option<T>>) -> Result<T> {
    let end = Instant::now() + timeout;
    loop {
        if let Some(v) = f()? {
            return Ok(v);
        }
        if Instant::now() >= end {
            return Err(HarnessError::Parse {
                what: "wait".into(),
                detail: format!("nothing within {timeout:?}"),
            });
        }
    }
}

/// Agent options: the fixture's `GC_*` lines and magic packets on the LAN veth only.
/// In userspace mode the agent runs as uid 65534 with no capability (so no `SO_BINDTODEVICE`:
/// it sends from a socket bound to the interface's address); the fake server is on the hub's
/// tunnel address in both modes (`gatecontrol_addr`).
fn wol_options(mode: NetstackMode) -> Result<TestbedOptions> {
    let mut extra = gc_lines_for(mode)?;
    extra.push(("GATELET_WOL_INTERFACES".into(), GW_LAN_IFACE.into()));
    Ok(TestbedOptions {
        agent_env_extra: extra,
        mode,
        ..TestbedOptions::default()
    })
}

both_modes!(
    magic_packets_reach_the_lan_on_both_broadcasts_three_times_from_the_allowed_interface_only,
    magic_packets_on_the_allowed_interface -> Result<()>
);
fn magic_packets_on_the_allowed_interface(mode: NetstackMode) -> Result<()> {
    require_root()?;
    let agent_binary = product_binary("gatelet-agent")?;
    let tb = Testbed::start_with(&GatewayRole::Agent(agent_binary), &wol_options(mode)?)?;
    let lan = Netns::new("lan")?;
    let _veth = VethPair::new(
        &tb.gw_ns,
        &format!("{GW_LAN_SIDE_IP}/{LAN_SUBNET_PREFIX}"),
        &lan,
        &format!("192.168.50.10/{LAN_SUBNET_PREFIX}"),
    )?;
    let listeners = lan.enter(|| {
        [LAN_BROADCAST, Ipv4Addr::BROADCAST].map(|a| broadcast_listener((a, WOL_PORT)))
    })?;
    let mut socks = Vec::new();
    for (s, dest) in listeners
        .into_iter()
        .zip([LAN_BROADCAST, Ipv4Addr::BROADCAST])
    {
        let s = s.map_err(io_err(format!("bind {dest}:{WOL_PORT} in the LAN")))?;
        s.set_read_timeout(Some(CAPTURE_TIMEOUT))
            .map_err(io_err("set a read timeout".into()))?;
        socks.push((dest, s));
    }
    // The hub's side of the WAN must get nothing: listen there too.
    let wan = tb
        .hub_ns
        .enter(|| broadcast_listener((Ipv4Addr::UNSPECIFIED, WOL_PORT)))?
        .map_err(io_err("bind :9 in the hub namespace".into()))?;
    wan.set_nonblocking(true)
        .map_err(io_err("set non-blocking".into()))?;

    // Readers start before the wake, so the arrival times are the packets' own.
    let readers: Vec<_> = socks
        .into_iter()
        .map(|(dest, s)| (dest, thread::spawn(move || capture(&s))))
        .collect();
    let mac = [0x02, 0x00, 0x5e, 0xab, 0xcd, 0xef];
    let resp = control_request(
        tb.agent()?.socket(),
        &Request::Wake(WakeRequest {
            mac: mac_text(mac),
            lan_host: None,
            port: None,
            timeout_ms: 5_000,
            trigger: "api".into(),
        }),
    )?;
    let Response::Woke(w) = resp else {
        panic!("expected Woke, got {resp:?}");
    };
    assert!(w.success, "{w:?}");
    let dests: Vec<(&str, &str, bool)> = w
        .sent_on
        .iter()
        .map(|s| (s.iface.as_str(), s.broadcast.as_str(), s.ok))
        .collect();
    assert_eq!(
        dests,
        [
            (GW_LAN_IFACE, "192.168.50.255", true),
            (GW_LAN_IFACE, "255.255.255.255", true)
        ],
        "only the allowed LAN veth, both destinations"
    );

    for (dest, reader) in readers {
        let got = reader.join().unwrap_or_default();
        assert_eq!(got.len(), 3, "exactly three packets to {dest}");
        for (i, (_, bytes, from)) in got.iter().enumerate() {
            assert_eq!(bytes[..], magic(mac)[..], "bytes of round {i} to {dest}");
            assert_eq!(
                *from,
                SocketAddr::from((GW_LAN_SIDE_IP, from.port())),
                "sent from the gateway's LAN address"
            );
        }
        for pair in got.windows(2) {
            let gap = pair[1].0 - pair[0].0;
            assert!(
                (Duration::from_millis(50)..Duration::from_millis(500)).contains(&gap),
                "rounds about 100 ms apart, got {gap:?} ({dest})"
            );
        }
        println!(
            "{dest}:{WOL_PORT}: 3 packets, {} ms from first to last",
            (got[2].0 - got[0].0).as_millis()
        );
    }
    let mut buf = [0u8; 512];
    assert!(wan.recv_from(&mut buf).is_err(), "nothing on the WAN veth");
    let status = tb.agent_status()?;
    assert_eq!(status.wakes.len(), 1, "{:?}", status.wakes);
    assert_eq!(status.wakes[0].mac, mac_text(mac));
    Ok(())
}

/// Datagrams arriving on `s` (arrival time, bytes, source) until none comes for
/// [`CAPTURE_TIMEOUT`] (the first) or 500 ms (the next ones).
fn capture(s: &UdpSocket) -> Vec<(Instant, Vec<u8>, SocketAddr)> {
    let mut out = Vec::new();
    let mut buf = [0u8; 512];
    while out.len() < 8 {
        let wait = if out.is_empty() {
            CAPTURE_TIMEOUT
        } else {
            Duration::from_millis(500)
        };
        if s.set_read_timeout(Some(wait)).is_err() {
            break;
        }
        match s.recv_from(&mut buf) {
            Ok((n, from)) => out.push((Instant::now(), buf[..n].to_vec(), from)),
            Err(_) => break,
        }
    }
    out
}

/// The config document: an HTTP route and two L4 routes, each with Wake-on-LAN.
fn wol_document() -> serde_json::Value {
    let route = |id: u64, port: u16, ip: Ipv4Addr, mac: [u8; 6]| {
        serde_json::json!({"id": id, "listen_port": port, "target_lan_host": ip.to_string(),
            "target_lan_port": SLEEPER_PORT, "wol_enabled": true, "wol_mac": mac_text(mac)})
    };
    let http = |id: u64, domain: &str, ip: Ipv4Addr, mac: [u8; 6]| {
        serde_json::json!({"id": id, "domain": domain, "target_kind": "gateway",
            "target_lan_host": ip.to_string(), "target_lan_port": SLEEPER_PORT,
            "protocol": "http", "wol_enabled": true, "wol_mac": mac_text(mac)})
    };
    serde_json::json!({
        "config_hash_version": 2,
        "peer_id": 1,
        "routes": [http(1, WOL_DOMAIN, IP_HTTP, MAC_HTTP), http(4, SLOW_DOMAIN, IP_SLOW, MAC_SLOW)],
        "l4_routes": [
            route(2, L4_PORT, IP_L4, MAC_L4),
            route(3, L4_API_PORT, IP_API, MAC_API),
            route(5, L4_UDP_PORT, IP_UDP, MAC_UDP),
        ],
        "egress_routes": [],
        "config_hash": format!("sha256:{:032x}{:032x}", std::process::id(), 0x3011u32),
    })
}

both_modes!(
    sleeping_hosts_are_woken_by_http_by_l4_and_by_the_management_api,
    sleeping_hosts_woken -> Result<()>
);
fn sleeping_hosts_woken(mode: NetstackMode) -> Result<()> {
    require_root()?;
    let agent_binary = product_binary("gatelet-agent")?;
    let companion_binary = product_binary("gatelet-companion")?;
    let testbed = Testbed::start_with(
        &GatewayRole::Agent(agent_binary.clone()),
        &wol_options(mode)?,
    )?;
    let lan = Lan::start(&testbed.gw_ns)?;
    testbed.wait_handshake(None, HANDSHAKE_TIMEOUT)?;
    let ifname = lan.veth.ifname_in(&lan.ns).to_owned();
    let sleepers = [
        Sleeper::start(&lan.ns, &ifname, IP_HTTP, MAC_HTTP, BOOT, Service::Http)?,
        Sleeper::start(&lan.ns, &ifname, IP_L4, MAC_L4, BOOT, Service::Http)?,
        Sleeper::start(&lan.ns, &ifname, IP_API, MAC_API, BOOT, Service::Http)?,
        Sleeper::start(
            &lan.ns,
            &ifname,
            IP_SLOW,
            MAC_SLOW,
            SLOW_BOOT,
            Service::Http,
        )?,
        Sleeper::start(&lan.ns, &ifname, IP_UDP, MAC_UDP, BOOT, Service::UdpEcho)?,
    ];
    let mut d = Deployment {
        companion: None,
        gatecontrol: None,
        lan,
        testbed,
        companion_binary,
        agent_binary,
    };
    let doc = wol_document();
    d.start_gatecontrol(&doc)?;
    d.start_companion()?;
    d.wait_applied(&document_hash(&doc))?;
    let hub = &d.testbed.hub_ns;
    let proxy = Deployment::tunnel_addr(fixture_port("GC_PROXY_PORT")?);
    let report = |what: &str, e: &dyn std::fmt::Display| format!("{what}: {e}\n{}", d.logs());

    // 1. HTTP: the request is held while the host wakes and then answered by it.
    let t = Instant::now();
    let r = http_request(
        hub,
        proxy,
        "GET",
        "/",
        &[("Host", WOL_DOMAIN)],
        None,
        WAKE_IO_TIMEOUT,
    )
    .unwrap_or_else(|e| panic!("{}", report("HTTP through a wake", &e)));
    let http_total = t.elapsed();
    assert_eq!(r.status, 200, "{}\n{}", r.head, d.logs());
    assert_eq!(r.body, AWAKE_BODY);
    let woke = sleepers[0]
        .woke_at()
        .expect("the HTTP host got its magic packet");
    println!(
        "HTTP: 200 after {} ms (magic packet after {} ms)",
        http_total.as_millis(),
        (woke - t).as_millis()
    );

    // 2. L4 TCP: the connection is held, then relayed to the woken host.
    let t = Instant::now();
    let mut conn =
        gatelet_tests_hw::connect(hub, Deployment::tunnel_addr(L4_PORT), WAKE_IO_TIMEOUT)?;
    conn.write_all(b"GET / HTTP/1.1\r\nHost: l4\r\n\r\n")
        .map_err(io_err("write through L4".into()))?;
    let mut out = String::new();
    conn.read_to_string(&mut out)
        .map_err(|e| HarnessError::Parse {
            what: "L4 through a wake".into(),
            detail: report("read", &e),
        })?;
    let l4_total = t.elapsed();
    assert!(out.ends_with(AWAKE_BODY), "{out:?}\n{}", d.logs());
    assert!(sleepers[1].woke_at().is_some());
    println!("L4: answer after {} ms", l4_total.as_millis());

    // 2b. L4 UDP: the first datagrams are held while the host wakes, then all delivered.
    let t = Instant::now();
    let udp = udp_socket(
        hub,
        SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
        WAKE_IO_TIMEOUT,
    )?;
    let to = Deployment::tunnel_addr(L4_UDP_PORT);
    for i in 0..3 {
        udp.send_to(format!("held-{i}").as_bytes(), to)
            .map_err(io_err(format!("send UDP to {to}")))?;
    }
    let mut echoes = Vec::new();
    let mut buf = [0u8; 64];
    for _ in 0..3 {
        let (n, _) = udp.recv_from(&mut buf).map_err(|e| HarnessError::Parse {
            what: "UDP through a wake".into(),
            detail: report("no echo", &e),
        })?;
        echoes.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    assert_eq!(echoes, ["held-0", "held-1", "held-2"], "held in order");
    println!(
        "L4 UDP: 3 held datagrams echoed after {} ms",
        t.elapsed().as_millis()
    );

    // 3. /api/wol from the hub through the management API relay and the companion.
    let api = SocketAddr::from((GW_TUNNEL_IP, fixture_port("GC_API_PORT")?));
    let token = fixture_value("GC_GATEWAY_TOKEN")?;
    let body = serde_json::json!({"mac": mac_text(MAC_API).to_uppercase().replace(':', "-"),
        "lan_host": IP_API.to_string(), "timeout_ms": 60_000})
    .to_string();
    let t = Instant::now();
    let r = http_request(
        hub,
        api,
        "POST",
        "/api/wol",
        &[("X-Gateway-Token", &token)],
        Some(&body),
        Duration::from_secs(70),
    )?;
    assert_eq!(r.status, 200, "{} {}\n{}", r.head, r.body, d.logs());
    let v: serde_json::Value = serde_json::from_str(&r.body).map_err(|e| HarnessError::Parse {
        what: "/api/wol answer".into(),
        detail: format!("{e}: {}", r.body),
    })?;
    assert_eq!(v["success"], true, "{v}");
    let elapsed = v["elapsed_ms"].as_u64().unwrap_or(0);
    assert!(
        elapsed >= BOOT.as_millis() as u64 && elapsed <= t.elapsed().as_millis() as u64,
        "elapsed_ms covers the host's boot: {v}"
    );
    assert_eq!(v["sent_on"][0]["iface"], GW_LAN_IFACE, "{v}");
    assert!(sleepers[2].woke_at().is_some());
    println!(
        "/api/wol: success after elapsed_ms={elapsed} (request {} ms)",
        t.elapsed().as_millis()
    );

    // 4. Refusals.
    let post = |mac: &str| {
        let body = serde_json::json!({"mac": mac, "timeout_ms": 1000}).to_string();
        http_request(
            hub,
            api,
            "POST",
            "/api/wol",
            &[("X-Gateway-Token", &token)],
            Some(&body),
            Duration::from_secs(10),
        )
    };
    let r = post("02:00:5e:99:99:99")?;
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.body.contains("mac_not_whitelisted"), "{}", r.body);
    let r = post("02:00:5e:99:99")?;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("invalid_mac"), "{}", r.body);
    // A whitelisted MAC, but a probe host off the LAN (the hub) or a timeout that is not a
    // whole number of milliseconds: 400, and nothing reaches the agent (the wakes checked
    // below stay five).
    let api_mac = mac_text(MAC_API);
    let post_body = |body: serde_json::Value| {
        http_request(
            hub,
            api,
            "POST",
            "/api/wol",
            &[("X-Gateway-Token", &token)],
            Some(&body.to_string()),
            Duration::from_secs(10),
        )
    };
    let r = post_body(serde_json::json!({"mac": api_mac, "lan_host": HUB_TUNNEL_IP.to_string()}))?;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("lan_host_out_of_lan_scope"), "{}", r.body);
    assert!(
        r.body.contains("192.168.50.0/24"),
        "names the LAN: {}",
        r.body
    );
    for timeout in [
        serde_json::json!(-5),
        serde_json::json!(1e30),
        serde_json::json!("x"),
    ] {
        let r = post_body(serde_json::json!({"mac": api_mac, "timeout_ms": timeout}))?;
        assert_eq!(r.status, 400, "{timeout}: {}", r.body);
        assert!(r.body.contains("invalid_timeout_ms"), "{}", r.body);
    }

    // 5. A browser waiting for a slow host gets the self-reloading page, then the host.
    let browser = [("Host", SLOW_DOMAIN), ("Accept", "text/html,*/*")];
    let t = Instant::now();
    let r = http_request(hub, proxy, "GET", "/", &browser, None, WAKE_IO_TIMEOUT)?;
    let waited = t.elapsed();
    assert_eq!(
        r.status,
        503,
        "{}
{}",
        r.head,
        d.logs()
    );
    assert!(r.body.contains("http-equiv=\"refresh\""), "{}", r.body);
    assert!(waited >= BROWSER_HOLD, "held {waited:?} first");
    println!("browser: waking page after {} ms", waited.as_millis());
    let page = wait_until_ok(Duration::from_secs(30), || {
        thread::sleep(Duration::from_secs(5)); // the page's meta refresh
        http_request(hub, proxy, "GET", "/", &browser, None, WAKE_IO_TIMEOUT)
            .map(|r| (r.status == 200).then_some(r))
    })?;
    assert_eq!(page.body, AWAKE_BODY);
    println!("browser: 200 after {} ms", t.elapsed().as_millis());

    // Every wake is in the agent's status, with its trigger.
    let status = d.agent_status()?;
    let mut triggers: Vec<&str> = status.wakes.iter().map(|w| w.trigger.as_str()).collect();
    triggers.sort_unstable();
    assert_eq!(
        triggers,
        ["api", "http", "http", "l4", "l4"],
        "{:?}",
        status.wakes
    );
    assert!(status.wakes.iter().all(|w| w.success), "{:?}", status.wakes);

    // ... and recorded once each as a wake event by the companion.
    let companion = d.companion.as_ref().ok_or_else(|| HarnessError::Parse {
        what: "companion".into(),
        detail: "not running".into(),
    })?;
    let wake_events = |v: &serde_json::Value| -> Vec<String> {
        v["events"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter(|e| e["kind"] == "wake")
                    .map(|e| e["detail"].as_str().unwrap_or_default().to_owned())
                    .collect()
            })
            .unwrap_or_default()
    };
    let events = wait_until(
        "the companion to record five wake events",
        Duration::from_secs(15),
        || {
            let v = companion.status_json(&d.testbed.gw_ns)?;
            let e = wake_events(&v);
            Ok::<_, HarnessError>((e.len() >= 5).then_some(e))
        },
    )?;
    assert_eq!(events.len(), 5, "{events:?}");
    for mac in [MAC_HTTP, MAC_L4, MAC_API, MAC_SLOW, MAC_UDP] {
        assert!(
            events
                .iter()
                .any(|e| e.contains(&mac_text(mac)) && e.contains("up after")),
            "{events:?}"
        );
    }
    println!("companion events: {events:?}");
    drop(sleepers);
    Ok(())
}
