//! The pure half of an apply: what runs ([`Running`]) and the new config in, the
//! [`Change`]s out; no sockets, no tasks, no clock. The executor (`super::RouteManager`)
//! carries the changes out through the `crate::stack::Stack`.

use std::collections::{BTreeMap, BTreeSet};

use gatelet_agent_api::control::{AgentConfig, HttpRoute};

use crate::target::Target;

/// What the route manager runs, as the plan needs to see it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Running {
    /// L4 routes by listen port: the route's id and its current target.
    pub l4: BTreeMap<u16, (u64, Target)>,
    /// The HTTP routes the proxy's table holds.
    pub http: Vec<HttpRoute>,
    /// Ports of removed routes whose UDP socket is still alive (their sessions drain and send
    /// their replies from it).
    pub draining_udp: BTreeSet<u16>,
}

/// How a new L4 route gets its UDP socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UdpBind {
    /// Bound now.
    New,
    /// Taken back from the removed route still draining on this port (binding again would
    /// fail with "address in use" for the whole grace period).
    TakeBack,
}

/// One step of an apply, in the order the executor carries them out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A second route on a port already taken in the new config: ignored (the first one is
    /// used), with a warning.
    DuplicatePort {
        /// The port.
        port: u16,
        /// The ignored route.
        id: u64,
    },
    /// The port is gone: stop accepting now, open connections get the grace period.
    Retire {
        /// The port.
        port: u16,
        /// The route that ran there.
        id: u64,
    },
    /// Same port, same target: listeners and connections untouched (the id may be new).
    Keep {
        /// The port.
        port: u16,
        /// The route's id in the new config.
        id: u64,
    },
    /// Same port, new target: the listeners keep running, new connections go to `target`.
    Retarget {
        /// The port.
        port: u16,
        /// The route's id in the new config.
        id: u64,
        /// The new target.
        target: Target,
    },
    /// A new port: bind its listeners.
    Bind {
        /// The port.
        port: u16,
        /// The route's id.
        id: u64,
        /// Its target.
        target: Target,
        /// Where its UDP socket comes from.
        udp: UdpBind,
    },
    /// The HTTP routes differ: replace the proxy's table as a whole.
    ReplaceHttp(Vec<HttpRoute>),
}

impl Change {
    /// True when the change gives a route a target it did not probe yet (a new round of
    /// reachability probes is due).
    pub fn new_targets(&self) -> bool {
        matches!(
            self,
            Change::Retarget { .. } | Change::Bind { .. } | Change::ReplaceHttp(_)
        )
    }
}

/// The changes that make `running` run `new`: duplicates first, then retirements, then each
/// wanted port in order, then the HTTP table.
pub fn plan(running: &Running, new: &AgentConfig) -> Vec<Change> {
    let mut changes = Vec::new();
    let mut wanted = BTreeMap::new();
    for r in &new.l4_routes {
        if wanted.contains_key(&r.listen_port) {
            changes.push(Change::DuplicatePort {
                port: r.listen_port,
                id: r.id,
            });
            continue;
        }
        wanted.insert(r.listen_port, r);
    }
    for (port, (id, _)) in &running.l4 {
        if !wanted.contains_key(port) {
            changes.push(Change::Retire {
                port: *port,
                id: *id,
            });
        }
    }
    for (port, r) in wanted {
        let target = Target {
            host: r.target_host.clone(),
            port: r.target_port,
        };
        changes.push(match running.l4.get(&port) {
            Some((_, old)) if *old == target => Change::Keep { port, id: r.id },
            Some(_) => Change::Retarget {
                port,
                id: r.id,
                target,
            },
            None => Change::Bind {
                port,
                id: r.id,
                target,
                udp: if running.draining_udp.contains(&port) {
                    UdpBind::TakeBack
                } else {
                    UdpBind::New
                },
            },
        });
    }
    if running.http != new.http_routes {
        changes.push(Change::ReplaceHttp(new.http_routes.clone()));
    }
    changes
}

#[cfg(test)]
mod tests {
    use super::*;
    use gatelet_agent_api::control::L4Route;

    fn t(host: &str, port: u16) -> Target {
        Target {
            host: host.into(),
            port,
        }
    }

    fn l4(id: u64, port: u16, host: &str, to: u16) -> L4Route {
        L4Route {
            id,
            listen_port: port,
            target_host: host.into(),
            target_port: to,
            wol: None,
        }
    }

    fn http(id: u64, domain: &str) -> HttpRoute {
        HttpRoute {
            id,
            domain: domain.into(),
            target_host: "10.0.0.5".into(),
            target_port: 80,
            backend_https: false,
            wol: None,
        }
    }

    fn running(l4: &[(u16, u64, Target)], http: Vec<HttpRoute>, draining: &[u16]) -> Running {
        Running {
            l4: l4.iter().map(|(p, id, t)| (*p, (*id, t.clone()))).collect(),
            http,
            draining_udp: draining.iter().copied().collect(),
        }
    }

    fn config(l4: Vec<L4Route>, http: Vec<HttpRoute>) -> AgentConfig {
        AgentConfig {
            config_hash: None,
            http_routes: http,
            l4_routes: l4,
        }
    }

