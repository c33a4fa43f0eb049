use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use super::health::Health;
use super::machine::{Action, Instance, Params, State};
use super::wire::{checksum, decode_ipv4, Advert, WireError};

const ME: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 5);
const PEER_LOW: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 4);
const PEER_HIGH: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 6);
const VIP: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 250);

fn advert(vrid: u8, priority: u8) -> Advert {
    Advert {
        vrid,
        priority,
        advert_int_s: 1,
        auth_type: 0,
        addrs: vec![VIP],
    }
}

#[test]
fn an_advert_encodes_to_the_rfc_layout_and_back() {
    let a = advert(52, 150);
    let b = a.encode();
    assert_eq!(b.len(), 8 + 4 + 8);
    assert_eq!(&b[..6], &[0x21, 52, 150, 1, 0, 1]);
    assert_eq!(&b[8..12], &[192, 168, 1, 250]);
    assert_eq!(&b[12..], &[0; 8]);
    assert_eq!(checksum(&b), 0, "a correct checksum sums to zero");
    assert_eq!(Advert::decode(&b).unwrap(), a);
}

#[test]
fn the_checksum_is_rfc_1071() {
    // RFC 1071's example: 0001 f203 f4f5 f6f7 sums to ddf2; the checksum is its complement.
    assert_eq!(
        checksum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]),
        !0xddf2
    );
    // An odd length pads with a zero byte.
    assert_eq!(checksum(&[0x01]), !0x0100);
}

/// An IPv4 header for `payload` from `src`, protocol and TTL as given.
fn ipv4(src: Ipv4Addr, proto: u8, ttl: u8, payload: &[u8]) -> Vec<u8> {
    let total = (20 + payload.len()) as u16;
    let mut p = vec![0x45, 0, 0, 0, 0, 0, 0, 0, ttl, proto, 0, 0];
    p[2..4].copy_from_slice(&total.to_be_bytes());
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&PEER_HIGH.octets());
    let c = checksum(&p);
    p[10..12].copy_from_slice(&c.to_be_bytes());
    p.extend_from_slice(payload);
    p
}

#[test]
fn bad_packets_are_refused_with_what_is_wrong() {
    let good = advert(52, 100).encode();
    let mut bad_sum = good.clone();
    bad_sum[2] ^= 1;
    let mut v3 = good.clone();
    v3[0] = 0x31;
    let mut many = good.clone();
    many[3] = 2;
    let cases: Vec<(&str, Vec<u8>, WireError)> = vec![
        ("empty", vec![], WireError::Truncated { got: 0, need: 20 }),
        (
            "TTL 254 (crossed a router)",
            ipv4(PEER_LOW, 112, 254, &good),
            WireError::Ttl(254),
        ),
        (
            "not VRRP",
            ipv4(PEER_LOW, 6, 255, &good),
            WireError::Protocol(6),
        ),
        (
            "bad checksum",
            ipv4(PEER_LOW, 112, 255, &bad_sum),
            WireError::Checksum,
        ),
        (
            "version 3",
            ipv4(PEER_LOW, 112, 255, &v3),
            WireError::Version {
                version: 3,
                kind: 1,
            },
        ),
        (
            "more addresses than bytes",
            ipv4(PEER_LOW, 112, 255, &many),
            WireError::Truncated { got: 20, need: 24 },
        ),
        (
            "no authentication bytes",
            ipv4(PEER_LOW, 112, 255, &good[..12]),
            WireError::Truncated { got: 12, need: 20 },
        ),
    ];
    for (name, p, want) in cases {
        assert_eq!(decode_ipv4(&p).unwrap_err(), want, "{name}");
    }
    let (src, a) = decode_ipv4(&ipv4(PEER_LOW, 112, 255, &good)).unwrap();
    assert_eq!((src, a), (PEER_LOW, advert(52, 100)));
}

#[test]
fn decoding_any_bytes_never_panics() {
    // Every prefix of a valid packet, and a cheap deterministic scramble of it.
    let p = ipv4(PEER_LOW, 112, 255, &advert(52, 100).encode());
    for n in 0..=p.len() {
        let _ = decode_ipv4(&p[..n]);
    }
    let mut x: u32 = 0x1234_5678;
    for _ in 0..20_000 {
        let mut q = p.clone();
        for _ in 0..3 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let i = (x as usize) % q.len();
            q[i] = (x >> 8) as u8;
        }
        let _ = decode_ipv4(&q);
    }
}

