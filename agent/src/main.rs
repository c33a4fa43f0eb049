//! `gatelet-agent`: the data plane daemon. See `gatelet-agent --help`.

use std::net::{Ipv4Addr, SocketAddr};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use gatelet_agent::cli::{self, Args, Command, EXIT_USAGE};
use gatelet_agent::control::{self, AgentState, ControlSocket};
use gatelet_agent::egress;
use gatelet_agent::netif::tun::{TunConfig, TunDevice};
use gatelet_agent::netstack::{Netstack, NetstackConfig};
use gatelet_agent::routes::{self, RouteManager};
use gatelet_agent::scan_egress;
use gatelet_agent::stack::Stack;
use gatelet_agent::tunnel::allowed::AllowedIps;
use gatelet_agent::tunnel::core::{TunnelCore, TunnelKeys};
use gatelet_agent::tunnel::driver::{self, DataPath, StackDataPath};
use gatelet_agent::tunnel::stats::TunnelStats;
use gatelet_agent::tunnel::udp;
use gatelet_agent::watchdog::{self, CheckIn, Watchdog};
use gatelet_agent::wol::ifaces::IfaceFilter;
use gatelet_agent::wol::Waker;
use gatelet_agent_api::env::{GatewayEnv, NetstackMode, ENV_PATH_VAR};
use gatelet_agent_api::sd_notify as notify;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

/// Mode of the state directory when the agent creates it.
const STATE_DIR_MODE: u32 = 0o750;
/// How long shutdown waits for the last applied config to be saved.
const SAVE_FLUSH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

