//! The route manager: which listeners run on the tunnel IP, live reconfiguration by diff,
//! persistence of the applied config, per-route status and reachability probes.
//!
//! Every socket on the tunnel side belongs to the manager, bound through the
//! [`Settings::stack`] (`crate::stack`: kernel sockets or the smoltcp stack): one TCP and one
//! UDP listener per L4 route (keyed by listen port), the HTTP proxy on `GC_PROXY_PORT` (served
//! by `crate::http::serve` from an [`HttpTable`]) and the management API relay on
//! `GC_API_PORT` (`crate::forward::api_relay`: to the companion on loopback, with its own
//! connection budget and a PROXY v2 header naming the caller).
//!
//! An apply is planned, then executed: [`plan::plan`] compares the new config with what runs
//! (a pure function, table-tested) and lists the [`plan::Change`]s; [`RouteManager::apply`]
//! carries them out:
//! - same port, same target: untouched (listeners and connections);
//! - same port, new target: the listener keeps running, new connections go to the new target;
//! - port gone: stops accepting at once; open connections get [`DEFAULT_GRACE`] to finish;
//! - new port: bound now; a bind that fails marks that listener `Failed` and is retried by
//!   itself ([`DEFAULT_RETRY_INITIAL`] doubling up to [`DEFAULT_RETRY_MAX`]);
//! - a port re-added while its old route drains: the TCP listener binds again at once (the
//!   old one is closed; its connections do not hold the port), and the UDP socket, which the
//!   draining sessions still hold to send their replies, is taken back rather than bound
//!   again (which would fail with "address in use" for the whole grace period).
//!
//! The egress routes (`crate::scan_egress`) are planned and executed the same way, keyed by
//! LAN listen port: a kernel TCP listener on [`Settings::egress_bind_ip`] (every address by
//! default) whose connections go into the tunnel through the stack; a new target or
//! allowlist applies to new connections without rebinding; a removed one stops accepting and
//! its connections get the grace period.
//!
//! Status ([`RouteManager::status`]) is read from atomics and cells, never waiting on I/O.

mod persist;
pub mod plan;
mod probe;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use gatelet_agent_api::control::{
    AgentConfig, EgressNear, EgressStatus, HttpRoute, ListenerState, Reachability, RouteKind,
    RouteStatus,
};
use tokio::sync::{watch, Notify};

use crate::forward::api_relay::{self, ApiRelay};
use crate::forward::tcp::{self, ConnectionLimit, TcpConfig, TcpRoute, Via};
use crate::forward::udp::{self, UdpConfig, UdpRoute};
use crate::forward::{wait_true, RouteCounters, TargetCell};
use crate::target::Target;

use crate::http::{HttpStats, HttpTable, ProxyConfig, RouteHttpCounters};
use crate::scan_egress::near::{self, NearHandle, NearSettings, NearSpec};
use crate::scan_egress::vrrp::machine::State as VrrpState;
use crate::scan_egress::{Allowlist, SourceCell};
use crate::stack::{Datagram, Stack};
use crate::wol::Waker;
pub use persist::{PersistError, APPLIED_CONFIG_FILE};
use plan::{Change, EgressSpec, Running};
pub use probe::{DEFAULT_PROBE_CONCURRENCY, DEFAULT_PROBE_INTERVAL, DEFAULT_PROBE_TIMEOUT};

/// Time a removed route's open connections keep going before they are closed.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(30);
/// First retry of a listener that could not be bound.
pub const DEFAULT_RETRY_INITIAL: Duration = Duration::from_secs(5);
/// Longest pause between retries of a listener that could not be bound.
pub const DEFAULT_RETRY_MAX: Duration = Duration::from_secs(30);
/// Where the management API relay sends its connections: the companion's loopback listener
/// (same port number as `GC_API_PORT`).
pub const API_TARGET_IP: Ipv4Addr = Ipv4Addr::LOCALHOST;

