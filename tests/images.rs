//! Pulling container images from a real OCI registry (Debian's docker-registry, started by the
//! test on a loopback port), images written as OCI layouts and pushed with skopeo: the root
//! image built from the layers in order with whiteouts honoured, its run configuration, a tag
//! that moves, a corrupted blob refused by its digest with nothing left behind, registries not
//! named insecure spoken to over HTTPS only, an HTTPS registry that asks for credentials, and
//! the CLI's progress lines. No VM: the KVM tests run image functions end to end.

mod common;

use std::collections::HashSet;
use std::path::Path;
use std::process::Command;

use common::registry::{tar_layer, Layer, OciImage, Registry};
use ember::agent::images::registry::Registries;
use ember::agent::images::{ImageError, Images};

fn temp(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("ember-images-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A file's content in an ext4 image, by debugfs; `None` if it is not there.
fn cat(image: &Path, path: &str) -> Option<String> {
    let out = Command::new("debugfs").arg("-R").arg(format!("cat {path}")).arg(image).output().expect("run debugfs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    if stderr.contains("File not found") {
        return None;
    }
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn image_v(version: &str) -> OciImage {
    OciImage {
        layers: vec![
            Layer::Gzip(tar_layer(&[
                ("etc/", b""),
                ("etc/os-release", b"ID=ember-test\n"),
                ("etc/secret", b"to be deleted"),
                ("var/task/", b""),
                ("var/task/app.py", b"def handler(e, c):\n    return 1\n"),
                ("opt/data/", b""),
                ("opt/data/old", b"old"),
            ])),
            Layer::Tar(tar_layer(&[
                ("etc/.wh.secret", b""),
                ("opt/data/.wh..wh..opq", b""),
                ("opt/data/new", b"new"),
                ("var/task/version", version.as_bytes()),
                ("usr/local/bin/run*", b"#!/bin/sh\necho run\n"),
            ])),
        ],
        entrypoint: vec!["/usr/local/bin/run".into()],
        cmd: vec!["app.handler".into()],
        env: vec!["PATH=/usr/local/bin:/usr/bin:/bin".into(), "GREETING=hello from the image".into()],
        working_dir: "/var/task".into(),
    }
}

fn no_log(_: &str) {}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulls_unpack_in_order_follow_tags_and_refuse_corruption() {
    let registry = Registry::start("pull");
    let cache_dir = temp("cache");
    let registries = Registries::new([registry.host.clone()], &[], None).unwrap();
    let images = Images::open(&cache_dir, registries).unwrap();

    // v1: the root image has the layers in order, the whiteouts applied.
    let d1 = registry.push(&image_v("1"), "fns/app", "v1");
    let uri = format!("{}/fns/app:v1", registry.host);
    let lines = std::sync::Mutex::new(Vec::new());
    let log = |l: &str| lines.lock().unwrap().push(l.to_owned());
    let pulled = images.pull(&uri, &log).await.unwrap();
    assert_eq!(pulled.digest, d1);
    assert_eq!(pulled.resolved_uri, format!("{}/fns/app@{d1}", registry.host));
    assert_eq!(pulled.config.entrypoint, ["/usr/local/bin/run"]);
    assert_eq!(pulled.config.cmd, ["app.handler"]);
    assert_eq!(pulled.config.working_dir, "/var/task");
    assert_eq!(pulled.config.env[1], "GREETING=hello from the image");
    let root = &pulled.root_image;
    assert_eq!(cat(root, "/etc/os-release").as_deref(), Some("ID=ember-test\n"));
    assert_eq!(cat(root, "/etc/secret"), None, "the whiteout deletes the lower layer's file");
    assert_eq!(cat(root, "/opt/data/old"), None, "the opaque directory hides the lower layer's files");
    assert_eq!(cat(root, "/opt/data/new").as_deref(), Some("new"));
    assert_eq!(cat(root, "/var/task/version").as_deref(), Some("1"));
    for dir in ["/proc", "/sys", "/dev", "/run", "/tmp"] {
        let out = Command::new("debugfs").arg("-R").arg(format!("stat {dir}")).arg(root).output().unwrap();
        assert!(String::from_utf8_lossy(&out.stdout).contains("Type: directory"), "{dir} in the root image");
    }
    let lines = lines.into_inner().unwrap();
    assert!(lines.iter().any(|l| l.contains("pulling") && l.contains("2 layers")), "{lines:?}");
    assert!(lines.iter().any(|l| l.contains("pulled")), "{lines:?}");

    // A tar+zstd layer, OCI's third compression.
    let zstd_image = OciImage { layers: vec![Layer::Zstd(tar_layer(&[("opt/zstd/file", b"zstd")]))], ..image_v("z") };
    registry.push(&zstd_image, "fns/zstd", "v1");
    let z = images.pull(&format!("{}/fns/zstd:v1", registry.host), &no_log).await.unwrap();
    assert_eq!(cat(&z.root_image, "/opt/zstd/file").as_deref(), Some("zstd"));

    // A second pull of the same image uses the cache; a pull by digest gives the same.
    let again = images.pull(&format!("{}/fns/app@{d1}", registry.host), &no_log).await.unwrap();
    assert_eq!(again, pulled);

    // The tag moves: the same URI now resolves to the new digest.
    let d2 = registry.push(&image_v("2"), "fns/app", "v1");
    assert_ne!(d1, d2);
    let moved = images.pull(&uri, &no_log).await.unwrap();
    assert_eq!(moved.digest, d2);
    assert_eq!(cat(&moved.root_image, "/var/task/version").as_deref(), Some("2"));
    assert!(pulled.root_image.exists(), "the old image stays until collected");
    images.collect(&HashSet::from([d2.clone()])).unwrap();
    assert!(!pulled.root_image.exists() && moved.root_image.exists());

    // A corrupted layer blob: refused by its digest, nothing left behind.
    let d3 = registry.push(&image_v("3"), "fns/corrupt", "latest");
    let manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(registry.blob_path(&d3)).unwrap()).unwrap();
    let layer = manifest["layers"][1]["digest"].as_str().unwrap();
    let blob = registry.blob_path(layer);
    let mut bytes = std::fs::read(&blob).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&blob, bytes).unwrap();
    let before: HashSet<_> = std::fs::read_dir(&cache_dir).unwrap().map(|e| e.unwrap().file_name()).collect();
    let e = images.pull(&format!("{}/fns/corrupt:latest", registry.host), &no_log).await.unwrap_err();
    assert!(matches!(&e, ImageError::Digest(m) if m.contains(layer)), "{e}");
    let after: HashSet<_> = std::fs::read_dir(&cache_dir).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(before, after, "a failed pull leaves nothing in the cache");

    // The same in a gzip layer, whose inflating fails before its end: still its digest.
    let d4 = registry.push(&image_v("4"), "fns/corrupt-gz", "latest");
    let manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(registry.blob_path(&d4)).unwrap()).unwrap();
    let layer = manifest["layers"][0]["digest"].as_str().unwrap();
    let blob = registry.blob_path(layer);
    let mut bytes = std::fs::read(&blob).unwrap();
    for b in &mut bytes[20..60] {
        *b ^= 0x5a;
    }
    std::fs::write(&blob, bytes).unwrap();
    let e = images.pull(&format!("{}/fns/corrupt-gz:latest", registry.host), &no_log).await.unwrap_err();
    assert!(matches!(&e, ImageError::Digest(m) if m.contains(layer)), "{e}");
    let after: HashSet<_> = std::fs::read_dir(&cache_dir).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(before, after, "a failed pull leaves nothing in the cache");

    // Missing tags and repositories; a registry not named insecure is spoken to over HTTPS,
    // which this plain-HTTP one does not answer.
    let e = images.pull(&format!("{}/fns/app:nope", registry.host), &no_log).await.unwrap_err();
    assert!(matches!(e, ImageError::NotFound(_)), "{e}");
    let strict_dir = temp("strict");
    let strict = Images::open(&strict_dir, Registries::new([], &[], None).unwrap()).unwrap();
    let e = strict.pull(&format!("{}/fns/app:v1", registry.host), &no_log).await.unwrap_err();
    assert!(matches!(e, ImageError::Registry(ref m) if m.contains("TLS")), "{e}");
    drop(strict);
    std::fs::remove_dir_all(&strict_dir).unwrap();
    let e = images.pull("no-registry", &no_log).await.unwrap_err();
    assert!(matches!(e, ImageError::Invalid(_)), "{e}");

    drop(images);
    std::fs::remove_dir_all(&cache_dir).unwrap();
}

