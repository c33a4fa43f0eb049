//! One VRRP instance as a state machine (RFC 3768 §6.4, with keepalived's `nopreempt` and
//! FAULT): no sockets, no clock. The driver feeds it the time, the advertisements received and
//! the tunnel's health, and carries out the [`Action`]s it returns; [`Instance::deadline`] says
//! when to call [`Instance::on_timer`] next.
//!
//! - INIT: nothing yet. [`Instance::start`]: healthy → BACKUP (keepalived's `state BACKUP`),
//!   else FAULT.
//! - BACKUP: becomes MASTER when no advertisement came for the master down interval
//!   (3 × advertisement interval + skew, skew = (256 − priority)/256 s), or the skew time
//!   after a priority-0 advertisement (the master stepped down). A valid advertisement resets
//!   the timer; with preemption, one of lower priority than ours is ignored (we take over),
//!   with `nopreempt` (the reference's setting) it is accepted like any other.
//! - MASTER: advertises every interval; adds the VIPs and sends gratuitous ARP on entry;
//!   steps down to BACKUP on an advertisement of higher priority, or of equal priority from a
//!   higher address; answers a priority-0 advertisement with one of its own at once.
//! - FAULT (the tunnel is down): no VIP, no advertisements; a MASTER that enters it first
//!   sends priority 0 so the backups take over after their skew time rather than the whole
//!   down interval. Back to BACKUP when the tunnel is healthy again.
//!
//! Advertisements for another VRID, with another interval, another authentication type, or
//! from our own address are not ours and are ignored (counted by the driver if it likes).

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use super::wire::{Advert, AUTH_NONE, PRIORITY_OWNER, PRIORITY_STOP};

/// The parameters of one instance (the reference's keepalived `vrrp_instance`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Params {
    /// `virtual_router_id`.
    pub vrid: u8,
    /// `priority` (1-254; 255 is the address owner).
    pub priority: u8,
    /// `advert_int`, whole seconds (1-255).
    pub advert_int_s: u8,
    /// Preempt a lower-priority master (the reference: `nopreempt`, so false).
    pub preempt: bool,
    /// Our own address on the LAN (`unicast_src_ip`), the tie-breaker at equal priority.
    pub local_ip: Ipv4Addr,
    /// The virtual addresses.
    pub vips: Vec<Ipv4Addr>,
}

impl Params {
    /// The reference gateway's parameters for egress route `id` at position `idx` of the
    /// route list: `virtual_router_id 51 + id % 200`, `priority 150 − idx`, `advert_int 1`,
    /// `nopreempt`.
    pub fn reference(id: u64, idx: usize, local_ip: Ipv4Addr, vip: Ipv4Addr) -> Params {
        Params {
            vrid: (51 + id % 200) as u8,
            priority: 150u8.saturating_sub(idx.min(149) as u8),
            advert_int_s: 1,
            preempt: false,
            local_ip,
            vips: vec![vip],
        }
    }

    /// The advertisement interval.
    pub fn advert_int(&self) -> Duration {
        Duration::from_secs(u64::from(self.advert_int_s.max(1)))
    }

    /// Skew time: (256 − priority) / 256 s.
    pub fn skew(&self) -> Duration {
        Duration::from_micros((256 - u64::from(self.priority)) * 1_000_000 / 256)
    }

    /// Master down interval: 3 × advertisement interval + skew.
    pub fn master_down(&self) -> Duration {
        3 * self.advert_int() + self.skew()
    }
}

/// The state of an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Not started.
    Init,
    /// Another gateway holds the VIPs (or nobody yet, and we wait).
    Backup,
    /// We hold the VIPs.
    Master,
    /// The tunnel is down: we must not hold the VIPs.
    Fault,
}

impl State {
    /// `init`, `backup`, `master`, `fault`.
    pub fn word(self) -> &'static str {
        match self {
            State::Init => "init",
            State::Backup => "backup",
            State::Master => "master",
            State::Fault => "fault",
        }
    }
}

/// What the driver must do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send an advertisement with this priority to every peer.
    Advertise {
        /// Our priority, or 0 when stepping down.
        priority: u8,
    },
    /// Add the VIPs to the LAN interface.
    AddVips,
    /// Send gratuitous ARP for the VIPs.
    GratuitousArp,
    /// Remove the VIPs from the LAN interface.
    RemoveVips,
}

/// One VRRP instance.
#[derive(Debug, Clone)]
pub struct Instance {
    params: Params,
    state: State,
    deadline: Option<Instant>,
}

impl Instance {
    /// An instance in INIT.
    pub fn new(params: Params) -> Self {
        Instance {
            params,
            state: State::Init,
            deadline: None,
        }
    }

