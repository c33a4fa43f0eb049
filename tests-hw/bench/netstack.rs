//! Kernel mode vs userspace (smoltcp) mode of gatelet-agent, in one run (issue 9's measurements;
//! run by hand through `tests-hw/bench/netstack.sh`, as root).
//!
//! For each mode a fresh `Testbed` (wireguard-go hub, the agent as the gateway: root with a TUN
//! device in kernel mode, uid 65534 with no capability and no device in userspace mode) and a LAN
//! namespace behind the gateway (`Lan`). The routes are applied on the agent's control socket as
//! the companion would (no companion runs, so nothing but the measured traffic and the tunnel's
//! own timers wakes the agent): 50 L4 routes and one HTTP route, targets on the LAN host
//! 192.168.50.12. Measured, in this order:
//!
//! 1. RSS idle with the 50 routes (VmRSS, 3 s after they listen);
//! 2. idle wake-ups per second: the sum of voluntary + nonvoluntary context switches of every
//!    thread (`/proc/<pid>/task/*/status`) over `--idle-seconds` (20) with the tunnel up and idle;
//! 3. L4 throughput hub -> LAN: iperf3 through L4 route :7001 to an iperf3 server on the LAN,
//!    each of `-P 1`, `-P 4` and `-P 1 -w 4M` for `--seconds` (10); the best is reported, with
//!    the agent's CPU seconds (utime + stime from `/proc/<pid>/stat`) and Mbit per CPU second;
//! 4. HTTP proxy throughput: GETs of a `--http-mib` (512) MiB body from a server on the LAN
//!    through the agent's proxy (Host: bench.test), 1 and 4 at a time, best reported;
//! 5. RSS with `--conns` (1,000) idle relayed TCP connections (each carried one byte both ways
//!    first) on L4 route :7002 to a holding echo server on the LAN, 15 s after the last opened;
//! 6. one flow with 100 ms added delay on the hub link: a second testbed whose agent reaches the
//!    hub through a UDP relay on the hub's veth address that holds every hub -> gateway datagram
//!    for `--delay-ms` (100) ms (this kernel has no `sch_netem`, so tc netem is not available;
//!    the relay plays its part), iperf3 `-P 1` for `max(2 x --seconds, 20)` s.
//!
//! Prints one table with both modes and the ratios userspace/kernel against the targets.

use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use gatelet_agent_api::control::{
    AgentConfig, HttpRoute, L4Route, ListenerState, Request, Response,
};
use gatelet_tests_hw::{
    control_request, cpu_seconds, gc_lines_for, memory_kib, product_binary, require_root,
    wait_until, GatewayRole, Lan, Netns, NetstackMode, Testbed, TestbedOptions, GW_TUNNEL_IP,
    HUB_LAN_IP, HUB_NAME, HUB_PORT, LAN_ECHO_IP,
};

const USAGE: &str = "usage: bench-netstack [--agent PATH] [--seconds N] [--idle-seconds N] \
                     [--conns N] [--http-mib N] [--delay-ms N] [--modes kernel,userspace]";
/// How long the tunnel gets to come up (the delayed one retries its handshake every 5 s).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
/// L4 route to the LAN iperf3 server.
const IPERF_ROUTE_PORT: u16 = 7001;
/// L4 route to the LAN holding echo server (the idle connections).
const HOLD_ROUTE_PORT: u16 = 7002;
/// The other 48 L4 routes (to the holding server), for 50 in all.
const FILLER_ROUTE_FIRST_PORT: u16 = 7100;
const ROUTES: u16 = 50;
/// The iperf3 server on the LAN host.
const LAN_IPERF_PORT: u16 = 5201;
/// The big-body HTTP server on the LAN host.
const LAN_HTTP_PORT: u16 = 8081;
/// The holding echo server on the LAN host.
const LAN_HOLD_PORT: u16 = 9000;
/// The HTTP route's domain.
const BENCH_DOMAIN: &str = "bench.test";
/// The delay relay's port on the hub's veth address.
const RELAY_PORT: u16 = 51821;
/// How long the idle connections are held before their RSS counts.
const IDLE_CONNECTIONS_SETTLE_S: u64 = 15;
/// The targets.
const TARGET_L4_RATIO: f64 = 0.6;
const TARGET_DELAY_RATIO: f64 = 0.8;
const TARGET_RSS_50_KIB: u64 = 6 * 1024;
const TARGET_RSS_CONNS_KIB: u64 = 16 * 1024;

