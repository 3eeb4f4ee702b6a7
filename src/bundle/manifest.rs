//! The bundle's `manifest.json`: what a bundle holds, with the size and sha256 of every file,
//! and the other listings derived from it (`SHA256SUMS`, `images/IMAGES`, the inventory a
//! target reports for delta bundles).
//!
//! The manifest is the first entry of the archive, so a reader knows every digest before it
//! sees a payload byte; the signature (`sign`) covers its exact bytes.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::BundleError;

/// Version of the manifest format; a reader refuses other versions.
pub const SCHEMA: u32 = 1;
/// `kind` of a bundle manifest.
pub const KIND: &str = "trident-offline-bundle";
/// The directory every archive entry lives under (the seed's `cd trident-offline`).
pub const ROOT: &str = "trident-offline";
/// Archive entries that the manifest describes itself rather than lists.
pub const MANIFEST: &str = "manifest.json";
pub const SIGNATURE: &str = "manifest.sig";
pub const SUMS: &str = "SHA256SUMS";
/// A manifest larger than this is refused before it is parsed.
pub const MAX_MANIFEST_BYTES: u64 = 16 << 20;
/// Most bytes the files of one manifest may add up to (1 PiB): every size sum and estimate
/// made from a manifest then fits a `u64`, whatever a forged one lists.
pub const MAX_BUNDLE_BYTES: u64 = 1 << 50;

/// One file of the bundle, relative to [`ROOT`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    pub path: String,
    pub size: u64,
    pub sha256: String,
    /// Unix permission bits (0o755 for scripts and the binary, 0o644 otherwise).
    pub mode: u32,
    /// Left out of this (delta) bundle because the target's inventory already has it.
    #[serde(default, skip_serializing_if = "is_false")]
    pub in_base: bool,
}

/// One container image, saved as `file` (a `docker save` tar, gzip-compressed), or left to
/// a delta's base (`file` absent: the target already has an image with this config digest).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageEntry {
    /// The reference it is loaded under, e.g. `trident:slim`.
    #[serde(rename = "ref")]
    pub reference: String,
    /// The image's config digest (`docker image inspect -f {{.Id}}`).
    pub id: String,
    /// Set for the appliance's own image (the one `scripts/deploy.sh` runs).
    #[serde(default, skip_serializing_if = "is_false")]
    pub appliance: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<FileEntry>,
}

/// One model of `config/models.json` and the files it is served from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelFiles {
    /// Model ids sharing these files (e.g. `embedding` and `rerank`).
    pub ids: Vec<String>,
    /// The model's `path` inside the bundle (as `config/models.json` names it).
    pub path: String,
    pub files: Vec<FileEntry>,
}

/// What the appliance is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Appliance {
    pub version: String,
    pub tag: String,
    pub git_sha: String,
    pub arch: String,
}

/// The target inventory a delta bundle was made against.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Base {
    /// sha256 of the inventory file `pack --base` read.
    pub inventory_sha256: String,
    pub images_left_out: usize,
    pub files_left_out: usize,
}

