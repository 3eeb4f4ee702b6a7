//! `trident bundle pack`: on a connected machine, from the repository root, writes
//! `trident-offline-<tag>-<arch>.tar.gz` (or its parts) and the `.sha256` sidecar.
//!
//! Three phases: hash every file (the models of `config/models.json` as plain files, config,
//! compose, monitoring, scripts, the binary), export every image through the Engine API
//! (gzip and sha256 in the same streaming pass, into a work directory), then write the
//! archive: `manifest.json` first, its signature, the derived listings, then the payload,
//! re-hashing as it goes so a file that changed since it was hashed fails the pack instead of
//! shipping a bundle that cannot verify. With `--base`, what the target's inventory already
//! has is listed but left out. Nothing but `.partial` files exists until the end.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use clap::Args;
use sha2::{Digest, Sha256};

use super::manifest::{
    self, Appliance, Base, FileEntry, ImageEntry, Inventory, Manifest, ModelFiles, MANIFEST, ROOT,
    SIGNATURE, SUMS,
};
use super::parts::{hex, PartWriter};
use super::progress::{self, Mode, Phase};
use super::sources::{appliance_files, model_sources, Source};
use super::BundleError;

/// Default images besides the appliance's: the compose profiles' (packed when present).
const PROFILE_IMAGES: [&str; 3] = [
    "nginx:1.27-bookworm",
    "prom/prometheus:v2.53.0",
    "grafana/grafana:11.1.0",
];

#[derive(Debug, Args)]
pub struct PackArgs {
    /// Version tag in the bundle's name (default: the appliance version).
    #[arg(long)]
    pub tag: Option<String>,
    /// Directory to write the bundle into.
    #[arg(long, default_value = "dist")]
    pub output: PathBuf,
    /// Leave the models out (the target has them, or gets them separately).
    #[arg(long, conflicts_with = "models_only")]
    pub skip_models: bool,
    /// Only the models and config (no images, no binary).
    #[arg(long)]
    pub models_only: bool,
    /// Split the archive into parts of this size (e.g. 2GiB, 500MiB, 4G).
    #[arg(long, value_parser = parse_size)]
    pub part_size: Option<u64>,
    /// Sign the manifest with this Ed25519 private key (`bundle keygen`).
    #[arg(long)]
    pub sign: Option<PathBuf>,
    /// The target's `bundle inventory`: leave out what it already has (a delta bundle).
    #[arg(long)]
    pub base: Option<PathBuf>,
    /// The appliance image (the one the target runs; models are packed as files beside it).
    #[arg(long, default_value = "trident:slim")]
    pub image: String,
    /// More images to carry (repeatable). Default: the compose profiles' images when present.
    #[arg(long = "extra-image")]
    pub extra_images: Vec<String>,
    /// Carry no image but the appliance's.
    #[arg(long)]
    pub no_extra_images: bool,
    /// Carry no images at all (no Docker needed): files and models only.
    #[arg(long)]
    pub no_images: bool,
    /// The repository (or install) to pack from.
    #[arg(long, default_value = ".")]
    pub root: PathBuf,
    /// models.json whose models are packed, relative to --root.
    #[arg(long, default_value = "config/models.json")]
    pub config: PathBuf,
    /// The trident binary to carry (default: this one).
    #[arg(long)]
    pub binary: Option<PathBuf>,
    /// gzip level of the outer archive (0 = stored: images are already compressed and weights
    /// barely compress, and a stored archive verifies at hashing speed).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=9))]
    pub gzip_level: u32,
    /// gzip level of each saved image.
    #[arg(long, default_value_t = 6, value_parser = clap::value_parser!(u32).range(1..=9))]
    pub image_gzip_level: u32,
    /// Progress as JSON lines on stderr and the result as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

/// `2GiB`, `500MiB`, `4G`, `1000000`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a size like 2GiB or 500MiB"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "kb" => 1000,
        "m" | "mib" => 1 << 20,
        "mb" => 1_000_000,
        "g" | "gib" => 1 << 30,
        "gb" => 1_000_000_000,
        "t" | "tib" => 1 << 40,
        _ => return Err(format!("'{s}': unknown unit (use KiB, MiB, GiB, TiB)")),
    };
    let v = n
        .checked_mul(mult)
        .ok_or_else(|| format!("'{s}' is too large"))?;
    if v < 1 << 20 {
        return Err(format!("'{s}': parts must be at least 1 MiB"));
    }
    Ok(v)
}

