//! The last applied config, kept in the state directory so a restarted agent serves its routes
//! before the companion (or the server) is back.

use std::io::{self, Write as _};
use std::path::{Path, PathBuf};

use gatelet_agent_api::control::AgentConfig;

/// File name of the saved config in the state directory.
pub const APPLIED_CONFIG_FILE: &str = "applied-config.json";

/// Why the saved config could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    /// Reading the file failed (other than it not existing).
    #[error("cannot read the saved config {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The system's error.
        source: io::Error,
    },
    /// The file is not a config (corrupt or from an incompatible version).
    #[error("saved config {path} is not valid ({source}); it is ignored until the companion applies a new one")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's error.
        source: serde_json::Error,
    },
    /// Writing the file failed.
    #[error("cannot save the applied config to {path}: {source}; check the state directory's permissions and free space")]
    Write {
        /// The file being written (or the directory being synced).
        path: PathBuf,
        /// The system's error.
        source: io::Error,
    },
}

/// The saved config in `dir`, or `None` when there is none yet.
pub fn load(dir: &Path) -> Result<Option<AgentConfig>, PersistError> {
    let path = dir.join(APPLIED_CONFIG_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(PersistError::Read { path, source }),
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|source| PersistError::Parse { path, source })
}

/// Saves `config` in `dir` atomically: a temporary file in the same directory, fsync, rename
/// over the old file, fsync of the directory.
pub fn save(dir: &Path, config: &AgentConfig) -> Result<(), PersistError> {
    let path = dir.join(APPLIED_CONFIG_FILE);
    let tmp = dir.join(format!(".{APPLIED_CONFIG_FILE}.tmp"));
    let write_err = |p: &Path| {
        let p = p.to_owned();
        move |source| PersistError::Write { path: p, source }
    };
    let bytes = serde_json::to_vec_pretty(config).map_err(|e| PersistError::Write {
        path: path.clone(),
        source: io::Error::other(e),
    })?;
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(write_err(&tmp)(e));
    }
    std::fs::rename(&tmp, &path).map_err(write_err(&path))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(write_err(dir))
}

#[cfg(test)]
mod tests {
    use super::*;
    use gatelet_agent_api::control::L4Route;

    #[test]
    fn saved_config_loads_back_and_replaces_the_old_one_without_leftovers() {
        let dir = std::env::temp_dir().join(format!("gatelet-persist-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert!(load(&dir).unwrap().is_none());
        let mut c = AgentConfig {
            config_hash: Some("h1".into()),
            ..AgentConfig::default()
        };
        save(&dir, &c).unwrap();
        c.config_hash = Some("h2".into());
        c.l4_routes.push(L4Route {
            id: 3,
            listen_port: 2222,
            target_host: "10.0.0.5".into(),
            target_port: 22,
            wol: None,
        });
        save(&dir, &c).unwrap();
        assert_eq!(load(&dir).unwrap(), Some(c));
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from(APPLIED_CONFIG_FILE)]);
        std::fs::write(dir.join(APPLIED_CONFIG_FILE), b"{not json").unwrap();
        assert!(matches!(load(&dir), Err(PersistError::Parse { .. })));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
