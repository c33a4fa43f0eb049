//! Batched datagram I/O: one `recvmmsg` or `sendmmsg` call moves up to `N` datagrams, on a
//! connected, non-blocking socket (no addresses travel with them).

use std::io;
use std::os::fd::RawFd;

use super::check;

/// `UDP_GRO` (linux/udp.h; Linux 5.0): the socket option that lets the kernel hand over a run
/// of datagrams of one flow as one (UDP GRO), and the control message that then carries their
/// size. libc names it only for some targets.
pub const UDP_GRO: libc::c_int = 104;

/// Receives up to `count` (at most `N`) datagrams without blocking into consecutive
/// `slot`-byte slots of `data` (which holds at least `count` slots). `lens[i]` becomes
/// datagram `i`'s length, or 0 when it did not fit its slot; `segs[i]` the size of the
/// datagrams the kernel joined into it with UDP GRO (each that long, the last possibly
/// shorter), 0 when it is one datagram. Returns how many arrived, or `WouldBlock` when none
/// is waiting.
pub fn recv_slots<const N: usize>(
    fd: RawFd,
    data: &mut [u8],
    slot: usize,
    count: usize,
    lens: &mut [usize; N],
    segs: &mut [usize; N],
) -> io::Result<usize> {
    let count = count.min(N);
    assert!(data.len() >= count * slot, "{count} slots of {slot} bytes");
    // SAFETY: iovec and mmsghdr are plain old data; all-zero is valid.
    let mut iov: [libc::iovec; N] = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let mut hdr: [libc::mmsghdr; N] = unsafe { std::mem::zeroed() };
    // Room for one control message per datagram, aligned for cmsghdr: CMSG_SPACE(4) is at
    // most 24 bytes.
    let mut control = [[0u64; 4]; N];
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<libc::c_int>() as u32) } as usize;
    for (i, chunk) in data.chunks_exact_mut(slot).take(count).enumerate() {
        iov[i].iov_base = chunk.as_mut_ptr().cast();
        iov[i].iov_len = slot;
        hdr[i].msg_hdr.msg_iov = &mut iov[i];
        hdr[i].msg_hdr.msg_iovlen = 1;
        hdr[i].msg_hdr.msg_control = control[i].as_mut_ptr().cast();
        hdr[i].msg_hdr.msg_controllen = space as _;
    }
    // SAFETY: every header points at a distinct slot of `data` and a distinct control
    // buffer, exclusively borrowed for the call.
    let n = check(unsafe {
        libc::recvmmsg(
            fd,
            hdr.as_mut_ptr(),
            count as libc::c_uint,
            libc::MSG_DONTWAIT as _,
            std::ptr::null_mut(),
        )
    })?;
    for i in 0..n {
        let h = &hdr[i].msg_hdr;
        let truncated = h.msg_flags & libc::MSG_TRUNC != 0;
        lens[i] = if truncated {
            0
        } else {
            hdr[i].msg_len as usize
        };
        segs[i] = 0;
        // SAFETY: the kernel set msg_controllen to the bytes it wrote into control[i];
        // CMSG_FIRSTHDR/CMSG_NXTHDR stay inside that length, and a UDP_GRO message carries
        // an int.
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(h);
            while !c.is_null() {
                if (*c).cmsg_level == libc::SOL_UDP && (*c).cmsg_type == UDP_GRO {
                    let size = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<libc::c_int>());
                    segs[i] = usize::try_from(size).unwrap_or(0);
                }
                c = libc::CMSG_NXTHDR(h, c);
            }
        }
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

/// `UDP_SEGMENT` (linux/udp.h; Linux 4.18): the control message that asks the kernel to cut
/// one send into datagrams of the given size (UDP GSO). libc names it only for some targets.
const UDP_SEGMENT: libc::c_int = 103;
/// Datagrams the kernel cuts one send into at most (`UDP_MAX_SEGMENTS`).
const MAX_SEGMENTS: usize = 64;
/// Bytes of one segmented send at most: under the 64 KiB an IP packet may carry.
const MAX_SEGMENTED_BYTES: usize = 65_000;

