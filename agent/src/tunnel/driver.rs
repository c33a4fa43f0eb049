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
//! **Threads** ([`DataPath::threads`], `GATELET_DATAPATH_THREADS`). With one, a single loop
//! does both directions. With two, the encrypting direction (interface readable: read,
//! split, seal, send) runs on a thread of its own (`gatelet-encrypt`, its own current-thread
//! runtime and its own registration of both descriptors) and the loop above keeps the
//! decrypting direction, the timers, the handshakes and the name resolution. The two share
//! the [`TunnelCore`] behind a mutex that is held only for bookkeeping: once per batch to
//! take the sending or receiving sessions ([`TunnelCore::sending_session`],
//! [`TunnelCore::receiving_session`]) and once to report it ([`TunnelCore::note_sent`],
//! [`Opener::finish`]), and for the rare messages that are not data (handshakes, cookies,
//! timer keepalives, packets queued before a session exists). Sealing and opening run
//! outside it ([`Sealer`], [`Opener`]): boringtun's sessions are shared as `Arc` with an
//! atomic send counter and a locked replay window (third_party/boringtun/GATELET-PATCH.md).
//! Both loops use the same code in both modes; one thread takes the lock uncontended. Each
//! loop checks in with the watchdog on every turn and timer tick ([`DataPath::checkin`],
//! [`DataPath::encrypt_checkin`]), so a stall of either stops systemd's keep-alive.
//!
//! Why a thread per direction and not crypto workers fed by one I/O thread: crypto is about
//! a third of the cost per packet here (perf, `tests-hw/bench/tunnel.sh --pin`); the rest is
//! system calls (`recvmmsg`, TUN reads and writes, `sendmmsg`), which a worker pool leaves on
//! the one I/O thread, so one direction could gain at most about 1.4x, with a reorder stage
//! and buffers passed between threads. A thread per direction moves whole batches, system
//! calls included, needs no reordering (each direction keeps its order on its own thread)
//! and lets a TCP transfer's data and its ACKs (the other direction) use a core each. On a
//! four-core box (Pi 4/5) it still uses two: the next step is a TUN queue per thread
//! (`IFF_MULTI_QUEUE`) with several sockets to the hub, each direction then split by flow;
//! the `Tunn` lock stays serial but is taken twice per batch of up to 32 packets.
//!
//! Measured on the 2-core test box (`tests-hw/bench/tunnel.sh --agent-threads 1,2`, wireguard-go
//! hub, medians of 3, a second engineer compiling alongside): unpinned, 1 and 2 threads move
//! the same (hub -> gateway 0.82 and 0.79 Gbit/s at 36 and 37 % gateway CPU; gateway -> hub
//! 0.63 and 0.67; `--bidir` 0.73 and 0.80, every spread overlapping) because the hub's
//! process is the bottleneck (90-105 % CPU). Pinned to one core, two threads cost 2.3 times the
//! CPU per byte (decrypting 1.5 against 3.6 Gbit/s per core): the reverse direction's few
//! packets (a transfer's ACKs) wake the other thread every time instead of riding along in
//! the same loop turn. Hence `auto` takes two threads only with three cores or more.
//!
//! The userspace variant ([`spawn_stack`], `GATELET_NETSTACK=userspace`) has the
//! [`Netstack`] where the interface was: decrypted packets go into it, and it is polled after
//! each batch, when a socket operation asks for it ([`Netstack::poll_wanted`]) and at the
//! deadline the last poll returned; what it sends leaves in `sendmmsg` batches. An idle stack
//! sets no deadline, so the loop then wakes only for the timer tick.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Instant;

use gatelet_agent_api::env::Endpoint;
use tokio::io::unix::{AsyncFd, AsyncFdReadyGuard};
use tokio::io::Interest;
use tokio::sync::watch;
use tokio::time::MissedTickBehavior;

