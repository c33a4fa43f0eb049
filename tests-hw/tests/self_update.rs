//! Self-update end to end (issue 14, docs/self-update.md), on the real deployment: hub
//! (wireguard-go, the fake GateControl), gateway (gatelet-agent + gatelet-companion) and a
//! release server in the hub's namespace on its WAN address (`python3 -m http.server`, where a
//! real release host would be: not through the tunnel), serving a manifest signed at test time
//! with `minisign -S -l` by a key made at test time (`GATELET_UPDATE_PUBKEY`).
//!
//! The hub asks for the update as GateControl does: `POST /api/self-update` to the gateway's
//! management API through the tunnel. The companion writes the flag; the test starts
//! `gatelet-update` when the flag appears (what `gatelet-update.path` does), with
//! `--restart-command` a script standing in for `systemctl restart` (it stops both daemons and
//! starts them again from `<update dir>/current/` with their previous command line and
//! environment). The next release is the same build with its version bytes patched
//! (`gatelet_tests_hw::patch_version`: the new daemons report the new version, which the health
//! gate requires). In order, on one deployment:
//!   1. a manifest signed by an untrusted key: refused, nothing restarted, the reason reported;
//!   2. a corrupted download (size right, SHA-256 wrong): refused, nothing restarted;
//!   3. a release that fails its health gate (the old build under a higher version: it never
//!      reports that version) within `--health-deadline`: switched back, the old version runs,
//!      the reason reported;
//!   4. a good release: the new version runs, and the fake server's heartbeat carries
//!      `last_pull_request_id`/`ok`/`at` and `gateway_version` (time and bytes printed);
//!   5. the updater SIGKILLed right after switching to the next release (during the restart),
//!      then started again (what a boot with a journal does): it restarts the daemons onto the
//!      active slot, resumes the trial and completes, one report.
//!
//! A second test cuts power at every step of an update (see [`CUTS`]): partway through a
//! download (a release server that stalls halfway through a binary), then at each of the
//! updater's cut points (`GATELET_UPDATE_CUT_AT`: it SIGKILLs itself there, the journal for
//! that step on disk). After each cut the daemons are restarted from `current` as a reboot
//! does, one version must answer (the old or the new, never neither), and the updater's
//! next start must end the update: the new version running and reported ok, or (a cut
//! between recording the trial and switching) the old one running and the reason reported;
//! one outcome per request, in `last-pull` and in the server's heartbeats. Requests are
//! queued by writing the flag file as the companion's handler does, without its one-minute
//! cooldown after a success (nine updates in a row). About 3 minutes after the deployment is
//! up (9 cuts, 10 to 60 s each under load).
//!
//! Needs root, python3, minisign and strip.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use gatelet_tests_hw::{
    config_document, fixture_value, http_request, patch_version, product_binary, require_root,
    wait_until, Deployment, HarnessError, L4RouteDoc, MinisignKey, Process, ReleaseServer, Result,
    HUB_LAN_IP, LAN_ECHO_IP, LAN_SERVICE_PORT,
};

/// Longest a single run of the updater may take here (the slowest is a rollback: the health
/// deadline, then both restarts).
const UPDATER_TIMEOUT: Duration = Duration::from_secs(240);
/// The health gate's deadline in this test (production: 300 s).
const HEALTH_DEADLINE_S: u64 = 40;
/// Time for a heartbeat carrying a new last-pull to reach the server.
const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(60);
/// Time for the flag file to appear after the request was answered.
const FLAG_TIMEOUT: Duration = Duration::from_secs(10);
/// Time allowed for the management API's answer.
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for the companion's cooldown after a successful update (60 s).
const COOLDOWN_WAIT: Duration = Duration::from_secs(90);
/// Time for the updater to reach the trial (download of both binaries, switch, restart).
const TRIAL_TIMEOUT: Duration = Duration::from_secs(120);

