//! Two cores (gateway and hub) against each other in memory, with boringtun's mock clock and
//! a virtual `Instant` advanced together.

use super::*;
use mock_instant::MockClock;
use std::collections::VecDeque;

const GW_IP: [u8; 4] = [10, 8, 0, 2];
const HUB_IP: [u8; 4] = [10, 8, 0, 1];
const MAX_PACKET: usize = 1500;
/// WireGuard's REKEY_AFTER_TIME.
const REKEY_AFTER: Duration = Duration::from_secs(120);

fn keys() -> (TunnelKeys, TunnelKeys) {
    let gw_secret = [0x11u8; 32];
    let hub_secret = [0x22u8; 32];
    let public = |s: [u8; 32]| PublicKey::from(&StaticSecret::from(s)).to_bytes();
    let psk = Some([0x33u8; 32]);
    (
        TunnelKeys {
            private_key: gw_secret,
            peer_public_key: public(hub_secret),
            preshared_key: psk,
        },
        TunnelKeys {
            private_key: hub_secret,
            peer_public_key: public(gw_secret),
            preshared_key: psk,
        },
    )
}

/// An IPv4 packet with a correct total length and `payload_len` payload bytes.
fn ipv4(src: [u8; 4], dst: [u8; 4], payload_len: usize) -> Vec<u8> {
    let mut p = vec![0u8; 20 + payload_len];
    p[0] = 0x45;
    let len = u16::try_from(p.len()).unwrap();
    p[2..4].copy_from_slice(&len.to_be_bytes());
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&src);
    p[16..20].copy_from_slice(&dst);
    for (i, b) in p[20..].iter_mut().enumerate() {
        *b = i as u8;
    }
    p
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dir {
    ToHub,
    ToGw,
}

struct Side {
    core: TunnelCore,
    stats: Arc<TunnelStats>,
    delivered: Vec<Vec<u8>>,
}

/// The two ends and the wire between them.
struct Pair {
    gw: Side,
    hub: Side,
    now: Instant,
    start: Instant,
    wire: VecDeque<(Dir, Vec<u8>)>,
    /// Every datagram that went on the wire, with its virtual time since start.
    log: Vec<(Duration, Dir, Vec<u8>)>,
    /// When false, datagrams to the gateway are lost (the hub is gone).
    hub_answers: bool,
    buf: Vec<u8>,
}

impl Pair {
    fn new() -> Pair {
        let start = Instant::now();
        let (gw_keys, hub_keys) = keys();
        let side = |k: &TunnelKeys, allowed: &str| {
            let stats = Arc::new(TunnelStats::new(start, "tun"));
            let allowed = AllowedIps::new(vec![allowed.parse().unwrap()]);
            Side {
                core: TunnelCore::new(k, allowed, stats.clone()),
                stats,
                delivered: Vec::new(),
            }
        };
        let mut gw = side(&gw_keys, "10.8.0.1/32");
        let hub = side(&hub_keys, "10.8.0.2/32");
        gw.core.resolve_started(start);
        gw.core
            .resolve_finished(Ok(vec!["192.0.2.1:51820".parse().unwrap()]));
        Pair {
            gw,
            hub,
            now: start,
            start,
            wire: VecDeque::new(),
            log: Vec::new(),
            hub_answers: true,
            buf: vec![0; TunnelCore::dst_len(MAX_PACKET)],
        }
    }

    fn elapsed(&self) -> Duration {
        self.now - self.start
    }

    fn put(&mut self, dir: Dir, datagram: &[u8]) {
        self.log.push((self.elapsed(), dir, datagram.to_vec()));
        if dir == Dir::ToHub || self.hub_answers {
            self.wire.push_back((dir, datagram.to_vec()));
        }
    }

    fn side(&mut self, dir: Dir) -> &mut Side {
        match dir {
            Dir::ToHub => &mut self.hub,
            Dir::ToGw => &mut self.gw,
        }
    }

