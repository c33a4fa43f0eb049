//! Keeps the agent running the config in force, and its status fresh in [`Shared`].
//!
//! Every [`STATUS_INTERVAL`] (or at once when woken) it asks the agent for its status over the
//! control socket. It pushes the desired config when the agent runs another hash, when the
//! config changed without its hash changing (`backend_https` is not hashed), when the agent
//! has restarted (its uptime went backwards) or when it has just become reachable again.
//! Calls are bounded by [`CALL_TIMEOUT`], so a stuck agent never stalls the companion.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use gatelet_agent_api::control::{AgentConfig, AgentStatus, Request, Response};

use crate::agent_link::AgentLink;
use crate::state::Shared;
use crate::sync::PushSignal;

/// How often the agent's status is refreshed.
pub const STATUS_INTERVAL: Duration = Duration::from_secs(5);
/// Longest wait for one control-socket answer.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(3);

/// The supervisor's memory between turns.
#[derive(Debug, Default)]
pub struct Supervisor {
    last_uptime: Option<u64>,
    pushed: Option<AgentConfig>,
    warned_apply: bool,
}

impl Supervisor {
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
        let status = match link.request(&Request::Status, CALL_TIMEOUT) {
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
                    Ok(Response::Applied { .. }) => {
                        tracing::info!(hash = ?hash, "config pushed to the agent");
                        self.pushed = Some(config);
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
        let mut s = shared.lock();
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
