//! One scan, driven: mDNS, SSDP and the TCP sweep at the same time on one thread with
//! `poll(2)`, SSDP descriptions fetched on a few short-lived threads, then MACs from the
//! neighbour table and names from the LAN's resolver. Findings go to a [`Reporter`] in
//! batches on the [`Schedule`]; the closing batch always carries every device found.
//!
//! Bounds: at most `concurrency` TCP probes, [`MAX_MDNS_QUERIES`] follow-up mDNS queries,
//! [`MAX_LOCATION_FETCHES`] description fetches of at most [`MAX_LOCATION_BYTES`] within
//! [`LOCATION_TIMEOUT`] (only from the address that answered, only inside the scanned
//! subnets, no redirects), [`MAX_DEVICES_TRACKED`] devices; datagrams are read into one
//! fixed buffer. Nothing leaves the requested subnets except the two multicast queries,
//! which go out on the LAN interface only (the sockets are bound to its address).

use std::collections::{BTreeMap, HashSet};
use std::io;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use gatelet_agent_api::env::Cidr;

use super::batch::{encode, BatchPolicy, Device, Due, Schedule};
use super::categories::Selection;
use super::dns::{self, Data};
use super::sweep::{Outcome, Sweep, SweepConfig};
use crate::sys;

/// The mDNS group.
pub const MDNS: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(224, 0, 0, 251), 5353);
/// The SSDP group.
pub const SSDP: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(239, 255, 255, 250), 1900);
/// How long passive answers are awaited after the queries (SSDP `MX: 2`, plus slack).
pub const PASSIVE_WINDOW: Duration = Duration::from_millis(3_000);
/// Follow-up mDNS queries (service types, instances) per scan at most.
pub const MAX_MDNS_QUERIES: usize = 32;
/// SSDP description fetches per scan at most.
pub const MAX_LOCATION_FETCHES: usize = 8;
/// Largest SSDP description read.
pub const MAX_LOCATION_BYTES: u64 = 16 * 1024;
/// Time limit of one description fetch.
pub const LOCATION_TIMEOUT: Duration = Duration::from_millis(1_500);
/// Wait for reverse-lookup answers after the sweep.
pub const REVERSE_LOOKUP_WAIT: Duration = Duration::from_millis(800);
/// Devices tracked at most (a /22 has 1022 addresses).
pub const MAX_DEVICES_TRACKED: usize = 2048;

/// One subnet to scan and this box's address on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scope {
    /// The subnet.
    pub cidr: Cidr,
    /// This box's address on it (multicast goes out here; never probed).
    pub local: Ipv4Addr,
}

impl Scope {
    fn hosts(&self) -> Vec<Ipv4Addr> {
        let std::net::IpAddr::V4(net) = self.cidr.addr else {
            return Vec::new();
        };
        let size = 1u32 << (32 - u32::from(self.cidr.prefix.clamp(16, 31)));
        let base = u32::from(net) & !(size - 1);
        (1..size - 1)
            .map(|i| Ipv4Addr::from(base + i))
            .filter(|ip| *ip != self.local)
            .collect()
    }

    fn contains(&self, ip: Ipv4Addr) -> bool {
        self.cidr.contains(ip.into())
    }
}

/// What to scan.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The server's request id.
    pub request_id: String,
    /// The subnets (already checked against the gateway's own).
    pub scopes: Vec<Scope>,
    /// The active categories.
    pub selection: Selection,
    /// Whether to run the TCP sweep.
    pub active: bool,
    /// TCP probes in flight at most.
    pub concurrency: usize,
    /// The closing batch goes out by this time, whatever is still running.
    pub deadline: Instant,
    /// DNS resolvers on the LAN for reverse lookups (empty: none).
    pub resolvers: Vec<SocketAddrV4>,
    /// The neighbour table (`/proc/net/arp`).
    pub arp_table: std::path::PathBuf,
    /// When batches go out.
    pub policy: BatchPolicy,
}

