//! The one buffer each side of a proxied connection reads into.
//!
//! A request or response head must fit in it whole (its largest size is the header size limit),
//! and bodies are streamed through it a buffer at a time. Bytes past the end of a head (the
//! start of the body, or a pipelined next request) stay in it for the next step to consume.
//! It starts small ([`INITIAL_BYTES`]: a connection that only sends a few bytes, like a slow
//! client's, costs little) and doubles up to its largest size when a head does not fit or a read
//! fills all the free space (a bulk transfer).
//!
//! Buffers of the starting size are reused: a released one goes to a small per-thread free list
//! ([`FREE_KEPT`] at most) and the next connection takes it instead of a fresh zeroed
//! allocation. With a connection per request (`Connection: close`) the two fresh buffers per
//! request were 13 % of the proxy's instructions in zeroing and more in the allocator
//! (issue 15). A reused buffer's old bytes are never seen: only the bytes read into it since
//! ([`IoBuf::filled`]) are.

use std::cell::RefCell;
use std::io;

use tokio::io::{AsyncRead, AsyncReadExt};

/// Size a buffer starts with, in bytes (most request and response heads fit).
pub(crate) const INITIAL_BYTES: usize = 2048;
/// Most released buffers of [`INITIAL_BYTES`] kept for reuse, per thread (128 KiB).
pub(crate) const FREE_KEPT: usize = 64;

thread_local! {
    /// Released buffers of [`INITIAL_BYTES`], for the next connections of this thread.
    static FREE: RefCell<Vec<Box<[u8]>>> = const { RefCell::new(Vec::new()) };
}

/// A buffer of [`INITIAL_BYTES`]: a released one if there is one, else a new one.
fn take_initial() -> Box<[u8]> {
    FREE.try_with(|f| f.borrow_mut().pop())
        .ok()
        .flatten()
        .unwrap_or_else(|| vec![0u8; INITIAL_BYTES].into_boxed_slice())
}

/// Keeps `data` for reuse when it has the starting size and the free list has room.
fn release(data: Box<[u8]>) {
    if data.len() == INITIAL_BYTES {
        let _ = FREE.try_with(|f| {
            let mut f = f.borrow_mut();
            if f.len() < FREE_KEPT {
                f.push(data);
            }
        });
    }
}

/// A byte buffer of bounded capacity with a read cursor (`start`) and a fill mark (`end`).
/// (Positions are `u32`: every idle connection's task holds two of these.)
pub(crate) struct IoBuf {
    data: Box<[u8]>,
    start: u32,
    end: u32,
    max: u32,
    /// The last read filled all the free space: grow before the next one.
    grow: bool,
}

impl IoBuf {
    /// An empty buffer that grows up to `capacity` bytes.
    pub(crate) fn new(capacity: usize) -> Self {
        let max = capacity.min(u32::MAX as usize);
        let data = if max >= INITIAL_BYTES {
            take_initial()
        } else {
            vec![0u8; max].into_boxed_slice()
        };
        IoBuf {
            data,
            start: 0,
            end: 0,
            max: max as u32,
            grow: false,
        }
    }

    /// The bytes read but not consumed yet.
    pub(crate) fn filled(&self) -> &[u8] {
        &self.data[self.start as usize..self.end as usize]
    }

    /// True when no unconsumed byte is buffered.
    pub(crate) fn is_empty(&self) -> bool {
        self.start == self.end
    }

    /// Number of unconsumed bytes.
    pub(crate) fn len(&self) -> usize {
        (self.end - self.start) as usize
    }

    /// True when the buffer cannot take another byte (even after compaction and growth).
    pub(crate) fn is_full(&self) -> bool {
        self.len() >= self.max as usize
    }

