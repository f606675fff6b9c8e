//! A client of the OCI Distribution API (`/v2/<name>/manifests/<reference>`,
//! `/v2/<name>/blobs/<digest>`) over HTTP/1.1: HTTPS (rustls, the system's CAs and those of
//! `ember serve --registry-ca`), or plain HTTP to the registries `--insecure-registry
//! HOST:PORT` names. A registry that answers 401 gets what its `WWW-Authenticate` challenge
//! asks for: `Basic` credentials, or a `Bearer` token from its token service (anonymous, or
//! with the credentials), with the credentials of `--registry-credentials` (a Docker
//! `config.json`). Every blob is checked against its digest as it is written, and a manifest
//! fetched by digest against that digest.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncWrite};

use super::manifest::{self, Document, Manifest, ACCEPT, MAX_DOCUMENT};
use super::reference::{check_digest, ImageRef};
use super::ImageError;

/// How many redirects a request follows.
const MAX_REDIRECTS: usize = 5;
/// The largest token-service answer read.
const MAX_TOKEN_ANSWER: usize = 64 << 10;
/// How long a registry may stay silent (to connect, to shake hands, to answer, between two
/// chunks of a body) before the pull gives up on it.
const DEFAULT_STALL: std::time::Duration = std::time::Duration::from_secs(60);

/// The registries Ember pulls from, and how it reaches and authenticates to them.
#[derive(Clone)]
pub struct Registries {
    /// No registry at all ([`Registries::default`]): every pull is refused before any
    /// connection.
    offline: bool,
    /// `host:port` of registries reached over plain HTTP.
    insecure: HashSet<String>,
    /// TLS for the others.
    tls: tokio_rustls::TlsConnector,
    /// `user:password` by registry host.
    credentials: HashMap<String, String>,
    /// Bearer tokens from token services, by registry host and repository.
    tokens: Arc<Mutex<HashMap<(String, String), String>>>,
    /// See [`DEFAULT_STALL`].
    stall: std::time::Duration,
}

impl Default for Registries {
    /// Reaches no registry: for tools (the fuzz targets) that must not touch the network.
    fn default() -> Self {
        Registries {
            offline: true,
            insecure: HashSet::new(),
            tls: tokio_rustls::TlsConnector::from(Arc::new(client_config(rustls::RootCertStore::empty()))),
            credentials: HashMap::new(),
            tokens: Arc::default(),
            stall: DEFAULT_STALL,
        }
    }
}

/// Why the registries' settings cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// A `--registry-ca` file.
    #[error("--registry-ca {0}: {1}")]
    Ca(PathBuf, String),
    /// The `--registry-credentials` file.
    #[error("--registry-credentials {0}: {1}")]
    Credentials(PathBuf, String),
}

fn client_config(roots: rustls::RootCertStore) -> rustls::ClientConfig {
    // The crate's one crypto provider (its `ring` feature).
    rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth()
}

/// A manifest resolved: its digest and what it lists.
#[derive(Debug)]
pub struct Resolved {
    /// `sha256:<hex>` of the image manifest (an index's linux/amd64 entry, not the index).
    pub digest: String,
    /// Its configuration and layers.
    pub manifest: Manifest,
}

/// Where a request goes.
#[derive(Debug, Clone, PartialEq)]
struct Target {
    /// HTTPS, or plain HTTP.
    secure: bool,
    /// `host[:port]`.
    host: String,
    /// The path and query.
    path: String,
}