/// How the manager runs; [`Settings::new`] gives the defaults.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The address every listener binds (the tunnel IP; a loopback address in tests).
    pub bind_ip: IpAddr,
    /// The HTTP proxy's port (`GC_PROXY_PORT`), if the proxy runs.
    pub proxy_port: Option<u16>,
    /// The management API relay: listen port on `bind_ip`, where it goes, and the key of
    /// its PROXY headers.
    pub api_relay: Option<ApiRelaySettings>,
    /// Where the applied config is saved (`--state-dir`); None keeps nothing.
    pub state_dir: Option<PathBuf>,
    /// TCP relay tuning.
    pub tcp: TcpConfig,
    /// UDP relay tuning.
    pub udp: UdpConfig,
    /// Open relayed TCP connections over all routes at most.
    pub max_connections_total: usize,
    /// Grace period of a removed route's connections.
    pub grace: Duration,
    /// First retry of a failed bind.
    pub retry_initial: Duration,
    /// Longest pause between bind retries.
    pub retry_max: Duration,
    /// Time between two reachability probes of the same target.
    pub probe_interval: Duration,
    /// Connect timeout of a reachability probe.
    pub probe_timeout: Duration,
    /// Wake-on-LAN: told every applied config's routes, handed to the relays and the proxy
    /// (None: no Wake-on-LAN).
    pub waker: Option<Waker>,
    /// Where the listeners are bound: kernel sockets or the smoltcp stack.
    pub stack: Stack,
    /// The address the egress routes' LAN listeners bind: every address by default (see
    /// `crate::scan_egress` for why); a loopback address in tests.
    pub egress_bind_ip: IpAddr,
    /// The egress routes' VRRP failover: the tunnel-health sample and its interval. None:
    /// no failover runs (role `none`; nothing adds the VIPs).
    pub near: Option<NearSettings>,
}

/// Where the management API relay listens and sends its connections.
#[derive(Debug, Clone)]
pub struct ApiRelaySettings {
    /// Listen port on [`Settings::bind_ip`] (`GC_API_PORT`).
    pub port: u16,
    /// The companion's listener.
    pub target: SocketAddr,
    /// Signs the PROXY header naming each caller (`HeaderKey::derive` of `WG_PRIVATE_KEY`,
    /// as the companion derives it to check).
    pub key: gatelet_agent_api::proxy_v2::HeaderKey,
}

impl Settings {
    /// Defaults for listeners on `bind_ip`, with no proxy, no API relay and no state dir.
    pub fn new(bind_ip: IpAddr) -> Self {
        Settings {
            bind_ip,
            proxy_port: None,
            api_relay: None,
            state_dir: None,
            tcp: TcpConfig::default(),
            udp: UdpConfig::default(),
            max_connections_total: tcp::DEFAULT_MAX_CONNECTIONS_TOTAL,
            grace: DEFAULT_GRACE,
            retry_initial: DEFAULT_RETRY_INITIAL,
            retry_max: DEFAULT_RETRY_MAX,
            probe_interval: DEFAULT_PROBE_INTERVAL,
            probe_timeout: DEFAULT_PROBE_TIMEOUT,
            waker: None,
            stack: Stack::Kernel,
            egress_bind_ip: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            near: None,
        }
    }
}

/// What the manager reports for the agent's status.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoutesStatus {
    /// Hash of the config that runs.
    pub config_hash: Option<String>,
    /// Every configured route (L4 by port, then HTTP in config order).
    pub routes: Vec<RouteStatus>,
    /// The HTTP proxy listener, when configured.
    pub http_proxy: Option<ListenerState>,
    /// The management API relay, when configured.
    pub api_relay: Option<ListenerState>,
    /// The egress listeners, by LAN port.
    pub egress: Vec<EgressStatus>,
    /// The egress failover state (None without egress routes).
    pub egress_near: Option<EgressNear>,
}

type StateCell = Arc<Mutex<ListenerState>>;

fn locked<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

fn set_state(cell: &StateCell, s: ListenerState) {
    *locked(cell) = s;
}

/// Stop (accepting) and kill (open connections) switches of one running listener group.
#[derive(Debug)]
struct Switches {
    stop: watch::Sender<bool>,
    kill: Option<watch::Sender<bool>>,
}

impl Switches {
    fn new() -> Self {
        Switches {
            stop: watch::channel(false).0,
            kill: Some(watch::channel(false).0),
        }
    }

    fn kill_rx(&self) -> watch::Receiver<bool> {
        match &self.kill {
            Some(k) => k.subscribe(),
            None => watch::channel(true).1,
        }
    }

