//! The resident updater (`gatelet-update --watch`, OpenWrt's procd instance) as a real
//! process: it takes up a request that appears after it started, answers it (here: updates not
//! configured, so at once, without a network) and keeps watching; its memory stays small.

use std::fs;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_gatelet-update");

/// Kills the watcher however the test ends.
struct Watcher(Child);

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `field` (`VmRSS`, `RssAnon`: the heap and stacks, not the mapped binary) of `pid`, KiB.
fn status_kib(pid: u32, field: &str) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|l| l.strip_prefix(field).is_some_and(|r| r.starts_with(':')))
        .unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn wait_for(what: &str, bound: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < bound, "no {what} within {bound:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn last_pull(state: &Path) -> Option<serde_json::Value> {
    let bytes = fs::read(state.join("last-pull")).ok()?;
    serde_json::from_slice(&bytes).ok()
}

#[test]
fn the_update_watcher_answers_each_request_that_appears_and_stays() {
    let d = tempfile::tempdir().unwrap();
    let (state, update, env) = (
        d.path().join("state"),
        d.path().join("update"),
        d.path().join("gateway.env"),
    );
    fs::create_dir_all(&state).unwrap();
    fs::write(&env, "# no GATELET_UPDATE_URL: updates not configured\n").unwrap();
    let mut w = Watcher(
        Command::new(BIN)
            .arg("--env")
            .arg(&env)
            .arg("--state-dir")
            .arg(&state)
            .arg("--update-dir")
            .arg(&update)
            .args(["--restart-command", "/bin/false", "--seed-by-link"])
            .args(["--watch", "1", "--log-level", "warn"])
            .stdin(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let pid = w.0.id();
    // Nothing queued: it looks and waits, writes nothing.
    std::thread::sleep(Duration::from_millis(1500));
    assert!(w.0.try_wait().unwrap().is_none(), "the watcher exited");
    assert!(last_pull(&state).is_none());
    let idle = (status_kib(pid, "VmRSS"), status_kib(pid, "RssAnon"));
    let mut after_first = None;

    let flag = state.join("pending-update");
    for id in ["w-1", "w-2", "w-3", "w-4", "w-5"] {
        fs::write(
            &flag,
            format!(r#"{{"request_id":"{id}","target_version":null}}"#),
        )
        .unwrap();
        // Generous: a loaded CI box; the watcher looks every second.
        wait_for("answer", Duration::from_secs(60), || {
            last_pull(&state).is_some_and(|lp| lp["request_id"] == id)
        });
        let lp = last_pull(&state).unwrap();
        assert_eq!(lp["ok"], false);
        assert!(
            lp["reason"]
                .as_str()
                .unwrap()
                .contains("not configured: set GATELET_UPDATE_URL"),
            "{lp}"
        );
        wait_for("flag removed", Duration::from_secs(10), || !flag.exists());
        assert!(w.0.try_wait().unwrap().is_none(), "the watcher exited");
        after_first.get_or_insert(status_kib(pid, "RssAnon"));
    }
    let after_first = after_first.unwrap();
    let last = (status_kib(pid, "VmRSS"), status_kib(pid, "RssAnon"));
    eprintln!(
        "gatelet-update --watch: idle VmRSS {} KiB (RssAnon {}); after five requests VmRSS {} KiB (RssAnon {}, {after_first} after the first)",
        idle.0, idle.1, last.0, last.1
    );
    // The first request pages in the update code (file-backed); after that, the heap must
    // not grow per request.
    assert!(
        last.1 <= after_first + 256,
        "RssAnon grew from {after_first} to {} KiB over four requests",
        last.1
    );
}
