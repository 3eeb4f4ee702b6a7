//! Reading safetensors checkpoints (single file or shards) into plain `f32` vectors.
//!
//! Used by the encoder loader (`models::bert`); F32, F16 and BF16 tensors are accepted
//! and widened to f32. Files are memory-mapped for the duration of loading only.

use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors};

use super::ModelError;

/// Memory maps of every weight file of a model.
pub struct Mmaps {
    files: Vec<(PathBuf, memmap2::Mmap)>,
}

impl Mmaps {
    /// Maps the given files read-only.
    pub fn open(paths: &[PathBuf]) -> Result<Self, ModelError> {
        let mut files = Vec::new();
        for p in paths {
            let f = std::fs::File::open(p).map_err(|e| ModelError::Files {
                what: format!("cannot open weights ({e})"),
                path: p.clone(),
            })?;
            // SAFETY: the file is opened read-only; a concurrent writer would be a
            // deployment error, like for every other memory-mapped model loader.
            let m = unsafe { memmap2::Mmap::map(&f)? };
            files.push((p.clone(), m));
        }
        Ok(Mmaps { files })
    }

    /// Parses the headers of every file.
    pub fn store(&self) -> Result<Store<'_>, ModelError> {
        Store::parse(self.files.iter().map(|(p, m)| (p.as_path(), &m[..])))
    }
}

fn invalid(path: &Path, reason: String) -> ModelError {
    ModelError::Invalid {
        path: path.to_path_buf(),
        reason,
    }
}

/// Tensor lookup across the shards of one checkpoint.
pub struct Store<'a> {
    tensors: Vec<(&'a Path, SafeTensors<'a>)>,
}

impl<'a> Store<'a> {
    /// Parses the header of each `(path, bytes)` shard (bytes mapped or in memory; the path
    /// names the file in errors).
    pub fn parse(
        files: impl IntoIterator<Item = (&'a Path, &'a [u8])>,
    ) -> Result<Store<'a>, ModelError> {
        let mut tensors = Vec::new();
        for (p, bytes) in files {
            let st = SafeTensors::deserialize(bytes).map_err(|e| invalid(p, e.to_string()))?;
            tensors.push((p, st));
        }
        Ok(Store { tensors })
    }

    /// Whether a tensor of that name exists.
    pub fn contains(&self, name: &str) -> bool {
        self.tensors.iter().any(|(_, t)| t.tensor(name).is_ok())
    }

    /// Every tensor name with its dtype and shape, across shards.
    pub fn names(&self) -> Vec<(String, Dtype, Vec<usize>)> {
        let mut out = Vec::new();
        for (_, st) in &self.tensors {
            for (name, view) in st.tensors() {
                out.push((name, view.dtype(), view.shape().to_vec()));
            }
        }
        out.sort();
        out
    }

    /// The tensor `name` widened to f32, checked against `shape`.
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>, ModelError> {
        for (path, st) in &self.tensors {
            let Ok(view) = st.tensor(name) else { continue };
            if view.shape() != shape {
                return Err(invalid(
                    path,
                    format!(
                        "tensor {name} has shape {:?}, expected {shape:?}",
                        view.shape()
                    ),
                ));
            }
            let data = view.data();
            let out: Vec<f32> = match view.dtype() {
                Dtype::F32 => data
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect(),
                Dtype::F16 => data
                    .chunks_exact(2)
                    .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                    .collect(),
                Dtype::BF16 => data
                    .chunks_exact(2)
                    .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                    .collect(),
                other => {
                    return Err(invalid(
                        path,
                        format!("tensor {name} has unsupported dtype {other:?}"),
                    ))
                }
            };
            return Ok(out);
        }
        Err(ModelError::Invalid {
            path: self
                .tensors
                .first()
                .map(|t| t.0.to_path_buf())
                .unwrap_or_default(),
            reason: format!("missing tensor {name}"),
        })
    }
}