#[test]
fn the_reference_parameters() {
    let p = Params::reference(3, 0, ME, VIP);
    assert_eq!(
        (p.vrid, p.priority, p.advert_int_s, p.preempt),
        (54, 150, 1, false)
    );
    assert_eq!(Params::reference(250, 2, ME, VIP).vrid, 101);
    assert_eq!(Params::reference(1, 2, ME, VIP).priority, 148);
    // 3 × 1 s + (256 − 150)/256 s.
    assert_eq!(p.skew(), Duration::from_micros(414_062));
    assert_eq!(p.master_down(), Duration::from_micros(3_414_062));
}

/// One step of a scenario: at `t` ms, an event, and the actions and state expected after it.
enum Ev {
    Start(bool),
    Timer,
    Advert(Ipv4Addr, Advert),
    Health(bool),
    Shutdown,
}

/// `(ms, event, actions wanted, state wanted)`.
type Step = (u64, Ev, Vec<Action>, State);

fn run(params: Params, steps: Vec<Step>, name: &str) {
    let t0 = Instant::now();
    let mut m = Instance::new(params);
    for (i, (ms, ev, want, state)) in steps.into_iter().enumerate() {
        let now = t0 + Duration::from_millis(ms);
        let got = match ev {
            Ev::Start(h) => m.start(now, h),
            Ev::Timer => m.on_timer(now),
            Ev::Advert(from, a) => m.on_advert(now, from, &a),
            Ev::Health(h) => m.on_health(now, h),
            Ev::Shutdown => m.shutdown(),
        };
        assert_eq!(got, want, "{name}: step {i} at {ms} ms");
        assert_eq!(m.state(), state, "{name}: step {i} at {ms} ms");
    }
}

fn params() -> Params {
    Params::reference(1, 0, ME, VIP) // vrid 52, priority 150, nopreempt
}

