//! The GateControl client and the sync/heartbeat loops against the fake GateControl server,
//! which replays the real fixtures and records every request byte for byte.

mod fake_gatecontrol;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fake_gatecontrol::{fixture_dir, FakeGateControl, Fault, Recorded};
use gatelet_agent_api::env::{EnvFile, GatewayEnv, Secret};
use gatelet_companion::client::RateInfo;
use gatelet_companion::client::{CheckOutcome, Client, ClientError, USER_AGENT};
use gatelet_companion::state::Shared;
use gatelet_companion::sync::{
    ApplyOutcome, Budget, Class, HeartbeatLoop, PushSignal, SharedBudget, SyncLoop,
};

const HASH_BEFORE: &str = "sha256:7a03de71d95adb86fda87c5bfebc7791915b233fd9c035769ee0cc3ecca9fca0";
const HASH_AFTER: &str = "sha256:826bd13fe367fe929b269438284a80c5078af728de0feceb5bfade3f6cdce93f";

fn env_text() -> String {
    std::fs::read_to_string(fixture_dir().join("gateway-env.txt")).expect("fixture gateway-env.txt")
}

/// The token of the fixture gateway.env, through the real parser.
fn token_from(text: &str) -> Secret {
    let file = EnvFile::parse(text).expect("fixture parses");
    GatewayEnv::from_file(&file)
        .expect("fixture validates")
        .api_token
        .expect("fixture has GC_API_TOKEN")
}

fn fixture_token() -> Secret {
    token_from(&env_text())
}

fn client(server: &FakeGateControl) -> Client {
    Client::new(&format!("{}/", server.url()), fixture_token())
}

fn assert_common_headers(r: &Recorded) {
    let token = fixture_token();
    assert_eq!(
        r.header("Authorization"),
        Some(format!("Bearer {}", token.expose()).as_str()),
        "exactly one Authorization header with the Bearer scheme"
    );
    assert_eq!(r.header("Accept"), Some("application/json"));
    assert_eq!(r.header("User-Agent"), Some(USER_AGENT));
    assert!(USER_AGENT.starts_with("gatelet/"));
    assert!(
        r.header_all("X-Gateway-Token").is_empty(),
        "push token never sent"
    );
}

#[test]
fn check_echoes_the_stored_hash_byte_for_byte_and_sends_exact_headers() {
    let server = FakeGateControl::start_default().unwrap();
    let c = client(&server);
    let (outcome, rate) = c.check(Some(HASH_BEFORE)).unwrap();
    assert_eq!(outcome, CheckOutcome::Unchanged, "304 is Unchanged");
    assert_eq!(rate.limit, Some(100));
    assert_eq!(rate.remaining, Some(99), "304 counts against the limit");
    assert!(rate.reset_s.is_some_and(|r| r <= 900));

    let reqs = server.requests();
    assert_eq!(reqs.len(), 1);
    let r = &reqs[0];
    assert_eq!(r.method, "GET");
    assert_eq!(r.path(), "/api/v1/gateway/config/check", "no double slash");
    assert_eq!(
        r.raw_query(),
        Some("hash=sha256%3A7a03de71d95adb86fda87c5bfebc7791915b233fd9c035769ee0cc3ecca9fca0")
    );
    assert_eq!(r.query_param("hash").as_deref(), Some(HASH_BEFORE));
    assert_common_headers(r);
    assert!(r.header_all("Content-Type").is_empty());
    assert!(r.body.is_empty());
    assert_eq!(r.status, 304);
}