struct Args {
    agent: Option<PathBuf>,
    seconds: u32,
    idle_seconds: u32,
    conns: usize,
    http_mib: u64,
    delay_ms: u64,
    modes: Vec<NetstackMode>,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut a = Args {
        agent: None,
        seconds: 10,
        idle_seconds: 20,
        conns: 1000,
        http_mib: 512,
        delay_ms: 100,
        modes: NetstackMode::ALL.to_vec(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || {
            it.next()
                .with_context(|| format!("{arg} needs a value; {USAGE}"))
        };
        match arg.as_str() {
            "--agent" => a.agent = Some(PathBuf::from(value()?)),
            "--seconds" => a.seconds = value()?.parse()?,
            "--idle-seconds" => a.idle_seconds = value()?.parse()?,
            "--conns" => a.conns = value()?.parse()?,
            "--http-mib" => a.http_mib = value()?.parse()?,
            "--delay-ms" => a.delay_ms = value()?.parse()?,
            "--modes" => {
                a.modes = value()?
                    .split(',')
                    .map(|m| match m {
                        "kernel" => Ok(NetstackMode::Kernel),
                        "userspace" => Ok(NetstackMode::Userspace),
                        other => bail!("unknown mode {other:?}; {USAGE}"),
                    })
                    .collect::<anyhow::Result<_>>()?;
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}; {USAGE}"),
        }
    }
    Ok(a)
}

/// One throughput measurement.
#[derive(Debug, Clone, Default)]
struct Flow {
    setting: String,
    mbit_s: f64,
    /// Length of the run in seconds.
    seconds: f64,
    /// Agent CPU seconds (user + system) over the run.
    cpu_s: f64,
    /// Why the number is incomplete or missing, if it is.
    note: Option<String>,
}

impl Flow {
    /// A measurement that failed: no number, the reason.
    fn failed(setting: &str, e: &anyhow::Error) -> Flow {
        Flow {
            setting: setting.into(),
            mbit_s: f64::NAN,
            note: Some(format!("{e:#}")),
            ..Flow::default()
        }
    }

    /// Mbit carried per second of agent CPU time.
    fn per_cpu_s(&self) -> f64 {
        if self.cpu_s > 0.0 {
            self.mbit_s * self.seconds / self.cpu_s
        } else {
            f64::NAN
        }
    }
}

#[derive(Debug, Default)]
struct Row {
    rss_50_kib: u64,
    wakeups_per_s: f64,
    l4: Flow,
    l4_tried: Vec<Flow>,
    l4_reverse: Flow,
    idle_threads: Vec<(String, u64)>,
    http: Flow,
    http_tried: Vec<Flow>,
    rss_conns_kib: u64,
    delayed: Flow,
    /// Measurements that failed, and why.
    errors: Vec<String>,
}

fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    require_root()?;
    raise_nofile_limit();
    let agent = match &args.agent {
        Some(p) => p.clone(),
        None => product_binary("gatelet-agent")?,
    };
    let agent_desc = describe_binary(&agent);
    eprintln!("agent: {} ({agent_desc})", agent.display());
    let mut rows = Vec::new();
    for &mode in &args.modes {
        eprintln!("== {mode} mode");
        let row = measure_mode(mode, &agent, &args).with_context(|| format!("{mode} mode"))?;
        rows.push((mode, row));
    }
    print_table(&args, &agent, &agent_desc, &rows);
    Ok(())
}