/// Stand-in for `systemctl restart gatelet-agent.service gatelet-companion.service`.
const RESTART_SCRIPT: &str = r#"#!/usr/bin/env bash
# restart.sh STATE CURRENT: stops the daemons whose pids are in STATE/{companion,agent}.pid and
# starts them again from CURRENT/ with the command line and environment they first had.
set -euo pipefail
state=$1 current=$2
for name in companion agent; do
  pid=$(cat "$state/$name.pid")
  if [ ! -f "$state/$name.cmdline" ]; then
    cp "/proc/$pid/cmdline" "$state/$name.cmdline"
    cp "/proc/$pid/environ" "$state/$name.environ"
  fi
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
done
for name in agent companion; do
  mapfile -d '' -t args <"$state/$name.cmdline"
  mapfile -d '' -t envs <"$state/$name.environ"
  setsid env -i "${envs[@]}" "$current/gatelet-$name" "${args[@]:1}" \
    >>"$state/$name.log" 2>&1 </dev/null &
  echo $! >"$state/$name.pid"
done
echo "restarted from $(readlink "$current")" >>"$state/restarts.log"
"#;

struct Bed {
    d: Deployment,
    server: ReleaseServer,
    key: MinisignKey,
    stranger: MinisignKey,
    updater: PathBuf,
    /// The installed (built) binaries' directory.
    installed: PathBuf,
    /// Scratch: keys, release builds, the restart script's state.
    work: PathBuf,
    state_dir: PathBuf,
    update_dir: PathBuf,
    status_socket: PathBuf,
    env_path: PathBuf,
    triple: String,
    version: String,
}

/// The daemons the restart script started are not the harness's processes: stopped here,
/// also when a test fails, before the deployment's namespaces go.
impl Drop for Bed {
    fn drop(&mut self) {
        for name in ["companion", "agent"] {
            let path = self.work.join(format!("restart/{name}.pid"));
            let pid = std::fs::read_to_string(&path).ok();
            let Some(pid) = pid.and_then(|p| p.trim().parse::<i32>().ok()) else {
                continue;
            };
            // Only a daemon the script started (its command line runs from the update dir):
            // the pid file first holds the harness's own daemons, which it stops itself.
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let ours = String::from_utf8_lossy(&cmdline)
                .starts_with(&*self.update_dir.join("current").to_string_lossy());
            if ours {
                let _ = Command::new("kill")
                    .arg("-KILL")
                    .arg(pid.to_string())
                    .status();
            }
        }
    }
}

fn ok<T>(b: &Bed, r: Result<T>) -> T {
    r.unwrap_or_else(|e| panic!("{e}\n{}\n{}", b.d.logs(), b.extra_logs()))
}

impl Bed {
    fn extra_logs(&self) -> String {
        let read = |p: PathBuf| std::fs::read_to_string(&p).unwrap_or_default();
        let tail = |t: String| {
            let l: Vec<&str> = t.lines().collect();
            l[l.len().saturating_sub(40)..].join("\n")
        };
        format!(
            "--- restarted agent ---\n{}\n--- restarted companion ---\n{}\n--- restarts ---\n{}\n--- release server ---\n{}",
            tail(read(self.work.join("restart/agent.log"))),
            tail(read(self.work.join("restart/companion.log"))),
            read(self.work.join("restart/restarts.log")),
            tail(self.server.log()),
        )
    }

    /// A build of this release reporting `version` (same length as the built one), stripped,
    /// in `<work>/<version>/`.
    fn build_reporting(&self, version: &str) -> Result<PathBuf> {
        let dir = self.work.join(format!("build-{version}"));
        std::fs::create_dir_all(&dir).map_err(|e| HarnessError::io("mkdir", e))?;
        for name in ["gatelet-agent", "gatelet-companion"] {
            let stripped = dir.join(format!("{name}.stripped"));
            gatelet_tests_hw::run(
                Command::new("strip")
                    .arg("-o")
                    .arg(&stripped)
                    .arg(self.installed.join(name)),
            )?;
            if version == self.version {
                std::fs::rename(&stripped, dir.join(name))
                    .map_err(|e| HarnessError::io("rename", e))?;
            } else {
                patch_version(&stripped, &dir.join(name), &self.version, version)?;
                let _ = std::fs::remove_file(&stripped);
            }
        }
        Ok(dir)
    }

