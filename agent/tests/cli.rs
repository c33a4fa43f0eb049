//! The binary's contract with whoever starts it: exit code 64 and one line on stderr for a
//! bad command line or a bad gateway.env, before any device or socket is touched.

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_gatelet-agent");

fn run(args: &[&str], env_path: Option<&str>) -> (i32, String) {
    let mut cmd = Command::new(BIN);
    cmd.args(args).env_remove("GATEWAY_ENV_PATH");
    if let Some(p) = env_path {
        cmd.env("GATEWAY_ENV_PATH", p);
    }
    let out = cmd.output().expect("run gatelet-agent");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_usage_exits_64_with_one_line() {
    let (code, err) = run(&["--state-dir", "/tmp/x", "--frobnicate"], None);
    assert_eq!(code, 64);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("--frobnicate"), "{err}");
}

#[test]
fn unreadable_env_file_exits_64_naming_the_file() {
    let (code, err) = run(
        &["--state-dir", "/tmp/x", "--env", "/nonexistent/gateway.env"],
        None,
    );
    assert_eq!(code, 64);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("/nonexistent/gateway.env"), "{err}");
}

#[test]
fn env_file_from_the_variable_is_validated_with_its_line() {
    let dir = std::env::temp_dir().join(format!("gatelet-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("gateway.env");
    std::fs::write(&path, "GC_TUNNEL_IP=10.8.0.2\nWG_PRIVATE_KEY=short\n").unwrap();
    let (code, err) = run(&["--state-dir", "/tmp/x"], path.to_str());
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(code, 64);
    assert!(err.contains("line 2: WG_PRIVATE_KEY"), "{err}");
    assert!(
        !err.contains("short"),
        "the bad key value is not echoed: {err}"
    );
}

#[test]
fn help_exits_0() {
    let out = Command::new(BIN).arg("--help").output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("--control-socket"));
}