    /// Delivers everything on the wire, including the answers it causes.
    fn deliver(&mut self) {
        for _ in 0..10_000 {
            let Some((dir, datagram)) = self.wire.pop_front() else {
                return;
            };
            let back = match dir {
                Dir::ToHub => Dir::ToGw,
                Dir::ToGw => Dir::ToHub,
            };
            let now = self.now;
            let mut buf = std::mem::take(&mut self.buf);
            let mut replies = Vec::new();
            let side = self.side(dir);
            match side.core.from_network(now, &datagram, &mut buf) {
                FromNetwork::ToTun(p) => side.delivered.push(p.to_vec()),
                FromNetwork::ToNetwork(d) => {
                    replies.push(d.to_vec());
                    while let Some(q) = side.core.poll_queued(&mut buf) {
                        replies.push(q.to_vec());
                    }
                }
                FromNetwork::Nothing => {}
            }
            self.buf = buf;
            for r in replies {
                self.put(back, &r);
            }
        }
        panic!("the wire never went quiet");
    }

    fn tick(&mut self) {
        let now = self.now;
        let mut buf = std::mem::take(&mut self.buf);
        if let Some(d) = self.gw.core.on_timer(now, &mut buf) {
            let d = d.to_vec();
            self.put(Dir::ToHub, &d);
        }
        if let Some(d) = self.hub.core.on_timer(now, &mut buf) {
            let d = d.to_vec();
            self.put(Dir::ToGw, &d);
        }
        self.buf = buf;
        self.deliver();
    }

    fn advance(&mut self, d: Duration) {
        MockClock::advance(d);
        self.now += d;
    }

    /// Runs timers for `d` of virtual time, one tick at a time.
    fn run_for(&mut self, d: Duration) {
        let end = self.now + d;
        while self.now < end {
            self.advance(TIMER_TICK);
            self.tick();
        }
    }

    fn connect(&mut self) {
        self.run_for(TIMER_TICK);
        assert!(self.gw.core.last_handshake().is_some(), "no handshake");
    }

    fn send(&mut self, dir: Dir, packet: &[u8]) {
        let mut buf = std::mem::take(&mut self.buf);
        let from = match dir {
            Dir::ToHub => &mut self.gw,
            Dir::ToGw => &mut self.hub,
        };
        if let Some(d) = from.core.from_tun(packet, &mut buf) {
            let d = d.to_vec();
            self.buf = buf;
            self.put(dir, &d);
        } else {
            self.buf = buf;
        }
        self.deliver();
    }

    /// Times of the gateway's datagrams of message type `kind` and length `len` (any length
    /// when None), since start.
    fn gw_sent(&self, kind: u8, len: Option<usize>) -> Vec<Duration> {
        self.log
            .iter()
            .filter(|(_, d, p)| {
                *d == Dir::ToHub && p[0] == kind && len.is_none_or(|l| p.len() == l)
            })
            .map(|(t, _, _)| *t)
            .collect()
    }
}

#[test]
fn handshake_completes_and_data_flows_both_ways() {
    let mut p = Pair::new();
    p.connect();
    assert!(p.hub.core.last_handshake().is_some());
    let up = ipv4(GW_IP, HUB_IP, 100);
    let down = ipv4(HUB_IP, GW_IP, 1000);
    p.send(Dir::ToHub, &up);
    p.send(Dir::ToGw, &down);
    assert_eq!(p.hub.delivered, vec![up.clone()]);
    assert_eq!(p.gw.delivered, vec![down.clone()]);
    let gw = p.gw.stats.snapshot(p.now);
    assert_eq!((gw.tx_packets, gw.tx_bytes), (1, up.len() as u64));
    assert_eq!((gw.rx_packets, gw.rx_bytes), (1, down.len() as u64));
    assert_eq!(gw.handshake_age_s, Some(0));
    assert_eq!(gw.endpoint.as_deref(), Some("192.0.2.1:51820"));
}