fn measure_mode(mode: NetstackMode, agent: &std::path::Path, args: &Args) -> anyhow::Result<Row> {
    let mut row = Row::default();
    {
        let tb = start_testbed(mode, agent, None)?;
        let lan = Lan::start(&tb.gw_ns)?;
        tb.wait_handshake(None, HANDSHAKE_TIMEOUT)
            .map_err(|e| anyhow::anyhow!("{e}\n{}", agent_log(&tb)))?;
        let servers = LanServers::start(&lan.ns, args.http_mib)?;
        apply(&tb, &bench_config())?;
        let pid = tb.agent()?.pid();

        thread::sleep(Duration::from_secs(3));
        row.rss_50_kib = memory_kib(pid)?.1;
        eprintln!(
            "  RSS idle with {ROUTES} routes: {} KiB; {}",
            row.rss_50_kib,
            smaps_summary(pid)
        );

        let before = context_switches(pid)?;
        let t = Instant::now();
        thread::sleep(Duration::from_secs(args.idle_seconds.into()));
        let after = context_switches(pid)?;
        let secs = t.elapsed().as_secs_f64();
        row.idle_threads = after
            .iter()
            .map(|(name, n)| {
                let was = before
                    .iter()
                    .find(|(b, _)| b == name)
                    .map_or(0, |(_, v)| *v);
                (name.clone(), n.saturating_sub(was))
            })
            .collect();
        let total: u64 = row.idle_threads.iter().map(|(_, n)| n).sum();
        row.wakeups_per_s = total as f64 / secs;
        eprintln!(
            "  idle wake-ups: {:.2}/s ({})",
            row.wakeups_per_s,
            threads(&row.idle_threads)
        );

        for setting in [&["-P", "1"][..], &["-P", "4"], &["-P", "1", "-w", "4M"]] {
            let f = iperf(&tb, pid, setting, args.seconds)
                .unwrap_or_else(|e| Flow::failed(&setting.join(" "), &e));
            eprintln!(
                "  L4 {}: {:.0} Mbit/s, {:.2} CPU s",
                f.setting, f.mbit_s, f.cpu_s
            );
            row.l4_tried.push(f);
        }
        row.l4 = best(&row.l4_tried);
        row.l4_reverse = iperf(&tb, pid, &["-P", "1", "-R"], args.seconds)
            .unwrap_or_else(|e| Flow::failed("-P 1 -R", &e));
        eprintln!(
            "  L4 LAN -> hub {}: {:.0} Mbit/s, {:.2} CPU s",
            row.l4_reverse.setting, row.l4_reverse.mbit_s, row.l4_reverse.cpu_s
        );

        for parallel in [1usize, 4] {
            let f = http_get(&tb, pid, parallel, args.http_mib, args.seconds)
                .unwrap_or_else(|e| Flow::failed(&format!("{parallel} x GET"), &e));
            eprintln!(
                "  HTTP {}: {:.0} Mbit/s, {:.2} CPU s{}",
                f.setting,
                f.mbit_s,
                f.cpu_s,
                f.note
                    .as_deref()
                    .map(|n| format!(" ({n})"))
                    .unwrap_or_default()
            );
            row.http_tried.push(f);
        }
        row.http = best(&row.http_tried);

        match idle_connections(&tb, pid, args.conns) {
            Ok(kib) => row.rss_conns_kib = kib,
            Err(e) => row
                .errors
                .push(format!("{} idle connections: {e:#}", args.conns)),
        }
        eprintln!(
            "  RSS with {} idle relayed connections: {} KiB",
            args.conns, row.rss_conns_kib
        );
        drop(servers);
    }
    {
        let relay_addr = SocketAddr::from((HUB_LAN_IP, RELAY_PORT));
        let tb = start_testbed(mode, agent, Some(relay_addr))?;
        let relay = DelayRelay::start(
            &tb.hub_ns,
            relay_addr,
            SocketAddr::from((HUB_LAN_IP, HUB_PORT)),
            Duration::from_millis(args.delay_ms),
        )?;
        let lan = Lan::start(&tb.gw_ns)?;
        tb.wait_handshake(None, HANDSHAKE_TIMEOUT)
            .map_err(|e| anyhow::anyhow!("{e}\n{}", agent_log(&tb)))?;
        let _servers = LanServers::start(&lan.ns, 1)?;
        apply(&tb, &bench_config())?;
        let pid = tb.agent()?.pid();
        let seconds = (2 * args.seconds).max(20);
        row.delayed =
            iperf(&tb, pid, &["-P", "1"], seconds).unwrap_or_else(|e| Flow::failed("-P 1", &e));
        eprintln!(
            "  one flow, +{} ms: {:.0} Mbit/s ({} datagrams delayed)",
            args.delay_ms,
            row.delayed.mbit_s,
            relay.delayed()
        );
    }
    Ok(row)
}

fn start_testbed(
    mode: NetstackMode,
    agent: &std::path::Path,
    endpoint: Option<SocketAddr>,
) -> anyhow::Result<Testbed> {
    let options = TestbedOptions {
        agent_env_extra: gc_lines_for(mode)?,
        mode,
        agent_endpoint: endpoint.map(|a| format!("{HUB_NAME}:{}", a.port())),
        ..TestbedOptions::default()
    };
    Ok(Testbed::start_with(
        &GatewayRole::Agent(agent.to_owned()),
        &options,
    )?)
}