impl Registries {
    /// HTTPS to any registry, trusting the system's CAs and the PEM files `cas`; plain HTTP
    /// to the `insecure` ones; the credentials of the Docker `config.json` `credentials`.
    pub fn new(
        insecure: impl IntoIterator<Item = String>,
        cas: &[PathBuf],
        credentials: Option<&Path>,
    ) -> Result<Registries, SettingsError> {
        let mut roots = rustls::RootCertStore::empty();
        // A system without a CA store still reaches the registries of `cas` and the insecure
        // ones; its certificates that do not parse are passed over.
        roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
        for ca in cas {
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(ca)
                .and_then(Iterator::collect)
                .map_err(|e| SettingsError::Ca(ca.clone(), e.to_string()))?;
            if certs.is_empty() {
                return Err(SettingsError::Ca(ca.clone(), "no PEM certificate in it".into()));
            }
            for cert in certs {
                roots.add(cert).map_err(|e| SettingsError::Ca(ca.clone(), e.to_string()))?;
            }
        }
        let credentials = match credentials {
            None => HashMap::new(),
            Some(path) => {
                let text =
                    std::fs::read(path).map_err(|e| SettingsError::Credentials(path.to_owned(), e.to_string()))?;
                docker_auths(&text).map_err(|e| SettingsError::Credentials(path.to_owned(), e))?
            }
        };
        Ok(Registries {
            offline: false,
            insecure: insecure.into_iter().collect(),
            tls: tokio_rustls::TlsConnector::from(Arc::new(client_config(roots))),
            credentials,
            tokens: Arc::default(),
            stall: DEFAULT_STALL,
        })
    }

    /// The same, giving up on a registry silent for `stall` (instead of a minute).
    pub fn with_stall_timeout(self, stall: std::time::Duration) -> Registries {
        Registries { stall, ..self }
    }

    /// `what` (a step of talking to `host`), unless the registry stays silent too long.
    async fn in_time<T>(
        &self,
        host: &str,
        what: &str,
        step: impl std::future::Future<Output = Result<T, ImageError>>,
    ) -> Result<T, ImageError> {
        tokio::time::timeout(self.stall, step).await.unwrap_or_else(|_| {
            Err(ImageError::Registry(format!("registry {host} was silent for {:?} ({what})", self.stall)))
        })
    }

    /// Resolves `image` (a tag or a digest) to its linux/amd64 image manifest.
    pub async fn resolve(&self, image: &ImageRef) -> Result<Resolved, ImageError> {
        if self.offline {
            return Err(ImageError::Invalid(format!("{image}: this agent pulls from no registry")));
        }
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
        let out = read_limited(response, MAX_DOCUMENT, self.stall)
            .await
            .map_err(|e| ImageError::Registry(format!("{image}: reading the manifest: {e}")))?;
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
        Ok(Blob {
            body,
            hasher: Sha256::new(),
            size: 0,
            max,
            expected,
            label: format!("{image}: blob {digest}"),
            stall: self.stall,
        })
    }

