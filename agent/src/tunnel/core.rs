//! The tunnel's protocol logic, free of I/O: boringtun's [`Tunn`] plus cryptokey routing,
//! counters and the decision when to resolve the hub's name again.
//!
//! The driver ([`super::driver`]) owns the sockets and the clock and feeds this core: packets
//! from the interface ([`TunnelCore::from_tun`]), datagrams from the hub
//! ([`TunnelCore::from_network`] then [`TunnelCore::poll_queued`]), timer ticks
//! ([`TunnelCore::on_timer`]) and resolution results. Every call writes its output into a buffer
//! the caller provides, so the steady state allocates nothing. Tests drive two cores against
//! each other in memory with virtual time.
//!
//! Data messages can also be sealed and opened outside `&mut TunnelCore`, so that a data path
//! with a thread per direction holds the core's lock only for bookkeeping: a [`Sealer`] seals
//! with the session [`TunnelCore::sending_session`] hands out, then
//! [`TunnelCore::note_sent`] once per batch; an [`Opener`] opens with the sessions
//! [`TunnelCore::receiving_session`] hands out and reports each batch with
//! [`Opener::finish`]. Handshakes, cookies and timers still go through
//! [`TunnelCore::from_network`] and [`TunnelCore::on_timer`] (the patched boringtun,
//! third_party/boringtun/GATELET-PATCH.md).

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use boringtun::noise::errors::WireGuardError;
use boringtun::noise::{Session, Tunn, TunnResult};
use boringtun::x25519::{PublicKey, StaticSecret};

use super::allowed::{destination_ip, AllowedIps};
use super::stats::TunnelStats;

/// `PersistentKeepalive`: an empty packet to the hub after this many idle seconds, so the hub
/// can always reach a gateway behind NAT.
pub const PERSISTENT_KEEPALIVE_S: u16 = 25;
/// Resolve the hub's name again when no handshake has completed for this long.
pub const RESOLVE_AFTER_NO_HANDSHAKE: Duration = Duration::from_secs(180);
/// Least time between two resolutions triggered by a failure (no address yet, send failed).
pub const RESOLVE_RETRY_INTERVAL: Duration = Duration::from_secs(5);
/// Resolve again when handshake initiations have gone unanswered this long (a hub that moved
/// to a new address on the same link produces no send error), and at most this often while
/// they stay unanswered.
pub const RESOLVE_AFTER_UNANSWERED: Duration = Duration::from_secs(15);
/// How often the driver calls [`TunnelCore::on_timer`]; boringtun's timers have a 1 s grain
/// and need periodic calls.
pub const TIMER_TICK: Duration = Duration::from_millis(250);
/// Bytes a data datagram adds to an IP packet (header 16 + authentication tag 16).
pub const WG_OVERHEAD: usize = 32;
/// Size of a handshake initiation, the largest message that is not data.
pub const HANDSHAKE_INIT_LEN: usize = 148;
/// Size of a handshake response.
const HANDSHAKE_RESPONSE_LEN: usize = 92;
/// WireGuard message types (first byte of a datagram).
const MSG_HANDSHAKE_INIT: u8 = 1;
const MSG_HANDSHAKE_RESPONSE: u8 = 2;
const MSG_DATA: u8 = 4;
/// Bytes of a data message before the ciphertext.
const DATA_HEADER_LEN: usize = 16;

/// The keys of the tunnel. `Debug` never shows them.
#[derive(Clone)]
pub struct TunnelKeys {
    /// Our static private key (`WG_PRIVATE_KEY`).
    pub private_key: [u8; 32],
    /// The hub's static public key (`WG_SERVER_PUBLIC_KEY`).
    pub peer_public_key: [u8; 32],
    /// The optional pre-shared key (`WG_PRESHARED_KEY`).
    pub preshared_key: Option<[u8; 32]>,
}

impl fmt::Debug for TunnelKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TunnelKeys(<redacted>)")
    }
}

/// What a datagram from the hub turned into.
#[derive(Debug, PartialEq, Eq)]
pub enum FromNetwork<'a> {
    /// Write this IP packet to the interface.
    ToTun(&'a [u8]),
    /// Send this datagram to the hub, then call [`TunnelCore::poll_queued`] until it returns
    /// None (boringtun may hold packets queued during the handshake).
    ToNetwork(&'a [u8]),
    /// Nothing to deliver (a keepalive, an invalid datagram or a dropped packet).
    Nothing,
}

/// One WireGuard peer (the hub) and everything decided about it without I/O.
pub struct TunnelCore {
    tunn: Tunn,
    allowed: AllowedIps,
    stats: Arc<TunnelStats>,
    endpoint: Option<SocketAddr>,
    last_handshake: Option<Instant>,
    last_resolve: Option<Instant>,
    resolving: bool,
    send_failed: bool,
    handshake_due: bool,
    expired_reported: bool,
    unanswered_since: Option<Instant>,
}

impl fmt::Debug for TunnelCore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TunnelCore")
            .field("endpoint", &self.endpoint)
            .field("last_handshake", &self.last_handshake)
            .finish_non_exhaustive()
    }
}