    /// Asks for an update as GateControl does; returns when the flag file exists. Within a
    /// minute of a successful update the companion answers "skipped: cooldown" (the
    /// reference's rule): asked again every few seconds until it queues, at most
    /// [`COOLDOWN_WAIT`].
    fn request(&self, id: &str, target: &str) -> Result<Instant> {
        let token = fixture_value("GC_GATEWAY_TOKEN")?;
        let api_port: u16 = fixture_value("GC_API_PORT")?.parse().unwrap();
        let body = serde_json::json!({"request_id": id, "target_version": target}).to_string();
        let asked = Instant::now();
        let t0 = loop {
            let t0 = Instant::now();
            let r = http_request(
                &self.d.testbed.hub_ns,
                Deployment::tunnel_addr(api_port),
                "POST",
                "/api/self-update",
                &[
                    ("X-Gateway-Token", &token),
                    ("Content-Type", "application/json"),
                ],
                Some(&body),
                IO_TIMEOUT,
            )?;
            assert_eq!(r.status, 200, "self-update answered {r:?}");
            if r.body.contains("\"queued\":true") {
                break t0;
            }
            assert!(r.body.contains("cooldown"), "{r:?}");
            assert!(
                asked.elapsed() < COOLDOWN_WAIT,
                "still in cooldown after {:?}",
                asked.elapsed()
            );
            std::thread::sleep(Duration::from_secs(5));
        };
        let flag = self.state_dir.join("pending-update");
        wait_until("the flag file", FLAG_TIMEOUT, || {
            Ok::<_, HarnessError>(flag.exists().then_some(()))
        })?;
        Ok(t0)
    }

    fn spawn_updater(&self, label: &str) -> Result<Process> {
        self.spawn_updater_with(label, &[])
    }

    /// [`Bed::spawn_updater`] with more options (OpenWrt's `--watch`, `--seed-by-link`).
    fn spawn_updater_with(&self, label: &str, extra: &[&str]) -> Result<Process> {
        let mut cmd = self.updater_command(&self.env_path);
        cmd.args(extra);
        let log = self.work.join(format!("updater-{label}.log"));
        Process::spawn(label, cmd, &log)
    }

    /// The updater in the gateway's namespace with this bed's directories, socket, restart
    /// script and health deadline, reading `env` as its gateway.env.
    fn updater_command(&self, env: &Path) -> std::process::Command {
        let restart = format!(
            "bash {} {} {}",
            self.work.join("restart.sh").display(),
            self.work.join("restart").display(),
            self.update_dir.join("current").display()
        );
        let mut cmd = self.d.testbed.gw_ns.command(&self.updater);
        cmd.arg("--env")
            .arg(env)
            .arg("--state-dir")
            .arg(&self.state_dir)
            .arg("--update-dir")
            .arg(&self.update_dir)
            .arg("--status-socket")
            .arg(&self.status_socket)
            .arg("--restart-command")
            .arg(restart)
            .arg("--health-deadline")
            .arg(HEALTH_DEADLINE_S.to_string());
        cmd
    }

    /// Runs the updater to its exit; returns its log.
    fn run_updater(&self, label: &str) -> Result<String> {
        let mut p = self.spawn_updater(label)?;
        let status = p.wait_exit(UPDATER_TIMEOUT)?;
        let log = p.log();
        assert!(status.success(), "updater {label}: {status}\n{log}");
        Ok(log)
    }

    fn last_pull(&self) -> serde_json::Value {
        let text = std::fs::read_to_string(self.state_dir.join("last-pull")).unwrap_or_default();
        serde_json::from_str(&text).unwrap_or_default()
    }

    /// Waits until the fake server saw a heartbeat with this last-pull; returns that line.
    fn heartbeat_with(&self, id: &str, ok: bool) -> Result<String> {
        let want = format!("last_pull \"{id}\" {ok} ");
        wait_until("a heartbeat with the last pull", HEARTBEAT_TIMEOUT, || {
            let log = self.d.gatecontrol()?.log();
            Ok::<_, HarnessError>(log.lines().find(|l| l.contains(&want)).map(str::to_owned))
        })
    }

    fn versions(&self) -> Result<(String, String)> {
        let agent = self.d.agent_status()?.agent_version;
        let socket = &self.status_socket;
        let out = gatelet_tests_hw::run(
            self.d
                .testbed
                .gw_ns
                .command(self.installed.join("gatelet-companion"))
                .args(["status", "--json", "--status-socket"])
                .arg(socket),
        )?;
        let v: serde_json::Value = serde_json::from_str(&out).map_err(|e| HarnessError::Parse {
            what: "status --json".into(),
            detail: e.to_string(),
        })?;
        Ok((
            agent,
            v["companion_version"].as_str().unwrap_or("").to_owned(),
        ))
    }

