//! Tunnel throughput benchmark (run by hand through `tests-hw/bench/tunnel.sh`, as root).
//!
//! iperf3 TCP for `--seconds` (10) from the hub to the gateway's tunnel IP, with the hub a
//! fixed wireguard-go and the gateway played in turn by gatelet-agent (built with each
//! `--agent-profile`, default `release`), wireguard-go and boringtun-cli. Prints Gbit/s per
//! gateway, the gateway process's CPU use, the ratios agent/boringtun-cli and
//! agent/wireguard-go, and the agent's VmHWM/VmRSS under that load. With `--runs N` every
//! gateway is measured N times, interleaved, and the median is reported. `--hub boringtun-cli`
//! swaps the hub's implementation, to check whether the hub limits the numbers; `--reverse`
//! measures the other direction (gateway -> hub, iperf3 -R), where the gateway encrypts.
//!
//! Baselines run at every setting worth trying (wireguard-go with its default GOMAXPROCS and
//! with 1; boringtun-cli with its default 4 threads, 1 and 2) and are compared at their best,
//! which is printed. `Gbit/s/core` is the gateway's own cost, throughput per core-second of
//! its CPU time: the figure that carries to a router when the hub is the bottleneck here.
//! `--agent-bin LABEL=PATH` adds an agent built elsewhere (another commit) to the same run.
//!
//! `--pin` (on a machine with two cores or more) pins the gateway process, all its threads, to
//! core 0 and the hub, the iperf3 client and the iperf3 server to core 1 (`taskset`), so the
//! gateway never competes with its load for a core; it makes `--runs` default to 5. Every row
//! carries the spread (lowest-highest of the runs) next to the median, and a ratio between two
//! gateways is claimed only when their spreads do not overlap (`overlap: not claimed`
//! otherwise): agents against each baseline's best setting, and every agent against the first
//! (A/B with `--agent-bin`).
//!
//! `--agent-threads 1,2` measures every agent once per data-path thread count
//! (`GATELET_DATAPATH_THREADS`; an agent that predates the key ignores it with a warning).
//! Pinned, the threads share the gateway's one core (the cost of the split); unpinned they may
//! use both cores, which the hub and iperf3 then share with them. `--bidir` runs iperf3
//! `--bidir` (both directions at once) and reports the sum.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use gatelet_tests_hw::{
    build, cpu_seconds, memory_kib, require_root, wait_until, Gateway, GatewayRole, Spread,
    Testbed, TestbedOptions, WgImpl, GW_TUNNEL_IP,
};

const USAGE: &str = "usage: bench-tunnel --boringtun PATH [--agent-profile P]... [--seconds N] \
                     [--agent-bin LABEL=PATH]... [--runs N] \
                     [--only agent|wireguard-go|boringtun-cli] \
                     [--hub wireguard-go|boringtun-cli] [--reverse] [--bidir] [--pin] \
                     [--agent-threads N[,N]...]";
/// iperf3's default port.
const IPERF_PORT: u16 = 5201;
/// How long a gateway gets to complete its first handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(20);
/// How often the agent's memory is sampled during the run.
const MEMORY_SAMPLE_INTERVAL: Duration = Duration::from_millis(200);
/// Targets from the issue.
const TARGET_VS_BORINGTUN: f64 = 1.0;
const TARGET_VS_WIREGUARD_GO: f64 = 1.5;
const TARGET_RSS_KIB: u64 = 8 * 1024;

struct Args {
    boringtun: PathBuf,
    agent_profiles: Vec<String>,
    /// Agent binaries built elsewhere (another commit), measured in the same run: A/B tests.
    agent_bins: Vec<(String, PathBuf)>,
    seconds: u32,
    runs: u32,
    only: Option<String>,
    hub: String,
    reverse: bool,
    /// iperf3 `--bidir`: both directions at once.
    bidir: bool,
    /// Gateway on core 0, hub and iperf3 on core 1.
    pin: bool,
    /// `GATELET_DATAPATH_THREADS` values each agent is measured with; empty: not set.
    agent_threads: Vec<String>,
}

