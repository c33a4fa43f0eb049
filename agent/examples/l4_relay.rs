//! A TCP relay on loopback using the agent's forward module, for benchmarks:
//! `l4_relay LISTEN_ADDR TARGET_ADDR [--splice]` (for example `127.0.0.1:5202 127.0.0.1:5201`).
//! Runs on a current-thread runtime like the agent, until killed.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use gatelet_agent::forward::tcp::{self, ConnectionLimit, TcpConfig, TcpRoute};
use gatelet_agent::forward::{RouteCounters, Target, TargetCell};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: l4_relay LISTEN_ADDR TARGET_ADDR [--splice]";
    let listen: SocketAddr = args.first().context(usage)?.parse().context(usage)?;
    let target: SocketAddr = args.get(1).context(usage)?.parse().context(usage)?;
    let splice = args.iter().any(|a| a == "--splice");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("cannot listen on {listen}"))?;
        let (_stop, stop_rx) = tokio::sync::watch::channel(false);
        let route = TcpRoute {
            target: TargetCell::new(Target {
                host: target.ip().to_string(),
                port: target.port(),
            }),
            counters: Arc::new(RouteCounters::default()),
            config: Arc::new(TcpConfig {
                splice,
                ..TcpConfig::default()
            }),
            global: ConnectionLimit::new(tcp::DEFAULT_MAX_CONNECTIONS_TOTAL),
            kill: stop_rx.clone(),
        };
        eprintln!("l4_relay: {listen} -> {target} (splice: {splice})");
        tcp::serve(listener, route, stop_rx).await;
        Ok(())
    })
}
