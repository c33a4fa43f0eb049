//! The `gatelet-companion` binary as a whole, against the fake GateControl server: first sync,
//! heartbeat on the wire, a push through the management API, a bad config that must not
//! replace the last good one, a restart while the server is gone, and a burst of pushes.

mod fake_gatecontrol;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fake_gatecontrol::{fixture_dir, FakeGateControl};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_gatelet-companion");
const HASH_BEFORE: &str = "sha256:7a03de71d95adb86fda87c5bfebc7791915b233fd9c035769ee0cc3ecca9fca0";
const HASH_AFTER: &str = "sha256:826bd13fe367fe929b269438284a80c5078af728de0feceb5bfade3f6cdce93f";
const PUSH_TOKEN: &str = "fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210";

/// A temp dir removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!(
            "gatelet-daemon-{tag}-{}-{}",
            std::process::id(),
            fastrand::u64(..)
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

/// The daemon, killed on drop.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Daemon {
    /// SIGTERM, then wait (at most 10 s) for a clean exit.
    fn stop(mut self) -> std::process::ExitStatus {
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(st) = self.0.try_wait().unwrap() {
                return st;
            }
            assert!(Instant::now() < deadline, "daemon did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Setup {
    dir: TempDir,
    api_port: u16,
    diag_port: u16,
}

impl Setup {
    fn new(tag: &str) -> Setup {
        Setup {
            dir: TempDir::new(tag),
            api_port: free_port(),
            diag_port: free_port(),
        }
    }

    fn env_path(&self) -> PathBuf {
        self.dir.0.join("gateway.env")
    }

    /// Writes the server's fixture gateway.env, pointed at `server_url`.
    fn write_env(&self, server_url: &str) {
        let text = std::fs::read_to_string(fixture_dir().join("gateway-env.txt")).unwrap();
        let text = text
            .replace(
                "GC_SERVER_URL=http://10.8.0.1:3000",
                &format!("GC_SERVER_URL={server_url}"),
            )
            .replace(
                "GC_API_PORT=9876",
                &format!("GC_API_PORT={}", self.api_port),
            )
            .replace("GC_HEARTBEAT_INTERVAL_S=30", "GC_HEARTBEAT_INTERVAL_S=5");
        let text = format!("{text}GATELET_DIAG_LISTEN=127.0.0.1:{}\n", self.diag_port);
        std::fs::write(self.env_path(), text).unwrap();
    }

    fn status_socket(&self) -> PathBuf {
        self.dir.0.join("companion.sock")
    }

    fn start(&self) -> Daemon {
        let child = Command::new(BIN)
            .arg("--env")
            .arg(self.env_path())
            .arg("--state-dir")
            .arg(self.dir.0.join("state"))
            .arg("--control-socket")
            .arg(self.dir.0.join("agent.sock"))
            .arg("--status-socket")
            .arg(self.status_socket())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Daemon(child)
    }

    fn status(&self) -> Value {
        let out = Command::new(BIN)
            .args(["status", "--json", "--status-socket"])
            .arg(self.status_socket())
            .arg("--state-dir")
            .arg(self.dir.0.join("state"))
            .arg("--control-socket")
            .arg(self.dir.0.join("agent.sock"))
            .output()
            .unwrap();
        serde_json::from_slice(&out.stdout).unwrap()
    }

    fn wait_status(&self, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.status();
            if pred(&s) {
                return s;
            }
            assert!(Instant::now() < deadline, "status never matched: {s:#}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// One management API call on loopback; returns status code and JSON body.
    fn mgmt(&self, method: &str, path: &str, token: Option<&str>) -> (u16, Value) {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.api_port));
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let auth = token.map_or(String::new(), |t| format!("X-Gateway-Token: {t}\r\n"));
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut resp = String::new();
        s.read_to_string(&mut resp).unwrap();
        let code = resp[9..12].parse().unwrap();
        let body = resp.split("\r\n\r\n").nth(1).unwrap_or("");
        (code, serde_json::from_str(body).unwrap_or(Value::Null))
    }
}

fn heartbeat_with_hash(server: &FakeGateControl, hash: &str, timeout: Duration) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(hb) = server
            .heartbeats()
            .into_iter()
            .rev()
            .find(|h| h["config_hash"] == hash)
        {
            return hb;
        }
        assert!(
            Instant::now() < deadline,
            "no heartbeat with {hash}: {:?}",
            server.heartbeats().last()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn wait_until_listening(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "management API never listened");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn syncs_heartbeats_follows_a_push_and_survives_the_server_going_away() {
    let server = FakeGateControl::start_default().unwrap();
    let setup = Setup::new("e2e");
    setup.write_env(&server.url());
    let daemon = setup.start();

    // First sync at start, then a heartbeat carrying the fixture's hash.
    let hb = heartbeat_with_hash(&server, HASH_BEFORE, Duration::from_secs(10));
    assert!(hb["http_proxy_healthy"].is_boolean());
    assert!(hb["tcp_listeners"].is_array());
    assert!(hb["uptime_s"].is_number());
    assert_eq!(hb["telemetry"]["os_platform"], "linux");
    assert_eq!(hb["telemetry"]["lan_discovery"], true);
    assert_eq!(
        hb["telemetry"]["lan_discovery_categories"]
            .as_array()
            .map(Vec::len),
        Some(7)
    );
    assert!(hb["telemetry"]["gateway_version"].is_string());
    let sent = server.requests();
    let beat = sent
        .iter()
        .find(|r| r.path() == "/api/v1/gateway/heartbeat")
        .unwrap();
    assert_eq!(beat.header("Content-Type"), Some("application/json"));
    assert!(beat.body.len() <= 16 * 1024);
    let check = sent
        .iter()
        .find(|r| r.path() == "/api/v1/gateway/config/check")
        .unwrap();
    assert_eq!(check.method, "GET");
    assert!(sent.iter().any(|r| r.path() == "/api/v1/gateway/config"));

    // The management API answers on loopback only with the push token.
    wait_until_listening(setup.api_port);
    assert_eq!(
        setup.mgmt("GET", "/api/health", None),
        (200, serde_json::json!({"ok": true}))
    );
    let (code, _) = setup.mgmt("POST", "/api/config-changed", Some(&"0".repeat(64)));
    assert_eq!(code, 403);

    // A push: the new config is fetched and heartbeated at once (well inside 3 s).
    server
        .set_config_fixture("gateway-config-after-change.json")
        .unwrap();
    let pushed = Instant::now();
    let (code, body) = setup.mgmt("POST", "/api/config-changed", Some(PUSH_TOKEN));
    assert_eq!((code, body), (200, serde_json::json!({"ok": true})));
    heartbeat_with_hash(&server, HASH_AFTER, Duration::from_secs(3));
    assert!(pushed.elapsed() < Duration::from_secs(3));
    let status = setup.wait_status(Duration::from_secs(5), |s| {
        s["snapshot"]["sync"]["config_hash"] == HASH_AFTER
    });
    assert_eq!(status["daemon_running"], true);
    assert_eq!(status["last_good_hash"], HASH_AFTER);

    // A document whose every route is bad never replaces the last good config.
    let mut bad: Value =
        serde_json::from_slice(&std::fs::read(fixture_dir().join("gateway-config.json")).unwrap())
            .unwrap();
    for r in bad["l4_routes"].as_array_mut().unwrap() {
        r["target_lan_port"] = Value::from(0);
    }
    bad["routes"][0]["target_lan_port"] = Value::from(70000);
    bad["config_hash"] = Value::from("sha256:badbadbad");
    server
        .set_config(serde_json::to_vec(&bad).unwrap())
        .unwrap();
    setup.mgmt("POST", "/api/config-changed", Some(PUSH_TOKEN));
    let status = setup.wait_status(Duration::from_secs(5), |s| {
        s["history"]
            .as_array()
            .is_some_and(|h| h.iter().any(|e| e["outcome"] == "rejected"))
    });
    assert_eq!(status["last_good_hash"], HASH_AFTER);
    assert_eq!(status["snapshot"]["sync"]["config_hash"], HASH_AFTER);

    // Clean stop, then the server goes away and the gateway reboots.
    assert!(daemon.stop().success());
    drop(server);
    let gone = format!("http://127.0.0.1:{}", free_port());
    setup.write_env(&gone);
    let _daemon = setup.start();
    let status = setup.wait_status(Duration::from_secs(10), |s| s["daemon_running"] == true);
    assert_eq!(status["snapshot"]["sync"]["config_hash"], HASH_AFTER);
    let mut page = String::new();
    let mut s = TcpStream::connect(("127.0.0.1", setup.diag_port)).unwrap();
    write!(s, "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    s.read_to_string(&mut page).unwrap();
    assert!(
        page.contains(&format!("<dt>Config</dt><dd class=\"\">{HASH_AFTER}</dd>")),
        "{page}"
    );
    assert!(
        !page.contains(PUSH_TOKEN) && !page.contains("gc_gw_"),
        "no secrets on the page"
    );
    let routes = &status["snapshot"]["config"]["l4_routes"];
    assert_eq!(routes.as_array().map(Vec::len), Some(3), "{status:#}");
}

#[test]
fn bad_gateway_env_exits_64_naming_line_and_key() {
    let setup = Setup::new("badenv");
    setup.write_env("http://127.0.0.1:9");
    let text = std::fs::read_to_string(setup.env_path()).unwrap();
    std::fs::write(
        setup.env_path(),
        text.replace(
            "WG_SERVER_PUBLIC_KEY=FAKEserverPUBLICkeyFAKEserverPUBLICkeyFAKEE=",
            "WG_SERVER_PUBLIC_KEY=",
        ),
    )
    .unwrap();
    let out = Command::new(BIN)
        .arg("--env")
        .arg(setup.env_path())
        .arg("--state-dir")
        .arg(setup.dir.0.join("state"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("line 19: WG_SERVER_PUBLIC_KEY is empty"),
        "{err}"
    );
    assert!(!Path::new(&setup.dir.0.join("state"))
        .join("gatelet.db")
        .exists());
}

/// Issue 8 item 6 on the whole binary: an admin's burst of edits, each pushed through the
/// management API, costs one early heartbeat, which carries the burst's final hash (it cost
/// one heartbeat per push before, and starved the regular ones of their budget).
#[test]
fn a_burst_of_pushes_costs_one_heartbeat_carrying_the_final_hash() {
    let server = FakeGateControl::start_default().unwrap();
    let setup = Setup::new("burst");
    setup.write_env(&server.url());
    let _daemon = setup.start();
    heartbeat_with_hash(&server, HASH_BEFORE, Duration::from_secs(10));
    wait_until_listening(setup.api_port);
    let before = server.heartbeats().len();
    let base: Value = serde_json::from_slice(&server.config()).unwrap();
    for i in 0..25 {
        let mut doc = base.clone();
        doc["config_hash"] = Value::from(format!("sha256:burst-{i:02}"));
        server
            .set_config(serde_json::to_vec(&doc).unwrap())
            .unwrap();
        let (code, _) = setup.mgmt("POST", "/api/config-changed", Some(PUSH_TOKEN));
        assert_eq!(code, 200);
        std::thread::sleep(Duration::from_millis(120));
    }
    heartbeat_with_hash(&server, "sha256:burst-24", Duration::from_secs(8));
    std::thread::sleep(Duration::from_secs(2));
    let beats: Vec<Value> = server.heartbeats()[before..].to_vec();
    let hashes: Vec<&Value> = beats.iter().map(|h| &h["config_hash"]).collect();
    assert_eq!(hashes, ["sha256:burst-24"], "one heartbeat for the burst");
}

/// Issue 8: a 2 MB bad value is not echoed whole, and a key given twice is refused naming
/// both lines; both stop the daemon with exit 64 and one short line.
#[test]
fn huge_bad_value_and_duplicate_key_in_gateway_env_give_one_short_line() {
    let setup = Setup::new("envlines");
    setup.write_env("http://127.0.0.1:9");
    let text = std::fs::read_to_string(setup.env_path()).unwrap();
    let huge = "9".repeat(2 << 20);
    for (bad, want) in [
        (
            text.replace("GC_PROXY_PORT=8080", &format!("GC_PROXY_PORT={huge}")),
            "GC_PROXY_PORT must be a port from 1 to 65535, not \"99999",
        ),
        (
            format!("{text}GC_PROXY_PORT=8081\n"),
            "GC_PROXY_PORT is given twice, on lines 9 and 25",
        ),
    ] {
        std::fs::write(setup.env_path(), bad).unwrap();
        let out = Command::new(BIN)
            .arg("--env")
            .arg(setup.env_path())
            .arg("--state-dir")
            .arg(setup.dir.0.join("state"))
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(64));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.lines().count(), 1, "{}", &err[..err.len().min(500)]);
        assert!(err.len() < 400, "{} bytes: {}", err.len(), &err[..500]);
        assert!(err.contains(want), "{err}");
    }
}
