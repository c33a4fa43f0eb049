//! The netstack's socket rings in anonymous memory maps, so that a multi-MiB window costs only
//! the pages that data has touched, and those pages go back to the kernel when the ring drains
//! ([`Ring::release`]). The tunnel's buffers use the same maps ([`Ring::zeroed`]): a zeroed
//! `Vec` is all resident on a static musl build, whose `calloc` writes the zeros itself (the
//! 2 MiB of UDP GRO slots were 2 MiB of the agent's idle memory).

use std::io;
use std::ptr::NonNull;

/// An anonymous private mapping of `len` bytes, zero-filled on first touch.
#[derive(Debug)]
pub struct Ring {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain memory owned by this value; nothing is tied to a thread.
unsafe impl Send for Ring {}
// SAFETY: shared references only read (`deref`, `len`, `resident`); writing and dropping pages
// (`deref_mut`, `release`) take `&mut self`.
unsafe impl Sync for Ring {}

impl Ring {
    /// Maps `len` bytes (address space only: no page is resident until written).
    pub fn new(len: usize) -> io::Result<Self> {
        // SAFETY: a fresh anonymous mapping at an address of the kernel's choice.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = NonNull::new(p.cast()).ok_or_else(|| io::Error::other("mmap returned null"))?;
        Ok(Ring { ptr, len })
    }

    /// `len` zero bytes that cost memory only where written (a slice through `Deref`); the
    /// allocator's failure handler runs when the kernel refuses the map (as for a `Vec`).
    pub fn zeroed(len: usize) -> Self {
        if len == 0 {
            // No map (mmap refuses zero bytes): an empty slice, nothing to unmap.
            return Ring {
                ptr: NonNull::dangling(),
                len: 0,
            };
        }
        Ring::new(len).unwrap_or_else(|_| {
            std::alloc::handle_alloc_error(
                std::alloc::Layout::from_size_align(len.max(1), 1).expect("a byte layout"),
            )
        })
    }

    /// Its size in bytes.
    #[allow(clippy::len_without_is_empty)] // `is_empty` comes with the slice (`Deref`)
    pub fn len(&self) -> usize {
        self.len
    }

    /// The mapping as the storage of one smoltcp ring.
    ///
    /// # Safety
    /// Call it at most once per `Ring`, and drop whatever holds the slice (the smoltcp
    /// socket) before the `Ring`: the memory is unmapped when the `Ring` is dropped.
    pub unsafe fn storage(&mut self) -> &'static mut [u8] {
        // SAFETY: `len` bytes at `ptr` are mapped read-write; the caller keeps the slice
        // unique and shorter-lived than the mapping.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }

    /// Gives the pages back to the kernel (they read as zeros afterwards). Call it only
    /// while the ring is empty, with the stack's lock held: the contents are then
    /// meaningless and nothing reads or writes them meanwhile. It takes `&mut self` so that
    /// no slice borrowed through `Deref` can see its bytes turn to zeros.
    pub fn release(&mut self) {
        if self.len == 0 {
            return;
        }
        // SAFETY: the range is our own mapping; MADV_DONTNEED on private anonymous memory
        // only replaces its pages with zero pages.
        let rc = unsafe { libc::madvise(self.ptr.as_ptr().cast(), self.len, libc::MADV_DONTNEED) };
        if rc != 0 {
            tracing::debug!(error = %io::Error::last_os_error(), "madvise failed");
        }
    }
}

impl Ring {
    /// Bytes of the ring resident in memory now (`mincore`; a diagnostic, it allocates).
    pub fn resident(&self) -> io::Result<usize> {
        if self.len == 0 {
            return Ok(0);
        }
        // SAFETY: sysconf has no memory effects.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) })
            .map_err(|_| io::Error::other("no page size"))?;
        let mut pages = vec![0u8; self.len.div_ceil(page)];
        // SAFETY: the range is our mapping; `pages` has one byte per page of it.
        let rc = unsafe { libc::mincore(self.ptr.as_ptr().cast(), self.len, pages.as_mut_ptr()) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(pages.iter().filter(|p| *p & 1 != 0).count() * page)
    }
}

/// The mapping's bytes, for safe code.
impl std::ops::Deref for Ring {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        // SAFETY: `len` bytes at `ptr` are mapped read-write for as long as `self` lives; the
        // slice borrows `self`. Only `storage` hands out a longer-lived slice, and its caller
        // promises never to use the `Ring` otherwise.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl std::ops::DerefMut for Ring {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as `deref`, and the borrow of `self` is unique.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        if self.len == 0 {
            return;
        }
        // SAFETY: our own mapping, unmapped once; its users are gone (see `storage`).
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.len);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_zeroed_map_reads_zeros_costs_pages_only_where_written_and_may_be_empty() {
        let mut r = Ring::zeroed(1 << 20);
        assert_eq!(r.len(), 1 << 20);
        r[100_000] = 7;
        // Only the written page is resident (mincore also counts pages that were only read,
        // which map the shared zero page: so the reads come after).
        assert!(
            r.resident().unwrap() <= 64 * 1024,
            "{}",
            r.resident().unwrap()
        );
        assert_eq!(r[100_000], 7);
        assert_eq!(r.iter().filter(|&&b| b != 0).count(), 1, "zeros elsewhere");
        let mut empty = Ring::zeroed(0);
        assert!(empty.is_empty());
        assert!(empty.iter_mut().next().is_none());
        assert_eq!(empty.resident().unwrap(), 0);
        empty.release();
    }
}
