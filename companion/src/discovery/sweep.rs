//! The TCP connect sweep's plan, without I/O: which `(host, port)` to probe next, how many
//! probes may be in flight and how long one may take. The driver ([`super::scan`]) opens the
//! sockets and reports each probe's [`Outcome`]; tests drive it with virtual time.
//!
//! How it adapts to the answers:
//! - **Timeout from the LAN's round trip.** A probe waits [`SweepConfig::initial_timeout`]
//!   (400 ms) until answers (a SYN-ACK or a RST) have been seen; then four times the slowest
//!   answer so far, within [`SweepConfig::min_timeout`] and the initial value. A LAN answers
//!   in about a millisecond, so silence is recognised in 100 ms instead of 400.
//! - **Silent hosts are given up.** Hosts are probed round robin (every host's first port,
//!   then every host's second, ...). A host that has never answered gets at most
//!   [`SweepConfig::silent_probes`] probes in flight or lost; once that many went unanswered
//!   (an empty address, or a host that drops SYNs) it gets no more. A host the kernel
//!   reports unreachable (ARP failed) is given up at once. A host that answered once is
//!   probed on every port.
//! - **Concurrency follows the kernel.** The window starts at a quarter of the maximum and
//!   grows by one per finished probe up to [`SweepConfig::max_in_flight`]
//!   (`GC_DISCOVERY_CONCURRENCY`); a local failure (no buffer, no file descriptor) halves it.
//!
//! On a /24 with 5 live hosts and 29 ports this sends about 3 probes per empty address and
//! 29 per live host, instead of 29 × 254 at 400 ms each.

use std::net::Ipv4Addr;
use std::time::Duration;

/// Knobs of a sweep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SweepConfig {
    /// Most probes in flight (`GC_DISCOVERY_CONCURRENCY`).
    pub max_in_flight: usize,
    /// Probe timeout before any answer was seen.
    pub initial_timeout: Duration,
    /// Shortest probe timeout, however fast the LAN answers.
    pub min_timeout: Duration,
    /// Unanswered probes after which a host that never answered is given up.
    pub silent_probes: u32,
}

impl SweepConfig {
    /// The defaults with `max_in_flight` probes at most.
    pub fn new(max_in_flight: usize) -> SweepConfig {
        SweepConfig {
            max_in_flight: max_in_flight.max(1),
            initial_timeout: Duration::from_millis(400),
            min_timeout: Duration::from_millis(100),
            silent_probes: 3,
        }
    }
}

/// What became of one probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Connected: the port is open. Carries the round trip.
    Open(Duration),
    /// Refused (RST): the host is there, the port closed. Carries the round trip.
    Closed(Duration),
    /// No answer within the timeout.
    Silent,
    /// The kernel says the host cannot be reached (no ARP answer, no route).
    Unreachable,
    /// The probe could not be sent here (no buffer, no descriptor): says nothing of the host.
    LocalError,
}

#[derive(Debug, Clone)]
struct Host {
    ip: Ipv4Addr,
    next_port: usize,
    in_flight: u32,
    silent: u32,
    answered: bool,
    given_up: bool,
}

/// The plan of one sweep. See the module documentation.
#[derive(Debug, Clone)]
pub struct Sweep {
    cfg: SweepConfig,
    hosts: Vec<Host>,
    ports: Vec<u16>,
    cursor: usize,
    in_flight: usize,
    window: usize,
    slowest_answer: Option<Duration>,
    sent: u64,
    retry: Vec<(usize, u16)>,
}

impl Sweep {
    /// A sweep of every `port` on every host in `hosts`.
    pub fn new(hosts: Vec<Ipv4Addr>, ports: Vec<u16>, cfg: SweepConfig) -> Sweep {
        Sweep {
            window: (cfg.max_in_flight / 4).max(1),
            cfg,
            hosts: hosts
                .into_iter()
                .map(|ip| Host {
                    ip,
                    next_port: 0,
                    in_flight: 0,
                    silent: 0,
                    answered: false,
                    given_up: false,
                })
                .collect(),
            ports,
            cursor: 0,
            in_flight: 0,
            slowest_answer: None,
            sent: 0,
            retry: Vec::new(),
        }
    }

    /// How long the next probe may wait for an answer.
    pub fn timeout(&self) -> Duration {
        match self.slowest_answer {
            None => self.cfg.initial_timeout,
            Some(rtt) => (rtt * 4).clamp(self.cfg.min_timeout, self.cfg.initial_timeout),
        }
    }

    /// Probes in flight now, and the window they may fill.
    pub fn in_flight(&self) -> (usize, usize) {
        (self.in_flight, self.window)
    }

    /// Probes handed out so far.
    pub fn probes_sent(&self) -> u64 {
        self.sent
    }

    fn eligible(&self, h: &Host) -> bool {
        !h.given_up
            && h.next_port < self.ports.len()
            && (h.answered || h.silent + h.in_flight < self.cfg.silent_probes)
    }

