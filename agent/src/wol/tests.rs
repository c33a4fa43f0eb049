//! Scheduling of wakes on paused time, with a fake transport.

use std::sync::atomic::{AtomicUsize, Ordering};

use gatelet_agent_api::control::{HttpRoute, L4Route};

use super::*;

const MAC: [u8; 6] = [2, 0, 0, 0, 0, 7];

/// Counts sends and probes; the host answers from `up_at` on.
struct Fake {
    sends: Arc<AtomicUsize>,
    probes: Arc<AtomicUsize>,
    up_at: Instant,
    packets: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl Transport for Fake {
    fn send(&self, packet: Vec<u8>) -> BoxFuture<Vec<SentOn>> {
        self.sends.fetch_add(1, Ordering::SeqCst);
        lock(&self.packets).push(packet);
        Box::pin(async {
            // Three rounds, as the real sender does.
            tokio::time::sleep(Duration::from_millis(200)).await;
            vec![SentOn {
                iface: "lan0".into(),
                broadcast: "255.255.255.255".into(),
                ok: true,
                error: None,
            }]
        })
    }

    fn probe(&self, _host: String, port: u16, timeout: Duration) -> BoxFuture<Probe> {
        self.probes.fetch_add(1, Ordering::SeqCst);
        let up_at = self.up_at;
        Box::pin(async move {
            if Instant::now() >= up_at {
                // Port 53 stands for a UDP-only service: the awake host resets TCP.
                return if port == 53 {
                    Probe::Refused
                } else {
                    Probe::Open
                };
            }
            // A sleeping host does not answer: the connect runs into its timeout.
            tokio::time::sleep(timeout).await;
            Probe::Silent
        })
    }
}

struct Counters {
    sends: Arc<AtomicUsize>,
    probes: Arc<AtomicUsize>,
    packets: Arc<Mutex<Vec<Vec<u8>>>>,
}

fn waker(up_in: Duration) -> (Waker, Counters) {
    let c = Counters {
        sends: Arc::default(),
        probes: Arc::default(),
        packets: Arc::default(),
    };
    let w = Waker::new(Fake {
        sends: c.sends.clone(),
        probes: c.probes.clone(),
        up_at: Instant::now() + up_in,
        packets: c.packets.clone(),
    });
    (w, c)
}

fn spec(timeout_s: u64, trigger: &str) -> WakeSpec {
    WakeSpec {
        mac: MAC,
        secureon: None,
        probe: Some(("192.168.1.7".into(), 80)),
        refused_is_up: false,
        timeout: Duration::from_secs(timeout_s),
        trigger: trigger.into(),
    }
}

#[tokio::test(start_paused = true)]
async fn host_waking_after_seven_seconds_is_reported_up_within_a_probe_interval() {
    let (w, c) = waker(Duration::from_secs(7));
    let r = w.wake(spec(60, "api")).await;
    assert!(r.success, "{r:?}");
    assert_eq!(r.mac, "02:00:00:00:00:07");
    assert!(
        (7_000..=7_000 + 1_500).contains(&r.elapsed_ms),
        "{}",
        r.elapsed_ms
    );
    assert_eq!(c.sends.load(Ordering::SeqCst), 1);
    assert!(packet::is_magic_for(&lock(&c.packets)[0], MAC));
    assert_eq!(w.recent(), vec![r]);
}

#[tokio::test(start_paused = true)]
async fn concurrent_wakes_of_one_mac_share_one_send_and_one_wait() {
    let (w, c) = waker(Duration::from_secs(5));
    let a = w.start(spec(60, "api"));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let b = w.start(spec(60, "http"));
    let (ra, rb) = tokio::join!(a.wait(), b.wait());
    assert_eq!(ra, rb, "both callers get the one result");
    assert_eq!(ra.trigger, "api");
    assert_eq!(c.sends.load(Ordering::SeqCst), 1, "one set of packets");
    assert_eq!(w.recent().len(), 1);
    // Once finished, a new request starts a new wake.
    let again = w.wake(spec(60, "l4")).await;
    assert_eq!(c.sends.load(Ordering::SeqCst), 2);
    assert!(again.success && again.elapsed_ms < 1_000, "{again:?}");
}

#[tokio::test(start_paused = true)]
async fn silent_host_times_out_at_the_cap() {
    let (w, c) = waker(Duration::from_secs(10_000));
    let started = Instant::now();
    let r = w.wake(spec(900, "api")).await;
    assert!(!r.success);
    assert_eq!(r.reason.as_deref(), Some("timeout"));
    assert_eq!(started.elapsed(), MAX_WAKE_TIMEOUT, "900 s capped at 300 s");
    // Probes every 1 s timeout + 0.5 s pause at most: bounded, not a spin.
    let probes = c.probes.load(Ordering::SeqCst);
    assert!((150..=300).contains(&probes), "{probes}");
}

#[tokio::test(start_paused = true)]
async fn wake_without_probe_target_succeeds_once_sent() {
    let (w, c) = waker(Duration::from_secs(10_000));
    let mut s = spec(60, "api");
    s.probe = None;
    let r = w.wake(s).await;
    assert!(r.success);
    assert_eq!(r.elapsed_ms, 200);
    assert_eq!(c.probes.load(Ordering::SeqCst), 0);
}

fn config() -> AgentConfig {
    AgentConfig {
        egress_routes: Vec::new(),
        http_routes: vec![HttpRoute {
            id: 1,
            domain: "nas.example.com".into(),
            target_host: "192.168.1.7".into(),
            target_port: 5000,
            backend_https: false,
            wol: Some(WolTarget {
                mac: "02:00:00:00:00:07".into(),
                secureon: Some("01:02:03:04".into()),
            }),
        }],
        l4_routes: vec![L4Route {
            id: 2,
            listen_port: 2222,
            target_host: "192.168.1.8".into(),
            target_port: 22,
            wol: None,
        }],
        ..AgentConfig::default()
    }
}

#[tokio::test(start_paused = true)]
async fn control_wake_uses_route_host_port_and_secureon_of_the_mac() {
    let (w, c) = waker(Duration::from_secs(3));
    w.set_routes(&config());
    let r = w
        .answer(&WakeRequest {
            mac: "02-00-00-00-00-07".into(),
            lan_host: None,
            port: None,
            timeout_ms: 10_000,
            trigger: String::new(),
        })
        .await;
    assert!(r.success, "{r:?}");
    assert_eq!(r.trigger, "api");
    let p = lock(&c.packets)[0].clone();
    assert_eq!(&p[102..], &[1, 2, 3, 4], "SecureOn password of the route");
    assert!(w.wol_for("192.168.1.7", 5000).is_some());
    assert!(w.wol_for("192.168.1.8", 22).is_none());
    assert_eq!(
        w.hold("192.168.1.8", 22, "l4", HOLD_TIMEOUT).await,
        Hold::NotWol
    );
}

#[tokio::test(start_paused = true)]
async fn hold_answers_still_waking_to_a_short_wait_and_the_wake_goes_on() {
    let (w, _c) = waker(Duration::from_secs(15));
    w.set_routes(&config());
    let h = w.hold("192.168.1.7", 5000, "http", BROWSER_WAIT).await;
    assert_eq!(h, Hold::StillWaking);
    // The reload joins the same wake and sees the host up.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let t = Instant::now();
    let h = w.hold("192.168.1.7", 5000, "http", BROWSER_WAIT).await;
    assert_eq!(h, Hold::Up);
    assert!(
        t.elapsed() <= Duration::from_secs(3),
        "joined the running wake"
    );
    assert_eq!(w.recent().len(), 1, "one wake for both requests");
}

#[tokio::test(start_paused = true)]
async fn refused_probe_counts_as_up_only_when_asked() {
    let (w, _c) = waker(Duration::from_secs(2));
    let mut s = spec(6, "l4");
    s.probe = Some(("192.168.1.7".into(), 53));
    let strict = w.wake(s.clone()).await;
    assert_eq!(strict.reason.as_deref(), Some("timeout"), "{strict:?}");
    s.refused_is_up = true;
    let lenient = w.wake(s).await;
    assert!(lenient.success, "{lenient:?}");
}

#[test]
fn waking_page_reloads_itself_and_closes() {
    let p = String::from_utf8(waking_page("nas<script>")).unwrap();
    assert!(p.starts_with("HTTP/1.1 503 "));
    assert!(p.contains("http-equiv=\"refresh\" content=\"5\""));
    assert!(p.contains("Connection: close"));
    assert!(!p.contains("<script>"));
    let (head, body) = p.split_once("\r\n\r\n").unwrap();
    assert!(head.contains(&format!("Content-Length: {}", body.len())));
}

#[tokio::test(start_paused = true)]
async fn udp_gate_holds_up_to_its_limit_then_releases_in_order() {
    let (w, c) = waker(Duration::ZERO);
    let target = crate::target::Target {
        host: "127.0.0.1".into(),
        port: 9,
    };
    assert!(
        UdpGate::for_target(&target, &w).is_none(),
        "no route with wol: no gate"
    );
    w.set_routes(&AgentConfig {
        egress_routes: Vec::new(),
        config_hash: None,
        http_routes: vec![],
        l4_routes: vec![L4Route {
            id: 1,
            listen_port: 9000,
            target_host: "127.0.0.1".into(),
            target_port: 9,
            wol: Some(WolTarget {
                mac: "02:00:00:00:00:07".into(),
                secureon: None,
            }),
        }],
    });
    let (gate, wol) = UdpGate::for_target(&target, &w).expect("a gate for a wol route");
    let big = vec![7u8; 40 * 1024];
    assert!(gate.hold(b"first"));
    assert!(gate.hold(&big));
    assert!(gate.hold(&big), "over the limit: dropped, still not sent");
    assert!(gate.hold(b"last"));
    let released = gate.open_when_up(&target, &wol).await;
    assert_eq!(released, vec![b"first".to_vec(), big, b"last".to_vec()]);
    assert!(!gate.hold(b"after"), "an open gate lets datagrams through");
    assert_eq!(
        c.probes.load(Ordering::SeqCst),
        1,
        "the host answered the probe"
    );
    assert_eq!(
        c.sends.load(Ordering::SeqCst),
        0,
        "an awake host is not woken"
    );
}
