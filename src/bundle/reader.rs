//! The one streaming pass over a bundle that `verify`, `load` and `inspect` share.
//!
//! Parts are read in order (each hashed against the sidecar), gunzipped, and walked as tar
//! entries. `manifest.json` must come first and `manifest.sig` (if any) second, so the
//! signature is checked, and every digest is known, before a payload byte is used. Each entry
//! then passes the entry validator and the manifest rules: listed, once, of the listed size;
//! its bytes are hashed on the way into the [`Sink`] (nothing, for `verify`; a staging
//! directory, for `load`). Decompressed bytes are capped by what the manifest accounts for,
//! so a gzip bomb stops at that cap. Problems name the exact part or file.

use std::cell::Cell;
use std::collections::BTreeSet;
use std::io::{self, Read, Write};
use std::path::PathBuf;
use std::rc::Rc;

use ed25519_dalek::VerifyingKey;
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::entry::{self, Accepted};
use super::manifest::{FileEntry, Manifest, MANIFEST, MAX_MANIFEST_BYTES, SIGNATURE, SUMS};
use super::parts::{hex, PartCheck, PartList, PartReader};
use super::progress::Phase;
use super::sign::{self, SignatureState};
use super::BundleError;

/// Largest accepted `manifest.sig`.
const MAX_SIGNATURE_BYTES: u64 = 64 << 10;
/// Tar overhead allowed per entry (header plus a GNU long-name or PAX record).
const PER_ENTRY_OVERHEAD: u64 = 4096;
/// Longest GNU long-name record accepted.
const MAX_LONG_NAME: u64 = 4096;
/// Directory entries are ignored, but bounded.
const MAX_DIR_ENTRIES: usize = 10_000;

/// Where verified bytes go.
pub trait Sink {
    /// Called once the manifest is parsed and its signature checked, before any payload.
    fn on_manifest(&mut self, manifest: &Manifest) -> Result<(), BundleError>;
    /// A writer for this file's bytes, or `None` to only hash them (e.g. already installed).
    fn open(&mut self, file: &FileEntry) -> Result<Option<Box<dyn Write>>, BundleError>;
    /// The file's bytes ended; `ok` says whether their digest matched.
    fn close(&mut self, file: &FileEntry, ok: bool) -> Result<(), BundleError>;
}

/// Hashes only (`verify`).
pub struct NullSink;

impl Sink for NullSink {
    fn on_manifest(&mut self, _: &Manifest) -> Result<(), BundleError> {
        Ok(())
    }
    fn open(&mut self, _: &FileEntry) -> Result<Option<Box<dyn Write>>, BundleError> {
        Ok(None)
    }
    fn close(&mut self, _: &FileEntry, _: bool) -> Result<(), BundleError> {
        Ok(())
    }
}

/// What a complete pass found (`verify`'s receipt).
#[derive(Debug, Clone, Serialize)]
pub struct Receipt {
    pub result: &'static str,
    pub version: String,
    pub tag: String,
    pub git_sha: String,
    pub arch: String,
    pub created: String,
    pub signature: SignatureState,
    pub parts_checked: usize,
    pub files_checked: usize,
    pub bytes_checked: u64,
    /// Files a delta bundle leaves to its base (not in the archive).
    pub files_in_base: usize,
    pub delta: bool,
}

/// Reads the whole bundle through `sink`. With `stop_after_manifest`, stops once the manifest
/// (and signature) are checked: `inspect` reads only the head of the archive.
pub fn read(
    list: &PartList,
    key: Option<&VerifyingKey>,
    progress: Option<Phase>,
    sink: &mut dyn Sink,
    stop_after_manifest: bool,
) -> Result<(Manifest, Receipt), BundleError> {
    let mut parts = PartReader::new(list, progress);
    let mut walk = Walk::default();
    let outcome = walk.run(
        flate2::read::GzDecoder::new(&mut parts),
        key,
        sink,
        stop_after_manifest,
    );
    if stop_after_manifest {
        return match (outcome, walk.manifest.take()) {
            (Ok(()), Some(m)) => {
                let receipt = walk.receipt(&m, 0);
                Ok((m, receipt))
            }
            (Err(e), _) => Err(e),
            (Ok(()), None) => Err(BundleError::Corrupt(
                "the archive has no manifest.json".into(),
            )),
        };
    }
    // Every part is read to its end, so a bad one is named even when the walk stopped early.
    if let Err(e) = parts.drain() {
        walk.problems.push(format!("reading the bundle: {e}"));
    }
    let problems = part_problems(parts.checked());
    walk.conclude(outcome, problems, parts.checked().len())
}

