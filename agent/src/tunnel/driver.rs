//! The data path: moves packets between the interface and the hub through a [`TunnelCore`].
//!
//! One task on its own current-thread runtime (see [`spawn`]) waits for the interface or the
//! UDP socket to become readable, for the timer tick and for a pending name resolution.
//! Readable UDP: up to [`BATCH`] datagrams per `recvmmsg`, each decrypted; with UDP GRO
//! (Linux 5.0, [`udp::enable_gro`]) the kernel hands over runs of datagrams joined, up to
//! [`udp::GRO_SLOTS`] of 64 KiB per call (2 MiB at most, fixed), which are cut back into
//! datagrams.
//! On a TUN device the TCP segments of a batch (and, where the device took USO, the UDP
//! datagrams) are merged into GSO frames ([`Coalescer`])
//! before they are written.
//! Readable interface: up to [`BATCH`] frames read, TSO frames cut into packets
//! ([`Segments`]), encrypted into a batch that leaves in one `sendmmsg`, each run of
//! equal-size datagrams as one UDP GSO message ([`udp::send_batch`]). Buffers are
//! allocated once; nothing here waits on the control socket.
//!
//! The userspace variant ([`spawn_stack`], `GATELET_NETSTACK=userspace`) has the
//! [`Netstack`] where the interface was: decrypted packets go into it, and it is polled after
//! each batch, when a socket operation asks for it ([`Netstack::poll_wanted`]) and at the
//! deadline the last poll returned; what it sends leaves in `sendmmsg` batches. An idle stack
//! sets no deadline, so the loop then wakes only for the timer tick.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::thread::JoinHandle;
use std::time::Instant;

use gatelet_agent_api::env::Endpoint;
use tokio::io::unix::{AsyncFd, AsyncFdReadyGuard};
use tokio::sync::watch;
use tokio::time::MissedTickBehavior;

use super::core::{FromNetwork, TunnelCore, TIMER_TICK};
use super::resolve::resolve;
use super::udp::{self, PacketBatch, RecvBatch, BATCH};
use crate::netif::vnet::{Coalescer, Segments, VNET_HDR_LEN};
use crate::netstack::Netstack;
use crate::watchdog::CheckIn;

/// Batches handled per readiness before the loop looks at the other sources again.
const ROUNDS_PER_WAKEUP: usize = 8;
/// Times a full send batch waits for socket space before the rest is dropped.
const MAX_SEND_WAITS: usize = 64;
/// Extra room above the MTU for datagrams from a hub with a larger MTU.
const PACKET_HEADROOM: usize = 128;
/// Largest frame the interface hands over with TSO offload (an IP packet's length limit).
const MAX_GSO_FRAME: usize = 65_535;
/// Timer ticks between two checks that the interface still exists.
const IFACE_CHECK_TICKS: u32 = 20;
/// Poll-and-send rounds of the netstack per wake-up before the loop looks at the other
/// sources again (more output then makes the next deadline "now").
const STACK_ROUNDS_PER_WAKEUP: usize = 8;

/// A descriptor that reads and writes one IP packet per call.
pub trait PacketInterface: AsRawFd + std::os::fd::AsFd {
    /// Whether each packet read or written carries a `virtio_net_hdr` (`IFF_VNET_HDR`).
    fn vnet_hdr(&self) -> bool {
        false
    }

    /// Whether runs of UDP datagrams of one flow may be written as one `GSO_UDP_L4` frame
    /// (a TUN device that took the USO offloads).
    fn udp_segments(&self) -> bool {
        false
    }

    /// A one-line description when the interface no longer exists (deleted under the agent:
    /// the descriptor then stays silent forever), None while it is fine.
    fn gone(&self) -> Option<String> {
        None
    }
}

impl PacketInterface for crate::netif::tun::TunDevice {
    fn vnet_hdr(&self) -> bool {
        true
    }

    fn udp_segments(&self) -> bool {
        self.udp_segments()
    }

    fn gone(&self) -> Option<String> {
        self.is_gone().then(|| {
            format!(
                "TUN device {} was deleted; exiting so that the service manager restarts the \
                 agent, which creates it again",
                self.name()
            )
        })
    }
}

