//! A veth pair joining two test namespaces, with one address on each end.

use std::process::Command;

use crate::process::run;
use crate::{Netns, Result};

/// A veth pair: end `a` in one namespace, end `b` in another, each up with an address.
/// The end in namespace `x` is named `v-<role of the other namespace>`. Removed on drop (and
/// with either namespace anyway).
#[derive(Debug)]
pub struct VethPair {
    a_ns: String,
    a_if: String,
    b_if: String,
}

impl VethPair {
    /// Creates the pair and configures `a_addr` / `b_addr` (CIDR, e.g. `10.77.1.1/24`).
    pub fn new(a: &Netns, a_addr: &str, b: &Netns, b_addr: &str) -> Result<VethPair> {
        let a_if = format!("v-{}", truncate(b.role()));
        let b_if = format!("v-{}", truncate(a.role()));
        // Created inside `a` with its peer placed straight into `b`: nothing ever appears in
        // the root namespace, so parallel tests cannot collide on names.
        a.ip(&[
            "link",
            "add",
            &a_if,
            "type",
            "veth",
            "peer",
            "name",
            &b_if,
            "netns",
            b.name(),
        ])?;
        let pair = VethPair {
            a_ns: a.name().into(),
            a_if,
            b_if,
        };
        a.ip(&["addr", "add", a_addr, "dev", &pair.a_if])?;
        a.ip(&["link", "set", &pair.a_if, "up"])?;
        b.ip(&["addr", "add", b_addr, "dev", &pair.b_if])?;
        b.ip(&["link", "set", &pair.b_if, "up"])?;
        Ok(pair)
    }

    /// The name of this pair's end inside `ns`.
    pub fn ifname_in(&self, ns: &Netns) -> &str {
        if ns.name() == self.a_ns {
            &self.a_if
        } else {
            &self.b_if
        }
    }

    /// Replaces every address on the end inside `ns` by `cidr` (a host "moving").
    pub fn readdress(&self, ns: &Netns, cidr: &str) -> Result<()> {
        let ifname = self.ifname_in(ns).to_owned();
        ns.ip(&["addr", "flush", "dev", &ifname])?;
        ns.ip(&["addr", "add", cidr, "dev", &ifname])?;
        Ok(())
    }
}

/// Keeps `v-<role>` within the 15 bytes of an interface name.
fn truncate(role: &str) -> &str {
    let mut end = role.len().min(13);
    while !role.is_char_boundary(end) {
        end -= 1;
    }
    &role[..end]
}

impl Drop for VethPair {
    fn drop(&mut self) {
        // Deleting one end deletes both; the namespace may already be gone.
        let _ = run(Command::new("ip").args(["-n", &self.a_ns, "link", "del", &self.a_if]));
    }
}