#[test]
fn the_state_machine_does_what_the_table_says() {
    use Action::*;
    let adv = |p| Advert::clone(&advert(52, p));
    let take = vec![AddVips, GratuitousArp, Advertise { priority: 150 }];
    let tick = vec![Advertise { priority: 150 }];
    let stop = vec![Advertise { priority: 0 }, RemoveVips];
    let cases: Vec<(&str, Params, Vec<Step>)> =
        vec![
        (
            "alone: backup, then master after 3 × advert + skew, then advertises every second",
            params(),
            vec![
                (0, Ev::Start(true), vec![], State::Backup),
                (3_413, Ev::Timer, vec![], State::Backup),
                (3_415, Ev::Timer, take.clone(), State::Master),
                (4_414, Ev::Timer, vec![], State::Master),
                (4_415, Ev::Timer, tick.clone(), State::Master),
            ],
        ),
        (
            "a master's adverts keep the backup a backup",
            params(),
            vec![
                (0, Ev::Start(true), vec![], State::Backup),
                (1_000, Ev::Advert(PEER_LOW, adv(150)), vec![], State::Backup),
                (3_500, Ev::Timer, vec![], State::Backup),
                (4_000, Ev::Advert(PEER_LOW, adv(150)), vec![], State::Backup),
                (7_413, Ev::Timer, vec![], State::Backup),
                (7_415, Ev::Timer, take.clone(), State::Master),
            ],
        ),
        (
            "nopreempt: a lower-priority master is left alone",
            params(),
            vec![
                (0, Ev::Start(true), vec![], State::Backup),
                (1_000, Ev::Advert(PEER_LOW, adv(100)), vec![], State::Backup),
                (3_500, Ev::Timer, vec![], State::Backup),
            ],
        ),
        (
            "preempt: a lower-priority master's adverts are ignored, we take over",
            Params {
                preempt: true,
                ..params()
            },
            vec![
                (0, Ev::Start(true), vec![], State::Backup),
                (1_000, Ev::Advert(PEER_LOW, adv(100)), vec![], State::Backup),
                (3_415, Ev::Timer, take.clone(), State::Master),
            ],
        ),
        (
            "the master steps down (priority 0): takeover after the skew time only",
            params(),
            vec![
                (0, Ev::Start(true), vec![], State::Backup),
                (1_000, Ev::Advert(PEER_LOW, adv(0)), vec![], State::Backup),
                (1_413, Ev::Timer, vec![], State::Backup),
                (1_415, Ev::Timer, take.clone(), State::Master),
            ],
        ),
        (
            "master meets a higher priority: backup, VIPs removed",
            params(),
            vec![
                (0, Ev::Start(true), vec![], State::Backup),
                (3_415, Ev::Timer, take.clone(), State::Master),
                (3_600, Ev::Advert(PEER_LOW, adv(151)), vec![RemoveVips], State::Backup),
            ],
        ),
        (
            "master meets equal priority: the higher address wins",
            params(),
            vec![
                (0, Ev::Start(true), vec![], State::Backup),
                (3_415, Ev::Timer, take.clone(), State::Master),
                (3_500, Ev::Advert(PEER_LOW, adv(150)), vec![], State::Master),
                (3_600, Ev::Advert(PEER_HIGH, adv(150)), vec![RemoveVips], State::Backup),
            ],
        ),
        (
            "master meets a lower priority: stays",
            params(),
            vec![
                (0, Ev::Start(true), vec![], State::Backup),
                (3_415, Ev::Timer, take.clone(), State::Master),
                (3_500, Ev::Advert(PEER_HIGH, adv(149)), vec![], State::Master),
            ],
        ),
        (
            "master answers a priority-0 advert at once",
            params(),
            vec![
                (0, Ev::Start(true), vec![], State::Backup),
                (3_415, Ev::Timer, take.clone(), State::Master),
                (3_500, Ev::Advert(PEER_HIGH, adv(0)), tick.clone(), State::Master),
                (4_499, Ev::Timer, vec![], State::Master),
                (4_500, Ev::Timer, tick.clone(), State::Master),
            ],
        ),
        (
            "tunnel down on the master: priority 0 and VIPs removed; back as backup when healthy",
            params(),
            vec![
                (0, Ev::Start(true), vec![], State::Backup),
                (3_415, Ev::Timer, take.clone(), State::Master),
                (5_000, Ev::Health(false), stop.clone(), State::Fault),
                (9_000, Ev::Timer, vec![], State::Fault),
                (9_000, Ev::Advert(PEER_LOW, adv(0)), vec![], State::Fault),
                (10_000, Ev::Health(true), vec![], State::Backup),
                (11_000, Ev::Advert(PEER_LOW, adv(150)), vec![], State::Backup),
                (14_415, Ev::Timer, take.clone(), State::Master),
            ],
        ),
        (
            "starting with the tunnel down: fault, no timer",
            params(),
            vec![
                (0, Ev::Start(false), vec![], State::Fault),
                (60_000, Ev::Timer, vec![], State::Fault),
                (61_000, Ev::Health(true), vec![], State::Backup),
                (64_415, Ev::Timer, take.clone(), State::Master),
            ],
        ),
        (
            "not ours: another VRID, interval, auth type, or our own address",
            params(),
            vec![
                (0, Ev::Start(true), vec![], State::Backup),
                (3_000, Ev::Advert(PEER_LOW, advert(53, 200)), vec![], State::Backup),
                (
                    3_100,
                    Ev::Advert(
                        PEER_LOW,
                        Advert {
                            advert_int_s: 2,
                            ..advert(52, 200)
                        },
                    ),
                    vec![],
                    State::Backup,
                ),
                (
                    3_200,
                    Ev::Advert(
                        PEER_LOW,
                        Advert {
                            auth_type: 1,
                            ..advert(52, 200)
                        },
                    ),
                    vec![],
                    State::Backup,
                ),
                (3_300, Ev::Advert(ME, adv(200)), vec![], State::Backup),
                (3_415, Ev::Timer, take.clone(), State::Master),
            ],
        ),
        (
            "shutdown: a master steps down, a backup just stops",
            params(),
            vec![
                (0, Ev::Start(true), vec![], State::Backup),
                (3_415, Ev::Timer, take.clone(), State::Master),
                (4_000, Ev::Shutdown, stop.clone(), State::Init),
                (5_000, Ev::Timer, vec![], State::Init),
            ],
        ),
    ];
    for (name, p, steps) in cases {
        run(p, steps, name);
    }
}

/// Runs `me`'s timer if due, delivering its adverts to `other` at once.
fn fire(me: &mut Instance, other: &mut Instance, from: Ipv4Addr, now: Instant) {
    if me.deadline().is_some_and(|d| d <= now) {
        for act in me.on_timer(now) {
            if let Action::Advertise { priority } = act {
                let adv = me.advert(priority);
                other.on_advert(now, from, &adv);
            }
        }
    }
}

