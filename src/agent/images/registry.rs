//! A client of the OCI Distribution API (`/v2/<name>/manifests/<reference>`,
//! `/v2/<name>/blobs/<digest>`), over plain HTTP/1.1 to the registries `ember serve
//! --insecure-registry HOST:PORT` names. Every blob is checked against its digest as it is
//! written, and a manifest fetched by digest against that digest.

use std::collections::HashSet;

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use sha2::{Digest, Sha256};

use super::manifest::{self, Document, Manifest, ACCEPT, MAX_DOCUMENT};
use super::reference::{check_digest, ImageRef};
use super::ImageError;

/// How many redirects a request follows.
const MAX_REDIRECTS: usize = 5;

/// The registries Ember may pull from.
#[derive(Debug, Clone, Default)]
pub struct Registries {
    /// `host:port` of registries reached over plain HTTP.
    pub insecure: HashSet<String>,
}

/// A manifest resolved: its digest and what it lists.
#[derive(Debug)]
pub struct Resolved {
    /// `sha256:<hex>` of the image manifest (an index's linux/amd64 entry, not the index).
    pub digest: String,
    /// Its configuration and layers.
    pub manifest: Manifest,
}

impl Registries {
    fn check_allowed(&self, image: &ImageRef) -> Result<(), ImageError> {
        if self.insecure.contains(&image.registry) {
            return Ok(());
        }
        Err(ImageError::Invalid(format!(
            "Ember pulls only from registries named with `ember serve --insecure-registry HOST:PORT`, over plain \
             HTTP; {} is not one of them (HTTPS registries are not supported yet).",
            image.registry
        )))
    }

    /// Resolves `image` (a tag or a digest) to its linux/amd64 image manifest.
    pub async fn resolve(&self, image: &ImageRef) -> Result<Resolved, ImageError> {
        self.check_allowed(image)?;
        let (content_type, body) = self.manifest(image, image.reference()).await?;
        let by_digest = image.digest.is_some();
        let first_digest = format!("sha256:{}", hex(&Sha256::digest(&body)));
        if by_digest && image.digest.as_deref() != Some(first_digest.as_str()) {
            return Err(ImageError::Digest(format!(
                "the manifest of {image} has digest {first_digest}, not the one asked for"
            )));
        }
        match manifest::parse_document(content_type.as_deref(), &body)? {
            Document::Manifest(manifest) => Ok(Resolved { digest: first_digest, manifest }),
            Document::Index { amd64 } => {
                let (content_type, body) = self.manifest(image, &amd64).await?;
                let digest = format!("sha256:{}", hex(&Sha256::digest(&body)));
                if digest != amd64 {
                    return Err(ImageError::Digest(format!(
                        "the linux/amd64 manifest of {image} has digest {digest}, not its index's {amd64}"
                    )));
                }
                match manifest::parse_document(content_type.as_deref(), &body)? {
                    Document::Manifest(manifest) => Ok(Resolved { digest, manifest }),
                    Document::Index { .. } => Err(ImageError::Registry(format!("{image}: an index inside an index"))),
                }
            }
        }
    }

