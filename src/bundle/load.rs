//! `trident bundle load`: on the target, with no network.
//!
//! 1. Read the manifest (and check its signature) from the head of the archive.
//! 2. Preflight: architecture, a delta's base present, free space for the files not yet
//!    installed (on the target's filesystem, one copy) and for the images (Docker's).
//! 3. One streaming pass verifies every digest and writes what is missing into a staging
//!    directory beside the target (`.<name>.partial-<pid>`, files as `….partial` until their
//!    digest matched). Any problem removes the staging directory: nothing is placed.
//! 4. Place: a new target is the staging directory renamed; an existing one gets each file
//!    renamed into place (config files the operator edited are kept, the new one beside them
//!    as `….bundle-new`). The state file records what is installed.
//! 5. `docker load` every image not already present with its config digest, and confirm each
//!    reference by tag.
//!
//! A rerun skips files and images already present with the right digest.

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use clap::Args;

use super::install::State;
use super::manifest::{FileEntry, Manifest};
use super::parts::PartList;
use super::progress::{self, Mode, Phase};
use super::reader::{self, NullSink, Sink};
use super::BundleError;

/// Room kept free beyond what the files need.
const SPACE_MARGIN: u64 = 64 << 20;

#[derive(Debug, Args)]
pub struct LoadArgs {
    /// The bundle: the .tar.gz, any of its parts, or its .sha256 sidecar.
    pub bundle: PathBuf,
    /// Directory to install into (created; an existing one is updated in place).
    #[arg(long, default_value = "trident-offline")]
    pub target: PathBuf,
    /// Public key the bundle must be signed with.
    #[arg(long, env = "TRIDENT_BUNDLE_KEY")]
    pub key: Option<PathBuf>,
    /// Extract and verify only; do not load images into Docker.
    #[arg(long)]
    pub no_docker: bool,
    /// Progress as JSON lines on stderr, the result as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

/// Free bytes for unprivileged users on the filesystem holding `path`.
pub fn free_space(path: &Path) -> Option<u64> {
    let s = nix::sys::statvfs::statvfs(path).ok()?;
    Some(s.blocks_available() as u64 * s.fragment_size() as u64)
}

/// Writes verified files into the staging directory.
struct Staging<'a> {
    dir: PathBuf,
    target: &'a Path,
    state: &'a State,
    /// Files written (their final path in the staging directory exists).
    written: Vec<FileEntry>,
    skipped: usize,
    open: Option<PathBuf>,
    keep: bool,
}

impl Sink for Staging<'_> {
    fn on_manifest(&mut self, _: &Manifest) -> Result<(), BundleError> {
        Ok(())
    }

    fn open(&mut self, f: &FileEntry) -> Result<Option<Box<dyn Write>>, BundleError> {
        if self.state.present(self.target, f) {
            self.skipped += 1;
            return Ok(None);
        }
        let path = self.dir.join(format!("{}.partial", f.path));
        let write_err = |e: io::Error| BundleError::Write {
            path: f.path.clone(),
            source: e,
        };
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(write_err)?;
        }
        // create_new: never follows or reuses anything already at that name.
        let file = File::options()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(write_err)?;
        self.open = Some(path);
        Ok(Some(Box::new(io::BufWriter::with_capacity(1 << 20, file))))
    }

    fn close(&mut self, f: &FileEntry, ok: bool) -> Result<(), BundleError> {
        let Some(partial) = self.open.take() else {
            return Ok(());
        };
        if !ok {
            let _ = std::fs::remove_file(&partial);
            return Ok(());
        }
        let done = self.dir.join(&f.path);
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&partial, std::fs::Permissions::from_mode(f.mode & 0o755))
            .map_err(|e| BundleError::io(&partial, e))?;
        std::fs::rename(&partial, &done).map_err(|e| BundleError::io(&done, e))?;
        self.written.push(f.clone());
        Ok(())
    }
}

impl Drop for Staging<'_> {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// What `load` did.
#[derive(Debug, Default, serde::Serialize)]
pub struct Outcome {
    pub target: PathBuf,
    pub files_written: usize,
    pub files_already_present: usize,
    pub config_kept: Vec<String>,
    pub images_loaded: Vec<String>,
    pub images_already_present: Vec<String>,
}

