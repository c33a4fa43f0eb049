//! Self-update: where releases come from and how they are trusted.
//!
//! A release is described by a manifest (`manifest`) at `GATELET_UPDATE_URL`, with its
//! minisign signature next to it (`<url>.minisig`), verified by `minisign` against the
//! trusted keys: the built-in release key ([`BUILTIN_RELEASE_KEY`]) and at most one more
//! from the configuration ([`trusted_keys`]), so a new key can be rolled out before the
//! old one is retired (and self-built releases can be trusted by their owner). Nothing in
//! a manifest is read before its signature checks out, and a binary is installed only if
//! its size and SHA-256 are the manifest's.
//!
//! Signing a release (minisign's legacy mode, which `ring` can verify):
//! `minisign -S -l -s gatelet-release.key -m manifest.json -t "gatelet <version>"`;
//! anyone can check it with `minisign -V -p gatelet-release.pub -m manifest.json`.

pub mod container;
pub mod driver;
pub mod fetch;
pub mod health;
pub mod machine;
pub mod manifest;
pub mod minisign;
pub mod settings;
pub mod slots;
pub mod updater;
pub mod watch;

use minisign::{PublicKey, SigError};

/// The built-in release public key (`gatelet-release.pub`, minisign format).
pub const BUILTIN_RELEASE_KEY: &str = include_str!("gatelet-release.pub");

/// The keys a manifest may be signed with: the built-in key, plus `extra` (a minisign
/// public key, the `.pub` file's text or its base64 line) when configured.
pub fn trusted_keys(extra: Option<&str>) -> Result<Vec<PublicKey>, SigError> {
    let mut keys = vec![PublicKey::parse(BUILTIN_RELEASE_KEY)?];
    if let Some(text) = extra.filter(|t| !t.trim().is_empty()) {
        let key = PublicKey::parse(text)?;
        if !keys.contains(&key) {
            keys.push(key);
        }
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_key_parses_and_an_extra_key_is_added_once() {
        let builtin = trusted_keys(None).unwrap();
        assert_eq!(builtin.len(), 1);
        assert_eq!(trusted_keys(Some("  ")).unwrap(), builtin);
        assert_eq!(trusted_keys(Some(BUILTIN_RELEASE_KEY)).unwrap(), builtin);
        let extra = include_str!("../../tests/fixtures/update/release-b.pub");
        let both = trusted_keys(Some(extra)).unwrap();
        assert_eq!(both.len(), 2);
        assert_eq!(both[1], PublicKey::parse(extra).unwrap());
        assert!(trusted_keys(Some("not a key")).is_err());
    }
}
