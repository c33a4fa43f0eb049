//! The WireGuard tunnel to the hub.
//!
//! - [`core`]: the protocol logic without I/O (boringtun `Tunn`, cryptokey routing, when to
//!   resolve the hub again), unit-tested with two peers in memory and virtual time.
//! - [`driver`]: the data path that feeds the core from the UDP socket, the interface and the
//!   clock, with batched system calls and no allocation per packet.
//! - [`allowed`]: `WG_ALLOWED_IPS` and the IP header fields it is checked against.
//! - [`stats`]: counters shared with the control socket.
//! - [`udp`]: batched UDP receive and send (`recvmmsg`, `sendmmsg`).
//! - [`resolve`]: resolution of the hub's name on a blocking thread.

pub mod allowed;
pub mod core;
pub mod driver;
pub mod resolve;
pub mod stats;
pub mod udp;
