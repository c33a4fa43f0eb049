// gatelet: tests of the calls that seal and open outside `&mut Tunn` (GATELET-PATCH.md).

use super::*;
use rand_core::{OsRng, RngCore};

fn two_tuns() -> (Tunn, Tunn) {
    let a = x25519_dalek::StaticSecret::random_from_rng(OsRng);
    let b = x25519_dalek::StaticSecret::random_from_rng(OsRng);
    let (pa, pb) = (
        x25519_dalek::PublicKey::from(&a),
        x25519_dalek::PublicKey::from(&b),
    );
    (
        Tunn::new(a, pb, None, None, OsRng.next_u32() >> 8, None),
        Tunn::new(b, pa, None, None, OsRng.next_u32() >> 8, None),
    )
}

/// A full handshake started by `init`; the keepalive that ends it is delivered to `resp`
/// (which then moves to the new session) when `deliver` is true, else returned.
fn handshake(init: &mut Tunn, resp: &mut Tunn, force: bool, deliver: bool) -> Vec<u8> {
    let mut buf = [0u8; 256];
    let mut buf2 = [0u8; 256];
    let hs = match init.format_handshake_initiation(&mut buf, force) {
        TunnResult::WriteToNetwork(p) => p.to_vec(),
        r => panic!("no initiation: {:?}", r),
    };
    let answer = match resp.decapsulate(None, &hs, &mut buf2) {
        TunnResult::WriteToNetwork(p) => p.to_vec(),
        r => panic!("no response: {:?}", r),
    };
    let keepalive = match init.decapsulate(None, &answer, &mut buf) {
        TunnResult::WriteToNetwork(p) => p.to_vec(),
        r => panic!("no keepalive: {:?}", r),
    };
    if deliver {
        assert!(matches!(
            resp.decapsulate(None, &keepalive, &mut buf2),
            TunnResult::Done
        ));
    }
    keepalive
}

fn ipv4(id: u16) -> Vec<u8> {
    let mut p = vec![0u8; 60];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&60u16.to_be_bytes());
    p[4..6].copy_from_slice(&id.to_be_bytes());
    p[12..16].copy_from_slice(&[10, 0, 0, 1]);
    p[16..20].copy_from_slice(&[10, 0, 0, 2]);
    p
}

fn counter_of(datagram: &[u8]) -> u64 {
    u64::from_le_bytes(datagram[8..16].try_into().unwrap())
}

fn receiver_of(datagram: &[u8]) -> u32 {
    u32::from_le_bytes(datagram[4..8].try_into().unwrap())
}

/// Opens `datagram` the split way on `tun`: the plaintext, or the error.
fn open(tun: &Tunn, datagram: &[u8]) -> Result<Vec<u8>, WireGuardError> {
    let session = tun
        .receiving_session(receiver_of(datagram))
        .ok_or(WireGuardError::NoCurrentSession)?;
    let mut dst = [0u8; 2048];
    let plain = session.open(datagram, &mut dst)?;
    Ok(plain.to_vec())
}

#[test]
fn reserved_counters_go_into_the_headers_in_reservation_order() {
    let (mut a, mut b) = two_tuns();
    handshake(&mut a, &mut b, false, true);
    let s = a.sending_session().expect("a session after the handshake");
    // The handshake's keepalive took counter 0.
    let first = s.reserve(3);
    assert_eq!(first, 1);
    let mut out = vec![[0u8; 128]; 3];
    // Sealed out of order (as workers would), each with its own counter.
    for i in [2usize, 0, 1] {
        let p = ipv4(i as u16);
        let n = s.seal_at(first + i as u64, &p, &mut out[i]).len();
        assert_eq!(n, p.len() + 32);
    }
    for (i, d) in out.iter().enumerate() {
        assert_eq!(counter_of(d), first + i as u64);
        assert_eq!(open(&b, &d[..92]).unwrap(), ipv4(i as u16));
    }
    // The next single reservation (encapsulate's) follows the batch.
    let mut buf = [0u8; 128];
    match a.encapsulate(&ipv4(9), &mut buf) {
        TunnResult::WriteToNetwork(d) => assert_eq!(counter_of(d), first + 3),
        r => panic!("{r:?}"),
    }
}

