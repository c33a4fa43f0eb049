//! The results, as the server takes them: the device record, the server's limits, and when
//! a batch goes out. No I/O and no clock: `now` is passed in, so the schedule is tested in
//! virtual time.
//!
//! Schedule ([`Schedule::poll`]): the first batch as soon as something was found and
//! [`BatchPolicy::first_after`] has passed (mDNS and SSDP answers come in the first second or
//! two), then at most one every [`BatchPolicy::interval`] while new findings arrive, and the
//! closing batch (`done: true`) when the scan has finished or when the deadline minus
//! [`BatchPolicy::final_margin`] is reached, whichever is first; whatever was found by then
//! goes out with it. One batch is always kept for the closing one ([`BatchPolicy::max_batches`]).
//! Each batch also needs a slot of the shared request budget; the driver asks for it.
//!
//! Limits ([`encode`]): the server drops what exceeds them, so we never send it: a body is at
//! most [`MAX_BODY_BYTES`] and [`MAX_DEVICES`] devices (more become several bodies), a device
//! has at most [`MAX_PORTS`] ports and [`MAX_SOURCES`] sources, strings are cut at the
//! server's lengths (on a character boundary), MACs are `xx:xx:xx:xx:xx:xx` lowercase.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use serde::Serialize;

/// The server's body limit for `/api/v1/gateway/discovery` (512 KiB), less room for the
/// envelope.
pub const MAX_BODY_BYTES: usize = 512 * 1024 - 1024;
/// Devices per batch the server keeps.
pub const MAX_DEVICES: usize = 2000;
/// Ports per device the server keeps.
pub const MAX_PORTS: usize = 64;
/// Sources per device the server keeps.
pub const MAX_SOURCES: usize = 4;
/// Longest `source`, in characters.
pub const MAX_SOURCE_CHARS: usize = 16;
/// Longest `service_hint`, in characters.
pub const MAX_HINT_CHARS: usize = 128;
/// Longest `hostname`, in characters.
pub const MAX_HOSTNAME_CHARS: usize = 255;

/// One open port and how it was found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Port {
    /// The port.
    pub port: u16,
    /// `mdns`, `ssdp` or `tcp`.
    pub source: &'static str,
    /// The mDNS service type, the SSDP friendly name or `ST`; null for a bare TCP finding.
    pub service_hint: Option<String>,
}

/// One device, merged by IP.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Device {
    /// The IPv4 address.
    pub ip: Ipv4Addr,
    /// From mDNS, or a reverse lookup.
    pub hostname: Option<String>,
    /// From the neighbour table.
    pub mac: Option<String>,
    /// Open ports.
    pub ports: Vec<Port>,
    /// How it was found (`mdns`, `ssdp`, `tcp`).
    pub sources: Vec<&'static str>,
}

impl Device {
    /// An empty record for `ip`.
    pub fn new(ip: Ipv4Addr) -> Device {
        Device {
            ip,
            hostname: None,
            mac: None,
            ports: Vec::new(),
            sources: Vec::new(),
        }
    }

    /// Adds a port (once per port and source). Returns whether it was new. What a LAN host can
    /// make us keep is bounded here, not only when a batch is encoded: any in-scope host may send
    /// unasked mDNS/SSDP answers, so at most [`MAX_PORTS`] ports, hints cut to
    /// [`MAX_HINT_CHARS`].
    pub fn add_port(&mut self, port: u16, source: &'static str, hint: Option<String>) -> bool {
        if !self.sources.contains(&source) {
            self.sources.push(source);
        }
        if self.ports.len() >= MAX_PORTS
            || self
                .ports
                .iter()
                .any(|p| p.port == port && p.source == source)
        {
            return false;
        }
        self.ports.push(Port {
            port,
            source,
            service_hint: hint.map(|h| cut(&h, MAX_HINT_CHARS)),
        });
        true
    }

    /// The record cut to the server's limits.
    pub fn bounded(&self) -> Device {
        Device {
            ip: self.ip,
            hostname: self.hostname.as_deref().map(|h| cut(h, MAX_HOSTNAME_CHARS)),
            mac: self.mac.as_deref().and_then(normalise_mac),
            ports: self
                .ports
                .iter()
                .take(MAX_PORTS)
                .map(|p| Port {
                    port: p.port,
                    source: p.source,
                    service_hint: p.service_hint.as_deref().map(|h| cut(h, MAX_HINT_CHARS)),
                })
                .collect(),
            sources: self.sources.iter().take(MAX_SOURCES).copied().collect(),
        }
    }
}

fn cut(s: &str, chars: usize) -> String {
    s.chars().take(chars).collect()
}

/// `AA-BB-cc:dd...` → `aa:bb:cc:dd:ee:ff`; None unless six hex pairs (or all zero).
pub fn normalise_mac(mac: &str) -> Option<String> {
    let parts: Vec<&str> = mac.split([':', '-']).collect();
    let ok = parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()));
    (ok && parts.iter().any(|p| *p != "00")).then(|| parts.join(":").to_ascii_lowercase())
}

