//! What a registry answers, parsed and checked: image indexes (OCI's and Docker's manifest
//! lists), image manifests (OCI's and Docker's schema 2) and image configurations (their
//! `config`: entrypoint, command, environment, working directory).

use serde::Deserialize;

use super::reference::check_digest;
use super::ImageError;

/// An OCI image index.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// An OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// A Docker manifest list.
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// A Docker image manifest, schema 2.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// The `Accept` header of a manifest request.
pub const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, \
                          application/vnd.docker.distribution.manifest.list.v2+json, \
                          application/vnd.docker.distribution.manifest.v2+json";

/// The largest manifest or configuration read (the distribution spec suggests 4 MiB).
pub const MAX_DOCUMENT: usize = 4 * 1024 * 1024;
/// The most layers an image may have (Docker's own limit is 127 for overlayfs; 128 here).
pub const MAX_LAYERS: usize = 128;

/// How a layer blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// tar+gzip.
    Gzip,
    /// Plain tar.
    None,
    /// tar+zstd.
    Zstd,
}

/// A content descriptor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blob {
    /// `sha256:<hex>`.
    pub digest: String,
    /// Its size in bytes, as the manifest says.
    pub size: u64,
}

/// An image manifest, checked: its configuration blob and its layers in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// The configuration blob.
    pub config: Blob,
    /// The layers, bottom first.
    pub layers: Vec<(Blob, Compression)>,
}

