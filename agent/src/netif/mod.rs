//! The network interface the tunnel's packets enter and leave the kernel through.
//!
//! - [`tun`]: the TUN device: created (or attached to when pre-created), addressed, sized,
//!   brought up, with routes for `WG_ALLOWED_IPS`; removed again on exit.
//! - [`netlink`]: the two rtnetlink requests that have no ioctl (add a route, delete a link),
//!   built by hand over a `NETLINK_ROUTE` socket.
//! - [`vnet`]: the `virtio_net_hdr` framing and the receive coalescing it allows.

pub mod netlink;
pub mod tun;
pub mod vnet;

use std::io;

/// A failure to set up the interface: what was attempted, the system's answer, and a hint.
#[derive(Debug, thiserror::Error)]
pub enum NetifError {
    /// A system call failed.
    #[error("{action}: {source}{hint}")]
    Sys {
        /// What was attempted, naming the device.
        action: String,
        /// The system's error.
        #[source]
        source: io::Error,
        /// What to do about it (empty or starting with `; `).
        hint: &'static str,
    },
    /// The configured interface name cannot be used.
    #[error("TUN device name {0:?} must be 1 to 15 characters without '/', ':' or blanks")]
    BadName(String),
}

impl NetifError {
    pub(crate) fn sys(action: impl Into<String>, source: io::Error) -> Self {
        let hint = match source.raw_os_error() {
            Some(libc::EPERM) | Some(libc::EACCES) => {
                "; run as root or with CAP_NET_ADMIN, or pre-create the device for the service \
                 user (ip tuntap add dev <name> mode tun user <user>) and configure it"
            }
            Some(libc::EBUSY) => "; another process (another gatelet-agent?) holds the device",
            Some(libc::ENOENT) | Some(libc::ENODEV) => {
                "; is the tun module loaded (modprobe tun) and /dev/net/tun present?"
            }
            _ => "",
        };
        NetifError::Sys {
            action: action.into(),
            source,
            hint,
        }
    }

    /// Whether the failure was a missing privilege (EPERM or EACCES).
    pub fn is_permission(&self) -> bool {
        matches!(self, NetifError::Sys { source, .. }
            if matches!(source.raw_os_error(), Some(libc::EPERM) | Some(libc::EACCES)))
    }
}