    /// Stops accepting now and closes open connections after `grace`.
    fn retire(mut self, grace: Duration) {
        let _ = self.stop.send(true);
        if let Some(kill) = self.kill.take() {
            tokio::spawn(async move {
                tokio::time::sleep(grace).await;
                let _ = kill.send(true);
            });
        }
    }
}

impl Drop for Switches {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(k) = &self.kill {
            let _ = k.send(true);
        }
    }
}

#[derive(Debug)]
struct L4Entry {
    id: u64,
    target: TargetCell,
    counters: Arc<RouteCounters>,
    tcp: StateCell,
    udp: StateCell,
    switches: Switches,
}

#[derive(Debug)]
struct EgressEntry {
    id: u64,
    spec: EgressSpec,
    target: TargetCell,
    sources: SourceCell,
    counters: Arc<RouteCounters>,
    state: StateCell,
    switches: Switches,
}

#[derive(Debug)]
struct FixedListener {
    state: StateCell,
    _switches: Switches,
}

#[derive(Debug, Default)]
struct State {
    config: AgentConfig,
    l4: BTreeMap<u16, L4Entry>,
    egress: BTreeMap<u16, EgressEntry>,
    /// The VRRP instances, by egress route id.
    near: BTreeMap<u64, (NearSpec, NearHandle)>,
    reach: HashMap<Target, Reachability>,
    proxy: Option<FixedListener>,
    api: Option<FixedListener>,
}

/// A config to save and its generation.
type SaveRequest = (u64, Option<Arc<AgentConfig>>);
type SavesRx = watch::Receiver<SaveRequest>;

#[derive(Debug)]
struct Inner {
    settings: Settings,
    tcp_config: Arc<TcpConfig>,
    udp_config: Arc<UdpConfig>,
    global: Arc<ConnectionLimit>,
    http_table: HttpTable,
    http_stats: Arc<HttpStats>,
    api_counters: Arc<RouteCounters>,
    state: Mutex<State>,
    probe_now: Arc<Notify>,
    /// UDP listening sockets, for taking one back from a draining route.
    udp_sockets: Arc<UdpSockets>,
    /// The latest config to save, with its generation (for the persister task).
    saves: watch::Sender<SaveRequest>,
    /// Taken by the persister task when it starts.
    saves_rx: Mutex<Option<(SavesRx, watch::Sender<u64>)>>,
    /// The generation the persister saved last.
    saved: watch::Receiver<u64>,
}

/// The running route set. Cheap to clone (a handle); listeners stop when the last handle is
/// dropped.
#[derive(Debug, Clone)]
pub struct RouteManager {
    inner: Arc<Inner>,
}

/// The UDP listening sockets still alive, by address. A removed route's socket stays bound
/// while its sessions drain (they send their replies from it), so binding the same address
/// again would fail with "address in use" for the whole grace period; a route re-added
/// meanwhile takes that socket back instead. Entries die with the last session.
#[derive(Debug, Default)]
struct UdpSockets(Mutex<HashMap<SocketAddr, Weak<Datagram>>>);

impl UdpSockets {
    /// The ports with a live socket.
    fn live_ports(&self) -> BTreeSet<u16> {
        locked(&self.0)
            .iter()
            .filter(|(_, w)| w.strong_count() > 0)
            .map(|(a, _)| a.port())
            .collect()
    }

    /// The live socket on `addr`, or a new one bound through `stack`.
    fn take_or_bind(&self, stack: &Stack, addr: SocketAddr) -> Result<Arc<Datagram>, String> {
        let mut map = locked(&self.0);
        map.retain(|_, w| w.strong_count() > 0);
        if let Some(s) = map.get(&addr).and_then(Weak::upgrade) {
            tracing::info!(%addr, "UDP listener taken back from the draining route");
            return Ok(s);
        }
        let s = Arc::new(stack.bind_udp(addr)?);
        map.insert(addr, Arc::downgrade(&s));
        Ok(s)
    }
}

/// The state after the first bind attempt (logged when it failed).
fn first_state<L>(first: &Result<L, String>, what: &str) -> ListenerState {
    match first {
        Ok(_) => ListenerState::Listening,
        Err(reason) => {
            tracing::warn!(listener = what, %reason, "cannot listen; retrying");
            ListenerState::Failed {
                reason: reason.clone(),
            }
        }
    }
}

