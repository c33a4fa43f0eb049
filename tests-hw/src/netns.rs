//! Network namespaces owned by one test: created with a unique name, removed on drop together
//! with every process still inside, their `/etc/netns/<name>` files and their scratch directory.

use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::net::IpAddr;
use std::os::fd::AsRawFd as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Once;
use std::thread;

use crate::process::{run, Process};
use crate::tempdir::unique_name;
use crate::{require_root, HarnessError, Result, TempDir, PREFIX};

/// Where `ip netns exec` finds per-namespace files that it bind-mounts over `/etc`.
pub const NETNS_ETC: &str = "/etc/netns";
/// Where iproute2 keeps the namespace handles.
pub const NETNS_RUN: &str = "/run/netns";
/// Where userspace WireGuard implementations put their control sockets (shared by all
/// namespaces, hence the unique interface names).
pub const WG_SOCKET_DIR: &str = "/var/run/wireguard";

static SWEEP: Once = Once::new();

/// A network namespace with its loopback up, removed on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
    role: String,
    dir: TempDir,
}

impl Netns {
    /// Creates `hwt-<pid>-<seq>-<role>` (after checking for root and, once per process,
    /// sweeping leftovers of crashed runs) and brings its loopback up.
    pub fn new(role: &str) -> Result<Netns> {
        require_root()?;
        SWEEP.call_once(sweep_leftovers);
        let name = unique_name(role);
        run(Command::new("ip").args(["netns", "add", &name]))?;
        let ns = Netns {
            dir: TempDir::new(role)?,
            name,
            role: role.into(),
        };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The namespace's name (for `ip netns exec`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The short role given at creation (`hub`, `gw`...).
    pub fn role(&self) -> &str {
        &self.role
    }

    /// A scratch directory for this namespace's files and logs, removed on drop.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A command that runs `program` inside the namespace (`ip netns exec <name> program`).
    /// `ip netns exec` execs the program, so the child's pid is the program's.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }

    /// Runs `args[0] args[1..]` inside the namespace to completion and returns its output.
    pub fn exec(&self, args: &[&str]) -> Result<String> {
        let Some((program, rest)) = args.split_first() else {
            return Err(HarnessError::Parse {
                what: "Netns::exec".into(),
                detail: "an empty command line".into(),
            });
        };
        run(self.command(program).args(rest))
    }

    /// Runs `ip -n <name> args...` (configuration of this namespace's links and addresses).
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        run(Command::new("ip").args(["-n", &self.name]).args(args))
    }

    /// Starts `cmd` (made with [`Netns::command`]) in its own process group, logging to
    /// `<dir>/<label>.log`; it is killed when the returned [`Process`] drops.
    pub fn spawn(&self, label: &str, cmd: Command) -> Result<Process> {
        let log = self.dir().join(format!("{label}.log"));
        Process::spawn(&format!("{label} in {}", self.name), cmd, &log)
    }

