//! The agent's mode keys: where the tunnel ends (`GATELET_NETSTACK`) and how many threads carry
//! its packets (`GATELET_DATAPATH_THREADS`).

use std::fmt;

/// `GATELET_NETSTACK`: where the tunnel's packets are terminated.
///
/// The default is [`NetstackMode::Auto`]: a box where the agent may open and configure a TUN
/// device (root, or `CAP_NET_ADMIN` and `/dev/net/tun`) keeps the kernel stack it has today,
/// and a box where it may not (an unprivileged NAS container) works instead of exiting; the
/// agent logs why it fell back and reports the mode in its status and the heartbeat, so a
/// lost privilege does not go unnoticed. `kernel` makes a missing TUN device fatal again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NetstackMode {
    /// The TUN device and the kernel's TCP/IP stack; failing to set it up is fatal.
    Kernel,
    /// The userspace stack (smoltcp) inside the agent: no device, no privilege.
    Userspace,
    /// The TUN device when it can be opened and configured, else the userspace stack.
    #[default]
    Auto,
}

impl NetstackMode {
    /// `kernel`, `userspace` or `auto`.
    pub fn parse(v: &str) -> Option<Self> {
        match v {
            "kernel" => Some(NetstackMode::Kernel),
            "userspace" => Some(NetstackMode::Userspace),
            "auto" => Some(NetstackMode::Auto),
            _ => None,
        }
    }

    /// Its `GATELET_NETSTACK` spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            NetstackMode::Kernel => "kernel",
            NetstackMode::Userspace => "userspace",
            NetstackMode::Auto => "auto",
        }
    }
}

impl fmt::Display for NetstackMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `GATELET_DATAPATH_THREADS`: how many threads carry the tunnel's packets (TUN device only;
/// the userspace stack's data path has one thread).
///
/// With two, one thread reads the interface, encrypts and sends to the hub while the other
/// receives from the hub, decrypts and writes the interface; they share the WireGuard state
/// behind a lock held only for bookkeeping, never while encrypting or decrypting.
/// [`DatapathThreads::Auto`] (the default) takes two only with three cores or more: measured on
/// two cores (`tests-hw/bench/tunnel.sh --agent-threads 1,2`), two threads gained nothing
/// measurable against a hub that was the bottleneck, and cost 2.3 times the CPU per byte when
/// both had to share one core (a busy router); with more cores there is a spare one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DatapathThreads {
    /// One thread on one or two cores, two on three or more.
    #[default]
    Auto,
    /// One thread for both directions.
    One,
    /// A thread per direction.
    Two,
}

impl DatapathThreads {
    /// `auto`, `1` or `2`.
    pub fn parse(v: &str) -> Option<Self> {
        match v {
            "auto" => Some(DatapathThreads::Auto),
            "1" => Some(DatapathThreads::One),
            "2" => Some(DatapathThreads::Two),
            _ => None,
        }
    }

    /// The number of threads on a box where the agent may run on `cores` cores.
    pub fn resolve(self, cores: usize) -> usize {
        match self {
            DatapathThreads::Auto if cores <= 2 => 1,
            DatapathThreads::Auto => 2,
            DatapathThreads::One => 1,
            DatapathThreads::Two => 2,
        }
    }
}
