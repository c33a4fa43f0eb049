//! The "near" failover's driver: one task per egress route that has `near_peers`, running a
//! [`Instance`] with the reference's parameters on the LAN interface whose
//! subnet holds the VIP. It sends the advertisements (unicast from our own LAN address to
//! each peer, like keepalived's `unicast_peer`), receives them on a raw protocol-112 socket,
//! adds and removes the VIP through netlink and announces it with gratuitous ARP on takeover.
//! The tunnel-health samples (every [`HEALTH_INTERVAL`], rise 2 / fall 2) are, with
//! [`NearSettings::ping`], a ping of the hub's tunnel address (the route's tunnel target)
//! answered within 2 s, like the reference's `chk_tunnel`; else the caller's [`HealthFn`].
//!
//! The port-445 redirect (`super::redirect`) is installed while the instance runs and removed
//! when it stops.
//!
//! Needs `CAP_NET_RAW` (raw and packet sockets) and `CAP_NET_ADMIN` (addresses, nf_tables). Without them,
//! or without an interface on the VIP's subnet, the instance reports the error and holds
//! nothing.

use std::net::Ipv4Addr;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gatelet_agent_api::control::EgressRoute;
use tokio::io::unix::AsyncFd;
use tokio::sync::watch;

use super::vrrp::health::Health;
use super::vrrp::machine::{Action, Instance, Params, State};
use super::vrrp::wire::{decode_ipv4, gratuitous_arp, IPPROTO_VRRP};
use crate::netif::netlink::Netlink;

/// Time between two tunnel-health samples (the reference's `chk_tunnel` interval).
pub const HEALTH_INTERVAL: Duration = Duration::from_secs(5);
/// Pause before an instance that could not run tries again.
const RETRY: Duration = Duration::from_secs(10);
/// Gratuitous ARP messages sent on takeover.
const GARP_COUNT: usize = 3;

/// Whether the tunnel works now (one sample).
pub type HealthFn = Arc<dyn Fn() -> bool + Send + Sync>;

/// How the failover runs: the tunnel-health sample and the time between two samples.
#[derive(Clone)]
pub struct NearSettings {
    /// One tunnel-health sample.
    pub health: HealthFn,
    /// Time between two samples ([`HEALTH_INTERVAL`] in production).
    pub interval: Duration,
    /// Sample by pinging the route's tunnel target (TUN mode: the kernel routes the ping
    /// through the tunnel) instead of calling `health`.
    pub ping: bool,
}

impl std::fmt::Debug for NearSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NearSettings")
            .field("interval", &self.interval)
            .field("ping", &self.ping)
            .finish_non_exhaustive()
    }
}

/// What an instance needs from its egress route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NearSpec {
    /// The route's id.
    pub id: u64,
    /// Its position in the config's egress routes (priority 150 − idx).
    pub idx: usize,
    /// The VIP.
    pub vip: Ipv4Addr,
    /// Its prefix length.
    pub prefix: u8,
    /// The other gateways' LAN addresses.
    pub peers: Vec<Ipv4Addr>,
    /// The hub's tunnel address (the route's tunnel target), pinged by the tunnel check.
    pub hub: Option<Ipv4Addr>,
    /// The egress listener's port, where VIP:445 is redirected.
    pub port: u16,
}

impl NearSpec {
    /// The spec of the route at `idx`, None when it has no peers (no failover) or an address
    /// does not parse (the companion checked them).
    pub fn of(idx: usize, r: &EgressRoute) -> Option<NearSpec> {
        let peers: Vec<Ipv4Addr> = r.near_peers.iter().filter_map(|p| p.parse().ok()).collect();
        if peers.is_empty() {
            return None;
        }
        Some(NearSpec {
            id: r.id,
            idx,
            vip: r.vip_ip.parse().ok()?,
            prefix: r.vip_prefix,
            peers,
            hub: r.target_host.parse().ok(),
            port: r.lan_listen_port,
        })
    }
}

/// What an instance reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NearState {
    /// Its VRRP state.
    pub state: State,
    /// Why it cannot run, if it cannot.
    pub error: Option<String>,
}

/// A running instance; dropping it makes a master step down and stops it.
#[derive(Debug)]
pub struct NearHandle {
    stop: watch::Sender<bool>,
    state: Arc<Mutex<NearState>>,
}

impl NearHandle {
    /// The instance's state now.
    pub fn state(&self) -> NearState {
        match self.state.lock() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }
}

impl Drop for NearHandle {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// Starts the instance of `spec` (call inside the runtime).
pub fn spawn(spec: NearSpec, settings: NearSettings) -> NearHandle {
    let (stop, stop_rx) = watch::channel(false);
    let state = Arc::new(Mutex::new(NearState {
        state: State::Init,
        error: None,
    }));
    let cell = state.clone();
    tokio::spawn(async move {
        // Retried: the LAN interface may come up after the agent, a capability may be added.
        loop {
            let Err(e) = run(&spec, &settings, &cell, stop_rx.clone()).await else {
                return;
            };
            tracing::warn!(id = spec.id, vip = %spec.vip, error = %e, "egress failover cannot run; retrying in {} s", RETRY.as_secs());
            set(&cell, State::Init, Some(e));
            let mut stop = stop_rx.clone();
            tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                _ = tokio::time::sleep(RETRY) => {}
            }
        }
    });
    NearHandle { stop, state }
}

