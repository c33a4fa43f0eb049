//! Logging for both daemons: structured records to journald when systemd started us
//! (`$JOURNAL_STREAM` is set), plain lines on stderr elsewhere. Never log tokens or keys.

use tracing::level_filters::LevelFilter;
use tracing_subscriber::prelude::*;

/// Parses `error`, `warn`, `info`, `debug` or `trace`.
pub fn parse_level(s: &str) -> Option<LevelFilter> {
    match s.to_ascii_lowercase().as_str() {
        "error" => Some(LevelFilter::ERROR),
        "warn" | "warning" => Some(LevelFilter::WARN),
        "info" => Some(LevelFilter::INFO),
        "debug" => Some(LevelFilter::DEBUG),
        "trace" => Some(LevelFilter::TRACE),
        "off" => Some(LevelFilter::OFF),
        _ => None,
    }
}

/// Installs the global subscriber at `level` for the program `name`. The records of the
/// `quiet` targets (a dependency's chatter: boringtun's warning per handshake retry) show only
/// at debug and trace.
///
/// Under systemd (`$JOURNAL_STREAM` set) every record goes to journald as a structured entry:
/// its priority from the level (`journalctl -p warning` finds warnings), its fields as journal
/// fields, no timestamp of ours (the journal has its own). Elsewhere plain lines go to stderr,
/// with colour only when stderr is a terminal (not in files, pipes or `docker logs`).
pub fn init(name: &str, level: LevelFilter, quiet: &[&str]) {
    use tracing_subscriber::filter::Targets;
    let dependency_level = if level >= LevelFilter::DEBUG {
        level
    } else {
        LevelFilter::OFF
    };
    let filter = quiet
        .iter()
        .fold(Targets::new().with_default(level), |f, t| {
            f.with_target(*t, dependency_level)
        });
    let journald = std::env::var_os("JOURNAL_STREAM")
        .and_then(|_| tracing_journald::layer().ok())
        .map(|l| l.with_syslog_identifier(name.to_owned()));
    let registry = tracing_subscriber::registry().with(filter);
    let result = match journald {
        Some(layer) => registry.with(layer).try_init(),
        None => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_target(false)
                    .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())),
            )
            .try_init(),
    };
    // A second init (tests) keeps the first subscriber; nothing to report.
    drop(result);
}
