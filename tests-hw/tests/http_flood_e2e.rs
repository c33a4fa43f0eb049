//! One HTTP route's flood must not take the other routes down (issue 8), end to end: 1,100
//! slow clients from the hub on `app.e2e.test`, through wireguard-go and the agent's HTTP proxy,
//! while a probe on `other.e2e.test` (same LAN server, another route) measures whether it still
//! answers and how fast, and the agent's RSS is sampled. Needs root.
//!
//! Phase 1: clients that never finish their request head (each reconnects as soon as it is
//! closed, as the attack did: again and again). Phase 2: clients that send a complete head
//! announcing a body and never send it (requests in flight on the flooded route).

use std::io::{ErrorKind, Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use gatelet_tests_hw::{
    config_document, fixture_port, http_request, memory_kib, require_root, Deployment,
    HttpRouteDoc, Netns, HTTP_BANNER, LAN_HTTP_IP, LAN_SERVICE_PORT,
};

/// The flooded route.
const FLOOD_DOMAIN: &str = "app.e2e.test";
/// The route that must keep answering.
const PROBE_DOMAIN: &str = "other.e2e.test";
/// Slow clients held open at once (more than the proxy's 1,024 connection slots).
const FLOOD_CLIENTS: usize = 1100;
/// Phase 1 lasts longer than one header timeout (10 s): the slots the slow heads hold expire
/// and the flood refills them.
const PHASE1: Duration = Duration::from_secs(13);
/// Phase 2 length.
const PHASE2: Duration = Duration::from_secs(6);
/// Time between two probes.
const PROBE_EVERY: Duration = Duration::from_millis(250);
/// Timeout of one probe request (and of one flood client's connect).
const IO_TIMEOUT: Duration = Duration::from_secs(3);
/// A probe slower than this fails the test.
const PROBE_LIMIT: Duration = Duration::from_secs(1);

fn http_route(id: u64, domain: &str) -> HttpRouteDoc {
    HttpRouteDoc {
        id,
        domain: domain.into(),
        host: LAN_HTTP_IP.to_string(),
        port: LAN_SERVICE_PORT,
    }
}

fn proxy_addr() -> SocketAddr {
    Deployment::tunnel_addr(fixture_port("GC_PROXY_PORT").unwrap())
}

/// What the flood did.
#[derive(Default)]
struct FloodCount {
    connects: AtomicU64,
    failed_connects: AtomicU64,
}

/// Holds [`FLOOD_CLIENTS`] connections from `hub` that sent `opening` and nothing more,
/// reopening every one that is closed (or answered), until `stop`.
fn flood(hub: &Netns, opening: &[u8], stop: &AtomicBool, count: &FloodCount) {
    let addr = proxy_addr();
    let open = || -> Option<TcpStream> {
        count.connects.fetch_add(1, Ordering::Relaxed);
        let s = match TcpStream::connect_timeout(&addr, IO_TIMEOUT) {
            Ok(s) => s,
            Err(_) => {
                count.failed_connects.fetch_add(1, Ordering::Relaxed);
                return None;
            }
        };
        s.set_write_timeout(Some(IO_TIMEOUT)).ok()?;
        (&s).write_all(opening).ok()?;
        s.set_nonblocking(true).ok()?;
        Some(s)
    };
    hub.enter(|| {
        let mut conns: Vec<Option<TcpStream>> = (0..FLOOD_CLIENTS).map(|_| None).collect();
        let mut buf = [0u8; 1024];
        while !stop.load(Ordering::Relaxed) {
            for slot in conns.iter_mut() {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let alive = slot.as_mut().is_some_and(
                    |s| matches!(s.read(&mut buf), Err(e) if e.kind() == ErrorKind::WouldBlock),
                );
                if !alive {
                    *slot = open();
                }
            }
            thread::sleep(Duration::from_millis(100));
        }
    })
    .unwrap();
}

/// Probe results of one phase.
#[derive(Debug, Default)]
struct Probes {
    ok: usize,
    failed: Vec<String>,
    latencies: Vec<Duration>,
    max_rss_kib: u64,
}

impl Probes {
    fn summary(&self) -> String {
        let mut l = self.latencies.clone();
        l.sort();
        let pct = |p: usize| l.get((l.len() * p / 100).min(l.len().saturating_sub(1)));
        format!(
            "{} of {} probes answered 200; latency median {:?}, p90 {:?}, max {:?}; agent RSS \
             max {} KiB; failures: {:?}",
            self.ok,
            self.ok + self.failed.len(),
            pct(50),
            pct(90),
            l.last(),
            self.max_rss_kib,
            self.failed.iter().take(5).collect::<Vec<_>>()
        )
    }
}

/// Probes [`PROBE_DOMAIN`] every [`PROBE_EVERY`] for `length`.
fn probe(d: &Deployment, length: Duration, agent_pid: u32) -> Probes {
    let mut p = Probes::default();
    let end = Instant::now() + length;
    while Instant::now() < end {
        let start = Instant::now();
        match http_request(
            &d.testbed.hub_ns,
            proxy_addr(),
            "GET",
            "/probe",
            &[("Host", PROBE_DOMAIN)],
            None,
            IO_TIMEOUT,
        ) {
            Ok(r) if r.status == 200 && r.body.starts_with(HTTP_BANNER) => {
                p.ok += 1;
                p.latencies.push(start.elapsed());
            }
            Ok(r) => p.failed.push(format!("status {}", r.status)),
            Err(e) => p.failed.push(e.to_string()),
        }
        if let Ok((_, rss)) = memory_kib(agent_pid) {
            p.max_rss_kib = p.max_rss_kib.max(rss);
        }
        thread::sleep(PROBE_EVERY.saturating_sub(start.elapsed()));
    }
    p
}

/// Runs `opening` as a flood for `length` while probing; returns the probes and the flood's
/// connection counts.
fn flood_and_probe(
    d: &Deployment,
    opening: &[u8],
    length: Duration,
    agent_pid: u32,
) -> (Probes, u64, u64) {
    let stop = AtomicBool::new(false);
    let count = FloodCount::default();
    let probes = thread::scope(|s| {
        let flooder = s.spawn(|| flood(&d.testbed.hub_ns, opening, &stop, &count));
        // Let the flood fill the slots first.
        let fill_deadline = Instant::now() + Duration::from_secs(10);
        while count.connects.load(Ordering::Relaxed) < FLOOD_CLIENTS as u64
            && Instant::now() < fill_deadline
        {
            thread::sleep(Duration::from_millis(50));
        }
        let probes = probe(d, length, agent_pid);
        stop.store(true, Ordering::Relaxed);
        flooder.join().expect("flood thread");
        probes
    });
    (
        probes,
        count.connects.load(Ordering::Relaxed),
        count.failed_connects.load(Ordering::Relaxed),
    )
}

fn warn_lines(d: &Deployment) -> usize {
    d.testbed
        .agent()
        .map(|a| a.log().lines().filter(|l| l.contains("WARN")).count())
        .unwrap_or(0)
}

#[test]
fn a_flood_of_slow_clients_on_one_route_leaves_the_other_routes_answering() {
    require_root().unwrap();
    let doc = config_document(
        &[http_route(1, FLOOD_DOMAIN), http_route(2, PROBE_DOMAIN)],
        &[],
    );
    let d = Deployment::start(&doc).unwrap();
    let agent_pid = d.testbed.agent().unwrap().pid();

    let quiet = probe(&d, Duration::from_secs(2), agent_pid);
    eprintln!("no flood: {}", quiet.summary());
    assert!(quiet.failed.is_empty(), "{}\n{}", quiet.summary(), d.logs());
    let warn_before = warn_lines(&d);

    // Phase 1: slow request heads on the flooded route.
    let (p1, connects, failed) = flood_and_probe(
        &d,
        format!("GET / HTTP/1.1\r\nHost: {FLOOD_DOMAIN}\r\nX-Slow: ").as_bytes(),
        PHASE1,
        agent_pid,
    );
    let warn_p1 = warn_lines(&d) - warn_before;
    eprintln!(
        "phase 1 (slow heads): {}; flood connects {connects} ({failed} failed); {warn_p1} WARN \
         lines in the agent's log",
        p1.summary()
    );

    // Phase 2: complete heads on the flooded route, bodies never sent.
    let (p2, connects, failed) = flood_and_probe(
        &d,
        format!("POST /upload HTTP/1.1\r\nHost: {FLOOD_DOMAIN}\r\nContent-Length: 100000\r\n\r\n")
            .as_bytes(),
        PHASE2,
        agent_pid,
    );
    let warn_p2 = warn_lines(&d) - warn_before - warn_p1;
    eprintln!(
        "phase 2 (bodies never sent): {}; flood connects {connects} ({failed} failed); \
         {warn_p2} WARN lines in the agent's log",
        p2.summary()
    );
    let (hwm, rss) = memory_kib(agent_pid).unwrap();
    eprintln!("agent memory after the floods: VmHWM {hwm} KiB, VmRSS {rss} KiB");

    for (name, p) in [("phase 1", &p1), ("phase 2", &p2)] {
        assert!(p.ok >= 10, "{name}: {}\n{}", p.summary(), d.logs());
        assert!(p.failed.is_empty(), "{name}: {}\n{}", p.summary(), d.logs());
        let worst = p.latencies.iter().max().copied().unwrap_or_default();
        assert!(worst < PROBE_LIMIT, "{name}: {}", p.summary());
    }
    // Refusals are summed into a few lines, not one per refused connection.
    assert!(warn_p1 + warn_p2 <= 12, "{warn_p1} + {warn_p2} WARN lines");
    // The flood is over: the flooded route answers again.
    let r = http_request(
        &d.testbed.hub_ns,
        proxy_addr(),
        "GET",
        "/after",
        &[("Host", FLOOD_DOMAIN)],
        None,
        IO_TIMEOUT,
    )
    .unwrap();
    assert_eq!(r.status, 200, "{r:?}");
}
