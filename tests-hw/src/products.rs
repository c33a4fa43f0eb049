//! Our own binaries: built once per test process with cargo and found in the target dir.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

use crate::process::describe;
use crate::{HarnessError, Result};

/// The packages whose binaries the tests run.
pub const PRODUCT_PACKAGES: &[&str] = &["gatelet-agent", "gatelet-companion"];
/// The cargo profile tests build with.
pub const TEST_PROFILE: &str = "dev";

static BUILT: OnceLock<Mutex<HashMap<String, Result<PathBuf, String>>>> = OnceLock::new();

/// The workspace root (the parent of this crate's directory).
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// The cargo target directory: `$CARGO_TARGET_DIR` when set, else `<workspace>/target`.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => {
            let dir = PathBuf::from(dir);
            if dir.is_absolute() {
                dir
            } else {
                workspace_root().join(dir)
            }
        }
        _ => workspace_root().join("target"),
    }
}

/// The directory cargo puts `profile`'s binaries in (`dev` builds into `debug`).
pub fn profile_dir(profile: &str) -> PathBuf {
    target_dir().join(match profile {
        "dev" | "test" => "debug",
        other => other,
    })
}

/// Builds `packages` with `profile` (once per process per profile and package set) using
/// `$CARGO` or `cargo` from PATH, and returns the directory holding their binaries.
pub fn build(profile: &str, packages: &[&str]) -> Result<PathBuf> {
    let key = format!("{profile}:{}", packages.join(","));
    let built = BUILT.get_or_init(Default::default);
    // A poisoned lock only means another test panicked mid-build; the map is still usable.
    let mut built = built.lock().unwrap_or_else(|p| p.into_inner());
    let result = built
        .entry(key)
        .or_insert_with(|| cargo_build(profile, packages));
    result.clone().map_err(|detail| HarnessError::Build {
        what: format!("packages {} with profile {profile}", packages.join(", ")),
        detail,
    })
}

/// Runs cargo; the error is what to show (the command and the tail of cargo's output).
fn cargo_build(profile: &str, packages: &[&str]) -> Result<PathBuf, String> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace_root())
        .args(["build", "--profile", profile])
        .env("CARGO_TARGET_DIR", target_dir());
    for p in packages {
        cmd.args(["-p", p]);
    }
    let what = describe(&cmd);
    let out = cmd
        .output()
        .map_err(|e| format!("could not start {what}: {e}"))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(30).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        return Err(format!("{what}:\n{}", tail.join("\n")));
    }
    Ok(profile_dir(profile))
}

/// The profile the product binaries are built with: `$GATELET_PRODUCT_PROFILE` when set (e.g.
/// `release`, to measure the shipped build), else [`TEST_PROFILE`].
pub fn product_profile() -> String {
    std::env::var("GATELET_PRODUCT_PROFILE")
        .ok()
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| TEST_PROFILE.into())
}

/// The path of binary `name` from the product packages, built with [`product_profile`] first.
pub fn product_binary(name: &str) -> Result<PathBuf> {
    let dir = build(&product_profile(), PRODUCT_PACKAGES)?;
    let path = dir.join(name);
    if path.is_file() {
        Ok(path)
    } else {
        Err(HarnessError::Build {
            what: name.into(),
            detail: format!("cargo succeeded but {} does not exist", path.display()),
        })
    }
}

/// The path of example `name` of `package` (e.g. `fake-gatecontrol` of `gatelet-companion`),
/// built with [`TEST_PROFILE`] once per process.
pub fn example_binary(package: &str, name: &str) -> Result<PathBuf> {
    let key = format!("example:{package}:{name}");
    let built = BUILT.get_or_init(Default::default);
    let result = {
        // A poisoned lock only means another test panicked mid-build; the map is still usable.
        let mut built = built.lock().unwrap_or_else(|p| p.into_inner());
        built
            .entry(key)
            .or_insert_with(|| {
                let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
                let mut cmd = Command::new(cargo);
                cmd.current_dir(workspace_root())
                    .args([
                        "build",
                        "--profile",
                        TEST_PROFILE,
                        "-p",
                        package,
                        "--example",
                        name,
                    ])
                    .env("CARGO_TARGET_DIR", target_dir());
                let what = describe(&cmd);
                match cmd.output() {
                    Err(e) => Err(format!("could not start {what}: {e}")),
                    Ok(out) if !out.status.success() => {
                        Err(format!("{what}:\n{}", String::from_utf8_lossy(&out.stderr)))
                    }
                    Ok(_) => Ok(profile_dir(TEST_PROFILE).join("examples").join(name)),
                }
            })
            .clone()
    };
    result.map_err(|detail| HarnessError::Build {
        what: format!("example {name} of {package}"),
        detail,
    })
}