use super::core::{FromNetwork, Opened, Opener, Sealer, TunnelCore, TIMER_TICK};
use super::resolve::resolve;
use super::udp::{self, PacketBatch, RecvBatch, BATCH};
use crate::netif::vnet::{Coalescer, Segments, VNET_HDR_LEN};
use crate::netstack::Netstack;
use crate::sys::ring::Ring;
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
    /// Beaten on every turn of the loop that encrypts (timer ticks included): the loop above
    /// with 1 thread, the `gatelet-encrypt` thread with 2. Watched apart from
    /// [`DataPath::checkin`], so that a stalled encrypting thread stops the keep-alive too.
    pub encrypt_checkin: CheckIn,
    /// Threads: 1 (both directions in one loop) or 2 (the encrypting direction on a thread
    /// of its own); see the module documentation. 0 counts as 1, more than 2 as 2.
    pub threads: usize,
}

/// Starts the data path on a thread of its own (and, with [`DataPath::threads`] 2, the
/// encrypting direction on another); it runs until `shutdown` turns true or its sender is
/// dropped.
pub fn spawn<T: PacketInterface + Send + Sync + 'static>(
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

/// What the two directions of the data path share, behind one lock.
struct Shared {
    core: TunnelCore,
    /// The socket to the hub in use: the decrypting loop replaces it when the hub's address
    /// family changes, the encrypting thread follows.
    udp: Arc<UdpSocket>,
}