    /// The parameters.
    pub fn params(&self) -> &Params {
        &self.params
    }

    /// The current state.
    pub fn state(&self) -> State {
        self.state
    }

    /// When [`Instance::on_timer`] is due (None: no timer runs).
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// The advertisement this instance sends with `priority`.
    pub fn advert(&self, priority: u8) -> Advert {
        Advert {
            vrid: self.params.vrid,
            priority,
            advert_int_s: self.params.advert_int_s,
            auth_type: AUTH_NONE,
            addrs: self.params.vips.clone(),
        }
    }

    /// Leaves INIT: to BACKUP when `healthy` (MASTER at once for an address owner), else FAULT.
    pub fn start(&mut self, now: Instant, healthy: bool) -> Vec<Action> {
        if self.state != State::Init {
            return Vec::new();
        }
        if !healthy {
            self.state = State::Fault;
            self.deadline = None;
            return Vec::new();
        }
        if self.params.priority == PRIORITY_OWNER {
            return self.become_master(now);
        }
        self.become_backup(now);
        Vec::new()
    }

    /// The timer fired (call at or after [`Instance::deadline`]).
    pub fn on_timer(&mut self, now: Instant) -> Vec<Action> {
        match self.deadline {
            Some(d) if now >= d => {}
            _ => return Vec::new(),
        }
        match self.state {
            State::Backup => self.become_master(now),
            State::Master => {
                self.deadline = Some(now + self.params.advert_int());
                vec![Action::Advertise {
                    priority: self.params.priority,
                }]
            }
            State::Init | State::Fault => {
                self.deadline = None;
                Vec::new()
            }
        }
    }

    /// An advertisement from `from` arrived (already decoded and checked on the wire).
    pub fn on_advert(&mut self, now: Instant, from: Ipv4Addr, adv: &Advert) -> Vec<Action> {
        if !self.is_ours(from, adv) {
            return Vec::new();
        }
        match self.state {
            State::Backup => {
                if adv.priority == PRIORITY_STOP {
                    self.deadline = Some(now + self.params.skew());
                } else if !self.params.preempt || adv.priority >= self.params.priority {
                    self.deadline = Some(now + self.params.master_down());
                }
                Vec::new()
            }
            State::Master => {
                if adv.priority == PRIORITY_STOP {
                    self.deadline = Some(now + self.params.advert_int());
                    return vec![Action::Advertise {
                        priority: self.params.priority,
                    }];
                }
                let higher = adv.priority > self.params.priority
                    || (adv.priority == self.params.priority && from > self.params.local_ip);
                if higher {
                    self.become_backup(now);
                    return vec![Action::RemoveVips];
                }
                Vec::new()
            }
            State::Init | State::Fault => Vec::new(),
        }
    }

    /// The tunnel's health changed (or was sampled again): FAULT when down, BACKUP again
    /// when it comes back.
    pub fn on_health(&mut self, now: Instant, healthy: bool) -> Vec<Action> {
        match (self.state, healthy) {
            (State::Master, false) => {
                self.state = State::Fault;
                self.deadline = None;
                vec![
                    Action::Advertise {
                        priority: PRIORITY_STOP,
                    },
                    Action::RemoveVips,
                ]
            }
            (State::Backup, false) => {
                self.state = State::Fault;
                self.deadline = None;
                Vec::new()
            }
            (State::Fault, true) => {
                self.become_backup(now);
                Vec::new()
            }
            _ => Vec::new(),
        }
    }

    /// The instance goes away (route removed, agent stopping): a MASTER steps down with a
    /// priority-0 advertisement and removes its VIPs.
    pub fn shutdown(&mut self) -> Vec<Action> {
        let was = self.state;
        self.state = State::Init;
        self.deadline = None;
        if was == State::Master {
            vec![
                Action::Advertise {
                    priority: PRIORITY_STOP,
                },
                Action::RemoveVips,
            ]
        } else {
            Vec::new()
        }
    }

    fn is_ours(&self, from: Ipv4Addr, adv: &Advert) -> bool {
        adv.vrid == self.params.vrid
            && adv.advert_int_s == self.params.advert_int_s
            && adv.auth_type == AUTH_NONE
            && from != self.params.local_ip
    }

    fn become_backup(&mut self, now: Instant) {
        self.state = State::Backup;
        self.deadline = Some(now + self.params.master_down());
    }

    fn become_master(&mut self, now: Instant) -> Vec<Action> {
        self.state = State::Master;
        self.deadline = Some(now + self.params.advert_int());
        vec![
            Action::AddVips,
            Action::GratuitousArp,
            Action::Advertise {
                priority: self.params.priority,
            },
        ]
    }
}
