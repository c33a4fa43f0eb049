//! Open-loop HTTP/1.1 load at a fixed request rate, for the latency of the HTTP proxy bench
//! (run by hand through `tests-hw/bench/http-proxy.sh`, case `rate`; never a timed test).
//!
//! `bench-http-rate ADDR --rate R [--seconds S] [--warmup W] [--connections C] [--host H]
//! [--path P]`
//!
//! C keep-alive connections, one thread each, share the rate: connection `i` sends its `k`-th
//! request at `start + (i + k * C) / R`, so the requests are evenly spaced over all
//! connections. A request's latency runs from the time it was *scheduled*, not sent: when an
//! answer is late and the next request of the connection goes out late too, the wait counts
//! (no coordinated omission, as wrk2 does it). wrk, a closed loop, keeps C requests
//! outstanding, so its latencies are C / rate by Little's law whatever the proxy does, and
//! their tail follows how fairly the whole machine serves the C connections; at a fixed rate
//! under saturation they are the proxy's own time plus its queueing.
//!
//! Requests scheduled in the first W seconds (default 1) warm up and are not counted. Prints
//! one line: `answered_rps=<answered per second> p50_ms= p90_ms= p99_ms= p999_ms= max_ms=
//! errors= requests=` (errors: connections that failed, answers that were not 200, and requests never
//! answered within the I/O timeout). The run ends within S seconds and a few I/O timeouts (5 s)
//! even when the server stops answering.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use gatelet_tests_hw::{BenchArgs, LOAD_IO_TIMEOUT as IO_TIMEOUT};

const USAGE: &str = "usage: bench-http-rate ADDR --rate R [--seconds S] [--warmup W] \
                     [--connections C] [--host H] [--path P]";
/// Largest answer read (head and body); the bench serves a small file.
const MAX_ANSWER: usize = 64 * 1024;

struct Load {
    addr: SocketAddr,
    request: Vec<u8>,
    /// Time between two requests of one connection.
    interval: Duration,
    warmup: Duration,
    seconds: Duration,
}

/// What one connection's thread measured.
#[derive(Default)]
struct Tally {
    /// Latency of each counted request, in microseconds.
    micros: Vec<u32>,
    errors: u64,
}

fn main() -> anyhow::Result<()> {
    let args = BenchArgs::from_env(USAGE);
    let addr = args.addr(0)?;
    let rate: f64 = args.value("--rate", 0.0)?;
    let connections: usize = args.value("--connections", 50)?;
    if !(rate >= 1.0 && rate.is_finite()) || connections == 0 {
        bail!("--rate (at least 1) and --connections (at least 1) are needed; {USAGE}");
    }
    let host: String = args.value("--host", "localhost".into())?;
    let path: String = args.value("--path", "/".into())?;
    let load = Load {
        addr,
        request: format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n").into_bytes(),
        interval: Duration::from_secs_f64(connections as f64 / rate),
        warmup: args.seconds("--warmup", 1.0)?,
        seconds: args.seconds("--seconds", 10.0)?,
    };
    let start = Instant::now() + Duration::from_millis(100);
    let tallies: Vec<Tally> = std::thread::scope(|s| {
        let load = &load;
        let threads: Vec<_> = (0..connections)
            .map(|i| {
                let first = start + Duration::from_secs_f64(i as f64 / rate);
                s.spawn(move || connection(load, first, start))
            })
            .collect();
        threads
            .into_iter()
            .map(|t| t.join().unwrap_or_default())
            .collect()
    });
    let errors: u64 = tallies.iter().map(|t| t.errors).sum();
    let mut micros: Vec<u32> = tallies.into_iter().flat_map(|t| t.micros).collect();
    micros.sort_unstable();
    if micros.is_empty() {
        bail!("no request was answered ({errors} errors)");
    }
    let pct = |p: f64| {
        let i = ((p / 100.0) * micros.len() as f64).ceil() as usize;
        micros[i.clamp(1, micros.len()) - 1] as f64 / 1000.0
    };
    let counted = load.seconds.saturating_sub(load.warmup).as_secs_f64();
    println!(
        "answered_rps={:.1} p50_ms={:.3} p90_ms={:.3} p99_ms={:.3} p999_ms={:.3} max_ms={:.3} errors={errors} requests={}",
        micros.len() as f64 / counted.max(1e-3),
        pct(50.0),
        pct(90.0),
        pct(99.0),
        pct(99.9),
        pct(100.0),
        micros.len()
    );
    Ok(())
}

/// One connection's requests, each at its scheduled time; reconnects after a failure.
fn connection(load: &Load, first: Instant, start: Instant) -> Tally {
    // Wake-ups within a microsecond of the schedule, not the default 50 µs timer slack.
    // SAFETY: PR_SET_TIMERSLACK takes a plain integer and changes only this thread.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong) };
    let mut tally = Tally::default();
    let mut stream: Option<TcpStream> = None;
    let mut answer = vec![0u8; MAX_ANSWER];
    let end = start + load.seconds;
    let counted_from = start + load.warmup;
    let mut at = first;
    while at < end {
        let now = Instant::now();
        if now > end + IO_TIMEOUT {
            // A proxy that stopped answering: the requests still due count as failed, and the
            // run ends within its time (plus one I/O timeout).
            let left = (end - at).as_secs_f64() / load.interval.as_secs_f64();
            tally.errors += left.ceil() as u64;
            break;
        }
        if at > now {
            std::thread::sleep(at - now);
        }
        let mut s = match stream.take() {
            Some(s) => s,
            None => match open(load.addr) {
                Ok(s) => s,
                Err(_) => {
                    tally.errors += 1;
                    at += load.interval;
                    continue;
                }
            },
        };
        match exchange(&mut s, &load.request, &mut answer) {
            Ok(()) => {
                if at >= counted_from {
                    let micros = at.elapsed().as_micros().min(u32::MAX as u128) as u32;
                    tally.micros.push(micros);
                }
                stream = Some(s);
            }
            Err(_) => tally.errors += 1,
        }
        at += load.interval;
    }
    tally
}

fn open(addr: SocketAddr) -> std::io::Result<TcpStream> {
    let s = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    Ok(s)
}

/// Sends one request and reads its whole answer (a 200 with a Content-Length).
fn exchange(s: &mut TcpStream, request: &[u8], buf: &mut [u8]) -> anyhow::Result<()> {
    s.write_all(request)?;
    let mut filled = 0;
    let (head_end, body_len) = loop {
        if filled == buf.len() {
            bail!("the answer's head is larger than {MAX_ANSWER} bytes");
        }
        let n = s.read(&mut buf[filled..])?;
        if n == 0 {
            bail!("closed before the answer");
        }
        filled += n;
        if let Some(i) = buf[..filled].windows(4).position(|w| w == b"\r\n\r\n") {
            let head = std::str::from_utf8(&buf[..i]).context("head is not UTF-8")?;
            if !head.starts_with("HTTP/1.1 200") {
                bail!("answered {}", head.lines().next().unwrap_or(""));
            }
            let length = head
                .lines()
                .find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse::<usize>().ok())?
                })
                .context("no Content-Length")?;
            break (i + 4, length);
        }
    };
    let total = head_end + body_len;
    if total > buf.len() {
        bail!("the answer is larger than {MAX_ANSWER} bytes");
    }
    while filled < total {
        let n = s.read(&mut buf[filled..total])?;
        if n == 0 {
            bail!("closed in the body");
        }
        filled += n;
    }
    if filled != total {
        bail!("more bytes than the answer (a pipelining error)");
    }
    Ok(())
}
