//! The `gatelet-companion` binary's start and stop paths: it fails loudly (an error line, exit
//! status 1, no READY) when it cannot create its state directory or bind a listener; one daemon
//! per state directory; the watchdog period follows `WATCHDOG_USEC`; `status` of a stopped
//! daemon shows the stored routes.

use std::net::TcpListener;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_gatelet-companion");
/// How long a daemon may take to start, or to give up.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// Routes in tests/data/routes-standalone.json (2 HTTP, 2 L4).
const STANDALONE_ROUTES: usize = 4;

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

/// A daemon's files in a temp dir: a standalone gateway.env with the fixture routes file, a
/// state dir, sockets, and a notify socket standing in for systemd's.
struct Setup {
    dir: tempfile::TempDir,
    notify: UnixDatagram,
}

impl Setup {
    fn new() -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let routes = dir.path().join("routes.json");
        std::fs::copy(data("routes-standalone.json"), &routes).unwrap();
        let env: String = std::fs::read_to_string(data("gateway-env.txt"))
            .unwrap()
            .lines()
            .filter(|l| !l.starts_with("GC_SERVER_URL=") && !l.starts_with("GC_API_TOKEN="))
            .map(|l| format!("{l}\n"))
            .collect();
        // No diagnostics page (its default port would be shared by the tests running at once).
        let env = format!(
            "{env}GATELET_ROUTES_FILE={}\nGATELET_DIAG_LISTEN=off\n",
            routes.display()
        );
        std::fs::write(dir.path().join("gateway.env"), env).unwrap();
        let notify = UnixDatagram::bind(dir.path().join("notify.sock")).unwrap();
        notify.set_nonblocking(true).unwrap();
        Setup { dir, notify }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The daemon's command line: its own state dir and sockets, the management API on a
    /// free loopback port (or `mgmt`), systemd's notify socket.
    fn command(&self, state_dir: &Path, mgmt: &str) -> Command {
        let mut c = Command::new(BIN);
        c.arg("--env")
            .arg(self.path("gateway.env"))
            .arg("--state-dir")
            .arg(state_dir)
            .arg("--control-socket")
            .arg(self.path("agent.sock"))
            .arg("--status-socket")
            .arg(self.path("companion.sock"))
            .arg("--mgmt-listen")
            .arg(mgmt)
            .env("NOTIFY_SOCKET", self.path("notify.sock"))
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID")
            .env_remove("JOURNAL_STREAM")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        c
    }

    fn spawn(&self, mut cmd: Command) -> Daemon {
        Daemon(Some(cmd.spawn().unwrap()))
    }

