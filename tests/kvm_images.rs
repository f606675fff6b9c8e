//! Container-image functions end to end on a KVM host: images built here (the python3.11 and
//! nodejs20.x runtime images' files as a base layer, handler code and a whiteout on top,
//! written as OCI layouts by tests/common/registry.rs), pushed with skopeo to a real registry
//! (Debian's docker-registry on a loopback port), pulled by the agent, booted with ember-init
//! switching into the image's root and the image's own runtime interface client running.
//!
//! Like the other KVM tests these need a KVM host that runs Linux guests; scripts/test.sh runs
//! them in the right place, and anywhere else they fail and say why.

mod common;

use common::agent::{Agent, Response};
use common::registry::{tar_layer, Layer, OciImage, Registry};
use common::{guest_dir, require_kvm_host};
use serde_json::{json, Value};

fn body(resp: &Response) -> String {
    String::from_utf8_lossy(&resp.body).into_owned()
}

/// A runtime image's files, compressed already (by scripts/build-test-functions.sh).
fn base_layer(runtime: &str) -> Layer {
    let path = guest_dir().join("functions").join(format!("{runtime}-root.tar.gz"));
    let read = |p: &std::path::Path| {
        std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e} (scripts/build-test-functions.sh)", p.display()))
    };
    let diff_id = String::from_utf8(read(&path.with_extension("gz.diffid"))).unwrap().trim().to_owned();
    Layer::Gzipped(read(&path), diff_id)
}

/// A Python image: the python3.11 runtime's files, then the handler and two files, then a
/// layer that deletes one of them (a whiteout) and says which build it is.
fn python_image(build: &str) -> OciImage {
    let handler = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/functions/python/handler.py")).unwrap();
    OciImage {
        layers: vec![
            base_layer("python3.11"),
            Layer::Gzip(tar_layer(&[
                ("var/task/app.py", &handler),
                ("var/task/kept.txt", b"kept"),
                ("var/task/deleted.txt", b"deleted"),
            ])),
            Layer::Gzip(tar_layer(&[("var/task/.wh.deleted.txt", b""), ("var/task/build.txt", build.as_bytes())])),
        ],
        entrypoint: vec!["/usr/bin/python3.11".into(), "-m".into(), "awslambdaric".into()],
        cmd: vec!["app.image_info".into()],
        env: vec![
            "PATH=/usr/local/bin:/usr/bin:/bin".into(),
            "PYTHONPATH=/var/task".into(),
            format!("IMAGE_BUILD={build}"),
            "LANG=C.UTF-8".into(),
        ],
        working_dir: "/var/task".into(),
    }
}

/// A Node.js image: the nodejs20.x runtime's files and the test handlers in /app.
fn node_image() -> OciImage {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/functions/node");
    let index = std::fs::read(format!("{dir}/index.js")).unwrap();
    OciImage {
        layers: vec![base_layer("nodejs20.x"), Layer::Gzip(tar_layer(&[("app/index.js", &index)]))],
        entrypoint: vec!["/usr/bin/node".into(), "/var/runtime/node_modules/aws-lambda-ric/bin/index.mjs".into()],
        cmd: vec!["index.context".into()],
        env: vec!["PATH=/usr/bin:/bin".into(), "IMAGE_KIND=node".into()],
        working_dir: "/app".into(),
    }
}

async fn create_image(agent: &Agent, name: &str, uri: &str, extra: Value) -> Response {
    let mut request = json!({
        "FunctionName": name,
        "PackageType": "Image",
        "Code": {"ImageUri": uri},
        "Role": "arn:aws:iam::000000000000:role/test",
        "Timeout": 60,
    });
    for (k, v) in extra.as_object().into_iter().flatten() {
        request[k] = v.clone();
    }
    agent.request("POST", "/2015-03-31/functions", &[], serde_json::to_vec(&request).unwrap()).await
}

