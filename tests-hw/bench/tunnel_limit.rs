//! The gateway's tunnel cost at its limit, with a load that is not the bottleneck (run by hand
//! through `tests-hw/bench/tunnel-limit.sh`, as root).
//!
//! In `tunnel.sh` the hub (wireguard-go, decrypting or encrypting every byte again, plus iperf3's
//! TCP) shares one core and is the bottleneck: the gateway then idles at 30-45 % of its core, and
//! "Gbit/s per gateway core" counts part-empty batches. Here the hub's part is played by this
//! program with boringtun, and it does no crypto while the clock runs:
//!
//! - **decrypt** (hub -> gateway): after a handshake with the gateway it encrypts `--megabytes`
//!   of 1,420-byte IPv4/UDP packets (to a port the gateway's namespace drops with iptables)
//!   *before* the measurement, then sends them as fast as `sendmmsg` goes. The gateway
//!   receives, decrypts and writes each packet to its TUN device;
//! - **decrypt-gro**: the same packets, sent as UDP GSO runs of [`GSO_SEGMENTS`] datagrams
//!   (`UDP_SEGMENT`). The veth keeps a run whole, as a NIC with GRO hands one to the stack: a
//!   gateway whose socket has `UDP_GRO` on reads it in one go, for any other the kernel cuts it
//!   before the socket. The wire is the same for every gateway, and the load costs far less
//!   per byte, so it can offer more than `sendmmsg` of single datagrams;
//! - **encrypt** (gateway -> hub): a UDP sender in the gateway's namespace sends 1,392-byte
//!   datagrams to the hub's tunnel address as fast as `sendmmsg` goes; the gateway reads them
//!   from its TUN device, encrypts and sends them; the hub's namespace drops them with iptables
//!   (after the handshake), so nothing decrypts them.
//!
//! The gateway is pinned to core 0, this program (the load) to core 1. Counted: the inner IP
//! bytes the gateway delivered (iptables counters of the DROP rule: decrypt, in the gateway's
//! namespace; encrypt, in the hub's, less the outer headers), and the gateway process's CPU
//! time. Prints Gbit/s, the gateway's CPU %, Gbit/s per gateway core (median and spread of
//! `--runs`), for gatelet-agent and each baseline at each of its settings (boringtun-cli with
//! 1, 2 and its default 4 threads, wireguard-go with GOMAXPROCS 1 and its default), ratios
//! against each baseline's best, claimed only when the spreads do not overlap.
//!
//! UDP is the gateway's dearest case per byte: no TSO/GRO frames from the kernel, so one TUN
//! read or write per packet (in `decrypt-gro`, a gateway with USO on its TUN device may write a
//! run as one frame). TCP through the tunnel (tunnel.sh) gets 64 KiB frames.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use base64::Engine as _;
use boringtun::noise::{Tunn, TunnResult};
use boringtun::x25519::{PublicKey, StaticSecret};
use gatelet_tests_hw::{
    build, cpu_seconds, require_root, Gateway, GatewayRole, Netns, Spread, Testbed, WgImpl,
    GW_TUNNEL_IP, HUB_LAN_IP, HUB_PORT, HUB_TUNNEL_IP, TUNNEL_MTU,
};

const USAGE: &str = "usage: bench-tunnel-limit --boringtun PATH [--agent-bin LABEL=PATH]... \
                     [--direction decrypt|decrypt-gro|encrypt|both|all] [--seconds N] [--runs N] \
                     [--megabytes N] [--only LABEL-PART]";
/// The port the load's packets go to; both namespaces drop it (iptables) once it arrives.
const SINK_PORT: u16 = 9;
/// The core the gateway is pinned to, and the one this program (the load) runs on.
const GATEWAY_CORE: &str = "0";
const LOAD_CORE: usize = 1;
/// How long a gateway gets for the first handshake with the hub (wireguard-go), and for the
/// one with this program after it.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(20);
/// Datagrams per `sendmmsg`.
const SEND_BATCH: usize = 64;
/// Datagrams per UDP GSO send (`decrypt-gro`): as many 1,452-byte data messages as fit in one
/// 64 KiB UDP datagram.
const GSO_SEGMENTS: usize = 44;
/// What the `decrypt-gro` load offers, in Gbit/s of inner IP bytes: well above what a gateway
/// takes (about 11), so it stays saturated, and low enough that the packets encrypted
/// beforehand last a while (3,000 MB: 1.5 s).
const GRO_OFFER_GBIT: f64 = 16.0;
/// `UDP_SEGMENT` (linux/udp.h; Linux 4.18): the control message asking the kernel to cut a send.
const UDP_SEGMENT: libc::c_int = 103;
/// WireGuard's data message overhead: type, receiver, counter (16) and the tag (16).
const WG_OVERHEAD: usize = 32;
/// The outer IPv4 and UDP headers around a WireGuard message.
const OUTER_HEADERS: u64 = 20 + 8;
/// Time after the load stops for what is queued to drain before the counters are read.
const DRAIN: Duration = Duration::from_millis(300);