/// Where batches go: called with the bodies of one batch and whether it closes the scan.
pub trait Reporter {
    /// Takes one batch (several bodies when it exceeds the server's limits).
    fn report(&mut self, bodies: Vec<Vec<u8>>, done: bool);
}

/// What a scan did, for the log and the measurements.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    /// Devices reported.
    pub devices: usize,
    /// TCP probes sent.
    pub tcp_probes: u64,
    /// Datagrams sent (mDNS, SSDP, reverse lookups).
    pub datagrams: u64,
    /// Batches reported.
    pub batches: u32,
    /// From the start to the first batch.
    pub first_batch: Option<Duration>,
    /// From the start to the closing batch.
    pub took: Duration,
    /// Whether the deadline closed the scan before everything was done.
    pub cut_by_deadline: bool,
}

struct Probe {
    fd: OwnedFd,
    ip: Ipv4Addr,
    port: u16,
    started: Instant,
    timeout: Duration,
}

struct Passive {
    sock: UdpSocket,
    scope: Scope,
    ssdp: bool,
}

/// Runs one scan to its closing batch. Never fails: what cannot be opened is skipped and
/// logged, and the closing batch always goes out.
pub fn run(plan: &Plan, reporter: &mut dyn Reporter) -> Summary {
    let started = Instant::now();
    let mut st = State {
        devices: BTreeMap::new(),
        dirty: HashSet::new(),
        summary: Summary::default(),
        mdns_asked: HashSet::new(),
        fetches: 0,
    };
    let mut schedule = Schedule::new(plan.policy, started, plan.deadline);
    let passive = open_passive(plan, &mut st);
    let passive_until = started + PASSIVE_WINDOW;
    let mut sweep = plan.active.then(|| {
        let hosts: Vec<Ipv4Addr> = plan.scopes.iter().flat_map(Scope::hosts).collect();
        Sweep::new(
            hosts,
            plan.selection.ports(),
            SweepConfig::new(plan.concurrency),
        )
    });
    let mut probes: Vec<Probe> = Vec::new();
    let (fetch_tx, fetch_rx) = mpsc::channel::<(Ipv4Addr, u16, String)>();
    let mut fetching = 0usize;
    let mut tail: Option<(Instant, Option<UdpSocket>)> = None;
    let mut buf = vec![0u8; 9_000];

    loop {
        let now = Instant::now();
        // Start probes while the window has room.
        if let Some(sw) = sweep.as_mut() {
            while let Some((ip, port)) = sw.next_probe() {
                let timeout = sw.timeout();
                match sys::connect_start(SocketAddrV4::new(ip, port)) {
                    Ok(fd) => probes.push(Probe {
                        fd,
                        ip,
                        port,
                        started: now,
                        timeout,
                    }),
                    Err(e) => {
                        let outcome = classify_error(&e);
                        sw.on_outcome(ip, port, outcome);
                        if outcome == Outcome::LocalError {
                            break;
                        }
                    }
                }
            }
        }
        while let Ok((ip, port, name)) = fetch_rx.try_recv() {
            fetching = fetching.saturating_sub(1);
            st.name_ssdp_port(ip, port, name);
        }
        let sweep_done = sweep.as_ref().is_none_or(Sweep::finished);
        // After the sweep and the passive window: MACs, then reverse lookups.
        if sweep_done && now >= passive_until && tail.is_none() {
            st.fill_macs(&plan.arp_table);
            let sock = send_reverse_lookups(plan, &mut st);
            tail = Some((now + REVERSE_LOOKUP_WAIT, sock));
        }
        let finished = tail
            .as_ref()
            .is_some_and(|(until, _)| now >= *until && fetching == 0);
        let finished = finished
            || tail
                .as_ref()
                .is_some_and(|(until, _)| now >= *until + LOCATION_TIMEOUT);
        match schedule.poll(now, !st.dirty.is_empty(), finished) {
            Due::Partial => {
                let batch: Vec<Device> = st.take_dirty();
                reporter.report(encode(&plan.request_id, &batch, false), false);
                schedule.sent(now, false);
                st.summary.first_batch.get_or_insert(now - started);
            }
            Due::Final => {
                if tail.is_none() {
                    st.fill_macs(&plan.arp_table);
                }
                st.summary.cut_by_deadline = !finished;
                let all: Vec<Device> = st.devices.values().cloned().collect();
                st.summary.devices = all.len();
                reporter.report(encode(&plan.request_id, &all, true), true);
                schedule.sent(now, true);
                st.summary.first_batch.get_or_insert(now - started);
                st.summary.batches = schedule.batches();
                st.summary.tcp_probes = sweep.as_ref().map_or(0, Sweep::probes_sent);
                st.summary.took = now - started;
                return st.summary;
            }
            Due::Wait(_) => {}
        }

        // Wait for sockets, the next probe timeout or the next batch, 50 ms at most.
        let mut fds: Vec<sys::PollFd> = Vec::with_capacity(probes.len() + passive.len() + 1);
        fds.extend(
            passive
                .iter()
                .map(|p| sys::PollFd::new(p.sock.as_raw_fd(), sys::READABLE)),
        );
        let tail_fd = tail
            .as_ref()
            .and_then(|(_, s)| s.as_ref())
            .map(|s| s.as_raw_fd());
        if let Some(fd) = tail_fd {
            fds.push(sys::PollFd::new(fd, sys::READABLE));
        }
        let base = fds.len();
        fds.extend(
            probes
                .iter()
                .map(|p| sys::PollFd::new(p.fd.as_raw_fd(), sys::WRITABLE)),
        );
        let next_timeout = probes.iter().map(|p| p.started + p.timeout).min();
        let wait = next_timeout
            .map_or(Duration::from_millis(50), |t| {
                t.saturating_duration_since(now)
            })
            .min(Duration::from_millis(50));
        if let Err(e) = sys::poll(&mut fds, wait.as_millis() as i32) {
            tracing::warn!(error = %e, "lan scan: poll failed");
            std::thread::sleep(Duration::from_millis(10));
        }
        let now = Instant::now();
        for (i, p) in passive.iter().enumerate() {
            if fds[i].ready() {
                read_passive(p, &mut buf, plan, &mut st, &fetch_tx, &mut fetching);
            }
        }
        if tail_fd.is_some() && fds[base - 1].ready() {
            if let Some((_, Some(sock))) = tail.as_ref() {
                read_reverse(sock, &mut buf, &mut st);
            }
        }
        // Finished or timed-out probes, in reverse so that swap_remove keeps indices valid.
        for i in (0..probes.len()).rev() {
            let p = &probes[i];
            let outcome = if fds[base + i].ready() {
                match sys::socket_error(p.fd.as_raw_fd()) {
                    Ok(None) => Outcome::Open(now - p.started),
                    Ok(Some(e)) => classify_error(&e).or_closed(now - p.started),
                    Err(_) => Outcome::LocalError,
                }
            } else if now >= p.started + p.timeout {
                Outcome::Silent
            } else {
                continue;
            };
            let p = probes.swap_remove(i);
            if let Outcome::Open(_) = outcome {
                st.found(p.ip, p.port, "tcp", None);
            }
            if let Some(sw) = sweep.as_mut() {
                sw.on_outcome(p.ip, p.port, outcome);
            }
        }
    }
}

