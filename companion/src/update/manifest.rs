//! The release manifest: which binaries make up a release, per target triple.
//!
//! ```json
//! {"schema": 1, "version": "0.2.0",
//!  "targets": {"aarch64-unknown-linux-musl": {
//!     "gatelet-agent":     {"url": "…", "size": 2345678, "sha256": "<64 hex>"},
//!     "gatelet-companion": {"url": "…", "size": 2100000, "sha256": "<64 hex>"}}}}
//! ```
//!
//! The manifest is accepted only after its minisign signature checks out against a trusted
//! key ([`verify`]); nothing in it is looked at before that. Each target must name exactly
//! the two binaries, with their exact size (the download cap: the server's
//! `Content-Length` is never trusted) and SHA-256. A `url` is absolute (`http://`,
//! `https://`) or a plain relative path resolved against the manifest's own URL
//! ([`Artifact::resolve_url`]).
//!
//! Optional, for the container deployment: `"image": "<name>@sha256:<64 hex>"`, the
//! release's container image by digest (what the host-side container updater pulls, so the
//! pull is content-addressed). Readers without this field ignore it (the top level allows
//! unknown keys), so adding it keeps older updaters working.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::Deserialize;

use super::minisign::{self, PublicKey, SigError};

/// Largest manifest read, in bytes.
pub const MAX_MANIFEST_BYTES: usize = 64 * 1024;
/// Largest binary a manifest may list, in bytes (the static binaries are a few MiB).
pub const MAX_BINARY_BYTES: u64 = 64 * 1024 * 1024;
/// The manifest format this code reads.
pub const SCHEMA: u64 = 1;
/// The binaries a release consists of, in install order.
pub const BINARIES: [&str; 2] = ["gatelet-agent", "gatelet-companion"];
const MAX_URL_BYTES: usize = 2048;
const MAX_TARGETS: usize = 32;
/// Longest image reference accepted, in bytes.
const MAX_IMAGE_BYTES: usize = 512;

/// Why a manifest was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    /// Larger than [`MAX_MANIFEST_BYTES`].
    #[error("manifest larger than {MAX_MANIFEST_BYTES} bytes")]
    TooLarge,
    /// The signature did not check out.
    #[error("manifest signature: {0}")]
    Signature(#[from] SigError),
    /// Signed, but not a valid manifest.
    #[error("invalid manifest: {0}")]
    Invalid(String),
    /// Valid, but it has nothing for this box's target triple.
    #[error("the release has no binaries for {0}")]
    NoTarget(String),
}

/// A release version: `MAJOR.MINOR.PATCH`, an optional leading `v`, and an optional
/// `-pre-release` suffix (which orders before the release itself).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version {
    triple: [u64; 3],
    /// `None` (a release) orders after `Some` (a pre-release) of the same triple.
    release: Release,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Release {
    Pre(String),
    Final,
}

impl FromStr for Version {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("not a version (MAJOR.MINOR.PATCH): {s:?}");
        let t = s.trim();
        let t = t.strip_prefix(['v', 'V']).unwrap_or(t);
        let (core, pre) = match t.split_once('-') {
            Some((c, p)) if !p.is_empty() => (c, Release::Pre(p.to_owned())),
            Some(_) => return Err(bad()),
            None => (t, Release::Final),
        };
        let mut parts = core.split('.');
        let mut triple = [0u64; 3];
        for n in &mut triple {
            let p = parts.next().ok_or_else(bad)?;
            if p.is_empty() || p.len() > 9 || !p.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            *n = p.parse().map_err(|_| bad())?;
        }
        if parts.next().is_some() || s.len() > 64 {
            return Err(bad());
        }
        Ok(Self {
            triple,
            release: pre,
        })
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c] = self.triple;
        match &self.release {
            Release::Final => write!(f, "{a}.{b}.{c}"),
            Release::Pre(p) => write!(f, "{a}.{b}.{c}-{p}"),
        }
    }
}

/// One binary of a release.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Artifact {
    /// Where to fetch it (absolute, or relative to the manifest).
    pub url: String,
    /// Its exact size in bytes.
    pub size: u64,
    /// Its SHA-256.
    pub sha256: [u8; 32],
}

