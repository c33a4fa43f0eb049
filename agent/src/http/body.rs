//! Body framing (RFC 9112 §6 and §7.1): where a message body ends, so that keep-alive stays in
//! sync, and the streaming copy of a body from one side to the other.
//!
//! Bodies are passed through verbatim (a chunked body stays chunked, trailers included); the
//! chunked decoder only tracks the chunk boundaries to find the end of the message.

use std::io::{self, IoSlice};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::buf::IoBuf;

/// Longest chunk-size line (size plus extensions) accepted, in bytes.
pub(crate) const MAX_CHUNK_LINE_BYTES: usize = 4 * 1024;
/// Largest trailer section accepted after the last chunk, in bytes.
pub(crate) const MAX_TRAILER_BYTES: usize = 16 * 1024;

/// How the body of a message is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BodyKind {
    /// No body at all.
    None,
    /// Exactly this many bytes (`Content-Length`).
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Everything until the sender closes (responses only).
    UntilClose,
}

/// Why a body could not be relayed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CopyError {
    /// Reading from the sending side failed (an idle timeout shows as `TimedOut`).
    #[error("read failed: {0}")]
    Read(io::Error),
    /// The sending side closed before the end of the body.
    #[error("the sender closed before the end of the body")]
    Truncated,
    /// Writing to the receiving side failed.
    #[error("write failed: {0}")]
    Write(io::Error),
    /// The chunked framing is malformed.
    #[error("malformed chunked body: {0}")]
    Framing(&'static str),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading the hex digits of a chunk size.
    Size { digits: u8 },
    /// Skipping a chunk extension (or whitespace) up to CR.
    Ext,
    /// Expecting the LF that ends the size line.
    SizeLf,
    /// Inside chunk data, this many bytes left.
    Data(u64),
    /// Expecting the CR after chunk data.
    DataCr,
    /// Expecting the LF after chunk data.
    DataLf,
    /// At the start of a trailer line (or the final CRLF).
    TrailerStart,
    /// Inside a trailer field line.
    Trailer,
    /// Expecting the LF that ends a trailer line.
    TrailerLf,
    /// Expecting the LF of the final empty line.
    EndLf,
    /// The whole chunked body has been seen.
    Done,
}

/// A sans-IO tracker of chunked framing: fed the raw body bytes, it says how many of them belong
/// to the body and when the body (last chunk and trailers) is complete.
#[derive(Debug)]
pub(crate) struct Chunked {
    state: State,
    size: u64,
    line: usize,
    trailer: usize,
}

impl Default for Chunked {
    fn default() -> Self {
        Chunked {
            state: State::Size { digits: 0 },
            size: 0,
            line: 0,
            trailer: 0,
        }
    }
}