    fn restarts(&self) -> usize {
        std::fs::read_to_string(self.work.join("restart/restarts.log"))
            .map(|t| t.lines().count())
            .unwrap_or(0)
    }

    fn downloaded(log: &str) -> Option<u64> {
        log.lines()
            .filter(|l| l.contains("updater done"))
            .find_map(|l| {
                l.split("bytes=")
                    .nth(1)?
                    .split_whitespace()
                    .next()?
                    .parse()
                    .ok()
            })
    }
}

fn setup() -> Bed {
    require_root().unwrap();
    let doc = config_document(
        &[],
        &[L4RouteDoc {
            id: 1,
            listen_port: 7001,
            host: LAN_ECHO_IP.to_string(),
            port: LAN_SERVICE_PORT,
        }],
    );
    let d = Deployment::start(&doc).unwrap();
    let server = ReleaseServer::start(&d.testbed.hub_ns, HUB_LAN_IP).unwrap();
    let work = d.testbed.gw_ns.dir().join("self-update");
    std::fs::create_dir_all(work.join("restart")).unwrap();
    let key = MinisignKey::generate(&work, "release").unwrap();
    let stranger = MinisignKey::generate(&work, "stranger").unwrap();
    std::fs::write(work.join("restart.sh"), RESTART_SCRIPT).unwrap();
    let updater = product_binary("gatelet-update").unwrap();
    let installed = updater.parent().unwrap().to_path_buf();
    let env_path = work.join("update.env");
    std::fs::write(
        &env_path,
        format!(
            "GATELET_UPDATE_URL={}\nGATELET_UPDATE_PUBKEY={}\n",
            server.manifest_url(),
            key.public_line
        ),
    )
    .unwrap();
    let out = gatelet_tests_hw::run(Command::new(installed.join("gatelet-agent")).arg("--version"))
        .unwrap();
    let version = out.split_whitespace().nth(1).unwrap().to_owned();
    let companion_dir = d.testbed.gw_ns.dir().join("companion");
    let mut b = Bed {
        triple: String::new(),
        version,
        state_dir: companion_dir.join("state"),
        status_socket: companion_dir.join("companion.sock"),
        update_dir: work.join("update"),
        d,
        server,
        key,
        stranger,
        updater,
        installed,
        work,
        env_path,
    };
    b.triple = target_triple();
    // The restart script's view of the daemons the harness started.
    let agent_pid = ok(&b, b.d.testbed.agent().map(|a| a.pid()));
    let companion_pid = b.d.companion.as_mut().unwrap().process().pid();
    std::fs::write(b.work.join("restart/agent.pid"), agent_pid.to_string()).unwrap();
    std::fs::write(
        b.work.join("restart/companion.pid"),
        companion_pid.to_string(),
    )
    .unwrap();
    b
}

/// OpenWrt's form of the updater (docs/self-update.md, "OpenWrt"): resident (`--watch 1`, what
/// procd keeps running) with the installed binaries as the first slot through symlinks
/// (`--seed-by-link`). Nobody starts an updater: the request through the tunnel is taken up by
/// the watcher, the good release is kept, the linked slot is dropped, and the same watcher
/// answers the next request.
#[test]
fn a_resident_watcher_with_a_linked_first_slot_installs_a_good_release() {
    let b = setup();
    let old = b.version.clone();
    let next = next_version(&old, 1);
    let next_build = ok(&b, b.build_reporting(&next));
    ok(
        &b,
        b.server
            .release
            .publish(&next, &b.triple, &next_build, &b.key),
    );
    let mut w = ok(
        &b,
        b.spawn_updater_with("watcher", &["--seed-by-link", "--watch", "1"]),
    );
    let report = |id: &str| {
        wait_until("the watcher's report", UPDATER_TIMEOUT, || {
            let lp = b.last_pull();
            Ok::<_, HarnessError>((lp["request_id"] == id).then_some(lp))
        })
    };
    let t0 = ok(&b, b.request("r-watch", &next));
    let lp = ok(&b, report("r-watch"));
    let healthy = t0.elapsed();
    assert_eq!(lp["ok"], true, "{lp}\n{}\n{}", w.log(), b.extra_logs());
    assert_eq!(ok(&b, b.versions()), (next.clone(), next.clone()));
    assert_eq!(
        std::fs::read_link(b.update_dir.join("current")).unwrap(),
        PathBuf::from("b")
    );
    assert!(
        !b.update_dir.join("a").exists(),
        "the linked first slot is dropped once b is kept"
    );
    assert!(
        ok(&b, w.try_exit()).is_none(),
        "the watcher exited\n{}",
        w.log()
    );
    let line = ok(&b, b.heartbeat_with("r-watch", true));
    let steps: Vec<String> = w.log().lines().map(str::to_owned).collect();
    eprintln!("watcher log:\n{}", steps.join("\n"));
    eprintln!(
        "watcher {old} -> {next}: request to healthy new version {healthy:?}, downloaded {:?} bytes; heartbeat: {}",
        Bed::downloaded(&w.log()),
        line.trim()
    );

    // The same watcher answers the next request (the same release: already current).
    b.queue("r-again", &next);
    let lp = ok(&b, report("r-again"));
    assert_eq!(lp["ok"], true, "{lp}\n{}", w.log());
    assert!(
        ok(&b, w.try_exit()).is_none(),
        "the watcher exited\n{}",
        w.log()
    );
    assert_eq!(ok(&b, b.versions()), (next.clone(), next));
    w.terminate();
}

