//! Attacks on the companion's HTTP edge, as an outsider on the hub (through the agent's API
//! relay on `<tunnel ip>:GC_API_PORT`) and as a local user (127.0.0.1): issue 8, "What broke"
//! items 1–4. Each test attacks a full `Deployment`, then asks for `/api/status` with the right
//! token from the hub and wants it within [`STATUS_DEADLINE`], with the companion alive and its
//! memory bounded. Every test prints a `MEASURE` line per phase (RSS, threads, descriptors,
//! `/api/status` latency from the hub). Bounded in count and time. Needs root.

use std::io::{ErrorKind, Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use gatelet_tests_hw::{
    config_document, connect, fixture_port, fixture_value, http_request, memory_kib, require_root,
    Deployment, Netns,
};

/// A correct-token `/api/status` from the hub must answer within this during every attack.
const STATUS_DEADLINE: Duration = Duration::from_secs(1);
/// What an attack may add to the companion's resident memory (its whole budget of open
/// connections, each at most 32 KiB, is 2 MiB).
const RSS_GROWTH_MAX_KIB: u64 = 4 * 1024;
/// Threads the companion may run at most, attack or not (main, agent, sync, heartbeat,
/// status, two servers' I/O threads and their fixed workers, with room to spare).
const THREADS_MAX: u64 = 24;
/// Timeout of one attack socket's connect, read or write.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// The diagnostics page's default address (loopback, in the gateway namespace).
const DIAG_PORT: u16 = 9877;
/// Half-open connections of item 3.
const HALF_OPEN: usize = 1024;
/// How long item 4 streams its endless header line at most.
const STREAM_FOR: Duration = Duration::from_secs(4);

fn deployment() -> Deployment {
    require_root().unwrap();
    Deployment::start(&config_document(&[], &[])).unwrap()
}

fn api_port() -> u16 {
    fixture_port("GC_API_PORT").unwrap()
}

fn companion_pid(d: &mut Deployment) -> u32 {
    d.companion
        .as_mut()
        .expect("companion running")
        .process()
        .pid()
}

/// The companion is still running (it has not aborted).
fn assert_alive(d: &mut Deployment, what: &str) {
    let exited = d.companion.as_mut().unwrap().process().try_exit().unwrap();
    assert!(
        exited.is_none(),
        "the companion died after {what}: {exited:?}\n{}",
        d.logs()
    );
}

/// Resident memory (KiB), threads and open descriptors of `pid`.
fn usage(pid: u32) -> (u64, u64, usize) {
    let (_, rss) = memory_kib(pid).unwrap_or((0, 0));
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let threads = status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count);
    (rss, threads, fds)
}

/// A correct-token `/api/status` from the hub through the relay: its latency, or why it failed.
fn status_from_hub(d: &Deployment) -> std::result::Result<Duration, String> {
    let token = fixture_value("GC_GATEWAY_TOKEN").unwrap();
    let start = Instant::now();
    let r = http_request(
        &d.testbed.hub_ns,
        Deployment::tunnel_addr(api_port()),
        "GET",
        "/api/status",
        &[("X-Gateway-Token", &token)],
        None,
        Duration::from_secs(3),
    )
    .map_err(|e| format!("after {:?}: {e}", start.elapsed()))?;
    let took = start.elapsed();
    if r.status != 200 {
        return Err(format!("status {} after {took:?}: {}", r.status, r.head));
    }
    Ok(took)
}

/// Prints one measurement line and checks the companion's bounds against `before_rss`.
fn measure(d: &mut Deployment, item: &str, phase: &str, before_rss: u64) {
    let pid = companion_pid(d);
    let latency = status_from_hub(d);
    let (rss, threads, fds) = usage(pid);
    eprintln!(
        "MEASURE {item} {phase}: companion rss_kib={rss} threads={threads} fds={fds} \
         status_from_hub={latency:?}"
    );
    let took = latency.unwrap_or_else(|e| panic!("{item} {phase}: /api/status {e}\n{}", d.logs()));
    assert!(
        took < STATUS_DEADLINE,
        "{item} {phase}: /api/status took {took:?}"
    );
    assert!(
        rss <= before_rss + RSS_GROWTH_MAX_KIB,
        "{item} {phase}: companion RSS {rss} KiB, {before_rss} KiB before the attack"
    );
    assert!(threads <= THREADS_MAX, "{item} {phase}: {threads} threads");
}

