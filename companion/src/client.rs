//! The blocking HTTP client for the GateControl gateway API (protocol §1 and §3).
//!
//! Three calls, each bounded by [`REQUEST_TIMEOUT`] from connect to the last body byte:
//! [`Client::check`] (`GET /api/v1/gateway/config/check?hash=`), [`Client::fetch_config`]
//! (`GET /api/v1/gateway/config`) and [`Client::heartbeat`] (`POST /api/v1/gateway/heartbeat`).
//! Every answer's `RateLimit-*` and `Retry-After` headers come back as a [`RateInfo`], for the
//! request budget in [`crate::sync`]; a 429 is [`ClientError::RateLimited`].
//!
//! Built on `ureq` 3 with rustls (ring), so there is no OpenSSL. `ureq` is set up so that 4xx
//! and 5xx come back as responses that are inspected here (never mistaken for success), and
//! redirects are not followed (a redirect is a [`ClientError::Status`]).
//!
//! Connection reuse: `ureq` returns a connection to its pool only after a response body was
//! read to its end without error, and probes a pooled connection before reuse; a connection
//! the server broke mid-response is dropped, never reused (tested against the fake server).
//! Pooled connections are dropped after [`POOL_MAX_IDLE_AGE`], shorter than the server's
//! `Keep-Alive: timeout=5`, so that a request does not race the server closing an idle socket.
//!
//! Through the tunnel in userspace mode: when the agent terminates the tunnel in its own
//! network stack, nothing on the box can send into the tunnel, and a server on the hub's
//! tunnel address is reachable only through the agent's loopback CONNECT proxy (its address
//! is in the agent's status, `tunnel_proxy`). [`Client::via_tunnel_proxy`] makes each call
//! ask where that proxy is now and go through it (a second `ureq` agent with that proxy,
//! rebuilt when the address changes); with no proxy reported the calls go direct, exactly
//! as without it.
//!
//! The token: it is only ever put in the `Authorization` header. `Debug` of a [`Client`] does
//! not show it, no error contains it, and `ureq`'s own debug log redacts that header.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gatelet_agent_api::env::Secret;
use ureq::http::{HeaderMap, Response};
use ureq::Body;

/// Overall time limit of one call: connect, send, and read the whole answer.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest config document accepted, in bytes (the server sends a few KiB per hundred routes).
pub const MAX_CONFIG_BYTES: u64 = 4 * 1024 * 1024;
/// Largest body read from any other answer (check, heartbeat, errors), in bytes.
pub const MAX_SMALL_BODY_BYTES: u64 = 64 * 1024;
/// Longest that a body excerpt in an error may be, in characters.
pub const ERROR_EXCERPT_CHARS: usize = 200;
/// How long an idle connection stays in the pool: below the server's `Keep-Alive: timeout=5`.
pub const POOL_MAX_IDLE_AGE: Duration = Duration::from_secs(4);
/// Idle connections kept at most (the sync thread and the heartbeat thread, one each).
pub const POOL_MAX_IDLE_CONNECTIONS: usize = 2;
/// The `User-Agent` of every call.
pub const USER_AGENT: &str = concat!("gatelet/", env!("CARGO_PKG_VERSION"));

/// Path of the hash check.
pub const CHECK_PATH: &str = "/api/v1/gateway/config/check";
/// Path of the config document.
pub const CONFIG_PATH: &str = "/api/v1/gateway/config";
/// Path of the heartbeat.
pub const HEARTBEAT_PATH: &str = "/api/v1/gateway/heartbeat";

/// What the server said about its rate limit in one answer (absent headers are `None`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RateInfo {
    /// `RateLimit-Limit`: requests allowed per window.
    pub limit: Option<u32>,
    /// `RateLimit-Remaining`: requests left in the current window.
    pub remaining: Option<u32>,
    /// `RateLimit-Reset`: seconds until the window resets.
    pub reset_s: Option<u64>,
    /// `Retry-After` (seconds form; the server never sends the date form).
    pub retry_after_s: Option<u64>,
}

