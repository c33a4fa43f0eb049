//! The companion's persistent state: SQLite at `<state_dir>/gatelet.db`.
//!
//! What it keeps:
//! - the **last-known-good config** (one row): the raw document, the server's hash, our
//!   canonical hash, the translated [`AgentConfig`] and what was rejected or unsupported;
//! - a bounded **config history** ([`HISTORY_LIMIT`] rows): hash, time, applied or rejected, the
//!   rejected routes with their reasons;
//! - bounded **events** ([`EVENTS_LIMIT`] rows): sync errors, pushes, wakes...
//!
//! # Flash
//!
//! Gateways run on SD cards and raw NAND, so writes are rare and deliberate:
//! - Nothing is written when nothing changed: saving the config already in force, or a
//!   heartbeat, or an unchanged hash check writes nothing (the caller does not call us for the
//!   latter two; [`Store::save_applied`] compares before writing).
//! - A repeat of the newest event of a kind with the same detail (the same sync error every
//!   backoff step), or of the newest history entry (the same rejected config again), is not a new
//!   row: its count and last time are kept in memory and written at most once per
//!   [`REPEAT_FLUSH_INTERVAL_MS`], or with the next real write, or on drop.
//! - Rollback journal in `PERSIST` mode rather than WAL. Writes are a few per day, so WAL's
//!   concurrency buys nothing, while it needs a shared-memory `-shm` file (writable shared
//!   `mmap`, which jffs2 and some network file systems lack), keeps a growing `-wal` file and
//!   writes every page twice anyway (WAL, then checkpoint). `PERSIST` keeps one journal file and
//!   only zeroes its header on commit, instead of creating and deleting it (`DELETE`) or
//!   truncating it (`TRUNCATE`) on every transaction, which costs file-system metadata writes.
//!   [`JOURNAL_SIZE_LIMIT_BYTES`] caps what the persistent journal keeps.
//! - `temp_store=MEMORY` and a small page cache: no temporary files, little RAM.
//!
//! # Crash safety
//!
//! - `synchronous=FULL`: the journal is synced before the database is overwritten, and the
//!   database before the commit completes, so a power cut leaves the last committed state.
//! - Every change that spans statements (config + history + pruning) is one transaction: the
//!   last-known-good row is replaced atomically, never half-written, never absent once written.
//! - The schema is versioned with `PRAGMA user_version` ([`SCHEMA_VERSION`]).
//! - A database file that is corrupt (or from a newer gatelet) is moved aside to
//!   `gatelet.db.corrupt-<unix ms>` (with its journal), an error is logged and recorded as an
//!   event, and the store starts empty: the daemon keeps running and fetches the config again
//!   instead of crash-looping. Errors that are not corruption (disk full, permissions) are
//!   returned and the file is left alone, so a good config is never discarded for them.
//!
//! A [`Store`] is one connection; share it behind a `Mutex`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use gatelet_agent_api::control::AgentConfig;
use rusqlite::{params, Connection, ErrorCode, OpenFlags, OptionalExtension, TransactionBehavior};
use serde::{Deserialize, Serialize};

use crate::config::Validated;
use crate::state::{now_ms, RejectedRoute};

/// File name of the database inside the state directory.
pub const DB_FILE_NAME: &str = "gatelet.db";
/// Version of the schema this code writes (`PRAGMA user_version`).
pub const SCHEMA_VERSION: i64 = 1;
/// Config history rows kept.
pub const HISTORY_LIMIT: i64 = 50;
/// Event rows kept.
pub const EVENTS_LIMIT: i64 = 500;
/// Longest time a coalesced repeat (count and last time) stays only in memory, in milliseconds.
pub const REPEAT_FLUSH_INTERVAL_MS: u64 = 10 * 60 * 1000;
/// How long a statement waits for a lock held by another connection.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Bytes the persistent rollback journal keeps after a commit.
pub const JOURNAL_SIZE_LIMIT_BYTES: i64 = 256 * 1024;
/// SQLite page cache, in KiB.
pub const CACHE_KIB: i64 = 256;

/// Event kinds the companion records (free text is allowed too).
pub mod event_kind {
    /// A check, fetch or heartbeat failed.
    pub const SYNC_ERROR: &str = "sync_error";
    /// The server pushed `/api/config-changed`.
    pub const PUSH: &str = "push";
    /// A Wake-on-LAN was sent.
    pub const WAKE: &str = "wake";
    /// A new config was applied.
    pub const CONFIG_APPLIED: &str = "config_applied";
    /// A config was rejected as a whole.
    pub const CONFIG_REJECTED: &str = "config_rejected";
    /// The agent could not be reached or refused a config.
    pub const AGENT_ERROR: &str = "agent_error";
    /// A corrupt database was moved aside at start.
    pub const STORE_RECOVERED: &str = "store_recovered";
}

