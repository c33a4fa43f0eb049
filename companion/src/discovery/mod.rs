//! LAN discovery: `/api/lan-scan` starts a scan of the gateway's own subnets; the results go
//! to `POST /api/v1/gateway/discovery` in batches while it runs.
//!
//! **Where it runs: the companion.** The architecture gives the agent the sockets that serve
//! traffic (tunnel-side listeners, LAN-side egress listeners, the VRRP address) and the
//! companion the server conversation. A scan serves no traffic: it opens short-lived
//! *outgoing* sockets (TCP connects, two multicast queries from an ephemeral port, unicast
//! DNS), which need no privilege and no TUN, and are kernel sockets in either netstack mode
//! ("connections to the LAN are always kernel sockets"). Running it in the agent would put a
//! sweep of thousands of connects on the data plane's runtime (on a one-core router, next to
//! the relays) and would need a streaming control-socket protocol just to carry the results
//! to the process that sends them. In the companion the results go straight into the batch
//! schedule and the shared request budget, and a scan that misbehaves cannot stall a packet.
//!
//! Layout: [`categories`] (the server's category keys → ports), [`sweep`] (the adaptive TCP
//! sweep plan, sans-IO), [`batch`] (device records, the server's limits, the batch schedule,
//! sans-IO), [`dns`] (mDNS and reverse lookups), [`scan`] (the driver, one thread, `poll(2)`),
//! [`sys`] (the system calls), and here: request validation, one scan at a time, and the
//! reporter that posts batches within the budget.

pub mod batch;
pub mod categories;
pub mod dns;
pub mod scan;
pub mod sweep;

