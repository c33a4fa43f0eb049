//! The stack's state behind its lock: the smoltcp interface and sockets, the listeners and
//! their backlogs, the connections and their rings. Only the data path polls smoltcp; a
//! socket operation only asks it to ([`Inner::want_poll`]).

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::{Mutex, MutexGuard};
use std::task::Waker;
use std::time::{Duration, Instant};

use smoltcp::iface::{Config, Interface, PollResult, SocketHandle, SocketSet};
use smoltcp::socket::{tcp, udp};
use smoltcp::time::Instant as SmolInstant;
use smoltcp::wire::{HardwareAddress, IpAddress, IpCidr, IpEndpoint};
use tokio::sync::Notify;

use super::cwnd::Cwnd;
use super::device::{Device, PacketQueue};
use super::{Limits, NetstackConfig};
use crate::sys::ring::Ring;

/// Room above the MTU for packets from a hub with a larger MTU.
const RX_HEADROOM: usize = 128;
/// How long a connection closed by its relay may linger (unacknowledged FIN, peer silent)
/// before it is reset and freed.
pub const ORPHAN_LINGER: Duration = Duration::from_secs(60);
/// A half-open connection (our SYN-ACK sent, no ACK back) is freed after this long: smoltcp
/// retransmits the SYN-ACK meanwhile, with the RTT estimate's backoff.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(15);
/// Smallest ring a connection gets when the ring budget runs low.
pub const MIN_RING: usize = 16 << 10;
/// First port handed out for port 0 and for outbound connections.
const EPHEMERAL: u16 = 49152;

/// A TCP connection's identity: the peer and our port.
type Tuple = (SocketAddrV4, u16);

/// What the lock protects plus what is shared without it.
#[derive(Debug)]
pub struct Shared {
    pub inner: Mutex<Inner>,
    /// Set when a socket operation wants a poll; the data path waits on it.
    pub poll_wanted: Notify,
}