trait OrClosed {
    fn or_closed(self, rtt: Duration) -> Outcome;
}

impl OrClosed for Outcome {
    /// A refused connect is an answer; everything else is what it is.
    fn or_closed(self, rtt: Duration) -> Outcome {
        match self {
            Outcome::Closed(_) => Outcome::Closed(rtt),
            o => o,
        }
    }
}

fn classify_error(e: &io::Error) -> Outcome {
    match e.raw_os_error() {
        Some(libc::ECONNREFUSED) => Outcome::Closed(Duration::ZERO),
        Some(libc::EHOSTUNREACH) | Some(libc::ENETUNREACH) | Some(libc::EHOSTDOWN) => {
            Outcome::Unreachable
        }
        Some(libc::ETIMEDOUT) => Outcome::Silent,
        _ => Outcome::LocalError,
    }
}

struct State {
    devices: BTreeMap<Ipv4Addr, Device>,
    dirty: HashSet<Ipv4Addr>,
    summary: Summary,
    mdns_asked: HashSet<String>,
    fetches: usize,
}

impl State {
    fn device(&mut self, ip: Ipv4Addr) -> Option<&mut Device> {
        if !self.devices.contains_key(&ip) && self.devices.len() >= MAX_DEVICES_TRACKED {
            return None;
        }
        self.dirty.insert(ip);
        Some(self.devices.entry(ip).or_insert_with(|| Device::new(ip)))
    }

