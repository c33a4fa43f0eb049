//! The companion daemon: wires the parts together and runs them on plain threads.
//!
//! ```text
//!  sync loop (server) ─┐                         ┌─> agent supervisor ──> agent control socket
//!  routes-file watcher ┴─> Applier ─> Desired ───┤
//!     (standalone)          │  store (SQLite)     └─> mgmt API whitelist, heartbeat
//!  heartbeat loop ── Shared snapshot <── supervisor, sync loop
//!  mgmt API (loopback) ── push ──> sync loop        status socket ── Shared + store
//! ```
//!
//! Start order: the state directory is created and locked (one companion per state directory,
//! [`crate::instance_lock`]); the last-known-good config is loaded and handed to the agent first,
//! so the gateway serves its routes while the server is still unreachable; then the listeners
//! are bound. A state directory that cannot be created or locked, or a listener that cannot be
//! bound, ends the daemon with an error line and exit status 1 before it reports READY, so the
//! service manager restarts it and the journal says why.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use gatelet_agent_api::env::{GatewayEnv, ENV_PATH_VAR};
use gatelet_agent_api::sd_notify;

use crate::agent_link::AgentLink;
use crate::apply::{Applier, Origin};
use crate::cli::RunArgs;
use crate::client::Client;
use crate::config::{self, ReservedPorts, RoutesFileWatcher};
use crate::heartbeat::{DnsCheck, Heartbeat, MAX_HEARTBEAT_BYTES};
use crate::instance_lock::InstanceLock;
use crate::mgmt::{self, MgmtContext};
use crate::state::{now_ms, Shared, Snapshot};
use crate::store::Store;
use crate::supervisor::Supervisor;
use crate::sync::{Budget, HeartbeatLoop, PushSignal, SyncLoop};
use crate::telemetry::{self, TelemetrySource};

/// Exit code for a usage or configuration error (sysexits EX_USAGE).
pub const EXIT_CONFIG: u8 = 64;
/// How often the standalone routes file is looked at.
pub const ROUTES_FILE_POLL: Duration = Duration::from_secs(2);
/// How often the main thread looks for a signal and the watchdog period.
const MAIN_LOOP_TICK: Duration = Duration::from_millis(200);

static SHUTDOWN: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    SHUTDOWN.store(true, Ordering::SeqCst);
}

fn install_signal_handlers() {
    if let Err(e) = crate::sys::on_termination(on_signal) {
        tracing::warn!(error = %e, "cannot install the signal handlers");
    }
}

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> Option<JoinHandle<()>> {
    match std::thread::Builder::new().name(name.into()).spawn(f) {
        Ok(h) => Some(h),
        Err(e) => {
            tracing::error!(thread = name, error = %e, "cannot start thread");
            None
        }
    }
}

/// Opens the store in the (existing, locked) state dir. An unusable store is logged and the
/// daemon goes on without persistence rather than stop serving.
fn open_store(state_dir: &Path) -> Option<Arc<Mutex<Store>>> {
    match Store::open(state_dir) {
        Ok(store) => {
            if let Some(moved) = store.recovered_from() {
                tracing::error!(moved_to = %moved.display(),
                    "the store was corrupt and has been moved aside; starting empty");
            }
            Some(Arc::new(Mutex::new(store)))
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot open the store; configs will not survive a restart");
            None
        }
    }
}

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// Loads and validates gateway.env, or says what is wrong in one line.
fn load_env(args: &RunArgs) -> Result<(GatewayEnv, PathBuf), String> {
    let var = std::env::var(ENV_PATH_VAR).ok();
    let path = GatewayEnv::resolve_path(args.env.as_deref(), var.as_deref());
    GatewayEnv::load(&path)
        .map(|env| (env, path))
        .map_err(|e| e.to_string())
}

