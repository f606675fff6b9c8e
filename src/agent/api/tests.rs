//! The API through its HTTP handler, with a pool whose launcher starts no VM (invocations are
//! echoed): every resource's operations, their shapes and Lambda's errors.

use std::path::PathBuf;

use base64::Engine;
use http_body_util::BodyExt;
use serde_json::json;

use super::*;
use crate::agent::codezip::tests::{make_zip, temp_dir, Entry};
use crate::agent::functions::Control;
use crate::agent::invoke::queue::AsyncQueue;
use crate::agent::invoke::retry::DEFAULT_RETRY_DELAYS;
use crate::agent::invoke::Invoker;
use crate::agent::logs::Logs;
use crate::agent::pool::tests::Fake;
use crate::agent::pool::{Pool, PoolConfig};
use crate::agent::snapshots::Snapshots;
use crate::agent::store::concurrency::HostLimits;
use crate::agent::store::Store;

pub(crate) struct TestAgent {
    pub agent: Arc<Agent>,
    pub dir: PathBuf,
}

impl Drop for TestAgent {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// An agent on a temporary data dir whose instances are the fake launcher's (in a Tokio
/// runtime: its queue starts tasks).
pub(crate) fn test_agent() -> TestAgent {
    let dir = temp_dir("api");
    let store = Arc::new(Store::open(&dir).unwrap());
    let logs = Logs::open(&dir.join("logs")).unwrap();
    let snapshots = Snapshots::open(&dir.join("snapshots")).unwrap();
    let pool = Pool::new(
        PoolConfig { max_instances: 10, max_boots: 2, idle_memory_kib: u64::MAX },
        logs.clone(),
        snapshots,
        Arc::new(Fake::default()),
    );
    let limits = HostLimits { concurrent: 10, min_unreserved: 1 };
    let images = crate::agent::images::Images::open(&dir.join("images"), Default::default()).unwrap();
    let control = Control::new(store.clone(), Arc::new(images), pool.clone(), logs.clone(), limits);
    let invoker = Invoker::new(store.clone(), pool.clone());
    let queue =
        AsyncQueue::start(store.clone(), invoker.clone(), pool, DEFAULT_RETRY_DELAYS, Default::default()).unwrap();
    let scheduler = crate::agent::triggers::schedule::Scheduler::start(store, queue.clone()).unwrap();
    let agent = Agent { control, invoker, queue, scheduler, logs, consumers: None };
    TestAgent { agent: Arc::new(agent), dir }
}

pub(crate) struct Answer {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body)))
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }
    pub fn error_type(&self) -> &str {
        self.header("x-amzn-errortype").unwrap_or("")
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

pub(crate) async fn call(
    t: &TestAgent,
    method: &str,
    uri: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Answer {
    let body: Bytes = body.into();
    let mut req = Request::builder().method(method).uri(uri).header("content-length", body.len());
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    // Boxed: the handler's future is large in debug builds, and a test's runs on its stack.
    let response = Box::pin(handle(t.agent.clone(), req.body(Full::new(body)).unwrap())).await;
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await.unwrap().to_bytes().to_vec();
    assert!(headers.contains_key("x-amzn-requestid"));
    Answer { status, headers, body }
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn python_zip() -> Vec<u8> {
    make_zip(&[Entry::File("handler.py", b"def echo(event, context):\n    return event\n", 0o644)])
}

fn create_body(name: &str, extra: Value) -> Vec<u8> {
    let mut body = json!({
        "FunctionName": name,
        "Runtime": "python3.11",
        "Role": "arn:aws:iam::000000000000:role/ember",
        "Handler": "handler.echo",
        "Code": { "ZipFile": b64(&python_zip()) },
    });
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    serde_json::to_vec(&body).unwrap()
}

async fn create(t: &TestAgent, name: &str, extra: Value) -> Value {
    let a = call(t, "POST", "/2015-03-31/functions", &[], create_body(name, extra)).await;
    assert_eq!(a.status, 201, "{}", a.text());
    a.json()
}

#[tokio::test]
async fn function_lifecycle() {
    let t = test_agent();
    let created = create(&t, "f1", json!({ "MemorySize": 256 })).await;
    assert_eq!(created["FunctionName"], "f1");
    assert_eq!((created["MemorySize"].as_u64(), created["Timeout"].as_u64()), (Some(256), Some(3)));
    assert_eq!(created["EphemeralStorage"]["Size"], 512);
    assert_eq!(created["CodeSha256"], crate::agent::store::code::code_sha256(&python_zip()));
    assert_eq!(created["CodeSize"], python_zip().len());
    assert_eq!(created["Version"], "$LATEST");

    let a = call(&t, "POST", "/2015-03-31/functions", &[], create_body("f1", json!({}))).await;
    assert_eq!((a.status, a.error_type()), (409, "ResourceConflictException"));
    assert_eq!(a.json()["message"], "Function already exist: f1");

    let a = call(&t, "GET", "/2015-03-31/functions/f1", &[("host", "h:1")], "").await;
    assert_eq!(a.status, 200);
    assert_eq!(a.json()["Configuration"], created);
    assert_eq!(a.json()["Code"]["RepositoryType"], "S3");
    assert_eq!(a.json()["Code"]["Location"], "http://h:1/2015-03-31/functions/f1/code?Qualifier=%24LATEST");
    assert!(a.json().get("Tags").is_none() && a.json().get("Concurrency").is_none());
    let a = call(&t, "GET", "/2015-03-31/functions/f1/code?Qualifier=%24LATEST", &[], "").await;
    assert_eq!(a.body, python_zip());

    let arn = ids::function_arn("f1").replace(':', "%3A");
    let a = call(&t, "GET", &format!("/2015-03-31/functions/{arn}/configuration"), &[], "").await;
    assert_eq!(a.json(), created);

    create(&t, "f2", json!({})).await;
    let a = call(&t, "GET", "/2015-03-31/functions/?MaxItems=1", &[], "").await;
    assert_eq!(a.json()["Functions"].as_array().unwrap().len(), 1);
    assert_eq!(a.json()["NextMarker"], "f1");
    let a = call(&t, "GET", "/2015-03-31/functions?Marker=f1", &[], "").await;
    assert_eq!(a.json()["Functions"][0]["FunctionName"], "f2");
    assert!(a.json().get("NextMarker").is_none());

    let update = json!({ "Timeout": 30, "Environment": { "Variables": { "MY_VAR": "x" } } });
    let a = call(&t, "PUT", "/2015-03-31/functions/f1/configuration", &[], update.to_string()).await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!((a.json()["Timeout"].as_u64(), a.json()["MemorySize"].as_u64()), (Some(30), Some(256)));
    assert_eq!(a.json()["Environment"]["Variables"]["MY_VAR"], "x");
    assert_ne!(a.json()["RevisionId"], created["RevisionId"]);
    let stale = json!({ "Timeout": 31, "RevisionId": created["RevisionId"] });
    let a = call(&t, "PUT", "/2015-03-31/functions/f1/configuration", &[], stale.to_string()).await;
    assert_eq!((a.status, a.error_type()), (412, "PreconditionFailedException"));
    let a = call(&t, "PUT", "/2015-03-31/functions/f1:1/configuration", &[], "{}").await;
    assert_eq!(a.status, 400, "no qualifier on an update");

    let zip = make_zip(&[Entry::File("handler.py", b"def echo(e, c):\n    return 1\n", 0o644)]);
    let body = json!({ "ZipFile": b64(&zip) });
    let a = call(&t, "PUT", "/2015-03-31/functions/f1/code", &[], body.to_string()).await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.json()["CodeSha256"], crate::agent::store::code::code_sha256(&zip));
    assert_eq!(a.json()["Timeout"], 30);
    let body = json!({ "ZipFile": b64(b"nope") });
    let a = call(&t, "PUT", "/2015-03-31/functions/f1/code", &[], body.to_string()).await;
    assert_eq!((a.status, a.error_type()), (400, "InvalidParameterValueException"));

    let a = call(&t, "GET", "/2015-03-31/functions/f1/logs?bytes=100", &[], "").await;
    assert_eq!(a.status, 200);
    assert_eq!(a.header("content-type"), Some("text/plain; charset=utf-8"));

    let a = call(&t, "DELETE", "/2015-03-31/functions/f1", &[], "").await;
    assert_eq!(a.status, 204);
    let a = call(&t, "GET", "/2015-03-31/functions/f1", &[], "").await;
    assert_eq!((a.status, a.error_type()), (404, "ResourceNotFoundException"));
    assert_eq!(a.json()["message"], format!("Function not found: {}", ids::function_arn("f1")));
    let a = call(&t, "DELETE", "/2015-03-31/functions/f1", &[], "").await;
    assert_eq!(a.status, 404);
}

#[tokio::test]
async fn create_validation_and_unsupported_members() {
    let t = test_agent();
    let cases = [
        (json!({ "MemorySize": 64 }), "greater than or equal to 128"),
        (json!({ "MemorySize": 10_241 }), "less than or equal to 10240"),
        (json!({ "Timeout": 901 }), "less than or equal to 900"),
        (json!({ "EphemeralStorage": { "Size": 100 } }), "ephemeralStorage.size"),
        (json!({ "Runtime": "nodejs22.x" }), "The runtime parameter of nodejs22.x is not supported"),
        (
            json!({ "Runtime": "nodejs20.x", "SnapStart": { "ApplyOn": "PublishedVersions" } }),
            "nodejs20.x is not supported for SnapStart enabled functions.",
        ),
        (json!({ "Handler": null }), "Handler is required"),
        (json!({ "Role": "nobody" }), "at 'role'"),
        (json!({ "FunctionName": "bad name" }), "functionName"),
        (json!({ "Environment": { "Variables": { "AWS_REGION": "x" } } }), "reserved keys"),
        (json!({ "Code": { "ZipFile": b64(b"junk") } }), "Could not unzip"),
        (json!({ "Code": { "S3Bucket": "b", "S3Key": "k" } }), "Code.S3Bucket is not supported"),
        (json!({ "Runtime": "provided.al2023", "Handler": "x" }), "bootstrap"),
        (
            json!({ "DeadLetterConfig": { "TargetArn": "arn:aws:sqs:us-east-1:000000000000:q" } }),
            "needs a message broker",
        ),
        (json!({ "DeadLetterConfig": { "TargetArn": "arn:aws:sns:us-east-1:000000000000:t" } }), "not a queue ARN"),
        (json!({ "KMSKeyArn": "arn:aws:kms:us-east-1:000000000000:key/k" }), "KMSKeyArn is not supported"),
        (json!({ "VpcConfig": { "SubnetIds": ["subnet-1"], "SecurityGroupIds": ["sg-1"] } }), "VpcConfig."),
        (json!({ "TracingConfig": { "Mode": "Active" } }), "TracingConfig.Mode"),
        (json!({ "Tags": { "aws:reserved": "x" } }), "reserved for AWS"),
        (json!({ "Layers": [ids::layer_version_arn("missing", 1)] }), "does not exist"),
        (json!({ "PackageType": "Docker" }), "packageType"),
        (json!({ "Code": { "ImageUri": "h.example/f:1" } }), "Code.ImageUri is only supported"),
        (json!({ "ImageConfig": { "Command": ["x"] } }), "ImageConfig is only supported"),
        (json!({ "PackageType": "Image", "Code": { "ImageUri": "h.example/f:1" } }), "Runtime and Handler are not"),
        (json!({ "PackageType": "Image", "Runtime": null, "Handler": null }), "Code.ZipFile is not supported"),
        (
            json!({ "PackageType": "Image", "Runtime": null, "Handler": null, "Code": { "ImageUri": "f" } }),
            "Source image f is not valid",
        ),
        (
            // The test agent reaches no registry (its Registries are the offline default).
            json!({ "PackageType": "Image", "Runtime": null, "Handler": null, "Code": { "ImageUri": "h.example:5000/f:1" } }),
            "pulls from no registry",
        ),
        (
            json!({ "PackageType": "Image", "Runtime": null, "Handler": null, "Code": { "ImageUri": "h.example/f:1" },
                    "Layers": [ids::layer_version_arn("l", 1)] }),
            "Layers are only supported for functions with the Zip package type",
        ),
        (
            json!({ "PackageType": "Image", "Runtime": null, "Handler": null, "Code": { "ImageUri": "h.example/f:1" },
                    "ImageConfig": { "WorkingDirectory": "relative" } }),
            "absolute path",
        ),
    ];
    for (extra, needle) in cases {
        let a = call(&t, "POST", "/2015-03-31/functions", &[], create_body("v", extra.clone())).await;
        assert_eq!((a.status, a.error_type()), (400, "InvalidParameterValueException"), "{extra}");
        let msg = a.json()["message"].as_str().unwrap().to_string();
        assert!(msg.contains(needle), "{extra}: {msg}");
    }
    let a = call(&t, "POST", "/2015-03-31/functions", &[], "{not json").await;
    assert_eq!((a.status, a.error_type()), (400, "InvalidRequestContentException"));
    let a = call(&t, "POST", "/2015-03-31/functions", &[], r#"{"Timeout": "three"}"#).await;
    assert_eq!((a.status, a.error_type()), (400, "InvalidRequestContentException"));
    // Nothing was created by any of these.
    let a = call(&t, "GET", "/2015-03-31/functions/", &[], "").await;
    assert_eq!(a.json()["Functions"], json!([]));
    assert!(std::fs::read_dir(t.dir.join("code")).unwrap().next().is_none(), "no blob was left");
    // Harmless defaults are accepted.
    let harmless = json!({
        "TracingConfig": { "Mode": "PassThrough" }, "VpcConfig": { "SubnetIds": [], "SecurityGroupIds": [] },
        "KMSKeyArn": "", "PackageType": "Zip", "Architectures": ["x86_64"],
    });
    create(&t, "ok", harmless).await;
}

#[tokio::test]
async fn invoke_paths() {
    let t = test_agent();
    create(&t, "f", json!({})).await;
    let path = "/2015-03-31/functions/f/invocations";

    let a = call(&t, "POST", path, &[("x-amz-log-type", "Tail")], r#"{"k": 1}"#).await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.json(), json!({"k": 1}));
    assert_eq!(a.header("x-amz-executed-version"), Some("$LATEST"));
    let tail = base64::engine::general_purpose::STANDARD.decode(a.header("x-amz-log-result").unwrap()).unwrap();
    assert!(String::from_utf8(tail).unwrap().contains("REPORT RequestId:"));
    let a = call(&t, "POST", path, &[], "").await;
    assert_eq!(a.json(), json!({}), "no payload is {{}}");
    let a = call(&t, "POST", path, &[("x-amz-invocation-type", "DryRun")], "{}").await;
    assert_eq!(a.status, 204);
    let a = call(&t, "POST", path, &[("x-amz-invocation-type", "Event")], "{}").await;
    assert_eq!(a.status, 202);
    let a = call(&t, "POST", "/2014-11-13/functions/f/invoke-async", &[], "{}").await;
    assert_eq!((a.status, a.json()), (202, json!({"Status": 202})));
    let a = call(&t, "POST", "/2015-03-31/functions/nope/invocations", &[], "{}").await;
    assert_eq!((a.status, a.error_type()), (404, "ResourceNotFoundException"));
    let a = call(&t, "POST", &format!("{path}?Qualifier=7"), &[], "{}").await;
    assert_eq!(a.status, 404);
    let a = call(&t, "POST", "/2015-03-31/functions/f:live/invocations?Qualifier=prod", &[], "{}").await;
    assert_eq!(a.status, 400, "the qualifiers disagree");
    let a = call(&t, "POST", path, &[], "{oops").await;
    assert_eq!((a.status, a.error_type()), (400, "InvalidRequestContentException"));
    let a = call(&t, "POST", path, &[("x-amz-invocation-type", "Sometimes")], "{}").await;
    assert_eq!(a.status, 400);
    let a = call(&t, "POST", path, &[("x-amz-tenant-id", "t1")], "{}").await;
    assert_eq!(a.status, 400, "a header this host does not implement is refused");
    let a = call(&t, "POST", &format!("{path}?Other=1"), &[], "{}").await;
    assert_eq!(a.status, 400);

    let big = format!("\"{}\"", "x".repeat(crate::agent::limits::MAX_SYNC_PAYLOAD));
    let a = call(&t, "POST", path, &[], big.clone()).await;
    assert_eq!((a.status, a.error_type()), (413, "RequestTooLargeException"));
    assert!(a.json()["message"].as_str().unwrap().contains("6291456"));
    // Without a Content-Length the bytes are counted.
    let req = Request::builder().method("POST").uri(path).body(Full::new(Bytes::from(big))).unwrap();
    let response = Box::pin(handle(t.agent.clone(), req)).await;
    assert_eq!(response.status(), 413);
    let async_big = format!("\"{}\"", "x".repeat(crate::agent::limits::MAX_ASYNC_PAYLOAD));
    let a = call(&t, "POST", path, &[("x-amz-invocation-type", "Event")], async_big).await;
    assert_eq!(a.status, 413);
}

#[tokio::test]
async fn versions_and_weighted_aliases() {
    let t = test_agent();
    create(&t, "f", json!({ "Publish": true, "Environment": { "Variables": { "VV": "1" } } })).await;
    let a = call(&t, "GET", "/2015-03-31/functions/f:1/configuration", &[], "").await;
    assert_eq!(
        (a.json()["Version"].as_str(), a.json()["FunctionArn"].as_str()),
        (Some("1"), Some(ids::qualified_arn("f", 1).as_str()))
    );
    let v1_sha = a.json()["CodeSha256"].clone();
    // Nothing changed: PublishVersion answers version 1 again.
    let a = call(&t, "POST", "/2015-03-31/functions/f/versions", &[], "{}").await;
    assert_eq!((a.status, a.json()["Version"].as_str()), (201, Some("1")));

    let env = json!({ "Environment": { "Variables": { "VV": "2" } } });
    let latest = call(&t, "PUT", "/2015-03-31/functions/f/configuration", &[], env.to_string()).await.json();
    let a =
        call(&t, "POST", "/2015-03-31/functions/f/versions", &[], json!({ "CodeSha256": "wrong" }).to_string()).await;
    assert_eq!((a.status, a.error_type()), (400, "InvalidParameterValueException"));
    let publish =
        json!({ "CodeSha256": latest["CodeSha256"], "RevisionId": latest["RevisionId"], "Description": "two" });
    let a = call(&t, "POST", "/2015-03-31/functions/f/versions", &[], publish.to_string()).await;
    assert_eq!(
        (a.status, a.json()["Version"].as_str(), a.json()["Description"].as_str()),
        (201, Some("2"), Some("two"))
    );
    let a = call(&t, "GET", "/2015-03-31/functions/f/versions", &[], "").await;
    let listed = a.json();
    let versions: Vec<&str> =
        listed["Versions"].as_array().unwrap().iter().map(|v| v["Version"].as_str().unwrap()).collect();
    assert_eq!(versions, ["$LATEST", "1", "2"]);
    assert_eq!(a.json()["Versions"][1]["CodeSha256"], v1_sha);
    assert_eq!(a.json()["Versions"][0]["FunctionArn"], ids::qualified_arn("f", "$LATEST"));

    // An alias on 1 sending 30% to 2.
    let alias = json!({ "Name": "live", "FunctionVersion": "1", "RoutingConfig": { "AdditionalVersionWeights": { "2": 0.3 } } });
    let a = call(&t, "POST", "/2015-03-31/functions/f/aliases", &[], alias.to_string()).await;
    assert_eq!(a.status, 201, "{}", a.text());
    assert_eq!(a.json()["AliasArn"], ids::qualified_arn("f", "live"));
    assert_eq!(a.json()["RoutingConfig"]["AdditionalVersionWeights"]["2"], 0.3);
    let a = call(&t, "POST", "/2015-03-31/functions/f/aliases", &[], alias.to_string()).await;
    assert_eq!((a.status, a.error_type()), (409, "ResourceConflictException"));
    let mut second = 0;
    for _ in 0..200 {
        let a = call(&t, "POST", "/2015-03-31/functions/f:live/invocations", &[], "{}").await;
        assert_eq!(a.status, 200);
        match a.header("x-amz-executed-version") {
            Some("2") => second += 1,
            Some("1") => {}
            other => panic!("executed {other:?}"),
        }
    }
    assert!((30..=90).contains(&second), "version 2 ran {second} times of 200");
    let a = call(&t, "GET", "/2015-03-31/functions/f?Qualifier=live", &[], "").await;
    assert_eq!(
        (a.json()["Configuration"]["Version"].as_str(), a.json()["Configuration"]["FunctionArn"].as_str()),
        (Some("1"), Some(ids::qualified_arn("f", "live").as_str()))
    );

    // Deleting a version an alias routes to is refused.
    let a = call(&t, "DELETE", "/2015-03-31/functions/f?Qualifier=2", &[], "").await;
    assert_eq!((a.status, a.error_type()), (409, "ResourceConflictException"));
    let a = call(&t, "DELETE", "/2015-03-31/functions/f?Qualifier=%24LATEST", &[], "").await;
    assert_eq!(a.status, 400);

    // The alias moves to 2 alone; invoked by its full ARN, 2 always runs.
    let revision = call(&t, "GET", "/2015-03-31/functions/f/aliases/live", &[], "").await.json()["RevisionId"].clone();
    let stale =
        json!({ "FunctionVersion": "2", "RoutingConfig": { "AdditionalVersionWeights": {} }, "RevisionId": "stale" });
    let a = call(&t, "PUT", "/2015-03-31/functions/f/aliases/live", &[], stale.to_string()).await;
    assert_eq!(a.status, 412);
    let update =
        json!({ "FunctionVersion": "2", "RoutingConfig": { "AdditionalVersionWeights": {} }, "RevisionId": revision });
    let a = call(&t, "PUT", "/2015-03-31/functions/f/aliases/live", &[], update.to_string()).await;
    assert_eq!((a.status, a.json()["FunctionVersion"].as_str()), (200, Some("2")), "{}", a.text());
    assert!(a.json().get("RoutingConfig").is_none());
    let arn = ids::qualified_arn("f", "live").replace(':', "%3A");
    for _ in 0..20 {
        let a = call(&t, "POST", &format!("/2015-03-31/functions/{arn}/invocations"), &[], "{}").await;
        assert_eq!(a.header("x-amz-executed-version"), Some("2"));
    }
    let a = call(&t, "GET", "/2015-03-31/functions/f/aliases?FunctionVersion=1", &[], "").await;
    assert_eq!(a.json()["Aliases"], json!([]));
    let a = call(&t, "GET", "/2015-03-31/functions/f/aliases", &[], "").await;
    assert_eq!(a.json()["Aliases"][0]["Name"], "live");
    // Version 1 is free: deleted; its number is never given again.
    let a = call(&t, "DELETE", "/2015-03-31/functions/f?Qualifier=1", &[], "").await;
    assert_eq!(a.status, 204);
    let a = call(&t, "POST", "/2015-03-31/functions/f:1/invocations", &[], "{}").await;
    assert_eq!(a.status, 404);
    call(&t, "PUT", "/2015-03-31/functions/f/configuration", &[], json!({ "Timeout": 9 }).to_string()).await;
    let a = call(&t, "POST", "/2015-03-31/functions/f/versions", &[], "{}").await;
    assert_eq!(a.json()["Version"], "3");
    let a = call(&t, "DELETE", "/2015-03-31/functions/f/aliases/live", &[], "").await;
    assert_eq!(a.status, 204);
    let a = call(&t, "DELETE", "/2015-03-31/functions/f/aliases/live", &[], "").await;
    assert_eq!(a.status, 204, "deleting an alias that is gone is not an error");
    let bad = json!({ "Name": "x", "FunctionVersion": "$LATEST", "RoutingConfig": { "AdditionalVersionWeights": { "2": 0.5 } } });
    let a = call(&t, "POST", "/2015-03-31/functions/f/aliases", &[], bad.to_string()).await;
    assert_eq!(a.status, 400);
    let missing = json!({ "Name": "x", "FunctionVersion": "7" });
    let a = call(&t, "POST", "/2015-03-31/functions/f/aliases", &[], missing.to_string()).await;
    assert_eq!(a.status, 404);
}

#[tokio::test]
async fn layers_tags_and_account() {
    let t = test_agent();
    let layer = make_zip(&[Entry::File("python/mylib.py", b"X = 1\n", 0o644)]);
    let body = json!({ "Content": { "ZipFile": b64(&layer) }, "CompatibleRuntimes": ["python3.11"], "Description": "lib", "LicenseInfo": "MIT" });
    let a = call(&t, "POST", "/2018-10-31/layers/mylib/versions", &[("host", "h")], body.to_string()).await;
    assert_eq!(a.status, 201, "{}", a.text());
    let published = a.json();
    assert_eq!(published["Version"], 1);
    assert_eq!(published["LayerVersionArn"], ids::layer_version_arn("mylib", 1));
    assert_eq!(published["Content"]["CodeSize"], layer.len());
    assert_eq!(published["Content"]["Location"], "http://h/2018-10-31/layers/mylib/versions/1/content");
    let a = call(&t, "GET", "/2018-10-31/layers/mylib/versions/1/content", &[], "").await;
    assert_eq!(a.body, layer);
    let a = call(&t, "GET", "/2018-10-31/layers/mylib/versions/1", &[("host", "h")], "").await;
    assert_eq!(a.json(), published);
    let arn = ids::layer_version_arn("mylib", 1).replace(':', "%3A");
    let a = call(&t, "GET", &format!("/2018-10-31/layers?find=LayerVersion&Arn={arn}"), &[("host", "h")], "").await;
    assert_eq!(a.json(), published);
    call(&t, "POST", "/2018-10-31/layers/mylib/versions", &[], body.to_string()).await;
    let a = call(&t, "GET", "/2018-10-31/layers", &[], "").await;
    assert_eq!(a.json()["Layers"][0]["LatestMatchingVersion"]["Version"], 2);
    let a = call(&t, "GET", "/2018-10-31/layers?CompatibleRuntime=nodejs20.x", &[], "").await;
    assert_eq!(a.json()["Layers"], json!([]));
    let a = call(&t, "GET", "/2018-10-31/layers/mylib/versions", &[], "").await;
    assert_eq!(a.json()["LayerVersions"].as_array().unwrap().len(), 2);

    let with = json!({ "Layers": [ids::layer_version_arn("mylib", 1)], "Tags": { "team": "a" } });
    let created = create(&t, "f", with).await;
    assert_eq!(created["Layers"][0]["Arn"], ids::layer_version_arn("mylib", 1));
    let six: Vec<String> = (0..6).map(|i| ids::layer_version_arn(&format!("l{i}"), 1)).collect();
    let a = call(&t, "PUT", "/2015-03-31/functions/f/configuration", &[], json!({ "Layers": six }).to_string()).await;
    assert_eq!(a.status, 400);
    let a = call(&t, "DELETE", "/2018-10-31/layers/mylib/versions/1", &[], "").await;
    assert_eq!(a.status, 204);
    let a = call(&t, "GET", "/2018-10-31/layers/mylib/versions/1", &[], "").await;
    assert_eq!(a.status, 404);
    let a = call(&t, "POST", "/2015-03-31/functions/f/invocations", &[], "{}").await;
    assert_eq!(a.status, 200, "a function keeps its deleted layer");

    // Tags.
    let function_arn = ids::function_arn("f").replace(':', "%3A");
    let tags = format!("/2017-03-31/tags/{function_arn}");
    let a = call(&t, "GET", &tags, &[], "").await;
    assert_eq!(a.json(), json!({ "Tags": { "team": "a" } }));
    let a = call(&t, "POST", &tags, &[], json!({ "Tags": { "env": "prod" } }).to_string()).await;
    assert_eq!(a.status, 204);
    let a = call(&t, "DELETE", &format!("{tags}?tagKeys=team"), &[], "").await;
    assert_eq!(a.status, 204);
    let a = call(&t, "GET", "/2015-03-31/functions/f", &[], "").await;
    assert_eq!(a.json()["Tags"], json!({ "env": "prod" }));
    let qualified = ids::qualified_arn("f", "1").replace(':', "%3A");
    let a = call(&t, "GET", &format!("/2017-03-31/tags/{qualified}"), &[], "").await;
    assert_eq!(a.status, 400);
    let a = call(&t, "GET", &format!("/2017-03-31/tags/{}", ids::function_arn("nope")), &[], "").await;
    assert_eq!(a.status, 404);

    // Reserved concurrency and the account.
    let a = call(&t, "GET", "/2016-08-19/account-settings/", &[], "").await;
    assert_eq!(a.json()["AccountLimit"]["ConcurrentExecutions"], 10);
    assert_eq!(a.json()["AccountLimit"]["UnreservedConcurrentExecutions"], 10);
    assert_eq!(a.json()["AccountUsage"]["FunctionCount"], 1);
    let a = call(
        &t,
        "PUT",
        "/2017-10-31/functions/f/concurrency",
        &[],
        json!({ "ReservedConcurrentExecutions": 4 }).to_string(),
    )
    .await;
    assert_eq!((a.status, a.json()), (200, json!({ "ReservedConcurrentExecutions": 4 })));
    let a = call(&t, "GET", "/2016-08-19/account-settings/", &[], "").await;
    assert_eq!(a.json()["AccountLimit"]["UnreservedConcurrentExecutions"], 6);
    let a = call(&t, "GET", "/2019-09-30/functions/f/concurrency", &[], "").await;
    assert_eq!(a.json(), json!({ "ReservedConcurrentExecutions": 4 }));
    assert_eq!(
        call(&t, "GET", "/2015-03-31/functions/f", &[], "").await.json()["Concurrency"]["ReservedConcurrentExecutions"],
        4
    );
    let a = call(
        &t,
        "PUT",
        "/2017-10-31/functions/f/concurrency",
        &[],
        json!({ "ReservedConcurrentExecutions": 10 }).to_string(),
    )
    .await;
    assert_eq!(a.status, 400, "it would leave less than the minimum unreserved");
    let a = call(
        &t,
        "PUT",
        "/2017-10-31/functions/f/concurrency",
        &[],
        json!({ "ReservedConcurrentExecutions": 0 }).to_string(),
    )
    .await;
    assert_eq!(a.status, 200);
    let a = call(&t, "POST", "/2015-03-31/functions/f/invocations", &[], "{}").await;
    assert_eq!((a.status, a.error_type()), (429, "TooManyRequestsException"));
    assert_eq!(a.json()["Reason"], "ReservedFunctionConcurrentInvocationLimitExceeded");
    let a = call(&t, "DELETE", "/2017-10-31/functions/f/concurrency", &[], "").await;
    assert_eq!(a.status, 204);
    assert_eq!(call(&t, "GET", "/2019-09-30/functions/f/concurrency", &[], "").await.json(), json!({}));
    let a = call(&t, "POST", "/2015-03-31/functions/f/invocations", &[], "{}").await;
    assert_eq!(a.status, 200);
}

#[tokio::test]
async fn provisioned_concurrency_on_versions_and_aliases() {
    let t = test_agent();
    create(&t, "f", json!({ "Publish": true })).await;
    let path = |q: &str| format!("/2019-09-30/functions/f/provisioned-concurrency?Qualifier={q}");
    let one = json!({ "ProvisionedConcurrentExecutions": 1 }).to_string();
    let a = call(&t, "PUT", &path("%24LATEST"), &[], one.clone()).await;
    assert_eq!(a.status, 400, "not on $LATEST");
    assert!(a.json()["message"].as_str().unwrap().contains("unpublished"));
    let a = call(&t, "PUT", "/2019-09-30/functions/f/provisioned-concurrency", &[], one.clone()).await;
    assert_eq!(a.status, 400, "a qualifier is required");
    call(
        &t,
        "POST",
        "/2015-03-31/functions/f/aliases",
        &[],
        json!({ "Name": "live", "FunctionVersion": "1" }).to_string(),
    )
    .await;
    let a = call(&t, "PUT", &path("live"), &[], one.clone()).await;
    assert_eq!(a.status, 202, "{}", a.text());
    assert_eq!(a.json()["RequestedProvisionedConcurrentExecutions"], 1);
    let mut status = Value::Null;
    for _ in 0..100 {
        status = call(&t, "GET", &path("live"), &[], "").await.json();
        if status["Status"] == "READY" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(status["Status"], "READY", "{status}");
    let a = call(&t, "GET", "/2019-09-30/functions/f/provisioned-concurrency?List=ALL", &[], "").await;
    assert_eq!(a.json()["ProvisionedConcurrencyConfigs"][0]["FunctionArn"], ids::qualified_arn("f", "live"));
    let a = call(&t, "POST", "/2015-03-31/functions/f:live/invocations", &[("x-amz-log-type", "Tail")], "{}").await;
    let tail = base64::engine::general_purpose::STANDARD.decode(a.header("x-amz-log-result").unwrap()).unwrap();
    assert!(!String::from_utf8(tail).unwrap().contains("Init Duration"), "a provisioned instance ran it");
    let a = call(&t, "GET", &path("1"), &[], "").await;
    assert_eq!((a.status, a.error_type()), (404, "ProvisionedConcurrencyConfigNotFoundException"));
    let a = call(&t, "DELETE", &path("live"), &[], "").await;
    assert_eq!(a.status, 204);
    let a = call(&t, "DELETE", &path("live"), &[], "").await;
    assert_eq!(a.status, 404);
}

#[tokio::test]
async fn event_source_mappings_without_a_broker() {
    let t = test_agent();
    create(&t, "f", json!({})).await;
    let queue = "arn:aws:sqs:us-east-1:000000000000:orders";
    let body = |extra: Value| {
        let mut b = json!({ "EventSourceArn": queue, "FunctionName": "f" });
        b.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        b.to_string()
    };
    let path = "/2015-03-31/event-source-mappings/";
    for (extra, needle) in [
        (json!({}), "message broker"),
        (json!({ "EventSourceArn": "arn:aws:kinesis:us-east-1:000000000000:stream/s" }), "Unrecognized event source"),
        (json!({ "FilterCriteria": { "Filters": [{ "Pattern": "{}" }] } }), "FilterCriteria"),
        (json!({ "StartingPosition": "LATEST" }), "StartingPosition"),
    ] {
        let a = call(&t, "POST", path, &[], body(extra.clone())).await;
        assert_eq!((a.status, a.error_type()), (400, "InvalidParameterValueException"), "{extra}");
        assert!(a.json()["message"].as_str().unwrap().contains(needle), "{extra}: {}", a.text());
    }
    let a = call(&t, "GET", path, &[], "").await;
    assert_eq!((a.status, a.json()), (200, json!({ "EventSourceMappings": [] })));
    let a = call(&t, "GET", &format!("{path}00000000-0000-0000-0000-000000000000"), &[], "").await;
    assert_eq!((a.status, a.error_type()), (404, "ResourceNotFoundException"));
    let a = call(&t, "PUT", &format!("{path}u"), &[], r#"{"Enabled": false}"#).await;
    assert_eq!((a.status, a.error_type()), (404, "ResourceNotFoundException"), "{}", a.text());
    let a = call(&t, "DELETE", &format!("{path}u"), &[], "").await;
    assert_eq!((a.status, a.error_type()), (404, "ResourceNotFoundException"));
    // Queue destinations need the broker too.
    let dest = json!({ "DestinationConfig": { "OnSuccess": { "Destination": queue } } }).to_string();
    let a = call(&t, "PUT", "/2019-09-25/functions/f/event-invoke-config", &[], dest).await;
    assert_eq!((a.status, a.error_type()), (400, "InvalidParameterValueException"));
    assert!(a.json()["message"].as_str().unwrap().contains("--amqp-url"), "{}", a.text());
}

#[tokio::test]
async fn unknown_and_unimplemented_routes() {
    let t = test_agent();
    for (method, path) in
        [("GET", "/"), ("GET", "/2015-03-31/functions/f/nothing"), ("PATCH", "/2015-03-31/functions/f")]
    {
        let a = call(&t, method, path, &[], "").await;
        assert_eq!((a.status, a.error_type()), (404, "UnknownOperationException"), "{method} {path}");
    }
    let a = call(&t, "GET", "/2020-04-22/code-signing-configs/", &[], "").await;
    assert!(a.json()["message"].as_str().unwrap().contains("code signing are not supported"), "{}", a.text());
}

#[tokio::test]
async fn serves_tcp_with_keep_alive() {
    let t = test_agent();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(serve_tcp(t.agent.clone(), listener));
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    for _ in 0..3 {
        let req = Request::builder()
            .uri("/2015-03-31/functions/")
            .header("host", "localhost")
            .header("authorization", "AWS4-HMAC-SHA256 Credential=x/20260101/us-east-1/lambda/aws4_request")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let response = sender.send_request(req).await.unwrap();
        assert_eq!(response.status(), 200);
        response.into_body().collect().await.unwrap();
    }
    server.abort();
}

#[tokio::test]
async fn serves_a_unix_socket() {
    let t = test_agent();
    let path = t.dir.join("api.sock");
    let server = tokio::spawn(serve_unix(t.agent.clone(), tokio::net::UnixListener::bind(&path).unwrap()));
    let stream = tokio::net::UnixStream::connect(&path).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    let req = Request::builder()
        .uri("/2015-03-31/functions/missing")
        .header("host", "localhost")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = sender.send_request(req).await.unwrap();
    assert_eq!(response.status(), 404);
    assert_eq!(response.headers()["x-amzn-errortype"], "ResourceNotFoundException");
    assert!(response.headers().contains_key("x-amzn-requestid"));
    server.abort();
}

#[tokio::test]
async fn event_invoke_configs() {
    let t = test_agent();
    create(&t, "f", json!({ "Publish": true })).await;
    let base = "/2019-09-25/functions/f/event-invoke-config";
    let a = call(&t, "GET", base, &[], "").await;
    assert_eq!((a.status, a.error_type()), (404, "ResourceNotFoundException"));
    assert!(a.json()["message"].as_str().unwrap().contains("doesn't have an EventInvokeConfig"));
    let a = call(&t, "POST", base, &[], r#"{"MaximumRetryAttempts": 1}"#).await;
    assert_eq!((a.status, a.error_type()), (404, "ResourceNotFoundException"), "update needs a config");

    let collector = ids::function_arn("collector");
    let put = json!({
        "MaximumRetryAttempts": 1,
        "DestinationConfig": { "OnFailure": { "Destination": collector } },
    });
    let a = call(&t, "PUT", base, &[], put.to_string()).await;
    assert_eq!(a.status, 200, "{}", a.text());
    let c = a.json();
    assert_eq!(c["FunctionArn"], ids::qualified_arn("f", "$LATEST"));
    assert_eq!(c["MaximumRetryAttempts"], 1);
    assert!(c.get("MaximumEventAgeInSeconds").is_none());
    assert_eq!(c["DestinationConfig"], json!({ "OnSuccess": {}, "OnFailure": { "Destination": collector } }));
    assert!(c["LastModified"].as_f64().unwrap() > 1.7e9);
    assert_eq!(call(&t, "GET", base, &[], "").await.json(), c);

    // Update changes only what it names; an empty destination removes one.
    let update = json!({ "MaximumEventAgeInSeconds": 60, "DestinationConfig": { "OnFailure": {} } });
    let a = call(&t, "POST", base, &[], update.to_string()).await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(
        (a.json()["MaximumRetryAttempts"].as_u64(), a.json()["MaximumEventAgeInSeconds"].as_u64()),
        (Some(1), Some(60))
    );
    assert_eq!(a.json()["DestinationConfig"], json!({ "OnSuccess": {}, "OnFailure": {} }));

    // Per qualifier; listed by qualifier.
    let a = call(&t, "PUT", &format!("{base}?Qualifier=1"), &[], "{}").await;
    assert_eq!(a.json()["FunctionArn"], ids::qualified_arn("f", "1"));
    let a = call(&t, "PUT", &format!("{base}?Qualifier=7"), &[], "{}").await;
    assert_eq!((a.status, a.error_type()), (404, "ResourceNotFoundException"));
    let a = call(&t, "GET", &format!("{base}/list?MaxItems=1"), &[], "").await;
    assert_eq!(a.json()["FunctionEventInvokeConfigs"].as_array().unwrap().len(), 1);
    let marker = a.json()["NextMarker"].as_str().unwrap().to_string();
    let a = call(&t, "GET", &format!("{base}/list?Marker={}", marker.replace('$', "%24")), &[], "").await;
    assert_eq!(a.json()["FunctionEventInvokeConfigs"][0]["FunctionArn"], ids::qualified_arn("f", "1"));

    // Refusals, with Lambda's wording, and nothing written.
    for (body, says) in [
        (json!({ "MaximumRetryAttempts": 3 }), "less than or equal to 2"),
        (json!({ "MaximumEventAgeInSeconds": 59 }), "greater than or equal to 60"),
        (json!({ "DestinationConfig": { "OnSuccess": { "Destination": "nope" } } }), "is invalid"),
        (
            json!({ "DestinationConfig": { "OnSuccess": { "Destination": "arn:aws:sqs:us-east-1:000000000000:q" } } }),
            "message broker",
        ),
        (json!({ "Other": 1 }), "Other"),
    ] {
        let a = call(&t, "PUT", base, &[], body.to_string()).await;
        assert_eq!((a.status, a.error_type()), (400, "InvalidParameterValueException"), "{body}");
        assert!(a.json()["message"].as_str().unwrap().contains(says), "{}", a.text());
    }
    assert_eq!(call(&t, "GET", base, &[], "").await.json()["MaximumEventAgeInSeconds"], 60);

    let a = call(&t, "DELETE", base, &[], "").await;
    assert_eq!(a.status, 204);
    let a = call(&t, "DELETE", base, &[], "").await;
    assert_eq!(a.status, 404);
    let a = call(&t, "GET", "/2019-09-25/functions/nope/event-invoke-config/list", &[], "").await;
    assert_eq!(a.status, 404);
}

#[tokio::test]
async fn an_event_invoke_is_accepted_then_runs_with_its_request_id() {
    let t = test_agent();
    create(&t, "f", json!({})).await;
    let a =
        call(&t, "POST", "/2015-03-31/functions/f/invocations", &[("x-amz-invocation-type", "Event")], r#"{"k":1}"#)
            .await;
    assert_eq!(a.status, 202, "{}", a.text());
    assert!(a.body.is_empty());
    let id = a.header("x-amzn-requestid").unwrap().to_string();
    let a = call(&t, "POST", "/2014-11-13/functions/f/invoke-async", &[], "{}").await;
    assert_eq!((a.status, a.json()["Status"].as_u64()), (202, Some(202)));
    for _ in 0..500 {
        if t.agent.queue.backlog() == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(t.agent.queue.backlog(), 0);
    let log = call(&t, "GET", "/2015-03-31/functions/f/logs", &[], "").await.text();
    assert!(log.contains(&format!("START RequestId: {id}")), "{log}");
    // Over the asynchronous limit: 413, nothing queued.
    let big = format!("\"{}\"", "x".repeat(crate::agent::limits::MAX_ASYNC_PAYLOAD));
    let a = call(&t, "POST", "/2015-03-31/functions/f/invocations", &[("x-amz-invocation-type", "Event")], big).await;
    assert_eq!((a.status, a.error_type()), (413, "RequestTooLargeException"));
}

#[tokio::test]
async fn function_urls_and_permissions() {
    let t = test_agent();
    create(&t, "f", json!({ "Publish": true })).await;
    let a = call(&t, "POST", "/2015-03-31/functions/f/aliases", &[], r#"{"Name":"live","FunctionVersion":"1"}"#).await;
    assert_eq!(a.status, 201);
    let base = "/2021-10-31/functions/f/url";
    let a = call(&t, "GET", base, &[], "").await;
    assert_eq!((a.status, a.error_type()), (404, "ResourceNotFoundException"));
    for (body, says) in [
        (json!({}), "AuthType is required"),
        (json!({ "AuthType": "AWS_IAM" }), "SigV4"),
        (json!({ "AuthType": "OPEN" }), "enum value set"),
        (json!({ "AuthType": "NONE", "InvokeMode": "RESPONSE_STREAM" }), "RESPONSE_STREAM"),
        (json!({ "AuthType": "NONE", "Cors": { "MaxAge": 90000 } }), "less than or equal to 86400"),
        (json!({ "AuthType": "NONE", "Cors": { "AllowOrigin": ["*"] } }), "AllowOrigin"),
    ] {
        let a = call(&t, "POST", base, &[], body.to_string()).await;
        assert_eq!((a.status, a.error_type()), (400, "InvalidParameterValueException"), "{body}: {}", a.text());
        assert!(a.json()["message"].as_str().unwrap().contains(says), "{}", a.text());
    }
    let a = call(&t, "POST", &format!("{base}?Qualifier=1"), &[], r#"{"AuthType":"NONE"}"#).await;
    assert_eq!(a.status, 400, "no URL on a published version");
    let cors = json!({ "AllowOrigins": ["https://a.example"], "AllowMethods": ["GET"] });
    let a = call(&t, "POST", base, &[], json!({ "AuthType": "NONE", "Cors": cors }).to_string()).await;
    assert_eq!(a.status, 201, "{}", a.text());
    let created = a.json();
    let url = created["FunctionUrl"].as_str().unwrap().to_string();
    assert!(url.starts_with("http://") && url.ends_with(".on.aws/"), "{url}");
    assert_eq!(created["FunctionArn"], ids::function_arn("f"));
    assert_eq!((created["AuthType"].as_str(), created["InvokeMode"].as_str()), (Some("NONE"), Some("BUFFERED")));
    assert_eq!(created["Cors"], cors);
    let a = call(&t, "POST", base, &[], r#"{"AuthType":"NONE"}"#).await;
    assert_eq!((a.status, a.error_type()), (409, "ResourceConflictException"));
    let a = call(&t, "POST", &format!("{base}?Qualifier=live"), &[], r#"{"AuthType":"NONE"}"#).await;
    assert_eq!(a.json()["FunctionArn"], ids::qualified_arn("f", "live"));
    let a = call(&t, "PUT", base, &[], r#"{"Cors":{}}"#).await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert!(a.json().get("Cors").is_none() && a.json()["LastModifiedTime"].is_string());
    let a = call(&t, "GET", "/2021-10-31/functions/f/urls", &[], "").await;
    assert_eq!(a.json()["FunctionUrlConfigs"].as_array().unwrap().len(), 2);

    // The URL answers only once the policy lets anyone call it.
    let id = url.trim_start_matches("http://").split('.').next().unwrap().to_string();
    let peer: std::net::SocketAddr = "127.0.0.1:5555".parse().unwrap();
    let get = |path: String, cookie: bool| {
        let mut b = Request::builder().method("GET").uri(path).header("user-agent", "test/1");
        if cookie {
            b = b.header("cookie", "a=1; b=2");
        }
        b.body(Full::new(Bytes::new())).unwrap()
    };
    let r = urls::handle(t.agent.clone(), get(format!("/{id}/p?q=1"), false), peer).await;
    assert_eq!(r.status(), 403);
    let policy = "/2015-03-31/functions/f/policy";
    let a = call(&t, "GET", policy, &[], "").await;
    assert_eq!((a.status, a.error_type()), (404, "ResourceNotFoundException"));
    let add = json!({
        "StatementId": "url", "Action": "lambda:InvokeFunctionUrl", "Principal": "*", "FunctionUrlAuthType": "NONE",
    });
    let a = call(&t, "POST", policy, &[], add.to_string()).await;
    assert_eq!(a.status, 201, "{}", a.text());
    let statement: Value = serde_json::from_str(a.json()["Statement"].as_str().unwrap()).unwrap();
    assert_eq!(statement["Resource"], ids::function_arn("f"));
    let a = call(&t, "POST", policy, &[], add.to_string()).await;
    assert_eq!((a.status, a.error_type()), (409, "ResourceConflictException"));
    let a = call(
        &t,
        "POST",
        policy,
        &[],
        json!({ "StatementId": "x", "Action": "lambda:InvokeFunction", "Principal": "*", "EventSourceToken": "t" })
            .to_string(),
    )
    .await;
    assert_eq!(a.status, 400, "unimplemented members are refused by name");
    assert!(a.text().contains("EventSourceToken"));
    let a = call(&t, "GET", policy, &[], "").await;
    let doc: Value = serde_json::from_str(a.json()["Policy"].as_str().unwrap()).unwrap();
    assert_eq!(doc["Statement"][0]["Sid"], "url");
    let revision = a.json()["RevisionId"].as_str().unwrap().to_string();

    // By path prefix: the prefix is not in rawPath; the echo answers the event itself.
    let r = urls::handle(t.agent.clone(), get(format!("/{id}/p?q=1&q=2"), true), peer).await;
    assert_eq!(r.status(), 200);
    assert!(r.headers().contains_key("x-amzn-requestid"));
    let body = r.into_body().collect().await.unwrap().to_bytes();
    let event: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!((event["rawPath"].as_str(), event["rawQueryString"].as_str()), (Some("/p"), Some("q=1&q=2")));
    assert_eq!(event["queryStringParameters"]["q"], "1,2");
    assert_eq!(event["cookies"], json!(["a=1", "b=2"]));
    assert_eq!(event["requestContext"]["http"]["userAgent"], "test/1");
    // By host.
    let req = Request::builder()
        .uri("/x")
        .header("host", format!("{id}.lambda-url.us-east-1.on.aws"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(urls::handle(t.agent.clone(), req, peer).await.status(), 200);
    let r = urls::handle(t.agent.clone(), get("/0000/x".into(), false), peer).await;
    assert_eq!(r.status(), 404);

    // Removing the statement closes the URL again.
    let a = call(&t, "DELETE", &format!("{policy}/url?RevisionId=stale"), &[], "").await;
    assert_eq!((a.status, a.error_type()), (412, "PreconditionFailedException"));
    let a = call(&t, "DELETE", &format!("{policy}/url?RevisionId={revision}"), &[], "").await;
    assert_eq!(a.status, 204, "{}", a.text());
    let r = urls::handle(t.agent.clone(), get(format!("/{id}/p"), false), peer).await;
    assert_eq!(r.status(), 403);
    let a = call(&t, "DELETE", base, &[], "").await;
    assert_eq!(a.status, 204);
    let r = urls::handle(t.agent.clone(), get(format!("/{id}/p"), false), peer).await;
    assert_eq!(r.status(), 404);
}