/// The part of the buffer at address `base` that `out` (a slice boringtun returned from
/// it) occupies.
fn span(base: usize, out: &[u8]) -> Range<usize> {
    let start = (out.as_ptr() as usize).saturating_sub(base);
    start..start + out.len()
}

impl TunnelCore {
    /// A tunnel to the hub with `keys`, accepting and sending only `allowed` addresses and
    /// counting into `stats`. No endpoint is known until [`TunnelCore::resolve_finished`].
    pub fn new(keys: &TunnelKeys, allowed: AllowedIps, stats: Arc<TunnelStats>) -> Self {
        let tunn = Tunn::new(
            StaticSecret::from(keys.private_key),
            PublicKey::from(keys.peer_public_key),
            keys.preshared_key,
            Some(PERSISTENT_KEEPALIVE_S),
            fastrand::u32(..1 << 24),
            None,
        );
        TunnelCore {
            tunn,
            allowed,
            stats,
            endpoint: None,
            last_handshake: None,
            last_resolve: None,
            resolving: false,
            send_failed: false,
            handshake_due: false,
            expired_reported: false,
            unanswered_since: None,
        }
    }

    /// Smallest output buffer for packets up to `max_packet` bytes.
    pub fn dst_len(max_packet: usize) -> usize {
        (max_packet + WG_OVERHEAD).max(HANDSHAKE_INIT_LEN)
    }

    /// The hub address datagrams go to, once resolved.
    pub fn endpoint(&self) -> Option<SocketAddr> {
        self.endpoint
    }

    /// When the last handshake completed.
    pub fn last_handshake(&self) -> Option<Instant> {
        self.last_handshake
    }

    /// The shared counters.
    pub fn stats(&self) -> &Arc<TunnelStats> {
        &self.stats
    }