    fn found(&mut self, ip: Ipv4Addr, port: u16, source: &'static str, hint: Option<String>) {
        if let Some(d) = self.device(ip) {
            d.add_port(port, source, hint);
        }
    }

    fn name_ssdp_port(&mut self, ip: Ipv4Addr, port: u16, name: String) {
        if let Some(d) = self.device(ip) {
            for p in d
                .ports
                .iter_mut()
                .filter(|p| p.port == port && p.source == "ssdp")
            {
                p.service_hint = Some(name.clone());
            }
        }
    }

    fn take_dirty(&mut self) -> Vec<Device> {
        let dirty = std::mem::take(&mut self.dirty);
        dirty
            .iter()
            .filter_map(|ip| self.devices.get(ip).cloned())
            .collect()
    }

    fn fill_macs(&mut self, path: &std::path::Path) {
        let Ok(text) = std::fs::read_to_string(path) else {
            return;
        };
        for (ip, mac) in parse_arp(&text) {
            if let Some(d) = self.devices.get_mut(&ip) {
                if d.mac.is_none() {
                    d.mac = Some(mac);
                    self.dirty.insert(ip);
                }
            }
        }
    }
}

/// `/proc/net/arp` → complete entries `(ip, mac)`.
pub fn parse_arp(text: &str) -> Vec<(Ipv4Addr, String)> {
    const ATF_COM: u32 = 0x2;
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let c: Vec<&str> = l.split_whitespace().collect();
            let flags = u32::from_str_radix(c.get(2)?.trim_start_matches("0x"), 16).ok()?;
            let mac = super::batch::normalise_mac(c.get(3)?)?;
            (flags & ATF_COM != 0).then_some((c.first()?.parse().ok()?, mac))
        })
        .collect()
}

fn open_passive(plan: &Plan, st: &mut State) -> Vec<Passive> {
    let mut out = Vec::new();
    for scope in &plan.scopes {
        for ssdp in [false, true] {
            let sock = match UdpSocket::bind((scope.local, 0)) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(local = %scope.local, error = %e, "lan scan: cannot open a UDP socket");
                    continue;
                }
            };
            let _ = sock.set_nonblocking(true);
            let _ = sock.set_multicast_ttl_v4(if ssdp { 2 } else { 255 });
            let (msg, to) = if ssdp {
                (
                    b"M-SEARCH * HTTP/1.1\r\nHOST: 239.255.255.250:1900\r\nMAN: \"ssdp:discover\"\r\nMX: 2\r\nST: ssdp:all\r\n\r\n".to_vec(),
                    SSDP,
                )
            } else {
                (
                    dns::query(0, &[("_services._dns-sd._udp.local", dns::TYPE_PTR)], false),
                    MDNS,
                )
            };
            // Twice: a multicast datagram may be lost, and both are tiny.
            for _ in 0..2 {
                match sock.send_to(&msg, to) {
                    Ok(_) => st.summary.datagrams += 1,
                    Err(e) => tracing::debug!(error = %e, "lan scan: multicast query not sent"),
                }
            }
            out.push(Passive {
                sock,
                scope: *scope,
                ssdp,
            });
        }
    }
    out
}