impl PacketInterface for std::os::unix::net::UnixDatagram {}

/// Everything the data path needs.
#[derive(Debug)]
pub struct DataPath<T: PacketInterface> {
    /// The protocol logic.
    pub core: TunnelCore,
    /// The interface: a TUN device, or any descriptor that reads and writes one IP packet
    /// per call (a `SOCK_SEQPACKET` socket in tests). Must be non-blocking.
    pub iface: T,
    /// The UDP socket to the hub (non-blocking); replaced when the hub's address family
    /// changes.
    pub udp: UdpSocket,
    /// The hub's name and port, resolved again when the core asks.
    pub endpoint: Endpoint,
    /// The interface MTU, which sizes the buffers.
    pub mtu: u16,
    /// Beaten on every turn of the loop (timer ticks included, so also when idle); the
    /// watchdog withholds systemd's keep-alive when it stops.
    pub checkin: CheckIn,
}

/// Starts the data path on a thread of its own; it runs until `shutdown` turns true or its
/// sender is dropped.
pub fn spawn<T: PacketInterface + Send + 'static>(
    dp: DataPath<T>,
    shutdown: watch::Receiver<bool>,
) -> io::Result<JoinHandle<io::Result<()>>> {
    on_own_thread(move || run(dp, shutdown))
}

/// Runs the future `make` returns on the `gatelet-datapath` thread, in a current-thread
/// runtime of its own (one blocking thread, for the hub's name lookups).
fn on_own_thread<F, Fut>(make: F) -> io::Result<JoinHandle<io::Result<()>>>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = io::Result<()>>,
{
    std::thread::Builder::new()
        .name("gatelet-datapath".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_io()
                .enable_time()
                .max_blocking_threads(1)
                .build()?;
            rt.block_on(make())
        })
}

/// Everything the userspace data path needs: [`DataPath`] with the netstack for the
/// interface.
#[derive(Debug)]
pub struct StackDataPath {
    /// The protocol logic.
    pub core: TunnelCore,
    /// The userspace stack holding the tunnel IP.
    pub stack: Netstack,
    /// The UDP socket to the hub (non-blocking).
    pub udp: UdpSocket,
    /// The hub's name and port, resolved again when the core asks.
    pub endpoint: Endpoint,
    /// The tunnel MTU, which sizes the buffers.
    pub mtu: u16,
    /// Beaten on every turn of the loop, as in [`DataPath`].
    pub checkin: CheckIn,
}

/// Starts the userspace data path on a thread of its own (as [`spawn`]).
pub fn spawn_stack(
    dp: StackDataPath,
    shutdown: watch::Receiver<bool>,
) -> io::Result<JoinHandle<io::Result<()>>> {
    on_own_thread(move || run_stack(dp, shutdown))
}

use crate::sys::fd::{read as read_fd, write as write_fd};