const SCHEMA_V1: &str = "
CREATE TABLE IF NOT EXISTS last_good (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    raw TEXT NOT NULL,
    config_hash TEXT,
    canonical_hash TEXT NOT NULL,
    agent_json TEXT NOT NULL,
    rejected_json TEXT NOT NULL,
    unsupported_json TEXT NOT NULL,
    stored_at_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS config_history (
    seq INTEGER PRIMARY KEY,
    config_hash TEXT,
    at_ms INTEGER NOT NULL,
    last_at_ms INTEGER NOT NULL,
    repeat_count INTEGER NOT NULL DEFAULT 1,
    outcome TEXT NOT NULL CHECK (outcome IN ('applied', 'rejected')),
    reason TEXT,
    rejected_json TEXT NOT NULL,
    unsupported_json TEXT NOT NULL,
    route_count INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    detail TEXT NOT NULL,
    first_at_ms INTEGER NOT NULL,
    last_at_ms INTEGER NOT NULL,
    count INTEGER NOT NULL DEFAULT 1
);
";

const TABLES: &[&str] = &["last_good", "config_history", "events"];

/// What can go wrong with the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The state directory does not exist and could not be created.
    #[error("cannot create state directory {}: {source}; create it or pass another --state-dir", path.display())]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// SQLite could not open or set up the database (not corruption: permissions, disk full...).
    #[error("cannot open state database {}: {source}; check that the state directory is writable and not full", path.display())]
    Open {
        /// The database file.
        path: PathBuf,
        /// SQLite's error.
        source: rusqlite::Error,
    },
    /// A corrupt database could not be moved out of the way.
    #[error("state database {} is corrupt and could not be moved to {}: {source}; remove it by hand", from.display(), to.display())]
    MoveAside {
        /// The corrupt file.
        from: PathBuf,
        /// Where it should have gone.
        to: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// A fresh database, created after moving a corrupt one aside, is unusable too.
    #[error("state database {} is unusable even after moving the corrupt file aside: {reason}; check the storage device", path.display())]
    StillUnusable {
        /// The database file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A statement failed.
    #[error("state database: {op} failed: {source}")]
    Sql {
        /// What we were doing.
        op: &'static str,
        /// SQLite's error.
        source: rusqlite::Error,
    },
    /// A stored JSON column could not be decoded (a bug or a tampered file).
    #[error("state database: stored {what} is not valid: {source}")]
    Decode {
        /// Which column.
        what: &'static str,
        /// The decoder's error.
        source: serde_json::Error,
    },
}

fn sql(op: &'static str) -> impl FnOnce(rusqlite::Error) -> StoreError {
    move |source| StoreError::Sql { op, source }
}

/// The last-known-good config, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredConfig {
    /// The document exactly as received (or as read from the routes file).
    pub raw: String,
    /// The server's hash string (or the routes file's canonical hash).
    pub config_hash: Option<String>,
    /// Our recomputation of the canonical hash.
    pub canonical_hash: String,
    /// What the agent was given.
    pub agent: AgentConfig,
    /// Routes rejected in this config.
    pub rejected: Vec<RejectedRoute>,
    /// Routes not supported yet (egress).
    pub unsupported: Vec<RejectedRoute>,
    /// When it was stored, ms since the Unix epoch.
    pub stored_at_ms: u64,
}

/// Whether a config was applied or rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// It became the last-known-good config.
    Applied,
    /// It was refused as a whole; the previous config stayed.
    Rejected,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Outcome::Applied => "applied",
            Outcome::Rejected => "rejected",
        }
    }
}

/// One row of the config history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// Increasing row number.
    pub seq: i64,
    /// The config's hash, when known.
    pub config_hash: Option<String>,
    /// When it was first seen, ms since the Unix epoch.
    pub at_ms: u64,
    /// When it was last seen (a rejected config can come back many times).
    pub last_at_ms: u64,
    /// How many times it was seen.
    pub repeat_count: u64,
    /// Applied or rejected.
    pub outcome: Outcome,
    /// Why it was rejected as a whole.
    pub reason: Option<String>,
    /// Routes rejected one by one.
    pub rejected: Vec<RejectedRoute>,
    /// Routes not supported yet.
    pub unsupported: Vec<RejectedRoute>,
    /// Routes in the document.
    pub route_count: u64,
}

/// One row of the event log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Increasing row number.
    pub seq: i64,
    /// What happened (see [`event_kind`]).
    pub kind: String,
    /// Details for a human.
    pub detail: String,
    /// First occurrence, ms since the Unix epoch.
    pub first_at_ms: u64,
    /// Last occurrence.
    pub last_at_ms: u64,
    /// Occurrences coalesced into this row.
    pub count: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Table {
    History,
    Events,
}

/// Repeats of a row counted in memory, not written yet.
#[derive(Debug, Clone, Copy)]
struct Pending {
    extra: u64,
    last_at_ms: u64,
    since_ms: u64,
}

/// The open database.
#[derive(Debug)]
pub struct Store {
    conn: Connection,
    path: PathBuf,
    recovered_from: Option<PathBuf>,
    pending: HashMap<(Table, i64), Pending>,
}

