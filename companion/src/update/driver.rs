//! Carries out the state machine's actions: the one place where the update touches the
//! network, the disk and the service manager.
//!
//! Every input goes through [`Driver::feed`]: the machine steps, the journal is persisted,
//! then the actions run in order and their results are fed back. The verified manifest is
//! kept in the update dir (`manifest.json` and its `.minisig`), and verified again before
//! each download attempt, so a restart mid-update needs nothing from memory. How the
//! daemons are restarted and how health is read are passed in ([`Host`]).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::fetch::Fetcher;
use super::machine::{Action, Fetched, Health, Input, Machine, Phase, Slot};
use super::manifest::{self, Artifact, Offer, Version, BINARIES};
use super::minisign::PublicKey;
use super::slots::{LastPull, Slots};
use crate::telemetry::PENDING_UPDATE_FILE;

const SAVED_MANIFEST: &str = "manifest.json";
/// Largest flag file read (the handler writes ~200 bytes).
pub const MAX_FLAG_BYTES: u64 = 4096;
const SAVED_SIGNATURE: &str = "manifest.json.minisig";

/// Where releases come from and what this box is.
#[derive(Debug, Clone)]
pub struct Source {
    /// The manifest's URL (`GATELET_UPDATE_URL`).
    pub manifest_url: String,
    /// The keys a manifest may be signed with.
    pub keys: Vec<PublicKey>,
    /// This box's target triple (the manifest's key).
    pub triple: String,
    /// The version the daemons run: the active slot's ([`Slots::version`]), or, before
    /// the first update, the installed one.
    pub running: Version,
    /// Where the installed binaries are (slot A is seeded from them before the first
    /// update).
    pub installed: PathBuf,
    /// Seed slot A with symlinks to `installed` instead of copies
    /// ([`Slots::seed_by_link`]): for a read-only image's binaries (OpenWrt).
    pub seed_by_link: bool,
}

/// Room an update leaves free in the update dir's filesystem (on OpenWrt the overlay, shared
/// with the store and the configuration): a download that would eat into it is refused.
pub const SPACE_RESERVE: u64 = 1 << 20;

/// What the driver needs from the system it runs on.
pub trait Host {
    /// Restarts both daemons from the stable path.
    fn restart(&mut self) -> io::Result<()>;
    /// Milliseconds since the epoch.
    fn now_ms(&self) -> u64;
    /// Bytes an unprivileged write may still use in the filesystem of `path` (statvfs's
    /// `f_bavail * f_frsize`).
    // `u64::from`: a no-op on 64-bit targets, not on armv7 (32-bit `c_ulong`).
    #[allow(clippy::useless_conversion)]
    fn free_bytes(&self, path: &Path) -> io::Result<u64> {
        let st = nix::sys::statvfs::statvfs(path).map_err(io::Error::from)?;
        Ok(u64::from(st.blocks_available()).saturating_mul(u64::from(st.fragment_size())))
    }
    /// The driver reached `point` (see [`CUT_POINTS`]), with the journal for it already on
    /// disk. Nothing happens here in production; the updater's test hook
    /// (`GATELET_UPDATE_CUT_AT`) kills its own process at a named point, so tests can cut
    /// power at every step of an update deterministically.
    fn at(&mut self, point: &str) {
        let _ = point;
    }
}

/// The points [`Host::at`] is called at, in the order of a good update: before each
/// action (its [`Action::name`]: `fetch`, `stage` once the manifest is verified, `activate
/// b` once the binaries are installed, `restart` once switched, `finish`), `downloaded one`
/// (the first binary in place, the second not yet), `health` (before each health check of
/// a version on trial) and `reported` (the `last-pull` record written, the journal not yet
/// removed).
pub const CUT_POINTS: [&str; 9] = [
    "fetch",
    "stage",
    "downloaded one",
    "activate a",
    "activate b",
    "restart",
    "health",
    "finish",
    "reported",
];

/// Runs updates for one state dir.
pub struct Driver<H: Host> {
    /// The state machine (its journal mirrors the disk).
    pub machine: Machine,
    slots: Slots,
    state_dir: PathBuf,
    fetcher: Fetcher,
    source: Source,
    host: H,
    /// Bytes received by downloads in this process (for the log and the report).
    pub bytes_downloaded: u64,
}

impl<H: Host> Driver<H> {
    /// A driver with its slots and journal in `update_dir` and the flag and `last-pull` in
    /// `state_dir`, resuming the persisted journal (if any). As root, `update_dir` must not
    /// be inside the daemons' (user-writable) state dir: whoever can write there could
    /// plant the binaries root runs.
    pub fn new(
        state_dir: &Path,
        update_dir: &Path,
        fetcher: Fetcher,
        source: Source,
        host: H,
        limits: super::machine::Limits,
    ) -> io::Result<Self> {
        let slots = Slots::new(update_dir);
        let journal = match slots.load_journal() {
            Ok(j) => j,
            Err(e) if e.kind() == io::ErrorKind::Other => {
                tracing::error!(error = %e, "update journal dropped");
                None
            }
            Err(e) => return Err(e),
        };
        Ok(Self {
            machine: Machine::new(journal, limits),
            slots,
            state_dir: state_dir.to_owned(),
            fetcher,
            source,
            host,
            bytes_downloaded: 0,
        })
    }