fn agent_log(tb: &Testbed) -> String {
    tb.agent().map(|a| a.log()).unwrap_or_default()
}

/// 50 L4 routes (:7001 to iperf3, :7002 and 48 more to the holding server) and the HTTP route.
fn bench_config() -> AgentConfig {
    let l4 = |id: u64, listen_port: u16, target_port: u16| L4Route {
        id,
        listen_port,
        target_host: LAN_ECHO_IP.to_string(),
        target_port,
        wol: None,
    };
    let mut l4_routes = vec![
        l4(1, IPERF_ROUTE_PORT, LAN_IPERF_PORT),
        l4(2, HOLD_ROUTE_PORT, LAN_HOLD_PORT),
    ];
    for i in 0..ROUTES - 2 {
        l4_routes.push(l4(
            u64::from(i) + 3,
            FILLER_ROUTE_FIRST_PORT + i,
            LAN_HOLD_PORT,
        ));
    }
    AgentConfig {
        egress_routes: Vec::new(),
        config_hash: Some("bench-netstack".into()),
        http_routes: vec![HttpRoute {
            id: 100,
            domain: BENCH_DOMAIN.into(),
            target_host: LAN_ECHO_IP.to_string(),
            target_port: LAN_HTTP_PORT,
            backend_https: false,
            wol: None,
        }],
        l4_routes,
    }
}

/// Applies `config` on the control socket and waits until every route listens.
fn apply(tb: &Testbed, config: &AgentConfig) -> anyhow::Result<()> {
    let agent = tb.agent()?;
    let answer = control_request(
        agent.socket(),
        &Request::Apply {
            config: config.clone(),
        },
    )?;
    if let Response::Error { message } = answer {
        bail!("the agent refused the bench routes: {message}");
    }
    wait_until(
        "every bench route to listen",
        Duration::from_secs(15),
        || {
            let s = agent.status()?;
            let listening = s
                .routes
                .iter()
                .filter(|r| r.tcp == ListenerState::Listening)
                .count();
            let proxy = s.http_proxy == Some(ListenerState::Listening);
            Ok::<_, anyhow::Error>(
                (listening == config.l4_routes.len() + config.http_routes.len() && proxy)
                    .then_some(()),
            )
        },
    )
    .map_err(|e| anyhow::anyhow!("{e}\n{}", agent.log()))
}

/// The fastest complete run; else the first (with its note).
fn best(tried: &[Flow]) -> Flow {
    tried
        .iter()
        .filter(|f| f.mbit_s.is_finite() && f.note.is_none())
        .max_by(|a, b| a.mbit_s.total_cmp(&b.mbit_s))
        .or_else(|| tried.first())
        .cloned()
        .unwrap_or_default()
}