#[test]
fn two_threads_sealing_with_one_session_never_share_a_counter() {
    let (mut a, mut b) = two_tuns();
    handshake(&mut a, &mut b, false, true);
    let s = a.sending_session().unwrap();
    const EACH: usize = 300;
    let sealed: Vec<Vec<Vec<u8>>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..2u16)
            .map(|t| {
                let s = Arc::clone(&s);
                scope.spawn(move || {
                    (0..EACH)
                        .map(|i| {
                            let mut dst = vec![0u8; 128];
                            let p = ipv4(t * 1000 + i as u16);
                            let n = s.seal_at(s.reserve(1), &p, &mut dst).len();
                            dst.truncate(n);
                            dst
                        })
                        .collect()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut all: Vec<Vec<u8>> = sealed.into_iter().flatten().collect();
    all.sort_by_key(|d| counter_of(d));
    let counters: Vec<u64> = all.iter().map(|d| counter_of(d)).collect();
    let want: Vec<u64> = (1..=2 * EACH as u64).collect();
    assert_eq!(counters, want, "every counter once, none skipped");
    for d in &all {
        assert!(open(&b, d).is_ok());
    }
    b.note_received(receiver_of(&all[0]), all.len(), all.len(), all.len() * 60);
    a.note_sent(all.len(), all.len() * 60);
    assert_eq!(a.stats().1, 2 * EACH * 60);
    assert_eq!(b.stats().2, 2 * EACH * 60);
}

#[test]
fn a_replayed_or_forged_datagram_is_refused_before_decryption() {
    let (mut a, mut b) = two_tuns();
    handshake(&mut a, &mut b, false, true);
    let s = a.sending_session().unwrap();
    let mut d = [0u8; 128];
    let n = s.seal_at(s.reserve(1), &ipv4(1), &mut d).len();
    let d = &d[..n];
    assert!(open(&b, d).is_ok());
    assert!(matches!(open(&b, d), Err(WireGuardError::DuplicateCounter)));
    // The same counter through the classic call is refused as well: one replay window.
    let mut dst = [0u8; 256];
    assert!(matches!(
        b.decapsulate(None, d, &mut dst),
        TunnResult::Err(WireGuardError::DuplicateCounter)
    ));
    // A flipped byte fails authentication and does not use up the counter.
    let fresh_counter = s.reserve(1);
    let mut forged = [0u8; 128];
    let n = s.seal_at(fresh_counter, &ipv4(2), &mut forged).len();
    forged[40] ^= 1;
    assert!(matches!(
        open(&b, &forged[..n]),
        Err(WireGuardError::InvalidAeadTag)
    ));
    forged[40] ^= 1;
    assert_eq!(open(&b, &forged[..n]).unwrap(), ipv4(2));
    // Not a data message, and a destination too small: errors, not panics.
    let session = b.receiving_session(receiver_of(d)).unwrap();
    assert!(matches!(
        session.open(&[1, 0, 0, 0], &mut dst),
        Err(WireGuardError::InvalidPacket)
    ));
    let n2 = s.seal_at(s.reserve(1), &ipv4(3), &mut forged).len();
    assert!(matches!(
        session.open(&forged[..n2], &mut [0u8; 16]),
        Err(WireGuardError::InvalidPacket)
    ));
    // A receiver index nobody holds finds no session.
    assert!(b.receiving_session(receiver_of(d) ^ 0x80).is_none());
}

#[test]
fn a_session_replaced_by_a_new_handshake_mid_batch_still_seals_and_opens() {
    let (mut a, mut b) = two_tuns();
    handshake(&mut a, &mut b, false, true);
    let old = a.sending_session().unwrap();
    let first = old.reserve(2);
    let mut d0 = [0u8; 128];
    let n0 = old.seal_at(first, &ipv4(0), &mut d0).len();
    // A rekey completes while the batch is being sealed (its keepalive still on the way). Its
    // initiation needs a later timestamp than the first one's.
    #[cfg(feature = "mock-instant")]
    mock_instant::MockClock::advance(Duration::from_secs(1));
    #[cfg(not(feature = "mock-instant"))]
    std::thread::sleep(Duration::from_millis(2));
    let keepalive = handshake(&mut a, &mut b, true, false);
    let new = a.sending_session().unwrap();
    assert!(!Arc::ptr_eq(&old, &new), "the initiator switched at once");
    let mut d1 = [0u8; 128];
    let n1 = old.seal_at(first + 1, &ipv4(1), &mut d1).len();
    // The responder still holds the old session and opens both.
    assert_eq!(open(&b, &d0[..n0]).unwrap(), ipv4(0));
    assert_eq!(open(&b, &d1[..n1]).unwrap(), ipv4(1));
    b.note_received(receiver_of(&d1), 2, 2, 120);
    assert_eq!(b.sending_session().unwrap().receiving_index(), receiver_of(&d1));
    // Data on the new session moves the responder over to it.
    let mut d2 = [0u8; 128];
    let n2 = new.seal_at(new.reserve(1), &ipv4(2), &mut d2).len();
    assert_eq!(open(&b, &d2[..n2]).unwrap(), ipv4(2));
    let before = b.sending_session().unwrap();
    assert_ne!(before.receiving_index(), receiver_of(&d2));
    b.note_received(receiver_of(&d2), 1, 1, 60);
    let after = b.sending_session().unwrap();
    assert_eq!(after.receiving_index(), receiver_of(&d2));
    assert_eq!(receiver_of(&keepalive), receiver_of(&d2));
}

#[test]
fn note_sent_and_received_tick_the_timers_encapsulate_and_decapsulate_tick() {
    let (mut a, mut b) = two_tuns();
    handshake(&mut a, &mut b, false, true);
    let sent_before = a.timers[TimerName::TimeLastDataPacketSent];
    a.timers[TimerName::TimeCurrent] += Duration::from_secs(3);
    a.note_sent(0, 0);
    assert_eq!(a.timers[TimerName::TimeLastDataPacketSent], sent_before);
    a.note_sent(1, 0);
    assert_eq!(a.timers[TimerName::TimeLastDataPacketSent], sent_before, "a keepalive");
    assert_eq!(a.timers[TimerName::TimeLastPacketSent], a.timers[TimerName::TimeCurrent]);
    a.note_sent(2, 100);
    assert_eq!(a.timers[TimerName::TimeLastDataPacketSent], a.timers[TimerName::TimeCurrent]);

    b.timers[TimerName::TimeCurrent] += Duration::from_secs(3);
    let idx = b.sending_session().unwrap().receiving_index();
    b.note_received(idx, 1, 0, 0);
    assert_eq!(b.timers[TimerName::TimeLastPacketReceived], b.timers[TimerName::TimeCurrent]);
    assert_ne!(b.timers[TimerName::TimeLastDataPacketReceived], b.timers[TimerName::TimeCurrent]);
    b.note_received(idx, 1, 1, 60);
    assert_eq!(b.timers[TimerName::TimeLastDataPacketReceived], b.timers[TimerName::TimeCurrent]);
}

#[test]
fn decapsulated_cuts_to_the_header_length_and_refuses_short_packets() {
    let mut p = ipv4(1);
    p.extend_from_slice(&[0; 12]); // padding after the packet
    match Tunn::decapsulated(&mut p) {
        TunnResult::WriteToTunnelV4(q, src) => {
            assert_eq!(q.len(), 60);
            assert_eq!(src, Ipv4Addr::new(10, 0, 0, 1));
        }
        r => panic!("{r:?}"),
    }
    assert!(matches!(Tunn::decapsulated(&mut []), TunnResult::Done));
    let mut short = ipv4(1);
    short.truncate(40);
    assert!(matches!(
        Tunn::decapsulated(&mut short),
        TunnResult::Err(WireGuardError::InvalidPacket)
    ));
}

#[test]
fn a_session_debug_shows_indices_never_keys() {
    let (mut a, mut b) = two_tuns();
    handshake(&mut a, &mut b, false, true);
    let s = a.sending_session().unwrap();
    let shown = format!("{s:?}");
    let mut d = [0u8; 64];
    let n = s.seal_at(s.reserve(1), &[], &mut d).len();
    let peer = receiver_of(&d[..n]);
    assert_eq!(shown, format!("Session: {}<- ->{}", s.receiving_index(), peer));
}
