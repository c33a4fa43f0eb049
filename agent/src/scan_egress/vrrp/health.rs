//! The tunnel-health check of an instance, as keepalived's `chk_tunnel` script tracking:
//! sampled every `interval`; `fall` failed samples in a row make it unhealthy, `rise` good ones
//! in a row healthy again (the reference: `ping -c1 -W2 <hub>`, interval 5, rise 2, fall 2).
//! Pure: the driver takes the samples and passes them in.

/// Rise/fall tracking of boolean samples.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    rise: u32,
    fall: u32,
    healthy: bool,
    streak: u32,
}

impl Health {
    /// A tracker that starts `healthy` (keepalived starts a script as failed until it
    /// succeeded `rise` times: pass false for that).
    pub fn new(rise: u32, fall: u32, healthy: bool) -> Self {
        Health {
            rise: rise.max(1),
            fall: fall.max(1),
            healthy,
            streak: 0,
        }
    }

    /// The reference's `chk_tunnel`: rise 2, fall 2, starting failed.
    pub fn reference() -> Self {
        Health::new(2, 2, false)
    }

    /// Whether the tunnel counts as healthy now.
    pub fn healthy(&self) -> bool {
        self.healthy
    }

    /// Takes one sample; returns the new verdict when it changed.
    pub fn sample(&mut self, ok: bool) -> Option<bool> {
        if ok == self.healthy {
            self.streak = 0;
            return None;
        }
        self.streak += 1;
        let need = if ok { self.rise } else { self.fall };
        if self.streak >= need {
            self.healthy = ok;
            self.streak = 0;
            return Some(ok);
        }
        None
    }
}