impl Chunked {
    /// True once the terminating empty line after the last chunk has been consumed.
    pub(crate) fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Consumes framing from `input`; returns how many bytes belong to this body (all of
    /// `input`, or fewer when the body ends inside it).
    pub(crate) fn feed(&mut self, input: &[u8]) -> Result<usize, CopyError> {
        let mut i = 0;
        while i < input.len() {
            match self.state {
                State::Done => return Ok(i),
                State::Data(left) => {
                    let take = left.min((input.len() - i) as u64);
                    i += take as usize;
                    self.state = if take == left {
                        State::DataCr
                    } else {
                        State::Data(left - take)
                    };
                    continue;
                }
                _ => {}
            }
            let b = input[i];
            i += 1;
            self.state = match self.state {
                State::Size { digits } => {
                    self.line += 1;
                    if let Some(v) = (b as char).to_digit(16) {
                        if digits >= 15 {
                            return Err(CopyError::Framing("chunk size too large"));
                        }
                        self.size = self.size * 16 + u64::from(v);
                        State::Size { digits: digits + 1 }
                    } else if digits == 0 {
                        return Err(CopyError::Framing("chunk size missing"));
                    } else if b == b'\r' {
                        State::SizeLf
                    } else if b == b';' || b == b' ' || b == b'\t' {
                        State::Ext
                    } else {
                        return Err(CopyError::Framing("bad character in chunk size"));
                    }
                }
                State::Ext => {
                    self.line += 1;
                    if self.line > MAX_CHUNK_LINE_BYTES {
                        return Err(CopyError::Framing("chunk size line too long"));
                    }
                    if b == b'\r' {
                        State::SizeLf
                    } else if b == b'\n' {
                        return Err(CopyError::Framing("bare LF in chunk size line"));
                    } else {
                        State::Ext
                    }
                }
                State::SizeLf => {
                    if b != b'\n' {
                        return Err(CopyError::Framing("chunk size line not ended by CRLF"));
                    }
                    self.line = 0;
                    let size = std::mem::take(&mut self.size);
                    if size == 0 {
                        State::TrailerStart
                    } else {
                        State::Data(size)
                    }
                }
                State::DataCr if b == b'\r' => State::DataLf,
                State::DataLf if b == b'\n' => State::Size { digits: 0 },
                State::DataCr | State::DataLf => {
                    return Err(CopyError::Framing("chunk data not followed by CRLF"))
                }
                State::TrailerStart | State::Trailer => {
                    self.trailer += 1;
                    if self.trailer > MAX_TRAILER_BYTES {
                        return Err(CopyError::Framing("trailer section too large"));
                    }
                    match (self.state, b) {
                        (State::TrailerStart, b'\r') => State::EndLf,
                        (_, b'\r') => State::TrailerLf,
                        (_, b'\n') => return Err(CopyError::Framing("bare LF in trailer")),
                        _ => State::Trailer,
                    }
                }
                State::TrailerLf if b == b'\n' => State::TrailerStart,
                State::EndLf if b == b'\n' => State::Done,
                State::TrailerLf | State::EndLf => {
                    return Err(CopyError::Framing("trailer line not ended by CRLF"))
                }
                State::Data(_) | State::Done => unreachable!("handled above"),
            };
        }
        Ok(i)
    }
}

/// Writes `a` then `b` completely, with vectored writes (one system call for a head and the
/// start of its body in the common case).
pub(crate) async fn write_two<W: AsyncWrite + Unpin + ?Sized>(
    w: &mut W,
    mut a: &[u8],
    mut b: &[u8],
) -> io::Result<()> {
    while !a.is_empty() || !b.is_empty() {
        let n = if a.is_empty() {
            w.write(b).await?
        } else if b.is_empty() {
            w.write(a).await?
        } else {
            w.write_vectored(&[IoSlice::new(a), IoSlice::new(b)])
                .await?
        };
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        let from_a = n.min(a.len());
        a = &a[from_a..];
        b = &b[n - from_a..];
    }
    Ok(())
}

/// Streams one body of `kind` from `src` (starting with what `buf` already holds) to `dst`,
/// writing `prefix` (a message head) in front of the first body bytes. Returns the number of
/// body bytes relayed. Every read and write is bounded by `idle`. Bytes past the end of the
/// body stay in `buf`.
pub(crate) async fn copy_body<R, W>(
    src: &mut R,
    buf: &mut IoBuf,
    dst: &mut W,
    kind: BodyKind,
    prefix: &[u8],
    idle: Duration,
) -> Result<u64, CopyError>
where
    R: AsyncRead + Unpin + ?Sized,
    W: AsyncWrite + Unpin + ?Sized,
{
    let mut prefix = prefix;
    let mut left = match kind {
        BodyKind::Length(n) => n,
        _ => u64::MAX,
    };
    let mut chunked = Chunked::default();
    let mut total = 0u64;
    loop {
        let done = match kind {
            BodyKind::None => true,
            BodyKind::Length(_) => left == 0,
            BodyKind::Chunked => chunked.is_done(),
            BodyKind::UntilClose => false,
        };
        if done {
            if !prefix.is_empty() {
                bounded(idle, write_two(dst, prefix, &[]))
                    .await
                    .map_err(CopyError::Write)?;
            }
            bounded(idle, dst.flush()).await.map_err(CopyError::Write)?;
            return Ok(total);
        }
        if buf.is_empty() {
            if !prefix.is_empty() {
                // Send the head now: the other side may wait for it before sending (or the
                // sender may wait for an interim answer, as with `Expect: 100-continue`).
                bounded(idle, write_two(dst, prefix, &[]))
                    .await
                    .map_err(CopyError::Write)?;
                bounded(idle, dst.flush()).await.map_err(CopyError::Write)?;
                prefix = &[];
            }
            let n = bounded(idle, buf.fill_from(src))
                .await
                .map_err(CopyError::Read)?;
            if n == 0 {
                if kind == BodyKind::UntilClose {
                    bounded(idle, dst.flush()).await.map_err(CopyError::Write)?;
                    return Ok(total);
                }
                return Err(CopyError::Truncated);
            }
        }
        let avail = buf.filled();
        let take = match kind {
            BodyKind::Length(_) => left.min(avail.len() as u64) as usize,
            BodyKind::Chunked => chunked.feed(avail)?,
            _ => avail.len(),
        };
        bounded(idle, write_two(dst, prefix, &avail[..take]))
            .await
            .map_err(CopyError::Write)?;
        prefix = &[];
        buf.consume(take);
        left = left.saturating_sub(take as u64);
        total += take as u64;
    }
}

/// Runs `fut` with a time limit, mapping the elapsed limit to a `TimedOut` I/O error.
pub(crate) async fn bounded<T>(
    limit: Duration,
    fut: impl std::future::Future<Output = io::Result<T>>,
) -> io::Result<T> {
    match tokio::time::timeout(limit, fut).await {
        Ok(r) => r,
        Err(_) => Err(io::ErrorKind::TimedOut.into()),
    }
}

impl CopyError {
    /// True when the error is an elapsed idle timeout (on either side).
    pub(crate) fn is_timeout(&self) -> bool {
        match self {
            CopyError::Read(e) | CopyError::Write(e) => e.kind() == io::ErrorKind::TimedOut,
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed_all(input: &[u8], step: usize) -> Result<(usize, bool), CopyError> {
        let mut c = Chunked::default();
        let mut used = 0;
        for part in input.chunks(step) {
            let n = c.feed(part)?;
            used += n;
            if n < part.len() || c.is_done() {
                break;
            }
        }
        Ok((used, c.is_done()))
    }

    #[test]
    fn chunked_end_is_found_at_any_split_and_the_rest_is_left() {
        let body =
            b"4;ext=1\r\nWiki\r\n5\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\nX-T: 1\r\n\r\n";
        let mut input = body.to_vec();
        input.extend_from_slice(b"GET / HTTP/1.1\r\n");
        for step in 1..input.len() {
            let (used, done) = feed_all(&input, step).unwrap();
            assert!(done, "step {step}");
            assert_eq!(used, body.len(), "step {step}");
        }
    }

    #[test]
    fn chunked_rejects_bad_framing() {
        for bad in [
            &b"x\r\n"[..],
            b"\r\n",
            b"4\r\nWikiXX",
            b"0\r\nbad\n",
            b"4\n",
            b"10000000000000000\r\n",
        ] {
            assert!(
                feed_all(bad, 64).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn chunked_incomplete_is_not_done() {
        let (used, done) = feed_all(b"5\r\nhel", 64).unwrap();
        assert_eq!(used, 6);
        assert!(!done);
    }

    #[tokio::test]
    async fn length_body_stops_at_its_end_and_keeps_the_rest() {
        let mut src: &[u8] = b"0123456789NEXT";
        let mut buf = IoBuf::new(4);
        let mut out = Vec::new();
        let n = copy_body(
            &mut src,
            &mut buf,
            &mut out,
            BodyKind::Length(10),
            b"H:",
            Duration::from_secs(1),
        )
        .await
        .unwrap();
        assert_eq!(n, 10);
        assert_eq!(out, b"H:0123456789");
        let mut rest = buf.filled().to_vec();
        rest.extend_from_slice(src);
        assert_eq!(rest, b"NEXT");
    }

    #[tokio::test]
    async fn truncated_length_body_is_an_error() {
        let mut src: &[u8] = b"0123";
        let mut buf = IoBuf::new(64);
        let mut out = Vec::new();
        let r = copy_body(
            &mut src,
            &mut buf,
            &mut out,
            BodyKind::Length(10),
            b"",
            Duration::from_secs(1),
        )
        .await;
        assert!(matches!(r, Err(CopyError::Truncated)));
    }
}
