//! Batched UDP I/O: one `recvmmsg` or `sendmmsg` call moves up to [`BATCH`] datagrams.
//!
//! The socket is connected to the hub, so no addresses travel with the datagrams.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;

use crate::sys;
use crate::sys::ring::Ring;

/// Datagrams per system call.
pub const BATCH: usize = 32;
/// Kernel buffer asked for in each direction, in bytes: bursts at Gbit/s rates overflow the
/// default (about 208 KiB) before the data path gets the CPU. Kernel memory, used only
/// while datagrams wait; not part of the agent's RSS.
pub const SOCKET_BUFFER_BYTES: usize = 4 * 1024 * 1024;

/// [`BATCH`] equal-size slots in one anonymous map, each holding one datagram.
#[derive(Debug)]
pub struct PacketBatch {
    data: Ring,
    slot: usize,
    lens: [usize; BATCH],
    count: usize,
    /// Whether [`send_batch`] sends runs of equal-size datagrams as one UDP GSO message;
    /// switched off for good the first time the kernel refuses one.
    segmented: bool,
}

impl PacketBatch {
    /// Slots of `slot` bytes each.
    pub fn new(slot: usize) -> Self {
        PacketBatch {
            data: Ring::zeroed(slot * BATCH),
            slot,
            lens: [0; BATCH],
            count: 0,
            segmented: true,
        }
    }

    /// Number of filled slots.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether no slot is filled.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Forgets every datagram.
    pub fn clear(&mut self) {
        self.count = 0;
    }

    /// Datagram `i` (empty if it was truncated).
    pub fn get(&self, i: usize) -> &[u8] {
        let start = i * self.slot;
        &self.data[start..start + self.lens[i]]
    }

    /// The next free slot, to be filled and then committed with [`PacketBatch::push`]; None
    /// when the batch is full.
    pub fn free_slot(&mut self) -> Option<&mut [u8]> {
        if self.count == BATCH {
            return None;
        }
        let start = self.count * self.slot;
        Some(&mut self.data[start..start + self.slot])
    }

    /// Commits `len` bytes written at the start of the slot [`PacketBatch::free_slot`] gave.
    pub fn push(&mut self, len: usize) {
        if self.count < BATCH {
            self.lens[self.count] = len.min(self.slot);
            self.count += 1;
        }
    }
}

/// Datagram slots of a [`RecvBatch`] on a socket with UDP GRO: as many as without it, since
/// a hub whose datagrams are not joined (no GSO at the hub, no GRO on the link) still sends
/// them one by one (8 slots cost 16 % more CPU per byte there; `bench-tunnel --pin`).
pub const GRO_SLOTS: usize = BATCH;
/// Bytes of one slot with UDP GRO: the most the kernel joins into one (an IP packet's
/// length limit), so nothing it hands over is truncated. Only the pages a receive writes
/// are touched, so single datagrams use about a page per slot.
pub const GRO_SLOT_BYTES: usize = 65_536;

/// Where [`recv_batch`] puts what arrives: [`BATCH`] slots of one datagram each, or, on a
/// socket with UDP GRO ([`enable_gro`]), [`GRO_SLOTS`] slots of [`GRO_SLOT_BYTES`] that each
/// hold a run of datagrams of one size. The memory is fixed by the layout (about 50 KiB, or
/// 2 MiB of address space with GRO, of which a receive touches only what it writes: about a
/// page per single datagram, all 2 MiB only when every slot gets a full 64 KiB run), never
/// by what arrives.
#[derive(Debug)]
pub struct RecvBatch {
    /// An anonymous map: untouched slots cost nothing (a zeroed `Vec` is all resident with
    /// musl's allocator).
    data: Ring,
    slot: usize,
    /// The slot size without GRO (one datagram of the largest size expected).
    datagram_slot: usize,
    slots: usize,
    lens: [usize; BATCH],
    segs: [usize; BATCH],
    count: usize,
}

impl RecvBatch {
    /// [`BATCH`] slots of `datagram_slot` bytes, for a socket without GRO.
    pub fn new(datagram_slot: usize) -> Self {
        RecvBatch {
            data: Ring::zeroed(datagram_slot * BATCH),
            slot: datagram_slot,
            datagram_slot,
            slots: BATCH,
            lens: [0; BATCH],
            segs: [0; BATCH],
            count: 0,
        }
    }

    /// Lays the slots out for a socket with (`true`) or without UDP GRO.
    pub fn set_gro(&mut self, gro: bool) {
        let (slots, slot) = if gro {
            (GRO_SLOTS, GRO_SLOT_BYTES)
        } else {
            (BATCH, self.datagram_slot)
        };
        if (slots, slot) != (self.slots, self.slot) {
            self.data = Ring::zeroed(slots * slot);
            (self.slots, self.slot) = (slots, slot);
        }
        self.count = 0;
    }