fn read_passive(
    p: &Passive,
    buf: &mut [u8],
    plan: &Plan,
    st: &mut State,
    fetch_tx: &mpsc::Sender<(Ipv4Addr, u16, String)>,
    fetching: &mut usize,
) {
    // Bounded: at most 64 datagrams per wake-up.
    for _ in 0..64 {
        let (n, from) = match p.sock.recv_from(buf) {
            Ok((n, std::net::SocketAddr::V4(a))) => (n, a),
            Ok(_) => continue,
            Err(_) => return,
        };
        let ip = *from.ip();
        if !p.scope.contains(ip) {
            continue;
        }
        if p.ssdp {
            on_ssdp(&buf[..n], ip, plan, st, fetch_tx, fetching);
        } else {
            on_mdns(&p.sock, &buf[..n], ip, plan, st);
        }
    }
}

fn on_mdns(sock: &UdpSocket, msg: &[u8], from: Ipv4Addr, plan: &Plan, st: &mut State) {
    let Some((_, records)) = dns::parse(msg) else {
        return;
    };
    let mut ask: Vec<(String, u16)> = Vec::new();
    for r in &records {
        match &r.data {
            Data::Ptr(t) if r.name == "_services._dns-sd._udp.local" => {
                // Only service types an active category (or none) wants are followed.
                if plan
                    .selection
                    .passes(Some(t.trim_end_matches(".local")), None)
                {
                    ask.push((t.clone(), dns::TYPE_PTR));
                }
            }
            Data::Ptr(instance) => ask.push((instance.clone(), dns::TYPE_SRV)),
            Data::Srv(port, host) => {
                let service = service_type(&r.name);
                if !plan.selection.passes(service.as_deref(), None) {
                    continue;
                }
                let ip = records
                    .iter()
                    .find_map(|a| match a.data {
                        Data::A(ip)
                            if a.name == *host && plan.scopes.iter().any(|s| s.contains(ip)) =>
                        {
                            Some(ip)
                        }
                        _ => None,
                    })
                    .unwrap_or(from);
                st.found(ip, *port, "mdns", service);
                if let Some(d) = st.device(ip) {
                    d.hostname.get_or_insert_with(|| host.clone());
                }
            }
            Data::A(_) => {}
        }
    }
    for (name, qtype) in ask {
        if st.mdns_asked.len() >= MAX_MDNS_QUERIES || !st.mdns_asked.insert(name.clone()) {
            continue;
        }
        let q = dns::query(0, &[(&name, qtype)], false);
        if sock.send_to(&q, MDNS).is_ok() {
            st.summary.datagrams += 1;
        }
    }
}

/// `Printer._ipp._tcp.local` → `_ipp._tcp`.
fn service_type(instance: &str) -> Option<String> {
    let rest = instance.trim_end_matches(".local");
    let i = rest.find("._")?;
    Some(rest[i + 1..].to_owned())
}

