//! The tests' registry: `ember::agent::images::local` with the tests' conventions (a temp
//! directory per registry, failures as panics).

use std::path::PathBuf;

use ember::agent::images::local::LocalRegistry;
#[allow(unused_imports)] // not every test binary uses both
pub use ember::agent::images::local::{Layer, OciImage};

/// A running registry (see [`LocalRegistry`]).
pub struct Registry {
    inner: LocalRegistry,
    /// `127.0.0.1:<port>`.
    pub host: String,
}

impl Registry {
    /// Starts a registry on a free loopback port.
    pub fn start(tag: &str) -> Registry {
        let dir = std::env::temp_dir().join(format!("ember-registry-{tag}-{}", std::process::id()));
        let inner = LocalRegistry::start(&dir).expect("start docker-registry (scripts/test.sh installs it)");
        let host = inner.host.clone();
        Registry { inner, host }
    }

    /// Where the registry keeps blob `digest`.
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        self.inner.blob_path(digest)
    }

    /// Pushes `image` as `<host>/<repo>:<tag>` with skopeo; the pushed manifest's digest.
    pub fn push(&self, image: &OciImage, repo: &str, tag: &str) -> String {
        self.inner.push(image, repo, tag).unwrap_or_else(|e| panic!("push {repo}:{tag}: {e}\n{}", self.inner.log()))
    }
}

/// A tar layer (see [`ember::agent::images::local::tar_layer`]).
pub fn tar_layer(entries: &[(&str, &[u8])]) -> Vec<u8> {
    ember::agent::images::local::tar_layer(entries).expect("build a tar layer")
}
