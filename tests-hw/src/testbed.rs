//! The standard topology: a WireGuard hub and a gateway in two namespaces joined by a veth,
//! the gateway reaching the hub by name through its `/etc/netns/<ns>/hosts`.
//!
//! ```text
//!  ns hub                                      ns gw
//!  wireguard-go 10.8.0.1/24 :51820             gatelet-agent (or a reference userspace WG)
//!  v-gw 10.77.1.1/24  <------ veth ------>     v-hub 10.77.1.2/24, hub.test -> 10.77.1.1
//! ```

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use gatelet_agent_api::control::AgentStatus;

use crate::{
    check_agent_mode, control_request, generate_psk, ping, tcp_echo, udp_socket, wait_until, Agent,
    EchoServer, GatewayEnv, HarnessError, KeyPair, Netns, NetstackMode, Result, VethPair, WgImpl,
    WgInterface, WgPeer,
};
use gatelet_agent_api::control::{AgentConfig, L4Route, ListenerState, Request, Response};

/// The hub's veth address.
pub const HUB_LAN_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 1, 1);
/// The gateway's veth address.
pub const GW_LAN_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 1, 2);
/// Prefix length of the veth subnet.
pub const LAN_PREFIX: u8 = 24;
/// The hub's tunnel address.
pub const HUB_TUNNEL_IP: Ipv4Addr = Ipv4Addr::new(10, 8, 0, 1);
/// The gateway's tunnel address (`GC_TUNNEL_IP`).
pub const GW_TUNNEL_IP: Ipv4Addr = Ipv4Addr::new(10, 8, 0, 2);
/// The hub's WireGuard UDP port.
pub const HUB_PORT: u16 = 51820;
/// The name the gateway resolves the hub by (`WG_ENDPOINT=hub.test:51820`).
pub const HUB_NAME: &str = "hub.test";
/// Tunnel MTU on both sides.
pub const TUNNEL_MTU: u16 = 1420;
/// Echo requests per direction in [`Testbed::check_traffic_both_ways`].
pub const PING_COUNT: u32 = 3;
/// Keepalive of the reference gateways (the agent's is fixed at 25 s too).
pub const KEEPALIVE_S: u16 = 25;

/// What [`Testbed::start_with`] can vary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestbedOptions {
    /// The hub's implementation (wireguard-go by default).
    pub hub: WgImpl,
    /// Whether hub and gateway use a preshared key (yes by default).
    pub preshared_key: bool,
    /// Further `KEY=value` lines for the agent's gateway.env (e.g. the `GC_*` keys the
    /// companion reads); none by default.
    pub agent_env_extra: Vec<(String, String)>,
    /// Where the agent terminates the tunnel (kernel by default); ignored for a reference
    /// gateway.
    pub mode: NetstackMode,
    /// The agent's `WG_ENDPOINT` instead of `hub.test:51820` (e.g. a delaying relay on the
    /// hub's veth address and another port); None by default.
    pub agent_endpoint: Option<String>,
}

impl Default for TestbedOptions {
    fn default() -> Self {
        TestbedOptions {
            hub: WgImpl::WIREGUARD_GO,
            preshared_key: true,
            agent_env_extra: Vec::new(),
            mode: NetstackMode::Kernel,
            agent_endpoint: None,
        }
    }
}

/// Who plays the gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GatewayRole {
    /// gatelet-agent, this binary.
    Agent(PathBuf),
    /// A reference userspace WireGuard configured with `wg` (to prove the harness).
    Userspace(WgImpl),
}

/// The running gateway.
#[derive(Debug)]
pub enum Gateway {
    /// gatelet-agent.
    Agent(Agent),
    /// A reference implementation.
    Userspace(WgInterface),
}