    /// The next probe to start, when the window has room and one is due.
    pub fn next_probe(&mut self) -> Option<(Ipv4Addr, u16)> {
        if self.in_flight >= self.window {
            return None;
        }
        if let Some((i, port)) = self.retry.pop() {
            return Some(self.start(i, port));
        }
        let n = self.hosts.len();
        for step in 0..n {
            let i = (self.cursor + step) % n;
            if self.eligible(&self.hosts[i]) {
                self.cursor = (i + 1) % n;
                let port = self.ports[self.hosts[i].next_port];
                self.hosts[i].next_port += 1;
                return Some(self.start(i, port));
            }
        }
        None
    }

    fn start(&mut self, i: usize, port: u16) -> (Ipv4Addr, u16) {
        self.hosts[i].in_flight += 1;
        self.in_flight += 1;
        self.sent += 1;
        (self.hosts[i].ip, port)
    }

    /// Reports how a probe handed out by [`Sweep::next_probe`] ended.
    pub fn on_outcome(&mut self, ip: Ipv4Addr, port: u16, outcome: Outcome) {
        let Some(i) = self.hosts.iter().position(|h| h.ip == ip) else {
            return;
        };
        let h = &mut self.hosts[i];
        h.in_flight = h.in_flight.saturating_sub(1);
        self.in_flight = self.in_flight.saturating_sub(1);
        match outcome {
            Outcome::Open(rtt) | Outcome::Closed(rtt) => {
                h.answered = true;
                self.slowest_answer = Some(self.slowest_answer.map_or(rtt, |s| s.max(rtt)));
            }
            Outcome::Silent => h.silent += 1,
            Outcome::Unreachable => h.given_up = !h.answered,
            Outcome::LocalError => {
                self.window = (self.window / 2).max(1);
                self.retry.push((i, port));
                return;
            }
        }
        self.window = (self.window + 1).min(self.cfg.max_in_flight);
    }

