//! Batched datagram I/O: one `recvmmsg` or `sendmmsg` call moves up to `N` datagrams, on a
//! connected, non-blocking socket (no addresses travel with them).

use std::io;
use std::os::fd::RawFd;

use super::check;

/// Receives up to `N` datagrams without blocking into consecutive `slot`-byte slots of `data`
/// (which holds at least `N` slots). `lens[i]` becomes datagram `i`'s length, or 0 when it did
/// not fit its slot. Returns how many arrived, or `WouldBlock` when none is waiting.
pub fn recv_slots<const N: usize>(
    fd: RawFd,
    data: &mut [u8],
    slot: usize,
    lens: &mut [usize; N],
) -> io::Result<usize> {
    assert!(data.len() >= N * slot, "{} slots of {slot} bytes", N);
    // SAFETY: iovec and mmsghdr are plain old data; all-zero is valid.
    let mut iov: [libc::iovec; N] = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let mut hdr: [libc::mmsghdr; N] = unsafe { std::mem::zeroed() };
    for (i, chunk) in data.chunks_exact_mut(slot).take(N).enumerate() {
        iov[i].iov_base = chunk.as_mut_ptr().cast();
        iov[i].iov_len = slot;
        hdr[i].msg_hdr.msg_iov = &mut iov[i];
        hdr[i].msg_hdr.msg_iovlen = 1;
    }
    // SAFETY: every header points at a distinct slot of `data`, exclusively borrowed for the
    // call.
    let n = check(unsafe {
        libc::recvmmsg(
            fd,
            hdr.as_mut_ptr(),
            N as libc::c_uint,
            libc::MSG_DONTWAIT as _,
            std::ptr::null_mut(),
        )
    })?;
    for (len, h) in lens.iter_mut().zip(&hdr).take(n) {
        let truncated = h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
        *len = if truncated { 0 } else { h.msg_len as usize };
    }
    Ok(n)
}

/// Sends the first `N` of `datagrams` without blocking. Returns how many the kernel took
/// (possibly fewer), or the error of the first one.
pub fn send_many<'a, const N: usize>(
    fd: RawFd,
    datagrams: impl IntoIterator<Item = &'a [u8]>,
) -> io::Result<usize> {
    // SAFETY: iovec and mmsghdr are plain old data; all-zero is valid.
    let mut iov: [libc::iovec; N] = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let mut hdr: [libc::mmsghdr; N] = unsafe { std::mem::zeroed() };
    let mut count = 0;
    for d in datagrams.into_iter().take(N) {
        iov[count].iov_base = d.as_ptr() as *mut libc::c_void;
        iov[count].iov_len = d.len();
        hdr[count].msg_hdr.msg_iov = &mut iov[count];
        hdr[count].msg_hdr.msg_iovlen = 1;
        count += 1;
    }
    if count == 0 {
        return Ok(0);
    }
    // SAFETY: the headers point at the borrowed datagrams, alive for the call; the kernel only
    // reads them.
    check(unsafe {
        libc::sendmmsg(
            fd,
            hdr.as_mut_ptr(),
            count as libc::c_uint,
            libc::MSG_DONTWAIT as _,
        )
    })
}