impl Artifact {
    /// The absolute URL, resolving a relative one against the manifest's URL.
    pub fn resolve_url(&self, manifest_url: &str) -> String {
        if is_absolute(&self.url) {
            return self.url.clone();
        }
        let base = manifest_url
            .split(['?', '#'])
            .next()
            .unwrap_or(manifest_url);
        let dir = base.rfind('/').map_or(base, |i| &base[..=i]);
        format!("{dir}{}", self.url)
    }
}

/// A verified manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// The release version.
    pub version: Version,
    /// Per target triple, the artifacts in [`BINARIES`] order.
    pub targets: BTreeMap<String, [Artifact; 2]>,
    /// The release's container image by digest (`name@sha256:<64 hex>`), if it has one.
    pub image: Option<String>,
    /// The signature's trusted comment (for the log).
    pub trusted_comment: String,
}

impl Manifest {
    /// The artifacts for `triple`, in [`BINARIES`] order.
    pub fn for_target(&self, triple: &str) -> Result<&[Artifact; 2], ManifestError> {
        self.targets
            .get(triple)
            .ok_or_else(|| ManifestError::NoTarget(triple.to_owned()))
    }
}

#[derive(Deserialize)]
struct RawManifest {
    schema: u64,
    version: String,
    targets: BTreeMap<String, BTreeMap<String, RawArtifact>>,
    #[serde(default)]
    image: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawArtifact {
    url: String,
    size: u64,
    sha256: String,
}

/// Checks the signature of `manifest` against `keys`, then parses and validates it.
pub fn verify(
    manifest: &[u8],
    signature: &str,
    keys: &[PublicKey],
) -> Result<Manifest, ManifestError> {
    if manifest.len() > MAX_MANIFEST_BYTES {
        return Err(ManifestError::TooLarge);
    }
    let verified = minisign::verify(keys, manifest, signature)?;
    let (version, targets, image) = parse(manifest)?;
    Ok(Manifest {
        version,
        targets,
        image,
        trusted_comment: verified.trusted_comment,
    })
}

type Targets = BTreeMap<String, [Artifact; 2]>;

/// The content rules, applied to signed bytes only.
fn parse(manifest: &[u8]) -> Result<(Version, Targets, Option<String>), ManifestError> {
    let invalid = |m: String| ManifestError::Invalid(m);
    let raw: RawManifest = serde_json::from_slice(manifest).map_err(|e| invalid(e.to_string()))?;
    if raw.schema != SCHEMA {
        return Err(invalid(format!(
            "schema {} (this build reads {SCHEMA})",
            raw.schema
        )));
    }
    let version = raw.version.parse().map_err(invalid)?;
    if raw.targets.is_empty() || raw.targets.len() > MAX_TARGETS {
        return Err(invalid(format!(
            "{} targets (1 to {MAX_TARGETS})",
            raw.targets.len()
        )));
    }
    let mut targets = BTreeMap::new();
    for (triple, mut bins) in raw.targets {
        let mut take = |name: &str| {
            let a = bins
                .remove(name)
                .ok_or_else(|| invalid(format!("{triple}: {name} missing")))?;
            artifact(a).map_err(|m| invalid(format!("{triple}: {name}: {m}")))
        };
        let pair = [take(BINARIES[0])?, take(BINARIES[1])?];
        if let Some(extra) = bins.keys().next() {
            return Err(invalid(format!("{triple}: unknown binary {extra:?}")));
        }
        targets.insert(triple, pair);
    }
    let image = match raw.image {
        Some(i) if is_image_by_digest(&i) => Some(i),
        Some(i) => {
            return Err(invalid(format!(
                "image {i:?} is not NAME@sha256:<64 hex digits>"
            )))
        }
        None => None,
    };
    Ok((version, targets, image))
}

/// `name@sha256:<64 lowercase hex>`, the name made of `[A-Za-z0-9._/:-]` and not starting
/// with `-` (it is passed to `docker pull` as an argument).
pub fn is_image_by_digest(image: &str) -> bool {
    let Some((name, digest)) = image.split_once("@sha256:") else {
        return false;
    };
    image.len() <= MAX_IMAGE_BYTES
        && !name.is_empty()
        && !name.starts_with(['-', '/', ':', '.'])
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._/:-".contains(&b))
        && digest.len() == 64
        && digest
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn artifact(a: RawArtifact) -> Result<Artifact, String> {
    if a.size == 0 || a.size > MAX_BINARY_BYTES {
        return Err(format!("size {} (1 to {MAX_BINARY_BYTES})", a.size));
    }
    let url_ok = a.url.len() <= MAX_URL_BYTES
        && !a.url.is_empty()
        && a.url.bytes().all(|b| b.is_ascii_graphic())
        && (is_absolute(&a.url)
            || (!a.url.starts_with('/')
                && !a.url.contains(':')
                && a.url.split('/').all(|seg| seg != ".." && seg != ".")));
    if !url_ok {
        return Err(format!("bad url {:?}", a.url));
    }
    Ok(Artifact {
        url: a.url,
        size: a.size,
        sha256: parse_sha256(&a.sha256).ok_or("sha256 is not 64 hex digits")?,
    })
}

fn is_absolute(url: &str) -> bool {
    url.starts_with("https://") || url.starts_with("http://")
}

/// Parses 64 hex digits.
pub fn parse_sha256(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// What to do with a verified manifest, given the running version and the version the
/// server asked for (`target_version`, which may be null).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Offer {
    /// Install the manifest's release.
    Install,
    /// The running version already satisfies the request: report success, install nothing.
    AlreadyCurrent,
}

/// Why a verified manifest is not installed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OfferError {
    /// The published release is older than the version the server asked for.
    #[error("the published release {published} is older than the requested {target}")]
    OlderThanTarget {
        /// The manifest's version.
        published: Version,
        /// The requested version.
        target: Version,
    },
    /// The requested version does not parse.
    #[error("requested version: {0}")]
    BadTarget(String),
}

/// Decides between installing and reporting "already current". A manifest never moves the
/// box to an older version than it runs (a replayed old manifest is harmless).
pub fn offer(
    published: &Version,
    running: &Version,
    target: Option<&str>,
) -> Result<Offer, OfferError> {
    let target = target
        .map(|t| t.parse::<Version>().map_err(OfferError::BadTarget))
        .transpose()?;
    if let Some(t) = &target {
        if running >= t {
            return Ok(Offer::AlreadyCurrent);
        }
        if published < t {
            return Err(OfferError::OlderThanTarget {
                published: published.clone(),
                target: t.clone(),
            });
        }
    }
    Ok(if published > running {
        Offer::Install
    } else {
        Offer::AlreadyCurrent
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIX: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/update/");

    fn fixture(name: &str) -> String {
        std::fs::read_to_string(format!("{FIX}{name}")).unwrap()
    }

    fn keys() -> Vec<PublicKey> {
        vec![PublicKey::parse(&fixture("release-a.pub")).unwrap()]
    }

    fn v(s: &str) -> Version {
        s.parse().unwrap()
    }

    #[test]
    fn the_signed_fixture_parses() {
        let m = verify(
            fixture("manifest.json").as_bytes(),
            &fixture("manifest.json.minisig"),
            &keys(),
        )
        .unwrap();
        assert_eq!(m.version, v("0.2.0"));
        let [agent, companion] = m.for_target("x86_64-unknown-linux-musl").unwrap();
        assert_eq!(agent.size, 11);
        assert_eq!(
            agent.sha256,
            parse_sha256("c9129f380fae5f493bdfcfb827a0edce1e8e4ac9c62408c432cae786b2b242b6")
                .unwrap()
        );
        assert_eq!(
            agent.resolve_url("http://10.0.0.1:8080/rel/manifest.json?x=1"),
            "http://10.0.0.1:8080/rel/gatelet-agent-x86_64"
        );
        assert_eq!(
            companion.resolve_url("http://ignored/"),
            "https://releases.example.invalid/0.2.0/gatelet-companion-x86_64"
        );
        assert_eq!(
            m.for_target("mips-unknown-linux-musl"),
            Err(ManifestError::NoTarget("mips-unknown-linux-musl".into()))
        );
    }

    #[test]
    fn unsigned_or_wrongly_signed_is_refused_before_parsing() {
        let other = vec![PublicKey::parse(&fixture("release-b.pub")).unwrap()];
        let r = verify(
            fixture("manifest.json").as_bytes(),
            &fixture("manifest.json.minisig"),
            &other,
        );
        assert!(matches!(
            r,
            Err(ManifestError::Signature(SigError::UnknownKey(_)))
        ));
        let big = vec![b' '; MAX_MANIFEST_BYTES + 1];
        assert_eq!(
            verify(&big, &fixture("manifest.json.minisig"), &keys()),
            Err(ManifestError::TooLarge)
        );
    }

    #[test]
    fn content_rules() {
        let art = r#"{"url":"a","size":1,"sha256":"0000000000000000000000000000000000000000000000000000000000000000"}"#;
        let doc = |schema: u32, version: &str, bins: &str| {
            format!(r#"{{"schema":{schema},"version":"{version}","targets":{{"t":{{{bins}}}}}}}"#)
        };
        let both = format!(r#""gatelet-agent":{art},"gatelet-companion":{art}"#);
        assert!(parse(doc(1, "1.0.0", &both).as_bytes()).is_ok());
        let cases = [
            doc(2, "1.0.0", &both),
            doc(1, "one", &both),
            doc(1, "1.0.0", &format!(r#""gatelet-agent":{art}"#)),
            doc(1, "1.0.0", &format!(r#"{both},"evil":{art}"#)),
            r#"{"schema":1,"version":"1.0.0","targets":{}}"#.to_owned(),
            "not json".to_owned(),
        ];
        for case in &cases {
            assert!(
                matches!(parse(case.as_bytes()), Err(ManifestError::Invalid(_))),
                "{case}"
            );
        }
    }

    #[test]
    fn the_release_script_writes_a_manifest_this_code_reads() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("gatelet-agent"), b"hello agent").unwrap();
        std::fs::write(d.path().join("gatelet-companion"), b"hello companion").unwrap();
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/release-manifest.sh");
        let out = std::process::Command::new("bash")
            .arg(script)
            .args([
                "--image",
                &format!("10.0.0.1:5000/gatelet@sha256:{}", "ab".repeat(32)),
            ])
            .arg("v0.3.1")
            .arg(format!("aarch64-unknown-linux-musl={}", d.path().display()))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let (version, targets, image) = parse(&out.stdout).unwrap();
        assert_eq!(version, v("0.3.1"));
        assert_eq!(
            image.as_deref(),
            Some(format!("10.0.0.1:5000/gatelet@sha256:{}", "ab".repeat(32)).as_str())
        );
        let [agent, companion] = &targets["aarch64-unknown-linux-musl"];
        assert_eq!(agent.url, "aarch64-unknown-linux-musl/gatelet-agent");
        assert_eq!((agent.size, companion.size), (11, 15));
        assert_eq!(
            agent.sha256,
            parse_sha256("c9129f380fae5f493bdfcfb827a0edce1e8e4ac9c62408c432cae786b2b242b6")
                .unwrap()
        );
    }

    #[test]
    fn the_image_field_is_optional_and_must_be_by_digest() {
        let with = |image: &str| {
            fixture("manifest.json").replacen(
                "\"schema\": 1,",
                &format!("\"schema\": 1, \"image\": {image},"),
                1,
            )
        };
        let (_, _, none) = parse(fixture("manifest.json").as_bytes()).unwrap();
        assert_eq!(none, None, "a manifest without an image (older releases)");
        let digest = "0123456789abcdef".repeat(4);
        for good in [
            format!("ghcr.io/owner/gatelet@sha256:{digest}"),
            format!("10.78.0.1:5000/gatelet@sha256:{digest}"),
        ] {
            let (_, _, image) = parse(with(&format!("{good:?}")).as_bytes()).unwrap();
            assert_eq!(image.as_deref(), Some(good.as_str()));
        }
        for bad in [
            "\"ghcr.io/owner/gatelet:latest\"".to_owned(),
            format!("\"gatelet@sha256:{}\"", &digest[1..]),
            format!("\"gatelet@sha256:{}\"", digest.to_uppercase()),
            format!("\"-q@sha256:{digest}\""),
            format!("\"a b@sha256:{digest}\""),
            format!("\"@sha256:{digest}\""),
            "7".to_owned(),
        ] {
            let r = parse(with(&bad).as_bytes());
            assert!(
                matches!(r, Err(ManifestError::Invalid(_))),
                "{bad} accepted: {r:?}"
            );
        }
    }

    #[test]
    fn no_mutation_of_a_signed_release_verifies() {
        // Bounded random mutations (fixed seed) of the manifest and of its signature: each
        // is refused (never a panic), unless the mutation left the bytes unchanged.
        let manifest = fixture("manifest.json").into_bytes();
        let sig = fixture("manifest.json.minisig").into_bytes();
        let keys = keys();
        let mut rng = fastrand::Rng::with_seed(14);
        for round in 0..2000 {
            let (mut m, mut g) = (manifest.clone(), sig.clone());
            let target = if round % 2 == 0 { &mut m } else { &mut g };
            for _ in 0..rng.usize(1..4) {
                let at = rng.usize(..target.len());
                match rng.u8(..3) {
                    0 => target[at] ^= 1 << rng.u8(..8),
                    1 => {
                        target.remove(at);
                    }
                    _ => target.insert(at, rng.u8(..)),
                }
            }
            let text = String::from_utf8_lossy(&g);
            let r = verify(&m, &text, &keys);
            if m != manifest {
                assert!(r.is_err(), "round {round}: a mutated manifest verified");
            } else if r.is_ok() {
                // minisign's untrusted comment is not signed, by design, and blanks around
                // the base64 are not part of it. Everything else must be the original.
                let signed = |t: &str| -> Vec<String> {
                    t.lines()
                        .skip(1)
                        .map(|l| l.trim().to_owned())
                        .filter(|l| !l.is_empty())
                        .collect()
                };
                let original = String::from_utf8_lossy(&sig).into_owned();
                assert!(
                    text.starts_with("untrusted comment: "),
                    "round {round}: {text:?}"
                );
                assert_eq!(signed(&text), signed(&original), "round {round}");
            }
        }
    }

    #[test]
    fn artifact_rules() {
        let good = RawArtifact {
            url: "a/b-1".into(),
            size: 5,
            sha256: "00".repeat(32),
        };
        assert!(artifact(good).is_ok());
        let bad = |url: &str, size: u64, sha: &str| {
            artifact(RawArtifact {
                url: url.into(),
                size,
                sha256: sha.into(),
            })
            .is_err()
        };
        let sha = "ab".repeat(32);
        assert!(bad("x", 0, &sha));
        assert!(bad("x", MAX_BINARY_BYTES + 1, &sha));
        assert!(bad("../etc/passwd", 1, &sha));
        assert!(bad("/abs", 1, &sha));
        assert!(bad("file:///etc/passwd", 1, &sha));
        assert!(bad("a b", 1, &sha));
        assert!(bad("", 1, &sha));
        assert!(bad("x", 1, &sha[..62]));
        assert!(bad("x", 1, &"zz".repeat(32)));
    }

    #[test]
    fn versions_order_like_the_server_compares_them() {
        assert!(v("0.10.0") > v("0.9.9"));
        assert!(v("v1.2.3") == v("1.2.3"));
        assert!(v("1.0.0-rc1") < v("1.0.0"));
        assert!(v("1.0.0-rc1") > v("0.9.0"));
        assert_eq!(v("1.2.3-beta").to_string(), "1.2.3-beta");
        for bad in [
            "", "1", "1.2", "1.2.3.4", "1..3", "a.b.c", "1.2.3-", "-1.2.3",
        ] {
            assert!(bad.parse::<Version>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn offer_decisions() {
        let run = v("0.1.0");
        assert_eq!(offer(&v("0.2.0"), &run, None), Ok(Offer::Install));
        assert_eq!(offer(&v("0.2.0"), &run, Some("0.2.0")), Ok(Offer::Install));
        assert_eq!(offer(&v("0.3.0"), &run, Some("v0.2.0")), Ok(Offer::Install));
        // A replayed old manifest never downgrades.
        assert_eq!(offer(&v("0.0.9"), &run, None), Ok(Offer::AlreadyCurrent));
        assert_eq!(offer(&v("0.1.0"), &run, None), Ok(Offer::AlreadyCurrent));
        assert_eq!(
            offer(&v("0.0.1"), &run, Some("0.1.0")),
            Ok(Offer::AlreadyCurrent)
        );
        assert!(matches!(
            offer(&v("0.2.0"), &run, Some("0.3.0")),
            Err(OfferError::OlderThanTarget { .. })
        ));
        assert!(matches!(
            offer(&v("0.2.0"), &run, Some("latest")),
            Err(OfferError::BadTarget(_))
        ));
    }
}
