//! The userspace network stack (smoltcp) that terminates the tunnel when no TUN device can be
//! used (`GATELET_NETSTACK=userspace`): the decrypted packets for the tunnel IP go into a
//! smoltcp interface inside the agent, and the relays, the HTTP proxy and the API relay accept
//! on its sockets through the handles below, exactly as they do on kernel sockets.
//!
//! Layout:
//! - this file: the handle ([`Netstack`]), its limits, and the data path's side of it
//!   ([`Netstack::receive`], [`Netstack::poll`], [`Netstack::take_output`],
//!   [`Netstack::poll_wanted`]);
//! - `stack`: the state behind the lock (interface, sockets, listeners, backlogs, orphans);
//! - `tcp`, `udp`: the socket handles the relays use;
//! - `cwnd`: the congestion window smoltcp lacks (bounds what a relay may queue to send);
//! - `device`: the fixed packet queues smoltcp sees as its `Medium::Ip` device;
//! - the socket rings, anonymous memory maps, are `crate::sys::ring`'s.
//!
//! Only the data path polls smoltcp: when packets arrive, when a socket operation asks for it
//! (a read that opens the window, a write, a close: [`Netstack::poll_wanted`] wakes the data
//! path once per batch of such changes), and at the deadline [`Netstack::poll`] returns. An
//! idle stack has no deadline: nothing wakes up. Sockets wake their own tasks (smoltcp's
//! per-socket wakers; a listener keeps its own).
//!
//! Listeners have no smoltcp socket of their own: a SYN to a listening port gets a fresh
//! socket (with its rings) if its 4-tuple has none yet (a retransmitted SYN goes to the
//! socket it already has), the listener's backlog (connections not yet accepted) has room and
//! the stack is under its socket budget; otherwise the oldest half-open connection of that port
//! makes room (a flood of unanswered SYNs cannot keep clients out), else the SYN is dropped and
//! the client retries. Half-open connections are freed after [`HANDSHAKE_TIMEOUT`].
//!
//! smoltcp is the patched copy in `third_party/smoltcp`: 0.12 stopped retransmitting after the
//! peer's FIN (see `GATELET-PATCH.md` there).
//!
//! Outbound connections ([`Netstack::connect_tcp`], e.g. the companion's requests to a
//! GateControl server on the hub's tunnel address) get a socket from a free ephemeral port,
//! at most [`Limits::max_outbound`] at once; once established they are the same as accepted
//! ones (rings, window, half-close, orphan linger). A handshake that gets no answer is
//! aborted after [`Limits::connect_timeout`] on the stack's clock.

mod cwnd;
mod device;
mod stack;
mod tcp;
mod udp;

#[cfg(test)]
mod tests;

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use stack::{Counters, HANDSHAKE_TIMEOUT, ORPHAN_LINGER};
pub use tcp::Connecting;

/// Outbound connections open at once, by default: the companion's few requests to GateControl
/// are what goes out.
pub const MAX_OUTBOUND: usize = 32;
/// How long an outbound connection waits for the peer's SYN-ACK, by default.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
use stack::{Inner, Shared};
pub use tcp::{TcpListener, TcpStream};
pub use udp::UdpSocket;

/// How the stack is set up.
#[derive(Debug, Clone)]
pub struct NetstackConfig {
    /// The tunnel IP (`WG_ADDRESS`), the stack's only address.
    pub address: Ipv4Addr,
    /// Its prefix length.
    pub prefix_len: u8,
    /// The tunnel MTU: the largest IP packet the stack sends.
    pub mtu: u16,
}

/// The bounds of the stack: what a peer in the tunnel can make it allocate.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Receive ring of a TCP connection (its window; scaled). Address space only: pages are
    /// resident while data is in them.
    pub tcp_rx: usize,
    /// All connections' rings together, each way counted: what peers that send and never
    /// read could make resident. Connections opened when less than eight full pairs of rings
    /// are left get an eighth of what is left (at least 16 KiB a ring, so the stack's total
    /// stays under `ring_budget + max_tcp x 32 KiB`).
    pub ring_budget: usize,
    /// Send ring of a TCP connection.
    pub tcp_tx: usize,
    /// Connections of one listener between SYN and accept.
    pub backlog: usize,
    /// TCP connections of the whole stack (handshaking, accepted and closing).
    pub max_tcp: usize,
    /// Payload ring of a UDP socket, each way.
    pub udp_ring: usize,
    /// Datagrams queued in a UDP socket, each way.
    pub udp_slots: usize,
    /// Packets queued between the tunnel and smoltcp, each way.
    pub queue_packets: usize,
    /// How long a connection may stay half-open (our SYN-ACK unanswered) before its socket
    /// is freed.
    pub handshake_timeout: Duration,
    /// How long a closed connection may wait for its peer before it is reset.
    pub orphan_linger: Duration,
    /// Outbound connections ([`Netstack::connect_tcp`]) open at once.
    pub max_outbound: usize,
    /// How long an outbound connection may wait for the peer's SYN-ACK.
    pub connect_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        // 4 MiB windows: 100 ms of RTT at over 300 Mbit/s. On 32-bit boards the address
        // space is the bound (4,096 connections x 8 MiB would not fit), so smaller.
        let (ring, max_tcp, ring_budget) = if cfg!(target_pointer_width = "64") {
            (4 << 20, 4096, 256 << 20)
        } else {
            (256 << 10, 1024, 64 << 20)
        };
        Limits {
            tcp_rx: ring,
            ring_budget,
            tcp_tx: ring,
            backlog: 128,
            max_tcp,
            udp_ring: 256 << 10,
            udp_slots: 256,
            queue_packets: 256,
            handshake_timeout: HANDSHAKE_TIMEOUT,
            orphan_linger: ORPHAN_LINGER,
            max_outbound: MAX_OUTBOUND,
            connect_timeout: CONNECT_TIMEOUT,
        }
    }
}

