//! `gatelet-companion status`: what the daemon knows, for a human or (`--json`) a script.
//!
//! The running daemon answers on a Unix socket (default `/run/gatelet/companion.sock`,
//! mode 0660): a client connects and reads one JSON [`Report`]. When the daemon is not
//! running, the command still tells what it can: the stored last-known-good config and
//! whether the agent answers.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gatelet_agent_api::control::{ListenerState, Request, Response, RouteKind};
use serde::{Deserialize, Serialize};

use crate::agent_link::AgentLink;
use crate::cli::StatusArgs;
use crate::state::{now_ms, Shared, Snapshot};
use crate::store::{Event, HistoryEntry, Store};

/// Largest report a client reads.
const MAX_REPORT_BYTES: u64 = 4 * 1024 * 1024;
/// How long a client waits for the daemon.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(3);
/// History rows and events in a report.
const REPORT_ROWS: usize = 10;

/// Everything `status` shows.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Report {
    /// Whether the daemon answered (false: read from the store directly).
    pub daemon_running: bool,
    /// The answering daemon's version (empty when it did not answer).
    #[serde(default)]
    pub companion_version: String,
    /// The daemon's view.
    pub snapshot: Snapshot,
    /// Hash of the stored last-known-good config.
    pub last_good_hash: Option<String>,
    /// When it was stored (ms since the epoch).
    pub last_good_stored_at_ms: Option<u64>,
    /// Newest config history rows.
    pub history: Vec<HistoryEntry>,
    /// Newest events.
    pub events: Vec<Event>,
}

/// Builds a report from the live snapshot and the store.
pub fn report(shared: &Shared, store: Option<&Mutex<Store>>) -> Report {
    let mut r = Report {
        daemon_running: true,
        companion_version: env!("CARGO_PKG_VERSION").to_owned(),
        snapshot: shared.snapshot(),
        ..Report::default()
    };
    if let Some(store) = store {
        let store = store.lock().unwrap_or_else(|p| p.into_inner());
        fill_from_store(&mut r, &store);
    }
    r
}

fn fill_from_store(r: &mut Report, store: &Store) {
    if let Ok(Some(lkg)) = store.last_good() {
        r.last_good_hash = lkg.config_hash;
        r.last_good_stored_at_ms = Some(lkg.stored_at_ms);
    }
    r.history = store.history(REPORT_ROWS).unwrap_or_default();
    r.events = store.events(REPORT_ROWS).unwrap_or_default();
}

/// Serves reports on `listener` until `shutdown` is set. One short write per client.
pub fn serve(
    listener: UnixListener,
    shared: Shared,
    store: Option<Arc<Mutex<Store>>>,
    shutdown: Arc<AtomicBool>,
) {
    if let Err(e) = listener.set_nonblocking(true) {
        tracing::error!(error = %e, "status socket unusable");
        return;
    }
    while !shutdown.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((mut stream, _)) => {
                let body = serde_json::to_vec(&report(&shared, store.as_deref()))
                    .unwrap_or_else(|_| b"{}".to_vec());
                let _ = stream.set_nonblocking(false);
                let _ = stream.set_write_timeout(Some(CLIENT_TIMEOUT));
                let _ = stream.write_all(&body);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => {
                tracing::warn!(error = %e, "status socket accept failed");
                std::thread::sleep(Duration::from_millis(500));
            }
        }
    }
}

/// Binds the status socket at `path` (replacing a stale one), readable by the group.
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
    Ok(listener)
}

/// A report for a daemon that is not running: the stored last-known-good config stands in for
/// the config in force (its routes, its rejected routes), as it is what the agent serves and
/// what the daemon will load when it starts.
pub fn stopped_report(store: &Store) -> Report {
    let mut r = Report::default();
    fill_from_store(&mut r, store);
    if let Ok(Some(lkg)) = store.last_good() {
        r.snapshot.sync.rejected_routes = lkg.rejected;
        r.snapshot.config = Some(lkg.agent);
    }
    r
}

