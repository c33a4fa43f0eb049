//! `GATELET_NETSTACK` / `--netstack` on the real binary, run without privilege (as uid 65534
//! when the tests run as root; the capabilities go with the uid): `auto` falls back to the
//! userspace stack and says why in its status, `userspace` needs nothing, `kernel` fails on
//! the TUN device. The hub endpoint is a closed loopback port: nothing leaves the host.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use gatelet_agent_api::control::{AgentStatus, Request, Response};

const BIN: &str = env!("CARGO_BIN_EXE_gatelet-agent");
const NOBODY: u32 = 65534;
const WAIT: Duration = Duration::from_secs(10);

/// Held while a copy of the binary is written and while a child is spawned. A child forked by
/// another test while a copy's write descriptor is open would inherit it, and exec of that
/// copy would then fail with ETXTBSY ("Text file busy").
static FORK_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn is_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}

/// A directory with gateway.env, readable by the unprivileged user.
fn setup() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let env = include_str!("../api/testdata/gateway-env.txt")
        .replace("gc-testbed.invalid:51820", "127.0.0.1:9");
    std::fs::write(dir.path().join("gateway.env"), env).unwrap();
    // A copy of the binary beside it: the checkout may lie in a directory the unprivileged
    // user cannot enter (a 0700 temporary clone), which is not what these tests are about.
    {
        let _no_fork = FORK_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        std::fs::copy(BIN, dir.path().join("gatelet-agent")).unwrap();
    }
    if is_root() {
        for p in [dir.path().to_path_buf(), dir.path().join("gateway.env")] {
            std::os::unix::fs::chown(&p, Some(NOBODY), Some(NOBODY)).unwrap();
        }
    }
    dir
}

fn agent(dir: &Path, mode: &str) -> Child {
    let mut cmd = Command::new(dir.join("gatelet-agent"));
    cmd.arg("--env")
        .arg(dir.join("gateway.env"))
        .arg("--state-dir")
        .arg(dir.join("state"))
        .arg("--control-socket")
        .arg(dir.join("agent.sock"))
        .args(["--netstack", mode])
        .env_remove("GATEWAY_ENV_PATH")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if is_root() {
        // std drops the supplementary groups too when root changes uid.
        cmd.uid(NOBODY).gid(NOBODY);
    }
    let _no_copy = FORK_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    cmd.spawn().unwrap()
}

fn status(socket: &Path) -> Option<AgentStatus> {
    let mut s = UnixStream::connect(socket).ok()?;
    s.set_read_timeout(Some(WAIT)).ok()?;
    let mut line = serde_json::to_string(&Request::Status).ok()?;
    line.push('\n');
    s.write_all(line.as_bytes()).ok()?;
    let mut answer = String::new();
    BufReader::new(&s).read_line(&mut answer).ok()?;
    match serde_json::from_str(answer.trim_end()).ok()? {
        Response::Status(st) => Some(*st),
        _ => None,
    }
}

/// Kills the agent if a test fails before it stopped it.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// The agent's status once it answers; the agent is stopped (SIGTERM, exit 0) after.
fn running_status(mode: &str) -> AgentStatus {
    let dir = setup();
    let mut running = Running(agent(dir.path(), mode));
    let child = &mut running.0;
    let socket = dir.path().join("agent.sock");
    let start = Instant::now();
    let st = loop {
        if let Some(st) = status(&socket) {
            break st;
        }
        if let Some(code) = child.try_wait().unwrap() {
            let mut err = String::new();
            let _ = std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err);
            panic!("the agent exited ({code}): {err}");
        }
        assert!(start.elapsed() < WAIT, "no status in time");
        std::thread::sleep(Duration::from_millis(20));
    };
    // SAFETY: a plain signal to our own child, which has not been waited for yet.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let code = child.wait().unwrap();
    assert!(code.success(), "clean exit on SIGTERM: {code}");
    st
}

#[test]
fn auto_falls_back_to_the_userspace_stack_without_privilege_and_says_why() {
    let st = running_status("auto");
    assert_eq!(st.tunnel.mode, "netstack", "{st:?}");
    let why = st.tunnel.mode_reason.expect("a reason");
    assert!(why.contains("TUN"), "{why}");
}

#[test]
fn userspace_needs_no_privilege() {
    let st = running_status("userspace");
    assert_eq!(st.tunnel.mode, "netstack", "{st:?}");
    assert_eq!(st.tunnel.mode_reason, None);
}

#[test]
fn kernel_without_privilege_fails_on_the_tun_device() {
    let dir = setup();
    let child = agent(dir.path(), "kernel");
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/dev/net/tun"), "{err}");
}
