//! The heartbeat body (protocol §5) and the self-check that `/api/status` answers.
//!
//! Built from what is already known: the agent's last status (from the control socket, cached
//! in `state::Shared`), the companion's own checks, and telemetry. Nothing here waits on the
//! network: the DNS check runs on its own thread and is read from its cache.
//!
//! Size: the server refuses bodies over 16 KiB. With hundreds of routes the lists are trimmed
//! from the tail, after ordering them so that what matters survives (failed listeners and
//! unreachable routes first), and the body says how many entries it left out.

use std::net::ToSocketAddrs;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gatelet_agent_api::control::{AgentStatus, ListenerState, RouteKind};
use serde::Serialize;

use crate::state::Snapshot;
use crate::telemetry::Telemetry;

/// Largest heartbeat body the server accepts, in bytes (its `Content-Length` limit).
pub const MAX_HEARTBEAT_BYTES: usize = 16 * 1024;

/// Largest `/api/status` answer the server reads, in bytes.
pub const MAX_STATUS_BYTES: usize = 64 * 1024;

/// How long a DNS check result stays fresh before a new one is started.
pub const DNS_RECHECK_INTERVAL: Duration = Duration::from_secs(60);

/// A DNS check still running after this long counts as failed (the resolver thread is
/// left to finish on its own; no second one starts meanwhile).
pub const DNS_TIMEOUT: Duration = Duration::from_secs(5);

/// One entry of `tcp_listeners`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TcpListener {
    /// The L4 listen port.
    pub port: u16,
    /// `listening` or `listener_failed`.
    pub status: &'static str,
}

/// One entry of `route_reachability`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RouteReach {
    /// The server's route id.
    pub route_id: u64,
    /// The domain, or `l4:<port>` for an L4 route.
    pub domain: String,
    /// Whether the LAN target accepted a connection.
    pub reachable: bool,
    /// Connect latency, when reachable.
    pub latency_ms: Option<u64>,
    /// When it was checked, ms since the epoch.
    pub last_checked_at: u64,
}

/// The self-check fields of §5: the heartbeat's health part, and all of `/api/status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SelfCheck {
    /// The HTTP proxy listener is up.
    pub http_proxy_healthy: bool,
    /// The management API is served and reachable from the tunnel.
    pub api_healthy: bool,
    /// L4 listeners, failed ones first.
    pub tcp_listeners: Vec<TcpListener>,
    /// Listeners left out to stay under the size limit (absent when none).
    #[serde(skip_serializing_if = "is_zero")]
    pub tcp_listeners_omitted: usize,
    /// L4 routes in the config.
    pub l4_routes_configured: usize,
    /// L4 routes without a working listener (or whose state is unknown).
    pub l4_listeners_missing: usize,
    /// Seconds since the last WireGuard handshake; null before the first.
    pub wg_handshake_age_s: Option<u64>,
    /// Whether the DNS check resolved.
    pub dns_resolve_ok: bool,
    /// Route reachability, unreachable ones first.
    pub route_reachability: Vec<RouteReach>,
    /// Routes left out to stay under the size limit (absent when none).
    #[serde(skip_serializing_if = "is_zero")]
    pub route_reachability_omitted: usize,
    /// Proxy and API healthy, no failed listener, agent reachable.
    pub overall_healthy: bool,
    /// Whether the agent answered its control socket (an extra field; the server shows it).
    pub agent_reachable: bool,
    /// Where the agent terminates the tunnel: `kernel` (TUN device) or `userspace`
    /// (`GATELET_NETSTACK`); an extra field, absent when the agent is unreachable or does not
    /// say.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub netstack: Option<&'static str>,
}

/// The `GATELET_NETSTACK` word for the agent's interface mode.
fn netstack_word(mode: &str) -> Option<&'static str> {
    match mode {
        "tun" => Some("kernel"),
        "netstack" => Some("userspace"),
        _ => None,
    }
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// What the self-check is computed from.
#[derive(Debug, Clone, Copy, Default)]
pub struct SelfCheckInput<'a> {
    /// The agent's status, or None when it is unreachable.
    pub agent: Option<&'a AgentStatus>,
    /// L4 routes in the companion's current config, when known (used when the agent is
    /// unreachable; otherwise the agent's route list counts).
    pub configured_l4_routes: Option<usize>,
    /// Whether the companion's management API server is running.
    pub api_serving: bool,
    /// The DNS check's cached result (None: no result yet, reported as false).
    pub dns_resolve_ok: Option<bool>,
}