    /// Every datagram received on the notify socket so far.
    fn notifications(&self) -> Vec<String> {
        let mut got = Vec::new();
        let mut buf = [0u8; 512];
        while let Ok(n) = self.notify.recv(&mut buf) {
            got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        got
    }

    /// `gatelet-companion status` against this setup's sockets and `state_dir`.
    fn status(&self, state_dir: &Path) -> Output {
        Command::new(BIN)
            .arg("status")
            .arg("--status-socket")
            .arg(self.path("companion.sock"))
            .arg("--control-socket")
            .arg(self.path("agent.sock"))
            .arg("--state-dir")
            .arg(state_dir)
            .output()
            .unwrap()
    }

    /// Waits until the status socket answers with `daemon` running a config with `routes`.
    fn wait_running_with_routes(
        &self,
        daemon: &mut Daemon,
        state_dir: &Path,
        routes: usize,
    ) -> String {
        let want = format!("routes:    {routes}\n");
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let out = self.status(state_dir);
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            if out.status.success() && text.contains(&want) {
                return text;
            }
            let child = daemon.0.as_mut().unwrap();
            if Instant::now() > deadline || child.try_wait().unwrap().is_some() {
                let _ = child.kill();
                let out = daemon.0.take().unwrap().wait_with_output().unwrap();
                panic!(
                    "never running with {routes} routes ({}):\n{text}\ndaemon's stderr:\n{}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// A free loopback address for the management API.
fn free_addr() -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

/// The daemon, killed on drop.
struct Daemon(Option<Child>);

impl Daemon {
    fn pid(&self) -> i32 {
        self.0.as_ref().unwrap().id() as i32
    }

    /// Waits (bounded) for the daemon to exit on its own; its status and stderr.
    fn wait_exit(mut self) -> (ExitStatus, String) {
        let mut child = self.0.take().unwrap();
        let deadline = Instant::now() + START_TIMEOUT;
        while child.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                let out = child.wait_with_output().unwrap();
                panic!(
                    "the daemon did not exit: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let out = child.wait_with_output().unwrap();
        (
            out.status,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// SIGTERM, then the exit (bounded).
    fn stop(self) -> (ExitStatus, String) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.pid(), libc::SIGTERM) };
        self.wait_exit()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn assert_failed_loudly(status: ExitStatus, stderr: &str, line: &str, setup: &Setup) {
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(line) && stderr.contains("ERROR"),
        "no error line with {line:?}:\n{stderr}"
    );
    let notes = setup.notifications();
    assert!(
        !notes.iter().any(|n| n.contains("READY=1")),
        "reported READY: {notes:?}"
    );
}

#[test]
fn a_state_directory_that_cannot_be_created_ends_the_daemon_before_ready() {
    let setup = Setup::new();
    // Below a regular file: no directory can be created there, not even by root.
    std::fs::write(setup.path("file"), "").unwrap();
    let state = setup.path("file/state");
    let daemon = setup.spawn(setup.command(&state, &free_addr()));
    let (status, stderr) = daemon.wait_exit();
    assert_failed_loudly(
        status,
        &stderr,
        &format!("cannot create the state directory {}", state.display()),
        &setup,
    );
}

#[test]
fn a_management_port_in_use_ends_the_daemon_before_ready() {
    let setup = Setup::new();
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let daemon = setup.spawn(setup.command(&setup.path("state"), &addr));
    let (status, stderr) = daemon.wait_exit();
    assert_failed_loudly(
        status,
        &stderr,
        &format!("cannot bind the management API on {addr}"),
        &setup,
    );
    assert!(
        !setup.path("companion.sock").exists(),
        "the status socket of a daemon that gave up is removed"
    );
}

#[test]
fn a_status_socket_that_cannot_be_bound_ends_the_daemon_before_ready() {
    let setup = Setup::new();
    std::fs::write(setup.path("file"), "").unwrap();
    let socket = setup.path("file/companion.sock");
    let mut cmd = setup.command(&setup.path("state"), &free_addr());
    cmd.arg("--status-socket").arg(&socket);
    let (status, stderr) = setup.spawn(cmd).wait_exit();
    assert_failed_loudly(
        status,
        &stderr,
        &format!("cannot bind the status socket {}", socket.display()),
        &setup,
    );
}

#[test]
fn a_diagnostics_port_in_use_ends_the_daemon_before_ready() {
    let setup = Setup::new();
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let env = std::fs::read_to_string(setup.path("gateway.env")).unwrap();
    std::fs::write(
        setup.path("gateway.env"),
        env.replace(
            "GATELET_DIAG_LISTEN=off",
            &format!("GATELET_DIAG_LISTEN={addr}"),
        ),
    )
    .unwrap();
    let daemon = setup.spawn(setup.command(&setup.path("state"), &free_addr()));
    let (status, stderr) = daemon.wait_exit();
    assert_failed_loudly(
        status,
        &stderr,
        &format!("cannot bind the diagnostics page on {addr}"),
        &setup,
    );
}

#[test]
fn a_second_daemon_on_the_same_state_directory_exits_and_leaves_the_first_one_alone() {
    let setup = Setup::new();
    let state = setup.path("state");
    let mut first = setup.spawn(setup.command(&state, &free_addr()));
    setup.wait_running_with_routes(&mut first, &state, STANDALONE_ROUTES);
    let socket_before = std::fs::metadata(setup.path("companion.sock")).unwrap();
    setup.notifications();

    // Its own management port, so that only the lock can stop it.
    let second = setup.spawn(setup.command(&state, &free_addr()));
    let (status, stderr) = second.wait_exit();
    assert_failed_loudly(
        status,
        &stderr,
        &format!(
            "another gatelet-companion (pid {}) already runs with the state directory {}",
            first.pid(),
            state.display()
        ),
        &setup,
    );
    let socket_after = std::fs::metadata(setup.path("companion.sock")).unwrap();
    assert_eq!(
        std::os::unix::fs::MetadataExt::ino(&socket_after),
        std::os::unix::fs::MetadataExt::ino(&socket_before),
        "the first daemon's status socket was replaced"
    );
    let text = setup.wait_running_with_routes(&mut first, &state, STANDALONE_ROUTES);
    assert!(text.starts_with("companion: running"), "{text}");

    let (status, stderr) = first.stop();
    assert!(status.success(), "{stderr}");
    // The lock died with the first daemon: a new one starts on the same directory.
    let mut third = setup.spawn(setup.command(&state, &free_addr()));
    setup.wait_running_with_routes(&mut third, &state, STANDALONE_ROUTES);
    let (status, stderr) = third.stop();
    assert!(status.success(), "{stderr}");
}

#[test]
fn status_of_a_stopped_daemon_shows_the_stored_routes() {
    let setup = Setup::new();
    let state = setup.path("state");
    let mut daemon = setup.spawn(setup.command(&state, &free_addr()));
    setup.wait_running_with_routes(&mut daemon, &state, STANDALONE_ROUTES);
    let (status, stderr) = daemon.stop();
    assert!(status.success(), "{stderr}");

    let out = setup.status(&state);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(3), "{text}");
    assert!(
        text.contains("NOT RUNNING (showing stored state)"),
        "{text}"
    );
    assert!(
        text.contains(&format!("routes:    {STANDALONE_ROUTES}\n")),
        "{text}"
    );
    for route in [
        "nas.home.example",
        "router.home.example",
        "l4:2222",
        "l4:51820",
    ] {
        assert!(text.contains(route), "{route} missing:\n{text}");
    }
}

#[test]
fn the_watchdog_keep_alive_follows_watchdog_usec() {
    let setup = Setup::new();
    let mut cmd = setup.command(&setup.path("state"), &free_addr());
    // 1 s timeout: a keep-alive every 500 ms (the old fixed period was 15 s).
    cmd.env("WATCHDOG_USEC", "1000000");
    let daemon = setup.spawn(cmd);
    let deadline = Instant::now() + START_TIMEOUT;
    let mut notes = Vec::new();
    while notes
        .iter()
        .filter(|n: &&String| *n == "WATCHDOG=1")
        .count()
        < 3
    {
        assert!(Instant::now() < deadline, "too few keep-alives: {notes:?}");
        std::thread::sleep(Duration::from_millis(50));
        notes.extend(setup.notifications());
    }
    assert_eq!(
        notes.first().map(String::as_str),
        Some("READY=1"),
        "{notes:?}"
    );
    let (status, stderr) = daemon.stop();
    assert!(status.success(), "{stderr}");
    assert!(
        setup.notifications().iter().any(|n| n == "STOPPING=1"),
        "no STOPPING=1"
    );
}
