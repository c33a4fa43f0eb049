//! The store survives SIGKILL at any point of a write.
//!
//! `store_keeps_a_valid_last_good_config_across_sigkills` re-executes this test binary with
//! [`CHILD_ENV`] set, which makes `child_write_loop` (and only it) write configs, rejections and
//! events to the store in a tight loop, printing `committed <n>` after each config is saved. The
//! parent kills it with SIGKILL after a random delay (sometimes right after start, to hit
//! schema creation and hot-journal recovery, usually after the first commit), then opens the
//! store and checks that:
//! - it opens without being treated as corrupt;
//! - `last_good()` is complete and is exactly config `n` of the writer's sequence (raw text,
//!   translated agent config and hashes all match a fresh validation of that text);
//! - `n` is the last config the child reported as committed, or the one after it (committed
//!   but killed before printing): nothing committed is lost and nothing goes backwards;
//! - history and events are readable and within their bounds.
//!
//! Under qemu-user, set `GATELET_CRASH_TEST_RUNNER` (e.g. `qemu-aarch64 -L /usr/aarch64-linux-gnu`)
//! so the child is started through the emulator.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use gatelet_companion::config::{parse_document, ReservedPorts};
use gatelet_companion::state::RejectedRoute;
use gatelet_companion::store::{Store, EVENTS_LIMIT, HISTORY_LIMIT};

/// Set (to the state directory) in the child: run the write loop.
const CHILD_ENV: &str = "GATELET_STORE_CRASH_CHILD";
/// Optional emulator command line to start the child through.
const RUNNER_ENV: &str = "GATELET_CRASH_TEST_RUNNER";
/// Optional seed, to replay a failing run.
const SEED_ENV: &str = "GATELET_CRASH_SEED";
/// SIGKILLs delivered.
const KILLS: usize = 200;
/// Longest random delay before a kill, in milliseconds.
const MAX_KILL_DELAY_MS: u64 = 40;
/// One kill in this many lands at a random time after spawn, without waiting for a commit.
const EARLY_KILL_EVERY: usize = 4;
/// Longest wait for the child's first commit.
const FIRST_COMMIT_TIMEOUT: Duration = Duration::from_secs(10);
/// The whole test must finish within this.
const DEADLINE: Duration = Duration::from_secs(120);
/// The child stops by itself after this, should the parent vanish.
const CHILD_LIFETIME: Duration = Duration::from_secs(30);
/// The child stops by itself after this many configs.
const CHILD_MAX_ITERATIONS: u64 = 1_000_000;

/// Config `n` of the writer's sequence: deterministic, `peer_id` = `n`, and between 1 and 150
/// routes so that some configs span several database pages and some fit in one.
fn config_doc(n: u64) -> String {
    let routes = 1 + (n * 37) % 150;
    let http: Vec<String> = (0..routes)
        .map(|i| {
            format!(
                r#"{{"id":{},"domain":"svc{i}.n{n}.lan","target_kind":"gateway","target_lan_host":"192.168.{}.{}","target_lan_port":{},"protocol":"http","wol_enabled":{},"wol_mac":"AA:BB:CC:00:{:02X}:{:02X}"}}"#,
                i + 1,
                i % 250,
                n % 250 + 1,
                1000 + (n + i) % 60000,
                i % 3 == 0,
                i % 256,
                n % 256,
            )
        })
        .collect();
    let l4 = format!(
        r#"{{"id":1,"listen_port":{},"target_lan_host":"10.0.0.{}","target_lan_port":22,"wol_enabled":false}}"#,
        20000 + n % 10000,
        n % 250 + 1
    );
    format!(
        r#"{{"config_hash_version":2,"peer_id":{n},"routes":[{}],"l4_routes":[{l4}],"egress_routes":[],"config_hash":"sha256:{n:064x}"}}"#,
        http.join(",")
    )
}

/// The helper half: a no-op unless started by the parent with [`CHILD_ENV`].
#[test]
fn child_write_loop() {
    let Some(dir) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let mut store = Store::open(Path::new(&dir)).unwrap();
    let mut n = match store.last_good().unwrap() {
        Some(c) => peer_id(&c.raw),
        None => 0,
    };
    let started = Instant::now();
    for _ in 0..CHILD_MAX_ITERATIONS {
        if started.elapsed() > CHILD_LIFETIME {
            break;
        }
        n += 1;
        let raw = config_doc(n);
        let v = parse_document(&raw, ReservedPorts::default()).unwrap();
        assert!(store.save_applied(&raw, &v).unwrap());
        // Flushed at once: the parent counts on every reported commit having happened.
        let mut out = std::io::stdout().lock();
        writeln!(out, "committed {n}").unwrap();
        out.flush().unwrap();
        drop(out);
        if n % 3 == 0 {
            let routes = vec![RejectedRoute {
                kind: "http".into(),
                id: Some(n),
                reason: format!("rejected in round {n}"),
            }];
            store
                .record_rejected(
                    Some(&format!("sha256:bad{n}")),
                    "all routes rejected",
                    &routes,
                )
                .unwrap();
        }
        store
            .add_event("sync_error", &format!("error class {}", n % 4))
            .unwrap();
        store.add_event("push", &format!("push {n}")).unwrap();
    }
}

fn peer_id(raw: &str) -> u64 {
    let doc: serde_json::Value = serde_json::from_str(raw).unwrap();
    doc["peer_id"].as_u64().unwrap()
}

/// Whether the rollback journal holds an uncommitted transaction (its header starts with the
/// journal magic; in PERSIST mode a commit zeroes it), i.e. the kill landed mid-transaction.
fn journal_is_hot(dir: &Path) -> bool {
    const MAGIC: [u8; 8] = [0xd9, 0xd5, 0x05, 0xf9, 0x20, 0xa1, 0x63, 0xd7];
    std::fs::read(dir.join("gatelet.db-journal")).is_ok_and(|b| b.starts_with(&MAGIC))
}