/// The stack: a cheap handle (clone it); shared by the data path (packets in and out) and the
/// relays (sockets).
#[derive(Debug, Clone)]
pub struct Netstack {
    shared: Arc<Shared>,
}

impl Netstack {
    /// A stack with the address of `config` and no sockets.
    pub fn new(config: NetstackConfig) -> Self {
        Self::with_limits(config, Limits::default())
    }

    /// A stack with the address of `config`, bounded by `limits`.
    pub fn with_limits(config: NetstackConfig, limits: Limits) -> Self {
        Netstack {
            shared: Arc::new(Shared {
                inner: Mutex::new(Inner::new(config, limits, Instant::now())),
                poll_wanted: tokio::sync::Notify::new(),
            }),
        }
    }

    /// A TCP listener on `addr` (the stack's address and a port). Fails with `AddrInUse` when
    /// the port already has a listener, `AddrNotAvailable` for another address.
    pub fn bind_tcp(&self, addr: SocketAddr) -> io::Result<TcpListener> {
        let local = self.shared.with(|s| {
            let port = s.bind_port(addr, |p| s.has_listener(p))?;
            s.add_listener(port);
            Ok::<_, io::Error>(s.local(port))
        })?;
        Ok(TcpListener::new(self.shared.clone(), local))
    }

    /// Opens a TCP connection from the tunnel address (a free ephemeral port) to `remote`
    /// (e.g. the hub) and returns it once established. Fails with `ConnectionRefused` on a
    /// RST, `TimedOut` when no SYN-ACK came within [`Limits::connect_timeout`] (on the
    /// stack's clock: the `now` of [`Netstack::poll`]), `WouldBlock` when
    /// [`Limits::max_outbound`] connections are open, `InvalidInput` for an IPv6 target.
    /// The connection then behaves as an accepted one (rings, window, half-close, linger).
    pub async fn connect_tcp(&self, remote: SocketAddr) -> io::Result<TcpStream> {
        self.start_connect(remote)?.await
    }

    /// Sends the SYN of [`Netstack::connect_tcp`] at the next poll; the returned future
    /// resolves when the handshake ends (dropping it closes the connection).
    pub fn start_connect(&self, remote: SocketAddr) -> io::Result<Connecting> {
        let SocketAddr::V4(v4) = remote else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("netstack: {remote} is not IPv4"),
            ));
        };
        let (handle, local) = self.shared.with(|s| {
            let h = s.connect(v4)?;
            let port = s.conns.get(&h).map_or(0, |c| c.port);
            Ok::<_, io::Error>((h, s.local(port)))
        })?;
        Ok(Connecting::new(self.shared.clone(), handle, local, remote))
    }

    /// A UDP socket on `addr` (as [`Netstack::bind_tcp`]).
    pub fn bind_udp(&self, addr: SocketAddr) -> io::Result<UdpSocket> {
        let (handle, local) = self.shared.with(|s| {
            let port = s.bind_port(addr, |p| s.udp.contains_key(&p))?;
            let h = s.add_udp(port)?;
            Ok::<_, io::Error>((h, s.local(port)))
        })?;
        Ok(UdpSocket::new(self.shared.clone(), handle, local))
    }

    /// The stack's configuration.
    pub fn config(&self) -> NetstackConfig {
        self.shared.lock().config.clone()
    }

    // ---- the data path's side ----

    /// Takes an IP packet that came out of the tunnel (copied into the input queue; when
    /// the queue is full it is processed first, at `now`).
    pub fn receive(&self, now: Instant, packet: &[u8]) {
        self.shared.lock().receive(now, packet);
    }

    /// Processes the queued input and the sockets' changes at `now`; returns when to call it
    /// again at the latest (None: not until a packet arrives or [`Netstack::poll_wanted`]
    /// fires). Output is then in [`Netstack::take_output`].
    pub fn poll(&self, now: Instant) -> Option<Instant> {
        self.shared.lock().poll(now)
    }

    /// Hands up to `max` packets for the tunnel to `out` (under the stack's lock: keep `out`
    /// short, e.g. encrypt into a batch); true when more are waiting.
    pub fn take_output(&self, max: usize, out: impl FnMut(&[u8])) -> bool {
        self.shared.lock().take_output(max, out)
    }

    /// Resolves when a socket operation wants a poll (a permit is kept if no one waits).
    pub async fn poll_wanted(&self) {
        self.shared.poll_wanted.notified().await
    }

    /// Gives the pages of drained connection rings back to the kernel (call it from a timer
    /// that runs anyway, e.g. the tunnel's tick).
    pub fn release_drained(&self) {
        self.shared.lock().release_drained();
    }

    /// Bytes of the TCP connections' rings resident in memory now (a diagnostic: it asks
    /// the kernel about every ring).
    pub fn resident_ring_bytes(&self) -> io::Result<usize> {
        self.shared.lock().resident_ring_bytes()
    }

    /// The stack's counters.
    pub fn counters(&self) -> Counters {
        self.shared.lock().counters
    }
}