fn entry_for(
    s: &Source,
    phase: &Phase,
    base: Option<&Inventory>,
) -> Result<FileEntry, BundleError> {
    let (size, sha256) =
        super::install::hash_file(&s.disk, Some(phase)).map_err(|e| BundleError::io(&s.disk, e))?;
    let mut f = FileEntry {
        path: s.bundle_path.clone(),
        size,
        sha256,
        mode: s.mode,
        in_base: false,
    };
    f.in_base = base.is_some_and(|b| b.has_file(&f));
    Ok(f)
}

/// A writer that hashes what passes through.
struct HashWriter<W> {
    inner: W,
    hash: Sha256,
    bytes: u64,
}

impl<W: Write> Write for HashWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Removes the work directory however pack ends.
struct WorkDir(PathBuf);

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Portable file name for an image reference.
fn image_file_name(reference: &str) -> String {
    let safe: String = reference
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("images/{safe}.tar.gz")
}

/// What a pack run found to carry, before anything is read.
struct Plan {
    files: Vec<Source>,
    models: Vec<(ModelFiles, Vec<Source>)>,
    /// (reference, what the daemon says of it, is it the appliance's image).
    images: Vec<(String, super::docker::ImageInfo, bool)>,
    engine: Option<super::docker::Engine>,
    base: Option<(Inventory, String)>,
    signer: Option<ed25519_dalek::SigningKey>,
}

impl Plan {
    /// Finds every input and reports every missing one at once.
    fn gather(a: &PackArgs, mode: Mode) -> Result<Plan, BundleError> {
        let signer = a
            .sign
            .as_deref()
            .map(super::sign::read_signing_key)
            .transpose()?;
        let base = match &a.base {
            Some(p) => {
                let bytes = std::fs::read(p).map_err(|e| BundleError::io(p, e))?;
                let inv: Inventory = serde_json::from_slice(&bytes).map_err(|e| {
                    BundleError::Usage(format!(
                        "{}: not a `trident bundle inventory` file: {e}",
                        p.display()
                    ))
                })?;
                Some((inv, hex(Sha256::digest(&bytes))))
            }
            None => None,
        };
        let binary = match &a.binary {
            Some(b) => b.clone(),
            None => {
                std::env::current_exe().map_err(|e| BundleError::io(Path::new("trident"), e))?
            }
        };
        let (files, mut missing) = appliance_files(&a.root, &binary, a.models_only);
        let mut models = Vec::new();
        if !a.skip_models {
            match model_sources(&a.root, &a.root.join(&a.config)) {
                Ok(m) => models = m,
                Err(BundleError::Sources(p)) => missing.extend(p),
                Err(e) => return Err(e),
            }
        }
        let engine = if a.models_only || a.no_images {
            None
        } else {
            Some(super::docker::Engine::connect()?)
        };
        let mut images = Vec::new();
        if let Some(engine) = &engine {
            match engine.image(&a.image)? {
                Some(info) => images.push((a.image.clone(), info, true)),
                None => missing.push(format!(
                    "image {} is not present (scripts/build.sh --skip-models builds trident:slim)",
                    a.image
                )),
            }
            let named = !a.extra_images.is_empty();
            let extras: Vec<String> = if named {
                a.extra_images.clone()
            } else if a.no_extra_images {
                Vec::new()
            } else {
                PROFILE_IMAGES.iter().map(|s| s.to_string()).collect()
            };
            for r in extras {
                match engine.image(&r)? {
                    Some(info) => images.push((r, info, false)),
                    None if named => missing.push(format!("image {r} is not present")),
                    None => progress::say(
                        mode,
                        &format!("{r} is not present here; the bundle will not carry it"),
                    ),
                }
            }
        }
        let arch = manifest::docker_arch();
        for (r, info, _) in &images {
            if !manifest::is_image_ref(r) {
                missing.push(format!(
                    "image reference '{r}' has characters a bundle cannot carry"
                ));
            }
            if let Some(image_arch) = info.architecture.as_deref().filter(|x| *x != arch) {
                missing.push(format!(
                    "image {r} is {image_arch}, this machine (and the bundled binary) is {arch}"
                ));
            }
        }
        if !missing.is_empty() {
            return Err(BundleError::Sources(missing));
        }
        Ok(Plan {
            files,
            models,
            images,
            engine,
            base,
            signer,
        })
    }