#[test]
fn packet_sent_before_the_handshake_is_delivered_after_it() {
    let mut p = Pair::new();
    let up = ipv4(GW_IP, HUB_IP, 60);
    p.send(Dir::ToHub, &up);
    assert_eq!(p.gw_sent(MSG_HANDSHAKE_INIT, None).len(), 1);
    assert_eq!(p.hub.delivered, vec![up]);
}

#[test]
fn persistent_keepalive_is_sent_every_25_s_when_idle() {
    let mut p = Pair::new();
    p.connect();
    let after_handshake = p.log.len();
    p.run_for(Duration::from_secs(60));
    let keepalives: Vec<Duration> = p.log[after_handshake..]
        .iter()
        .filter(|(_, d, pkt)| *d == Dir::ToHub && pkt.len() == WG_OVERHEAD && pkt[0] == 4)
        .map(|(t, _, _)| *t)
        .collect();
    assert!(keepalives.len() >= 2, "keepalives at {keepalives:?}");
    assert!(keepalives[0] >= Duration::from_secs(24), "{keepalives:?}");
    for w in keepalives.windows(2) {
        let gap = w[1] - w[0];
        assert!(
            gap >= Duration::from_secs(25) && gap <= Duration::from_secs(26),
            "{keepalives:?}"
        );
    }
}

#[test]
fn sender_rekeys_after_rekey_after_time() {
    let mut p = Pair::new();
    p.connect();
    let first = p.gw.core.last_handshake().unwrap();
    let up = ipv4(GW_IP, HUB_IP, 40);
    for _ in 0..130 {
        p.send(Dir::ToHub, &up);
        p.run_for(Duration::from_secs(1));
    }
    let inits = p.gw_sent(MSG_HANDSHAKE_INIT, None);
    assert_eq!(inits.len(), 2, "handshake initiations at {inits:?}");
    assert!(
        inits[1] >= Duration::from_secs(120) && inits[1] <= Duration::from_secs(123),
        "{inits:?}"
    );
    let second = p.gw.core.last_handshake().unwrap();
    // boringtun stamps events with the time of its last timer update: one tick of grain.
    assert!(
        second - first >= REKEY_AFTER - TIMER_TICK,
        "{:?}",
        second - first
    );
    assert_eq!(
        p.hub.delivered.len(),
        130,
        "no packet lost across the rekey"
    );
}

#[test]
fn resolve_is_requested_after_3_minutes_without_handshake() {
    let mut p = Pair::new();
    p.connect();
    let handshake = p.gw.core.last_handshake().unwrap();
    p.hub_answers = false;
    assert!(!p.gw.core.wants_resolve(p.now));
    while !p.gw.core.wants_resolve(p.now) {
        p.run_for(TIMER_TICK);
        assert!(p.now - handshake <= RESOLVE_AFTER_NO_HANDSHAKE + TIMER_TICK);
    }
    assert!(p.now - handshake >= RESOLVE_AFTER_NO_HANDSHAKE);
    // Once resolved again, the request is satisfied.
    p.gw.core.resolve_started(p.now);
    assert!(!p.gw.core.wants_resolve(p.now));
    assert_eq!(
        p.gw.core
            .resolve_finished(Ok(vec!["192.0.2.1:51820".parse().unwrap()])),
        None
    );
    assert!(!p.gw.core.wants_resolve(p.now));
}

#[test]
fn failed_send_requests_a_resolve_after_the_retry_interval() {
    let mut p = Pair::new();
    p.connect();
    p.gw.core
        .on_send_error("send to 192.0.2.1:51820: network unreachable");
    assert!(!p.gw.core.wants_resolve(p.now));
    p.advance(RESOLVE_RETRY_INTERVAL);
    assert!(p.gw.core.wants_resolve(p.now));
    let st = p.gw.stats.snapshot(p.now);
    assert!(st.last_error.unwrap().contains("network unreachable"));
}