/// The same pass over an uncompressed tar stream, without parts or gzip: every entry and
/// manifest rule of [`read`] (the fuzz target's entry point).
pub fn read_tar(
    tar: impl Read,
    key: Option<&VerifyingKey>,
    sink: &mut dyn Sink,
) -> Result<(Manifest, Receipt), BundleError> {
    let mut walk = Walk::default();
    let outcome = walk.run(tar, key, sink, false);
    walk.conclude(outcome, Vec::new(), 0)
}

fn part_problems(checked: &[PartCheck]) -> Vec<String> {
    checked
        .iter()
        .filter(|c| c.matches == Some(false))
        .map(|c| {
            format!(
                "part {}: sha256 {} does not match the .sha256 listing",
                c.name, c.sha256
            )
        })
        .collect()
}

/// Caps the decompressed stream; the cap is raised once the manifest says what to expect.
struct Capped<R> {
    inner: R,
    left: Rc<Cell<u64>>,
}

impl<R: Read> Read for Capped<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.left.get();
        if left == 0 {
            return Err(io::Error::other(
                "decompressed data exceeds what the manifest accounts for (a gzip bomb or a forged manifest)",
            ));
        }
        let want = buf.len().min(left.min(usize::MAX as u64) as usize);
        let n = self.inner.read(&mut buf[..want])?;
        self.left.set(left - n as u64);
        Ok(n)
    }
}

#[derive(Default)]
struct Walk {
    manifest: Option<Manifest>,
    raw_manifest: Vec<u8>,
    signature: Option<SignatureState>,
    problems: Vec<String>,
    files_checked: usize,
    bytes_checked: u64,
}

enum Step {
    /// Nothing read yet: the next file must be the manifest.
    Manifest,
    /// The manifest is read: a signature may follow.
    Signature,
    Payload,
}

impl Walk {
    fn receipt(&self, m: &Manifest, parts: usize) -> Receipt {
        Receipt {
            result: "ok",
            version: m.appliance.version.clone(),
            tag: m.appliance.tag.clone(),
            git_sha: m.appliance.git_sha.clone(),
            arch: m.appliance.arch.clone(),
            created: m.created.clone(),
            signature: self.signature.clone().unwrap_or(SignatureState::Unsigned),
            parts_checked: parts,
            files_checked: self.files_checked,
            bytes_checked: self.bytes_checked,
            files_in_base: m.all_files().filter(|f| f.in_base).count(),
            delta: m.base.is_some(),
        }
    }

    /// The problems of a finished walk, after `problems` found around it (bad parts), or its
    /// receipt.
    fn conclude(
        &mut self,
        outcome: Result<(), BundleError>,
        mut problems: Vec<String>,
        parts: usize,
    ) -> Result<(Manifest, Receipt), BundleError> {
        match outcome {
            Ok(()) => {}
            Err(BundleError::Verify(p)) => problems.extend(p),
            Err(other) => return Err(other),
        }
        problems.extend(std::mem::take(&mut self.problems));
        let Some(manifest) = self.manifest.take() else {
            if problems.is_empty() {
                problems.push("the archive has no manifest.json".into());
            }
            return Err(BundleError::Verify(problems));
        };
        if !problems.is_empty() {
            return Err(BundleError::Verify(problems));
        }
        let receipt = self.receipt(&manifest, parts);
        Ok((manifest, receipt))
    }