fn main() -> ExitCode {
    let args = match cli::parse(std::env::args_os().skip(1)) {
        Ok(Command::Run(args)) => args,
        Ok(Command::Help) => {
            println!("{}", cli::USAGE);
            return ExitCode::SUCCESS;
        }
        Ok(Command::Version) => {
            println!("gatelet-agent {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("gatelet-agent: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let env_var = std::env::var(ENV_PATH_VAR).ok();
    let env_path = GatewayEnv::resolve_path(args.env.as_deref(), env_var.as_deref());
    let env = match GatewayEnv::load(&env_path) {
        Ok(env) => env,
        Err(e) => {
            eprintln!("gatelet-agent: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let control_gid = match &args.control_group {
        Some(spec) => {
            let groups = std::fs::read_to_string("/etc/group").unwrap_or_default();
            match control::resolve_group(spec, &groups) {
                Ok(gid) => Some(gid),
                Err(e) => {
                    eprintln!("gatelet-agent: {e}");
                    return ExitCode::from(EXIT_USAGE);
                }
            }
        }
        None => None,
    };
    // boringtun's own records (a warning per handshake retry) show only at debug and trace;
    // the tunnel logs its own summary of those events.
    gatelet_agent_api::logging::init(
        "gatelet-agent",
        tracing::level_filters::LevelFilter::from_level(args.log_level),
        &["boringtun"],
    );
    if !env.unknown_keys.is_empty() {
        tracing::warn!(
            file = %env_path.display(),
            keys = %env.unknown_keys.join(","),
            "ignoring keys gatelet does not know"
        );
    }
    match run(&args, &env, control_gid) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Where the tunnel's packets end.
enum Interface {
    /// A TUN device: the kernel's stack.
    Tun(TunDevice),
    /// The userspace stack, and why (when `auto` fell back to it).
    Stack(Netstack, Option<String>),
}

/// Opens and configures the TUN device.
fn open_tun(env: &GatewayEnv) -> anyhow::Result<TunDevice> {
    let tun = TunDevice::open(&env.tun_name)?;
    tun.configure(&TunConfig {
        address: env.wg_address,
        mtu: env.mtu,
        routes: env.wg_allowed_ips.clone(),
    })?;
    tracing::info!(
        device = tun.name(),
        address = %env.wg_address,
        mtu = env.mtu,
        "TUN device up"
    );
    Ok(tun)
}

/// The userspace stack on `WG_ADDRESS`.
fn new_stack(env: &GatewayEnv) -> anyhow::Result<Netstack> {
    let std::net::IpAddr::V4(address) = env.wg_address.addr else {
        anyhow::bail!("the userspace network stack needs an IPv4 WG_ADDRESS");
    };
    let stack = Netstack::new(NetstackConfig {
        address,
        prefix_len: env.wg_address.prefix,
        mtu: env.mtu,
    });
    tracing::info!(%address, mtu = env.mtu, "userspace network stack up");
    Ok(stack)
}

/// The interface of `mode`: `auto` takes the TUN device when it can be opened and
/// configured, else the userspace stack (logging why).
fn open_interface(mode: NetstackMode, env: &GatewayEnv) -> anyhow::Result<Interface> {
    match mode {
        NetstackMode::Kernel => open_tun(env).map(Interface::Tun),
        NetstackMode::Userspace => Ok(Interface::Stack(new_stack(env)?, None)),
        NetstackMode::Auto => match open_tun(env) {
            Ok(tun) => Ok(Interface::Tun(tun)),
            Err(e) => {
                let why = format!("no TUN device: {e:#}");
                tracing::warn!(
                    "{why}; using the userspace network stack (GATELET_NETSTACK=auto; set \
                     kernel to make this fatal)"
                );
                Ok(Interface::Stack(new_stack(env)?, Some(why)))
            }
        },
    }
}

/// The composition root of the relays: builds the Wake-on-LAN waker and starts the route
/// manager on the tunnel IP with it, binding through `stack` (kernel sockets on the TUN
/// device's address, or the smoltcp stack): the HTTP proxy, the management API relay, and the
/// routes saved by the last apply, so they answer before the companion connects. Returns the
/// manager and the waker (for the control socket).
/// The egress failover counts the tunnel healthy while its last handshake is at most this old,
/// in seconds (WireGuard's REJECT_AFTER_TIME: an older session carries nothing).
const HEALTHY_HANDSHAKE_AGE_S: u64 = 180;

fn start_routes(
    args: &Args,
    env: &GatewayEnv,
    stack: Stack,
    stats: Arc<TunnelStats>,
) -> (RouteManager, Waker) {
    match gatelet_agent::forward::raise_nofile_limit() {
        Ok(n) => tracing::debug!(limit = n, "open files limit"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the open files limit"),
    }
    let waker = Waker::system(IfaceFilter {
        tun_name: env.tun_name.clone(),
        allow: env.wol_interfaces.clone(),
        exclude: env.wol_exclude.clone(),
    });
    let mut settings = routes::Settings::new(env.tunnel_ip.into());
    settings.waker = Some(waker.clone());
    let ping = matches!(stack, Stack::Kernel);
    settings.stack = stack;
    settings.proxy_port = Some(env.proxy_port);
    settings.api_relay = Some(routes::ApiRelaySettings {
        port: env.api_port,
        target: SocketAddr::from((routes::API_TARGET_IP, env.api_port)),
        key: gatelet_agent_api::proxy_v2::HeaderKey::derive(&env.wg_private_key.0),
    });
    settings.state_dir = Some(args.state_dir.clone());
    // The egress failover's tunnel check without pings: a handshake within WireGuard's
    // REJECT_AFTER_TIME (180 s); a live tunnel re-handshakes every two minutes.
    let health: scan_egress::near::HealthFn = Arc::new(move || {
        stats
            .snapshot(std::time::Instant::now())
            .handshake_age_s
            .is_some_and(|age| age <= HEALTHY_HANDSHAKE_AGE_S)
    });
    // TUN mode pings the hub through the tunnel like the reference's chk_tunnel; the
    // userspace stack cannot (nothing on the box can send into it): handshake age there.
    settings.near = Some(scan_egress::near::NearSettings {
        health,
        interval: scan_egress::near::HEALTH_INTERVAL,
        ping,
    });
    let manager = RouteManager::new(settings);
    if let Err(e) = manager.start() {
        tracing::warn!("{e}");
    }
    (manager, waker)
}

/// In userspace mode with `GC_SERVER_URL` set: the loopback CONNECT proxy that takes the
/// companion's GateControl requests into the tunnel (`gatelet_agent::egress`), on a port the
/// kernel picks (the companion reads it from the status). None when there is no server or the
/// proxy cannot start (logged: the companion then reaches the server only if it is outside
/// the tunnel).
async fn start_tunnel_proxy(
    env: &GatewayEnv,
    stack: &Netstack,
    stop: watch::Receiver<bool>,
) -> Option<SocketAddr> {
    let url = env.server_url.as_deref()?;
    let target = match egress::Target::from_url(url) {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!("no proxy into the tunnel: {e}");
            return None;
        }
    };
    let listener = match tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(error = %e, "no proxy into the tunnel: cannot listen on 127.0.0.1");
            return None;
        }
    };
    let addr = listener.local_addr().ok()?;
    tracing::info!(%addr, server = %format!("{}:{}", target.host, target.port), "proxy into the tunnel for GateControl");
    tokio::spawn(egress::serve(
        listener,
        target,
        Arc::new(stack.clone()),
        Arc::new(egress::EgressCounters::default()),
        stop,
    ));
    Some(addr)
}

fn run(args: &Args, env: &GatewayEnv, control_gid: Option<u32>) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(STATE_DIR_MODE)
        .create(&args.state_dir)
        .with_context(|| {
            format!(
                "cannot create the state directory {}",
                args.state_dir.display()
            )
        })?;

    let started = Instant::now();
    let socket = ControlSocket::bind(&args.control_socket, control_gid)?;

    let mode = args.netstack.unwrap_or(env.netstack);
    let iface = open_interface(mode, env)?;
    let stats = Arc::new(match &iface {
        Interface::Tun(_) => TunnelStats::new(started, "tun"),
        Interface::Stack(_, why) => {
            TunnelStats::new(started, "netstack").with_mode_reason(why.clone())
        }
    });

    let udp_sock = udp::socket_for(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)), false)
        .context("cannot open the tunnel's UDP socket")?;
    let keys = TunnelKeys {
        private_key: env.wg_private_key.0,
        peer_public_key: env.wg_server_public_key.0,
        preshared_key: env.wg_preshared_key.as_ref().map(|k| k.0),
    };
    let core = TunnelCore::new(
        &keys,
        AllowedIps::new(env.wg_allowed_ips.clone()),
        stats.clone(),
    );
    let (stop, stop_rx) = watch::channel(false);
    let datapath_checkin = CheckIn::new();
    // The loops the watchdog watches: the data path, and on a TUN device its encrypting
    // direction apart (a thread of its own with 2 data path threads).
    let mut loops = vec![("datapath", datapath_checkin.clone())];
    let (datapath, netstack) = match iface {
        Interface::Tun(tun) => {
            let encrypt_checkin = CheckIn::new();
            loops.push(("encrypt", encrypt_checkin.clone()));
            let dp = DataPath {
                core,
                iface: tun,
                udp: udp_sock,
                endpoint: env.wg_endpoint.clone(),
                mtu: env.mtu,
                checkin: datapath_checkin.clone(),
                encrypt_checkin,
                threads: env
                    .datapath_threads
                    .resolve(std::thread::available_parallelism().map_or(1, |n| n.get())),
            };
            tracing::info!(threads = dp.threads, "tunnel data path");
            (driver::spawn(dp, stop_rx.clone()), None)
        }
        Interface::Stack(stack, _) => {
            let dp = StackDataPath {
                core,
                stack: stack.clone(),
                udp: udp_sock,
                endpoint: env.wg_endpoint.clone(),
                mtu: env.mtu,
                checkin: datapath_checkin.clone(),
            };
            (driver::spawn_stack(dp, stop_rx.clone()), Some(stack))
        }
    };
    let datapath = datapath.context("cannot start the data path thread")?;

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .context("cannot start the runtime")?;
    let outcome = rt.block_on(async {
        // The composition root: the route executor binds where the tunnel ends.
        let stack = match netstack {
            Some(n) => Stack::Userspace(n),
            None => Stack::Kernel,
        };
        let tunnel_proxy = match &stack {
            Stack::Userspace(n) => start_tunnel_proxy(env, n, stop_rx.clone()).await,
            Stack::Kernel => None,
        };
        let (manager, waker) = start_routes(args, env, stack, stats.clone());
        let mut state = AgentState::new(started, stats)
            .with_routes(manager.clone())
            .with_waker(waker);
        if let Some(addr) = tunnel_proxy {
            state = state.with_tunnel_proxy(addr);
        }
        let state = Arc::new(state);
        let server = tokio::spawn(control::serve(socket.listener()?, state, stop_rx));
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        match notify::notify("READY=1") {
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "cannot notify systemd"),
        }
        // Every WatchdogSec/2 (WATCHDOG_USEC from systemd), and only while the data path's loops
        // turn (`loops`); this task runs on this (the relay) runtime, so a stalled runtime stops
        // it too.
        let watchdog = match notify::watchdog_period_from_env() {
            Some(period) => {
                tracing::info!(
                    period_ms = period.as_millis() as u64,
                    "watchdog keep-alive on"
                );
                let dog = Watchdog::new(loops);
                tokio::spawn(watchdog::run(period, dog, || {
                    let _ = notify::notify("WATCHDOG=1");
                }))
            }
            None => tokio::spawn(std::future::pending()),
        };
        tracing::info!(
            control_socket = %socket.path().display(),
            endpoint = %env.wg_endpoint,
            "agent ready"
        );
        let mut datapath = tokio::task::spawn_blocking(move || datapath.join());
        let mut joined = false;
        let result: anyhow::Result<()> = tokio::select! {
            _ = term.recv() => { tracing::info!("SIGTERM: shutting down"); Ok(()) }
            _ = int.recv() => { tracing::info!("SIGINT: shutting down"); Ok(()) }
            r = &mut datapath => {
                joined = true;
                match r {
                    Ok(Ok(Ok(()))) => Err(anyhow::anyhow!("the data path stopped unexpectedly")),
                    Ok(Ok(Err(e))) => Err(anyhow::Error::new(e).context("the data path failed")),
                    _ => Err(anyhow::anyhow!("the data path thread panicked")),
                }
            }
        };
        watchdog.abort();
        let _ = notify::notify("STOPPING=1");
        // An apply that arrived just before the signal is still written to the state dir.
        let _ = tokio::time::timeout(SAVE_FLUSH_TIMEOUT, manager.wait_saved()).await;
        let _ = stop.send(true);
        if !joined {
            let _ = datapath.await;
        }
        let _ = server.await;
        result
    });
    drop(socket);
    outcome
}
