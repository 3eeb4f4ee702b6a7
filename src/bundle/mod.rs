//! The offline bundle: `trident bundle pack|verify|load|inspect|keygen|inventory` carry the
//! whole appliance (images, models as plain files, config, compose, monitoring, scripts and
//! the binary) to a server without network as one verified archive.
//!
//! Layout and rules (see `offline/README.md` for the operator's side):
//! * `manifest` — what a bundle holds, with every file's size and sha256; first entry.
//! * `sign` — Ed25519 over the manifest bytes; fails closed.
//! * `parts` — the archive on disk, whole or in fixed-size parts, and its `.sha256` sidecar.
//! * `entry` — the per-entry validator (no links, devices, `..` or absolute paths).
//! * `reader` — the single streaming pass that verifies and, for `load`, extracts.
//! * `sources` (what pack carries), `pack`, `load`, `install` (the target's installed state
//!   and inventory), `docker`.
//!
//! Heavy work (hashing, gzip, tar) runs on plain threads; only the Docker Engine API calls
//! are async.

pub mod docker;
pub mod entry;
pub mod install;
pub mod load;
pub mod manifest;
pub mod pack;
pub mod parts;
pub mod progress;
pub mod reader;
pub mod sign;
pub mod sources;

use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};

/// Errors of the bundle commands; each names the file, part or image concerned.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("{0}")]
    Usage(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Writing an extracted file failed (disk full, say); nothing was placed.
    #[error("writing '{path}': {source} (nothing was installed; the partial files were removed)")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("manifest.json: {0}")]
    Manifest(String),
    #[error("key: {0}")]
    Key(String),
    #[error("signature check failed: {0}")]
    Signature(String),
    #[error("bundle is corrupt: {0}")]
    Corrupt(String),
    #[error("bundle parts missing: {}", .0.join(", "))]
    MissingParts(Vec<String>),
    #[error("verification failed:\n  - {}", .0.join("\n  - "))]
    Verify(Vec<String>),
    #[error("Docker: {0}")]
    Docker(String),
    #[error("not enough free space: {0}")]
    Space(String),
    #[error("this delta bundle's base is not installed on this machine:\n  - {}", .0.join("\n  - "))]
    Base(Vec<String>),
    #[error("cannot pack:\n  - {}", .0.join("\n  - "))]
    Sources(Vec<String>),
}

impl BundleError {
    pub fn io(path: &Path, source: std::io::Error) -> BundleError {
        BundleError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// `trident bundle …`
#[derive(Debug, Subcommand)]
pub enum BundleCommand {
    /// Pack images, models, config and scripts into one archive (on a connected machine).
    Pack(pack::PackArgs),
    /// Check every part and file digest (and the signature) without extracting anything.
    Verify(VerifyArgs),
    /// Verify, extract into a directory (atomically) and load the images into Docker.
    Load(load::LoadArgs),
    /// Show what a bundle holds (reads only its manifest; no Docker needed).
    Inspect(InspectArgs),
    /// Make an Ed25519 key pair for signing bundles.
    Keygen(KeygenArgs),
    /// List what this machine has installed (images, bundle files), for `pack --base`.
    Inventory(install::InventoryArgs),
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The bundle: the .tar.gz, any of its parts, or its .sha256 sidecar.
    pub bundle: PathBuf,
    /// Public key the bundle must be signed with (PEM from `bundle keygen`).
    #[arg(long, env = "TRIDENT_BUNDLE_KEY")]
    pub key: Option<PathBuf>,
    /// Print the receipt (and progress events) as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// The bundle: the .tar.gz, any of its parts, or its .sha256 sidecar.
    pub bundle: PathBuf,
    /// Print the manifest as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct KeygenArgs {
    /// Writes <OUTPUT>.key (private, 0600) and <OUTPUT>.pub.
    #[arg(long, default_value = "trident-bundle")]
    pub output: PathBuf,
}

/// Runs one bundle command; returns the process exit code.
pub fn run(cmd: &BundleCommand) -> Result<u8, BundleError> {
    match cmd {
        BundleCommand::Pack(a) => pack::run(a),
        BundleCommand::Load(a) => load::run(a),
        BundleCommand::Inventory(a) => install::run_inventory(a),
        BundleCommand::Verify(a) => verify(a),
        BundleCommand::Inspect(a) => inspect(a),
        BundleCommand::Keygen(a) => {
            let (k, p, id) = sign::keygen(&a.output)?;
            println!(
                "key id {id}\n  private: {} (keep it on the packing machine)\n  public:  {} (give it to the targets: --key)",
                k.display(),
                p.display()
            );
            Ok(0)
        }
    }
}

fn pinned_key(path: Option<&Path>) -> Result<Option<ed25519_dalek::VerifyingKey>, BundleError> {
    path.map(sign::read_verifying_key).transpose()
}

fn verify(a: &VerifyArgs) -> Result<u8, BundleError> {
    let key = pinned_key(a.key.as_deref())?;
    let mode = progress::Mode::detect(a.json);
    let list = parts::PartList::find(&a.bundle)?;
    let phase = progress::Phase::start(mode, "verify", list.size());
    let result = reader::read(
        &list,
        key.as_ref(),
        Some(phase.clone()),
        &mut reader::NullSink,
        false,
    );
    phase.finish();
    match result {
        Ok((_, receipt)) => {
            if a.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&receipt).unwrap_or_default()
                );
            } else {
                print_receipt(&receipt, &a.bundle);
            }
            Ok(0)
        }
        Err(e) => {
            if a.json {
                let problems = match &e {
                    BundleError::Verify(p) => p.clone(),
                    other => vec![other.to_string()],
                };
                println!(
                    "{}",
                    serde_json::json!({"result": "failed", "problems": problems})
                );
            }
            Err(e)
        }
    }
}

