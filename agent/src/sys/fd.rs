//! `read(2)` and `write(2)` on a raw descriptor (the TUN device: one packet per call), and
//! descriptors registered with tokio's reactor.

use std::io;
use std::os::fd::{AsFd, AsRawFd, RawFd};

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use super::check_size;

/// Reads at most `buf.len()` bytes from `fd`.
pub fn read(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for writes of its length.
    check_size(unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) })
}

/// Writes `data` to `fd`.
pub fn write(fd: RawFd, data: &[u8]) -> io::Result<usize> {
    // SAFETY: `data` is valid for reads of its length.
    check_size(unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) })
}

/// `inner` registered with the runtime's reactor (tokio made this `unsafe`: the descriptor must
/// stay open and be the same one while the `AsyncFd` lives). `AsFd` is that promise: its
/// descriptor is valid for as long as `inner` is, and `inner` is moved into the `AsyncFd`.
pub fn register<T: AsFd + AsRawFd>(inner: T) -> io::Result<AsyncFd<T>> {
    // SAFETY: `inner` owns or lawfully borrows its descriptor for its whole life (AsFd's
    // contract) and the AsyncFd owns `inner`, so the descriptor outlives the registration.
    unsafe { AsyncFd::register(inner) }.map_err(io::Error::from)
}

/// As [`register`], for the readiness in `interest` only: a descriptor that two threads
/// register, each for one direction, then wakes each only for its own (a UDP socket wakes a
/// writer's epoll for every datagram the kernel frees, a reader's for every one that arrives).
pub fn register_with<T: AsFd + AsRawFd>(inner: T, interest: Interest) -> io::Result<AsyncFd<T>> {
    // SAFETY: as in `register`.
    unsafe { AsyncFd::register_with_interest(inner, interest) }.map_err(io::Error::from)
}
