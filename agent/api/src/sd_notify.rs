//! systemd readiness notification (`sd_notify`) without a crate: one datagram to
//! `$NOTIFY_SOCKET`; and the watchdog period systemd asks for (`WATCHDOG_USEC`).

use std::io;
use std::os::unix::net::UnixDatagram;
use std::time::Duration;

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

/// The variable systemd sets to the unit's `WatchdogSec=`, in microseconds.
pub const WATCHDOG_USEC_VAR: &str = "WATCHDOG_USEC";
/// The variable naming the process the watchdog applies to (absent: this one).
pub const WATCHDOG_PID_VAR: &str = "WATCHDOG_PID";

/// How often to send `WATCHDOG=1`: half of the timeout systemd gives in `WATCHDOG_USEC`
/// (`sd_watchdog_enabled(3)` recommends half), or None when the watchdog is off for this
/// process: no or an unparsable `WATCHDOG_USEC`, zero, or a `WATCHDOG_PID` that is not
/// `own_pid`. The values are passed in (read them with [`std::env::var`]) so the caller decides
/// where they come from.
pub fn watchdog_period(usec: Option<&str>, pid: Option<&str>, own_pid: u32) -> Option<Duration> {
    let usec: u64 = usec?.trim().parse().ok()?;
    if usec == 0 {
        return None;
    }
    if let Some(pid) = pid {
        if pid.trim().parse::<u32>().ok()? != own_pid {
            return None;
        }
    }
    Some(Duration::from_micros(usec / 2))
}

/// [`watchdog_period`] from this process's environment.
pub fn watchdog_period_from_env() -> Option<Duration> {
    watchdog_period(
        std::env::var(WATCHDOG_USEC_VAR).ok().as_deref(),
        std::env::var(WATCHDOG_PID_VAR).ok().as_deref(),
        std::process::id(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_period_is_half_of_watchdog_usec() {
        assert_eq!(
            watchdog_period(Some("30000000"), None, 7),
            Some(Duration::from_secs(15))
        );
        assert_eq!(
            watchdog_period(Some("60000000"), Some("7"), 7),
            Some(Duration::from_secs(30))
        );
    }

    #[test]
    fn no_period_when_the_watchdog_is_off_or_meant_for_another_process() {
        assert_eq!(watchdog_period(None, None, 7), None);
        assert_eq!(watchdog_period(Some("0"), None, 7), None);
        assert_eq!(watchdog_period(Some("soon"), None, 7), None);
        assert_eq!(watchdog_period(Some("30000000"), Some("8"), 7), None);
        assert_eq!(watchdog_period(Some("30000000"), Some("x"), 7), None);
    }
}