fn print_receipt(r: &reader::Receipt, bundle: &Path) {
    let sig = match &r.signature {
        sign::SignatureState::Unsigned => "unsigned".to_string(),
        sign::SignatureState::Pinned { key_id } => {
            format!("valid, key id {key_id} (the key given)")
        }
        sign::SignatureState::NotPinned { key_id } => {
            format!("valid, key id {key_id} (not pinned: pass --key to check who signed it)")
        }
    };
    println!("verified {}", bundle.display());
    println!(
        "  appliance  trident {} (tag {}, {}, git {})",
        r.version, r.tag, r.arch, r.git_sha
    );
    println!("  created    {}", r.created);
    println!("  signature  {sig}");
    println!(
        "  checked    {} parts, {} files, {} bytes{}",
        r.parts_checked,
        r.files_checked,
        r.bytes_checked,
        if r.delta {
            format!(" (delta: {} files left to the base)", r.files_in_base)
        } else {
            String::new()
        }
    );
    println!("  result     OK");
}

fn inspect(a: &InspectArgs) -> Result<u8, BundleError> {
    let list = parts::PartList::find(&a.bundle)?;
    let (m, receipt) = reader::read(&list, None, None, &mut reader::NullSink, true)?;
    if a.json {
        let v = serde_json::json!({"manifest": m, "signature": receipt.signature, "parts": list.parts.len(), "size": list.size()});
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        return Ok(0);
    }
    let mb = |b: u64| format!("{:.1} MB", b as f64 / 1e6);
    println!("{}", a.bundle.display());
    println!(
        "  trident {} (tag {}, {}, git {}), created {}",
        m.appliance.version, m.appliance.tag, m.appliance.arch, m.appliance.git_sha, m.created
    );
    println!(
        "  {} parts, {} on disk, signature: {}",
        list.parts.len(),
        mb(list.size()),
        match &receipt.signature {
            sign::SignatureState::Unsigned => "none".to_string(),
            sign::SignatureState::Pinned { key_id }
            | sign::SignatureState::NotPinned { key_id } =>
                format!("key id {key_id} (consistent; `verify --key` pins it)"),
        }
    );
    if let Some(b) = &m.base {
        println!(
            "  delta bundle: {} images and {} files left to the base (inventory sha256 {})",
            b.images_left_out, b.files_left_out, b.inventory_sha256
        );
    }
    println!("  images:");
    for i in &m.images {
        let size = i
            .file
            .as_ref()
            .map_or("in base".to_string(), |f| mb(f.size));
        println!(
            "    {:<40} {}  {}",
            i.reference,
            &i.id[..i.id.len().min(19)],
            size
        );
    }
    println!("  models:");
    for md in &m.models {
        let bytes: u64 = md.files.iter().map(|f| f.size).sum();
        println!(
            "    {:<40} {} files, {}  ({})",
            md.path,
            md.files.len(),
            mb(bytes),
            md.ids.join(", ")
        );
    }
    let other: u64 = m.files.iter().map(|f| f.size).sum();
    println!("  other files: {} ({})", m.files.len(), mb(other));
    Ok(0)
}
