//! Fetching releases over HTTP(S): the manifest with its signature, and binaries into
//! `.part` files, resumed and capped.
//!
//! What bounds a download is the signed manifest's size for that binary, never the
//! server's `Content-Length`: a body that runs past it is cut off and refused. A `.part`
//! left by an earlier attempt is continued with `Range: bytes=<len>-`; a server that
//! answers `200` instead of `206` is read from the start again.

use std::fs;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::time::Duration;

use ureq::http::StatusCode;

use super::manifest::MAX_MANIFEST_BYTES;
use super::minisign::MAX_SIGNATURE_BYTES;

const USER_AGENT: &str = concat!("gatelet-companion/", env!("CARGO_PKG_VERSION"), " (update)");

/// Fetches release files.
#[derive(Debug, Clone)]
pub struct Fetcher {
    agent: ureq::Agent,
}

impl Fetcher {
    /// A fetcher whose every request (headers and body) ends within `timeout`.
    pub fn new(timeout: Duration) -> Self {
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(timeout))
            // Release hosts redirect to storage; what arrives is checked against the
            // signed manifest, so following a few redirects trusts nothing new.
            .max_redirects(5)
            .user_agent(USER_AGENT)
            .build();
        Self {
            agent: ureq::Agent::new_with_config(config),
        }
    }

    /// The manifest at `url` and its signature at `<url>.minisig`, each size-capped.
    pub fn manifest(&self, url: &str) -> Result<(Vec<u8>, String), String> {
        let manifest = self.small(url, MAX_MANIFEST_BYTES)?;
        let sig = self.small(&format!("{url}.minisig"), MAX_SIGNATURE_BYTES)?;
        let sig = String::from_utf8(sig).map_err(|_| format!("{url}.minisig: not text"))?;
        Ok((manifest, sig))
    }

    fn small(&self, url: &str, limit: usize) -> Result<Vec<u8>, String> {
        let mut r = self
            .agent
            .get(url)
            .call()
            .map_err(|e| format!("{url}: {e}"))?;
        if r.status() != StatusCode::OK {
            return Err(format!("{url}: HTTP {}", r.status().as_u16()));
        }
        r.body_mut()
            .with_config()
            .limit(limit as u64)
            .read_to_vec()
            .map_err(|e| match e {
                ureq::Error::BodyExceedsLimit(_) => format!("{url}: larger than {limit} bytes"),
                e => format!("{url}: {e}"),
            })
    }

    /// Brings `part` to exactly `size` bytes from `url`, continuing what it holds.
    /// Returns the bytes received. The caller checks the hash.
    pub fn download(&self, url: &str, part: &Path, size: u64) -> Result<u64, String> {
        let err = |e: io::Error| format!("{}: {e}", part.display());
        let mut have = match fs::metadata(part) {
            Ok(m) => m.len(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
            Err(e) => return Err(err(e)),
        };
        if have > size {
            // Longer than the release's binary: not this release's download.
            fs::remove_file(part).map_err(err)?;
            have = 0;
        }
        if have == size {
            return Ok(0);
        }
        let mut req = self.agent.get(url);
        if have > 0 {
            req = req.header("Range", format!("bytes={have}-"));
        }
        let mut r = req.call().map_err(|e| format!("{url}: {e}"))?;
        let from = match r.status() {
            StatusCode::PARTIAL_CONTENT if have > 0 => {
                let range = r
                    .headers()
                    .get("content-range")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("");
                if !range.starts_with(&format!("bytes {have}-")) {
                    return Err(format!("{url}: asked from byte {have}, got {range:?}"));
                }
                have
            }
            StatusCode::OK => 0,
            s => return Err(format!("{url}: HTTP {}", s.as_u16())),
        };
        let mut file = fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(false)
            .open(part)
            .map_err(err)?;
        file.set_len(from).map_err(err)?;
        file.seek(SeekFrom::Start(from)).map_err(err)?;
        let remaining = size - from;
        // One byte more than allowed is how an overlong body is noticed.
        let mut body = r
            .body_mut()
            .with_config()
            .limit(u64::MAX)
            .reader()
            .take(remaining + 1);
        let mut got = 0u64;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = body.read(&mut buf).map_err(|e| format!("{url}: {e}"))?;
            if n == 0 {
                break;
            }
            let n64 = n as u64;
            if got + n64 > remaining {
                let keep = (remaining - got) as usize;
                file.write_all(&buf[..keep]).map_err(err)?;
                file.sync_all().map_err(err)?;
                return Err(format!(
                    "{url}: more than the manifest's {size} bytes; refused"
                ));
            }
            file.write_all(&buf[..n]).map_err(err)?;
            got += n64;
        }
        file.sync_all().map_err(err)?;
        if from + got != size {
            return Err(format!(
                "{url}: ended at byte {} of {size} (resumable)",
                from + got
            ));
        }
        Ok(got)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::BufRead;
    use std::net::TcpListener;
    use std::sync::{Arc, Mutex};

    /// How the test server answers a GET.
    #[derive(Clone, Copy)]
    enum Mode {
        /// Honours `Range`.
        Ranges,
        /// Ignores `Range` (always 200 with everything).
        NoRanges,
        /// Sends `extra` bytes past the file, with a matching Content-Length.
        Overlong(usize),
        /// Closes after `n` bytes of body.
        CutAfter(usize),
    }

    /// A loopback HTTP server for `requests` requests; returns its URL and the `Range`
    /// headers it saw.
    fn serve(
        content: &'static [u8],
        mode: Mode,
        requests: usize,
    ) -> (String, Arc<Mutex<Vec<Option<String>>>>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/rel/bin", l.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let seen2 = seen.clone();
        std::thread::spawn(move || {
            for conn in l.incoming().take(requests) {
                let mut conn = conn.unwrap();
                conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                let mut reader = io::BufReader::new(conn.try_clone().unwrap());
                let mut range = None;
                let mut path = String::new();
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    if line.starts_with("GET ") {
                        path = line.split(' ').nth(1).unwrap_or("").to_owned();
                    }
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("range: bytes=") {
                        range = Some(v.trim().trim_end_matches('-').to_owned());
                    }
                }
                seen2.lock().unwrap().push(range.clone());
                if path != "/rel/bin" {
                    let _ = conn.write_all(
                        b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                    );
                    continue;
                }
                let from: usize = match (mode, &range) {
                    (Mode::Ranges, Some(r)) => r.parse().unwrap(),
                    _ => 0,
                };
                let mut body = content[from..].to_vec();
                if let Mode::Overlong(extra) = mode {
                    body.extend(std::iter::repeat_n(b'X', extra));
                }
                let head = if from > 0 {
                    format!(
                        "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {from}-{}/{}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        content.len() - 1,
                        content.len(),
                        body.len()
                    )
                } else {
                    format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        body.len()
                    )
                };
                let _ = conn.write_all(head.as_bytes());
                let n = match mode {
                    Mode::CutAfter(n) => n.min(body.len()),
                    _ => body.len(),
                };
                let _ = conn.write_all(&body[..n]);
            }
        });
        (url, seen)
    }

    const CONTENT: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";

    fn fetcher() -> Fetcher {
        Fetcher::new(Duration::from_secs(10))
    }

    #[test]
    fn a_cut_download_resumes_with_a_range() {
        let d = tempfile::tempdir().unwrap();
        let part = d.path().join("bin.part");
        let (url, seen) = serve(CONTENT, Mode::CutAfter(10), 1);
        let e = fetcher()
            .download(&url, &part, CONTENT.len() as u64)
            .unwrap_err();
        assert!(e.contains("resumable") || e.contains(&url), "{e}");
        assert_eq!(fs::read(&part).unwrap(), &CONTENT[..10]);

        let (url, seen2) = serve(CONTENT, Mode::Ranges, 1);
        let got = fetcher()
            .download(&url, &part, CONTENT.len() as u64)
            .unwrap();
        assert_eq!(got, CONTENT.len() as u64 - 10);
        assert_eq!(fs::read(&part).unwrap(), CONTENT);
        assert_eq!(*seen.lock().unwrap(), vec![None]);
        assert_eq!(*seen2.lock().unwrap(), vec![Some("10".to_owned())]);
        // Complete already: nothing is fetched.
        assert_eq!(
            fetcher().download("http://127.0.0.1:9/none", &part, CONTENT.len() as u64),
            Ok(0)
        );
    }

    #[test]
    fn a_server_without_ranges_is_read_from_the_start() {
        let d = tempfile::tempdir().unwrap();
        let part = d.path().join("bin.part");
        fs::write(&part, &CONTENT[..7]).unwrap();
        let (url, seen) = serve(CONTENT, Mode::NoRanges, 1);
        let got = fetcher()
            .download(&url, &part, CONTENT.len() as u64)
            .unwrap();
        assert_eq!(got, CONTENT.len() as u64);
        assert_eq!(fs::read(&part).unwrap(), CONTENT);
        assert_eq!(*seen.lock().unwrap(), vec![Some("7".to_owned())]);
    }

    #[test]
    fn the_manifest_size_caps_the_download_whatever_the_server_says() {
        let d = tempfile::tempdir().unwrap();
        let part = d.path().join("bin.part");
        let (url, _) = serve(CONTENT, Mode::Overlong(1 << 20), 1);
        let e = fetcher()
            .download(&url, &part, CONTENT.len() as u64)
            .unwrap_err();
        assert!(e.contains("more than the manifest's 36 bytes"), "{e}");
        assert_eq!(fs::metadata(&part).unwrap().len(), CONTENT.len() as u64);
        // A part longer than the binary (another release's) is dropped, not trusted.
        fs::write(&part, [b'Z'; 100]).unwrap();
        let (url, seen) = serve(CONTENT, Mode::Ranges, 1);
        fetcher()
            .download(&url, &part, CONTENT.len() as u64)
            .unwrap();
        assert_eq!(fs::read(&part).unwrap(), CONTENT);
        assert_eq!(*seen.lock().unwrap(), vec![None]);
    }

    #[test]
    fn manifest_and_signature_are_fetched_and_missing_ones_fail() {
        let (url, _) = serve(CONTENT, Mode::Ranges, 2);
        // /rel/bin is served, /rel/bin.minisig is a 404.
        let e = fetcher().manifest(&url).unwrap_err();
        assert!(e.ends_with("bin.minisig: HTTP 404"), "{e}");
        let (url, _) = serve(CONTENT, Mode::Overlong(MAX_MANIFEST_BYTES), 1);
        let e = fetcher().manifest(&url).unwrap_err();
        assert!(e.contains("larger than"), "{e}");
    }
}
