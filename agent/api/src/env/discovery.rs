//! The LAN discovery keys (`GC_DISCOVERY_*`, issue 11).

use std::time::Duration;

use super::file::EnvError;
use super::reader::Reader;

/// `GC_DISCOVERY_MAX_PREFIX` when absent: the smallest subnet size scanned is a /22.
pub const DEFAULT_DISCOVERY_MAX_PREFIX: u8 = 22;
/// `GC_DISCOVERY_TIMEOUT_MS` when absent: the server's own scan timeout.
pub const DEFAULT_DISCOVERY_TIMEOUT: Duration = Duration::from_millis(45_000);
/// `GC_DISCOVERY_CONCURRENCY` when absent: TCP probes in flight at most.
pub const DEFAULT_DISCOVERY_CONCURRENCY: u16 = 128;

/// The LAN discovery settings (`GC_DISCOVERY_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiscoveryEnv {
    /// `GC_DISCOVERY_MAX_PREFIX`: a requested subnet must have at least this prefix length
    /// (16 to 30; 22 means at most 1022 hosts).
    pub max_prefix: u8,
    /// `GC_DISCOVERY_TIMEOUT_MS`: the longest a scan runs (1000 to 55000: the server gives up
    /// 60 s after its request).
    pub timeout: Duration,
    /// `GC_DISCOVERY_CONCURRENCY`: the most TCP connects in flight (1 to 1024).
    pub concurrency: u16,
}

impl Default for DiscoveryEnv {
    fn default() -> Self {
        DiscoveryEnv {
            max_prefix: DEFAULT_DISCOVERY_MAX_PREFIX,
            timeout: DEFAULT_DISCOVERY_TIMEOUT,
            concurrency: DEFAULT_DISCOVERY_CONCURRENCY,
        }
    }
}

impl DiscoveryEnv {
    pub(super) fn read(r: &Reader<'_>) -> Result<Self, EnvError> {
        let d = DiscoveryEnv::default();
        Ok(DiscoveryEnv {
            max_prefix: r
                .parsed(
                    "GC_DISCOVERY_MAX_PREFIX",
                    "a prefix length from 16 to 30",
                    |v| v.parse::<u8>().ok().filter(|p| (16..=30).contains(p)),
                )?
                .unwrap_or(d.max_prefix),
            timeout: r
                .parsed(
                    "GC_DISCOVERY_TIMEOUT_MS",
                    "milliseconds from 1000 to 55000",
                    |v| {
                        v.parse::<u64>()
                            .ok()
                            .filter(|ms| (1_000..=55_000).contains(ms))
                            .map(Duration::from_millis)
                    },
                )?
                .unwrap_or(d.timeout),
            concurrency: r
                .parsed("GC_DISCOVERY_CONCURRENCY", "a number from 1 to 1024", |v| {
                    v.parse::<u16>().ok().filter(|c| (1..=1024).contains(c))
                })?
                .unwrap_or(d.concurrency),
        })
    }
}

#[cfg(test)]
mod tests;
