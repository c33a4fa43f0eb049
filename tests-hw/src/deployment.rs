//! The whole miniature deployment: hub (wireguard-go + fake GateControl on the hub's tunnel
//! address), gateway (gatelet-agent + gatelet-companion) and LAN ([`Lan`]).
//!
//! ```text
//!  ns hub  wireguard-go 10.8.0.1, fake-gatecontrol 10.8.0.1:3000
//!    | veth 10.77.1.0/24 (WAN)
//!  ns gw   gatelet-agent (10.8.0.2: proxy :8080, API relay :9876, L4 routes), gatelet-companion
//!    | veth 192.168.50.0/24 (LAN)
//!  ns lan  HTTP .10, WebSocket echo .11, TCP+UDP echo .12, banners .13 and .14 (all :8000)
//! ```
//!
//! The gateway.env is the protocol fixture `companion/tests/data/gateway-env.txt` (server URL,
//! tokens, ports) with this run's WireGuard keys and endpoint.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use gatelet_agent_api::control::AgentStatus;

use crate::{
    product_binary, wait_until, Companion, FakeGateControl, Gateway, GatewayRole, HarnessError,
    Lan, NetstackMode, Result, Testbed, TestbedOptions, GW_TUNNEL_IP, HUB_TUNNEL_IP,
};

/// The fixture gateway.env the companion's tests use (its tokens are the fake server's).
pub const FIXTURE_ENV: &str = "companion/tests/data/gateway-env.txt";
/// The fake GateControl's port on the hub's tunnel address (`GC_SERVER_URL` of the fixture).
pub const GATECONTROL_PORT: u16 = 3000;
/// `GC_HEARTBEAT_INTERVAL_S` in the tests (the fixture's 30 s would make tests wait).
pub const TEST_HEARTBEAT_INTERVAL_S: u32 = 2;
/// How long the tunnel gets to come up.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a config takes from the server (or a push) to the agent.
pub const SYNC_TIMEOUT: Duration = Duration::from_secs(30);

/// The `GC_*` lines of the fixture gateway.env (without `GC_TUNNEL_IP`, which the harness
/// writes), with the heartbeat interval shortened to [`TEST_HEARTBEAT_INTERVAL_S`].
pub fn fixture_gc_lines() -> Result<Vec<(String, String)>> {
    let path = crate::workspace_root().join(FIXTURE_ENV);
    let text = std::fs::read_to_string(&path)
        .map_err(|e| HarnessError::io(format!("read {}", path.display()), e))?;
    Ok(text
        .lines()
        .filter_map(|l| l.split_once('='))
        .filter(|(k, _)| k.starts_with("GC_") && *k != "GC_TUNNEL_IP")
        .map(|(k, v)| {
            let v = match k {
                "GC_HEARTBEAT_INTERVAL_S" => TEST_HEARTBEAT_INTERVAL_S.to_string(),
                _ => v.trim().to_owned(),
            };
            (k.to_owned(), v)
        })
        .collect())
}

/// The value of `key` among the fixture's `GC_*` lines (e.g. `GC_GATEWAY_TOKEN`, `GC_PROXY_PORT`).
pub fn fixture_value(key: &str) -> Result<String> {
    fixture_gc_lines()?
        .into_iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v)
        .ok_or_else(|| HarnessError::Parse {
            what: FIXTURE_ENV.into(),
            detail: format!("no {key} line"),
        })
}

/// A port from the fixture (`GC_PROXY_PORT`, `GC_API_PORT`).
pub fn fixture_port(key: &str) -> Result<u16> {
    let v = fixture_value(key)?;
    v.parse().map_err(|_| HarnessError::Parse {
        what: FIXTURE_ENV.into(),
        detail: format!("{key}={v} is not a port"),
    })
}

/// Hub, gateway and LAN, running. Fields drop in order: companion, server, LAN, testbed.
#[derive(Debug)]
pub struct Deployment {
    /// gatelet-companion, once started.
    pub companion: Option<Companion>,
    /// The fake GateControl, once started.
    pub gatecontrol: Option<FakeGateControl>,
    /// The LAN namespace and its services.
    pub lan: Lan,
    /// Hub and gateway (gatelet-agent).
    pub testbed: Testbed,
    /// The companion binary.
    pub companion_binary: PathBuf,
    /// The agent binary.
    pub agent_binary: PathBuf,
}

/// Where the fake GateControl listens, in both modes: on the hub's tunnel address, as the real
/// server does (`GC_SERVER_URL` of the fixture), so the companion syncs through the tunnel.
/// Kernel mode: through `gatelet0`. Userspace mode: through the agent's loopback CONNECT proxy
/// into its smoltcp stack (`gatelet_agent::egress`, `AgentStatus::tunnel_proxy`).
pub fn gatecontrol_addr(_mode: NetstackMode) -> SocketAddr {
    SocketAddr::from((HUB_TUNNEL_IP, GATECONTROL_PORT))
}

/// [`fixture_gc_lines`] with `GC_SERVER_URL` pointing at [`gatecontrol_addr`]`(mode)`.
pub fn gc_lines_for(mode: NetstackMode) -> Result<Vec<(String, String)>> {
    let mut lines = fixture_gc_lines()?;
    for (k, v) in &mut lines {
        if k == "GC_SERVER_URL" {
            *v = format!("http://{}", gatecontrol_addr(mode));
        }
    }
    Ok(lines)
}

impl Deployment {
    /// Builds hub, gateway (agent only) and LAN and waits for the tunnel. Neither the fake
    /// server nor the companion runs yet ([`Deployment::start_gatecontrol`],
    /// [`Deployment::start_companion`]).
    pub fn start_network() -> Result<Deployment> {
        Deployment::start_network_in(NetstackMode::Kernel)
    }