    #[test]
    fn plans_are_what_the_table_says() {
        use Change::*;
        let a = t("10.0.0.1", 22);
        let b = t("10.0.0.2", 22);
        let cases: Vec<(&str, Running, AgentConfig, Vec<Change>)> = vec![
            (
                "nothing to nothing",
                Running::default(),
                config(vec![], vec![]),
                vec![],
            ),
            (
                "a new port is bound",
                Running::default(),
                config(vec![l4(1, 2222, "10.0.0.1", 22)], vec![]),
                vec![Bind {
                    port: 2222,
                    id: 1,
                    target: a.clone(),
                    udp: UdpBind::New,
                }],
            ),
            (
                "same port, same target: kept",
                running(&[(2222, 1, a.clone())], vec![], &[]),
                config(vec![l4(1, 2222, "10.0.0.1", 22)], vec![]),
                vec![Keep { port: 2222, id: 1 }],
            ),
            (
                "same port, same target, new id: kept with the new id",
                running(&[(2222, 1, a.clone())], vec![], &[]),
                config(vec![l4(9, 2222, "10.0.0.1", 22)], vec![]),
                vec![Keep { port: 2222, id: 9 }],
            ),
            (
                "same port, new host: retargeted",
                running(&[(2222, 1, a.clone())], vec![], &[]),
                config(vec![l4(1, 2222, "10.0.0.2", 22)], vec![]),
                vec![Retarget {
                    port: 2222,
                    id: 1,
                    target: b.clone(),
                }],
            ),
            (
                "same port, new target port: retargeted",
                running(&[(2222, 1, a.clone())], vec![], &[]),
                config(vec![l4(1, 2222, "10.0.0.1", 23)], vec![]),
                vec![Retarget {
                    port: 2222,
                    id: 1,
                    target: t("10.0.0.1", 23),
                }],
            ),
            (
                "port gone: retired",
                running(&[(2222, 1, a.clone()), (3333, 2, b.clone())], vec![], &[]),
                config(vec![l4(2, 3333, "10.0.0.2", 22)], vec![]),
                vec![Retire { port: 2222, id: 1 }, Keep { port: 3333, id: 2 }],
            ),
            (
                "a route moves to another port: old retired, new bound",
                running(&[(2222, 1, a.clone())], vec![], &[]),
                config(vec![l4(1, 2223, "10.0.0.1", 22)], vec![]),
                vec![
                    Retire { port: 2222, id: 1 },
                    Bind {
                        port: 2223,
                        id: 1,
                        target: a.clone(),
                        udp: UdpBind::New,
                    },
                ],
            ),
            (
                "a port re-added while its old route drains: UDP socket taken back",
                running(&[], vec![], &[2222]),
                config(vec![l4(3, 2222, "10.0.0.2", 22)], vec![]),
                vec![Bind {
                    port: 2222,
                    id: 3,
                    target: b.clone(),
                    udp: UdpBind::TakeBack,
                }],
            ),
            (
                "a draining port not wanted stays as it is",
                running(&[], vec![], &[2222]),
                config(vec![], vec![]),
                vec![],
            ),
            (
                "two routes on one port: the first is used, the second warned about",
                Running::default(),
                config(
                    vec![l4(1, 2222, "10.0.0.1", 22), l4(2, 2222, "10.0.0.2", 22)],
                    vec![],
                ),
                vec![
                    DuplicatePort { port: 2222, id: 2 },
                    Bind {
                        port: 2222,
                        id: 1,
                        target: a.clone(),
                        udp: UdpBind::New,
                    },
                ],
            ),
            (
                "ports in order, whatever the config's order",
                Running::default(),
                config(
                    vec![l4(2, 3333, "10.0.0.2", 22), l4(1, 2222, "10.0.0.1", 22)],
                    vec![],
                ),
                vec![
                    Bind {
                        port: 2222,
                        id: 1,
                        target: a.clone(),
                        udp: UdpBind::New,
                    },
                    Bind {
                        port: 3333,
                        id: 2,
                        target: b.clone(),
                        udp: UdpBind::New,
                    },
                ],
            ),
            (
                "HTTP routes changed: the table is replaced, L4 untouched",
                running(&[(2222, 1, a.clone())], vec![http(5, "a.example")], &[]),
                config(
                    vec![l4(1, 2222, "10.0.0.1", 22)],
                    vec![http(5, "a.example"), http(6, "b.example")],
                ),
                vec![
                    Keep { port: 2222, id: 1 },
                    ReplaceHttp(vec![http(5, "a.example"), http(6, "b.example")]),
                ],
            ),
            (
                "HTTP routes the same: no replace",
                running(&[], vec![http(5, "a.example")], &[]),
                config(vec![], vec![http(5, "a.example")]),
                vec![],
            ),
            (
                "everything removed",
                running(
                    &[(2222, 1, a.clone()), (3333, 2, b.clone())],
                    vec![http(5, "a.example")],
                    &[],
                ),
                config(vec![], vec![]),
                vec![
                    Retire { port: 2222, id: 1 },
                    Retire { port: 3333, id: 2 },
                    ReplaceHttp(vec![]),
                ],
            ),
        ];
        for (name, running, new, want) in cases {
            assert_eq!(plan(&running, &new), want, "case: {name}");
        }
    }

    #[test]
    fn only_new_targets_start_a_probe_round() {
        let a = t("10.0.0.1", 22);
        assert!(!Change::Keep { port: 1, id: 1 }.new_targets());
        assert!(!Change::Retire { port: 1, id: 1 }.new_targets());
        assert!(!Change::DuplicatePort { port: 1, id: 1 }.new_targets());
        assert!(Change::Retarget {
            port: 1,
            id: 1,
            target: a.clone()
        }
        .new_targets());
        assert!(Change::Bind {
            port: 1,
            id: 1,
            target: a,
            udp: UdpBind::New
        }
        .new_targets());
        assert!(Change::ReplaceHttp(vec![]).new_targets());
    }
}