impl RateInfo {
    /// Reads the rate-limit headers of an answer. Malformed values count as absent.
    pub fn from_headers(headers: &HeaderMap) -> Self {
        fn num<T: std::str::FromStr>(headers: &HeaderMap, name: &str) -> Option<T> {
            headers.get(name)?.to_str().ok()?.trim().parse().ok()
        }
        RateInfo {
            limit: num(headers, "ratelimit-limit"),
            remaining: num(headers, "ratelimit-remaining"),
            reset_s: num(headers, "ratelimit-reset"),
            retry_after_s: num(headers, "retry-after"),
        }
    }
}

/// The answer of a hash check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckOutcome {
    /// 304: the server's config hash equals the one sent.
    Unchanged,
    /// 200: the server's current `config_hash`, different from the one sent.
    Changed(String),
}

/// Why a call failed. Never contains the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// 429: the server's rate limit is exhausted; nothing may be sent before `retry_after_s`.
    #[error("{what}: rate limited by the server (429), retry after {retry_after_s:?} s")]
    RateLimited {
        /// The call.
        what: &'static str,
        /// `Retry-After`, in seconds, when the server sent one.
        retry_after_s: Option<u64>,
        /// All rate-limit headers of the answer.
        rate: RateInfo,
    },
    /// 401: the server did not find a `Bearer` token of the right format.
    #[error(
        "{what}: the server refused the API token (401 {error}); check GC_API_TOKEN in gateway.env"
    )]
    Unauthorized {
        /// The call.
        what: &'static str,
        /// The server's `error` string, e.g. `missing_bearer_token`, `invalid_token_format`.
        error: String,
    },
    /// 403: the token is unknown, rotated, or the peer is disabled.
    #[error("{what}: the server rejected the API token (403 {error}); the token was rotated or the gateway disabled: re-pair or update gateway.env")]
    Forbidden {
        /// The call.
        what: &'static str,
        /// The server's `error` string, e.g. `invalid_token`.
        error: String,
    },
    /// Any other non-success status.
    #[error("{what}: unexpected HTTP status {code}: {body}")]
    Status {
        /// The call.
        what: &'static str,
        /// The HTTP status code.
        code: u16,
        /// The start of the answer's body (at most [`ERROR_EXCERPT_CHARS`] characters).
        body: String,
    },
    /// The answer's body is larger than allowed.
    #[error("{what}: the answer is larger than {limit} bytes; refusing it")]
    TooLarge {
        /// The call.
        what: &'static str,
        /// The limit, in bytes.
        limit: u64,
    },
    /// A 200 answer whose body is not what the protocol says.
    #[error("{what}: malformed answer: {reason}")]
    BadResponse {
        /// The call.
        what: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// No answer: DNS, connect, TLS, timeout or a connection broken mid-answer.
    #[error("{what}: no answer from the server: {reason}; retrying with backoff")]
    Transport {
        /// The call.
        what: &'static str,
        /// The underlying error.
        reason: String,
    },
}

impl ClientError {
    /// The rate-limit headers of the answer, when the error came with some.
    pub fn rate_info(&self) -> Option<RateInfo> {
        match self {
            ClientError::RateLimited { rate, .. } => Some(*rate),
            _ => None,
        }
    }
}

/// A GateControl client: the server's base URL and the gateway's API token. Cheap to clone
/// (clones share one connection pool) and usable from several threads.
#[derive(Clone)]
pub struct Client {
    agent: ureq::Agent,
    base: String,
    token: Secret,
    tunnel: Option<Arc<TunnelProxy>>,
}

/// Where the agent's proxy into the tunnel is now (`127.0.0.1:port`), if it has one.
pub type ProxySource = Arc<dyn Fn() -> Option<String> + Send + Sync>;

/// The route through the agent's proxy: where it is, and the `ureq` agent for it.
struct TunnelProxy {
    source: ProxySource,
    agent: Mutex<Option<(String, ureq::Agent)>>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.base)
            .field("token", &"<redacted>")
            .finish()
    }
}

