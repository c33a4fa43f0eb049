//! The fake GateControl server (`gatelet-companion`'s `fake-gatecontrol` example) as a process
//! in a namespace, serving a config document the test writes and can change.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::{example_binary, wait_until, HarnessError, Netns, Process, Result};

/// How long the fake server gets to print `listening on`.
pub const GATECONTROL_START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the fake server gets to notice a rewritten config file (it looks every 200 ms).
pub const GATECONTROL_RELOAD_TIMEOUT: Duration = Duration::from_secs(5);

static DOC_SEQ: AtomicU64 = AtomicU64::new(1);

/// An HTTP route of a config document (protocol §4 `routes`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpRouteDoc {
    /// Route id.
    pub id: u64,
    /// The domain it serves.
    pub domain: String,
    /// LAN target host.
    pub host: String,
    /// LAN target port.
    pub port: u16,
}

/// An L4 route of a config document (protocol §4 `l4_routes`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct L4RouteDoc {
    /// Route id.
    pub id: u64,
    /// Port on the tunnel IP (TCP and UDP).
    pub listen_port: u16,
    /// LAN target host.
    pub host: String,
    /// LAN target port.
    pub port: u16,
}

/// A config document as `GET /api/v1/gateway/config` serves it, with a `config_hash` unique
/// to this call (the companion treats the hash as opaque).
pub fn config_document(http: &[HttpRouteDoc], l4: &[L4RouteDoc]) -> serde_json::Value {
    let seq = DOC_SEQ.fetch_add(1, Ordering::Relaxed);
    let routes: Vec<_> = http
        .iter()
        .map(|r| {
            serde_json::json!({"id": r.id, "domain": r.domain, "target_kind": "gateway",
                "target_lan_host": r.host, "target_lan_port": r.port, "protocol": "http",
                "wol_enabled": false})
        })
        .collect();
    let l4_routes: Vec<_> = l4
        .iter()
        .map(|r| {
            serde_json::json!({"id": r.id, "listen_port": r.listen_port,
                "target_lan_host": r.host, "target_lan_port": r.port, "wol_enabled": false})
        })
        .collect();
    serde_json::json!({
        "config_hash_version": 2,
        "peer_id": 1,
        "routes": routes,
        "l4_routes": l4_routes,
        "egress_routes": [],
        "config_hash": format!("sha256:{:032x}{seq:032x}", std::process::id()),
    })
}

/// The `config_hash` of a document made by [`config_document`].
pub fn document_hash(doc: &serde_json::Value) -> String {
    doc["config_hash"].as_str().unwrap_or_default().to_owned()
}

/// `fake-gatecontrol --listen <addr> --config <file>` running in a namespace; killed on drop.
#[derive(Debug)]
pub struct FakeGateControl {
    process: Process,
    config_path: PathBuf,
}

impl FakeGateControl {
    /// Builds the example if needed, writes `doc` to `<ns dir>/gatecontrol-config.json`, starts
    /// the server on `listen` in `ns` and waits until it listens.
    pub fn start(ns: &Netns, listen: SocketAddr, doc: &serde_json::Value) -> Result<Self> {
        let binary = example_binary("gatelet-companion", "fake-gatecontrol")?;
        let config_path = ns.dir().join("gatecontrol-config.json");
        write_atomic(&config_path, doc)?;
        let mut cmd = ns.command(&binary);
        cmd.arg("--listen")
            .arg(listen.to_string())
            .arg("--config")
            .arg(&config_path);
        let process = ns.spawn("fake-gatecontrol", cmd)?;
        let mut server = FakeGateControl {
            process,
            config_path,
        };
        let waited = wait_until(
            "fake-gatecontrol to listen",
            GATECONTROL_START_TIMEOUT,
            || {
                if let Some(status) = server.process.try_exit()? {
                    return Err(HarnessError::Command {
                        what: "fake-gatecontrol".into(),
                        status: status.to_string(),
                        output: server.process.log(),
                    });
                }
                Ok::<_, HarnessError>(server.log().contains("listening on").then_some(()))
            },
        );
        match waited {
            Ok(()) => Ok(server),
            Err(e) => Err(HarnessError::Command {
                what: "fake-gatecontrol start".into(),
                status: e.to_string(),
                output: server.log(),
            }),
        }
    }

    /// Serves `doc` from now on: rewrites the config file and waits until the server has
    /// re-read it.
    pub fn set_config(&self, doc: &serde_json::Value) -> Result<()> {
        let before = self.log().matches("config reloaded").count();
        write_atomic(&self.config_path, doc)?;
        wait_until(
            "fake-gatecontrol to re-read its config",
            GATECONTROL_RELOAD_TIMEOUT,
            || {
                Ok::<_, HarnessError>(
                    (self.log().matches("config reloaded").count() > before).then_some(()),
                )
            },
        )
    }

    /// Everything it printed: one line per request, `tcp_listeners` of each heartbeat.
    pub fn log(&self) -> String {
        self.process.log()
    }

    /// Stops the server (the hub's GateControl goes away).
    pub fn stop(&mut self) {
        self.process.terminate();
    }
}

fn write_atomic(path: &Path, doc: &serde_json::Value) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let text = serde_json::to_vec_pretty(doc).map_err(|e| HarnessError::Parse {
        what: "config document".into(),
        detail: e.to_string(),
    })?;
    std::fs::write(&tmp, text)
        .map_err(|e| HarnessError::io(format!("write {}", tmp.display()), e))?;
    std::fs::rename(&tmp, path)
        .map_err(|e| HarnessError::io(format!("rename {} into place", tmp.display()), e))
}
