//! Step 1 of reading `gateway.env`: text into keys and values, each with its line, and the
//! error type every step reports with.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

/// Most characters of a value or key an error message quotes; longer ones are cut, with
/// their full length in bytes.
pub const MAX_QUOTED_CHARS: usize = 80;

/// Longest key accepted (the server's are under 32 characters).
pub const MAX_KEY_LEN: usize = 128;

/// `s` quoted for an error message, cut after [`MAX_QUOTED_CHARS`] characters.
pub(super) fn quoted(s: &str) -> String {
    match s.char_indices().nth(MAX_QUOTED_CHARS) {
        None => format!("{s:?}"),
        Some((cut, _)) => format!("{:?}... ({} bytes in all)", &s[..cut], s.len()),
    }
}

/// A bad `gateway.env`: what, where, and what is expected. Displayed as one line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct EnvError {
    /// The file, when read from one.
    pub path: Option<PathBuf>,
    /// 1-based line number, when the problem is on a line.
    pub line: Option<usize>,
    /// The key concerned, when one is.
    pub key: Option<String>,
    /// What is wrong and what is expected.
    pub message: String,
}

impl fmt::Display for EnvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.path {
            Some(p) => write!(f, "{}", p.display())?,
            None => f.write_str("gateway.env")?,
        }
        if let Some(line) = self.line {
            write!(f, " line {line}")?;
        }
        f.write_str(": ")?;
        if let Some(key) = &self.key {
            write!(f, "{key} ")?;
        }
        f.write_str(&self.message)
    }
}

/// One value of the file and the line it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvValue {
    /// 1-based line number.
    pub line: usize,
    /// The value with quotes and comments removed.
    pub value: String,
}

/// The raw keys and values of a `gateway.env`, before validation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EnvFile {
    values: BTreeMap<String, EnvValue>,
}

impl EnvFile {
    /// Parses `KEY=value` lines. A key given twice is an error naming both lines.
    pub fn parse(text: &str) -> Result<Self, EnvError> {
        let mut values: BTreeMap<String, EnvValue> = BTreeMap::new();
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        for (idx, raw) in text.split('\n').enumerate() {
            let line_no = idx + 1;
            let line = raw.strip_suffix('\r').unwrap_or(raw).trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let line = line
                .strip_prefix("export ")
                .map(str::trim_start)
                .unwrap_or(line);
            let err = |key: Option<&str>, message: String| EnvError {
                path: None,
                line: Some(line_no),
                key: key.map(str::to_owned),
                message,
            };
            let Some((key, rest)) = line.split_once('=') else {
                return Err(err(None, "is not KEY=value".into()));
            };
            let key = key.trim_end();
            if key.len() > MAX_KEY_LEN {
                return Err(err(
                    None,
                    format!(
                        "has a key of {} bytes, {} (at most {MAX_KEY_LEN})",
                        key.len(),
                        quoted(key)
                    ),
                ));
            }
            if !is_valid_key(key) {
                return Err(err(
                    None,
                    format!(
                        "has an invalid key {} (letters, digits and _ expected)",
                        quoted(key)
                    ),
                ));
            }
            let value = parse_value(rest.trim_start()).map_err(|m| err(Some(key), m))?;
            if let Some(first) = values.get(key) {
                return Err(err(
                    Some(key),
                    format!(
                        "is given twice, on lines {} and {line_no}: keep one of them",
                        first.line
                    ),
                ));
            }
            values.insert(
                key.to_owned(),
                EnvValue {
                    line: line_no,
                    value,
                },
            );
        }
        Ok(EnvFile { values })
    }

    /// The value of `key` and its line, if present.
    pub fn get(&self, key: &str) -> Option<&EnvValue> {
        self.values.get(key)
    }

    /// Every key in the file, sorted.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.values.keys().map(String::as_str)
    }
}

pub(super) fn is_valid_key(key: &str) -> bool {
    let mut chars = key.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Value after `=`: `"double"` (with `\"`, `\\`, `\n` escapes), `'single'` (literal) or bare
/// (ends at ` #`). After a closing quote only white space or a comment may follow.
pub(super) fn parse_value(rest: &str) -> Result<String, String> {
    let quote = match rest.chars().next() {
        Some(q @ ('"' | '\'')) => q,
        _ => {
            let end = rest
                .char_indices()
                .find(|&(i, c)| c == '#' && i > 0 && rest[..i].ends_with([' ', '\t']))
                .map_or(rest.len(), |(i, _)| i);
            return Ok(rest[..end].trim_end().to_owned());
        }
    };
    let mut out = String::new();
    let mut chars = rest[1..].char_indices();
    while let Some((i, c)) = chars.next() {
        if c == quote {
            let tail = rest[1 + i + 1..].trim_start();
            if tail.is_empty() || tail.starts_with('#') {
                return Ok(out);
            }
            return Err(format!(
                "has text after the closing quote: {}",
                quoted(tail)
            ));
        }
        if c == '\\' && quote == '"' {
            match chars.next() {
                Some((_, 'n')) => out.push('\n'),
                Some((_, e)) => out.push(e),
                None => break,
            }
        } else {
            out.push(c);
        }
    }
    Err(format!("has an unterminated {quote} quote"))
}
