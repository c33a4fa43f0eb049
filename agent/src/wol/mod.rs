//! Wake-on-LAN: magic packets ([`packet`]) on the LAN interfaces ([`ifaces`], [`send`]), then
//! a TCP probe of the host until it answers.
//!
//! One [`Waker`] per agent, built by the composition root (`main.rs`) and handed as a value to
//! the parts that wake: the control socket's handler, the route manager (which passes it on to
//! the relays and the proxy). Three triggers: the control socket's
//! `Request::Wake` (the companion's `/api/wol`), the HTTP proxy when a route with `wol` finds
//! its backend silent ([`Waker::hold`]), and the TCP relay of an L4 route with `wol`
//! ([`connect_or_wake`]). Concurrent wakes of one MAC share one wait; the last [`HISTORY`]
//! results are kept for the status answer.

pub mod ifaces;
pub mod packet;
pub mod send;

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use gatelet_agent_api::control::{AgentConfig, SentOn, WakeRequest, WakeResult, WolTarget};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

use self::ifaces::IfaceFilter;

/// Longest wait for a host to wake.
pub const MAX_WAKE_TIMEOUT: Duration = Duration::from_secs(300);
/// Wait of a control-socket wake that names none (`timeout_ms: 0`).
pub const DEFAULT_WAKE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long an HTTP request or L4 connection is held while its target wakes.
pub const HOLD_TIMEOUT: Duration = Duration::from_secs(30);
/// A browser waiting longer than this for its host gets the self-reloading "waking up" page
/// (the wake goes on in the background).
pub const BROWSER_WAIT: Duration = Duration::from_secs(10);
/// Seconds after which the "waking up" page reloads itself.
pub const WAKING_PAGE_REFRESH_S: u32 = 5;
/// Port probed when no route and no request names one.
pub const DEFAULT_PROBE_PORT: u16 = 80;
/// Pause between probes of a waking host.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(500);
/// Connect timeout of one probe.
pub const PROBE_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Wakes kept for the status answer.
pub const HISTORY: usize = 32;

/// A boxed future, as the [`Transport`] methods return.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// The I/O a wake does: send magic packets, probe the host. [`SystemTransport`] does it for
/// real; tests substitute a fake to run the scheduling on paused time.
pub trait Transport: Send + Sync + 'static {
    /// Sends `packet` on the LAN interfaces; one report per interface and destination.
    fn send(&self, packet: Vec<u8>) -> BoxFuture<Vec<SentOn>>;
    /// What a TCP connection to `host:port` meets within `timeout`.
    fn probe(&self, host: String, port: u16, timeout: Duration) -> BoxFuture<Probe>;
}

/// What a probe of a waking host met.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// The port accepted the connection.
    Open,
    /// The host answered with a reset: it is up, the TCP port is closed (UDP services).
    Refused,
    /// No answer (timeout, unreachable).
    Silent,
}

/// Real packets on the interfaces `filter` selects (to [`send::WOL_PORT`]), real TCP probes.
#[derive(Debug, Clone)]
pub struct SystemTransport {
    /// Interface selection.
    pub filter: IfaceFilter,
    /// Destination UDP port.
    pub port: u16,
}

impl Transport for SystemTransport {
    fn send(&self, packet: Vec<u8>) -> BoxFuture<Vec<SentOn>> {
        let filter = self.filter.clone();
        let port = self.port;
        Box::pin(async move {
            let all = match ifaces::list() {
                Ok(all) => all,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot list network interfaces for Wake-on-LAN");
                    return Vec::new();
                }
            };
            let chosen = filter.select(&all);
            send::send_all(&chosen, &packet, port, send::REPEATS, send::REPEAT_GAP).await
        })
    }

    fn probe(&self, host: String, port: u16, timeout: Duration) -> BoxFuture<Probe> {
        Box::pin(async move {
            match tokio::time::timeout(timeout, TcpStream::connect((host.as_str(), port))).await {
                Ok(Ok(_)) => Probe::Open,
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => Probe::Refused,
                _ => Probe::Silent,
            }
        })
    }
}