/// How consecutive datagrams form the messages of a segmented send: a run of equal sizes, of
/// which the last may be shorter (it ends the run), within [`MAX_SEGMENTS`] and
/// [`MAX_SEGMENTED_BYTES`]. Returns, per message, its first datagram, its datagram count and
/// its segment size.
fn group_runs<const N: usize>(lens: &[usize]) -> ([(usize, usize, usize); N], usize) {
    let mut groups = [(0, 0, 0); N];
    let mut count = 0;
    let mut bytes = 0;
    let mut closed = true;
    for (i, &len) in lens.iter().enumerate() {
        let joins = !closed && {
            let (_, n, seg) = groups[count - 1];
            len <= seg && n < MAX_SEGMENTS && bytes + len <= MAX_SEGMENTED_BYTES
        };
        if joins {
            let g = &mut groups[count - 1];
            g.1 += 1;
            bytes += len;
            closed = len < g.2;
        } else {
            if count == N {
                break;
            }
            groups[count] = (i, 1, len);
            count += 1;
            bytes = len;
            closed = false;
        }
    }
    (groups, count)
}

/// Sends the first `N` of `datagrams` without blocking, runs of equal-size datagrams as one
/// message each that the kernel cuts into datagrams (UDP GSO): one trip through the stack
/// per run instead of per datagram. Returns how many datagrams the kernel took (whole runs,
/// possibly fewer than given), or the error of the first run. A kernel or device without UDP
/// GSO answers `EIO`, `EINVAL` or `ENOPROTOOPT`; send with [`send_many`] then.
pub fn send_segmented<'a, const N: usize>(
    fd: RawFd,
    datagrams: impl IntoIterator<Item = &'a [u8]>,
) -> io::Result<usize> {
    // SAFETY: iovec and mmsghdr are plain old data; all-zero is valid.
    let mut iov: [libc::iovec; N] = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let mut hdr: [libc::mmsghdr; N] = unsafe { std::mem::zeroed() };
    let mut lens = [0usize; N];
    let mut count = 0;
    for d in datagrams.into_iter().take(N) {
        iov[count].iov_base = d.as_ptr() as *mut libc::c_void;
        iov[count].iov_len = d.len();
        lens[count] = d.len();
        count += 1;
    }
    if count == 0 {
        return Ok(0);
    }
    let (groups, messages) = group_runs::<N>(&lens[..count]);
    // One control message per send, aligned for cmsghdr: CMSG_SPACE(2) is at most 24 bytes.
    let mut control = [[0u64; 4]; N];
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<u16>() as u32) } as usize;
    for (m, &(first, n, seg)) in groups[..messages].iter().enumerate() {
        let h = &mut hdr[m].msg_hdr;
        h.msg_iov = &mut iov[first];
        h.msg_iovlen = n as _;
        if n > 1 {
            h.msg_control = control[m].as_mut_ptr().cast();
            h.msg_controllen = space as _;
            // SAFETY: msg_control points at `space` zeroed bytes aligned for cmsghdr, so the
            // first header and its data lie inside that buffer.
            unsafe {
                let c = libc::CMSG_FIRSTHDR(h);
                (*c).cmsg_level = libc::SOL_UDP;
                (*c).cmsg_type = UDP_SEGMENT;
                (*c).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<u16>() as u32) as _;
                std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<u16>(), seg as u16);
            }
        }
    }
    // SAFETY: the headers point at the borrowed datagrams and at `control`, alive for the
    // call; the kernel only reads them.
    let sent = check(unsafe {
        libc::sendmmsg(
            fd,
            hdr.as_mut_ptr(),
            messages as libc::c_uint,
            libc::MSG_DONTWAIT as _,
        )
    })?;
    Ok(groups[..sent].iter().map(|g| g.1).sum())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Per message: its first datagram, datagram count and segment size.
    type Messages = &'static [(usize, usize, usize)];

    #[test]
    fn runs_of_equal_sizes_form_one_message_each() {
        // (datagram sizes, expected messages)
        let table: &[(&[usize], Messages)] = &[
            (&[1400, 1400, 1400], &[(0, 3, 1400)]),
            (&[1400, 1400, 900, 1400], &[(0, 3, 1400), (3, 1, 1400)]),
            (&[900, 1400, 1400], &[(0, 1, 900), (1, 2, 1400)]),
            (&[100, 100, 100, 60, 60], &[(0, 4, 100), (4, 1, 60)]),
            (&[1500; 50], &[(0, 43, 1500), (43, 7, 1500)]),
            (&[10; 70], &[(0, 64, 10), (64, 6, 10)]),
            (&[], &[]),
        ];
        for (lens, want) in table {
            let (groups, n) = group_runs::<128>(lens);
            assert_eq!(&groups[..n], *want, "{lens:?}");
        }
        // More messages than N: the rest waits for the next send.
        let (groups, n) = group_runs::<2>(&[1, 2, 3]);
        assert_eq!(&groups[..n], &[(0, 1, 1), (1, 1, 2)]);
    }
}
