//! The companion's HTTP/1.1 server, for the management API and the diagnostics page: small,
//! bounded, and answering one request per connection.
//!
//! Why not tiny_http: its 0.12 drains an unread body by allocating it whole (one
//! `Content-Length: 1000000000000` aborted the process), blocks a worker per slow body with
//! no timeout, runs a thread per connection and reads header lines without a limit. Patching
//! all four touches its core (its connection threads and reader chain), and a bounding front
//! would still leave its threads behind it. This server is about 600 lines besides tests and
//! adds only httparse (already in the agent) and nix's `poll`; measured, the static aarch64
//! companion went from 2,972,576 bytes (tiny_http) to 2,896,008 (budget: 3 MiB), and under the
//! floods of issue 8 the release companion stayed at 5.2-5.7 MiB RSS and 12 threads
//! (tests-hw/tests/mgmt_attacks.rs; the tiny_http debug build: 1041 threads, 36 MiB, or an
//! abort).
//!
//! Shape ([`serve`]): one I/O thread polls the listener and every open connection
//! (nonblocking sockets, `poll(2)`), reads each request into a buffer that never grows past
//! its cap, and hands complete requests to a fixed pool of worker threads through a bounded
//! queue. Limits ([`Limits`]):
//! - head at most 16 KiB (431), body at most 16 KiB (413: refused from the declared length
//!   or chunk sizes, before any of it is read);
//! - head within 10 s of the accept, body within 10 s of the head (408);
//! - a fixed connection budget; when it is full a new connection still gets in, by closing the
//!   oldest unfinished connection of the source address holding the most (per-source fairness:
//!   a flood from one address evicts only itself);
//! - a PROXY v2 header is honoured only from a loopback peer (the agent's relay), so the real
//!   caller's address reaches the handler and the failed-auth limiter.
//!
//! Every answer carries `Connection: close`. Error answers go out from the I/O thread, then the
//! connection lingers at most [`LINGER`] reading into a fixed scratch buffer (at most
//! [`LINGER_BYTES`]) so the answer is not lost to a reset.

pub mod chunked;
pub mod head;
mod server;

pub use chunked::{decode_chunked, ChunkError};
pub use head::{parse_head, Framing, Head, HeadError};
pub use server::{serve, Handler, Limits, Request, Responder, Response, LINGER, LINGER_BYTES};
