//! The agent's two network stack modes (issue 9) as a value passed into a test's setup, and the
//! checks that a userspace-mode agent really runs with no privilege at all.
//!
//! - [`NetstackMode::Kernel`]: the agent runs as root and terminates the tunnel in a TUN device
//!   (`gatelet0`); its relays accept on kernel sockets.
//! - [`NetstackMode::Userspace`]: the agent runs as [`UNPRIVILEGED`] (uid/gid 65534) with no
//!   capability (`setpriv --inh-caps=-all --bounding-set=-all`) and no TUN device; the tunnel ends
//!   in its smoltcp stack and the hub reaches it over the veth by UDP only.
//!
//! The mode is given to the agent as `GATELET_NETSTACK=<mode>` in its gateway.env. Each case of a
//! test file is instantiated for both modes by [`both_modes!`](crate::both_modes).

use std::fmt;

use crate::{HarnessError, Netns, Result};

/// The uid and gid of a userspace-mode agent (`nobody`/`nogroup`).
pub const UNPRIVILEGED: (u32, u32) = (65534, 65534);

/// The gateway.env key that selects the mode.
pub const NETSTACK_KEY: &str = "GATELET_NETSTACK";

/// Where the agent terminates the tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NetstackMode {
    /// TUN device and kernel sockets; the agent runs as root.
    #[default]
    Kernel,
    /// smoltcp inside the agent; the agent runs unprivileged with no device.
    Userspace,
}

impl NetstackMode {
    /// Both modes, kernel first (the benchmarks' baseline).
    pub const ALL: [NetstackMode; 2] = [NetstackMode::Kernel, NetstackMode::Userspace];

    /// The value of `GATELET_NETSTACK` (and `--netstack`).
    pub fn as_str(self) -> &'static str {
        match self {
            NetstackMode::Kernel => "kernel",
            NetstackMode::Userspace => "userspace",
        }
    }

    /// The gateway.env line that selects the mode.
    pub fn env_line(self) -> (String, String) {
        (NETSTACK_KEY.to_owned(), self.as_str().to_owned())
    }

    /// Who the agent runs as: None = root (kernel mode), else uid and gid with no capability.
    pub fn run_as(self) -> Option<(u32, u32)> {
        match self {
            NetstackMode::Kernel => None,
            NetstackMode::Userspace => Some(UNPRIVILEGED),
        }
    }

    /// Whether the agent has a TUN device (and the gateway's namespace a kernel tunnel address).
    pub fn has_tun(self) -> bool {
        self == NetstackMode::Kernel
    }
}

impl fmt::Display for NetstackMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What `/proc/<pid>/status` says about a process's identity and capabilities.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Privileges {
    /// Real, effective, saved and filesystem uid.
    pub uids: Vec<u32>,
    /// Real, effective, saved and filesystem gid.
    pub gids: Vec<u32>,
    /// Supplementary groups.
    pub groups: Vec<u32>,
    /// `CapEff`, `CapPrm`, `CapInh`, `CapBnd`, `CapAmb` as numbers.
    pub cap_eff: u64,
    /// Permitted set.
    pub cap_prm: u64,
    /// Inheritable set.
    pub cap_inh: u64,
    /// Bounding set.
    pub cap_bnd: u64,
    /// Ambient set.
    pub cap_amb: u64,
}

impl Privileges {
    /// Reads them for `pid`.
    pub fn of(pid: u32) -> Result<Privileges> {
        let path = format!("/proc/{pid}/status");
        let text = std::fs::read_to_string(&path)
            .map_err(|e| HarnessError::io(format!("read {path}"), e))?;
        Privileges::parse(&text).map_err(|detail| HarnessError::Parse { what: path, detail })
    }

    /// Parses the text of a `/proc/<pid>/status`.
    pub fn parse(text: &str) -> std::result::Result<Privileges, String> {
        let field = |name: &str| -> std::result::Result<&str, String> {
            text.lines()
                .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(':')))
                .map(str::trim)
                .ok_or_else(|| format!("no {name} line"))
        };
        let ids = |name: &str| -> std::result::Result<Vec<u32>, String> {
            field(name)?
                .split_whitespace()
                .map(|v| {
                    v.parse()
                        .map_err(|_| format!("{name}: {v:?} is not a number"))
                })
                .collect()
        };
        let cap = |name: &str| -> std::result::Result<u64, String> {
            let v = field(name)?;
            u64::from_str_radix(v, 16).map_err(|_| format!("{name}: {v:?} is not hex"))
        };
        Ok(Privileges {
            uids: ids("Uid")?,
            gids: ids("Gid")?,
            groups: ids("Groups")?,
            cap_eff: cap("CapEff")?,
            cap_prm: cap("CapPrm")?,
            cap_inh: cap("CapInh")?,
            cap_bnd: cap("CapBnd")?,
            cap_amb: cap("CapAmb")?,
        })
    }

    /// Ok when every id is `uid`/`gid`, there is no supplementary group and every capability
    /// set is empty; else what is not.
    pub fn check_unprivileged(&self, (uid, gid): (u32, u32)) -> std::result::Result<(), String> {
        let mut wrong = Vec::new();
        if self.uids.iter().any(|u| *u != uid) {
            wrong.push(format!("uids {:?} (want all {uid})", self.uids));
        }
        if self.gids.iter().any(|g| *g != gid) {
            wrong.push(format!("gids {:?} (want all {gid})", self.gids));
        }
        if !self.groups.is_empty() {
            wrong.push(format!("supplementary groups {:?}", self.groups));
        }
        for (name, v) in [
            ("CapEff", self.cap_eff),
            ("CapPrm", self.cap_prm),
            ("CapInh", self.cap_inh),
            ("CapBnd", self.cap_bnd),
            ("CapAmb", self.cap_amb),
        ] {
            if v != 0 {
                wrong.push(format!("{name}={v:016x}"));
            }
        }
        if wrong.is_empty() {
            Ok(())
        } else {
            Err(wrong.join(", "))
        }
    }
}