/// Removes the directory on drop.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Kills and reaps the child on drop (a failing assertion must not leave it running).
struct ChildGuard(Child);

impl ChildGuard {
    fn sigkill(&mut self) {
        // SAFETY: kill(2) on the pid of a child we spawned and have not reaped yet.
        unsafe {
            libc::kill(self.0.id() as libc::pid_t, libc::SIGKILL);
        }
        let _ = self.0.wait();
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_child(dir: &Path) -> ChildGuard {
    let exe = std::env::current_exe().unwrap();
    let mut cmd = match std::env::var(RUNNER_ENV) {
        Ok(runner) if !runner.trim().is_empty() => {
            let mut parts = runner.split_whitespace();
            let mut c = Command::new(parts.next().unwrap_or_default());
            c.args(parts).arg(&exe);
            c
        }
        _ => Command::new(&exe),
    };
    cmd.args([
        "--exact",
        "child_write_loop",
        "--nocapture",
        "--test-threads=1",
    ])
    .env(CHILD_ENV, dir)
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::null());
    ChildGuard(cmd.spawn().unwrap())
}

#[test]
fn store_keeps_a_valid_last_good_config_across_sigkills() {
    let seed = std::env::var(SEED_ENV)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    eprintln!("store crash test seed {seed} (replay with {SEED_ENV}={seed})");
    let mut rng = fastrand::Rng::with_seed(seed);
    let dir = TempDir(
        std::env::temp_dir().join(format!("gatelet-store-crash-{}-{seed}", std::process::id())),
    );
    std::fs::create_dir_all(&dir.0).unwrap();

    let started = Instant::now();
    let mut lkg: Option<u64> = None;
    let mut advanced = 0;
    let mut early = 0;
    let mut hot = 0;
    let mut trail: Vec<(usize, Option<u64>, Option<u64>, u64)> = Vec::new();
    for kill in 0..KILLS {
        assert!(
            started.elapsed() < DEADLINE,
            "only {kill} kills in {DEADLINE:?} (seed {seed})"
        );
        let mut child = spawn_child(&dir.0);
        let stdout = child.0.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                // libtest prints `test child_write_loop ... ` without a newline before the
                // test's own output, so the first report shares its line: find the marker.
                if let Some(n) = line.split("committed ").nth(1) {
                    if let Ok(n) = n.trim().parse::<u64>() {
                        let _ = tx.send(n);
                    }
                }
            }
        });
        let mut first = None;
        if kill % EARLY_KILL_EVERY == 0 {
            early += 1;
        } else {
            let got = rx.recv_timeout(FIRST_COMMIT_TIMEOUT);
            assert!(
                got.is_ok(),
                "kill {kill}: child made no commit (seed {seed})"
            );
            first = got.ok();
        }
        std::thread::sleep(Duration::from_millis(rng.u64(0..=MAX_KILL_DELAY_MS)));
        child.sigkill();
        reader.join().unwrap();
        let reported: Option<u64> = first.into_iter().chain(rx.try_iter()).max();

        if journal_is_hot(&dir.0) {
            hot += 1;
        }
        let store = Store::open(&dir.0).unwrap();
        assert_eq!(
            store.recovered_from(),
            None,
            "kill {kill}: the store was treated as corrupt after SIGKILL (seed {seed})"
        );
        let got = store.last_good().unwrap();
        let floor = reported.or(lkg);
        let Some(cfg) = got else {
            assert_eq!(
                floor, None,
                "kill {kill}: last good config lost (seed {seed})"
            );
            continue;
        };
        let n = peer_id(&cfg.raw);
        assert_eq!(
            cfg.raw,
            config_doc(n),
            "kill {kill}: raw text of config {n}"
        );
        let v = parse_document(&cfg.raw, ReservedPorts::default()).unwrap();
        assert_eq!(cfg.agent, v.agent, "kill {kill}: agent config of {n}");
        assert_eq!(cfg.config_hash, v.config_hash);
        assert_eq!(cfg.canonical_hash, v.canonical_hash);
        assert_eq!(cfg.rejected, v.rejected);
        let base = floor.unwrap_or(0);
        assert!(
            n == base || n == base + 1,
            "kill {kill}: last good is config {n}, but the child had committed {floor:?} \
             (previous last good {lkg:?}, first report {first:?}, seed {seed}; \
             trail (kill, reported, previous, got) {:?})",
            &trail[trail.len().saturating_sub(4)..]
        );
        trail.push((kill, reported, lkg, n));
        if lkg != Some(n) {
            advanced += 1;
        }
        lkg = Some(n);
        let history = store.history(1000).unwrap();
        assert!(history.len() <= HISTORY_LIMIT as usize);
        assert!(store.events(10_000).unwrap().len() <= EVENTS_LIMIT as usize);
    }
    let elapsed = started.elapsed();
    eprintln!(
        "store crash test: {KILLS} SIGKILLs ({early} early, {hot} mid-transaction) in \
         {elapsed:?}, last good advanced {advanced} times, final config {lkg:?}"
    );
    assert!(lkg.is_some(), "the child never committed anything");
    assert!(hot > 0, "no kill landed inside a transaction (seed {seed})");
    assert!(
        advanced > KILLS / 2,
        "kills rarely landed after progress ({advanced} of {KILLS})"
    );
    // Nothing but the database and its journal is left behind.
    let mut names: Vec<String> = std::fs::read_dir(&dir.0)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert!(
        names
            .iter()
            .all(|n| n == "gatelet.db" || n == "gatelet.db-journal"),
        "{names:?}"
    );
}