    async fn manifest(&self, image: &ImageRef, reference: &str) -> Result<(Option<String>, Vec<u8>), ImageError> {
        let path = format!("/v2/{}/manifests/{reference}", image.repository);
        let response = self.get(image, &path, Some(ACCEPT)).await?;
        let content_type =
            response.headers().get(hyper::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let mut body = response.into_body();
        let mut out = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| ImageError::Registry(format!("{image}: reading the manifest: {e}")))?;
            if let Some(data) = frame.data_ref() {
                out.extend_from_slice(data);
                if out.len() > MAX_DOCUMENT {
                    return Err(ImageError::Registry(format!("{image}: the manifest is over 4 MiB")));
                }
            }
        }
        Ok((content_type, out))
    }

    /// Fetches a blob into memory (a configuration), checked against its digest.
    pub async fn blob_bytes(&self, image: &ImageRef, digest: &str) -> Result<Vec<u8>, ImageError> {
        let mut blob = self.blob(image, digest, MAX_DOCUMENT as u64).await?;
        let mut out = Vec::new();
        while let Some(chunk) = blob.next().await? {
            out.extend_from_slice(&chunk);
        }
        Ok(out)
    }

    /// Opens blob `digest` of at most `max` bytes: its content as it arrives, checked against
    /// the digest at its end.
    pub async fn blob(&self, image: &ImageRef, digest: &str, max: u64) -> Result<Blob, ImageError> {
        let expected = check_digest(digest)?.to_owned();
        let path = format!("/v2/{}/blobs/{digest}", image.repository);
        let body = self.get(image, &path, None).await?.into_body();
        Ok(Blob { body, hasher: Sha256::new(), size: 0, max, expected, label: format!("{image}: blob {digest}") })
    }

    /// GET `path` on the image's registry, following redirects to insecure registries.
    async fn get(
        &self,
        image: &ImageRef,
        path: &str,
        accept: Option<&str>,
    ) -> Result<hyper::Response<hyper::body::Incoming>, ImageError> {
        let mut host = image.registry.clone();
        let mut path = path.to_owned();
        for _ in 0..=MAX_REDIRECTS {
            let stream = tokio::net::TcpStream::connect(&host)
                .await
                .map_err(|e| ImageError::Registry(format!("cannot connect to registry {host}: {e}")))?;
            let _ = stream.set_nodelay(true);
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|e| ImageError::Registry(format!("registry {host}: {e}")))?;
            tokio::spawn(conn);
            let mut request = Request::get(&path).header(hyper::header::HOST, &host).header("user-agent", "ember");
            if let Some(accept) = accept {
                request = request.header(hyper::header::ACCEPT, accept);
            }
            let request = request.body(Empty::<Bytes>::new()).map_err(|e| ImageError::Registry(e.to_string()))?;
            let response = sender
                .send_request(request)
                .await
                .map_err(|e| ImageError::Registry(format!("registry {host}: GET {path}: {e}")))?;
            let status = response.status();
            if status.is_redirection() {
                let location = response
                    .headers()
                    .get(hyper::header::LOCATION)
                    .and_then(|v| v.to_str().ok())
                    .ok_or_else(|| ImageError::Registry(format!("registry {host}: a redirect without a Location")))?
                    .to_owned();
                (host, path) = redirect(&self.insecure, &host, &location)?;
                continue;
            }
            return match status {
                StatusCode::OK => Ok(response),
                StatusCode::NOT_FOUND => Err(ImageError::NotFound(format!("{image}: {path} is not in the registry"))),
                StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Err(ImageError::Registry(format!(
                    "registry {host} asks for credentials ({status}); Ember pulls anonymously only"
                ))),
                other => Err(ImageError::Registry(format!("registry {host}: GET {path}: {other}"))),
            };
        }
        Err(ImageError::Registry(format!("{image}: more than {MAX_REDIRECTS} redirects")))
    }
}

/// A blob's body as it arrives, hashed; its end checks the digest.
pub struct Blob {
    body: hyper::body::Incoming,
    hasher: Sha256,
    size: u64,
    max: u64,
    /// The hex the content must hash to.
    expected: String,
    label: String,
}

impl Blob {
    /// The bytes received so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The next chunk; `None` at the end, once the content matched its digest.
    pub async fn next(&mut self) -> Result<Option<Bytes>, ImageError> {
        while let Some(frame) = self.body.frame().await {
            let frame = frame.map_err(|e| ImageError::Registry(format!("{}: {e}", self.label)))?;
            let Ok(data) = frame.into_data() else { continue };
            self.size += data.len() as u64;
            if self.size > self.max {
                return Err(ImageError::TooLarge(format!("{} is over {} bytes", self.label, self.max)));
            }
            self.hasher.update(&data);
            return Ok(Some(data));
        }
        let got = hex(&std::mem::take(&mut self.hasher).finalize());
        if got != self.expected {
            return Err(ImageError::Digest(format!(
                "{} has content of digest sha256:{got}: it was corrupted or replaced",
                self.label
            )));
        }
        Ok(None)
    }
}

/// Where a redirect leads: a path on the same host, or an `http://` URL of an insecure registry.
fn redirect(insecure: &HashSet<String>, host: &str, location: &str) -> Result<(String, String), ImageError> {
    if location.starts_with('/') {
        return Ok((host.to_owned(), location.to_owned()));
    }
    if let Some(rest) = location.strip_prefix("http://") {
        let (to_host, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if insecure.contains(to_host) {
            return Ok((to_host.to_owned(), path.to_owned()));
        }
    }
    Err(ImageError::Registry(format!("registry {host} redirects to {location}, which Ember may not fetch")))
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirects_stay_on_allowed_registries() {
        let insecure: HashSet<String> = ["127.0.0.1:5000".to_owned(), "127.0.0.1:5001".to_owned()].into();
        assert_eq!(redirect(&insecure, "127.0.0.1:5000", "/v2/x").unwrap(), ("127.0.0.1:5000".into(), "/v2/x".into()));
        assert_eq!(
            redirect(&insecure, "127.0.0.1:5000", "http://127.0.0.1:5001/blob?x=1").unwrap(),
            ("127.0.0.1:5001".into(), "/blob?x=1".into())
        );
        assert!(redirect(&insecure, "127.0.0.1:5000", "http://10.0.0.1/blob").is_err());
        assert!(redirect(&insecure, "127.0.0.1:5000", "https://127.0.0.1:5001/blob").is_err());
    }

    #[tokio::test]
    async fn registries_not_named_insecure_are_refused() {
        let image = ImageRef::parse("registry.example:5000/fn:latest").unwrap();
        let e = Registries::default().resolve(&image).await.unwrap_err();
        assert!(matches!(e, ImageError::Invalid(m) if m.contains("--insecure-registry")));
    }
}