/// Hub and gateway, wired and running. Dropping it stops the processes, then removes the veth
/// and both namespaces (fields drop in declaration order).
#[derive(Debug)]
pub struct Testbed {
    /// The gateway under test.
    pub gateway: Gateway,
    /// The hub's WireGuard (wireguard-go unless started with another).
    pub hub: WgInterface,
    /// The hub's implementation.
    pub hub_impl: WgImpl,
    /// The veth between the namespaces.
    pub veth: VethPair,
    /// The gateway's namespace.
    pub gw_ns: Netns,
    /// The hub's namespace.
    pub hub_ns: Netns,
    /// The hub's keys.
    pub hub_key: KeyPair,
    /// The gateway's keys.
    pub gw_key: KeyPair,
    /// The preshared key both use, if any.
    pub psk: Option<String>,
    /// The hub's current veth address (changes with [`Testbed::move_hub`]).
    pub hub_lan_ip: Ipv4Addr,
    /// The agent's mode (kernel for a reference gateway).
    pub mode: NetstackMode,
}

impl Testbed {
    /// Builds the topology, starts the hub (wireguard-go) and the gateway as `role`. Does not
    /// wait for the handshake.
    pub fn start(role: &GatewayRole) -> Result<Testbed> {
        Testbed::start_with(role, &TestbedOptions::default())
    }

    /// As [`Testbed::start`], with `hub` as the hub's implementation (the benchmark uses this
    /// to see whether the hub or the gateway limits throughput).
    pub fn start_with_hub(role: &GatewayRole, hub: &WgImpl) -> Result<Testbed> {
        Testbed::start_with(
            role,
            &TestbedOptions {
                hub: hub.clone(),
                ..TestbedOptions::default()
            },
        )
    }

    /// As [`Testbed::start`], with everything [`TestbedOptions`] can change.
    pub fn start_with(role: &GatewayRole, options: &TestbedOptions) -> Result<Testbed> {
        let hub = &options.hub;
        let hub_ns = Netns::new("hub")?;
        let gw_ns = Netns::new("gw")?;
        let veth = VethPair::new(
            &hub_ns,
            &format!("{HUB_LAN_IP}/{LAN_PREFIX}"),
            &gw_ns,
            &format!("{GW_LAN_IP}/{LAN_PREFIX}"),
        )?;
        gw_ns.set_hosts(&[(IpAddr::V4(HUB_LAN_IP), HUB_NAME)])?;
        // Strict reverse-path filtering would drop a foreign source before the agent's own
        // cryptokey routing is seen to do it; the allowed-IPs test must test the agent.
        for conf in ["all", "default"] {
            gw_ns.sysctl(&format!("net/ipv4/conf/{conf}/rp_filter"), "0")?;
        }
        let hub_key = KeyPair::generate()?;
        let gw_key = KeyPair::generate()?;
        let psk = if options.preshared_key {
            Some(generate_psk()?)
        } else {
            None
        };
        let hub_impl = hub.clone();
        let hub = start_hub(&hub_ns, &hub_impl, &hub_key)?;
        hub.set_peer(&hub_peer_for_gateway(&gw_key, psk.as_deref()))?;
        let gateway = match role {
            GatewayRole::Agent(binary) => {
                let mut env = agent_env(&gw_key, &hub_key, psk.as_deref());
                env.extra = options.agent_env_extra.clone();
                if let Some(endpoint) = &options.agent_endpoint {
                    env.endpoint = endpoint.clone();
                }
                Gateway::Agent(start_agent(&gw_ns, binary, &env, options.mode)?)
            }
            GatewayRole::Userspace(imp) => {
                let wg = WgInterface::start(
                    &gw_ns,
                    imp,
                    &gw_key,
                    None,
                    &[&format!("{GW_TUNNEL_IP}/32")],
                    TUNNEL_MTU,
                )?;
                wg.add_route(&format!("{HUB_TUNNEL_IP}/32"))?;
                wg.set_peer(&WgPeer {
                    public_key: hub_key.public.clone(),
                    preshared_key: psk.clone(),
                    allowed_ips: vec![format!("{HUB_TUNNEL_IP}/32")],
                    endpoint: Some(format!("{HUB_LAN_IP}:{HUB_PORT}")),
                    persistent_keepalive: Some(KEEPALIVE_S),
                })?;
                Gateway::Userspace(wg)
            }
        };
        Ok(Testbed {
            gateway,
            hub,
            hub_impl,
            veth,
            gw_ns,
            hub_ns,
            hub_key,
            gw_key,
            psk,
            hub_lan_ip: HUB_LAN_IP,
            mode: match role {
                GatewayRole::Agent(_) => options.mode,
                GatewayRole::Userspace(_) => NetstackMode::Kernel,
            },
        })
    }

