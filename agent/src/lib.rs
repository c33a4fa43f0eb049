//! gatelet-agent: the data plane of a gatelet gateway.
//!
//! Layout, following a packet:
//! - [`cli`]: command line of the `gatelet-agent` binary.
//! - [`netif`]: the TUN device (created and configured with ioctls and rtnetlink, no `ip`).
//! - [`netstack`]: the userspace TCP/IP stack (smoltcp) used instead of the TUN device when
//!   `GATELET_NETSTACK` says so (or `auto` cannot set the device up).
//! - [`tunnel`]: WireGuard to the hub (boringtun `Tunn`, sans-IO core plus a batched driver).
//! - [`control`]: the control socket the companion talks to (`gatelet_agent_api::control`).
//! - [`egress`]: in userspace mode, the loopback CONNECT proxy that takes the companion's
//!   requests to GateControl into the tunnel.
//! - [`probe`]: TCP reachability checks of LAN targets.
//! - [`target`]: a route's LAN target, its resolution and the LAN-side connect (the lowest
//!   layer: the relays, the proxy and Wake-on-LAN use it).
//! - [`stack`]: the seam the route executor binds and accepts through on the tunnel side:
//!   kernel sockets (TUN mode) or the smoltcp [`netstack`] (userspace mode), as enums.
//! - [`forward`]: the L4 relays (TCP with half-close and caps, UDP sessions).
//! - [`http`]: the HTTP reverse proxy on `GC_PROXY_PORT`, with its live route table and counters.
//! - [`routes`]: the route manager (listeners on the tunnel IP, live reconfiguration).
//! - [`scan_egress`]: egress routes ("scan to NAS"): LAN-side listeners relayed into the tunnel,
//!   source-locked.
//! - [`wol`]: Wake-on-LAN (magic packets on the LAN interfaces, probes, shared waits).
//! - [`watchdog`]: the systemd keep-alive, sent only while the data path and relays turn.
//! - [`checksum`]: the Internet checksum (TUN offloads, VRRP, pings).
//! - [`sys`]: the system calls std and tokio lack, and the crate's `unsafe` code (one lending
//!   call in `netstack` aside, see there).
//!
//! The binary (`src/main.rs`) wires these together: env, control socket, TUN device or
//! userspace stack, data path thread, signals.

#![deny(unsafe_code)]

pub mod checksum;
pub mod cli;
pub mod control;
pub mod egress;
pub mod forward;
pub mod http;
pub mod netif;
pub mod netstack;
pub mod probe;
pub mod routes;
pub mod scan_egress;
pub mod stack;
pub mod sys;
pub mod target;
pub mod tunnel;
pub mod watchdog;
pub mod wol;
