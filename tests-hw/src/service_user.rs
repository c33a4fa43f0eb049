//! What the product's installer does for the agent's service user, reproduced without touching
//! the host: `systemd-sysusers` creates the user `gatelet` from `systemd/gatelet.sysusers.conf`
//! (into a copy of the host's `/etc/passwd` and `/etc/group`), and `systemd-tmpfiles --create`
//! applies `systemd/gatelet.tmpfiles.conf` to `/dev/net/tun`.
//!
//! The device node the rule is applied to is a fresh machine's (mode 0600, root:root), made in
//! the private mount namespace `ip netns exec` gives every process it starts: a tmpfs over
//! `/dev/net` holds it, and the copied user database is bind-mounted over `/etc/passwd` and
//! `/etc/group`. The host's `/dev/net/tun` and user database never change, and the check does
//! not depend on how this machine's node happens to be set up.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::process::run;
use crate::{workspace_root, HarnessError, Netns, Result};

/// The service user's name (systemd/gatelet.sysusers.conf).
pub const SERVICE_USER: &str = "gatelet";

/// Runs in the private mount namespace, as root, before it becomes the service user:
/// `$1` the root holding the installer's user database, `$2` the tmpfiles file, `$3` the
/// capabilities to keep (setpriv's syntax: `-all` or `-all,+net_admin`), then the command line.
const SETUP_SCRIPT: &str = r#"set -eu
root=$1 tmpfiles=$2 caps=$3
shift 3
mount --bind "$root/etc/passwd" /etc/passwd
mount --bind "$root/etc/group" /etc/group
mount -t tmpfs -o mode=0755,size=64k gatelet-fresh-dev /dev/net
# A fresh machine's node: only root may open it.
mknod -m 0600 /dev/net/tun c 10 200
systemd-tmpfiles --create --prefix=/dev/net/tun "$tmpfiles"
exec setpriv --reuid=gatelet --regid=gatelet --clear-groups --inh-caps="$caps" \
    --ambient-caps="$caps" --bounding-set="$caps" -- "$@"
"#;

/// The service user as the installer creates it, in a root directory of its own.
#[derive(Debug)]
pub struct ServiceUser {
    root: PathBuf,
    uid: u32,
    gid: u32,
}

impl ServiceUser {
    /// Installs `systemd/gatelet.sysusers.conf` as `<root>/usr/lib/sysusers.d/gatelet.conf`
    /// next to a copy of the host's `/etc/passwd` and `/etc/group` and runs
    /// `systemd-sysusers --root=<root>`, which adds the user.
    pub fn create(root: &Path) -> Result<ServiceUser> {
        let io = |what: String| move |e| HarnessError::io(what, e);
        let sysusers = root.join("usr/lib/sysusers.d");
        std::fs::create_dir_all(&sysusers).map_err(io(format!("create {}", sysusers.display())))?;
        std::fs::create_dir_all(root.join("etc")).map_err(io("create etc".into()))?;
        for f in ["passwd", "group"] {
            std::fs::copy(Path::new("/etc").join(f), root.join("etc").join(f))
                .map_err(io(format!("copy /etc/{f}")))?;
        }
        std::fs::copy(
            workspace_root().join("systemd/gatelet.sysusers.conf"),
            sysusers.join("gatelet.conf"),
        )
        .map_err(io("install gatelet.sysusers.conf".into()))?;
        run(Command::new("systemd-sysusers").arg(format!("--root={}", root.display())))?;
        let passwd = std::fs::read_to_string(root.join("etc/passwd"))
            .map_err(io("read the new passwd".into()))?;
        let entry = passwd
            .lines()
            .map(|l| l.split(':').collect::<Vec<_>>())
            .find(|f| f.len() > 3 && f[0] == SERVICE_USER)
            .ok_or_else(|| HarnessError::Parse {
                what: "passwd after systemd-sysusers".into(),
                detail: format!("no {SERVICE_USER} entry:\n{passwd}"),
            })?;
        let id = |s: &str| {
            s.parse::<u32>().map_err(|_| HarnessError::Parse {
                what: "passwd entry".into(),
                detail: format!("{entry:?}"),
            })
        };
        Ok(ServiceUser {
            root: root.to_path_buf(),
            uid: id(entry[2])?,
            gid: id(entry[3])?,
        })
    }

    /// The user's uid and gid.
    pub fn ids(&self) -> (u32, u32) {
        (self.uid, self.gid)
    }

    /// A command that runs `program` in `ns` as the service user with no capabilities at all,
    /// after the installer's tmpfiles rule was applied to a fresh `/dev/net/tun` (see the
    /// module doc). Arguments added to it go to `program`.
    pub fn command(&self, ns: &Netns, program: impl AsRef<OsStr>) -> Command {
        self.command_with_caps(ns, program, &[])
    }

    /// As [`ServiceUser::command`], keeping the named capabilities (like `"net_admin"`) in the
    /// effective, permitted, ambient and bounding sets and no other: what the unit's
    /// `AmbientCapabilities=` and `CapabilityBoundingSet=` give.
    pub fn command_with_caps(
        &self,
        ns: &Netns,
        program: impl AsRef<OsStr>,
        caps: &[&str],
    ) -> Command {
        let caps: String = std::iter::once("-all".to_owned())
            .chain(caps.iter().map(|c| format!("+{c}")))
            .collect::<Vec<_>>()
            .join(",");
        let mut c = ns.command("sh");
        c.arg("-c")
            .arg(SETUP_SCRIPT)
            .arg("sh")
            .arg(&self.root)
            .arg(workspace_root().join("systemd/gatelet.tmpfiles.conf"))
            .arg(caps)
            .arg(program);
        c
    }
}