impl Store {
    /// Opens (or creates) `<state_dir>/gatelet.db`, creating the directory if needed. A corrupt
    /// file is moved aside and an empty store is returned (see [`Store::recovered_from`]).
    pub fn open(state_dir: &Path) -> Result<Store, StoreError> {
        std::fs::create_dir_all(state_dir).map_err(|source| StoreError::CreateDir {
            path: state_dir.to_path_buf(),
            source,
        })?;
        let path = state_dir.join(DB_FILE_NAME);
        match Self::open_checked(&path) {
            Ok(store) => Ok(store),
            Err(Unusable::Error(e)) => Err(e),
            Err(Unusable::Corrupt(why)) => {
                let aside = move_aside(&path)?;
                tracing::error!(
                    db = %path.display(),
                    moved_to = %aside.display(),
                    reason = %why,
                    "state database is unusable: moved it aside and starting with an empty \
                     store; the config will be fetched again"
                );
                let mut store = Self::open_checked(&path).map_err(|e| match e {
                    Unusable::Error(e) => e,
                    Unusable::Corrupt(reason) => StoreError::StillUnusable {
                        path: path.clone(),
                        reason,
                    },
                })?;
                store.recovered_from = Some(aside.clone());
                store.add_event(
                    event_kind::STORE_RECOVERED,
                    &format!("{why}; moved to {}", aside.display()),
                )?;
                Ok(store)
            }
        }
    }