pub fn run(a: &LoadArgs) -> Result<u8, BundleError> {
    let mode = Mode::detect(a.json);
    let out = load(a, mode)?;
    if a.json {
        println!("{}", serde_json::json!({"result": "ok", "load": out}));
    } else {
        println!(
            "installed into {}: {} files written, {} already present{}",
            out.target.display(),
            out.files_written,
            out.files_already_present,
            if out.config_kept.is_empty() {
                String::new()
            } else {
                format!(
                    "; kept your edited {} (new versions beside them as .bundle-new)",
                    out.config_kept.join(", ")
                )
            }
        );
        if !a.no_docker {
            println!(
                "  images loaded: {}; already present: {}",
                list_or_none(&out.images_loaded),
                list_or_none(&out.images_already_present)
            );
        }
        println!(
            "next: cd {} && ./scripts/deploy.sh start",
            out.target.display()
        );
    }
    Ok(0)
}

fn list_or_none(v: &[String]) -> String {
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

/// The whole load; the library entry point (tests call it with `Mode::Quiet`).
pub fn load(a: &LoadArgs, mode: Mode) -> Result<Outcome, BundleError> {
    let key = a
        .key
        .as_deref()
        .map(super::sign::read_verifying_key)
        .transpose()?;
    let list = PartList::find(&a.bundle)?;
    let (m, _) = reader::read(&list, key.as_ref(), None, &mut NullSink, true)?;
    if m.appliance.arch != super::manifest::docker_arch() && !m.images.is_empty() && !a.no_docker {
        return Err(BundleError::Usage(format!(
            "the bundle is for {}, this machine is {}",
            m.appliance.arch,
            super::manifest::docker_arch()
        )));
    }
    let name = a
        .target
        .file_name()
        .ok_or_else(|| BundleError::Usage("--target must name a directory".into()))?
        .to_string_lossy()
        .into_owned();
    let parent = match a.target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).map_err(|e| BundleError::io(&parent, e))?;
    if std::fs::symlink_metadata(&a.target).is_ok_and(|m| !m.is_dir()) {
        return Err(BundleError::Usage(format!(
            "{} exists and is not a directory",
            a.target.display()
        )));
    }
    let state = State::read(&a.target);
    let engine = if a.no_docker || m.images.is_empty() {
        None
    } else {
        Some(super::docker::Engine::connect()?)
    };

    // --- preflight ----------------------------------------------------------------------------
    let mut missing = Vec::new();
    for f in m.all_files().filter(|f| f.in_base) {
        if !state.present(&a.target, f) {
            missing.push(format!("file {} (sha256 {})", f.path, f.sha256));
        }
    }
    if let Some(e) = engine
        .as_ref()
        .filter(|_| m.images.iter().any(|i| i.file.is_none()))
    {
        let have = e.tagged_images()?;
        for i in m.images.iter().filter(|i| i.file.is_none()) {
            if !have.values().any(|id| *id == i.id) {
                missing.push(format!("image {} ({})", i.reference, i.id));
            }
        }
    }
    if !missing.is_empty() {
        return Err(BundleError::Base(missing));
    }
    let need: u64 = m
        .carried()
        .filter(|f| !state.present(&a.target, f))
        .map(|f| f.size)
        .sum();
    if let Some(free) = free_space(&parent) {
        if free < need + SPACE_MARGIN {
            return Err(BundleError::Space(format!(
                "{} has {} MiB free, the bundle needs {} MiB (+{} MiB margin)",
                parent.display(),
                free >> 20,
                need >> 20,
                SPACE_MARGIN >> 20
            )));
        }
    }
    if let Some(e) = &engine {
        if let Some(root) = e.root_dir() {
            // Docker stores layers uncompressed: about three times the gzip'd size.
            let images: u64 = m
                .images
                .iter()
                .filter_map(|i| i.file.as_ref())
                .map(|f| f.size * 3)
                .sum();
            if let Some(free) = free_space(&root) {
                if free < images + SPACE_MARGIN {
                    return Err(BundleError::Space(format!(
                        "Docker's {} has {} MiB free, the images need about {} MiB",
                        root.display(),
                        free >> 20,
                        images >> 20
                    )));
                }
            }
        }
    }

    // --- verify and extract into staging ------------------------------------------------------
    for stale in std::fs::read_dir(&parent)
        .map_err(|e| BundleError::io(&parent, e))?
        .flatten()
    {
        if stale
            .file_name()
            .to_string_lossy()
            .starts_with(&format!(".{name}.partial-"))
        {
            let _ = std::fs::remove_dir_all(stale.path());
        }
    }
    let dir = parent.join(format!(".{name}.partial-{}", std::process::id()));
    std::fs::create_dir(&dir).map_err(|e| BundleError::io(&dir, e))?;
    let mut staging = Staging {
        dir,
        target: &a.target,
        state: &state,
        written: Vec::new(),
        skipped: 0,
        open: None,
        keep: false,
    };
    let phase = Phase::start(mode, "verify", list.size());
    reader::read(
        &list,
        key.as_ref(),
        Some(phase.clone()),
        &mut staging,
        false,
    )?;
    phase.finish();

    // --- place --------------------------------------------------------------------------------
    let mut new_state = state.clone();
    new_state.tag = m.appliance.tag.clone();
    new_state.version = m.appliance.version.clone();
    let mut out = Outcome {
        target: a.target.clone(),
        files_written: staging.written.len(),
        files_already_present: staging.skipped,
        ..Outcome::default()
    };
    let sums = all_sums(&m);
    let (dir, written) = (staging.dir.clone(), std::mem::take(&mut staging.written));
    write_in(&dir, super::manifest::MANIFEST, &m.to_bytes())?;
    write_in(&dir, super::manifest::SUMS, sums.as_bytes())?;
    write_in(&dir, "images/IMAGES", m.images_list().as_bytes())?;
    let fresh = !a.target.exists();
    if fresh {
        std::fs::rename(&dir, &a.target).map_err(|e| BundleError::io(&a.target, e))?;
        staging.keep = true;
    } else {
        for f in &written {
            let to = a.target.join(&f.path);
            let from = dir.join(&f.path);
            let edited = f.path.starts_with("config/")
                && state.files.get(&f.path).is_some_and(|p| {
                    state
                        .digest(&a.target, &f.path)
                        .is_some_and(|now| now != p.sha256)
                });
            let to = if edited {
                out.config_kept.push(f.path.clone());
                a.target.join(format!("{}.bundle-new", f.path))
            } else {
                to
            };
            if let Some(p) = to.parent() {
                std::fs::create_dir_all(p).map_err(|e| BundleError::io(p, e))?;
            }
            std::fs::rename(&from, &to).map_err(|e| BundleError::io(&to, e))?;
        }
        for name in [
            super::manifest::MANIFEST,
            super::manifest::SUMS,
            "images/IMAGES",
        ] {
            let to = a.target.join(name);
            std::fs::create_dir_all(to.parent().unwrap_or(&a.target))
                .map_err(|e| BundleError::io(&to, e))?;
            std::fs::rename(dir.join(name), &to).map_err(|e| BundleError::io(&to, e))?;
        }
    }
    drop(staging);
    nix::unistd::sync();
    for f in &written {
        if !out.config_kept.contains(&f.path) {
            new_state.record(&a.target, &f.path, f.size, &f.sha256);
        }
    }
    new_state.write(&a.target)?;

    // --- images -------------------------------------------------------------------------------
    if let Some(e) = &engine {
        let total: u64 = m
            .images
            .iter()
            .filter_map(|i| i.file.as_ref())
            .map(|f| f.size)
            .sum();
        let phase = Phase::start(mode, "load", total);
        for i in &m.images {
            if e.image(&i.reference)?.is_some_and(|have| have.id == i.id) {
                out.images_already_present.push(i.reference.clone());
                if let Some(f) = &i.file {
                    phase.inc(f.size);
                }
                continue;
            }
            if let Some(f) = &i.file {
                e.load(&a.target.join(&f.path), &phase)?;
            }
            match e.image(&i.reference)? {
                Some(have) if have.id == i.id => {}
                _ => {
                    // Loaded under another name, or a base image without this tag.
                    e.tag(&i.id, &i.reference)?;
                    match e.image(&i.reference)? {
                        Some(have) if have.id == i.id => {}
                        other => {
                            return Err(BundleError::Docker(format!(
                                "{} should be {} after loading, but is {}",
                                i.reference,
                                i.id,
                                other.map_or("absent".into(), |o| o.id)
                            )))
                        }
                    }
                }
            }
            out.images_loaded.push(i.reference.clone());
        }
        phase.finish();
    } else if !a.no_docker && !m.images.is_empty() {
        progress::say(mode, "images were not loaded (no Docker)");
    }
    Ok(out)
}

/// `SHA256SUMS` of the installed directory: every file, carried or left to the base.
fn all_sums(m: &Manifest) -> String {
    m.all_files()
        .map(|f| format!("{}  {}\n", f.sha256, f.path))
        .collect()
}

fn write_in(dir: &Path, rel: &str, bytes: &[u8]) -> Result<(), BundleError> {
    let p = dir.join(rel);
    if let Some(parent) = p.parent() {
        std::fs::create_dir_all(parent).map_err(|e| BundleError::io(parent, e))?;
    }
    std::fs::write(&p, bytes).map_err(|e| BundleError::Write {
        path: rel.to_string(),
        source: e,
    })
}