/// The host's target triple as rustc names it (what the updater was built for).
fn target_triple() -> String {
    let out = gatelet_tests_hw::run(Command::new("rustc").arg("-vV")).unwrap();
    out.lines()
        .find_map(|l| l.strip_prefix("host: "))
        .unwrap()
        .trim()
        .to_owned()
}

/// The next patch version with the same length (0.1.0 -> 0.1.1).
fn next_version(v: &str, step: u8) -> String {
    let (head, last) = v.rsplit_once('.').unwrap();
    let n: u8 = last.parse().unwrap();
    let next = format!("{head}.{}", n + step);
    assert_eq!(
        next.len(),
        v.len(),
        "{v} + {step}: pick versions of the same length"
    );
    next
}

#[test]
fn self_update_refuses_bad_releases_rolls_back_an_unhealthy_one_and_installs_a_good_one() {
    let b = setup();
    let old = b.version.clone();
    let next = next_version(&old, 1);
    let after = next_version(&old, 2);
    assert_eq!(ok(&b, b.versions()), (old.clone(), old.clone()));
    let old_build = ok(&b, b.build_reporting(&old));
    let next_build = ok(&b, b.build_reporting(&next));
    let release = &b.server.release;

    // 1. Signed by a key the box does not trust.
    ok(
        &b,
        release.publish(&next, &b.triple, &next_build, &b.stranger),
    );
    ok(&b, b.request("r-badsig", &next));
    let log = ok(&b, b.run_updater("badsig"));
    let lp = b.last_pull();
    assert_eq!(lp["request_id"], "r-badsig", "{lp}\n{log}");
    assert_eq!(lp["ok"], false, "{lp}");
    let reason = lp["reason"].as_str().unwrap_or("").to_lowercase();
    assert!(
        reason.contains("signature") || reason.contains("key"),
        "{lp}\n{log}"
    );
    assert_eq!(
        b.restarts(),
        0,
        "nothing restarted for an untrusted manifest"
    );
    ok(&b, b.heartbeat_with("r-badsig", false));
    assert_eq!(ok(&b, b.versions()), (old.clone(), old.clone()));
    eprintln!("bad signature: refused ({})", lp["reason"]);

    // 2. A download whose bytes are not the signed ones.
    ok(&b, release.publish(&next, &b.triple, &next_build, &b.key));
    ok(&b, release.corrupt(&b.triple, "gatelet-companion"));
    ok(&b, b.request("r-corrupt", &next));
    let log = ok(&b, b.run_updater("corrupt"));
    let lp = b.last_pull();
    assert_eq!(
        (&lp["request_id"], &lp["ok"]),
        (&"r-corrupt".into(), &false.into()),
        "{lp}\n{log}"
    );
    assert!(
        lp["reason"].as_str().unwrap_or("").contains("SHA-256"),
        "{lp}\n{log}"
    );
    assert_eq!(
        b.restarts(),
        0,
        "nothing restarted for a corrupted download"
    );
    ok(&b, b.heartbeat_with("r-corrupt", false));
    assert_eq!(ok(&b, b.versions()), (old.clone(), old.clone()));
    eprintln!("corrupted download: refused ({})", lp["reason"]);

    // 3. A release that never becomes healthy: the old build under the new version number.
    ok(&b, release.publish(&next, &b.triple, &old_build, &b.key));
    let t = Instant::now();
    ok(&b, b.request("r-unhealthy", &next));
    let log = ok(&b, b.run_updater("unhealthy"));
    let lp = b.last_pull();
    assert_eq!(
        (&lp["request_id"], &lp["ok"]),
        (&"r-unhealthy".into(), &false.into()),
        "{lp}\n{log}"
    );
    assert_eq!(b.restarts(), 2, "switched to the new slot and back\n{log}");
    ok(&b, b.heartbeat_with("r-unhealthy", false));
    let running = ok(
        &b,
        wait_until(
            "the old version to answer again",
            Duration::from_secs(60),
            || {
                let v = b.versions()?;
                Ok::<_, HarnessError>((v == (old.clone(), old.clone())).then_some(v))
            },
        ),
    );
    assert_eq!(running, (old.clone(), old.clone()));
    eprintln!(
        "unhealthy release: rolled back after {:?} ({})",
        t.elapsed(),
        lp["reason"]
    );

    // 4. A good release.
    ok(&b, release.publish(&next, &b.triple, &next_build, &b.key));
    let t0 = ok(&b, b.request("r-good", &next));
    let log = ok(&b, b.run_updater("good"));
    let healthy = t0.elapsed();
    let lp = b.last_pull();
    assert_eq!(
        (&lp["request_id"], &lp["ok"]),
        (&"r-good".into(), &true.into()),
        "{lp}\n{log}"
    );
    assert_eq!(ok(&b, b.versions()), (next.clone(), next.clone()));
    let line = ok(&b, b.heartbeat_with("r-good", true));
    assert!(
        line.contains(&format!("gateway_version \"{next}\"")),
        "{line}"
    );
    let bytes = Bed::downloaded(&log);
    eprintln!(
        "good release {old} -> {next}: request to healthy new version {healthy:?}, downloaded {bytes:?} bytes; heartbeat: {}",
        line.trim()
    );

    // 5. SIGKILL of the updater right after the switch to the next release, then a new start.
    let after_build = ok(&b, b.build_reporting(&after));
    ok(&b, release.publish(&after, &b.triple, &after_build, &b.key));
    let current = b.update_dir.join("current");
    let before = std::fs::read_link(&current).unwrap();
    ok(&b, b.request("r-killed", &after));
    let mut p = ok(&b, b.spawn_updater("killed"));
    let journal = b.update_dir.join("journal.json");
    // Killed right after the switch: while its restart runs (or just after it), before the
    // health gate could pass.
    ok(
        &b,
        wait_until("the updater to switch slots", TRIAL_TIMEOUT, || {
            let now = std::fs::read_link(&current).ok();
            Ok::<_, HarnessError>(now.filter(|n| *n != before).map(drop))
        }),
    );
    p.crash();
    assert_ne!(
        b.last_pull()["request_id"],
        "r-killed",
        "no report before the end"
    );
    let log = ok(&b, b.run_updater("resumed"));
    let lp = b.last_pull();
    assert_eq!(
        (&lp["request_id"], &lp["ok"]),
        (&"r-killed".into(), &true.into()),
        "{lp}\n{log}\n{}",
        b.extra_logs()
    );
    assert_eq!(ok(&b, b.versions()), (after.clone(), after.clone()));
    ok(&b, b.heartbeat_with("r-killed", true));
    assert!(!journal.exists(), "the journal ends with the report");
    assert!(!Path::new(&b.state_dir.join("pending-update")).exists());
    eprintln!("updater killed right after the switch: resumed and completed ({after})");
}