/// One wake to carry out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WakeSpec {
    /// The MAC.
    pub mac: [u8; 6],
    /// SecureOn password (4 or 6 bytes).
    pub secureon: Option<Vec<u8>>,
    /// Host and port to probe until they answer; None: success once the packets are sent.
    pub probe: Option<(String, u16)>,
    /// A refused probe counts as up (the host answers; for UDP services without that TCP
    /// port).
    pub refused_is_up: bool,
    /// Longest wait (capped at [`MAX_WAKE_TIMEOUT`]).
    pub timeout: Duration,
    /// What asked for it (`api`, `http`, `l4`).
    pub trigger: String,
}

/// A wake in progress; [`WakeHandle::wait`] gives its result.
#[derive(Debug, Clone)]
pub struct WakeHandle(watch::Receiver<Option<WakeResult>>);

impl WakeHandle {
    /// Waits for the result (shared by every caller of the same wake).
    pub async fn wait(mut self) -> WakeResult {
        loop {
            if let Some(r) = self.0.borrow_and_update().clone() {
                return r;
            }
            if self.0.changed().await.is_err() {
                let last = self.0.borrow().clone();
                return last.unwrap_or_else(|| WakeResult {
                    mac: String::new(),
                    trigger: String::new(),
                    success: false,
                    elapsed_ms: 0,
                    reason: Some("aborted".into()),
                    sent_on: Vec::new(),
                    at_ms: 0,
                });
            }
        }
    }
}

/// Outcome of [`Waker::hold`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hold {
    /// The target has no Wake-on-LAN: nothing was done.
    NotWol,
    /// The host woke and answers.
    Up,
    /// Still waking when the caller's wait ended; the wake goes on in the background.
    StillWaking,
    /// The wake ended without the host answering.
    Failed(WakeResult),
}

#[derive(Debug, Clone)]
struct RouteWol {
    host: String,
    port: u16,
    wol: Option<WolTarget>,
}

struct Inner {
    transport: Box<dyn Transport>,
    waits: Mutex<HashMap<[u8; 6], watch::Receiver<Option<WakeResult>>>>,
    history: Mutex<VecDeque<WakeResult>>,
    routes: RwLock<Vec<RouteWol>>,
}

/// Sends wakes, shares concurrent waits, keeps history. Cheap to clone.
#[derive(Clone)]
pub struct Waker(Arc<Inner>);