/// The bodies of one batch: `devices` cut to the limits and split so that no body exceeds
/// [`MAX_BODY_BYTES`] or [`MAX_DEVICES`]. Only the last body carries `done`. At least one
/// body (an empty device list) so that a closing batch is always sent.
pub fn encode(request_id: &str, devices: &[Device], done: bool) -> Vec<Vec<u8>> {
    #[derive(Serialize)]
    struct Body<'a> {
        request_id: &'a str,
        devices: &'a [Device],
        done: bool,
    }
    let bounded: Vec<Device> = devices.iter().map(Device::bounded).collect();
    let envelope = serde_json::to_vec(&Body {
        request_id,
        devices: &[],
        done,
    })
    .map_or(64, |v| v.len());
    let mut chunks: Vec<&[Device]> = Vec::new();
    let mut start = 0;
    let mut size = envelope;
    for (i, d) in bounded.iter().enumerate() {
        let len = serde_json::to_vec(d).map_or(0, |v| v.len()) + 1;
        if i > start && (size + len > MAX_BODY_BYTES || i - start >= MAX_DEVICES) {
            chunks.push(&bounded[start..i]);
            start = i;
            size = envelope;
        }
        size += len;
    }
    chunks.push(&bounded[start..]);
    let last = chunks.len() - 1;
    chunks
        .iter()
        .enumerate()
        .map(|(i, c)| {
            serde_json::to_vec(&Body {
                request_id,
                devices: c,
                done: done && i == last,
            })
            .unwrap_or_default()
        })
        .collect()
}

/// When batches go out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchPolicy {
    /// No batch before this long after the start.
    pub first_after: Duration,
    /// Least time between two partial batches.
    pub interval: Duration,
    /// The closing batch goes at the deadline minus this, at the latest (the POST's time).
    pub final_margin: Duration,
    /// Batches per scan at most, the closing one included (each costs a budget slot).
    pub max_batches: u32,
}

impl Default for BatchPolicy {
    fn default() -> Self {
        BatchPolicy {
            first_after: Duration::from_millis(1_500),
            interval: Duration::from_secs(5),
            final_margin: Duration::from_secs(3),
            max_batches: 6,
        }
    }
}

/// What to do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    /// Nothing; look again at this time (None: never, the scan is closed).
    Wait(Option<Instant>),
    /// Send what is new, `done: false`.
    Partial,
    /// Send what is left, `done: true`.
    Final,
}

/// The batch schedule of one scan. See the module documentation.
#[derive(Debug, Clone)]
pub struct Schedule {
    policy: BatchPolicy,
    started: Instant,
    deadline: Instant,
    sent: u32,
    last: Option<Instant>,
    closed: bool,
}

impl Schedule {
    /// A scan started at `started` that must be closed by `deadline`.
    pub fn new(policy: BatchPolicy, started: Instant, deadline: Instant) -> Schedule {
        Schedule {
            policy,
            started,
            deadline,
            sent: 0,
            last: None,
            closed: false,
        }
    }

    /// When the closing batch goes at the latest.
    pub fn final_at(&self) -> Instant {
        self.deadline
            .checked_sub(self.policy.final_margin)
            .unwrap_or(self.started)
            .max(self.started)
    }

    /// What is due at `now`, given whether anything new was found since the last batch and
    /// whether the scan has finished.
    pub fn poll(&self, now: Instant, new_findings: bool, finished: bool) -> Due {
        if self.closed {
            return Due::Wait(None);
        }
        if finished || now >= self.final_at() {
            return Due::Final;
        }
        let next_partial = match self.last {
            None => self.started + self.policy.first_after,
            Some(t) => t + self.policy.interval,
        };
        let partial_left = self.sent + 1 < self.policy.max_batches;
        if new_findings && partial_left && now >= next_partial {
            return Due::Partial;
        }
        let wake = if new_findings && partial_left {
            next_partial.min(self.final_at())
        } else {
            self.final_at()
        };
        Due::Wait(Some(wake))
    }

    /// Records that a batch went out at `now` (`done` closes the scan).
    pub fn sent(&mut self, now: Instant, done: bool) {
        self.sent += 1;
        self.last = Some(now);
        self.closed |= done;
    }