    fn open_checked(path: &Path) -> Result<Store, Unusable> {
        let open_err = |source: rusqlite::Error| {
            if is_corruption(&source) {
                Unusable::Corrupt(source.to_string())
            } else {
                Unusable::Error(StoreError::Open {
                    path: path.to_path_buf(),
                    source,
                })
            }
        };
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(open_err)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(open_err)?;
        // Reading the journal mode reads the header: garbage fails here with NOTADB, and a hot
        // journal left by a crash is rolled back here.
        let mode: String = conn
            .query_row("PRAGMA journal_mode=PERSIST", [], |r| r.get(0))
            .map_err(open_err)?;
        if !mode.eq_ignore_ascii_case("persist") {
            tracing::warn!(mode = %mode, "state database: journal_mode PERSIST not accepted");
        }
        conn.execute_batch(&format!(
            "PRAGMA synchronous=FULL; PRAGMA journal_size_limit={JOURNAL_SIZE_LIMIT_BYTES}; \
             PRAGMA temp_store=MEMORY; PRAGMA cache_size=-{CACHE_KIB};"
        ))
        .map_err(open_err)?;
        let check: String = conn
            .query_row("PRAGMA quick_check(1)", [], |r| r.get(0))
            .map_err(open_err)?;
        if check != "ok" {
            return Err(Unusable::Corrupt(format!(
                "integrity check failed: {check}"
            )));
        }
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(open_err)?;
        let mut store = Store {
            conn,
            path: path.to_path_buf(),
            recovered_from: None,
            pending: HashMap::new(),
        };
        match version {
            0 => store.create_schema().map_err(open_err)?,
            SCHEMA_VERSION => {}
            v => {
                return Err(Unusable::Corrupt(format!(
                    "schema version {v} is not {SCHEMA_VERSION} (written by another gatelet \
                     version)"
                )))
            }
        }
        let present: i64 = store
            .conn
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name IN \
                 ('last_good', 'config_history', 'events')",
                [],
                |r| r.get(0),
            )
            .map_err(open_err)?;
        if present != TABLES.len() as i64 {
            return Err(Unusable::Corrupt(format!(
                "schema version {version} but only {present} of {} tables",
                TABLES.len()
            )));
        }
        Ok(store)
    }

    fn create_schema(&mut self) -> rusqlite::Result<()> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute_batch(SCHEMA_V1)?;
        tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
        tx.commit()
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Where a corrupt database was moved when this store was opened, if it was.
    pub fn recovered_from(&self) -> Option<&Path> {
        self.recovered_from.as_deref()
    }

    /// Rows changed by this connection since it was opened (a write counter, for tests and
    /// diagnostics).
    pub fn total_changes(&self) -> u64 {
        self.conn.total_changes()
    }

    /// The last-known-good config, if one was ever stored.
    pub fn last_good(&self) -> Result<Option<StoredConfig>, StoreError> {
        let row = self
            .conn
            .query_row(
                "SELECT raw, config_hash, canonical_hash, agent_json, rejected_json, \
                 unsupported_json, stored_at_ms FROM last_good WHERE id = 1",
                [],
                |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, Option<String>>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, String>(3)?,
                        r.get::<_, String>(4)?,
                        r.get::<_, String>(5)?,
                        r.get::<_, i64>(6)?,
                    ))
                },
            )
            .optional()
            .map_err(sql("reading the last good config"))?;
        let Some((raw, config_hash, canonical_hash, agent, rejected, unsupported, at)) = row else {
            return Ok(None);
        };
        Ok(Some(StoredConfig {
            raw,
            config_hash,
            canonical_hash,
            agent: decode("agent config", &agent)?,
            rejected: decode("rejected routes", &rejected)?,
            unsupported: decode("unsupported routes", &unsupported)?,
            stored_at_ms: at as u64,
        }))
    }

    /// Stores `raw` (validated as `validated`) as the last-known-good config and adds an
    /// `applied` history entry, in one transaction. Writes nothing and returns false when the
    /// same config is already stored.
    pub fn save_applied(&mut self, raw: &str, validated: &Validated) -> Result<bool, StoreError> {
        self.save_applied_at(now_ms(), raw, validated)
    }

    /// [`save_applied`](Self::save_applied) at a given time (ms since the Unix epoch).
    pub fn save_applied_at(
        &mut self,
        now: u64,
        raw: &str,
        validated: &Validated,
    ) -> Result<bool, StoreError> {
        let agent = encode(&validated.agent);
        let rejected = encode(&validated.rejected);
        let unsupported = encode(&validated.unsupported);
        let same: bool = self
            .conn
            .query_row(
                "SELECT raw = ?1 AND config_hash IS ?2 AND canonical_hash = ?3 \
                 AND agent_json = ?4 AND rejected_json = ?5 AND unsupported_json = ?6 \
                 FROM last_good WHERE id = 1",
                params![
                    raw,
                    validated.config_hash,
                    validated.canonical_hash,
                    agent,
                    rejected,
                    unsupported
                ],
                |r| r.get(0),
            )
            .optional()
            .map_err(sql("comparing with the last good config"))?
            .unwrap_or(false);
        if same {
            return Ok(false);
        }
        self.write("saving the last good config", |tx| {
            tx.execute(
                "INSERT OR REPLACE INTO last_good (id, raw, config_hash, canonical_hash, \
                 agent_json, rejected_json, unsupported_json, stored_at_ms) \
                 VALUES (1, ?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    raw,
                    validated.config_hash,
                    validated.canonical_hash,
                    agent,
                    rejected,
                    unsupported,
                    now as i64
                ],
            )?;
            insert_history(
                tx,
                now,
                validated.config_hash.as_deref(),
                Outcome::Applied,
                None,
                &rejected,
                &unsupported,
                validated.route_count as u64,
            )?;
            Ok(())
        })
        .map(|()| true)
    }

    /// Adds a `rejected` history entry: a config refused as a whole (`reason`) with its
    /// per-route rejections. The same rejection as the newest entry is counted, not re-added.
    /// Returns true when a row was written now.
    pub fn record_rejected(
        &mut self,
        config_hash: Option<&str>,
        reason: &str,
        rejected: &[RejectedRoute],
    ) -> Result<bool, StoreError> {
        self.record_rejected_at(now_ms(), config_hash, reason, rejected)
    }

    /// [`record_rejected`](Self::record_rejected) at a given time.
    pub fn record_rejected_at(
        &mut self,
        now: u64,
        config_hash: Option<&str>,
        reason: &str,
        rejected: &[RejectedRoute],
    ) -> Result<bool, StoreError> {
        let rejected_json = encode(&rejected);
        let newest: Option<i64> = self
            .conn
            .query_row(
                "SELECT seq FROM config_history WHERE seq = (SELECT max(seq) FROM \
                 config_history) AND outcome = 'rejected' AND config_hash IS ?1 \
                 AND reason IS ?2 AND rejected_json = ?3",
                params![config_hash, reason, rejected_json],
                |r| r.get(0),
            )
            .optional()
            .map_err(sql("reading the config history"))?;
        if let Some(seq) = newest {
            return self.repeat(Table::History, seq, now);
        }
        self.write("recording a rejected config", |tx| {
            insert_history(
                tx,
                now,
                config_hash,
                Outcome::Rejected,
                Some(reason),
                &rejected_json,
                "[]",
                rejected.len() as u64,
            )?;
            Ok(())
        })
        .map(|()| true)
    }

    /// The newest `limit` history entries, newest first.
    pub fn history(&self, limit: usize) -> Result<Vec<HistoryEntry>, StoreError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT seq, config_hash, at_ms, last_at_ms, repeat_count, outcome, reason, \
                 rejected_json, unsupported_json, route_count FROM config_history \
                 ORDER BY seq DESC LIMIT ?1",
            )
            .map_err(sql("reading the config history"))?;
        let rows = stmt
            .query_map([limit as i64], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, Option<String>>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, i64>(3)?,
                    r.get::<_, i64>(4)?,
                    r.get::<_, String>(5)?,
                    r.get::<_, Option<String>>(6)?,
                    r.get::<_, String>(7)?,
                    r.get::<_, String>(8)?,
                    r.get::<_, i64>(9)?,
                ))
            })
            .map_err(sql("reading the config history"))?;
        let mut out = Vec::new();
        for row in rows {
            let (seq, config_hash, at, last, count, outcome, reason, rej, unsup, routes) =
                row.map_err(sql("reading the config history"))?;
            let (extra, last) = self.merged(Table::History, seq, last as u64);
            out.push(HistoryEntry {
                seq,
                config_hash,
                at_ms: at as u64,
                last_at_ms: last,
                repeat_count: count as u64 + extra,
                outcome: if outcome == "applied" {
                    Outcome::Applied
                } else {
                    Outcome::Rejected
                },
                reason,
                rejected: decode("rejected routes", &rej)?,
                unsupported: decode("unsupported routes", &unsup)?,
                route_count: routes as u64,
            });
        }
        Ok(out)
    }

    /// Records an event. A repeat of the newest event of the same kind with the same detail
    /// is counted, not re-added. Returns true when a row was written now.
    pub fn add_event(&mut self, kind: &str, detail: &str) -> Result<bool, StoreError> {
        self.add_event_at(now_ms(), kind, detail)
    }

    /// [`add_event`](Self::add_event) at a given time.
    pub fn add_event_at(&mut self, now: u64, kind: &str, detail: &str) -> Result<bool, StoreError> {
        let newest: Option<(i64, String)> = self
            .conn
            .query_row(
                "SELECT seq, detail FROM events WHERE kind = ?1 ORDER BY seq DESC LIMIT 1",
                [kind],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(sql("reading events"))?;
        if let Some((seq, d)) = newest {
            if d == detail {
                return self.repeat(Table::Events, seq, now);
            }
        }
        self.write("recording an event", |tx| {
            tx.execute(
                "INSERT INTO events (kind, detail, first_at_ms, last_at_ms, count) \
                 VALUES (?1, ?2, ?3, ?3, 1)",
                params![kind, detail, now as i64],
            )?;
            let seq = tx.last_insert_rowid();
            tx.execute("DELETE FROM events WHERE seq <= ?1", [seq - EVENTS_LIMIT])?;
            Ok(())
        })
        .map(|()| true)
    }

    /// The newest `limit` events, most recently seen first.
    pub fn events(&self, limit: usize) -> Result<Vec<Event>, StoreError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT seq, kind, detail, first_at_ms, last_at_ms, count FROM events \
                 ORDER BY seq DESC LIMIT ?1",
            )
            .map_err(sql("reading events"))?;
        let rows = stmt
            .query_map([EVENTS_LIMIT], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, i64>(3)?,
                    r.get::<_, i64>(4)?,
                    r.get::<_, i64>(5)?,
                ))
            })
            .map_err(sql("reading events"))?;
        let mut out = Vec::new();
        for row in rows {
            let (seq, kind, detail, first, last, count) = row.map_err(sql("reading events"))?;
            let (extra, last) = self.merged(Table::Events, seq, last as u64);
            out.push(Event {
                seq,
                kind,
                detail,
                first_at_ms: first as u64,
                last_at_ms: last,
                count: count as u64 + extra,
            });
        }
        out.sort_by(|a, b| b.last_at_ms.cmp(&a.last_at_ms).then(b.seq.cmp(&a.seq)));
        out.truncate(limit);
        Ok(out)
    }

    /// Writes repeat counts that are still only in memory. Called on drop; call it before a
    /// planned shutdown to see the error.
    pub fn flush(&mut self) -> Result<(), StoreError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        self.write("writing repeat counts", |_| Ok(()))
    }

    /// Counts a repeat of row `seq` in memory; writes when it has waited long enough.
    fn repeat(&mut self, table: Table, seq: i64, now: u64) -> Result<bool, StoreError> {
        let p = self.pending.entry((table, seq)).or_insert(Pending {
            extra: 0,
            last_at_ms: now,
            since_ms: now,
        });
        p.extra += 1;
        p.last_at_ms = p.last_at_ms.max(now);
        if now.saturating_sub(p.since_ms) >= REPEAT_FLUSH_INTERVAL_MS {
            self.flush()?;
            return Ok(true);
        }
        Ok(false)
    }

    /// After a write transaction: on failure, put the unwritten repeat counts back.
    /// Runs `body` in one immediate transaction that also writes the repeat counts waiting in
    /// memory; on failure those counts are kept for the next write.
    fn write(
        &mut self,
        op: &'static str,
        body: impl FnOnce(&rusqlite::Transaction<'_>) -> rusqlite::Result<()>,
    ) -> Result<(), StoreError> {
        let pending = std::mem::take(&mut self.pending);
        let result = (|| {
            let tx = self
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)?;
            flush_pending(&tx, &pending)?;
            body(&tx)?;
            tx.commit()
        })();
        result.map_err(|source| {
            for (k, v) in pending {
                self.pending.entry(k).or_insert(v);
            }
            StoreError::Sql { op, source }
        })
    }

    /// A stored row's repeat count and last time, with what is still in memory.
    fn merged(&self, table: Table, seq: i64, last_at_ms: u64) -> (u64, u64) {
        match self.pending.get(&(table, seq)) {
            Some(p) => (p.extra, last_at_ms.max(p.last_at_ms)),
            None => (0, last_at_ms),
        }
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        if let Err(e) = self.flush() {
            tracing::warn!(error = %e, "state database: repeat counts lost at shutdown");
        }
    }
}