/// What a manifest request answered.
#[derive(Debug)]
pub enum Document {
    /// An index: the digest of its linux/amd64 manifest.
    Index {
        /// Its linux/amd64 entry's digest.
        amd64: String,
    },
    /// An image manifest.
    Manifest(Manifest),
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawDescriptor {
    media_type: Option<String>,
    digest: String,
    size: i64,
    platform: Option<RawPlatform>,
}

#[derive(Deserialize)]
struct RawPlatform {
    architecture: String,
    os: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawDocument {
    schema_version: Option<u32>,
    media_type: Option<String>,
    manifests: Option<Vec<RawDescriptor>>,
    config: Option<RawDescriptor>,
    layers: Option<Vec<RawDescriptor>>,
}

fn bad(why: impl Into<String>) -> ImageError {
    ImageError::Registry(why.into())
}

fn descriptor(d: RawDescriptor) -> Result<Blob, ImageError> {
    check_digest(&d.digest)?;
    let size = u64::try_from(d.size).map_err(|_| bad(format!("blob {} has a negative size", d.digest)))?;
    Ok(Blob { digest: d.digest, size })
}

/// Parses a manifest endpoint's answer: `content_type` is its `Content-Type` (the document's own
/// `mediaType` when the header is missing or generic).
pub fn parse_document(content_type: Option<&str>, body: &[u8]) -> Result<Document, ImageError> {
    if body.len() > MAX_DOCUMENT {
        return Err(bad("the manifest is over 4 MiB"));
    }
    let raw: RawDocument =
        serde_json::from_slice(body).map_err(|e| bad(format!("the manifest is not valid JSON: {e}")))?;
    let header = content_type.map(|c| c.split(';').next().unwrap_or("").trim()).filter(|c| {
        !c.is_empty() && *c != "application/json" && *c != "application/octet-stream" && *c != "text/plain"
    });
    let media_type = header.or(raw.media_type.as_deref()).unwrap_or("");
    let media_type = if media_type.is_empty() && raw.manifests.is_some() {
        OCI_INDEX
    } else if media_type.is_empty() && raw.layers.is_some() {
        OCI_MANIFEST
    } else {
        media_type
    };
    if raw.schema_version != Some(2) {
        return Err(bad(format!(
            "manifest schemaVersion {:?} is not 2 (schema 1 is not supported)",
            raw.schema_version
        )));
    }
    match media_type {
        OCI_INDEX | DOCKER_LIST => {
            let manifests = raw.manifests.ok_or_else(|| bad("the image index has no manifests"))?;
            let amd64 = manifests
                .into_iter()
                .find(|m| m.platform.as_ref().is_some_and(|p| p.os == "linux" && p.architecture == "amd64"))
                .ok_or_else(|| bad("the image index has no linux/amd64 image"))?;
            check_digest(&amd64.digest)?;
            Ok(Document::Index { amd64: amd64.digest })
        }
        OCI_MANIFEST | DOCKER_MANIFEST => {
            let config = descriptor(raw.config.ok_or_else(|| bad("the manifest has no config"))?)?;
            let raw_layers = raw.layers.ok_or_else(|| bad("the manifest has no layers"))?;
            if raw_layers.len() > MAX_LAYERS {
                return Err(bad(format!(
                    "the image has {} layers; at most {MAX_LAYERS} are supported",
                    raw_layers.len()
                )));
            }
            let mut layers = Vec::with_capacity(raw_layers.len());
            for l in raw_layers {
                let compression = match l.media_type.as_deref().unwrap_or("") {
                    "application/vnd.oci.image.layer.v1.tar+gzip"
                    | "application/vnd.docker.image.rootfs.diff.tar.gzip" => Compression::Gzip,
                    "application/vnd.oci.image.layer.v1.tar" => Compression::None,
                    "application/vnd.oci.image.layer.v1.tar+zstd" => Compression::Zstd,
                    other => {
                        return Err(bad(format!(
                            "layer media type {other:?} is not supported (tar, tar+gzip and tar+zstd are)"
                        )))
                    }
                };
                layers.push((descriptor(l)?, compression));
            }
            Ok(Document::Manifest(Manifest { config, layers }))
        }
        other => Err(bad(format!("manifest media type {other:?} is not supported"))),
    }
}

/// How an image says to run it (its configuration's `config`).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, Deserialize)]
pub struct RunConfig {
    /// `ENTRYPOINT`.
    pub entrypoint: Vec<String>,
    /// `CMD`.
    pub cmd: Vec<String>,
    /// `KEY=VALUE` entries, in order.
    pub env: Vec<String>,
    /// `WORKDIR` (may be empty).
    pub working_dir: String,
}

#[derive(Deserialize)]
struct RawImageConfig {
    architecture: Option<String>,
    os: Option<String>,
    config: Option<RawRunConfig>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RawRunConfig {
    entrypoint: Option<Vec<String>>,
    cmd: Option<Vec<String>>,
    env: Option<Vec<String>>,
    working_dir: Option<String>,
}

/// Parses an image configuration blob; refuses one for another platform than linux/amd64.
pub fn parse_config(body: &[u8]) -> Result<RunConfig, ImageError> {
    if body.len() > MAX_DOCUMENT {
        return Err(bad("the image configuration is over 4 MiB"));
    }
    let raw: RawImageConfig =
        serde_json::from_slice(body).map_err(|e| bad(format!("the image configuration is not valid JSON: {e}")))?;
    if raw.os.as_deref().is_some_and(|os| os != "linux") || raw.architecture.as_deref().is_some_and(|a| a != "amd64") {
        return Err(ImageError::Invalid(format!(
            "The image's platform is {}/{}; this host runs linux/amd64 images only.",
            raw.os.unwrap_or_default(),
            raw.architecture.unwrap_or_default()
        )));
    }
    let c = raw.config.unwrap_or(RawRunConfig { entrypoint: None, cmd: None, env: None, working_dir: None });
    Ok(RunConfig {
        entrypoint: c.entrypoint.unwrap_or_default(),
        cmd: c.cmd.unwrap_or_default(),
        env: c.env.unwrap_or_default(),
        working_dir: c.working_dir.unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn d(n: u8) -> String {
        format!("sha256:{}", format!("{n:02x}").repeat(32))
    }

    #[test]
    fn an_index_gives_its_linux_amd64_manifest() {
        let index = json!({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [
                {"mediaType": OCI_MANIFEST, "digest": d(1), "size": 10, "platform": {"architecture": "arm64", "os": "linux"}},
                {"mediaType": OCI_MANIFEST, "digest": d(2), "size": 10, "platform": {"architecture": "amd64", "os": "linux"}},
            ]
        });
        let body = serde_json::to_vec(&index).unwrap();
        assert!(matches!(parse_document(None, &body).unwrap(), Document::Index { amd64 } if amd64 == d(2)));
        // A Docker list, told by the header.
        let mut list = index.clone();
        list.as_object_mut().unwrap().remove("mediaType");
        let body = serde_json::to_vec(&list).unwrap();
        assert!(matches!(parse_document(Some(DOCKER_LIST), &body).unwrap(), Document::Index { .. }));
        // No amd64 entry.
        list["manifests"].as_array_mut().unwrap().remove(1);
        let e = parse_document(Some(DOCKER_LIST), &serde_json::to_vec(&list).unwrap()).unwrap_err();
        assert!(e.to_string().contains("linux/amd64"), "{e}");
    }

    #[test]
    fn a_manifest_gives_its_config_and_layers() {
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": DOCKER_MANIFEST,
            "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "digest": d(3), "size": 100},
            "layers": [
                {"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "digest": d(4), "size": 1000},
                {"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d(5), "size": 2000},
            ]
        });
        let body = serde_json::to_vec(&manifest).unwrap();
        let Document::Manifest(m) =
            parse_document(Some("application/vnd.docker.distribution.manifest.v2+json"), &body).unwrap()
        else {
            panic!("not a manifest")
        };
        assert_eq!(m.config, Blob { digest: d(3), size: 100 });
        assert_eq!(m.layers[0], (Blob { digest: d(4), size: 1000 }, Compression::Gzip));
        assert_eq!(m.layers[1].1, Compression::None);

        let mut zstd = manifest.clone();
        zstd["layers"][0]["mediaType"] = json!("application/vnd.oci.image.layer.v1.tar+zstd");
        let with_zstd = parse_document(None, &serde_json::to_vec(&zstd).unwrap()).unwrap();
        assert!(matches!(with_zstd, Document::Manifest(m) if m.layers[0].1 == Compression::Zstd));
        let mut bad_digest = manifest.clone();
        bad_digest["layers"][1]["digest"] = json!("sha256:../../etc");
        assert!(parse_document(None, &serde_json::to_vec(&bad_digest).unwrap()).is_err());
        let mut negative = manifest.clone();
        negative["layers"][1]["size"] = json!(-1);
        assert!(parse_document(None, &serde_json::to_vec(&negative).unwrap()).is_err());
        let mut schema1 = manifest;
        schema1["schemaVersion"] = json!(1);
        assert!(parse_document(None, &serde_json::to_vec(&schema1).unwrap())
            .unwrap_err()
            .to_string()
            .contains("schema 1"));
        assert!(parse_document(None, b"not json").is_err());
    }

    #[test]
    fn a_config_says_how_to_run_the_image() {
        let config = json!({
            "architecture": "amd64",
            "os": "linux",
            "config": {"Entrypoint": ["/usr/bin/python3", "-m", "awslambdaric"], "Cmd": ["app.handler"],
                       "Env": ["PATH=/usr/bin:/bin", "A=b=c"], "WorkingDir": "/var/task"}
        });
        let c = parse_config(&serde_json::to_vec(&config).unwrap()).unwrap();
        assert_eq!(c.entrypoint, ["/usr/bin/python3", "-m", "awslambdaric"]);
        assert_eq!(
            (c.cmd[0].as_str(), c.env[1].as_str(), c.working_dir.as_str()),
            ("app.handler", "A=b=c", "/var/task")
        );
        assert_eq!(parse_config(br#"{"os": "linux"}"#).unwrap(), RunConfig::default());
        let arm = parse_config(br#"{"os": "linux", "architecture": "arm64"}"#).unwrap_err();
        assert!(matches!(arm, ImageError::Invalid(m) if m.contains("linux/arm64")));
    }
}