    /// The agent, when the gateway is gatelet-agent.
    pub fn agent(&self) -> Result<&Agent> {
        match &self.gateway {
            Gateway::Agent(a) => Ok(a),
            Gateway::Userspace(_) => Err(HarnessError::Parse {
                what: "Testbed::agent".into(),
                detail: "the gateway is not gatelet-agent".into(),
            }),
        }
    }

    /// The agent's status, when the gateway is gatelet-agent.
    pub fn agent_status(&self) -> Result<AgentStatus> {
        self.agent()?.status()
    }

    /// The hub's last handshake with the gateway (Unix seconds).
    pub fn hub_handshake(&self) -> Result<Option<u64>> {
        self.hub.latest_handshake(&self.gw_key.public)
    }

    /// Waits until both sides report a handshake: the hub's `wg show` has one later than
    /// `after` (Unix seconds), and the agent (if the gateway is one) reports an age.
    /// A reference gateway is nudged with a ping to the hub first: boringtun-cli does not
    /// initiate before it has something to send.
    pub fn wait_handshake(&self, after: Option<u64>, timeout: Duration) -> Result<u64> {
        if let Gateway::Userspace(_) = &self.gateway {
            let _ = ping(&self.gw_ns, &HUB_TUNNEL_IP.to_string(), 1);
        }
        let t = wait_until("the hub to see a handshake", timeout, || {
            Ok::<_, HarnessError>(self.hub_handshake()?.filter(|t| Some(*t) > after))
        })?;
        if let Gateway::Agent(agent) = &self.gateway {
            agent.wait_handshake(u64::MAX, timeout)?;
        }
        Ok(t)
    }

    /// Proves the tunnel carries traffic both ways: pings hub -> gateway and (kernel mode)
    /// gateway -> hub, then echoes `echo_bytes` over TCP from the hub through the gateway's
    /// tunnel IP and checks every byte came back. Kernel mode: to a listener on the gateway's
    /// tunnel IP. Userspace mode (no kernel address to listen on, nothing in the namespace that
    /// could send into the tunnel): through an L4 route [`ECHO_ROUTE_PORT`] applied on the
    /// control socket, to an echo server on the gateway's veth address.
    pub fn check_traffic_both_ways(&self, echo_bytes: usize) -> Result<()> {
        ping(&self.hub_ns, &GW_TUNNEL_IP.to_string(), PING_COUNT)?;
        let payload: Vec<u8> = (0..echo_bytes).map(|i| (i % 251) as u8).collect();
        let (_server, to) = if self.mode.has_tun() {
            ping(&self.gw_ns, &HUB_TUNNEL_IP.to_string(), PING_COUNT)?;
            let server = EchoServer::start(&self.gw_ns, (GW_TUNNEL_IP, 0).into())?;
            let to = server.addr();
            (server, to)
        } else {
            let server = EchoServer::start(&self.gw_ns, (GW_LAN_IP, 0).into())?;
            self.apply_l4_route(ECHO_ROUTE_PORT, server.addr())?;
            (server, SocketAddr::from((GW_TUNNEL_IP, ECHO_ROUTE_PORT)))
        };
        let back = tcp_echo(&self.hub_ns, to, &payload)?;
        if back != payload {
            let first_diff = back.iter().zip(&payload).position(|(a, b)| a != b);
            return Err(HarnessError::Parse {
                what: format!("TCP echo through the tunnel to {to}"),
                detail: format!(
                    "sent {} bytes, got {} back, first difference at {first_diff:?}",
                    payload.len(),
                    back.len()
                ),
            });
        }
        Ok(())
    }