    /// GET `path` on the image's registry, following redirects (credentials go to the
    /// registry's own host only) and answering one authentication challenge.
    async fn get(
        &self,
        image: &ImageRef,
        path: &str,
        accept: Option<&str>,
    ) -> Result<hyper::Response<hyper::body::Incoming>, ImageError> {
        let registry = image.registry.clone();
        let token_key = (registry.clone(), image.repository.clone());
        let mut authorization = self.lock_tokens().get(&token_key).map(|t| format!("Bearer {t}"));
        let mut challenged = false;
        let mut target =
            Target { secure: !self.insecure.contains(&registry), host: registry.clone(), path: path.to_owned() };
        let mut redirects = 0;
        loop {
            let auth = authorization.as_deref().filter(|_| target.host == registry);
            let response = self.send(&target, accept, auth).await?;
            let status = response.status();
            if status.is_redirection() {
                redirects += 1;
                if redirects > MAX_REDIRECTS {
                    return Err(ImageError::Registry(format!("{image}: more than {MAX_REDIRECTS} redirects")));
                }
                let location = response
                    .headers()
                    .get(hyper::header::LOCATION)
                    .and_then(|v| v.to_str().ok())
                    .ok_or_else(|| {
                        ImageError::Registry(format!("registry {}: a redirect without a Location", target.host))
                    })?
                    .to_owned();
                target = redirect(&self.insecure, &target, &location)?;
                continue;
            }
            if status == StatusCode::UNAUTHORIZED && !challenged && target.host == registry {
                challenged = true;
                let challenge = response
                    .headers()
                    .get(hyper::header::WWW_AUTHENTICATE)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned)
                    .unwrap_or_default();
                let answer = self.answer(image, &challenge).await?;
                if let Some(token) = answer.strip_prefix("Bearer ") {
                    self.lock_tokens().insert(token_key.clone(), token.to_owned());
                }
                authorization = Some(answer);
                continue;
            }
            return match status {
                StatusCode::OK => Ok(response),
                StatusCode::NOT_FOUND => {
                    Err(ImageError::NotFound(format!("{image}: {} is not in the registry", target.path)))
                }
                StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Err(ImageError::Registry(format!(
                    "registry {} refused {} ({status}){}",
                    target.host,
                    target.path,
                    if self.credentials.contains_key(&registry) {
                        " with the credentials of --registry-credentials"
                    } else {
                        "; give its credentials with `ember serve --registry-credentials`"
                    }
                ))),
                other => Err(ImageError::Registry(format!("registry {}: GET {}: {other}", target.host, target.path))),
            };
        }
    }

    fn lock_tokens(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), String>> {
        self.tokens.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The `Authorization` value that answers the registry's challenge for `image`.
    async fn answer(&self, image: &ImageRef, challenge: &str) -> Result<String, ImageError> {
        let basic = self.credentials.get(&image.registry).map(|c| base64::engine::general_purpose::STANDARD.encode(c));
        let Some((scheme, params)) = parse_challenge(challenge) else {
            return Err(ImageError::Registry(format!(
                "registry {} asks for credentials with a challenge Ember cannot read: {challenge:?}",
                image.registry
            )));
        };
        if scheme.eq_ignore_ascii_case("basic") {
            return basic.map(|b| format!("Basic {b}")).ok_or_else(|| {
                ImageError::Registry(format!(
                    "registry {} asks for credentials; give them with `ember serve --registry-credentials`",
                    image.registry
                ))
            });
        }
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(ImageError::Registry(format!(
                "registry {} asks for {scheme} authentication, which Ember does not speak",
                image.registry
            )));
        }
        let realm = params.get("realm").ok_or_else(|| {
            ImageError::Registry(format!("registry {}: a Bearer challenge without a realm", image.registry))
        })?;
        let scope = params.get("scope").cloned().unwrap_or_else(|| format!("repository:{}:pull", image.repository));
        let mut query = vec![format!("scope={}", query_escape(&scope))];
        if let Some(service) = params.get("service") {
            query.push(format!("service={}", query_escape(service)));
        }
        let separator = if realm.contains('?') { '&' } else { '?' };
        let url = format!("{realm}{separator}{}", query.join("&"));
        let mut target = absolute(&self.insecure, &url).ok_or_else(|| {
            ImageError::Registry(format!(
                "registry {}: token service {realm} is not a URL Ember may fetch",
                image.registry
            ))
        })?;
        // The token service may redirect too; credentials go to its own host only.
        let service_host = target.host.clone();
        let auth = basic.map(|b| format!("Basic {b}"));
        for _ in 0..=MAX_REDIRECTS {
            let response = self.send(&target, None, auth.as_deref().filter(|_| target.host == service_host)).await?;
            if response.status().is_redirection() {
                let location = response.headers().get(hyper::header::LOCATION).and_then(|v| v.to_str().ok());
                let location = location.unwrap_or_default().to_owned();
                target = redirect(&self.insecure, &target, &location)?;
                continue;
            }
            if response.status() != StatusCode::OK {
                return Err(ImageError::Registry(format!(
                    "token service {service_host} refused a token for {scope}: {}",
                    response.status()
                )));
            }
            let body = read_limited(response, MAX_TOKEN_ANSWER, self.stall)
                .await
                .map_err(|e| ImageError::Registry(format!("token service {service_host}: {e}")))?;
            let answer: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            let token = answer["token"].as_str().or_else(|| answer["access_token"].as_str());
            return match token {
                Some(t) if !t.is_empty() && t.bytes().all(|b| b.is_ascii_graphic()) => Ok(format!("Bearer {t}")),
                _ => Err(ImageError::Registry(format!("token service {service_host} answered no token"))),
            };
        }
        Err(ImageError::Registry(format!("token service {service_host}: more than {MAX_REDIRECTS} redirects")))
    }

    /// One GET, on a connection of its own.
    async fn send(
        &self,
        target: &Target,
        accept: Option<&str>,
        authorization: Option<&str>,
    ) -> Result<hyper::Response<hyper::body::Incoming>, ImageError> {
        let Target { secure, host, path } = target;
        let (name, port) = split_host(host, if *secure { 443 } else { 80 });
        let connecting = async {
            tokio::net::TcpStream::connect((name, port))
                .await
                .map_err(|e| ImageError::Registry(format!("cannot connect to registry {host}: {e}")))
        };
        let stream = self.in_time(host, "connecting", connecting).await?;
        let _ = stream.set_nodelay(true);
        let mut request =
            Request::get(path.as_str()).header(hyper::header::HOST, host.as_str()).header("user-agent", "ember");
        if let Some(accept) = accept {
            request = request.header(hyper::header::ACCEPT, accept);
        }
        if let Some(authorization) = authorization {
            request = request.header(hyper::header::AUTHORIZATION, authorization);
        }
        let request = request.body(Empty::<Bytes>::new()).map_err(|e| ImageError::Registry(e.to_string()))?;
        if !secure {
            return self.in_time(host, "answering", exchange(stream, host, request)).await;
        }
        let server = ServerName::try_from(name.trim_start_matches('[').trim_end_matches(']').to_owned())
            .map_err(|e| ImageError::Invalid(format!("registry {host}: {e}")))?;
        let handshake = async {
            self.tls
                .connect(server, stream)
                .await
                .map_err(|e| ImageError::Registry(format!("TLS with registry {host}: {e}")))
        };
        let tls = self.in_time(host, "the TLS handshake", handshake).await?;
        self.in_time(host, "answering", exchange(tls, host, request)).await
    }
}