    /// An IP packet read from the interface: the datagram to send to the hub (a data packet,
    /// or a handshake initiation while the packet waits for a session), or None when the
    /// packet was dropped (destination outside the allowed IPs) or queued.
    pub fn from_tun<'a>(&mut self, packet: &[u8], dst: &'a mut [u8]) -> Option<&'a [u8]> {
        let base = dst.as_ptr() as usize;
        match destination_ip(packet) {
            Some(ip) if self.allowed.contains(ip) => {}
            _ => {
                self.stats.count_tx_dropped();
                return None;
            }
        }
        let range = match self.tunn.encapsulate(packet, dst) {
            TunnResult::WriteToNetwork(out) => Some(span(base, out)),
            TunnResult::Err(e) => {
                tracing::debug!(error = ?e, "cannot encapsulate a packet");
                return None;
            }
            _ => None,
        };
        self.stats.count_tx(packet.len());
        range.map(|r| &dst[r])
    }

    /// A datagram received from the hub at `now`.
    pub fn from_network<'a>(
        &mut self,
        now: Instant,
        datagram: &[u8],
        dst: &'a mut [u8],
    ) -> FromNetwork<'a> {
        let base = dst.as_ptr() as usize;
        let kind = datagram.first().copied();
        if kind == Some(MSG_DATA) && datagram.len().saturating_sub(DATA_HEADER_LEN) > dst.len() {
            // boringtun panics on a data message larger than the buffer; its size is the
            // sender's choice (one joined by UDP GRO is not cut to the MTU).
            tracing::trace!(len = datagram.len(), "dropped an oversized data message");
            return FromNetwork::Nothing;
        }
        let src = self.endpoint.map(|e| e.ip());
        enum Out {
            Net(Range<usize>),
            Tun(Range<usize>, IpAddr),
            Nothing,
        }
        let out = match self.tunn.decapsulate(src, datagram, dst) {
            TunnResult::WriteToNetwork(out) => {
                let completed = match kind {
                    Some(MSG_HANDSHAKE_INIT) => out.len() == HANDSHAKE_RESPONSE_LEN,
                    Some(MSG_HANDSHAKE_RESPONSE) => true,
                    _ => false,
                };
                let r = span(base, out);
                if completed {
                    self.handshake_completed(now);
                }
                Out::Net(r)
            }
            TunnResult::WriteToTunnelV4(p, ip) => Out::Tun(span(base, p), IpAddr::V4(ip)),
            TunnResult::WriteToTunnelV6(p, ip) => Out::Tun(span(base, p), IpAddr::V6(ip)),
            TunnResult::Done => Out::Nothing,
            TunnResult::Err(e) => {
                tracing::debug!(error = ?e, "dropped a datagram from the hub");
                Out::Nothing
            }
        };
        match out {
            Out::Net(r) => FromNetwork::ToNetwork(&dst[r]),
            Out::Tun(r, ip) => {
                if self.allowed.contains(ip) {
                    self.stats.count_rx(r.len());
                    FromNetwork::ToTun(&dst[r])
                } else {
                    tracing::trace!(source = %ip, "dropped a packet from outside the allowed IPs");
                    self.stats.count_rx_dropped();
                    FromNetwork::Nothing
                }
            }
            Out::Nothing => FromNetwork::Nothing,
        }
    }

    /// The next packet boringtun queued while it had no session, encrypted; call after
    /// [`FromNetwork::ToNetwork`] until None.
    pub fn poll_queued<'a>(&mut self, dst: &'a mut [u8]) -> Option<&'a [u8]> {
        let base = dst.as_ptr() as usize;
        let range = match self.tunn.decapsulate(None, &[], dst) {
            TunnResult::WriteToNetwork(out) => span(base, out),
            _ => return None,
        };
        Some(&dst[range])
    }

    /// Timer work at `now` (call every [`TIMER_TICK`]): handshake retries, keepalives, rekeys,
    /// and a new handshake after the endpoint changed. Returns a datagram to send, if any.
    pub fn on_timer<'a>(&mut self, now: Instant, dst: &'a mut [u8]) -> Option<&'a [u8]> {
        let range = self.timer_work(dst)?;
        if dst.get(range.start) == Some(&MSG_HANDSHAKE_INIT) && self.unanswered_since.is_none() {
            self.unanswered_since = Some(now);
        }
        Some(&dst[range])
    }

    fn timer_work(&mut self, dst: &mut [u8]) -> Option<Range<usize>> {
        let base = dst.as_ptr() as usize;
        if self.handshake_due && self.endpoint.is_some() {
            self.handshake_due = false;
            // Forced: an initiation already in progress went to the old address (or nowhere).
            if let TunnResult::WriteToNetwork(out) =
                self.tunn.format_handshake_initiation(dst, true)
            {
                return Some(span(base, out));
            }
        }
        match self.tunn.update_timers(dst) {
            TunnResult::WriteToNetwork(out) => return Some(span(base, out)),
            TunnResult::Err(WireGuardError::ConnectionExpired) => {}
            TunnResult::Err(e) => {
                tracing::debug!(error = ?e, "timer error");
                return None;
            }
            _ => return None,
        }
        // The handshake expired (no answer for 90 s, or keys 9 minutes old). A gateway must
        // stay reachable, so it keeps knocking instead of waiting for outgoing traffic.
        if !self.expired_reported {
            self.expired_reported = true;
            self.stats
                .set_error("no handshake with the hub for 90 s; still trying");
            tracing::warn!("no handshake with the hub for 90 s; still trying");
        }
        self.endpoint?;
        match self.tunn.format_handshake_initiation(dst, false) {
            TunnResult::WriteToNetwork(out) => Some(span(base, out)),
            _ => None,
        }
    }

    /// Whether the driver should resolve the hub's name now: at start, after a failure
    /// ([`RESOLVE_RETRY_INTERVAL`] apart), while handshake initiations go unanswered
    /// ([`RESOLVE_AFTER_UNANSWERED`] apart) and when no handshake completed for
    /// [`RESOLVE_AFTER_NO_HANDSHAKE`].
    pub fn wants_resolve(&self, now: Instant) -> bool {
        if self.resolving {
            return false;
        }
        let Some(last) = self.last_resolve else {
            return true;
        };
        if self.endpoint.is_none() || self.send_failed {
            return now.saturating_duration_since(last) >= RESOLVE_RETRY_INTERVAL;
        }
        if let Some(since) = self.unanswered_since {
            if now.saturating_duration_since(since.max(last)) >= RESOLVE_AFTER_UNANSWERED {
                return true;
            }
        }
        let quiet_since = self.last_handshake.map_or(last, |h| h.max(last));
        now.saturating_duration_since(quiet_since) >= RESOLVE_AFTER_NO_HANDSHAKE
    }

    /// The driver started a resolution at `now`.
    pub fn resolve_started(&mut self, now: Instant) {
        self.resolving = true;
        self.last_resolve = Some(now);
        self.send_failed = false;
    }

    /// A resolution finished with these addresses (best first) or an error message. Keeps
    /// the current endpoint when it is still listed, else takes the first address. Returns
    /// the new endpoint when it changed; a handshake to it follows on the next
    /// [`TunnelCore::on_timer`].
    pub fn resolve_finished(
        &mut self,
        result: Result<Vec<SocketAddr>, String>,
    ) -> Option<SocketAddr> {
        self.resolving = false;
        let addrs = match result {
            Ok(a) if !a.is_empty() => a,
            Ok(_) => {
                self.stats.set_error("hub endpoint resolved to no address");
                return None;
            }
            Err(message) => {
                self.stats.set_error(message);
                return None;
            }
        };
        if let Some(current) = self.endpoint {
            if addrs.contains(&current) {
                return None;
            }
        }
        let new = addrs[0];
        self.endpoint = Some(new);
        self.stats.set_endpoint(Some(new));
        self.handshake_due = true;
        self.unanswered_since = None;
        Some(new)
    }

    /// The endpoint could not be used at all (no route to it, no socket of its family):
    /// forget it and resolve again after [`RESOLVE_RETRY_INTERVAL`], which sets it anew.
    pub fn endpoint_unusable(&mut self, message: &str) {
        self.endpoint = None;
        self.stats.set_endpoint(None);
        self.stats.set_error(message.to_owned());
    }

    /// Sending to the hub failed with `message`: resolve again soon.
    pub fn on_send_error(&mut self, message: &str) {
        if !self.send_failed {
            self.send_failed = true;
            self.stats.set_error(message.to_owned());
        }
    }

    /// What seals packets to the hub outside the core ([`Sealer::seal`]).
    pub fn sealer(&self) -> Sealer {
        Sealer {
            allowed: self.allowed.clone(),
            stats: Arc::clone(&self.stats),
        }
    }

    /// What opens data messages from the hub outside the core ([`Opener::open`]).
    pub fn opener(&self) -> Opener {
        Opener {
            allowed: self.allowed.clone(),
            stats: Arc::clone(&self.stats),
            sessions: Vec::with_capacity(OPENER_SESSIONS),
        }
    }

    /// The session to seal the next batch with, None while there is none (then each packet
    /// goes through [`TunnelCore::from_tun`], which queues it and starts a handshake). Still
    /// valid after a rekey replaced it here: the hub accepts it until it expires.
    pub fn sending_session(&self) -> Option<Arc<Session>> {
        self.tunn.sending_session()
    }

    /// A batch sealed with a [`TunnelCore::sending_session`]: `packets` data messages with
    /// `bytes` bytes of IP packets (the timers boringtun keeps for keepalives and rekeys).
    pub fn note_sent(&mut self, packets: usize, bytes: usize) {
        self.tunn.note_sent(packets, bytes);
    }

    /// The session that opens data messages carrying `receiver_idx`, if still held.
    pub fn receiving_session(&self, receiver_idx: u32) -> Option<Arc<Session>> {
        self.tunn.receiving_session(receiver_idx)
    }

    fn handshake_completed(&mut self, now: Instant) {
        self.last_handshake = Some(now);
        self.expired_reported = false;
        self.unanswered_since = None;
        self.stats.set_handshake(now);
    }
}