/// Computes the self-check. Lists come ordered for trimming: failed listeners first, then
/// by port; unreachable routes first, then by id.
pub fn self_check(input: &SelfCheckInput<'_>) -> SelfCheck {
    let dns_resolve_ok = input.dns_resolve_ok.unwrap_or(false);
    let Some(agent) = input.agent else {
        let configured = input.configured_l4_routes.unwrap_or(0);
        return SelfCheck {
            http_proxy_healthy: false,
            api_healthy: false,
            tcp_listeners: Vec::new(),
            tcp_listeners_omitted: 0,
            l4_routes_configured: configured,
            l4_listeners_missing: configured,
            wg_handshake_age_s: None,
            dns_resolve_ok,
            route_reachability: Vec::new(),
            route_reachability_omitted: 0,
            overall_healthy: false,
            agent_reachable: false,
            netstack: None,
        };
    };
    let mut tcp_listeners: Vec<TcpListener> = agent
        .routes
        .iter()
        .filter(|r| r.kind == RouteKind::L4)
        .filter_map(|r| {
            let failed = matches!(r.tcp, ListenerState::Failed { .. })
                || matches!(r.udp, Some(ListenerState::Failed { .. }));
            Some(TcpListener {
                port: r.listen_port?,
                status: if failed {
                    "listener_failed"
                } else {
                    r.tcp.heartbeat_word()
                },
            })
        })
        .collect();
    tcp_listeners.sort_by_key(|l| (l.status != "listener_failed", l.port));
    let failed = tcp_listeners
        .iter()
        .filter(|l| l.status == "listener_failed")
        .count();
    let l4_in_agent = agent
        .routes
        .iter()
        .filter(|r| r.kind == RouteKind::L4)
        .count();
    let configured = input.configured_l4_routes.unwrap_or(l4_in_agent);
    let listening = tcp_listeners.len() - failed;
    let mut route_reachability: Vec<RouteReach> = agent
        .routes
        .iter()
        .filter_map(|r| {
            let re = r.reachability.as_ref()?;
            Some(RouteReach {
                route_id: r.id,
                domain: r.name.clone(),
                reachable: re.reachable,
                latency_ms: re.latency_ms.filter(|_| re.reachable),
                last_checked_at: re.last_checked_at,
            })
        })
        .collect();
    route_reachability.sort_by_key(|r| (r.reachable, r.route_id));
    let http_proxy_healthy = matches!(
        agent.http_proxy,
        Some(ListenerState::Listening | ListenerState::Idle)
    );
    let api_healthy =
        input.api_serving && matches!(agent.api_relay, Some(ListenerState::Listening));
    SelfCheck {
        http_proxy_healthy,
        api_healthy,
        tcp_listeners,
        tcp_listeners_omitted: 0,
        l4_routes_configured: configured,
        l4_listeners_missing: configured.saturating_sub(listening),
        wg_handshake_age_s: agent.tunnel.handshake_age_s,
        dns_resolve_ok,
        route_reachability,
        route_reachability_omitted: 0,
        overall_healthy: http_proxy_healthy && api_healthy && failed == 0,
        agent_reachable: true,
        netstack: netstack_word(&agent.tunnel.mode),
    }
}

/// The heartbeat body: the self-check plus identity, uptime and telemetry.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Heartbeat {
    /// Health fields.
    #[serde(flatten)]
    pub check: SelfCheck,
    /// This box's host name.
    pub hostname: String,
    /// The config hash in force, exactly as the server gave it.
    pub config_hash: Option<String>,
    /// Seconds since the companion started.
    pub uptime_s: u64,
    /// Telemetry.
    pub telemetry: Telemetry,
}

/// Why a body could not be encoded.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    /// serde_json refused a value (not expected for these types).
    #[error("heartbeat body could not be encoded as JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// Even with both lists emptied the body is over the limit (telemetry too large).
    #[error("heartbeat body is {size} bytes with every list trimmed, over the {max} byte limit")]
    TooLarge {
        /// Smallest size reached.
        size: usize,
        /// The limit.
        max: usize,
    },
}