impl std::fmt::Debug for Waker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Waker").finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn mac_text(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Waker {
    /// A waker doing its I/O through `transport`.
    pub fn new(transport: impl Transport) -> Self {
        Waker(Arc::new(Inner {
            transport: Box::new(transport),
            waits: Mutex::new(HashMap::new()),
            history: Mutex::new(VecDeque::new()),
            routes: RwLock::new(Vec::new()),
        }))
    }

    /// A waker sending real packets on the interfaces `filter` selects.
    pub fn system(filter: IfaceFilter) -> Self {
        Self::new(SystemTransport {
            filter,
            port: send::WOL_PORT,
        })
    }

    /// Remembers the routes of `config` (targets and their `wol`) for probe ports, SecureOn
    /// passwords and the HTTP/L4 triggers.
    pub fn set_routes(&self, config: &AgentConfig) {
        let http = config.http_routes.iter().map(|r| RouteWol {
            host: r.target_host.clone(),
            port: r.target_port,
            wol: r.wol.clone(),
        });
        let l4 = config.l4_routes.iter().map(|r| RouteWol {
            host: r.target_host.clone(),
            port: r.target_port,
            wol: r.wol.clone(),
        });
        let all = http.chain(l4).collect();
        *self.0.routes.write().unwrap_or_else(|p| p.into_inner()) = all;
    }

    fn routes(&self) -> Vec<RouteWol> {
        self.0
            .routes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The Wake-on-LAN target of a route pointing at `host:port`, if one has `wol`.
    pub fn wol_for(&self, host: &str, port: u16) -> Option<WolTarget> {
        self.routes()
            .into_iter()
            .find(|r| r.host == host && r.port == port && r.wol.is_some())
            .and_then(|r| r.wol)
    }

    /// The last [`HISTORY`] wakes, oldest first.
    pub fn recent(&self) -> Vec<WakeResult> {
        lock(&self.0.history).iter().cloned().collect()
    }

    /// Starts a wake, or joins the one already running for the same MAC.
    pub fn start(&self, spec: WakeSpec) -> WakeHandle {
        let mut waits = lock(&self.0.waits);
        if let Some(rx) = waits.get(&spec.mac) {
            if rx.borrow().is_none() {
                return WakeHandle(rx.clone());
            }
        }
        let (tx, rx) = watch::channel(None);
        waits.insert(spec.mac, rx.clone());
        drop(waits);
        let this = self.clone();
        tokio::spawn(async move {
            let mac = spec.mac;
            let result = this.run(spec).await;
            tracing::info!(
                mac = %result.mac, trigger = %result.trigger, success = result.success,
                elapsed_ms = result.elapsed_ms, reason = result.reason.as_deref().unwrap_or("-"),
                interfaces = result.sent_on.len() / 2, "wake finished"
            );
            {
                let mut h = lock(&this.0.history);
                if h.len() >= HISTORY {
                    h.pop_front();
                }
                h.push_back(result.clone());
            }
            {
                let mut waits = lock(&this.0.waits);
                if waits
                    .get(&mac)
                    .is_some_and(|r| r.same_channel(&tx.subscribe()))
                {
                    waits.remove(&mac);
                }
            }
            let _ = tx.send(Some(result));
        });
        WakeHandle(rx)
    }

    /// Carries out `spec` (or joins the running wake of its MAC) and returns the result.
    pub async fn wake(&self, spec: WakeSpec) -> WakeResult {
        self.start(spec).wait().await
    }

    async fn run(&self, spec: WakeSpec) -> WakeResult {
        let start = Instant::now();
        let at_ms = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(millis)
            .unwrap_or(0);
        let timeout = spec.timeout.min(MAX_WAKE_TIMEOUT);
        let mut result = WakeResult {
            mac: mac_text(spec.mac),
            trigger: spec.trigger.clone(),
            success: false,
            elapsed_ms: 0,
            reason: None,
            sent_on: Vec::new(),
            at_ms,
        };
        let pkt = match packet::magic_packet(spec.mac, spec.secureon.as_deref()) {
            Ok(p) => p,
            Err(e) => {
                result.reason = Some(format!("invalid_secureon: {e}"));
                return result;
            }
        };
        tracing::info!(mac = %result.mac, trigger = %spec.trigger, timeout_ms = millis(timeout), "waking");
        result.sent_on = self.0.transport.send(pkt).await;
        if !result.sent_on.iter().any(|s| s.ok) {
            result.elapsed_ms = millis(start.elapsed());
            result.reason = Some(if result.sent_on.is_empty() {
                "no_interface".into()
            } else {
                "send_failed".into()
            });
            return result;
        }
        let Some((host, port)) = spec.probe else {
            result.success = true;
            result.elapsed_ms = millis(start.elapsed());
            return result;
        };
        let deadline = start + timeout;
        loop {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            let budget = PROBE_CONNECT_TIMEOUT.min(deadline - now);
            let up = match self.0.transport.probe(host.clone(), port, budget).await {
                Probe::Open => true,
                Probe::Refused => spec.refused_is_up,
                Probe::Silent => false,
            };
            if up {
                result.success = true;
                result.elapsed_ms = millis(start.elapsed());
                return result;
            }
            let next = (now + PROBE_INTERVAL).min(deadline);
            tokio::time::sleep_until(next).await;
        }
        result.elapsed_ms = millis(start.elapsed());
        result.reason = Some("timeout".into());
        result
    }

    /// Carries out a control-socket wake: probes `lan_host` (or the host of a route with this
    /// MAC) on the port of a route pointing at it, else the request's port, else
    /// [`DEFAULT_PROBE_PORT`]; uses the SecureOn password of a route with this MAC.
    pub async fn answer(&self, req: &WakeRequest) -> WakeResult {
        let trigger = if req.trigger.is_empty() {
            "api".to_owned()
        } else {
            req.trigger.clone()
        };
        let mac = match packet::parse_mac(&req.mac) {
            Ok(m) => m,
            Err(_) => {
                return WakeResult {
                    mac: req.mac.clone(),
                    trigger,
                    success: false,
                    elapsed_ms: 0,
                    reason: Some("invalid_mac".into()),
                    sent_on: Vec::new(),
                    at_ms: 0,
                }
            }
        };
        let routes = self.routes();
        let text = mac_text(mac);
        let by_mac = routes.iter().find(|r| {
            r.wol
                .as_ref()
                .and_then(|w| gatelet_agent_api::mac::normalize(&w.mac))
                .is_some_and(|m| m == text)
        });
        let host = req
            .lan_host
            .clone()
            .or_else(|| by_mac.map(|r| r.host.clone()));
        let probe = host.map(|h| {
            let port = routes
                .iter()
                .find(|r| r.host == h)
                .map(|r| r.port)
                .or(req.port)
                .unwrap_or(DEFAULT_PROBE_PORT);
            (h, port)
        });
        let secureon = by_mac
            .and_then(|r| r.wol.as_ref())
            .and_then(|w| w.secureon.as_deref())
            .and_then(|s| packet::parse_secureon(s).ok());
        let timeout = match req.timeout_ms {
            0 => DEFAULT_WAKE_TIMEOUT,
            ms => Duration::from_millis(ms).min(MAX_WAKE_TIMEOUT),
        };
        self.wake(WakeSpec {
            mac,
            secureon,
            probe,
            refused_is_up: false,
            timeout,
            trigger,
        })
        .await
    }

    /// For a route target that did not answer: when a route pointing at `host:port` has `wol`,
    /// wakes it (probing `host:port` for up to [`HOLD_TIMEOUT`]) and waits up to `max_wait`.
    pub async fn hold(&self, host: &str, port: u16, trigger: &str, max_wait: Duration) -> Hold {
        let Some(wol) = self.wol_for(host, port) else {
            return Hold::NotWol;
        };
        self.hold_wol(&wol, host, port, trigger, max_wait).await
    }

    /// Wakes `wol` (probing `host:port` for up to [`HOLD_TIMEOUT`]) and waits up to `max_wait`.
    pub async fn hold_wol(
        &self,
        wol: &WolTarget,
        host: &str,
        port: u16,
        trigger: &str,
        max_wait: Duration,
    ) -> Hold {
        self.hold_spec(wol, host, port, trigger, max_wait, false)
            .await
    }

    async fn hold_spec(
        &self,
        wol: &WolTarget,
        host: &str,
        port: u16,
        trigger: &str,
        max_wait: Duration,
        refused_is_up: bool,
    ) -> Hold {
        let Ok(mac) = packet::parse_mac(&wol.mac) else {
            tracing::warn!(mac = %wol.mac, "route has an invalid Wake-on-LAN MAC; not waking");
            return Hold::NotWol;
        };
        let secureon = wol
            .secureon
            .as_deref()
            .and_then(|s| packet::parse_secureon(s).ok());
        let handle = self.start(WakeSpec {
            mac,
            secureon,
            probe: Some((host.to_owned(), port)),
            refused_is_up,
            timeout: HOLD_TIMEOUT,
            trigger: trigger.to_owned(),
        });
        match tokio::time::timeout(max_wait, handle.wait()).await {
            Ok(r) if r.success => Hold::Up,
            Ok(r) => Hold::Failed(r),
            Err(_) => Hold::StillWaking,
        }
    }
}