/// `manifest.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub schema: u32,
    pub kind: String,
    pub appliance: Appliance,
    /// RFC 3339, UTC.
    pub created: String,
    pub images: Vec<ImageEntry>,
    pub models: Vec<ModelFiles>,
    /// Everything else: binary, config, compose, monitoring, scripts, READMEs.
    pub files: Vec<FileEntry>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<Base>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl Manifest {
    /// Every file the manifest lists, images and models included.
    pub fn all_files(&self) -> impl Iterator<Item = &FileEntry> {
        self.images
            .iter()
            .filter_map(|i| i.file.as_ref())
            .chain(self.models.iter().flat_map(|m| m.files.iter()))
            .chain(self.files.iter())
    }

    /// The files this archive carries (not those left to the base).
    pub fn carried(&self) -> impl Iterator<Item = &FileEntry> {
        self.all_files().filter(|f| !f.in_base)
    }

    /// Bytes of payload the archive carries.
    pub fn carried_bytes(&self) -> u64 {
        self.carried().map(|f| f.size).sum()
    }

    /// Parses and checks a manifest: schema, kind, digests well-formed, paths valid and unique.
    pub fn parse(bytes: &[u8]) -> Result<Manifest, BundleError> {
        let m: Manifest = serde_json::from_slice(bytes)
            .map_err(|e| BundleError::Manifest(format!("not a valid manifest: {e}")))?;
        if m.kind != KIND {
            return Err(BundleError::Manifest(format!(
                "kind is '{}', expected '{KIND}'",
                m.kind
            )));
        }
        if m.schema != SCHEMA {
            return Err(BundleError::Manifest(format!(
                "schema version {} is not supported (this trident reads {SCHEMA})",
                m.schema
            )));
        }
        let total = m
            .all_files()
            .try_fold(0u64, |sum, f| sum.checked_add(f.size))
            .filter(|&t| t <= MAX_BUNDLE_BYTES);
        if total.is_none() {
            return Err(BundleError::Manifest(format!(
                "the files listed add up to more than {} TiB",
                MAX_BUNDLE_BYTES >> 40
            )));
        }
        let mut seen = BTreeSet::new();
        for i in &m.images {
            if !is_image_ref(&i.reference) || !i.id.starts_with("sha256:") {
                return Err(BundleError::Manifest(format!(
                    "image '{}' ({}) is not a valid reference and config digest",
                    i.reference, i.id
                )));
            }
        }
        for f in m.all_files() {
            super::entry::check_relative(&f.path)
                .map_err(|why| BundleError::Manifest(format!("file '{}': {why}", f.path)))?;
            if is_reserved(&f.path) {
                return Err(BundleError::Manifest(format!(
                    "file '{}' uses a reserved name",
                    f.path
                )));
            }
            if !is_sha256_hex(&f.sha256) {
                return Err(BundleError::Manifest(format!(
                    "file '{}': sha256 '{}' is not 64 hex digits",
                    f.path, f.sha256
                )));
            }
            if !seen.insert(f.path.as_str()) {
                return Err(BundleError::Manifest(format!(
                    "file '{}' listed twice",
                    f.path
                )));
            }
        }
        Ok(m)
    }

    /// Pretty JSON, the exact bytes that are signed and shipped.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).expect("manifest serialises. This is a bug.");
        v.push(b'\n');
        v
    }

    /// `SHA256SUMS` for the extracted bundle (`sha256sum -c SHA256SUMS` inside the bundle
    /// directory). Files left to a delta's base are not there, so they are not listed.
    pub fn sha256sums(&self) -> String {
        let mut out = String::new();
        for f in self.carried() {
            out.push_str(&format!("{}  {}\n", f.sha256, f.path));
        }
        out
    }

    /// `images/IMAGES`: `ref id file` per line, read by `scripts/load_images.sh` to confirm
    /// every loaded image by tag without the trident binary.
    pub fn images_list(&self) -> String {
        let mut out = String::new();
        for i in &self.images {
            let role = if i.appliance { "appliance" } else { "extra" };
            let file = i.file.as_ref().map_or("-", |f| f.path.as_str());
            out.push_str(&format!("{} {} {file} {role}\n", i.reference, i.id));
        }
        out
    }

    /// The appliance image's reference.
    pub fn appliance_image(&self) -> Option<&ImageEntry> {
        self.images.iter().find(|i| i.appliance)
    }
}

/// Names inside the bundle that the packer writes itself.
pub fn is_reserved(path: &str) -> bool {
    matches!(path, MANIFEST | SIGNATURE | SUMS | "images/IMAGES")
}

/// A Docker image reference as the packer writes it (no spaces or shell metacharacters:
/// `scripts/load_images.sh` reads them from a plain text file).
pub fn is_image_ref(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 255
        && s.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'/' | b':' | b'@')
        })
}

/// 64 lowercase hex digits.
pub fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// What a target has installed (`trident bundle inventory`), the base of a delta bundle.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Inventory {
    pub schema: u32,
    /// Image reference → config digest, for every tagged image of the target's engine.
    pub images: BTreeMap<String, String>,
    /// Installed bundle files, relative to the bundle directory.
    pub files: Vec<InventoryFile>,
}

/// One installed file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InventoryFile {
    pub path: String,
    pub size: u64,
    pub sha256: String,
}

impl Inventory {
    /// True when the target has this image (by config digest, under any tag).
    pub fn has_image(&self, id: &str) -> bool {
        self.images.values().any(|v| v == id)
    }

    /// True when the target has this exact file at this path.
    pub fn has_file(&self, f: &FileEntry) -> bool {
        self.files
            .iter()
            .any(|i| i.path == f.path && i.sha256 == f.sha256 && i.size == f.size)
    }
}

/// Bundle file names: `trident-offline-<tag>-<arch>.tar.gz` and, split, `… .tar.gz.000`…;
/// the sidecar `… .tar.gz.sha256` lists the archive or its parts for `sha256sum -c`.
pub fn archive_name(tag: &str, arch: &str) -> String {
    format!("{ROOT}-{tag}-{arch}.tar.gz")
}

/// Docker's name for this machine's architecture (what `docker load` on the target expects).
pub fn docker_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// A tag usable in a portable file name: letters, digits, `.`, `_`, `-`.
pub fn check_tag(tag: &str) -> Result<(), BundleError> {
    let ok = !tag.is_empty()
        && tag.len() <= 64
        && !tag.starts_with('.')
        && tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(BundleError::Usage(format!(
            "--tag '{tag}' must be 1-64 letters, digits, '.', '_' or '-' (it becomes part of a file name)"
        )))
    }
}

