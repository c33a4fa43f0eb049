//! The control socket server: one JSON request per line, one JSON response per line
//! (`gatelet_agent_api::control`).
//!
//! Each connection is served by its own task with an idle timeout, up to
//! [`MAX_CONNECTIONS`] at once; nothing here touches the data path except reading its
//! counters, so a slow client never stalls packets.

use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gatelet_agent_api::control::{AgentStatus, Request, Response, API_VERSION, MAX_LINE_BYTES};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{watch, Semaphore};

use crate::probe;
use crate::routes::RouteManager;
use crate::tunnel::stats::TunnelStats;
use crate::wol::Waker;

/// Connections served at once; more are told to retry.
pub const MAX_CONNECTIONS: usize = 16;
/// A connection with no complete request for this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Mode of the socket's directory when the agent creates it.
pub const SOCKET_DIR_MODE: u32 = 0o750;
/// Mode of the socket file: the companion's group may connect.
pub const SOCKET_MODE: u32 = 0o660;
/// Answer to requests this agent version does not carry out yet.
pub const NOT_IMPLEMENTED: &str = "not implemented in this agent version";
/// Pause after a failed accept, so a persistent error does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Why the control socket could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The socket's directory could not be created.
    #[error("cannot create the control socket directory {path}: {error}")]
    Dir {
        /// The directory.
        path: PathBuf,
        /// The system's error.
        error: io::Error,
    },
    /// Another process answers on the socket.
    #[error("control socket {0} is in use: is another gatelet-agent running?")]
    InUse(PathBuf),
    /// Something other than a socket has the socket's path.
    #[error("{0} exists and is not a socket: remove it or choose --control-socket")]
    NotASocket(PathBuf),
    /// The socket (or the directory the agent created for it) could not be given to
    /// `--control-group`.
    #[error("cannot give {path} to group {gid} (--control-group): {error}; the agent must run as root or as a member of that group")]
    Group {
        /// The socket or its directory.
        path: PathBuf,
        /// The group id.
        gid: u32,
        /// The system's error.
        error: io::Error,
    },
    /// Binding failed.
    #[error("cannot listen on control socket {path}: {error}")]
    Bind {
        /// The socket path.
        path: PathBuf,
        /// The system's error.
        error: io::Error,
    },
}

/// The bound socket; removes its file when dropped.
#[derive(Debug)]
pub struct ControlSocket {
    listener: std::os::unix::net::UnixListener,
    path: PathBuf,
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

impl ControlSocket {
    /// Binds `path`: creates a missing directory (mode [`SOCKET_DIR_MODE`]), replaces a stale
    /// socket left by a crash, refuses when another agent still answers.
    ///
    /// With `group` (`--control-group`), the socket file, and the directory when the agent
    /// creates it, belong to that group, so that a companion running as another uid in that
    /// group can connect (mode [`SOCKET_MODE`]). Without it they keep the agent's own group.
    pub fn bind(path: &Path, group: Option<u32>) -> Result<Self, ControlError> {
        let give = |p: &Path| -> Result<(), ControlError> {
            match group {
                // Already the group (the agent runs in it, as under the systemd unit): no chown,
                // which the unit's seccomp filter (~@privileged holds @chown) answers with EPERM.
                Some(gid) if std::fs::metadata(p).is_ok_and(|m| m.gid() == gid) => Ok(()),
                Some(gid) => std::os::unix::fs::chown(p, None, Some(gid)).map_err(|error| {
                    ControlError::Group {
                        path: p.to_owned(),
                        gid,
                        error,
                    }
                }),
                None => Ok(()),
            }
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            if !dir.exists() {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(SOCKET_DIR_MODE)
                    .create(dir)
                    .map_err(|error| ControlError::Dir {
                        path: dir.to_owned(),
                        error,
                    })?;
                give(dir)?;
            }
        }
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            if !meta.file_type().is_socket() {
                return Err(ControlError::NotASocket(path.to_owned()));
            }
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(ControlError::InUse(path.to_owned()));
            }
            tracing::info!(path = %path.display(), "replacing a stale control socket");
            let _ = std::fs::remove_file(path);
        }
        let bind_err = |error| ControlError::Bind {
            path: path.to_owned(),
            error,
        };
        let listener = std::os::unix::net::UnixListener::bind(path).map_err(bind_err)?;
        let socket = ControlSocket {
            listener,
            path: path.to_owned(),
        };
        give(path)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(SOCKET_MODE))
            .map_err(bind_err)?;
        socket.listener.set_nonblocking(true).map_err(bind_err)?;
        Ok(socket)
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A tokio listener on the socket (call inside a runtime).
    pub fn listener(&self) -> io::Result<UnixListener> {
        UnixListener::from_std(self.listener.try_clone()?)
    }
}