/// For the L4 relay: `first` is its connect attempt. When it failed and the target's route has
/// `wol` (and there is a `waker`), holds the connection while the host wakes (up to
/// [`HOLD_TIMEOUT`]) and connects again.
pub async fn connect_or_wake(
    first: std::io::Result<TcpStream>,
    target: &crate::target::Target,
    connect_timeout: Duration,
    waker: Option<&Waker>,
) -> std::io::Result<TcpStream> {
    let err = match first {
        Ok(s) => return Ok(s),
        Err(e) => e,
    };
    let Some(waker) = waker else {
        return Err(err);
    };
    match waker
        .hold(&target.host, target.port, "l4", HOLD_TIMEOUT)
        .await
    {
        Hold::NotWol => Err(err),
        Hold::Up => crate::target::connect(target, connect_timeout).await,
        Hold::StillWaking | Hold::Failed(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!(
                "{err}; woken but not up within {} s",
                HOLD_TIMEOUT.as_secs()
            ),
        )),
    }
}

/// Bytes of UDP a session buffers while its target wakes; later datagrams are dropped.
pub const UDP_HOLD_BYTES: usize = 64 * 1024;

#[derive(Debug)]
enum GateState {
    Holding { queued: Vec<Vec<u8>>, bytes: usize },
    Open,
}

