//! LAN discovery end to end (issue 11): gatelet-companion in a gateway namespace with two
//! interfaces and no default route (an uplink to the hub, where the fake GateControl runs, and
//! a LAN), a LAN of host namespaces on a bridge: a NAS with an mDNS responder, a printer with
//! an SSDP responder and a UPnP description, a resolver answering reverse lookups, two more
//! hosts with open ports, and one host that drops every SYN (nftables). The test asks the
//! companion's management API for a scan of the whole /24 with every category, as the server
//! does, and reads the batches the fake GateControl accepted (it refuses any batch over the
//! real server's limits). It measures time to the first batch, total time, packets and the
//! companion's peak RSS during the scan.
//!
//! The responders are small ones written here (legacy-unicast mDNS, SSDP M-SEARCH answers).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use gatelet_tests_hw::{
    config_document, fixture_value, product_binary, Companion, FakeGateControl, L4RouteDoc, Netns,
    VethPair, FIXTURE_ENV, NETNS_ETC,
};
use serde_json::{json, Value};

const LAN: &str = "192.168.77";
const GW_LAN: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 1);
const NAS: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 10);
const RESOLVER: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 11);
const PRINTER: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 12);
const DB: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 13);
const IOT: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 14);
const DROPPER: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 20);
const HUB: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 1);
const DESC_PORT: u16 = 49152;
const SCAN_LIMIT: Duration = Duration::from_secs(20);

/// A thread serving until the flag is set; joined on drop.
struct Server {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    fn spawn(f: impl FnOnce(Arc<AtomicBool>) + Send + 'static) -> Server {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        Server {
            stop,
            thread: Some(std::thread::spawn(move || f(s))),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A host on the LAN bridge: its namespace and address.
struct Host {
    ns: Netns,
}

fn host(switch: &Netns, role: &str, ip: Ipv4Addr) -> Host {
    let ns = Netns::new(role).unwrap();
    let port = format!("s-{role}");
    switch
        .ip(&[
            "link",
            "add",
            &port,
            "type",
            "veth",
            "peer",
            "name",
            "lan0",
            "netns",
            ns.name(),
        ])
        .unwrap();
    switch
        .ip(&["link", "set", &port, "master", "br0", "up"])
        .unwrap();
    ns.ip(&["addr", "add", &format!("{ip}/24"), "dev", "lan0"])
        .unwrap();
    ns.ip(&["link", "set", "lan0", "up"]).unwrap();
    Host { ns }
}

fn listen(ns: &Netns, ip: Ipv4Addr, ports: &[u16]) -> Vec<TcpListener> {
    ports
        .iter()
        .map(|p| ns.enter(|| TcpListener::bind((ip, *p))).unwrap().unwrap())
        .collect()
}

/// Encodes a DNS name (no compression).
fn name(out: &mut Vec<u8>, n: &str) {
    for l in n.split('.') {
        out.push(l.len() as u8);
        out.extend_from_slice(l.as_bytes());
    }
    out.push(0);
}

/// The first question's name of a DNS query.
fn question(msg: &[u8]) -> Option<String> {
    let mut at = 12;
    let mut labels = Vec::new();
    loop {
        let len = *msg.get(at)? as usize;
        if len == 0 {
            return Some(labels.join(".").to_ascii_lowercase());
        }
        labels.push(String::from_utf8_lossy(msg.get(at + 1..at + 1 + len)?).into_owned());
        at += 1 + len;
    }
}

/// A DNS response with `id` carrying `records` (name, type, rdata).
fn response(id: &[u8], records: &[(String, u16, Vec<u8>)]) -> Vec<u8> {
    let mut m = id.to_vec();
    m.extend_from_slice(&[0x84, 0x00, 0, 0]);
    m.extend_from_slice(&(records.len() as u16).to_be_bytes());
    m.extend_from_slice(&[0, 0, 0, 0]);
    for (n, t, rdata) in records {
        name(&mut m, n);
        m.extend_from_slice(&t.to_be_bytes());
        m.extend_from_slice(&[0, 1, 0, 0, 0, 120]);
        m.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
        m.extend_from_slice(rdata);
    }
    m
}

fn rdata_name(n: &str) -> Vec<u8> {
    let mut v = Vec::new();
    name(&mut v, n);
    v
}

/// A legacy-unicast mDNS responder for the NAS: `_http._tcp` → `NAS._http._tcp.local` →
/// SRV port 80 on `nas.local` → A. Answers only what is asked, so the scanner must follow
/// the chain.
fn mdns_responder(ns: &Netns) -> Server {
    let sock = ns
        .enter(|| {
            let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 5353))?;
            s.join_multicast_v4(&Ipv4Addr::new(224, 0, 0, 251), &NAS)?;
            s.set_read_timeout(Some(Duration::from_millis(100)))?;
            Ok::<_, std::io::Error>(s)
        })
        .unwrap()
        .unwrap();
    Server::spawn(move |stop| {
        let mut buf = [0u8; 1500];
        while !stop.load(Ordering::SeqCst) {
            let Ok((n, from)) = sock.recv_from(&mut buf) else {
                continue;
            };
            let Some(q) = question(&buf[..n]) else {
                continue;
            };
            let records = match q.as_str() {
                "_services._dns-sd._udp.local" => {
                    vec![(q.clone(), 12, rdata_name("_http._tcp.local"))]
                }
                "_http._tcp.local" => vec![(q.clone(), 12, rdata_name("NAS._http._tcp.local"))],
                "nas._http._tcp.local" => {
                    let mut srv = vec![0, 0, 0, 0, 0, 80];
                    srv.extend(rdata_name("nas.local"));
                    vec![
                        ("NAS._http._tcp.local".into(), 33, srv),
                        ("nas.local".into(), 1, NAS.octets().to_vec()),
                    ]
                }
                _ => continue,
            };
            let _ = sock.send_to(&response(&buf[..2], &records), from);
        }
    })
}