/// The baseline: measured and checked before any attack; returns the RSS.
fn baseline(d: &mut Deployment, item: &str) -> u64 {
    let (rss, _, _) = usage(companion_pid(d));
    measure(d, item, "before", rss);
    rss
}

fn attack_conn(ns: &Netns, addr: SocketAddr) -> TcpStream {
    connect(ns, addr, IO_TIMEOUT).unwrap_or_else(|e| panic!("{e}"))
}

/// Reads until the peer closes or `IO_TIMEOUT`; returns what came (a reset ends it too).
fn read_answer(c: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match c.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(_) => break,
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn raise_nofile_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write a plain struct owned by this frame.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// Item 1: `Content-Length: 1000000000000` and no body, no token, to the API through the
/// relay, to the API on 127.0.0.1 and to the diagnostics page: a 413 each, and the companion
/// lives on (main: the 413 went out, then the process aborted allocating the body).
#[test]
fn a_request_declaring_a_terabyte_body_gets_413_and_the_companion_lives() {
    let mut d = deployment();
    let before = baseline(&mut d, "item1");
    let local = |port| SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let targets = [
        (
            "API via the relay",
            &d.testbed.hub_ns,
            Deployment::tunnel_addr(api_port()),
            "/api/status",
        ),
        (
            "API on loopback",
            &d.testbed.gw_ns,
            local(api_port()),
            "/api/status",
        ),
        ("diagnostics page", &d.testbed.gw_ns, local(DIAG_PORT), "/"),
    ];
    let mut answers = Vec::new();
    for (what, ns, addr, path) in targets {
        let mut c = attack_conn(ns, addr);
        let head =
            format!("POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000000\r\n\r\n");
        c.write_all(head.as_bytes()).unwrap();
        answers.push((what, read_answer(&mut c)));
    }
    thread::sleep(Duration::from_millis(300));
    assert_alive(&mut d, "a request declaring a 1 TB body");
    for (what, a) in &answers {
        assert!(a.starts_with("HTTP/1.1 413"), "{what} answered {a:?}");
    }
    measure(&mut d, "item1", "after", before);
}

/// Item 2: connections declaring `Content-Length: 100000000` that never send the body: each
/// gets 413 at once, and `/api/status` answers while they are held (main: four froze every
/// worker with no timeout).
#[test]
fn connections_declaring_big_bodies_never_sent_do_not_freeze_the_api() {
    let mut d = deployment();
    let before = baseline(&mut d, "item2");
    let api = Deployment::tunnel_addr(api_port());
    let mut held: Vec<TcpStream> = (0..8)
        .map(|_| {
            let mut c = attack_conn(&d.testbed.hub_ns, api);
            c.write_all(b"POST /api/config-changed HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000\r\n\r\n")
                .unwrap();
            c
        })
        .collect();
    thread::sleep(Duration::from_millis(300));
    measure(&mut d, "item2", "during", before);
    for c in &mut held {
        c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let a = read_answer(c);
        assert!(a.starts_with("HTTP/1.1 413"), "answered {a:?}");
    }
    assert_alive(&mut d, "big declared bodies");
}

/// Item 3: 1024 half-open connections from the hub to the relay (connected, nothing sent):
/// `/api/status` still answers, and the companion's threads and descriptors stay bounded
/// (main: the relay's per-route cap filled and reset everything else; 1041 threads).
#[test]
fn a_thousand_half_open_connections_do_not_lock_the_api_out() {
    raise_nofile_limit();
    let mut d = deployment();
    let before = baseline(&mut d, "item3");
    let api = Deployment::tunnel_addr(api_port());
    let started = Instant::now();
    let held: Vec<TcpStream> = d
        .testbed
        .hub_ns
        .enter(|| {
            (0..HALF_OPEN)
                .filter_map(|_| TcpStream::connect_timeout(&api, Duration::from_secs(2)).ok())
                .collect()
        })
        .unwrap();
    eprintln!(
        "item3: {} of {HALF_OPEN} connections open after {:?}",
        held.len(),
        started.elapsed()
    );
    thread::sleep(Duration::from_millis(500));
    for round in 0..3 {
        measure(&mut d, "item3", &format!("during (round {round})"), before);
    }
    let (_, _, fds) = usage(companion_pid(&mut d));
    assert!(fds < 200, "the companion holds {fds} descriptors");
    drop(held);
    assert_alive(&mut d, "half-open connections");
}

/// Item 4: one endless header line, streamed as fast as the connection takes it for up to
/// [`STREAM_FOR`], to the API through the relay and to the diagnostics page: the companion
/// cuts it (431, close) and its memory stays flat (main: 5.7 MB to 415 MB in 16 s).
#[test]
fn an_endless_header_line_is_cut_and_memory_stays_flat() {
    let mut d = deployment();
    let before = baseline(&mut d, "item4");
    let local_diag = SocketAddr::from((Ipv4Addr::LOCALHOST, DIAG_PORT));
    let api = Deployment::tunnel_addr(api_port());
    for (what, from_hub, addr) in [
        ("API via the relay", true, api),
        ("diagnostics page", false, local_diag),
    ] {
        let ns = if from_hub {
            &d.testbed.hub_ns
        } else {
            &d.testbed.gw_ns
        };
        let mut c = attack_conn(ns, addr);
        c.set_write_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let sent = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let cut = {
            let (sent, stop) = (sent.clone(), stop.clone());
            let mut c = c.try_clone().unwrap();
            thread::spawn(move || {
                let chunk = vec![b'a'; 64 * 1024];
                let start = Instant::now();
                if c.write_all(b"GET / HTTP/1.1\r\nX-Endless: ").is_err() {
                    return Some(start.elapsed());
                }
                while start.elapsed() < STREAM_FOR && !stop.load(Ordering::Relaxed) {
                    match c.write(&chunk) {
                        Ok(n) => {
                            sent.fetch_add(n as u64, Ordering::Relaxed);
                        }
                        Err(e)
                            if e.kind() == ErrorKind::WouldBlock
                                || e.kind() == ErrorKind::TimedOut => {}
                        Err(_) => return Some(start.elapsed()),
                    }
                }
                None
            })
        };
        thread::sleep(Duration::from_millis(1500));
        measure(&mut d, "item4", &format!("during ({what})"), before);
        stop.store(true, Ordering::Relaxed);
        let cut_after = cut.join().unwrap();
        c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let answer = read_answer(&mut c);
        eprintln!(
            "item4 {what}: {} bytes taken by the connection, cut after {cut_after:?}, answer {:?}",
            sent.load(Ordering::Relaxed),
            answer.lines().next().unwrap_or("")
        );
        assert!(
            cut_after.is_some() || answer.starts_with("HTTP/1.1 431"),
            "{what}: the endless header was neither cut nor refused with 431: {answer:?}"
        );
    }
    assert_alive(&mut d, "endless header lines");
    measure(&mut d, "item4", "after", before);
}

/// The relay names the caller (PROXY v2), so the failed-auth limit counts per caller: ten bad
/// tokens from the hub block the hub (429) but not a local caller on 127.0.0.1, and the right
/// token still works from both (main: every relayed call counted as 127.0.0.1, one shared
/// counter, so the hub's failures blocked everyone).
#[test]
fn failed_auth_through_the_relay_is_counted_per_caller() {
    let d = deployment();
    let api = Deployment::tunnel_addr(api_port());
    let local = SocketAddr::from((Ipv4Addr::LOCALHOST, api_port()));
    let call = |ns: &Netns, addr: SocketAddr, token: &str| {
        http_request(
            ns,
            addr,
            "GET",
            "/api/status",
            &[("X-Gateway-Token", token)],
            None,
            IO_TIMEOUT,
        )
        .unwrap_or_else(|e| panic!("{e}\n{}", d.logs()))
        .status
    };
    let hub = &d.testbed.hub_ns;
    let statuses: Vec<u16> = (0..11).map(|_| call(hub, api, "wrong")).collect();
    assert_eq!(statuses[..10], [403; 10], "{statuses:?}");
    assert_eq!(statuses[10], 429, "the hub is blocked after ten failures");
    assert_eq!(
        call(&d.testbed.gw_ns, local, "wrong"),
        403,
        "a local caller is not blocked by the hub's failures\n{}",
        d.logs()
    );
    let token = fixture_value("GC_GATEWAY_TOKEN").unwrap();
    assert_eq!(call(hub, api, &token), 200);
    assert!(
        d.companion
            .as_ref()
            .unwrap()
            .log()
            .lines()
            .any(|l| l.contains("bad token") && l.contains("10.8.0.1")),
        "the companion logs the hub's address for its failures\n{}",
        d.logs()
    );
}
