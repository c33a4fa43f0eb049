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
mod bench_args;
mod companion;
mod deployment;
mod error;
mod gatecontrol;
mod keys;
mod lan;
mod mode;
mod net;
mod netns;
mod process;
mod products;
mod release;
mod service_user;
mod spread;
mod tempdir;
mod testbed;
mod veth;
mod wait;
mod wg;

pub use agent::{
    control_request, memory_kib, Agent, GatewayEnv, AGENT_START_TIMEOUT, CONTROL_TIMEOUT,
};
pub use bench_args::{BenchArgs, LOAD_IO_TIMEOUT};
pub use companion::Companion;
pub use deployment::{
    fixture_gc_lines, fixture_port, fixture_value, gatecontrol_addr, gc_lines_for, Deployment,
    FIXTURE_ENV, GATECONTROL_PORT, GW_WAN_IP, HANDSHAKE_TIMEOUT, SYNC_TIMEOUT,
    TEST_HEARTBEAT_INTERVAL_S,
};
pub use error::{HarnessError, Result};
pub use gatecontrol::{
    config_document, document_hash, FakeGateControl, HttpRouteDoc, L4RouteDoc,
    GATECONTROL_RELOAD_TIMEOUT, GATECONTROL_START_TIMEOUT,
};
pub use keys::{generate_psk, write_secret, KeyPair};
pub use lan::{
    base64, connect, header, http_request, read_all_from, read_head, sha1, websocket_accept,
    ws_read_frame, ws_write_frame, Handler, HttpResponse, Lan, TcpService, UdpEcho, BANNER1,
    BANNER2, GW_LAN_SIDE_IP, HTTP_BANNER, LAN_BANNER1_IP, LAN_BANNER2_IP, LAN_ECHO_IP, LAN_HTTP_IP,
    LAN_SERVICE_PORT, LAN_SUBNET_PREFIX, LAN_WS_IP, MAX_HEAD_BYTES, WS_BINARY, WS_CLOSE,
    WS_MAX_PAYLOAD, WS_TEXT,
};
pub use mode::{
    check_agent_mode, open_files, NetstackMode, Privileges, NETSTACK_KEY, UNPRIVILEGED,
};
pub use net::{ping, tcp_echo, udp_socket, EchoServer, ECHO_IO_TIMEOUT};
pub use netns::{sweep_leftovers, Netns, NETNS_ETC, NETNS_RUN, WG_SOCKET_DIR};
pub use process::{cpu_seconds, describe, run, ticks_per_second, Process, TERM_GRACE};
pub use products::{
    build, example_binary, product_binary, product_profile, profile_dir, target_dir,
    workspace_root, PRODUCT_PACKAGES, TEST_PROFILE,
};
pub use release::{
    patch_version, serving_port, write_executable, MinisignKey, ReleaseDir, ReleaseServer,
    RELEASE_SERVER_START_TIMEOUT,
};
pub use service_user::{ServiceUser, SERVICE_USER};
pub use spread::Spread;
pub use tempdir::{next_seq, unique_name, TempDir};
pub use testbed::{
    agent_env, start_agent, Gateway, GatewayRole, Testbed, TestbedOptions, DEFAULT_TUN_NAME,
    ECHO_ROUTE_PORT, GW_LAN_IP, GW_TUNNEL_IP, HUB_LAN_IP, HUB_NAME, HUB_PORT, HUB_TUNNEL_IP,
    KEEPALIVE_S, LAN_PREFIX, TUNNEL_MTU,
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