/// Keeps a listener bound: serves `initial` when it bound, otherwise retries `bind` with
/// backoff until it works or `stop` fires, keeping `cell` up to date.
async fn keep_bound<L, B, F, Fut>(
    initial: Result<L, String>,
    bind: B,
    serve: F,
    cell: StateCell,
    stop: watch::Receiver<bool>,
    retry: (Duration, Duration),
    what: String,
) where
    B: Fn() -> Result<L, String>,
    F: FnOnce(L, watch::Receiver<bool>) -> Fut,
    Fut: Future<Output = ()>,
{
    let (mut delay, max) = retry;
    let mut attempt = initial;
    loop {
        match attempt {
            Ok(l) => {
                if matches!(*locked(&cell), ListenerState::Failed { .. }) {
                    tracing::info!(listener = what, "listening after a failed bind");
                }
                set_state(&cell, ListenerState::Listening);
                serve(l, stop).await;
                return;
            }
            Err(reason) => {
                tracing::debug!(listener = what, %reason, "bind failed");
                set_state(&cell, ListenerState::Failed { reason });
                tokio::select! {
                    _ = wait_true(stop.clone()) => return,
                    _ = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(max);
                attempt = bind();
            }
        }
    }
}

impl RouteManager {
    /// A manager with nothing running yet; [`RouteManager::start`] binds the fixed listeners
    /// and serves the saved config.
    pub fn new(settings: Settings) -> Self {
        let (saves, saves_rx) = watch::channel((0, None));
        let (saved_tx, saved) = watch::channel(0);
        RouteManager {
            inner: Arc::new(Inner {
                tcp_config: Arc::new(settings.tcp.clone()),
                udp_config: Arc::new(settings.udp.clone()),
                global: ConnectionLimit::new(settings.max_connections_total),
                http_table: HttpTable::default(),
                http_stats: Arc::default(),
                api_counters: Arc::default(),
                state: Mutex::default(),
                probe_now: Arc::new(Notify::new()),
                udp_sockets: Arc::default(),
                saves,
                saves_rx: Mutex::new(Some((saves_rx, saved_tx))),
                saved,
                settings,
            }),
        }
    }

    /// The HTTP proxy's route table.
    pub fn http_table(&self) -> HttpTable {
        self.inner.http_table.clone()
    }

    /// The HTTP proxy's counters.
    pub fn http_stats(&self) -> Arc<HttpStats> {
        self.inner.http_stats.clone()
    }

    /// The management API relay's counters.
    pub fn api_counters(&self) -> Arc<RouteCounters> {
        self.inner.api_counters.clone()
    }

    /// Binds the HTTP proxy and the API relay, starts the reachability probes, then loads the
    /// saved config (if any) and applies it. Call inside the runtime. A saved config that
    /// cannot be read is returned as an error after everything else has started.
    pub fn start(&self) -> Result<(), PersistError> {
        let s = &self.inner.settings;
        let retry = (s.retry_initial, s.retry_max);
        let mut fixed = (None, None);
        if let Some(port) = s.proxy_port {
            let addr = SocketAddr::new(s.bind_ip, port);
            let first = s.stack.bind_tcp(addr);
            let state: StateCell = Arc::new(Mutex::new(first_state(&first, "HTTP proxy")));
            let switches = Switches::new();
            let table = self.inner.http_table.clone();
            let stats = self.inner.http_stats.clone();
            let waker = s.waker.clone();
            tokio::spawn(keep_bound(
                first,
                {
                    let stack = s.stack.clone();
                    move || stack.bind_tcp(addr)
                },
                move |l, stop| {
                    crate::http::serve_with(l, table, stats, stop, ProxyConfig::default(), waker)
                },
                state.clone(),
                switches.stop.subscribe(),
                retry,
                format!("HTTP proxy {addr}"),
            ));
            fixed.0 = Some(FixedListener {
                state,
                _switches: switches,
            });
        }
        if let Some(ApiRelaySettings { port, target, key }) = s.api_relay.clone() {
            let addr = SocketAddr::new(s.bind_ip, port);
            let first = s.stack.bind_tcp(addr);
            let state: StateCell = Arc::new(Mutex::new(first_state(&first, "API relay")));
            let switches = Switches::new();
            // Its own budget and idle timeout, outside the routes' global cap.
            let relay = ApiRelay::new(
                target,
                self.inner.api_counters.clone(),
                &self.inner.tcp_config,
                switches.kill_rx(),
                key,
            );
            tokio::spawn(keep_bound(
                first,
                {
                    let stack = s.stack.clone();
                    move || stack.bind_tcp(addr)
                },
                move |l, stop| api_relay::serve(l, relay.clone(), stop),
                state.clone(),
                switches.stop.subscribe(),
                retry,
                format!("API relay {addr}"),
            ));
            fixed.1 = Some(FixedListener {
                state,
                _switches: switches,
            });
        }
        {
            let mut st = locked(&self.inner.state);
            st.proxy = fixed.0;
            st.api = fixed.1;
        }
        tokio::spawn(probe::run(
            Arc::downgrade(&self.inner),
            self.inner.probe_now.clone(),
        ));
        let persister = locked(&self.inner.saves_rx).take();
        let Some(dir) = s.state_dir.clone() else {
            return Ok(());
        };
        if let Some((rx, done)) = persister {
            tokio::spawn(persist_task(dir.clone(), rx, done));
        }
        if let Some(config) = persist::load(&dir)? {
            tracing::info!(
                config_hash = config.config_hash.as_deref().unwrap_or("-"),
                l4_routes = config.l4_routes.len(),
                http_routes = config.http_routes.len(),
                "serving the saved config until the companion applies one"
            );
            self.apply_inner(config, false);
        }
        Ok(())
    }

    /// Makes `config` the running route set (see the module documentation for what changes),
    /// saves it in the state directory and returns each route's status. Call inside the
    /// runtime.
    pub fn apply(&self, config: AgentConfig) -> Vec<RouteStatus> {
        self.apply_inner(config, true);
        self.status().routes
    }

    fn apply_inner(&self, config: AgentConfig, save: bool) {
        if let Some(waker) = &self.inner.settings.waker {
            waker.set_routes(&config);
        }
        let inner = &self.inner;
        let s = &inner.settings;
        let mut st = locked(&inner.state);
        if save && st.config == config {
            return;
        }
        let running = Running {
            l4: st
                .l4
                .iter()
                .map(|(port, e)| (*port, (e.id, (*e.target.get()).clone())))
                .collect(),
            http: st.config.http_routes.clone(),
            draining_udp: inner
                .udp_sockets
                .live_ports()
                .into_iter()
                .filter(|p| !st.l4.contains_key(p))
                .collect(),
            egress: st
                .egress
                .iter()
                .map(|(port, e)| (*port, (e.id, e.spec.clone())))
                .collect(),
        };
        let changes = plan::plan(&running, &config);
        let new_targets = changes.iter().any(Change::new_targets);
        for change in changes {
            match change {
                Change::DuplicatePort { port, id } => tracing::warn!(
                    port,
                    id,
                    "two L4 routes on the same port; the first one is used"
                ),
                Change::Retire { port, id } => {
                    if let Some(e) = st.l4.remove(&port) {
                        tracing::info!(
                            port,
                            id,
                            "L4 route removed; open connections get the grace period"
                        );
                        e.switches.retire(s.grace);
                    }
                }
                Change::Keep { port, id } => {
                    if let Some(e) = st.l4.get_mut(&port) {
                        e.id = id;
                    }
                }
                Change::Retarget { port, id, target } => {
                    if let Some(e) = st.l4.get_mut(&port) {
                        tracing::info!(port, %target, "L4 route target changed (new connections)");
                        e.id = id;
                        e.target.set(target);
                    }
                }
                Change::Bind {
                    port,
                    id,
                    target,
                    udp: _,
                } => {
                    // The UDP socket registry decides again at bind time whether a draining
                    // socket is there to take back (see `UdpSockets`).
                    tracing::info!(port, %target, id, "L4 route added");
                    let entry = self.start_l4(id, port, target);
                    st.l4.insert(port, entry);
                }
                Change::EgressDuplicatePort { port, id } => tracing::warn!(
                    port,
                    id,
                    "two egress routes on the same LAN port; the first one is used"
                ),
                Change::EgressRetire { port, id } => {
                    if let Some(e) = st.egress.remove(&port) {
                        tracing::info!(
                            port,
                            id,
                            "egress route removed; open connections get the grace period"
                        );
                        e.switches.retire(s.grace);
                    }
                }
                Change::EgressKeep { port, id } => {
                    if let Some(e) = st.egress.get_mut(&port) {
                        e.id = id;
                    }
                }
                Change::EgressUpdate { port, id, spec } => {
                    if let Some(e) = st.egress.get_mut(&port) {
                        tracing::info!(
                            port,
                            target = %spec.target,
                            sources = spec.sources.len(),
                            "egress route changed (new connections)"
                        );
                        e.id = id;
                        e.target.set(spec.target.clone());
                        e.sources.set(Allowlist::parse(&spec.sources));
                        e.spec = spec;
                    }
                }
                Change::EgressBind { port, id, spec } => {
                    tracing::info!(port, target = %spec.target, id, "egress route added");
                    let entry = self.start_egress(id, port, spec);
                    st.egress.insert(port, entry);
                }
                Change::ReplaceHttp(routes) => {
                    let ids: Vec<u64> = routes.iter().map(|r| r.id).collect();
                    inner.http_table.replace(routes);
                    inner.http_stats.retain_routes(&ids);
                }
            }
        }
        if let Some(ns) = &s.near {
            let wanted: BTreeMap<u64, NearSpec> = config
                .egress_routes
                .iter()
                .enumerate()
                .filter_map(|(idx, r)| NearSpec::of(idx, r))
                .map(|n| (n.id, n))
                .collect();
            // A changed or removed instance stops (a master steps down); a new one starts.
            st.near.retain(|id, (spec, _)| wanted.get(id) == Some(spec));
            for (id, spec) in wanted {
                st.near.entry(id).or_insert_with(|| {
                    let handle = near::spawn(spec.clone(), ns.clone());
                    (spec, handle)
                });
            }
        }
        if save && s.state_dir.is_some() {
            let config = Arc::new(config.clone());
            inner
                .saves
                .send_modify(|(generation, c)| (*generation, *c) = (*generation + 1, Some(config)));
        }
        st.config = config;
        drop(st);
        if new_targets {
            inner.probe_now.notify_one();
        }
    }

    /// Waits until the config of the last apply is saved in the state directory (at once when
    /// there is no state directory, or it cannot be saved).
    pub async fn wait_saved(&self) {
        let want = self.inner.saves.borrow().0;
        let mut saved = self.inner.saved.clone();
        let _ = saved.wait_for(|g| *g >= want).await;
    }

    fn start_l4(&self, id: u64, port: u16, target: Target) -> L4Entry {
        let inner = &self.inner;
        let s = &inner.settings;
        let addr = SocketAddr::new(s.bind_ip, port);
        let retry = (s.retry_initial, s.retry_max);
        let target = TargetCell::new(target);
        let counters = Arc::new(RouteCounters::default());
        let switches = Switches::new();
        let tcp_state: StateCell = Arc::new(Mutex::new(ListenerState::Idle));
        let udp_state: StateCell = Arc::new(Mutex::new(ListenerState::Idle));
        let tcp_route = TcpRoute {
            target: target.clone(),
            counters: counters.clone(),
            config: inner.tcp_config.clone(),
            global: inner.global.clone(),
            kill: switches.kill_rx(),
            waker: s.waker.clone(),
            sources: None,
            via: Default::default(),
        };
        let udp_route = UdpRoute {
            target: target.clone(),
            counters: counters.clone(),
            config: inner.udp_config.clone(),
            kill: switches.kill_rx(),
            waker: s.waker.clone(),
        };
        // Bound here, synchronously, so the answer to the apply already says what happened.
        let tcp_first = s.stack.bind_tcp(addr);
        let udp_first = inner.udp_sockets.take_or_bind(&s.stack, addr);
        set_state(&tcp_state, first_state(&tcp_first, "L4 TCP listener"));
        set_state(&udp_state, first_state(&udp_first, "L4 UDP listener"));
        tokio::spawn(keep_bound(
            tcp_first,
            {
                let stack = s.stack.clone();
                move || stack.bind_tcp(addr)
            },
            move |l, stop| tcp::serve(l, tcp_route, stop),
            tcp_state.clone(),
            switches.stop.subscribe(),
            retry,
            format!("TCP {addr}"),
        ));
        tokio::spawn(keep_bound(
            udp_first,
            {
                let sockets = inner.udp_sockets.clone();
                let stack = s.stack.clone();
                move || sockets.take_or_bind(&stack, addr)
            },
            move |l, stop| udp::serve(l, udp_route, stop),
            udp_state.clone(),
            switches.stop.subscribe(),
            retry,
            format!("UDP {addr}"),
        ));
        L4Entry {
            id,
            target,
            counters,
            tcp: tcp_state,
            udp: udp_state,
            switches,
        }
    }

    fn start_egress(&self, id: u64, port: u16, spec: EgressSpec) -> EgressEntry {
        let inner = &self.inner;
        let s = &inner.settings;
        let addr = SocketAddr::new(s.egress_bind_ip, port);
        let target = TargetCell::new(spec.target.clone());
        let sources = SourceCell::new(Allowlist::parse(&spec.sources));
        let counters = Arc::new(RouteCounters::default());
        let switches = Switches::new();
        let state: StateCell = Arc::new(Mutex::new(ListenerState::Idle));
        let route = TcpRoute {
            target: target.clone(),
            counters: counters.clone(),
            config: inner.tcp_config.clone(),
            global: inner.global.clone(),
            kill: switches.kill_rx(),
            waker: None,
            sources: Some(sources.clone()),
            via: Via::Tunnel(s.stack.clone()),
        };
        // Always a kernel socket: the LAN is the host's network in both stack modes.
        let first = bind_lan_tcp(addr);
        set_state(&state, first_state(&first, "egress listener"));
        tokio::spawn(keep_bound(
            first,
            move || bind_lan_tcp(addr),
            move |l, stop| tcp::serve(l, route, stop),
            state.clone(),
            switches.stop.subscribe(),
            (s.retry_initial, s.retry_max),
            format!("egress {addr}"),
        ));
        EgressEntry {
            id,
            spec,
            target,
            sources,
            counters,
            state,
            switches,
        }
    }

    /// Status of everything the manager runs, from counters and cells (no I/O).
    pub fn status(&self) -> RoutesStatus {
        let st = locked(&self.inner.state);
        let reach = |host: &str, port: u16| {
            st.reach
                .get(&Target {
                    host: host.to_owned(),
                    port,
                })
                .cloned()
        };
        let mut routes = Vec::with_capacity(st.l4.len() + st.config.http_routes.len());
        for (port, e) in &st.l4 {
            let t = e.target.get();
            routes.push(RouteStatus {
                id: e.id,
                kind: RouteKind::L4,
                name: format!("l4:{port}"),
                listen_port: Some(*port),
                tcp: locked(&e.tcp).clone(),
                udp: Some(locked(&e.udp).clone()),
                active_connections: e.counters.active(),
                bytes: e.counters.bytes.load(std::sync::atomic::Ordering::Relaxed),
                refused: e
                    .counters
                    .refused
                    .load(std::sync::atomic::Ordering::Relaxed),
                failures: e
                    .counters
                    .target_failures
                    .load(std::sync::atomic::Ordering::Relaxed),
                last_error: e.counters.last_error(),
                reachability: reach(&t.host, t.port),
            });
        }
        let proxy = st.proxy.as_ref().map(|p| locked(&p.state).clone());
        for r in &st.config.http_routes {
            let c = self.inner.http_stats.route_if_any(r.id);
            let get = |f: fn(&RouteHttpCounters) -> &std::sync::atomic::AtomicU64| {
                c.as_deref().map_or(0, |c| HttpStats::get(f(c)))
            };
            routes.push(RouteStatus {
                id: r.id,
                kind: RouteKind::Http,
                name: r.domain.clone(),
                listen_port: None,
                tcp: proxy.clone().unwrap_or(ListenerState::Idle),
                udp: None,
                active_connections: get(|c| &c.active),
                bytes: get(|c| &c.bytes),
                refused: get(|c| &c.refused),
                failures: get(|c| &c.failures),
                last_error: None,
                reachability: reach(&r.target_host, r.target_port),
            });
        }
        let bind_ip = self.inner.settings.egress_bind_ip.to_string();
        let egress = st
            .egress
            .iter()
            .map(|(port, e)| {
                let load =
                    |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
                let (bound, bind_error) = match &*locked(&e.state) {
                    ListenerState::Listening => (true, None),
                    ListenerState::Failed { reason } => (false, Some(reason.clone())),
                    ListenerState::Idle => (false, None),
                };
                EgressStatus {
                    id: e.id,
                    bound,
                    bind_error,
                    lan_bind_ip: bind_ip.clone(),
                    lan_listen_port: *port,
                    source_drops: load(&e.counters.source_drops),
                    active_connections: e.counters.active(),
                    bytes: load(&e.counters.bytes),
                    refused: load(&e.counters.refused),
                    failures: load(&e.counters.target_failures),
                    last_error: e.counters.last_error(),
                }
            })
            .collect();
        // The role over every instance: master if any holds its VIP, backup if any waits,
        // else none (no failover, or every instance in fault or unable to run).
        let states: Vec<VrrpState> = st.near.values().map(|(_, h)| h.state().state).collect();
        let role = if states.contains(&VrrpState::Master) {
            "master"
        } else if states.contains(&VrrpState::Backup) {
            "backup"
        } else {
            "none"
        };
        let egress_near = (!st.config.egress_routes.is_empty()).then(|| EgressNear {
            vips: st
                .config
                .egress_routes
                .iter()
                .map(|r| r.vip_ip.clone())
                .collect(),
            role: role.into(),
        });
        RoutesStatus {
            config_hash: st.config.config_hash.clone(),
            routes,
            http_proxy: proxy,
            api_relay: st.api.as_ref().map(|a| locked(&a.state).clone()),
            egress,
            egress_near,
        }
    }

    /// The targets to probe now (L4 and HTTP, each once).
    fn probe_targets(inner: &Inner) -> Vec<Target> {
        let st = locked(&inner.state);
        let mut v: Vec<Target> = st.l4.values().map(|e| (*e.target.get()).clone()).collect();
        v.extend(st.config.http_routes.iter().map(|r: &HttpRoute| Target {
            host: r.target_host.clone(),
            port: r.target_port,
        }));
        v.sort();
        v.dedup();
        v
    }
}

/// A kernel TCP listener on the LAN side (an egress route); the error says why in words.
fn bind_lan_tcp(addr: SocketAddr) -> Result<tokio::net::TcpListener, String> {
    let l = std::net::TcpListener::bind(addr).map_err(|e| crate::stack::bind_reason(addr, &e))?;
    l.set_nonblocking(true)
        .and_then(|()| tokio::net::TcpListener::from_std(l))
        .map_err(|e| crate::stack::bind_reason(addr, &e))
}

/// Saves each applied config in `dir`, in order, off the runtime thread (an fsync on a slow
/// card must not stall the relays); a burst of applies saves only the latest.
async fn persist_task(dir: PathBuf, mut rx: SavesRx, done: watch::Sender<u64>) {
    while rx.changed().await.is_ok() {
        let (generation, config) = rx.borrow_and_update().clone();
        if let Some(config) = config {
            let d = dir.clone();
            match tokio::task::spawn_blocking(move || persist::save(&d, &config)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!("{e}"),
                Err(e) => tracing::warn!(error = %e, "saving the applied config failed"),
            }
        }
        done.send_replace(generation);
    }
}

impl Inner {
    fn record_reachability(&self, target: Target, r: Reachability) {
        locked(&self.state).reach.insert(target, r);
    }

    /// For an L4 target: when it last answered a relayed UDP datagram (0: never), over every
    /// L4 route to it. None for a target of HTTP routes only (TCP decides alone).
    fn udp_answered_ms(&self, target: &Target) -> Option<u64> {
        let st = locked(&self.state);
        st.l4
            .values()
            .filter(|e| *e.target.get() == *target)
            .map(|e| {
                e.counters
                    .udp_answered_ms
                    .load(std::sync::atomic::Ordering::Relaxed)
            })
            .max()
    }

    fn forget_unprobed(&self, keep: &[Target]) {
        locked(&self.state).reach.retain(|t, _| keep.contains(t));
    }
}

#[cfg(test)]
mod tests;