/// Serves the release directory like `python3 -m http.server`, except that a binary's body
/// stops halfway (all headers sent, `Content-Length` the whole size) and the connection then
/// hangs: an updater downloading from it is deterministically partway through a download.
const STALLING_SERVER: &str = r#"
import http.server, os, sys, time
root = sys.argv[2]
class H(http.server.SimpleHTTPRequestHandler):
    def __init__(self, *a, **k):
        super().__init__(*a, directory=root, **k)
    def copyfile(self, src, dst):
        data = src.read()
        if self.path.endswith(("gatelet-agent", "gatelet-companion")):
            dst.write(data[: len(data) // 2])
            dst.flush()
            time.sleep(300)
        else:
            dst.write(data)
s = http.server.ThreadingHTTPServer((sys.argv[1], 0), H)
s.daemon_threads = True
print("Serving HTTP on %s port %d" % s.server_address, flush=True)
s.serve_forever()
"#;

/// Where a power cut is made, in the order of an update, and how the update must end after
/// it. The point: `None` is partway through the first binary's download (the stalling
/// server); else the updater's own cut point (`GATELET_UPDATE_CUT_AT`,
/// `update::driver::CUT_POINTS`). The end: `None`, the rerun completes the update (the new
/// version runs, reported ok); `Some(reason)`, the old version runs and the report says why
/// (a cut between recording the trial and switching `current`: the machine reports a switch
/// that did not happen rather than retrying it).
const CUTS: [(Option<&str>, Option<&str>); 9] = [
    (None, None),
    (Some("fetch"), None),
    (Some("stage"), None),
    (Some("downloaded one"), None),
    (
        Some("activate b"),
        Some("was not started (switch interrupted)"),
    ),
    (Some("restart"), None),
    (Some("health"), None),
    (Some("finish"), None),
    (Some("reported"), None),
];

impl Bed {
    /// Queues a request as the companion's handler does (the flag file), without its
    /// one-minute cooldown after a successful update, which would cost a minute per cut.
    fn queue(&self, id: &str, target: &str) {
        let flag = serde_json::json!({
            "request_id": id, "target_version": target, "triggered_via": "server-push",
        });
        std::fs::write(self.state_dir.join("pending-update"), flag.to_string()).unwrap();
    }

    fn spawn_cut(&self, label: &str, env: &Path, cut: Option<&str>) -> Result<Process> {
        let mut cmd = self.updater_command(env);
        if let Some(point) = cut {
            cmd.env("GATELET_UPDATE_CUT_AT", point);
        }
        let log = self.work.join(format!("updater-{label}.log"));
        Process::spawn(label, cmd, &log)
    }

    /// What a reboot does to the daemons: both start again from `current` (the restart
    /// script stops them and starts them from there).
    fn reboot_daemons(&self) -> Result<()> {
        gatelet_tests_hw::run(
            self.d
                .testbed
                .gw_ns
                .command("bash")
                .arg(self.work.join("restart.sh"))
                .arg(self.work.join("restart"))
                .arg(self.update_dir.join("current")),
        )
        .map(drop)
    }

    /// Waits until both daemons answer and report the same version, one of `allowed`.
    fn running_one_of(&self, allowed: &[&str]) -> Result<String> {
        wait_until(
            "both daemons to answer with one version",
            Duration::from_secs(60),
            || {
                Ok::<_, HarnessError>(match self.versions() {
                    Ok((a, c)) if a == c && allowed.contains(&a.as_str()) => Some(a),
                    _ => None,
                })
            },
        )
    }
}

#[test]
fn a_power_cut_at_every_step_leaves_the_old_or_the_new_version_and_one_report() {
    use std::os::unix::process::ExitStatusExt;
    let b = setup();
    let base = b.version.clone();
    let (_stall_server, stall) = ok(&b, stalling_server(&b));
    let stall_env = b.work.join("stall.env");
    std::fs::write(
        &stall_env,
        format!(
            "GATELET_UPDATE_URL=http://{stall}/manifest.json\nGATELET_UPDATE_PUBKEY={}\n",
            b.key.public_line
        ),
    )
    .unwrap();
    let t_all = Instant::now();
    let mut old = base.clone();
    let mut reports: Vec<(String, bool)> = Vec::new();
    for (i, (cut, refused)) in CUTS.iter().enumerate() {
        let label = cut.unwrap_or("download partway").replace(' ', "-");
        let new = next_version(&base, i as u8 + 1);
        let build = ok(&b, b.build_reporting(&new));
        ok(
            &b,
            b.server.release.publish(&new, &b.triple, &build, &b.key),
        );
        let id = format!("r-cut-{label}");
        let t = Instant::now();
        b.queue(&id, &new);
        let p = match cut {
            None => {
                let mut p = ok(&b, b.spawn_cut(&label, &stall_env, None));
                // Partway: half of the first binary arrived, the rest never comes.
                let size = std::fs::metadata(build.join("gatelet-agent"))
                    .unwrap()
                    .len();
                let part = b.update_dir.join("b/gatelet-agent.part");
                ok(
                    &b,
                    wait_until("half of the download", TRIAL_TIMEOUT, || {
                        let have = std::fs::metadata(&part).map(|m| m.len()).unwrap_or(0);
                        Ok::<_, HarnessError>((have == size / 2).then_some(()))
                    }),
                );
                p.crash();
                p
            }
            Some(point) => {
                let mut p = ok(&b, b.spawn_cut(&label, &b.env_path, Some(point)));
                let status = ok(&b, p.wait_exit(UPDATER_TIMEOUT));
                assert_eq!(
                    status.signal(),
                    Some(9),
                    "the updater did not stop at {point}: {status}\n{}",
                    p.log()
                );
                p
            }
        };
        let cut_log = p.log();
        let lp = b.last_pull();
        if *cut == Some("reported") {
            assert_eq!(
                (&lp["request_id"], &lp["ok"]),
                (&id.as_str().into(), &true.into()),
                "{lp}\n{cut_log}"
            );
        } else {
            assert_ne!(
                lp["request_id"],
                id.as_str(),
                "no report before the end\n{cut_log}"
            );
        }
        // The power cut's reboot: the daemons start from `current`, old or new, never neither.
        ok(&b, b.reboot_daemons());
        let after_cut = ok(&b, b.running_one_of(&[&old, &new]));
        // The updater's start at boot (the journal's condition) ends the update.
        let log = ok(&b, b.run_updater(&format!("{label}-resumed")));
        let lp2 = b.last_pull();
        let why = format!(
            "cut at {label}: {lp2}\n{cut_log}\n{log}\n{}",
            b.extra_logs()
        );
        let running = match refused {
            None => {
                assert_eq!(
                    (&lp2["request_id"], &lp2["ok"], &lp2["version"]),
                    (&id.as_str().into(), &true.into(), &new.as_str().into()),
                    "{why}"
                );
                new.clone()
            }
            Some(reason) => {
                assert_eq!(
                    (&lp2["request_id"], &lp2["ok"]),
                    (&id.as_str().into(), &false.into()),
                    "{why}"
                );
                let said = lp2["reason"].as_str().unwrap_or("");
                assert!(said.contains(reason), "{why}");
                old.clone()
            }
        };
        assert_eq!(ok(&b, b.running_one_of(&[&running])), running, "{why}");
        assert!(!b.update_dir.join("journal.json").exists(), "{why}");
        assert!(!b.state_dir.join("pending-update").exists(), "{why}");
        eprintln!(
            "power cut at {label}: {after_cut} ran after the cut; the rerun ended with {running} running, ok {} {} ({:?})",
            lp2["ok"],
            lp2["reason"],
            t.elapsed()
        );
        drop(p);
        reports.push((id, refused.is_none()));
        old = running;
    }
    // One report per request: the server's heartbeats carry each request's one outcome and
    // never the other (the last request's for certain; earlier ones when a heartbeat fell
    // between two cuts).
    let (last, last_ok) = reports.last().unwrap().clone();
    ok(&b, b.heartbeat_with(&last, last_ok));
    let gc_log = ok(&b, b.d.gatecontrol().map(|g| g.log()));
    for (id, good) in &reports {
        let wrong = format!("last_pull \"{id}\" {} ", !good);
        assert!(
            !gc_log.lines().any(|l| l.contains(&wrong)),
            "{id} was also reported {}:\n{gc_log}",
            !good
        );
    }
    eprintln!(
        "power cuts at {} steps: each ended with the new version or a reported refusal, in {:?}",
        CUTS.len(),
        t_all.elapsed()
    );
}

/// A [`STALLING_SERVER`] in the hub's namespace serving the same release directory, and its
/// address.
fn stalling_server(b: &Bed) -> Result<(Process, std::net::SocketAddr)> {
    let ns = &b.d.testbed.hub_ns;
    let mut cmd = ns.command("python3");
    cmd.args(["-u", "-c", STALLING_SERVER])
        .arg(HUB_LAN_IP.to_string())
        .arg(&b.server.release.dir);
    let process = ns.spawn("stalling-server", cmd)?;
    let port = gatelet_tests_hw::serving_port(&process, "the stalling server")?;
    Ok((process, std::net::SocketAddr::from((HUB_LAN_IP, port))))
}