/// The core the gateway is pinned to with `--pin`, and the one its load gets.
const GATEWAY_CORE: &str = "0";
const LOAD_CORE: &str = "1";
/// Runs per gateway with `--pin` unless `--runs` says otherwise.
const PINNED_RUNS: u32 = 5;

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        boringtun: std::env::var_os("BORINGTUN_CLI")
            .map(PathBuf::from)
            .unwrap_or_default(),
        agent_profiles: Vec::new(),
        agent_bins: Vec::new(),
        seconds: 10,
        runs: 0,
        only: None,
        hub: "wireguard-go".into(),
        reverse: false,
        bidir: false,
        pin: false,
        agent_threads: Vec::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = || {
            it.next()
                .with_context(|| format!("{a} needs a value; {USAGE}"))
        };
        match a.as_str() {
            "--boringtun" => args.boringtun = value()?.into(),
            "--agent-profile" => args.agent_profiles.push(value()?),
            "--agent-bin" => {
                let v = value()?;
                let (label, path) = v
                    .split_once('=')
                    .with_context(|| format!("--agent-bin takes LABEL=PATH, got {v:?}"))?;
                args.agent_bins.push((label.into(), path.into()));
            }
            "--seconds" => args.seconds = value()?.parse().context("--seconds")?,
            "--runs" => {
                args.runs = value()?.parse().context("--runs")?;
                if args.runs == 0 {
                    bail!("--runs must be at least 1");
                }
            }
            "--only" => args.only = Some(value()?),
            "--hub" => args.hub = value()?,
            "--reverse" => args.reverse = true,
            "--bidir" => args.bidir = true,
            "--agent-threads" => {
                args.agent_threads = value()?.split(',').map(str::to_owned).collect();
            }
            "--pin" => args.pin = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}; {USAGE}"),
        }
    }
    if args.agent_profiles.is_empty() {
        args.agent_profiles.push("release".into());
    }
    if args.seconds == 0 {
        bail!("--seconds must be at least 1");
    }
    if args.runs == 0 {
        args.runs = if args.pin { PINNED_RUNS } else { 1 };
    }
    if args.reverse && args.bidir {
        bail!("--reverse and --bidir exclude each other");
    }
    if args.pin && std::thread::available_parallelism().map_or(1, |n| n.get()) < 2 {
        bail!("--pin needs two cores (the gateway on one, its load on the other)");
    }
    Ok(args)
}

/// One gateway to measure.
struct Contender {
    label: String,
    role: GatewayRole,
    is_agent: bool,
    /// Further gateway.env lines (agents only).
    env: Vec<(String, String)>,
}

/// What one run of one contender measured.
#[derive(Clone, Copy, Default)]
struct Sample {
    gbit_s: f64,
    /// CPU time of the gateway process over the run, in percent of one core.
    cpu_pct: f64,
    /// The same for the hub's wireguard-go (to see which side is the bottleneck).
    hub_cpu_pct: f64,
    /// Peak and last resident memory in KiB (agent only).
    hwm_kib: u64,
    rss_kib: u64,
}

fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    require_root()?;
    let wanted = |label: &str| args.only.as_deref().is_none_or(|o| label.contains(o));
    let mut agents = Vec::new();
    for profile in &args.agent_profiles {
        let label = format!("gatelet-agent ({profile})");
        if !wanted(&label) {
            continue;
        }
        let dir = build(profile, &["gatelet-agent"])?;
        agents.push((label, dir.join("gatelet-agent")));
    }
    for (label, path) in &args.agent_bins {
        agents.push((format!("gatelet-agent ({label})"), path.clone()));
    }
    let mut contenders = Vec::new();
    for (label, path) in agents {
        if args.agent_threads.is_empty() {
            contenders.push(Contender {
                label,
                role: GatewayRole::Agent(path),
                is_agent: true,
                env: Vec::new(),
            });
            continue;
        }
        for t in &args.agent_threads {
            contenders.push(Contender {
                label: format!("{label} t{t}"),
                role: GatewayRole::Agent(path.clone()),
                is_agent: true,
                env: vec![("GATELET_DATAPATH_THREADS".into(), t.clone())],
            });
        }
    }
    if args.boringtun.as_os_str().is_empty() {
        bail!("no boringtun-cli: pass --boringtun PATH or set BORINGTUN_CLI (tunnel.sh does)");
    }
    // Each baseline at every setting worth trying on this machine; it is compared at its best.
    for imp in WgImpl::baselines(&args.boringtun) {
        contenders.push(Contender {
            label: imp.describe(),
            role: GatewayRole::Userspace(imp),
            is_agent: false,
            env: Vec::new(),
        });
    }
    contenders.retain(|c| wanted(&c.label));
    if contenders.is_empty() {
        bail!("--only matches no gateway; {USAGE}");
    }

    let hub = match args.hub.as_str() {
        "wireguard-go" => WgImpl::WIREGUARD_GO,
        "boringtun-cli" => WgImpl::BoringtunCli {
            path: args.boringtun.clone(),
            threads: Some(1),
        },
        other => bail!("unknown hub {other:?}; {USAGE}"),
    };
    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); contenders.len()];
    for run in 1..=args.runs {
        for (i, c) in contenders.iter().enumerate() {
            eprintln!("run {run}/{}: {} ...", args.runs, c.label);
            let s = measure(c, &hub, &args).with_context(|| format!("measuring {}", c.label))?;
            eprintln!(
                "  {:.2} Gbit/s, gateway {:.0}% CPU, hub {:.0}% CPU",
                s.gbit_s, s.cpu_pct, s.hub_cpu_pct
            );
            samples[i].push(s);
        }
    }

    println!();
    println!(
        "iperf3 TCP {} s, hub ({}) {} gateway tunnel IP {GW_TUNNEL_IP}, median of {} run(s) \
         (lowest-highest){}",
        args.seconds,
        hub.describe(),
        if args.bidir {
            "<->"
        } else if args.reverse {
            "<-"
        } else {
            "->"
        },
        args.runs,
        if args.pin {
            format!(", gateway pinned to core {GATEWAY_CORE}, hub and iperf3 to core {LOAD_CORE}")
        } else {
            String::new()
        }
    );
    println!(
        "{:<30} {:>17} {:>9} {:>17} {:>9} {:>10} {:>10}",
        "gateway", "Gbit/s", "gw CPU%", "Gbit/s/core", "hub CPU%", "VmHWM KiB", "VmRSS KiB"
    );
    let stats: Vec<Stats> = samples.iter().map(|s| Stats::of(s)).collect();
    for (c, st) in contenders.iter().zip(&stats) {
        let m = &st.median;
        let mem = |v: u64| {
            if c.is_agent {
                v.to_string()
            } else {
                "-".into()
            }
        };
        println!(
            "{:<30} {:>17} {:>9.0} {:>17} {:>9.0} {:>10} {:>10}",
            c.label,
            st.gbit_s.show(),
            m.cpu_pct,
            st.per_core.show(),
            m.hub_cpu_pct,
            mem(m.hwm_kib),
            mem(m.rss_kib)
        );
    }
    // A baseline's best setting: the one with the highest median throughput.
    let best = |name: &str| {
        contenders
            .iter()
            .zip(&stats)
            .filter(|(c, _)| !c.is_agent && c.label.starts_with(name))
            .max_by(|a, b| a.1.gbit_s.median.total_cmp(&b.1.gbit_s.median))
    };
    println!();
    for name in ["wireguard-go", "boringtun-cli"] {
        if let Some((c, st)) = best(name) {
            println!(
                "{name}: best setting here is `{}` ({:.2} Gbit/s, {:.2} Gbit/s/core)",
                c.label, st.gbit_s.median, st.per_core.median
            );
        }
    }
    let agents: Vec<(&Contender, &Stats)> = contenders
        .iter()
        .zip(&stats)
        .filter(|(c, _)| c.is_agent)
        .collect();
    for &(c, st) in &agents {
        if let Some((_, bt)) = best("boringtun-cli") {
            let r = st.gbit_s.median / bt.gbit_s.median;
            println!(
                "{}: agent/boringtun-cli = {r:.2} (target >= {TARGET_VS_BORINGTUN}) {}",
                c.label,
                verdict(r >= TARGET_VS_BORINGTUN)
            );
        }
        if let Some((_, wg)) = best("wireguard-go") {
            let r = st.gbit_s.median / wg.gbit_s.median;
            println!(
                "{}: agent/wireguard-go  = {r:.2} (target >= {TARGET_VS_WIREGUARD_GO}) {}",
                c.label,
                verdict(r >= TARGET_VS_WIREGUARD_GO)
            );
        }
        for name in ["wireguard-go", "boringtun-cli"] {
            if let Some((b, bst)) = best(name) {
                println!("{}: vs `{}`: {}", c.label, b.label, st.ratios_to(bst));
            }
        }
        println!(
            "{}: memory under load VmHWM {} KiB, VmRSS {} KiB (target <= {TARGET_RSS_KIB} KiB) {}",
            c.label,
            st.median.hwm_kib,
            st.median.rss_kib,
            verdict(st.median.hwm_kib <= TARGET_RSS_KIB)
        );
    }
    // A/B: every further agent against the first one.
    if let Some((&(a, ast), rest)) = agents.split_first() {
        for &(c, st) in rest {
            println!("A/B {} vs {}: {}", c.label, a.label, st.ratios_to(ast));
        }
    }
    Ok(())
}