fn lock(shared: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The encrypting direction's buffers: a frame from the interface (up to 64 KiB with TSO),
/// a segment cut from it, and the batch of datagrams being sealed.
struct EncryptBufs {
    /// Up to 64 KiB in an anonymous map (resident only where a read wrote).
    packet: Ring,
    scratch: Vec<u8>,
    tx: PacketBatch,
}

/// Runs the data path until shutdown (see [`spawn`]). Must run inside a tokio runtime with
/// I/O and time enabled.
pub async fn run<T: PacketInterface + Send + Sync + 'static>(
    dp: DataPath<T>,
    mut shutdown: watch::Receiver<bool>,
) -> io::Result<()> {
    let max_packet = usize::from(dp.mtu).max(1500) + PACKET_HEADROOM;
    let out_len = TunnelCore::dst_len(max_packet);
    let iface = Arc::new(dp.iface);
    let udp_sock = Arc::new(dp.udp);
    // With a thread per direction this loop only receives: registered for reading alone, it
    // is not woken each time the kernel frees a datagram the other thread sent.
    let udp_interest = if dp.threads <= 1 {
        Interest::READABLE | Interest::WRITABLE
    } else {
        Interest::READABLE
    };
    let mut udp = crate::sys::fd::register_with(Arc::clone(&udp_sock), udp_interest)?;
    let endpoint = dp.endpoint;
    let checkin = dp.checkin;
    let encrypt_checkin = dp.encrypt_checkin;
    let sealer = dp.core.sealer();
    let mut opener = dp.core.opener();
    let shared = Arc::new(Mutex::new(Shared {
        core: dp.core,
        udp: udp_sock,
    }));
    let mut rx = RecvBatch::new(out_len);
    rx.set_gro(udp::enable_gro(udp.get_ref()));
    let mut plain = vec![0u8; out_len];
    let vnet = iface.vnet_hdr();
    let iface_fd = iface.as_raw_fd();
    let mut bufs = EncryptBufs {
        // With offloads, a frame from the interface may be a TCP segment of up to 64 KiB.
        packet: Ring::zeroed(if vnet {
            VNET_HDR_LEN + MAX_GSO_FRAME
        } else {
            max_packet
        }),
        scratch: vec![0u8; max_packet],
        tx: PacketBatch::new(out_len),
    };
    let udp_segments = iface.udp_segments();
    let mut coalescer = vnet.then(|| Coalescer::new(udp_segments));
    let mut resolving = Resolving::default();
    let mut ticks: u32 = 0;
    let mut tick = tokio::time::interval(TIMER_TICK);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);

    // One thread: the interface is read here. Two: on the encrypting thread, which gets the
    // buffers and reports how it ended.
    let (stop_encrypt, encrypt_stop_rx) = watch::channel(false);
    let mut encrypt: Option<(
        JoinHandle<()>,
        tokio::sync::oneshot::Receiver<io::Result<()>>,
    )> = None;
    let mut iface_here = None;
    if dp.threads <= 1 {
        iface_here = Some(crate::sys::fd::register(Arc::clone(&iface))?);
    } else {
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let (iface, shared) = (Arc::clone(&iface), Arc::clone(&shared));
        let sealer = sealer.clone();
        let checkin = encrypt_checkin.clone();
        let bufs = std::mem::replace(
            &mut bufs,
            EncryptBufs {
                packet: Ring::zeroed(0),
                scratch: Vec::new(),
                tx: PacketBatch::new(0),
            },
        );
        let handle = std::thread::Builder::new()
            .name("gatelet-encrypt".into())
            .spawn(move || {
                let result = encrypt_thread(iface, shared, sealer, bufs, checkin, encrypt_stop_rx);
                let _ = done_tx.send(result);
            })?;
        encrypt = Some((handle, done_rx));
    }

    let result = loop {
        checkin.beat();
        if encrypt.is_none() {
            encrypt_checkin.beat();
        }
        let now = Instant::now();
        {
            let mut sh = lock(&shared);
            resolving.start_if_wanted(&mut sh.core, &endpoint, now);
        }
        let resolved = resolving.done();
        let encrypt_done = async {
            match encrypt.as_mut() {
                Some((_, done)) => done.await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = shutdown.changed() => {
                if shutdown.has_changed().is_err() || *shutdown.borrow() {
                    break Ok(());
                }
            }
            r = udp.readable() => {
                let mut g = r?;
                let mut deliver = Deliver::Iface {
                    fd: iface_fd,
                    coalescer: coalescer.as_mut(),
                };
                decrypt_ready(&mut g, &shared, &mut opener, &mut rx, &mut plain, &mut deliver);
            }
            r = readable(iface_here.as_ref()) => {
                let mut g = r?;
                encrypt_ready(&mut g, &udp, &shared, &sealer, &mut bufs).await?;
            }
            r = encrypt_done => {
                encrypt = None;
                break match r {
                    Ok(Err(e)) => Err(e),
                    // It stops only when told to, or when it panicked (gone without a word).
                    Ok(Ok(())) => Ok(()),
                    Err(_) => Err(io::Error::other("the encrypting thread ended")),
                };
            }
            _ = tick.tick() => {
                {
                    let mut sh = lock(&shared);
                    if let Some(d) = sh.core.on_timer(Instant::now(), &mut plain) {
                        send_one(&mut sh.core, udp.get_ref(), d);
                    }
                }
                ticks = ticks.wrapping_add(1);
                if ticks.is_multiple_of(IFACE_CHECK_TICKS) {
                    if let Some(why) = iface.gone() {
                        break Err(io::Error::new(io::ErrorKind::NotFound, why));
                    }
                }
            }
            result = resolved => {
                let mut sh = lock(&shared);
                use_resolved(result, &mut sh.core, &mut udp, udp_interest, &mut rx, &endpoint, &mut plain);
                if !Arc::ptr_eq(&sh.udp, udp.get_ref()) {
                    sh.udp = Arc::clone(udp.get_ref());
                }
            }
        }
    };
    let _ = stop_encrypt.send(true);
    if let Some((handle, _)) = encrypt {
        // It returns at its next await (a wait for the interface or for socket space).
        let _ = handle.join();
    }
    result
}

/// A descriptor's next readiness to read; never, when there is none.
async fn readable<T: AsRawFd>(fd: Option<&AsyncFd<T>>) -> io::Result<AsyncFdReadyGuard<'_, T>> {
    match fd {
        Some(fd) => fd.readable().await,
        None => std::future::pending().await,
    }
}

