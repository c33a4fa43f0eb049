//! Scheduled reachability probes of every route's LAN target, cached for the status answer.
//! Targets never probed go first; the rest are spread over the interval, with a few probes in
//! flight at most.
//!
//! A TCP connect decides (`method: tcp`). An L4 target that refuses or ignores TCP may be a
//! UDP-only service (the server's config does not say which protocol a route carries), so it
//! is then checked the UDP way: up when it answered a relayed datagram within two probe
//! intervals (`udp_reply`), else by [`crate::probe::udp_check`]: an answer to an empty
//! datagram (`udp_probe`), or silence without ICMP port-unreachable from a host with a
//! complete neighbour entry (`neighbour`). A TCP-only service that is down has no UDP socket
//! either, so its host answers port-unreachable and it stays down.

use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use gatelet_agent_api::control::{ProbeRequest, Reachability};
use tokio::sync::{Notify, Semaphore};

use super::{Inner, RouteManager};

/// Time between two probes of the same target.
pub const DEFAULT_PROBE_INTERVAL: Duration = Duration::from_secs(30);
/// Connect timeout of one probe.
pub const DEFAULT_PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// Probes in flight at most.
pub const DEFAULT_PROBE_CONCURRENCY: usize = 4;

/// The UDP verdict for an L4 target that did not take a TCP connection; `answered` is when it
/// last answered a relayed datagram (0: never).
async fn udp_reachability(
    target: &crate::target::Target,
    answered: u64,
    interval: Duration,
    timeout: Duration,
) -> Reachability {
    let now = now_ms();
    let window = u64::try_from(interval.as_millis().saturating_mul(2)).unwrap_or(u64::MAX);
    let up = |latency_ms, method: &str| Reachability {
        reachable: true,
        latency_ms,
        last_checked_at: now,
        method: Some(method.into()),
    };
    if answered > 0 && now.saturating_sub(answered) <= window {
        return up(None, "udp_reply");
    }
    let read = || std::fs::read_to_string(crate::probe::NEIGHBOUR_TABLE).unwrap_or_default();
    match crate::probe::udp_check(
        &target.host,
        target.port,
        timeout.min(Duration::from_secs(1)),
        read,
    )
    .await
    {
        crate::probe::UdpVerdict::Answered(ms) => up(Some(ms), "udp_probe"),
        crate::probe::UdpVerdict::SilentNeighbour => up(None, "neighbour"),
        crate::probe::UdpVerdict::Down(_) => Reachability {
            reachable: false,
            latency_ms: None,
            last_checked_at: now,
            method: Some("tcp+udp".into()),
        },
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Probes every target once per interval until the manager is dropped; an apply that adds or
/// changes targets starts a new round at once.
pub(super) async fn run(inner: Weak<Inner>, wake: Arc<Notify>) {
    let slots = Arc::new(Semaphore::new(DEFAULT_PROBE_CONCURRENCY));
    loop {
        let Some(i) = inner.upgrade() else { return };
        let mut targets = RouteManager::probe_targets(&i);
        i.forget_unprobed(&targets);
        let (interval, timeout) = (i.settings.probe_interval, i.settings.probe_timeout);
        {
            let st = super::locked(&i.state);
            // Never probed first (stable sort keeps the rest in order).
            targets.sort_by_key(|t| st.reach.contains_key(t));
        }
        let unprobed = {
            let st = super::locked(&i.state);
            targets
                .iter()
                .filter(|t| !st.reach.contains_key(*t))
                .count()
        };
        drop(i);
        let spread = targets.len().saturating_sub(unprobed).max(1);
        let gap = interval / u32::try_from(spread).unwrap_or(u32::MAX);
        let round = tokio::time::Instant::now();
        let mut restart = false;
        for (n, target) in targets.into_iter().enumerate() {
            if n >= unprobed {
                let woken = tokio::select! {
                    _ = wake.notified() => true,
                    _ = tokio::time::sleep(gap) => false,
                };
                if woken {
                    restart = true;
                    break;
                }
            }
            let Ok(permit) = slots.clone().acquire_owned().await else {
                return;
            };
            let weak = inner.clone();
            tokio::spawn(async move {
                let r = crate::probe::probe(&ProbeRequest {
                    host: target.host.clone(),
                    port: target.port,
                    timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
                })
                .await;
                let mut reach = Reachability {
                    reachable: r.reachable,
                    latency_ms: r.reachable.then_some(r.latency_ms),
                    last_checked_at: now_ms(),
                    method: Some("tcp".into()),
                };
                let udp_answered = weak.upgrade().and_then(|i| i.udp_answered_ms(&target));
                if !r.reachable {
                    if let Some(answered) = udp_answered {
                        reach = udp_reachability(&target, answered, interval, timeout).await;
                    }
                }
                drop(permit);
                if let Some(i) = weak.upgrade() {
                    i.record_reachability(target, reach);
                }
            });
        }
        if restart {
            continue;
        }
        // The gaps before already-probed targets spread them over the interval; only what is
        // left of it remains (all of it after a round of new targets or no targets at all).
        let rest = interval.saturating_sub(round.elapsed());
        tokio::select! {
            _ = wake.notified() => {}
            _ = tokio::time::sleep(rest) => {}
        }
    }
}
