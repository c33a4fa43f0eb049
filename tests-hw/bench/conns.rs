//! Load for the L4 relay's connection-rate benchmark (run by hand through
//! `tests-hw/bench/l4-conns.sh`; never a timed test).
//!
//! - `bench-conns echo LISTEN [--threads N]`: an echo server; each of N threads accepts one
//!   connection at a time and echoes it until the client closes (short connections: no thread
//!   or task is made per connection, so the backend is cheap next to the relay).
//! - `bench-conns rate ADDR [--seconds S] [--concurrency C] [--bytes B]`: C threads, each
//!   connecting, sending B bytes, reading them back and closing, again and again for S seconds.
//!   Prints one line: `conns=<completed> errors=<failed> seconds=<measured> per_s=<rate>`.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use gatelet_tests_hw::{BenchArgs, LOAD_IO_TIMEOUT as IO_TIMEOUT};

const USAGE: &str = "usage: bench-conns echo LISTEN [--threads N] | \
                     bench-conns rate ADDR [--seconds S] [--concurrency C] [--bytes B]";
fn main() -> anyhow::Result<()> {
    let args = BenchArgs::from_env(USAGE);
    let addr = args.addr(1)?;
    match args.word(0) {
        Some("echo") => echo(addr, args.value("--threads", 8)?),
        Some("rate") => rate(
            addr,
            args.seconds("--seconds", 10.0)?,
            args.value("--concurrency", 32)?,
            args.value("--bytes", 1024)?,
        ),
        _ => bail!("{USAGE}"),
    }
}

fn echo(addr: SocketAddr, threads: usize) -> anyhow::Result<()> {
    let listener = TcpListener::bind(addr).with_context(|| format!("cannot listen on {addr}"))?;
    let listener = Arc::new(listener);
    let workers: Vec<_> = (0..threads.max(1))
        .map(|_| {
            let listener = listener.clone();
            std::thread::spawn(move || loop {
                let Ok((mut s, _)) = listener.accept() else {
                    continue;
                };
                let _ = s.set_nodelay(true);
                let _ = s.set_read_timeout(Some(IO_TIMEOUT));
                let mut buf = [0u8; 16 * 1024];
                while let Ok(n @ 1..) = s.read(&mut buf) {
                    if s.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            })
        })
        .collect();
    for w in workers {
        let _ = w.join();
    }
    Ok(())
}

/// One short connection: connect, send `out`, read as many bytes back, close.
fn one(addr: SocketAddr, out: &[u8], back: &mut [u8]) -> std::io::Result<()> {
    let mut s = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.write_all(out)?;
    s.read_exact(back)?;
    s.shutdown(Shutdown::Both)
}

fn rate(
    addr: SocketAddr,
    seconds: Duration,
    concurrency: usize,
    bytes: usize,
) -> anyhow::Result<()> {
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let workers: Vec<_> = (0..concurrency.max(1))
        .map(|_| {
            let (done, failed, stop) = (done.clone(), failed.clone(), stop.clone());
            std::thread::spawn(move || {
                let out = vec![0x5a; bytes];
                let mut back = vec![0; bytes];
                // Bounded: the clock ends the loop; a failing connection still takes time.
                while !stop.load(Ordering::Relaxed) {
                    match one(addr, &out, &mut back) {
                        Ok(()) => done.fetch_add(1, Ordering::Relaxed),
                        Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
        })
        .collect();
    std::thread::sleep(seconds);
    let counted = done.load(Ordering::Relaxed);
    let elapsed = start.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        let _ = w.join();
    }
    println!(
        "conns={counted} errors={} seconds={elapsed:.2} per_s={:.0}",
        failed.load(Ordering::Relaxed),
        counted as f64 / elapsed
    );
    Ok(())
}