/// Fetches a report: from the daemon, else from the store and the agent directly.
pub fn fetch(args: &StatusArgs) -> Report {
    if let Ok(r) = fetch_from_daemon(&args.status_socket) {
        return r;
    }
    let mut r = match Store::open(&args.state_dir) {
        Ok(store) => stopped_report(&store),
        Err(_) => Report::default(),
    };
    let link = AgentLink::new(&args.control_socket);
    match link.request(&Request::Status, CLIENT_TIMEOUT) {
        Ok(Response::Status(s)) => {
            r.snapshot.agent = Some(*s);
            r.snapshot.agent_reachable = true;
        }
        Ok(other) => r.snapshot.agent_error = Some(format!("unexpected answer {other:?}")),
        Err(e) => r.snapshot.agent_error = Some(e.to_string()),
    }
    r
}

/// Reads the running daemon's report from its status socket.
pub fn fetch_from_daemon(path: &Path) -> std::io::Result<Report> {
    let stream = UnixStream::connect(path)?;
    stream.set_read_timeout(Some(CLIENT_TIMEOUT))?;
    let mut body = Vec::new();
    stream.take(MAX_REPORT_BYTES).read_to_end(&mut body)?;
    serde_json::from_slice(&body).map_err(std::io::Error::other)
}

fn ago(ms: u64, now: u64) -> String {
    let s = now.saturating_sub(ms) / 1000;
    match s {
        0..=119 => format!("{s}s ago"),
        120..=7199 => format!("{}m ago", s / 60),
        _ => format!("{}h ago", s / 3600),
    }
}

fn listener_word(l: &ListenerState) -> String {
    match l {
        ListenerState::Listening => "listening".into(),
        ListenerState::Idle => "idle".into(),
        ListenerState::Failed { reason } => format!("FAILED ({reason})"),
    }
}

/// The routes of the config in force: kind, id, name as the heartbeat gives it, target.
fn configured_routes(s: &Snapshot) -> Vec<(RouteKind, u64, String, String)> {
    let Some(c) = &s.config else {
        return Vec::new();
    };
    let http = c.http_routes.iter().map(|r| {
        let target = format!("{}:{}", r.target_host, r.target_port);
        (RouteKind::Http, r.id, r.domain.clone(), target)
    });
    let l4 = c.l4_routes.iter().map(|r| {
        let target = format!("{}:{}", r.target_host, r.target_port);
        (RouteKind::L4, r.id, format!("l4:{}", r.listen_port), target)
    });
    http.chain(l4).collect()
}