/// Sessions an [`Opener`] holds at once (one, or two across a rekey); a batch with more
/// receiver indices is reported and started again.
pub const OPENER_SESSIONS: usize = 4;

/// Seals IP packets to the hub with a session, without the core: cryptokey routing and the
/// counters, as [`TunnelCore::from_tun`] does for them.
#[derive(Debug, Clone)]
pub struct Sealer {
    allowed: AllowedIps,
    stats: Arc<TunnelStats>,
}

impl Sealer {
    /// Seals `packet` with `session` into `dst` (at least [`TunnelCore::dst_len`] of the
    /// packet); returns the datagram's length, or None when the destination is not allowed.
    /// Count what was sealed into [`TunnelCore::note_sent`].
    pub fn seal(&self, session: &Session, packet: &[u8], dst: &mut [u8]) -> Option<usize> {
        match destination_ip(packet) {
            Some(ip) if self.allowed.contains(ip) => {}
            _ => {
                self.stats.count_tx_dropped();
                return None;
            }
        }
        if dst.len() < packet.len() + WG_OVERHEAD {
            tracing::debug!(
                len = packet.len(),
                "dropped a packet larger than the buffer"
            );
            return None;
        }
        let n = session.seal_at(session.reserve(1), packet, dst).len();
        self.stats.count_tx(packet.len());
        Some(n)
    }
}