#[test]
fn new_address_replaces_a_vanished_endpoint_and_triggers_a_handshake() {
    let mut p = Pair::new();
    p.connect();
    let a: SocketAddr = "192.0.2.1:51820".parse().unwrap();
    let b: SocketAddr = "192.0.2.2:51820".parse().unwrap();
    p.gw.core.resolve_started(p.now);
    assert_eq!(p.gw.core.resolve_finished(Ok(vec![b, a])), None, "kept");
    p.gw.core.resolve_started(p.now);
    assert_eq!(p.gw.core.resolve_finished(Ok(vec![b])), Some(b));
    assert_eq!(p.gw.core.endpoint(), Some(b));
    let inits = p.gw_sent(MSG_HANDSHAKE_INIT, None).len();
    p.advance(Duration::from_secs(1));
    p.tick();
    assert_eq!(p.gw_sent(MSG_HANDSHAKE_INIT, None).len(), inits + 1);
    assert_eq!(
        p.gw.stats.snapshot(p.now).endpoint.as_deref(),
        Some("192.0.2.2:51820")
    );
    p.gw.core.resolve_started(p.now);
    assert_eq!(p.gw.core.resolve_finished(Err("no such host".into())), None);
    assert_eq!(p.gw.core.endpoint(), Some(b), "an error keeps the address");
}

#[test]
fn packets_from_outside_allowed_ips_are_dropped() {
    let mut p = Pair::new();
    p.connect();
    let spoofed = ipv4([10, 9, 9, 9], GW_IP, 20);
    p.send(Dir::ToGw, &spoofed);
    assert!(p.gw.delivered.is_empty());
    assert_eq!(p.gw.stats.rx_dropped_not_allowed(), 1);
    assert_eq!(p.gw.stats.snapshot(p.now).rx_packets, 0);

    let wire_before = p.log.len();
    let elsewhere = ipv4(GW_IP, [192, 168, 1, 1], 20);
    p.send(Dir::ToHub, &elsewhere);
    assert_eq!(p.log.len(), wire_before, "nothing was sent");
    assert_eq!(p.gw.stats.tx_dropped_not_allowed(), 1);
    assert_eq!(p.gw.stats.snapshot(p.now).tx_packets, 0);
}

#[test]
fn silent_hub_keeps_getting_handshake_initiations_after_expiry() {
    let mut p = Pair::new();
    p.hub_answers = false;
    p.run_for(Duration::from_secs(200));
    let inits = p.gw_sent(MSG_HANDSHAKE_INIT, Some(HANDSHAKE_INIT_LEN));
    assert!(
        inits.iter().any(|t| *t > Duration::from_secs(100)),
        "initiations stopped: {inits:?}"
    );
    // Retries are REKEY_TIMEOUT (5 s) apart, never a flood.
    assert!(inits.len() <= 200 / 5 + 2, "{} initiations", inits.len());
    assert!(p.gw.stats.snapshot(p.now).last_error.is_some());
    assert!(p.gw.core.wants_resolve(p.now));
    // The hub comes back: the next initiation completes and the error is cleared.
    p.hub_answers = true;
    p.run_for(Duration::from_secs(6));
    assert!(p.gw.core.last_handshake().is_some());
    assert_eq!(p.gw.stats.snapshot(p.now).last_error, None);
}

