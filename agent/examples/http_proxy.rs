//! The agent's HTTP reverse proxy (`gatelet_agent::http::serve`) on its own, for benchmarks:
//! one route, a current-thread runtime like the agent's, no logging.
//!
//! Usage: `http_proxy <listen addr> <target host:port> [domain]` (domain default `bench.local`;
//! requests must carry it in `Host` or `X-Gateway-Target-Domain`). Stops on SIGINT/SIGTERM.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{bail, Context};
use gatelet_agent::http::{HttpStats, HttpTable};
use gatelet_agent_api::control::HttpRoute;
use tokio::signal::unix::{signal, SignalKind};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 2 || args.len() > 3 {
        bail!("usage: http_proxy <listen addr> <target host:port> [domain]");
    }
    let listen: SocketAddr = args[0]
        .parse()
        .with_context(|| format!("listen address {:?} is not ip:port", args[0]))?;
    let (host, port) = args[1]
        .rsplit_once(':')
        .with_context(|| format!("target {:?} is not host:port", args[1]))?;
    let port: u16 = port
        .parse()
        .with_context(|| format!("target port {port:?} is not a number"))?;
    let domain = args.get(2).cloned().unwrap_or_else(|| "bench.local".into());
    let table = HttpTable::new(vec![HttpRoute {
        id: 1,
        domain,
        target_host: host.to_owned(),
        target_port: port,
        backend_https: false,
        wol: None,
    }]);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .context("cannot start the runtime")?;
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("cannot listen on {listen}"))?;
        let (stop, rx) = tokio::sync::watch::channel(false);
        let server = tokio::spawn(gatelet_agent::http::serve(
            listener,
            table,
            Arc::new(HttpStats::default()),
            rx,
        ));
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        let _ = stop.send(true);
        let _ = server.await;
        anyhow::Ok(())
    })
}