    /// The slots.
    pub fn slots(&self) -> &Slots {
        &self.slots
    }

    /// The slot `current` points at (slot A when the box was never updated).
    pub fn active(&self) -> io::Result<Slot> {
        Ok(self.slots.active()?.unwrap_or(Slot::A))
    }

    /// For an updater separate from the daemons, before [`Driver::boot`]: when the journal
    /// is between switching slots and hearing from the daemons (trial or rolling back),
    /// restarts them. After a power cut they just started from `current` and this costs a
    /// restart; after the updater itself was killed (no reboot) between the switch and its
    /// restart, they still run the other slot, and without this the boot would count the
    /// wrong version (a trial judged on the old daemons, a rollback reported while the new
    /// ones run on). Returns whether it restarted.
    pub fn restart_after_a_cut(&mut self) -> io::Result<bool> {
        let switching = matches!(
            self.machine.journal.as_ref().map(|j| &j.phase),
            Some(Phase::Trial { .. } | Phase::RollingBack { .. })
        );
        if switching {
            tracing::info!("resuming between a switch and its restart: restarting the daemons");
            self.host.restart()?;
        }
        Ok(switching)
    }

    /// Tells the machine this process started.
    pub fn boot(&mut self) -> io::Result<()> {
        let input = Input::Boot {
            version: self.source.running.to_string(),
            active: self.active()?,
        };
        self.feed(input)
    }

    /// Takes up a request from the flag file, if there is one and no update is running.
    pub fn poll_flag(&mut self) -> io::Result<()> {
        if self.machine.journal.is_some() {
            return Ok(());
        }
        let Some(bytes) = read_flag(&self.state_dir.join(PENDING_UPDATE_FILE))? else {
            return Ok(());
        };
        let flag: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
        let request_id = flag["request_id"]
            .as_str()
            .filter(|r| !r.is_empty() && r.len() <= crate::mgmt::self_update::MAX_REQUEST_ID_BYTES);
        let flag = match request_id {
            Some(_) => flag,
            None => serde_json::Value::Null,
        };
        let Some(request_id) = flag["request_id"].as_str().map(str::to_owned) else {
            tracing::warn!("self-update flag without request_id: removed");
            return fs::remove_file(self.state_dir.join(PENDING_UPDATE_FILE));
        };
        let own = self.source.running.to_string();
        let seeded = if self.source.seed_by_link {
            self.slots.seed_by_link(&self.source.installed, &own)
        } else {
            self.slots.seed(&self.source.installed, &own)
        };
        if let Err(e) = seeded {
            tracing::error!(error = %e, "cannot keep a copy of the running version; update refused");
            LastPull {
                request_id,
                ok: false,
                pulled_at_ms: self.host.now_ms(),
                version: None,
                reason: Some(format!("cannot keep a copy of the running version: {e}")),
            }
            .write(&self.state_dir)?;
            return fs::remove_file(self.state_dir.join(PENDING_UPDATE_FILE));
        }
        let input = Input::Request {
            request_id,
            target_version: flag["target_version"].as_str().map(str::to_owned),
            active: self.active()?,
        };
        self.feed(input)
    }

    /// Time passed; `health` is the running version's.
    pub fn tick(&mut self, health: Health) -> io::Result<()> {
        if matches!(
            self.machine.journal.as_ref().map(|j| &j.phase),
            Some(Phase::Trial { .. })
        ) {
            self.host.at("health");
        }
        self.feed(Input::Tick(health))
    }

    /// Steps the machine with `input` and everything that follows from it.
    pub fn feed(&mut self, input: Input) -> io::Result<()> {
        let mut queue = std::collections::VecDeque::from([input]);
        while let Some(input) = queue.pop_front() {
            let actions = self.machine.step(input, self.host.now_ms());
            self.slots.store_journal(self.machine.journal.as_ref())?;
            for action in actions {
                // Names only: a Debug of the whole action costs code size for little.
                tracing::info!(action = action.name(), "update");
                self.host.at(action.name());
                match action {
                    Action::Fetch => queue.push_back(Input::Fetched(self.fetch())),
                    Action::Stage { version, slot } => {
                        queue.push_back(Input::Staged(self.stage(&version, slot)))
                    }
                    Action::Activate(slot) => self.slots.activate(slot)?,
                    Action::Restart => {
                        // When the restart ends this process (the updater is one of the
                        // daemons), the next process boots from the journal on disk. When
                        // it returns (a separate updater), the daemons' new start is the
                        // machine's boot.
                        self.host.restart()?;
                        let version = self.version_expected();
                        queue.push_back(Input::Boot {
                            version,
                            active: self.active()?,
                        });
                    }
                    Action::Finish {
                        ok,
                        version,
                        reason,
                    } => {
                        let request_id = self
                            .machine
                            .journal
                            .as_ref()
                            .map(|j| j.request_id.clone())
                            .unwrap_or_default();
                        if ok {
                            tracing::info!(request_id, ?version, "update done");
                        } else {
                            tracing::warn!(request_id, ?reason, "update failed");
                        }
                        self.drop_inactive();
                        LastPull {
                            request_id: request_id.clone(),
                            ok,
                            pulled_at_ms: self.host.now_ms(),
                            version,
                            reason,
                        }
                        .write(&self.state_dir)?;
                        self.host.at("reported");
                        self.remove_flag_of(&request_id)?;
                        queue.push_back(Input::Reported);
                    }
                }
            }
        }
        Ok(())
    }

