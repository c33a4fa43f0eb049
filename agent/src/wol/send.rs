//! Sending magic packets: on every selected interface, to its directed broadcast and to
//! 255.255.255.255 on that interface, [`REPEATS`] rounds [`REPEAT_GAP`] apart.
//!
//! Each interface gets one UDP socket with `SO_BROADCAST`, bound to the interface's address and
//! pinned with `SO_BINDTODEVICE` (needs `CAP_NET_RAW`). When the kernel refuses that, the bound
//! source address alone still makes Linux send 255.255.255.255 out of the interface that owns
//! it.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::time::Duration;

use gatelet_agent_api::control::SentOn;
use tokio::net::UdpSocket;

use super::ifaces::Iface;
use crate::sys;

/// UDP port of magic packets (discard).
pub const WOL_PORT: u16 = 9;
/// Rounds of packets per wake.
pub const REPEATS: u32 = 3;
/// Pause between rounds.
pub const REPEAT_GAP: Duration = Duration::from_millis(100);

static FALLBACK_LOGGED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// A broadcast-capable UDP socket for `iface`; the flag says whether `SO_BINDTODEVICE` held.
fn socket_for(iface: &Iface) -> io::Result<(UdpSocket, bool)> {
    let owned = sys::sock::udp_v4()?;
    let fd = owned.as_raw_fd();
    sys::sock::set_int(fd, libc::SOL_SOCKET, libc::SO_BROADCAST, 1)?;
    let bound_to_device = match sys::sock::set_bytes(
        fd,
        libc::SOL_SOCKET,
        libc::SO_BINDTODEVICE,
        iface.name.as_bytes(),
    ) {
        Ok(()) => true,
        Err(e) => {
            // Said once per process: the fallback works, but an operator should know.
            if !FALLBACK_LOGGED.swap(true, std::sync::atomic::Ordering::Relaxed) {
                tracing::info!(iface = %iface.name, error = %e,
                        "SO_BINDTODEVICE refused (no CAP_NET_RAW?): magic packets leave by the \
                         interface address only");
            }
            false
        }
    };
    sys::sock::bind_v4(&owned, iface.addr, 0)?;
    let std_sock = std::net::UdpSocket::from(owned);
    Ok((UdpSocket::from_std(std_sock)?, bound_to_device))
}

/// Sends `packet` on every interface of `ifaces` to `port`, `repeats` rounds `gap` apart; one
/// [`SentOn`] per interface and destination (directed broadcast, then 255.255.255.255).
pub async fn send_all(
    ifaces: &[Iface],
    packet: &[u8],
    port: u16,
    repeats: u32,
    gap: Duration,
) -> Vec<SentOn> {
    struct Out {
        sock: Option<UdpSocket>,
        report: Vec<SentOn>,
        dests: Vec<Ipv4Addr>,
    }
    let mut outs: Vec<Out> = ifaces
        .iter()
        .map(|i| {
            let dests = vec![i.directed_broadcast(), Ipv4Addr::BROADCAST];
            let (sock, error) = match socket_for(i) {
                Ok((s, _)) => (Some(s), None),
                Err(e) => (
                    None,
                    Some(format!("cannot open a broadcast socket on {}: {e}", i.name)),
                ),
            };
            let report = dests
                .iter()
                .map(|d| SentOn {
                    iface: i.name.clone(),
                    broadcast: d.to_string(),
                    ok: error.is_none(),
                    error: error.clone(),
                })
                .collect();
            Out {
                sock,
                report,
                dests,
            }
        })
        .collect();
    for round in 0..repeats {
        if round > 0 {
            tokio::time::sleep(gap).await;
        }
        for out in &mut outs {
            let Some(sock) = &out.sock else { continue };
            for (d, rep) in out.dests.iter().zip(out.report.iter_mut()) {
                if let Err(e) = sock.send_to(packet, (*d, port)).await {
                    rep.ok = false;
                    rep.error = Some(format!("send to {d}:{port} on {}: {e}", rep.iface));
                }
            }
        }
    }
    outs.into_iter().flat_map(|o| o.report).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn loopback_socket_opens_and_reports_every_destination() {
        // Loopback cannot broadcast; the report must say so per destination, not panic.
        let lo = Iface {
            name: "lo".into(),
            addr: Ipv4Addr::LOCALHOST,
            netmask: Ipv4Addr::new(255, 0, 0, 0),
            up: true,
            loopback: true,
            broadcast: false,
        };
        let rep = send_all(&[lo], &[0xFF; 102], WOL_PORT, 2, Duration::from_millis(1)).await;
        assert_eq!(rep.len(), 2);
        assert_eq!(rep[0].broadcast, "127.255.255.255");
        assert_eq!(rep[1].broadcast, "255.255.255.255");
        for r in &rep {
            assert_eq!(r.ok, r.error.is_none(), "{r:?}");
        }
    }
}
