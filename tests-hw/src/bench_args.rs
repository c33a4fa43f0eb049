//! Command lines of the small load programs in `bench/` (`bench-conns`, `bench-http-rate`):
//! positional words, then `--name value` flags, each with its default; a bad value fails with
//! the program's usage line.

use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use anyhow::{bail, Context as _};

/// How long one connection of a load program may wait on a read, a write or a connect before it
/// counts as failed.
pub const LOAD_IO_TIMEOUT: Duration = Duration::from_secs(5);

/// A load program's arguments and its usage line.
pub struct BenchArgs {
    args: Vec<String>,
    usage: &'static str,
}

impl BenchArgs {
    /// The process's arguments (without the program name).
    pub fn from_env(usage: &'static str) -> BenchArgs {
        BenchArgs::new(std::env::args().skip(1).collect(), usage)
    }

    pub fn new(args: Vec<String>, usage: &'static str) -> BenchArgs {
        BenchArgs { args, usage }
    }

    /// The `i`-th word (0-based), whatever it is.
    pub fn word(&self, i: usize) -> Option<&str> {
        self.args.get(i).map(String::as_str)
    }

    /// The `i`-th word as a socket address.
    pub fn addr(&self, i: usize) -> anyhow::Result<SocketAddr> {
        let word = self.word(i).context(self.usage)?;
        word.parse()
            .with_context(|| format!("{word} is not an address; {}", self.usage))
    }

    /// The value after `--name`, parsed; `default` when the flag is absent.
    pub fn value<T: FromStr>(&self, name: &str, default: T) -> anyhow::Result<T> {
        match self.args.iter().position(|a| a == name) {
            None => Ok(default),
            Some(i) => self
                .args
                .get(i + 1)
                .and_then(|v| v.parse().ok())
                .with_context(|| format!("{name} needs a value of its kind; {}", self.usage)),
        }
    }

    /// A number of seconds after `--name`, fractions allowed.
    pub fn seconds(&self, name: &str, default: f64) -> anyhow::Result<Duration> {
        let s: f64 = self.value(name, default)?;
        if !s.is_finite() || s < 0.0 {
            bail!("{name} needs a number of seconds; {}", self.usage);
        }
        Ok(Duration::from_secs_f64(s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(line: &str) -> BenchArgs {
        BenchArgs::new(
            line.split_whitespace().map(String::from).collect(),
            "usage: x",
        )
    }

    #[test]
    fn words_flags_and_defaults() {
        let a = args("rate 127.0.0.1:80 --bytes 512 --seconds 2.5");
        assert_eq!(a.word(0), Some("rate"));
        assert_eq!(a.addr(1).unwrap(), "127.0.0.1:80".parse().unwrap());
        assert_eq!(a.value("--bytes", 1024usize).unwrap(), 512);
        assert_eq!(a.value("--concurrency", 32usize).unwrap(), 32);
        assert_eq!(
            a.seconds("--seconds", 10.0).unwrap(),
            Duration::from_millis(2500)
        );
        assert_eq!(
            a.value("--host", "localhost".to_string()).unwrap(),
            "localhost"
        );
    }

    #[test]
    fn bad_values_name_the_flag_and_the_usage() {
        let a = args("rate nowhere --bytes lots --seconds -1 --rate");
        let addr = a.addr(1).unwrap_err().to_string();
        assert!(
            addr.contains("nowhere") && addr.contains("usage: x"),
            "{addr}"
        );
        let bytes = a.value("--bytes", 1usize).unwrap_err().to_string();
        assert!(
            bytes.contains("--bytes") && bytes.contains("usage: x"),
            "{bytes}"
        );
        assert!(a.seconds("--seconds", 1.0).is_err());
        assert!(
            a.value("--rate", 1.0f64).is_err(),
            "a flag without its value"
        );
        assert!(args("").addr(0).is_err());
    }
}