fn set(cell: &Mutex<NearState>, state: State, error: Option<String>) {
    let s = NearState { state, error };
    match cell.lock() {
        Ok(mut g) => *g = s,
        Err(p) => *p.into_inner() = s,
    }
}

/// The LAN interface of a VIP.
struct Lan {
    name: String,
    ifindex: u32,
    local: Ipv4Addr,
    mac: [u8; 6],
}

fn mask(prefix: u8) -> u32 {
    u32::MAX
        .checked_shl(32 - u32::from(prefix.min(32)))
        .unwrap_or(0)
}

/// The interface with an address (not the VIP) in the VIP's subnet, and that address.
fn find_lan(vip: Ipv4Addr, prefix: u8) -> Result<Lan, String> {
    let m = mask(prefix);
    let addrs =
        crate::sys::ifaddrs::list(1024).map_err(|e| format!("cannot list addresses: {e}"))?;
    let a = addrs
        .into_iter()
        .find(|a| a.addr != vip && u32::from(a.addr) & m == u32::from(vip) & m)
        .ok_or_else(|| format!("no interface has an address in {vip}/{prefix}"))?;
    let ifindex = crate::sys::iface::ifindex(&a.name)
        .ok_or_else(|| format!("interface {} vanished", a.name))?;
    let mac = crate::sys::iface::IfSocket::open()
        .and_then(|s| s.hwaddr(&a.name))
        .map_err(|e| format!("cannot read the MAC address of {}: {e}", a.name))?;
    Ok(Lan {
        name: a.name,
        ifindex,
        local: a.addr,
        mac,
    })
}

struct Io {
    sock: AsyncFd<OwnedFd>,
    netlink: Netlink,
    lan: Lan,
    spec: NearSpec,
}

impl Io {
    fn carry_out(&mut self, inst: &Instance, actions: Vec<Action>) {
        for a in actions {
            match a {
                Action::Advertise { priority } => {
                    let payload = inst.advert(priority).encode();
                    for peer in &self.spec.peers {
                        if let Err(e) =
                            crate::sys::vrrp::send_to_v4(self.sock.get_ref(), &payload, *peer)
                        {
                            tracing::debug!(%peer, error = %e, "cannot send a VRRP advertisement");
                        }
                    }
                }
                Action::AddVips => {
                    match self
                        .netlink
                        .add_addr(self.spec.vip, self.spec.prefix, self.lan.ifindex)
                    {
                        Ok(()) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                        Err(e) => {
                            tracing::warn!(vip = %self.spec.vip, iface = %self.lan.name, error = %e, "cannot add the VIP")
                        }
                    }
                    tracing::info!(id = self.spec.id, vip = %self.spec.vip, iface = %self.lan.name, "egress failover: MASTER, VIP added");
                }
                Action::GratuitousArp => {
                    let arp = gratuitous_arp(self.lan.mac, self.spec.vip);
                    for _ in 0..GARP_COUNT {
                        if let Err(e) = crate::sys::vrrp::send_arp_broadcast(self.lan.ifindex, &arp)
                        {
                            tracing::warn!(vip = %self.spec.vip, error = %e, "cannot send gratuitous ARP");
                            break;
                        }
                    }
                }
                Action::RemoveVips => {
                    match self
                        .netlink
                        .del_addr(self.spec.vip, self.spec.prefix, self.lan.ifindex)
                    {
                        Ok(()) => {}
                        Err(e) if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) => {}
                        Err(e) => {
                            tracing::warn!(vip = %self.spec.vip, error = %e, "cannot remove the VIP")
                        }
                    }
                    tracing::info!(id = self.spec.id, vip = %self.spec.vip, "egress failover: VIP removed");
                }
            }
        }
    }
}

fn now_std() -> std::time::Instant {
    tokio::time::Instant::now().into_std()
}

async fn run(
    spec: &NearSpec,
    settings: &NearSettings,
    cell: &Mutex<NearState>,
    stop: watch::Receiver<bool>,
) -> Result<(), String> {
    let lan = find_lan(spec.vip, spec.prefix)?;
    let netlink = Netlink::open().map_err(|e| format!("cannot open netlink: {e}"))?;
    // The port-445 redirect for the whole life of the instance (it matters only where the VIP
    // is, like the reference's iptables rule).
    // Without it (no nf_tables in the kernel) the failover still runs: VIP:port works.
    let nft = super::redirect::Nftables::open()
        .and_then(|mut n| n.install(spec.id, spec.vip, spec.port).map(|()| n));
    let nft = match nft {
        Ok(n) => {
            tracing::info!(id = spec.id, vip = %spec.vip, port = spec.port, "port-445 redirect installed");
            Some(n)
        }
        Err(e) => {
            tracing::warn!(id = spec.id, vip = %spec.vip, error = %e, "cannot install the port-445 redirect (needs CAP_NET_ADMIN and nf_tables); VIP:{} still works", spec.port);
            None
        }
    };
    let result = run_vrrp(spec, settings, cell, stop, lan, netlink).await;
    if let Some(mut n) = nft {
        if let Err(e) = n.remove(spec.id) {
            tracing::warn!(id = spec.id, error = %e, "cannot remove the port-445 redirect");
        }
    }
    result
}

