//! The one fixed-size buffer each side of a proxied connection reads into.
//!
//! A request or response head must fit in it whole (that is the header size limit), and bodies
//! are streamed through it a buffer at a time. Bytes past the end of a head (the start of the
//! body, or a pipelined next request) stay in it for the next step to consume.

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt};

/// A fixed-capacity byte buffer with a read cursor (`start`) and a fill mark (`end`).
pub(crate) struct IoBuf {
    data: Box<[u8]>,
    start: usize,
    end: usize,
}

impl IoBuf {
    /// An empty buffer of `capacity` bytes (zeroed lazily by the allocator).
    pub(crate) fn new(capacity: usize) -> Self {
        IoBuf {
            data: vec![0u8; capacity].into_boxed_slice(),
            start: 0,
            end: 0,
        }
    }

    /// The bytes read but not consumed yet.
    pub(crate) fn filled(&self) -> &[u8] {
        &self.data[self.start..self.end]
    }

    /// True when no unconsumed byte is buffered.
    pub(crate) fn is_empty(&self) -> bool {
        self.start == self.end
    }

    /// Number of unconsumed bytes.
    pub(crate) fn len(&self) -> usize {
        self.end - self.start
    }

    /// True when the buffer cannot take another byte (even after compaction).
    pub(crate) fn is_full(&self) -> bool {
        self.len() == self.data.len()
    }

    /// Marks `n` buffered bytes as consumed.
    pub(crate) fn consume(&mut self, n: usize) {
        self.start = (self.start + n).min(self.end);
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// Reads once from `src` into the free space (moving unconsumed bytes to the front first
    /// when the tail is full). Returns the number of bytes read; 0 means end of stream (or a
    /// full buffer, which callers check with [`IoBuf::is_full`] first).
    pub(crate) async fn fill_from<R: AsyncRead + Unpin + ?Sized>(
        &mut self,
        src: &mut R,
    ) -> io::Result<usize> {
        if self.end == self.data.len() && self.start > 0 {
            self.data.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.end == self.data.len() {
            return Ok(0);
        }
        let n = src.read(&mut self.data[self.end..]).await?;
        self.end += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn fill_compacts_when_the_tail_is_full_and_consume_resets() {
        let mut b = IoBuf::new(8);
        let mut src: &[u8] = b"abcdefghij";
        assert_eq!(b.fill_from(&mut src).await.unwrap(), 8);
        assert!(b.is_full());
        b.consume(6);
        assert_eq!(b.filled(), b"gh");
        assert_eq!(b.fill_from(&mut src).await.unwrap(), 2);
        assert_eq!(b.filled(), b"ghij");
        b.consume(4);
        assert!(b.is_empty());
        assert_eq!(b.fill_from(&mut src).await.unwrap(), 0);
    }
}
