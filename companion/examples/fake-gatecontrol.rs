//! The fake GateControl server of the tests as a program, for the demo and the benchmarks:
//! the gateway API of protocol §3 replaying the real fixtures, with the real server's rate
//! limit and auth rules. Not part of the product.
//!
//! ```text
//! fake-gatecontrol [--listen ADDR:PORT] [--fixtures DIR] [--config FILE] [--rate-limit N]
//! ```
//! It prints `listening on http://ADDR:PORT` once ready, a line per request (for a heartbeat
//! also its `tcp_listeners`, `lan_ip`/`lan_subnets`, `last_pull_*`, `gateway_version` and `image_digest`, for a discovery batch its body), and serves until killed. `--config` replaces the served document
//! and is re-read whenever its modification time changes (`config reloaded` is printed).

#[path = "../tests/fake_gatecontrol/mod.rs"]
mod fake_gatecontrol;

use std::net::TcpListener;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use fake_gatecontrol::{fixture_api_token, fixture_dir, FakeGateControl};

fn main() -> anyhow::Result<()> {
    let mut listen = "127.0.0.1:3000".to_owned();
    let mut fixtures = fixture_dir();
    let mut config: Option<PathBuf> = None;
    let mut rate_limit: Option<u32> = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--listen" => listen = value()?,
            "--fixtures" => fixtures = value()?.into(),
            "--config" => config = Some(value()?.into()),
            "--rate-limit" => rate_limit = Some(value()?.parse().context("--rate-limit")?),
            "-h" | "--help" => {
                println!("fake-gatecontrol [--listen ADDR:PORT] [--fixtures DIR] [--config FILE] [--rate-limit N]");
                return Ok(());
            }
            other => bail!("unknown argument {other:?}"),
        }
    }
    let listener = TcpListener::bind(&listen).with_context(|| format!("binding {listen}"))?;
    let token = fixture_api_token(&fixtures)?;
    let server = FakeGateControl::start_on(listener, &fixtures, &token)?;
    let mut config_mtime = None;
    if let Some(path) = &config {
        config_mtime = mtime(path);
        let doc = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        server.set_config(doc)?;
    }
    if let Some(limit) = rate_limit {
        server.set_rate_limit(limit, fake_gatecontrol::WINDOW);
    }
    println!("listening on {}", server.url());
    let mut seen = 0;
    loop {
        std::thread::sleep(Duration::from_millis(200));
        if let Some(path) = &config {
            let now = mtime(path);
            if now != config_mtime {
                config_mtime = now;
                // A half-written or invalid file keeps the previous document.
                match std::fs::read(path).map(|doc| server.set_config(doc)) {
                    Ok(Ok(())) => println!("config reloaded"),
                    Ok(Err(e)) | Err(e) => println!("config not reloaded: {e}"),
                }
            }
        }
        let reqs = server.requests();
        for r in reqs.iter().skip(seen) {
            println!("{} {} -> {}", r.method, r.target, r.status);
            if r.path().ends_with("/heartbeat") {
                let body = serde_json::from_slice::<serde_json::Value>(&r.body).ok();
                let listeners = body.as_ref().and_then(|v| v.get("tcp_listeners").cloned());
                if let Some(l) = listeners {
                    println!("  tcp_listeners {l}");
                }
                if let Some(t) = body.as_ref().and_then(|v| v.get("telemetry")) {
                    println!("  lan {} {}", t["lan_ip"], t["lan_subnets"]);
                    // The self-update completion fields the real server reads.
                    println!(
                        "  last_pull {} {} {} gateway_version {} image_digest {}",
                        t["last_pull_request_id"],
                        t["last_pull_ok"],
                        t["last_pull_at"],
                        t["gateway_version"],
                        t["image_digest"]
                    );
                }
            }
            if r.path().ends_with("/discovery") {
                println!("  discovery {}", String::from_utf8_lossy(&r.body));
            }
        }
        seen = reqs.len();
        if seen > 10_000 {
            server.clear_requests();
            seen = 0;
        }
    }
}

/// The file's modification time, None if it cannot be read.
fn mtime(path: &std::path::Path) -> Option<std::time::SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}