#[derive(Clone, Copy, PartialEq, Debug)]
enum Direction {
    /// Hub -> gateway: the gateway decrypts.
    Decrypt,
    /// Hub -> gateway in UDP GSO runs (as from a NIC with GRO): the gateway decrypts.
    DecryptGro,
    /// Gateway -> hub: the gateway encrypts.
    Encrypt,
}

impl Direction {
    fn describe(self) -> &'static str {
        match self {
            Direction::Decrypt => "hub -> gateway, the gateway decrypts",
            Direction::DecryptGro => {
                "hub -> gateway in UDP GSO runs of 44 (as a NIC with GRO delivers them), the \
                 gateway decrypts"
            }
            Direction::Encrypt => "gateway -> hub, the gateway encrypts",
        }
    }
}

struct Args {
    boringtun: PathBuf,
    agent_bins: Vec<(String, PathBuf)>,
    directions: Vec<Direction>,
    seconds: u64,
    runs: usize,
    megabytes: usize,
    only: Option<String>,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        boringtun: std::env::var_os("BORINGTUN_CLI")
            .map(PathBuf::from)
            .unwrap_or_default(),
        agent_bins: Vec::new(),
        directions: vec![
            Direction::Decrypt,
            Direction::DecryptGro,
            Direction::Encrypt,
        ],
        seconds: 5,
        runs: 5,
        megabytes: 3_000,
        only: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = || {
            it.next()
                .with_context(|| format!("{a} needs a value; {USAGE}"))
        };
        match a.as_str() {
            "--boringtun" => args.boringtun = value()?.into(),
            "--agent-bin" => {
                let v = value()?;
                let (label, path) = v
                    .split_once('=')
                    .with_context(|| format!("--agent-bin takes LABEL=PATH, got {v:?}"))?;
                args.agent_bins.push((label.into(), path.into()));
            }
            "--direction" => {
                args.directions = match value()?.as_str() {
                    "decrypt" => vec![Direction::Decrypt],
                    "decrypt-gro" => vec![Direction::DecryptGro],
                    "encrypt" => vec![Direction::Encrypt],
                    "both" => vec![Direction::Decrypt, Direction::Encrypt],
                    "all" => vec![
                        Direction::Decrypt,
                        Direction::DecryptGro,
                        Direction::Encrypt,
                    ],
                    other => bail!("unknown direction {other:?}; {USAGE}"),
                }
            }
            "--seconds" => args.seconds = value()?.parse().context("--seconds")?,
            "--runs" => args.runs = value()?.parse().context("--runs")?,
            "--megabytes" => args.megabytes = value()?.parse().context("--megabytes")?,
            "--only" => args.only = Some(value()?),
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}; {USAGE}"),
        }
    }
    if args.seconds == 0 || args.runs == 0 || args.megabytes == 0 {
        bail!("--seconds, --runs and --megabytes must be at least 1");
    }
    if args.boringtun.as_os_str().is_empty() {
        bail!("no boringtun-cli: pass --boringtun PATH or set BORINGTUN_CLI");
    }
    if std::thread::available_parallelism().map_or(1, |n| n.get()) < 2 {
        bail!("needs two cores (the gateway on one, the load on the other)");
    }
    Ok(args)
}

/// One gateway to measure.
struct Contender {
    label: String,
    role: GatewayRole,
}

/// What one run measured.
#[derive(Clone, Copy)]
struct Sample {
    /// Inner IP bytes the gateway delivered per second, in Gbit/s.
    gbit_s: f64,
    /// What the load offered, in Gbit/s of inner IP bytes.
    offered: f64,
    /// The gateway process's CPU time over the run, in percent of one core.
    cpu_pct: f64,
    /// How busy the gateway's core was (all of it: also the kernel's deferred network work
    /// that ksoftirqd does there, which the process's CPU time leaves out), in percent.
    core_pct: f64,
}