/// Runs the data path until shutdown (see [`spawn`]). Must run inside a tokio runtime with
/// I/O and time enabled.
pub async fn run<T: PacketInterface>(
    dp: DataPath<T>,
    mut shutdown: watch::Receiver<bool>,
) -> io::Result<()> {
    let max_packet = usize::from(dp.mtu).max(1500) + PACKET_HEADROOM;
    let out_len = TunnelCore::dst_len(max_packet);
    let mut core = dp.core;
    let iface = crate::sys::fd::register(dp.iface)?;
    let mut udp = crate::sys::fd::register(dp.udp)?;
    let endpoint = dp.endpoint;
    let checkin = dp.checkin;
    let mut rx = RecvBatch::new(out_len);
    rx.set_gro(udp::enable_gro(udp.get_ref()));
    let mut tx = PacketBatch::new(out_len);
    let mut plain = vec![0u8; out_len];
    let vnet = iface.get_ref().vnet_hdr();
    // With offloads, a frame from the interface may be a TCP segment of up to 64 KiB.
    let mut packet = vec![
        0u8;
        if vnet {
            VNET_HDR_LEN + MAX_GSO_FRAME
        } else {
            max_packet
        }
    ];
    let mut scratch = vec![0u8; max_packet];
    let udp_segments = iface.get_ref().udp_segments();
    let mut coalescer = vnet.then(|| Coalescer::new(udp_segments));
    let mut resolving = Resolving::default();
    let mut ticks: u32 = 0;
    let mut tick = tokio::time::interval(TIMER_TICK);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);

    loop {
        checkin.beat();
        let now = Instant::now();
        resolving.start_if_wanted(&mut core, &endpoint, now);
        let resolved = resolving.done();
        tokio::select! {
            _ = shutdown.changed() => {
                if shutdown.has_changed().is_err() || *shutdown.borrow() {
                    break;
                }
            }
            r = udp.readable() => {
                let mut g = r?;
                let mut deliver = Deliver::Iface {
                    fd: iface.get_ref().as_raw_fd(),
                    coalescer: coalescer.as_mut(),
                };
                on_udp_readable(&mut g, &mut core, &mut rx, &mut plain, &mut deliver);
            }
            r = iface.readable() => {
                let mut g = r?;
                read_iface(&mut g, &udp, &mut core, &mut packet, &mut scratch, &mut tx).await?;
            }
            _ = tick.tick() => {
                if let Some(d) = core.on_timer(Instant::now(), &mut plain) {
                    send_one(&mut core, udp.get_ref(), d);
                }
                ticks = ticks.wrapping_add(1);
                if ticks.is_multiple_of(IFACE_CHECK_TICKS) {
                    if let Some(why) = iface.get_ref().gone() {
                        return Err(io::Error::new(io::ErrorKind::NotFound, why));
                    }
                }
            }
            result = resolved => {
                use_resolved(result, &mut core, &mut udp, &mut rx, &endpoint, &mut plain);
            }
        }
    }
    Ok(())
}