fn on_ssdp(
    msg: &[u8],
    from: Ipv4Addr,
    plan: &Plan,
    st: &mut State,
    fetch_tx: &mpsc::Sender<(Ipv4Addr, u16, String)>,
    fetching: &mut usize,
) {
    let text = String::from_utf8_lossy(msg);
    let mut lines = text.lines();
    if !lines.next().is_some_and(|l| l.starts_with("HTTP/1.1 200")) {
        return;
    }
    let header = |name: &str| {
        text.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_owned())
        })
    };
    let (Some(location), server, st_hdr) = (header("LOCATION"), header("SERVER"), header("ST"))
    else {
        return;
    };
    let both = format!(
        "{} {}",
        server.as_deref().unwrap_or(""),
        st_hdr.as_deref().unwrap_or("")
    );
    if !plan.selection.passes(None, Some(&both)) {
        return;
    }
    let Some((host, port)) = location_host_port(&location) else {
        return;
    };
    if host != from {
        return;
    }
    let hint = st_hdr.or(server);
    let new = st
        .devices
        .get(&from)
        .is_none_or(|d| !d.ports.iter().any(|p| p.port == port && p.source == "ssdp"));
    st.found(from, port, "ssdp", hint);
    if new && st.fetches < MAX_LOCATION_FETCHES && location.starts_with("http://") {
        st.fetches += 1;
        *fetching += 1;
        let tx = fetch_tx.clone();
        let spawned = std::thread::Builder::new()
            .name("ssdp-fetch".into())
            .spawn(move || {
                let name = fetch_friendly_name(&location).unwrap_or_default();
                let _ = tx.send((from, port, name));
            });
        if spawned.is_err() {
            *fetching -= 1;
        }
    }
}

/// `http://192.168.1.9:49152/desc.xml` → (192.168.1.9, 49152). Only address literals.
pub fn location_host_port(url: &str) -> Option<(Ipv4Addr, u16)> {
    let rest = url.strip_prefix("http://")?;
    let authority = rest.split('/').next()?;
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) => (h, p.parse().ok()?),
        None => (authority, 80),
    };
    Some((host.parse().ok()?, port))
}

/// The `<friendlyName>` (and `<modelName>`) of a UPnP description, bounded in size and time.
pub fn fetch_friendly_name(url: &str) -> Option<String> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(LOCATION_TIMEOUT))
        .max_redirects(0)
        .http_status_as_error(true)
        .build()
        .into();
    let mut resp = agent.get(url).call().ok()?;
    let body = resp
        .body_mut()
        .with_config()
        .limit(MAX_LOCATION_BYTES)
        .read_to_vec()
        .ok()?;
    friendly_name(&String::from_utf8_lossy(&body))
}

/// `Name (Model)` from a UPnP device description.
pub fn friendly_name(xml: &str) -> Option<String> {
    let tag = |t: &str| {
        let start = xml.find(&format!("<{t}>"))? + t.len() + 2;
        let end = xml[start..].find("</")? + start;
        let v = xml[start..end].trim();
        (!v.is_empty()).then(|| v.to_owned())
    };
    match (tag("friendlyName"), tag("modelName")) {
        (Some(f), Some(m)) if !f.contains(&m) => Some(format!("{f} ({m})")),
        (Some(f), _) => Some(f),
        (None, m) => m,
    }
}

fn send_reverse_lookups(plan: &Plan, st: &mut State) -> Option<UdpSocket> {
    let resolver = *plan.resolvers.first()?;
    let unnamed: Vec<Ipv4Addr> = st
        .devices
        .values()
        .filter(|d| d.hostname.is_none())
        .map(|d| d.ip)
        .collect();
    if unnamed.is_empty() {
        return None;
    }
    let sock = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).ok()?;
    // Connected: answers are taken from the resolver only, not from whoever finds the port.
    sock.connect(resolver).ok()?;
    let _ = sock.set_nonblocking(true);
    for (i, ip) in unnamed.iter().enumerate() {
        let q = dns::query(i as u16, &[(&dns::reverse_name(*ip), dns::TYPE_PTR)], true);
        if sock.send(&q).is_ok() {
            st.summary.datagrams += 1;
        }
    }
    Some(sock)
}

fn read_reverse(sock: &UdpSocket, buf: &mut [u8], st: &mut State) {
    for _ in 0..64 {
        let Ok(n) = sock.recv(buf) else { return };
        let Some((_, records)) = dns::parse(&buf[..n]) else {
            continue;
        };
        for r in records {
            let Data::Ptr(host) = r.data else { continue };
            let Some(ip) = parse_reverse_name(&r.name) else {
                continue;
            };
            if let Some(d) = st.devices.get_mut(&ip) {
                if d.hostname.is_none() {
                    d.hostname = Some(host);
                    st.dirty.insert(ip);
                }
            }
        }
    }
}