fn ok(resp: &Response) -> Value {
    assert_eq!((resp.status, resp.header("x-amz-function-error")), (200, None), "{}", body(resp));
    resp.json()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_functions_from_a_registry() {
    require_kvm_host();
    let registry = Registry::start("kvm");
    let agent = Agent::start("images", &["--insecure-registry", &registry.host]);
    let d1 = registry.push(&python_image("1"), "fns/py", "v1");
    let uri = format!("{}/fns/py:v1", registry.host);

    // Layers are refused on an image, as Lambda refuses them; nothing is created.
    let refused =
        create_image(&agent, "py", &uri, json!({"Layers": ["arn:aws:lambda:us-east-1:000000000000:layer:l:1"]})).await;
    assert_eq!(refused.status, 400, "{}", body(&refused));
    assert!(body(&refused).contains("Layers are only supported for functions with the Zip package type"));

    // The Python image: its ENV and WORKDIR, its command's handler, the whiteout applied.
    let created = create_image(&agent, "py", &uri, json!({"Environment": {"Variables": {"MY_VAR": "set"}}})).await;
    assert_eq!(created.status, 201, "{}", body(&created));
    let config = created.json();
    assert_eq!(config["PackageType"], "Image");
    assert!(config.get("Runtime").is_none() && config.get("Handler").is_none(), "{config}");
    assert_eq!(config["CodeSha256"], d1.trim_start_matches("sha256:"));
    let got = agent.request("GET", "/2015-03-31/functions/py", &[], vec![]).await;
    assert_eq!(got.json()["Code"]["ImageUri"], uri);
    assert_eq!(got.json()["Code"]["ResolvedImageUri"], format!("{}/fns/py@{d1}", registry.host));
    assert_eq!(got.json()["Code"]["RepositoryType"], "ECR");

    let paths = json!({"paths": ["/var/task/kept.txt", "/var/task/deleted.txt", "/var/task/build.txt"]});
    let info = ok(&agent.invoke("py", paths.clone()).await);
    assert_eq!(info["cwd"], "/var/task");
    assert_eq!(info["env"]["IMAGE_BUILD"], "1");
    assert_eq!(info["env"]["MY_VAR"], "set");
    assert_eq!(info["env"]["PATH"], "/usr/local/bin:/usr/bin:/bin");
    assert_eq!(info["env"]["_HANDLER"], "app.image_info");
    assert_eq!(info["env"]["AWS_LAMBDA_FUNCTION_NAME"], "py");
    assert_eq!(
        info["exists"],
        json!({"/var/task/kept.txt": true, "/var/task/deleted.txt": false, "/var/task/build.txt": true})
    );

    // ImageConfig.Command overrides the handler (and WorkingDirectory the directory).
    let patch = json!({"ImageConfig": {"Command": ["app.echo"], "WorkingDirectory": "/tmp"}});
    let updated =
        agent.request("PUT", "/2015-03-31/functions/py/configuration", &[], serde_json::to_vec(&patch).unwrap()).await;
    assert_eq!(updated.status, 200, "{}", body(&updated));
    assert_eq!(updated.json()["ImageConfigResponse"]["ImageConfig"]["Command"], json!(["app.echo"]));
    assert_eq!(ok(&agent.invoke("py", json!({"echoed": true})).await), json!({"echoed": true}));
    let patch = json!({"ImageConfig": {}});
    let updated =
        agent.request("PUT", "/2015-03-31/functions/py/configuration", &[], serde_json::to_vec(&patch).unwrap()).await;
    assert_eq!(updated.status, 200, "{}", body(&updated));

    // The tag moves: the function keeps its digest until UpdateFunctionCode resolves it again.
    let d2 = registry.push(&python_image("2"), "fns/py", "v1");
    assert_ne!(d1, d2);
    let got = agent.request("GET", "/2015-03-31/functions/py", &[], vec![]).await;
    assert_eq!(got.json()["Code"]["ResolvedImageUri"], format!("{}/fns/py@{d1}", registry.host));
    let update = json!({"ImageUri": uri});
    let recoded =
        agent.request("PUT", "/2015-03-31/functions/py/code", &[], serde_json::to_vec(&update).unwrap()).await;
    assert_eq!(recoded.status, 200, "{}", body(&recoded));
    assert_eq!(recoded.json()["CodeSha256"], d2.trim_start_matches("sha256:"));
    let got = agent.request("GET", "/2015-03-31/functions/py", &[], vec![]).await;
    assert_eq!(got.json()["Code"]["ResolvedImageUri"], format!("{}/fns/py@{d2}", registry.host));
    assert_eq!(ok(&agent.invoke("py", paths).await)["env"]["IMAGE_BUILD"], "2");

    // A corrupted layer blob: refused by its digest; no function, nothing left in the cache.
    let d3 = registry.push(&python_image("3"), "fns/corrupt", "latest");
    let manifest: Value = serde_json::from_slice(&std::fs::read(registry.blob_path(&d3)).unwrap()).unwrap();
    let layer = manifest["layers"][2]["digest"].as_str().unwrap().to_owned();
    let blob = registry.blob_path(&layer);
    let mut bytes = std::fs::read(&blob).unwrap();
    let last = bytes.len() - 20;
    bytes[last] ^= 0x55;
    std::fs::write(&blob, bytes).unwrap();
    let images_dir = agent.data_dir.join("images");
    let before: Vec<_> = std::fs::read_dir(&images_dir).unwrap().map(|e| e.unwrap().file_name()).collect();
    let refused = create_image(&agent, "corrupt", &format!("{}/fns/corrupt:latest", registry.host), json!({})).await;
    assert_eq!(refused.status, 400, "{}", body(&refused));
    assert!(body(&refused).contains(&layer), "{}", body(&refused));
    assert_eq!(agent.request("GET", "/2015-03-31/functions/corrupt", &[], vec![]).await.status, 404);
    let mut after: Vec<_> = std::fs::read_dir(&images_dir).unwrap().map(|e| e.unwrap().file_name()).collect();
    after.sort();
    let mut before = before;
    before.sort();
    assert_eq!(before, after, "a failed pull leaves nothing behind");

    // A Node.js image: its own runtime interface client, ENV and WORKDIR.
    registry.push(&node_image(), "fns/node", "latest");
    let created = create_image(&agent, "node", &format!("{}/fns/node:latest", registry.host), json!({})).await;
    assert_eq!(created.status, 201, "{}", body(&created));
    let ctx = ok(&agent.invoke("node", json!({})).await);
    assert_eq!(ctx["cwd"], "/app");
    assert_eq!(ctx["functionName"], "node");
    assert_eq!(ctx["env"]["IMAGE_KIND"], "node");
    assert_eq!(ctx["env"]["_HANDLER"], "index.context");
    assert!(ctx["node"].as_str().unwrap().starts_with("20."), "{ctx}");
}
