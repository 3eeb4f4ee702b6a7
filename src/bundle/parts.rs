//! The bundle on disk: one archive file, or fixed-size parts of it (`… .tar.gz.000`, `.001`,
//! …), plus the sidecar `… .tar.gz.sha256` that lists them in `sha256sum -c` format.
//!
//! [`PartWriter`] writes and hashes parts as bytes arrive, under `.partial` names that are
//! renamed only when the whole bundle is written. [`PartReader`] reads the parts back as one
//! stream and hashes each part on the way, so a corrupt or missing part is named exactly.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::BundleError;

/// A finished part: file name (no directory), size, sha256.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    pub name: String,
    pub size: u64,
    pub sha256: String,
}

/// Hex of a finished sha256.
pub fn hex(d: impl AsRef<[u8]>) -> String {
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes the archive bytes into `dir`, split at `part_size` when given.
pub struct PartWriter {
    dir: PathBuf,
    name: String,
    part_size: Option<u64>,
    current: Option<(File, Sha256, u64)>,
    done: Vec<Part>,
    partials: Vec<PathBuf>,
    committed: bool,
}

impl PartWriter {
    pub fn new(dir: &Path, name: &str, part_size: Option<u64>) -> PartWriter {
        PartWriter {
            dir: dir.to_path_buf(),
            name: name.to_string(),
            part_size: part_size.filter(|&s| s > 0),
            current: None,
            done: Vec::new(),
            partials: Vec::new(),
            committed: false,
        }
    }

    fn part_name(&self, index: usize) -> String {
        match self.part_size {
            Some(_) => format!("{}.{index:03}", self.name),
            None => self.name.clone(),
        }
    }

    fn open_next(&mut self) -> io::Result<()> {
        let name = self.part_name(self.done.len());
        let path = self.dir.join(format!("{name}.partial"));
        let f = File::create(&path)?;
        self.partials.push(path);
        self.current = Some((f, Sha256::new(), 0));
        Ok(())
    }

    fn close_current(&mut self) -> io::Result<()> {
        if let Some((mut f, h, size)) = self.current.take() {
            f.flush()?;
            f.sync_all()?;
            let name = self.part_name(self.done.len());
            self.done.push(Part {
                name,
                size,
                sha256: hex(h.finalize()),
            });
        }
        Ok(())
    }

    /// Closes the last part, renames every part into place and writes the sidecar. Returns
    /// the parts and the sidecar's path.
    pub fn finish(mut self) -> Result<(Vec<Part>, PathBuf), BundleError> {
        if self.current.is_none() && self.done.is_empty() {
            self.open_next()
                .map_err(|e| BundleError::io(&self.dir, e))?;
        }
        self.close_current()
            .map_err(|e| BundleError::io(&self.dir, e))?;
        let mut sums = String::new();
        for p in &self.done {
            sums.push_str(&format!("{}  {}\n", p.sha256, p.name));
        }
        let sidecar = self.dir.join(format!("{}.sha256", self.name));
        let tmp = self.dir.join(format!("{}.sha256.partial", self.name));
        std::fs::write(&tmp, sums).map_err(|e| BundleError::io(&tmp, e))?;
        self.partials.push(tmp.clone());
        for p in &self.done {
            let from = self.dir.join(format!("{}.partial", p.name));
            let to = self.dir.join(&p.name);
            std::fs::rename(&from, &to).map_err(|e| BundleError::io(&to, e))?;
        }
        std::fs::rename(&tmp, &sidecar).map_err(|e| BundleError::io(&sidecar, e))?;
        self.committed = true;
        Ok((std::mem::take(&mut self.done), sidecar))
    }
}

impl Write for PartWriter {
    fn write(&mut self, mut buf: &[u8]) -> io::Result<usize> {
        let total = buf.len();
        while !buf.is_empty() {
            if self.current.is_none() {
                self.open_next()?;
            }
            let limit = self.part_size;
            let (f, h, size) = self
                .current
                .as_mut()
                .expect("a part is open. This is a bug.");
            let room = limit.map_or(buf.len() as u64, |l| l - *size);
            let n = (room.min(buf.len() as u64)) as usize;
            f.write_all(&buf[..n])?;
            h.update(&buf[..n]);
            *size += n as u64;
            buf = &buf[n..];
            if limit.is_some_and(|l| *size >= l) {
                self.close_current()?;
            }
        }
        Ok(total)
    }

    fn flush(&mut self) -> io::Result<()> {
        match &mut self.current {
            Some((f, _, _)) => f.flush(),
            None => Ok(()),
        }
    }
}

impl Drop for PartWriter {
    /// An unfinished bundle leaves nothing behind: every `.partial` file is removed.
    fn drop(&mut self) {
        if !self.committed {
            self.current.take();
            for p in &self.partials {
                let _ = std::fs::remove_file(p);
            }
        }
    }
}

/// The parts of a bundle on disk, found from any of: the archive, one of its parts, or the
/// sidecar. Expected digests come from the sidecar when it is there.
#[derive(Debug, Clone)]
pub struct PartList {
    pub parts: Vec<(PathBuf, Option<String>)>,
    /// The sidecar, when one was found.
    pub sidecar: Option<PathBuf>,
}

impl PartList {
    /// Resolves `bundle` to its parts; a part the sidecar lists but the disk lacks is an error
    /// naming it.
    pub fn find(bundle: &Path) -> Result<PartList, BundleError> {
        let text = bundle.to_string_lossy();
        let base = if let Some(b) = text.strip_suffix(".sha256") {
            b.to_string()
        } else if let Some((b, idx)) = text.rsplit_once('.') {
            if idx.len() == 3 && idx.bytes().all(|c| c.is_ascii_digit()) && b.ends_with(".tar.gz") {
                b.to_string()
            } else {
                text.to_string()
            }
        } else {
            text.to_string()
        };
        let base = PathBuf::from(base);
        let dir = base.parent().map(Path::to_path_buf).unwrap_or_default();
        let sidecar = PathBuf::from(format!("{}.sha256", base.display()));
        if sidecar.is_file() {
            let listing =
                std::fs::read_to_string(&sidecar).map_err(|e| BundleError::io(&sidecar, e))?;
            let mut parts = Vec::new();
            let mut missing = Vec::new();
            for line in listing.lines().filter(|l| !l.trim().is_empty()) {
                let (sha, name) = line
                    .split_once("  ")
                    .filter(|(s, n)| {
                        super::manifest::is_sha256_hex(s)
                            && super::entry::check_relative(n).is_ok()
                            && !n.contains('/')
                    })
                    .ok_or_else(|| {
                        BundleError::Corrupt(format!(
                            "{}: line '{line}' is not '<sha256>  <file name>'",
                            sidecar.display()
                        ))
                    })?;
                let path = dir.join(name);
                if !path.is_file() {
                    missing.push(name.to_string());
                }
                parts.push((path, Some(sha.to_string())));
            }
            if !missing.is_empty() {
                return Err(BundleError::MissingParts(missing));
            }
            if parts.is_empty() {
                return Err(BundleError::Corrupt(format!(
                    "{} lists no parts",
                    sidecar.display()
                )));
            }
            return Ok(PartList {
                parts,
                sidecar: Some(sidecar),
            });
        }
        if base.is_file() {
            return Ok(PartList {
                parts: vec![(base, None)],
                sidecar: None,
            });
        }
        // Parts without their sidecar: take consecutive numbers from 000.
        let mut parts = Vec::new();
        for i in 0.. {
            let p = PathBuf::from(format!("{}.{i:03}", base.display()));
            if !p.is_file() {
                break;
            }
            parts.push((p, None));
        }
        if parts.is_empty() {
            return Err(BundleError::io(
                &base,
                io::Error::new(
                    io::ErrorKind::NotFound,
                    "no such bundle (nor its parts or .sha256)",
                ),
            ));
        }
        Ok(PartList {
            parts,
            sidecar: None,
        })
    }

    /// Total size on disk.
    pub fn size(&self) -> u64 {
        self.parts
            .iter()
            .filter_map(|(p, _)| std::fs::metadata(p).ok())
            .map(|m| m.len())
            .sum()
    }
}

/// What reading one part found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartCheck {
    pub name: String,
    pub size: u64,
    pub sha256: String,
    /// `Some(false)`: the sidecar's digest differs.
    pub matches: Option<bool>,
}