/// A DNS server answering the reverse lookup of the database host.
fn dns_responder(ns: &Netns) -> Server {
    let sock = ns
        .enter(|| {
            let s = UdpSocket::bind((RESOLVER, 53))?;
            s.set_read_timeout(Some(Duration::from_millis(100)))?;
            Ok::<_, std::io::Error>(s)
        })
        .unwrap()
        .unwrap();
    Server::spawn(move |stop| {
        let mut buf = [0u8; 1500];
        while !stop.load(Ordering::SeqCst) {
            let Ok((n, from)) = sock.recv_from(&mut buf) else {
                continue;
            };
            let Some(q) = question(&buf[..n]) else {
                continue;
            };
            let o = DB.octets();
            let records = if q == format!("{}.{}.{}.{}.in-addr.arpa", o[3], o[2], o[1], o[0]) {
                vec![(q, 12, rdata_name("db.home.lan"))]
            } else {
                Vec::new()
            };
            let _ = sock.send_to(&response(&buf[..2], &records), from);
        }
    })
}

/// SSDP answers to M-SEARCH, and the UPnP description they point to.
fn ssdp_responder(ns: &Netns) -> (Server, Server) {
    let (sock, http) = ns
        .enter(|| {
            let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 1900))?;
            s.join_multicast_v4(&Ipv4Addr::new(239, 255, 255, 250), &PRINTER)?;
            s.set_read_timeout(Some(Duration::from_millis(100)))?;
            let h = TcpListener::bind((PRINTER, DESC_PORT))?;
            h.set_nonblocking(true)?;
            Ok::<_, std::io::Error>((s, h))
        })
        .unwrap()
        .unwrap();
    let udp = Server::spawn(move |stop| {
        let mut buf = [0u8; 1500];
        while !stop.load(Ordering::SeqCst) {
            let Ok((n, from)) = sock.recv_from(&mut buf) else {
                continue;
            };
            if !buf[..n].starts_with(b"M-SEARCH") {
                continue;
            }
            let answer = format!(
                "HTTP/1.1 200 OK\r\nCACHE-CONTROL: max-age=1800\r\nEXT:\r\n\
                 LOCATION: http://{PRINTER}:{DESC_PORT}/desc.xml\r\n\
                 SERVER: Linux/6.1 UPnP/1.0 Printer/1.0\r\n\
                 ST: urn:schemas-upnp-org:device:Printer:1\r\n\
                 USN: uuid:0a0b0c0d::urn:schemas-upnp-org:device:Printer:1\r\n\r\n"
            );
            let _ = sock.send_to(answer.as_bytes(), from);
        }
    });
    let desc = Server::spawn(move |stop| {
        while !stop.load(Ordering::SeqCst) {
            let Ok((mut c, _)) = http.accept() else {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            };
            let _ = c.set_nonblocking(false);
            let _ = c.set_read_timeout(Some(Duration::from_secs(2)));
            let mut head = String::new();
            let mut r = BufReader::new(c.try_clone().unwrap());
            while r.read_line(&mut head).is_ok_and(|n| n > 2) {}
            let body =
                "<?xml version=\"1.0\"?><root><device><friendlyName>Office Printer</friendlyName>\
                        <modelName>LaserJet 9</modelName></device></root>";
            let _ = write!(
                c,
                "HTTP/1.1 200 OK\r\nContent-Type: text/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    (udp, desc)
}

/// `POST /api/lan-scan` to the companion's management API inside the gateway namespace.
fn lan_scan(gw: &Netns, port: u16, token: &str, body: &Value) -> (u16, Value) {
    let body = body.to_string();
    let token = token.to_owned();
    gw.enter(move || {
        let mut c = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(7))).unwrap();
        write!(
            c,
            "POST /api/lan-scan HTTP/1.1\r\nHost: x\r\nX-Gateway-Token: {token}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut answer = String::new();
        c.read_to_string(&mut answer).unwrap();
        let status: u16 = answer[9..12].parse().unwrap();
        let json = answer.split("\r\n\r\n").nth(1).unwrap_or("null");
        (status, serde_json::from_str(json).unwrap_or(Value::Null))
    })
    .unwrap()
}

/// The discovery bodies the fake GateControl printed, with the time each was first seen.
fn batches(server: &FakeGateControl) -> Vec<Value> {
    server
        .log()
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("discovery "))
        .filter_map(|b| serde_json::from_str(b).ok())
        .collect()
}

fn rss_kib(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn log_field(log: &str, key: &str) -> Option<u64> {
    let line = log
        .lines()
        .rev()
        .find(|l| l.contains("lan scan finished"))?;
    let at = line.find(&format!("{key}="))? + key.len() + 1;
    line[at..]
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

#[test]
fn a_slash_24_with_every_category_is_scanned_in_batches_within_the_limits() {
    // The hub (fake GateControl) on the uplink; the LAN on a bridge.
    let hub = Netns::new("hub").unwrap();
    let gw = Netns::new("gw").unwrap();
    let switch = Netns::new("sw").unwrap();
    let _uplink = VethPair::new(&gw, "10.99.0.2/24", &hub, &format!("{HUB}/24")).unwrap();
    switch
        .ip(&["link", "add", "br0", "type", "bridge"])
        .unwrap();
    switch.ip(&["link", "set", "br0", "up"]).unwrap();
    let gw_port = "s-gw";
    switch
        .ip(&[
            "link",
            "add",
            gw_port,
            "type",
            "veth",
            "peer",
            "name",
            "lan0",
            "netns",
            gw.name(),
        ])
        .unwrap();
    switch
        .ip(&["link", "set", gw_port, "master", "br0", "up"])
        .unwrap();
    gw.ip(&["addr", "add", &format!("{GW_LAN}/24"), "dev", "lan0"])
        .unwrap();
    gw.ip(&["link", "set", "lan0", "up"]).unwrap();

    let nas = host(&switch, "nas", NAS);
    let resolver = host(&switch, "dns", RESOLVER);
    let printer = host(&switch, "prn", PRINTER);
    let db = host(&switch, "db", DB);
    let iot = host(&switch, "iot", IOT);
    let dropper = host(&switch, "drop", DROPPER);
    let _l = [
        listen(&nas.ns, NAS, &[80, 443, 445]),
        listen(&resolver.ns, RESOLVER, &[22]),
        listen(&printer.ns, PRINTER, &[631, 9100]),
        listen(&db.ns, DB, &[5432]),
        listen(&iot.ns, IOT, &[8123, 1883]),
        listen(&dropper.ns, DROPPER, &[80, 22]),
    ];
    dropper
        .ns
        .exec(&["nft", "add table inet t; add chain inet t in { type filter hook input priority 0; }; add rule inet t in tcp flags syn drop"])
        .unwrap();
    let _mdns = mdns_responder(&nas.ns);
    let _dns = dns_responder(&resolver.ns);
    let _ssdp = ssdp_responder(&printer.ns);

    // The companion: the fixture's tokens, the fake GateControl on the uplink, an L4 route
    // to the NAS (so the LAN is where the route targets are), the LAN resolver.
    let doc = config_document(
        &[],
        &[L4RouteDoc {
            id: 1,
            listen_port: 2222,
            host: NAS.to_string(),
            port: 22,
        }],
    );
    let server = FakeGateControl::start(&hub, SocketAddr::from((HUB, 3000)), &doc).unwrap();
    let fixture =
        std::fs::read_to_string(gatelet_tests_hw::workspace_root().join(FIXTURE_ENV)).unwrap();
    let env_text: String = fixture
        .lines()
        .map(|l| match l.split_once('=').map(|(k, _)| k) {
            Some("GC_SERVER_URL") => format!("GC_SERVER_URL=http://{HUB}:3000"),
            Some("WG_ENDPOINT") => format!("WG_ENDPOINT={HUB}:51820"),
            Some("GC_HEARTBEAT_INTERVAL_S") => "GC_HEARTBEAT_INTERVAL_S=2".into(),
            _ => l.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("\n");
    let env_path = gw.dir().join("gateway.env");
    std::fs::write(&env_path, env_text + "\n").unwrap();
    let etc = PathBuf::from(NETNS_ETC).join(gw.name());
    std::fs::create_dir_all(&etc).unwrap();
    std::fs::write(etc.join("resolv.conf"), format!("nameserver {RESOLVER}\n")).unwrap();
    let binary = product_binary("gatelet-companion").unwrap();
    let mut companion =
        Companion::start(&gw, &binary, &env_path, &gw.dir().join("agent.sock")).unwrap();
    let api_port: u16 = fixture_value("GC_API_PORT").unwrap().parse().unwrap();
    let token = fixture_value("GC_GATEWAY_TOKEN").unwrap();

    // Wait for a heartbeat: the companion is up and the telemetry tells the LAN.
    let hb = wait_for(Duration::from_secs(20), || {
        server
            .log()
            .lines()
            .any(|l| l.contains("/heartbeat -> 200"))
            .then_some(())
    });
    assert!(
        hb.is_some(),
        "no heartbeat: {}\n{}",
        server.log(),
        companion.log()
    );
    let pid = companion.process().pid();
    std::thread::sleep(Duration::from_millis(500));
    let idle_kib = rss_kib(pid, "VmRSS:");

    // The scan, as the server asks for it.
    let request = json!({"request_id": "c1c5f26e-dbbd-4336-b648-45291081f6f0",
        "subnets": [format!("{LAN}.0/24")], "category_mode": "exclude", "categories": [],
        "active_scan": true, "timeout_ms": 45000});
    let asked = Instant::now();
    let (status, answer) = lan_scan(&gw, api_port, &token, &request);
    assert_eq!(
        (status, answer),
        (
            202,
            json!({"accepted": true, "request_id": request["request_id"],
                     "subnets_scanned": [format!("{LAN}.0/24")]})
        )
    );
    let (status, answer) = lan_scan(
        &gw,
        api_port,
        &token,
        &json!({"request_id": "x", "subnets": [format!("{LAN}.0/24")]}),
    );
    assert_eq!(
        (status, answer),
        (409, json!({"error": "scan_in_progress"}))
    );
    let (mut first_batch, mut peak_kib) = (None, idle_kib);
    let done = wait_for(SCAN_LIMIT + Duration::from_secs(5), || {
        peak_kib = peak_kib.max(rss_kib(pid, "VmRSS:"));
        let b = batches(&server);
        if !b.is_empty() {
            first_batch.get_or_insert(asked.elapsed());
        }
        b.iter().any(|b| b["done"] == true).then(|| asked.elapsed())
    });
    let took =
        done.unwrap_or_else(|| panic!("no closing batch: {}\n{}", server.log(), companion.log()));
    let hwm_kib = rss_kib(pid, "VmHWM:");
    let all = batches(&server);
    let server_log = server.log();
    let statuses: Vec<&str> = server_log
        .lines()
        .filter(|l| l.contains("/api/v1/gateway/discovery ->"))
        .map(|l| l.rsplit(' ').next().unwrap_or(""))
        .collect::<Vec<_>>();
    // The fake refuses (400) any batch over the real server's limits.
    assert!(
        statuses.iter().all(|s| *s == "200"),
        "{statuses:?}\n{}",
        server.log()
    );
    assert!(
        all.len() >= 2,
        "partial results before the closing batch: {all:?}"
    );
    assert_eq!(all.last().unwrap()["done"], true);
    assert!(all[..all.len() - 1].iter().all(|b| b["done"] == false));

    let last = all.last().unwrap();
    let dev = |ip: Ipv4Addr| {
        last["devices"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["ip"] == ip.to_string())
            .cloned()
            .unwrap_or_else(|| panic!("{ip} not reported: {last}"))
    };
    let ports = |d: &Value, source: &str| {
        let mut p: Vec<u64> = d["ports"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["source"] == source)
            .filter_map(|p| p["port"].as_u64())
            .collect();
        p.sort();
        p
    };
    let nas_dev = dev(NAS);
    assert_eq!(ports(&nas_dev, "tcp"), vec![80, 443, 445]);
    assert_eq!(ports(&nas_dev, "mdns"), vec![80]);
    assert_eq!(nas_dev["hostname"], "nas.local");
    assert_eq!(ports(&dev(RESOLVER), "tcp"), vec![22]);
    let prn = dev(PRINTER);
    assert_eq!(ports(&prn, "tcp"), vec![631, 9100]);
    let ssdp: Vec<&Value> = prn["ports"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["source"] == "ssdp")
        .collect();
    assert_eq!(ssdp.len(), 1, "{prn}");
    assert_eq!(ssdp[0]["port"], DESC_PORT);
    assert_eq!(ssdp[0]["service_hint"], "Office Printer (LaserJet 9)");
    let db_dev = dev(DB);
    assert_eq!(ports(&db_dev, "tcp"), vec![5432]);
    assert_eq!(
        db_dev["hostname"], "db.home.lan",
        "reverse lookup at the LAN resolver"
    );
    assert_eq!(ports(&dev(IOT), "tcp"), vec![1883, 8123]);
    for ip in [NAS, RESOLVER, PRINTER, DB, IOT] {
        let mac = dev(ip)["mac"].as_str().unwrap_or_default().to_owned();
        assert_eq!(mac.len(), 17, "{ip} has no MAC from the neighbour table");
    }
    assert!(
        !last["devices"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["ip"] == DROPPER.to_string()),
        "the SYN-dropping host has no open port to report"
    );
    assert!(took <= SCAN_LIMIT, "scan took {took:?}");

    // Telemetry: the LAN (where the route targets are, not the uplink to the hub) is primary
    // and first, and lan_ip is the gateway's address on it.
    let lan_line = server
        .log()
        .lines()
        .rev()
        .find_map(|l| l.trim_start().strip_prefix("lan ").map(str::to_owned))
        .expect("a heartbeat with telemetry");
    let (lan_ip, subnets) = lan_line.split_once(' ').unwrap();
    assert_eq!(lan_ip, format!("\"{GW_LAN}\""), "{lan_line}");
    let subnets: Value = serde_json::from_str(subnets).unwrap();
    assert_eq!(subnets[0]["cidr"], format!("{LAN}.0/24"), "{lan_line}");
    assert_eq!(subnets[0]["primary"], true, "{lan_line}");
    let clog = plain(&companion.log());
    let probes = log_field(&clog, "tcp_probes").unwrap_or(0);
    let datagrams = log_field(&clog, "datagrams").unwrap_or(0);
    println!(
        "lan scan /24, 5 live hosts + 1 dropping SYNs, every category: first batch after {:?}, \
         closing batch after {took:?}, {} batches, {probes} TCP probes + {datagrams} datagrams \
         (a full sweep would be {} probes), companion RSS idle {idle_kib} KiB, peak sampled \
         {peak_kib} KiB, VmHWM {hwm_kib} KiB",
        first_batch.unwrap_or_default(),
        all.len(),
        29 * 253
    );
    assert!(
        probes > 0 && probes < 29 * 253 / 4,
        "the sweep did not skip silent hosts: {probes}"
    );
    assert!(
        hwm_kib.max(peak_kib).saturating_sub(idle_kib) <= 2048,
        "the scan grew the companion's RSS by {} KiB",
        hwm_kib.max(peak_kib).saturating_sub(idle_kib)
    );
    drop(companion);
}

#[test]
fn a_deadline_shorter_than_the_scan_still_closes_with_what_was_found() {
    let gw = Netns::new("gwd").unwrap();
    let hub = Netns::new("hubd").unwrap();
    let _uplink = VethPair::new(&gw, "10.99.0.2/24", &hub, &format!("{HUB}/24")).unwrap();
    // A LAN of 1022 addresses (the largest the default GC_DISCOVERY_MAX_PREFIX allows) where
    // one host answers and nothing else exists.
    let lan = Netns::new("land").unwrap();
    let _lan = VethPair::new(&gw, "172.20.0.1/22", &lan, "172.20.0.2/22").unwrap();
    let _open = listen(&lan, Ipv4Addr::new(172, 20, 0, 2), &[22]);
    let doc = config_document(&[], &[]);
    let server = FakeGateControl::start(&hub, SocketAddr::from((HUB, 3000)), &doc).unwrap();
    let fixture =
        std::fs::read_to_string(gatelet_tests_hw::workspace_root().join(FIXTURE_ENV)).unwrap();
    let env_text: String = fixture
        .lines()
        .map(|l| match l.split_once('=').map(|(k, _)| k) {
            Some("GC_SERVER_URL") => format!("GC_SERVER_URL=http://{HUB}:3000"),
            Some("WG_ENDPOINT") => format!("WG_ENDPOINT={HUB}:51820"),
            _ => l.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("\n");
    let env_path = gw.dir().join("gateway.env");
    std::fs::write(&env_path, env_text + "\nGC_DISCOVERY_CONCURRENCY=4\n").unwrap();
    let binary = product_binary("gatelet-companion").unwrap();
    let companion =
        Companion::start(&gw, &binary, &env_path, &gw.dir().join("agent.sock")).unwrap();
    let api_port: u16 = fixture_value("GC_API_PORT").unwrap().parse().unwrap();
    let token = fixture_value("GC_GATEWAY_TOKEN").unwrap();
    let up = wait_for(Duration::from_secs(20), || {
        gw.enter(move || TcpStream::connect((Ipv4Addr::LOCALHOST, api_port)).is_ok())
            .unwrap()
            .then_some(())
    });
    assert!(up.is_some(), "{}", companion.log());

    // Four probes at a time over 1,021 addresses cannot finish in 5 s: the closing batch
    // must still come before the deadline, carrying what was found.
    let asked = Instant::now();
    let (status, _) = lan_scan(
        &gw,
        api_port,
        &token,
        &json!({"request_id": "short",
        "subnets": ["172.20.0.0/22"], "category_mode": "include", "categories": ["remote_access"],
        "active_scan": true, "timeout_ms": 5000}),
    );
    assert_eq!(status, 202, "{}", companion.log());
    let done = wait_for(Duration::from_secs(10), || {
        batches(&server)
            .iter()
            .any(|b| b["done"] == true)
            .then(|| asked.elapsed())
    });
    let took =
        done.unwrap_or_else(|| panic!("no closing batch: {}\n{}", server.log(), companion.log()));
    assert!(
        took < Duration::from_secs(5),
        "closing batch after {took:?}, past the 5 s deadline"
    );
    let clog = wait_for(Duration::from_secs(2), || {
        let l = plain(&companion.log());
        l.contains("lan scan finished").then_some(l)
    })
    .unwrap_or_else(|| panic!("no summary in the log: {}", companion.log()));
    assert!(clog.contains("cut_by_deadline=true"), "{clog}");
    let last = batches(&server)
        .into_iter()
        .find(|b| b["done"] == true)
        .unwrap();
    assert_eq!(
        last["devices"][0]["ports"][0],
        json!({"port": 22, "source": "tcp", "service_hint": null}),
        "what was found before the deadline is in the closing batch: {last}"
    );
    println!("5 s deadline on a /22 at concurrency 4: closing batch after {took:?}");
}

/// The text without ANSI colour sequences (the companion colours its stderr log).
fn plain(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn wait_for<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if let Some(v) = f() {
            return Some(v);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}
