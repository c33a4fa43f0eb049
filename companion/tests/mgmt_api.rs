//! The management API (protocol §6) over real HTTP on 127.0.0.1:0, with a fake agent on a
//! Unix socket in a temp dir (a stand-in for our agent's control socket, speaking the
//! contract of `gatelet_agent_api::control`). Every status code and body is asserted exactly.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gatelet_agent_api::control::{
    AgentStatus, ListenerState, ProbeResult, Request, Response, RouteKind, RouteStatus, SentOn,
    TunnelStatus, WakeRequest, WakeResult,
};
use gatelet_agent_api::env::{Cidr, EnvFile, GatewayEnv, Secret};
use gatelet_companion::agent_link::AgentLink;
use gatelet_companion::heartbeat::DnsCheck;
use gatelet_companion::mgmt::{serve, MgmtContext};
use gatelet_companion::state::{Shared, Snapshot};
use serde_json::{json, Value};

const IO_TIMEOUT: Duration = Duration::from_secs(15);

/// The token of fixtures/gateway-env.txt, parsed the way the daemon parses it.
fn fixture_token() -> (Secret, String) {
    let file = EnvFile::parse(include_str!("data/gateway-env.txt")).unwrap();
    let env = GatewayEnv::from_file(&file).unwrap();
    let t = env.gateway_token.unwrap();
    let s = t.expose().to_owned();
    (t, s)
}

/// A temp dir removed on drop, even when the test fails.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "gatelet-mgmt-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[derive(Clone, Copy, PartialEq)]
enum AgentMode {
    /// Answers every request.
    Answer { wake_delay: Duration },
    /// Reads the request and never answers (until stopped).
    Hang,
}

/// A fake agent: one thread accepting on a Unix socket, one per connection.
struct FakeAgent {
    path: PathBuf,
    seen: Arc<Mutex<Vec<Request>>>,
    stop: Arc<AtomicBool>,
}

