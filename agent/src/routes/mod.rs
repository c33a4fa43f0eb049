//! The route manager: which listeners run on the tunnel IP, live reconfiguration by diff,
//! persistence of the applied config, per-route status and reachability probes.

mod table;

pub use table::{HttpStats, HttpTable};