/// The UDP side of an L4 route with `wol`: a new session's datagrams are held (up to
/// [`UDP_HOLD_BYTES`]) until its target answers, waking it when it does not.
#[derive(Debug)]
pub struct UdpGate {
    state: Mutex<GateState>,
    waker: Waker,
}

impl UdpGate {
    /// A closed gate and the target's `wol`, when a route pointing at `target` has one (as
    /// `waker` knows the routes); None otherwise.
    pub fn for_target(
        target: &crate::target::Target,
        waker: &Waker,
    ) -> Option<(Arc<UdpGate>, WolTarget)> {
        let wol = waker.wol_for(&target.host, target.port)?;
        let gate = UdpGate {
            state: Mutex::new(GateState::Holding {
                queued: Vec::new(),
                bytes: 0,
            }),
            waker: waker.clone(),
        };
        Some((Arc::new(gate), wol))
    }

    /// True when `data` must not be sent now: it was queued (or dropped, the queue being
    /// full) while the gate is closed.
    pub fn hold(&self, data: &[u8]) -> bool {
        match &mut *lock(&self.state) {
            GateState::Open => false,
            GateState::Holding { queued, bytes } => {
                if *bytes + data.len() <= UDP_HOLD_BYTES {
                    *bytes += data.len();
                    queued.push(data.to_vec());
                }
                true
            }
        }
    }

    /// Checks the target (a TCP probe; a reset counts as up), wakes it if silent and waits up
    /// to [`HOLD_TIMEOUT`]; then opens the gate and returns the held datagrams, in order.
    pub async fn open_when_up(
        &self,
        target: &crate::target::Target,
        wol: &WolTarget,
    ) -> Vec<Vec<u8>> {
        let w = &self.waker;
        let probe =
            w.0.transport
                .probe(target.host.clone(), target.port, PROBE_CONNECT_TIMEOUT)
                .await;
        let up = probe != Probe::Silent
            || w.hold_spec(wol, &target.host, target.port, "l4", HOLD_TIMEOUT, true)
                .await
                == Hold::Up;
        if !up {
            tracing::debug!(%target, "UDP target did not wake; sending the held datagrams anyway");
        }
        match std::mem::replace(&mut *lock(&self.state), GateState::Open) {
            GateState::Holding { queued, .. } => queued,
            GateState::Open => Vec::new(),
        }
    }
}

/// The "waking up" page for a browser: 503 with `Retry-After` and a meta refresh of
/// [`WAKING_PAGE_REFRESH_S`] seconds; the connection closes after it.
pub fn waking_page(host: &str) -> Vec<u8> {
    let safe: String = host
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':'))
        .collect();
    let body = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"refresh\" content=\"{WAKING_PAGE_REFRESH_S}\">\
         <title>Waking up</title></head><body><h1>Waking up {safe}</h1>\
         <p>The server is starting. This page reloads itself every {WAKING_PAGE_REFRESH_S} \
         seconds.</p></body></html>\n"
    );
    format!(
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/html; charset=utf-8\r\n\
         Retry-After: {WAKING_PAGE_REFRESH_S}\r\nCache-Control: no-store\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

#[cfg(test)]
mod tests;