/// Why a database file cannot be used.
enum Unusable {
    /// Corrupt or foreign: move it aside.
    Corrupt(String),
    /// Anything else: report, keep the file.
    Error(StoreError),
}

fn is_corruption(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase)
    )
}

/// Renames the database and its journal files to `<name>.corrupt-<unix ms>[-journal...]`.
fn move_aside(path: &Path) -> Result<PathBuf, StoreError> {
    let aside = PathBuf::from(format!("{}.corrupt-{}", path.display(), now_ms()));
    for suffix in ["", "-journal", "-wal", "-shm"] {
        let from = PathBuf::from(format!("{}{suffix}", path.display()));
        let to = PathBuf::from(format!("{}{suffix}", aside.display()));
        match std::fs::rename(&from, &to) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !suffix.is_empty() => {}
            Err(source) => return Err(StoreError::MoveAside { from, to, source }),
        }
    }
    Ok(aside)
}

#[allow(clippy::too_many_arguments)]
fn insert_history(
    tx: &rusqlite::Transaction<'_>,
    now: u64,
    config_hash: Option<&str>,
    outcome: Outcome,
    reason: Option<&str>,
    rejected_json: &str,
    unsupported_json: &str,
    route_count: u64,
) -> rusqlite::Result<()> {
    tx.execute(
        "INSERT INTO config_history (config_hash, at_ms, last_at_ms, repeat_count, outcome, \
         reason, rejected_json, unsupported_json, route_count) \
         VALUES (?1, ?2, ?2, 1, ?3, ?4, ?5, ?6, ?7)",
        params![
            config_hash,
            now as i64,
            outcome.as_str(),
            reason,
            rejected_json,
            unsupported_json,
            route_count as i64
        ],
    )?;
    let seq = tx.last_insert_rowid();
    tx.execute(
        "DELETE FROM config_history WHERE seq <= ?1",
        [seq - HISTORY_LIMIT],
    )?;
    Ok(())
}