/// What an [`Opener`] did with a datagram.
#[derive(Debug, PartialEq, Eq)]
pub enum Opened<'a> {
    /// Write this IP packet to the interface.
    ToTun(&'a [u8]),
    /// Nothing to deliver (a keepalive, a replay, a forgery, a source not allowed).
    Nothing,
    /// Not a data message, or one for a session the opener does not hold yet: look it up
    /// with [`Opener::learn`] (data) or hand the datagram to [`TunnelCore::from_network`].
    NeedsCore,
}

/// One session an [`Opener`] holds, and what it opened with it in this batch.
#[derive(Debug)]
struct Held {
    receiver_idx: u32,
    session: Option<Arc<Session>>,
    packets: usize,
    data_packets: usize,
    bytes: usize,
}

/// Opens data messages from the hub without the core, a batch at a time: the sessions it
/// needs are looked up in the core once per batch ([`Opener::learn`]), what it opened is
/// reported to the core once at the end ([`Opener::finish`]).
#[derive(Debug)]
pub struct Opener {
    allowed: AllowedIps,
    stats: Arc<TunnelStats>,
    sessions: Vec<Held>,
}

impl Opener {
    /// The receiver index of a data message, None for any other datagram.
    pub fn data_receiver(datagram: &[u8]) -> Option<u32> {
        if datagram.len() < WG_OVERHEAD || datagram.first() != Some(&MSG_DATA) {
            return None;
        }
        Some(u32::from_le_bytes(datagram[4..8].try_into().ok()?))
    }

    /// Whether the opener holds room for another session in this batch; when not, call
    /// [`Opener::finish`] first.
    pub fn is_full(&self) -> bool {
        self.sessions.len() >= OPENER_SESSIONS
    }

    /// Holds `session` (from [`TunnelCore::receiving_session`]; None: data to this index is
    /// dropped) for `receiver_idx` until [`Opener::finish`].
    pub fn learn(&mut self, receiver_idx: u32, session: Option<Arc<Session>>) {
        if self.is_full() {
            return;
        }
        self.sessions.push(Held {
            receiver_idx,
            session,
            packets: 0,
            data_packets: 0,
            bytes: 0,
        });
    }

    /// Opens `datagram` into `dst` with a held session: checks the replay window before
    /// decrypting, then the packet and its source against the allowed IPs.
    pub fn open<'a>(&mut self, datagram: &[u8], dst: &'a mut [u8]) -> Opened<'a> {
        let Some(idx) = Self::data_receiver(datagram) else {
            return Opened::NeedsCore;
        };
        let Some(held) = self.sessions.iter_mut().find(|h| h.receiver_idx == idx) else {
            return Opened::NeedsCore;
        };
        let Some(session) = &held.session else {
            return Opened::Nothing;
        };
        let plain = match session.open(datagram, dst) {
            Ok(p) => p,
            Err(e) => {
                tracing::debug!(error = ?e, "dropped a datagram from the hub");
                return Opened::Nothing;
            }
        };
        held.packets += 1;
        let (packet, ip) = match Tunn::decapsulated(plain) {
            TunnResult::WriteToTunnelV4(p, ip) => (p, IpAddr::V4(ip)),
            TunnResult::WriteToTunnelV6(p, ip) => (p, IpAddr::V6(ip)),
            TunnResult::Err(e) => {
                tracing::debug!(error = ?e, "dropped a datagram from the hub");
                return Opened::Nothing;
            }
            _ => return Opened::Nothing,
        };
        held.data_packets += 1;
        held.bytes += packet.len();
        if !self.allowed.contains(ip) {
            tracing::trace!(source = %ip, "dropped a packet from outside the allowed IPs");
            self.stats.count_rx_dropped();
            return Opened::Nothing;
        }
        self.stats.count_rx(packet.len());
        Opened::ToTun(packet)
    }

    /// Reports the batch to the core (current session, timers) and lets go of the sessions.
    pub fn finish(&mut self, core: &mut TunnelCore) {
        for h in self.sessions.drain(..) {
            core.tunn
                .note_received(h.receiver_idx, h.packets, h.data_packets, h.bytes);
        }
    }
}

#[cfg(test)]
mod tests;
