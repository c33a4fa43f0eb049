//! The update settings in `gateway.env`, read companion-side (the agent does not use them):
//! - `GATELET_UPDATE_URL`: the release manifest (`http(s)://…/manifest.json`; its signature
//!   is `<url>.minisig`). Without it, self-update is off and a request is answered with a
//!   failed `last-pull` ("self-update is not configured").
//! - `GATELET_UPDATE_PUBKEY`: an extra trusted minisign public key (the base64 line of a
//!   `.pub` file), beside the built-in one: for a key rotation, or for self-built releases.

use gatelet_agent_api::env::EnvFile;

use super::minisign::{PublicKey, SigError};

/// The manifest URL key.
pub const URL_KEY: &str = "GATELET_UPDATE_URL";
/// The extra key's key.
pub const PUBKEY_KEY: &str = "GATELET_UPDATE_PUBKEY";
/// This build's target triple (the manifest's `targets` key).
pub const TARGET: &str = env!("GATELET_TARGET");

/// Where releases come from, and who may sign them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// The manifest URL.
    pub manifest_url: String,
    /// The trusted keys (built-in first).
    pub keys: Vec<PublicKey>,
}

/// Why the settings are refused (one line, naming the key).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SettingsError {
    /// The URL is not http(s).
    #[error("{URL_KEY} must be an http:// or https:// URL, not {0:?}")]
    Url(String),
    /// The extra key does not parse.
    #[error("{PUBKEY_KEY}: {0}")]
    Key(SigError),
}

/// Reads the settings from a parsed `gateway.env`; `Ok(None)` when updates are off.
pub fn from_env(env: &EnvFile) -> Result<Option<Settings>, SettingsError> {
    let Some(url) = env.get(URL_KEY).map(|v| v.value.trim().to_owned()) else {
        return Ok(None);
    };
    if url.is_empty() {
        return Ok(None);
    }
    let ok_url = (url.starts_with("https://") || url.starts_with("http://"))
        && url.len() <= 2048
        && url.bytes().all(|b| b.is_ascii_graphic());
    if !ok_url {
        return Err(SettingsError::Url(url));
    }
    let extra = env.get(PUBKEY_KEY).map(|v| v.value.as_str());
    let keys = super::trusted_keys(extra).map_err(SettingsError::Key)?;
    Ok(Some(Settings {
        manifest_url: url,
        keys,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(text: &str) -> EnvFile {
        EnvFile::parse(text).unwrap()
    }

    #[test]
    fn settings_from_gateway_env() {
        assert_eq!(from_env(&env("GC_API_PORT=9876\n")), Ok(None));
        assert_eq!(from_env(&env("GATELET_UPDATE_URL=\n")), Ok(None));
        let s = from_env(&env("GATELET_UPDATE_URL=https://rel.example/m.json\n"))
            .unwrap()
            .unwrap();
        assert_eq!(s.manifest_url, "https://rel.example/m.json");
        assert_eq!(s.keys.len(), 1);
        let extra = include_str!("../../tests/fixtures/update/release-b.pub")
            .lines()
            .nth(1)
            .unwrap();
        let s = from_env(&env(&format!(
            "GATELET_UPDATE_URL=http://10.8.0.1:8080/m.json\nGATELET_UPDATE_PUBKEY={extra}\n"
        )))
        .unwrap()
        .unwrap();
        assert_eq!(s.keys.len(), 2);
        assert!(matches!(
            from_env(&env("GATELET_UPDATE_URL=file:///etc/passwd\n")),
            Err(SettingsError::Url(_))
        ));
        let e = from_env(&env(
            "GATELET_UPDATE_URL=https://a/m\nGATELET_UPDATE_PUBKEY=nonsense\n",
        ))
        .unwrap_err();
        assert!(e.to_string().starts_with("GATELET_UPDATE_PUBKEY: "), "{e}");
    }

    #[test]
    fn target_is_the_build_triple() {
        assert!(TARGET.contains("-linux"), "{TARGET}");
        assert!(TARGET.starts_with(std::env::consts::ARCH), "{TARGET}");
    }
}
