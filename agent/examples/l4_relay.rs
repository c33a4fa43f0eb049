//! A TCP relay on loopback using the agent's forward module, for benchmarks:
//! `l4_relay LISTEN_ADDR TARGET_ADDR [--splice] [--io] [--buffer BYTES]` (for example `127.0.0.1:5202 127.0.0.1:5201`).
//! Runs on a current-thread runtime like the agent, until killed. `--io` relays each connection
//! with `forward::tcp::relay_io` (the AsyncRead/AsyncWrite copy a userspace-stack connection
//! takes) instead of the kernel-to-kernel paths, to measure that copy on its own.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use gatelet_agent::forward::tcp::{self, ConnectionLimit, TcpConfig, TcpRoute};
use gatelet_agent::forward::{RouteCounters, TargetCell};
use gatelet_agent::stack::Stream;
use gatelet_agent::target::Target;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: l4_relay LISTEN_ADDR TARGET_ADDR [--splice] [--io] [--buffer BYTES]";
    let listen: SocketAddr = args.first().context(usage)?.parse().context(usage)?;
    let target: SocketAddr = args.get(1).context(usage)?.parse().context(usage)?;
    let splice = args.iter().any(|a| a == "--splice");
    let io = args.iter().any(|a| a == "--io");
    let buffer_bytes = match args.iter().position(|a| a == "--buffer") {
        Some(i) => args
            .get(i + 1)
            .and_then(|v| v.parse().ok())
            .context("--buffer needs a size in bytes")?,
        None => tcp::DEFAULT_BUFFER_BYTES,
    };
    gatelet_agent::forward::raise_nofile_limit().context("cannot raise the open files limit")?;
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
                buffer_bytes,
                max_buffer_bytes: buffer_bytes.max(tcp::DEFAULT_MAX_BUFFER_BYTES),
                ..TcpConfig::default()
            }),
            global: ConnectionLimit::new(tcp::DEFAULT_MAX_CONNECTIONS_TOTAL),
            kill: stop_rx.clone(),
            waker: None,
            sources: None,
            via: Default::default(),
        };
        eprintln!(
            "l4_relay: {listen} -> {target} (splice: {splice}, io: {io}, buffer: {buffer_bytes})"
        );
        if io {
            loop {
                let (client, _) = listener.accept().await?;
                let route = route.clone();
                tokio::spawn(async move {
                    let mut client = Stream::from(client);
                    let mut server = tokio::net::TcpStream::connect(target).await?;
                    let _ = server.set_nodelay(true);
                    let _ = client.set_nodelay(true);
                    tcp::relay_io(&mut client, &mut server, &route.config, &route.counters).await
                });
            }
        }
        tcp::serve(listener, route, stop_rx).await;
        Ok(())
    })
}