    /// Whether nothing is in flight and nothing is left to probe.
    pub fn finished(&self) -> bool {
        self.in_flight == 0 && self.retry.is_empty() && !self.hosts.iter().any(|h| self.eligible(h))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// How a simulated LAN host answers.
    #[derive(Clone, Copy)]
    enum Lan {
        Live(&'static [u16]),
        DropsSyns,
        Empty,
        Unreachable,
    }

    /// Runs a sweep in virtual time: every probe ends after 1 ms (an answer), the timeout
    /// (silence) or at once (unreachable). Returns (virtual duration, probes, open ports).
    fn simulate(
        lan: &HashMap<Ipv4Addr, Lan>,
        ports: &[u16],
        max: usize,
    ) -> (Duration, u64, Vec<(Ipv4Addr, u16)>) {
        simulate_with(lan, ports, SweepConfig::new(max))
    }

    fn simulate_with(
        lan: &HashMap<Ipv4Addr, Lan>,
        ports: &[u16],
        cfg: SweepConfig,
    ) -> (Duration, u64, Vec<(Ipv4Addr, u16)>) {
        let mut hosts: Vec<Ipv4Addr> = lan.keys().copied().collect();
        hosts.sort();
        let mut s = Sweep::new(hosts, ports.to_vec(), cfg);
        let mut now = Duration::ZERO;
        let mut pending: Vec<(Duration, Ipv4Addr, u16, Outcome)> = Vec::new();
        let mut open = Vec::new();
        for _ in 0..1_000_000 {
            while let Some((ip, port)) = s.next_probe() {
                let rtt = Duration::from_millis(1);
                let (after, outcome) = match lan[&ip] {
                    Lan::Live(p) if p.contains(&port) => (rtt, Outcome::Open(rtt)),
                    Lan::Live(_) => (rtt, Outcome::Closed(rtt)),
                    Lan::DropsSyns | Lan::Empty => (s.timeout(), Outcome::Silent),
                    Lan::Unreachable => (Duration::ZERO, Outcome::Unreachable),
                };
                pending.push((now + after, ip, port, outcome));
            }
            if s.finished() {
                return (now, s.probes_sent(), open);
            }
            pending.sort_by_key(|p| std::cmp::Reverse(p.0));
            let (at, ip, port, outcome) = pending.pop().expect("in flight");
            now = now.max(at);
            if matches!(outcome, Outcome::Open(_)) {
                open.push((ip, port));
            }
            s.on_outcome(ip, port, outcome);
        }
        panic!("sweep did not finish");
    }

    fn ip(last: u8) -> Ipv4Addr {
        Ipv4Addr::new(192, 168, 7, last)
    }

    #[test]
    fn a_slash_24_with_five_hosts_and_a_syn_dropper_is_swept_in_seconds() {
        let ports = crate::discovery::categories::Selection::resolve(
            crate::discovery::categories::Mode::Exclude,
            &[],
        )
        .ports();
        let mut lan: HashMap<Ipv4Addr, Lan> = (1..=254).map(|i| (ip(i), Lan::Empty)).collect();
        for (i, open) in [
            (10, &[80u16, 443][..]),
            (11, &[22]),
            (12, &[631, 9100]),
            (13, &[445]),
            (14, &[8123]),
        ] {
            lan.insert(ip(i), Lan::Live(open));
        }
        lan.insert(ip(20), Lan::DropsSyns);
        let (took, probes, mut open) = simulate(&lan, &ports, 128);
        open.sort();
        assert_eq!(
            open,
            vec![
                (ip(10), 80),
                (ip(10), 443),
                (ip(11), 22),
                (ip(12), 631),
                (ip(12), 9100),
                (ip(13), 445),
                (ip(14), 8123)
            ]
        );
        // 5 live hosts × 29 ports, 3 probes for each of the 249 silent addresses.
        assert_eq!(probes, 5 * 29 + 249 * 3);
        // Every silent probe costs 100 ms once answers were seen; 128 at a time.
        assert!(took < Duration::from_secs(3), "took {took:?}");
    }

    #[test]
    fn the_same_lan_swept_the_reference_way_takes_over_20_seconds() {
        // Baseline: a fixed 400 ms per probe and no silent host given up, as the reference
        // gateway sweeps (128 at a time), against the adaptive plan, same LAN, same ports.
        let ports = crate::discovery::categories::Selection::resolve(
            crate::discovery::categories::Mode::Exclude,
            &[],
        )
        .ports();
        let mut lan: HashMap<Ipv4Addr, Lan> = (1..=254).map(|i| (ip(i), Lan::Empty)).collect();
        for i in 10..15 {
            lan.insert(ip(i), Lan::Live(&[80]));
        }
        lan.insert(ip(20), Lan::DropsSyns);
        let reference = SweepConfig {
            max_in_flight: 128,
            initial_timeout: Duration::from_millis(400),
            min_timeout: Duration::from_millis(400),
            silent_probes: u32::MAX,
        };
        let (ref_took, ref_probes, _) = simulate_with(&lan, &ports, reference);
        let (took, probes, _) = simulate(&lan, &ports, 128);
        println!("reference-like sweep: {ref_took:?}, {ref_probes} probes; adaptive: {took:?}, {probes} probes");
        assert_eq!(ref_probes, 254 * 29);
        assert!(ref_took > Duration::from_secs(20), "{ref_took:?}");
        assert!(took * 8 < ref_took, "{took:?} vs {ref_took:?}");
    }

    #[test]
    fn the_timeout_follows_the_slowest_answer_within_bounds() {
        let mut s = Sweep::new(vec![ip(1)], vec![1, 2, 3], SweepConfig::new(4));
        assert_eq!(s.timeout(), Duration::from_millis(400));
        let (a, p) = s.next_probe().unwrap();
        s.on_outcome(a, p, Outcome::Closed(Duration::from_millis(1)));
        assert_eq!(s.timeout(), Duration::from_millis(100), "floor");
        let (a, p) = s.next_probe().unwrap();
        s.on_outcome(a, p, Outcome::Open(Duration::from_millis(60)));
        assert_eq!(s.timeout(), Duration::from_millis(240));
        let (a, p) = s.next_probe().unwrap();
        s.on_outcome(a, p, Outcome::Open(Duration::from_millis(900)));
        assert_eq!(s.timeout(), Duration::from_millis(400), "ceiling");
        assert!(s.finished());
    }

    #[test]
    fn window_grows_on_results_halves_on_local_errors_and_retries_the_probe() {
        let hosts: Vec<Ipv4Addr> = (1..=50).map(ip).collect();
        let mut s = Sweep::new(hosts, vec![80], SweepConfig::new(16));
        assert_eq!(s.in_flight(), (0, 4));
        let first: Vec<_> = std::iter::from_fn(|| s.next_probe()).collect();
        assert_eq!(first.len(), 4, "window of max/4");
        for &(a, p) in &first[..3] {
            s.on_outcome(a, p, Outcome::Closed(Duration::from_millis(1)));
        }
        assert_eq!(s.in_flight(), (1, 7));
        let (a, p) = first[3];
        s.on_outcome(a, p, Outcome::LocalError);
        assert_eq!(s.in_flight(), (0, 3));
        assert_eq!(
            s.next_probe(),
            Some((a, p)),
            "the failed probe is tried again first"
        );
    }

    #[test]
    fn unreachable_and_silent_hosts_are_given_up_answering_hosts_are_not() {
        let table: &[(Lan, u64)] = &[
            (Lan::Unreachable, 2),
            (Lan::Empty, 3),
            (Lan::DropsSyns, 3),
            (Lan::Live(&[]), 10),
        ];
        for (kind, expected) in table {
            let lan: HashMap<Ipv4Addr, Lan> = [(ip(1), *kind)].into();
            let (_, probes, _) = simulate(&lan, &(1..=10).collect::<Vec<u16>>(), 8);
            assert_eq!(probes, *expected);
        }
    }
}
