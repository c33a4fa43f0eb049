//! The pure half of an apply: what runs ([`Running`]) and the new config in, the
//! [`Change`]s out; no sockets, no tasks, no clock. The executor (`super::RouteManager`)
//! carries the changes out through the `crate::stack::Stack`.

use std::collections::{BTreeMap, BTreeSet};

use gatelet_agent_api::control::{AgentConfig, EgressRoute, HttpRoute};

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
    /// Egress listeners by LAN listen port: the route's id and what its connections use.
    pub egress: BTreeMap<u16, (u64, EgressSpec)>,
}

/// What an egress listener's new connections use: the tunnel target and the source allowlist
/// (changed in place, without rebinding).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EgressSpec {
    /// Where connections go, inside the tunnel.
    pub target: Target,
    /// The allowed sources, as the config gives them.
    pub sources: Vec<String>,
}

impl EgressSpec {
    /// The spec of `route`.
    pub fn of(route: &EgressRoute) -> Self {
        EgressSpec {
            target: Target {
                host: route.target_host.clone(),
                port: route.target_port,
            },
            sources: route.allowed_sources.clone(),
        }
    }
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
    /// A second egress route on a LAN port already taken in the new config: ignored.
    EgressDuplicatePort {
        /// The LAN port.
        port: u16,
        /// The ignored route.
        id: u64,
    },
    /// The egress port is gone: stop accepting now, open connections get the grace period.
    EgressRetire {
        /// The LAN port.
        port: u16,
        /// The route that ran there.
        id: u64,
    },
    /// Same egress port, same target and sources: untouched (the id may be new).
    EgressKeep {
        /// The LAN port.
        port: u16,
        /// The route's id in the new config.
        id: u64,
    },
    /// Same egress port, new target or sources: the listener keeps running, new connections
    /// use `spec`.
    EgressUpdate {
        /// The LAN port.
        port: u16,
        /// The route's id in the new config.
        id: u64,
        /// The new target and sources.
        spec: EgressSpec,
    },
    /// A new egress port: bind its listener.
    EgressBind {
        /// The LAN port.
        port: u16,
        /// The route's id.
        id: u64,
        /// Its target and sources.
        spec: EgressSpec,
    },
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
/// wanted port in order, then the egress listeners (the same order among themselves), then
/// the HTTP table.
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
    plan_egress(running, new, &mut changes);
    if running.http != new.http_routes {
        changes.push(Change::ReplaceHttp(new.http_routes.clone()));
    }
    changes
}

