//! Child processes that are always killed: a [`Process`] kills its whole process group on drop.

use std::fs::File;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::{HarnessError, Result};

/// How long [`Process::terminate`] waits after SIGTERM before it sends SIGKILL.
pub const TERM_GRACE: Duration = Duration::from_secs(3);

/// A command line for messages: program and arguments separated by spaces.
pub fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Runs `cmd` to completion and returns its standard output; a non-zero exit is an error that
/// carries the standard error.
pub fn run(cmd: &mut Command) -> Result<String> {
    let what = describe(cmd);
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|source| HarnessError::Spawn {
            what: what.clone(),
            source,
        })?;
    if !out.status.success() {
        let mut output = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        if output.is_empty() {
            output = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        }
        return Err(HarnessError::Command {
            what,
            status: out.status.to_string(),
            output,
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A running child in its own process group, with standard output and error going to a log
/// file. Dropping it kills the group (SIGTERM, then SIGKILL after [`TERM_GRACE`]) and reaps it.
#[derive(Debug)]
pub struct Process {
    label: String,
    child: Child,
    log: PathBuf,
    exit: Option<ExitStatus>,
}

impl Process {
    /// Starts `cmd` in a new process group, with both output streams appended to `log`.
    pub fn spawn(label: &str, mut cmd: Command, log: &Path) -> Result<Process> {
        let what = describe(&cmd);
        let file = File::create(log)
            .map_err(|e| HarnessError::io(format!("create log {}", log.display()), e))?;
        let file2 = file
            .try_clone()
            .map_err(|e| HarnessError::io(format!("clone log {}", log.display()), e))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(file2)
            .process_group(0)
            .spawn()
            .map_err(|source| HarnessError::Spawn { what, source })?;
        Ok(Process {
            label: label.into(),
            child,
            log: log.into(),
            exit: None,
        })
    }

    /// The child's pid (also its process group id).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What the child has printed so far (both streams), for failure messages.
    pub fn log(&self) -> String {
        match std::fs::read(&self.log) {
            Ok(b) => String::from_utf8_lossy(&b).into_owned(),
            Err(e) => format!("(could not read {}: {e})", self.log.display()),
        }
    }

    /// The child's exit status if it has exited, without waiting.
    pub fn try_exit(&mut self) -> Result<Option<ExitStatus>> {
        if self.exit.is_none() {
            self.exit = self
                .child
                .try_wait()
                .map_err(|e| HarnessError::io(format!("wait for {}", self.label), e))?;
        }
        Ok(self.exit)
    }

    /// Waits at most `timeout` for the child to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let label = self.label.clone();
        crate::wait_until(&format!("{label} to exit"), timeout, || self.try_exit())
    }

    /// Asks the process group to stop (SIGTERM), waits up to [`TERM_GRACE`], then kills it.
    /// Returns how the child ended. Safe to call more than once.
    pub fn terminate(&mut self) -> Option<ExitStatus> {
        if let Ok(Some(status)) = self.try_exit() {
            self.kill_group(libc::SIGKILL); // stragglers the child left in its group
            return Some(status);
        }
        self.kill_group(libc::SIGTERM);
        let deadline = Instant::now() + TERM_GRACE;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.try_exit() {
                self.kill_group(libc::SIGKILL);
                return Some(status);
            }
            thread::sleep(Duration::from_millis(20));
        }
        self.kill_group(libc::SIGKILL);
        let status = self.child.wait().ok();
        self.exit = status;
        status
    }

    /// Kills the child alone with SIGKILL (a crash, as the child sees it: no cleanup runs)
    /// and reaps it. Returns how it ended.
    pub fn crash(&mut self) -> Option<ExitStatus> {
        if let Ok(pid) = libc::pid_t::try_from(self.child.id()) {
            if self.exit.is_none() {
                // SAFETY: kill(2) has no memory-safety preconditions; the pid is our child's
                // and not yet reaped, so it cannot have been reused.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
        }
        let status = self.exit.or_else(|| self.child.wait().ok());
        self.exit = status;
        status
    }

    fn kill_group(&self, sig: libc::c_int) {
        let Ok(pgid) = libc::pid_t::try_from(self.child.id()) else {
            return;
        };
        // SAFETY: kill(2) with a negative pid signals the process group we created for the
        // child; it has no memory-safety preconditions.
        unsafe {
            libc::kill(-pgid, sig);
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.terminate();
    }
}

/// CPU time of process `pid` so far, user and system (all its threads), in seconds, from
/// `/proc/<pid>/stat` (whose unit is the clock tick, [`ticks_per_second`]).
pub fn cpu_seconds(pid: u32) -> Result<f64> {
    let path = format!("/proc/{pid}/stat");
    let stat =
        std::fs::read_to_string(&path).map_err(|e| HarnessError::io(format!("read {path}"), e))?;
    let parse = || -> Option<u64> {
        // After the parenthesised command name: utime and stime are the 12th and 13th fields.
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
    };
    let ticks = parse().ok_or_else(|| HarnessError::Parse {
        what: path.clone(),
        detail: "no utime and stime fields".into(),
    })?;
    Ok(ticks as f64 / ticks_per_second())
}

/// The unit of the CPU times in `/proc` (`_SC_CLK_TCK`, 100 on Linux).
pub fn ticks_per_second() -> f64 {
    // SAFETY: sysconf(3) has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    hz.max(1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dropping_a_process_kills_its_whole_group() {
        let dir = crate::TempDir::new("proc").unwrap();
        let pidfile = dir.path().join("grandchild.pid");
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(format!("sleep 300 & echo $! > {}; wait", pidfile.display()));
        let p = Process::spawn("sh", cmd, &dir.path().join("log")).unwrap();
        let grandchild: i32 = crate::wait_until("pid file", Duration::from_secs(5), || {
            Ok::<_, String>(
                std::fs::read_to_string(&pidfile)
                    .ok()
                    .and_then(|s| s.trim().parse().ok()),
            )
        })
        .unwrap();
        drop(p);
        // The grandchild is reparented to init, which reaps it; until then it is a zombie.
        crate::wait_until("grandchild gone", Duration::from_secs(5), || {
            let stat = std::fs::read_to_string(format!("/proc/{grandchild}/stat"));
            Ok::<_, String>(match stat {
                Err(_) => Some(()),
                Ok(s) if s.contains(") Z ") => Some(()),
                Ok(_) => None,
            })
        })
        .unwrap();
    }

    #[test]
    fn cpu_seconds_counts_work_in_seconds() {
        let pid = std::process::id();
        let cores = thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let before = cpu_seconds(pid).unwrap();
        let started = Instant::now();
        let mut x = 0u64;
        // Spin until the kernel has counted a tenth of a second (ten ticks), at most 30 s.
        let spent = loop {
            for _ in 0..100_000 {
                x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
            }
            let spent = cpu_seconds(pid).unwrap() - before;
            if spent >= 0.1 || started.elapsed() > Duration::from_secs(30) {
                break spent;
            }
        };
        let wall = started.elapsed().as_secs_f64();
        assert!(spent >= 0.1, "{spent} s of CPU counted in {wall} s");
        // Seconds, not ticks: the process cannot use more than all cores for the whole time
        // (plus one tick of rounding at either end).
        assert!(
            spent <= wall * cores + 0.02,
            "{spent} s of CPU in {wall} s on {cores} cores"
        );
        assert!(cpu_seconds(u32::MAX).is_err());
    }

    #[test]
    fn run_reports_stderr_of_a_failing_command() {
        let err = run(Command::new("sh").args(["-c", "echo boom >&2; exit 3"])).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("boom") && text.contains('3'), "{text}");
    }
}
