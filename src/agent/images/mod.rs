//! Container-image functions' images: pulled from an OCI registry (`registry`), their
//! manifests and configurations checked (`manifest`), their layers applied in order
//! (`unpack`) into one read-only ext4 root image, cached by manifest digest and shared by
//! every function that uses it.
//!
//! The cache is `<data dir>/images/`: `<hex>.ext4` (the root, read-only) and `<hex>.json`
//! (how to run it), where `<hex>` is the image manifest's sha256. The JSON is written last:
//! an image is in the cache when its JSON is. A pull works in `images/pull-<random>/`
//! (the unpacked tree, the root image and its JSON until they are renamed into the cache),
//! which goes whatever the outcome.

pub mod local;
pub mod manifest;
pub mod reference;
pub mod registry;
pub mod unpack;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use manifest::RunConfig;
use reference::ImageRef;
use registry::Registries;
use serde::{Deserialize, Serialize};

/// The image cache's directory in the data dir.
pub const DIR: &str = "images";

/// What can go wrong with an image.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The request names an image Ember cannot take (bad URI, registry not allowed, wrong
    /// platform).
    #[error("{0}")]
    Invalid(String),
    /// The registry has no such repository, tag or blob.
    #[error("{0}")]
    NotFound(String),
    /// The registry answered something unusable.
    #[error("{0}")]
    Registry(String),
    /// A blob or manifest does not match its digest.
    #[error("{0}")]
    Digest(String),
    /// A layer is not a valid tar archive, or tries to leave the image's root.
    #[error("{0}")]
    Layer(String),
    /// The image is over a limit (10 GB unpacked).
    #[error("{0}")]
    TooLarge(String),
    /// This host failed (disk, mkfs).
    #[error("{0}")]
    Host(String),
}

/// An image in the cache.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pulled {
    /// `sha256:<hex>` of its manifest.
    pub digest: String,
    /// `registry/repository@digest`: Lambda's `ResolvedImageUri`.
    pub resolved_uri: String,
    /// How the image says to run it.
    pub config: RunConfig,
    /// Bytes unpacked.
    pub unpacked_bytes: u64,
    /// The read-only ext4 root image (not in the JSON: derived from the digest).
    #[serde(skip)]
    pub root_image: PathBuf,
}

/// Where a pull under way is, for `ember`'s progress lines (`GET /ember/image-pulls`).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct PullProgress {
    /// The image as the request named it.
    pub image_uri: String,
    /// `sha256:<hex>` of its manifest.
    pub digest: String,
    /// `Downloading` (its layers, each unpacked as it arrives) or `BuildingRootImage`.
    pub phase: &'static str,
    /// The layer being downloaded, from 1.
    pub layer: usize,
    /// How many layers the image has.
    pub layers: usize,
    /// Bytes of the layer blobs downloaded so far.
    pub downloaded_bytes: u64,
    /// Bytes of all its layer blobs.
    pub total_bytes: u64,
}

/// The image cache and the registries it pulls from.
pub struct Images {
    dir: PathBuf,
    registries: Registries,
    /// One pull at a time per manifest digest.
    pulling: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// The pulls under way, by a number of their own.
    progress: Mutex<HashMap<u64, PullProgress>>,
    next_pull: AtomicU64,
}

/// A pull's entry in [`Images::progress`], removed when the pull ends, however it ends.
struct Tracked<'a> {
    images: &'a Images,
    id: u64,
}

impl Tracked<'_> {
    fn update(&self, f: impl FnOnce(&mut PullProgress)) {
        if let Some(p) = self.images.progress.lock().unwrap_or_else(|e| e.into_inner()).get_mut(&self.id) {
            f(p);
        }
    }
}

impl Drop for Tracked<'_> {
    fn drop(&mut self) {
        self.images.progress.lock().unwrap_or_else(|e| e.into_inner()).remove(&self.id);
    }
}