/// Renders a report for a human.
pub fn render(r: &Report, now: u64) -> String {
    use std::fmt::Write as _;
    let mut o = String::new();
    let s = &r.snapshot;
    let _ = writeln!(
        o,
        "companion: {}",
        if r.daemon_running {
            format!(
                "running, up {}",
                ago(s.started_at_ms, now).trim_end_matches(" ago")
            )
        } else {
            "NOT RUNNING (showing stored state)".into()
        }
    );
    let mode = if s.sync.mode.is_empty() {
        "-"
    } else {
        &s.sync.mode
    };
    let state = if s.sync.state.is_empty() {
        "-"
    } else {
        &s.sync.state
    };
    let _ = writeln!(o, "sync:      {mode}, {state}");
    let hash = s.sync.config_hash.as_ref().or(r.last_good_hash.as_ref());
    let _ = writeln!(o, "config:    {}", hash.map_or("none", String::as_str));
    if let Some(at) = s.sync.last_success_ms {
        let _ = writeln!(o, "last sync: {}", ago(at, now));
    }
    if let Some(e) = &s.sync.last_error {
        let _ = writeln!(o, "sync error: {e}");
    }
    match &s.heartbeat {
        Some(h) if h.ok => {
            let _ = writeln!(
                o,
                "heartbeat: ok {} ({} bytes)",
                ago(h.at_ms, now),
                h.body_bytes
            );
        }
        Some(h) => {
            let err = h.error.as_deref().unwrap_or("failed");
            let _ = writeln!(o, "heartbeat: FAILED {} ({err})", ago(h.at_ms, now));
        }
        None => {
            let _ = writeln!(o, "heartbeat: none yet");
        }
    }
    match (&s.agent, s.agent_reachable) {
        (Some(a), true) => {
            let hs = a
                .tunnel
                .handshake_age_s
                .map_or("no handshake yet".into(), |h| format!("handshake {h}s ago"));
            let endpoint = a.tunnel.endpoint.as_deref().unwrap_or("unresolved");
            let _ = writeln!(
                o,
                "agent:     reachable, {} {hs}, hub {endpoint}, rx {} B, tx {} B",
                a.agent_version, a.tunnel.rx_bytes, a.tunnel.tx_bytes
            );
            match (a.tunnel.mode.as_str(), &a.tunnel.mode_reason) {
                ("netstack", Some(why)) => {
                    let _ = writeln!(o, "netstack:  userspace ({why})");
                }
                ("netstack", None) => {
                    let _ = writeln!(o, "netstack:  userspace");
                }
                ("tun", _) => {
                    let _ = writeln!(o, "netstack:  kernel (TUN device)");
                }
                _ => {}
            }
            if let Some(e) = &a.tunnel.last_error {
                let _ = writeln!(o, "tunnel error: {e}");
            }
        }
        _ => {
            let err = s.agent_error.as_deref().unwrap_or("not asked yet");
            let _ = writeln!(o, "agent:     UNREACHABLE ({err})");
        }
    }
    let agent_routes = s
        .agent
        .as_ref()
        .filter(|_| s.agent_reachable)
        .map(|a| a.routes.as_slice())
        .unwrap_or(&[]);
    let configured = configured_routes(s);
    let _ = writeln!(o, "routes:    {}", configured.len());
    for (kind, id, name, target) in configured {
        let Some(route) = agent_routes.iter().find(|r| r.kind == kind && r.id == id) else {
            let _ = writeln!(
                o,
                "  #{id:<5} {name:<28} -> {target}: not served by the agent"
            );
            continue;
        };
        let reach = route.reachability.as_ref().map_or("unprobed".into(), |p| {
            if p.reachable {
                match p.method.as_deref() {
                    None | Some("tcp") => format!("target up ({} ms)", p.latency_ms.unwrap_or(0)),
                    Some(m) => format!("target up (by {m})"),
                }
            } else {
                "target DOWN".into()
            }
        });
        let udp = route
            .udp
            .as_ref()
            .map(|u| format!(" udp {}", listener_word(u)))
            .unwrap_or_default();
        let _ = writeln!(
            o,
            "  #{id:<5} {name:<28} -> {target}: tcp {}{udp}, {} open, {reach}",
            listener_word(&route.tcp),
            route.active_connections
        );
    }
    render_egress(&mut o, s);
    for rej in &s.sync.rejected_routes {
        let id = rej.id.map_or("?".into(), |i| i.to_string());
        let _ = writeln!(o, "  #{id:<5} REJECTED {} route: {}", rej.kind, rej.reason);
    }
    o
}

/// The egress routes of the config in force, with what the agent says of each listener.
fn render_egress(o: &mut String, s: &Snapshot) {
    use std::fmt::Write as _;
    let Some(routes) = s.config.as_ref().map(|c| &c.egress_routes) else {
        return;
    };
    if routes.is_empty() {
        return;
    }
    let agent = s.agent.as_ref().filter(|_| s.agent_reachable);
    let role = agent
        .and_then(|a| a.scan_egress_near.as_ref())
        .map_or("unknown", |n| n.role.as_str());
    let _ = writeln!(o, "egress:    {} (failover role: {role})", routes.len());
    for r in routes {
        let sources = if r.allowed_sources.is_empty() {
            "nobody".to_owned()
        } else {
            r.allowed_sources.join(",")
        };
        let head = format!(
            "  #{:<5} {}:{} from {sources} -> tunnel {}:{}",
            r.id, r.vip_ip, r.lan_listen_port, r.target_host, r.target_port
        );
        let listener = agent.and_then(|a| {
            a.scan_egress
                .iter()
                .find(|e| e.id == r.id && e.lan_listen_port == r.lan_listen_port)
        });
        let Some(e) = listener else {
            let _ = writeln!(o, "{head}: not served by the agent");
            continue;
        };
        let state = if e.bound {
            format!("listening on {}", e.lan_bind_ip)
        } else {
            format!(
                "NOT BOUND ({})",
                e.bind_error.as_deref().unwrap_or("not yet")
            )
        };
        let _ = writeln!(
            o,
            "{head}: {state}, {} open, {} source drops, {} failed connects",
            e.active_connections, e.source_drops, e.failures
        );
    }
}