/// The encrypting thread's body: a current-thread runtime of its own with both descriptors
/// registered anew (a descriptor can be in several epoll sets), the socket followed when the
/// other loop replaces it. Returns when `stop` turns true or is dropped, or on an error
/// reading the interface.
fn encrypt_thread<T: PacketInterface>(
    iface: Arc<T>,
    shared: Arc<Mutex<Shared>>,
    sealer: Sealer,
    mut bufs: EncryptBufs,
    checkin: CheckIn,
    mut stop: watch::Receiver<bool>,
) -> io::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()?;
    rt.block_on(async {
        // Each descriptor for this direction's readiness only (see `run`).
        let iface = crate::sys::fd::register_with(iface, Interest::READABLE)?;
        let udp_now = Arc::clone(&lock(&shared).udp);
        let mut udp = crate::sys::fd::register_with(udp_now, Interest::WRITABLE)?;
        // Only to check in with the watchdog while no packet comes.
        let mut tick = tokio::time::interval(TIMER_TICK);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let work = async {
            loop {
                checkin.beat();
                let mut g = tokio::select! {
                    g = iface.readable() => g?,
                    _ = tick.tick() => continue,
                };
                let current = Arc::clone(&lock(&shared).udp);
                if !Arc::ptr_eq(&current, udp.get_ref()) {
                    udp = crate::sys::fd::register_with(current, Interest::WRITABLE)?;
                }
                encrypt_ready(&mut g, &udp, &shared, &sealer, &mut bufs).await?;
            }
        };
        tokio::select! {
            r = work => r,
            _ = stop.wait_for(|stop| *stop) => Ok(()),
        }
    })
}

/// Runs the userspace data path until shutdown (see [`spawn_stack`]). Must run inside a
/// tokio runtime with I/O and time enabled.
pub async fn run_stack(dp: StackDataPath, mut shutdown: watch::Receiver<bool>) -> io::Result<()> {
    let max_packet = usize::from(dp.mtu).max(1500) + PACKET_HEADROOM;
    let out_len = TunnelCore::dst_len(max_packet);
    let mut core = dp.core;
    let stack = dp.stack;
    let mut udp = crate::sys::fd::register(Arc::new(dp.udp))?;
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
                let interest = Interest::READABLE | Interest::WRITABLE;
                use_resolved(result, &mut core, &mut udp, interest, &mut rx, &endpoint, &mut plain);
            }
        }
    }
    Ok(())
}