    /// Number of filled slots.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether no slot is filled.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Number of slots: a receive that fills them all may have left more waiting.
    pub fn capacity(&self) -> usize {
        self.slots
    }

    /// The datagrams in slot `i`: one, or the run GRO joined there, cut at its segment size;
    /// none when it was truncated.
    pub fn datagrams(&self, i: usize) -> std::slice::Chunks<'_, u8> {
        let start = i * self.slot;
        let bytes = &self.data[start..start + self.lens[i]];
        let seg = match self.segs[i] {
            0 => bytes.len().max(1),
            n => n,
        };
        bytes.chunks(seg)
    }
}

/// Asks the kernel to join runs of datagrams from the hub (UDP GRO, Linux 5.0): one trip up
/// the stack and one slot per run. Returns whether it is on; the caller lays its
/// [`RecvBatch`] out to match ([`RecvBatch::set_gro`]).
pub fn enable_gro(sock: &UdpSocket) -> bool {
    match sys::sock::set_int(sock.as_raw_fd(), libc::SOL_UDP, sys::mmsg::UDP_GRO, 1) {
        Ok(()) => true,
        Err(e) => {
            tracing::debug!(error = %e, "no UDP GRO on the hub socket");
            false
        }
    }
}

/// Receives what is waiting without blocking into `batch` (emptied first): up to a slot per
/// datagram, or per run of datagrams with GRO. Returns how many slots were filled, or
/// `WouldBlock` when nothing is waiting.
pub fn recv_batch(sock: &UdpSocket, batch: &mut RecvBatch) -> io::Result<usize> {
    batch.count = 0;
    let n = sys::mmsg::recv_slots::<BATCH>(
        sock.as_raw_fd(),
        &mut batch.data,
        batch.slot,
        batch.slots,
        &mut batch.lens,
        &mut batch.segs,
    )?;
    batch.count = n;
    Ok(n)
}

/// Sends datagrams `from..` of `batch` without blocking. Returns how many the kernel took
/// (possibly fewer), or the error of the first one.
///
/// Runs of equal-size datagrams (a bulk transfer's, cut from one TSO frame) go as one UDP GSO
/// message each, so the kernel's UDP and IP layers are crossed once per run. A kernel or
/// device that refuses GSO turns it off for this batch's life and gets plain datagrams.
pub fn send_batch(sock: &UdpSocket, batch: &mut PacketBatch, from: usize) -> io::Result<usize> {
    let fd = sock.as_raw_fd();
    if batch.segmented {
        let datagrams = (from..batch.count).map(|i| batch.get(i));
        match sys::mmsg::send_segmented::<BATCH>(fd, datagrams) {
            Err(e) if gso_refused(&e) => {
                tracing::info!(error = %e, "UDP segmentation offload refused; sending datagrams one by one");
                batch.segmented = false;
            }
            other => return other,
        }
    }
    sys::mmsg::send_many::<BATCH>(fd, (from..batch.count).map(|i| batch.get(i)))
}

/// Whether a segmented send failed because segmentation is not available (old kernel, a
/// device without checksum offload), not because of the datagrams or the network.
fn gso_refused(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EIO | libc::EINVAL | libc::ENOPROTOOPT | libc::EOPNOTSUPP)
    )
}

/// A non-blocking UDP socket of `peer`'s address family on an ephemeral port, connected to
/// `peer` when given.
pub fn socket_for(peer: SocketAddr, connect: bool) -> io::Result<UdpSocket> {
    let bind: SocketAddr = if peer.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let sock = UdpSocket::bind(bind)?;
    sock.set_nonblocking(true)?;
    set_buffer(&sock, libc::SO_RCVBUFFORCE, libc::SO_RCVBUF);
    set_buffer(&sock, libc::SO_SNDBUFFORCE, libc::SO_SNDBUF);
    if connect {
        sock.connect(peer)?;
    }
    Ok(sock)
}

