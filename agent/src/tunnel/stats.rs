//! Tunnel counters shared between the data path (writer) and the control socket (reader).
//!
//! The data path updates plain atomics (relaxed: they are statistics, not synchronisation);
//! the rarely changing fields (endpoint, last error) sit behind a mutex that the packet path
//! never takes.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use gatelet_agent_api::control::TunnelStatus;

/// `last_handshake_ms` before the first handshake.
const NEVER: u64 = u64::MAX;

/// Live counters of one tunnel. Create one per tunnel and share it with an `Arc`.
#[derive(Debug)]
pub struct TunnelStats {
    base: Instant,
    mode: &'static str,
    mode_reason: Option<String>,
    rx_bytes: AtomicU64,
    tx_bytes: AtomicU64,
    rx_packets: AtomicU64,
    tx_packets: AtomicU64,
    rx_dropped_not_allowed: AtomicU64,
    tx_dropped_not_allowed: AtomicU64,
    last_handshake_ms: AtomicU64,
    info: Mutex<Info>,
}

#[derive(Debug, Default)]
struct Info {
    endpoint: Option<SocketAddr>,
    last_error: Option<String>,
}

impl TunnelStats {
    /// Counters starting at zero; `base` is the instant handshake times are measured from,
    /// `mode` the interface mode reported in status (`tun` or `netstack`).
    pub fn new(base: Instant, mode: &'static str) -> Self {
        TunnelStats {
            base,
            mode,
            mode_reason: None,
            rx_bytes: AtomicU64::new(0),
            tx_bytes: AtomicU64::new(0),
            rx_packets: AtomicU64::new(0),
            tx_packets: AtomicU64::new(0),
            rx_dropped_not_allowed: AtomicU64::new(0),
            tx_dropped_not_allowed: AtomicU64::new(0),
            last_handshake_ms: AtomicU64::new(NEVER),
            info: Mutex::new(Info::default()),
        }
    }

    /// The same, with the reason the mode was chosen (reported in status).
    pub fn with_mode_reason(mut self, reason: Option<String>) -> Self {
        self.mode_reason = reason;
        self
    }

    /// One decrypted packet of `bytes` bytes went to the interface.
    pub fn count_rx(&self, bytes: usize) {
        self.rx_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
        self.rx_packets.fetch_add(1, Ordering::Relaxed);
    }

    /// One packet of `bytes` bytes from the interface was encrypted for the hub.
    pub fn count_tx(&self, bytes: usize) {
        self.tx_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
        self.tx_packets.fetch_add(1, Ordering::Relaxed);
    }

    /// A decrypted packet whose source is outside the allowed IPs was dropped.
    pub fn count_rx_dropped(&self) {
        self.rx_dropped_not_allowed.fetch_add(1, Ordering::Relaxed);
    }

    /// A packet from the interface whose destination is outside the allowed IPs was dropped.
    pub fn count_tx_dropped(&self) {
        self.tx_dropped_not_allowed.fetch_add(1, Ordering::Relaxed);
    }

    /// A handshake completed at `now`: the tunnel works, so the last error is cleared.
    pub fn set_handshake(&self, now: Instant) {
        if self.lock().last_error.take().is_some() {
            tracing::info!("handshake with the hub completed");
        }
        let ms = now.saturating_duration_since(self.base).as_millis();
        self.last_handshake_ms
            .store(u64::try_from(ms).unwrap_or(NEVER - 1), Ordering::Relaxed);
    }

    /// The hub endpoint now in use.
    pub fn set_endpoint(&self, endpoint: Option<SocketAddr>) {
        self.lock().endpoint = endpoint;
    }

    /// Records the latest tunnel error (shown in status until a handshake completes or the
    /// next error replaces it).
    pub fn set_error(&self, message: impl Into<String>) {
        self.lock().last_error = Some(message.into());
    }

    /// Packets dropped so far because their source was outside the allowed IPs.
    pub fn rx_dropped_not_allowed(&self) -> u64 {
        self.rx_dropped_not_allowed.load(Ordering::Relaxed)
    }

    /// Packets dropped so far because their destination was outside the allowed IPs.
    pub fn tx_dropped_not_allowed(&self) -> u64 {
        self.tx_dropped_not_allowed.load(Ordering::Relaxed)
    }

    /// The status as the control socket reports it, at `now`.
    pub fn snapshot(&self, now: Instant) -> TunnelStatus {
        let hs = self.last_handshake_ms.load(Ordering::Relaxed);
        let now_ms =
            u64::try_from(now.saturating_duration_since(self.base).as_millis()).unwrap_or(u64::MAX);
        let info = self.lock();
        TunnelStatus {
            handshake_age_s: (hs != NEVER).then(|| now_ms.saturating_sub(hs) / 1000),
            rx_bytes: self.rx_bytes.load(Ordering::Relaxed),
            tx_bytes: self.tx_bytes.load(Ordering::Relaxed),
            rx_packets: self.rx_packets.load(Ordering::Relaxed),
            tx_packets: self.tx_packets.load(Ordering::Relaxed),
            endpoint: info.endpoint.map(|e| e.to_string()),
            last_error: info.last_error.clone(),
            mode: self.mode.to_owned(),
            mode_reason: self.mode_reason.clone(),
            rx_dropped_not_allowed: self.rx_dropped_not_allowed(),
            tx_dropped_not_allowed: self.tx_dropped_not_allowed(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Info> {
        // A panic while holding this lock cannot leave the two fields inconsistent.
        self.info.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn snapshot_reports_handshake_age_and_counters() {
        let base = Instant::now();
        let s = TunnelStats::new(base, "tun");
        assert_eq!(s.snapshot(base).handshake_age_s, None);
        s.set_handshake(base + Duration::from_secs(10));
        s.count_rx(100);
        s.count_tx(40);
        s.count_tx(60);
        s.count_rx_dropped();
        s.set_endpoint(Some("192.0.2.1:51820".parse().unwrap()));
        let st = s.snapshot(base + Duration::from_secs(42));
        assert_eq!(st.handshake_age_s, Some(32));
        assert_eq!((st.rx_bytes, st.rx_packets), (100, 1));
        assert_eq!((st.tx_bytes, st.tx_packets), (100, 2));
        assert_eq!(st.rx_dropped_not_allowed, 1);
        assert_eq!(st.endpoint.as_deref(), Some("192.0.2.1:51820"));
        assert_eq!(st.mode, "tun");
    }
}