/// The gid of `--control-group`: a number, or a group name looked up in `group_file` (the text
/// of `/etc/group`; no NSS lookup, the binary is static).
pub fn resolve_group(spec: &str, group_file: &str) -> Result<u32, String> {
    if let Ok(gid) = spec.parse::<u32>() {
        return Ok(gid);
    }
    group_file
        .lines()
        .filter_map(|line| {
            let mut f = line.split(':');
            let name = f.next()?;
            let gid = f.nth(1)?.parse::<u32>().ok()?;
            (name == spec).then_some(gid)
        })
        .next()
        .ok_or_else(|| {
            format!("--control-group {spec:?}: no such group in /etc/group (give a numeric gid)")
        })
}

/// What the control socket reports about the agent.
#[derive(Debug)]
pub struct AgentState {
    started: Instant,
    tunnel: Arc<TunnelStats>,
    routes: Option<RouteManager>,
    waker: Option<Waker>,
    tunnel_proxy: Option<std::net::SocketAddr>,
}

impl AgentState {
    /// State of an agent started at `started` with this tunnel.
    pub fn new(started: Instant, tunnel: Arc<TunnelStats>) -> Self {
        AgentState {
            started,
            tunnel,
            routes: None,
            waker: None,
            tunnel_proxy: None,
        }
    }

    /// The same state, reporting the loopback proxy into the tunnel (`crate::egress`).
    pub fn with_tunnel_proxy(mut self, addr: std::net::SocketAddr) -> Self {
        self.tunnel_proxy = Some(addr);
        self
    }

    /// The same state, answering `Wake` and reporting recent wakes through `waker`.
    pub fn with_waker(mut self, waker: Waker) -> Self {
        self.waker = Some(waker);
        self
    }

    /// The same state, answering `Apply` and reporting routes through `routes`.
    pub fn with_routes(mut self, routes: RouteManager) -> Self {
        self.routes = Some(routes);
        self
    }

    /// The status at `now`.
    pub fn status(&self, now: Instant) -> AgentStatus {
        let mut status = AgentStatus {
            agent_version: agent_version(),
            uptime_s: now.saturating_duration_since(self.started).as_secs(),
            tunnel: self.tunnel.snapshot(now),
            ..AgentStatus::default()
        };
        if let Some(m) = &self.routes {
            let r = m.status();
            status.config_hash = r.config_hash;
            status.routes = r.routes;
            status.http_proxy = r.http_proxy;
            status.api_relay = r.api_relay;
            status.scan_egress = r.egress;
            status.scan_egress_near = r.egress_near;
        }
        if let Some(waker) = &self.waker {
            status.wakes = waker.recent();
        }
        status.tunnel_proxy = self.tunnel_proxy.map(|a| a.to_string());
        status
    }
}

/// The answer to one request.
pub async fn answer(req: Request, state: &AgentState) -> Response {
    match req {
        Request::Hello { version } => {
            if version != API_VERSION {
                tracing::info!(
                    client = version,
                    agent = API_VERSION,
                    "control client speaks another contract version"
                );
            }
            Response::Hello {
                version: API_VERSION,
                agent_version: agent_version(),
            }
        }
        Request::Status => Response::Status(Box::new(state.status(Instant::now()))),
        Request::Probe(p) => Response::Probed(probe::probe(&p).await),
        Request::Apply { config } => match &state.routes {
            Some(m) => Response::Applied {
                config_hash: config.config_hash.clone(),
                routes: m.apply(config),
            },
            None => Response::Error {
                message: NOT_IMPLEMENTED.to_owned(),
            },
        },
        Request::Wake(w) => match &state.waker {
            Some(waker) => Response::Woke(waker.answer(&w).await),
            None => Response::Error {
                message: NOT_IMPLEMENTED.to_owned(),
            },
        },
    }
}