impl Heartbeat {
    /// The heartbeat for what the shared snapshot knows now. The agent's cached status
    /// counts only while `agent_reachable` holds; `configured_l4_routes` comes from the
    /// companion's current config (reported as missing when the agent is unreachable).
    pub fn from_snapshot(
        snap: &Snapshot,
        configured_l4_routes: Option<usize>,
        api_serving: bool,
        dns_resolve_ok: Option<bool>,
        telemetry: Telemetry,
        now_ms: u64,
    ) -> Heartbeat {
        let check = self_check(&SelfCheckInput {
            agent: snap.agent.as_ref().filter(|_| snap.agent_reachable),
            configured_l4_routes,
            api_serving,
            dns_resolve_ok,
        });
        Heartbeat {
            check,
            hostname: crate::telemetry::hostname(),
            config_hash: snap.sync.config_hash.clone(),
            uptime_s: now_ms.saturating_sub(snap.started_at_ms) / 1000,
            telemetry,
        }
    }

    /// Encodes the body in at most `max` bytes ([`MAX_HEARTBEAT_BYTES`] for the server),
    /// trimming the lists as needed; `self.check` is left as sent (with the omitted counts).
    pub fn encode_bounded(&mut self, max: usize) -> Result<Vec<u8>, EncodeError> {
        let Heartbeat { check, .. } = &*self;
        let rest = Rest {
            hostname: &self.hostname,
            config_hash: self.config_hash.as_deref(),
            uptime_s: self.uptime_s,
            telemetry: &self.telemetry,
        };
        let (fitted, bytes) = fit(check, max, |c| {
            serde_json::to_vec(&View {
                check: c,
                rest: &rest,
            })
        })?;
        self.check = fitted;
        Ok(bytes)
    }
}

impl SelfCheck {
    /// Encodes the self-check alone in at most `max` bytes ([`MAX_STATUS_BYTES`] for
    /// `/api/status`), trimming the lists as the heartbeat does.
    pub fn encode_bounded(&self, max: usize) -> Result<Vec<u8>, EncodeError> {
        fit(self, max, serde_json::to_vec).map(|(_, b)| b)
    }
}

#[derive(Serialize)]
struct Rest<'a> {
    hostname: &'a str,
    config_hash: Option<&'a str>,
    uptime_s: u64,
    telemetry: &'a Telemetry,
}

#[derive(Serialize)]
struct View<'a> {
    #[serde(flatten)]
    check: &'a SelfCheck,
    #[serde(flatten)]
    rest: &'a Rest<'a>,
}

/// Trims `full`'s lists until `encode` fits in `max` bytes. Drop order, from first to last:
/// reachable routes, listening listeners, unreachable routes, failed listeners (each from the
/// tail of its ordered list). Each stage is a binary search on the kept count, so the result
/// is deterministic and keeps as much as fits.
fn fit(
    full: &SelfCheck,
    max: usize,
    encode: impl Fn(&SelfCheck) -> serde_json::Result<Vec<u8>>,
) -> Result<(SelfCheck, Vec<u8>), EncodeError> {
    let whole = encode(full)?;
    if whole.len() <= max {
        return Ok((full.clone(), whole));
    }
    let n_l = full.tcp_listeners.len();
    let n_r = full.route_reachability.len();
    let n_failed = full
        .tcp_listeners
        .iter()
        .take_while(|l| l.status == "listener_failed")
        .count();
    let n_unreach = full
        .route_reachability
        .iter()
        .take_while(|r| !r.reachable)
        .count();
    let candidate = |kl: usize, kr: usize| {
        let mut c = full.clone();
        c.tcp_listeners.truncate(kl);
        c.route_reachability.truncate(kr);
        c.tcp_listeners_omitted = full.tcp_listeners_omitted + (n_l - kl);
        c.route_reachability_omitted = full.route_reachability_omitted + (n_r - kr);
        c
    };
    let size = |kl: usize, kr: usize| encode(&candidate(kl, kr)).map(|b| b.len());
    // The largest k in [lo, hi] with fits(k), given fits(lo).
    let largest = |lo: usize, hi: usize, fits: &dyn Fn(usize) -> serde_json::Result<bool>| {
        let (mut lo, mut hi) = (lo, hi);
        while lo < hi {
            let mid = lo + (hi - lo).div_ceil(2);
            if fits(mid)? {
                lo = mid;
            } else {
                hi = mid - 1;
            }
        }
        Ok::<usize, serde_json::Error>(lo)
    };
    let (kl, kr) = if size(n_l, n_unreach)? <= max {
        (n_l, largest(n_unreach, n_r, &|k| Ok(size(n_l, k)? <= max))?)
    } else if size(n_failed, n_unreach)? <= max {
        (
            largest(n_failed, n_l, &|k| Ok(size(k, n_unreach)? <= max))?,
            n_unreach,
        )
    } else if size(n_failed, 0)? <= max {
        (
            n_failed,
            largest(0, n_unreach, &|k| Ok(size(n_failed, k)? <= max))?,
        )
    } else if size(0, 0)? <= max {
        (largest(0, n_failed, &|k| Ok(size(k, 0)? <= max))?, 0)
    } else {
        return Err(EncodeError::TooLarge {
            size: size(0, 0)?,
            max,
        });
    };
    let c = candidate(kl, kr);
    let bytes = encode(&c)?;
    Ok((c, bytes))
}