impl Sample {
    /// Gbit/s per second of the gateway process's CPU time.
    fn per_process_core(&self) -> f64 {
        per(self.gbit_s, self.cpu_pct)
    }

    /// Gbit/s per second of the gateway's whole core (its process, the kernel's deferred work
    /// for it, and on a busy machine whatever else ran there).
    fn per_core(&self) -> f64 {
        per(self.gbit_s, self.core_pct)
    }
}

fn per(gbit_s: f64, pct: f64) -> f64 {
    if pct > 0.0 {
        gbit_s / (pct / 100.0)
    } else {
        0.0
    }
}

fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    require_root()?;
    pin_self(LOAD_CORE)?;
    let mut contenders = Vec::new();
    let dir = build("release", &["gatelet-agent"])?;
    contenders.push(Contender {
        label: "gatelet-agent (release)".into(),
        role: GatewayRole::Agent(dir.join("gatelet-agent")),
    });
    for (label, path) in &args.agent_bins {
        contenders.push(Contender {
            label: format!("gatelet-agent ({label})"),
            role: GatewayRole::Agent(path.clone()),
        });
    }
    for imp in WgImpl::baselines(&args.boringtun) {
        contenders.push(Contender {
            label: imp.describe(),
            role: GatewayRole::Userspace(imp),
        });
    }
    if let Some(only) = &args.only {
        contenders.retain(|c| c.label.contains(only.as_str()));
    }
    if contenders.is_empty() {
        bail!("--only matches no gateway; {USAGE}");
    }

    for &direction in &args.directions {
        let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); contenders.len()];
        for run in 1..=args.runs {
            for (i, c) in contenders.iter().enumerate() {
                eprintln!("run {run}/{}: {} ({direction:?}) ...", args.runs, c.label);
                let s = measure(c, direction, &args)
                    .with_context(|| format!("measuring {} ({direction:?})", c.label))?;
                eprintln!(
                    "  {:.2} Gbit/s (offered {:.2}), gateway {:.0}% CPU, its core {:.0}% busy",
                    s.gbit_s, s.offered, s.cpu_pct, s.core_pct,
                );
                samples[i].push(s);
            }
        }
        report(direction, &contenders, &samples, &args);
    }
    Ok(())
}

fn report(direction: Direction, contenders: &[Contender], samples: &[Vec<Sample>], args: &Args) {
    println!();
    println!(
        "tunnel at the gateway's limit, {}: 1,420-byte UDP packets, load without crypto while \
         measured; {} s, median of {} runs (lowest-highest); gateway pinned to core \
         {GATEWAY_CORE}, load to core {LOAD_CORE}",
        direction.describe(),
        args.seconds,
        args.runs
    );
    println!(
        "{:<30} {:>17} {:>8} {:>7} {:>7} {:>19} {:>19}",
        "gateway", "Gbit/s", "offered", "gw CPU%", "core %", "Gbit/s/process-core", "Gbit/s/core"
    );
    let rows: Vec<Row> = samples.iter().map(|s| Row::of(s)).collect();
    for (c, r) in contenders.iter().zip(&rows) {
        println!(
            "{:<30} {:>17} {:>8.2} {:>7.0} {:>7.0} {:>19} {:>19}",
            c.label,
            r.gbit_s.show(),
            r.offered.median,
            r.cpu.median,
            r.core.median,
            r.per_process.show(),
            r.per_core.show()
        );
    }
    println!(
        "Gbit/s/process-core: per second of the gateway process's CPU time; Gbit/s/core: per \
         second of its whole core's busy time (the process and the kernel's deferred work for \
         it; on a busy machine also others: then only the first is a measure)"
    );
    // A baseline's best setting: the lowest cost per byte.
    let best = |name: &str| {
        contenders
            .iter()
            .zip(&rows)
            .filter(|(c, _)| c.label.starts_with(name))
            .max_by(|a, b| a.1.per_process.median.total_cmp(&b.1.per_process.median))
    };
    println!();
    for (c, r) in contenders
        .iter()
        .zip(&rows)
        .filter(|(c, _)| c.label.starts_with("gatelet-agent"))
    {
        for name in ["wireguard-go", "boringtun-cli"] {
            if let Some((b, br)) = best(name) {
                println!(
                    "{}: vs `{}` (its best here): Gbit/s {}; Gbit/s/process-core {}; \
                     Gbit/s/core {}",
                    c.label,
                    b.label,
                    r.gbit_s.ratio_to(&br.gbit_s),
                    r.per_process.ratio_to(&br.per_process),
                    r.per_core.ratio_to(&br.per_core)
                );
            }
        }
        println!(
            "{}: Gbit/s per gateway core {:.2} (process) {:.2} (core) (target >= 4) {}",
            c.label,
            r.per_process.median,
            r.per_core.median,
            if r.per_core.median >= 4.0 {
                "ok"
            } else {
                "MISSED"
            }
        );
    }
    let agents: Vec<(&Contender, &Row)> = contenders
        .iter()
        .zip(&rows)
        .filter(|(c, _)| c.label.starts_with("gatelet-agent"))
        .collect();
    if let Some(((a, ar), rest)) = agents.split_first() {
        for (c, r) in rest {
            println!(
                "A/B {} vs {}: Gbit/s {}; Gbit/s/process-core {}; Gbit/s/core {}",
                c.label,
                a.label,
                r.gbit_s.ratio_to(&ar.gbit_s),
                r.per_process.ratio_to(&ar.per_process),
                r.per_core.ratio_to(&ar.per_core)
            );
        }
    }
}