fn parse_reverse_name(name: &str) -> Option<Ipv4Addr> {
    let rest = name.strip_suffix(".in-addr.arpa")?;
    let o: Vec<u8> = rest
        .split('.')
        .map(|p| p.parse().ok())
        .collect::<Option<_>>()?;
    (o.len() == 4).then(|| Ipv4Addr::new(o[3], o[2], o[1], o[0]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hostile_description_server_costs_at_most_the_limits() {
        use std::io::{Read, Write};
        // One server trickles an endless body, one sends a huge one at once.
        let slow = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let big = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let (slow_at, big_at) = (slow.local_addr().unwrap(), big.local_addr().unwrap());
        std::thread::spawn(move || {
            if let Ok((mut c, _)) = slow.accept() {
                let mut b = [0u8; 512];
                let _ = c.read(&mut b);
                let _ = c.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/xml\r\n\r\n<root>");
                for _ in 0..100 {
                    if c.write_all(b"<friendlyName>x").is_err() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        });
        std::thread::spawn(move || {
            if let Ok((mut c, _)) = big.accept() {
                let mut b = [0u8; 512];
                let _ = c.read(&mut b);
                let _ = c.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 10000000\r\n\r\n");
                let chunk = vec![b'a'; 64 * 1024];
                for _ in 0..150 {
                    if c.write_all(&chunk).is_err() {
                        break;
                    }
                }
            }
        });
        for at in [slow_at, big_at] {
            let started = Instant::now();
            let name = fetch_friendly_name(&format!("http://{at}/desc.xml"));
            let took = started.elapsed();
            assert_eq!(name, None);
            assert!(
                took < LOCATION_TIMEOUT + Duration::from_millis(500),
                "{at}: {took:?}"
            );
        }
    }

    #[test]
    fn arp_table_complete_entries_only() {
        let t = "IP address       HW type     Flags       HW address            Mask     Device\n\
                 192.168.1.10     0x1         0x2         AA:bb:cc:dd:ee:01     *        eth0\n\
                 192.168.1.11     0x1         0x0         00:00:00:00:00:00     *        eth0\n\
                 192.168.1.12     0x1         0x6         aa:bb:cc:dd:ee:03     *        eth0\n";
        assert_eq!(
            parse_arp(t),
            vec![
                (Ipv4Addr::new(192, 168, 1, 10), "aa:bb:cc:dd:ee:01".into()),
                (Ipv4Addr::new(192, 168, 1, 12), "aa:bb:cc:dd:ee:03".into()),
            ]
        );
    }

    #[test]
    fn names_and_locations_parse() {
        assert_eq!(
            service_type("My Printer._ipp._tcp.local").as_deref(),
            Some("_ipp._tcp")
        );
        assert_eq!(
            location_host_port("http://192.168.1.9:49152/desc.xml"),
            Some((Ipv4Addr::new(192, 168, 1, 9), 49152))
        );
        assert_eq!(location_host_port("http://evil.example/x"), None);
        assert_eq!(
            friendly_name("<root><device><friendlyName>Living room</friendlyName><modelName>TV 9</modelName></device></root>").as_deref(),
            Some("Living room (TV 9)")
        );
        assert_eq!(
            parse_reverse_name("20.1.168.192.in-addr.arpa"),
            Some(Ipv4Addr::new(192, 168, 1, 20))
        );
        let s = Scope {
            cidr: "192.168.1.0/24".parse().unwrap(),
            local: Ipv4Addr::new(192, 168, 1, 1),
        };
        assert_eq!(s.hosts().len(), 253);
    }
}
