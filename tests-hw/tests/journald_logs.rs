//! Logs under systemd: gatelet-agent writes structured entries to journald itself (issue 13,
//! item 5), so `journalctl -u gatelet-agent -p warning` finds its warnings: priority from the
//! level, fields kept, the program's identifier, no timestamp or ANSI codes of its own.
//!
//! No systemd here: the agent runs in its own mount and network namespaces, with a tmpfs on
//! /run and this test's datagram socket mounted where journald's would be
//! (/run/systemd/journal/socket), and `JOURNAL_STREAM` set as systemd sets it. Its first
//! warning (a key it does not know in gateway.env) is read off that socket in journald's native
//! protocol. Needs root (namespaces, mounts).

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use gatelet_tests_hw::{product_binary, require_root};

/// How long the agent has to log its first warning.
const WARNING_TIMEOUT: Duration = Duration::from_secs(20);

/// The fields of one native-protocol entry (`KEY=value` lines; a binary-safe value is
/// `KEY\n<u64 le length><bytes>\n`).
fn fields(datagram: &[u8]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = datagram;
    while !rest.is_empty() {
        let line_end = rest.iter().position(|b| *b == b'\n').unwrap_or(rest.len());
        let line = &rest[..line_end];
        if let Some(eq) = line.iter().position(|b| *b == b'=') {
            out.push((
                String::from_utf8_lossy(&line[..eq]).into_owned(),
                String::from_utf8_lossy(&line[eq + 1..]).into_owned(),
            ));
            rest = rest.get(line_end + 1..).unwrap_or_default();
        } else {
            let key = String::from_utf8_lossy(line).into_owned();
            let after = rest.get(line_end + 1..).unwrap_or_default();
            let len = u64::from_le_bytes(after[..8].try_into().unwrap()) as usize;
            let value = &after[8..8 + len];
            out.push((key, String::from_utf8_lossy(value).into_owned()));
            rest = after.get(8 + len + 1..).unwrap_or_default();
        }
    }
    out
}

struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn agent_warnings_reach_journald_at_priority_4_with_their_fields() {
    require_root().unwrap();
    let binary = product_binary("gatelet-agent").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let journal_dir = dir.path().join("journal");
    std::fs::create_dir(&journal_dir).unwrap();
    let journal = UnixDatagram::bind(journal_dir.join("socket")).unwrap();
    journal
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let fixture =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../companion/tests/data/gateway-env.txt");
    let mut env = std::fs::read_to_string(fixture).unwrap();
    env.push_str("GATELET_NO_SUCH_SETTING=1\n");
    let env_path = dir.path().join("gateway.env");
    std::fs::write(&env_path, env).unwrap();
    std::fs::create_dir(dir.path().join("state")).unwrap();

    // A tmpfs on /run hides the host's; the test's socket directory takes journald's place.
    let script = r#"mount -t tmpfs none /run && mkdir -p /run/systemd/journal &&
        mount --bind "$1" /run/systemd/journal && shift && exec "$@""#;
    let child = Command::new("unshare")
        .args([
            "--mount",
            "--net",
            "--propagation",
            "private",
            "sh",
            "-c",
            script,
            "sh",
        ])
        .arg(&journal_dir)
        .arg(&binary)
        .arg("--env")
        .arg(&env_path)
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .arg("--control-socket")
        .arg(dir.path().join("agent.sock"))
        .env("JOURNAL_STREAM", "8:12345")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut child = Killed(child);

    let until = Instant::now() + WARNING_TIMEOUT;
    let mut buf = vec![0u8; 64 * 1024];
    let mut seen = Vec::new();
    let warning = loop {
        assert!(
            Instant::now() < until,
            "no warning in the journal within {WARNING_TIMEOUT:?}; entries: {seen:#?}"
        );
        if let Ok(Some(status)) = child.0.try_wait() {
            let mut err = String::new();
            if let Some(mut e) = child.0.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut err);
            }
            panic!("the agent exited ({status}) before logging: {err}");
        }
        let Ok(n) = journal.recv(&mut buf) else {
            continue;
        };
        let entry = fields(&buf[..n]);
        let message = entry
            .iter()
            .find(|(k, _)| k == "MESSAGE")
            .map(|(_, v)| v.clone());
        if message
            .as_deref()
            .is_some_and(|m| m.contains("ignoring keys"))
        {
            break entry;
        }
        seen.push(entry);
    };
    let get = |k: &str| {
        warning
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("no {k} in {warning:#?}"))
    };
    assert_eq!(
        get("PRIORITY"),
        "4",
        "a warning is priority 4: {warning:#?}"
    );
    assert_eq!(get("SYSLOG_IDENTIFIER"), "gatelet-agent");
    // The record's fields are journal fields (tracing-journald's F_ prefix keeps them apart
    // from journald's own), not text in the message.
    assert_eq!(get("F_KEYS"), "GATELET_NO_SUCH_SETTING");
    let message = get("MESSAGE");
    assert!(!message.contains('\u{1b}'), "no ANSI codes: {message:?}");
    assert!(
        !message.contains("WARN") && !message.contains("2026-"),
        "no level or timestamp of our own in the message: {message:?}"
    );
    // Nothing went to stderr: under systemd that would be a second copy of every line.
    drop(child);
}