/// One gateway's runs, summarized.
struct Row {
    gbit_s: Spread,
    offered: Spread,
    cpu: Spread,
    core: Spread,
    per_process: Spread,
    per_core: Spread,
}

impl Row {
    fn of(s: &[Sample]) -> Row {
        Row {
            gbit_s: Spread::of(s.iter().map(|x| x.gbit_s)),
            offered: Spread::of(s.iter().map(|x| x.offered)),
            cpu: Spread::of(s.iter().map(|x| x.cpu_pct)),
            core: Spread::of(s.iter().map(|x| x.core_pct)),
            per_process: Spread::of(s.iter().map(Sample::per_process_core)),
            per_core: Spread::of(s.iter().map(Sample::per_core)),
        }
    }
}

fn measure(c: &Contender, direction: Direction, args: &Args) -> anyhow::Result<Sample> {
    let mut tb = Testbed::start(&c.role)?;
    tb.wait_handshake(None, HANDSHAKE_TIMEOUT)?;
    let endpoint: SocketAddr = tb
        .hub
        .endpoint(&tb.gw_key.public)?
        .context("the hub knows no endpoint of the gateway")?
        .parse()
        .context("the gateway's endpoint")?;
    let pid = match &tb.gateway {
        Gateway::Agent(a) => a.pid(),
        Gateway::Userspace(wg) => wg.process().pid(),
    };
    let out = std::process::Command::new("taskset")
        .args(["-a", "-p", "-c", GATEWAY_CORE, &pid.to_string()])
        .output()
        .context("run taskset (util-linux)")?;
    if !out.status.success() {
        bail!("taskset: {}", String::from_utf8_lossy(&out.stderr));
    }
    // This program takes the hub's place (its address, port and key).
    tb.hub.stop();
    let mut hub = Hub::connect(&tb, endpoint)?;
    match direction {
        Direction::Decrypt | Direction::DecryptGro => {
            let sink = drop_rule(&tb.gw_ns, "-d", &GW_TUNNEL_IP.to_string(), SINK_PORT)?;
            let batch = hub.encrypt_load(args.megabytes)?;
            let sock = &hub.socket;
            // The GSO load outruns any gateway and ends in a second or two (the packets are
            // encrypted beforehand, and a replay is refused): it is counted while it runs, the
            // gateway saturated throughout, and nothing after.
            let gso = direction == Direction::DecryptGro;
            let drain = if gso { Duration::ZERO } else { DRAIN };
            let (bytes, offered, cpu, elapsed): (u64, _, _, _) =
                run_load(pid, &sink, args.seconds, drain, |deadline| {
                    if gso {
                        send_all_gso(sock, &batch, deadline)
                    } else {
                        send_all(sock, &batch, deadline)
                    }
                })?;
            let inner = (batch.stride - WG_OVERHEAD) as u64;
            Ok(Sample {
                gbit_s: bytes as f64 * 8.0 / elapsed / 1e9,
                offered: (offered * inner) as f64 * 8.0 / elapsed / 1e9,
                cpu_pct: cpu.process,
                core_pct: cpu.core,
            })
        }
        Direction::Encrypt => {
            let sink = drop_rule(&tb.hub_ns, "-s", &endpoint.ip().to_string(), 0)?;
            let payload = vec![0x5a_u8; usize::from(TUNNEL_MTU) - 28];
            let sender = tb.gw_ns.enter(|| -> io::Result<UdpSocket> {
                let s = UdpSocket::bind((GW_TUNNEL_IP, 0))?;
                s.connect((HUB_TUNNEL_IP, SINK_PORT))?;
                Ok(s)
            })??;
            let batch = Batch::repeated(&payload, SEND_BATCH);
            let (packets_bytes, offered, cpu, elapsed): ((u64, u64), _, _, _) =
                run_load(pid, &sink, args.seconds, DRAIN, |deadline| {
                    send_repeated(&sender, &batch, deadline)
                })?;
            // The rule counts the outer IP packets: take their headers and WireGuard's off.
            let (packets, bytes) = packets_bytes;
            let inner = bytes.saturating_sub(packets * (OUTER_HEADERS + WG_OVERHEAD as u64));
            Ok(Sample {
                gbit_s: inner as f64 * 8.0 / elapsed / 1e9,
                offered: (offered * (payload.len() as u64 + 28)) as f64 * 8.0 / elapsed / 1e9,
                cpu_pct: cpu.process,
                core_pct: cpu.core,
            })
        }
    }
}

