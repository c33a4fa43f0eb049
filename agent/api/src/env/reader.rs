//! Step 2's tools: reading one key with its line for errors, and the syntax of single values.

use std::path::Path;
use std::time::Duration;

use base64::Engine as _;

use super::file::{quoted, EnvError, EnvFile};
use super::values::Key;

/// Reads one key: `Ok(None)` when absent or empty, errors carry the key's line.
pub(super) struct Reader<'a> {
    pub(super) file: &'a EnvFile,
}

impl Reader<'_> {
    pub(super) fn error(&self, key: &str, message: impl Into<String>) -> EnvError {
        EnvError {
            path: None,
            line: self.file.get(key).map(|v| v.line),
            key: Some(key.to_owned()),
            message: message.into(),
        }
    }

    pub(super) fn opt(&self, key: &str) -> Option<&str> {
        self.file
            .get(key)
            .map(|v| v.value.as_str())
            .filter(|v| !v.is_empty())
    }

    pub(super) fn required(&self, key: &str, expected: &str) -> Result<&str, EnvError> {
        match self.file.get(key) {
            None => Err(self.error(key, format!("is missing ({expected})"))),
            Some(v) if v.value.is_empty() => Err(self.error(key, format!("is empty ({expected})"))),
            Some(v) => Ok(&v.value),
        }
    }

    pub(super) fn parsed<T>(
        &self,
        key: &str,
        expected: &str,
        parse: impl FnOnce(&str) -> Option<T>,
    ) -> Result<Option<T>, EnvError> {
        match self.opt(key) {
            None => Ok(None),
            Some(v) => parse(v)
                .map(Some)
                .ok_or_else(|| self.error(key, format!("must be {expected}, not {}", quoted(v)))),
        }
    }

    pub(super) fn key(&self, key: &str) -> Result<Option<Key>, EnvError> {
        match self.opt(key) {
            None => Ok(None),
            Some(v) => decode_key(v).map(Some).ok_or_else(|| {
                self.error(
                    key,
                    "must be a base64 WireGuard key (44 characters encoding 32 bytes)",
                )
            }),
        }
    }
}

pub(super) fn decode_key(v: &str) -> Option<Key> {
    let bytes = base64::engine::general_purpose::STANDARD.decode(v).ok()?;
    Some(Key(bytes.try_into().ok()?))
}

pub(super) fn is_lower_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

pub(super) fn parse_host_port(v: &str) -> Option<(String, Option<u16>)> {
    if let Some(rest) = v.strip_prefix('[') {
        let (host, tail) = rest.split_once(']')?;
        host.parse::<std::net::Ipv6Addr>().ok()?;
        let port = match tail {
            "" => None,
            t => Some(
                t.strip_prefix(':')?
                    .parse::<u16>()
                    .ok()
                    .filter(|p| *p > 0)?,
            ),
        };
        return Some((host.to_owned(), port));
    }
    let (host, port) = match v.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => (h, Some(p.parse::<u16>().ok().filter(|p| *p > 0)?)),
        _ => (v, None),
    };
    let valid_host = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b':'));
    valid_host.then(|| (host.to_owned(), port))
}

pub(super) fn parse_list<T>(v: &str, parse: impl Fn(&str) -> Option<T>) -> Option<Vec<T>> {
    v.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(parse)
        .collect()
}

/// An interface name (1 to 15 characters, no `/`, space or `:`), optionally ending in `*`.
pub(super) fn iface_pattern(s: &str) -> Option<String> {
    let name = s.strip_suffix('*').unwrap_or(s);
    let ok = !name.is_empty()
        && name.len() <= 15
        && !name.contains(['/', ' ', ':', '*'])
        && name.bytes().all(|b| b.is_ascii_graphic());
    ok.then(|| s.to_owned())
}

pub(super) fn port(v: &str) -> Option<u16> {
    v.parse::<u16>().ok().filter(|p| *p > 0)
}

pub(super) fn seconds(v: &str) -> Option<Duration> {
    v.parse::<u64>()
        .ok()
        .filter(|s| (1..=86_400).contains(s))
        .map(Duration::from_secs)
}

/// What to do about a `gateway.env` this process may not read, in one line: `me` is the
/// process's (uid, gid), `file` the file's (uid, gid, mode), when known. The file holds the
/// WireGuard private key, so the advice is group-readable (0640), never world-readable.
pub(super) fn unreadable_hint(
    path: &Path,
    me: Option<(u32, u32)>,
    file: Option<(u32, u32, u32)>,
) -> String {
    let p = path.display();
    let who = match me {
        Some((uid, gid)) => format!("this process (uid {uid}, gid {gid})"),
        None => "this process".to_owned(),
    };
    let gid = me.map_or_else(|| "<gid of gatelet>".to_owned(), |(_, g)| g.to_string());
    let file = match file {
        Some((uid, fgid, mode)) => {
            format!(" (owner {uid}, group {fgid}, mode {:04o})", mode & 0o7777)
        }
        None => String::new(),
    };
    format!(
        "cannot be read by {who}: permission denied{file}; make it readable by the daemons' \
         group but not by everyone (it holds the WireGuard private key): \
         chgrp {gid} {p} && chmod 0640 {p} (its directory needs search permission for that \
         group too)"
    )
}