    /// As [`Deployment::start_network`], the agent in `mode`.
    pub fn start_network_in(mode: NetstackMode) -> Result<Deployment> {
        let agent_binary = product_binary("gatelet-agent")?;
        let companion_binary = product_binary("gatelet-companion")?;
        let options = TestbedOptions {
            agent_env_extra: gc_lines_for(mode)?,
            mode,
            ..TestbedOptions::default()
        };
        let testbed = Testbed::start_with(&GatewayRole::Agent(agent_binary.clone()), &options)?;
        let lan = Lan::start(&testbed.gw_ns)?;
        testbed.wait_handshake(None, HANDSHAKE_TIMEOUT)?;
        Ok(Deployment {
            companion: None,
            gatecontrol: None,
            lan,
            testbed,
            companion_binary,
            agent_binary,
        })
    }

    /// The whole deployment serving `doc`: network, fake server, companion; returns once the
    /// agent runs `doc`'s hash.
    pub fn start(doc: &serde_json::Value) -> Result<Deployment> {
        Deployment::start_in(doc, NetstackMode::Kernel)
    }

    /// As [`Deployment::start`], the agent in `mode`.
    pub fn start_in(doc: &serde_json::Value, mode: NetstackMode) -> Result<Deployment> {
        let mut d = Deployment::start_network_in(mode)?;
        d.start_gatecontrol(doc)?;
        d.start_companion()?;
        d.wait_applied(&crate::document_hash(doc))?;
        Ok(d)
    }

    /// Starts the fake GateControl serving `doc` on [`gatecontrol_addr`] (the hub's tunnel
    /// address in kernel mode).
    pub fn start_gatecontrol(&mut self, doc: &serde_json::Value) -> Result<()> {
        let listen = gatecontrol_addr(self.testbed.mode);
        self.gatecontrol = Some(FakeGateControl::start(&self.testbed.hub_ns, listen, doc)?);
        Ok(())
    }

    /// The fake GateControl (an error if it is not running).
    pub fn gatecontrol(&self) -> Result<&FakeGateControl> {
        self.gatecontrol
            .as_ref()
            .ok_or_else(|| HarnessError::Parse {
                what: "Deployment::gatecontrol".into(),
                detail: "the fake GateControl is not running".into(),
            })
    }

    /// Starts the companion next to the agent (same gateway.env, the agent's control socket).
    pub fn start_companion(&mut self) -> Result<()> {
        let agent = self.testbed.agent()?;
        let companion = Companion::start(
            &self.testbed.gw_ns,
            &self.companion_binary,
            agent.env_path(),
            agent.socket(),
        )?;
        self.companion = Some(companion);
        Ok(())
    }

    /// Stops the agent (SIGTERM) and starts it again with the same env and state dir.
    /// Returns when its control socket answers.
    pub fn restart_agent(&mut self) -> Result<()> {
        self.stop_agent();
        let env_path = self.testbed.agent()?.env_path().to_owned();
        let env = std::fs::read_to_string(&env_path)
            .map_err(|e| HarnessError::io(format!("read {}", env_path.display()), e))?;
        let mut env_struct = crate::agent_env(
            &self.testbed.gw_key,
            &self.testbed.hub_key,
            self.testbed.psk.as_deref(),
        );
        env_struct.extra = env
            .lines()
            .filter_map(|l| l.split_once('='))
            .filter(|(k, _)| k.starts_with("GC_") && *k != "GC_TUNNEL_IP")
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        let agent = crate::start_agent(
            &self.testbed.gw_ns,
            &self.agent_binary,
            &env_struct,
            self.testbed.mode,
        )?;
        self.testbed.gateway = Gateway::Agent(agent);
        Ok(())
    }

    /// Stops the agent (SIGTERM, waits for it to exit); its state dir stays.
    pub fn stop_agent(&mut self) {
        if let Gateway::Agent(a) = &mut self.testbed.gateway {
            a.process().terminate();
        }
    }

    /// The agent's status.
    pub fn agent_status(&self) -> Result<AgentStatus> {
        self.testbed.agent_status()
    }

    /// Waits until the agent reports config hash `hash`.
    pub fn wait_applied(&self, hash: &str) -> Result<AgentStatus> {
        wait_until(
            &format!("the agent to run config {hash}"),
            SYNC_TIMEOUT,
            || {
                let s = self.agent_status()?;
                Ok::<_, HarnessError>((s.config_hash.as_deref() == Some(hash)).then_some(s))
            },
        )
    }

    /// An address on the gateway's tunnel IP.
    pub fn tunnel_addr(port: u16) -> SocketAddr {
        SocketAddr::from((GW_TUNNEL_IP, port))
    }

    /// The logs of every process, for a failure message.
    pub fn logs(&self) -> String {
        let agent = self.testbed.agent().map(|a| a.log()).unwrap_or_default();
        let companion = self.companion.as_ref().map(|c| c.log()).unwrap_or_default();
        let server = self
            .gatecontrol
            .as_ref()
            .map(|g| g.log())
            .unwrap_or_default();
        format!(
            "--- agent log ---\n{}\n--- companion log ---\n{}\n--- fake-gatecontrol log ---\n{}",
            tail(&agent),
            tail(&companion),
            tail(&server)
        )
    }
}

/// Lines of each log shown by [`Deployment::logs`].
const LOG_TAIL_LINES: usize = 60;

fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
}

/// The gateway's address on its WAN veth, as the hub sees it.
pub const GW_WAN_IP: Ipv4Addr = crate::GW_LAN_IP;
