//! systemd readiness notification (`sd_notify`) without a crate: one datagram to
//! `$NOTIFY_SOCKET`.

use std::io;
use std::os::unix::net::UnixDatagram;

/// The variable systemd sets for `Type=notify` services.
pub const NOTIFY_SOCKET_VAR: &str = "NOTIFY_SOCKET";

/// Sends `state` (for example `READY=1`) to the service manager. Returns false when not run
/// under one (no `$NOTIFY_SOCKET`).
pub fn notify(state: &str) -> io::Result<bool> {
    let Some(path) = std::env::var_os(NOTIFY_SOCKET_VAR) else {
        return Ok(false);
    };
    let path = path.to_string_lossy().into_owned();
    let sock = UnixDatagram::unbound()?;
    if let Some(name) = path.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
        sock.send_to_addr(state.as_bytes(), &addr)?;
    } else {
        sock.send_to(state.as_bytes(), &path)?;
    }
    Ok(true)
}