type Resolver = dyn Fn(&str) -> bool + Send + Sync;

#[derive(Debug, Default)]
struct DnsState {
    last: Option<(bool, Instant)>,
    in_flight_since: Option<Instant>,
}

/// A DNS check that never blocks its reader: [`DnsCheck::get`] answers from a cache and,
/// when the cache is stale, starts one resolver thread (never more than one at a time).
#[derive(Clone)]
pub struct DnsCheck {
    name: Arc<str>,
    resolver: Arc<Resolver>,
    state: Arc<Mutex<DnsState>>,
}

impl std::fmt::Debug for DnsCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DnsCheck")
            .field("name", &self.name)
            .finish()
    }
}

impl DnsCheck {
    /// Checks that `name` (the WireGuard endpoint's host, or another configured name)
    /// resolves with the system resolver.
    pub fn new(name: impl Into<String>) -> Self {
        Self::with_resolver(name, |n: &str| {
            (n, 0u16)
                .to_socket_addrs()
                .is_ok_and(|mut a| a.next().is_some())
        })
    }

    /// Same, with another resolver (tests).
    pub fn with_resolver(
        name: impl Into<String>,
        resolver: impl Fn(&str) -> bool + Send + Sync + 'static,
    ) -> Self {
        DnsCheck {
            name: name.into().into(),
            resolver: Arc::new(resolver),
            state: Arc::default(),
        }
    }

    /// The last result (None before the first finished), starting a new check when the last
    /// is older than [`DNS_RECHECK_INTERVAL`]. A check running longer than [`DNS_TIMEOUT`]
    /// reads as failed.
    pub fn get(&self) -> Option<bool> {
        let now = Instant::now();
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(since) = st.in_flight_since {
            if now.duration_since(since) > DNS_TIMEOUT {
                return Some(false);
            }
            return st.last.map(|(ok, _)| ok);
        }
        let stale = st
            .last
            .is_none_or(|(_, at)| now.duration_since(at) >= DNS_RECHECK_INTERVAL);
        if stale {
            st.in_flight_since = Some(now);
            let this = self.clone();
            let spawned = std::thread::Builder::new()
                .name("dns-check".into())
                .spawn(move || {
                    let ok = (this.resolver)(&this.name);
                    let mut st = this.state.lock().unwrap_or_else(|p| p.into_inner());
                    st.last = Some((ok, Instant::now()));
                    st.in_flight_since = None;
                });
            if let Err(e) = spawned {
                tracing::warn!(error = %e, "cannot start the DNS check thread");
                st.in_flight_since = None;
            }
        }
        st.last.map(|(ok, _)| ok)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gatelet_agent_api::control::{Reachability, RouteStatus, TunnelStatus};

    fn l4(id: u64, port: u16, tcp: ListenerState, reachable: Option<bool>) -> RouteStatus {
        RouteStatus {
            id,
            kind: RouteKind::L4,
            name: format!("l4:{port}"),
            listen_port: Some(port),
            tcp,
            udp: Some(ListenerState::Listening),
            active_connections: 0,
            bytes: 0,
            refused: 0,
            failures: 0,
            last_error: None,
            reachability: reachable.map(|r| Reachability {
                reachable: r,
                latency_ms: Some(3),
                last_checked_at: 1_795_345_500_000,
                method: None,
            }),
        }
    }

    fn agent(routes: Vec<RouteStatus>) -> AgentStatus {
        AgentStatus {
            tunnel: TunnelStatus {
                handshake_age_s: Some(14),
                ..Default::default()
            },
            http_proxy: Some(ListenerState::Listening),
            api_relay: Some(ListenerState::Listening),
            routes,
            ..Default::default()
        }
    }

    #[test]
    fn the_agents_netstack_mode_is_an_extra_field() {
        fn input(a: &AgentStatus) -> SelfCheckInput<'_> {
            SelfCheckInput {
                agent: Some(a),
                configured_l4_routes: None,
                api_serving: true,
                dns_resolve_ok: Some(true),
            }
        }
        for (mode, want) in [
            ("netstack", Some("userspace")),
            ("tun", Some("kernel")),
            ("", None),
        ] {
            let mut a = agent(vec![]);
            a.tunnel.mode = mode.into();
            let c = self_check(&input(&a));
            assert_eq!(c.netstack, want, "{mode:?}");
            let v: serde_json::Value =
                serde_json::from_slice(&c.encode_bounded(MAX_STATUS_BYTES).unwrap()).unwrap();
            assert_eq!(v.get("netstack").and_then(|n| n.as_str()), want);
            assert!(c.overall_healthy, "the mode does not change health");
        }
        let a = agent(vec![]);
        let none = self_check(&SelfCheckInput {
            agent: None,
            ..input(&a)
        });
        assert_eq!(none.netstack, None);
    }