impl Client {
    /// A client for `server_url` (`GC_SERVER_URL`; a trailing `/` is ignored) using `api_token`
    /// (`GC_API_TOKEN`).
    pub fn new(server_url: &str, api_token: Secret) -> Client {
        Client {
            agent: ureq::Agent::new_with_config(Self::config(None)),
            base: server_url.trim_end_matches('/').to_owned(),
            token: api_token,
            tunnel: None,
        }
    }

    /// The same client, going through the agent's CONNECT proxy into the tunnel whenever
    /// `source` gives its address (and direct when it gives None).
    pub fn via_tunnel_proxy(mut self, source: ProxySource) -> Client {
        self.tunnel = Some(Arc::new(TunnelProxy {
            source,
            agent: Mutex::new(None),
        }));
        self
    }

    /// The `ureq` agent for the next call: the proxied one while the agent reports a proxy.
    fn agent(&self) -> ureq::Agent {
        let Some(t) = &self.tunnel else {
            return self.agent.clone();
        };
        let Some(addr) = (t.source)() else {
            return self.agent.clone();
        };
        let mut cached = t.agent.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((a, agent)) = cached.as_ref() {
            if *a == addr {
                return agent.clone();
            }
        }
        match ureq::Proxy::new(&format!("http://{addr}")) {
            Ok(proxy) => {
                tracing::info!(proxy = %addr, "GateControl requests go through the agent's proxy into the tunnel");
                let agent = ureq::Agent::new_with_config(Self::config(Some(proxy)));
                *cached = Some((addr, agent.clone()));
                agent
            }
            Err(e) => {
                tracing::warn!(proxy = %addr, error = %e, "the agent's tunnel proxy address is unusable");
                self.agent.clone()
            }
        }
    }

    /// The `ureq` settings; with `proxy`, every request goes through it (CONNECT).
    fn config(proxy: Option<ureq::Proxy>) -> ureq::config::Config {
        let builder = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(REQUEST_TIMEOUT))
            .max_redirects(0)
            .user_agent(USER_AGENT)
            .accept("application/json")
            .max_idle_connections(POOL_MAX_IDLE_CONNECTIONS)
            .max_idle_connections_per_host(POOL_MAX_IDLE_CONNECTIONS)
            .max_idle_age(POOL_MAX_IDLE_AGE);
        match proxy {
            // Without one: exactly the settings of a client that never heard of proxies.
            None => builder.build(),
            Some(p) => builder.proxy(Some(p)).build(),
        }
    }

    /// The base URL calls go to.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    fn bearer(&self) -> String {
        format!("Bearer {}", self.token.expose())
    }

    /// `GET /api/v1/gateway/config/check?hash=<hash>`: whether the server's config differs
    /// from `hash` (the stored `config_hash`, sent back exactly as the server gave it,
    /// percent-encoded). Without a hash the parameter is left out and the server answers with
    /// its current hash.
    pub fn check(&self, hash: Option<&str>) -> Result<(CheckOutcome, RateInfo), ClientError> {
        const WHAT: &str = "config check";
        let url = match hash {
            Some(h) => format!("{}{CHECK_PATH}?hash={}", self.base, percent_encode(h)),
            None => format!("{}{CHECK_PATH}", self.base),
        };
        let response = self
            .agent()
            .get(&url)
            .header("Authorization", self.bearer())
            .call()
            .map_err(|e| transport(WHAT, e))?;
        let (status, rate, body) = read(WHAT, response, MAX_SMALL_BODY_BYTES)?;
        match status {
            304 => Ok((CheckOutcome::Unchanged, rate)),
            200 => {
                #[derive(serde::Deserialize)]
                struct Check {
                    config_hash: String,
                }
                let parsed: Check =
                    serde_json::from_slice(&body).map_err(|e| ClientError::BadResponse {
                        what: WHAT,
                        reason: format!("expected {{\"config_hash\": string}}: {e}"),
                    })?;
                Ok((CheckOutcome::Changed(parsed.config_hash), rate))
            }
            code => Err(status_error(WHAT, code, rate, &body)),
        }
    }

    /// `GET /api/v1/gateway/config`: the raw config document (at most [`MAX_CONFIG_BYTES`]),
    /// not validated here.
    pub fn fetch_config(&self) -> Result<(Vec<u8>, RateInfo), ClientError> {
        const WHAT: &str = "config fetch";
        let response = self
            .agent()
            .get(format!("{}{CONFIG_PATH}", self.base))
            .header("Authorization", self.bearer())
            .call()
            .map_err(|e| transport(WHAT, e))?;
        let (status, rate, body) = read(WHAT, response, MAX_CONFIG_BYTES)?;
        match status {
            200 => Ok((body, rate)),
            code => Err(status_error(WHAT, code, rate, &body)),
        }
    }

    /// `POST /api/v1/gateway/heartbeat` with `body` (JSON, sent with
    /// `Content-Type: application/json`; the caller keeps it under the server's 16 KiB).
    pub fn heartbeat(&self, body: &[u8]) -> Result<RateInfo, ClientError> {
        const WHAT: &str = "heartbeat";
        let response = self
            .agent()
            .post(format!("{}{HEARTBEAT_PATH}", self.base))
            .header("Authorization", self.bearer())
            .header("Content-Type", "application/json")
            .send(body)
            .map_err(|e| transport(WHAT, e))?;
        let (status, rate, body) = read(WHAT, response, MAX_SMALL_BODY_BYTES)?;
        match status {
            200..=299 => Ok(rate),
            code => Err(status_error(WHAT, code, rate, &body)),
        }
    }
}