/// Runs the daemon until SIGTERM or SIGINT.
pub fn run(args: RunArgs) -> ExitCode {
    let (env, env_path) = match load_env(&args) {
        Ok(v) => v,
        Err(line) => {
            eprintln!("gatelet-companion: {line}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let level = gatelet_agent_api::logging::parse_level(&args.log_level)
        .unwrap_or(tracing::level_filters::LevelFilter::INFO);
    gatelet_agent_api::logging::init("gatelet-companion", level, &[]);
    install_signal_handlers();
    if !env.unknown_keys.is_empty() {
        tracing::warn!(file = %env_path.display(), keys = %env.unknown_keys.join(","),
            "ignoring keys gatelet does not know");
    }
    let mode = if env.server_url.is_some() {
        "server"
    } else {
        "standalone"
    };
    tracing::info!(version = env!("CARGO_PKG_VERSION"), mode, env = %env_path.display(),
        "gatelet-companion starting");

    if let Err(e) = create_private_dir(&args.state_dir) {
        tracing::error!(
            "cannot create the state directory {}: {e}; exiting",
            args.state_dir.display()
        );
        return ExitCode::FAILURE;
    }
    // Held until the process exits.
    let _lock = match InstanceLock::acquire(&args.state_dir) {
        Ok(lock) => lock,
        Err(e) => {
            tracing::error!("{e}; exiting");
            return ExitCode::FAILURE;
        }
    };

    let shutdown = Arc::new(AtomicBool::new(false));
    let shared = Shared::new(Snapshot {
        started_at_ms: now_ms(),
        ..Snapshot::default()
    });
    let store = open_store(&args.state_dir);
    let last_good = store.as_ref().and_then(|s| {
        let s = s.lock().unwrap_or_else(|p| p.into_inner());
        s.last_good().unwrap_or_else(|e| {
            tracing::error!(error = %e, "cannot read the last-known-good config");
            None
        })
    });
    if let Some(lkg) = &last_good {
        tracing::info!(hash = ?lkg.config_hash, "serving the last-known-good config");
        let mut s = shared.lock();
        s.sync.config_hash = lkg.config_hash.clone();
        s.sync.rejected_routes = lkg.rejected.clone();
    }
    {
        let mut s = shared.lock();
        s.sync.mode = mode.into();
        s.sync.state = "starting".into();
    }
    let stored_hash = last_good.as_ref().and_then(|l| l.config_hash.clone());
    shared.lock().config = last_good.map(|l| l.agent);
    let link = AgentLink::new(&args.control_socket);
    let agent_wake = PushSignal::new();
    let push = PushSignal::new();
    let heartbeat_now = PushSignal::new();
    let mut threads = Vec::new();
    // Listeners that could not be bound: the daemon stops before READY.
    let mut fatal: Vec<String> = Vec::new();

    threads.extend(spawn("agent", {
        let (link, shared, wake, stop, store) = (
            link.clone(),
            shared.clone(),
            agent_wake.clone(),
            shutdown.clone(),
            store.clone(),
        );
        move || Supervisor::with_store(store).run(link, shared, wake, &stop)
    }));

    let ports = ReservedPorts::from_env(&env);
    let make_applier = |origin| {
        let wake = agent_wake.clone();
        Applier::new(
            store.clone(),
            shared.clone(),
            ports,
            origin,
            Box::new(move || wake.notify()),
        )
    };
    let telemetry_src = TelemetrySource {
        state_dir: args.state_dir.clone(),
        tunnel_iface: env.tun_name.clone(),
        tunnel_ip: Some(env.tunnel_ip),
        lan_hints: telemetry::LanHints {
            wg_endpoint: env
                .wg_endpoint
                .host
                .trim_matches(['[', ']'])
                .parse::<std::net::IpAddr>()
                .ok()
                .map(|ip| SocketAddr::new(ip, env.wg_endpoint.port)),
            route_targets: Some({
                let shared = shared.clone();
                Arc::new(move || shared.lock().route_targets())
            }),
        },
    };
    let dns = DnsCheck::new(env.wg_endpoint.host.clone());
    let mgmt_serving = Arc::new(AtomicBool::new(false));
    let mut scan_server = None;

    match (&env.server_url, &env.api_token) {
        (Some(url), Some(token)) => {
            let mut client = Client::new(url, token.clone());
            if crate::client::server_in_tunnel(url, &env.wg_allowed_ips) {
                // In userspace mode the agent reports its proxy into the tunnel; in TUN mode
                // it reports none and the calls go direct, through the kernel's route.
                let shared = shared.clone();
                client = client.via_tunnel_proxy(Arc::new(move || {
                    shared.lock().agent.as_ref()?.tunnel_proxy.clone()
                }));
            }
            let budget = Budget::new(env.heartbeat_interval).shared();
            scan_server = Some((client.clone(), budget.clone()));
            let mut sync = SyncLoop::new(
                client.clone(),
                stored_hash,
                budget.clone(),
                make_applier(Origin::Server),
                shared.clone(),
                push.clone(),
                heartbeat_now.clone(),
            );
            let stop = shutdown.clone();
            threads.extend(spawn("sync", move || sync.run(&stop)));
            let body = {
                let (shared, src, dns, serving) = (
                    shared.clone(),
                    telemetry_src.clone(),
                    dns.clone(),
                    mgmt_serving.clone(),
                );
                move || heartbeat_body(&shared, &src, &dns, &serving)
            };
            let mut hb =
                HeartbeatLoop::new(client, budget, body, shared.clone(), heartbeat_now.clone());
            let stop = shutdown.clone();
            threads.extend(spawn("heartbeat", move || hb.run(&stop)));
        }
        _ => {
            shared.lock().sync.state = "standalone".into();
            match env.routes_file.clone() {
                Some(path) => {
                    let applier = make_applier(Origin::RoutesFile);
                    let stop = shutdown.clone();
                    threads.extend(spawn("routes-file", move || {
                        watch_routes_file(&path, applier, &stop)
                    }));
                }
                None => tracing::warn!(
                    "standalone mode without GATELET_ROUTES_FILE: serving the stored config only"
                ),
            }
        }
    }

    let mgmt_addr = args
        .mgmt_listen
        .unwrap_or(SocketAddr::from((Ipv4Addr::LOCALHOST, env.api_port)));
    match std::net::TcpListener::bind(mgmt_addr) {
        Ok(server) => {
            let mut ctx = MgmtContext::new(
                env.gateway_token.clone(),
                shared.clone(),
                link.clone(),
                &args.state_dir,
            );
            let push = push.clone();
            ctx.on_config_changed = Arc::new(move || push.notify());
            ctx.lan_subnets = mgmt::system_subnets(telemetry_src.clone());
            ctx.wol_whitelist = {
                let shared = shared.clone();
                Arc::new(move || shared.lock().wol_macs())
            };
            ctx.lan_probe_target = env.lan_probe_target.clone();
            ctx.proxy_key = Some(gatelet_agent_api::proxy_v2::HeaderKey::derive(
                &env.wg_private_key.0,
            ));
            ctx.dns = Some(dns.clone());
            ctx.serving = mgmt_serving.clone();
            ctx.lan_scan = Some(crate::discovery::system_scanner(
                telemetry_src.clone(),
                env.discovery,
                scan_server.clone(),
            ));
            let stop = shutdown.clone();
            threads.extend(spawn("mgmt", move || mgmt::serve(server, ctx, stop)));
        }
        Err(e) => fatal.push(format!(
            "cannot bind the management API on {mgmt_addr}: {e} (the server could not reach this \
             gateway)"
        )),
    }

    // A LAN page without a password is refused (logged, not fatal: the gateway runs on).
    let diag = env.diag_listen.and_then(|addr| {
        crate::diag::Access::for_listen(addr, &args.state_dir)
            .map_err(|e| tracing::error!("{e}"))
            .ok()
            .map(|access| (addr, access))
    });
    if let Some((addr, access)) = diag {
        match std::net::TcpListener::bind(addr) {
            Ok(server) => {
                let (shared, store, stop) = (shared.clone(), store.clone(), shutdown.clone());
                let scrape = crate::diag::scrape_token::load(&args.state_dir)
                    .map_err(|e| tracing::error!("the /metrics bearer token is unusable: {e}"))
                    .ok()
                    .flatten();
                let push = push.clone();
                let actions = crate::diag::Actions {
                    sync_now: Arc::new(move || push.notify()),
                    agent: Some(link.clone()),
                };
                threads.extend(spawn("diag", move || {
                    crate::diag::serve(server, shared, store, access, scrape, Some(actions), stop)
                }));
            }
            Err(e) => fatal.push(format!(
                "cannot bind the diagnostics page on {addr}: {e} (set GATELET_DIAG_LISTEN to \
                 another ADDR:PORT, or to off)"
            )),
        }
    }

    let mut status_bound = false;
    match crate::status::bind(&args.status_socket) {
        Ok(listener) => {
            status_bound = true;
            let (shared, store, stop) = (shared.clone(), store.clone(), shutdown.clone());
            threads.extend(spawn("status", move || {
                crate::status::serve(listener, shared, store, stop)
            }));
        }
        Err(e) => fatal.push(format!(
            "cannot bind the status socket {}: {e}",
            args.status_socket.display()
        )),
    }

    let failed = !fatal.is_empty();
    if failed {
        for line in &fatal {
            tracing::error!("{line}; exiting");
        }
    } else {
        let _ = sd_notify::notify("READY=1");
        // Every WatchdogSec/2, from WATCHDOG_USEC (no keep-alive when systemd asks for none).
        let watchdog = sd_notify::watchdog_period_from_env();
        let mut since_watchdog = Duration::ZERO;
        while !SHUTDOWN.load(Ordering::SeqCst) {
            std::thread::sleep(MAIN_LOOP_TICK);
            since_watchdog += MAIN_LOOP_TICK;
            if watchdog.is_some_and(|p| since_watchdog >= p) {
                let _ = sd_notify::notify("WATCHDOG=1");
                since_watchdog = Duration::ZERO;
            }
        }
        tracing::info!("stopping");
        let _ = sd_notify::notify("STOPPING=1");
    }
    shutdown.store(true, Ordering::SeqCst);
    for s in [&push, &heartbeat_now, &agent_wake] {
        s.close();
    }
    for t in threads {
        let _ = t.join();
    }
    if let Some(store) = store {
        let _ = store.lock().unwrap_or_else(|p| p.into_inner()).flush();
    }
    if status_bound {
        let _ = std::fs::remove_file(&args.status_socket);
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn heartbeat_body(
    shared: &Shared,
    src: &TelemetrySource,
    dns: &DnsCheck,
    serving: &AtomicBool,
) -> Vec<u8> {
    let snap = shared.snapshot();
    let mut hb = Heartbeat::from_snapshot(
        &snap,
        snap.configured_l4_routes(),
        serving.load(Ordering::Relaxed),
        dns.get(),
        telemetry::collect(src),
        now_ms(),
    );
    hb.encode_bounded(MAX_HEARTBEAT_BYTES).unwrap_or_else(|e| {
        tracing::error!(error = %e, "cannot encode the heartbeat; sending a minimal one");
        br#"{"overall_healthy":false}"#.to_vec()
    })
}

/// Standalone mode: applies the routes file at start and whenever it changes.
fn watch_routes_file(path: &Path, mut applier: Applier, stop: &AtomicBool) {
    let mut watcher = RoutesFileWatcher::new(path);
    let mut first = true;
    while !stop.load(Ordering::Relaxed) {
        if watcher.changed() || first {
            first = false;
            match config::load_routes_file(path, applier.ports()) {
                Ok((validated, raw)) => {
                    applier.accept(&raw, validated);
                }
                Err(e) => {
                    applier.refuse_error(e);
                }
            }
        }
        std::thread::sleep(ROUTES_FILE_POLL);
    }
}