/// Polls the stack and sends what it has, a batch at a time; returns its next deadline.
async fn pump(
    stack: &Netstack,
    udp: &AsyncFd<Arc<UdpSocket>>,
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
/// (a fresh socket, registered for `interest`, when the family changed) and starts the
/// handshake.
fn use_resolved(
    result: Result<Result<Vec<SocketAddr>, String>, tokio::task::JoinError>,
    core: &mut TunnelCore,
    udp: &mut AsyncFd<Arc<UdpSocket>>,
    interest: Interest,
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
                *udp = crate::sys::fd::register_with(Arc::new(fresh), interest)?;
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

/// Tells the core that receiving from the hub failed. On a connected socket an ICMP error
/// from the hub's address shows up here.
fn receive_failed(core: &mut TunnelCore, e: &io::Error) {
    let msg = match core.endpoint() {
        Some(ep) => format!("the hub at {ep} does not accept datagrams: {e}"),
        None => format!("UDP receive failed: {e}"),
    };
    tracing::debug!(error = %e, "UDP receive error");
    core.on_send_error(&msg);
}

/// Receives from the hub while the socket stays readable: up to [`ROUNDS_PER_WAKEUP`] batches,
/// each handed to `batch` with its datagram count and the time it came in. Ends early when a
/// batch is not full (the socket is drained). A receive error is returned for the caller to
/// report ([`receive_failed`]).
fn receive_rounds(
    g: &mut AsyncFdReadyGuard<'_, Arc<UdpSocket>>,
    rx: &mut RecvBatch,
    mut batch: impl FnMut(&UdpSocket, &RecvBatch, usize, Instant),
) -> io::Result<()> {
    for _ in 0..ROUNDS_PER_WAKEUP {
        let n = match g.try_io(|s| udp::recv_batch(s.get_ref(), rx)) {
            Err(_would_block) => return Ok(()),
            Ok(Ok(n)) => n,
            Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
            Ok(Err(e)) => return Err(e),
        };
        batch(g.get_ref().get_ref(), rx, n, Instant::now());
        if n < rx.capacity() {
            break;
        }
    }
    Ok(())
}

/// Decrypts what the hub sent and delivers it (to the interface or the stack).
fn on_udp_readable(
    g: &mut AsyncFdReadyGuard<'_, Arc<UdpSocket>>,
    core: &mut TunnelCore,
    rx: &mut RecvBatch,
    plain: &mut [u8],
    deliver: &mut Deliver<'_>,
) {
    let received = receive_rounds(g, rx, |sock, rx, n, now| {
        // A slot holds one datagram, or with GRO a run of them cut back at their size.
        for datagram in (0..n).flat_map(|i| rx.datagrams(i)) {
            through_core(core, sock, now, datagram, plain, deliver);
        }
        deliver.end_of_batch();
    });
    if let Err(e) = received {
        receive_failed(core, &e);
    }
}

/// Decrypts what the hub sent and writes it to the interface, opening data messages
/// outside the core's lock (the sessions taken and the batch reported under it, once each);
/// other messages (handshakes, cookies) go through the core under the lock.
fn decrypt_ready(
    g: &mut AsyncFdReadyGuard<'_, Arc<UdpSocket>>,
    shared: &Mutex<Shared>,
    opener: &mut Opener,
    rx: &mut RecvBatch,
    plain: &mut [u8],
    deliver: &mut Deliver<'_>,
) {
    let received = receive_rounds(g, rx, |sock, rx, n, now| {
        // A slot holds one datagram, or with GRO a run of them cut back at their size.
        for datagram in (0..n).flat_map(|i| rx.datagrams(i)) {
            let mut opened = opener.open(datagram, plain);
            if opened == Opened::NeedsCore {
                if let Some(idx) = Opener::data_receiver(datagram) {
                    // Data for a session not held in this batch yet.
                    let mut sh = lock(shared);
                    if opener.is_full() {
                        opener.finish(&mut sh.core);
                    }
                    opener.learn(idx, sh.core.receiving_session(idx));
                    drop(sh);
                    opened = opener.open(datagram, plain);
                }
            }
            match opened {
                Opened::ToTun(p) => deliver.packet(p),
                Opened::Nothing => {}
                Opened::NeedsCore => {
                    let mut sh = lock(shared);
                    // Sessions may change: the batch so far is reported, the rest looked up anew.
                    opener.finish(&mut sh.core);
                    through_core(&mut sh.core, sock, now, datagram, plain, deliver);
                }
            }
        }
        opener.finish(&mut lock(shared).core);
        deliver.end_of_batch();
    });
    if let Err(e) = received {
        receive_failed(&mut lock(shared).core, &e);
    }
}

/// Reads up to a batch of frames from the interface, seals their packets into a batch
/// outside the core's lock and sends them (several batches when GSO frames hold many
/// segments). The lock is taken to get the session, to report what was sealed, and per
/// packet only while there is no session (the core queues it and starts a handshake).
async fn encrypt_ready<T: PacketInterface>(
    g: &mut AsyncFdReadyGuard<'_, Arc<T>>,
    udp: &AsyncFd<Arc<UdpSocket>>,
    shared: &Mutex<Shared>,
    sealer: &Sealer,
    bufs: &mut EncryptBufs,
) -> io::Result<()> {
    let (session, endpoint) = {
        let sh = lock(shared);
        (sh.core.sending_session(), sh.core.endpoint().is_some())
    };
    let mut sealed = Sealed {
        session: session.as_deref(),
        endpoint,
        packets: 0,
        bytes: 0,
    };
    let EncryptBufs {
        packet,
        scratch,
        tx,
    } = bufs;
    tx.clear();
    let fd = g.get_ref().get_ref().as_raw_fd();
    let vnet = g.get_ref().get_ref().vnet_hdr();
    let mut result = Ok(());
    for _ in 0..BATCH {
        let len = match g.try_io(|_| read_fd(fd, packet)) {
            Err(_would_block) => break,
            Ok(Ok(0)) => break,
            Ok(Ok(n)) => n,
            Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
            Ok(Err(e)) => {
                result = Err(io::Error::new(
                    e.kind(),
                    format!("cannot read from the interface: {e}"),
                ));
                break;
            }
        };
        if !vnet {
            sealed.seal(shared, sealer, &packet[..len], udp, tx).await;
            continue;
        }
        let Some(mut segments) = Segments::new(&packet[..len]) else {
            tracing::debug!("dropped a malformed frame from the interface");
            continue;
        };
        while let Some(seg) = segments.next(scratch) {
            sealed.seal(shared, sealer, seg, udp, tx).await;
        }
    }
    sealed.flush(shared, udp, tx).await;
    if sealed.packets > 0 {
        lock(shared).core.note_sent(sealed.packets, sealed.bytes);
    }
    result
}

/// One readiness worth of sealing: the session it uses and what it sealed.
struct Sealed<'s> {
    session: Option<&'s boringtun::noise::Session>,
    endpoint: bool,
    packets: usize,
    bytes: usize,
}

impl Sealed<'_> {
    /// Seals `packet` into the next slot of `tx`, sending the batch first when it is full.
    async fn seal(
        &mut self,
        shared: &Mutex<Shared>,
        sealer: &Sealer,
        packet: &[u8],
        udp: &AsyncFd<Arc<UdpSocket>>,
        tx: &mut PacketBatch,
    ) {
        if tx.free_slot().is_none() {
            self.flush(shared, udp, tx).await;
            tx.clear();
        }
        let Some(slot) = tx.free_slot() else {
            return;
        };
        match self.session {
            Some(session) => {
                if let Some(n) = sealer.seal(session, packet, slot) {
                    tx.push(n);
                    self.packets += 1;
                    self.bytes += packet.len();
                }
            }
            None => {
                if let Some(out) = lock(shared).core.from_tun(packet, slot) {
                    let n = out.len();
                    tx.push(n);
                }
            }
        }
    }

    /// Sends the batch (nowhere while the hub has no address).
    async fn flush(
        &self,
        shared: &Mutex<Shared>,
        udp: &AsyncFd<Arc<UdpSocket>>,
        tx: &mut PacketBatch,
    ) {
        if self.endpoint {
            send_all(udp, tx, |e| send_failed(&mut lock(shared).core, e)).await;
        }
    }
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
    udp: &AsyncFd<Arc<UdpSocket>>,
    core: &mut TunnelCore,
    tx: &mut PacketBatch,
) -> io::Result<()> {
    if core.endpoint().is_none() {
        return Ok(());
    }
    send_all(udp, tx, |e| send_failed(core, e)).await;
    Ok(())
}