/// `name n, name n, ...`, busiest first, threads with no switch left out.
fn threads(list: &[(String, u64)]) -> String {
    let mut v: Vec<&(String, u64)> = list.iter().filter(|(_, n)| *n > 0).collect();
    v.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
    v.iter()
        .map(|(name, n)| format!("{name} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// iperf3 from the hub through L4 route :7001 with `setting` for `seconds`.
fn iperf(tb: &Testbed, pid: u32, setting: &[&str], seconds: u32) -> anyhow::Result<Flow> {
    let target = GW_TUNNEL_IP.to_string();
    let port = IPERF_ROUTE_PORT.to_string();
    let secs = seconds.to_string();
    let mut cmd = vec![
        "iperf3",
        "-c",
        &target,
        "-p",
        &port,
        "-t",
        &secs,
        "-J",
        "--connect-timeout",
        "5000",
    ];
    cmd.extend_from_slice(setting);
    let cpu0 = cpu_seconds(pid)?;
    let out = tb.hub_ns.exec(&cmd)?;
    let cpu = cpu_seconds(pid)? - cpu0;
    let v: serde_json::Value = serde_json::from_str(&out).context("iperf3 -J output")?;
    let bps = v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .with_context(|| format!("no end.sum_received.bits_per_second: {out}"))?;
    Ok(Flow {
        setting: format!("iperf3 {}", setting.join(" ")),
        mbit_s: bps / 1e6,
        seconds: seconds.into(),
        cpu_s: cpu,
        note: None,
    })
}

/// `parallel` GETs of `mib` MiB each through the HTTP proxy, from the hub, at the same time;
/// each may take at most `6 x seconds` (at least 60 s): a slower one is cut and the bytes that
/// came count, with a note.
fn http_get(
    tb: &Testbed,
    pid: u32,
    parallel: usize,
    mib: u64,
    seconds: u32,
) -> anyhow::Result<Flow> {
    let url = format!("http://{GW_TUNNEL_IP}:{}/big", proxy_port()?);
    let host = format!("Host: {BENCH_DOMAIN}");
    let max_time = (6 * seconds).max(60).to_string();
    let want = mib << 20;
    let cpu0 = cpu_seconds(pid)?;
    let t = Instant::now();
    let results: Vec<anyhow::Result<(u64, Option<String>)>> = thread::scope(|s| {
        let handles: Vec<_> = (0..parallel)
            .map(|_| {
                s.spawn(|| -> anyhow::Result<(u64, Option<String>)> {
                    let mut cmd = tb.hub_ns.command("curl");
                    cmd.args(["-sS", "--max-time", &max_time, "-o", "/dev/null", "-w"])
                        .arg("%{http_code} %{size_download}")
                        .args(["-H", &host, &url]);
                    let out = cmd.output().context("run curl")?;
                    let text = String::from_utf8_lossy(&out.stdout);
                    let mut f = text.split_whitespace();
                    let code = f.next().unwrap_or_default().to_owned();
                    let size: u64 = f.next().unwrap_or_default().parse().unwrap_or(0);
                    if code != "200" && size == 0 {
                        bail!(
                            "GET {url}: status {code:?}: {}",
                            String::from_utf8_lossy(&out.stderr).trim()
                        );
                    }
                    let note = (size != want).then(|| {
                        format!(
                            "incomplete: {size} of {want} bytes in {max_time} s ({})",
                            String::from_utf8_lossy(&out.stderr).trim()
                        )
                    });
                    Ok((size, note))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("curl thread panicked")))
            })
            .collect()
    });
    let elapsed = t.elapsed().as_secs_f64();
    let cpu = cpu_seconds(pid)? - cpu0;
    let mut bytes = 0;
    let mut note = None;
    for r in results {
        let (b, n) = r?;
        bytes += b;
        note = note.or(n);
    }
    Ok(Flow {
        setting: format!("{parallel} x GET {mib} MiB"),
        mbit_s: bytes as f64 * 8.0 / elapsed / 1e6,
        seconds: elapsed,
        cpu_s: cpu,
        note,
    })
}

fn proxy_port() -> anyhow::Result<u16> {
    Ok(gatelet_tests_hw::fixture_port("GC_PROXY_PORT")?)
}

/// Opens `n` connections from the hub to route :7002, one byte both ways each, holds them all
/// and returns the agent's VmRSS 3 s later.
fn idle_connections(tb: &Testbed, pid: u32, n: usize) -> anyhow::Result<u64> {
    let to = SocketAddr::from((GW_TUNNEL_IP, HOLD_ROUTE_PORT));
    let conns = tb.hub_ns.enter(|| -> anyhow::Result<Vec<TcpStream>> {
        let mut v = Vec::with_capacity(n);
        for i in 0..n {
            let mut c = TcpStream::connect_timeout(&to, Duration::from_secs(5))
                .with_context(|| format!("connection {i} to {to}"))?;
            c.set_read_timeout(Some(Duration::from_secs(5)))?;
            c.write_all(b"x")?;
            let mut b = [0u8; 1];
            c.read_exact(&mut b)
                .with_context(|| format!("echo on connection {i}"))?;
            v.push(c);
        }
        Ok(v)
    })??;
    // The userspace stack gives drained rings back on its timer tick: the later sample counts
    // (the earlier one is printed, to show the difference).
    thread::sleep(Duration::from_secs(3));
    let early = memory_kib(pid)?.1;
    thread::sleep(Duration::from_secs(IDLE_CONNECTIONS_SETTLE_S - 3));
    let rss = memory_kib(pid)?.1;
    eprintln!("  RSS with {n} idle connections: {early} KiB after 3 s, {rss} KiB after {IDLE_CONNECTIONS_SETTLE_S} s; {}", smaps_summary(pid));
    let active: u64 = tb
        .agent_status()?
        .routes
        .iter()
        .filter(|r| r.listen_port == Some(HOLD_ROUTE_PORT))
        .map(|r| r.active_connections)
        .sum();
    if active < n as u64 {
        bail!("the agent reports {active} connections on :{HOLD_ROUTE_PORT}, not {n}");
    }
    drop(conns);
    Ok(rss)
}

/// The LAN host's servers: iperf3, a big-body HTTP server and a holding echo server.
struct LanServers {
    _iperf: gatelet_tests_hw::Process,
    stop: Arc<AtomicBool>,
}

impl LanServers {
    fn start(ns: &Netns, http_mib: u64) -> anyhow::Result<LanServers> {
        let mut cmd = ns.command("iperf3");
        cmd.args(["-s", "-B", &LAN_ECHO_IP.to_string(), "-p"])
            .arg(LAN_IPERF_PORT.to_string());
        let iperf = ns.spawn("iperf3-server", cmd)?;
        let stop = Arc::new(AtomicBool::new(false));
        let (http, hold) = ns.enter(|| {
            (
                TcpListener::bind((LAN_ECHO_IP, LAN_HTTP_PORT)),
                TcpListener::bind((LAN_ECHO_IP, LAN_HOLD_PORT)),
            )
        })?;
        let (http, hold) = (http?, hold?);
        for l in [&http, &hold] {
            l.set_nonblocking(true)?;
        }
        let body = http_mib << 20;
        serve(http, stop.clone(), move |c| serve_big_body(c, body));
        serve(hold, stop.clone(), hold_echo);
        wait_until("iperf3 on the LAN", Duration::from_secs(10), || {
            Ok::<_, anyhow::Error>(
                ns.enter(|| TcpStream::connect((LAN_ECHO_IP, LAN_IPERF_PORT)).is_ok())?
                    .then_some(()),
            )
        })?;
        Ok(LanServers {
            _iperf: iperf,
            stop,
        })
    }
}

impl Drop for LanServers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Accepts on `l` (non-blocking, polled every 10 ms until `stop`), one small-stack thread per
/// connection running `f`.
fn serve(
    l: TcpListener,
    stop: Arc<AtomicBool>,
    f: impl Fn(TcpStream) + Send + Sync + Copy + 'static,
) {
    thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            match l.accept() {
                Ok((c, _)) => {
                    let _ = c.set_nonblocking(false);
                    let _ = thread::Builder::new()
                        .stack_size(64 * 1024)
                        .spawn(move || f(c));
                }
                Err(_) => thread::sleep(Duration::from_millis(10)),
            }
        }
    });
}

