//! The GateControl client through the agent's proxy into the tunnel (userspace mode): the
//! agent's real CONNECT proxy (`gatelet_agent::egress`), whose tunnel side dials a kernel
//! socket here (the netstack's connect is tested in the agent; tests-hw runs the whole way
//! through a real tunnel), in front of the fake GateControl server.

mod fake_gatecontrol;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use fake_gatecontrol::{fixture_dir, FakeGateControl};
use gatelet_agent::egress::{self, Dial, EgressCounters, Target};
use gatelet_agent::stack::Stream;
use gatelet_agent_api::env::{EnvFile, GatewayEnv, Secret};
use gatelet_companion::client::{CheckOutcome, Client, ClientError};

/// Dials with a kernel socket, counting.
#[derive(Default)]
struct CountingDial(AtomicUsize);

impl Dial for CountingDial {
    async fn dial(&self, to: SocketAddr) -> std::io::Result<Stream> {
        self.0.fetch_add(1, Ordering::SeqCst);
        tokio::net::TcpStream::connect(to).await.map(Stream::Kernel)
    }
}

/// The agent's proxy for `target` on its own runtime thread; stops when dropped.
struct Proxy {
    addr: SocketAddr,
    dial: Arc<CountingDial>,
    counters: Arc<EgressCounters>,
    stop: Option<tokio::sync::watch::Sender<bool>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Proxy {
    fn start(target: Target) -> Proxy {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()
            .unwrap();
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let dial = Arc::new(CountingDial::default());
        let counters = Arc::new(EgressCounters::default());
        let (stop, rx) = tokio::sync::watch::channel(false);
        let (d, c) = (dial.clone(), counters.clone());
        let thread = std::thread::spawn(move || {
            rt.block_on(egress::serve(listener, target, d, c, rx));
        });
        Proxy {
            addr,
            dial,
            counters,
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(true);
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The fixture gateway.env's token, through the real parser.
fn token() -> Secret {
    let text = std::fs::read_to_string(fixture_dir().join("gateway-env.txt")).unwrap();
    GatewayEnv::from_file(&EnvFile::parse(&text).unwrap())
        .unwrap()
        .api_token
        .unwrap()
}

#[test]
fn calls_go_through_the_proxy_while_the_agent_reports_one_and_direct_otherwise() {
    let server = FakeGateControl::start_default().unwrap();
    let proxy = Proxy::start(Target::from_url(&server.url()).unwrap());
    let reported: Arc<Mutex<Option<String>>> = Arc::new(Mutex::new(Some(proxy.addr.to_string())));
    let source = reported.clone();
    let c = Client::new(&server.url(), token())
        .via_tunnel_proxy(Arc::new(move || source.lock().unwrap().clone()));

    let (outcome, _) = c.check(None).unwrap();
    assert!(matches!(outcome, CheckOutcome::Changed(_)), "{outcome:?}");
    let body = std::fs::read(fixture_dir().join("heartbeat-request.json")).unwrap();
    c.heartbeat(&body).unwrap();
    assert!(c.fetch_config().is_ok());
    assert!(
        proxy.dial.0.load(Ordering::SeqCst) >= 1,
        "through the proxy"
    );
    let through = server.requests();
    assert_eq!(through.len(), 3);
    assert_eq!(through[1].body, body);

    // The agent reports no proxy (TUN mode): the same requests, direct, byte for byte.
    *reported.lock().unwrap() = None;
    server.clear_requests();
    let dials = proxy.dial.0.load(Ordering::SeqCst);
    c.check(None).unwrap();
    c.heartbeat(&body).unwrap();
    c.fetch_config().unwrap();
    assert_eq!(
        proxy.dial.0.load(Ordering::SeqCst),
        dials,
        "not through the proxy"
    );
    let direct = server.requests();
    assert_eq!(direct.len(), 3);
    for (a, b) in through.iter().zip(&direct) {
        assert_eq!(
            (&a.method, &a.target, &a.body),
            (&b.method, &b.target, &b.body)
        );
        assert_eq!(
            a.headers, b.headers,
            "the proxy changes nothing of the request"
        );
    }
    assert_eq!(proxy.counters.refused.load(Ordering::Relaxed), 0);
}

#[test]
fn a_proxy_that_refuses_the_target_is_a_transport_error_that_says_so() {
    let server = FakeGateControl::start_default().unwrap();
    // The agent's proxy serves another server URL: the client's CONNECT is refused.
    let proxy = Proxy::start(Target::from_url("http://10.8.0.1:3000").unwrap());
    let addr = proxy.addr.to_string();
    let c =
        Client::new(&server.url(), token()).via_tunnel_proxy(Arc::new(move || Some(addr.clone())));
    match c.check(None) {
        Err(ClientError::Transport { reason, .. }) => {
            assert!(reason.contains("403"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    assert!(server.requests().is_empty());
    assert_eq!(proxy.counters.refused.load(Ordering::Relaxed), 1);
    assert_eq!(proxy.dial.0.load(Ordering::SeqCst), 0);
}
