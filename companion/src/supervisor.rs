//! Keeps the agent running the config in force, and its status fresh in [`Shared`].
//!
//! Every [`STATUS_INTERVAL`] (or at once when woken) it asks the agent for its status over the
//! control socket. It pushes the desired config when the agent runs another hash, when the
//! config changed without its hash changing (`backend_https` is not hashed), when the agent
//! has restarted (its uptime went backwards) or when it has just become reachable again.
//! Calls are bounded by [`CALL_TIMEOUT`], so a stuck agent never stalls the companion.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gatelet_agent_api::control::{AgentConfig, AgentStatus, Request, Response, WakeResult};

use crate::agent_link::AgentLink;
use crate::state::{now_ms, Shared};
use crate::store::{event_kind, Store};
use crate::sync::PushSignal;

/// How often the agent's status is refreshed.
pub const STATUS_INTERVAL: Duration = Duration::from_secs(5);
/// Longest wait for one control-socket answer.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(3);

/// Wakes remembered as already recorded (the agent keeps its last 32).
pub const SEEN_WAKES: usize = 64;

/// Which of the agent's wakes (`AgentStatus::wakes`) were recorded as events already.
#[derive(Debug, Default)]
pub struct WakeLog {
    /// Wakes that started before this (ms since the epoch) happened before the companion ran.
    since_ms: u64,
    seen: VecDeque<(u64, String, String)>,
}

impl WakeLog {
    /// A log that ignores wakes started before `since_ms`.
    pub fn new(since_ms: u64) -> Self {
        WakeLog {
            since_ms,
            seen: VecDeque::new(),
        }
    }

    /// The wakes of `wakes` not seen before, remembered from now on.
    pub fn fresh<'a>(&mut self, wakes: &'a [WakeResult]) -> Vec<&'a WakeResult> {
        let mut out = Vec::new();
        for w in wakes.iter().filter(|w| w.at_ms >= self.since_ms) {
            let key = (w.at_ms, w.mac.clone(), w.trigger.clone());
            if self.seen.contains(&key) {
                continue;
            }
            if self.seen.len() >= SEEN_WAKES {
                self.seen.pop_front();
            }
            self.seen.push_back(key);
            out.push(w);
        }
        out
    }
}

/// The event text of one wake: MAC, trigger, result, time to up, interfaces.
pub fn wake_detail(w: &WakeResult) -> String {
    let mut ifaces: Vec<&str> = w.sent_on.iter().map(|s| s.iface.as_str()).collect();
    ifaces.dedup();
    let outcome = if w.success {
        format!("up after {} ms", w.elapsed_ms)
    } else {
        format!(
            "failed ({}) after {} ms",
            w.reason.as_deref().unwrap_or("timeout"),
            w.elapsed_ms
        )
    };
    format!(
        "wake {} by {}: {outcome}; sent on {}",
        w.mac,
        if w.trigger.is_empty() {
            "-"
        } else {
            &w.trigger
        },
        if ifaces.is_empty() {
            "no interface".to_owned()
        } else {
            ifaces.join(",")
        }
    )
}

/// The supervisor's memory between turns.
#[derive(Debug, Default)]
pub struct Supervisor {
    last_uptime: Option<u64>,
    pushed: Option<AgentConfig>,
    warned_apply: bool,
    store: Option<Arc<Mutex<Store>>>,
    wakes: WakeLog,
}

/// Adds fresh wakes to the counters, by result.
fn count_wakes(c: &mut crate::state::Counters, fresh: &[&WakeResult]) {
    for w in fresh {
        if w.success {
            c.wakes_ok += 1;
        } else {
            c.wakes_failed += 1;
        }
    }
}

/// Whether the hub endpoint moved between two status polls (not: first seen, or gone).
fn endpoint_changed(previous: Option<&str>, now: Option<&str>) -> bool {
    matches!((previous, now), (Some(p), Some(n)) if p != n)
}

impl Supervisor {
    /// A supervisor recording the agent's wakes (every trigger, `/api/wol` included) as
    /// [`event_kind::WAKE`] events in `store`.
    pub fn with_store(store: Option<Arc<Mutex<Store>>>) -> Self {
        Supervisor {
            store,
            wakes: WakeLog::new(now_ms()),
            ..Supervisor::default()
        }
    }

    fn record_wakes(&mut self, status: &AgentStatus, shared: &Shared) {
        let fresh = self.wakes.fresh(&status.wakes);
        count_wakes(&mut shared.lock().counters, &fresh);
        let Some(store) = &self.store else { return };
        for w in fresh {
            let detail = wake_detail(w);
            tracing::info!("{detail}");
            let mut st = store.lock().unwrap_or_else(|p| p.into_inner());
            if let Err(e) = st.add_event(event_kind::WAKE, &detail) {
                tracing::warn!(error = %e, "cannot record a wake event");
            }
        }
    }

    /// Whether `desired_hash` must be pushed to an agent reporting `status`.
    fn needs_push(&self, status: &AgentStatus, desired: &AgentConfig) -> bool {
        let restarted = self.last_uptime.is_some_and(|u| status.uptime_s < u);
        let first_contact = self.last_uptime.is_none();
        status.config_hash != desired.config_hash
            || restarted
            || first_contact
            || self.pushed.as_ref() != Some(desired)
    }