/// Runs `load` (which returns the datagrams it sent) until `seconds` pass, then waits `drain`
/// for the queues to drain; returns what the sink's rule counted (decrypt: inner bytes; encrypt:
/// packets and outer bytes, see the callers), the datagrams offered, the gateway's CPU % and
/// the seconds the load ran.
fn run_load<C: SinkCount>(
    pid: u32,
    sink: &Sink,
    seconds: u64,
    drain: Duration,
    load: impl FnOnce(Instant) -> io::Result<u64>,
) -> anyhow::Result<(C, u64, Busy, f64)> {
    let before = C::read(sink)?;
    let cpu_before = cpu_seconds(pid)?;
    let core_before = core_ticks(GATEWAY_CORE)?;
    let started = Instant::now();
    let offered = load(started + Duration::from_secs(seconds)).context("the load")?;
    let elapsed = started.elapsed().as_secs_f64();
    std::thread::sleep(drain);
    let cpu_after = cpu_seconds(pid)?;
    let core_after = core_ticks(GATEWAY_CORE)?;
    let after = C::read(sink)?;
    let cpu_s = (cpu_after - cpu_before).max(0.0);
    // The CPU time includes the drain; so does the count.
    let pct = cpu_s / (elapsed + drain.as_secs_f64()) * 100.0;
    let busy = core_after.busy.saturating_sub(core_before.busy) as f64;
    let all = core_after.all.saturating_sub(core_before.all).max(1) as f64;
    Ok((
        after.minus(before),
        offered,
        Busy {
            process: pct,
            core: busy / all * 100.0,
        },
        elapsed,
    ))
}

/// How busy the gateway was: its process's CPU time and its whole core, in percent.
struct Busy {
    process: f64,
    core: f64,
}

/// Clock ticks of one core from /proc/stat: busy (all but idle and iowait) and all.
struct CoreTicks {
    busy: u64,
    all: u64,
}

fn core_ticks(core: &str) -> anyhow::Result<CoreTicks> {
    let stat = std::fs::read_to_string("/proc/stat").context("read /proc/stat")?;
    let name = format!("cpu{core}");
    let line = stat
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name.as_str()))
        .with_context(|| format!("no {name} in /proc/stat"))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal ...
    let all: u64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    Ok(CoreTicks {
        busy: all.saturating_sub(idle),
        all,
    })
}

/// An iptables DROP rule whose counters measure what arrives.
struct Sink {
    ns_name: String,
    spec: Vec<String>,
}

fn drop_rule(ns: &Netns, field: &str, addr: &str, dport: u16) -> anyhow::Result<Sink> {
    let mut spec: Vec<String> = vec!["-p".into(), "udp".into(), field.into(), addr.into()];
    if dport != 0 {
        spec.extend(["--dport".into(), dport.to_string()]);
    }
    spec.extend(["-j".into(), "DROP".into()]);
    let mut cmd = vec!["iptables", "-w", "-A", "INPUT"];
    cmd.extend(spec.iter().map(String::as_str));
    ns.exec(&cmd)
        .context("iptables (apt-get install iptables)")?;
    Ok(Sink {
        ns_name: ns.name().to_owned(),
        spec,
    })
}

