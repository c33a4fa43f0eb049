//! The standard topology: a WireGuard hub and a gateway in two namespaces joined by a veth,
//! the gateway reaching the hub by name through its `/etc/netns/<ns>/hosts`.
//!
//! ```text
//!  ns hub                                      ns gw
//!  wireguard-go 10.8.0.1/24 :51820             gatelet-agent (or a reference userspace WG)
//!  v-gw 10.77.1.1/24  <------ veth ------>     v-hub 10.77.1.2/24, hub.test -> 10.77.1.1
//! ```

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::time::Duration;

use gatelet_agent_api::control::AgentStatus;

use crate::{
    generate_psk, ping, tcp_echo, udp_socket, wait_until, Agent, EchoServer, GatewayEnv,
    HarnessError, KeyPair, Netns, Result, VethPair, WgImpl, WgInterface, WgPeer,
};

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
}

impl Default for TestbedOptions {
    fn default() -> Self {
        TestbedOptions {
            hub: WgImpl::WireguardGo,
            preshared_key: true,
            agent_env_extra: Vec::new(),
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
                Gateway::Agent(Agent::start(&gw_ns, binary, &env)?)
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

    /// Proves the tunnel carries traffic both ways: pings hub -> gateway and gateway -> hub,
    /// then echoes `echo_bytes` over TCP from the hub to a listener on the gateway's tunnel IP
    /// and checks every byte came back.
    pub fn check_traffic_both_ways(&self, echo_bytes: usize) -> Result<()> {
        ping(&self.hub_ns, &GW_TUNNEL_IP.to_string(), PING_COUNT)?;
        ping(&self.gw_ns, &HUB_TUNNEL_IP.to_string(), PING_COUNT)?;
        let server = EchoServer::start(&self.gw_ns, (GW_TUNNEL_IP, 0).into())?;
        let payload: Vec<u8> = (0..echo_bytes).map(|i| (i % 251) as u8).collect();
        let back = tcp_echo(&self.hub_ns, server.addr(), &payload)?;
        if back != payload {
            let first_diff = back.iter().zip(&payload).position(|(a, b)| a != b);
            return Err(HarnessError::Parse {
                what: format!("TCP echo through the tunnel to {}", server.addr()),
                detail: format!(
                    "sent {} bytes, got {} back, first difference at {first_diff:?}",
                    payload.len(),
                    back.len()
                ),
            });
        }
        Ok(())
    }

    /// Gives the hub the extra tunnel address `foreign` (which the gateway should not accept
    /// traffic from), sends three datagrams from it and then one (`allowed`) from the hub's own
    /// tunnel address to a UDP socket on the gateway's tunnel IP. Returns the first datagram
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
        let rx = udp_socket(&self.gw_ns, (GW_TUNNEL_IP, 0).into(), wait)?;
        let to = rx
            .local_addr()
            .map_err(|e| HarnessError::io("address of the UDP receiver", e))?;
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
        let mut buf = [0u8; 64];
        let n = rx
            .recv(&mut buf)
            .map_err(|e| HarnessError::io(format!("receive on {to}"), e))?;
        let first = buf[..n].to_vec();
        let more = rx.recv(&mut buf).ok().map(|n| buf[..n].to_vec());
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
