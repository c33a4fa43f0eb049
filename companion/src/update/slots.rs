//! The on-disk side of an update: A/B binary slots, the stable symlink, the journal and
//! the `last-pull` record.
//!
//! Layout under the update dir (the updater's, `/var/lib/gatelet-update`; never inside the
//! daemons' user-writable state dir):
//! - `a/`, `b/`: each a complete set of [`BINARIES`](super::manifest::BINARIES);
//! - `current` → `a` or `b`: the units start `<update dir>/current/gatelet-…`; it is switched
//!   by creating `current.tmp` and `rename(2)`-ing it over `current`, which is atomic, so
//!   after a power cut it names the old slot or the new one, never neither;
//! - `journal.json`: the [`Journal`] of the update in progress;
//! - `<slot>/version.json`: the release the slot holds, written once the slot is complete
//!   (removed before staging into it): the version the daemons run is the active slot's,
//!   which is not the updater's own once an update has happened;
//! - a binary being downloaded is `<slot>/<name>.part` (its length is where a resumed
//!   download continues); it becomes `<slot>/<name>` only once its size and SHA-256 match.
//!
//! The `last-pull` record (`{request_id, ok, pulled_at, version, reason}`) is in the state
//! dir itself, where the reference updater writes it and the heartbeat reads it.

use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::machine::{Journal, Slot};
use super::manifest::Artifact;
use crate::mgmt::self_update::{write_atomically, LAST_PULL_FILE};

const CURRENT: &str = "current";
pub(crate) const JOURNAL: &str = "journal.json";
/// In each slot: the release version its binaries are (`{"version": "0.2.0"}`).
const VERSION: &str = "version.json";

/// The update dir.
#[derive(Debug, Clone)]
pub struct Slots {
    root: PathBuf,
}

impl Slots {
    /// The update dir at `root` (created on first use).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The update dir.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The directory of `slot`.
    pub fn dir(&self, slot: Slot) -> PathBuf {
        self.root.join(slot.name())
    }