fn plan_egress(running: &Running, new: &AgentConfig, changes: &mut Vec<Change>) {
    let mut wanted = BTreeMap::new();
    for r in &new.egress_routes {
        if wanted.contains_key(&r.lan_listen_port) {
            changes.push(Change::EgressDuplicatePort {
                port: r.lan_listen_port,
                id: r.id,
            });
            continue;
        }
        wanted.insert(r.lan_listen_port, r);
    }
    for (port, (id, _)) in &running.egress {
        if !wanted.contains_key(port) {
            changes.push(Change::EgressRetire {
                port: *port,
                id: *id,
            });
        }
    }
    for (port, r) in wanted {
        let spec = EgressSpec::of(r);
        changes.push(match running.egress.get(&port) {
            Some((_, old)) if *old == spec => Change::EgressKeep { port, id: r.id },
            Some(_) => Change::EgressUpdate {
                port,
                id: r.id,
                spec,
            },
            None => Change::EgressBind {
                port,
                id: r.id,
                spec,
            },
        });
    }
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
            egress: BTreeMap::new(),
        }
    }

    fn config(l4: Vec<L4Route>, http: Vec<HttpRoute>) -> AgentConfig {
        AgentConfig {
            config_hash: None,
            http_routes: http,
            l4_routes: l4,
            egress_routes: vec![],
        }
    }

    fn egress(id: u64, port: u16, to: u16, sources: &[&str]) -> EgressRoute {
        EgressRoute {
            id,
            vip_ip: "192.168.1.250".into(),
            vip_prefix: 24,
            lan_listen_port: port,
            target_host: "10.8.0.1".into(),
            target_port: to,
            allowed_sources: sources.iter().map(|s| s.to_string()).collect(),
            near_peers: vec![],
        }
    }

    fn spec(to: u16, sources: &[&str]) -> EgressSpec {
        EgressSpec::of(&egress(0, 0, to, sources))
    }

    fn running_egress(e: &[(u16, u64, EgressSpec)], l4: &[(u16, u64, Target)]) -> Running {
        Running {
            egress: e.iter().map(|(p, id, s)| (*p, (*id, s.clone()))).collect(),
            ..running(l4, vec![], &[])
        }
    }

    fn egress_config(e: Vec<EgressRoute>, l4: Vec<L4Route>) -> AgentConfig {
        AgentConfig {
            egress_routes: e,
            ..config(l4, vec![])
        }
    }

    #[test]
    fn egress_plans_are_what_the_table_says() {
        use Change::*;
        let a = t("10.0.0.1", 22);
        let s1 = spec(2222, &["192.168.1.60/32"]);
        let cases: Vec<(&str, Running, AgentConfig, Vec<Change>)> = vec![
            (
                "a new egress port is bound",
                Running::default(),
                egress_config(vec![egress(1, 14450, 2222, &["192.168.1.60/32"])], vec![]),
                vec![EgressBind {
                    port: 14450,
                    id: 1,
                    spec: s1.clone(),
                }],
            ),
            (
                "same port, target and sources: kept (a new VIP or peers do not rebind)",
                running_egress(&[(14450, 1, s1.clone())], &[]),
                egress_config(
                    vec![EgressRoute {
                        vip_ip: "192.168.1.251".into(),
                        near_peers: vec!["192.168.1.3".into()],
                        ..egress(1, 14450, 2222, &["192.168.1.60/32"])
                    }],
                    vec![],
                ),
                vec![EgressKeep { port: 14450, id: 1 }],
            ),
            (
                "new sources: updated in place",
                running_egress(&[(14450, 1, s1.clone())], &[]),
                egress_config(vec![egress(1, 14450, 2222, &["192.168.1.0/24"])], vec![]),
                vec![EgressUpdate {
                    port: 14450,
                    id: 1,
                    spec: spec(2222, &["192.168.1.0/24"]),
                }],
            ),
            (
                "new tunnel port: updated in place, new id taken",
                running_egress(&[(14450, 1, s1.clone())], &[]),
                egress_config(vec![egress(7, 14450, 2223, &["192.168.1.60/32"])], vec![]),
                vec![EgressUpdate {
                    port: 14450,
                    id: 7,
                    spec: spec(2223, &["192.168.1.60/32"]),
                }],
            ),
            (
                "egress port gone: retired, the other kept",
                running_egress(&[(14450, 1, s1.clone()), (14451, 2, s1.clone())], &[]),
                egress_config(vec![egress(2, 14451, 2222, &["192.168.1.60/32"])], vec![]),
                vec![
                    EgressRetire { port: 14450, id: 1 },
                    EgressKeep { port: 14451, id: 2 },
                ],
            ),
            (
                "two egress routes on one port: the first is used",
                Running::default(),
                egress_config(
                    vec![
                        egress(1, 14450, 2222, &["192.168.1.60/32"]),
                        egress(2, 14450, 2223, &[]),
                    ],
                    vec![],
                ),
                vec![
                    EgressDuplicatePort { port: 14450, id: 2 },
                    EgressBind {
                        port: 14450,
                        id: 1,
                        spec: s1.clone(),
                    },
                ],
            ),
            (
                "L4 and egress changes together: L4 first, each untouched by the other",
                running_egress(&[(14450, 1, s1.clone())], &[(2222, 3, a.clone())]),
                egress_config(
                    vec![egress(1, 14450, 2222, &["192.168.1.60/32"])],
                    vec![l4(3, 2222, "10.0.0.1", 22), l4(4, 3333, "10.0.0.1", 22)],
                ),
                vec![
                    Keep { port: 2222, id: 3 },
                    Bind {
                        port: 3333,
                        id: 4,
                        target: a.clone(),
                        udp: UdpBind::New,
                    },
                    EgressKeep { port: 14450, id: 1 },
                ],
            ),
            (
                "an egress port equal to an L4 port is planned as is (the companion rejects that)",
                Running::default(),
                egress_config(
                    vec![egress(1, 2222, 2222, &["192.168.1.60/32"])],
                    vec![l4(3, 2222, "10.0.0.1", 22)],
                ),
                vec![
                    Bind {
                        port: 2222,
                        id: 3,
                        target: a.clone(),
                        udp: UdpBind::New,
                    },
                    EgressBind {
                        port: 2222,
                        id: 1,
                        spec: s1.clone(),
                    },
                ],
            ),
            (
                "all egress routes removed",
                running_egress(&[(14450, 1, s1.clone())], &[]),
                egress_config(vec![], vec![]),
                vec![EgressRetire { port: 14450, id: 1 }],
            ),
        ];
        for (name, running, new, want) in cases {
            assert_eq!(plan(&running, &new), want, "case: {name}");
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
