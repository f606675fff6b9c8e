//! The nodejs20.x runtime end to end: Debian's Node.js 20 and npm's unmodified aws-lambda-ric
//! in the runtime image (rootfs/runtimes/nodejs20.x), the handlers of tests/functions/node in a
//! zip, CommonJS and ES modules, async and callback styles, the context, thrown errors with
//! their type, `console.log` lines in the function's log, and a layer's
//! `nodejs/node_modules` package found by `require`.
//!
//! Like the other KVM tests these need a KVM host that runs Linux guests; scripts/test.sh runs
//! them in the right place, and anywhere else they fail and say why.

mod common;
use std::io::{Cursor, Write};

use base64::Engine;
use common::agent::{Agent, Response};
use common::require_kvm_host;
use serde_json::{json, Value};
use zip::write::SimpleFileOptions;

fn body(resp: &Response) -> String {
    String::from_utf8_lossy(&resp.body).into_owned()
}

/// A zip of (path, content) files.
fn zip_of(files: &[(&str, &str)]) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
    for (path, content) in files {
        w.start_file(*path, SimpleFileOptions::default().unix_permissions(0o644)).unwrap();
        w.write_all(content.as_bytes()).unwrap();
    }
    w.finish().unwrap().into_inner()
}

/// Publishes a layer whose `nodejs/node_modules/ember-layer-lib` package greets; its ARN.
async fn publish_node_layer(agent: &Agent) -> String {
    let zip = zip_of(&[
        ("nodejs/node_modules/ember-layer-lib/package.json", r#"{"name": "ember-layer-lib", "main": "lib.js"}"#),
        ("nodejs/node_modules/ember-layer-lib/lib.js", "exports.greet = (who) => `hello ${who}, from a layer`;\n"),
    ]);
    let request = json!({
        "Content": { "ZipFile": base64::engine::general_purpose::STANDARD.encode(zip) },
        "CompatibleRuntimes": ["nodejs20.x"],
    });
    let resp =
        agent.request("POST", "/2018-10-31/layers/node-lib/versions", &[], serde_json::to_vec(&request).unwrap()).await;
    assert_eq!(resp.status, 201, "{}", body(&resp));
    resp.json()["LayerVersionArn"].as_str().unwrap().to_owned()
}

/// The function error of an invoke that must fail with `error_type`: its body.
fn expect_error(resp: &Response, error_type: &str) -> Value {
    assert_eq!(resp.status, 200, "{}", body(resp));
    assert_eq!(resp.header("x-amz-function-error"), Some("Unhandled"), "{}", body(resp));
    let error = resp.json();
    assert_eq!(error["errorType"], error_type, "{error}");
    error
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_handlers_commonjs_and_es_modules_with_a_layer() {
    require_kvm_host();
    let agent = Agent::start("node", &[]);

    // SnapStart is refused on Node.js, as Lambda refuses it; nothing is created.
    let refused = agent
        .create(
            "snap",
            "nodejs20.x",
            "index.context",
            "node.zip",
            json!({"SnapStart": {"ApplyOn": "PublishedVersions"}}),
        )
        .await;
    assert_eq!(refused.status, 400, "{}", body(&refused));
    assert_eq!(refused.json()["Type"], "User", "{}", body(&refused));
    assert!(body(&refused).contains("nodejs20.x is not supported for SnapStart enabled functions."));
    assert_eq!(agent.request("GET", "/2015-03-31/functions/snap", &[], vec![]).await.status, 404);

    // CommonJS, async, with a layer: the context, the layer's package, a console.log line.
    let layer = publish_node_layer(&agent).await;
    let extra = json!({
        "MemorySize": 256,
        "Timeout": 30,
        "Layers": [layer],
        "Environment": {"Variables": {"MY_VAR": "from the config"}},
    });
    let created = agent.create("cjs", "nodejs20.x", "index.context", "node.zip", extra).await;
    assert_eq!(created.status, 201, "{}", body(&created));
    let first = agent.invoke("cjs", json!({"k": 1})).await;
    assert_eq!((first.status, first.header("x-amz-function-error")), (200, None), "{}", body(&first));
    let ctx = first.json();
    let request_id = ctx["awsRequestId"].as_str().unwrap().to_owned();
    assert_eq!(first.header("x-amzn-requestid"), Some(request_id.as_str()));
    assert_eq!(ctx["functionName"], "cjs");
    assert_eq!(ctx["functionVersion"], "$LATEST");
    assert_eq!(ctx["memoryLimitInMB"], "256");
    assert!(ctx["invokedFunctionArn"].as_str().unwrap().ends_with(":function:cjs"), "{ctx}");
    let remaining = ctx["remainingMs"].as_i64().unwrap();
    assert!(remaining > 15_000 && remaining <= 30_000, "remaining {remaining} ms of a 30 s timeout");
    assert_eq!(ctx["logGroupName"], "/aws/lambda/cjs");
    assert!(ctx["node"].as_str().unwrap().starts_with("20."), "{ctx}");
    assert_eq!(ctx["cwd"], "/var/task");
    assert_eq!(ctx["env"]["MY_VAR"], "from the config");
    assert_eq!(ctx["env"]["AWS_EXECUTION_ENV"], "AWS_Lambda_nodejs20.x");
    assert_eq!(ctx["env"]["_HANDLER"], "index.context");
    assert_eq!(ctx["env"]["AWS_LAMBDA_RUNTIME_API"], "127.0.0.1:9001");
    assert_eq!(ctx["layer"]["greeting"], "hello node, from a layer", "{ctx}");
    assert_eq!(ctx["layer"]["from"], "/opt/nodejs/node_modules/ember-layer-lib/lib.js");
    let tail = first.log_tail();
    assert!(tail.contains("Init Duration:"), "a cold start reports its init: {tail}");
    // Lambda's console.log format: time, request id, level, message, tab-separated.
    let line = tail.lines().find(|l| l.contains("context of")).unwrap_or_else(|| panic!("no console.log line: {tail}"));
    let fields: Vec<&str> = line.split('\t').collect();
    assert_eq!(fields.len(), 4, "{line:?}");
    assert!(fields[0].ends_with('Z') && fields[0].contains('T'), "{line:?}");
    assert_eq!(&fields[1..], [request_id.as_str(), "INFO", &format!("context of {request_id}")]);

    // A thrown error: its class is the errorType; the instance stays and answers the next.
    let error = expect_error(&agent.invoke("cjs", json!({"throw": "TypeError"})).await, "TypeError");
    assert!(error["errorMessage"].as_str().unwrap().starts_with("thrown as asked by "), "{error}");
    assert!(error["trace"].as_array().is_some_and(|t| !t.is_empty()), "{error}");
    let warm = agent.invoke("cjs", json!({})).await;
    assert_eq!((warm.status, warm.header("x-amz-function-error")), (200, None), "{}", body(&warm));
    assert!(!warm.log_tail().contains("Init Duration:"), "{}", warm.log_tail());
    assert_ne!(warm.json()["awsRequestId"], ctx["awsRequestId"]);

    // Callback style: a result, and an error through the callback.
    let patch = json!({"Handler": "index.callback"});
    let updated =
        agent.request("PUT", "/2015-03-31/functions/cjs/configuration", &[], serde_json::to_vec(&patch).unwrap()).await;
    assert_eq!(updated.status, 200, "{}", body(&updated));
    let ok = agent.invoke("cjs", json!({"n": 7})).await;
    assert_eq!((ok.status, ok.header("x-amz-function-error")), (200, None), "{}", body(&ok));
    assert_eq!(ok.json()["callback"], true);
    assert_eq!(ok.json()["event"], json!({"n": 7}));
    let error = expect_error(&agent.invoke("cjs", json!({"fail": "out of range"})).await, "RangeError");
    assert_eq!(error["errorMessage"], "out of range");

    // An ES module (esm.mjs), published: the context of a version, its own error class.
    let extra = json!({"Timeout": 30, "Publish": true});
    let created = agent.create("esm", "nodejs20.x", "esm.context", "node.zip", extra).await;
    assert_eq!(created.status, 201, "{}", body(&created));
    assert_eq!(created.json()["Version"], "1");
    let resp = agent.invoke("esm:1", json!({"a": [1, 2]})).await;
    assert_eq!((resp.status, resp.header("x-amz-function-error")), (200, None), "{}", body(&resp));
    let esm = resp.json();
    assert_eq!(esm["esm"], true);
    assert_eq!(esm["functionName"], "esm");
    assert_eq!(esm["functionVersion"], "1");
    assert_eq!(esm["memoryLimitInMB"], "128");
    assert!(esm["invokedFunctionArn"].as_str().unwrap().ends_with(":function:esm:1"), "{esm}");
    assert_eq!(esm["sha256"].as_str().unwrap().len(), 64);
    assert!(resp.log_tail().contains(&format!("\tINFO\tesm context of {}", esm["awsRequestId"].as_str().unwrap())));
    let error = expect_error(&agent.invoke("esm:1", json!({"throw": true})).await, "EmberError");
    assert_eq!(error["errorMessage"], "from an ES module");

    // The function's log has both instances' REPORT lines.
    let logs = agent.request("GET", "/2015-03-31/functions/cjs/logs", &[], vec![]).await;
    assert_eq!(logs.status, 200);
    assert_eq!(body(&logs).matches("REPORT RequestId:").count(), 5, "{}", body(&logs));
}