impl Shared {
    pub fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` under the lock, then wakes the data path if `f` asked for a poll.
    pub fn with<R>(&self, f: impl FnOnce(&mut Inner) -> R) -> R {
        let (r, wake) = {
            let mut g = self.lock();
            let r = f(&mut g);
            (r, std::mem::take(&mut g.wake_pending))
        };
        if wake {
            self.poll_wanted.notify_one();
        }
        r
    }
}

#[derive(Debug)]
pub enum Phase {
    /// Handshaking or in its listener's backlog.
    Pending,
    /// Owned by a `TcpStream`.
    Accepted,
    /// Its stream is gone: closing; freed when closed or at the deadline (set at the next
    /// poll).
    Orphan(Option<SmolInstant>),
}

#[derive(Debug)]
pub struct Conn {
    /// When its SYN arrived.
    pub born: SmolInstant,
    // Declared (and so dropped) after nothing: the socket set owns the socket; `remove`
    // drops the socket before these.
    rx: Ring,
    tx: Ring,
    pub port: u16,
    pub tuple: Tuple,
    pub phase: Phase,
    /// What the relay may queue for sending.
    pub cwnd: Cwnd,
    /// Data went through a ring since its pages were last given back.
    pub rx_dirty: bool,
    pub tx_dirty: bool,
    /// An outbound connection ([`Inner::connect`]): how its handshake went.
    pub outbound: Option<Outbound>,
}

/// The handshake of an outbound connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outbound {
    /// SYN sent; given up at the deadline (set at the first poll).
    Connecting(Option<SmolInstant>),
    /// Established (or closed after it was).
    Done,
    /// No answer before the deadline: aborted.
    TimedOut,
}

#[derive(Debug, Default)]
pub struct Listener {
    /// Sockets handshaking.
    pending: Vec<SocketHandle>,
    /// Sockets established, not accepted yet. With `pending`, at most the backlog.
    ready: VecDeque<SocketHandle>,
    waker: Option<Waker>,
}

#[derive(Debug)]
pub struct UdpBinding {
    pub handle: SocketHandle,
    _rx: Ring,
    _tx: Ring,
}

/// Counters (for tests and status).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counters {
    /// SYNs dropped because the listener's backlog or the socket budget was full (and no
    /// half-open connection could make room).
    pub syn_dropped: u64,
    /// Half-open connections freed to make room for a new SYN, or at the handshake timeout.
    pub half_open_dropped: u64,
    /// Packets from the tunnel refused by the input queue (too long).
    pub rx_dropped: u64,
    /// Loss events of sent data (a segment sent again), each of which halved a window.
    pub tcp_losses: u64,
    /// Outbound connections refused because [`Limits::max_outbound`] were open.
    pub connect_refused_cap: u64,
}

pub struct Inner {
    iface: Interface,
    pub sockets: SocketSet<'static>,
    rx: PacketQueue,
    tx: PacketQueue,
    pub config: NetstackConfig,
    limits: Limits,
    base: Instant,
    listeners: HashMap<u16, Listener>,
    pub conns: HashMap<SocketHandle, Conn>,
    tuples: HashMap<Tuple, SocketHandle>,
    /// Sockets created for SYNs since the last poll.
    fresh: Vec<SocketHandle>,
    orphans: Vec<SocketHandle>,
    /// Outbound connections still handshaking.
    connecting: Vec<SocketHandle>,
    /// Outbound connections open (any phase).
    outbound: usize,
    /// The time of the last poll.
    last_poll: SmolInstant,
    pub udp: HashMap<u16, UdpBinding>,
    /// Capacity of all connection rings (address space, not resident memory).
    ring_bytes: usize,
    /// A poll is wanted and the data path has not been woken for it yet.
    wake_pending: bool,
    /// A poll is wanted (reset by the poll).
    dirty: bool,
    pub counters: Counters,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inner")
            .field("address", &self.config.address)
            .field("listeners", &self.listeners.len())
            .field("conns", &self.conns.len())
            .field("udp", &self.udp.len())
            .finish_non_exhaustive()
    }
}

impl Inner {
    pub fn new(config: NetstackConfig, limits: Limits, base: Instant) -> Self {
        let mtu = usize::from(config.mtu);
        let mut rx = PacketQueue::new(limits.queue_packets, mtu.max(1500) + RX_HEADROOM);
        let mut tx = PacketQueue::new(limits.queue_packets, mtu);
        let mut iface = {
            let mut dev = Device {
                rx: &mut rx,
                tx: &mut tx,
                mtu,
            };
            let mut cfg = Config::new(HardwareAddress::Ip);
            cfg.random_seed = fastrand::u64(..);
            Interface::new(cfg, &mut dev, SmolInstant::ZERO)
        };
        let addr = config.address;
        iface.update_ip_addrs(|a| {
            let _ = a.push(IpCidr::new(IpAddress::Ipv4(addr), config.prefix_len));
        });
        // Hub-side clients outside the tunnel subnet are answered too (Medium::Ip: the
        // gateway of the route is never resolved).
        let _ = iface.routes_mut().add_default_ipv4_route(addr);
        Inner {
            iface,
            sockets: SocketSet::new(Vec::new()),
            rx,
            tx,
            config,
            limits,
            base,
            listeners: HashMap::new(),
            conns: HashMap::new(),
            tuples: HashMap::new(),
            fresh: Vec::new(),
            orphans: Vec::new(),
            connecting: Vec::new(),
            outbound: 0,
            last_poll: SmolInstant::ZERO,
            udp: HashMap::new(),
            ring_bytes: 0,
            wake_pending: false,
            dirty: false,
            counters: Counters::default(),
        }
    }

    fn smol_now(&self, now: Instant) -> SmolInstant {
        SmolInstant::from_micros(now.saturating_duration_since(self.base).as_micros() as i64)
    }

    /// A socket changed in a way that may make smoltcp send: the data path should poll.
    pub fn want_poll(&mut self) {
        if !self.dirty {
            self.dirty = true;
            self.wake_pending = true;
        }
    }

    /// Checks `addr` for a bind and returns its port (a free one for port 0).
    pub fn bind_port(&self, addr: SocketAddr, in_use: impl Fn(u16) -> bool) -> io::Result<u16> {
        let ok_ip = match addr.ip() {
            std::net::IpAddr::V4(ip) => ip == self.config.address || ip.is_unspecified(),
            std::net::IpAddr::V6(_) => false,
        };
        if !ok_ip {
            return Err(io::Error::new(
                io::ErrorKind::AddrNotAvailable,
                format!(
                    "{} is not the tunnel address {}",
                    addr.ip(),
                    self.config.address
                ),
            ));
        }
        let port = match addr.port() {
            0 => (EPHEMERAL..=u16::MAX)
                .find(|p| !in_use(*p))
                .ok_or_else(|| {
                    io::Error::new(
                        io::ErrorKind::AddrInUse,
                        "no free port on the tunnel address",
                    )
                })?,
            p if in_use(p) => {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!("port {p} of the tunnel address is taken"),
                ))
            }
            p => p,
        };
        Ok(port)
    }

    pub fn local(&self, port: u16) -> SocketAddr {
        SocketAddr::new(self.config.address.into(), port)
    }

    // ---- listeners ----

    pub fn has_listener(&self, port: u16) -> bool {
        self.listeners.contains_key(&port)
    }

    pub fn add_listener(&mut self, port: u16) {
        self.listeners.insert(port, Listener::default());
    }

    pub fn remove_listener(&mut self, port: u16) {
        if let Some(l) = self.listeners.remove(&port) {
            for h in l.pending.into_iter().chain(l.ready) {
                // Never both: a socket moves from `pending` to `ready`.
                self.sockets.get_mut::<tcp::Socket>(h).abort();
                self.orphan(h);
            }
        }
    }

    /// The next established connection of the listener on `port`, or the waker stored.
    pub fn accept(&mut self, port: u16, waker: &Waker) -> Option<(SocketHandle, SocketAddr)> {
        let l = self.listeners.get_mut(&port)?;
        match l.ready.pop_front() {
            Some(h) => {
                let c = self.conns.get_mut(&h).expect("a ready socket has a conn");
                c.phase = Phase::Accepted;
                Some((h, SocketAddr::V4(c.tuple.0)))
            }
            None => {
                l.waker = Some(waker.clone());
                None
            }
        }
    }

    // ---- connections ----

    pub fn tcp(&mut self, h: SocketHandle) -> &mut tcp::Socket<'static> {
        self.sockets.get_mut::<tcp::Socket>(h)
    }

    /// Its stream is gone: free it once closed.
    pub fn orphan(&mut self, h: SocketHandle) {
        if let Some(c) = self.conns.get_mut(&h) {
            c.phase = Phase::Orphan(None);
            self.orphans.push(h);
            self.want_poll();
        }
    }

    fn remove_conn(&mut self, h: SocketHandle) {
        if let Some(c) = self.conns.remove(&h) {
            if self.tuples.get(&c.tuple) == Some(&h) {
                self.tuples.remove(&c.tuple);
            }
            self.ring_bytes -= c.rx.len() + c.tx.len();
            if c.outbound.is_some() {
                self.outbound -= 1;
            }
            // The socket (which borrows the rings) goes first, then the rings.
            drop(self.sockets.remove(h));
            drop(c);
        }
    }

    /// Ring sizes for a new connection: the configured ones while the budget has room for
    /// them several times over, then an eighth of what is left, down to [`MIN_RING`].
    fn ring_sizes(&self) -> (usize, usize) {
        let left = self.limits.ring_budget.saturating_sub(self.ring_bytes);
        let share = left / 8;
        let l = &self.limits;
        let total = l.tcp_rx + l.tcp_tx;
        if share >= total {
            return (l.tcp_rx, l.tcp_tx);
        }
        let scale = |n: usize| ((n as u128 * share as u128 / total as u128) as usize).max(MIN_RING);
        (scale(l.tcp_rx).min(l.tcp_rx), scale(l.tcp_tx).min(l.tcp_tx))
    }

    #[allow(unsafe_code)] // Ring::storage: see the SAFETY note below
    fn new_conn(
        &mut self,
        port: u16,
        tuple: Tuple,
        born: SmolInstant,
        outbound: Option<Outbound>,
    ) -> io::Result<SocketHandle> {
        let (rx_len, tx_len) = self.ring_sizes();
        let mut rx = Ring::new(rx_len)?;
        let mut tx = Ring::new(tx_len)?;
        self.ring_bytes += rx_len + tx_len;
        // SAFETY: each ring lends its storage once, to this socket; `remove_conn` drops the
        // socket before the rings.
        let (rxs, txs) = unsafe { (rx.storage(), tx.storage()) };
        let mut s = tcp::Socket::new(tcp::SocketBuffer::new(rxs), tcp::SocketBuffer::new(txs));
        s.set_nagle_enabled(false);
        // One ACK per poll (per batch of packets from the tunnel) rather than a timer.
        s.set_ack_delay(None);
        match outbound {
            None => s
                .listen(port)
                .map_err(|e| io::Error::other(format!("listen: {e:?}")))?,
            Some(_) => {
                let remote = IpEndpoint::new(IpAddress::Ipv4(*tuple.0.ip()), tuple.0.port());
                let local = IpEndpoint::new(IpAddress::Ipv4(self.config.address), port);
                s.connect(self.iface.context(), remote, local)
                    .map_err(|e| io::Error::other(format!("connect: {e:?}")))?;
            }
        }
        let h = self.sockets.add(s);
        self.conns.insert(
            h,
            Conn {
                born,
                rx,
                tx,
                port,
                tuple,
                phase: Phase::Pending,
                cwnd: Cwnd::new(tx_len),
                rx_dirty: false,
                tx_dirty: false,
                outbound,
            },
        );
        if outbound.is_some() {
            self.outbound += 1;
        }
        Ok(h)
    }

    /// Opens a connection to `remote` from a free ephemeral port (SYN sent at the next
    /// poll); fails when [`Limits::max_outbound`] outbound connections are open, when the
    /// stack is at its socket budget or no port is free.
    pub fn connect(&mut self, remote: SocketAddrV4) -> io::Result<SocketHandle> {
        if self.outbound >= self.limits.max_outbound {
            self.counters.connect_refused_cap += 1;
            return Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                format!(
                    "netstack: {} outbound connections open already",
                    self.limits.max_outbound
                ),
            ));
        }
        if self.conns.len() >= self.limits.max_tcp {
            return Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                "netstack: at its TCP connection budget",
            ));
        }
        if remote.port() == 0 || remote.ip().is_unspecified() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("netstack: cannot connect to {remote}"),
            ));
        }
        let used: std::collections::HashSet<u16> = self.conns.values().map(|c| c.port).collect();
        let span = u32::from(u16::MAX - EPHEMERAL) + 1;
        let start = fastrand::u32(..span);
        let port = (0..span)
            .map(|i| EPHEMERAL + ((start + i) % span) as u16)
            .find(|p| !used.contains(p) && !self.listeners.contains_key(p))
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::AddrInUse,
                    "netstack: no free port for a connection",
                )
            })?;
        let tuple = (remote, port);
        let h = self.new_conn(
            port,
            tuple,
            self.last_poll,
            Some(Outbound::Connecting(None)),
        )?;
        self.tuples.insert(tuple, h);
        self.connecting.push(h);
        self.conns.get_mut(&h).expect("just made").phase = Phase::Accepted;
        self.want_poll();
        Ok(h)
    }

    /// Where the handshake of the outbound connection `h` stands: Ready(Ok) once established,
    /// Ready(Err) when refused or timed out, else Pending (the waker stored).
    pub fn poll_connected(
        &mut self,
        h: SocketHandle,
        waker: &Waker,
    ) -> std::task::Poll<io::Result<()>> {
        use std::task::Poll;
        let outbound = self.conns.get(&h).and_then(|c| c.outbound);
        let sock = self.sockets.get_mut::<tcp::Socket>(h);
        match (outbound, sock.state()) {
            (Some(Outbound::TimedOut), _) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "no answer to the connection in {:?}",
                    self.limits.connect_timeout
                ),
            ))),
            (_, tcp::State::SynSent) => {
                sock.register_send_waker(waker);
                Poll::Pending
            }
            (_, tcp::State::Closed) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::ConnectionRefused,
                "connection refused",
            ))),
            _ => Poll::Ready(Ok(())),
        }
    }

    // ---- the data path ----

    /// Takes a packet from the tunnel (copied). A SYN to a listener gets a socket of its
    /// own when its backlog and the socket budget have room, else it is dropped.
    pub fn receive(&mut self, now: Instant, packet: &[u8]) {
        if self.rx.is_full() {
            self.poll(now);
        }
        if let Some((tuple, port)) = syn_of(packet, self.config.address) {
            if !self.tuples.contains_key(&tuple) {
                if let Some(l) = self.listeners.get(&port) {
                    let full = l.pending.len() + l.ready.len() >= self.limits.backlog
                        || self.conns.len() >= self.limits.max_tcp;
                    // Full: the oldest handshake of this port that never completed makes room,
                    // so a flood of SYNs that are never answered cannot keep clients out (the
                    // kernel answers such a flood with SYN cookies); else the SYN is dropped.
                    if full {
                        match self.oldest_half_open(port) {
                            Some(h) => {
                                self.drop_pending(h);
                                self.counters.half_open_dropped += 1;
                            }
                            None => {
                                self.counters.syn_dropped += 1;
                                return;
                            }
                        }
                    }
                    let born = self.smol_now(now);
                    match self.new_conn(port, tuple, born, None) {
                        Ok(h) => {
                            self.tuples.insert(tuple, h);
                            self.fresh.push(h);
                            if let Some(l) = self.listeners.get_mut(&port) {
                                l.pending.push(h);
                            }
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "netstack: no memory for a connection");
                            self.counters.syn_dropped += 1;
                            return;
                        }
                    }
                }
            }
        }
        if !self.rx.push(packet) {
            self.counters.rx_dropped += 1;
        }
    }

    /// Processes the packets received and the sockets' output; returns when to poll next
    /// (None: only when something happens).
    pub fn poll(&mut self, now: Instant) -> Option<Instant> {
        let t = self.smol_now(now);
        self.last_poll = t;
        self.dirty = false;
        self.wake_pending = false;
        let mut dev = Device {
            rx: &mut self.rx,
            tx: &mut self.tx,
            mtu: usize::from(self.config.mtu),
        };
        self.iface.poll(t, &mut dev, &mut self.sockets);
        // smoltcp's egress sends at most one packet per socket per pass: pass again while
        // something left and the output queue has room (each pass looks at every socket).
        while !dev.tx.is_full()
            && self.iface.poll_egress(t, &mut dev, &mut self.sockets)
                == PollResult::SocketStateChanged
        {}
        self.after_poll(t);
        self.watch_output();
        let mut next = self.iface.poll_at(t, &self.sockets);
        for h in &self.orphans {
            if let Some(Phase::Orphan(Some(d))) = self.conns.get(h).map(|c| &c.phase) {
                next = Some(next.map_or(*d, |n| n.min(*d)));
            }
        }
        for h in &self.connecting {
            if let Some(Some(Outbound::Connecting(Some(d)))) = self.conns.get(h).map(|c| c.outbound)
            {
                next = Some(next.map_or(d, |n| n.min(d)));
            }
        }
        if self.dirty {
            next = Some(t);
        }
        next.map(|n| self.base + Duration::from_micros(n.total_micros().max(0) as u64))
    }

    /// Shows each data segment the last poll queued to its connection's window (a segment
    /// sent again is a loss).
    fn watch_output(&mut self) {
        let ours = self.config.address;
        let (tuples, conns, sockets) = (&self.tuples, &mut self.conns, &self.sockets);
        let losses = &mut self.counters.tcp_losses;
        self.tx.take_unscanned(|p| {
            let Some((tuple, seq, len)) = segment_of(p, ours) else {
                return;
            };
            let Some(h) = tuples.get(&tuple) else { return };
            if let Some(c) = conns.get_mut(h) {
                let queued = sockets.get::<tcp::Socket>(*h).send_queue();
                if c.cwnd.sent(seq, len, queued) {
                    *losses += 1;
                }
            }
        });
    }

    /// Writes what the connection's window allows of `buf`; Pending (waker stored) when it
    /// allows nothing.
    pub fn tcp_write(
        &mut self,
        h: SocketHandle,
        buf: &[u8],
        waker: &Waker,
    ) -> std::task::Poll<io::Result<usize>> {
        use std::task::Poll;
        let sock = self.sockets.get_mut::<tcp::Socket>(h);
        if !sock.may_send() {
            return Poll::Ready(Err(closed_error(sock.state())));
        }
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let Some(c) = self.conns.get_mut(&h) else {
            return Poll::Ready(Err(closed_error(tcp::State::Closed)));
        };
        let room = c.cwnd.room(sock.send_queue());
        let n = match sock.send_slice(&buf[..buf.len().min(room)]) {
            Ok(n) => n,
            Err(_) => return Poll::Ready(Err(closed_error(tcp::State::Closed))),
        };
        if n == 0 {
            // Woken when an acknowledgment frees ring space, which also opens the window.
            sock.register_send_waker(waker);
            return Poll::Pending;
        }
        c.cwnd.wrote(n);
        c.tx_dirty = true;
        self.want_poll();
        Poll::Ready(Ok(n))
    }

    /// Hands up to `max` packets to `out`; true when more are left.
    pub fn take_output(&mut self, max: usize, mut out: impl FnMut(&[u8])) -> bool {
        for _ in 0..max {
            match self.tx.pop() {
                Some(p) => out(p),
                None => return false,
            }
        }
        !self.tx.is_empty()
    }

    fn after_poll(&mut self, t: SmolInstant) {
        // Sockets made for SYNs: a SYN goes to the first listening socket of its port, so
        // key each by the peer it actually took; one that took none is not needed.
        for i in 0..self.fresh.len() {
            let h = self.fresh[i];
            let s = self.sockets.get::<tcp::Socket>(h);
            match (s.state(), s.remote_endpoint()) {
                (tcp::State::Listen, _) | (_, None) => {
                    self.drop_pending(h);
                }
                (_, Some(ep)) => {
                    let Some(peer) = v4(ep) else { continue };
                    let c = self.conns.get_mut(&h).expect("fresh socket has a conn");
                    let tuple = (peer, c.port);
                    if c.tuple != tuple {
                        c.tuple = tuple;
                        self.tuples.insert(tuple, h);
                    }
                }
            }
        }
        self.fresh.clear();
        // Backlogs: established connections become acceptable; failed ones go.
        let mut gone: Vec<SocketHandle> = Vec::new();
        for l in self.listeners.values_mut() {
            let mut woke = false;
            let mut i = 0;
            while i < l.pending.len() {
                let h = l.pending[i];
                match self.sockets.get::<tcp::Socket>(h).state() {
                    tcp::State::SynReceived | tcp::State::Listen
                        if self.conns.get(&h).is_some_and(|c| {
                            t >= c.born + self.limits.handshake_timeout.into()
                        }) =>
                    {
                        self.counters.half_open_dropped += 1;
                        gone.push(h);
                        i += 1;
                    }
                    tcp::State::SynReceived | tcp::State::Listen => i += 1,
                    tcp::State::Closed | tcp::State::TimeWait => {
                        gone.push(h);
                        i += 1;
                    }
                    _ => {
                        l.pending.swap_remove(i);
                        l.ready.push_back(h);
                        woke = true;
                    }
                }
            }
            if woke {
                if let Some(w) = l.waker.take() {
                    w.wake();
                }
            }
        }
        for h in gone {
            self.drop_pending(h);
        }
        // Outbound handshakes: done when past SYN-SENT, aborted at their deadline.
        let mut i = 0;
        while i < self.connecting.len() {
            let h = self.connecting[i];
            let Some(c) = self.conns.get_mut(&h) else {
                self.connecting.swap_remove(i);
                continue;
            };
            let s = self.sockets.get_mut::<tcp::Socket>(h);
            if let Some(Outbound::Connecting(d)) = &mut c.outbound {
                d.get_or_insert(t + self.limits.connect_timeout.into());
            }
            match (c.outbound, s.state()) {
                (Some(Outbound::Connecting(Some(d))), tcp::State::SynSent) if t >= d => {
                    c.outbound = Some(Outbound::TimedOut);
                    // Wakes the connecting task (a state change wakes the socket's wakers).
                    s.abort();
                    self.connecting.swap_remove(i);
                }
                (Some(Outbound::Connecting(_)), tcp::State::SynSent) => i += 1,
                (_, tcp::State::Closed) => {
                    self.connecting.swap_remove(i);
                }
                _ => {
                    c.outbound = Some(Outbound::Done);
                    self.connecting.swap_remove(i);
                }
            }
        }
        // Orphans: freed when closed, reset at their deadline or when data arrives that
        // no one will read.
        let mut i = 0;
        while i < self.orphans.len() {
            let h = self.orphans[i];
            let linger = self.limits.orphan_linger;
            let Some(c) = self.conns.get_mut(&h) else {
                self.orphans.swap_remove(i);
                continue;
            };
            let deadline = match &mut c.phase {
                Phase::Orphan(d) => *d.get_or_insert(t + linger.into()),
                _ => t,
            };
            let s = self.sockets.get_mut::<tcp::Socket>(h);
            match s.state() {
                tcp::State::Closed | tcp::State::TimeWait => {
                    self.orphans.swap_remove(i);
                    self.remove_conn(h);
                    continue;
                }
                _ if s.recv_queue() > 0 || t >= deadline => {
                    s.abort();
                    self.dirty = true;
                }
                _ => {}
            }
            i += 1;
        }
    }

    /// The listener's handshake that has waited longest for the peer's ACK.
    fn oldest_half_open(&self, port: u16) -> Option<SocketHandle> {
        let l = self.listeners.get(&port)?;
        l.pending
            .iter()
            .filter(|h| {
                matches!(
                    self.sockets.get::<tcp::Socket>(**h).state(),
                    tcp::State::SynReceived | tcp::State::Listen
                )
            })
            .min_by_key(|h| self.conns.get(h).map(|c| c.born))
            .copied()
    }

    fn drop_pending(&mut self, h: SocketHandle) {
        if let Some(c) = self.conns.get(&h) {
            if let Some(l) = self.listeners.get_mut(&c.port) {
                l.pending.retain(|p| *p != h);
                l.ready.retain(|p| *p != h);
            }
        }
        self.remove_conn(h);
    }

    /// Gives back the pages of drained rings that data went through (the timer tick calls
    /// this; cheap when nothing moved).
    pub fn release_drained(&mut self) {
        for (h, c) in self.conns.iter_mut() {
            if !(c.rx_dirty || c.tx_dirty) {
                continue;
            }
            let s = self.sockets.get::<tcp::Socket>(*h);
            if c.rx_dirty && s.recv_queue() == 0 {
                c.rx.release();
                c.rx_dirty = false;
            }
            if c.tx_dirty && s.send_queue() == 0 {
                c.tx.release();
                c.tx_dirty = false;
            }
        }
    }

    /// Bytes of the connection rings resident in memory.
    pub fn resident_ring_bytes(&self) -> io::Result<usize> {
        let mut n = 0;
        for c in self.conns.values() {
            n += c.rx.resident()? + c.tx.resident()?;
        }
        Ok(n)
    }

    // ---- UDP ----

    #[allow(unsafe_code)] // Ring::storage: see the SAFETY note below
    pub fn add_udp(&mut self, port: u16) -> io::Result<SocketHandle> {
        let slots = self.limits.udp_slots;
        let mut rx = Ring::new(self.limits.udp_ring)?;
        let mut tx = Ring::new(self.limits.udp_ring)?;
        // SAFETY: as in `new_conn`; `remove_udp` drops the socket before the rings.
        let (rxs, txs) = unsafe { (rx.storage(), tx.storage()) };
        let mut s = udp::Socket::new(
            udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; slots], rxs),
            udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; slots], txs),
        );
        s.bind(port)
            .map_err(|e| io::Error::other(format!("bind: {e:?}")))?;
        let handle = self.sockets.add(s);
        self.udp.insert(
            port,
            UdpBinding {
                handle,
                _rx: rx,
                _tx: tx,
            },
        );
        Ok(handle)
    }

    pub fn remove_udp(&mut self, port: u16) {
        if let Some(b) = self.udp.remove(&port) {
            drop(self.sockets.remove(b.handle));
            drop(b);
        }
    }

    pub fn udp_socket(&mut self, h: SocketHandle) -> &mut udp::Socket<'static> {
        self.sockets.get_mut::<udp::Socket>(h)
    }

    #[cfg(test)]
    pub fn ring_bytes(&self) -> usize {
        self.ring_bytes
    }

    #[cfg(test)]
    pub fn counts(&self) -> (usize, usize) {
        (self.conns.len(), self.sockets.iter().count())
    }
}

/// The error for a socket that can no longer send.
pub fn closed_error(state: tcp::State) -> io::Error {
    if state == tcp::State::Closed {
        io::Error::new(io::ErrorKind::ConnectionReset, "connection reset")
    } else {
        io::Error::new(io::ErrorKind::BrokenPipe, "connection closed for sending")
    }
}

/// The connection, sequence number and payload length of a TCP segment the stack sends
/// from `ours`.
fn segment_of(p: &[u8], ours: Ipv4Addr) -> Option<(Tuple, u32, usize)> {
    if p.len() < 40 || p[0] >> 4 != 4 || p[9] != 6 || p[12..16] != ours.octets() {
        return None;
    }
    let ihl = usize::from(p[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([p[2], p[3]])).min(p.len());
    let t = p.get(ihl..total)?;
    let doff = usize::from(t.get(12)? >> 4) * 4;
    let len = t.len().checked_sub(doff)?;
    let dst = Ipv4Addr::new(p[16], p[17], p[18], p[19]);
    let sport = u16::from_be_bytes([t[0], t[1]]);
    let dport = u16::from_be_bytes([t[2], t[3]]);
    let seq = u32::from_be_bytes([t[4], t[5], t[6], t[7]]);
    Some(((SocketAddrV4::new(dst, dport), sport), seq, len))
}

fn v4(ep: IpEndpoint) -> Option<SocketAddrV4> {
    match ep.addr {
        IpAddress::Ipv4(a) => Some(SocketAddrV4::new(a, ep.port)),
    }
}

/// The peer and our port of a TCP SYN (no ACK, no RST) to `ours`, from a well-formed
/// unfragmented IPv4 packet.
fn syn_of(p: &[u8], ours: Ipv4Addr) -> Option<(Tuple, u16)> {
    if p.len() < 20 || p[0] >> 4 != 4 || p[9] != 6 {
        return None;
    }
    let ihl = usize::from(p[0] & 0x0f) * 4;
    let frag = u16::from_be_bytes([p[6], p[7]]) & 0x1fff;
    if ihl < 20 || frag != 0 || p.len() < ihl + 20 || p[16..20] != ours.octets() {
        return None;
    }
    let t = &p[ihl..];
    let flags = t[13];
    if flags & 0x02 == 0 || flags & 0x14 != 0 {
        return None;
    }
    let src = Ipv4Addr::new(p[12], p[13], p[14], p[15]);
    let sport = u16::from_be_bytes([t[0], t[1]]);
    let dport = u16::from_be_bytes([t[2], t[3]]);
    Some(((SocketAddrV4::new(src, sport), dport), dport))
}