/// RFC 3339 UTC time of `t` (seconds precision), without a date library.
pub fn rfc3339(t: std::time::SystemTime) -> String {
    let secs = t
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str) -> FileEntry {
        FileEntry {
            path: path.into(),
            size: 3,
            sha256: "a".repeat(64),
            mode: 0o644,
            in_base: false,
        }
    }

    pub(crate) fn sample() -> Manifest {
        Manifest {
            schema: SCHEMA,
            kind: KIND.into(),
            appliance: Appliance {
                version: "0.1.0".into(),
                tag: "0.1.0".into(),
                git_sha: "abc".into(),
                arch: "amd64".into(),
            },
            created: "2026-12-01T00:00:00Z".into(),
            images: vec![ImageEntry {
                reference: "trident:slim".into(),
                id: "sha256:1".into(),
                appliance: true,
                file: Some(file("images/trident_slim.tar.gz")),
            }],
            models: vec![ModelFiles {
                ids: vec!["chat".into()],
                path: "models/chat".into(),
                files: vec![file("models/chat/a.gguf")],
            }],
            files: vec![file("deploy.sh"), file("config/models.json")],
            base: None,
        }
    }

    #[test]
    fn round_trip_and_listings() {
        let m = sample();
        let back = Manifest::parse(&m.to_bytes()).unwrap();
        assert_eq!(back, m);
        assert_eq!(m.all_files().count(), 4);
        assert_eq!(m.carried_bytes(), 12);
        let sums = m.sha256sums();
        assert_eq!(sums.lines().count(), 4);
        assert!(sums.contains(&format!("{}  models/chat/a.gguf\n", "a".repeat(64))));
        assert_eq!(
            m.images_list(),
            "trident:slim sha256:1 images/trident_slim.tar.gz appliance\n"
        );
    }

    #[test]
    fn parse_rejects_bad_manifests() {
        let mut m = sample();
        m.files.push(file("deploy.sh"));
        assert!(Manifest::parse(&m.to_bytes())
            .unwrap_err()
            .to_string()
            .contains("twice"));
        let mut m = sample();
        m.files[0].path = "../etc/passwd".into();
        assert!(Manifest::parse(&m.to_bytes()).is_err());
        let mut m = sample();
        m.files[0].sha256 = "xyz".into();
        assert!(Manifest::parse(&m.to_bytes())
            .unwrap_err()
            .to_string()
            .contains("hex"));
        let mut m = sample();
        m.images[0].reference = "a b; rm -rf /".into();
        assert!(Manifest::parse(&m.to_bytes())
            .unwrap_err()
            .to_string()
            .contains("image"));
        let mut m = sample();
        m.schema = 9;
        assert!(Manifest::parse(&m.to_bytes())
            .unwrap_err()
            .to_string()
            .contains("schema"));
        let mut m = sample();
        m.files[0].path = MANIFEST.into();
        assert!(Manifest::parse(&m.to_bytes())
            .unwrap_err()
            .to_string()
            .contains("reserved"));
        // Sizes whose total overflows (a panic in `carried_bytes`; the bundle_tar fuzz
        // target's crash-manifest-size-overflow), and a total past the bound.
        let mut m = sample();
        m.files[0].size = 1 << 63;
        m.files[1].size = 1 << 63;
        assert!(Manifest::parse(&m.to_bytes())
            .unwrap_err()
            .to_string()
            .contains("add up to"));
        let mut m = sample();
        m.files[0].size = MAX_BUNDLE_BYTES;
        assert!(Manifest::parse(&m.to_bytes()).is_err());
        m.files[0].size = MAX_BUNDLE_BYTES - 9;
        assert_eq!(
            Manifest::parse(&m.to_bytes()).unwrap().carried_bytes(),
            MAX_BUNDLE_BYTES
        );
        assert!(Manifest::parse(b"{}").is_err());
        assert!(Manifest::parse(b"\xff").is_err());
    }

    #[test]
    fn delta_entries_are_not_carried() {
        let mut m = sample();
        m.models[0].files[0].in_base = true;
        assert_eq!(m.carried().count(), 3);
        assert!(!m.sha256sums().contains("a.gguf"));
        let back = Manifest::parse(&m.to_bytes()).unwrap();
        assert!(back.models[0].files[0].in_base);
    }

    #[test]
    fn names_and_times() {
        assert_eq!(
            archive_name("1.2", "amd64"),
            "trident-offline-1.2-amd64.tar.gz"
        );
        assert!(check_tag("v1.2.3-rc1").is_ok());
        for bad in ["", "a:b", "../x", "a/b", ".hidden", "sp ace"] {
            assert!(check_tag(bad).is_err(), "{bad}");
        }
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_795_000_000);
        assert_eq!(rfc3339(t), "2026-11-18T11:06:40Z");
        assert_eq!(rfc3339(std::time::UNIX_EPOCH), "1970-01-01T00:00:00Z");
    }
}