/// Sends the batch, waiting for socket space when the kernel's buffer is full (at most
/// [`MAX_SEND_WAITS`] times, then the rest is dropped); `failed` gets a send error, after
/// which the rest is dropped too.
async fn send_all(
    udp: &AsyncFd<Arc<UdpSocket>>,
    tx: &mut PacketBatch,
    failed: impl FnOnce(&io::Error),
) {
    let mut sent = 0;
    for _ in 0..MAX_SEND_WAITS {
        if sent >= tx.len() {
            return;
        }
        match udp::send_batch(udp.get_ref(), tx, sent) {
            Ok(n) => sent += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => match udp.writable().await {
                Ok(mut g) => g.clear_ready(),
                Err(e) => return failed(&e),
            },
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return failed(&e),
        }
    }
}

/// One datagram through the whole core (`from_network`): a packet for the interface is
/// delivered; a handshake answer is sent, then what the core queued behind it (bounded).
fn through_core(
    core: &mut TunnelCore,
    sock: &UdpSocket,
    now: Instant,
    datagram: &[u8],
    plain: &mut [u8],
    deliver: &mut Deliver<'_>,
) {
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

    /// A gateway data path on a socket-pair interface and a hub on loopback.
    struct Running {
        hub: Hub,
        /// The far end of the interface.
        host: UnixDatagram,
        stats: Arc<TunnelStats>,
        checkin: CheckIn,
        encrypt_checkin: CheckIn,
        stop: watch::Sender<bool>,
        thread: JoinHandle<io::Result<()>>,
    }

    fn start(threads: usize) -> Running {
        let (gw_secret, hub_secret) = ([0x44u8; 32], [0x55u8; 32]);
        let public = |s: [u8; 32]| PublicKey::from(&StaticSecret::from(s)).to_bytes();
        let hub_sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        hub_sock.set_read_timeout(Some(WAIT)).unwrap();
        let hub_stats = Arc::new(TunnelStats::new(Instant::now(), "tun"));
        let hub = Hub {
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
            encrypt_checkin: CheckIn::new(),
            threads,
        };
        let checkin = dp.checkin.clone();
        let encrypt_checkin = dp.encrypt_checkin.clone();
        let (stop, stop_rx) = watch::channel(false);
        let thread = spawn(dp, stop_rx).unwrap();
        Running {
            hub,
            host,
            stats,
            checkin,
            encrypt_checkin,
            stop,
            thread,
        }
    }

    #[test]
    fn data_path_carries_packets_both_ways_over_real_sockets() {
        carries_packets_both_ways(1);
    }

    #[test]
    fn data_path_with_a_thread_per_direction_carries_packets_both_ways() {
        carries_packets_both_ways(2);
    }

    fn carries_packets_both_ways(threads: usize) {
        let Running {
            mut hub,
            host,
            stats,
            checkin,
            encrypt_checkin,
            stop,
            thread,
        } = start(threads);

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
        // Idle now: the timer ticks alone keep both directions checking in with the watchdog
        // (with 2 threads, the encrypting thread's own).
        let mut watchdog =
            crate::watchdog::Watchdog::new([("datapath", checkin), ("encrypt", encrypt_checkin)]);
        for _ in 0..2 {
            std::thread::sleep(TIMER_TICK * 3);
            assert_eq!(watchdog.check(), Ok(()), "the idle data path beats");
        }

        stop.send(true).unwrap();
        thread.join().unwrap().unwrap();
    }

    /// Windows of numbered packets both ways at once (the host sends a window up while the
    /// hub sends one down), each direction checked complete and in order.
    fn traffic_both_ways_at_once(threads: usize) {
        const ROUNDS: u16 = 60;
        const WINDOW: u16 = 40;
        let Running {
            mut hub,
            host,
            stats,
            stop,
            thread,
            ..
        } = start(threads);
        let hello = ipv4([10, 8, 0, 2], [10, 8, 0, 1], b"hello");
        host.send(&hello).unwrap();
        assert_eq!(hub.recv_packet(), hello);
        let seq = |p: &[u8]| u16::from_be_bytes([p[p.len() - 2], p[p.len() - 1]]);

        let gateway_side = std::thread::spawn(move || {
            let mut down = Vec::new();
            let mut buf = [0u8; 2048];
            for round in 0..ROUNDS {
                for i in 0..WINDOW {
                    let n = round * WINDOW + i;
                    host.send(&ipv4([10, 8, 0, 2], [10, 8, 0, 1], &n.to_be_bytes()))
                        .unwrap();
                }
                for _ in 0..WINDOW {
                    let n = host.recv(&mut buf).expect("a packet from the hub");
                    down.push(seq(&buf[..n]));
                }
            }
            down
        });
        let mut up = Vec::new();
        for round in 0..ROUNDS {
            for i in 0..WINDOW {
                let n = round * WINDOW + i;
                hub.send_packet(&ipv4([10, 8, 0, 1], [10, 8, 0, 2], &n.to_be_bytes()));
            }
            for _ in 0..WINDOW {
                up.push(seq(&hub.recv_packet()));
            }
        }
        let down = gateway_side.join().unwrap();
        let want: Vec<u16> = (0..ROUNDS * WINDOW).collect();
        assert_eq!(up, want, "gateway to hub");
        assert_eq!(down, want, "hub to gateway");
        let st = stats.snapshot(Instant::now());
        let total = u64::from(ROUNDS * WINDOW);
        assert_eq!((st.tx_packets, st.rx_packets), (total + 1, total));
        stop.send(true).unwrap();
        thread.join().unwrap().unwrap();
    }

    #[test]
    fn one_thread_carries_traffic_both_ways_at_once_in_order() {
        traffic_both_ways_at_once(1);
    }

    #[test]
    fn a_thread_per_direction_carries_traffic_both_ways_at_once_in_order() {
        traffic_both_ways_at_once(2);
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