/// Sets a socket buffer to [`SOCKET_BUFFER_BYTES`]: beyond `net.core.*mem_max` with
/// `CAP_NET_ADMIN` (`force`), else as far as the limit allows (`plain`). Best effort.
fn set_buffer(sock: &UdpSocket, force: libc::c_int, plain: libc::c_int) {
    let size = SOCKET_BUFFER_BYTES as libc::c_int;
    let set = |opt| sys::sock::set_int(sock.as_raw_fd(), libc::SOL_SOCKET, opt, size);
    if let Err(e) = set(force).or_else(|_| set(plain)) {
        tracing::debug!(error = %e, "cannot enlarge the UDP socket buffer");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_of_datagrams_goes_through_loopback_in_order() {
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").unwrap();
        a.connect(b.local_addr().unwrap()).unwrap();
        b.connect(a.local_addr().unwrap()).unwrap();
        b.set_nonblocking(true).unwrap();
        let mut out = PacketBatch::new(64);
        for i in 0..5u8 {
            let slot = out.free_slot().unwrap();
            slot[..3].copy_from_slice(&[i, i, i]);
            out.push(3);
        }
        assert_eq!(send_batch(&a, &mut out, 1).unwrap(), 4);
        assert!(out.segmented, "loopback takes UDP GSO");
        let mut inb = RecvBatch::new(64);
        let mut got = Vec::new();
        for _ in 0..100 {
            match recv_batch(&b, &mut inb) {
                Ok(n) => (0..n).for_each(|i| got.extend(inb.datagrams(i).map(<[u8]>::to_vec))),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if got.len() == 4 {
                        break;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(got, vec![vec![1; 3], vec![2; 3], vec![3; 3], vec![4; 3]]);
    }

    /// Sends a bulk transfer's shape of datagrams (full ones, a shorter one, full ones
    /// again) from a GSO-sending socket to one receiving with or without GRO, checks that
    /// the same datagrams arrive in order, and returns how many slots they took.
    fn gso_to(gro: bool) -> usize {
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").unwrap();
        a.connect(b.local_addr().unwrap()).unwrap();
        b.connect(a.local_addr().unwrap()).unwrap();
        b.set_nonblocking(true).unwrap();
        let mut inb = RecvBatch::new(2048);
        if gro {
            assert!(enable_gro(&b), "loopback sockets take UDP_GRO (Linux 5.0)");
        }
        inb.set_gro(gro);
        // A bulk transfer's shape: full datagrams, a shorter one, then full ones again.
        let sizes = [1452, 1452, 1452, 700, 1452, 1452, 1452, 1452, 96, 96];
        let mut out = PacketBatch::new(1500);
        for (i, &n) in sizes.iter().enumerate() {
            out.free_slot().unwrap()[..n].fill(i as u8);
            out.push(n);
        }
        let mut sent = 0;
        for _ in 0..10 {
            sent += send_batch(&a, &mut out, sent).unwrap();
            if sent == sizes.len() {
                break;
            }
        }
        assert_eq!(sent, sizes.len());
        let mut got = Vec::new();
        let mut slots = 0;
        for _ in 0..200 {
            match recv_batch(&b, &mut inb) {
                Ok(n) => {
                    slots += n;
                    (0..n).for_each(|i| got.extend(inb.datagrams(i).map(<[u8]>::to_vec)));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if got.len() == sizes.len() {
                        break;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                Err(e) => panic!("{e}"),
            }
        }
        let want: Vec<Vec<u8>> = sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| vec![i as u8; n])
            .collect();
        assert_eq!(got, want);
        slots
    }

    #[test]
    fn runs_of_full_size_datagrams_leave_as_gso_and_arrive_whole_and_in_order() {
        let slots = gso_to(false);
        assert_eq!(slots, 10, "one slot per datagram without GRO");
    }

    #[test]
    fn with_gro_a_run_arrives_in_one_slot_and_is_cut_back_into_the_same_datagrams() {
        let slots = gso_to(true);
        // Runs as sent: 1452 x3 + 700, 1452 x4 + 96, 96 (a shorter one closes a run).
        assert_eq!(slots, 3, "one slot per GSO run");
    }

    /// The 2 MiB of GRO slots cost memory only where datagrams land: a fresh batch and one
    /// that received a few datagrams hold a handful of pages (a zeroed `Vec` was all resident
    /// on the static musl build: 2 MiB more at idle).
    #[test]
    fn gro_slots_are_resident_only_where_written() {
        let mut b = RecvBatch::new(1600);
        b.set_gro(true);
        assert_eq!(b.data.len(), GRO_SLOTS * GRO_SLOT_BYTES);
        assert!(
            b.data.resident().unwrap() <= 64 * 1024,
            "fresh: {}",
            b.data.resident().unwrap()
        );
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        tx.connect(rx.local_addr().unwrap()).unwrap();
        for _ in 0..3 {
            tx.send(&[7u8; 1000]).unwrap();
        }
        rx.set_nonblocking(false).unwrap();
        assert!(recv_batch(&rx, &mut b).unwrap() >= 1);
        let resident = b.data.resident().unwrap();
        assert!(resident <= 64 * 1024, "after a receive: {resident}");
    }

    #[test]
    fn a_full_batch_has_no_free_slot() {
        let mut b = PacketBatch::new(8);
        for _ in 0..BATCH {
            assert!(b.free_slot().is_some());
            b.push(1);
        }
        assert!(b.free_slot().is_none());
        assert_eq!(b.len(), BATCH);
    }
}
