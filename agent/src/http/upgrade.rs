//! After a `101 Switching Protocols`: raw bytes both ways until both sides are done.
//!
//! End of stream on one side is passed on as a write shutdown to the other (half-close), and the
//! other direction keeps going. An error on either direction ends both. The relay ends when no
//! byte moved in either direction for the idle timeout.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

use super::body::{bounded, write_two};
use super::buf::IoBuf;

/// Milliseconds since `epoch` of the last byte moved in either direction.
struct Activity {
    epoch: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    fn touch(&self) {
        let ms = self.epoch.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    fn idle_for(&self) -> Duration {
        let now = self.epoch.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.last_ms.load(Ordering::Relaxed)))
    }
}

/// Copies `src` to `dst` through `buf` (starting with what `buf` holds) until end of stream,
/// then shuts `dst`'s write side down. Returns the bytes copied.
async fn pump<R, W>(
    src: &mut R,
    dst: &mut W,
    buf: &mut IoBuf,
    activity: &Activity,
    idle: Duration,
) -> io::Result<u64>
where
    R: AsyncRead + Unpin + ?Sized,
    W: AsyncWrite + Unpin + ?Sized,
{
    let mut total = 0u64;
    loop {
        if !buf.is_empty() {
            let n = buf.len();
            bounded(idle, write_two(dst, buf.filled(), &[])).await?;
            bounded(idle, dst.flush()).await?;
            buf.consume(n);
            total += n as u64;
            activity.touch();
        }
        match tokio::time::timeout(idle, buf.fill_from(src)).await {
            Err(_) => {
                if activity.idle_for() >= idle {
                    return Err(io::ErrorKind::TimedOut.into());
                }
            }
            Ok(Ok(0)) => {
                let _ = bounded(idle, dst.shutdown()).await;
                return Ok(total);
            }
            Ok(Ok(_)) => activity.touch(),
            Ok(Err(e)) => return Err(e),
        }
    }
}

/// Relays both directions: client to backend through `cbuf`, backend to client through `bbuf`
/// (bytes already buffered on either side go first). Returns (client to backend, backend to
/// client) byte counts.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn relay<CR, CW, BR, BW>(
    cr: &mut CR,
    cw: &mut CW,
    cbuf: &mut IoBuf,
    br: &mut BR,
    bw: &mut BW,
    bbuf: &mut IoBuf,
    idle: Duration,
) -> (u64, u64)
where
    CR: AsyncRead + Unpin + ?Sized,
    CW: AsyncWrite + Unpin + ?Sized,
    BR: AsyncRead + Unpin + ?Sized,
    BW: AsyncWrite + Unpin + ?Sized,
{
    let activity = Activity {
        epoch: Instant::now(),
        last_ms: AtomicU64::new(0),
    };
    let up = pump(cr, bw, cbuf, &activity, idle);
    let down = pump(br, cw, bbuf, &activity, idle);
    tokio::pin!(up, down);
    let (mut up_n, mut down_n) = (None, None);
    while up_n.is_none() || down_n.is_none() {
        tokio::select! {
            r = &mut up, if up_n.is_none() => match r {
                Ok(n) => up_n = Some(n),
                Err(_) => break,
            },
            r = &mut down, if down_n.is_none() => match r {
                Ok(n) => down_n = Some(n),
                Err(_) => break,
            },
        }
    }
    (up_n.unwrap_or(0), down_n.unwrap_or(0))
}