    /// Gives the agent (through its control socket, as the companion would) one L4 route,
    /// `listen_port` on the tunnel IP to `target`, replacing its routes; waits until it listens.
    pub fn apply_l4_route(&self, listen_port: u16, target: SocketAddr) -> Result<()> {
        let agent = self.agent()?;
        let config = AgentConfig {
            config_hash: Some(format!("harness-{listen_port}")),
            http_routes: Vec::new(),
            l4_routes: vec![L4Route {
                id: 1,
                listen_port,
                target_host: target.ip().to_string(),
                target_port: target.port(),
                wol: None,
            }],
        };
        if let Response::Error { message } =
            control_request(agent.socket(), &Request::Apply { config })?
        {
            return Err(HarnessError::Control {
                path: agent.socket().display().to_string(),
                detail: format!(
                    "the agent refused the L4 route :{listen_port} -> {target}: {message}"
                ),
            });
        }
        wait_until(
            &format!("the agent to listen on port {listen_port}"),
            Duration::from_secs(10),
            || {
                let s = agent.status()?;
                Ok::<_, HarnessError>(
                    s.routes
                        .iter()
                        .any(|r| {
                            r.listen_port == Some(listen_port) && r.tcp == ListenerState::Listening
                        })
                        .then_some(()),
                )
            },
        )
    }

    /// Gives the hub the extra tunnel address `foreign` (which the gateway should not accept
    /// traffic from), sends three datagrams from it and then one (`allowed`) from the hub's own
    /// tunnel address to a UDP socket on the gateway's tunnel IP (userspace mode: to the
    /// gateway's tunnel IP, relayed by an L4 route to a socket on its veth). Returns the first datagram
    /// that arrives and whatever else arrives within `wait` after it.
    pub fn foreign_then_allowed_datagrams(
        &self,
        foreign: Ipv4Addr,
        wait: Duration,
    ) -> Result<(Vec<u8>, Option<Vec<u8>>)> {
        self.hub_ns.ip(&[
            "addr",
            "add",
            &format!("{foreign}/32"),
            "dev",
            self.hub.ifname(),
        ])?;
        let rx_ip = if self.mode.has_tun() {
            GW_TUNNEL_IP
        } else {
            GW_LAN_IP
        };
        let rx = udp_socket(&self.gw_ns, (rx_ip, 0).into(), wait)?;
        let rx_addr = rx
            .local_addr()
            .map_err(|e| HarnessError::io("address of the UDP receiver", e))?;
        // Userspace mode: through an L4 route on the tunnel IP to the receiver on the veth.
        let to = if self.mode.has_tun() {
            rx_addr
        } else {
            self.apply_l4_route(ECHO_ROUTE_PORT, rx_addr)?;
            SocketAddr::from((GW_TUNNEL_IP, ECHO_ROUTE_PORT))
        };
        let from_foreign = udp_socket(&self.hub_ns, (foreign, 0).into(), wait)?;
        let from_hub = udp_socket(&self.hub_ns, (HUB_TUNNEL_IP, 0).into(), wait)?;
        for _ in 0..3 {
            from_foreign
                .send_to(b"foreign", to)
                .map_err(|e| HarnessError::io(format!("send from {foreign} to {to}"), e))?;
        }
        std::thread::sleep(Duration::from_millis(300));
        from_hub
            .send_to(b"allowed", to)
            .map_err(|e| HarnessError::io(format!("send from {HUB_TUNNEL_IP} to {to}"), e))?;
        // Through a route, the agent's reachability probe of the target (an empty datagram)
        // may arrive too: it is not one of the test's datagrams, all of which have a payload.
        let relayed = !self.mode.has_tun();
        let recv = |buf: &mut [u8]| -> std::io::Result<Vec<u8>> {
            loop {
                let n = rx.recv(buf)?;
                if n > 0 || !relayed {
                    return Ok(buf[..n].to_vec());
                }
            }
        };
        let mut buf = [0u8; 64];
        let first = recv(&mut buf).map_err(|e| HarnessError::io(format!("receive on {to}"), e))?;
        let more = recv(&mut buf).ok();
        Ok((first, more))
    }