/// What the runs of one gateway measured: throughput and cost with their spreads, and the
/// run with the median throughput (for CPU and memory columns).
struct Stats {
    gbit_s: Spread,
    per_core: Spread,
    median: Sample,
}

impl Stats {
    /// Throughput and per-core ratios to `other`, each claimed only when the spreads do not
    /// overlap.
    fn ratios_to(&self, other: &Stats) -> String {
        format!(
            "Gbit/s {}; Gbit/s/core {}",
            self.gbit_s.ratio_to(&other.gbit_s),
            self.per_core.ratio_to(&other.per_core)
        )
    }

    fn of(samples: &[Sample]) -> Stats {
        Stats {
            gbit_s: Spread::of(samples.iter().map(|s| s.gbit_s)),
            per_core: Spread::of(samples.iter().map(Sample::per_core)),
            median: median(samples),
        }
    }
}

impl Sample {
    /// The gateway's own cost: what it moves per second of one core's time.
    fn per_core(&self) -> f64 {
        if self.cpu_pct > 0.0 {
            self.gbit_s / (self.cpu_pct / 100.0)
        } else {
            0.0
        }
    }
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "ok"
    } else {
        "MISSED"
    }
}

/// The sample with the median throughput (memory and CPU from that same run).
fn median(samples: &[Sample]) -> Sample {
    let mut sorted = samples.to_vec();
    sorted.sort_by(|a, b| a.gbit_s.total_cmp(&b.gbit_s));
    sorted.get(sorted.len() / 2).copied().unwrap_or_default()
}