/// Runs the userspace data path until shutdown (see [`spawn_stack`]). Must run inside a
/// tokio runtime with I/O and time enabled.
pub async fn run_stack(dp: StackDataPath, mut shutdown: watch::Receiver<bool>) -> io::Result<()> {
    let max_packet = usize::from(dp.mtu).max(1500) + PACKET_HEADROOM;
    let out_len = TunnelCore::dst_len(max_packet);
    let mut core = dp.core;
    let stack = dp.stack;
    let mut udp = crate::sys::fd::register(dp.udp)?;
    let endpoint = dp.endpoint;
    let checkin = dp.checkin;
    let mut rx = RecvBatch::new(out_len);
    rx.set_gro(udp::enable_gro(udp.get_ref()));
    let mut tx = PacketBatch::new(out_len);
    let mut plain = vec![0u8; out_len];
    let mut resolving = Resolving::default();
    let mut tick = tokio::time::interval(TIMER_TICK);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    // When the stack wants a poll at the latest; None while it is idle.
    let mut next_poll: Option<Instant> = None;

    loop {
        checkin.beat();
        let now = Instant::now();
        resolving.start_if_wanted(&mut core, &endpoint, now);
        let resolved = resolving.done();
        let deadline = async {
            match next_poll {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = shutdown.changed() => {
                if shutdown.has_changed().is_err() || *shutdown.borrow() {
                    break;
                }
            }
            r = udp.readable() => {
                let mut g = r?;
                on_udp_readable(&mut g, &mut core, &mut rx, &mut plain, &mut Deliver::Stack(&stack));
                next_poll = pump(&stack, &udp, &mut core, &mut tx).await?;
            }
            _ = stack.poll_wanted() => {
                next_poll = pump(&stack, &udp, &mut core, &mut tx).await?;
            }
            _ = deadline => {
                next_poll = pump(&stack, &udp, &mut core, &mut tx).await?;
            }
            _ = tick.tick() => {
                if let Some(d) = core.on_timer(Instant::now(), &mut plain) {
                    send_one(&mut core, udp.get_ref(), d);
                }
                stack.release_drained();
            }
            result = resolved => {
                use_resolved(result, &mut core, &mut udp, &mut rx, &endpoint, &mut plain);
            }
        }
    }
    Ok(())
}

/// Polls the stack and sends what it has, a batch at a time; returns its next deadline.
async fn pump(
    stack: &Netstack,
    udp: &AsyncFd<UdpSocket>,
    core: &mut TunnelCore,
    tx: &mut PacketBatch,
) -> io::Result<Option<Instant>> {
    let mut next = None;
    for _ in 0..STACK_ROUNDS_PER_WAKEUP {
        next = stack.poll(Instant::now());
        loop {
            tx.clear();
            let more = stack.take_output(BATCH, |p| encrypt_into(core, p, tx));
            flush(udp, core, tx).await?;
            if !more {
                break;
            }
        }
        // Sockets that had more than the output queue held are due again at once.
        if next.is_none_or(|at| at > Instant::now()) {
            return Ok(next);
        }
    }
    Ok(next)
}

/// The hub's name being resolved off the data path (a blocking lookup on tokio's blocking
/// pool), at most one at a time, when the core asks for it.
#[derive(Default)]
struct Resolving(Option<tokio::task::JoinHandle<Result<Vec<SocketAddr>, String>>>);

impl Resolving {
    /// Starts a lookup of `endpoint` when none runs and the core wants one.
    fn start_if_wanted(&mut self, core: &mut TunnelCore, endpoint: &Endpoint, now: Instant) {
        if self.0.is_none() && core.wants_resolve(now) {
            core.resolve_started(now);
            let ep = endpoint.clone();
            self.0 = Some(tokio::task::spawn_blocking(move || resolve(&ep)));
        }
    }

    /// The running lookup's result (never, when none runs); the next one can start after it.
    async fn done(&mut self) -> Result<Result<Vec<SocketAddr>, String>, tokio::task::JoinError> {
        let Some(h) = self.0.as_mut() else {
            return std::future::pending().await;
        };
        let r = h.await;
        self.0 = None;
        r
    }
}

/// Takes the outcome of a name resolution of the hub: connects the socket to the new address
/// (a fresh socket when the family changed) and starts the handshake.
fn use_resolved(
    result: Result<Result<Vec<SocketAddr>, String>, tokio::task::JoinError>,
    core: &mut TunnelCore,
    udp: &mut AsyncFd<UdpSocket>,
    rx: &mut RecvBatch,
    endpoint: &Endpoint,
    plain: &mut [u8],
) {
    let result = result.unwrap_or_else(|e| Err(format!("name resolution failed: {e}")));
    if let Err(e) = &result {
        tracing::warn!(error = %e, "hub endpoint not resolved");
    }
    let old = core.endpoint();
    if let Some(new) = core.resolve_finished(result) {
        tracing::info!(old = ?old, new = %new, endpoint = %endpoint, "hub endpoint address in use");
        let same_family = udp
            .get_ref()
            .local_addr()
            .is_ok_and(|a| a.is_ipv4() == new.is_ipv4());
        let switched = if same_family {
            udp.get_ref().connect(new)
        } else {
            udp::socket_for(new, true).and_then(|fresh| {
                let gro = udp::enable_gro(&fresh);
                *udp = crate::sys::fd::register(fresh)?;
                rx.set_gro(gro);
                Ok(())
            })
        };
        if let Err(e) = switched {
            // No route yet (booting without network, say): try again later.
            let msg = format!("cannot use the hub address {new}: {e}");
            tracing::warn!("{msg}");
            core.endpoint_unusable(&msg);
            return;
        }
        if let Some(d) = core.on_timer(Instant::now(), plain) {
            send_one(core, udp.get_ref(), d);
        }
    }
}

/// Where decrypted packets go.
enum Deliver<'a> {
    /// Written to the interface, TCP segments merged into GSO frames when it takes them.
    Iface {
        fd: RawFd,
        coalescer: Option<&'a mut Coalescer>,
    },
    /// Into the userspace stack's input queue.
    Stack(&'a Netstack),
}

impl Deliver<'_> {
    fn packet(&mut self, p: &[u8]) {
        match self {
            Deliver::Iface { fd, coalescer } => {
                let fd = *fd;
                let mut write = |frame: &[u8]| write_frame(fd, frame);
                match coalescer.as_deref_mut() {
                    Some(c) => c.push(p, &mut write),
                    None => write(p),
                }
            }
            Deliver::Stack(stack) => stack.receive(Instant::now(), p),
        }
    }

    fn end_of_batch(&mut self) {
        if let Deliver::Iface {
            fd,
            coalescer: Some(c),
        } = self
        {
            let fd = *fd;
            c.flush(&mut |frame: &[u8]| write_frame(fd, frame));
        }
    }
}