    #[test]
    fn failed_listener_is_listed_first_and_makes_the_check_unhealthy() {
        let a = agent(vec![
            l4(1, 2222, ListenerState::Listening, Some(true)),
            l4(
                2,
                3333,
                ListenerState::Failed {
                    reason: "address in use".into(),
                },
                Some(false),
            ),
        ]);
        let c = self_check(&SelfCheckInput {
            agent: Some(&a),
            configured_l4_routes: None,
            api_serving: true,
            dns_resolve_ok: Some(true),
        });
        assert_eq!(c.tcp_listeners[0].port, 3333);
        assert_eq!(c.tcp_listeners[0].status, "listener_failed");
        assert_eq!(c.l4_listeners_missing, 1);
        assert_eq!(c.route_reachability[0].route_id, 2);
        assert_eq!(c.route_reachability[0].latency_ms, None);
        assert!(!c.overall_healthy);
        assert_eq!(c.wg_handshake_age_s, Some(14));
    }

    #[test]
    fn unreachable_agent_reports_every_configured_listener_missing() {
        let c = self_check(&SelfCheckInput {
            agent: None,
            configured_l4_routes: Some(3),
            api_serving: true,
            dns_resolve_ok: None,
        });
        assert!(!c.http_proxy_healthy && !c.api_healthy && !c.overall_healthy);
        assert_eq!((c.l4_routes_configured, c.l4_listeners_missing), (3, 3));
        let v = serde_json::to_value(&c).unwrap();
        assert!(v["wg_handshake_age_s"].is_null());
        assert_eq!(v["dns_resolve_ok"], false);
        assert!(v.get("tcp_listeners_omitted").is_none());
    }

    #[test]
    fn heartbeat_from_snapshot_carries_hash_uptime_and_ignores_a_stale_agent() {
        let snap = Snapshot {
            sync: crate::state::SyncStatus {
                config_hash: Some("sha256:abc".into()),
                ..Default::default()
            },
            agent: Some(agent(vec![l4(1, 2222, ListenerState::Listening, None)])),
            agent_reachable: false,
            started_at_ms: 1_000_000,
            ..Default::default()
        };
        let telemetry = crate::telemetry::collect(&crate::telemetry::TelemetrySource {
            state_dir: std::env::temp_dir(),
            tunnel_iface: "gatelet0".into(),
            tunnel_ip: None,
            lan_hints: Default::default(),
        });
        let hb = Heartbeat::from_snapshot(&snap, Some(1), true, Some(true), telemetry, 1_090_500);
        assert_eq!(hb.uptime_s, 90);
        assert_eq!(hb.config_hash.as_deref(), Some("sha256:abc"));
        assert!(!hb.check.agent_reachable && hb.check.tcp_listeners.is_empty());
        assert_eq!(hb.check.l4_listeners_missing, 1);
        let v: serde_json::Value = serde_json::to_value(&hb).unwrap();
        assert_eq!(v["config_hash"], "sha256:abc");
        assert!(v["telemetry"]["arch"].is_string());
    }

    #[test]
    fn dns_check_answers_from_cache_without_waiting_for_a_slow_resolver() {
        let d = DnsCheck::with_resolver("slow.invalid", |_| {
            std::thread::sleep(Duration::from_millis(300));
            true
        });
        let t = Instant::now();
        assert_eq!(d.get(), None);
        assert!(t.elapsed() < Duration::from_millis(100));
        let deadline = Instant::now() + Duration::from_secs(3);
        while d.get().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(d.get(), Some(true));
    }
}
