//! Bursts of UDP datagrams through the tunnel, both ways. On a kernel with UDP segmentation
//! offload for TUN (Linux 6.2):
//! - hub -> gateway: the agent writes each run of one flow's datagrams from a batch as one
//!   `GSO_UDP_L4` frame, which the kernel cuts again before the socket;
//! - gateway -> hub: a sender with `UDP_SEGMENT` (as QUIC stacks send) hands the kernel 40
//!   datagrams in one call, which reach the agent as one `GSO_UDP_L4` frame it cuts.
//!
//! Every datagram that arrives must be whole, and in order. Needs root.

use std::net::UdpSocket;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use gatelet_tests_hw::{
    product_binary, require_root, GatewayRole, Testbed, GW_TUNNEL_IP, HUB_TUNNEL_IP,
};

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(20);
/// Bursts sent back to back, and datagrams per burst (the agent's receive batch is 64).
const BURSTS: u32 = 60;
const PER_BURST: u32 = 64;
/// Pause between bursts, so that the path drains (the test is about integrity, not loss).
const BURST_GAP: Duration = Duration::from_millis(10);
/// A full datagram for the tunnel's MTU (1420 - 28), and the short one that ends a run.
const FULL: usize = 1392;
const SHORT: usize = 100;
/// How long the receiver waits for a datagram before it decides the rest was lost.
const QUIET: Duration = Duration::from_secs(2);

/// Datagram `seq`: every 16th is short; the payload is the sequence number and a pattern
/// derived from it, so a byte out of place shows.
fn datagram(seq: u32) -> Vec<u8> {
    let len = if seq % 16 == 15 { SHORT } else { FULL };
    let mut d: Vec<u8> = (0..len)
        .map(|i| (i as u32).wrapping_mul(31).wrapping_add(seq) as u8)
        .collect();
    d[..4].copy_from_slice(&seq.to_be_bytes());
    d
}

fn uname_release() -> (u32, u32) {
    let r = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut it = r.trim().split(['.', '-']).map(|p| p.parse().unwrap_or(0));
    (it.next().unwrap_or(0), it.next().unwrap_or(0))
}

/// Receives on `rx` until it stays quiet for [`QUIET`] (bounded by two minutes).
fn receive_all(rx: UdpSocket) -> std::thread::JoinHandle<Vec<Vec<u8>>> {
    rx.set_read_timeout(Some(QUIET)).unwrap();
    std::thread::spawn(move || {
        let mut got = Vec::new();
        let mut buf = vec![0u8; 2048];
        let deadline = Instant::now() + Duration::from_secs(120);
        while Instant::now() < deadline {
            match rx.recv(&mut buf) {
                Ok(n) => got.push(buf[..n].to_vec()),
                Err(_) => break,
            }
        }
        got
    })
}

/// Checks that every datagram in `got` is the one `make` builds for its sequence number (one
/// of `sent`), unchanged and in order, and that at least 90 % arrived.
fn check(got: &[Vec<u8>], sent: u32, make: impl Fn(u32) -> Vec<u8>) {
    let mut last = None;
    for d in got {
        assert!(d.len() >= 4, "a datagram of {} bytes", d.len());
        let seq = u32::from_be_bytes([d[0], d[1], d[2], d[3]]);
        assert!(seq < sent, "sequence {seq} was never sent");
        assert_eq!(d, &make(seq), "datagram {seq} changed on the way");
        assert!(
            last < Some(seq),
            "datagram {seq} after {last:?}: out of order"
        );
        last = Some(seq);
    }
    // UDP may lose some under load; most must arrive for the check above to mean anything.
    assert!(
        got.len() as u32 >= sent * 9 / 10,
        "only {} of {sent} datagrams arrived",
        got.len()
    );
}

#[test]
fn udp_bursts_through_the_tunnel_arrive_whole_and_in_order() {
    require_root().unwrap();
    let binary = product_binary("gatelet-agent").unwrap();
    let tb = Testbed::start(&GatewayRole::Agent(binary)).unwrap();
    tb.wait_handshake(None, HANDSHAKE_TIMEOUT).unwrap();
    let rx = tb
        .gw_ns
        .enter(|| UdpSocket::bind((GW_TUNNEL_IP, 0)))
        .unwrap()
        .unwrap();
    let port = rx.local_addr().unwrap().port();
    let tx = tb
        .hub_ns
        .enter(|| UdpSocket::bind((HUB_TUNNEL_IP, 0)))
        .unwrap()
        .unwrap();
    tx.connect((GW_TUNNEL_IP, port)).unwrap();
    let receiver = receive_all(rx);
    for burst in 0..BURSTS {
        for i in 0..PER_BURST {
            tx.send(&datagram(burst * PER_BURST + i)).unwrap();
        }
        std::thread::sleep(BURST_GAP);
    }
    let got = receiver.join().unwrap();
    let sent = BURSTS * PER_BURST;
    check(&got, sent, datagram);
    eprintln!(
        "hub -> gateway: {} of {sent} datagrams arrived whole and in order",
        got.len()
    );

    // The other way, 40 full datagrams per send with UDP_SEGMENT.
    let full = |seq: u32| {
        let mut d = datagram(seq);
        d.resize(FULL, 0);
        d[FULL - 1] = seq as u8;
        d
    };
    let rx = tb
        .hub_ns
        .enter(|| UdpSocket::bind((HUB_TUNNEL_IP, 0)))
        .unwrap()
        .unwrap();
    let port = rx.local_addr().unwrap().port();
    let tx = tb
        .gw_ns
        .enter(|| UdpSocket::bind((GW_TUNNEL_IP, 0)))
        .unwrap()
        .unwrap();
    tx.connect((HUB_TUNNEL_IP, port)).unwrap();
    let segment = FULL as libc::c_int;
    // SAFETY: setsockopt(2) reads an int from a valid pointer for the given length.
    let rc = unsafe {
        libc::setsockopt(
            tx.as_raw_fd(),
            libc::SOL_UDP,
            libc::UDP_SEGMENT,
            (&segment as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "UDP_SEGMENT: {}", std::io::Error::last_os_error());
    let receiver = receive_all(rx);
    const PER_SEND: u32 = 40;
    for send in 0..BURSTS / 2 {
        let buf: Vec<u8> = (0..PER_SEND)
            .flat_map(|i| full(send * PER_SEND + i))
            .collect();
        tx.send(&buf).unwrap();
        std::thread::sleep(BURST_GAP);
    }
    let got = receiver.join().unwrap();
    let sent = BURSTS / 2 * PER_SEND;
    check(&got, sent, full);
    eprintln!(
        "gateway -> hub (UDP_SEGMENT): {} of {sent} datagrams arrived whole and in order",
        got.len()
    );

    let log = tb.agent().unwrap().log();
    if uname_release() >= (6, 2) {
        assert!(
            log.contains("UDP segmentation (TSO, USO)"),
            "Linux >= 6.2 takes USO on TUN, but the agent did not turn it on:\n{log}"
        );
    }
}