fn write_frame(fd: RawFd, frame: &[u8]) {
    if let Err(e) = write_fd(fd, frame) {
        tracing::debug!(error = %e, "dropped a packet the interface refused");
    }
}

/// Decrypts what the hub sent and delivers it (to the interface or the stack).
fn on_udp_readable(
    g: &mut AsyncFdReadyGuard<'_, UdpSocket>,
    core: &mut TunnelCore,
    rx: &mut RecvBatch,
    plain: &mut [u8],
    deliver: &mut Deliver<'_>,
) {
    for _ in 0..ROUNDS_PER_WAKEUP {
        let n = match g.try_io(|s| udp::recv_batch(s.get_ref(), rx)) {
            Err(_would_block) => return,
            Ok(Ok(n)) => n,
            Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
            Ok(Err(e)) => {
                // On a connected socket an ICMP error from the hub's address shows up here.
                let msg = match core.endpoint() {
                    Some(ep) => format!("the hub at {ep} does not accept datagrams: {e}"),
                    None => format!("UDP receive failed: {e}"),
                };
                tracing::debug!(error = %e, "UDP receive error");
                core.on_send_error(&msg);
                return;
            }
        };
        let now = Instant::now();
        let sock = g.get_ref().get_ref();
        // A slot holds one datagram, or with GRO a run of them cut back at their size.
        for datagram in (0..n).flat_map(|i| rx.datagrams(i)) {
            match core.from_network(now, datagram, plain) {
                FromNetwork::ToTun(p) => deliver.packet(p),
                FromNetwork::ToNetwork(d) => {
                    send_one(core, sock, d);
                    for _ in 0..BATCH * 8 {
                        match core.poll_queued(plain) {
                            Some(q) => send_one(core, sock, q),
                            None => break,
                        }
                    }
                }
                FromNetwork::Nothing => {}
            }
        }
        deliver.end_of_batch();
        if n < rx.capacity() {
            return;
        }
    }
}

/// Reads up to a batch of frames from the interface, encrypts their packets into `tx` and
/// sends them (several batches when GSO frames hold many segments).
async fn read_iface<T: PacketInterface>(
    g: &mut AsyncFdReadyGuard<'_, T>,
    udp: &AsyncFd<UdpSocket>,
    core: &mut TunnelCore,
    packet: &mut [u8],
    scratch: &mut [u8],
    tx: &mut PacketBatch,
) -> io::Result<()> {
    tx.clear();
    let fd = g.get_ref().get_ref().as_raw_fd();
    let vnet = g.get_ref().get_ref().vnet_hdr();
    for _ in 0..BATCH {
        let len = match g.try_io(|_| read_fd(fd, packet)) {
            Err(_would_block) => break,
            Ok(Ok(0)) => break,
            Ok(Ok(n)) => n,
            Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
            Ok(Err(e)) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("cannot read from the interface: {e}"),
                ))
            }
        };
        if !vnet {
            if tx.free_slot().is_none() {
                flush(udp, core, tx).await?;
                tx.clear();
            }
            encrypt_into(core, &packet[..len], tx);
            continue;
        }
        let Some(mut segments) = Segments::new(&packet[..len]) else {
            tracing::debug!("dropped a malformed frame from the interface");
            continue;
        };
        while let Some(seg) = segments.next(scratch) {
            if tx.free_slot().is_none() {
                flush(udp, core, tx).await?;
                tx.clear();
            }
            encrypt_into(core, seg, tx);
        }
    }
    flush(udp, core, tx).await
}

fn encrypt_into(core: &mut TunnelCore, packet: &[u8], tx: &mut PacketBatch) {
    if let Some(slot) = tx.free_slot() {
        if let Some(out) = core.from_tun(packet, slot) {
            let n = out.len();
            tx.push(n);
        }
    }
}