    /// Stops the hub, moves it to `new_ip` on the veth, points the gateway's hosts entry for
    /// [`HUB_NAME`] there and starts the hub again with the same key, port and peer (but no
    /// session, and no endpoint for the gateway: the gateway has to find the hub).
    pub fn move_hub(&mut self, new_ip: Ipv4Addr) -> Result<()> {
        // Start the replacement only after the old one has released its socket and interface.
        self.hub.stop();
        self.veth
            .readdress(&self.hub_ns, &format!("{new_ip}/{LAN_PREFIX}"))?;
        self.gw_ns.set_hosts(&[(IpAddr::V4(new_ip), HUB_NAME)])?;
        self.hub = start_hub(&self.hub_ns, &self.hub_impl, &self.hub_key)?;
        self.hub
            .set_peer(&hub_peer_for_gateway(&self.gw_key, self.psk.as_deref()))?;
        self.hub_lan_ip = new_ip;
        Ok(())
    }
}

fn start_hub(ns: &Netns, imp: &WgImpl, key: &KeyPair) -> Result<WgInterface> {
    WgInterface::start(
        ns,
        imp,
        key,
        Some(HUB_PORT),
        &[&format!("{HUB_TUNNEL_IP}/24")],
        TUNNEL_MTU,
    )
}

fn hub_peer_for_gateway(gw_key: &KeyPair, psk: Option<&str>) -> WgPeer {
    WgPeer {
        public_key: gw_key.public.clone(),
        preshared_key: psk.map(str::to_owned),
        allowed_ips: vec![format!("{GW_TUNNEL_IP}/32")],
        endpoint: None,
        persistent_keepalive: None,
    }
}

/// The L4 route port [`Testbed::check_traffic_both_ways`] uses in userspace mode.
pub const ECHO_ROUTE_PORT: u16 = 7100;

/// Starts gatelet-agent in `ns` in `mode` (`GATELET_NETSTACK` added to `env`; userspace mode as
/// [`crate::UNPRIVILEGED`] with no capability) and checks it runs as the mode says
/// ([`check_agent_mode`]).
pub fn start_agent(
    ns: &Netns,
    binary: &Path,
    env: &GatewayEnv,
    mode: NetstackMode,
) -> Result<Agent> {
    let mut env = env.clone();
    env.extra.retain(|(k, _)| k != crate::NETSTACK_KEY);
    env.extra.push(mode.env_line());
    let agent = Agent::start_as(ns, binary, &env, mode.run_as())?;
    let tun = env.tun_name.as_deref().unwrap_or(DEFAULT_TUN_NAME);
    let failed = |e: HarnessError| HarnessError::Command {
        what: format!("gatelet-agent start in {mode} mode"),
        status: e.to_string(),
        output: agent.log(),
    };
    check_agent_mode(mode, agent.pid(), ns, tun).map_err(failed)?;
    // The agent's own word for its mode (`tun` or `netstack`, AgentStatus.tunnel.mode).
    let want = match mode {
        NetstackMode::Kernel => "tun",
        NetstackMode::Userspace => "netstack",
    };
    let reported = wait_until(
        "the agent to report its interface mode",
        Duration::from_secs(5),
        || {
            let m = agent.status()?.tunnel.mode;
            Ok::<_, HarnessError>((!m.is_empty()).then_some(m))
        },
    )
    .map_err(failed)?;
    if reported != want {
        return Err(failed(HarnessError::Parse {
            what: "AgentStatus.tunnel.mode".into(),
            detail: format!("{reported:?}, expected {want:?} in {mode} mode"),
        }));
    }
    Ok(agent)
}

/// The agent's TUN device name when `GATELET_TUN_NAME` is not set.
pub const DEFAULT_TUN_NAME: &str = "gatelet0";

/// The gateway.env the agent gets in the standard topology.
pub fn agent_env(gw_key: &KeyPair, hub_key: &KeyPair, psk: Option<&str>) -> GatewayEnv {
    GatewayEnv {
        tunnel_ip: GW_TUNNEL_IP.to_string(),
        private_key: gw_key.private.clone(),
        public_key: gw_key.public.clone(),
        preshared_key: psk.map(str::to_owned),
        endpoint: format!("{HUB_NAME}:{HUB_PORT}"),
        server_public_key: hub_key.public.clone(),
        address: format!("{GW_TUNNEL_IP}/32"),
        allowed_ips: format!("{HUB_TUNNEL_IP}/32"),
        tun_name: None,
        // The agent's default MTU is TUNNEL_MTU; leaving the key out tests the default.
        mtu: None,
        extra: Vec::new(),
    }
}
