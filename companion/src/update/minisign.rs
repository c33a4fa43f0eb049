//! minisign public keys and signatures (Ed25519), verified with `ring`.
//!
//! The formats are minisign's (<https://jedisct1.github.io/minisign/>):
//! - a public key is `untrusted comment: …` then base64 of `"Ed" ‖ key id (8) ‖ key (32)`;
//! - a signature is four lines: `untrusted comment: …`, base64 of
//!   `algorithm (2) ‖ key id (8) ‖ signature (64)`, `trusted comment: …`, and base64 of the
//!   global signature over `signature ‖ trusted comment`.
//!
//! Only the legacy algorithm `Ed` (the signature covers the file itself, `minisign -S -l`)
//! is accepted. The prehashed `ED` form signs a BLAKE2b-512 digest, which `ring` does not
//! provide; it is refused with [`SigError::Prehashed`], which says how to sign instead.
//! A release manifest is a few KiB, so prehashing buys nothing here.

use std::fmt;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use ring::signature::{UnparsedPublicKey, ED25519};

/// Largest signature file read, in bytes (minisign's are ~300 plus the comments).
pub const MAX_SIGNATURE_BYTES: usize = 2048;

const UNTRUSTED_PREFIX: &str = "untrusted comment: ";
const TRUSTED_PREFIX: &str = "trusted comment: ";
const ALG_LEGACY: [u8; 2] = *b"Ed";
const ALG_PREHASHED: [u8; 2] = *b"ED";

/// Why a key or a signature was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SigError {
    /// The text is not a minisign key or signature.
    #[error("malformed minisign {0}")]
    Malformed(&'static str),
    /// A prehashed (`ED`) signature: gatelet verifies the legacy form only.
    #[error("prehashed minisign signature (BLAKE2b): sign the manifest with `minisign -S -l`")]
    Prehashed,
    /// An algorithm other than `Ed`/`ED`.
    #[error("unknown minisign signature algorithm")]
    UnknownAlgorithm,
    /// Signed with a key that is not trusted.
    #[error("signed by key {0}, which is not a trusted release key")]
    UnknownKey(KeyId),
    /// The signature does not match the content.
    #[error("signature does not match the content (key {0})")]
    BadSignature(KeyId),
    /// The trusted comment was altered.
    #[error("trusted comment signature does not match (key {0})")]
    BadTrustedComment(KeyId),
}

/// A minisign key id, shown as minisign shows it (16 upper-case hex digits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyId(pub [u8; 8]);

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // minisign prints the id as a little-endian u64.
        write!(f, "{:016X}", u64::from_le_bytes(self.0))
    }
}

/// A trusted Ed25519 release key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey {
    /// The key id signatures name.
    pub id: KeyId,
    key: [u8; 32],
}

impl PublicKey {
    /// Parses a minisign public key: the whole `.pub` file or its base64 line alone.
    pub fn parse(text: &str) -> Result<Self, SigError> {
        let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
        let mut line = lines.next().ok_or(SigError::Malformed("public key"))?;
        if line.starts_with(UNTRUSTED_PREFIX) {
            line = lines.next().ok_or(SigError::Malformed("public key"))?;
        }
        if lines.next().is_some() {
            return Err(SigError::Malformed("public key"));
        }
        let raw: [u8; 42] = decode_exact(line).ok_or(SigError::Malformed("public key"))?;
        if raw[..2] != ALG_LEGACY {
            return Err(SigError::UnknownAlgorithm);
        }
        Ok(Self {
            id: KeyId(raw[2..10].try_into().expect("8 bytes")),
            key: raw[10..].try_into().expect("32 bytes"),
        })
    }

    fn verify(&self, message: &[u8], signature: &[u8; 64]) -> bool {
        UnparsedPublicKey::new(&ED25519, &self.key)
            .verify(message, signature)
            .is_ok()
    }
}

/// A signature that checked out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The key that signed.
    pub key: KeyId,
    /// The signed (trusted) comment.
    pub trusted_comment: String,
}

/// Verifies a minisign signature file over `message` against any of `keys`.
pub fn verify(keys: &[PublicKey], message: &[u8], signature: &str) -> Result<Verified, SigError> {
    if signature.len() > MAX_SIGNATURE_BYTES {
        return Err(SigError::Malformed("signature (too long)"));
    }
    let mut lines = signature.lines().map(|l| l.trim_end_matches('\r'));
    let malformed = SigError::Malformed("signature");
    if !lines
        .next()
        .is_some_and(|l| l.starts_with(UNTRUSTED_PREFIX))
    {
        return Err(malformed);
    }
    let sig_line = lines.next().ok_or(malformed.clone())?;
    let trusted = lines
        .next()
        .and_then(|l| l.strip_prefix(TRUSTED_PREFIX))
        .ok_or(malformed.clone())?;
    let global_line = lines.next().ok_or(malformed.clone())?;
    if lines.any(|l| !l.trim().is_empty()) {
        return Err(malformed);
    }
    let raw: [u8; 74] = decode_exact(sig_line.trim()).ok_or(malformed.clone())?;
    let global: [u8; 64] = decode_exact(global_line.trim()).ok_or(malformed)?;
    match [raw[0], raw[1]] {
        ALG_LEGACY => {}
        ALG_PREHASHED => return Err(SigError::Prehashed),
        _ => return Err(SigError::UnknownAlgorithm),
    }
    let id = KeyId(raw[2..10].try_into().expect("8 bytes"));
    let sig: [u8; 64] = raw[10..].try_into().expect("64 bytes");
    let key = keys
        .iter()
        .find(|k| k.id == id)
        .ok_or(SigError::UnknownKey(id))?;
    if !key.verify(message, &sig) {
        return Err(SigError::BadSignature(id));
    }
    let mut signed_comment = Vec::with_capacity(64 + trusted.len());
    signed_comment.extend_from_slice(&sig);
    signed_comment.extend_from_slice(trusted.as_bytes());
    if !key.verify(&signed_comment, &global) {
        return Err(SigError::BadTrustedComment(id));
    }
    Ok(Verified {
        key: id,
        trusted_comment: trusted.to_owned(),
    })
}