/// Reads the parts in order as one stream, hashing each.
pub struct PartReader {
    list: Vec<(PathBuf, Option<String>)>,
    index: usize,
    current: Option<(File, Sha256, u64)>,
    checked: Vec<PartCheck>,
    progress: Option<super::progress::Phase>,
}

impl PartReader {
    pub fn new(list: &PartList, progress: Option<super::progress::Phase>) -> PartReader {
        PartReader {
            list: list.parts.clone(),
            index: 0,
            current: None,
            checked: Vec::new(),
            progress,
        }
    }

    /// Reads whatever is left (after the consumer stopped early) so every part is checked.
    pub fn drain(&mut self) -> io::Result<()> {
        let mut buf = vec![0u8; 1 << 16];
        while self.read(&mut buf)? > 0 {}
        Ok(())
    }

    /// Per-part results so far.
    pub fn checked(&self) -> &[PartCheck] {
        &self.checked
    }
}

impl Read for PartReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.current.is_none() {
                let Some((path, _)) = self.list.get(self.index) else {
                    return Ok(0);
                };
                let f = File::open(path)
                    .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
                self.current = Some((f, Sha256::new(), 0));
            }
            let (f, h, size) = self
                .current
                .as_mut()
                .expect("a part is open. This is a bug.");
            let n = f.read(buf)?;
            if n > 0 {
                h.update(&buf[..n]);
                *size += n as u64;
                if let Some(p) = &self.progress {
                    p.inc(n as u64);
                }
                return Ok(n);
            }
            let (_, h, size) = self.current.take().expect("a part is open. This is a bug.");
            let (path, want) = &self.list[self.index];
            let sha = hex(h.finalize());
            self.checked.push(PartCheck {
                name: path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                size,
                matches: want.as_ref().map(|w| *w == sha),
                sha256: sha,
            });
            self.index += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_write_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut w = PartWriter::new(dir.path(), "b.tar.gz", Some(4096));
        w.write_all(&data).unwrap();
        let (parts, sidecar) = w.finish().unwrap();
        assert_eq!(
            parts.iter().map(|p| p.size).collect::<Vec<_>>(),
            [4096, 4096, 1808]
        );
        assert_eq!(parts[2].name, "b.tar.gz.002");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 4, "{names:?}"); // three parts + sidecar, no .partial left

        for start in [
            sidecar.clone(),
            dir.path().join("b.tar.gz.001"),
            dir.path().join("b.tar.gz"),
        ] {
            let list = PartList::find(&start).unwrap();
            assert_eq!(list.parts.len(), 3, "{start:?}");
            let mut r = PartReader::new(&list, None);
            let mut back = Vec::new();
            r.read_to_end(&mut back).unwrap();
            assert_eq!(back, data);
            assert!(r.checked().iter().all(|c| c.matches == Some(true)));
        }

        // A flipped byte in part 1 is named; a missing part is named before reading.
        let p1 = dir.path().join("b.tar.gz.001");
        let mut bytes = std::fs::read(&p1).unwrap();
        bytes[100] ^= 1;
        std::fs::write(&p1, &bytes).unwrap();
        let mut r = PartReader::new(&PartList::find(&sidecar).unwrap(), None);
        r.drain().unwrap();
        let bad: Vec<_> = r
            .checked()
            .iter()
            .filter(|c| c.matches == Some(false))
            .map(|c| c.name.clone())
            .collect();
        assert_eq!(bad, ["b.tar.gz.001"]);
        std::fs::remove_file(dir.path().join("b.tar.gz.002")).unwrap();
        match PartList::find(&sidecar) {
            Err(BundleError::MissingParts(m)) => assert_eq!(m, ["b.tar.gz.002"]),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn unfinished_writer_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut w = PartWriter::new(dir.path(), "b.tar.gz", Some(10));
            w.write_all(&[1u8; 35]).unwrap();
        }
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        let mut w = PartWriter::new(dir.path(), "one.tar.gz", None);
        w.write_all(b"abc").unwrap();
        let (parts, _) = w.finish().unwrap();
        assert_eq!(parts.len(), 1);
        assert_eq!(parts[0].name, "one.tar.gz");
    }
}