fn measure(c: &Contender, hub: &WgImpl, args: &Args) -> anyhow::Result<Sample> {
    let tb = Testbed::start_with(
        &c.role,
        &TestbedOptions {
            hub: hub.clone(),
            agent_env_extra: c.env.clone(),
            ..TestbedOptions::default()
        },
    )?;
    if let Err(e) = tb.wait_handshake(None, HANDSHAKE_TIMEOUT) {
        bail!("{e}\n--- gateway log ---\n{}", gateway_log(&tb));
    }
    let pid = match &tb.gateway {
        Gateway::Agent(a) => a.pid(),
        Gateway::Userspace(wg) => wg.process().pid(),
    };
    let pin = |pid: u32, core: &str| -> anyhow::Result<()> {
        // -a: every thread the process has now; threads made later inherit the mask.
        let out = std::process::Command::new("taskset")
            .args(["-a", "-p", "-c", core, &pid.to_string()])
            .output()
            .context("run taskset (util-linux)")?;
        if !out.status.success() {
            bail!(
                "taskset -a -p -c {core} {pid}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    };
    if args.pin {
        pin(pid, GATEWAY_CORE)?;
        pin(tb.hub.process().pid(), LOAD_CORE)?;
    }
    // iperf3 runs under `taskset -c 1` when pinned, else directly.
    let load = |ns: &gatelet_tests_hw::Netns| {
        let mut cmd = ns.command(if args.pin { "taskset" } else { "iperf3" });
        if args.pin {
            cmd.args(["-c", LOAD_CORE, "iperf3"]);
        }
        cmd
    };
    let mut server = load(&tb.gw_ns);
    server.args([
        "-s",
        "-1",
        "-B",
        &GW_TUNNEL_IP.to_string(),
        "-p",
        &IPERF_PORT.to_string(),
    ]);
    let _server = tb.gw_ns.spawn("iperf3-server", server)?;
    let port_filter = format!("sport = :{IPERF_PORT}");
    wait_until("iperf3 to listen", Duration::from_secs(10), || {
        let out = tb.gw_ns.exec(&["ss", "-Hltn", &port_filter])?;
        Ok::<_, anyhow::Error>((!out.trim().is_empty()).then_some(()))
    })?;

    let stop = Arc::new(AtomicBool::new(false));
    let sampler = c.is_agent.then(|| {
        let stop = stop.clone();
        thread::spawn(move || {
            let mut peak_rss = 0;
            while !stop.load(Ordering::Relaxed) {
                if let Ok((_, rss)) = memory_kib(pid) {
                    peak_rss = peak_rss.max(rss);
                }
                thread::sleep(MEMORY_SAMPLE_INTERVAL);
            }
            peak_rss
        })
    });
    let hub_pid = tb.hub.process().pid();
    let cpu_before = cpu_seconds(pid)?;
    let hub_cpu_before = cpu_seconds(hub_pid)?;
    let started = Instant::now();
    let (target, port, seconds) = (
        GW_TUNNEL_IP.to_string(),
        IPERF_PORT.to_string(),
        args.seconds.to_string(),
    );
    let mut client = vec!["iperf3", "-c", &target, "-p", &port, "-t", &seconds, "-J"];
    if args.pin {
        client.splice(0..0, ["taskset", "-c", LOAD_CORE]);
    }
    if args.reverse {
        client.push("-R");
    }
    if args.bidir {
        client.push("--bidir");
    }
    let client = tb.hub_ns.exec(&client);
    let elapsed = started.elapsed();
    let cpu_after = cpu_seconds(pid)?;
    let hub_cpu_after = cpu_seconds(hub_pid)?;
    let (hwm_kib, _) = if c.is_agent { memory_kib(pid)? } else { (0, 0) };
    stop.store(true, Ordering::Relaxed);
    let rss_kib = sampler
        .map(|t| t.join().unwrap_or_default())
        .unwrap_or_default();
    let json = client?;
    let v: serde_json::Value = serde_json::from_str(&json).context("iperf3 -J output")?;
    let bps = v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .with_context(|| format!("no end.sum_received.bits_per_second in iperf3 output: {json}"))?;
    // With --bidir the other direction's total is reported apart.
    let bps = bps
        + v["end"]["sum_received_bidir_reverse"]["bits_per_second"]
            .as_f64()
            .unwrap_or_default();
    let pct = |cpu_s: f64| cpu_s.max(0.0) / elapsed.as_secs_f64() * 100.0;
    Ok(Sample {
        gbit_s: bps / 1e9,
        cpu_pct: pct(cpu_after - cpu_before),
        hub_cpu_pct: pct(hub_cpu_after - hub_cpu_before),
        hwm_kib,
        rss_kib,
    })
}

fn gateway_log(tb: &Testbed) -> String {
    match &tb.gateway {
        Gateway::Agent(a) => a.log(),
        Gateway::Userspace(wg) => wg.process().log(),
    }
}