/// The verdict of `status --health` on what the daemon answered (`None`: it did not):
/// healthy when the daemon runs and reaches the agent. `Ok` and `Err` carry the line to print.
pub fn health(report: Option<&Report>) -> Result<String, String> {
    let Some(r) = report else {
        return Err("unhealthy: the companion does not answer on its status socket".into());
    };
    if !r.snapshot.agent_reachable {
        let why = r
            .snapshot
            .agent_error
            .as_deref()
            .unwrap_or("not connected yet");
        return Err(format!(
            "unhealthy: the companion cannot reach the agent: {why}"
        ));
    }
    Ok(format!(
        "healthy: companion and agent up, config {}",
        r.snapshot
            .agent
            .as_ref()
            .and_then(|a| a.config_hash.as_deref())
            .unwrap_or("none yet")
    ))
}

/// Runs `gatelet-companion status`.
pub fn run(args: &StatusArgs) -> std::process::ExitCode {
    if args.health {
        // Only the daemon's answer counts (no fallback to the store: a health check writes
        // nothing and takes no locks).
        return match health(fetch_from_daemon(&args.status_socket).ok().as_ref()) {
            Ok(line) => {
                println!("{line}");
                std::process::ExitCode::SUCCESS
            }
            Err(line) => {
                println!("{line}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    let report = fetch(args);
    if args.json {
        match serde_json::to_string_pretty(&report) {
            Ok(j) => println!("{j}"),
            Err(e) => {
                eprintln!("gatelet-companion: cannot encode status: {e}");
                return std::process::ExitCode::FAILURE;
            }
        }
    } else {
        print!("{}", render(&report, now_ms()));
    }
    if report.daemon_running {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::from(3)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{HeartbeatStatus, RejectedRoute};
    use gatelet_agent_api::control::{AgentConfig, L4Route, RouteStatus};

    #[test]
    fn health_needs_the_daemon_and_the_agent() {
        let e = health(None).unwrap_err();
        assert!(e.contains("does not answer"), "{e}");
        let mut r = Report {
            daemon_running: true,
            ..Report::default()
        };
        r.snapshot.agent_error = Some("Permission denied (os error 13)".into());
        let e = health(Some(&r)).unwrap_err();
        assert!(
            e.contains("cannot reach the agent: Permission denied"),
            "{e}"
        );
        r.snapshot.agent_reachable = true;
        r.snapshot.agent_error = None;
        assert!(health(Some(&r)).unwrap().starts_with("healthy"));
    }

    #[test]
    fn report_round_trips_through_the_socket() {
        let dir = std::env::temp_dir().join(format!("gatelet-status-{}", std::process::id()));
        let path = dir.join("c.sock");
        let listener = bind(&path).unwrap();
        let shared = Shared::default();
        shared.lock().sync.config_hash = Some("sha256:abc".into());
        let stop = Arc::new(AtomicBool::new(false));
        let t = {
            let (shared, stop) = (shared.clone(), stop.clone());
            std::thread::spawn(move || serve(listener, shared, None, stop))
        };
        let r = fetch_from_daemon(&path).unwrap();
        stop.store(true, Ordering::Relaxed);
        t.join().unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        assert!(r.daemon_running);
        assert_eq!(r.snapshot.sync.config_hash.as_deref(), Some("sha256:abc"));
    }

    #[test]
    fn render_shows_failed_listeners_rejected_routes_and_heartbeat_errors() {
        let mut r = Report {
            daemon_running: true,
            ..Report::default()
        };
        r.snapshot.agent_reachable = true;
        r.snapshot.agent = Some(gatelet_agent_api::control::AgentStatus {
            routes: vec![RouteStatus {
                id: 2,
                kind: RouteKind::L4,
                name: "l4:2222".into(),
                listen_port: Some(2222),
                tcp: ListenerState::Failed {
                    reason: "address in use".into(),
                },
                udp: Some(ListenerState::Listening),
                active_connections: 0,
                bytes: 0,
                refused: 0,
                failures: 0,
                last_error: None,
                reachability: None,
            }],
            ..Default::default()
        });
        r.snapshot.config = Some(AgentConfig {
            egress_routes: Vec::new(),
            l4_routes: vec![L4Route {
                id: 2,
                listen_port: 2222,
                target_host: "192.168.1.20".into(),
                target_port: 22,
                wol: None,
            }],
            ..AgentConfig::default()
        });
        r.snapshot.sync.rejected_routes = vec![RejectedRoute {
            kind: "http".into(),
            id: Some(9),
            reason: "target_lan_port 0 is not a port".into(),
        }];
        r.snapshot.heartbeat = Some(HeartbeatStatus {
            at_ms: 1_000,
            ok: false,
            error: Some("HTTP 403 invalid_token".into()),
            body_bytes: 10,
        });
        let text = render(&r, 61_000);
        assert!(
            text.contains("l4:2222                      -> 192.168.1.20:22: tcp FAILED (address in use) udp listening"),
            "{text}"
        );
        assert!(
            text.contains("#9     REJECTED http route: target_lan_port 0"),
            "{text}"
        );
        assert!(
            text.contains("heartbeat: FAILED 60s ago (HTTP 403 invalid_token)"),
            "{text}"
        );
        assert!(
            !text.contains("netstack:"),
            "an agent that does not say: {text}"
        );
    }

    #[test]
    fn render_shows_egress_listeners_and_their_drops() {
        use gatelet_agent_api::control::{EgressNear, EgressRoute, EgressStatus};
        let mut r = Report {
            daemon_running: true,
            ..Report::default()
        };
        r.snapshot.agent_reachable = true;
        let route = |id: u64, port: u16, sources: Vec<String>| EgressRoute {
            id,
            vip_ip: "192.168.1.250".into(),
            vip_prefix: 24,
            lan_listen_port: port,
            target_host: "10.8.0.1".into(),
            target_port: 2222,
            allowed_sources: sources,
            near_peers: vec![],
        };
        r.snapshot.config = Some(AgentConfig {
            egress_routes: vec![
                route(1, 14450, vec!["192.168.1.60/32".into()]),
                route(2, 14451, vec![]),
            ],
            ..AgentConfig::default()
        });
        r.snapshot.agent = Some(gatelet_agent_api::control::AgentStatus {
            scan_egress: vec![EgressStatus {
                id: 1,
                bound: true,
                bind_error: None,
                lan_bind_ip: "0.0.0.0".into(),
                lan_listen_port: 14450,
                source_drops: 3,
                active_connections: 1,
                bytes: 10,
                refused: 0,
                failures: 2,
                last_error: None,
            }],
            scan_egress_near: Some(EgressNear {
                vips: vec!["192.168.1.250".into()],
                role: "none".into(),
            }),
            ..Default::default()
        });
        let text = render(&r, 1_000);
        assert!(
            text.contains("egress:    2 (failover role: none)"),
            "{text}"
        );
        assert!(
            text.contains(
                "#1     192.168.1.250:14450 from 192.168.1.60/32 -> tunnel 10.8.0.1:2222: \
                 listening on 0.0.0.0, 1 open, 3 source drops, 2 failed connects"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "#2     192.168.1.250:14451 from nobody -> tunnel 10.8.0.1:2222: not served"
            ),
            "{text}"
        );
    }

    #[test]
    fn render_shows_the_agents_netstack_mode_and_why() {
        let mut r = Report {
            daemon_running: true,
            ..Report::default()
        };
        r.snapshot.agent_reachable = true;
        let mut agent = gatelet_agent_api::control::AgentStatus::default();
        agent.tunnel.mode = "netstack".into();
        agent.tunnel.mode_reason = Some("no TUN device: permission denied".into());
        r.snapshot.agent = Some(agent.clone());
        let text = render(&r, 1_000);
        assert!(
            text.contains("netstack:  userspace (no TUN device: permission denied)"),
            "{text}"
        );
        agent.tunnel.mode = "tun".into();
        agent.tunnel.mode_reason = None;
        r.snapshot.agent = Some(agent);
        let text = render(&r, 1_000);
        assert!(text.contains("netstack:  kernel (TUN device)"), "{text}");
    }
}
