//! What a container image brings from outside: the `ImageUri` of a request
//! (`ImageRef::parse`), a registry's manifests and image configurations
//! (`manifest::parse_document`, `manifest::parse_config`), a layer's tar stream applied onto
//! a root (`unpack::apply_layer`, plain, gzip and zstd), a registry's `WWW-Authenticate` challenge
//! (`registry::parse_challenge`) and a Docker `config.json` of credentials
//! (`registry::docker_auths`). Nothing may panic; a parsed URI prints back
//! as one that parses the same; and no layer, however crafted (`..`, absolute and looping
//! symbolic links, hard links out, whiteouts through links), writes outside the root: a
//! sentinel directory beside the root must stay empty.
//!
//! Input: byte 0 picks the parser (mod 6: URI, manifest with a content type from byte 1,
//! configuration, layer, challenge, credentials); the rest is its input. For a layer, the root is emptied first and
//! given a link to the sentinel, so that an input can try to write through it.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use ember::agent::images::manifest::{self, Compression};
use ember::agent::images::reference::ImageRef;
use ember::agent::images::registry;
use ember::agent::images::unpack::{apply_layer, Budget};
use libfuzzer_sys::fuzz_target;

const CONTENT_TYPES: [Option<&str>; 6] = [
    None,
    Some(manifest::OCI_INDEX),
    Some(manifest::OCI_MANIFEST),
    Some(manifest::DOCKER_LIST),
    Some(manifest::DOCKER_MANIFEST),
    Some("application/json"),
];

/// The root layers are applied onto and the sentinel beside it, made once per process.
fn dirs() -> &'static (PathBuf, PathBuf) {
    static DIRS: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    DIRS.get_or_init(|| {
        let base = std::env::temp_dir().join(format!("ember-fuzz-image-{}", std::process::id()));
        let (root, sentinel) = (base.join("root"), base.join("sentinel"));
        std::fs::create_dir_all(&root).expect("root");
        std::fs::create_dir_all(&sentinel).expect("sentinel");
        (root, sentinel)
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else { return };
    match which % 6 {
        0 => {
            let Ok(uri) = std::str::from_utf8(rest) else { return };
            if let Ok(r) = ImageRef::parse(uri) {
                let again = ImageRef::parse(&r.to_string()).expect("a parsed URI prints as one that parses");
                assert_eq!(again, r);
                let _ = r.resolved("sha256:0000000000000000000000000000000000000000000000000000000000000000");
            }
        }
        1 => {
            let Some((&ct, body)) = rest.split_first() else { return };
            let _ = manifest::parse_document(CONTENT_TYPES[usize::from(ct) % CONTENT_TYPES.len()], body);
        }
        2 => {
            let _ = manifest::parse_config(rest);
        }
        4 => {
            let Ok(header) = std::str::from_utf8(rest) else { return };
            if let Some((scheme, _)) = registry::parse_challenge(header) {
                assert!(!scheme.is_empty());
            }
        }
        5 => {
            if let Ok(auths) = registry::docker_auths(rest) {
                assert!(auths.values().all(|c| c.contains(':')), "credentials are user:password");
            }
        }
        _ => {
            let Some((&how, layer)) = rest.split_first() else { return };
            let (root, sentinel) = dirs();
            let _ = std::fs::remove_dir_all(root);
            std::fs::create_dir_all(root).expect("root");
            let _ = std::os::unix::fs::symlink(sentinel, root.join("out"));
            let _ = std::os::unix::fs::symlink("../sentinel", root.join("up"));
            let compression = [Compression::None, Compression::Gzip, Compression::Zstd][usize::from(how % 3)];
            let _ = apply_layer(root, layer, compression, &mut Budget::default());
            let leaked: Vec<_> = std::fs::read_dir(sentinel).expect("sentinel").collect();
            assert!(leaked.is_empty(), "a layer wrote outside the root: {leaked:?}");
        }
    }
});