use std::net::{IpAddr, Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gatelet_agent_api::env::{Cidr, DiscoveryEnv};
use serde_json::{json, Value};

use crate::client::Client;
use crate::sync::budget::{Class, SharedBudget};

pub use scan::{Plan, Reporter, Scope, Summary};

/// The server gives up on a scan this long after its request; nothing is sent later.
pub const SERVER_GIVE_UP: Duration = Duration::from_secs(60);
/// Subnets per request at most (the gateway has few; a request listing more is refused).
pub const MAX_SUBNETS: usize = 16;

/// A validated `/api/lan-scan` request.
#[derive(Debug, Clone, PartialEq)]
pub struct ScanRequest {
    /// `request_id`.
    pub request_id: String,
    /// The requested subnets that are the gateway's own and small enough.
    pub scopes: Vec<Scope>,
    /// The active categories.
    pub selection: categories::Selection,
    /// `active_scan`.
    pub active: bool,
    /// `timeout_ms`, capped by `GC_DISCOVERY_TIMEOUT_MS`.
    pub timeout: Duration,
}

/// Why a request is refused: (HTTP status, error code).
pub type Refusal = (u16, &'static str);

/// Checks a request body against the gateway's own subnets (`own`: cidr and local address).
pub fn validate(
    body: &Value,
    own: &[(Cidr, Ipv4Addr)],
    env: &DiscoveryEnv,
) -> Result<ScanRequest, Refusal> {
    let request_id = body
        .get("request_id")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty() && s.len() <= 128)
        .ok_or((400, "request_id_required"))?;
    let subnets = body
        .get("subnets")
        .and_then(Value::as_array)
        .filter(|a| !a.is_empty() && a.len() <= MAX_SUBNETS)
        .ok_or((400, "subnets_required"))?;
    let mut scopes: Vec<Scope> = Vec::new();
    for s in subnets.iter().filter_map(Value::as_str) {
        let Ok(c) = s.parse::<Cidr>() else { continue };
        let Some((cidr, local)) = own.iter().find(|(o, _)| *o == c) else {
            continue;
        };
        if cidr.prefix < env.max_prefix || !matches!(cidr.addr, IpAddr::V4(_)) {
            continue;
        }
        if !scopes.iter().any(|x| x.cidr == *cidr) {
            scopes.push(Scope {
                cidr: *cidr,
                local: *local,
            });
        }
    }
    if scopes.is_empty() {
        return Err((403, "no_valid_subnets"));
    }
    let mode = match body.get("category_mode").and_then(Value::as_str) {
        Some("exclude") => categories::Mode::Exclude,
        _ => categories::Mode::Include,
    };
    let keys: Vec<String> = body
        .get("categories")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .take(32)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    let timeout = body
        .get("timeout_ms")
        .and_then(Value::as_u64)
        .map_or(env.timeout, Duration::from_millis)
        .min(env.timeout)
        .max(Duration::from_secs(1));
    Ok(ScanRequest {
        request_id: request_id.to_owned(),
        scopes,
        selection: categories::Selection::resolve(mode, &keys),
        active: body.get("active_scan").and_then(Value::as_bool) == Some(true),
        timeout,
    })
}

/// The 202 answer.
pub fn accepted(req: &ScanRequest) -> Value {
    json!({
        "accepted": true,
        "request_id": req.request_id,
        "subnets_scanned": req.scopes.iter().map(|s| s.cidr.to_string()).collect::<Vec<_>>(),
    })
}

/// Supplies the gateway's own subnets with its address on each.
pub type OwnSubnets = Arc<dyn Fn() -> Vec<(Cidr, Ipv4Addr)> + Send + Sync>;

/// Runs scans, one at a time, on their own thread. Cheap to clone.
#[derive(Clone)]
pub struct Scanner {
    /// The gateway's subnets.
    pub own: OwnSubnets,
    /// `GC_DISCOVERY_*`.
    pub env: DiscoveryEnv,
    /// Where results go (the server), or None in standalone mode.
    pub server: Option<(Client, SharedBudget)>,
    /// LAN resolvers for reverse lookups.
    pub resolvers: Arc<dyn Fn() -> Vec<SocketAddrV4> + Send + Sync>,
    /// The neighbour table.
    pub arp_table: PathBuf,
    running: Arc<AtomicBool>,
}

impl std::fmt::Debug for Scanner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scanner")
            .field("env", &self.env)
            .field("running", &self.running.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Scanner {
    /// A scanner over `own` subnets reporting to `server`.
    pub fn new(own: OwnSubnets, env: DiscoveryEnv, server: Option<(Client, SharedBudget)>) -> Self {
        Scanner {
            own,
            env,
            server,
            resolvers: Arc::new(Vec::new),
            arp_table: PathBuf::from("/proc/net/arp"),
            running: Arc::default(),
        }
    }

    /// Whether a scan is running.
    pub fn busy(&self) -> bool {
        self.running.load(Ordering::SeqCst)
    }

    /// Handles a request body: the HTTP status and JSON answer. Starts the scan on success.
    pub fn start(&self, body: &Value) -> (u16, Value) {
        let req = match validate(body, &(self.own)(), &self.env) {
            Ok(r) => r,
            Err((status, code)) => return (status, json!({ "error": code })),
        };
        let Some((client, budget)) = self.server.clone() else {
            return (409, json!({"error": "no_server"}));
        };
        if self.running.swap(true, Ordering::SeqCst) {
            return (409, json!({"error": "scan_in_progress"}));
        }
        let answer = accepted(&req);
        let plan = self.plan(&req, Instant::now());
        let running = self.running.clone();
        let spawned = std::thread::Builder::new()
            .name("lan-scan".into())
            .spawn(move || {
                // Batches are posted on their own thread, so a slow server (up to 10 s a
                // POST) never holds up the sweep's timing; the scan ends when the closing
                // batch has been posted.
                let mut server = ServerReporter::new(client, budget, Instant::now());
                let (tx, rx) = std::sync::mpsc::channel::<(Vec<Vec<u8>>, bool)>();
                let sender = std::thread::Builder::new()
                    .name("lan-scan-post".into())
                    .spawn(move || {
                        for (bodies, done) in rx {
                            server.report(bodies, done);
                        }
                    });
                let mut queue = Queue(tx);
                let s = scan::run(&plan, &mut queue);
                drop(queue);
                if let Ok(sender) = sender {
                    let _ = sender.join();
                }
                tracing::info!(request_id = %plan.request_id, devices = s.devices,
                    tcp_probes = s.tcp_probes, datagrams = s.datagrams, batches = s.batches,
                    first_batch_ms = s.first_batch.map_or(0, |d| d.as_millis() as u64),
                    took_ms = s.took.as_millis() as u64,
                    cut_by_deadline = s.cut_by_deadline, "lan scan finished");
                running.store(false, Ordering::SeqCst);
            });
        if let Err(e) = spawned {
            self.running.store(false, Ordering::SeqCst);
            tracing::error!(error = %e, "cannot start the lan scan thread");
            return (500, json!({"error": "scan_unavailable"}));
        }
        (202, answer)
    }

    /// The scan plan for a validated request started at `now`.
    pub fn plan(&self, req: &ScanRequest, now: Instant) -> Plan {
        Plan {
            request_id: req.request_id.clone(),
            scopes: req.scopes.clone(),
            selection: req.selection.clone(),
            active: req.active,
            concurrency: usize::from(self.env.concurrency),
            deadline: now + req.timeout,
            resolvers: (self.resolvers)(),
            arp_table: self.arp_table.clone(),
            policy: batch::BatchPolicy::default(),
        }
    }
}

/// A scanner over this box's LAN subnets (as telemetry reports them) with the LAN's
/// resolvers (`/etc/resolv.conf` nameservers inside those subnets) for reverse lookups.
pub fn system_scanner(
    src: crate::telemetry::TelemetrySource,
    env: DiscoveryEnv,
    server: Option<(Client, SharedBudget)>,
) -> Scanner {
    let own: OwnSubnets = {
        let src = src.clone();
        Arc::new(move || {
            crate::telemetry::lan_subnets(&src)
                .iter()
                .map(|s| (s.cidr(), s.addr))
                .collect()
        })
    };
    let mut scanner = Scanner::new(own, env, server);
    scanner.resolvers = Arc::new(move || {
        let subnets = crate::telemetry::lan_subnets(&src);
        let text = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        crate::telemetry::parse_resolv_conf(&text)
            .iter()
            .filter_map(|s| s.parse::<Ipv4Addr>().ok())
            .filter(|ip| subnets.iter().any(|s| s.contains(*ip)))
            .map(|ip| SocketAddrV4::new(ip, 53))
            .collect()
    });
    scanner
}

/// Hands batches to the posting thread.
struct Queue(std::sync::mpsc::Sender<(Vec<Vec<u8>>, bool)>);

impl Reporter for Queue {
    fn report(&mut self, bodies: Vec<Vec<u8>>, done: bool) {
        let _ = self.0.send((bodies, done));
    }
}

/// Posts batches to the server, each within the shared request budget. A partial batch the
/// budget has no room for is skipped (the closing batch repeats every device); the closing
/// batch waits for a slot until the server would give up.
pub struct ServerReporter {
    client: Client,
    budget: SharedBudget,
    give_up_at: Instant,
}

impl ServerReporter {
    /// A reporter for a scan the server requested at `requested`.
    pub fn new(client: Client, budget: SharedBudget, requested: Instant) -> Self {
        ServerReporter {
            client,
            budget,
            give_up_at: requested + SERVER_GIVE_UP,
        }
    }

    fn acquire(&self, wait: bool) -> bool {
        loop {
            let now = Instant::now();
            let mut b = self.budget.lock().unwrap_or_else(|p| p.into_inner());
            if b.try_acquire(Class::Sync, now) {
                return true;
            }
            let at = b.earliest(Class::Sync, now);
            drop(b);
            if !wait || at >= self.give_up_at {
                return false;
            }
            std::thread::sleep(
                at.saturating_duration_since(now)
                    .min(Duration::from_millis(500)),
            );
        }
    }
}

impl Reporter for ServerReporter {
    fn report(&mut self, bodies: Vec<Vec<u8>>, done: bool) {
        for body in bodies {
            if !self.acquire(done) {
                tracing::warn!(
                    done,
                    "lan scan: no request budget left for a batch; skipped"
                );
                continue;
            }
            match self.client.discovery(&body) {
                Ok((rate, answer)) => {
                    self.budget
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .observe(Instant::now(), &rate);
                    if answer.get("accepted") == Some(&Value::Bool(false)) {
                        tracing::warn!(reason = %answer["reason"], "lan scan: the server dropped a batch");
                    }
                }
                Err(e) => {
                    if let Some(rate) = e.rate_info() {
                        self.budget
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .rate_limited(Instant::now(), &rate);
                    }
                    tracing::warn!(error = %e, "lan scan: batch not delivered");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn own() -> Vec<(Cidr, Ipv4Addr)> {
        vec![
            (
                "192.168.1.0/24".parse().unwrap(),
                Ipv4Addr::new(192, 168, 1, 5),
            ),
            ("10.0.0.0/8".parse().unwrap(), Ipv4Addr::new(10, 0, 0, 9)),
        ]
    }

    #[test]
    fn requests_are_refused_with_the_servers_codes() {
        let env = DiscoveryEnv::default();
        let table: &[(Value, Result<(), Refusal>)] = &[
            (
                json!({"subnets": ["192.168.1.0/24"]}),
                Err((400, "request_id_required")),
            ),
            (
                json!({"request_id": "r", "subnets": []}),
                Err((400, "subnets_required")),
            ),
            (json!({"request_id": "r"}), Err((400, "subnets_required"))),
            (
                json!({"request_id": "r", "subnets": ["192.168.2.0/24"]}),
                Err((403, "no_valid_subnets")),
            ),
            (
                json!({"request_id": "r", "subnets": ["192.168.1.0/25"]}),
                Err((403, "no_valid_subnets")),
            ),
            (
                json!({"request_id": "r", "subnets": ["10.0.0.0/8"]}),
                Err((403, "no_valid_subnets")),
            ),
            (
                json!({"request_id": "r", "subnets": ["192.168.1.0/24", "10.0.0.0/8"]}),
                Ok(()),
            ),
        ];
        for (i, (body, expected)) in table.iter().enumerate() {
            let got = validate(body, &own(), &env).map(|_| ());
            assert_eq!(&got, expected, "row {i}: {body}");
        }
        let r = validate(
            &json!({"request_id": "r1", "subnets": ["192.168.1.0/24"], "category_mode": "exclude",
                    "categories": ["databases"], "active_scan": true, "timeout_ms": 90000}),
            &own(),
            &env,
        )
        .unwrap();
        assert_eq!(r.timeout, env.timeout, "capped by GC_DISCOVERY_TIMEOUT_MS");
        assert!(r.active);
        assert_eq!(
            accepted(&r),
            json!({"accepted": true, "request_id": "r1", "subnets_scanned": ["192.168.1.0/24"]})
        );
    }
}