/// Forwards loopback connections on a port of its own to `upstream`, the answers at about
/// `bytes_per_s`: a registry behind a slow link, so that a pull lasts long enough to be seen.
async fn slow_link(upstream: String, bytes_per_s: u64) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let host = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let upstream = upstream.clone();
            tokio::spawn(async move {
                let Ok(server) = tokio::net::TcpStream::connect(&upstream).await else { return };
                let (mut client_read, mut client_write) = client.into_split();
                let (mut server_read, mut server_write) = server.into_split();
                tokio::spawn(async move { tokio::io::copy(&mut client_read, &mut server_write).await });
                let mut buf = vec![0; 64 << 10];
                let pause = std::time::Duration::from_secs_f64(buf.len() as f64 / bytes_per_s as f64);
                while let Ok(n) = server_read.read(&mut buf).await {
                    if n == 0 || client_write.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                    tokio::time::sleep(pause.mul_f64(n as f64 / buf.len() as f64)).await;
                }
            });
        }
    });
    host
}

/// `ember create-function --package-type Image` prints the pull's progress (from the agent's
/// `GET /ember/image-pulls`) while it waits, and the agent lists no pull once it is over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_shows_a_pulls_progress() {
    let registry = Registry::start("progress");
    // 12 MiB that do not compress, over a 4 MiB/s link: a pull of about 3 s.
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let data: Vec<u8> = (0..(12 << 20) / 8)
        .flat_map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()
        })
        .collect();
    let image = OciImage {
        layers: vec![Layer::Gzip(tar_layer(&[("var/task/app.py", b"def h(e, c):\n    return 1\n")])), {
            Layer::Tar(tar_layer(&[("opt/data", &data)]))
        }],
        ..image_v("1")
    };
    registry.push(&image, "fns/big", "latest");
    let host = slow_link(registry.host.clone(), 4 << 20).await;
    let agent = common::agent::Agent::start("image-progress", &["--insecure-registry", &host]);
    let uri = format!("{host}/fns/big:latest");
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_ember"))
        .args(["create-function", "--function-name", "big", "--package-type", "Image", "--role"])
        .arg("arn:aws:iam::000000000000:role/test")
        .arg("--code")
        .arg(format!("ImageUri={uri}"))
        .arg("--socket")
        .arg(&agent.socket)
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let created: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(created["PackageType"], "Image");
    let progress: Vec<&str> = stderr.lines().filter(|l| l.starts_with(&format!("ember: pulling {uri}: "))).collect();
    assert!(progress.iter().any(|l| l.contains("layer 2/2, ") && l.contains(" of 12.0 MiB")), "{stderr}");
    assert!(progress.len() >= 2, "the progress is printed as it changes: {stderr}");
    let pulls = agent.request("GET", "/ember/image-pulls", &[], Vec::new()).await;
    assert_eq!(pulls.status, 200);
    assert_eq!(pulls.json(), serde_json::json!({ "Pulls": [] }));
}