#[test]
fn unanswered_handshakes_request_a_resolve_long_before_3_minutes() {
    let mut p = Pair::new();
    p.connect();
    p.run_for(Duration::from_secs(1));
    let gone = p.now;
    p.hub_answers = false;
    let up = ipv4(GW_IP, HUB_IP, 40);
    p.send(Dir::ToHub, &up);
    while !p.gw.core.wants_resolve(p.now) {
        p.run_for(TIMER_TICK);
        assert!(p.now - gone < Duration::from_secs(60), "no resolve request");
    }
    // Unanswered data starts handshaking (boringtun: KEEPALIVE + REKEY_TIMEOUT); after
    // RESOLVE_AFTER_UNANSWERED without an answer the name is resolved again.
    let since_start = gone - p.start;
    let first_init = *p
        .gw_sent(MSG_HANDSHAKE_INIT, None)
        .iter()
        .find(|t| **t > since_start)
        .expect("the gateway retried the handshake");
    let waited = (p.now - p.start) - first_init;
    assert!(
        waited >= RESOLVE_AFTER_UNANSWERED && waited <= RESOLVE_AFTER_UNANSWERED + TIMER_TICK,
        "{waited:?}"
    );
    // While the hub stays silent, at most one resolution per RESOLVE_AFTER_UNANSWERED.
    p.gw.core.resolve_started(p.now);
    p.gw.core
        .resolve_finished(Ok(vec!["192.0.2.1:51820".parse().unwrap()]));
    p.run_for(RESOLVE_AFTER_UNANSWERED - TIMER_TICK);
    assert!(!p.gw.core.wants_resolve(p.now));
    p.run_for(TIMER_TICK);
    assert!(p.gw.core.wants_resolve(p.now));
}

#[test]
fn initiation_lost_before_an_address_change_is_sent_again_to_the_new_address() {
    let mut p = Pair::new();
    let up = ipv4(GW_IP, HUB_IP, 30);
    let mut buf = vec![0; TunnelCore::dst_len(MAX_PACKET)];
    let lost = p.gw.core.from_tun(&up, &mut buf).map(|d| d[0]);
    assert_eq!(
        lost,
        Some(MSG_HANDSHAKE_INIT),
        "sent nowhere: the handshake is in progress"
    );
    p.gw.core.resolve_started(p.now);
    let b: SocketAddr = "192.0.2.2:51820".parse().unwrap();
    assert_eq!(p.gw.core.resolve_finished(Ok(vec![b])), Some(b));
    p.tick();
    assert_eq!(p.gw_sent(MSG_HANDSHAKE_INIT, None).len(), 1);
    assert_eq!(
        p.hub.delivered,
        vec![up],
        "the queued packet followed the handshake"
    );
}

#[test]
fn unusable_endpoint_is_resolved_and_set_again() {
    let mut p = Pair::new();
    let a: SocketAddr = "192.0.2.1:51820".parse().unwrap();
    p.gw.core
        .endpoint_unusable("cannot use the hub address: network unreachable");
    assert_eq!(p.gw.core.endpoint(), None);
    assert!(!p.gw.core.wants_resolve(p.now));
    p.advance(RESOLVE_RETRY_INTERVAL);
    assert!(p.gw.core.wants_resolve(p.now));
    p.gw.core.resolve_started(p.now);
    assert_eq!(
        p.gw.core.resolve_finished(Ok(vec![a])),
        Some(a),
        "applied again"
    );
}

// Sealing and opening outside the core (the data path with a thread per direction).

/// Opens `datagrams` on `side` as one batch of the split data path: sessions looked up when
/// first needed, opened outside the core, the batch reported at the end. Returns what was
/// delivered.
fn open_split(side: &mut Side, datagrams: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let mut opener = side.core.opener();
    let mut buf = vec![0; TunnelCore::dst_len(MAX_PACKET)];
    let mut out = Vec::new();
    for d in datagrams {
        let mut opened = opener.open(d, &mut buf);
        if opened == Opened::NeedsCore {
            let idx = Opener::data_receiver(d).expect("a data message");
            opener.learn(idx, side.core.receiving_session(idx));
            opened = opener.open(d, &mut buf);
        }
        match opened {
            Opened::ToTun(p) => out.push(p.to_vec()),
            Opened::Nothing => {}
            Opened::NeedsCore => panic!("a held session was not used"),
        }
    }
    opener.finish(&mut side.core);
    side.delivered.extend(out.iter().cloned());
    out
}