#[test]
fn odd_stored_hash_is_echoed_exactly_and_changed_hash_is_returned() {
    let server = FakeGateControl::start_default().unwrap();
    let c = client(&server);
    // Whatever the server once gave is sent back as is, even characters that need escaping.
    let odd = "sha256:AB+/= &x";
    let (outcome, _) = c.check(Some(odd)).unwrap();
    assert_eq!(outcome, CheckOutcome::Changed(HASH_BEFORE.into()));
    assert_eq!(
        server.requests()[0].query_param("hash").as_deref(),
        Some(odd)
    );
    // No stored hash: no parameter; the server answers with its hash.
    let (outcome, _) = c.check(None).unwrap();
    assert_eq!(outcome, CheckOutcome::Changed(HASH_BEFORE.into()));
    assert_eq!(server.requests()[1].target, "/api/v1/gateway/config/check");
}

#[test]
fn change_leads_to_changed_hash_then_fetch_of_the_new_document() {
    let server = FakeGateControl::start_default().unwrap();
    let c = client(&server);
    server
        .set_config_fixture("gateway-config-after-change.json")
        .unwrap();
    let (outcome, _) = c.check(Some(HASH_BEFORE)).unwrap();
    assert_eq!(outcome, CheckOutcome::Changed(HASH_AFTER.into()));
    let (doc, rate) = c.fetch_config().unwrap();
    let want = std::fs::read(fixture_dir().join("gateway-config-after-change.json")).unwrap();
    assert_eq!(doc, want, "document returned raw, byte for byte");
    assert_eq!(rate.remaining, Some(98));
    let reqs = server.requests();
    assert_eq!(reqs[1].method, "GET");
    assert_eq!(reqs[1].target, "/api/v1/gateway/config");
    assert_common_headers(&reqs[1]);
}

#[test]
fn heartbeat_is_posted_as_json_with_exact_headers() {
    let server = FakeGateControl::start_default().unwrap();
    let c = client(&server);
    let body = std::fs::read(fixture_dir().join("heartbeat-request.json")).unwrap();
    let rate = c.heartbeat(&body).unwrap();
    assert_eq!(rate.remaining, Some(99));
    let r = &server.requests()[0];
    assert_eq!(r.method, "POST");
    assert_eq!(r.target, "/api/v1/gateway/heartbeat");
    assert_common_headers(r);
    assert_eq!(r.header("Content-Type"), Some("application/json"));
    assert_eq!(
        r.header("Content-Length"),
        Some(body.len().to_string().as_str())
    );
    assert_eq!(r.body, body);
    let stored = server.heartbeats();
    let sent: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(stored, vec![sent], "stored as sent, not as {{}}");
}

