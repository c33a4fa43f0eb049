//! `POST /api/self-update`: queue an update by writing the flag file an updater watches.
//!
//! The flag is `<state dir>/pending-update` (the reference gateway's name and content,
//! so its systemd path unit and update script work unchanged), written atomically: a temp
//! file, fsync, rename. The cooldown is the reference's (`COOLDOWN_MS = 60_000` in
//! gatecontrol-gateway `src/api/routes/selfUpdate.js`): a request is skipped when it repeats
//! the queued or last pulled request, or comes within [`SELF_UPDATE_COOLDOWN`] of the last
//! queued request or the last successful pull.

use std::fs;
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};

use super::{MgmtContext, Reply};
use crate::telemetry::PENDING_UPDATE_FILE;

/// Minimum time between two queued updates (the reference's cooldown).
pub const SELF_UPDATE_COOLDOWN: Duration = Duration::from_secs(60);
/// The updater's record of its last pull (`{request_id, ok, pulled_at}`, reference format).
pub const LAST_PULL_FILE: &str = "last-pull";
/// Longest `request_id` accepted, in bytes.
pub const MAX_REQUEST_ID_BYTES: usize = 200;

/// Handles one self-update request (authorised; serialised by the caller).
pub fn handle(ctx: &MgmtContext, body: &Value) -> Reply {
    let Some(request_id) = body
        .get("request_id")
        .and_then(Value::as_str)
        .filter(|r| !r.is_empty() && r.len() <= MAX_REQUEST_ID_BYTES)
    else {
        return Reply::error(400, "request_id_required");
    };
    let target_version = body.get("target_version").and_then(Value::as_str);
    let now = (ctx.clock)();
    if in_cooldown(&ctx.state_dir, request_id, now) {
        tracing::info!(request_id, "self-update skipped: cooldown");
        return Reply::json(200, &json!({"ok": true, "skipped": "cooldown"}));
    }
    let flag = json!({
        "request_id": request_id,
        "target_version": target_version,
        "requested_at": iso8601(now),
        "requested_at_ms": now,
        "triggered_via": "server-push",
    });
    match write_atomically(&ctx.state_dir, PENDING_UPDATE_FILE, &flag) {
        Ok(()) => {
            tracing::info!(request_id, ?target_version, "self-update queued");
            Reply::json(200, &json!({"ok": true, "queued": true}))
        }
        Err(e) => {
            tracing::error!(
                error = %e, dir = %ctx.state_dir.display(),
                "cannot write the self-update flag; check that the state dir is writable"
            );
            Reply::error(500, "flag_write_failed")
        }
    }
}

fn read_json(path: &Path) -> Option<Value> {
    serde_json::from_slice(&fs::read(path).ok()?).ok()
}

fn in_cooldown(dir: &Path, request_id: &str, now: u64) -> bool {
    let window = SELF_UPDATE_COOLDOWN.as_millis() as u64;
    let recent = |at: Option<u64>| at.is_some_and(|t| now.saturating_sub(t) < window);
    if let Some(p) = read_json(&dir.join(PENDING_UPDATE_FILE)) {
        if p["request_id"] == request_id || recent(p["requested_at_ms"].as_u64()) {
            return true;
        }
    }
    if let Some(lp) = read_json(&dir.join(LAST_PULL_FILE)) {
        let ok = lp["ok"] == true;
        if lp["request_id"] == request_id || (ok && recent(lp["pulled_at"].as_u64())) {
            return true;
        }
    }
    false
}

/// Writes `value` as one JSON line to `dir/name` via a temp file and a rename, so a reader
/// sees the old file or the new one, never half of one. A symlink at either name is
/// replaced, never followed. The file (mode 0600) belongs to the directory's owner: the
/// root updater writing `last-pull` into the daemons' state dir leaves a file the companion
/// can read.
pub fn write_atomically(dir: &Path, name: &str, value: &Value) -> std::io::Result<()> {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let mut bytes = serde_json::to_vec(value).map_err(std::io::Error::other)?;
    bytes.push(b'\n');
    let result = (|| {
        // The updater writes here as root into a directory the daemons' user owns: never
        // through a planted symlink (a stale temp file is removed, then created anew).
        match fs::remove_file(&tmp) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)?;
        let (owner, mine) = (fs::metadata(dir)?, f.metadata()?);
        if (owner.uid(), owner.gid()) != (mine.uid(), mine.gid()) {
            std::os::unix::fs::fchown(&f, Some(owner.uid()), Some(owner.gid()))?;
        }
        f.write_all(&bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, dir.join(name))?;
        // Make the rename itself durable; a failure here leaves a valid file, so ignore it.
        if let Ok(d) = fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// `2026-11-22T11:27:33.090Z` for milliseconds since the epoch (UTC).
pub fn iso8601(ms: u64) -> String {
    let secs = ms / 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_atomically_never_follows_a_planted_symlink() {
        let d = tempfile::tempdir().unwrap();
        let victim = d.path().join("victim");
        fs::write(&victim, b"keep").unwrap();
        let tmp = d
            .path()
            .join(format!(".last-pull.tmp-{}", std::process::id()));
        std::os::unix::fs::symlink(&victim, &tmp).unwrap();
        std::os::unix::fs::symlink(&victim, d.path().join("last-pull")).unwrap();
        write_atomically(d.path(), "last-pull", &json!({"ok": true})).unwrap();
        assert_eq!(fs::read(&victim).unwrap(), b"keep");
        let meta = fs::symlink_metadata(d.path().join("last-pull")).unwrap();
        assert!(meta.is_file());
        assert_eq!(
            fs::read(d.path().join("last-pull")).unwrap(),
            b"{\"ok\":true}\n"
        );
    }

    #[test]
    fn a_file_written_as_root_belongs_to_the_directory_owner() {
        use std::os::unix::fs::MetadataExt;
        let d = tempfile::tempdir().unwrap();
        if fs::metadata(d.path()).unwrap().uid() != 0 {
            eprintln!("skipped: needs root (chown)");
            return;
        }
        std::os::unix::fs::chown(d.path(), Some(4242), Some(4343)).unwrap();
        write_atomically(d.path(), "last-pull", &serde_json::json!({"ok": true})).unwrap();
        let m = fs::metadata(d.path().join("last-pull")).unwrap();
        assert_eq!((m.uid(), m.gid(), m.mode() & 0o777), (4242, 4343, 0o600));
    }

    #[test]
    fn iso8601_matches_known_instants() {
        assert_eq!(iso8601(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(iso8601(1_795_346_853_090), "2026-11-22T11:27:33.090Z");
        assert_eq!(iso8601(951_782_400_000), "2000-02-29T00:00:00.000Z");
    }
}