    /// Marks `n` buffered bytes as consumed.
    pub(crate) fn consume(&mut self, n: usize) {
        let n = n.min(self.len()) as u32;
        self.start += n;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    fn grow_to(&mut self, size: usize) {
        let mut bigger = vec![0u8; size].into_boxed_slice();
        let len = self.len();
        bigger[..len].copy_from_slice(self.filled());
        release(std::mem::replace(&mut self.data, bigger));
        self.start = 0;
        self.end = len as u32;
    }

    /// Reads once from `src` into the free space (moving unconsumed bytes to the front, or
    /// growing, first when the tail is full). Returns the number of bytes read; 0 means end of
    /// stream (or a full buffer, which callers check with [`IoBuf::is_full`] first).
    pub(crate) async fn fill_from<R: AsyncRead + Unpin + ?Sized>(
        &mut self,
        src: &mut R,
    ) -> io::Result<usize> {
        let size = self.data.len();
        let max = self.max as usize;
        let (start, end) = (self.start as usize, self.end as usize);
        if size < max && (self.grow || (end == size && start == 0)) {
            self.grow_to((size * 2).min(max));
        } else if end == size && start > 0 {
            self.data.copy_within(start..end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        self.grow = false;
        let end = self.end as usize;
        if end == self.data.len() {
            return Ok(0);
        }
        let free = self.data.len() - end;
        let n = src.read(&mut self.data[end..]).await?;
        self.end += n as u32;
        self.grow = n == free;
        Ok(n)
    }

    /// The current capacity, in bytes.
    #[cfg(test)]
    pub(crate) fn capacity(&self) -> usize {
        self.data.len()
    }
}

impl Drop for IoBuf {
    fn drop(&mut self) {
        release(std::mem::take(&mut self.data));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A released buffer of the starting size is the next one's (no allocation), its old bytes
    /// unseen; the free list is bounded.
    #[tokio::test]
    async fn released_buffers_are_reused_and_their_bytes_unseen() {
        let mut b = IoBuf::new(4 * INITIAL_BYTES);
        let mut src: &[u8] = b"secret";
        b.fill_from(&mut src).await.unwrap();
        let at = b.data.as_ptr();
        drop(b);
        let b = IoBuf::new(4 * INITIAL_BYTES);
        assert_eq!(b.data.as_ptr(), at, "the released buffer was reused");
        assert!(b.is_empty());
        assert_eq!(b.filled(), b"");
        drop(b);
        let many: Vec<IoBuf> = (0..FREE_KEPT + 10)
            .map(|_| IoBuf::new(INITIAL_BYTES))
            .collect();
        drop(many);
        assert_eq!(FREE.with(|f| f.borrow().len()), FREE_KEPT);
    }

    #[tokio::test]
    async fn starts_small_and_grows_for_a_large_head_or_a_bulk_transfer() {
        let mut b = IoBuf::new(4 * INITIAL_BYTES);
        assert_eq!(b.capacity(), INITIAL_BYTES);
        let mut few: &[u8] = b"GET / HTTP/1.1\r\n";
        b.fill_from(&mut few).await.unwrap();
        assert_eq!(b.capacity(), INITIAL_BYTES);
        // A head larger than the buffer: it grows, up to the limit, keeping the bytes.
        let big: Vec<u8> = (0..5 * INITIAL_BYTES).map(|i| (i % 251) as u8).collect();
        let mut src = &big[..];
        let mut got = b.filled().to_vec();
        b.consume(b.len());
        while !b.is_full() {
            if b.fill_from(&mut src).await.unwrap() == 0 {
                break;
            }
        }
        assert_eq!(b.capacity(), 4 * INITIAL_BYTES);
        assert!(b.is_full());
        got.extend_from_slice(b.filled());
        assert_eq!(got.len(), 16 + 4 * INITIAL_BYTES);
        assert!(
            got[16..] == big[..4 * INITIAL_BYTES],
            "bytes kept across growth"
        );
        // A bulk stream consumed as it comes: reads that fill the buffer make it grow.
        let mut b = IoBuf::new(4 * INITIAL_BYTES);
        let mut src = &big[..];
        let mut out = Vec::new();
        loop {
            let n = b.fill_from(&mut src).await.unwrap();
            if n == 0 {
                break;
            }
            out.extend_from_slice(b.filled());
            b.consume(n);
        }
        assert!(out == big, "every byte once, in order");
        assert_eq!(b.capacity(), 4 * INITIAL_BYTES);
    }

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