    /// Walks the (decompressed) tar stream.
    fn run(
        &mut self,
        tar: impl Read,
        key: Option<&VerifyingKey>,
        sink: &mut dyn Sink,
        stop_after_manifest: bool,
    ) -> Result<(), BundleError> {
        let left = Rc::new(Cell::new(
            MAX_MANIFEST_BYTES + MAX_SIGNATURE_BYTES + 4 * PER_ENTRY_OVERHEAD,
        ));
        let mut archive = tar::Archive::new(Capped {
            inner: tar,
            left: left.clone(),
        });
        let corrupt = |after: &str, e: io::Error| {
            BundleError::Verify(vec![format!("the archive is unreadable {after}: {e}")])
        };
        let mut step = Step::Manifest;
        let mut seen = BTreeSet::new();
        let mut dirs = 0usize;
        let mut last = String::from("at its start");
        // Raw entries: GNU long names are applied here, bounded, and PAX records refused, so
        // the name that is checked is the name that is used, and no metadata entry can make
        // the `tar` crate buffer an unbounded record.
        let entries = archive.entries().map_err(|e| corrupt(&last, e))?.raw(true);
        let mut long_name: Option<PathBuf> = None;
        for item in entries {
            let mut e = item.map_err(|e| corrupt(&last, e))?;
            let kind = e.header().entry_type();
            match kind {
                tar::EntryType::GNULongName => {
                    if long_name.is_some() {
                        return Err(fatal("two GNU long-name records in a row"));
                    }
                    let size = e.header().entry_size().map_err(|e| corrupt(&last, e))?;
                    let mut name =
                        read_small(&mut e, size, MAX_LONG_NAME, "a GNU long-name record")?;
                    while name.last() == Some(&0) {
                        name.pop();
                    }
                    let name = String::from_utf8(name)
                        .map_err(|_| fatal("a GNU long-name record that is not UTF-8"))?;
                    long_name = Some(PathBuf::from(name));
                    continue;
                }
                tar::EntryType::GNULongLink => {
                    return Err(fatal("link records (GNU long link) are not allowed"))
                }
                tar::EntryType::XHeader | tar::EntryType::XGlobalHeader => {
                    return Err(fatal("PAX records are not allowed in a trident bundle"))
                }
                _ => {}
            }
            let path = match long_name.take() {
                Some(p) => p,
                None => e.path().map_err(|e| corrupt(&last, e))?.into_owned(),
            };
            let name = match entry::check(kind, &path) {
                Ok(Accepted::Dir) => {
                    dirs += 1;
                    if dirs > MAX_DIR_ENTRIES {
                        return Err(fatal("too many directory entries"));
                    }
                    continue;
                }
                Ok(Accepted::File(name)) => name,
                Err(why) => return Err(fatal(&format!("entry '{}': {why}", path.display()))),
            };
            last = format!("after '{name}'");
            if !seen.insert(name.clone()) {
                return Err(fatal(&format!("entry '{name}' appears twice")));
            }
            let size = e.header().entry_size().map_err(|e| corrupt(&last, e))?;
            if let Step::Manifest = step {
                if name != MANIFEST {
                    return Err(fatal(&format!(
                        "the first file must be {MANIFEST}, found '{name}'"
                    )));
                }
                self.raw_manifest = read_small(&mut e, size, MAX_MANIFEST_BYTES, &name)?;
                self.manifest = Some(Manifest::parse(&self.raw_manifest)?);
                step = Step::Signature;
                continue;
            }
            if let Step::Signature = step {
                step = Step::Payload;
                let sig = if name == SIGNATURE {
                    Some(read_small(&mut e, size, MAX_SIGNATURE_BYTES, &name)?)
                } else {
                    None
                };
                self.accept_manifest(key, sig.as_deref(), sink, &left)?;
                if stop_after_manifest {
                    return Ok(());
                }
                if sig.is_some() {
                    continue;
                }
            }
            self.payload(&name, size, &mut e, sink)?;
        }
        if let Step::Signature = step {
            // A manifest and nothing else.
            self.accept_manifest(key, None, sink, &left)?;
            if stop_after_manifest {
                return Ok(());
            }
        }
        let Some(m) = &self.manifest else {
            return Err(fatal("the archive has no manifest.json"));
        };
        let missing: Vec<_> = m
            .carried()
            .filter(|f| !seen.contains(&f.path))
            .map(|f| {
                format!(
                    "'{}' is listed in the manifest but missing from the archive",
                    f.path
                )
            })
            .collect();
        self.problems.extend(missing);
        for reserved in [SUMS, "images/IMAGES"] {
            if !seen.contains(reserved) {
                self.problems
                    .push(format!("'{reserved}' is missing from the archive"));
            }
        }
        // Read the stream to its end: gzip's own CRC and length are checked there.
        let mut rest = archive.into_inner();
        io::copy(&mut rest, &mut io::sink()).map_err(|e| corrupt("at its end", e))?;
        Ok(())
    }