fn serve_big_body(mut c: TcpStream, body: u64) {
    let mut head = Vec::new();
    let mut b = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
        match c.read(&mut b) {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&b[..n]),
        }
    }
    let _ = write!(
        c,
        "HTTP/1.1 200 OK\r\nContent-Length: {body}\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n"
    );
    let chunk = vec![0u8; 256 * 1024];
    let mut left = body;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        if c.write_all(&chunk[..n]).is_err() {
            return;
        }
        left -= n as u64;
    }
}

fn hold_echo(mut c: TcpStream) {
    let mut b = [0u8; 512];
    while let Ok(n) = c.read(&mut b) {
        if n == 0 || c.write_all(&b[..n]).is_err() {
            return;
        }
    }
}

/// A UDP relay in the hub's namespace standing in for netem on the hub's link: datagrams from
/// the gateway go on to the hub at once; the hub's datagrams to the gateway are held `delay`.
struct DelayRelay {
    stop: Arc<AtomicBool>,
    delayed: Arc<std::sync::atomic::AtomicU64>,
}

impl DelayRelay {
    fn start(
        ns: &Netns,
        listen: SocketAddr,
        hub: SocketAddr,
        delay: Duration,
    ) -> anyhow::Result<DelayRelay> {
        let (outer, inner) = ns.enter(|| {
            (
                UdpSocket::bind(listen),
                UdpSocket::bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0))),
            )
        })?;
        let (outer, inner) = (outer?, inner?);
        inner.connect(hub)?;
        for s in [&outer, &inner] {
            s.set_read_timeout(Some(Duration::from_millis(200)))?;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let delayed = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let gateway: Arc<Mutex<Option<SocketAddr>>> = Arc::default();
        let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
        {
            // gateway -> hub, at once
            let (outer, inner, stop, gateway) = (
                outer.try_clone()?,
                inner.try_clone()?,
                stop.clone(),
                gateway.clone(),
            );
            thread::spawn(move || {
                let mut buf = vec![0u8; 65536];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok((n, from)) = outer.recv_from(&mut buf) {
                        *gateway.lock().unwrap_or_else(|p| p.into_inner()) = Some(from);
                        let _ = inner.send(&buf[..n]);
                    }
                }
            });
        }
        {
            // hub -> queue
            let (inner, stop, delayed) = (inner.try_clone()?, stop.clone(), delayed.clone());
            thread::spawn(move || {
                let mut buf = vec![0u8; 65536];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(n) = inner.recv(&mut buf) {
                        delayed.fetch_add(1, Ordering::Relaxed);
                        if tx
                            .send((Instant::now() + delay, buf[..n].to_vec()))
                            .is_err()
                        {
                            return;
                        }
                    }
                }
            });
        }
        {
            // queue -> gateway, when due
            let stop = stop.clone();
            thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let Ok((due, data)) = rx.recv_timeout(Duration::from_millis(200)) else {
                        continue;
                    };
                    let now = Instant::now();
                    if due > now {
                        thread::sleep(due - now);
                    }
                    let to = *gateway.lock().unwrap_or_else(|p| p.into_inner());
                    if let Some(to) = to {
                        let _ = outer.send_to(&data, to);
                    }
                }
            });
        }
        Ok(DelayRelay { stop, delayed })
    }

    fn delayed(&self) -> u64 {
        self.delayed.load(Ordering::Relaxed)
    }
}