trait SinkCount: Sized {
    fn read(sink: &Sink) -> anyhow::Result<Self>;
    fn minus(self, before: Self) -> Self;
}

/// Bytes only (the decrypting direction counts inner packets: bytes are what matter).
impl SinkCount for u64 {
    fn read(sink: &Sink) -> anyhow::Result<u64> {
        Ok(<(u64, u64)>::read(sink)?.1)
    }
    fn minus(self, before: u64) -> u64 {
        self.saturating_sub(before)
    }
}

/// Packets and bytes.
impl SinkCount for (u64, u64) {
    fn read(sink: &Sink) -> anyhow::Result<(u64, u64)> {
        // `iptables -C` cannot print counters; `-L -v -x` lists the INPUT chain with them, and
        // the rule is the only DROP there.
        let out = std::process::Command::new("ip")
            .args([
                "netns",
                "exec",
                &sink.ns_name,
                "iptables",
                "-w",
                "-L",
                "INPUT",
            ])
            .args(["-n", "-v", "-x"])
            .output()
            .context("iptables -L")?;
        let text = String::from_utf8_lossy(&out.stdout);
        let line = text
            .lines()
            .find(|l| l.split_whitespace().nth(2) == Some("DROP"))
            .with_context(|| format!("no DROP rule {:?} in: {text}", sink.spec))?;
        let mut f = line.split_whitespace();
        let packets = f.next().and_then(|v| v.parse().ok()).context("packets")?;
        let bytes = f.next().and_then(|v| v.parse().ok()).context("bytes")?;
        Ok((packets, bytes))
    }
    fn minus(self, before: (u64, u64)) -> (u64, u64) {
        (
            self.0.saturating_sub(before.0),
            self.1.saturating_sub(before.1),
        )
    }
}

/// The hub's part: boringtun with the hub's key, on the hub's address and port.
struct Hub {
    tunn: Tunn,
    socket: UdpSocket,
}

impl Hub {
    /// Binds the hub's address and port, makes a handshake with the gateway at `endpoint`.
    fn connect(tb: &Testbed, endpoint: SocketAddr) -> anyhow::Result<Hub> {
        let key = |b64: &str| -> anyhow::Result<[u8; 32]> {
            base64::engine::general_purpose::STANDARD
                .decode(b64)
                .ok()
                .and_then(|v| v.try_into().ok())
                .context("a 32-byte base64 key")
        };
        let psk = tb.psk.as_deref().map(key).transpose()?;
        let mut tunn = Tunn::new(
            StaticSecret::from(key(&tb.hub_key.private)?),
            PublicKey::from(key(&tb.gw_key.public)?),
            psk,
            None,
            1,
            None,
        );
        let socket = tb.hub_ns.enter(|| -> io::Result<UdpSocket> {
            // The old hub's socket may linger for a moment after its process ended.
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                match UdpSocket::bind((HUB_LAN_IP, HUB_PORT)) {
                    Ok(s) => return Ok(s),
                    Err(e) if Instant::now() < deadline && e.kind() == io::ErrorKind::AddrInUse => {
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    Err(e) => return Err(e),
                }
            }
        })??;
        socket.connect(endpoint)?;
        socket.set_read_timeout(Some(Duration::from_millis(500)))?;
        let mut buf = vec![0u8; 2048];
        let mut answer = vec![0u8; 2048];
        let deadline = Instant::now() + HANDSHAKE_TIMEOUT;
        'handshake: while Instant::now() < deadline {
            if let TunnResult::WriteToNetwork(p) = tunn.format_handshake_initiation(&mut buf, true)
            {
                socket.send(p)?;
            }
            let wait = Instant::now() + Duration::from_secs(2);
            while Instant::now() < wait {
                let n = match socket.recv(&mut answer) {
                    Ok(n) => n,
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                        ) =>
                    {
                        continue
                    }
                    Err(e) => return Err(e.into()),
                };
                // Only the handshake response matters (type 2); the gateway's keepalives for
                // the old hub's session are not ours to read.
                if answer.first() != Some(&2) {
                    continue;
                }
                let mut r = tunn.decapsulate(None, &answer[..n], &mut buf);
                while let TunnResult::WriteToNetwork(p) = r {
                    socket.send(p)?;
                    r = tunn.decapsulate(None, &[], &mut buf);
                }
                if tunn.time_since_last_handshake().is_some() {
                    break 'handshake;
                }
            }
        }
        if tunn.time_since_last_handshake().is_none() {
            bail!("no handshake with the gateway at {endpoint} within {HANDSHAKE_TIMEOUT:?}");
        }
        socket.set_nonblocking(true)?;
        Ok(Hub { tunn, socket })
    }

    /// `megabytes` of encrypted 1,420-byte IPv4/UDP packets from the hub's tunnel address to
    /// the gateway's [`SINK_PORT`], in sending order (counters ascending).
    fn encrypt_load(&mut self, megabytes: usize) -> anyhow::Result<Batch> {
        let packet = udp_packet(
            HUB_TUNNEL_IP,
            GW_TUNNEL_IP,
            SINK_PORT,
            usize::from(TUNNEL_MTU),
        );
        let stride = packet.len() + WG_OVERHEAD;
        let count = megabytes * 1_000_000 / stride;
        let mut data = vec![0u8; count * stride];
        for slot in data.chunks_exact_mut(stride) {
            match self.tunn.encapsulate(&packet, slot) {
                TunnResult::WriteToNetwork(out) if out.len() == stride => {}
                TunnResult::WriteToNetwork(out) => {
                    bail!("a data message of {} bytes, {stride} expected", out.len())
                }
                _ => bail!("no session to encrypt with"),
            }
        }
        Ok(Batch { data, stride })
    }
}