/// The targets of `pid`'s open descriptors (`/proc/<pid>/fd/*`), e.g. `/dev/net/tun`,
/// `socket:[123]`.
pub fn open_files(pid: u32) -> Result<Vec<String>> {
    let dir = format!("/proc/{pid}/fd");
    let entries =
        std::fs::read_dir(&dir).map_err(|e| HarnessError::io(format!("read {dir}"), e))?;
    Ok(entries
        .filter_map(|e| e.ok())
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .map(|p| p.to_string_lossy().into_owned())
        .collect())
}

/// Checks that the agent `pid` in `ns` runs as `mode` says: in userspace mode as
/// [`UNPRIVILEGED`] with no capability, no `/dev/net/tun` open and no TUN device in `ns`; in
/// kernel mode with `tun_name` present in `ns`.
pub fn check_agent_mode(mode: NetstackMode, pid: u32, ns: &Netns, tun_name: &str) -> Result<()> {
    let fail = |detail: String| HarnessError::Parse {
        what: format!("the {mode}-mode agent (pid {pid})"),
        detail,
    };
    let device = ns.ip(&["-o", "link", "show", tun_name]);
    match mode {
        NetstackMode::Kernel => {
            device.map_err(|e| fail(format!("no TUN device {tun_name}: {e}")))?;
        }
        NetstackMode::Userspace => {
            Privileges::of(pid)?
                .check_unprivileged(UNPRIVILEGED)
                .map_err(fail)?;
            let files = open_files(pid)?;
            if let Some(tun) = files.iter().find(|f| f.contains("/dev/net/tun")) {
                return Err(fail(format!("has {tun} open")));
            }
            if let Ok(link) = device {
                return Err(fail(format!("a TUN device exists: {}", link.trim())));
            }
        }
    }
    Ok(())
}

/// Instantiates a test case for both modes: `both_modes!(name, case)` with
/// `fn case(mode: NetstackMode)` makes `mod name { #[test] fn kernel(); #[test] fn userspace() }`,
/// so `cargo test userspace` runs one mode. `both_modes!(name, case -> Result<()>)` for a case
/// that returns a result.
#[macro_export]
macro_rules! both_modes {
    ($name:ident, $case:ident) => {
        mod $name {
            #[test]
            fn kernel() {
                super::$case($crate::NetstackMode::Kernel)
            }
            #[test]
            fn userspace() {
                super::$case($crate::NetstackMode::Userspace)
            }
        }
    };
    ($name:ident, $case:ident -> $ret:ty) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            #[test]
            fn kernel() -> $ret {
                super::$case($crate::NetstackMode::Kernel)
            }
            #[test]
            fn userspace() -> $ret {
                super::$case($crate::NetstackMode::Userspace)
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOBODY: &str = "Name:\tgatelet-agent\nUid:\t65534\t65534\t65534\t65534\n\
        Gid:\t65534\t65534\t65534\t65534\nGroups:\t\nCapInh:\t0000000000000000\n\
        CapPrm:\t0000000000000000\nCapEff:\t0000000000000000\nCapBnd:\t0000000000000000\n\
        CapAmb:\t0000000000000000\n";

    #[test]
    fn a_process_with_no_capability_passes_and_any_privilege_is_named() {
        let p = Privileges::parse(NOBODY).unwrap();
        assert_eq!(p.check_unprivileged(UNPRIVILEGED), Ok(()));
        let root_caps = NOBODY.replace("CapBnd:\t0000000000000000", "CapBnd:\t000001ffffffffff");
        let err = Privileges::parse(&root_caps)
            .unwrap()
            .check_unprivileged(UNPRIVILEGED)
            .unwrap_err();
        assert!(err.contains("CapBnd=000001ffffffffff"), "{err}");
        let grouped = NOBODY.replace("Groups:\t", "Groups:\t0 ");
        let err = Privileges::parse(&grouped)
            .unwrap()
            .check_unprivileged(UNPRIVILEGED)
            .unwrap_err();
        assert!(err.contains("supplementary groups [0]"), "{err}");
        let root = NOBODY.replace("Uid:\t65534\t65534", "Uid:\t0\t65534");
        assert!(Privileges::parse(&root)
            .unwrap()
            .check_unprivileged(UNPRIVILEGED)
            .is_err());
    }

    #[test]
    fn this_test_process_is_seen_as_it_is() {
        let p = Privileges::of(std::process::id()).unwrap();
        // SAFETY: getuid(2) cannot fail and has no preconditions.
        let uid = unsafe { libc::getuid() };
        assert_eq!(p.uids[0], uid);
        assert!(!open_files(std::process::id()).unwrap().is_empty());
    }
}