#[test]
fn two_instances_on_a_wire_elect_one_master_and_fail_over_within_four_seconds() {
    // Two gateways with the reference's parameters (equal priority), adverts delivered at
    // once, a virtual clock in 1 ms steps.
    let t0 = Instant::now();
    let mut a = Instance::new(Params::reference(1, 0, PEER_LOW, VIP));
    let mut b = Instance::new(Params::reference(1, 0, PEER_HIGH, VIP));
    a.start(t0, true);
    b.start(t0 + Duration::from_millis(300), true);
    let mut masters_seen = Vec::new();
    let mut failed_at = None;
    let mut b_master_at = None;
    for ms in 0..20_000u64 {
        let now = t0 + Duration::from_millis(ms);
        if ms == 10_000 {
            // a is master by now; its tunnel goes down.
            assert_eq!(a.state(), State::Master);
            assert_eq!(b.state(), State::Backup);
            let acts = a.on_health(now, false);
            for act in acts {
                if let Action::Advertise { priority } = act {
                    b.on_advert(now, PEER_LOW, &a.advert(priority));
                }
            }
            failed_at = Some(ms);
        }
        fire(&mut a, &mut b, PEER_LOW, now);
        fire(&mut b, &mut a, PEER_HIGH, now);
        let masters = [&a, &b]
            .iter()
            .filter(|i| i.state() == State::Master)
            .count();
        masters_seen.push(masters);
        if failed_at.is_some() && b_master_at.is_none() && b.state() == State::Master {
            b_master_at = Some(ms);
        }
    }
    assert!(
        masters_seen[5_000..10_000].iter().all(|&m| m == 1),
        "one master"
    );
    let took = b_master_at.unwrap() - failed_at.unwrap();
    assert!(took <= 4_000, "failover took {took} ms");
    // With the priority-0 advert the backup takes over after its skew time.
    assert!(took <= 500, "failover after a step-down took {took} ms");
}

#[test]
fn health_rises_and_falls_after_two_samples() {
    let mut h = Health::reference();
    assert!(!h.healthy());
    assert_eq!(h.sample(true), None);
    assert_eq!(h.sample(true), Some(true));
    assert_eq!(h.sample(false), None);
    assert_eq!(h.sample(true), None, "one bad sample is forgiven");
    assert_eq!(h.sample(false), None);
    assert_eq!(h.sample(false), Some(false));
    assert_eq!(h.sample(false), None);
    assert!(!h.healthy());
}

/// An advertisement keepalived 2.2.7 (Debian) sent with the reference's parameters (vrid 52,
/// priority 150, advert_int 1, unicast 10.99.0.1 -> 10.99.0.2, VIP 10.99.0.250/24), captured
/// with tcpdump: IP header (TOS 0xc0, TTL 255, protocol 112) and the VRRP message.
const KEEPALIVED_ADVERT: [u8; 40] = [
    0x45, 0xc0, 0x00, 0x28, 0x00, 0x01, 0x00, 0x00, 0xff, 0x70, 0xa5, 0xdc, 0x0a, 0x63, 0x00, 0x01,
    0x0a, 0x63, 0x00, 0x02, 0x21, 0x34, 0x96, 0x01, 0x00, 0x01, 0x3d, 0x6c, 0x0a, 0x63, 0x00, 0xfa,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
];

#[test]
fn a_keepalived_advert_decodes_and_ours_is_byte_for_byte_the_same() {
    let (src, a) = decode_ipv4(&KEEPALIVED_ADVERT).unwrap();
    assert_eq!(src, Ipv4Addr::new(10, 99, 0, 1));
    let want = Advert {
        vrid: 52,
        priority: 150,
        advert_int_s: 1,
        auth_type: 0,
        addrs: vec![Ipv4Addr::new(10, 99, 0, 250)],
    };
    assert_eq!(a, want);
    let ours = Instance::new(Params::reference(
        1,
        0,
        Ipv4Addr::new(10, 99, 0, 1),
        Ipv4Addr::new(10, 99, 0, 250),
    ))
    .advert(150)
    .encode();
    assert_eq!(ours, KEEPALIVED_ADVERT[20..]);
}

#[test]
fn a_gratuitous_arp_announces_the_vip_from_our_mac() {
    let mac = [0x02, 0, 0, 0, 0, 0x05];
    let a = super::wire::gratuitous_arp(mac, VIP);
    assert_eq!(
        a,
        [
            0, 1, 8, 0, 6, 4, 0, 1, 2, 0, 0, 0, 0, 5, 192, 168, 1, 250, 0, 0, 0, 0, 0, 0, 192, 168,
            1, 250
        ]
    );
}