/// Datagrams of one size, back to back.
struct Batch {
    data: Vec<u8>,
    stride: usize,
}

impl Batch {
    fn repeated(payload: &[u8], n: usize) -> Batch {
        Batch {
            data: payload.repeat(n),
            stride: payload.len(),
        }
    }

    fn count(&self) -> usize {
        self.data.len() / self.stride
    }
}

/// Sends every datagram of `batch` once, in order, until `deadline`; returns how many went.
fn send_all(sock: &UdpSocket, batch: &Batch, deadline: Instant) -> io::Result<u64> {
    let mut sent = 0usize;
    while sent < batch.count() && Instant::now() < deadline {
        let n = SEND_BATCH.min(batch.count() - sent);
        let from = sent * batch.stride;
        sent += sendmmsg(
            sock,
            &batch.data[from..from + n * batch.stride],
            batch.stride,
        )?;
    }
    Ok(sent as u64)
}

/// Sends every datagram of `batch` once, in order, in UDP GSO runs of [`GSO_SEGMENTS`], no
/// faster than [`GRO_OFFER_GBIT`], until `deadline`; returns how many datagrams went.
fn send_all_gso(sock: &UdpSocket, batch: &Batch, deadline: Instant) -> io::Result<u64> {
    let started = Instant::now();
    let inner_bits = ((batch.stride - WG_OVERHEAD) * 8) as f64;
    let mut sent = 0usize;
    while sent < batch.count() && Instant::now() < deadline {
        let due = Duration::from_secs_f64(sent as f64 * inner_bits / (GRO_OFFER_GBIT * 1e9));
        if started.elapsed() < due {
            std::hint::spin_loop();
            continue;
        }
        let n = GSO_SEGMENTS.min(batch.count() - sent);
        let from = sent * batch.stride;
        if send_gso(
            sock,
            &batch.data[from..from + n * batch.stride],
            batch.stride,
        )? {
            sent += n;
        }
    }
    Ok(sent as u64)
}

/// One send of `data` on a connected socket, which the kernel cuts into datagrams of `segment`
/// bytes; false when its buffer is full.
fn send_gso(sock: &UdpSocket, data: &[u8], segment: usize) -> io::Result<bool> {
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    // Room for one cmsg with a u16, aligned as a cmsghdr.
    let mut control = [0u64; 4];
    // SAFETY: all-zero is a valid msghdr; CMSG_FIRSTHDR points into `control`, which is large
    // enough for CMSG_SPACE(2) (checked), and the kernel only reads `data` through `iov`.
    let rc = unsafe {
        let space = libc::CMSG_SPACE(2) as usize;
        assert!(space <= std::mem::size_of_val(&control));
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        let c = libc::CMSG_FIRSTHDR(&msg);
        (*c).cmsg_level = libc::SOL_UDP;
        (*c).cmsg_type = UDP_SEGMENT;
        (*c).cmsg_len = libc::CMSG_LEN(2) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<u16>(), segment as u16);
        libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_DONTWAIT)
    };
    if rc < 0 {
        let e = io::Error::last_os_error();
        return match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(false),
            io::ErrorKind::ConnectionRefused => Ok(false),
            _ => Err(e),
        };
    }
    Ok(true)
}