impl Drop for DelayRelay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Voluntary + nonvoluntary context switches of every thread of `pid`, by thread (name and
/// id: `comm` of `/proc/<pid>/task/<tid>`).
fn context_switches(pid: u32) -> anyhow::Result<Vec<(String, u64)>> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let dir = task?.path();
        let Ok(text) = std::fs::read_to_string(dir.join("status")) else {
            continue; // a thread that just ended
        };
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        let tid = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut sum = 0;
        for line in text.lines() {
            if let Some(v) = line
                .strip_prefix("voluntary_ctxt_switches:")
                .or_else(|| line.strip_prefix("nonvoluntary_ctxt_switches:"))
            {
                sum += v.trim().parse::<u64>().context("ctxt_switches")?;
            }
        }
        out.push((format!("{}/{tid}", comm.trim()), sum));
    }
    Ok(out)
}

/// Where the resident memory of `pid` is, from `/proc/<pid>/smaps`: the binary, the heap,
/// anonymous mappings by size (the userspace stack's rings are mappings of their own), the rest.
fn smaps_summary(pid: u32) -> String {
    let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/smaps")) else {
        return "no smaps".into();
    };
    let mut groups: std::collections::BTreeMap<String, (u32, u64)> = Default::default();
    let mut current = String::new();
    for line in text.lines() {
        let mut f = line.split_whitespace();
        let first = f.next().unwrap_or_default();
        if first.contains('-') && !first.ends_with(':') {
            let (lo, hi) = first.split_once('-').unwrap_or_default();
            let size =
                u64::from_str_radix(hi, 16).unwrap_or(0) - u64::from_str_radix(lo, 16).unwrap_or(0);
            let name = line.split_whitespace().nth(5).unwrap_or("");
            current = match name {
                "" => format!("anon {} KiB maps", size / 1024),
                n if n.starts_with('[') => n.to_owned(),
                _ => "file-backed".to_owned(),
            };
        } else if first == "Rss:" {
            let kib: u64 = f.next().and_then(|v| v.parse().ok()).unwrap_or(0);
            let e = groups.entry(current.clone()).or_default();
            e.0 += 1;
            e.1 += kib;
        }
    }
    let mut v: Vec<_> = groups
        .into_iter()
        .filter(|(_, (_, kib))| *kib > 0)
        .collect();
    v.sort_by_key(|(_, (_, kib))| std::cmp::Reverse(*kib));
    v.iter()
        .take(6)
        .map(|(name, (count, kib))| format!("{name} x{count}: {kib} KiB"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn raise_nofile_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit get a valid pointer to a local rlimit.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// `file`'s description of the binary (static or dynamic, stripped), or why not.
fn describe_binary(path: &std::path::Path) -> String {
    std::process::Command::new("file")
        .arg("-b")
        .arg(path)
        .output()
        .map(|o| {
            let t = String::from_utf8_lossy(&o.stdout).trim().to_owned();
            t.split(", ")
                .filter(|p| p.contains("linked") || p.contains("stripped") || p.starts_with("ELF"))
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_else(|e| format!("file: {e}"))
}

fn print_table(args: &Args, agent: &std::path::Path, desc: &str, rows: &[(NetstackMode, Row)]) {
    println!();
    println!("gatelet-agent {} ({desc})", agent.display());
    println!(
        "{:<44} {:>16} {:>16} {:>8}  target",
        "measurement", "kernel", "userspace", "u/k"
    );
    let get = |m: NetstackMode| rows.iter().find(|(mode, _)| *mode == m).map(|(_, r)| r);
    let (k, u) = (get(NetstackMode::Kernel), get(NetstackMode::Userspace));
    let line = |name: &str, f: &dyn Fn(&Row) -> f64, fmt: &dyn Fn(f64) -> String, target: &str| {
        let kv = k.map(f);
        let uv = u.map(f);
        let ratio = match (kv, uv) {
            (Some(a), Some(b)) if a > 0.0 && b.is_finite() => format!("{:.2}", b / a),
            _ => "-".into(),
        };
        let show = |v: Option<f64>| match v {
            None => "-".to_owned(),
            Some(v) if !v.is_finite() => "failed".to_owned(),
            Some(v) => fmt(v),
        };
        println!(
            "{name:<44} {:>16} {:>16} {ratio:>8}  {target}",
            show(kv),
            show(uv)
        );
    };
    let mbit = |v: f64| format!("{v:.0} Mbit/s");
    let per_cpu = |v: f64| format!("{v:.0} Mbit/CPU-s");
    let kib = |v: f64| format!("{:.2} MiB", v / 1024.0);
    line(
        "L4 hub -> LAN, best setting",
        &|r| r.l4.mbit_s,
        &mbit,
        &format!("u/k >= {TARGET_L4_RATIO}"),
    );
    line(
        "  per agent CPU second",
        &|r| r.l4.per_cpu_s(),
        &per_cpu,
        "",
    );
    line(
        "L4 LAN -> hub (iperf3 -R), one flow",
        &|r| r.l4_reverse.mbit_s,
        &mbit,
        "",
    );
    line(
        "  per agent CPU second",
        &|r| r.l4_reverse.per_cpu_s(),
        &per_cpu,
        "",
    );
    line(
        "HTTP proxy GET (LAN -> hub), best setting",
        &|r| r.http.mbit_s,
        &mbit,
        "",
    );
    line(
        "  per agent CPU second",
        &|r| r.http.per_cpu_s(),
        &per_cpu,
        "",
    );
    line(
        &format!("one flow, +{} ms on the hub link", args.delay_ms),
        &|r| r.delayed.mbit_s,
        &mbit,
        &format!("u/k >= {TARGET_DELAY_RATIO}"),
    );
    line(
        "  per agent CPU second",
        &|r| r.delayed.per_cpu_s(),
        &per_cpu,
        "",
    );
    line(
        &format!("idle wake-ups/s ({} s)", args.idle_seconds),
        &|r| r.wakeups_per_s,
        &|v| format!("{v:.2}"),
        "0 beyond keepalive/timers",
    );
    line(
        &format!("RSS idle, {ROUTES} routes"),
        &|r| r.rss_50_kib as f64,
        &kib,
        &format!("<= {} MiB", TARGET_RSS_50_KIB / 1024),
    );
    line(
        &format!("RSS, {} idle relayed connections", args.conns),
        &|r| r.rss_conns_kib as f64,
        &kib,
        &format!("<= {} MiB", TARGET_RSS_CONNS_KIB / 1024),
    );
    println!();
    for (mode, r) in rows {
        println!(
            "{mode}: L4 won by {} (tried: {}); HTTP won by {} (tried: {})",
            r.l4.setting,
            tried(&r.l4_tried),
            r.http.setting,
            tried(&r.http_tried)
        );
        println!(
            "{mode}: idle context switches by thread: {}",
            threads(&r.idle_threads)
        );
        let flows = r
            .l4_tried
            .iter()
            .chain(&r.http_tried)
            .chain([&r.l4_reverse, &r.delayed]);
        for f in flows {
            if let Some(n) = &f.note {
                println!("{mode}: {}: {n}", f.setting);
            }
        }
        for e in &r.errors {
            println!("{mode}: FAILED: {e}");
        }
    }
}

fn tried(flows: &[Flow]) -> String {
    flows
        .iter()
        .map(|f| format!("{} {:.0}", f.setting, f.mbit_s))
        .collect::<Vec<_>>()
        .join(", ")
}