/// Serves `listener` until `shutdown` turns true or its sender is dropped.
pub async fn serve(
    listener: UnixListener,
    state: Arc<AgentState>,
    mut shutdown: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let stream = tokio::select! {
            _ = shutdown.changed() => {
                if shutdown.has_changed().is_err() || *shutdown.borrow() {
                    return;
                }
                continue;
            }
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "control socket accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tokio::spawn(async move {
                let _ = reply(
                    &mut { stream },
                    &Response::Error {
                        message: format!(
                            "too many control connections (limit {MAX_CONNECTIONS}); retry"
                        ),
                    },
                )
                .await;
            });
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            if let Err(e) = connection(stream, &state).await {
                tracing::debug!(error = %e, "control connection ended");
            }
            drop(permit);
        });
    }
}

async fn reply(stream: &mut UnixStream, resp: &Response) -> io::Result<()> {
    let mut line = serde_json::to_vec(resp).map_err(io::Error::other)?;
    line.push(b'\n');
    stream.write_all(&line).await
}

async fn connection(stream: UnixStream, state: &AgentState) -> io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    let mut line = Vec::new();
    loop {
        line.clear();
        let limit = MAX_LINE_BYTES as u64 + 1;
        let read = tokio::time::timeout(
            IDLE_TIMEOUT,
            (&mut reader).take(limit).read_until(b'\n', &mut line),
        )
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "idle"))??;
        if read == 0 {
            return Ok(());
        }
        let too_long = line.len() > MAX_LINE_BYTES;
        let resp = if too_long {
            Response::Error {
                message: format!("request longer than {MAX_LINE_BYTES} bytes"),
            }
        } else {
            match serde_json::from_slice::<Request>(&line) {
                Ok(req) => answer(req, state).await,
                Err(e) => Response::Error {
                    message: format!("invalid request: {e}"),
                },
            }
        };
        let mut out = serde_json::to_vec(&resp).map_err(io::Error::other)?;
        out.push(b'\n');
        write.write_all(&out).await?;
        if too_long {
            return Ok(());
        }
    }
}

