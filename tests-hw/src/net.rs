//! Traffic inside test namespaces: ping, a TCP echo server and client, UDP sockets.

use std::io::{Read as _, Write as _};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use crate::{HarnessError, Netns, Result};

/// How long the echo client waits to connect, and for each read or write.
pub const ECHO_IO_TIMEOUT: Duration = Duration::from_secs(10);

/// Pings `dst` from `ns`: `count` echo requests 0.2 s apart, one second's wait each; succeeds
/// when at least one answer came back.
pub fn ping(ns: &Netns, dst: &str, count: u32) -> Result<String> {
    ns.exec(&[
        "ping",
        "-n",
        "-c",
        &count.to_string(),
        "-i",
        "0.2",
        "-W",
        "1",
        dst,
    ])
}

/// A TCP echo server listening in a namespace; stopped and joined on drop.
#[derive(Debug)]
pub struct EchoServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl EchoServer {
    /// Binds `addr` inside `ns` (port 0 picks one) and echoes every connection until EOF.
    pub fn start(ns: &Netns, addr: SocketAddr) -> Result<EchoServer> {
        let listener = ns
            .enter(|| TcpListener::bind(addr))?
            .map_err(|e| HarnessError::io(format!("bind TCP {addr} in {}", ns.name()), e))?;
        let addr = listener
            .local_addr()
            .map_err(|e| HarnessError::io("local address of the echo listener", e))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| HarnessError::io("set the echo listener non-blocking", e))?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        thread::spawn(move || echo(conn));
                    }
                    Err(_) => thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        Ok(EchoServer {
            addr,
            stop,
            thread: Some(thread),
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

fn echo(mut conn: TcpStream) {
    let _ = conn.set_nonblocking(false);
    let _ = conn.set_read_timeout(Some(ECHO_IO_TIMEOUT));
    let mut buf = [0u8; 16 * 1024];
    while let Ok(n @ 1..) = conn.read(&mut buf) {
        if conn.write_all(&buf[..n]).is_err() {
            return;
        }
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Connects from `ns` to `addr`, sends `payload`, half-closes and returns what came back.
pub fn tcp_echo(ns: &Netns, addr: SocketAddr, payload: &[u8]) -> Result<Vec<u8>> {
    let mut stream = ns
        .enter(|| TcpStream::connect_timeout(&addr, ECHO_IO_TIMEOUT))?
        .map_err(|e| HarnessError::io(format!("connect to {addr} from {}", ns.name()), e))?;
    let ctx = |what: &str, e| HarnessError::io(format!("{what} {addr}"), e);
    stream
        .set_read_timeout(Some(ECHO_IO_TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(ECHO_IO_TIMEOUT)))
        .map_err(|e| ctx("set timeouts on", e))?;
    // Write and read concurrently: a payload larger than the socket buffers would otherwise
    // deadlock against the echo.
    let mut writer = stream.try_clone().map_err(|e| ctx("clone", e))?;
    let to_send = payload.to_vec();
    let sender = thread::spawn(move || {
        writer.write_all(&to_send)?;
        writer.shutdown(Shutdown::Write)
    });
    let mut back = Vec::with_capacity(payload.len());
    let read = stream.read_to_end(&mut back);
    let sent = sender.join().map_err(|_| HarnessError::Parse {
        what: "tcp_echo".into(),
        detail: "the sending thread panicked".into(),
    })?;
    sent.map_err(|e| ctx("send to", e))?;
    read.map_err(|e| ctx("read echo from", e))?;
    Ok(back)
}

/// A UDP socket bound to `addr` inside `ns`, with a read timeout of `timeout`.
pub fn udp_socket(ns: &Netns, addr: SocketAddr, timeout: Duration) -> Result<UdpSocket> {
    let sock = ns
        .enter(|| UdpSocket::bind(addr))?
        .map_err(|e| HarnessError::io(format!("bind UDP {addr} in {}", ns.name()), e))?;
    sock.set_read_timeout(Some(timeout))
        .map_err(|e| HarnessError::io("set UDP read timeout", e))?;
    Ok(sock)
}