    fn accept_manifest(
        &mut self,
        key: Option<&VerifyingKey>,
        sig: Option<&[u8]>,
        sink: &mut dyn Sink,
        left: &Cell<u64>,
    ) -> Result<(), BundleError> {
        let m = self
            .manifest
            .as_ref()
            .expect("manifest was read. This is a bug.");
        self.signature = Some(sign::check(&self.raw_manifest, sig, key)?);
        let entries = m.all_files().count() as u64 + 8;
        let derived = (m.sha256sums().len() + m.images_list().len()) as u64;
        left.set(
            m.carried_bytes()
                .saturating_add(derived)
                .saturating_add(entries.saturating_mul(PER_ENTRY_OVERHEAD))
                .saturating_add(MAX_DIR_ENTRIES as u64 * 512)
                .saturating_add(1 << 20),
        );
        sink.on_manifest(m)
    }

    fn payload(
        &mut self,
        name: &str,
        size: u64,
        e: &mut impl Read,
        sink: &mut dyn Sink,
    ) -> Result<(), BundleError> {
        let m = self
            .manifest
            .as_ref()
            .expect("manifest was read. This is a bug.");
        if name == SUMS || name == "images/IMAGES" {
            let want = if name == SUMS {
                m.sha256sums()
            } else {
                m.images_list()
            };
            let got = read_small(e, size, want.len() as u64, name)?;
            if got != want.as_bytes() {
                self.problems
                    .push(format!("'{name}' does not match the manifest"));
            }
            return Ok(());
        }
        if name == SIGNATURE {
            return Err(fatal(&format!(
                "'{SIGNATURE}' must directly follow {MANIFEST}"
            )));
        }
        let Some(f) = m.all_files().find(|f| f.path == name).cloned() else {
            return Err(fatal(&format!("entry '{name}' is not in the manifest")));
        };
        if f.in_base {
            return Err(fatal(&format!(
                "entry '{name}' is listed as left to the base, yet the archive carries it"
            )));
        }
        if size != f.size {
            return Err(fatal(&format!(
                "entry '{name}' is {size} bytes in the archive, the manifest says {}",
                f.size
            )));
        }
        let mut out = sink.open(&f)?;
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 1 << 17];
        let mut got = 0u64;
        loop {
            let n = e.read(&mut buf).map_err(|err| {
                fatal(&format!(
                    "the archive is unreadable inside '{name}' (truncated or damaged): {err}"
                ))
            })?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
            got += n as u64;
            if let Some(w) = out.as_mut() {
                w.write_all(&buf[..n]).map_err(|err| BundleError::Write {
                    path: name.to_string(),
                    source: err,
                })?;
            }
        }
        if let Some(mut w) = out {
            w.flush().map_err(|err| BundleError::Write {
                path: name.to_string(),
                source: err,
            })?;
        }
        let sha = hex(h.finalize());
        let ok = got == f.size && sha == f.sha256;
        if !ok {
            self.problems.push(format!(
                "'{name}': sha256 {sha} ({got} bytes) does not match the manifest's {} ({} bytes)",
                f.sha256, f.size
            ));
        }
        self.files_checked += 1;
        self.bytes_checked += got;
        sink.close(&f, ok)
    }
}

fn fatal(msg: &str) -> BundleError {
    BundleError::Verify(vec![msg.to_string()])
}

fn read_small(e: &mut impl Read, size: u64, max: u64, name: &str) -> Result<Vec<u8>, BundleError> {
    if size > max {
        return Err(fatal(&format!(
            "'{name}' is {size} bytes, more than the {max} allowed"
        )));
    }
    let mut v = Vec::with_capacity(size as usize);
    e.take(max + 1)
        .read_to_end(&mut v)
        .map_err(|err| fatal(&format!("reading '{name}': {err}")))?;
    Ok(v)
}
