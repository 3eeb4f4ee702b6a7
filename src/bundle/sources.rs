//! What `bundle pack` carries, found on disk: the appliance's files (config, compose,
//! monitoring, scripts, the offline templates, the binary) and the models of
//! `config/models.json` as plain files, grouped by path so models that share files (an
//! embedding model also configured for rerank) share them in the bundle too.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use super::manifest::ModelFiles;
use super::BundleError;

/// One file to carry: where it goes in the bundle and where it is now.
#[derive(Debug, Clone)]
pub struct Source {
    pub bundle_path: String,
    pub disk: PathBuf,
    pub mode: u32,
}

/// The non-model files of the bundle, relative to the repository root.
pub fn appliance_files(
    root: &Path,
    binary: &Path,
    models_only: bool,
) -> (Vec<Source>, Vec<String>) {
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
pub fn model_sources(
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
