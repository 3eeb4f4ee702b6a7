//! What a target has installed: the state file `load` keeps in the bundle directory
//! (`.trident-bundle.json`: every placed file with its size, sha256 and mtime), the "already
//! present with the right digest" test that makes `load` resumable, and `bundle inventory`,
//! the target's listing a delta bundle is packed against.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use clap::Args;
use serde::{Deserialize, Serialize};

use super::manifest::{FileEntry, Inventory, InventoryFile};
use super::BundleError;

/// The state file, relative to the bundle directory.
pub const STATE: &str = ".trident-bundle.json";

/// One placed file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placed {
    pub size: u64,
    pub sha256: String,
    /// Modification time (ns since the epoch) when it was placed: a file whose size and
    /// mtime still match is not hashed again.
    pub mtime_ns: u128,
}

/// `.trident-bundle.json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub tag: String,
    pub version: String,
    pub files: BTreeMap<String, Placed>,
}

fn mtime_ns(meta: &std::fs::Metadata) -> u128 {
    meta.modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos())
}

impl State {
    /// The target's state; a missing or unreadable file means nothing is known to be there.
    pub fn read(target: &Path) -> State {
        std::fs::read(target.join(STATE))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    /// Writes the state atomically.
    pub fn write(&self, target: &Path) -> Result<(), BundleError> {
        let tmp = target.join(format!("{STATE}.partial"));
        let bytes = serde_json::to_vec_pretty(self).expect("state serialises. This is a bug.");
        std::fs::write(&tmp, bytes).map_err(|e| BundleError::io(&tmp, e))?;
        let to = target.join(STATE);
        std::fs::rename(&tmp, &to).map_err(|e| BundleError::io(&to, e))
    }

    /// The sha256 of `path` under `target` if it is a regular file (not a link): from the
    /// state when size and mtime still match, else by hashing it.
    pub fn digest(&self, target: &Path, path: &str) -> Option<String> {
        let full = target.join(path);
        let meta = std::fs::symlink_metadata(&full).ok()?;
        if !meta.is_file() {
            return None;
        }
        if let Some(p) = self.files.get(path) {
            if p.size == meta.len() && p.mtime_ns == mtime_ns(&meta) {
                return Some(p.sha256.clone());
            }
        }
        sha256_file(&full).ok()
    }

    /// True when `f` is already at its place with the right digest.
    pub fn present(&self, target: &Path, f: &FileEntry) -> bool {
        self.digest(target, &f.path).as_deref() == Some(f.sha256.as_str())
    }

    /// Records a placed file.
    pub fn record(&mut self, target: &Path, path: &str, size: u64, sha256: &str) {
        let mtime = std::fs::metadata(target.join(path))
            .map(|m| mtime_ns(&m))
            .unwrap_or(0);
        self.files.insert(
            path.to_string(),
            Placed {
                size,
                sha256: sha256.to_string(),
                mtime_ns: mtime,
            },
        );
    }
}

/// sha256 of a file, streamed.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    hash_file(path, None).map(|(_, sha)| sha)
}

/// Size and sha256 of a file, streamed, counting the bytes into `progress`.
pub fn hash_file(
    path: &Path,
    progress: Option<&super::progress::Phase>,
) -> std::io::Result<(u64, String)> {
    use sha2::{Digest, Sha256};
    use std::io::Read as _;
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        size += n as u64;
        if let Some(p) = progress {
            p.inc(n as u64);
        }
    }
    Ok((size, super::parts::hex(h.finalize())))
}

#[derive(Debug, Args)]
pub struct InventoryArgs {
    /// The installed bundle directory (where `bundle load --target` put it).
    #[arg(long, default_value = "trident-offline")]
    pub target: PathBuf,
    /// Do not ask Docker for its images (files only).
    #[arg(long)]
    pub no_docker: bool,
}

/// `trident bundle inventory`: JSON on stdout.
pub fn run_inventory(a: &InventoryArgs) -> Result<u8, BundleError> {
    let inv = inventory(&a.target, !a.no_docker)?;
    println!(
        "{}",
        serde_json::to_string_pretty(&inv).expect("inventory serialises. This is a bug.")
    );
    Ok(0)
}

/// What is installed under `target` (files `load` placed, still intact) and, with `docker`,
/// every tagged image of the local engine.
pub fn inventory(target: &Path, docker: bool) -> Result<Inventory, BundleError> {
    let state = State::read(target);
    if state.files.is_empty() {
        eprintln!(
            "bundle: {} has no {STATE}: no bundle files are known to be installed there",
            target.display()
        );
    }
    let mut files = Vec::new();
    for (path, placed) in &state.files {
        if state.digest(target, path).as_deref() == Some(placed.sha256.as_str()) {
            files.push(InventoryFile {
                path: path.clone(),
                size: placed.size,
                sha256: placed.sha256.clone(),
            });
        }
    }
    let images = if docker {
        super::docker::Engine::connect()?.tagged_images()?
    } else {
        BTreeMap::new()
    };
    Ok(Inventory {
        schema: super::manifest::SCHEMA,
        images,
        files,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn present_uses_the_state_then_the_bytes() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a"), b"abc").unwrap();
        let sha = sha256_file(&dir.path().join("a")).unwrap();
        let f = FileEntry {
            path: "a".into(),
            size: 3,
            sha256: sha.clone(),
            mode: 0o644,
            in_base: false,
        };
        let mut st = State::default();
        assert!(st.present(dir.path(), &f)); // hashed
        st.record(dir.path(), "a", 3, &sha);
        st.write(dir.path()).unwrap();
        let st = State::read(dir.path());
        assert!(st.present(dir.path(), &f));
        std::fs::write(dir.path().join("a"), b"abd").unwrap(); // same size, new mtime and bytes
        assert!(!st.present(dir.path(), &f));
        std::os::unix::fs::symlink("/etc/hostname", dir.path().join("l")).unwrap();
        assert_eq!(st.digest(dir.path(), "l"), None);
        let inv = inventory(dir.path(), false).unwrap();
        assert!(
            inv.files.is_empty(),
            "a changed: not inventoried as installed"
        );
    }
}
