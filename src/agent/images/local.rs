//! Images made and served locally, for the tests and `ember bench runtimes`: OCI image layouts
//! written from tar layers (`OciImage`), a registry process (Debian's `docker-registry`, the
//! CNCF Distribution registry) on a loopback port with its storage in a directory, and pushes
//! with `skopeo`. Not used by the agent itself.

use std::io::{self, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

fn other(what: impl Into<String>) -> io::Error {
    io::Error::other(what.into())
}

/// A running registry; killed and its directory removed on drop.
pub struct LocalRegistry {
    child: Child,
    /// `127.0.0.1:<port>`.
    pub host: String,
    /// Its storage root (the filesystem driver's).
    pub storage: PathBuf,
    dir: PathBuf,
    /// `user:password` that pushes must give, if it asks for credentials.
    credentials: Option<String>,
}

/// What makes a [`LocalRegistry`] a secured one.
pub struct Secured<'a> {
    /// Its TLS certificate and key (PEM files).
    pub certificate: &'a Path,
    /// The certificate's key.
    pub key: &'a Path,
    /// The only user, and its password (htpasswd, bcrypt, by Debian's `htpasswd`).
    pub user: (&'a str, &'a str),
}

impl LocalRegistry {
    /// Starts a registry in `dir` (made; removed on drop) on a free loopback port, over plain
    /// HTTP and open to all; returns once `/v2/` answers.
    pub fn start(dir: &Path) -> io::Result<LocalRegistry> {
        Self::start_with(dir, None)
    }

    /// Starts a registry over HTTPS that asks for credentials (`Basic`, an htpasswd file).
    pub fn start_secured(dir: &Path, secured: &Secured<'_>) -> io::Result<LocalRegistry> {
        Self::start_with(dir, Some(secured))
    }

    fn start_with(dir: &Path, secured: Option<&Secured<'_>>) -> io::Result<LocalRegistry> {
        let bin = ["/usr/bin/docker-registry", "/usr/sbin/docker-registry"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .ok_or_else(|| other("docker-registry is not installed (Debian's docker-registry package)"))?;
        let _ = std::fs::remove_dir_all(dir);
        let storage = dir.join("storage");
        std::fs::create_dir_all(&storage)?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let host = format!("127.0.0.1:{port}");
        let config = dir.join("config.yml");
        let mut yaml = format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    \
             enabled: true\nhttp:\n  addr: {host}\n",
            storage.display()
        );
        let mut credentials = None;
        if let Some(s) = secured {
            let htpasswd = dir.join("htpasswd");
            let out = Command::new("htpasswd").args(["-Bbn", s.user.0, s.user.1]).output()?;
            if !out.status.success() {
                return Err(other(format!("htpasswd failed: {}", String::from_utf8_lossy(&out.stderr))));
            }
            std::fs::write(&htpasswd, out.stdout)?;
            yaml += &format!(
                "  tls:\n    certificate: {}\n    key: {}\nauth:\n  htpasswd:\n    realm: ember-test\n    path: {}\n",
                s.certificate.display(),
                s.key.display(),
                htpasswd.display()
            );
            credentials = Some(format!("{}:{}", s.user.0, s.user.1));
        }
        std::fs::write(&config, yaml)?;
        let log = std::fs::File::create(dir.join("registry.log"))?;
        let mut command = Command::new(bin);
        command.arg("serve").arg(&config).stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log);
        // SAFETY: runs in the child between fork and exec; prctl(PR_SET_PDEATHSIG) takes a
        // signal number, changes only this process and allocates nothing. The registry goes
        // with the thread that started it, even when a test or bench is killed with SIGKILL.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command.spawn()?;
        let registry = LocalRegistry { child, host, storage, dir: dir.to_owned(), credentials };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            // A secured registry answers TLS only: that it accepts connections is enough.
            if registry.credentials.is_some() && std::net::TcpStream::connect(&registry.host).is_ok() {
                return Ok(registry);
            }
            if let Ok(mut s) = std::net::TcpStream::connect(&registry.host) {
                let _ = write!(s, "GET /v2/ HTTP/1.0\r\nHost: {}\r\n\r\n", registry.host);
                let mut answer = String::new();
                let _ = io::Read::read_to_string(&mut s, &mut answer);
                if answer.starts_with("HTTP/1.0 200") || answer.starts_with("HTTP/1.1 200") {
                    return Ok(registry);
                }
            }
            if Instant::now() > deadline {
                return Err(other(format!("docker-registry did not answer: {}", registry.log())));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Its log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("registry.log")).unwrap_or_default()
    }

    /// Where the registry keeps blob `digest` (`sha256:<hex>`).
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        let hex = digest.trim_start_matches("sha256:");
        self.storage.join(format!("docker/registry/v2/blobs/sha256/{}/{hex}/data", &hex[..2.min(hex.len())]))
    }

    /// Pushes `image` as `<host>/<repo>:<tag>` with skopeo, as an OCI manifest (so that
    /// layers go as they are); the pushed manifest's digest.
    pub fn push(&self, image: &OciImage, repo: &str, tag: &str) -> io::Result<String> {
        let layout = self.dir.join(format!("layout-{repo}-{tag}").replace('/', "_"));
        let _ = std::fs::remove_dir_all(&layout);
        image.write_layout(&layout, tag)?;
        let result = self.push_layout(&layout, tag, repo);
        let _ = std::fs::remove_dir_all(&layout);
        result
    }

    /// Pushes the OCI layout `layout`'s `tag` as `<host>/<repo>:<tag>`; the manifest's digest.
    pub fn push_layout(&self, layout: &Path, tag: &str, repo: &str) -> io::Result<String> {
        let digest_file = layout.with_extension("digest");
        let mut skopeo = Command::new("skopeo");
        skopeo.args(["copy", "--quiet", "--format", "oci", "--dest-tls-verify=false"]);
        if let Some(credentials) = &self.credentials {
            skopeo.arg("--dest-creds").arg(credentials);
        }
        let out = skopeo
            .arg("--digestfile")
            .arg(&digest_file)
            .arg(format!("oci:{}:{tag}", layout.display()))
            .arg(format!("docker://{}/{repo}:{tag}", self.host))
            .output()?;
        if !out.status.success() {
            return Err(other(format!("skopeo copy failed: {}", String::from_utf8_lossy(&out.stderr))));
        }
        let digest = std::fs::read_to_string(&digest_file)?.trim().to_owned();
        std::fs::remove_file(&digest_file)?;
        Ok(digest)
    }
}