    /// Writes a sysctl of this namespace, e.g. `("net/ipv4/conf/all/rp_filter", "0")`.
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        let path = format!("/proc/sys/{key}");
        self.exec(&["sh", "-c", &format!("echo {value} > {path}")])?;
        Ok(())
    }

    /// Writes `/etc/netns/<name>/hosts` with `localhost` and `entries`; programs started in
    /// the namespace afterwards see it as `/etc/hosts`. Calling it again rewrites the file in
    /// place (same inode), so processes already running see the new entries too.
    pub fn set_hosts(&self, entries: &[(IpAddr, &str)]) -> Result<()> {
        let dir = self.etc_dir();
        std::fs::create_dir_all(&dir)
            .map_err(|e| HarnessError::io(format!("create {}", dir.display()), e))?;
        let path = dir.join("hosts");
        let mut text = String::from("127.0.0.1 localhost\n::1 localhost\n");
        for (ip, name) in entries {
            text.push_str(&format!("{ip} {name}\n"));
        }
        // Truncate and rewrite rather than replace: a bind mount follows the inode.
        let mut f = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(&path)
            .map_err(|e| HarnessError::io(format!("open {}", path.display()), e))?;
        f.write_all(text.as_bytes())
            .map_err(|e| HarnessError::io(format!("write {}", path.display()), e))
    }

    /// Runs `f` on a thread that has joined this namespace, so sockets it creates live here
    /// (they stay in this namespace when used from other threads afterwards). A panic in `f`
    /// is passed on.
    pub fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T> {
        let path = Path::new(NETNS_RUN).join(&self.name);
        let file = File::open(&path)
            .map_err(|e| HarnessError::io(format!("open {}", path.display()), e))?;
        thread::scope(|s| {
            let handle = s.spawn(|| {
                // SAFETY: setns(2) on a valid namespace fd only changes this thread's network
                // namespace; the thread is ours and ends with the scope.
                let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                if rc != 0 {
                    return Err(HarnessError::io(
                        format!("setns into {}", path.display()),
                        std::io::Error::last_os_error(),
                    ));
                }
                Ok(f())
            });
            match handle.join() {
                Ok(r) => r,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }

    fn etc_dir(&self) -> PathBuf {
        Path::new(NETNS_ETC).join(&self.name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        remove_namespace(&self.name);
    }
}

/// Kills every process in namespace `name`, deletes it and its `/etc/netns` directory.
fn remove_namespace(name: &str) {
    if let Ok(pids) = run(Command::new("ip").args(["netns", "pids", name])) {
        for pid in pids
            .split_whitespace()
            .filter_map(|p| p.parse::<libc::pid_t>().ok())
        {
            // SAFETY: kill(2) has no memory-safety preconditions.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }
    let _ = run(Command::new("ip").args(["netns", "del", name]));
    let _ = std::fs::remove_dir_all(Path::new(NETNS_ETC).join(name));
}

/// The pid in a `hwt-<pid>-...` name (namespace, temp dir) or `hw<pid>x<seq>` (interface).
fn owner_pid(name: &str) -> Option<u32> {
    if let Some(rest) = name.strip_prefix(PREFIX) {
        return rest.split('-').next()?.parse().ok();
    }
    name.strip_prefix("hw")?.split('x').next()?.parse().ok()
}

fn is_leftover(name: &str) -> bool {
    match owner_pid(name) {
        Some(pid) => pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists(),
        None => false,
    }
}

/// Removes what crashed earlier runs left behind: namespaces named `hwt-<pid>-...` whose pid
/// is gone (with the processes inside), their `/etc/netns` directories, scratch directories
/// and stale userspace WireGuard sockets. Runs once per process before the first namespace is
/// created; resources of live parallel runs are never touched.
pub fn sweep_leftovers() {
    if let Ok(list) = run(Command::new("ip").args(["netns", "list"])) {
        for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
            if name.starts_with(PREFIX) && is_leftover(name) {
                remove_namespace(name);
            }
        }
    }
    let dirs = [
        (PathBuf::from(NETNS_ETC), PREFIX),
        (std::env::temp_dir(), PREFIX),
        (PathBuf::from(WG_SOCKET_DIR), "hw"),
    ];
    for (dir, prefix) in dirs {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(prefix) && is_leftover(name.trim_end_matches(".sock")) {
                let path = entry.path();
                let _ = std::fs::remove_dir_all(&path).or_else(|_| std::fs::remove_file(&path));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_pid_reads_namespace_and_interface_names() {
        assert_eq!(owner_pid("hwt-4242-7-hub"), Some(4242));
        assert_eq!(owner_pid("hw4242x7"), Some(4242));
        assert_eq!(owner_pid("gatelet0"), None);
    }

    #[test]
    fn names_of_this_process_are_never_leftovers() {
        assert!(!is_leftover(&unique_name("x")));
    }
}