/// The version this agent reports. Read through `black_box` so that it stays one string in
/// the binary: an optimized aarch64 build otherwise writes its five bytes as instruction
/// immediates, and the self-update tests make "the next release" by patching that string
/// (tests-hw/src/release.rs, image/boot-update.sh; the health gate needs the new version).
fn agent_version() -> String {
    std::hint::black_box(env!("CARGO_PKG_VERSION")).to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use gatelet_agent_api::control::ProbeRequest;
    use tokio::io::AsyncBufReadExt;

    async fn ask(stream: &mut BufReader<UnixStream>, line: &str) -> Response {
        stream.get_mut().write_all(line.as_bytes()).await.unwrap();
        let mut out = String::new();
        stream.read_line(&mut out).await.unwrap();
        serde_json::from_str(&out).unwrap()
    }

    #[tokio::test]
    async fn socket_answers_hello_status_probe_and_not_implemented() {
        let dir = std::env::temp_dir().join(format!("gatelet-ctl-{}", std::process::id()));
        let path = dir.join("sub/agent.sock");
        let sock = ControlSocket::bind(&path, None).unwrap();
        let started = Instant::now();
        let stats = Arc::new(TunnelStats::new(started, "tun"));
        stats.count_rx(10);
        let state = Arc::new(AgentState::new(started, stats));
        let (stop, rx) = watch::channel(false);
        let server = tokio::spawn(serve(sock.listener().unwrap(), state, rx));

        // A second client that never sends anything must not hold up the first.
        let _idle = UnixStream::connect(&path).await.unwrap();
        let mut c = BufReader::new(UnixStream::connect(&path).await.unwrap());
        match ask(&mut c, "{\"op\":\"hello\",\"version\":1}\n").await {
            Response::Hello { version, .. } => assert_eq!(version, API_VERSION),
            other => panic!("{other:?}"),
        }
        match ask(&mut c, "{\"op\":\"status\"}\n").await {
            Response::Status(s) => {
                assert_eq!(s.tunnel.rx_bytes, 10);
                assert_eq!(s.tunnel.mode, "tun");
                assert_eq!(s.agent_version, env!("CARGO_PKG_VERSION"));
            }
            other => panic!("{other:?}"),
        }
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let probe_line = serde_json::to_string(&Request::Probe(ProbeRequest {
            host: "127.0.0.1".into(),
            port: l.local_addr().unwrap().port(),
            timeout_ms: 1000,
        }))
        .unwrap();
        match ask(&mut c, &format!("{probe_line}\n")).await {
            Response::Probed(p) => assert!(p.reachable, "{p:?}"),
            other => panic!("{other:?}"),
        }
        let wake = "{\"op\":\"wake\",\"mac\":\"aa:bb:cc:dd:ee:ff\",\"timeout_ms\":1}\n";
        assert_eq!(
            ask(&mut c, wake).await,
            Response::Error {
                message: NOT_IMPLEMENTED.into()
            }
        );
        match ask(&mut c, "not json\n").await {
            Response::Error { message } => assert!(message.starts_with("invalid request")),
            other => panic!("{other:?}"),
        }

        // A second agent on the same path is refused while this one answers.
        assert!(matches!(
            ControlSocket::bind(&path, None),
            Err(ControlError::InUse(_))
        ));
        stop.send(true).unwrap();
        server.await.unwrap();
        drop(sock);
        assert!(!path.exists(), "socket file removed on drop");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn control_group_names_resolve_through_the_group_file() {
        let groups = "root:x:0:\ngatelet:x:65532:\nbroken:x:notanumber:\n";
        assert_eq!(resolve_group("gatelet", groups), Ok(65532));
        assert_eq!(resolve_group("0", groups), Ok(0));
        assert_eq!(resolve_group("1234", ""), Ok(1234));
        let e = resolve_group("nobody", groups).unwrap_err();
        assert!(e.contains("no such group"), "{e}");
        assert!(resolve_group("broken", groups).is_err());
    }

    #[test]
    fn control_group_owns_the_socket_and_the_directory_it_creates() {
        use std::os::unix::fs::MetadataExt;
        let own = std::fs::metadata("/proc/self").unwrap();
        // Root can give the socket to any group (the container case: agent uid 0, companion
        // gid 65532); anyone else only to a group of its own.
        let gid = if own.uid() == 0 { 65532 } else { own.gid() };
        // (hand-made like the other tests here: the agent has no tempfile dependency)
        let tmp = std::env::temp_dir().join(format!("gatelet-group-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        let path = tmp.join("run").join("agent.sock");
        let sock = ControlSocket::bind(&path, Some(gid)).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.gid(), gid);
        assert_eq!(meta.mode() & 0o777, SOCKET_MODE);
        let dir = std::fs::metadata(path.parent().unwrap()).unwrap();
        assert_eq!(dir.gid(), gid);
        assert_eq!(dir.mode() & 0o777, SOCKET_DIR_MODE);
        drop(sock);
        let _ = std::fs::remove_dir_all(&tmp);
    }

    #[test]
    fn stale_socket_file_is_replaced() {
        let dir = std::env::temp_dir().join(format!("gatelet-stale-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("agent.sock");
        // A socket file nobody listens on, as a crash leaves behind.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        let sock = ControlSocket::bind(&path, None).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, SOCKET_MODE);
        drop(sock);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// An apply on the control socket runs the config (the route manager on loopback) and the
    /// status answer reports it.
    #[tokio::test]
    async fn apply_on_the_control_socket_runs_the_config_and_status_reports_it() {
        use gatelet_agent_api::control::{AgentConfig, L4Route, ListenerState};
        use std::net::{IpAddr, Ipv4Addr};
        use tokio::io::AsyncReadExt;

        let target = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let to = target.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = target.accept().await {
                tokio::spawn(async move {
                    let _ = s.write_all(b"a").await;
                    let mut sink = [0u8; 64];
                    while matches!(s.read(&mut sink).await, Ok(n) if n > 0) {}
                });
            }
        });
        let p = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let m = RouteManager::new(crate::routes::Settings::new(IpAddr::V4(
            Ipv4Addr::LOCALHOST,
        )));
        m.start().unwrap();
        let started = Instant::now();
        let state =
            AgentState::new(started, Arc::new(TunnelStats::new(started, "tun"))).with_routes(m);
        let config = AgentConfig {
            egress_routes: Vec::new(),
            config_hash: Some("sha256:ab".into()),
            http_routes: vec![],
            l4_routes: vec![L4Route {
                id: 4,
                listen_port: p,
                target_host: to.ip().to_string(),
                target_port: to.port(),
                wol: None,
            }],
        };
        match answer(Request::Apply { config }, &state).await {
            Response::Applied {
                config_hash,
                routes,
            } => {
                assert_eq!(config_hash.as_deref(), Some("sha256:ab"));
                assert_eq!(routes.len(), 1);
                assert_eq!(routes[0].name, format!("l4:{p}"));
                assert_eq!(routes[0].id, 4);
                assert_eq!(routes[0].tcp, ListenerState::Listening);
            }
            other => panic!("{other:?}"),
        }
        let mut c = tokio::net::TcpStream::connect(("127.0.0.1", p))
            .await
            .unwrap();
        let mut greeting = [0u8; 1];
        tokio::time::timeout(Duration::from_secs(5), c.read_exact(&mut greeting))
            .await
            .expect("the target's greeting within 5 s")
            .unwrap();
        assert_eq!(&greeting, b"a");
        let status = state.status(Instant::now());
        assert_eq!(status.config_hash.as_deref(), Some("sha256:ab"));
        assert_eq!(status.routes.len(), 1);
        assert_eq!(status.routes[0].active_connections, 1);
    }

    /// The waker the composition root hands over answers `Wake` and shows in the status; an
    /// agent without one answers "not implemented".
    #[tokio::test]
    async fn wake_goes_to_the_waker_handed_over_and_shows_in_the_status() {
        use crate::wol::{BoxFuture, Probe, Transport};
        use gatelet_agent_api::control::{SentOn, WakeRequest};

        /// No LAN interface at all: every wake ends at once with `no_interface`.
        struct NoInterfaces;
        impl Transport for NoInterfaces {
            fn send(&self, _packet: Vec<u8>) -> BoxFuture<Vec<SentOn>> {
                Box::pin(async { Vec::new() })
            }
            fn probe(&self, _host: String, _port: u16, _timeout: Duration) -> BoxFuture<Probe> {
                Box::pin(async { Probe::Silent })
            }
        }

        let started = Instant::now();
        let tunnel = Arc::new(TunnelStats::new(started, "tun"));
        let wake = || {
            Request::Wake(WakeRequest {
                mac: "02:00:00:00:00:09".into(),
                lan_host: None,
                port: None,
                timeout_ms: 1000,
                trigger: String::new(),
            })
        };
        let without = AgentState::new(started, tunnel.clone());
        match answer(wake(), &without).await {
            Response::Error { message } => assert_eq!(message, NOT_IMPLEMENTED),
            other => panic!("{other:?}"),
        }
        let with = AgentState::new(started, tunnel).with_waker(Waker::new(NoInterfaces));
        match answer(wake(), &with).await {
            Response::Woke(r) => {
                assert_eq!(r.mac, "02:00:00:00:00:09");
                assert_eq!(r.trigger, "api");
                assert!(!r.success);
                assert_eq!(r.reason.as_deref(), Some("no_interface"));
            }
            other => panic!("{other:?}"),
        }
        let wakes = with.status(Instant::now()).wakes;
        assert_eq!(wakes.len(), 1);
        assert_eq!(wakes[0].mac, "02:00:00:00:00:09");
        assert!(without.status(Instant::now()).wakes.is_empty());
    }
}
