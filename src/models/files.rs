//! Locating model files: a plain local directory, a single file, or the Hugging Face
//! cache layout (`models--org--name/snapshots/<rev>/…`, with `refs/main` naming the revision).

use std::path::{Path, PathBuf};

use super::ModelError;

/// Resolves a configured model path to the directory (or file) holding the model.
///
/// * a file is returned as is (e.g. a `.gguf`);
/// * a directory with `config.json`, `*.gguf` or `*.safetensors` is returned as is;
/// * a Hugging Face cache repo directory (`models--…`) resolves to the snapshot named by
///   `refs/main`, or the only snapshot when there is no ref.
pub fn resolve(path: &Path) -> Result<PathBuf, ModelError> {
    if !path.exists() {
        return Err(ModelError::Files {
            what: "model path does not exist".into(),
            path: path.to_path_buf(),
        });
    }
    if path.is_file() {
        return Ok(path.to_path_buf());
    }
    let snapshots = path.join("snapshots");
    if snapshots.is_dir() && !path.join("config.json").exists() {
        if let Ok(rev) = std::fs::read_to_string(path.join("refs").join("main")) {
            let dir = snapshots.join(rev.trim());
            if dir.is_dir() {
                return Ok(dir);
            }
        }
        let mut entries: Vec<PathBuf> = std::fs::read_dir(&snapshots)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_dir())
            .collect();
        entries.sort();
        return match entries.len() {
            1 => Ok(entries.remove(0)),
            0 => Err(ModelError::Files {
                what: "Hugging Face cache has no snapshot".into(),
                path: snapshots,
            }),
            _ => Err(ModelError::Files {
                what: "Hugging Face cache has several snapshots and no refs/main".into(),
                path: snapshots,
            }),
        };
    }
    Ok(path.to_path_buf())
}

/// Lists the safetensors weight files of a model directory: the shards named by
/// `model.safetensors.index.json` when present, otherwise `model.safetensors` or every
/// `*.safetensors` file in name order.
pub fn safetensors_files(dir: &Path) -> Result<Vec<PathBuf>, ModelError> {
    let index = dir.join("model.safetensors.index.json");
    if index.exists() {
        let text = std::fs::read_to_string(&index)?;
        let json: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| ModelError::Invalid {
                path: index.clone(),
                reason: e.to_string(),
            })?;
        let map = json["weight_map"]
            .as_object()
            .ok_or_else(|| ModelError::Invalid {
                path: index.clone(),
                reason: "no weight_map object".into(),
            })?;
        let mut files: Vec<String> = map
            .values()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect();
        files.sort();
        files.dedup();
        return files
            .into_iter()
            .map(|f| {
                let p = dir.join(&f);
                if p.exists() {
                    Ok(p)
                } else {
                    Err(ModelError::Files {
                        what: "shard named by model.safetensors.index.json is missing".into(),
                        path: p,
                    })
                }
            })
            .collect();
    }
    let single = dir.join("model.safetensors");
    if single.exists() {
        return Ok(vec![single]);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(ModelError::Files {
            what: "no *.safetensors weights in model directory".into(),
            path: dir.to_path_buf(),
        });
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hf_cache_layout_resolves_to_ref_snapshot() {
        let tmp = tempfile::tempdir().unwrap();
        let repo = tmp.path().join("models--org--m");
        std::fs::create_dir_all(repo.join("snapshots/abc")).unwrap();
        std::fs::create_dir_all(repo.join("snapshots/def")).unwrap();
        std::fs::create_dir_all(repo.join("refs")).unwrap();
        std::fs::write(repo.join("refs/main"), "def\n").unwrap();
        assert_eq!(resolve(&repo).unwrap(), repo.join("snapshots/def"));
        std::fs::remove_file(repo.join("refs/main")).unwrap();
        assert!(resolve(&repo).is_err());
    }

    #[test]
    fn missing_path_is_an_error_naming_it() {
        let err = resolve(Path::new("/nonexistent/trident-model")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/trident-model"));
    }
}