    /// The slot `current` points at, or `None` before the first install into slots: no
    /// `current`, or the install's own link to the packaged binaries (an absolute target,
    /// `current -> /usr/bin` from gatelet.tmpfiles.conf, so the units' `ExecStart` works
    /// before any update), which seeding replaces.
    pub fn active(&self) -> io::Result<Option<Slot>> {
        match fs::read_link(self.root.join(CURRENT)) {
            Ok(target) => match target.to_str() {
                Some("a") => Ok(Some(Slot::A)),
                Some("b") => Ok(Some(Slot::B)),
                _ if target.is_absolute() => Ok(None),
                _ => Err(io::Error::other(format!(
                    "{}/current points at {}, not a or b",
                    self.root.display(),
                    target.display()
                ))),
            },
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Points `current` at `slot` atomically and makes it durable.
    pub fn activate(&self, slot: Slot) -> io::Result<()> {
        fs::create_dir_all(&self.root)?;
        let tmp = self.root.join("current.tmp");
        match fs::remove_file(&tmp) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        symlink(slot.name(), &tmp)?;
        fs::rename(&tmp, self.root.join(CURRENT))?;
        fs::File::open(&self.root)?.sync_all()
    }

    /// The release version `slot` holds, if it is complete.
    pub fn version(&self, slot: Slot) -> Option<String> {
        let bytes = fs::read(self.dir(slot).join(VERSION)).ok()?;
        let v: Value = serde_json::from_slice(&bytes).ok()?;
        v["version"].as_str().map(str::to_owned)
    }

    /// Records that `slot` is complete and holds `version` (`None`: forgets it, before
    /// staging into the slot).
    pub fn set_version(&self, slot: Slot, version: Option<&str>) -> io::Result<()> {
        let dir = self.dir(slot);
        match version {
            Some(v) => {
                fs::create_dir_all(&dir)?;
                write_atomically(&dir, VERSION, &json!({ "version": v }))
            }
            None => match fs::remove_file(dir.join(VERSION)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            },
        }
    }

    /// Before the first update: copies the installed binaries (from `installed`, e.g.
    /// `/usr/bin`, release `version`) into slot A and points `current` at it, so that a
    /// rollback always has a complete slot to go back to. Does nothing once `current`
    /// names a slot.
    pub fn seed(&self, installed: &Path, version: &str) -> io::Result<()> {
        self.seed_with(installed, version, |from, part| {
            fs::copy(from, part)
                .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", from.display())))?;
            let f = fs::File::open(part)?;
            f.set_permissions(fs::Permissions::from_mode(0o755))?;
            f.sync_all()
        })
    }

    /// Like [`Slots::seed`] without the copy, for a flash box whose installed binaries sit
    /// in a read-only image (OpenWrt's squashfs `/usr/bin`): slot A holds symlinks to them
    /// (and its `version.json`), so the first slot costs no flash. Only for installed binaries
    /// that nothing replaces during an update (an `opkg upgrade` would change what a
    /// rollback starts). Does nothing once `current` names a slot.
    pub fn seed_by_link(&self, installed: &Path, version: &str) -> io::Result<()> {
        self.seed_with(installed, version, |from, part| {
            if !fs::metadata(from)?.is_file() {
                return Err(io::Error::other(format!(
                    "{}: not a regular file",
                    from.display()
                )));
            }
            symlink(from, part)
        })
    }

    /// Makes slot A from the installed binaries, each put in place at `<name>.part` by
    /// `place(installed, part)` and renamed, then makes it active. Does nothing once `current`
    /// names a slot.
    fn seed_with(
        &self,
        installed: &Path,
        version: &str,
        place: impl Fn(&Path, &Path) -> io::Result<()>,
    ) -> io::Result<()> {
        if self.active()?.is_some() {
            return Ok(());
        }
        let dir = self.dir(Slot::A);
        fs::create_dir_all(&dir)?;
        for name in super::manifest::BINARIES {
            let part = dir.join(format!("{name}.part"));
            match fs::remove_file(&part) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
            place(&installed.join(name), &part)?;
            fs::rename(&part, dir.join(name))?;
        }
        fs::File::open(&dir)?.sync_all()?;
        self.set_version(Slot::A, Some(version))?;
        self.activate(Slot::A)
    }

    /// Removes `slot` with everything in it (the slot no update needs any more: flash is
    /// small). Never the active one: refused.
    pub fn drop_slot(&self, slot: Slot) -> io::Result<()> {
        if self.active()? == Some(slot) {
            return Err(io::Error::other(format!(
                "slot {} is active; not removed",
                slot.name()
            )));
        }
        match fs::remove_dir_all(self.dir(slot)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => fs::File::open(&self.root)?.sync_all(),
        }
    }

    /// Where `name` of `slot` is downloaded to.
    pub fn part_path(&self, slot: Slot, name: &str) -> PathBuf {
        self.dir(slot).join(format!("{name}.part"))
    }

    /// Whether `slot` already holds `name` exactly as `artifact` describes.
    pub fn has(&self, slot: Slot, name: &str, artifact: &Artifact) -> bool {
        matches_artifact(&self.dir(slot).join(name), artifact).unwrap_or(false)
    }

    /// Checks the downloaded `.part` of `name` against `artifact`; if it matches, makes it
    /// executable and renames it into place. A mismatch removes the part (the next attempt
    /// starts over) and says what was wrong.
    pub fn commit_part(&self, slot: Slot, name: &str, artifact: &Artifact) -> io::Result<()> {
        let part = self.part_path(slot, name);
        let size = fs::metadata(&part)?.len();
        if size != artifact.size {
            let _ = fs::remove_file(&part);
            return Err(io::Error::other(format!(
                "{name}: {size} bytes, the manifest says {}",
                artifact.size
            )));
        }
        if !matches_artifact(&part, artifact)? {
            let _ = fs::remove_file(&part);
            return Err(io::Error::other(format!(
                "{name}: SHA-256 does not match the manifest"
            )));
        }
        let f = fs::File::open(&part)?;
        f.set_permissions(fs::Permissions::from_mode(0o755))?;
        f.sync_all()?;
        fs::rename(&part, self.dir(slot).join(name))?;
        fs::File::open(self.dir(slot))?.sync_all()
    }

    /// The journal of the update in progress. An unreadable journal is removed and
    /// reported (it is written atomically, so this means outside interference).
    pub fn load_journal(&self) -> io::Result<Option<Journal>> {
        let path = self.root.join(JOURNAL);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        match serde_json::from_slice(&bytes) {
            Ok(j) => Ok(Some(j)),
            Err(e) => {
                let _ = fs::remove_file(&path);
                Err(io::Error::other(format!("unreadable update journal: {e}")))
            }
        }
    }

    /// Persists `journal` (or removes it).
    pub fn store_journal(&self, journal: Option<&Journal>) -> io::Result<()> {
        fs::create_dir_all(&self.root)?;
        match journal {
            Some(j) => write_atomically(
                &self.root,
                JOURNAL,
                &serde_json::to_value(j).map_err(io::Error::other)?,
            ),
            None => match fs::remove_file(self.root.join(JOURNAL)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
                _ => fs::File::open(&self.root)?.sync_all(),
            },
        }
    }
}

fn matches_artifact(path: &Path, artifact: &Artifact) -> io::Result<bool> {
    let mut f = fs::File::open(path)?;
    if f.metadata()?.len() != artifact.size {
        return Ok(false);
    }
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().as_slice() == artifact.sha256)
}

/// The `last-pull` record: what the heartbeat reports as `last_pull_*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastPull {
    /// The server's request id.
    pub request_id: String,
    /// Success.
    pub ok: bool,
    /// When (ms since the epoch).
    pub pulled_at_ms: u64,
    /// The version installed, when it changed.
    pub version: Option<String>,
    /// Why it failed.
    pub reason: Option<String>,
}

