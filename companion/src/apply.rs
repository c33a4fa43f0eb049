//! From a config document to the agent: validate, store as last-known-good, hand over.
//!
//! [`Applier`] is the one place where a document (fetched from the server, or read from the
//! standalone routes file) becomes the config in force. A document that is bad as a whole
//! never replaces the last good one; a bad route is left out alone, with its reason kept in
//! the history and shown in status.

use std::sync::{Arc, Mutex, MutexGuard};

use crate::config::{self, ConfigError, ReservedPorts, Validated};
use crate::state::Shared;
use crate::store::Store;
use crate::sync::ApplyOutcome;

/// Where a document came from, which decides how it is validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The GateControl server (unknown fields ignored, its hash echoed).
    Server,
    /// The standalone routes file (strict; hashed locally).
    RoutesFile,
}

/// Validates documents, stores the good ones and publishes them.
pub struct Applier {
    store: Option<Arc<Mutex<Store>>>,
    shared: Shared,
    ports: ReservedPorts,
    origin: Origin,
    /// Called after a new config is in force (wakes the agent supervisor).
    on_applied: Box<dyn Fn() + Send>,
}

impl Applier {
    /// An applier writing to `store` (None when the state dir is unusable: the config then
    /// lives in memory only) and publishing to `shared`.
    pub fn new(
        store: Option<Arc<Mutex<Store>>>,
        shared: Shared,
        ports: ReservedPorts,
        origin: Origin,
        on_applied: Box<dyn Fn() + Send>,
    ) -> Self {
        Applier {
            store,
            shared,
            ports,
            origin,
            on_applied,
        }
    }

    fn store(&self) -> Option<MutexGuard<'_, Store>> {
        self.store
            .as_ref()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Validates `raw` and, when usable, makes it the config in force.
    pub fn apply_text(&mut self, raw: &str) -> ApplyOutcome {
        let parsed = match self.origin {
            Origin::Server => config::parse_document(raw, self.ports),
            Origin::RoutesFile => config::parse_routes_text(raw, "routes file", self.ports),
        };
        match parsed {
            Ok(v) => self.accept(raw, v),
            Err(e) => self.refuse_error(e),
        }
    }

    /// Makes an already validated document the config in force.
    pub fn accept(&mut self, raw: &str, v: Validated) -> ApplyOutcome {
        let Some(hash) = v.config_hash.clone() else {
            return self.refuse_with(None, "the document has no config_hash".into(), &[]);
        };
        if let Some(warning) = v.hash_mismatch() {
            tracing::warn!("{warning}");
        }
        for r in &v.rejected {
            tracing::warn!(kind = %r.kind, id = ?r.id, reason = %r.reason, "route rejected");
        }
        for r in &v.warnings {
            tracing::warn!(kind = %r.kind, id = ?r.id, reason = %r.reason, "part of a route left out");
        }
        if let Some(mut store) = self.store() {
            if let Err(e) = store.save_applied(raw, &v) {
                // Keep serving: the agent still gets the config; it is just not persisted.
                tracing::error!(error = %e, "cannot store the config as last-known-good");
            }
        }
        tracing::info!(
            hash = %hash,
            routes = v.applied_count(),
            rejected = v.rejected.len(),
            "config applied"
        );
        {
            let mut s = self.shared.lock();
            s.sync.config_hash = Some(hash.clone());
            s.sync.rejected_routes = v.rejected.clone();
            s.config = Some(v.agent);
        }
        (self.on_applied)();
        ApplyOutcome::Applied { hash }
    }

    /// The ports routes may not take (proxy and management API).
    pub fn ports(&self) -> ReservedPorts {
        self.ports
    }

    /// Records a document that cannot be used as a whole; the last good config stays.
    pub fn refuse_error(&mut self, e: ConfigError) -> ApplyOutcome {
        let (hash, rejected) = match &e {
            ConfigError::AllRoutesRejected { validated, .. } => {
                (validated.config_hash.clone(), validated.rejected.clone())
            }
            _ => (None, Vec::new()),
        };
        self.refuse_with(hash, e.to_string(), &rejected)
    }

    fn refuse_with(
        &mut self,
        hash: Option<String>,
        reason: String,
        rejected: &[crate::state::RejectedRoute],
    ) -> ApplyOutcome {
        tracing::error!(reason = %reason, "config rejected; the last good config stays in force");
        if let Some(mut store) = self.store() {
            if let Err(e) = store.record_rejected(hash.as_deref(), &reason, rejected) {
                tracing::error!(error = %e, "cannot record the rejected config in the history");
            }
        }
        self.shared.lock().sync.last_error = Some(reason.clone());
        ApplyOutcome::Rejected { hash, reason }
    }
}

impl crate::sync::ConfigSink for Applier {
    fn apply(&mut self, raw: &[u8]) -> ApplyOutcome {
        match std::str::from_utf8(raw) {
            Ok(text) => self.apply_text(text),
            Err(e) => self.refuse_with(None, format!("config document is not UTF-8: {e}"), &[]),
        }
    }
}