impl FakeAgent {
    fn start(dir: &Path, mode: AgentMode) -> FakeAgent {
        let path = dir.join("agent.sock");
        let listener = UnixListener::bind(&path).unwrap();
        listener.set_nonblocking(true).unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (s2, stop2) = (seen.clone(), stop.clone());
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(120);
            while !stop2.load(Ordering::SeqCst) && Instant::now() < deadline {
                match listener.accept() {
                    Ok((conn, _)) => {
                        let (s3, stop3) = (s2.clone(), stop2.clone());
                        std::thread::spawn(move || agent_conn(conn, mode, &s3, &stop3));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        FakeAgent { path, seen, stop }
    }

    fn link(&self) -> AgentLink {
        AgentLink::new(&self.path)
    }

    fn requests(&self) -> Vec<Request> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for FakeAgent {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn agent_conn(
    conn: std::os::unix::net::UnixStream,
    mode: AgentMode,
    seen: &Mutex<Vec<Request>>,
    stop: &AtomicBool,
) {
    conn.set_nonblocking(false).unwrap();
    conn.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let mut line = String::new();
    if BufReader::new(&conn).read_line(&mut line).unwrap_or(0) == 0 {
        return;
    }
    let req: Request = serde_json::from_str(&line).unwrap();
    seen.lock().unwrap().push(req.clone());
    let wake_delay = match mode {
        AgentMode::Hang => {
            let deadline = Instant::now() + Duration::from_secs(10);
            while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            return;
        }
        AgentMode::Answer { wake_delay } => wake_delay,
    };
    let resp = match req {
        Request::Wake(w) => {
            std::thread::sleep(wake_delay);
            Response::Woke(WakeResult {
                mac: w.mac,
                trigger: w.trigger,
                success: true,
                elapsed_ms: 4210,
                reason: None,
                sent_on: vec![SentOn {
                    iface: "eth0".into(),
                    broadcast: "192.168.1.255".into(),
                    ok: true,
                    error: None,
                }],
                at_ms: 0,
            })
        }
        Request::Probe(_) => Response::Probed(ProbeResult {
            reachable: true,
            latency_ms: 2,
            error: None,
        }),
        _ => Response::Error {
            message: "not in this fake".into(),
        },
    };
    let mut out = serde_json::to_vec(&resp).unwrap();
    out.push(b'\n');
    let _ = (&conn).write_all(&out);
}

/// The API served on 127.0.0.1:0 until dropped.
struct Api {
    addr: SocketAddr,
    shutdown: Arc<AtomicBool>,
    token: String,
}

impl Api {
    fn start(ctx: MgmtContext) -> Api {
        let server = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = server.local_addr().unwrap();
        let shutdown = Arc::new(AtomicBool::new(false));
        let sd = shutdown.clone();
        std::thread::spawn(move || serve(server, ctx, sd));
        Api {
            addr,
            shutdown,
            token: fixture_token().1,
        }
    }

    fn call(&self, method: &str, path: &str, body: &str) -> (u16, Value) {
        let (s, _, b) = http(
            self.addr,
            None,
            method,
            path,
            Some(&self.token),
            body.as_bytes(),
        );
        (s, b)
    }
}

impl Drop for Api {
    fn drop(&mut self) {
        self.shutdown.store(true, Ordering::SeqCst);
    }
}

fn ctx_for(dir: &TempDir, agent: AgentLink, shared: Shared) -> MgmtContext {
    let mut ctx = MgmtContext::new(Some(fixture_token().0), shared, agent, &dir.0);
    ctx.lan_subnets = Arc::new(|| vec!["192.168.1.0/24".parse::<Cidr>().unwrap()]);
    ctx.wol_whitelist = Arc::new(|| vec!["AA:BB:CC:DD:EE:04".to_owned()]);
    ctx
}

/// A TCP connection from a chosen loopback source address.
fn connect_from(src: Ipv4Addr, to: SocketAddr) -> TcpStream {
    use std::os::fd::FromRawFd;
    // SAFETY: plain socket calls on a fresh descriptor that TcpStream then owns.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        assert!(fd >= 0);
        let sa = |ip: Ipv4Addr, port: u16| libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: port.to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from(ip).to_be(),
            },
            sin_zero: [0; 8],
        };
        let local = sa(src, 0);
        let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        assert_eq!(
            libc::bind(fd, &local as *const _ as *const libc::sockaddr, len),
            0
        );
        let SocketAddr::V4(to) = to else { panic!() };
        let remote = sa(*to.ip(), to.port());
        assert_eq!(
            libc::connect(fd, &remote as *const _ as *const libc::sockaddr, len),
            0
        );
        TcpStream::from_raw_fd(fd)
    }
}

/// One HTTP/1.1 request with `Connection: close`; returns status, headers, JSON body.
fn http(
    addr: SocketAddr,
    from: Option<Ipv4Addr>,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &[u8],
) -> (u16, String, Value) {
    let mut s = match from {
        Some(src) => connect_from(src, addr),
        None => TcpStream::connect(addr).unwrap(),
    };
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: 10.8.0.2:9876\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(t) = token {
        head.push_str(&format!("X-Gateway-Token: {t}\r\n"));
    }
    if !body.is_empty() {
        head.push_str("Content-Type: application/json\r\n");
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    read_response(s)
}

fn read_response(mut s: TcpStream) -> (u16, String, Value) {
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let status: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
    let v = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
    };
    (status, head.to_owned(), v)
}

fn answering() -> AgentMode {
    AgentMode::Answer {
        wake_delay: Duration::ZERO,
    }
}

#[test]
fn health_answers_without_a_token() {
    let dir = TempDir::new("health");
    let api = Api::start(ctx_for(
        &dir,
        AgentLink::new(dir.0.join("none")),
        Shared::default(),
    ));
    let (s, head, b) = http(api.addr, None, "GET", "/api/health", None, b"");
    assert_eq!((s, b), (200, json!({"ok": true})));
    assert!(head
        .to_ascii_lowercase()
        .contains("content-type: application/json"));
}

#[test]
fn missing_token_is_401_and_wrong_token_is_403() {
    let dir = TempDir::new("auth");
    let api = Api::start(ctx_for(
        &dir,
        AgentLink::new(dir.0.join("none")),
        Shared::default(),
    ));
    let (s, _, b) = http(api.addr, None, "GET", "/api/status", None, b"");
    assert_eq!((s, b), (401, json!({"error": "missing_gateway_token"})));
    let wrong = "0".repeat(64);
    let (s, _, b) = http(api.addr, None, "GET", "/api/status", Some(&wrong), b"");
    assert_eq!((s, b), (403, json!({"error": "invalid_token"})));
    let prefix = &api.token[..63];
    let (s, _, _) = http(api.addr, None, "GET", "/api/status", Some(prefix), b"");
    assert_eq!(s, 403, "a prefix of the token is not the token");
    let (s, _, _) = http(api.addr, None, "GET", "/api/status", Some(&api.token), b"");
    assert_eq!(s, 200);
}

#[test]
fn repeated_failures_from_one_address_get_429_while_the_right_token_still_works() {
    let dir = TempDir::new("ratelimit");
    let api = Api::start(ctx_for(
        &dir,
        AgentLink::new(dir.0.join("none")),
        Shared::default(),
    ));
    let noisy = Ipv4Addr::new(127, 0, 0, 2);
    let wrong = "f".repeat(64);
    for i in 0..10 {
        let (s, _, b) = http(
            api.addr,
            Some(noisy),
            "GET",
            "/api/status",
            Some(&wrong),
            b"",
        );
        assert_eq!(
            (s, b),
            (403, json!({"error": "invalid_token"})),
            "attempt {i}"
        );
    }
    let (s, head, b) = http(
        api.addr,
        Some(noisy),
        "GET",
        "/api/status",
        Some(&wrong),
        b"",
    );
    assert_eq!((s, b), (429, json!({"error": "too_many_failed_auth"})));
    assert!(head.to_ascii_lowercase().contains("retry-after:"), "{head}");
    let (s, _, b) = http(api.addr, Some(noisy), "POST", "/api/status", None, b"");
    assert_eq!((s, b), (429, json!({"error": "too_many_failed_auth"})));
    // The right token from the same address is unaffected.
    let (s, _, _) = http(
        api.addr,
        Some(noisy),
        "GET",
        "/api/status",
        Some(&api.token),
        b"",
    );
    assert_eq!(s, 200);
    // Another address is not limited by the first one's failures.
    let other = Ipv4Addr::new(127, 0, 0, 3);
    let (s, _, _) = http(
        api.addr,
        Some(other),
        "GET",
        "/api/status",
        Some(&wrong),
        b"",
    );
    assert_eq!(s, 403);
}

#[test]
fn body_over_16_kib_is_413_with_or_without_content_length() {
    let dir = TempDir::new("413");
    let api = Api::start(ctx_for(
        &dir,
        AgentLink::new(dir.0.join("none")),
        Shared::default(),
    ));
    let big = format!("{{\"host\":\"{}\"}}", "a".repeat(17 * 1024));
    let (s, b) = api.call("POST", "/api/probe", &big);
    assert_eq!((s, b), (413, json!({"error": "payload_too_large"})));

    // Chunked: no Content-Length, so the cap applies while reading.
    let mut c = TcpStream::connect(api.addr).unwrap();
    c.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let head = format!(
        "POST /api/probe HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTransfer-Encoding: chunked\r\nX-Gateway-Token: {}\r\n\r\n",
        api.token
    );
    c.write_all(head.as_bytes()).unwrap();
    c.write_all(format!("{:x}\r\n", big.len()).as_bytes())
        .unwrap();
    c.write_all(big.as_bytes()).unwrap();
    c.write_all(b"\r\n0\r\n\r\n").unwrap();
    let (s, _, b) = read_response(c);
    assert_eq!((s, b), (413, json!({"error": "payload_too_large"})));

    // 16 KiB exactly is accepted (parsed, then judged on its content).
    let (s, _) = api.call("POST", "/api/self-update", &" ".repeat(16 * 1024));
    assert_eq!(s, 400, "an all-blank body lacks request_id");
}

#[test]
fn config_changed_answers_at_once_then_fires_the_push() {
    let dir = TempDir::new("push");
    let pushes = Arc::new(AtomicUsize::new(0));
    let mut ctx = ctx_for(&dir, AgentLink::new(dir.0.join("none")), Shared::default());
    let p = pushes.clone();
    // A slow receiver must not delay the answer: the server waits only 2 s.
    ctx.on_config_changed = Arc::new(move || {
        std::thread::sleep(Duration::from_millis(1500));
        p.fetch_add(1, Ordering::SeqCst);
    });
    let api = Api::start(ctx);
    let t = Instant::now();
    let (s, b) = api.call("POST", "/api/config-changed", "");
    assert_eq!((s, b), (200, json!({"ok": true})));
    assert!(
        t.elapsed() < Duration::from_millis(1000),
        "{:?}",
        t.elapsed()
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while pushes.load(Ordering::SeqCst) == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(pushes.load(Ordering::SeqCst), 1);
    let (s, b) = api.call("GET", "/api/config-changed", "");
    assert_eq!((s, b), (405, json!({"error": "method_not_allowed"})));
}

#[test]
fn wol_validates_the_mac_checks_the_whitelist_and_hands_the_wake_to_the_agent() {
    let dir = TempDir::new("wol");
    let agent = FakeAgent::start(&dir.0, answering());
    let api = Api::start(ctx_for(&dir, agent.link(), Shared::default()));

    let (s, b) = api.call(
        "POST",
        "/api/wol",
        r#"{"mac":"not-a-mac","lan_host":"192.168.1.40","timeout_ms":60000}"#,
    );
    assert_eq!((s, b), (400, json!({"error": "invalid_mac"})));
    let (s, b) = api.call(
        "POST",
        "/api/wol",
        r#"{"mac":"AA:BB:CC:DD:EE:05","lan_host":"192.168.1.40","timeout_ms":60000}"#,
    );
    assert_eq!((s, b), (403, json!({"error": "mac_not_whitelisted"})));
    assert!(
        agent.requests().is_empty(),
        "refused wakes never reach the agent"
    );

    let (s, b) = api.call(
        "POST",
        "/api/wol",
        r#"{"mac":"aa-bb-cc-dd-ee-04","lan_host":"192.168.1.40","timeout_ms":60000,"lan_host_port":3389}"#,
    );
    assert_eq!(s, 200);
    assert_eq!(
        b,
        json!({"success": true, "elapsed_ms": 4210,
               "sent_on": [{"iface": "eth0", "broadcast": "192.168.1.255", "ok": true}]})
    );
    // Capped timeout.
    let (s, _) = api.call(
        "POST",
        "/api/wol",
        r#"{"mac":"AABBCCDDEE04","timeout_ms":900000}"#,
    );
    assert_eq!(s, 200);
    assert_eq!(
        agent.requests(),
        vec![
            Request::Wake(WakeRequest {
                mac: "aa:bb:cc:dd:ee:04".into(),
                lan_host: Some("192.168.1.40".into()),
                port: Some(3389),
                timeout_ms: 60_000,
                trigger: "api".into(),
            }),
            Request::Wake(WakeRequest {
                mac: "aa:bb:cc:dd:ee:04".into(),
                lan_host: None,
                port: None,
                timeout_ms: 300_000,
                trigger: "api".into(),
            }),
        ]
    );
    let (s, b) = api.call(
        "POST",
        "/api/wol",
        r#"{"mac":"AA:BB:CC:DD:EE:04","lan_host":"8.8.8.8"}"#,
    );
    assert_eq!((s, &b["error"]), (400, &json!("lan_host_out_of_lan_scope")));
}

#[test]
fn wol_with_the_agent_down_says_the_agent_is_unreachable() {
    let dir = TempDir::new("wol-down");
    let api = Api::start(ctx_for(
        &dir,
        AgentLink::new(dir.0.join("absent.sock")),
        Shared::default(),
    ));
    let (s, b) = api.call(
        "POST",
        "/api/wol",
        r#"{"mac":"AA:BB:CC:DD:EE:04","timeout_ms":1000}"#,
    );
    assert_eq!(s, 503);
    assert_eq!(b["error"], "agent_unreachable");
    assert_eq!(b["success"], false);
}

#[test]
fn long_wakes_neither_block_status_nor_pile_up() {
    let dir = TempDir::new("wol-busy");
    let agent = FakeAgent::start(
        &dir.0,
        AgentMode::Answer {
            wake_delay: Duration::from_millis(2000),
        },
    );
    let api = Arc::new(Api::start(ctx_for(&dir, agent.link(), Shared::default())));
    let wakes: Vec<_> = (0..2)
        .map(|_| {
            let api = api.clone();
            std::thread::spawn(move || {
                api.call("POST", "/api/wol", r#"{"mac":"AA:BB:CC:DD:EE:04"}"#)
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let t = Instant::now();
    let (s, _) = api.call("GET", "/api/status", "");
    assert_eq!(s, 200);
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    let (s, b) = api.call("POST", "/api/wol", r#"{"mac":"AA:BB:CC:DD:EE:04"}"#);
    assert_eq!((s, b), (503, json!({"error": "wol_busy"})));
    for w in wakes {
        assert_eq!(w.join().unwrap().0, 200);
    }
}

#[test]
fn probe_outside_the_lan_is_rejected_with_its_target_and_inside_reaches_the_agent() {
    let dir = TempDir::new("probe");
    let agent = FakeAgent::start(&dir.0, answering());
    let mut ctx = ctx_for(&dir, agent.link(), Shared::default());
    ctx.lan_probe_target = Some(("192.168.1.1".into(), Some(443)));
    let api = Api::start(ctx);

    let (s, b) = api.call("POST", "/api/probe", r#"{"host":"8.8.8.8","port":53}"#);
    assert_eq!(s, 200);
    assert_eq!(b["rejected"], "out_of_lan_scope");
    assert_eq!(b["probed_target"], json!({"host": "8.8.8.8", "port": 53}));
    assert!(b["probe_result"].is_null());
    assert!(
        agent.requests().is_empty(),
        "out-of-scope targets are not probed"
    );

    let body = r#"{"host":"192.168.1.40","port":22,"probe_id":"e2e-1"}"#;
    let (s, b) = api.call("POST", "/api/probe", body);
    assert_eq!(s, 200);
    assert_eq!(
        b["probed_target"],
        json!({"host": "192.168.1.40", "port": 22})
    );
    assert_eq!(
        b["probe_result"],
        json!({"reachable": true, "latency_ms": 2, "error": null})
    );
    assert_eq!(b["echo"], serde_json::from_str::<Value>(body).unwrap());
    assert!(b["gateway_timestamp"].as_u64().unwrap() > 1_700_000_000_000);
    assert!(b["probe_latency_ms"].is_u64());
    assert!(b.get("rejected").is_none());

    // No host in the body: GC_LAN_PROBE_TARGET.
    let (s, b) = api.call("POST", "/api/probe", r#"{"probe_id":"x"}"#);
    assert_eq!(s, 200);
    assert_eq!(
        b["probed_target"],
        json!({"host": "192.168.1.1", "port": 443})
    );
    let probes: Vec<(String, u16)> = agent
        .requests()
        .into_iter()
        .filter_map(|r| match r {
            Request::Probe(p) => Some((p.host, p.port)),
            _ => None,
        })
        .collect();
    assert_eq!(
        probes,
        vec![("192.168.1.40".into(), 22), ("192.168.1.1".into(), 443)]
    );
}

#[test]
fn status_answers_from_cache_in_under_a_second_while_the_agent_hangs() {
    let dir = TempDir::new("status");
    let agent = FakeAgent::start(&dir.0, AgentMode::Hang);
    let shared = Shared::new(Snapshot {
        agent: Some(AgentStatus {
            tunnel: TunnelStatus {
                handshake_age_s: Some(12),
                ..Default::default()
            },
            http_proxy: Some(ListenerState::Listening),
            api_relay: Some(ListenerState::Listening),
            routes: vec![RouteStatus {
                id: 7,
                kind: RouteKind::L4,
                name: "l4:13389".into(),
                listen_port: Some(13389),
                tcp: ListenerState::Listening,
                udp: Some(ListenerState::Listening),
                active_connections: 0,
                bytes: 0,
                refused: 0,
                failures: 0,
                last_error: None,
                reachability: None,
            }],
            ..Default::default()
        }),
        agent_reachable: true,
        ..Default::default()
    });
    let mut ctx = ctx_for(&dir, agent.link(), shared);
    let dns = DnsCheck::with_resolver("gc-testbed.invalid", |_| true);
    let deadline = Instant::now() + Duration::from_secs(5);
    while dns.get().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    ctx.dns = Some(dns);
    let api = Api::start(ctx);

    let t = Instant::now();
    let (s, b) = api.call("GET", "/api/status", "");
    let took = t.elapsed();
    assert_eq!(s, 200);
    assert!(took < Duration::from_secs(1), "took {took:?}");
    // The fixture's /api/status answer, plus our extra agent_reachable.
    let calls: Value = serde_json::from_str(include_str!(
        "data/server-to-gateway-calls-admin-triggered.json"
    ))
    .unwrap();
    let mut expected = calls["calls"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["url"] == "/api/status")
        .unwrap()["response"]["body"]
        .clone();
    expected["agent_reachable"] = json!(true);
    assert_eq!(b, expected);
}

#[test]
fn self_update_writes_the_flag_then_answers_cooldown() {
    let dir = TempDir::new("update");
    let api = Api::start(ctx_for(
        &dir,
        AgentLink::new(dir.0.join("none")),
        Shared::default(),
    ));
    let (s, b) = api.call("POST", "/api/self-update", r#"{"target_version":null}"#);
    assert_eq!((s, b), (400, json!({"error": "request_id_required"})));

    let (s, b) = api.call(
        "POST",
        "/api/self-update",
        r#"{"request_id":"14493ef4-062e-4745-9b93-1c95333f0cad","target_version":null}"#,
    );
    assert_eq!((s, b), (200, json!({"ok": true, "queued": true})));
    let flag: Value =
        serde_json::from_slice(&std::fs::read(dir.0.join("pending-update")).unwrap()).unwrap();
    assert_eq!(flag["request_id"], "14493ef4-062e-4745-9b93-1c95333f0cad");
    assert!(flag["target_version"].is_null());
    assert!(flag["requested_at"].as_str().unwrap().ends_with('Z'));
    let leftovers: Vec<_> = std::fs::read_dir(&dir.0)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    let (s, b) = api.call(
        "POST",
        "/api/self-update",
        r#"{"request_id":"another-request","target_version":"1.2.3"}"#,
    );
    assert_eq!((s, b), (200, json!({"ok": true, "skipped": "cooldown"})));
    let flag2: Value =
        serde_json::from_slice(&std::fs::read(dir.0.join("pending-update")).unwrap()).unwrap();
    assert_eq!(flag2, flag, "a skipped request leaves the flag alone");
}

#[test]
fn lan_scan_without_a_scanner_is_not_available_and_unknown_paths_404() {
    let dir = TempDir::new("scan");
    let api = Api::start(ctx_for(
        &dir,
        AgentLink::new(dir.0.join("none")),
        Shared::default(),
    ));
    let body = r#"{"request_id":"c1c5f26e","subnets":["192.168.1.0/24"],"category_mode":"include","categories":[],"active_scan":false,"timeout_ms":45000}"#;
    let (s, b) = api.call("POST", "/api/lan-scan", body);
    assert_eq!((s, b), (501, json!({"error": "lan_scan_not_supported"})));
    let (s, b) = api.call("GET", "/api/nope", "");
    assert_eq!((s, b), (404, json!({"error": "not_found"})));
}

#[test]
fn without_a_gateway_token_every_call_but_health_is_refused() {
    let dir = TempDir::new("disabled");
    let mut ctx = ctx_for(&dir, AgentLink::new(dir.0.join("none")), Shared::default());
    ctx.gateway_token = None;
    let api = Api::start(ctx);
    let (s, b) = api.call("GET", "/api/status", "");
    assert_eq!((s, b), (403, json!({"error": "management_api_disabled"})));
    let (s, b) = api.call("POST", "/api/config-changed", "");
    assert_eq!((s, b), (403, json!({"error": "management_api_disabled"})));
    let (s, _, b) = http(api.addr, None, "GET", "/api/health", None, b"");
    assert_eq!((s, b), (200, json!({"ok": true})));
}

#[test]
fn serve_returns_after_shutdown_and_clears_the_serving_flag() {
    let dir = TempDir::new("shutdown");
    let ctx = ctx_for(&dir, AgentLink::new(dir.0.join("none")), Shared::default());
    let serving = ctx.serving.clone();
    let server = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = server.local_addr().unwrap();
    let shutdown = Arc::new(AtomicBool::new(false));
    let sd = shutdown.clone();
    let t = std::thread::spawn(move || serve(server, ctx, sd));
    let (s, _, _) = http(addr, None, "GET", "/api/health", None, b"");
    assert_eq!(s, 200);
    assert!(serving.load(Ordering::SeqCst));
    shutdown.store(true, Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(3);
    while !t.is_finished() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(t.is_finished(), "serve did not return after shutdown");
    assert!(!serving.load(Ordering::SeqCst));
}