impl LastPull {
    /// Writes the record into `state_dir` (atomically).
    pub fn write(&self, state_dir: &Path) -> io::Result<()> {
        write_atomically(
            state_dir,
            LAST_PULL_FILE,
            &json!({
                "request_id": self.request_id,
                "ok": self.ok,
                "pulled_at": self.pulled_at_ms,
                "version": self.version,
                "reason": self.reason,
            }),
        )
    }

    /// Reads the record from `state_dir`; `None` if there is none or it is unreadable.
    pub fn read(state_dir: &Path) -> Option<Self> {
        let bytes = fs::read(state_dir.join(LAST_PULL_FILE)).ok()?;
        if bytes.len() > 16 * 1024 {
            return None;
        }
        let v: Value = serde_json::from_slice(&bytes).ok()?;
        Some(Self {
            request_id: v["request_id"].as_str()?.to_owned(),
            ok: v["ok"].as_bool()?,
            pulled_at_ms: v["pulled_at"].as_u64()?,
            version: v["version"].as_str().map(str::to_owned),
            reason: v["reason"].as_str().map(str::to_owned),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::update::machine::Phase;

    fn artifact(content: &[u8]) -> Artifact {
        Artifact {
            url: "x".into(),
            size: content.len() as u64,
            sha256: Sha256::digest(content).into(),
        }
    }

    #[test]
    fn activate_switches_the_symlink_and_replaces_a_stale_temp() {
        let d = tempfile::tempdir().unwrap();
        let s = Slots::new(d.path().join("update"));
        assert_eq!(s.active().unwrap(), None);
        s.activate(Slot::A).unwrap();
        assert_eq!(s.active().unwrap(), Some(Slot::A));
        // A cut between symlink() and rename() leaves current.tmp behind.
        symlink("b", d.path().join("update/current.tmp")).unwrap();
        s.activate(Slot::B).unwrap();
        assert_eq!(s.active().unwrap(), Some(Slot::B));
        assert!(!d.path().join("update/current.tmp").exists());
        fs::create_dir_all(s.dir(Slot::B)).unwrap();
        fs::write(s.dir(Slot::B).join("gatelet-agent"), b"new").unwrap();
        assert_eq!(
            fs::read(d.path().join("update/current/gatelet-agent")).unwrap(),
            b"new"
        );
        fs::remove_file(d.path().join("update/current")).unwrap();
        symlink("c", d.path().join("update/current")).unwrap();
        assert!(
            s.active().is_err(),
            "a foreign relative target is an error, not a slot"
        );
    }

    #[test]
    fn seeding_copies_the_installed_binaries_once() {
        let d = tempfile::tempdir().unwrap();
        let installed = d.path().join("usr-bin");
        fs::create_dir_all(&installed).unwrap();
        let s = Slots::new(d.path().join("update"));
        fs::write(installed.join("gatelet-agent"), b"agent 1").unwrap();
        let e = s.seed(&installed, "0.1.0").unwrap_err();
        assert!(e.to_string().contains("gatelet-companion"), "{e}");
        assert_eq!(s.active().unwrap(), None, "no slot until it is complete");
        fs::write(installed.join("gatelet-companion"), b"companion 1").unwrap();
        s.seed(&installed, "0.1.0").unwrap();
        assert_eq!(s.active().unwrap(), Some(Slot::A));
        assert_eq!(s.version(Slot::A).as_deref(), Some("0.1.0"));
        assert_eq!(s.version(Slot::B), None);
        s.set_version(Slot::B, Some("0.2.0")).unwrap();
        assert_eq!(s.version(Slot::B).as_deref(), Some("0.2.0"));
        s.set_version(Slot::B, None).unwrap();
        s.set_version(Slot::B, None).unwrap();
        assert_eq!(s.version(Slot::B), None);
        assert_eq!(
            fs::read(d.path().join("update/current/gatelet-companion")).unwrap(),
            b"companion 1"
        );
        fs::write(installed.join("gatelet-agent"), b"agent 2").unwrap();
        s.seed(&installed, "0.1.0").unwrap();
        assert_eq!(
            fs::read(s.dir(Slot::A).join("gatelet-agent")).unwrap(),
            b"agent 1"
        );
    }

    #[test]
    fn the_packaged_link_counts_as_not_seeded_and_seeding_replaces_it() {
        let d = tempfile::tempdir().unwrap();
        let installed = d.path().join("usr-bin");
        fs::create_dir_all(&installed).unwrap();
        for name in crate::update::manifest::BINARIES {
            fs::write(installed.join(name), name.as_bytes()).unwrap();
        }
        let root = d.path().join("update");
        fs::create_dir_all(&root).unwrap();
        // What tmpfiles' `L` line makes on a fresh install: the units start through it.
        symlink(&installed, root.join(CURRENT)).unwrap();
        let s = Slots::new(&root);
        assert_eq!(s.active().unwrap(), None);
        s.seed(&installed, "0.1.0").unwrap();
        assert_eq!(s.active().unwrap(), Some(Slot::A));
        assert_eq!(
            fs::read_link(root.join(CURRENT)).unwrap(),
            PathBuf::from("a")
        );
        assert_eq!(
            fs::read(root.join("current/gatelet-agent")).unwrap(),
            b"gatelet-agent"
        );
        // A relative target that is not a slot is outside interference, not "unseeded".
        symlink("elsewhere", root.join("current.tmp")).unwrap();
        fs::rename(root.join("current.tmp"), root.join(CURRENT)).unwrap();
        assert!(s.active().is_err());
    }

    #[test]
    fn seeding_by_link_costs_no_copy_and_dropping_keeps_the_active_slot() {
        let d = tempfile::tempdir().unwrap();
        let installed = d.path().join("usr-bin");
        fs::create_dir_all(&installed).unwrap();
        let root = d.path().join("update");
        fs::create_dir_all(&root).unwrap();
        symlink(&installed, root.join(CURRENT)).unwrap();
        let s = Slots::new(&root);
        fs::write(installed.join("gatelet-agent"), b"agent 1").unwrap();
        let e = s.seed_by_link(&installed, "0.1.0").unwrap_err();
        assert!(e.to_string().contains("gatelet-companion") || e.kind() == io::ErrorKind::NotFound);
        assert_eq!(s.active().unwrap(), None, "no slot until it is complete");
        fs::write(installed.join("gatelet-companion"), b"companion 1").unwrap();
        s.seed_by_link(&installed, "0.1.0").unwrap();
        assert_eq!(s.active().unwrap(), Some(Slot::A));
        assert_eq!(s.version(Slot::A).as_deref(), Some("0.1.0"));
        for name in crate::update::manifest::BINARIES {
            let p = s.dir(Slot::A).join(name);
            assert!(fs::symlink_metadata(&p).unwrap().file_type().is_symlink());
            assert_eq!(fs::read_link(&p).unwrap(), installed.join(name));
        }
        assert_eq!(
            fs::read(root.join("current/gatelet-companion")).unwrap(),
            b"companion 1"
        );
        // Staging into the linked slot later replaces the links, not the installed files.
        let new = artifact(b"agent 3");
        fs::write(s.part_path(Slot::A, "gatelet-agent"), b"agent 3").unwrap();
        s.commit_part(Slot::A, "gatelet-agent", &new).unwrap();
        assert_eq!(
            fs::read(installed.join("gatelet-agent")).unwrap(),
            b"agent 1"
        );

        // The active slot is never dropped; the other one goes with all it holds.
        assert!(s.drop_slot(Slot::A).is_err());
        assert!(s.dir(Slot::A).join("gatelet-agent").exists());
        fs::create_dir_all(s.dir(Slot::B)).unwrap();
        fs::write(s.dir(Slot::B).join("gatelet-agent"), b"agent 2").unwrap();
        s.set_version(Slot::B, Some("0.2.0")).unwrap();
        s.drop_slot(Slot::B).unwrap();
        assert!(!s.dir(Slot::B).exists());
        s.drop_slot(Slot::B).unwrap();
        assert!(installed.join("gatelet-agent").exists());
    }

    #[test]
    fn a_part_is_committed_only_when_size_and_hash_match() {
        let d = tempfile::tempdir().unwrap();
        let s = Slots::new(d.path());
        fs::create_dir_all(s.dir(Slot::B)).unwrap();
        let good = artifact(b"hello agent");
        let part = s.part_path(Slot::B, "gatelet-agent");

        fs::write(&part, b"hello agenT").unwrap();
        let e = s.commit_part(Slot::B, "gatelet-agent", &good).unwrap_err();
        assert!(e.to_string().contains("SHA-256"), "{e}");
        assert!(!part.exists() && !s.has(Slot::B, "gatelet-agent", &good));

        fs::write(&part, b"hello agent and more").unwrap();
        let e = s.commit_part(Slot::B, "gatelet-agent", &good).unwrap_err();
        assert!(
            e.to_string().contains("20 bytes, the manifest says 11"),
            "{e}"
        );

        fs::write(&part, b"hello agent").unwrap();
        s.commit_part(Slot::B, "gatelet-agent", &good).unwrap();
        assert!(s.has(Slot::B, "gatelet-agent", &good));
        assert!(!part.exists());
        let mode = fs::metadata(s.dir(Slot::B).join("gatelet-agent"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o755);
        assert!(!s.has(Slot::B, "gatelet-agent", &artifact(b"other")));
    }

    #[test]
    fn journal_and_last_pull_round_trip() {
        let d = tempfile::tempdir().unwrap();
        let s = Slots::new(d.path().join("update"));
        assert_eq!(s.load_journal().unwrap(), None);
        let j = Journal {
            request_id: "r9".into(),
            target_version: Some("0.2.0".into()),
            requested_at_ms: 1,
            active: Slot::A,
            phase: Phase::Fetch {
                attempts: 1,
                not_before_ms: 1,
            },
        };
        s.store_journal(Some(&j)).unwrap();
        assert_eq!(s.load_journal().unwrap(), Some(j));
        s.store_journal(None).unwrap();
        s.store_journal(None).unwrap();
        assert_eq!(s.load_journal().unwrap(), None);
        fs::write(d.path().join("update/journal.json"), b"{half").unwrap();
        assert!(s.load_journal().is_err());
        assert_eq!(s.load_journal().unwrap(), None, "removed after reporting");

        assert_eq!(LastPull::read(d.path()), None);
        let lp = LastPull {
            request_id: "r9".into(),
            ok: false,
            pulled_at_ms: 1_700_000_000_000,
            version: None,
            reason: Some("download: SHA-256 does not match".into()),
        };
        lp.write(d.path()).unwrap();
        assert_eq!(LastPull::read(d.path()), Some(lp));
        // The reference updater's record (no version/reason) reads too.
        fs::write(
            d.path().join(LAST_PULL_FILE),
            br#"{"request_id":"x","ok":true,"pulled_at":5}"#,
        )
        .unwrap();
        assert_eq!(
            LastPull::read(d.path()).map(|l| (l.ok, l.pulled_at_ms)),
            Some((true, 5))
        );
    }
}
