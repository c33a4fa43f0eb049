//! Hardware-level test harness: network namespaces, veth pairs and real processes.
//!
//! Every resource a test makes is an RAII value that removes itself on drop, also when the
//! test panics: [`Netns`] (with the processes inside, its `/etc/netns/<name>/hosts` and its
//! scratch directory), [`VethPair`], [`Process`] (its whole process group), [`WgInterface`]
//! (a userspace WireGuard), [`Agent`] (gatelet-agent with its control socket), [`EchoServer`].
//! Names carry the prefix [`PREFIX`] and the owning pid, so parallel tests never collide and
//! [`sweep_leftovers`] can remove what a crashed run left (only when that pid is gone).
//!
//! Shelling out to `ip`, `wg`, `ping` and the like is fine here: these are the tests, not the
//! product. Traffic stays inside the namespaces a test creates.

mod agent;
mod error;
mod keys;
mod net;
mod netns;
mod process;
mod products;
mod tempdir;
mod testbed;
mod veth;
mod wait;
mod wg;

pub use agent::{
    control_request, memory_kib, Agent, GatewayEnv, AGENT_START_TIMEOUT, CONTROL_TIMEOUT,
};
pub use error::{HarnessError, Result};
pub use keys::{generate_psk, write_secret, KeyPair};
pub use net::{ping, tcp_echo, udp_socket, EchoServer, ECHO_IO_TIMEOUT};
pub use netns::{sweep_leftovers, Netns, NETNS_ETC, NETNS_RUN, WG_SOCKET_DIR};
pub use process::{describe, run, Process, TERM_GRACE};
pub use products::{
    build, product_binary, profile_dir, target_dir, workspace_root, PRODUCT_PACKAGES, TEST_PROFILE,
};
pub use tempdir::{next_seq, unique_name, TempDir};
pub use testbed::{
    agent_env, Gateway, GatewayRole, Testbed, TestbedOptions, GW_LAN_IP, GW_TUNNEL_IP, HUB_LAN_IP,
    HUB_NAME, HUB_PORT, HUB_TUNNEL_IP, KEEPALIVE_S, LAN_PREFIX, TUNNEL_MTU,
};
pub use veth::VethPair;
pub use wait::{wait_until, POLL_INTERVAL};
pub use wg::{unique_ifname, WgImpl, WgInterface, WgPeer, START_TIMEOUT};

/// Prefix of every namespace, scratch directory and `/etc/netns` entry the harness creates.
pub const PREFIX: &str = "hwt-";

/// Fails with [`HarnessError::NotRoot`] unless the process runs as root (network namespaces,
/// veth pairs and TUN devices need it). Tests call it rather than silently skipping.
pub fn require_root() -> Result<()> {
    // SAFETY: geteuid(2) cannot fail and has no preconditions.
    let uid = unsafe { libc::geteuid() };
    if uid == 0 {
        Ok(())
    } else {
        Err(HarnessError::NotRoot { uid })
    }
}