/// Sends the batch, waiting for socket space when the kernel's buffer is full.
async fn flush(
    udp: &AsyncFd<UdpSocket>,
    core: &mut TunnelCore,
    tx: &mut PacketBatch,
) -> io::Result<()> {
    if core.endpoint().is_none() {
        return Ok(());
    }
    let mut sent = 0;
    for _ in 0..MAX_SEND_WAITS {
        if sent >= tx.len() {
            return Ok(());
        }
        match udp::send_batch(udp.get_ref(), tx, sent) {
            Ok(n) => sent += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                let mut g = udp.writable().await?;
                g.clear_ready();
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                send_failed(core, &e);
                return Ok(());
            }
        }
    }
    Ok(())
}

fn send_one(core: &mut TunnelCore, sock: &UdpSocket, datagram: &[u8]) {
    if core.endpoint().is_none() {
        return;
    }
    match sock.send(datagram) {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
        Err(e) => send_failed(core, &e),
    }
}

fn send_failed(core: &mut TunnelCore, e: &io::Error) {
    let msg = match core.endpoint() {
        Some(ep) => format!("cannot send to the hub at {ep}: {e}"),
        None => format!("cannot send to the hub: {e}"),
    };
    tracing::debug!(error = %e, "UDP send error");
    core.on_send_error(&msg);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tunnel::allowed::AllowedIps;
    use crate::tunnel::core::TunnelKeys;
    use crate::tunnel::stats::TunnelStats;
    use boringtun::x25519::{PublicKey, StaticSecret};
    use std::os::unix::net::UnixDatagram;
    use std::sync::Arc;
    use std::time::Duration;

    const WAIT: Duration = Duration::from_secs(5);

    fn ipv4(src: [u8; 4], dst: [u8; 4], payload: &[u8]) -> Vec<u8> {
        let mut p = vec![0u8; 20];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&((20 + payload.len()) as u16).to_be_bytes());
        p[8] = 64;
        p[9] = 17;
        p[12..16].copy_from_slice(&src);
        p[16..20].copy_from_slice(&dst);
        p.extend_from_slice(payload);
        p
    }

    /// The hub side of the test: a core behind a blocking loopback socket.
    struct Hub {
        core: TunnelCore,
        sock: UdpSocket,
        peer: Option<SocketAddr>,
        buf: Vec<u8>,
    }

    impl Hub {
        /// Receives datagrams, answering handshakes, until one yields a packet.
        fn recv_packet(&mut self) -> Vec<u8> {
            let mut dgram = [0u8; 2048];
            for _ in 0..20 {
                let (n, from) = self
                    .sock
                    .recv_from(&mut dgram)
                    .expect("datagram from the gateway");
                self.peer = Some(from);
                match self
                    .core
                    .from_network(Instant::now(), &dgram[..n], &mut self.buf)
                {
                    FromNetwork::ToTun(p) => return p.to_vec(),
                    FromNetwork::ToNetwork(d) => {
                        self.sock.send_to(d, from).unwrap();
                        while let Some(q) = self.core.poll_queued(&mut self.buf) {
                            self.sock.send_to(q, from).unwrap();
                        }
                    }
                    FromNetwork::Nothing => {}
                }
            }
            panic!("no packet from the gateway");
        }

        fn send_packet(&mut self, packet: &[u8]) {
            let d = self
                .core
                .from_tun(packet, &mut self.buf)
                .expect("a session");
            self.sock.send_to(d, self.peer.unwrap()).unwrap();
        }
    }

    #[test]
    fn data_path_carries_packets_both_ways_over_real_sockets() {
        let (gw_secret, hub_secret) = ([0x44u8; 32], [0x55u8; 32]);
        let public = |s: [u8; 32]| PublicKey::from(&StaticSecret::from(s)).to_bytes();
        let hub_sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        hub_sock.set_read_timeout(Some(WAIT)).unwrap();
        let hub_stats = Arc::new(TunnelStats::new(Instant::now(), "tun"));
        let mut hub = Hub {
            core: TunnelCore::new(
                &TunnelKeys {
                    private_key: hub_secret,
                    peer_public_key: public(gw_secret),
                    preshared_key: None,
                },
                AllowedIps::new(vec!["10.8.0.2/32".parse().unwrap()]),
                hub_stats,
            ),
            sock: hub_sock,
            peer: None,
            buf: vec![0; 2048],
        };

        let stats = Arc::new(TunnelStats::new(Instant::now(), "tun"));
        let (iface, host) = UnixDatagram::pair().unwrap();
        iface.set_nonblocking(true).unwrap();
        host.set_read_timeout(Some(WAIT)).unwrap();
        let dp = DataPath {
            core: TunnelCore::new(
                &TunnelKeys {
                    private_key: gw_secret,
                    peer_public_key: public(hub_secret),
                    preshared_key: None,
                },
                AllowedIps::new(vec!["10.8.0.1/32".parse().unwrap()]),
                stats.clone(),
            ),
            iface,
            udp: udp::socket_for("127.0.0.1:1".parse().unwrap(), false).unwrap(),
            endpoint: Endpoint {
                host: "127.0.0.1".into(),
                port: hub.sock.local_addr().unwrap().port(),
            },
            mtu: 1420,
            checkin: CheckIn::new(),
        };
        let checkin = dp.checkin.clone();
        let (stop, stop_rx) = watch::channel(false);
        let thread = spawn(dp, stop_rx).unwrap();

        let up = ipv4([10, 8, 0, 2], [10, 8, 0, 1], b"to the hub");
        host.send(&up).unwrap();
        // Read before or after the endpoint is resolved (a race), the packet must arrive.
        assert_eq!(
            hub.recv_packet(),
            up,
            "queued during the handshake, then sent"
        );

        let down = ipv4([10, 8, 0, 1], [10, 8, 0, 2], b"to the gateway");
        hub.send_packet(&down);
        let mut got = [0u8; 2048];
        let n = host.recv(&mut got).unwrap();
        assert_eq!(&got[..n], &down[..]);

        let spoofed = ipv4([10, 9, 9, 9], [10, 8, 0, 2], b"spoofed");
        hub.send_packet(&spoofed);
        let marker = ipv4([10, 8, 0, 1], [10, 8, 0, 2], b"after");
        hub.send_packet(&marker);
        let n = host.recv(&mut got).unwrap();
        assert_eq!(&got[..n], &marker[..], "the spoofed packet never arrived");
        let st = stats.snapshot(Instant::now());
        assert_eq!(st.rx_dropped_not_allowed, 1);
        assert_eq!((st.rx_packets, st.tx_packets), (2, 1));
        assert_eq!(st.handshake_age_s, Some(0));
        // Idle now: the timer tick alone keeps the loop checking in with the watchdog.
        let mut watchdog = crate::watchdog::Watchdog::new([("datapath", checkin)]);
        std::thread::sleep(TIMER_TICK * 3);
        assert_eq!(watchdog.check(), Ok(()), "the idle data path beats");

        stop.send(true).unwrap();
        thread.join().unwrap().unwrap();
    }

    fn checksum(b: &[u8]) -> [u8; 2] {
        crate::checksum::internet(b).to_be_bytes()
    }

    /// A TCP packet from the hub (10.8.0.1:5555) to the gateway's port 80.
    fn tcp_to_gw(flags: u8, seq: u32, ack: u32) -> Vec<u8> {
        let mut t = vec![0u8; 20];
        t[0..2].copy_from_slice(&5555u16.to_be_bytes());
        t[2..4].copy_from_slice(&80u16.to_be_bytes());
        t[4..8].copy_from_slice(&seq.to_be_bytes());
        t[8..12].copy_from_slice(&ack.to_be_bytes());
        t[12] = 5 << 4;
        t[13] = flags;
        t[14..16].copy_from_slice(&65535u16.to_be_bytes());
        let mut pseudo = vec![10, 8, 0, 1, 10, 8, 0, 2, 0, 6, 0, 20];
        pseudo.extend_from_slice(&t);
        let c = checksum(&pseudo);
        t[16..18].copy_from_slice(&c);
        let mut p = ipv4([10, 8, 0, 1], [10, 8, 0, 2], &t);
        p[9] = 6;
        let c = checksum(&p[..20]);
        p[10..12].copy_from_slice(&c);
        p
    }

    #[test]
    fn userspace_data_path_answers_through_the_netstack() {
        use crate::netstack::{Netstack, NetstackConfig};
        use std::task::{Context, Waker};
        use tokio::io::AsyncWriteExt;

        let (gw_secret, hub_secret) = ([0x46u8; 32], [0x57u8; 32]);
        let public = |s: [u8; 32]| PublicKey::from(&StaticSecret::from(s)).to_bytes();
        let hub_sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        hub_sock.set_read_timeout(Some(WAIT)).unwrap();
        let mut hub = Hub {
            core: TunnelCore::new(
                &TunnelKeys {
                    private_key: hub_secret,
                    peer_public_key: public(gw_secret),
                    preshared_key: None,
                },
                AllowedIps::new(vec!["10.8.0.2/32".parse().unwrap()]),
                Arc::new(TunnelStats::new(Instant::now(), "tun")),
            ),
            sock: hub_sock,
            peer: None,
            buf: vec![0; 2048],
        };
        let stack = Netstack::new(NetstackConfig {
            address: std::net::Ipv4Addr::new(10, 8, 0, 2),
            prefix_len: 24,
            mtu: 1420,
        });
        let listener = stack.bind_tcp("10.8.0.2:80".parse().unwrap()).unwrap();
        let udp_sock = stack.bind_udp("10.8.0.2:53".parse().unwrap()).unwrap();
        let stats = Arc::new(TunnelStats::new(Instant::now(), "netstack"));
        let dp = StackDataPath {
            core: TunnelCore::new(
                &TunnelKeys {
                    private_key: gw_secret,
                    peer_public_key: public(hub_secret),
                    preshared_key: None,
                },
                AllowedIps::new(vec!["10.8.0.1/32".parse().unwrap()]),
                stats.clone(),
            ),
            stack: stack.clone(),
            udp: udp::socket_for("127.0.0.1:1".parse().unwrap(), false).unwrap(),
            endpoint: Endpoint {
                host: "127.0.0.1".into(),
                port: hub.sock.local_addr().unwrap().port(),
            },
            mtu: 1420,
            checkin: CheckIn::new(),
        };
        let (stop, stop_rx) = watch::channel(false);
        let thread = spawn_stack(dp, stop_rx).unwrap();

        // A socket write wakes the data path: the datagram leaves through the tunnel.
        let mut cx = Context::from_waker(Waker::noop());
        let sent =
            udp_sock.poll_send_to(&mut cx, b"from the stack", "10.8.0.1:7000".parse().unwrap());
        assert!(sent.is_ready());
        let p = hub.recv_packet();
        assert_eq!(
            (p[9], &p[12..16], &p[28..]),
            (17, &[10, 8, 0, 2][..], &b"from the stack"[..])
        );

        // The hub's ping is answered.
        let mut ping = ipv4(
            [10, 8, 0, 1],
            [10, 8, 0, 2],
            &[8, 0, 0, 0, 0, 7, 0, 1, b'h', b'i'],
        );
        ping[9] = 1;
        let c = checksum(&ping[..20]);
        ping[10..12].copy_from_slice(&c);
        let c = checksum(&ping[20..]);
        ping[22..24].copy_from_slice(&c);
        hub.send_packet(&ping);
        let pong = hub.recv_packet();
        assert_eq!((pong[9], pong[20], &pong[24..]), (1, 0, &ping[24..]));

        // A TCP handshake from the hub, then the accepted stream's write reaches it.
        hub.send_packet(&tcp_to_gw(0x02, 1000, 0));
        let synack = hub.recv_packet();
        assert_eq!(synack[20 + 13] & 0x12, 0x12, "SYN-ACK");
        let their_seq = u32::from_be_bytes(synack[24..28].try_into().unwrap());
        hub.send_packet(&tcp_to_gw(0x10, 1001, their_seq.wrapping_add(1)));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let stream = rt.block_on(async {
            let (mut s, peer) = tokio::time::timeout(WAIT, listener.accept())
                .await
                .expect("accepted in time")
                .unwrap();
            assert_eq!(peer, "10.8.0.1:5555".parse().unwrap());
            s.write_all(b"hello hub").await.unwrap();
            s
        });
        let data = hub.recv_packet();
        assert_eq!(&data[40..], b"hello hub");
        drop(stream);

        assert!(stats.snapshot(Instant::now()).tx_packets >= 4);
        stop.send(true).unwrap();
        thread.join().unwrap().unwrap();
    }
}