impl Drop for LocalRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A layer of an [`OciImage`].
pub enum Layer {
    /// A tar, written uncompressed.
    Tar(Vec<u8>),
    /// A tar, gzip-compressed when written.
    Gzip(Vec<u8>),
    /// Compressed already: the blob and the sha256 hex of its tar (the config's diff_id).
    Gzipped(Vec<u8>, String),
    /// A tar, zstd-compressed when written.
    Zstd(Vec<u8>),
}

/// An image to write: its layers, bottom first, and its run configuration.
pub struct OciImage {
    /// Bottom first.
    pub layers: Vec<Layer>,
    /// `ENTRYPOINT`.
    pub entrypoint: Vec<String>,
    /// `CMD`.
    pub cmd: Vec<String>,
    /// `ENV`, `KEY=VALUE`.
    pub env: Vec<String>,
    /// `WORKDIR`.
    pub working_dir: String,
}

fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", super::registry::hex(&Sha256::digest(data)))
}

impl OciImage {
    /// Writes the image as an OCI image layout in `dir` with `tag`; the manifest's digest.
    pub fn write_layout(&self, dir: &Path, tag: &str) -> io::Result<String> {
        let blobs = dir.join("blobs/sha256");
        std::fs::create_dir_all(&blobs)?;
        let put = |data: &[u8]| -> io::Result<String> {
            let digest = sha256(data);
            std::fs::write(blobs.join(digest.trim_start_matches("sha256:")), data)?;
            Ok(digest)
        };
        let mut diff_ids = Vec::new();
        let mut layers = Vec::new();
        for layer in &self.layers {
            let (blob, media_type, diff_id) = match layer {
                Layer::Tar(tar) => (tar.clone(), "application/vnd.oci.image.layer.v1.tar", sha256(tar)),
                Layer::Gzip(tar) => {
                    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                    gz.write_all(tar)?;
                    (gz.finish()?, "application/vnd.oci.image.layer.v1.tar+gzip", sha256(tar))
                }
                Layer::Gzipped(blob, hex) => {
                    (blob.clone(), "application/vnd.oci.image.layer.v1.tar+gzip", format!("sha256:{hex}"))
                }
                Layer::Zstd(tar) => {
                    let blob = ruzstd::encoding::compress_to_vec(&tar[..], ruzstd::encoding::CompressionLevel::Fastest);
                    (blob, "application/vnd.oci.image.layer.v1.tar+zstd", sha256(tar))
                }
            };
            diff_ids.push(diff_id);
            layers.push(serde_json::json!({ "mediaType": media_type, "digest": put(&blob)?, "size": blob.len() }));
        }
        let config = serde_json::to_vec(&serde_json::json!({
            "architecture": "amd64",
            "os": "linux",
            "config": {
                "Entrypoint": self.entrypoint,
                "Cmd": self.cmd,
                "Env": self.env,
                "WorkingDir": self.working_dir,
            },
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        }))?;
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": put(&config)?, "size": config.len()},
            "layers": layers,
        }))?;
        let digest = put(&manifest)?;
        std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion": "1.0.0"}"#)?;
        let index = serde_json::json!({
            "schemaVersion": 2,
            "manifests": [{
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": digest,
                "size": manifest.len(),
                "annotations": {"org.opencontainers.image.ref.name": tag},
            }],
        });
        std::fs::write(dir.join("index.json"), serde_json::to_vec(&index)?)?;
        Ok(digest)
    }
}

/// A tar layer of (path, content) files (mode 0644, or 0755 when the path ends in `*`),
/// `dir/` directories and `.wh.` whiteouts (empty files, as OCI writes them).
pub fn tar_layer(entries: &[(&str, &[u8])]) -> io::Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, content) in entries {
        let mut h = tar::Header::new_gnu();
        if path.ends_with('/') {
            h.set_entry_type(tar::EntryType::Directory);
            h.set_mode(0o755);
            h.set_size(0);
            b.append_data(&mut h, path, io::empty())?;
        } else {
            let (path, mode) = match path.strip_suffix('*') {
                Some(p) => (p, 0o755),
                None => (*path, 0o644),
            };
            h.set_entry_type(tar::EntryType::Regular);
            h.set_mode(mode);
            h.set_size(content.len() as u64);
            b.append_data(&mut h, path, *content)?;
        }
    }
    b.into_inner()
}
