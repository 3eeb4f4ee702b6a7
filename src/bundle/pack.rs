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

/// One file to carry: where it goes in the bundle and where it is now.
#[derive(Debug, Clone)]
pub struct Source {
    pub bundle_path: String,
    pub disk: PathBuf,
    pub mode: u32,
}

/// The non-model files of the bundle, relative to the repository root.
fn appliance_files(root: &Path, binary: &Path, models_only: bool) -> (Vec<Source>, Vec<String>) {
    let mut out = Vec::new();
    let mut missing = Vec::new();
    let mut add = |bundle: &str, disk: PathBuf, mode: u32| {
        if disk.is_file() {
            out.push(Source {
                bundle_path: bundle.to_string(),
                disk,
                mode,
            });
        } else {
            missing.push(format!("{} (for {bundle})", disk.display()));
        }
    };
    for f in walk(&root.join("config")).unwrap_or_default() {
        let rel = f
            .strip_prefix(root)
            .unwrap_or(&f)
            .to_string_lossy()
            .into_owned();
        add(&rel, f, 0o644);
    }
    if models_only {
        return (out, missing);
    }
    add("bin/trident", binary.to_path_buf(), 0o755);
    for (rel, mode) in [
        ("compose.yaml", 0o644),
        (".env.example", 0o644),
        ("deploy.sh", 0o755),
        ("scripts/lib/docker.sh", 0o644),
        ("docker/nginx/trident.conf", 0o644),
    ] {
        add(rel, root.join(rel), mode);
    }
    for dir in ["compose", "monitoring"] {
        for f in walk(&root.join(dir)).unwrap_or_default() {
            let rel = f
                .strip_prefix(root)
                .unwrap_or(&f)
                .to_string_lossy()
                .into_owned();
            add(&rel, f, 0o644);
        }
    }
    // The offline templates: the target's README and the scripts that need no binary.
    for (from, to, mode) in [
        ("offline/README.md", "README.md", 0o644),
        ("offline/README.zh-CN.md", "README.zh-CN.md", 0o644),
        ("offline/load_images.sh", "scripts/load_images.sh", 0o755),
        ("offline/deploy.sh", "scripts/deploy.sh", 0o755),
    ] {
        add(to, root.join(from), mode);
    }
    (out, missing)
}

