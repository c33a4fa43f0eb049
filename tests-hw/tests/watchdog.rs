//! The agent's systemd watchdog keep-alive, end to end: the real binary in the testbed with a
//! notify socket standing in for systemd's and `WATCHDOG_USEC` = 1 s. While the data path runs,
//! `WATCHDOG=1` arrives every 500 ms; when the data path thread alone is stopped (ptrace stops
//! one thread; the relay runtime goes on and the control socket still answers), the keep-alive
//! stops, which is what makes systemd restart a stalled agent; when the thread runs again, the
//! keep-alive resumes. The same with two data path threads (`GATELET_DATAPATH_THREADS=2`)
//! when only the encrypting thread stops. Needs root.

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::time::{Duration, Instant};

use gatelet_tests_hw::{product_binary, require_root, Agent, Gateway, GatewayRole, Testbed};

/// systemd's watchdog timeout given to the agent: keep-alives every half of it.
const WATCHDOG_USEC: &str = "1000000";
/// The agent's keep-alive period for that timeout.
const PERIOD: Duration = Duration::from_millis(500);
/// Bound on waiting for keep-alives that should come.
const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// Keep-alives counted as proof that they flow.
const FLOWING: usize = 3;

/// The data path thread's name (agent/src/tunnel/driver.rs).
const DATAPATH_THREAD: &str = "gatelet-datapath";
/// The encrypting thread's name, with two data path threads (agent/src/tunnel/driver.rs).
const ENCRYPT_THREAD: &str = "gatelet-encrypt";

fn drain(sock: &UnixDatagram) -> Vec<String> {
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    while let Ok(n) = sock.recv(&mut buf) {
        got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    got
}

fn keep_alives(notes: &[String]) -> usize {
    notes.iter().filter(|n| *n == "WATCHDOG=1").count()
}

/// Waits (bounded) until `count` keep-alives arrived; all notifications seen.
fn wait_keep_alives(sock: &UnixDatagram, count: usize, agent: &Agent) -> Vec<String> {
    let deadline = Instant::now() + KEEP_ALIVE_TIMEOUT;
    let mut notes = Vec::new();
    while keep_alives(&notes) < count {
        assert!(
            Instant::now() < deadline,
            "only {notes:?} in {KEEP_ALIVE_TIMEOUT:?}\n--- agent log ---\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(50));
        notes.extend(drain(sock));
    }
    notes
}

/// The thread id of the thread named `name` in process `pid`.
fn thread_id(pid: u32, name: &str) -> i32 {
    // The kernel keeps 15 bytes of a thread's name.
    let name = &name[..name.len().min(15)];
    let tasks = Path::new("/proc").join(pid.to_string()).join("task");
    for entry in std::fs::read_dir(&tasks).unwrap() {
        let path = entry.unwrap().path();
        let comm = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        if comm.trim_end() == name {
            return path.file_name().unwrap().to_str().unwrap().parse().unwrap();
        }
    }
    panic!("no thread {name} in {}", tasks.display());
}

/// One thread of another process held stopped by ptrace; it runs again when dropped (also
/// when the test panics; the kernel would detach it anyway when this thread ends).
struct StoppedThread(i32);

impl StoppedThread {
    fn stop(tid: i32) -> StoppedThread {
        // SAFETY: ptrace(2) requests on a thread id, no memory passed; results checked.
        unsafe {
            let rc = libc::ptrace(libc::PTRACE_SEIZE, tid, 0, 0);
            assert_eq!(rc, 0, "PTRACE_SEIZE: {}", std::io::Error::last_os_error());
            let rc = libc::ptrace(libc::PTRACE_INTERRUPT, tid, 0, 0);
            assert_eq!(
                rc,
                0,
                "PTRACE_INTERRUPT: {}",
                std::io::Error::last_os_error()
            );
            let mut status = 0;
            let rc = libc::waitpid(tid, &mut status, libc::__WALL);
            assert_eq!(rc, tid, "waitpid: {}", std::io::Error::last_os_error());
            assert!(libc::WIFSTOPPED(status), "thread not stopped: {status:#x}");
        }
        StoppedThread(tid)
    }
}

impl Drop for StoppedThread {
    fn drop(&mut self) {
        // SAFETY: as above; the thread is in a ptrace stop, which PTRACE_DETACH requires.
        unsafe { libc::ptrace(libc::PTRACE_DETACH, self.0, 0, 0) };
    }
}

#[test]
fn agent_withholds_the_watchdog_keep_alive_while_its_data_path_thread_is_stopped() {
    withholds_the_keep_alive_while_stopped(DATAPATH_THREAD, None);
}

#[test]
fn with_a_thread_per_direction_a_stopped_encrypting_thread_withholds_the_keep_alive() {
    withholds_the_keep_alive_while_stopped(ENCRYPT_THREAD, Some("2"));
}

/// Starts the agent with `GATELET_DATAPATH_THREADS=threads` (when given) under a watchdog,
/// stops its thread named `thread` and checks that the keep-alive stops, then resumes.
fn withholds_the_keep_alive_while_stopped(thread: &str, threads: Option<&str>) {
    require_root().unwrap();
    let binary = product_binary("gatelet-agent").unwrap();
    let mut tb = Testbed::start(&GatewayRole::Agent(binary.clone())).unwrap();
    let Gateway::Agent(agent) = &mut tb.gateway else {
        unreachable!("an agent testbed")
    };
    agent.process().terminate();

    let notify_path = tb.gw_ns.dir().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify.set_nonblocking(true).unwrap();
    let mut cmd = tb.gw_ns.command(&binary);
    cmd.env("NOTIFY_SOCKET", &notify_path)
        .env("WATCHDOG_USEC", WATCHDOG_USEC)
        .env_remove("WATCHDOG_PID");
    let mut env = gatelet_tests_hw::agent_env(&tb.gw_key, &tb.hub_key, tb.psk.as_deref());
    if let Some(n) = threads {
        env.extra
            .push(("GATELET_DATAPATH_THREADS".into(), n.into()));
    }
    tb.gateway = Gateway::Agent(Agent::start_command(&tb.gw_ns, &env, None, cmd).unwrap());
    let agent = tb.agent().unwrap();

    let notes = wait_keep_alives(&notify, FLOWING, agent);
    assert_eq!(
        notes.first().map(String::as_str),
        Some("READY=1"),
        "{notes:?}"
    );

    let stopped = StoppedThread::stop(thread_id(agent.pid(), thread));
    // The period in which the thread stopped may still have seen it turn: skip it.
    std::thread::sleep(PERIOD * 2);
    drain(&notify);
    std::thread::sleep(PERIOD * 4);
    let during = drain(&notify);
    assert_eq!(
        keep_alives(&during),
        0,
        "keep-alives while {thread} was stopped: {during:?}"
    );
    // Only the data path stopped: the relay runtime still answers on the control socket.
    tb.agent_status()
        .expect("the control socket answers while the data path is stopped");
    assert!(
        agent.log().contains("withholding the keep-alive"),
        "the agent did not say why:\n{}",
        agent.log()
    );

    drop(stopped);
    wait_keep_alives(&notify, FLOWING, agent);
    assert!(
        agent.log().contains("keep-alive resumed"),
        "{}",
        agent.log()
    );
}