impl Client {
    /// `POST /api/v1/gateway/discovery` with one LAN-scan batch (JSON, at most 512 KiB):
    /// the rate headers and the answer (`{ok}` or `{ok, accepted:false, reason}`).
    pub fn discovery(&self, body: &[u8]) -> Result<(RateInfo, serde_json::Value), ClientError> {
        const WHAT: &str = "discovery batch";
        let response = self
            .agent()
            .post(format!("{}{DISCOVERY_PATH}", self.base))
            .header("Authorization", self.bearer())
            .header("Content-Type", "application/json")
            .send(body)
            .map_err(|e| transport(WHAT, e))?;
        let (status, rate, answer) = read(WHAT, response, MAX_SMALL_BODY_BYTES)?;
        match status {
            200..=299 => Ok((
                rate,
                serde_json::from_slice(&answer).unwrap_or(serde_json::Value::Null),
            )),
            code => Err(status_error(WHAT, code, rate, &answer)),
        }
    }
}

/// Path of the LAN-scan results.
pub const DISCOVERY_PATH: &str = "/api/v1/gateway/discovery";

/// Reads status, rate headers and the whole body (so that the connection may be reused).
/// Whether the server of `server_url` is reached through the tunnel: its host is an IP
/// address inside `allowed_ips` (`WG_ALLOWED_IPS`, what the TUN device routes into the
/// tunnel in kernel mode). The URL of GateControl's pairing file always is
/// (`http://10.8.0.1:3000`). A host name is not (it is taken to be reachable directly).
pub fn server_in_tunnel(server_url: &str, allowed_ips: &[gatelet_agent_api::env::Cidr]) -> bool {
    let Some((_, rest)) = server_url.split_once("://") else {
        return false;
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host = match authority.strip_prefix('[') {
        Some(r) => r.split(']').next().unwrap_or_default(),
        None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
    };
    match host.parse::<std::net::IpAddr>() {
        Ok(ip) => allowed_ips.iter().any(|c| c.contains(ip)),
        Err(_) => false,
    }
}

fn read(
    what: &'static str,
    mut response: Response<Body>,
    limit: u64,
) -> Result<(u16, RateInfo, Vec<u8>), ClientError> {
    let status = response.status().as_u16();
    let rate = RateInfo::from_headers(response.headers());
    let body = response
        .body_mut()
        .with_config()
        .limit(limit)
        .read_to_vec()
        .map_err(|e| match e {
            ureq::Error::BodyExceedsLimit(_) => ClientError::TooLarge { what, limit },
            e => transport(what, e),
        })?;
    Ok((status, rate, body))
}

fn transport(what: &'static str, e: ureq::Error) -> ClientError {
    ClientError::Transport {
        what,
        reason: e.to_string(),
    }
}

/// Maps a non-success status to its error, keeping the server's `error` string.
fn status_error(what: &'static str, code: u16, rate: RateInfo, body: &[u8]) -> ClientError {
    let server_error = || {
        serde_json::from_slice::<serde_json::Value>(body)
            .ok()
            .and_then(|v| v.get("error")?.as_str().map(str::to_owned))
            .unwrap_or_else(|| excerpt(body))
    };
    match code {
        429 => ClientError::RateLimited {
            what,
            retry_after_s: rate.retry_after_s,
            rate,
        },
        401 => ClientError::Unauthorized {
            what,
            error: server_error(),
        },
        403 => ClientError::Forbidden {
            what,
            error: server_error(),
        },
        code => ClientError::Status {
            what,
            code,
            body: excerpt(body),
        },
    }
}

/// The start of a body, printable, for an error message.
fn excerpt(body: &[u8]) -> String {
    String::from_utf8_lossy(body)
        .chars()
        .take(ERROR_EXCERPT_CHARS)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// Percent-encodes a query value: everything but RFC 3986 unreserved characters
/// (`A-Z a-z 0-9 - . _ ~`) becomes `%XX`, so the server decodes exactly the original bytes.
pub fn percent_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len() * 3);
    for &b in value.as_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_server_is_in_the_tunnel_when_its_ip_is_in_the_allowed_ips() {
        let allowed: Vec<gatelet_agent_api::env::Cidr> =
            vec!["10.8.0.0/24".parse().unwrap(), "fd00::/64".parse().unwrap()];
        for (url, inside) in [
            ("http://10.8.0.1:3000", true),
            ("http://10.8.0.1:3000/", true),
            ("http://10.8.0.1", true),
            ("https://10.8.0.1/x?y", true),
            ("http://[fd00::1]:3000", true),
            ("http://10.9.0.1:3000", false),
            ("http://192.168.1.10:3000", false),
            ("https://gatecontrol.example.org", false),
            ("https://10.8.0.1.example.org", false),
            ("10.8.0.1:3000", false),
        ] {
            assert_eq!(server_in_tunnel(url, &allowed), inside, "{url}");
        }
        assert!(!server_in_tunnel("http://10.8.0.1:3000", &[]));
    }

    #[test]
    fn percent_encode_keeps_unreserved_and_escapes_the_rest() {
        assert_eq!(
            percent_encode("sha256:ab-C.d_e~"),
            "sha256%3Aab-C.d_e~".to_owned()
        );
        assert_eq!(percent_encode("a b+c&d=é"), "a%20b%2Bc%26d%3D%C3%A9");
    }

    #[test]
    fn rate_info_reads_the_server_headers() {
        let mut h = HeaderMap::new();
        h.insert("RateLimit-Limit", "100".parse().unwrap());
        h.insert("RateLimit-Remaining", " 0".parse().unwrap());
        h.insert("RateLimit-Reset", "827".parse().unwrap());
        h.insert("Retry-After", "827".parse().unwrap());
        assert_eq!(
            RateInfo::from_headers(&h),
            RateInfo {
                limit: Some(100),
                remaining: Some(0),
                reset_s: Some(827),
                retry_after_s: Some(827),
            }
        );
        assert_eq!(
            RateInfo::from_headers(&HeaderMap::new()),
            RateInfo::default()
        );
    }

    #[test]
    fn status_error_keeps_the_servers_error_string() {
        let e = status_error(
            "x",
            403,
            RateInfo::default(),
            br#"{"error":"invalid_token"}"#,
        );
        assert_eq!(
            e,
            ClientError::Forbidden {
                what: "x",
                error: "invalid_token".into()
            }
        );
        let e = status_error("x", 500, RateInfo::default(), b"boom\n");
        assert_eq!(
            e,
            ClientError::Status {
                what: "x",
                code: 500,
                body: "boom ".into()
            }
        );
    }
}