    fn inventory(&self) -> Option<&Inventory> {
        self.base.as_ref().map(|(i, _)| i)
    }

    /// Phase 1: the sha256 of every file (and whether the base already has it).
    fn hash(&self, mode: Mode) -> Result<(Vec<FileEntry>, Vec<ModelFiles>), BundleError> {
        let all = || self.models.iter().flat_map(|(_, s)| s).chain(&self.files);
        let total = all()
            .filter_map(|s| std::fs::metadata(&s.disk).ok())
            .map(|m| m.len())
            .sum();
        let phase = Phase::start(mode, "hash", total);
        let files = self
            .files
            .iter()
            .map(|s| entry_for(s, &phase, self.inventory()))
            .collect::<Result<Vec<_>, _>>()?;
        let mut models = Vec::new();
        for (group, sources) in &self.models {
            let mut group = group.clone();
            for s in sources {
                group.files.push(entry_for(s, &phase, self.inventory())?);
            }
            models.push(group);
        }
        phase.finish();
        Ok((files, models))
    }

    /// Phase 2: every image the base lacks, exported through the Engine API and gzip'd into
    /// `work`, hashed in the same pass.
    fn export(
        &self,
        work: &Path,
        level: u32,
        mode: Mode,
    ) -> Result<(Vec<ImageEntry>, BTreeMap<String, PathBuf>), BundleError> {
        let in_base = |id: &str| self.inventory().is_some_and(|b| b.has_image(id));
        let total = self
            .images
            .iter()
            .filter(|(_, i, _)| !in_base(&i.id))
            .map(|(_, i, _)| i.size)
            .sum();
        let shown = if self.images.is_empty() {
            Mode::Quiet
        } else {
            mode
        };
        let phase = Phase::start(shown, "export", total);
        let mut entries = Vec::new();
        let mut on_disk = BTreeMap::new();
        for (reference, info, appliance) in &self.images {
            let mut entry = ImageEntry {
                reference: reference.clone(),
                id: info.id.clone(),
                appliance: *appliance,
                file: None,
            };
            if !in_base(&info.id) {
                let rel = image_file_name(reference);
                let disk = work.join(&rel);
                let out = File::create(&disk).map_err(|e| BundleError::io(&disk, e))?;
                let gz = flate2::write::GzEncoder::new(
                    HashWriter {
                        inner: io::BufWriter::with_capacity(1 << 20, out),
                        hash: Sha256::new(),
                        bytes: 0,
                    },
                    flate2::Compression::new(level),
                );
                let engine = self
                    .engine
                    .as_ref()
                    .expect("images need the engine. This is a bug.");
                let gz = engine.export(reference, gz, &phase)?;
                let write_err = |e: io::Error| BundleError::Write {
                    path: rel.clone(),
                    source: e,
                };
                let mut hw = gz.finish().map_err(write_err)?;
                hw.flush().map_err(write_err)?;
                entry.file = Some(FileEntry {
                    path: rel.clone(),
                    size: hw.bytes,
                    sha256: hex(hw.hash.finalize()),
                    mode: 0o644,
                    in_base: false,
                });
                on_disk.insert(rel, disk);
            }
            entries.push(entry);
        }
        phase.finish();
        Ok((entries, on_disk))
    }
}