#[test]
fn heartbeat_type_error_is_a_status_error_with_the_servers_message() {
    let server = FakeGateControl::start_default().unwrap();
    let err = client(&server)
        .heartbeat(br#"{"uptime_s":"12"}"#)
        .unwrap_err();
    match err {
        ClientError::Status {
            code: 400, body, ..
        } => {
            assert!(body.contains("uptime_s must be number"), "{body}")
        }
        e => panic!("unexpected {e:?}"),
    }
}

#[test]
fn rate_limit_429_is_reported_with_retry_after() {
    let server = FakeGateControl::start_default().unwrap();
    server.set_rate_limit(3, Duration::from_secs(900));
    let c = client(&server);
    for left in [2, 1, 0] {
        let (_, rate) = c.check(Some(HASH_BEFORE)).unwrap();
        assert_eq!(rate.remaining, Some(left));
    }
    match c.check(Some(HASH_BEFORE)).unwrap_err() {
        ClientError::RateLimited {
            retry_after_s,
            rate,
            ..
        } => {
            let ra = retry_after_s.expect("Retry-After");
            assert!((890..=900).contains(&ra), "Retry-After {ra}");
            assert_eq!(rate.remaining, Some(0));
        }
        e => panic!("unexpected {e:?}"),
    }
}

#[test]
fn auth_errors_surface_the_servers_error_string() {
    let server = FakeGateControl::start_default().unwrap();
    let other = env_text().replace(
        "gc_gw_0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        "gc_gw_1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a",
    );
    let c = Client::new(&server.url(), token_from(&other));
    let err = c.check(Some(HASH_BEFORE)).unwrap_err();
    assert_eq!(
        err,
        ClientError::Forbidden {
            what: "config check",
            error: "invalid_token".into()
        }
    );
    let shown = err.to_string();
    assert!(shown.contains("invalid_token"), "{shown}");
    assert!(
        !shown.contains("1a1a1a"),
        "the token is never shown: {shown}"
    );
    assert!(!format!("{c:?}").contains("1a1a1a"), "nor in Debug");
    // A failed answer does not count against the limit.
    let (_, rate) = client(&server).check(Some(HASH_BEFORE)).unwrap();
    assert_eq!(rate.remaining, Some(99));
}

#[test]
fn connection_cut_mid_response_is_not_reused() {
    let server = FakeGateControl::start_default().unwrap();
    let c = client(&server);
    c.fetch_config().unwrap();
    c.fetch_config().unwrap();
    let reqs = server.requests();
    assert_eq!(
        reqs[0].conn, reqs[1].conn,
        "keep-alive reuses a healthy connection"
    );

    server.inject(Fault::TruncateBody);
    let err = c.fetch_config().unwrap_err();
    assert!(matches!(err, ClientError::Transport { .. }), "{err:?}");

    let (doc, _) = c
        .fetch_config()
        .expect("the next call works on a new connection");
    assert_eq!(doc, server.config());
    let reqs = server.requests();
    assert_eq!(reqs.len(), 4);
    assert_eq!(
        reqs[2].conn, reqs[1].conn,
        "the cut answer came on the pooled one"
    );
    assert_ne!(
        reqs[3].conn, reqs[2].conn,
        "the broken connection was not reused"
    );
}

#[test]
fn connection_closed_without_answer_fails_once_then_recovers() {
    let server = FakeGateControl::start_default().unwrap();
    let c = client(&server);
    c.check(Some(HASH_BEFORE)).unwrap();
    server.inject(Fault::CloseWithoutAnswer);
    assert!(matches!(
        c.check(Some(HASH_BEFORE)),
        Err(ClientError::Transport { .. })
    ));
    c.check(Some(HASH_BEFORE)).unwrap();
    let reqs = server.requests();
    assert_ne!(reqs[2].conn, reqs[1].conn);
}

/// Runs the sync and heartbeat loops on threads; stops and joins them on drop.
struct Loops {
    shutdown: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
    push: PushSignal,
    shared: Shared,
    applied: Arc<Mutex<Vec<String>>>,
}

impl Drop for Loops {
    fn drop(&mut self) {
        self.shutdown.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn start_loops(server: &FakeGateControl, stored_hash: Option<&str>, heartbeats: bool) -> Loops {
    let budget = Budget::new(Duration::from_secs(30)).shared();
    start_loops_with(server, stored_hash, heartbeats, budget)
}

fn start_loops_with(
    server: &FakeGateControl,
    stored_hash: Option<&str>,
    heartbeats: bool,
    budget: SharedBudget,
) -> Loops {
    let shutdown = Arc::new(AtomicBool::new(false));
    let push = PushSignal::new();
    let hb_now = PushSignal::new();
    let shared = Shared::default();
    let applied = Arc::new(Mutex::new(Vec::new()));
    let c = client(server);
    let sink = {
        let applied = applied.clone();
        move |raw: &[u8]| {
            let hash = serde_json::from_slice::<serde_json::Value>(raw)
                .ok()
                .and_then(|v| v.get("config_hash")?.as_str().map(str::to_owned));
            match hash {
                Some(hash) => {
                    applied.lock().unwrap().push(hash.clone());
                    ApplyOutcome::Applied { hash }
                }
                None => ApplyOutcome::Rejected {
                    hash: None,
                    reason: "no config_hash".into(),
                },
            }
        }
    };
    let mut threads = Vec::new();
    {
        let mut sync = SyncLoop::new(
            c.clone(),
            stored_hash.map(str::to_owned),
            budget.clone(),
            sink,
            shared.clone(),
            push.clone(),
            hb_now.clone(),
        );
        let shutdown = shutdown.clone();
        threads.push(std::thread::spawn(move || sync.run(&shutdown)));
    }
    if heartbeats {
        let shared_hb = shared.clone();
        let mut hb = HeartbeatLoop::new(
            c,
            budget,
            move || {
                let hash = shared_hb.snapshot().sync.config_hash;
                serde_json::to_vec(&serde_json::json!({"config_hash": hash})).unwrap_or_default()
            },
            shared.clone(),
            hb_now,
        );
        let shutdown = shutdown.clone();
        threads.push(std::thread::spawn(move || hb.run(&shutdown)));
    }
    Loops {
        shutdown,
        threads,
        push,
        shared,
        applied,
    }
}

fn checks(reqs: &[Recorded]) -> Vec<&Recorded> {
    reqs.iter()
        .filter(|r| r.path() == "/api/v1/gateway/config/check")
        .collect()
}

#[test]
fn sync_loop_fetches_applies_and_follows_a_push_within_a_second() {
    let server = FakeGateControl::start_default().unwrap();
    let loops = start_loops(&server, None, true);
    // Boot: check without a hash, fetch, apply, heartbeat carrying the new hash.
    server
        .wait_for(Duration::from_secs(5), |r| {
            r.iter().any(|r| {
                r.path() == "/api/v1/gateway/heartbeat"
                    && String::from_utf8_lossy(&r.body).contains(HASH_BEFORE)
            })
        })
        .expect("heartbeat with the applied hash");
    assert_eq!(*loops.applied.lock().unwrap(), vec![HASH_BEFORE.to_owned()]);
    let snap = loops.shared.snapshot();
    assert_eq!(snap.sync.config_hash.as_deref(), Some(HASH_BEFORE));
    assert_eq!(snap.sync.state, "in_sync");
    assert_eq!(snap.sync.mode, "server");
    assert!(snap.heartbeat.as_ref().is_some_and(|h| h.ok));
    let reqs = server.requests();
    // The counters behind /metrics: one fetch at boot, the checks the server saw, no failure.
    let c = snap.counters;
    assert_eq!(
        (c.sync_fetches, c.sync_fetch_failures, c.sync_check_failures),
        (1, 0, 0),
        "{c:?}"
    );
    assert!(
        c.sync_checks >= 1 && c.sync_checks <= checks(&reqs).len() as u64,
        "{c:?}"
    );
    assert!(c.heartbeats_ok >= 1 && c.heartbeats_failed == 0, "{c:?}");
    // Without a stored hash the first check carries no parameter.
    assert_eq!(checks(&reqs)[0].target, "/api/v1/gateway/config/check");
    for r in &reqs {
        assert_common_headers(r);
        if r.method == "POST" {
            assert_eq!(r.header("Content-Type"), Some("application/json"));
        }
    }

    // Push after a change: the document is fetched within 1 s (a push fetches rather than
    // checks: the server pushes changes its hash does not cover, such as backend_https).
    std::thread::sleep(Duration::from_millis(300));
    server
        .set_config_fixture("gateway-config-after-change.json")
        .unwrap();
    let before = server.requests().len();
    let pushed = Instant::now();
    loops.push.notify();
    let reqs = server
        .wait_for(Duration::from_secs(3), |r| {
            r[before..]
                .iter()
                .any(|r| r.target == "/api/v1/gateway/config")
        })
        .expect("fetch after push");
    assert!(
        pushed.elapsed() < Duration::from_secs(1),
        "{:?}",
        pushed.elapsed()
    );
    assert!(
        checks(&reqs[before..]).is_empty(),
        "no check needed before the fetch"
    );
    let deadline = Instant::now() + Duration::from_secs(3);
    while loops.shared.snapshot().sync.config_hash.as_deref() != Some(HASH_AFTER) {
        assert!(Instant::now() < deadline, "new hash never stored");
        std::thread::sleep(Duration::from_millis(10));
    }
    // And an immediate heartbeat with the new hash.
    server
        .wait_for(Duration::from_secs(3), |r| {
            r.iter().any(|r| {
                r.path() == "/api/v1/gateway/heartbeat"
                    && String::from_utf8_lossy(&r.body).contains(HASH_AFTER)
            })
        })
        .expect("heartbeat with the new hash at once");
}

#[test]
fn sync_loop_push_reaches_the_server_within_one_second() {
    let server = FakeGateControl::start_default().unwrap();
    let loops = start_loops(&server, Some(HASH_BEFORE), false);
    server
        .wait_for(Duration::from_secs(5), |r| checks(r).len() == 1)
        .expect("boot check");
    std::thread::sleep(Duration::from_millis(500));
    let pushed = Instant::now();
    loops.push.notify();
    server
        .wait_for(Duration::from_secs(2), |r| {
            r.iter().any(|r| r.target == "/api/v1/gateway/config")
        })
        .expect("fetch after push");
    let took = pushed.elapsed();
    assert!(took < Duration::from_secs(1), "push to fetch took {took:?}");
    assert_eq!(loops.shared.snapshot().sync.state, "in_sync");
}

const HEARTBEAT_PATH: &str = "/api/v1/gateway/heartbeat";
const CONFIG_PATH: &str = "/api/v1/gateway/config";

/// Issue 8 item 6 against the real loops and client: 25 pushes, 120 ms apart (the real
/// burst was 25 in 28 s; the loops see the same: each push arrives while idle or during a
/// fetch). Returns the requests sent from the first push until 3 s after the last apply,
/// and the server's final hash.
fn push_burst(server: &FakeGateControl, change_hash: bool) -> (Vec<Recorded>, String) {
    let loops = start_loops(server, None, true);
    server
        .wait_for(Duration::from_secs(5), |r| {
            r.iter().any(|r| {
                r.path() == HEARTBEAT_PATH && String::from_utf8_lossy(&r.body).contains(HASH_BEFORE)
            })
        })
        .expect("boot: fetch, apply, heartbeat with the hash");
    std::thread::sleep(Duration::from_millis(300));
    let before = server.requests().len();
    let base: serde_json::Value = serde_json::from_slice(&server.config()).unwrap();
    for i in 0..25 {
        if change_hash {
            let mut doc = base.clone();
            doc["config_hash"] = format!("sha256:burst-{i:02}").into();
            server
                .set_config(serde_json::to_vec(&doc).unwrap())
                .unwrap();
        }
        loops.push.notify();
        std::thread::sleep(Duration::from_millis(120));
    }
    let want = server.config_hash();
    let deadline = Instant::now() + Duration::from_secs(5);
    while loops.applied.lock().unwrap().last() != Some(&want) {
        assert!(Instant::now() < deadline, "the last edit was never applied");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_secs(3));
    let reqs = server.requests()[before..].to_vec();
    drop(loops);
    (reqs, want)
}

#[test]
fn push_burst_with_an_unchanged_hash_costs_no_heartbeat() {
    let server = FakeGateControl::start_default().unwrap();
    let (reqs, _) = push_burst(&server, false);
    let count = |p: &str| reqs.iter().filter(|r| r.path() == p).count();
    eprintln!(
        "25 pushes, hash unchanged: {} fetches, {} heartbeats, {} checks",
        count(CONFIG_PATH),
        count(HEARTBEAT_PATH),
        checks(&reqs).len()
    );
    assert_eq!(
        count(HEARTBEAT_PATH),
        0,
        "no heartbeat for a hash already applied"
    );
    let fetches = count(CONFIG_PATH);
    assert!((1..=25).contains(&fetches), "{fetches} fetches");
    assert!(reqs.iter().all(|r| r.status < 400));
}

#[test]
fn push_burst_with_new_hashes_costs_one_heartbeat_with_the_final_hash() {
    let server = FakeGateControl::start_default().unwrap();
    let (reqs, want) = push_burst(&server, true);
    let heartbeats: Vec<&Recorded> = reqs.iter().filter(|r| r.path() == HEARTBEAT_PATH).collect();
    eprintln!(
        "25 pushes, 25 new hashes: {} fetches, {} heartbeats",
        reqs.iter().filter(|r| r.path() == CONFIG_PATH).count(),
        heartbeats.len()
    );
    // One early heartbeat answers the whole burst, 1.5 s after its last apply, with the
    // final hash.
    assert_eq!(heartbeats.len(), 1, "one heartbeat for the burst");
    let body = String::from_utf8_lossy(&heartbeats[0].body);
    assert!(
        body.contains(&want),
        "the burst's final hash {want}: {body}"
    );
    assert!(reqs.iter().all(|r| r.status < 400));
}

#[test]
fn server_counting_more_remaining_than_our_log_wins_and_heartbeats_go() {
    let server = FakeGateControl::start_default().unwrap();
    // Our log is full (its requests failed, or the server's window restarted), and the
    // server's last answer said 24 remain for 600 s: the issue's 118 s of silence.
    let mut budget = Budget::new(Duration::from_secs(30));
    let now = Instant::now();
    while budget.try_acquire(Class::Sync, now) {}
    while budget.try_acquire(Class::Heartbeat, now) {}
    assert_eq!(budget.remaining(now), 0);
    budget.observe(
        now,
        &RateInfo {
            limit: Some(100),
            remaining: Some(24),
            reset_s: Some(600),
            retry_after_s: None,
        },
    );
    let loops = start_loops_with(&server, Some(HASH_BEFORE), true, budget.shared());
    let reqs = server
        .wait_for(Duration::from_secs(3), |r| {
            r.iter().any(|r| r.path() == HEARTBEAT_PATH)
        })
        .expect("a heartbeat within 3 s");
    assert!(reqs.iter().all(|r| r.status == 200), "no 429");
    // The server has the request; the companion records the answer a moment later (longer on a
    // loaded machine): wait for it, bounded.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !loops.shared.snapshot().heartbeat.is_some_and(|h| h.ok) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        loops.shared.snapshot().heartbeat.is_some_and(|h| h.ok),
        "heartbeat answered"
    );
}

#[test]
fn a_heartbeat_the_server_did_not_get_is_retried_after_5_s() {
    let server = FakeGateControl::start_default().unwrap();
    let loops = start_loops(&server, None, true);
    server
        .wait_for(Duration::from_secs(5), |r| {
            r.iter().any(|r| {
                r.path() == HEARTBEAT_PATH && String::from_utf8_lossy(&r.body).contains(HASH_BEFORE)
            })
        })
        .expect("boot: fetch, apply, heartbeat with the hash");
    // A change and its push; once fetched, the early heartbeat meets a 503.
    server
        .set_config_fixture("gateway-config-after-change.json")
        .unwrap();
    let before = server.requests().len();
    loops.push.notify();
    server
        .wait_for(Duration::from_secs(3), |r| {
            r[before..].iter().any(|r| r.path() == CONFIG_PATH)
        })
        .expect("fetch after the push");
    server.inject(Fault::Status(503));
    let injected = Instant::now();
    let reqs = server
        .wait_for(Duration::from_secs(10), |r| {
            r[before..]
                .iter()
                .filter(|r| r.path() == HEARTBEAT_PATH)
                .count()
                >= 2
        })
        .expect("the failed heartbeat is retried");
    let beats: Vec<&Recorded> = reqs[before..]
        .iter()
        .filter(|r| r.path() == HEARTBEAT_PATH)
        .collect();
    assert_eq!(beats[0].status, 503);
    assert_eq!(beats[1].status, 200);
    assert!(String::from_utf8_lossy(&beats[1].body).contains(HASH_AFTER));
    // The early heartbeat 1.5 s after the apply, its retry 5 s later.
    let took = injected.elapsed();
    assert!(
        took >= Duration::from_secs(5) && took < Duration::from_secs(9),
        "retried {took:?} after the fetch"
    );
    // The 503 is counted as a failed heartbeat (the retry's answer may still be on its way).
    let c = loops.shared.snapshot().counters;
    assert!(c.heartbeats_failed >= 1 && c.heartbeats_ok >= 1, "{c:?}");
}

#[test]
fn sync_loop_honours_429_retry_after() {
    let server = FakeGateControl::start_default().unwrap();
    // Other gateways behind the same address used the whole window: the first answers are
    // 429 with Retry-After ~900 s.
    server.add_foreign_requests(100);
    let loops = start_loops(&server, Some(HASH_BEFORE), true);
    server
        .wait_for(Duration::from_secs(5), |r| {
            r.iter().any(|r| r.status == 429)
        })
        .expect("a first request");
    // Pushes do not break through the pause either.
    for _ in 0..5 {
        loops.push.notify();
        std::thread::sleep(Duration::from_millis(300));
    }
    let reqs = server.requests();
    // The first check, and the first heartbeat if it went out before the pause began.
    assert!(
        !reqs.is_empty() && reqs.len() <= 2 && reqs.iter().all(|r| r.status == 429),
        "nothing sent after a 429: {:?}",
        reqs.iter()
            .map(|r| (&r.target, r.status))
            .collect::<Vec<_>>()
    );
    let snap = loops.shared.snapshot();
    assert_eq!(snap.sync.state, "rate_limited");
    assert_eq!(snap.sync.budget_remaining, Some(0));
    assert!(snap.heartbeat.is_none_or(|h| !h.ok));
}

#[test]
fn sync_loop_surfaces_auth_errors_in_status_and_backs_off() {
    let server = FakeGateControl::start_default().unwrap();
    let other = env_text().replace(
        "gc_gw_0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        "gc_gw_1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a",
    );
    let shutdown = Arc::new(AtomicBool::new(false));
    let shared = Shared::default();
    let mut sync = SyncLoop::new(
        Client::new(&server.url(), token_from(&other)),
        None,
        Budget::new(Duration::from_secs(30)).shared(),
        |_: &[u8]| ApplyOutcome::Failed {
            reason: "unreachable".into(),
        },
        shared.clone(),
        PushSignal::new(),
        PushSignal::new(),
    );
    let t = {
        let shutdown = shutdown.clone();
        std::thread::spawn(move || sync.run(&shutdown))
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut snap = shared.snapshot();
    while snap.sync.last_error.is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
        snap = shared.snapshot();
    }
    shutdown.store(true, Ordering::SeqCst);
    t.join().unwrap();
    assert_eq!(snap.sync.state, "backing_off");
    let err = snap.sync.last_error.unwrap_or_default();
    assert!(err.contains("invalid_token"), "{err}");
}

/// Raw calls, to check that the fake enforces the real server's rules (fixtures).
fn raw(
    server: &FakeGateControl,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, Vec<(String, String)>, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let url = format!("{}{path}", server.url());
    let mut resp = if method == "GET" {
        let mut req = agent.get(&url);
        for (n, v) in headers {
            req = req.header(*n, *v);
        }
        req.call().unwrap()
    } else {
        let mut req = agent.post(&url);
        for (n, v) in headers {
            req = req.header(*n, *v);
        }
        req.send(body).unwrap()
    };
    let status = resp.status().as_u16();
    let hs = resp
        .headers()
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_str().unwrap_or("").to_owned()))
        .collect();
    let body = resp.body_mut().read_to_string().unwrap_or_default();
    (status, hs, body)
}