impl Images {
    /// The cache in `dir` (made if missing; leftovers of interrupted pulls are removed).
    pub fn open(dir: &Path, registries: Registries) -> std::io::Result<Images> {
        std::fs::create_dir_all(dir)?;
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with("pull-") {
                std::fs::remove_dir_all(entry.path())?;
            }
        }
        Ok(Images {
            dir: dir.to_owned(),
            registries,
            pulling: Mutex::new(HashMap::new()),
            progress: Mutex::new(HashMap::new()),
            next_pull: AtomicU64::new(0),
        })
    }

    /// The pulls under way, oldest first.
    pub fn progress(&self) -> Vec<PullProgress> {
        let progress = self.progress.lock().unwrap_or_else(|e| e.into_inner());
        let mut ids: Vec<&u64> = progress.keys().collect();
        ids.sort();
        ids.into_iter().map(|id| progress[id].clone()).collect()
    }

    fn track(&self, uri: &str, digest: &str) -> Tracked<'_> {
        let id = self.next_pull.fetch_add(1, Ordering::Relaxed);
        let entry = PullProgress {
            image_uri: uri.to_owned(),
            digest: digest.to_owned(),
            phase: "Downloading",
            layer: 0,
            layers: 0,
            downloaded_bytes: 0,
            total_bytes: 0,
        };
        self.progress.lock().unwrap_or_else(|e| e.into_inner()).insert(id, entry);
        Tracked { images: self, id }
    }

    /// The root image of the manifest `digest`.
    pub fn root_image(&self, digest: &str) -> PathBuf {
        self.dir.join(format!("{}.ext4", digest.trim_start_matches("sha256:")))
    }

    fn json_path(&self, digest: &str) -> PathBuf {
        self.dir.join(format!("{}.json", digest.trim_start_matches("sha256:")))
    }

    /// The cached image of manifest `digest`, if it is there.
    pub fn cached(&self, digest: &str) -> Option<Pulled> {
        let json = std::fs::read(self.json_path(digest)).ok()?;
        let mut pulled: Pulled = serde_json::from_slice(&json).ok()?;
        pulled.root_image = self.root_image(digest);
        pulled.root_image.is_file().then_some(pulled)
    }

    /// Resolves `uri` to its manifest and makes sure its root image is in the cache, pulling
    /// what is missing. `log` gets progress lines.
    pub async fn pull(&self, uri: &str, log: &(dyn Fn(&str) + Send + Sync)) -> Result<Pulled, ImageError> {
        let image = ImageRef::parse(uri)?;
        let resolved = self.registries.resolve(&image).await?;
        let digest = resolved.digest.clone();
        let lock = {
            let mut pulling = self.pulling.lock().unwrap_or_else(|e| e.into_inner());
            Arc::clone(pulling.entry(digest.clone()).or_default())
        };
        let _guard = lock.lock().await;
        if let Some(pulled) = self.cached(&digest) {
            log(&format!("{uri}: {digest} is cached"));
            return Ok(pulled);
        }
        let work = self.dir.join(format!("pull-{}", crate::agent::ids::random_hex()));
        let tracked = self.track(uri, &digest);
        let result = self.pull_into(&image, resolved, &work, &tracked, log).await;
        drop(tracked);
        let _ = std::fs::remove_dir_all(&work);
        self.pulling.lock().unwrap_or_else(|e| e.into_inner()).remove(&digest);
        result
    }

    async fn pull_into(
        &self,
        image: &ImageRef,
        resolved: registry::Resolved,
        work: &Path,
        tracked: &Tracked<'_>,
        log: &(dyn Fn(&str) + Send + Sync),
    ) -> Result<Pulled, ImageError> {
        let host = |what: &'static str| move |e: std::io::Error| ImageError::Host(format!("{what}: {e}"));
        let started = std::time::Instant::now();
        let registry::Resolved { digest, manifest } = resolved;
        let root = work.join("root");
        std::fs::create_dir_all(&root).map_err(host("create the pull's directory"))?;
        let config_blob = self.registries.blob_bytes(image, &manifest.config.digest).await?;
        let config = manifest::parse_config(&config_blob)?;
        let layers = manifest.layers.len();
        let total: u64 = manifest.layers.iter().map(|(b, _)| b.size).sum();
        log(&format!("{image}: pulling {digest}: {layers} layers, {}", mib(total)));
        tracked.update(|p| (p.layers, p.total_bytes) = (layers, total));
        let mut done_before = 0;
        // Each layer is applied as it arrives (a blocking task reading what the download
        // hands it); its digest is checked at its end, and a mismatch fails the whole pull,
        // whose tree then goes: nothing unchecked is ever published.
        let budget = Arc::new(Mutex::new(unpack::Budget::default()));
        for (i, (blob, compression)) in manifest.layers.iter().enumerate() {
            let label = format!("{image}: layer {}/{layers} {}", i + 1, blob.digest);
            tracked.update(|p| (p.layer, p.downloaded_bytes) = (i + 1, done_before));
            let mut stream = self.registries.blob(image, &blob.digest, unpack::MAX_UNPACKED_BYTES).await?;
            let (tx, rx) = std::sync::mpsc::sync_channel::<bytes::Bytes>(64);
            let (root, budget, compression) = (root.clone(), Arc::clone(&budget), *compression);
            let unpacking = tokio::task::spawn_blocking(move || {
                let reader =
                    std::io::BufReader::with_capacity(1 << 20, ChannelReader { rx, current: bytes::Bytes::new() });
                let mut budget = budget.lock().unwrap_or_else(|e| e.into_inner());
                unpack::apply_layer(&root, reader, compression, &mut budget)
            });
            let mut last_report = 0u64;
            let downloaded = loop {
                match stream.next().await {
                    Ok(Some(chunk)) => {
                        if tx.send(chunk).is_err() {
                            break Ok(false); // the unpacking stopped: its error says why
                        }
                        tracked.update(|p| p.downloaded_bytes = done_before + stream.size());
                        if stream.size() - last_report >= 64 << 20 {
                            last_report = stream.size();
                            log(&format!("{label}: {} of {}", mib(last_report), mib(blob.size)));
                        }
                    }
                    Ok(None) => break Ok(true),
                    Err(e) => break Err(e),
                }
            };
            drop(tx);
            let unpacked = unpacking.await.map_err(|e| ImageError::Host(format!("unpacking a layer: {e}")))?;
            let complete = downloaded?;
            if let Err(e) = unpacked {
                // A layer that does not unpack may just be corrupted: its digest says so first.
                if !complete {
                    while stream.next().await?.is_some() {}
                }
                return Err(e);
            }
            log(&format!("{label}: {} of {}", mib(stream.size()), mib(blob.size)));
            done_before += stream.size();
        }
        tracked.update(|p| (p.phase, p.downloaded_bytes) = ("BuildingRootImage", done_before));
        let unpacked_bytes = budget.lock().unwrap_or_else(|e| e.into_inner()).bytes;
        let image_path = self.root_image(&digest);
        // Built in the pull's own directory (two pulls of one digest never share a file).
        let tmp = work.join("root.ext4");
        let root_for_mkfs = root.clone();
        let tmp_for_mkfs = tmp.clone();
        tokio::task::spawn_blocking(move || unpack::make_root_image(&root_for_mkfs, &tmp_for_mkfs))
            .await
            .map_err(|e| ImageError::Host(format!("building the root image: {e}")))??;
        std::fs::rename(&tmp, &image_path).map_err(host("move the root image into the cache"))?;
        let pulled = Pulled {
            resolved_uri: image.resolved(&digest),
            digest: digest.clone(),
            config,
            unpacked_bytes,
            root_image: image_path,
        };
        let json = serde_json::to_vec(&pulled).map_err(|e| ImageError::Host(e.to_string()))?;
        let json_path = self.json_path(&digest);
        let json_tmp = work.join("image.json");
        std::fs::write(&json_tmp, json).map_err(host("write the image's description"))?;
        std::fs::File::open(&json_tmp).and_then(|f| f.sync_all()).map_err(host("sync"))?;
        std::fs::rename(&json_tmp, &json_path).map_err(host("write the image's description"))?;
        log(&format!(
            "{image}: pulled {digest}: {} unpacked in {:.1} s",
            mib(unpacked_bytes),
            started.elapsed().as_secs_f64()
        ));
        Ok(pulled)
    }

    /// Removes the cached images whose digests are not in `keep`.
    pub fn collect(&self, keep: &std::collections::HashSet<String>) -> std::io::Result<()> {
        for entry in std::fs::read_dir(&self.dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(hex) = name.strip_suffix(".json").or_else(|| name.strip_suffix(".ext4")) else { continue };
            if hex.len() == 64 && !keep.contains(&format!("sha256:{hex}")) {
                std::fs::remove_file(entry.path())?;
            }
        }
        Ok(())
    }
}

/// A layer's bytes as the download hands them over, for the blocking unpack.
struct ChannelReader {
    rx: std::sync::mpsc::Receiver<bytes::Bytes>,
    current: bytes::Bytes,
}

impl std::io::Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.recv() {
                Ok(chunk) => self.current = chunk,
                Err(_) => return Ok(0), // the download ended (or failed: it says so)
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}

/// Bytes as MiB with one decimal.
fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / 1048576.0)
}