    /// One turn: refresh status and push if needed.
    pub fn step(&mut self, link: &AgentLink, shared: &Shared) {
        let mut status = match link.request(&Request::Status, CALL_TIMEOUT) {
            Ok(Response::Status(s)) => *s,
            Ok(other) => return self.unreachable(shared, format!("unexpected answer {other:?}")),
            Err(e) => return self.unreachable(shared, e.to_string()),
        };
        let desired = shared.lock().config.clone();
        if let Some(config) = desired {
            if self.needs_push(&status, &config) {
                let hash = config.config_hash.clone();
                let request = Request::Apply {
                    config: config.clone(),
                };
                match link.request(&request, CALL_TIMEOUT) {
                    Ok(Response::Applied { routes, .. }) => {
                        tracing::info!(hash = ?hash, "config pushed to the agent");
                        self.pushed = Some(config);
                        // Report what the agent runs now, not what it ran before the push.
                        status.config_hash = hash;
                        status.routes = routes;
                    }
                    Ok(Response::Error { message }) if !self.warned_apply => {
                        tracing::warn!(%message, "the agent did not take the config");
                        self.warned_apply = true;
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "pushing the config to the agent failed"),
                }
            }
        }
        self.last_uptime = Some(status.uptime_s);
        self.record_wakes(&status, shared);
        let mut s = shared.lock();
        let previous = s.agent.as_ref().and_then(|a| a.tunnel.endpoint.as_deref());
        if endpoint_changed(previous, status.tunnel.endpoint.as_deref()) {
            s.counters.tunnel_endpoint_changes += 1;
        }
        s.agent = Some(status);
        s.agent_reachable = true;
        s.agent_error = None;
    }

    fn unreachable(&mut self, shared: &Shared, error: String) {
        self.pushed = None;
        if self.last_uptime.take().is_some() {
            tracing::warn!(%error, "the agent stopped answering");
        }
        let mut s = shared.lock();
        s.agent_reachable = false;
        s.agent_error = Some(error);
    }

    /// Runs until `shutdown` is set; `wake` asks for a turn at once (after a new config).
    pub fn run(mut self, link: AgentLink, shared: Shared, wake: PushSignal, shutdown: &AtomicBool) {
        while !shutdown.load(Ordering::Relaxed) && !wake.is_closed() {
            self.step(&link, &shared);
            let deadline = Instant::now() + STATUS_INTERVAL;
            while Instant::now() < deadline && !shutdown.load(Ordering::Relaxed) {
                if wake.wait_until(deadline.min(Instant::now() + Duration::from_millis(250))) {
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(hash: Option<&str>, uptime: u64) -> AgentStatus {
        AgentStatus {
            config_hash: hash.map(str::to_owned),
            uptime_s: uptime,
            ..AgentStatus::default()
        }
    }

    fn config(hash: &str, https: bool) -> AgentConfig {
        AgentConfig {
            config_hash: Some(hash.into()),
            http_routes: vec![gatelet_agent_api::control::HttpRoute {
                id: 1,
                domain: "nas.example".into(),
                target_host: "192.168.1.10".into(),
                target_port: 5001,
                backend_https: https,
                wol: None,
            }],
            l4_routes: vec![],
        }
    }

    fn woke(at_ms: u64, trigger: &str) -> WakeResult {
        WakeResult {
            mac: "02:00:00:00:00:07".into(),
            trigger: trigger.into(),
            success: true,
            elapsed_ms: 4200,
            reason: None,
            sent_on: vec![],
            at_ms,
        }
    }

    #[test]
    fn each_wake_is_recorded_once_and_older_ones_never() {
        let mut log = WakeLog::new(1_000);
        let first = vec![woke(500, "api"), woke(1_500, "http")];
        assert_eq!(log.fresh(&first), vec![&first[1]], "before start: not ours");
        assert!(log.fresh(&first).is_empty(), "seen already");
        let second = vec![woke(1_500, "http"), woke(1_600, "api"), woke(1_600, "l4")];
        assert_eq!(log.fresh(&second), vec![&second[1], &second[2]]);
        assert_eq!(
            wake_detail(&second[1]),
            "wake 02:00:00:00:00:07 by api: up after 4200 ms; sent on no interface"
        );
    }

    #[test]
    fn wakes_are_counted_by_result_and_endpoint_moves_only_between_two_known_ones() {
        let mut c = crate::state::Counters::default();
        let mut failed = woke(2, "diag");
        failed.success = false;
        let (ok, ok2) = (woke(1, "api"), woke(3, "http"));
        count_wakes(&mut c, &[&ok, &failed, &ok2]);
        assert_eq!((c.wakes_ok, c.wakes_failed), (2, 1));
        assert!(endpoint_changed(
            Some("1.2.3.4:51820"),
            Some("5.6.7.8:51820")
        ));
        assert!(!endpoint_changed(
            Some("1.2.3.4:51820"),
            Some("1.2.3.4:51820")
        ));
        assert!(!endpoint_changed(None, Some("1.2.3.4:51820")));
        assert!(!endpoint_changed(Some("1.2.3.4:51820"), None));
    }

    #[test]
    fn pushes_on_first_contact_on_any_change_and_after_an_agent_restart() {
        let want = config("sha256:a", false);
        let mut s = Supervisor::default();
        assert!(
            s.needs_push(&status(Some("sha256:a"), 10), &want),
            "first contact"
        );
        s.last_uptime = Some(10);
        s.pushed = Some(want.clone());
        assert!(
            !s.needs_push(&status(Some("sha256:a"), 15), &want),
            "steady"
        );
        assert!(
            s.needs_push(&status(Some("sha256:b"), 15), &want),
            "other hash"
        );
        assert!(
            s.needs_push(&status(Some("sha256:a"), 2), &want),
            "restarted"
        );
        let https = config("sha256:a", true);
        assert!(
            s.needs_push(&status(Some("sha256:a"), 15), &https),
            "unhashed change"
        );
    }
}