/// A CA and a certificate it signed for 127.0.0.1, by openssl, in `dir`: (ca.pem, cert, key).
fn certificates(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let run = |args: &[&str]| {
        let out = Command::new("openssl").args(args).current_dir(dir).output().expect("run openssl");
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    run(&[
        &["req", "-x509"][..],
        &ec,
        &["-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=ember test CA"],
    ]
    .concat());
    run(&[&["req"][..], &ec, &["-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1"]].concat());
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "server.ext",
    ]);
    (dir.join("ca.pem"), dir.join("server.pem"), dir.join("server.key"))
}

/// A registry over HTTPS that asks for credentials: pulled from with its CA and the
/// credentials of a Docker config.json; without the CA, the certificate is refused; without
/// credentials, or with wrong ones, the registry's refusal says how to give them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_registries_that_ask_for_credentials() {
    use base64::Engine as _;
    use ember::agent::images::local::{LocalRegistry, Secured};
    let certs = temp("certs");
    let (ca, certificate, key) = certificates(&certs);
    let secured = Secured { certificate: &certificate, key: &key, user: ("puller", "s3cret pass") };
    let registry_dir = temp("secured-registry");
    let registry = LocalRegistry::start_secured(&registry_dir, &secured).expect("start a secured docker-registry");
    let digest =
        registry.push(&image_v("tls"), "fns/private", "v1").unwrap_or_else(|e| panic!("{e}\n{}", registry.log()));
    let uri = format!("{}/fns/private:v1", registry.host);
    let config = |user: &str| {
        let auth = base64::engine::general_purpose::STANDARD.encode(user);
        let path = certs.join(format!("config-{}.json", user.len()));
        std::fs::write(&path, format!(r#"{{"auths": {{"{}": {{"auth": "{auth}"}}}}}}"#, registry.host)).unwrap();
        path
    };

    let good = config("puller:s3cret pass");
    let images =
        Images::open(&temp("secured-cache"), Registries::new([], std::slice::from_ref(&ca), Some(&good)).unwrap())
            .unwrap();
    let pulled = images.pull(&uri, &no_log).await.unwrap();
    assert_eq!(pulled.digest, digest);
    assert_eq!(cat(&pulled.root_image, "/var/task/version").as_deref(), Some("tls"));

    let untrusted = Images::open(&temp("untrusted-cache"), Registries::new([], &[], Some(&good)).unwrap()).unwrap();
    let e = untrusted.pull(&uri, &no_log).await.unwrap_err();
    assert!(matches!(&e, ImageError::Registry(m) if m.contains("TLS") && m.contains("certificate")), "{e}");

    let anonymous =
        Images::open(&temp("anonymous-cache"), Registries::new([], std::slice::from_ref(&ca), None).unwrap()).unwrap();
    let e = anonymous.pull(&uri, &no_log).await.unwrap_err();
    assert!(matches!(&e, ImageError::Registry(m) if m.contains("--registry-credentials")), "{e}");

    let wrong = config("puller:guess");
    let refused = Images::open(&temp("refused-cache"), Registries::new([], &[ca], Some(&wrong)).unwrap()).unwrap();
    let e = refused.pull(&uri, &no_log).await.unwrap_err();
    assert!(matches!(&e, ImageError::Registry(m) if m.contains("401") && m.contains("--registry-credentials")), "{e}");

    // The settings themselves: a CA file that holds no certificate, credentials not JSON.
    let e = Registries::new([], &[certificate.with_extension("csr")], None).err().expect("a CSR is no CA");
    assert!(e.to_string().contains("--registry-ca"), "{e}");
    std::fs::write(certs.join("bad.json"), "{").unwrap();
    let e = Registries::new([], &[], Some(&certs.join("bad.json"))).err().expect("not JSON");
    assert!(e.to_string().contains("--registry-credentials"), "{e}");
    drop(registry);
    for dir in ["certs", "secured-cache", "untrusted-cache", "anonymous-cache", "refused-cache"] {
        let _ =
            std::fs::remove_dir_all(std::env::temp_dir().join(format!("ember-images-{dir}-{}", std::process::id())));
    }
}

/// Image functions through the real clients: boto3 (CreateFunction, GetFunction,
/// UpdateFunctionCode, UpdateFunctionConfiguration and Lambda's refusals) and the aws CLI
/// (`create-function --package-type Image --code ImageUri=...`), by tests/api/test_images.py.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boto3_and_the_aws_cli_manage_image_functions() {
    let aws = std::env::var("EMBER_AWS_CLI").expect(
        "EMBER_AWS_CLI must name the aws CLI (scripts/test.sh installs it from PyPI into ~/.cache/ember/awscli)",
    );
    let registry = Registry::start("clients");
    let d1 = registry.push(&image_v("1"), "fns/app", "v1");
    let d2 = registry.push(&image_v("2"), "fns/app", "v2");
    let agent = common::agent::Agent::start_listening("image-clients", &["--insecure-registry", &registry.host]);
    let out = tokio::process::Command::new("python3")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/api/test_images.py"))
        .arg(format!("http://127.0.0.1:{}", agent.tcp_port.unwrap()))
        .args([format!("{}/fns/app:v1", registry.host), d1, format!("{}/fns/app:v2", registry.host), d2, aws])
        .output()
        .await
        .expect("run python3 tests/api/test_images.py (boto3 is installed by scripts/test.sh)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("checks passed"), "{stdout}");
}
