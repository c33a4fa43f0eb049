//! The congestion window smoltcp 0.12 lacks. Its controllers cap each burst of new data, not
//! the data in flight, so a flow sends its whole send ring (4 MiB) every round trip; through
//! a bottleneck smaller than that (a home uplink and its router's queue) every round trip
//! loses packets, and its go-back-N recovery collapses the flow to a fraction of the link
//! (measured in the virtual-time tests: 0.27 MB/s through a 12.5 MB/s link).
//!
//! So the stack bounds what the relay may queue instead: the bytes in the send ring (in
//! flight plus unsent) stay under a window that grows as data is acknowledged (doubling per
//! round trip in slow start, one segment per round trip after) and halves on a loss, seen as
//! a retransmitted segment in the stack's own output (Reno without fast recovery).

/// Window at the start (about 46 segments of 1,380 bytes).
pub const INITIAL: usize = 64 << 10;
/// Smallest window after losses.
pub const MIN: usize = 8 << 10;
/// Segment size assumed for the additive increase.
const MSS: usize = 1380;
/// After a loss the window grows by at least this fraction of what is acknowledged (about
/// 3 % per round trip: a 4 MiB window at 100 ms comes back from a loss in seconds, where one
/// segment per round trip would take minutes).
const GROWTH_DIVISOR: usize = 32;

#[derive(Debug)]
pub struct Cwnd {
    /// Bytes allowed in the send ring.
    cap: usize,
    ssthresh: usize,
    /// The ring's size (the window never exceeds it).
    max: usize,
    /// Bytes written into the ring, and of those acknowledged, since the start.
    written: u64,
    acked: u64,
    /// The end of the highest segment sent so far (TCP sequence space).
    high: Option<u32>,
    /// While recovering from a loss: the `high` at the loss. Retransmissions below it are
    /// the same loss event.
    recover: Option<u32>,
}

/// `a` is before `b` in sequence space.
fn before(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) < 0
}

impl Cwnd {
    pub fn new(max: usize) -> Self {
        Cwnd {
            cap: INITIAL.min(max),
            ssthresh: usize::MAX,
            max,
            written: 0,
            acked: 0,
            high: None,
            recover: None,
        }
    }

    /// Bytes that may be written now, with `queued` bytes in the send ring; grows the
    /// window by what was acknowledged since the last call.
    pub fn room(&mut self, queued: usize) -> usize {
        let acked_total = self.written.saturating_sub(queued as u64);
        let newly = acked_total.saturating_sub(self.acked) as usize;
        self.acked = acked_total;
        if newly > 0 {
            let grow = if self.cap < self.ssthresh {
                newly
            } else {
                (MSS * newly / self.cap).max(newly / GROWTH_DIVISOR)
            };
            self.cap = self.cap.saturating_add(grow).min(self.max);
        }
        self.cap.saturating_sub(queued)
    }

    pub fn wrote(&mut self, n: usize) {
        self.written += n as u64;
    }

    /// A data segment of ours left: `seq` and payload length. Returns true when it is a
    /// retransmission that starts a loss event (the window was halved).
    pub fn sent(&mut self, seq: u32, len: usize, queued: usize) -> bool {
        if len == 0 {
            return false;
        }
        let end = seq.wrapping_add(len as u32);
        let Some(high) = self.high else {
            self.high = Some(end);
            return false;
        };
        if before(high, end) {
            self.high = Some(end);
            if self.recover.is_some_and(|r| !before(seq, r)) {
                self.recover = None;
            }
            return false;
        }
        // Nothing new: a retransmission.
        if self.recover.is_some_and(|r| before(seq, r)) {
            return false;
        }
        self.recover = Some(high);
        self.ssthresh = (queued.min(self.cap) / 10 * 7).max(MIN);
        self.cap = self.ssthresh;
        true
    }

    #[cfg(test)]
    pub fn cap(&self) -> usize {
        self.cap
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_doubling_then_linearly_and_halves_once_per_loss() {
        let mut c = Cwnd::new(4 << 20);
        assert_eq!(c.room(0), INITIAL);
        c.wrote(INITIAL);
        assert_eq!(c.room(INITIAL), 0, "full");
        // All acknowledged: slow start doubles.
        assert_eq!(c.room(0), 2 * INITIAL);
        c.wrote(2 * INITIAL);
        let mut seq = 0u32;
        for _ in 0..10 {
            assert!(!c.sent(seq, 1000, 2 * INITIAL));
            seq += 1000;
        }
        // Segment 3 again: a loss; the window shrinks to 0.7 of what was queued.
        assert!(c.sent(3000, 1000, 2 * INITIAL));
        let after = 2 * INITIAL / 10 * 7;
        assert_eq!(c.cap(), after);
        // More retransmissions of the same flight: the same loss.
        assert!(!c.sent(4000, 1000, 2 * INITIAL));
        assert_eq!(c.cap(), after);
        // New data past the flight ends the recovery; a later retransmission counts again.
        assert!(!c.sent(10_000, 1000, INITIAL));
        assert!(!c.sent(11_000, 1000, INITIAL));
        assert!(c.sent(10_500, 500, INITIAL));
        assert_eq!(c.cap(), INITIAL / 10 * 7);
    }

    #[test]
    fn after_a_loss_it_grows_a_thirty_second_of_what_is_acknowledged() {
        let mut c = Cwnd::new(1 << 20);
        c.wrote(INITIAL);
        assert!(!c.sent(0, 1000, INITIAL));
        assert!(!c.sent(1000, 1000, INITIAL));
        assert!(c.sent(0, 1000, INITIAL));
        let cap0 = c.cap();
        assert_eq!(cap0, INITIAL / 10 * 7);
        // A window's worth acknowledged: 1/32 of it more (more than one segment here).
        c.room(INITIAL - cap0);
        assert_eq!(c.cap(), cap0 + cap0 / GROWTH_DIVISOR);
        // A small window grows by at least a segment per window.
        let mut c = Cwnd::new(1 << 20);
        c.wrote(MIN);
        c.sent(0, 1000, MIN);
        c.sent(1000, 1000, MIN);
        c.sent(0, 1000, MIN);
        assert_eq!(c.cap(), MIN);
        c.room(0);
        assert_eq!(c.cap(), MIN + MSS);
    }

    #[test]
    fn never_exceeds_the_ring_nor_goes_below_the_minimum() {
        let mut c = Cwnd::new(100 << 10);
        for _ in 0..10 {
            let r = c.room(0);
            c.wrote(r);
        }
        c.room(0);
        assert_eq!(c.cap(), 100 << 10);
        let mut seq = 0u32;
        for _ in 0..20 {
            c.sent(seq, 1000, 0);
            c.sent(seq, 1000, 0);
            seq += 2000;
            c.sent(seq, 1000, 0);
            seq += 1000;
        }
        assert_eq!(c.cap(), MIN);
    }

    #[test]
    fn sequence_numbers_wrap() {
        let mut c = Cwnd::new(1 << 20);
        assert!(!c.sent(u32::MAX - 500, 1000, 0));
        assert!(!c.sent(499, 1000, 0), "past the wrap is new data");
        assert!(
            c.sent(u32::MAX - 500, 1000, 0),
            "a retransmission across the wrap"
        );
    }
}
