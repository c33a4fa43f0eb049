//! VRRP version 2 for the egress routes' "near" failover, interoperable with the reference
//! gateway's keepalived (same wire protocol and parameters), without keepalived.
//!
//! - [`wire`]: the advertisement, encoded and decoded (checksum, TTL 255, protocol 112).
//! - [`machine`]: one instance as a sans-IO state machine (INIT/BACKUP/MASTER/FAULT), driven
//!   by the time, received advertisements and the tunnel's health.
//! - [`health`]: rise/fall tracking of the tunnel-health samples (keepalived's `chk_tunnel`).
//!
//! The driver that runs them (raw socket for protocol 112, the VIP through netlink, gratuitous
//! ARP, the tunnel check) is `super::near`.

#![deny(unsafe_code)]

pub mod health;
pub mod machine;
pub mod wire;

#[cfg(test)]
mod tests;
