//! The request head: request line and header fields, parsed from bytes (httparse), with the
//! body framing decided here (one Content-Length, or chunked, never both).
//!
//! [`parse_head`] is a pure function over `&[u8]` so it can be fuzzed.

/// Header fields accepted in one request at most (more: 431).
pub const MAX_HEADERS: usize = 64;

/// How the body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body.
    None,
    /// `Content-Length` bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// A complete request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// The method, as sent.
    pub method: String,
    /// The request target, as sent.
    pub target: String,
    /// Every header field in order: name as sent, raw value.
    pub headers: Vec<(String, Vec<u8>)>,
    /// How the body is delimited.
    pub framing: Framing,
    /// Bytes the head takes, the blank line included.
    pub len: usize,
}

impl Head {
    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    }
}

/// Why a head is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    /// Not HTTP/1.x syntax.
    #[error("malformed request head")]
    Malformed,
    /// More than [`MAX_HEADERS`] fields.
    #[error("too many header fields")]
    TooManyHeaders,
    /// `Content-Length` that is not a number, or several that differ.
    #[error("invalid Content-Length")]
    BadLength,
    /// Both `Content-Length` and `Transfer-Encoding` (a smuggling shape).
    #[error("both Content-Length and Transfer-Encoding")]
    Ambiguous,
    /// A transfer coding other than `chunked`.
    #[error("unsupported transfer coding")]
    UnsupportedCoding,
}

impl HeadError {
    /// The HTTP status answering this error.
    pub fn status(self) -> u16 {
        match self {
            HeadError::TooManyHeaders => 431,
            HeadError::UnsupportedCoding => 501,
            _ => 400,
        }
    }
}

/// Parses the head at the start of `buf`: `Ok(None)` while it is incomplete. Does not limit
/// the head's size; the caller stops reading at its cap.
pub fn parse_head(buf: &[u8]) -> Result<Option<Head>, HeadError> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut fields);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooManyHeaders),
        Err(_) => return Err(HeadError::Malformed),
    };
    let (Some(method), Some(target)) = (req.method, req.path) else {
        return Err(HeadError::Malformed);
    };
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut headers = Vec::with_capacity(req.headers.len());
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            // A list ("4, 4") or repeated fields must all agree; one normalized value results.
            for part in h.value.split(|&b| b == b',') {
                let n = parse_length(part.trim_ascii())?;
                if length.is_some_and(|l| l != n) {
                    return Err(HeadError::BadLength);
                }
                length = Some(n);
            }
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            if chunked || !h.value.trim_ascii().eq_ignore_ascii_case(b"chunked") {
                return Err(HeadError::UnsupportedCoding);
            }
            chunked = true;
        }
        headers.push((h.name.to_owned(), h.value.to_vec()));
    }
    let framing = match (length, chunked) {
        (Some(_), true) => return Err(HeadError::Ambiguous),
        (None, true) => Framing::Chunked,
        (Some(0) | None, false) => Framing::None,
        (Some(n), false) => Framing::Length(n),
    };
    Ok(Some(Head {
        method: method.to_owned(),
        target: target.to_owned(),
        headers,
        framing,
        len,
    }))
}

/// A length is digits only; one too big for u64 saturates (it is over any cap: 413, not 400).
fn parse_length(v: &[u8]) -> Result<u64, HeadError> {
    if v.is_empty() || !v.iter().all(u8::is_ascii_digit) {
        return Err(HeadError::BadLength);
    }
    Ok(v.iter().fold(0u64, |n, &d| {
        n.saturating_mul(10).saturating_add(u64::from(d - b'0'))
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Option<Head>, HeadError> {
        parse_head(s.as_bytes())
    }

    #[test]
    fn complete_partial_and_framing() {
        let h = parse("POST /api/wol?x HTTP/1.1\r\nHost: a\r\nContent-Length: 12\r\n\r\nbody")
            .unwrap()
            .unwrap();
        assert_eq!(
            (h.method.as_str(), h.target.as_str()),
            ("POST", "/api/wol?x")
        );
        assert_eq!(h.framing, Framing::Length(12));
        assert_eq!(h.len, 57);
        assert_eq!(h.header("HOST"), Some(&b"a"[..]));
        assert_eq!(parse("GET / HTTP/1.1\r\nHost: a\r\n"), Ok(None));
        let h = parse("GET / HTTP/1.1\r\n\r\n").unwrap().unwrap();
        assert_eq!(h.framing, Framing::None);
        let h = parse("POST / HTTP/1.1\r\ntransfer-encoding: Chunked\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(h.framing, Framing::Chunked);
    }

    #[test]
    fn lengths_are_one_number_or_refused() {
        let l = |v: &str| parse(&format!("POST / HTTP/1.1\r\nContent-Length: {v}\r\n\r\n"));
        assert_eq!(l("4, 4").unwrap().unwrap().framing, Framing::Length(4));
        assert_eq!(
            l("1000000000000").unwrap().unwrap().framing,
            Framing::Length(1_000_000_000_000)
        );
        for bad in ["4, 5", "-1", "+4", "0x10", "", "4 4"] {
            assert_eq!(l(bad), Err(HeadError::BadLength), "{bad:?}");
        }
        assert_eq!(
            parse("POST / HTTP/1.1\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\n"),
            Err(HeadError::BadLength)
        );
        assert_eq!(
            parse("POST / HTTP/1.1\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Err(HeadError::Ambiguous)
        );
        assert_eq!(
            parse("POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"),
            Err(HeadError::UnsupportedCoding)
        );
    }

    #[test]
    fn garbage_and_too_many_fields_are_refused() {
        assert_eq!(parse("\r\n\r\n\0\r\nQUIT\n!!"), Err(HeadError::Malformed));
        assert_eq!(
            parse("GET / HTTP/1.1\r\nBad Name: x\r\n\r\n"),
            Err(HeadError::Malformed)
        );
        let many: String = (0..=MAX_HEADERS).map(|i| format!("X-{i}: y\r\n")).collect();
        assert_eq!(
            parse(&format!("GET / HTTP/1.1\r\n{many}\r\n")),
            Err(HeadError::TooManyHeaders)
        );
        assert_eq!(HeadError::TooManyHeaders.status(), 431);
    }
}