    /// Removes the flag if it still asks for `request_id` (a newer request stays queued).
    fn remove_flag_of(&self, request_id: &str) -> io::Result<()> {
        let path = self.state_dir.join(PENDING_UPDATE_FILE);
        let Some(bytes) = read_flag(&path)? else {
            return Ok(());
        };
        let flag: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
        if flag["request_id"].as_str().is_some_and(|r| r != request_id) {
            return Ok(());
        }
        match fs::remove_file(path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// After an update ended (kept or rolled back): removes the slot `current` does not
    /// name. No rollback can go to it any more (the next update's rollback target is the
    /// active slot), so only one slot stays on disk at rest. A failure costs disk space,
    /// not the report: logged.
    fn drop_inactive(&self) {
        match self.slots.active() {
            Ok(Some(active)) => {
                if let Err(e) = self.slots.drop_slot(active.other()) {
                    tracing::warn!(error = %e, slot = active.other().name(), "inactive slot not removed");
                }
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "inactive slot not removed"),
        }
    }

    /// The version the daemons should be running now: the one on trial, else this one.
    pub fn version_expected(&self) -> String {
        match self.machine.journal.as_ref().map(|j| &j.phase) {
            Some(Phase::Trial { version, .. }) => version.clone(),
            _ => self.source.running.to_string(),
        }
    }

    /// Runs the update in progress (resumed, or taken up from the flag) to its end:
    /// every `interval` (through `sleep`), a tick with `health` of the version expected,
    /// at most `max_ticks` times. Returns whether the update ended.
    pub fn run_to_end(
        &mut self,
        mut health: impl FnMut(&str) -> Health,
        mut sleep: impl FnMut(std::time::Duration),
        interval: std::time::Duration,
        max_ticks: u32,
    ) -> io::Result<bool> {
        self.poll_flag()?;
        for _ in 0..max_ticks {
            if self.machine.journal.is_none() {
                return Ok(true);
            }
            sleep(interval);
            let h = health(&self.version_expected());
            self.tick(h)?;
        }
        Ok(self.machine.journal.is_none())
    }

    fn target_version(&self) -> Option<String> {
        self.machine
            .journal
            .as_ref()
            .and_then(|j| j.target_version.clone())
    }

    fn fetch(&mut self) -> Result<Fetched, String> {
        let (bytes, sig) = self.fetcher.manifest(&self.source.manifest_url)?;
        let m = manifest::verify(&bytes, &sig, &self.source.keys).map_err(|e| e.to_string())?;
        m.for_target(&self.source.triple)
            .map_err(|e| e.to_string())?;
        let offer = manifest::offer(
            &m.version,
            &self.source.running,
            self.target_version().as_deref(),
        )
        .map_err(|e| e.to_string())?;
        if offer == Offer::AlreadyCurrent {
            return Ok(Fetched::AlreadyCurrent);
        }
        let dir = self.slots.root();
        fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        fs::write(dir.join(SAVED_MANIFEST), &bytes).map_err(|e| e.to_string())?;
        fs::write(dir.join(SAVED_SIGNATURE), sig).map_err(|e| e.to_string())?;
        tracing::info!(version = %m.version, comment = m.trusted_comment, "release manifest verified");
        Ok(Fetched::Install {
            version: m.version.to_string(),
        })
    }

    fn stage(&mut self, version: &str, slot: Slot) -> Result<(), String> {
        let dir = self.slots.root();
        let bytes = fs::read(dir.join(SAVED_MANIFEST)).map_err(|e| e.to_string())?;
        let sig = fs::read_to_string(dir.join(SAVED_SIGNATURE)).map_err(|e| e.to_string())?;
        let m = manifest::verify(&bytes, &sig, &self.source.keys).map_err(|e| e.to_string())?;
        if m.version.to_string() != version {
            return Err(format!("saved manifest is {}, not {version}", m.version));
        }
        let arts: [Artifact; 2] = m
            .for_target(&self.source.triple)
            .map_err(|e| e.to_string())?
            .clone();
        fs::create_dir_all(self.slots.dir(slot)).map_err(|e| e.to_string())?;
        self.slots
            .set_version(slot, None)
            .map_err(|e| e.to_string())?;
        self.check_space(slot, &arts)?;
        for (i, (name, art)) in BINARIES.iter().zip(&arts).enumerate() {
            if i == 1 {
                self.host.at("downloaded one");
            }
            if self.slots.has(slot, name, art) {
                continue;
            }
            let url = art.resolve_url(&self.source.manifest_url);
            let got = self
                .fetcher
                .download(&url, &self.slots.part_path(slot, name), art.size)?;
            self.bytes_downloaded += got;
            self.slots
                .commit_part(slot, name, art)
                .map_err(|e| e.to_string())?;
        }
        self.slots
            .set_version(slot, Some(version))
            .map_err(|e| e.to_string())
    }
}

impl<H: Host> Driver<H> {
    /// Before a download into `slot` (inactive, its `version.json` already gone): removes
    /// the binaries of an older release still in it (their space counts as free), then
    /// refuses, saying why, unless the filesystem keeps [`SPACE_RESERVE`] free after the
    /// bytes still to come (a resumed `.part` counts what it holds).
    fn check_space(&self, slot: Slot, arts: &[Artifact; 2]) -> Result<(), String> {
        let mut needed = 0u64;
        for (name, art) in BINARIES.iter().zip(arts) {
            if self.slots.has(slot, name, art) {
                continue;
            }
            match fs::remove_file(self.slots.dir(slot).join(name)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e.to_string()),
                _ => {}
            }
            let part = fs::metadata(self.slots.part_path(slot, name)).map_or(0, |m| m.len());
            needed = needed.saturating_add(art.size.saturating_sub(part));
        }
        let root = self.slots.root();
        let free = self
            .host
            .free_bytes(root)
            .map_err(|e| format!("free space in {}: {e}", root.display()))?;
        if free < needed.saturating_add(SPACE_RESERVE) {
            return Err(format!(
                "not enough space in {}: {free} bytes free, the update needs {needed} and keeps {SPACE_RESERVE} free",
                root.display()
            ));
        }
        Ok(())
    }
}

/// Reads the flag file written by the (less privileged) companion: a regular file, not
/// through a symlink, at most [`MAX_FLAG_BYTES`]; anything else is removed and ignored.
pub(crate) fn read_flag(path: &Path) -> io::Result<Option<Vec<u8>>> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path);
    let file = match file {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            tracing::warn!(error = %e, "self-update flag unreadable (a symlink?): removed");
            fs::remove_file(path)?;
            return Ok(None);
        }
    };
    let meta = file.metadata()?;
    if !meta.is_file() || meta.len() > MAX_FLAG_BYTES {
        tracing::warn!(
            len = meta.len(),
            "self-update flag is not a small regular file: removed"
        );
        fs::remove_file(path)?;
        return Ok(None);
    }
    let mut bytes = Vec::new();
    file.take(MAX_FLAG_BYTES).read_to_end(&mut bytes)?;
    Ok(Some(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::update::machine::Limits;
    use base64::engine::general_purpose::STANDARD;
    use base64::Engine;
    use ring::signature::{Ed25519KeyPair, KeyPair};
    use sha2::{Digest, Sha256};
    use std::cell::Cell;
    use std::collections::HashMap;
    use std::io::{BufRead, BufReader, Write};
    use std::net::TcpListener;
    use std::rc::Rc;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    const TRIPLE: &str = "x86_64-unknown-linux-musl";

    /// A release key made at test time; signs like `minisign -S -l`.
    struct Signer {
        pair: Ed25519KeyPair,
        id: [u8; 8],
    }

    impl Signer {
        fn new(id: u8) -> Self {
            let rng = ring::rand::SystemRandom::new();
            let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
            Self {
                pair: Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap(),
                id: [id; 8],
            }
        }

        fn public(&self) -> PublicKey {
            let mut raw = b"Ed".to_vec();
            raw.extend_from_slice(&self.id);
            raw.extend_from_slice(self.pair.public_key().as_ref());
            PublicKey::parse(&STANDARD.encode(raw)).unwrap()
        }

        fn sign(&self, message: &[u8], comment: &str) -> String {
            let sig = self.pair.sign(message);
            let mut raw = b"Ed".to_vec();
            raw.extend_from_slice(&self.id);
            raw.extend_from_slice(sig.as_ref());
            let mut global = sig.as_ref().to_vec();
            global.extend_from_slice(comment.as_bytes());
            let global = self.pair.sign(&global);
            format!(
                "untrusted comment: test\n{}\ntrusted comment: {comment}\n{}\n",
                STANDARD.encode(raw),
                STANDARD.encode(global.as_ref())
            )
        }
    }

    type Files = Arc<Mutex<HashMap<String, Vec<u8>>>>;

    /// A loopback release server (bounded: 64 requests).
    fn release_server(files: Files) -> String {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", l.local_addr().unwrap());
        std::thread::spawn(move || {
            for conn in l.incoming().take(64) {
                let Ok(mut conn) = conn else { continue };
                conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                let mut r = BufReader::new(conn.try_clone().unwrap());
                let mut path = String::new();
                loop {
                    let mut line = String::new();
                    if r.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    if let Some(rest) = line.strip_prefix("GET ") {
                        path = rest.split(' ').next().unwrap_or("").to_owned();
                    }
                }
                let body = files.lock().unwrap().get(&path).cloned();
                let _ = match body {
                    Some(b) => conn
                        .write_all(
                            format!(
                                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                                b.len()
                            )
                            .as_bytes(),
                        )
                        .and_then(|_| conn.write_all(&b)),
                    None => conn.write_all(
                        b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                    ),
                };
            }
        });
        base
    }

    fn binary(name: &str, version: &str) -> Vec<u8> {
        format!("#!{name} {version}\n").repeat(1000).into_bytes()
    }

    /// Publishes `version` signed by `signer`; `corrupt` serves a different agent.
    fn publish(files: &Files, signer: &Signer, version: &str, corrupt: bool) {
        let mut f = files.lock().unwrap();
        let mut targets = serde_json::Map::new();
        let mut bins = serde_json::Map::new();
        for name in BINARIES {
            let b = binary(name, version);
            bins.insert(
                name.into(),
                serde_json::json!({
                    "url": format!("{name}-{version}"),
                    "size": b.len(),
                    "sha256": Sha256::digest(&b).iter().map(|x| format!("{x:02x}")).collect::<String>(),
                }),
            );
            let mut served = b;
            if corrupt && name == "gatelet-agent" {
                served[10] ^= 1;
            }
            f.insert(format!("/rel/{name}-{version}"), served);
        }
        targets.insert(TRIPLE.into(), bins.into());
        let m = serde_json::to_vec_pretty(
            &serde_json::json!({"schema": 1, "version": version, "targets": targets}),
        )
        .unwrap();
        f.insert(
            "/rel/manifest.json.minisig".into(),
            signer.sign(&m, &format!("gatelet {version}")).into_bytes(),
        );
        f.insert("/rel/manifest.json".into(), m);
    }

    #[derive(Clone)]
    struct TestHost {
        now: Rc<Cell<u64>>,
        restarts: Rc<Cell<u32>>,
        points: Rc<std::cell::RefCell<Vec<String>>>,
        /// What statvfs would say.
        free: Rc<Cell<u64>>,
    }

    impl Host for TestHost {
        fn restart(&mut self) -> io::Result<()> {
            self.restarts.set(self.restarts.get() + 1);
            Ok(())
        }
        fn now_ms(&self) -> u64 {
            self.now.get()
        }
        fn at(&mut self, point: &str) {
            self.points.borrow_mut().push(point.to_owned());
        }
        fn free_bytes(&self, _: &Path) -> io::Result<u64> {
            Ok(self.free.get())
        }
    }

    struct Bench {
        dir: tempfile::TempDir,
        files: Files,
        url: String,
        trusted: Signer,
        host: TestHost,
        /// Seed slot A by links (OpenWrt) instead of copies.
        link: Cell<bool>,
    }

    impl Bench {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            // The installed version; slot A is seeded from it on the first request.
            let installed = dir.path().join("usr-bin");
            fs::create_dir_all(&installed).unwrap();
            for name in BINARIES {
                fs::write(installed.join(name), binary(name, "0.1.0")).unwrap();
            }
            let files = Files::default();
            let url = format!("{}/rel/manifest.json", release_server(files.clone()));
            Self {
                dir,
                files,
                url,
                trusted: Signer::new(1),
                host: TestHost {
                    now: Rc::new(Cell::new(1_700_000_000_000)),
                    restarts: Rc::new(Cell::new(0)),
                    points: Rc::default(),
                    free: Rc::new(Cell::new(u64::MAX)),
                },
                link: Cell::new(false),
            }
        }

        /// A companion process: the version is what `current/gatelet-companion` holds
        /// (the installed one before the first update).
        fn process(&self) -> Driver<TestHost> {
            let mut d = self.unbooted();
            d.boot().unwrap();
            d
        }

        /// [`Bench::process`] before its boot is fed.
        fn unbooted(&self) -> Driver<TestHost> {
            let current = self.dir.path().join("update/current/gatelet-companion");
            let text = fs::read_to_string(&current)
                .or_else(|_| fs::read_to_string(self.dir.path().join("usr-bin/gatelet-companion")))
                .unwrap();
            let running = text.lines().next().unwrap().rsplit(' ').next().unwrap();
            let limits = Limits {
                retry_after: Duration::from_secs(1),
                ..Limits::default()
            };
            Driver::new(
                self.dir.path(),
                &self.dir.path().join("update"),
                Fetcher::new(Duration::from_secs(10)),
                Source {
                    manifest_url: self.url.clone(),
                    keys: vec![self.trusted.public()],
                    triple: TRIPLE.into(),
                    running: running.parse().unwrap(),
                    installed: self.dir.path().join("usr-bin"),
                    seed_by_link: self.link.get(),
                },
                self.host.clone(),
                limits,
            )
            .unwrap()
        }

        fn request(&self, id: &str, target: &str) {
            fs::write(
                self.dir.path().join(PENDING_UPDATE_FILE),
                serde_json::json!({"request_id": id, "target_version": target}).to_string(),
            )
            .unwrap();
        }

        fn advance(&self, ms: u64) {
            self.host.now.set(self.host.now.get() + ms);
        }

        fn last_pull(&self) -> Option<LastPull> {
            LastPull::read(self.dir.path())
        }

        fn installed_gone(&self) {
            fs::remove_dir_all(self.dir.path().join("usr-bin")).unwrap();
        }

        fn active(&self) -> Option<Slot> {
            Slots::new(self.dir.path().join("update")).active().unwrap()
        }
    }

    fn healthy() -> Health {
        Health {
            agent_ready: true,
            companion_ready: true,
            handshake: true,
            config_in_sync: true,
        }
    }

    #[test]
    fn good_update_switches_restarts_and_reports_after_health() {
        let b = Bench::new();
        publish(&b.files, &b.trusted, "0.2.0", false);
        b.request("req-1", "0.2.0");
        let mut u = b.process();
        u.poll_flag().unwrap();
        assert_eq!(b.host.restarts.get(), 1);
        assert_eq!(b.active(), Some(Slot::B));
        let expected: u64 = BINARIES
            .iter()
            .map(|n| binary(n, "0.2.0").len() as u64)
            .sum();
        assert_eq!(u.bytes_downloaded, expected);
        assert_eq!(u.version_expected(), "0.2.0");
        assert_eq!(b.last_pull(), None, "not before the new version is healthy");
        b.advance(5_000);
        u.tick(Health {
            handshake: false,
            ..healthy()
        })
        .unwrap();
        assert_eq!(b.last_pull(), None);
        b.advance(5_000);
        u.tick(healthy()).unwrap();
        let lp = b.last_pull().unwrap();
        assert_eq!(
            (lp.request_id.as_str(), lp.ok, lp.version.as_deref()),
            ("req-1", true, Some("0.2.0"))
        );
        assert!(!b.dir.path().join(PENDING_UPDATE_FILE).exists());
        assert!(u.machine.journal.is_none());
        assert!(!b.dir.path().join("update/journal.json").exists());
        assert!(
            !b.dir.path().join("update/a").exists(),
            "the old slot is dropped once the new one is kept"
        );
        // The cut points, in the order the updater's test hook can stop at them.
        assert_eq!(
            *b.host.points.borrow(),
            [
                "fetch",
                "stage",
                "downloaded one",
                "activate b",
                "restart",
                "health",
                "health",
                "finish",
                "reported"
            ]
        );
        for p in b.host.points.borrow().iter() {
            assert!(CUT_POINTS.contains(&p.as_str()), "{p} is not in CUT_POINTS");
        }
    }

    #[test]
    fn a_power_cut_during_the_trial_resumes_it_from_the_journal() {
        let b = Bench::new();
        publish(&b.files, &b.trusted, "0.2.0", false);
        b.request("req-6", "0.2.0");
        b.process().poll_flag().unwrap();
        // The box reboots into the new slot; the updater starts again from the journal.
        let mut u = b.process();
        assert_eq!(u.version_expected(), "0.2.0");
        b.advance(2_000);
        u.tick(healthy()).unwrap();
        assert!(b.last_pull().unwrap().ok);
        assert_eq!(b.active(), Some(Slot::B));
    }

    #[test]
    fn run_to_end_takes_the_flag_and_finishes_on_health() {
        let b = Bench::new();
        publish(&b.files, &b.trusted, "0.2.0", false);
        b.request("req-7", "0.2.0");
        let mut u = b.process();
        let start = b.host.now.get();
        let now = b.host.now.clone();
        let mut ticks_until_healthy = 3;
        let ended = u
            .run_to_end(
                |version| {
                    if version == "0.2.0" && ticks_until_healthy == 0 {
                        healthy()
                    } else {
                        ticks_until_healthy -= 1;
                        Health::default()
                    }
                },
                |d| now.set(now.get() + d.as_millis() as u64),
                Duration::from_secs(2),
                100,
            )
            .unwrap();
        assert!(ended);
        assert!(b.last_pull().unwrap().ok);
        assert_eq!(b.host.now.get() - start, 8_000);
    }

    fn run_until_reported(b: &Bench, d: &mut Driver<TestHost>) -> LastPull {
        run_until_reported_for(b, d, None)
    }

    /// Ticks (healthy) until `last-pull` answers `id` (any request when `None`).
    fn run_until_reported_for(b: &Bench, d: &mut Driver<TestHost>, id: Option<&str>) -> LastPull {
        for _ in 0..20 {
            if let Some(lp) = b
                .last_pull()
                .filter(|lp| id.is_none_or(|id| lp.request_id == id))
            {
                return lp;
            }
            b.advance(2_000);
            d.tick(healthy()).unwrap();
        }
        panic!("no report");
    }

    /// Requests `version`, runs the update to its report, which must be a failure; its reason.
    fn refusal(b: &Bench, id: &str, version: &str) -> String {
        b.request(id, version);
        let mut d = b.process();
        d.poll_flag().unwrap();
        let lp = run_until_reported(b, &mut d);
        assert!(!lp.ok, "{id}: reported a success");
        lp.reason.unwrap()
    }

    #[test]
    fn corrupted_download_leaves_the_old_version_and_says_why() {
        let b = Bench::new();
        publish(&b.files, &b.trusted, "0.2.0", true);
        let reason = refusal(&b, "req-2", "0.2.0");
        assert!(
            reason.contains("gatelet-agent: SHA-256 does not match the manifest"),
            "{reason}"
        );
        assert_eq!(b.active(), Some(Slot::A));
        assert_eq!(b.host.restarts.get(), 0);
    }

    #[test]
    fn untrusted_signature_installs_nothing_and_says_why() {
        let b = Bench::new();
        publish(&b.files, &Signer::new(2), "0.2.0", false);
        let reason = refusal(&b, "req-3", "0.2.0");
        assert!(reason.contains("not a trusted release key"), "{reason}");
        assert!(!b.dir.path().join("update/b").exists());
        assert_eq!(b.host.restarts.get(), 0);
    }

    #[test]
    fn unhealthy_new_version_is_switched_back_and_reported() {
        let b = Bench::new();
        publish(&b.files, &b.trusted, "0.2.0", false);
        b.request("req-4", "0.2.0");
        let mut u = b.process();
        u.poll_flag().unwrap();
        b.advance(299_000);
        let not_in_sync = Health {
            config_in_sync: false,
            ..healthy()
        };
        u.tick(not_in_sync).unwrap();
        assert_eq!(b.active(), Some(Slot::B), "still within the deadline");
        b.advance(2_000);
        u.tick(not_in_sync).unwrap();
        assert_eq!(b.active(), Some(Slot::A));
        assert_eq!(b.host.restarts.get(), 2);
        let lp = b.last_pull().unwrap();
        assert!(!lp.ok);
        assert!(
            lp.reason
                .as_deref()
                .unwrap()
                .contains("not healthy within 300 s: config not in sync"),
            "{:?}",
            lp.reason
        );
        assert!(u.machine.journal.is_none());
    }

    #[test]
    fn a_separate_updater_resuming_a_trial_restarts_the_daemons_first() {
        let b = Bench::new();
        publish(&b.files, &b.trusted, "0.2.0", false);
        // Nothing in progress: no restart.
        assert!(!b.unbooted().restart_after_a_cut().unwrap());
        assert_eq!(b.host.restarts.get(), 0);
        b.request("req-9", "0.2.0");
        b.process().poll_flag().unwrap();
        let switched = b.host.restarts.get();
        assert_eq!(switched, 1, "the switch restarted once");
        // Killed after the switch: the next updater restarts before counting the boot.
        let mut u = b.unbooted();
        assert!(u.restart_after_a_cut().unwrap());
        assert_eq!(b.host.restarts.get(), switched + 1);
        u.boot().unwrap();
        u.tick(healthy()).unwrap();
        assert!(b.last_pull().unwrap().ok);
        assert!(
            !b.unbooted().restart_after_a_cut().unwrap(),
            "over: no restart"
        );
    }

    #[test]
    fn rollback_after_a_cut_goes_back_to_the_seeded_copy() {
        let b = Bench::new();
        publish(&b.files, &b.trusted, "0.2.0", false);
        b.request("req-8", "0.2.0");
        b.process().poll_flag().unwrap();
        // The installed binaries may change under us (a package upgrade): the slot keeps
        // the copy taken at the first request.
        b.installed_gone();
        let mut u = b.process();
        b.advance(301_000);
        u.tick(Health::default()).unwrap();
        assert_eq!(b.active(), Some(Slot::A));
        let seeded = b.dir.path().join("update/current/gatelet-companion");
        assert_eq!(
            fs::read(seeded).unwrap(),
            binary("gatelet-companion", "0.1.0")
        );
        assert!(!b.last_pull().unwrap().ok);
    }

    #[test]
    fn an_update_without_a_copy_of_the_running_version_is_refused() {
        let b = Bench::new();
        publish(&b.files, &b.trusted, "0.2.0", false);
        b.installed_gone();
        fs::create_dir_all(b.dir.path().join("usr-bin")).unwrap();
        fs::write(
            b.dir.path().join("usr-bin/gatelet-companion"),
            binary("gatelet-companion", "0.1.0"),
        )
        .unwrap();
        b.request("req-9", "0.2.0");
        b.process().poll_flag().unwrap();
        let lp = b.last_pull().unwrap();
        assert!(!lp.ok);
        assert!(lp.reason.unwrap().contains("gatelet-agent"));
        assert_eq!(b.active(), None);
        assert_eq!(b.host.restarts.get(), 0);
        assert!(!b.dir.path().join(PENDING_UPDATE_FILE).exists());
    }

    #[test]
    fn a_planted_flag_is_removed_not_followed() {
        let b = Bench::new();
        publish(&b.files, &b.trusted, "0.2.0", false);
        let flag = b.dir.path().join(PENDING_UPDATE_FILE);
        let target = b.dir.path().join("elsewhere");
        fs::write(&target, br#"{"request_id":"via-link"}"#).unwrap();
        std::os::unix::fs::symlink(&target, &flag).unwrap();
        b.process().poll_flag().unwrap();
        assert!(fs::symlink_metadata(&flag).is_err() && target.exists());
        fs::write(&flag, vec![b' '; MAX_FLAG_BYTES as usize + 1]).unwrap();
        b.process().poll_flag().unwrap();
        assert!(!flag.exists());
        assert_eq!(b.last_pull(), None);
        assert_eq!(b.host.restarts.get(), 0);
    }

    #[test]
    fn a_newer_request_queued_during_an_update_stays_queued() {
        let b = Bench::new();
        publish(&b.files, &b.trusted, "0.2.0", false);
        b.request("req-10", "0.2.0");
        let mut u = b.process();
        u.poll_flag().unwrap();
        b.request("req-11", "0.2.0");
        b.advance(2_000);
        u.tick(healthy()).unwrap();
        assert_eq!(b.last_pull().unwrap().request_id, "req-10");
        let flag = fs::read_to_string(b.dir.path().join(PENDING_UPDATE_FILE)).unwrap();
        assert!(flag.contains("req-11"), "{flag}");
    }

    #[test]
    fn the_default_free_space_is_statvfs() {
        struct Plain;
        impl Host for Plain {
            fn restart(&mut self) -> io::Result<()> {
                Ok(())
            }
            fn now_ms(&self) -> u64 {
                0
            }
        }
        let d = tempfile::tempdir().unwrap();
        let st = nix::sys::statvfs::statvfs(d.path()).unwrap();
        let free = Plain.free_bytes(d.path()).unwrap();
        assert!(free > 0);
        // c_ulong: u32 on 32-bit targets (armv7).
        #[allow(clippy::useless_conversion)]
        let fragment = u64::from(st.fragment_size());
        assert_eq!(free % fragment, 0);
        assert!(Plain.free_bytes(&d.path().join("missing")).is_err());
    }

    #[test]
    fn no_room_for_the_download_refuses_it_and_says_why() {
        let b = Bench::new();
        publish(&b.files, &b.trusted, "0.2.0", false);
        let sizes: u64 = BINARIES
            .iter()
            .map(|n| binary(n, "0.2.0").len() as u64)
            .sum();
        // Room for the binaries but not for the reserve as well.
        b.host.free.set(sizes + SPACE_RESERVE - 1);
        b.request("req-12", "0.2.0");
        let mut d = b.process();
        d.poll_flag().unwrap();
        let lp = run_until_reported(&b, &mut d);
        assert!(!lp.ok);
        let reason = lp.reason.unwrap();
        assert!(
            reason.contains(&format!(
                "not enough space in {}: {} bytes free, the update needs {sizes} and keeps {SPACE_RESERVE} free",
                b.dir.path().join("update").display(),
                sizes + SPACE_RESERVE - 1
            )),
            "{reason}"
        );
        assert_eq!(d.bytes_downloaded, 0, "refused before any download");
        assert_eq!(b.host.restarts.get(), 0);
        assert_eq!(b.active(), Some(Slot::A));
        assert!(!b.dir.path().join("update/b").exists(), "dropped");
        // Exactly enough room: the next request goes through.
        b.host.free.set(sizes + SPACE_RESERVE);
        b.request("req-13", "0.2.0");
        let mut d = b.process();
        d.poll_flag().unwrap();
        let lp = run_until_reported_for(&b, &mut d, Some("req-13"));
        assert!(lp.ok, "{lp:?}");
        assert_eq!(b.active(), Some(Slot::B));
    }

    #[test]
    fn linked_first_slot_then_at_most_one_slot_at_rest() {
        let b = Bench::new();
        b.link.set(true);
        let usr_bin = b.dir.path().join("usr-bin");
        publish(&b.files, &b.trusted, "0.2.0", false);
        b.request("req-14", "0.2.0");
        let mut d = b.process();
        d.poll_flag().unwrap();
        // On trial: A (links to the installed binaries) is the rollback target.
        let link = fs::read_link(b.dir.path().join("update/a/gatelet-agent")).unwrap();
        assert_eq!(link, usr_bin.join("gatelet-agent"));
        assert!(run_until_reported(&b, &mut d).ok);
        assert_eq!(b.active(), Some(Slot::B));
        assert!(!b.dir.path().join("update/a").exists());
        // The next release goes into A; B is dropped once it is kept.
        publish(&b.files, &b.trusted, "0.3.0", false);
        // Only what the new binaries need is asked for: the space check sees them alone.
        let sizes: u64 = BINARIES
            .iter()
            .map(|n| binary(n, "0.3.0").len() as u64)
            .sum();
        b.host.free.set(sizes + SPACE_RESERVE);
        b.request("req-15", "0.3.0");
        let mut d = b.process();
        d.poll_flag().unwrap();
        let lp = run_until_reported_for(&b, &mut d, Some("req-15"));
        assert!(lp.ok && lp.version.as_deref() == Some("0.3.0"), "{lp:?}");
        assert_eq!(b.active(), Some(Slot::A));
        assert!(!b.dir.path().join("update/b").exists());
        assert_eq!(
            fs::read(b.dir.path().join("update/current/gatelet-agent")).unwrap(),
            binary("gatelet-agent", "0.3.0")
        );
        assert_eq!(
            fs::read(usr_bin.join("gatelet-agent")).unwrap(),
            binary("gatelet-agent", "0.1.0"),
            "the installed binaries are never written"
        );
    }

    #[test]
    fn a_rollback_to_the_linked_slot_runs_the_installed_binaries() {
        let b = Bench::new();
        b.link.set(true);
        publish(&b.files, &b.trusted, "0.2.0", false);
        b.request("req-16", "0.2.0");
        let mut u = b.process();
        u.poll_flag().unwrap();
        b.advance(301_000);
        u.tick(Health::default()).unwrap();
        assert!(!b.last_pull().unwrap().ok);
        assert_eq!(b.active(), Some(Slot::A));
        assert!(
            !b.dir.path().join("update/b").exists(),
            "the failed release is dropped"
        );
        assert_eq!(
            fs::read(b.dir.path().join("update/current/gatelet-companion")).unwrap(),
            binary("gatelet-companion", "0.1.0")
        );
    }

    #[test]
    fn already_current_reports_success_at_once() {
        let b = Bench::new();
        publish(&b.files, &b.trusted, "0.1.0", false);
        b.request("req-5", "0.1.0");
        b.process().poll_flag().unwrap();
        let lp = b.last_pull().unwrap();
        assert!(lp.ok && lp.version.is_none());
        assert_eq!(b.host.restarts.get(), 0);
    }
}
