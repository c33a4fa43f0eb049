//! The chunked transfer coding (RFC 9112 §7.1), decoded from a bounded buffer.
//!
//! [`decode_chunked`] is a pure function: it looks at everything received so far and says
//! whether the body is complete, still arriving, too large or malformed. The caller keeps the
//! raw buffer under its own cap, so re-reading it from the start is bounded work.

/// Longest chunk-size line (with extensions) or trailer line, in bytes.
pub const MAX_LINE: usize = 1024;

/// Why a chunked body is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    /// The decoded body would exceed the cap.
    #[error("chunked body over the size cap")]
    TooLarge,
    /// Not the chunked syntax.
    #[error("malformed chunked body")]
    Malformed,
}

/// Decodes the chunked body at the start of `raw`: `Ok(None)` while incomplete, else the
/// body and the bytes the coding took. Refuses as soon as the declared chunk sizes pass
/// `max_body`, before those bytes arrive.
pub fn decode_chunked(raw: &[u8], max_body: usize) -> Result<Option<(Vec<u8>, usize)>, ChunkError> {
    let mut pos = 0;
    let mut total = 0usize;
    let mut chunks: Vec<(usize, usize)> = Vec::new();
    loop {
        let Some(line) = line_at(raw, pos)? else {
            return Ok(None);
        };
        let size_part = line
            .split(|&b| b == b';')
            .next()
            .unwrap_or(&[])
            .trim_ascii();
        if size_part.is_empty()
            || size_part.len() > 8
            || !size_part.iter().all(u8::is_ascii_hexdigit)
        {
            return Err(ChunkError::Malformed);
        }
        let size = size_part.iter().fold(0usize, |n, &d| {
            n * 16 + (d as char).to_digit(16).unwrap_or(0) as usize
        });
        pos += line.len() + 2;
        if size == 0 {
            break;
        }
        total = total.checked_add(size).ok_or(ChunkError::TooLarge)?;
        if total > max_body {
            return Err(ChunkError::TooLarge);
        }
        if raw.len() < pos + size + 2 {
            return Ok(None);
        }
        if &raw[pos + size..pos + size + 2] != b"\r\n" {
            return Err(ChunkError::Malformed);
        }
        chunks.push((pos, size));
        pos += size + 2;
    }
    // Trailer fields, then the final blank line.
    loop {
        let Some(line) = line_at(raw, pos)? else {
            return Ok(None);
        };
        pos += line.len() + 2;
        if line.is_empty() {
            break;
        }
    }
    let mut body = Vec::with_capacity(total);
    for (at, n) in chunks {
        body.extend_from_slice(&raw[at..at + n]);
    }
    Ok(Some((body, pos)))
}

/// The line starting at `pos` (without its CRLF), None while it is incomplete.
fn line_at(raw: &[u8], pos: usize) -> Result<Option<&[u8]>, ChunkError> {
    let rest = raw.get(pos..).unwrap_or(&[]);
    let window = &rest[..rest.len().min(MAX_LINE + 2)];
    match window.windows(2).position(|w| w == b"\r\n") {
        Some(end) => Ok(Some(&rest[..end])),
        None if rest.len() >= MAX_LINE + 2 => Err(ChunkError::Malformed),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_chunks_extensions_and_trailers_at_every_cut() {
        let raw = b"4;ext=1\r\nWiki\r\n5\r\npedia\r\n0\r\nX-T: 1\r\n\r\nNEXT";
        let end = raw.len() - 4;
        assert_eq!(
            decode_chunked(raw, 100),
            Ok(Some((b"Wikipedia".to_vec(), end)))
        );
        for cut in 0..end {
            assert_eq!(decode_chunked(&raw[..cut], 100), Ok(None), "cut {cut}");
        }
    }

    #[test]
    fn refuses_big_declarations_before_the_bytes_and_bad_syntax() {
        assert_eq!(
            decode_chunked(b"4001\r\n", 16 * 1024),
            Err(ChunkError::TooLarge)
        );
        assert_eq!(decode_chunked(b"2000\r\n", 4096), Err(ChunkError::TooLarge));
        assert_eq!(
            decode_chunked(b"fffffffff\r\n", 10),
            Err(ChunkError::Malformed)
        );
        assert_eq!(decode_chunked(b"zz\r\n", 10), Err(ChunkError::Malformed));
        assert_eq!(
            decode_chunked(b"2\r\nabc\r\n", 10),
            Err(ChunkError::Malformed)
        );
        let long = vec![b'1'; MAX_LINE + 10];
        assert_eq!(decode_chunked(&long, 10), Err(ChunkError::Malformed));
    }
}
