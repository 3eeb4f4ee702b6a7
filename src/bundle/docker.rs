//! The Docker Engine API calls of the bundle commands (through `bollard`): inspect, export
//! (`GET /images/{name}/get`, streamed), load (`POST /images/load`, streamed from the file),
//! tag, list. The bundle commands are synchronous; this wraps one small runtime.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use bollard::query_parameters::{
    ImportImageOptionsBuilder, ListImagesOptionsBuilder, TagImageOptionsBuilder,
};
use bollard::Docker;
use futures::StreamExt as _;

use super::progress::Phase;
use super::BundleError;

/// What the packer needs to know of a local image.
#[derive(Debug, Clone)]
pub struct ImageInfo {
    pub id: String,
    pub size: u64,
    pub architecture: Option<String>,
    /// `org.opencontainers.image.revision` (set by `scripts/build.sh`).
    pub revision: Option<String>,
}

/// A connection to the Docker daemon (`DOCKER_HOST`, or the local socket).
pub struct Engine {
    rt: tokio::runtime::Runtime,
    docker: Docker,
}

fn docker_err(what: &str, e: impl std::fmt::Display) -> BundleError {
    BundleError::Docker(format!("{what}: {e}"))
}

impl Engine {
    pub fn connect() -> Result<Engine, BundleError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| docker_err("starting the runtime", e))?;
        let docker = rt
            .block_on(crate::ops::connect_docker())
            .map_err(|e| docker_err("connecting to the daemon (is it running? DOCKER_HOST?)", e))?;
        Ok(Engine { rt, docker })
    }

    /// The image behind `reference`, or `None` when the daemon has no such image.
    pub fn image(&self, reference: &str) -> Result<Option<ImageInfo>, BundleError> {
        match self.rt.block_on(self.docker.inspect_image(reference)) {
            Ok(i) => Ok(Some(ImageInfo {
                id: i.id.unwrap_or_default(),
                size: i.size.unwrap_or(0).max(0) as u64,
                architecture: i.architecture,
                revision: i
                    .config
                    .and_then(|c| c.labels)
                    .and_then(|l| l.get("org.opencontainers.image.revision").cloned()),
            })),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(None),
            Err(e) => Err(docker_err(&format!("inspecting {reference}"), e)),
        }
    }

    /// Streams `docker save reference` into `out`, chunk by chunk, from a separate thread so
    /// the daemon keeps sending while the chunks are compressed; hands `out` back.
    pub fn export<W: io::Write + Send + 'static>(
        &self,
        reference: &str,
        out: W,
        progress: &Phase,
    ) -> Result<W, BundleError> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<bytes::Bytes>(32);
        let p = progress.clone();
        let worker = std::thread::spawn(move || {
            let mut out = out;
            for chunk in rx {
                out.write_all(&chunk)?;
                p.inc(chunk.len() as u64);
            }
            Ok::<W, io::Error>(out)
        });
        let streamed = self.rt.block_on(async {
            let mut s = self.docker.export_image(reference);
            while let Some(chunk) = s.next().await {
                let chunk = chunk.map_err(|e| docker_err(&format!("exporting {reference}"), e))?;
                if tx.send(chunk).is_err() {
                    break; // the writer failed; its error is reported below
                }
            }
            Ok::<(), BundleError>(())
        });
        drop(tx);
        let out = worker
            .join()
            .map_err(|_| docker_err("export writer", "panicked"))?
            .map_err(|e| BundleError::Write {
                path: format!("image {reference}"),
                source: e,
            })?;
        streamed?;
        Ok(out)
    }

    /// `docker load` of one saved image file, streamed.
    pub fn load(&self, file: &Path, progress: &Phase) -> Result<Vec<String>, BundleError> {
        let path = file.to_path_buf();
        let p = progress.clone();
        self.rt.block_on(async move {
            let f = tokio::fs::File::open(&path)
                .await
                .map_err(|e| BundleError::io(&path, e))?;
            let body = futures::stream::unfold(Some(f), move |state| {
                let p = p.clone();
                async move {
                    use tokio::io::AsyncReadExt as _;
                    let mut f = state?;
                    let mut buf = vec![0u8; 1 << 20];
                    match f.read(&mut buf).await {
                        Ok(0) => None,
                        Ok(n) => {
                            buf.truncate(n);
                            p.inc(n as u64);
                            Some((Ok::<_, io::Error>(bytes::Bytes::from(buf)), Some(f)))
                        }
                        Err(e) => Some((Err(e), None)),
                    }
                }
            });
            let opts = ImportImageOptionsBuilder::default().quiet(true).build();
            let mut out = self.docker.import_image_stream(opts, body, None);
            let mut loaded = Vec::new();
            while let Some(item) = out.next().await {
                let info =
                    item.map_err(|e| docker_err(&format!("loading {}", path.display()), e))?;
                if let Some(s) = info.stream {
                    loaded.push(s.trim().to_string());
                }
            }
            Ok(loaded)
        })
    }

    /// Tags image `id` as `reference` (`repo:tag`).
    pub fn tag(&self, id: &str, reference: &str) -> Result<(), BundleError> {
        let (repo, tag) = split_ref(reference);
        let opts = TagImageOptionsBuilder::default()
            .repo(repo)
            .tag(tag)
            .build();
        self.rt
            .block_on(self.docker.tag_image(id, Some(opts)))
            .map_err(|e| docker_err(&format!("tagging {id} as {reference}"), e))
    }

    /// Every tagged image: reference → config digest.
    pub fn tagged_images(&self) -> Result<BTreeMap<String, String>, BundleError> {
        let list = self
            .rt
            .block_on(
                self.docker
                    .list_images(Some(ListImagesOptionsBuilder::default().build())),
            )
            .map_err(|e| docker_err("listing images", e))?;
        let mut out = BTreeMap::new();
        for i in list {
            for t in i.repo_tags.iter().filter(|t| *t != "<none>:<none>") {
                out.insert(t.clone(), i.id.clone());
            }
        }
        Ok(out)
    }

    /// The daemon's data directory, when it is on this machine.
    pub fn root_dir(&self) -> Option<PathBuf> {
        let info = self.rt.block_on(self.docker.info()).ok()?;
        info.docker_root_dir
            .map(PathBuf::from)
            .filter(|p| p.is_dir())
    }
}

/// `repo:tag` → (`repo`, `tag`); a reference without a tag means `latest`.
pub fn split_ref(reference: &str) -> (&str, &str) {
    match reference.rsplit_once(':') {
        Some((repo, tag)) if !tag.contains('/') => (repo, tag),
        _ => (reference, "latest"),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn split_ref() {
        assert_eq!(super::split_ref("trident:slim"), ("trident", "slim"));
        assert_eq!(
            super::split_ref("localhost:5000/x"),
            ("localhost:5000/x", "latest")
        );
        assert_eq!(
            super::split_ref("localhost:5000/x:1"),
            ("localhost:5000/x", "1")
        );
        assert_eq!(super::split_ref("nginx"), ("nginx", "latest"));
    }
}
