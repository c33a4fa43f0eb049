//! The last hour of the tunnel and the routes, for the page's charts: a fixed-capacity ring of
//! samples of the agent's status (sans-IO: the caller passes the time and the status).
//!
//! A sample is kept every [`INTERVAL_MS`] ([`CAPACITY`] of them: one hour); between two kept
//! samples the newest status is held as an open sample, so the charts reach up to now. Memory
//! is bounded whatever the config says: at most [`MAX_ROUTES`] routes per sample.

use std::collections::VecDeque;

use gatelet_agent_api::control::{AgentStatus, RouteKind};
use serde::Serialize;

/// Time between two kept samples.
pub const INTERVAL_MS: u64 = 30_000;
/// Kept samples: one hour at [`INTERVAL_MS`].
pub const CAPACITY: usize = 120;
/// Routes charted per sample (the first ones the agent lists).
pub const MAX_ROUTES: usize = 16;

/// One look at the agent.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Sample {
    at_ms: u64,
    /// None: the agent did not answer.
    tunnel: Option<Tunnel>,
    /// (kind, id, name, open connections).
    routes: Vec<(RouteKind, u64, String, u64)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Tunnel {
    rx_bytes: u64,
    tx_bytes: u64,
    handshake_age_s: Option<u64>,
}

/// The ring.
#[derive(Debug, Default)]
pub struct History {
    kept: VecDeque<Sample>,
    open: Option<Sample>,
}

/// One route's series, aligned with [`Series::at_ms`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RouteSeries {
    /// The route's id.
    pub id: u64,
    /// Its name (domain, or `l4:<port>`).
    pub name: String,
    /// Open connections at each sample (None: not listed then).
    pub connections: Vec<Option<u64>>,
}

/// The ring as columns, oldest first, with rates already worked out.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Series {
    /// Time between kept samples.
    pub interval_ms: u64,
    /// When each sample was taken (ms since the epoch).
    pub at_ms: Vec<u64>,
    /// Bytes per second received from the hub since the sample before (None: first sample,
    /// the agent did not answer, or its counters restarted).
    pub rx_bytes_per_s: Vec<Option<u64>>,
    /// Bytes per second sent to the hub, likewise.
    pub tx_bytes_per_s: Vec<Option<u64>>,
    /// Seconds since the last handshake (None: none yet, or the agent did not answer).
    pub handshake_age_s: Vec<Option<u64>>,
    /// The routes of the newest sample.
    pub routes: Vec<RouteSeries>,
}

impl History {
    /// Records what the agent reported at `at_ms` (None: it did not answer).
    pub fn record(&mut self, at_ms: u64, agent: Option<&AgentStatus>) {
        let sample = Sample {
            at_ms,
            tunnel: agent.map(|a| Tunnel {
                rx_bytes: a.tunnel.rx_bytes,
                tx_bytes: a.tunnel.tx_bytes,
                handshake_age_s: a.tunnel.handshake_age_s,
            }),
            routes: agent
                .map(|a| {
                    a.routes
                        .iter()
                        .take(MAX_ROUTES)
                        .map(|r| (r.kind, r.id, r.name.clone(), r.active_connections))
                        .collect()
                })
                .unwrap_or_default(),
        };
        let due = match self.kept.back() {
            None => true,
            // A clock stepped back: start over rather than draw time backwards.
            Some(last) if at_ms < last.at_ms => {
                self.kept.clear();
                true
            }
            Some(last) => at_ms - last.at_ms >= INTERVAL_MS,
        };
        if due {
            if self.kept.len() == CAPACITY {
                self.kept.pop_front();
            }
            self.kept.push_back(sample);
            self.open = None;
        } else {
            self.open = Some(sample);
        }
    }

    /// Number of samples (kept and open).
    pub fn len(&self) -> usize {
        self.kept.len() + usize::from(self.open.is_some())
    }