pub fn run(a: &PackArgs) -> Result<u8, BundleError> {
    let mode = Mode::detect(a.json);
    let tag = a
        .tag
        .clone()
        .unwrap_or_else(|| env!("CARGO_PKG_VERSION").to_string());
    manifest::check_tag(&tag)?;
    let plan = Plan::gather(a, mode)?;
    let (files, models) = plan.hash(mode)?;
    std::fs::create_dir_all(&a.output).map_err(|e| BundleError::io(&a.output, e))?;
    let work = WorkDir(
        a.output
            .join(format!(".trident-pack-{}", std::process::id())),
    );
    std::fs::create_dir_all(work.0.join("images")).map_err(|e| BundleError::io(&work.0, e))?;
    let (images, image_files) = plan.export(&work.0, a.image_gzip_level, mode)?;

    let git_sha = plan
        .images
        .iter()
        .find(|(_, _, app)| *app)
        .and_then(|(_, i, _)| i.revision.clone())
        .or_else(|| git_head(&a.root))
        .unwrap_or_else(|| "unknown".into());
    let arch = manifest::docker_arch().to_string();
    let mut m = Manifest {
        schema: manifest::SCHEMA,
        kind: manifest::KIND.into(),
        appliance: Appliance {
            version: env!("CARGO_PKG_VERSION").into(),
            tag: tag.clone(),
            git_sha,
            arch: arch.clone(),
        },
        created: manifest::rfc3339(std::time::SystemTime::now()),
        images,
        models,
        files,
        base: None,
    };
    if let Some((_, sha)) = &plan.base {
        m.base = Some(Base {
            inventory_sha256: sha.clone(),
            images_left_out: m.images.iter().filter(|i| i.file.is_none()).count(),
            files_left_out: m.all_files().filter(|f| f.in_base).count(),
        });
    }
    let raw = m.to_bytes();
    Manifest::parse(&raw)?; // what is written is what a reader accepts
    let sig = plan.signer.as_ref().map(|k| {
        serde_json::to_vec_pretty(&super::sign::sign(k, &raw))
            .expect("signature serialises. This is a bug.")
    });

    let mut sources: BTreeMap<String, PathBuf> = image_files;
    for s in plan
        .files
        .iter()
        .chain(plan.models.iter().flat_map(|(_, s)| s))
    {
        sources.insert(s.bundle_path.clone(), s.disk.clone());
    }
    let name = manifest::archive_name(&tag, &arch);
    let head = Head {
        manifest: &raw,
        signature: sig.as_deref(),
    };
    let (parts, sidecar) = write_archive(a, &name, &m, head, &sources, mode)?;
    drop(work);
    report(a, &name, &m, &parts, &sidecar, sig.is_some());
    Ok(0)
}

/// The first entries of the archive: the manifest's exact bytes and its signature.
struct Head<'a> {
    manifest: &'a [u8],
    signature: Option<&'a [u8]>,
}

/// Phase 3: the archive. Small entries first (manifest, signature, listings), then every
/// carried file, re-hashed as it is copied.
fn write_archive(
    a: &PackArgs,
    name: &str,
    m: &Manifest,
    head: Head<'_>,
    sources: &BTreeMap<String, PathBuf>,
    mode: Mode,
) -> Result<(Vec<super::parts::Part>, PathBuf), BundleError> {
    let phase = Phase::start(mode, "write", m.carried_bytes());
    let writer = PartWriter::new(&a.output, name, a.part_size);
    let gz = flate2::write::GzEncoder::new(
        io::BufWriter::with_capacity(1 << 20, writer),
        flate2::Compression::new(a.gzip_level),
    );
    let mut tar = tar::Builder::new(gz);
    let mtime = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let out_err = |p: &str, e: io::Error| BundleError::Write {
        path: format!("{} ({p})", a.output.display()),
        source: e,
    };
    let mut small = vec![(MANIFEST, head.manifest.to_vec())];
    if let Some(sig) = head.signature {
        small.push((SIGNATURE, sig.to_vec()));
    }
    small.push((SUMS, m.sha256sums().into_bytes()));
    small.push(("images/IMAGES", m.images_list().into_bytes()));
    for (path, bytes) in &small {
        let mut h = header(bytes.len() as u64, 0o644, mtime);
        tar.append_data(&mut h, format!("{ROOT}/{path}"), bytes.as_slice())
            .map_err(|e| out_err(path, e))?;
    }
    for f in m.carried() {
        let disk = &sources[&f.path];
        let file = File::open(disk).map_err(|e| BundleError::io(disk, e))?;
        let mut reader = HashReader {
            inner: file.take(f.size),
            hash: Sha256::new(),
            bytes: 0,
            phase: phase.clone(),
        };
        let mut h = header(f.size, f.mode, mtime);
        tar.append_data(&mut h, format!("{ROOT}/{}", f.path), &mut reader)
            .map_err(|e| out_err(&f.path, e))?;
        if reader.bytes != f.size || hex(reader.hash.finalize()) != f.sha256 {
            return Err(BundleError::Sources(vec![format!(
                "{} changed while it was being packed",
                disk.display()
            )]));
        }
    }
    let gz = tar
        .into_inner()
        .map_err(|e| out_err("finishing the archive", e))?;
    let buf = gz.finish().map_err(|e| out_err("finishing gzip", e))?;
    let writer = buf
        .into_inner()
        .map_err(|e| out_err("flushing", e.into_error()))?;
    let done = writer.finish()?;
    phase.finish();
    Ok(done)
}

