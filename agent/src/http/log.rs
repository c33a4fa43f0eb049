//! The access log: one structured line per request, through `tracing`.
//!
//! It names the method, the host, the path WITHOUT its query (queries often carry tokens), the
//! status, the response size, the duration, the route and the upstream. Header values are never
//! logged.

use super::route::Target;

/// What one access-log line says.
pub(crate) struct Access<'a> {
    /// Request method.
    pub(crate) method: &'a str,
    /// Host the request was routed by (`-` when none).
    pub(crate) host: &'a str,
    /// Path without query.
    pub(crate) path: &'a str,
    /// Status sent to the client (0 when the exchange broke before a status was known).
    pub(crate) status: u16,
    /// Bytes relayed for this request (heads and bodies, both directions).
    pub(crate) bytes: u64,
    /// Duration in milliseconds.
    pub(crate) ms: u64,
    /// Route id, when a route matched.
    pub(crate) route: Option<u64>,
    /// Backend address, when one was chosen.
    pub(crate) upstream: Option<&'a Target>,
}

/// Emits the access-log line (target `gatelet_agent::http::access`, level INFO).
pub(crate) fn access(a: &Access<'_>) {
    tracing::info!(
        target: "gatelet_agent::http::access",
        method = a.method,
        host = a.host,
        path = a.path,
        status = a.status,
        bytes = a.bytes,
        ms = a.ms,
        route = a.route,
        upstream = a.upstream.map(tracing::field::display),
        "request"
    );
}