fn has_header(hs: &[(String, String)], name: &str) -> bool {
    hs.iter().any(|(n, _)| n.eq_ignore_ascii_case(name))
}

#[test]
fn fake_server_enforces_the_bearer_scheme_and_token_format() {
    let server = FakeGateControl::start_default().unwrap();
    let tok = fixture_token();
    let cases: [(&str, String, u16, &str); 5] = [
        ("none", String::new(), 401, "missing_bearer_token"),
        (
            "lowercase scheme",
            format!("bearer {}", tok.expose()),
            401,
            "missing_bearer_token",
        ),
        (
            "push token",
            "Bearer fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210".into(),
            401,
            "invalid_token_format",
        ),
        (
            "unknown",
            "Bearer gc_gw_1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a".into(),
            403,
            "invalid_token",
        ),
        ("valid", format!("Bearer {}", tok.expose()), 200, ""),
    ];
    for (name, auth, want, error) in cases {
        let headers: Vec<(&str, &str)> = if auth.is_empty() {
            vec![]
        } else {
            vec![("Authorization", auth.as_str())]
        };
        let (status, hs, body) = raw(&server, "GET", "/api/v1/gateway/config", &headers, b"");
        assert_eq!(status, want, "{name}");
        assert!(body.contains(error), "{name}: {body}");
        assert!(
            has_header(&hs, "RateLimit-Remaining"),
            "{name}: rate headers on every answer"
        );
    }
    let auth = format!("Bearer {}", tok.expose());
    let (status, _, body) = raw(
        &server,
        "GET",
        "/api/v1/gateway/nope",
        &[("Authorization", &auth)],
        b"",
    );
    assert_eq!(status, 401);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body).unwrap(),
        serde_json::json!({"ok": false, "error": "Unauthorized"})
    );
}