    /// Whether nothing was recorded yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The samples as columns.
    pub fn series(&self) -> Series {
        let samples: Vec<&Sample> = self.kept.iter().chain(self.open.as_ref()).collect();
        let mut s = Series {
            interval_ms: INTERVAL_MS,
            ..Series::default()
        };
        let mut prev: Option<&Sample> = None;
        for cur in &samples {
            s.at_ms.push(cur.at_ms);
            let rate = |f: fn(&Tunnel) -> u64| {
                let (p, c) = (prev?, cur);
                let (pt, ct) = (p.tunnel.as_ref()?, c.tunnel.as_ref()?);
                let ms = c.at_ms.checked_sub(p.at_ms).filter(|&d| d > 0)?;
                let bytes = f(ct).checked_sub(f(pt))?;
                Some(bytes.saturating_mul(1000) / ms)
            };
            s.rx_bytes_per_s.push(rate(|t| t.rx_bytes));
            s.tx_bytes_per_s.push(rate(|t| t.tx_bytes));
            s.handshake_age_s
                .push(cur.tunnel.as_ref().and_then(|t| t.handshake_age_s));
            prev = Some(cur);
        }
        if let Some(newest) = samples.last() {
            s.routes = newest
                .routes
                .iter()
                .map(|(kind, id, name, _)| RouteSeries {
                    id: *id,
                    name: name.clone(),
                    connections: samples
                        .iter()
                        .map(|smp| {
                            smp.routes
                                .iter()
                                .find(|r| r.0 == *kind && r.1 == *id)
                                .map(|r| r.3)
                        })
                        .collect(),
                })
                .collect();
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gatelet_agent_api::control::{ListenerState, RouteStatus};

    fn agent(rx: u64, tx: u64, hs: Option<u64>, routes: &[(u64, u64)]) -> AgentStatus {
        let mut a = AgentStatus::default();
        a.tunnel.rx_bytes = rx;
        a.tunnel.tx_bytes = tx;
        a.tunnel.handshake_age_s = hs;
        a.routes = routes
            .iter()
            .map(|&(id, conns)| RouteStatus {
                id,
                kind: RouteKind::L4,
                name: format!("l4:{id}"),
                listen_port: None,
                tcp: ListenerState::Listening,
                udp: None,
                active_connections: conns,
                bytes: 0,
                refused: 0,
                failures: 0,
                last_error: None,
                reachability: None,
            })
            .collect();
        a
    }

    #[test]
    fn keeps_one_sample_per_interval_and_the_newest_open_one() {
        let mut h = History::default();
        assert!(h.is_empty());
        h.record(1_000, Some(&agent(0, 0, Some(5), &[])));
        h.record(6_000, Some(&agent(5_000, 500, Some(10), &[])));
        assert_eq!(h.len(), 2);
        // A newer status replaces the open sample, not the kept one.
        h.record(11_000, Some(&agent(10_000, 1_000, Some(15), &[])));
        let s = h.series();
        assert_eq!(s.at_ms, vec![1_000, 11_000]);
        assert_eq!(s.rx_bytes_per_s, vec![None, Some(1_000)]);
        assert_eq!(s.tx_bytes_per_s, vec![None, Some(100)]);
        assert_eq!(s.handshake_age_s, vec![Some(5), Some(15)]);
        // An interval later it is kept.
        h.record(31_000, Some(&agent(40_000, 1_000, None, &[])));
        assert_eq!(h.series().at_ms, vec![1_000, 31_000]);
        assert_eq!(h.series().rx_bytes_per_s, vec![None, Some(1_333)]);
    }

    #[test]
    fn capacity_is_fixed_whatever_the_time_or_the_routes() {
        let mut h = History::default();
        let many: Vec<(u64, u64)> = (0..1000).map(|i| (i, i)).collect();
        let a = agent(0, 0, Some(1), &many);
        for i in 0..(CAPACITY as u64 * 3) {
            h.record(i * INTERVAL_MS, Some(&a));
            h.record(i * INTERVAL_MS + 1, Some(&a));
        }
        assert_eq!(h.len(), CAPACITY + 1);
        let s = h.series();
        assert_eq!(s.at_ms.len(), CAPACITY + 1);
        assert_eq!(s.at_ms[0], (CAPACITY as u64 * 2) * INTERVAL_MS);
        assert_eq!(s.routes.len(), MAX_ROUTES);
        assert!(s.routes.iter().all(|r| r.connections.len() == CAPACITY + 1));
    }

    #[test]
    fn gaps_restarts_and_route_changes_leave_holes_not_lies() {
        let mut h = History::default();
        h.record(0, Some(&agent(1_000_000, 0, Some(1), &[(1, 2)])));
        h.record(30_000, None);
        h.record(
            60_000,
            Some(&agent(2_000_000, 0, Some(2), &[(1, 3), (2, 7)])),
        );
        // The agent restarted: its counters went back.
        h.record(90_000, Some(&agent(10, 0, None, &[(2, 1)])));
        h.record(120_000, Some(&agent(30_010, 0, Some(3), &[(2, 0)])));
        let s = h.series();
        assert_eq!(s.rx_bytes_per_s, vec![None, None, None, None, Some(1_000)]);
        assert_eq!(
            s.handshake_age_s,
            vec![Some(1), None, Some(2), None, Some(3)]
        );
        assert_eq!(
            s.routes,
            vec![RouteSeries {
                id: 2,
                name: "l4:2".into(),
                connections: vec![None, None, Some(7), Some(1), Some(0)],
            }]
        );
    }

    #[test]
    fn a_clock_stepped_back_starts_over() {
        let mut h = History::default();
        h.record(100_000, None);
        h.record(200_000, None);
        h.record(50_000, None);
        assert_eq!(h.series().at_ms, vec![50_000]);
    }
}