    /// Batches sent so far.
    pub fn batches(&self) -> u32 {
        self.sent
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_table_in_virtual_time() {
        let t0 = Instant::now();
        let s = |ms: u64| t0 + Duration::from_millis(ms);
        let p = BatchPolicy::default();
        let mut sch = Schedule::new(p, t0, s(45_000));
        assert_eq!(sch.final_at(), s(42_000));
        // (at ms, new findings, finished, expected, then record a send?)
        let table: &[(u64, bool, bool, Due, bool)] = &[
            (0, false, false, Due::Wait(Some(s(42_000))), false),
            (200, true, false, Due::Wait(Some(s(1_500))), false),
            (1_500, true, false, Due::Partial, true),
            (2_000, true, false, Due::Wait(Some(s(6_500))), false),
            (6_500, true, false, Due::Partial, true),
            (9_000, false, false, Due::Wait(Some(s(42_000))), false),
            (12_000, true, false, Due::Partial, true),
            (17_000, true, false, Due::Partial, true),
            (22_000, true, false, Due::Partial, true),
            // Five partial batches sent: the sixth is kept for the closing one.
            (27_000, true, false, Due::Wait(Some(s(42_000))), false),
            (42_000, true, false, Due::Final, true),
            (43_000, true, true, Due::Wait(None), false),
        ];
        for (i, &(ms, new, fin, expected, send)) in table.iter().enumerate() {
            assert_eq!(sch.poll(s(ms), new, fin), expected, "row {i} at {ms} ms");
            if send {
                sch.sent(s(ms), expected == Due::Final);
            }
        }
        assert_eq!(sch.batches(), 6);
    }

    #[test]
    fn a_finished_scan_closes_at_once_and_a_tiny_deadline_still_closes() {
        let t0 = Instant::now();
        let sch = Schedule::new(BatchPolicy::default(), t0, t0 + Duration::from_secs(60));
        assert_eq!(
            sch.poll(t0 + Duration::from_millis(10), true, true),
            Due::Final
        );
        let short = Schedule::new(BatchPolicy::default(), t0, t0 + Duration::from_secs(1));
        assert_eq!(short.final_at(), t0);
        assert_eq!(short.poll(t0, false, false), Due::Final);
    }

    #[test]
    fn encoding_cuts_to_the_server_limits_and_splits_large_batches() {
        let mut d = Device::new(Ipv4Addr::new(192, 168, 1, 9));
        d.hostname = Some("é".repeat(300));
        d.mac = Some("AA-BB-CC-00-11-22".into());
        for p in 1..=100 {
            d.add_port(p, "tcp", Some("x".repeat(200)));
        }
        d.add_port(80, "mdns", None);
        let body: serde_json::Value = serde_json::from_slice(&encode("r1", &[d], true)[0]).unwrap();
        let dev = &body["devices"][0];
        assert_eq!(body["done"], true);
        assert_eq!(dev["hostname"].as_str().unwrap().chars().count(), 255);
        assert_eq!(dev["mac"], "aa:bb:cc:00:11:22");
        assert_eq!(dev["ports"].as_array().unwrap().len(), 64);
        assert_eq!(dev["ports"][0]["service_hint"].as_str().unwrap().len(), 128);
        assert_eq!(dev["sources"], serde_json::json!(["tcp", "mdns"]));

        // 2,500 devices of ~300 bytes: split by count (2,000) and the body size.
        let many: Vec<Device> = (0..2500u32)
            .map(|i| {
                let mut d = Device::new(Ipv4Addr::from(0x0a00_0000 + i));
                d.hostname = Some(format!("{}{i}", "h".repeat(200)));
                d.add_port(80, "tcp", None);
                d
            })
            .collect();
        let bodies = encode("r2", &many, true);
        let mut total = 0;
        for (i, b) in bodies.iter().enumerate() {
            assert!(b.len() <= MAX_BODY_BYTES, "body {i}: {}", b.len());
            let v: serde_json::Value = serde_json::from_slice(b).unwrap();
            let n = v["devices"].as_array().unwrap().len();
            assert!(n <= MAX_DEVICES);
            assert_eq!(v["done"], i == bodies.len() - 1);
            total += n;
        }
        assert_eq!(total, 2500);
        assert!(bodies.len() >= 2);
        assert_eq!(
            encode("r3", &[], true).len(),
            1,
            "an empty closing batch is still sent"
        );
    }

    #[test]
    fn a_chatty_host_cannot_grow_its_record_past_the_server_limits() {
        let mut d = Device::new(Ipv4Addr::new(192, 168, 1, 9));
        for port in 1..=1000u16 {
            d.add_port(port, "ssdp", Some("x".repeat(9000)));
        }
        assert_eq!(d.ports.len(), MAX_PORTS);
        assert!(d
            .ports
            .iter()
            .all(|p| p.service_hint.as_ref().unwrap().chars().count() == MAX_HINT_CHARS));
        assert!(!d.add_port(5000, "tcp", None), "full: nothing more kept");
    }

    #[test]
    fn macs_are_normalised_or_dropped() {
        assert_eq!(normalise_mac("00:00:00:00:00:00"), None);
        assert_eq!(normalise_mac("aa:bb:cc"), None);
        assert_eq!(
            normalise_mac("0A:1b:2c:3d:4e:5F").as_deref(),
            Some("0a:1b:2c:3d:4e:5f")
        );
    }
}