fn report(
    a: &PackArgs,
    name: &str,
    m: &Manifest,
    parts: &[super::parts::Part],
    sidecar: &Path,
    signed: bool,
) {
    let total: u64 = parts.iter().map(|p| p.size).sum();
    if a.json {
        let v = serde_json::json!({
            "result": "ok", "bundle": a.output.join(name), "sidecar": sidecar,
            "parts": parts.iter().map(|p| serde_json::json!({"name": p.name, "size": p.size, "sha256": p.sha256})).collect::<Vec<_>>(),
            "size": total, "files": m.carried().count(), "images": m.images.len(),
            "signed": signed, "delta": m.base.is_some(),
        });
        println!("{v}");
        return;
    }
    let plural = if parts.len() == 1 { "" } else { "s" };
    println!(
        "packed {} ({} part{plural}, {:.1} MB)",
        a.output.join(name).display(),
        parts.len(),
        total as f64 / 1e6
    );
    for p in parts {
        println!("  {}  {}  {} bytes", p.sha256, p.name, p.size);
    }
    println!("  sidecar {}", sidecar.display());
    let delta = m.base.as_ref().map_or(String::new(), |b| {
        format!(
            ", delta ({} files and {} images left to the base)",
            b.files_left_out, b.images_left_out
        )
    });
    println!(
        "  {} images, {} model files, {} other files{}{delta}",
        m.images.len(),
        m.models.iter().map(|g| g.files.len()).sum::<usize>(),
        m.files.len(),
        if signed { ", signed" } else { "" },
    );
}

fn header(size: u64, mode: u32, mtime: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_size(size);
    h.set_mode(mode);
    h.set_mtime(mtime);
    h.set_uid(0);
    h.set_gid(0);
    h.set_entry_type(tar::EntryType::Regular);
    h
}

/// Reads through while hashing and counting (so the bytes written are the bytes hashed).
struct HashReader<R> {
    inner: R,
    hash: Sha256,
    bytes: u64,
    phase: Phase,
}

impl<R: Read> Read for HashReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        self.bytes += n as u64;
        self.phase.inc(n as u64);
        Ok(n)
    }
}

fn git_head(root: &Path) -> Option<String> {
    let out = std::process::Command::new("git")
        .arg("-C")
        .arg(root)
        .args(["rev-parse", "HEAD"])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("2GiB").unwrap(), 2 << 30);
        assert_eq!(parse_size("500MiB").unwrap(), 500 << 20);
        assert_eq!(parse_size("4G").unwrap(), 4 << 30);
        assert_eq!(parse_size("1000000000").unwrap(), 1_000_000_000);
        assert!(parse_size("1k").is_err()); // below 1 MiB
        assert!(parse_size("2XB").is_err());
        assert!(parse_size("-1").is_err());
        assert!(parse_size("99999999999999TiB").is_err());
    }

    #[test]
    fn image_names_are_portable() {
        assert_eq!(
            image_file_name("trident:slim"),
            "images/trident_slim.tar.gz"
        );
        assert_eq!(
            image_file_name("prom/prometheus:v2.53.0"),
            "images/prom_prometheus_v2.53.0.tar.gz"
        );
    }
}