/// Seals `packet` with `session` the split way; the datagram.
fn seal_split(sealer: &Sealer, session: &Session, packet: &[u8]) -> Vec<u8> {
    let mut buf = vec![0; TunnelCore::dst_len(MAX_PACKET)];
    let n = sealer.seal(session, packet, &mut buf).expect("allowed");
    buf[..n].to_vec()
}

#[test]
fn two_sealers_taking_turns_on_one_session_deliver_every_packet_once() {
    let mut p = Pair::new();
    p.connect();
    let session = p.gw.core.sending_session().expect("a session");
    // Two threads' worth: each seals every other packet with the same session.
    let sealers = [p.gw.core.sealer(), p.gw.core.sealer()];
    let packets: Vec<Vec<u8>> = (0..64).map(|i| ipv4(GW_IP, HUB_IP, 40 + i)).collect();
    let sealed: Vec<Vec<u8>> = packets
        .iter()
        .enumerate()
        .map(|(i, pkt)| seal_split(&sealers[i % 2], &session, pkt))
        .collect();
    let bytes = packets.iter().map(Vec::len).sum();
    p.gw.core.note_sent(packets.len(), bytes);
    // The second thread's batch reaches the hub first: the replay window takes it.
    for d in sealed
        .iter()
        .skip(1)
        .step_by(2)
        .chain(sealed.iter().step_by(2))
    {
        p.put(Dir::ToHub, d);
    }
    p.deliver();
    let want: Vec<Vec<u8>> = packets
        .iter()
        .skip(1)
        .step_by(2)
        .chain(packets.iter().step_by(2))
        .cloned()
        .collect();
    assert_eq!(p.hub.delivered, want);
    // A replay of any of them delivers nothing.
    p.put(Dir::ToHub, &sealed[5]);
    p.deliver();
    assert_eq!(p.hub.delivered.len(), 64);
    let st = p.gw.stats.snapshot(p.now);
    assert_eq!((st.tx_packets, st.tx_bytes), (64, bytes as u64));
}

#[test]
fn a_batch_sealed_and_opened_across_a_rekey_is_delivered_whole() {
    let mut p = Pair::new();
    p.connect();
    let old = p.gw.core.sending_session().unwrap();
    let sealer = p.gw.core.sealer();
    let packets: Vec<Vec<u8>> = (0..8).map(|i| ipv4(GW_IP, HUB_IP, 30 + i)).collect();
    let mut batch: Vec<Vec<u8>> = packets[..4]
        .iter()
        .map(|pkt| seal_split(&sealer, &old, pkt))
        .collect();
    // Meanwhile the other thread completes a new handshake (the hub moved).
    p.gw.core.resolve_started(p.now);
    let b: SocketAddr = "192.0.2.2:51820".parse().unwrap();
    assert_eq!(p.gw.core.resolve_finished(Ok(vec![b])), Some(b));
    p.advance(Duration::from_secs(1));
    p.tick();
    let new = p.gw.core.sending_session().unwrap();
    assert!(!Arc::ptr_eq(&old, &new), "rekeyed");
    // The batch is finished with the session it started with.
    batch.extend(
        packets[4..]
            .iter()
            .map(|pkt| seal_split(&sealer, &old, pkt)),
    );
    p.gw.core.note_sent(8, packets.iter().map(Vec::len).sum());
    assert_eq!(open_split(&mut p.hub, &batch), packets);
    // The next batch uses the new session, and the hub opens it too.
    let next = ipv4(GW_IP, HUB_IP, 99);
    let d = seal_split(&sealer, &new, &next);
    assert_ne!(d[4..8], batch[0][4..8], "another receiver index");
    assert_eq!(open_split(&mut p.hub, &[d]), vec![next]);
}