fn flush_pending(
    tx: &rusqlite::Transaction<'_>,
    pending: &HashMap<(Table, i64), Pending>,
) -> rusqlite::Result<()> {
    for ((table, seq), p) in pending {
        let stmt = match table {
            Table::History => {
                "UPDATE config_history SET repeat_count = repeat_count + ?1, \
                 last_at_ms = max(last_at_ms, ?2) WHERE seq = ?3"
            }
            Table::Events => {
                "UPDATE events SET count = count + ?1, last_at_ms = max(last_at_ms, ?2) \
                 WHERE seq = ?3"
            }
        };
        tx.execute(stmt, params![p.extra as i64, p.last_at_ms as i64, seq])?;
    }
    Ok(())
}

fn encode<T: Serialize + ?Sized>(v: &T) -> String {
    // Plain data (strings, numbers, options, vectors): serialisation cannot fail.
    serde_json::to_string(v).unwrap_or_else(|_| "null".into())
}

fn decode<T: for<'de> Deserialize<'de>>(what: &'static str, s: &str) -> Result<T, StoreError> {
    serde_json::from_str(s).map_err(|source| StoreError::Decode { what, source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{parse_document, ReservedPorts};

    /// A temporary state directory, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> Self {
            static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
            let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let dir = std::env::temp_dir()
                .join(format!("gatelet-store-{tag}-{}-{n}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn doc(n: u64) -> (String, Validated) {
        let raw = format!(
            r#"{{"config_hash":"sha256:{n:064x}","peer_id":1,"routes":[{{"id":1,
            "domain":"nas.lan","target_lan_host":"10.0.0.{}","target_lan_port":80}}],
            "l4_routes":[{{"id":2,"listen_port":8080}}]}}"#,
            n % 250 + 1
        );
        let v = parse_document(&raw, ReservedPorts::default()).unwrap();
        (raw, v)
    }

    /// Size and modification time of every file of the database.
    fn files(dir: &Path) -> Vec<(String, u64, std::time::SystemTime)> {
        let mut out: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let m = e.metadata().unwrap();
                (
                    e.file_name().to_string_lossy().into_owned(),
                    m.len(),
                    m.modified().unwrap(),
                )
            })
            .collect();
        out.sort();
        out
    }

    /// The database header's file change counter (bytes 24..28), bumped by every commit.
    fn change_counter(dir: &Path) -> u32 {
        let bytes = std::fs::read(dir.join(DB_FILE_NAME)).unwrap();
        u32::from_be_bytes([bytes[24], bytes[25], bytes[26], bytes[27]])
    }

    #[test]
    fn last_good_round_trips_exactly_and_survives_reopen() {
        let dir = TempDir::new("lkg");
        let mut s = Store::open(&dir.0).unwrap();
        assert_eq!(s.last_good().unwrap(), None);
        let (raw, v) = doc(7);
        assert!(s.save_applied_at(1_000, &raw, &v).unwrap());
        drop(s);
        let s = Store::open(&dir.0).unwrap();
        let got = s.last_good().unwrap().unwrap();
        assert_eq!(got.raw, raw);
        assert_eq!(got.config_hash, v.config_hash);
        assert_eq!(got.canonical_hash, v.canonical_hash);
        assert_eq!(got.agent, v.agent);
        assert_eq!(got.rejected, v.rejected);
        assert_eq!(got.rejected.len(), 1, "the L4 route on the proxy port");
        assert_eq!(got.stored_at_ms, 1_000);
        let h = s.history(10).unwrap();
        assert_eq!(h.len(), 1);
        assert_eq!(h[0].outcome, Outcome::Applied);
        assert_eq!(h[0].rejected, v.rejected);
        assert_eq!(h[0].route_count, 2);
        let version: i64 = s
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION);
        let mode: String = s
            .conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "persist");
    }

    #[test]
    fn saving_the_config_already_stored_writes_nothing() {
        let dir = TempDir::new("same");
        let mut s = Store::open(&dir.0).unwrap();
        let (raw, v) = doc(1);
        assert!(s.save_applied_at(1, &raw, &v).unwrap());
        let before = (files(&dir.0), s.total_changes(), change_counter(&dir.0));
        std::thread::sleep(Duration::from_millis(20));
        for t in 2..50 {
            assert!(!s.save_applied_at(t, &raw, &v).unwrap());
        }
        assert_eq!(
            (files(&dir.0), s.total_changes(), change_counter(&dir.0)),
            before
        );
        assert_eq!(s.history(100).unwrap().len(), 1);
        // Nor does closing and opening the store again (a restart).
        drop(s);
        let mut s = Store::open(&dir.0).unwrap();
        assert!(!s.save_applied_at(55, &raw, &v).unwrap());
        assert_eq!(
            (files(&dir.0), change_counter(&dir.0)),
            (before.0.clone(), before.2)
        );
        // A different config is written.
        let (raw2, v2) = doc(2);
        assert!(s.save_applied_at(60, &raw2, &v2).unwrap());
        assert_ne!(change_counter(&dir.0), before.2);
        assert_eq!(s.last_good().unwrap().unwrap().raw, raw2);
    }

    #[test]
    fn history_is_pruned_to_its_limit_newest_first() {
        let dir = TempDir::new("hist");
        let mut s = Store::open(&dir.0).unwrap();
        for n in 0..(HISTORY_LIMIT as u64 + 15) {
            let (raw, v) = doc(n);
            assert!(s.save_applied_at(n, &raw, &v).unwrap());
        }
        let h = s.history(1000).unwrap();
        assert_eq!(h.len(), HISTORY_LIMIT as usize);
        assert_eq!(h[0].at_ms, HISTORY_LIMIT as u64 + 14);
        assert_eq!(h.last().unwrap().at_ms, 15);
        let rows: i64 = s
            .conn
            .query_row("SELECT count(*) FROM config_history", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, HISTORY_LIMIT);
        assert_eq!(s.history(3).unwrap().len(), 3);
    }

    #[test]
    fn events_are_pruned_to_their_limit() {
        let dir = TempDir::new("events");
        let mut s = Store::open(&dir.0).unwrap();
        for n in 0..(EVENTS_LIMIT as u64 + 30) {
            assert!(s
                .add_event_at(n, event_kind::PUSH, &format!("push {n}"))
                .unwrap());
        }
        let rows: i64 = s
            .conn
            .query_row("SELECT count(*) FROM events", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, EVENTS_LIMIT);
        let e = s.events(5).unwrap();
        assert_eq!(e.len(), 5);
        assert_eq!(e[0].detail, format!("push {}", EVENTS_LIMIT + 29));
        assert_eq!(s.events(10_000).unwrap().last().unwrap().detail, "push 30");
    }

    #[test]
    fn repeated_identical_errors_are_counted_without_new_rows_or_writes() {
        let dir = TempDir::new("repeat");
        let mut s = Store::open(&dir.0).unwrap();
        assert!(s
            .add_event_at(1_000, event_kind::SYNC_ERROR, "connect refused")
            .unwrap());
        let changes = s.total_changes();
        let before = files(&dir.0);
        for i in 1..100u64 {
            // Another kind in between does not break the coalescing of this one.
            if i == 50 {
                assert!(s.add_event_at(1_000 + i, event_kind::PUSH, "push").unwrap());
            }
            let wrote = s
                .add_event_at(1_000 + i * 1_000, event_kind::SYNC_ERROR, "connect refused")
                .unwrap();
            assert!(!wrote, "repeat {i} wrote a row");
        }
        // The push row, plus the pending repeat count written with it.
        assert_eq!(s.total_changes(), changes + 2);
        assert_ne!(files(&dir.0), before);
        let errs: Vec<Event> = s
            .events(10)
            .unwrap()
            .into_iter()
            .filter(|e| e.kind == event_kind::SYNC_ERROR)
            .collect();
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].count, 100);
        assert_eq!(errs[0].first_at_ms, 1_000);
        assert_eq!(errs[0].last_at_ms, 100_000);
        // Once the oldest unwritten repeat has waited the flush interval, the count is written.
        let later = 100_000 + REPEAT_FLUSH_INTERVAL_MS;
        assert!(s
            .add_event_at(later, event_kind::SYNC_ERROR, "connect refused")
            .unwrap());
        // A different error is a new row.
        assert!(s
            .add_event_at(later + 1, event_kind::SYNC_ERROR, "timeout")
            .unwrap());
        // Repeats still in memory are written on drop.
        assert!(!s
            .add_event_at(later + 2, event_kind::SYNC_ERROR, "timeout")
            .unwrap());
        drop(s);
        let s = Store::open(&dir.0).unwrap();
        let e = s.events(10).unwrap();
        let find = |d: &str| e.iter().find(|e| e.detail == d).unwrap().clone();
        assert_eq!(find("connect refused").count, 101);
        assert_eq!(find("timeout").count, 2);
        assert_eq!(find("timeout").last_at_ms, later + 2);
    }

    #[test]
    fn a_rejected_config_is_recorded_once_and_keeps_the_last_good() {
        let dir = TempDir::new("rejected");
        let mut s = Store::open(&dir.0).unwrap();
        let (raw, v) = doc(3);
        s.save_applied_at(10, &raw, &v).unwrap();
        let routes = vec![RejectedRoute {
            kind: "http".into(),
            id: Some(4),
            reason: "target_lan_host is null".into(),
        }];
        assert!(s
            .record_rejected_at(
                20,
                Some("sha256:bad"),
                "all 1 routes were rejected",
                &routes
            )
            .unwrap());
        let changes = s.total_changes();
        for t in 21..40 {
            assert!(!s
                .record_rejected_at(t, Some("sha256:bad"), "all 1 routes were rejected", &routes)
                .unwrap());
        }
        assert_eq!(s.total_changes(), changes);
        let h = s.history(10).unwrap();
        assert_eq!(h.len(), 2);
        assert_eq!(h[0].outcome, Outcome::Rejected);
        assert_eq!(h[0].repeat_count, 20);
        assert_eq!(h[0].last_at_ms, 39);
        assert_eq!(h[0].rejected, routes);
        assert_eq!(h[0].reason.as_deref(), Some("all 1 routes were rejected"));
        // Another hash is another row.
        assert!(s
            .record_rejected_at(
                50,
                Some("sha256:bad2"),
                "all 1 routes were rejected",
                &routes
            )
            .unwrap());
        assert_eq!(s.history(10).unwrap().len(), 3);
        assert_eq!(s.last_good().unwrap().unwrap().raw, raw);
    }

    #[test]
    fn a_garbage_database_is_moved_aside_and_the_store_starts_empty() {
        let dir = TempDir::new("garbage");
        std::fs::write(dir.0.join(DB_FILE_NAME), vec![0x5a; 8192]).unwrap();
        std::fs::write(dir.0.join("gatelet.db-journal"), b"junk").unwrap();
        let s = Store::open(&dir.0).unwrap();
        let aside = s.recovered_from().unwrap().to_path_buf();
        assert!(aside
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("gatelet.db.corrupt-"));
        assert_eq!(std::fs::read(&aside).unwrap(), vec![0x5a; 8192]);
        assert_eq!(s.last_good().unwrap(), None);
        let e = s.events(10).unwrap();
        assert_eq!(e[0].kind, event_kind::STORE_RECOVERED);
        assert!(e[0].detail.contains("moved to"), "{}", e[0].detail);
        drop(s);
        // The next start is clean.
        assert_eq!(Store::open(&dir.0).unwrap().recovered_from(), None);
    }

    #[test]
    fn a_database_with_a_damaged_page_is_moved_aside() {
        let dir = TempDir::new("damaged");
        let mut s = Store::open(&dir.0).unwrap();
        for n in 0..40 {
            s.add_event_at(n, "x", &"detail ".repeat(100 + n as usize))
                .unwrap();
        }
        drop(s);
        let path = dir.0.join(DB_FILE_NAME);
        let mut bytes = std::fs::read(&path).unwrap();
        assert!(bytes.len() > 4 * 4096, "{} bytes", bytes.len());
        // Scribble over page 3 onwards (page 1 is the header and schema).
        for b in &mut bytes[2 * 4096..3 * 4096] {
            *b = 0xa5;
        }
        std::fs::write(&path, &bytes).unwrap();
        let s = Store::open(&dir.0).unwrap();
        assert!(s.recovered_from().is_some());
        assert_eq!(s.events(100).unwrap().len(), 1, "only the recovery event");
    }

    #[test]
    fn a_database_from_a_newer_schema_is_moved_aside() {
        let dir = TempDir::new("newer");
        {
            let c = Connection::open(dir.0.join(DB_FILE_NAME)).unwrap();
            c.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
                .unwrap();
        }
        let s = Store::open(&dir.0).unwrap();
        assert!(s.recovered_from().is_some());
        let e = s.events(1).unwrap();
        assert!(e[0].detail.contains("schema version 2"), "{}", e[0].detail);
    }
}