async fn run_vrrp(
    spec: &NearSpec,
    settings: &NearSettings,
    cell: &Mutex<NearState>,
    stop: watch::Receiver<bool>,
    lan: Lan,
    netlink: Netlink,
) -> Result<(), String> {
    let fd = crate::sys::vrrp::raw_v4(IPPROTO_VRRP, lan.local)
        .map_err(|e| format!("cannot open the VRRP socket (needs CAP_NET_RAW): {e}"))?;
    let sock =
        crate::sys::fd::register(fd).map_err(|e| format!("cannot watch the VRRP socket: {e}"))?;
    let mut inst = Instance::new(Params::reference(spec.id, spec.idx, lan.local, spec.vip));
    tracing::info!(
        id = spec.id,
        vip = %spec.vip,
        iface = %lan.name,
        local = %lan.local,
        vrid = inst.params().vrid,
        priority = inst.params().priority,
        peers = ?spec.peers,
        "egress failover starting"
    );
    let mut io = Io {
        sock,
        netlink,
        lan,
        spec: spec.clone(),
    };
    // Like keepalived's tracked script: failed until it succeeded twice.
    let mut tunnel = Health::reference();
    let acts = inst.start(now_std(), false);
    io.carry_out(&inst, acts);
    set(cell, inst.state(), None);
    let mut sample = tokio::time::interval(settings.interval);
    // Ping results arrive here when each ping ends (never blocking this loop's timers).
    let (pinged_tx, mut pinged) = tokio::sync::mpsc::channel::<bool>(4);
    let ping_id = (std::process::id() as u16) ^ (spec.id as u16).rotate_left(8);
    let mut ping_seq: u16 = 0;
    sample.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Stops when told, or when the handle is gone.
    let mut stop = stop;
    let stopped = async move {
        let _ = stop.wait_for(|s| *s).await;
    };
    tokio::pin!(stopped);
    let mut buf = vec![0u8; 2048];
    loop {
        let deadline = inst.deadline().map(tokio::time::Instant::from_std);
        tokio::select! {
            _ = &mut stopped => {
                let acts = inst.shutdown();
                io.carry_out(&inst, acts);
                set(cell, inst.state(), None);
                return Ok(());
            }
            _ = tokio::time::sleep_until(deadline.unwrap_or_else(tokio::time::Instant::now)), if deadline.is_some() => {
                let acts = inst.on_timer(now_std());
                io.carry_out(&inst, acts);
            }
            _ = sample.tick() => {
                match (settings.ping, spec.hub) {
                    (true, Some(hub)) => {
                        ping_seq = ping_seq.wrapping_add(1);
                        let (tx, seq) = (pinged_tx.clone(), ping_seq);
                        tokio::spawn(async move {
                            let _ = tx.send(super::ping::ping(hub, ping_id, seq).await).await;
                        });
                    }
                    _ => {
                        let ok = (settings.health)();
                        let _ = pinged_tx.try_send(ok);
                    }
                }
            }
            Some(ok) = pinged.recv() => {
                if let Some(ok) = tunnel.sample(ok) {
                    tracing::info!(id = spec.id, healthy = ok, "egress failover: tunnel health changed");
                    let acts = inst.on_health(now_std(), ok);
                    io.carry_out(&inst, acts);
                }
            }
            r = io.sock.readable() => {
                let mut guard = match r {
                    Ok(g) => g,
                    Err(e) => {
                        let acts = inst.shutdown();
                        io.carry_out(&inst, acts);
                        return Err(format!("VRRP socket: {e}"));
                    }
                };
                // A bounded batch per wake-up: a flood cannot starve the timers.
                let mut got = Vec::new();
                let mut failed = None;
                for _ in 0..64 {
                    match crate::sys::vrrp::recv(guard.get_inner(), &mut buf) {
                        Ok(n) => {
                            if let Ok(a) = decode_ipv4(&buf[..n]) {
                                got.push(a);
                            }
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            guard.clear_ready();
                            break;
                        }
                        Err(e) => {
                            failed = Some(format!("VRRP socket: {e}"));
                            break;
                        }
                    }
                }
                drop(guard);
                if let Some(e) = failed {
                    // Step down (priority 0, VIP removed) before giving up.
                    let acts = inst.shutdown();
                    io.carry_out(&inst, acts);
                    return Err(e);
                }
                for (from, adv) in got {
                    let acts = inst.on_advert(now_std(), from, &adv);
                    io.carry_out(&inst, acts);
                }
            }
        }
        set(cell, inst.state(), None);
    }
}