async fn exchange<S>(
    stream: S,
    host: &str,
    request: Request<Empty<Bytes>>,
) -> Result<hyper::Response<hyper::body::Incoming>, ImageError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| ImageError::Registry(format!("registry {host}: {e}")))?;
    tokio::spawn(conn);
    let path = request.uri().to_string();
    sender.send_request(request).await.map_err(|e| ImageError::Registry(format!("registry {host}: GET {path}: {e}")))
}

/// A response's body, at most `max` bytes of it.
async fn read_limited(
    response: hyper::Response<hyper::body::Incoming>,
    max: usize,
    stall: std::time::Duration,
) -> Result<Vec<u8>, String> {
    let mut body = response.into_body();
    let mut out = Vec::new();
    loop {
        let next =
            tokio::time::timeout(stall, body.frame()).await.map_err(|_| format!("the answer stopped for {stall:?}"))?;
        let Some(frame) = next else { break };
        let frame = frame.map_err(|e| e.to_string())?;
        if let Some(data) = frame.data_ref() {
            out.extend_from_slice(data);
            if out.len() > max {
                return Err(format!("the answer is over {} KiB", max >> 10));
            }
        }
    }
    Ok(out)
}

/// `host` and port of `host[:port]` (an IPv6 address in brackets).
fn split_host(host: &str, default_port: u16) -> (&str, u16) {
    match host.rsplit_once(':') {
        Some((name, port)) if !name.is_empty() && (!name.contains(':') || name.ends_with(']')) => match port.parse() {
            Ok(port) => (name, port),
            Err(_) => (host, default_port),
        },
        _ => (host, default_port),
    }
}

/// The `user:password` of each registry in a Docker `config.json`'s `auths` (`auth`, the
/// base64 of `user:password`, or `username` and `password`).
pub fn docker_auths(json: &[u8]) -> Result<HashMap<String, String>, String> {
    let config: serde_json::Value = serde_json::from_slice(json).map_err(|e| format!("not JSON: {e}"))?;
    let mut out = HashMap::new();
    for (host, entry) in config["auths"].as_object().ok_or("no \"auths\" object")? {
        let credentials = if let Some(auth) = entry["auth"].as_str() {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(auth)
                .map_err(|e| format!("{host}: \"auth\" is not base64: {e}"))?;
            String::from_utf8(decoded).map_err(|_| format!("{host}: \"auth\" is not UTF-8"))?
        } else {
            match (entry["username"].as_str(), entry["password"].as_str()) {
                (Some(u), Some(p)) => format!("{u}:{p}"),
                _ => return Err(format!("{host}: neither \"auth\" nor \"username\" and \"password\"")),
            }
        };
        if !credentials.contains(':') {
            return Err(format!("{host}: the credentials are not user:password"));
        }
        // Docker writes some hosts as URLs (`https://index.docker.io/v1/`).
        let host = host.trim_start_matches("https://").trim_start_matches("http://");
        out.insert(host.split('/').next().unwrap_or(host).to_owned(), credentials);
    }
    Ok(out)
}