/// Decodes base64 that must be exactly `N` bytes.
fn decode_exact<const N: usize>(b64: &str) -> Option<[u8; N]> {
    // Base64 of N bytes is at most 4 * ceil(N / 3) characters: refuse longer input unread.
    if b64.len() > N.div_ceil(3) * 4 {
        return None;
    }
    STANDARD.decode(b64).ok()?.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIX: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/update/");

    fn fixture(name: &str) -> String {
        std::fs::read_to_string(format!("{FIX}{name}")).unwrap()
    }

    fn key(name: &str) -> PublicKey {
        PublicKey::parse(&fixture(name)).unwrap()
    }

    #[test]
    fn key_id_prints_as_minisign_does() {
        let text = fixture("release-a.pub");
        let shown = text
            .lines()
            .next()
            .unwrap()
            .rsplit(' ')
            .next()
            .unwrap()
            .to_owned();
        assert_eq!(key("release-a.pub").id.to_string(), shown);
        let bare = text.lines().nth(1).unwrap();
        assert_eq!(PublicKey::parse(bare).unwrap(), key("release-a.pub"));
    }

    #[test]
    fn verifies_what_minisign_signed() {
        let manifest = fixture("manifest.json");
        let v = verify(
            &[key("release-a.pub")],
            manifest.as_bytes(),
            &fixture("manifest.json.minisig"),
        )
        .unwrap();
        assert_eq!(v.key, key("release-a.pub").id);
        assert_eq!(v.trusted_comment, "gatelet 0.2.0");
    }

    #[test]
    fn second_key_verifies_its_own_signature_and_not_the_other() {
        let manifest = fixture("manifest.json");
        let (a, b) = (key("release-a.pub"), key("release-b.pub"));
        let by_b = fixture("manifest.json.key-b.minisig");
        assert!(verify(&[a.clone(), b.clone()], manifest.as_bytes(), &by_b).is_ok());
        assert_eq!(
            verify(std::slice::from_ref(&a), manifest.as_bytes(), &by_b),
            Err(SigError::UnknownKey(b.id))
        );
    }

    #[test]
    fn one_changed_byte_fails() {
        let mut manifest = fixture("manifest.json").into_bytes();
        let at = manifest.iter().position(|&c| c == b'2').unwrap();
        manifest[at] = b'3';
        let a = key("release-a.pub");
        assert_eq!(
            verify(
                std::slice::from_ref(&a),
                &manifest,
                &fixture("manifest.json.minisig")
            ),
            Err(SigError::BadSignature(a.id))
        );
    }

    #[test]
    fn edited_trusted_comment_fails() {
        let sig = fixture("manifest.json.minisig").replace("gatelet 0.2.0", "gatelet 9.9.9");
        let a = key("release-a.pub");
        assert_eq!(
            verify(
                std::slice::from_ref(&a),
                fixture("manifest.json").as_bytes(),
                &sig
            ),
            Err(SigError::BadTrustedComment(a.id))
        );
    }

    #[test]
    fn signature_with_a_substituted_key_id_fails() {
        // Re-label A's signature as B's: B's key must then reject it.
        let (a, b) = (key("release-a.pub"), key("release-b.pub"));
        let sig = fixture("manifest.json.minisig");
        let line = sig.lines().nth(1).unwrap();
        let mut raw = STANDARD.decode(line).unwrap();
        raw[2..10].copy_from_slice(&b.id.0);
        let relabelled = sig.replace(line, &STANDARD.encode(raw));
        assert_eq!(
            verify(
                &[a, b.clone()],
                fixture("manifest.json").as_bytes(),
                &relabelled
            ),
            Err(SigError::BadSignature(b.id))
        );
    }

    #[test]
    fn prehashed_signature_is_refused_with_advice() {
        let err = verify(
            &[key("release-a.pub")],
            fixture("manifest.json").as_bytes(),
            &fixture("manifest.json.prehashed.minisig"),
        )
        .unwrap_err();
        assert_eq!(err, SigError::Prehashed);
        assert!(err.to_string().contains("minisign -S -l"));
    }

    #[test]
    fn malformed_input_is_an_error_not_a_panic() {
        let keys = [key("release-a.pub")];
        let good = fixture("manifest.json.minisig");
        let cases = [
            String::new(),
            "untrusted comment: x\n".to_owned(),
            good.lines().take(3).collect::<Vec<_>>().join("\n"),
            good.replacen("trusted comment: ", "comment: ", 1),
            good.replacen("RW", "!!", 1),
            format!("{good}extra line\n"),
            "A".repeat(MAX_SIGNATURE_BYTES + 1),
        ];
        for case in &cases {
            let r = verify(&keys, b"x", case);
            assert!(matches!(r, Err(SigError::Malformed(_))), "{case:?}: {r:?}");
        }
        for bad_key in ["", "RWQ=", "untrusted comment: a\nRWQ=\n", "x\ny\nz"] {
            assert!(PublicKey::parse(bad_key).is_err(), "{bad_key:?}");
        }
    }
}
