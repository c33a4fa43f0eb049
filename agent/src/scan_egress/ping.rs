//! The tunnel check of the egress failover, as the reference's `chk_tunnel` does it: one ICMP
//! echo request to the hub's tunnel address, answered within [`PING_TIMEOUT`] or not (`ping
//! -c1 -W2 <hub>`). The request goes through the kernel's routing table, so in TUN mode it
//! travels through the tunnel from the tunnel address. The messages are built and checked
//! here; the raw socket is `crate::sys::vrrp::raw_icmp`.

use std::net::Ipv4Addr;
use std::time::Duration;

use super::vrrp::wire::checksum;

/// Time an echo reply may take.
pub const PING_TIMEOUT: Duration = Duration::from_secs(2);

/// An ICMP echo request with `id` and `seq` and 8 bytes of payload.
pub fn echo_request(id: u16, seq: u16) -> Vec<u8> {
    let mut m = vec![8, 0, 0, 0];
    m.extend_from_slice(&id.to_be_bytes());
    m.extend_from_slice(&seq.to_be_bytes());
    m.extend_from_slice(b"gatelet!");
    let c = checksum(&m);
    m[2..4].copy_from_slice(&c.to_be_bytes());
    m
}

/// Whether the packet `p` (IPv4 header included, as a raw socket receives it) is the echo
/// reply from `from` to our request `id`/`seq`.
pub fn is_reply(p: &[u8], from: Ipv4Addr, id: u16, seq: u16) -> bool {
    if p.len() < 20 || p[0] >> 4 != 4 || p[9] != 1 {
        return false;
    }
    let ihl = usize::from(p[0] & 0x0f) * 4;
    if ihl < 20 || p.len() < ihl + 8 {
        return false;
    }
    let icmp = &p[ihl..];
    Ipv4Addr::new(p[12], p[13], p[14], p[15]) == from
        && icmp[0] == 0
        && icmp[1] == 0
        && icmp[4..6] == id.to_be_bytes()
        && icmp[6..8] == seq.to_be_bytes()
}

/// Pings `hub` once: true when its echo reply came within [`PING_TIMEOUT`].
pub async fn ping(hub: Ipv4Addr, id: u16, seq: u16) -> bool {
    let attempt = async {
        let fd = crate::sys::vrrp::raw_icmp().ok()?;
        let sock = crate::sys::fd::register(fd).ok()?;
        crate::sys::vrrp::send_to_v4(sock.get_ref(), &echo_request(id, seq), hub).ok()?;
        let mut buf = [0u8; 1500];
        loop {
            let mut guard = sock.readable().await.ok()?;
            // A busy box may see other ICMP traffic: bounded by the timeout around us.
            loop {
                match crate::sys::vrrp::recv(guard.get_inner(), &mut buf) {
                    Ok(n) if is_reply(&buf[..n], hub, id, seq) => return Some(()),
                    Ok(_) => continue,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        guard.clear_ready();
                        break;
                    }
                    Err(_) => return None,
                }
            }
        }
    };
    matches!(
        tokio::time::timeout(PING_TIMEOUT, attempt).await,
        Ok(Some(()))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_echo_request_has_a_valid_checksum_and_a_matching_reply_is_recognised() {
        let req = echo_request(0x1234, 7);
        assert_eq!(&req[..2], &[8, 0]);
        assert_eq!(checksum(&req), 0);
        let hub = Ipv4Addr::new(10, 8, 0, 1);
        let mut reply = vec![
            0x45, 0, 0, 36, 0, 0, 0, 0, 64, 1, 0, 0, 10, 8, 0, 1, 10, 8, 0, 2,
        ];
        let mut icmp = req.clone();
        icmp[0] = 0;
        reply.extend_from_slice(&icmp);
        assert!(is_reply(&reply, hub, 0x1234, 7));
        assert!(!is_reply(&reply, hub, 0x1234, 8), "another sequence");
        assert!(!is_reply(&reply, hub, 0x1235, 7), "another id");
        assert!(
            !is_reply(&reply, Ipv4Addr::new(10, 8, 0, 9), 0x1234, 7),
            "another host"
        );
        let mut request_seen = reply.clone();
        request_seen[20] = 8;
        assert!(!is_reply(&request_seen, hub, 0x1234, 7), "our own request");
        // Shorter than the IP header plus the ICMP header: never a reply, never a panic.
        for n in 0..28 {
            assert!(!is_reply(&reply[..n], hub, 0x1234, 7), "{n} bytes");
        }
    }

    #[tokio::test]
    async fn loopback_answers_a_ping_when_we_may_open_raw_sockets() {
        // Needs CAP_NET_RAW (root in CI and tests-hw); without it the ping fails, which is
        // what the failover then reports.
        let root = std::fs::read_to_string("/proc/self/status")
            .map(|s| {
                s.lines()
                    .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
            })
            .unwrap_or(false);
        let ok = ping(Ipv4Addr::LOCALHOST, 0x4242, 1).await;
        assert_eq!(
            ok, root,
            "127.0.0.1 answers exactly when we may send raw ICMP"
        );
    }
}