/// A `WWW-Authenticate` challenge: its scheme and its `key="value"` (or `key=token`)
/// parameters.
pub fn parse_challenge(header: &str) -> Option<(String, HashMap<String, String>)> {
    let header = header.trim();
    let (scheme, mut rest) = header.split_once(' ').unwrap_or((header, ""));
    if scheme.is_empty() || !scheme.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        return None;
    }
    let mut params = HashMap::new();
    loop {
        rest = rest.trim_start_matches([' ', ',']);
        if rest.is_empty() {
            return Some((scheme.to_owned(), params));
        }
        let (key, after) = rest.split_once('=')?;
        let key = key.trim().to_ascii_lowercase();
        let value;
        if let Some(quoted) = after.strip_prefix('"') {
            let mut out = String::new();
            let mut chars = quoted.char_indices();
            let end = loop {
                match chars.next()? {
                    (_, '\\') => out.push(chars.next()?.1),
                    (i, '"') => break i,
                    (_, c) => out.push(c),
                }
            };
            value = out;
            rest = &quoted[end + 1..];
        } else {
            let end = after.find(',').unwrap_or(after.len());
            value = after[..end].trim().to_owned();
            rest = &after[end..];
        }
        params.insert(key, value);
    }
}

/// A query parameter's value, percent-encoded.
fn query_escape(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// An absolute `https://` URL, or an `http://` one of an insecure registry, as a target.
fn absolute(insecure: &HashSet<String>, url: &str) -> Option<Target> {
    let (secure, rest) = match url.split_once("://")? {
        ("https", rest) => (true, rest),
        ("http", rest) => (false, rest),
        _ => return None,
    };
    let (host, path) = match rest.find(['/', '?']) {
        Some(i) if rest.as_bytes()[i] == b'/' => (&rest[..i], rest[i..].to_owned()),
        Some(i) => (&rest[..i], format!("/{}", &rest[i..])),
        None => (rest, "/".to_owned()),
    };
    if host.is_empty() || host.contains('@') || (!secure && !insecure.contains(host)) {
        return None;
    }
    Some(Target { secure, host: host.to_owned(), path })
}

/// Where a redirect leads: a path on the same host, any `https://` URL (registries serve
/// blobs from storage elsewhere), or an `http://` URL of an insecure registry.
fn redirect(insecure: &HashSet<String>, from: &Target, location: &str) -> Result<Target, ImageError> {
    if location.starts_with('/') {
        return Ok(Target { path: location.to_owned(), ..from.clone() });
    }
    absolute(insecure, location).ok_or_else(|| {
        ImageError::Registry(format!("registry {} redirects to {location}, which Ember may not fetch", from.host))
    })
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
    /// How long the registry may pause in the middle of the body.
    stall: std::time::Duration,
}

impl Blob {
    /// The bytes received so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The next chunk; `None` at the end, once the content matched its digest.
    pub async fn next(&mut self) -> Result<Option<Bytes>, ImageError> {
        loop {
            let next = tokio::time::timeout(self.stall, self.body.frame()).await.map_err(|_| {
                ImageError::Registry(format!("{}: the registry was silent for {:?}", self.label, self.stall))
            })?;
            let Some(frame) = next else { break };
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

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(secure: bool, host: &str, path: &str) -> Target {
        Target { secure, host: host.into(), path: path.into() }
    }

    #[test]
    fn redirects_stay_on_https_or_insecure_registries() {
        let insecure: HashSet<String> = ["127.0.0.1:5000".to_owned(), "127.0.0.1:5001".to_owned()].into();
        let from = target(false, "127.0.0.1:5000", "/v2/x/blobs/y");
        assert_eq!(redirect(&insecure, &from, "/v2/x").unwrap(), target(false, "127.0.0.1:5000", "/v2/x"));
        assert_eq!(
            redirect(&insecure, &from, "http://127.0.0.1:5001/blob?x=1").unwrap(),
            target(false, "127.0.0.1:5001", "/blob?x=1")
        );
        assert!(redirect(&insecure, &from, "http://10.0.0.1/blob").is_err(), "plain HTTP to a host not named");
        assert_eq!(
            redirect(&insecure, &from, "https://storage.example/b?sig=1").unwrap(),
            target(true, "storage.example", "/b?sig=1")
        );
        assert_eq!(redirect(&insecure, &from, "https://s.example?a").unwrap(), target(true, "s.example", "/?a"));
        assert!(redirect(&insecure, &from, "ftp://x/y").is_err());
        assert!(redirect(&insecure, &from, "https://user@s.example/").is_err());
        assert!(redirect(&insecure, &from, "relative/path").is_err());
    }

    #[test]
    fn challenges_are_read() {
        let (scheme, params) = parse_challenge(
            r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push""#,
        )
        .unwrap();
        assert_eq!(scheme, "Bearer");
        assert_eq!(params["realm"], "https://auth.example/token");
        assert_eq!(params["service"], "registry.example");
        assert_eq!(params["scope"], "repository:a/b:pull,push");
        let (scheme, params) = parse_challenge(r#"Basic realm="Registry Realm", charset=UTF-8"#).unwrap();
        assert_eq!(
            (scheme.as_str(), params["realm"].as_str(), params["charset"].as_str()),
            ("Basic", "Registry Realm", "UTF-8")
        );
        assert_eq!(parse_challenge(r#"Bearer realm="a\"b""#).unwrap().1["realm"], "a\"b");
        assert!(parse_challenge(r#"Bearer realm="unterminated"#).is_none());
        assert!(parse_challenge("").is_none());
        assert!(parse_challenge("Bearer realm").is_none());
    }

    #[test]
    fn docker_config_credentials_are_read() {
        let json = br#"{"auths": {"r.example:5000": {"auth": "dXNlcjpwYXNz"},
            "https://index.docker.io/v1/": {"username": "u", "password": "p:w"}}}"#;
        let auths = docker_auths(json).unwrap();
        assert_eq!(auths["r.example:5000"], "user:pass");
        assert_eq!(auths["index.docker.io"], "u:p:w");
        assert!(docker_auths(br#"{"auths": {"h": {"auth": "!!"}}}"#).is_err());
        assert!(docker_auths(br#"{"auths": {"h": {"auth": "dXNlcg=="}}}"#).is_err(), "no colon");
        assert!(docker_auths(b"{}").is_err());
    }

    #[test]
    fn hosts_split_into_name_and_port() {
        assert_eq!(split_host("r.example", 443), ("r.example", 443));
        assert_eq!(split_host("r.example:5000", 443), ("r.example", 5000));
        assert_eq!(split_host("[::1]:5000", 443), ("[::1]", 5000));
        assert_eq!(split_host("[::1]", 443), ("[::1]", 443));
        assert_eq!(query_escape("repository:a/b:pull"), "repository%3Aa%2Fb%3Apull");
    }

    #[tokio::test]
    async fn an_offline_agent_refuses_every_pull() {
        let image = ImageRef::parse("registry.example:5000/fn:latest").unwrap();
        let e = Registries::default().resolve(&image).await.unwrap_err();
        assert!(matches!(e, ImageError::Invalid(m) if m.contains("pulls from no registry")));
    }

    #[tokio::test]
    async fn a_silent_registry_is_given_up_on() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let host = listener.local_addr().unwrap().to_string();
        // Accepts, reads, never answers.
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = listener.accept().await {
                held.push(s);
            }
        });
        let image = ImageRef::parse(&format!("{host}/fn:latest")).unwrap();
        let stall = std::time::Duration::from_millis(300);
        for insecure in [vec![host.clone()], vec![]] {
            let registries = Registries::new(insecure, &[], None).unwrap().with_stall_timeout(stall);
            let e = registries.resolve(&image).await.unwrap_err();
            assert!(matches!(&e, ImageError::Registry(m) if m.contains("silent")), "{e}");
        }
    }

    #[tokio::test]
    async fn https_to_a_closed_port_fails_cleanly() {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let image = ImageRef::parse(&format!("127.0.0.1:{port}/fn:latest")).unwrap();
        let registries = Registries::new([], &[], None).unwrap();
        let e = registries.resolve(&image).await.unwrap_err();
        assert!(matches!(&e, ImageError::Registry(m) if m.contains("cannot connect")), "{e}");
    }
}