#[test]
fn the_opener_refuses_replays_forgeries_and_oversized_datagrams() {
    let mut p = Pair::new();
    p.connect();
    let down = ipv4(HUB_IP, GW_IP, 200);
    let mut buf = vec![0; TunnelCore::dst_len(MAX_PACKET)];
    let d = p.hub.core.from_tun(&down, &mut buf).unwrap().to_vec();
    assert_eq!(
        open_split(&mut p.gw, &[d.clone(), d.clone()]),
        vec![down.clone()],
        "replayed within a batch"
    );
    assert!(
        open_split(&mut p.gw, std::slice::from_ref(&d)).is_empty(),
        "replayed later"
    );
    let mut forged = p.hub.core.from_tun(&down, &mut buf).unwrap().to_vec();
    *forged.last_mut().unwrap() ^= 1;
    assert!(open_split(&mut p.gw, &[forged]).is_empty());
    // A data message bigger than any buffer (UDP GRO does not cut to the MTU): dropped by
    // both paths, never a panic.
    let mut huge = d.clone();
    huge.resize(4 * MAX_PACKET, 0xaa);
    assert!(open_split(&mut p.gw, &[huge.clone()]).is_empty());
    assert_eq!(
        p.gw.core.from_network(p.now, &huge, &mut buf),
        FromNetwork::Nothing
    );
    let spoofed = ipv4([10, 9, 9, 9], GW_IP, 20);
    let s = p.hub.core.from_tun(&spoofed, &mut buf).unwrap().to_vec();
    assert!(open_split(&mut p.gw, &[s]).is_empty());
    let st = p.gw.stats.snapshot(p.now);
    assert_eq!((st.rx_packets, st.rx_dropped_not_allowed), (1, 1));
}

#[test]
fn batches_sealed_outside_the_core_drive_the_rekey_as_encapsulated_packets_did() {
    let mut p = Pair::new();
    p.connect();
    let sealer = p.gw.core.sealer();
    let up = ipv4(GW_IP, HUB_IP, 40);
    for _ in 0..130 {
        let session = p.gw.core.sending_session().expect("a session throughout");
        let d = seal_split(&sealer, &session, &up);
        p.gw.core.note_sent(1, up.len());
        p.put(Dir::ToHub, &d);
        p.deliver();
        p.run_for(Duration::from_secs(1));
    }
    let inits = p.gw_sent(MSG_HANDSHAKE_INIT, None);
    assert_eq!(inits.len(), 2, "handshake initiations at {inits:?}");
    assert!(
        inits[1] >= Duration::from_secs(120) && inits[1] <= Duration::from_secs(123),
        "{inits:?}"
    );
    assert_eq!(
        p.hub.delivered.len(),
        130,
        "no packet lost across the rekey"
    );
}

#[test]
fn batches_opened_outside_the_core_drive_the_keepalive_as_decapsulated_ones_did() {
    let mut p = Pair::new();
    p.connect();
    p.run_for(Duration::from_secs(1));
    let down = ipv4(HUB_IP, GW_IP, 100);
    let mut buf = vec![0; TunnelCore::dst_len(MAX_PACKET)];
    let d = p.hub.core.from_tun(&down, &mut buf).unwrap().to_vec();
    assert_eq!(open_split(&mut p.gw, &[d]), vec![down]);
    let received = p.elapsed();
    let before = p.log.len();
    p.run_for(Duration::from_secs(12));
    // Data received and nothing sent back for KEEPALIVE_TIMEOUT (10 s): a keepalive, long
    // before the persistent one (25 s).
    let keepalive = p.log[before..]
        .iter()
        .find(|(_, d, pkt)| *d == Dir::ToHub && pkt.len() == WG_OVERHEAD && pkt[0] == 4)
        .map(|(t, _, _)| *t)
        .expect("a keepalive within 12 s");
    assert!(
        keepalive - received <= Duration::from_secs(11),
        "{keepalive:?}"
    );
}