/// Sends `batch` over and over until `deadline`; returns how many datagrams went.
fn send_repeated(sock: &UdpSocket, batch: &Batch, deadline: Instant) -> io::Result<u64> {
    let mut sent = 0u64;
    while Instant::now() < deadline {
        sent += sendmmsg(sock, &batch.data, batch.stride)? as u64;
    }
    Ok(sent)
}

/// One `sendmmsg` of the datagrams in `data` (each `stride` bytes) on a connected socket;
/// returns how many the kernel took (0 when its buffer is full).
fn sendmmsg(sock: &UdpSocket, data: &[u8], stride: usize) -> io::Result<usize> {
    let mut iov: Vec<libc::iovec> = data
        .chunks(stride)
        .map(|c| libc::iovec {
            iov_base: c.as_ptr() as *mut libc::c_void,
            iov_len: c.len(),
        })
        .collect();
    let mut msgs: Vec<libc::mmsghdr> = iov
        .iter_mut()
        .map(|v| {
            // SAFETY: all-zero is a valid msghdr (no address, no control data).
            let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
            m.msg_hdr.msg_iov = v;
            m.msg_hdr.msg_iovlen = 1;
            m
        })
        .collect();
    // SAFETY: `msgs` points at `iov`, which points into `data`; all outlive the call, and the
    // kernel only reads them.
    let n = unsafe {
        libc::sendmmsg(
            sock.as_raw_fd(),
            msgs.as_mut_ptr(),
            msgs.len() as libc::c_uint,
            libc::MSG_DONTWAIT,
        )
    };
    if n < 0 {
        let e = io::Error::last_os_error();
        return match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(0),
            // The gateway's ICMP errors (none expected) surface here: not the load's problem.
            io::ErrorKind::ConnectionRefused => Ok(0),
            _ => Err(e),
        };
    }
    Ok(n as usize)
}

/// Pins this process (and the threads it starts later) to `core`.
fn pin_self(core: usize) -> anyhow::Result<()> {
    // SAFETY: a zeroed cpu_set_t is an empty set; CPU_SET and sched_setaffinity only read and
    // write that set.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(core, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if rc != 0 {
        bail!("sched_setaffinity: {}", io::Error::last_os_error());
    }
    Ok(())
}

/// An IPv4/UDP packet of `len` bytes from `src` to `dst:port`, checksums filled in.
fn udp_packet(src: Ipv4Addr, dst: Ipv4Addr, port: u16, len: usize) -> Vec<u8> {
    let mut p = vec![0u8; len];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
    p[6] = 0x40; // don't fragment
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.octets());
    let header = checksum(&[&p[..20]], 0);
    p[10..12].copy_from_slice(&header.to_be_bytes());
    let udp_len = (len - 20) as u16;
    p[20..22].copy_from_slice(&40_000u16.to_be_bytes());
    p[22..24].copy_from_slice(&port.to_be_bytes());
    p[24..26].copy_from_slice(&udp_len.to_be_bytes());
    for (i, b) in p[28..].iter_mut().enumerate() {
        *b = i as u8;
    }
    let pseudo = u32::from(u16::from_be_bytes([p[12], p[13]]))
        + u32::from(u16::from_be_bytes([p[14], p[15]]))
        + u32::from(u16::from_be_bytes([p[16], p[17]]))
        + u32::from(u16::from_be_bytes([p[18], p[19]]))
        + 17
        + u32::from(udp_len);
    let sum = checksum(&[&p[20..]], pseudo);
    p[26..28].copy_from_slice(&(if sum == 0 { 0xffff } else { sum }).to_be_bytes());
    p
}

/// The Internet checksum of `parts` (each of even length but the last), starting from `sum`.
fn checksum(parts: &[&[u8]], mut sum: u32) -> u16 {
    for part in parts {
        let mut chunks = part.chunks_exact(2);
        for c in &mut chunks {
            sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
        }
        if let [last] = chunks.remainder() {
            sum += u32::from(*last) << 8;
        }
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}