/// Regular files under `dir`, symlinks followed, sorted, hidden names skipped.
fn walk(dir: &Path) -> io::Result<Vec<PathBuf>> {
    fn go(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) -> io::Result<()> {
        if depth > 16 {
            return Err(io::Error::other(format!(
                "{}: nested too deep",
                dir.display()
            )));
        }
        let mut names: Vec<_> = std::fs::read_dir(dir)?.collect::<Result<_, _>>()?;
        names.sort_by_key(|e| e.file_name());
        for e in names {
            if e.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            let p = e.path();
            let meta = std::fs::metadata(&p)?;
            if meta.is_dir() {
                go(&p, depth + 1, out)?;
            } else if meta.is_file() {
                out.push(p);
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    go(dir, 0, &mut out)?;
    Ok(out)
}

/// Files a model file's loader reads beside it (GGUF: tokenizer and template overrides).
const MODEL_SIDE_FILES: [&str; 4] = [
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
    "config.json",
];

/// The model files of `models.json`, grouped by path (models sharing files share a group).
fn model_sources(
    root: &Path,
    config: &Path,
) -> Result<Vec<(ModelFiles, Vec<Source>)>, BundleError> {
    let file =
        crate::config::ModelsFile::load(config, crate::config::CheckOptions { check_paths: false })
            .map_err(|e| BundleError::Sources(vec![format!("{}: {e}", config.display())]))?;
    let mut groups: BTreeMap<String, (Vec<String>, Vec<Source>)> = BTreeMap::new();
    let mut problems = Vec::new();
    for (id, entry) in &file.models {
        let Some(path) = &entry.path else { continue }; // a remote upstream
        let text = path.to_string_lossy();
        let rel = match text.strip_prefix("/app/") {
            Some(r) => r.to_string(),
            None if path.is_relative() => text.trim_start_matches("./").to_string(),
            None => {
                problems.push(format!(
                    "model '{id}': path {text} is absolute; use a path relative to the project (models/…) so it maps into the bundle"
                ));
                continue;
            }
        };
        if super::entry::check_relative(&rel).is_err() {
            problems.push(format!(
                "model '{id}': path {text} is not a plain relative path"
            ));
            continue;
        }
        if let Some((ids, _)) = groups.get_mut(&rel) {
            ids.push(id.clone());
            continue;
        }
        let disk = root.join(&rel);
        let mut sources = Vec::new();
        if disk.is_dir() {
            for f in walk(&disk).map_err(|e| BundleError::io(&disk, e))? {
                let sub = f
                    .strip_prefix(&disk)
                    .unwrap_or(&f)
                    .to_string_lossy()
                    .into_owned();
                sources.push(Source {
                    bundle_path: format!("{rel}/{sub}"),
                    disk: f,
                    mode: 0o644,
                });
            }
        } else if disk.is_file() {
            sources.push(Source {
                bundle_path: rel.clone(),
                disk: disk.clone(),
                mode: 0o644,
            });
            let parent_rel = Path::new(&rel)
                .parent()
                .map(|p| p.to_string_lossy().into_owned());
            for side in MODEL_SIDE_FILES {
                let p = disk.with_file_name(side);
                if p.is_file() {
                    let b = match &parent_rel {
                        Some(pr) if !pr.is_empty() => format!("{pr}/{side}"),
                        _ => side.to_string(),
                    };
                    sources.push(Source {
                        bundle_path: b,
                        disk: p,
                        mode: 0o644,
                    });
                }
            }
        } else {
            problems.push(format!(
                "model '{id}': {} does not exist (scripts/fetch-models.sh?)",
                disk.display()
            ));
            continue;
        }
        groups.insert(rel, (vec![id.clone()], sources));
    }
    if !problems.is_empty() {
        return Err(BundleError::Sources(problems));
    }
    Ok(groups
        .into_iter()
        .map(|(path, (ids, sources))| {
            (
                ModelFiles {
                    ids,
                    path,
                    files: Vec::new(),
                },
                sources,
            )
        })
        .collect())
}

/// sha256 and size of a file, counted into `phase`.
fn hash_file(path: &Path, phase: &Phase) -> Result<(u64, String), BundleError> {
    let mut f = File::open(path).map_err(|e| BundleError::io(path, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut n_total = 0u64;
    loop {
        let n = f.read(&mut buf).map_err(|e| BundleError::io(path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        n_total += n as u64;
        phase.inc(n as u64);
    }
    Ok((n_total, hex(h.finalize())))
}

fn entry_for(
    s: &Source,
    phase: &Phase,
    base: Option<&Inventory>,
) -> Result<FileEntry, BundleError> {
    let (size, sha256) = hash_file(&s.disk, phase)?;
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

pub fn run(a: &PackArgs) -> Result<u8, BundleError> {
    let mode = Mode::detect(a.json);
    let root = a.root.clone();
    let binary = match &a.binary {
        Some(b) => b.clone(),
        None => std::env::current_exe().map_err(|e| BundleError::io(Path::new("trident"), e))?,
    };
    let tag = a
        .tag
        .clone()
        .unwrap_or_else(|| env!("CARGO_PKG_VERSION").to_string());
    manifest::check_tag(&tag)?;
    let signer = a
        .sign
        .as_deref()
        .map(super::sign::read_signing_key)
        .transpose()?;
    let (base, base_sha) = match &a.base {
        Some(p) => {
            let bytes = std::fs::read(p).map_err(|e| BundleError::io(p, e))?;
            let inv: Inventory = serde_json::from_slice(&bytes).map_err(|e| {
                BundleError::Usage(format!(
                    "{}: not a `trident bundle inventory` file: {e}",
                    p.display()
                ))
            })?;
            (Some(inv), Some(hex(Sha256::digest(&bytes))))
        }
        None => (None, None),
    };

    // --- what goes in -------------------------------------------------------------------------
    let (files, mut missing) = appliance_files(&root, &binary, a.models_only);
    let models = if a.skip_models {
        Vec::new()
    } else {
        match model_sources(&root, &root.join(&a.config)) {
            Ok(m) => m,
            Err(BundleError::Sources(p)) => {
                missing.extend(p);
                Vec::new()
            }
            Err(e) => return Err(e),
        }
    };
    let engine = if a.models_only || a.no_images {
        None
    } else {
        Some(super::docker::Engine::connect()?)
    };
    let mut images: Vec<(String, super::docker::ImageInfo, bool)> = Vec::new();
    if let Some(engine) = &engine {
        match engine.image(&a.image)? {
            Some(info) => images.push((a.image.clone(), info, true)),
            None => missing.push(format!(
                "image {} is not present (scripts/build.sh --skip-models builds trident:slim)",
                a.image
            )),
        }
        let extras: Vec<String> = if !a.extra_images.is_empty() {
            a.extra_images.clone()
        } else if a.no_extra_images {
            Vec::new()
        } else {
            PROFILE_IMAGES.iter().map(|s| s.to_string()).collect()
        };
        for r in extras {
            match engine.image(&r)? {
                Some(info) => images.push((r, info, false)),
                None if a.extra_images.is_empty() => progress::say(
                    mode,
                    &format!("{r} is not present here; the bundle will not carry it"),
                ),
                None => missing.push(format!("image {r} is not present")),
            }
        }
    }
    for (r, _, _) in &images {
        if !manifest::is_image_ref(r) {
            missing.push(format!(
                "image reference '{r}' has characters a bundle cannot carry"
            ));
        }
    }
    if !missing.is_empty() {
        return Err(BundleError::Sources(missing));
    }
    let arch = manifest::docker_arch().to_string();
    for (r, info, _) in &images {
        if let Some(a2) = &info.architecture {
            if *a2 != arch {
                return Err(BundleError::Sources(vec![format!(
                    "image {r} is {a2}, this machine (and the bundled binary) is {arch}"
                )]));
            }
        }
    }

    // --- phase 1: hash ------------------------------------------------------------------------
    let model_bytes: u64 = models
        .iter()
        .flat_map(|(_, s)| s)
        .chain(&files)
        .filter_map(|s| std::fs::metadata(&s.disk).ok())
        .map(|m| m.len())
        .sum();
    let phase = Phase::start(mode, "hash", model_bytes);
    let mut file_entries = Vec::new();
    for s in &files {
        file_entries.push(entry_for(s, &phase, base.as_ref())?);
    }
    let mut model_entries = Vec::new();
    for (mut group, sources) in models.clone() {
        for s in &sources {
            group.files.push(entry_for(s, &phase, base.as_ref())?);
        }
        model_entries.push(group);
    }
    phase.finish();

    // --- phase 2: export images ---------------------------------------------------------------
    std::fs::create_dir_all(&a.output).map_err(|e| BundleError::io(&a.output, e))?;
    let work = WorkDir(
        a.output
            .join(format!(".trident-pack-{}", std::process::id())),
    );
    std::fs::create_dir_all(work.0.join("images")).map_err(|e| BundleError::io(&work.0, e))?;
    let mut image_entries = Vec::new();
    let mut image_disk: BTreeMap<String, PathBuf> = BTreeMap::new();
    let to_export: u64 = images
        .iter()
        .filter(|(_, i, _)| !base.as_ref().is_some_and(|b| b.has_image(&i.id)))
        .map(|(_, i, _)| i.size)
        .sum();
    let phase = Phase::start(
        if images.is_empty() { Mode::Quiet } else { mode },
        "export",
        to_export,
    );
    for (reference, info, appliance) in &images {
        if base.as_ref().is_some_and(|b| b.has_image(&info.id)) {
            image_entries.push(ImageEntry {
                reference: reference.clone(),
                id: info.id.clone(),
                appliance: *appliance,
                file: None,
            });
            continue;
        }
        let rel = image_file_name(reference);
        let disk = work.0.join(&rel);
        let out = File::create(&disk).map_err(|e| BundleError::io(&disk, e))?;
        let gz = flate2::write::GzEncoder::new(
            HashWriter {
                inner: io::BufWriter::with_capacity(1 << 20, out),
                hash: Sha256::new(),
                bytes: 0,
            },
            flate2::Compression::new(a.image_gzip_level),
        );
        let engine = engine
            .as_ref()
            .expect("images need the engine. This is a bug.");
        let gz = engine.export(reference, gz, &phase)?;
        let write_err = |e: io::Error| BundleError::Write {
            path: rel.clone(),
            source: e,
        };
        let mut hw = gz.finish().map_err(write_err)?;
        hw.flush().map_err(write_err)?;
        let (size, sha256) = (hw.bytes, hex(hw.hash.finalize()));
        image_disk.insert(rel.clone(), disk);
        image_entries.push(ImageEntry {
            reference: reference.clone(),
            id: info.id.clone(),
            appliance: *appliance,
            file: Some(FileEntry {
                path: rel,
                size,
                sha256,
                mode: 0o644,
                in_base: false,
            }),
        });
    }
    phase.finish();

    // --- the manifest -------------------------------------------------------------------------
    let git_sha = images
        .iter()
        .find(|(_, _, app)| *app)
        .and_then(|(_, i, _)| i.revision.clone())
        .or_else(|| git_head(&root))
        .unwrap_or_else(|| "unknown".into());
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
        images: image_entries,
        models: model_entries,
        files: file_entries,
        base: None,
    };
    if let (Some(b), Some(sha)) = (&base, base_sha) {
        let _ = b;
        m.base = Some(Base {
            inventory_sha256: sha,
            images_left_out: m.images.iter().filter(|i| i.file.is_none()).count(),
            files_left_out: m.all_files().filter(|f| f.in_base).count(),
        });
    }
    let raw = m.to_bytes();
    Manifest::parse(&raw)?; // what we write is what a reader accepts
    let sig = signer.as_ref().map(|k| {
        serde_json::to_vec_pretty(&super::sign::sign(k, &raw))
            .expect("signature serialises. This is a bug.")
    });

    // --- phase 3: write the archive -----------------------------------------------------------
    let name = manifest::archive_name(&tag, &arch);
    let mut sources: BTreeMap<String, PathBuf> = BTreeMap::new();
    for s in files.iter().chain(models.iter().flat_map(|(_, s)| s)) {
        sources.insert(s.bundle_path.clone(), s.disk.clone());
    }
    sources.extend(image_disk);
    let phase = Phase::start(mode, "write", m.carried_bytes());
    let writer = PartWriter::new(&a.output, &name, a.part_size);
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
    let small = |tar: &mut tar::Builder<_>, path: &str, bytes: &[u8]| -> Result<(), BundleError> {
        let mut h = header(bytes.len() as u64, 0o644, mtime);
        tar.append_data(&mut h, format!("{ROOT}/{path}"), bytes)
            .map_err(|e| out_err(path, e))
    };
    small(&mut tar, MANIFEST, &raw)?;
    if let Some(sig) = &sig {
        small(&mut tar, SIGNATURE, sig)?;
    }
    small(&mut tar, SUMS, m.sha256sums().as_bytes())?;
    small(&mut tar, "images/IMAGES", m.images_list().as_bytes())?;
    for f in m
        .files
        .iter()
        .chain(m.models.iter().flat_map(|g| g.files.iter()))
        .chain(m.images.iter().filter_map(|i| i.file.as_ref()))
    {
        if f.in_base {
            continue;
        }
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
    let (parts, sidecar) = writer.finish()?;
    phase.finish();
    drop(work);

    let total: u64 = parts.iter().map(|p| p.size).sum();
    if a.json {
        let v = serde_json::json!({
            "result": "ok", "bundle": a.output.join(&name), "sidecar": sidecar,
            "parts": parts.iter().map(|p| serde_json::json!({"name": p.name, "size": p.size, "sha256": p.sha256})).collect::<Vec<_>>(),
            "size": total, "files": m.carried().count(), "images": m.images.len(),
            "signed": sig.is_some(), "delta": m.base.is_some(),
        });
        println!("{v}");
    } else {
        println!(
            "packed {} ({} part{}, {:.1} MB)",
            a.output.join(&name).display(),
            parts.len(),
            if parts.len() == 1 { "" } else { "s" },
            total as f64 / 1e6
        );
        for p in &parts {
            println!("  {}  {}  {} bytes", p.sha256, p.name, p.size);
        }
        println!("  sidecar {}", sidecar.display());
        println!(
            "  {} images, {} model files, {} other files{}{}",
            m.images.len(),
            m.models.iter().map(|g| g.files.len()).sum::<usize>(),
            m.files.len(),
            if sig.is_some() { ", signed" } else { "" },
            m.base.as_ref().map_or(String::new(), |b| format!(
                ", delta ({} files and {} images left to the base)",
                b.files_left_out, b.images_left_out
            ))
        );
    }
    Ok(0)
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