#[test]
fn fake_server_stores_heartbeat_without_json_content_type_as_empty_and_caps_bodies() {
    let server = FakeGateControl::start_default().unwrap();
    let auth = format!("Bearer {}", fixture_token().expose());
    let (status, _, _) = raw(
        &server,
        "POST",
        "/api/v1/gateway/heartbeat",
        &[("Authorization", &auth), ("Content-Type", "text/plain")],
        br#"{"hostname":"x"}"#,
    );
    assert_eq!(status, 200);
    assert_eq!(server.heartbeats(), vec![serde_json::json!({})]);
    let big = vec![b' '; 16 * 1024 + 1];
    let (status, hs, body) = raw(
        &server,
        "POST",
        "/api/v1/gateway/heartbeat",
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json"),
        ],
        &big,
    );
    assert_eq!(status, 413);
    assert!(body.contains("Payload too large"));
    assert!(
        !has_header(&hs, "RateLimit-Remaining"),
        "413 comes before the limiter, as in the fixture"
    );
}

#[test]
fn fake_server_answers_429_with_the_fixture_headers_once_the_limit_is_used() {
    let server = FakeGateControl::start_default().unwrap();
    server.add_foreign_requests(100);
    let auth = format!("Bearer {}", fixture_token().expose());
    let (status, hs, body) = raw(
        &server,
        "GET",
        "/api/v1/gateway/config/check",
        &[("Authorization", &auth)],
        b"",
    );
    assert_eq!(status, 429);
    assert!(body.contains("Too many requests"), "{body}");
    for h in [
        "RateLimit-Policy",
        "RateLimit-Limit",
        "RateLimit-Remaining",
        "RateLimit-Reset",
        "Retry-After",
    ] {
        assert!(has_header(&hs, h), "{h} missing");
    }
}

#[test]
fn oversized_config_document_is_refused_not_buffered() {
    let server = FakeGateControl::start_default().unwrap();
    let padding = "x".repeat(5 * 1024 * 1024);
    let doc = serde_json::json!({"config_hash": HASH_AFTER, "routes": [], "padding": padding});
    server.set_config(doc.to_string().into_bytes()).unwrap();
    let err = client(&server).fetch_config().unwrap_err();
    assert!(
        matches!(err, ClientError::TooLarge { limit, .. } if limit == 4 * 1024 * 1024),
        "{err:?}"
    );
}
