//! Lambda's REST API over HTTP/1.1, on a Unix socket or loopback TCP: routing, request
//! validation against Lambda's limits, Lambda's JSON shapes, and errors as Lambda sends them.
//!
//! | Method and path (`/2015-03-31/functions...`) | Operation                    | Success |
//! |----------------------------------------------|------------------------------|---------|
//! | `POST /`                                     | CreateFunction               | 201     |
//! | `GET /` (with or without the slash)          | ListFunctions                | 200     |
//! | `GET /{name}`                                | GetFunction                  | 200     |
//! | `DELETE /{name}`                             | DeleteFunction               | 204     |
//! | `GET /{name}/configuration`                  | GetFunctionConfiguration     | 200     |
//! | `PUT /{name}/configuration`                  | UpdateFunctionConfiguration  | 200     |
//! | `PUT /{name}/code`                           | UpdateFunctionCode           | 200     |
//! | `POST /{name}/invocations`                   | Invoke                       | 200/202/204 |
//! | `GET /{name}/code`                           | ember: the stored zip        | 200     |
//! | `GET /{name}/logs?bytes=N`                   | ember: the log's tail, text  | 200     |
//!
//! `{name}` is a name, `name:qualifier`, a partial ARN (`000000000000:function:name`) or a full
//! ARN, percent-encoded or not. Only `$LATEST` exists until versions are written: any other
//! qualifier is a 404. SigV4 `Authorization` headers are accepted and ignored.
//!
//! Every answer carries `x-amzn-RequestId`; an error also carries `x-amzn-ErrorType` and the JSON
//! body of [`ApiError::body`]: [`error_response`] is the one place errors become HTTP.
//!
//! The invoke path does no store write and no blocking work: one indexed SQLite read, the body
//! read with a cap, a JSON syntax check, then the pool. Control operations that write (create,
//! update, delete: fsync, zip extraction, mkfs) run on blocking threads. Bodies are never read
//! unbounded: the `Content-Length` is checked first and the bytes are counted as they come; an
//! oversized body is drained (up to a limit) before the 413 so that the client, still sending,
//! reads the answer instead of a reset connection.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::fmt::Display;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper::body::Body;
use hyper::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::de::IgnoredAny;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncWrite};

use super::codezip;
use super::pool::ProvisionedStatus;
use super::store::{function_arn, random_uuid, ConfigPatch, FunctionConfig, NewFunction, ACCOUNT_ID, LATEST};
use super::{Agent, ApiError, InvokeRequest};

/// The largest synchronous invocation payload (Lambda's 6 MB).
pub const MAX_SYNC_PAYLOAD: usize = 6 * 1024 * 1024;
/// The largest asynchronous (`Event`) invocation payload (Lambda's 1 MB).
pub const MAX_ASYNC_PAYLOAD: usize = 1024 * 1024;
/// The largest CreateFunction or UpdateFunctionCode request (Lambda's: a 50 MB zip in base64).
pub const MAX_CODE_REQUEST: usize = 69_905_067;
/// The largest request of any other operation.
pub const MAX_CONTROL_REQUEST: usize = 1024 * 1024;
/// How much of an oversized body is read and dropped so that the client sees the 413.
const DRAIN_LIMIT: usize = 128 * 1024 * 1024;
/// The runtimes this host has.
pub const RUNTIMES: [&str; 2] = [codezip::PROVIDED_RUNTIME, "python3.11"];
/// Environment variables Lambda sets itself and refuses from the caller.
const RESERVED_ENV: [&str; 16] = [
    "AWS_ACCESS_KEY",
    "AWS_ACCESS_KEY_ID",
    "AWS_DEFAULT_REGION",
    "AWS_EXECUTION_ENV",
    "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
    "AWS_LAMBDA_FUNCTION_NAME",
    "AWS_LAMBDA_FUNCTION_VERSION",
    "AWS_LAMBDA_INITIALIZATION_TYPE",
    "AWS_LAMBDA_LOG_GROUP_NAME",
    "AWS_LAMBDA_LOG_STREAM_NAME",
    "AWS_LAMBDA_RUNTIME_API",
    "AWS_REGION",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "LAMBDA_RUNTIME_DIR",
    "LAMBDA_TASK_ROOT",
];
/// Lambda's limit on the environment, measured as its JSON.
const MAX_ENV_BYTES: usize = 4096;
/// What `GET .../logs` returns without `?bytes=`, and the most it returns.
const DEFAULT_LOG_BYTES: usize = 64 * 1024;
const MAX_LOG_BYTES: usize = 16 * 1024 * 1024;

/// The response type of every handler.
pub type HttpResponse = Response<Full<Bytes>>;

/// Serves the API on a Unix socket until the task is dropped.
pub async fn serve_unix(agent: Arc<Agent>, listener: tokio::net::UnixListener) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => spawn_connection(agent.clone(), stream),
            Err(e) => accept_failed(e).await,
        }
    }
}

/// Serves the API on a TCP listener (loopback: there is no authentication) until the task is
/// dropped.
pub async fn serve_tcp(agent: Arc<Agent>, listener: tokio::net::TcpListener) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let _ = stream.set_nodelay(true);
                spawn_connection(agent.clone(), stream);
            }
            Err(e) => accept_failed(e).await,
        }
    }
}

async fn accept_failed(e: std::io::Error) {
    // Out of file descriptors, usually: wait for some to close rather than spin.
    eprintln!("ember: api: accept: {e}");
    tokio::time::sleep(Duration::from_millis(100)).await;
}

fn spawn_connection<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(agent: Arc<Agent>, stream: S) {
    tokio::spawn(async move {
        let service = service_fn(move |req| {
            let agent = agent.clone();
            async move { Ok::<_, Infallible>(handle(agent, req).await) }
        });
        // Errors here are the client's going away mid-request: nothing to answer.
        let _ = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .keep_alive(true)
            .serve_connection(TokioIo::new(stream), service)
            .await;
    });
}

/// Answers one request.
pub async fn handle<B>(agent: Arc<Agent>, req: Request<B>) -> HttpResponse
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Display,
{
    let request_id = random_uuid();
    let mut response = route(&agent, req, &request_id).await.unwrap_or_else(|e| error_response(&e));
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert(HeaderName::from_static("x-amzn-requestid"), value);
    }
    response
}

/// The one place an [`ApiError`] becomes HTTP: its status, `x-amzn-ErrorType` and JSON body.
pub fn error_response(e: &ApiError) -> HttpResponse {
    let mut response = Response::new(Full::new(Bytes::from(e.body())));
    *response.status_mut() = StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(HeaderName::from_static("x-amzn-errortype"), HeaderValue::from_static(e.kind));
    response
}

/// A route of the API, with the function segment still percent-encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route<'a> {
    Functions,
    Function(&'a str),
    Sub(&'a str, &'a str),
}

fn parse_route(path: &str) -> Option<Route<'_>> {
    // Provisioned concurrency lives under a later API version; everything else under 2015's.
    if let Some(rest) = path.strip_prefix("/2019-09-30/functions/") {
        let name = rest.strip_suffix("/provisioned-concurrency")?;
        return (!name.is_empty() && !name.contains('/')).then_some(Route::Sub(name, PROVISIONED));
    }
    let rest = path.strip_prefix("/2015-03-31/functions")?;
    if rest.is_empty() || rest == "/" {
        return Some(Route::Functions);
    }
    let rest = rest.strip_prefix('/')?;
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    match rest.split_once('/') {
        None => Some(Route::Function(rest)),
        Some((name, sub)) if !name.is_empty() && !sub.is_empty() && !sub.contains('/') => Some(Route::Sub(name, sub)),
        Some(_) => None,
    }
}

async fn route<B>(agent: &Arc<Agent>, req: Request<B>, request_id: &str) -> Result<HttpResponse, ApiError>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Display,
{
    let (parts, body) = req.into_parts();
    let query = parts.uri.query();
    let route = parse_route(parts.uri.path());
    let unknown = || ApiError::unknown_operation(format!("Unknown operation: {} {}", parts.method, parts.uri.path()));
    let Some(route) = route else { return Err(unknown()) };
    match (&parts.method, route) {
        (&Method::POST, Route::Sub(name, "invocations")) => {
            invoke(agent, name, query, &parts.headers, body, request_id).await
        }
        (&Method::POST, Route::Functions) => {
            let body = read_body(&parts.headers, body, MAX_CODE_REQUEST, "CreateFunction").await?;
            create_function(agent, body).await
        }
        (&Method::GET, Route::Functions) => list_functions(agent, query),
        (&Method::GET, Route::Function(name)) => get_function(agent, name, query, &parts.headers),
        (&Method::GET, Route::Sub(name, "configuration")) => {
            let config = agent.store.get(&resolve(name, query)?)?;
            Ok(json_response(StatusCode::OK, &configuration_json(&config)))
        }
        (&Method::DELETE, Route::Function(name)) => delete_function(agent, name, query).await,
        (&Method::PUT, Route::Sub(name, "configuration")) => {
            let name = resolve(name, None)?;
            let body = read_body(&parts.headers, body, MAX_CONTROL_REQUEST, "UpdateFunctionConfiguration").await?;
            update_configuration(agent, name, body).await
        }
        (&Method::PUT, Route::Sub(name, "code")) => {
            let name = resolve(name, None)?;
            let body = read_body(&parts.headers, body, MAX_CODE_REQUEST, "UpdateFunctionCode").await?;
            update_code(agent, name, body).await
        }
        (&Method::GET, Route::Sub(name, "code")) => download_code(agent, name, query).await,
        (&Method::GET, Route::Sub(name, "logs")) => read_logs(agent, name, query).await,
        (&Method::PUT, Route::Sub(name, PROVISIONED)) => {
            let body = read_body(&parts.headers, body, MAX_CONTROL_REQUEST, "PutProvisionedConcurrencyConfig").await?;
            put_provisioned(agent, name, query, body).await
        }
        (&Method::GET, Route::Sub(name, PROVISIONED)) => {
            let name = resolve_provisioned(name, query)?;
            agent.store.get(&name)?;
            let status = agent.pool.provisioned(&name).ok_or_else(ApiError::no_provisioned_config)?;
            Ok(json_response(StatusCode::OK, &provisioned_json(&status)))
        }
        (&Method::DELETE, Route::Sub(name, PROVISIONED)) => {
            let name = resolve_provisioned(name, query)?;
            agent.store.get(&name)?;
            if !agent.pool.remove_provisioned(&name) {
                return Err(ApiError::no_provisioned_config());
            }
            let worker = agent.clone();
            blocking(move || Ok(worker.store.set_provisioned(&name, None)?)).await?;
            Ok(empty_response(StatusCode::NO_CONTENT))
        }
        _ => Err(unknown()),
    }
}

// ---------------------------------------------------------------------------------------------
// Provisioned concurrency
// ---------------------------------------------------------------------------------------------

/// The route segment of the provisioned-concurrency operations.
const PROVISIONED: &str = "provisioned-concurrency";

/// PutProvisionedConcurrencyConfig's body.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct ProvisionedInput {
    provisioned_concurrent_executions: Option<i64>,
}

/// The function a provisioned-concurrency request is about. Lambda requires a qualifier;
/// Ember has no published versions or aliases yet, so `$LATEST` is the one it takes.
fn resolve_provisioned(segment: &str, query: Option<&str>) -> Result<String, ApiError> {
    if query_param(query, "Qualifier").is_none() {
        return Err(ApiError::invalid("The Qualifier parameter is required."));
    }
    resolve(segment, query)
}

fn provisioned_json(s: &ProvisionedStatus) -> Value {
    let mut out = json!({
        "RequestedProvisionedConcurrentExecutions": s.requested,
        "AllocatedProvisionedConcurrentExecutions": s.allocated,
        "AvailableProvisionedConcurrentExecutions": s.allocated,
        "Status": s.status,
        "LastModified": s.last_modified,
    });
    if let Some(reason) = &s.reason {
        out["StatusReason"] = json!(reason);
    }
    out
}

async fn put_provisioned(
    agent: &Arc<Agent>,
    raw_name: &str,
    query: Option<&str>,
    body: Bytes,
) -> Result<HttpResponse, ApiError> {
    let name = resolve_provisioned(raw_name, query)?;
    let input: ProvisionedInput = parse_json(&body)?;
    let requested = match input.provisioned_concurrent_executions {
        Some(n) if (1..=i64::from(u32::MAX)).contains(&n) => n as u32,
        Some(n) => {
            return Err(ApiError::invalid(format!(
                "1 validation error detected: Value '{n}' at 'provisionedConcurrentExecutions' failed to satisfy \
                 constraint: Member must have value greater than or equal to 1"
            )))
        }
        None => return Err(ApiError::invalid("ProvisionedConcurrentExecutions is required.")),
    };
    let worker = agent.clone();
    let f = blocking(move || {
        let f = worker.store.get(&name)?;
        worker.store.set_provisioned(&name, Some(requested))?;
        Ok(f)
    })
    .await?;
    let status = agent.pool.set_provisioned(f, requested);
    Ok(json_response(StatusCode::ACCEPTED, &provisioned_json(&status)))
}

// ---------------------------------------------------------------------------------------------
// Invoke
// ---------------------------------------------------------------------------------------------

async fn invoke<B>(
    agent: &Arc<Agent>,
    raw_name: &str,
    query: Option<&str>,
    headers: &HeaderMap,
    body: B,
    request_id: &str,
) -> Result<HttpResponse, ApiError>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Display,
{
    let kind = match header(headers, "x-amz-invocation-type") {
        None | Some("RequestResponse") => InvocationType::RequestResponse,
        Some("Event") => InvocationType::Event,
        Some("DryRun") => InvocationType::DryRun,
        Some(other) => {
            return Err(ApiError::invalid(format!(
                "1 validation error detected: Value '{other}' at 'invocationType' failed to satisfy constraint: \
                 Member must satisfy enum value set: [Event, RequestResponse, DryRun]"
            )))
        }
    };
    let cap = if kind == InvocationType::Event { MAX_ASYNC_PAYLOAD } else { MAX_SYNC_PAYLOAD };
    if content_length(headers)?.is_some_and(|len| len > cap) {
        drain(body, DRAIN_LIMIT).await;
        return Err(payload_too_large(cap));
    }
    let function = agent.store.get(&resolve(raw_name, query)?)?;
    let mut payload = read_body(headers, body, cap, "Invoke").await.map_err(|e| match e.status {
        413 => payload_too_large(cap),
        _ => e,
    })?;
    if payload.is_empty() {
        payload = Bytes::from_static(b"{}");
    } else if let Err(e) = serde_json::from_slice::<IgnoredAny>(&payload) {
        return Err(ApiError::bad_content(format!(
            "Could not parse request body into json: Could not parse payload into json: {e}"
        )));
    }
    let request = InvokeRequest {
        request_id: request_id.to_owned(),
        function,
        payload,
        client_context: header(headers, "x-amz-client-context").map(str::to_string),
        want_tail: header(headers, "x-amz-log-type") == Some("Tail"),
    };
    match kind {
        InvocationType::DryRun => Ok(empty_response(StatusCode::NO_CONTENT)),
        InvocationType::Event => {
            let agent = agent.clone();
            tokio::spawn(async move {
                let name = request.function.name.clone();
                if let Err(e) = agent.pool.invoke(request).await {
                    eprintln!("ember: api: asynchronous invocation of {name} failed: {e}");
                }
            });
            Ok(empty_response(StatusCode::ACCEPTED))
        }
        InvocationType::RequestResponse => {
            let want_tail = request.want_tail;
            // Boxed: the pool's future is large (about 70 KB in debug builds); kept inline it would make
            // every connection's future that large, and deep polls overflow small stacks.
            let output = Box::pin(agent.pool.invoke(request)).await?;
            let mut response = Response::new(Full::new(Bytes::from(output.payload)));
            let headers = response.headers_mut();
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            let version = if output.executed_version.is_empty() { LATEST } else { &output.executed_version };
            if let Ok(v) = HeaderValue::from_str(version) {
                headers.insert(HeaderName::from_static("x-amz-executed-version"), v);
            }
            if let Some(error) = output.function_error {
                headers.insert(HeaderName::from_static("x-amz-function-error"), HeaderValue::from_static(error));
            }
            if let (true, Some(tail)) = (want_tail, output.log_tail) {
                let b64 = base64::engine::general_purpose::STANDARD.encode(tail);
                if let Ok(v) = HeaderValue::from_str(&b64) {
                    headers.insert(HeaderName::from_static("x-amz-log-result"), v);
                }
            }
            Ok(response)
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum InvocationType {
    RequestResponse,
    Event,
    DryRun,
}

fn payload_too_large(cap: usize) -> ApiError {
    ApiError::too_large(format!("Request must be smaller than {cap} bytes for the InvokeFunction operation"))
}

// ---------------------------------------------------------------------------------------------
// Control operations
// ---------------------------------------------------------------------------------------------

/// Runs blocking store work off the async threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, ApiError> + Send + 'static) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| ApiError::service(format!("internal error: {e}")))?
}

async fn create_function(agent: &Arc<Agent>, body: Bytes) -> Result<HttpResponse, ApiError> {
    let agent = agent.clone();
    let config = blocking(move || {
        let input: CreateFunctionInput<'_> = parse_json(&body)?;
        let (new, zip) = validate_create(input)?;
        Ok(agent.store.create(new, &zip)?)
    })
    .await?;
    Ok(json_response(StatusCode::CREATED, &configuration_json(&config)))
}

fn list_functions(agent: &Agent, query: Option<&str>) -> Result<HttpResponse, ApiError> {
    let max_items = match query_param(query, "MaxItems") {
        None => super::store::MAX_PAGE,
        Some(s) => match s.parse::<usize>() {
            Ok(n) if (1..=10_000).contains(&n) => n,
            _ => {
                return Err(ApiError::invalid(format!(
                    "1 validation error detected: Value '{s}' at 'maxItems' failed to satisfy constraint: Member \
                     must have value between 1 and 10000"
                )))
            }
        },
    };
    let marker = query_param(query, "Marker");
    let page = agent.store.list(marker.as_deref(), max_items)?;
    let functions: Vec<Value> = page.functions.iter().map(configuration_json).collect();
    let mut out = json!({ "Functions": functions });
    if let Some(marker) = page.next_marker {
        out["NextMarker"] = Value::String(marker);
    }
    Ok(json_response(StatusCode::OK, &out))
}

fn get_function(
    agent: &Agent,
    raw_name: &str,
    query: Option<&str>,
    headers: &HeaderMap,
) -> Result<HttpResponse, ApiError> {
    let config = agent.store.get(&resolve(raw_name, query)?)?;
    let host = header(headers, "host").unwrap_or("localhost");
    let location = format!("http://{host}/2015-03-31/functions/{}/code", config.name);
    let out = json!({
        "Configuration": configuration_json(&config),
        "Code": { "RepositoryType": "S3", "Location": location },
    });
    Ok(json_response(StatusCode::OK, &out))
}

async fn delete_function(agent: &Arc<Agent>, raw_name: &str, query: Option<&str>) -> Result<HttpResponse, ApiError> {
    let name = resolve(raw_name, query)?;
    let worker = agent.clone();
    let deleted = name.clone();
    blocking(move || Ok(worker.store.delete(&deleted)?)).await?;
    agent.pool.remove_provisioned(&name);
    agent.pool.retire(&name);
    let logs = agent.clone();
    blocking(move || {
        if let Err(e) = logs.logs.remove(&name) {
            eprintln!("ember: api: cannot remove the log of {name}: {e}");
        }
        Ok(())
    })
    .await?;
    Ok(empty_response(StatusCode::NO_CONTENT))
}

async fn update_configuration(agent: &Arc<Agent>, name: String, body: Bytes) -> Result<HttpResponse, ApiError> {
    let worker = agent.clone();
    let config = blocking(move || {
        let input: UpdateConfigurationInput = parse_json(&body)?;
        let current = worker.store.get(&name)?;
        let (patch, revision) = validate_update_configuration(input, &current)?;
        Ok(worker.store.update_config(&name, patch, revision.as_deref())?)
    })
    .await?;
    agent.pool.function_changed(&config);
    Ok(json_response(StatusCode::OK, &configuration_json(&config)))
}

async fn update_code(agent: &Arc<Agent>, name: String, body: Bytes) -> Result<HttpResponse, ApiError> {
    let worker = agent.clone();
    let (config, changed) = blocking(move || {
        let input: UpdateCodeInput<'_> = parse_json(&body)?;
        let (zip, dry_run, revision) = validate_update_code(input)?;
        if dry_run {
            // Check the code as the update would, and answer what the function would become.
            let mut config = worker.store.get(&name)?;
            codezip::check(&zip, &config.runtime)?;
            config.code_sha256 = code_sha256(&zip);
            config.code_size = zip.len() as u64;
            return Ok((config, false));
        }
        Ok((worker.store.update_code(&name, &zip, revision.as_deref())?, true))
    })
    .await?;
    if changed {
        agent.pool.function_changed(&config);
    }
    Ok(json_response(StatusCode::OK, &configuration_json(&config)))
}

async fn download_code(agent: &Arc<Agent>, raw_name: &str, query: Option<&str>) -> Result<HttpResponse, ApiError> {
    let config = agent.store.get(&resolve(raw_name, query)?)?;
    let path = agent.store.code_zip(&config);
    let zip = tokio::fs::read(&path).await.map_err(|e| ApiError::service(format!("read {}: {e}", path.display())))?;
    let mut response = Response::new(Full::new(Bytes::from(zip)));
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/zip"));
    Ok(response)
}

async fn read_logs(agent: &Arc<Agent>, raw_name: &str, query: Option<&str>) -> Result<HttpResponse, ApiError> {
    let bytes = match query_param(query, "bytes") {
        None => DEFAULT_LOG_BYTES,
        Some(s) => s
            .parse::<usize>()
            .map_err(|_| ApiError::invalid(format!("bytes must be a number of bytes, not {s}")))?
            .min(MAX_LOG_BYTES),
    };
    let name = agent.store.get(&resolve(raw_name, query)?)?.name;
    let worker = agent.clone();
    let log = blocking(move || {
        worker.logs.read(&name, bytes).map_err(|e| ApiError::service(format!("cannot read the log of {name}: {e}")))
    })
    .await?;
    let mut response = Response::new(Full::new(Bytes::from(log)));
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    Ok(response)
}

// ---------------------------------------------------------------------------------------------
// Request shapes and validation
// ---------------------------------------------------------------------------------------------

/// CreateFunction's body (fields this host does not use are ignored).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct CreateFunctionInput<'a> {
    function_name: Option<String>,
    runtime: Option<String>,
    role: Option<String>,
    handler: Option<String>,
    #[serde(borrow)]
    code: Option<CodeInput<'a>>,
    description: Option<String>,
    timeout: Option<i64>,
    memory_size: Option<i64>,
    environment: Option<EnvironmentInput>,
    ephemeral_storage: Option<EphemeralStorageInput>,
    package_type: Option<String>,
    architectures: Option<Vec<String>>,
    layers: Option<Vec<String>>,
    snap_start: Option<SnapStartInput>,
}

/// `SnapStart`: `{"ApplyOn": "PublishedVersions" | "None"}`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct SnapStartInput {
    apply_on: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct CodeInput<'a> {
    #[serde(borrow)]
    zip_file: Option<Cow<'a, str>>,
    #[serde(rename = "S3Bucket")]
    s3_bucket: Option<String>,
    #[serde(rename = "S3Key")]
    s3_key: Option<String>,
    image_uri: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct EnvironmentInput {
    variables: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct EphemeralStorageInput {
    size: Option<i64>,
}

/// UpdateFunctionConfiguration's body.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct UpdateConfigurationInput {
    role: Option<String>,
    handler: Option<String>,
    description: Option<String>,
    timeout: Option<i64>,
    memory_size: Option<i64>,
    environment: Option<EnvironmentInput>,
    runtime: Option<String>,
    ephemeral_storage: Option<EphemeralStorageInput>,
    revision_id: Option<String>,
    layers: Option<Vec<String>>,
    snap_start: Option<SnapStartInput>,
}

/// UpdateFunctionCode's body.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct UpdateCodeInput<'a> {
    #[serde(borrow)]
    zip_file: Option<Cow<'a, str>>,
    #[serde(rename = "S3Bucket")]
    s3_bucket: Option<String>,
    #[serde(rename = "S3Key")]
    s3_key: Option<String>,
    image_uri: Option<String>,
    dry_run: Option<bool>,
    revision_id: Option<String>,
    architectures: Option<Vec<String>>,
}

fn parse_json<'a, T: Deserialize<'a> + Default>(body: &'a [u8]) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_content(format!("Could not parse request body into json: {e}")))
}

/// Lambda's wording for a failed constraint.
fn constraint(value: impl Display, field: &str, rule: &str) -> ApiError {
    ApiError::invalid(format!(
        "1 validation error detected: Value '{value}' at '{field}' failed to satisfy constraint: {rule}"
    ))
}

fn in_range(value: i64, field: &str, min: i64, max: i64) -> Result<u32, ApiError> {
    if value < min {
        return Err(constraint(value, field, &format!("Member must have value greater than or equal to {min}")));
    }
    if value > max {
        return Err(constraint(value, field, &format!("Member must have value less than or equal to {max}")));
    }
    Ok(value as u32)
}

/// MemorySize: 128 to 10240 MB.
pub fn validate_memory(mib: i64) -> Result<u32, ApiError> {
    in_range(mib, "memorySize", 128, 10_240)
}

/// Timeout: 1 to 900 s.
pub fn validate_timeout(s: i64) -> Result<u32, ApiError> {
    in_range(s, "timeout", 1, 900)
}

/// EphemeralStorage.Size: 512 to 10240 MB.
pub fn validate_ephemeral(mib: i64) -> Result<u32, ApiError> {
    in_range(mib, "ephemeralStorage.size", 512, 10_240)
}

/// A function name: `[a-zA-Z0-9-_]{1,64}`.
pub fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn validate_name(name: &str) -> Result<(), ApiError> {
    if name.len() > 64 {
        return Err(constraint(name, "functionName", "Member must have length less than or equal to 64"));
    }
    if !valid_name(name) {
        return Err(constraint(name, "functionName", "Member must satisfy regular expression pattern: [a-zA-Z0-9-_]+"));
    }
    Ok(())
}

/// A runtime this host has.
pub fn validate_runtime(runtime: &str) -> Result<(), ApiError> {
    if RUNTIMES.contains(&runtime) {
        return Ok(());
    }
    Err(ApiError::invalid(format!(
        "The runtime parameter of {runtime} is not supported by this host. Use one of: {}.",
        RUNTIMES.join(", ")
    )))
}

/// The handler: required for python3.11, `[^\s]+`, at most 128 characters; may be empty for a
/// provided runtime (its `bootstrap` needs none).
pub fn validate_handler(runtime: &str, handler: &str) -> Result<(), ApiError> {
    if handler.is_empty() {
        if runtime == codezip::PROVIDED_RUNTIME {
            return Ok(());
        }
        return Err(ApiError::invalid(format!("Handler is required for the {runtime} runtime.")));
    }
    if handler.chars().count() > 128 {
        return Err(constraint(handler, "handler", "Member must have length less than or equal to 128"));
    }
    if handler.chars().any(char::is_whitespace) {
        return Err(constraint(handler, "handler", "Member must satisfy regular expression pattern: [^\\s]+"));
    }
    Ok(())
}

/// The role: required, an ARN (stored, not used).
pub fn validate_role(role: &str) -> Result<(), ApiError> {
    if role.starts_with("arn:") && role.len() <= 2048 && !role.chars().any(char::is_whitespace) {
        return Ok(());
    }
    Err(constraint(
        role,
        "role",
        "Member must satisfy regular expression pattern: arn:(aws[a-zA-Z-]*)?:iam::\\d{12}:role/?[a-zA-Z_0-9+=,.@\\-_/]+",
    ))
}

fn validate_description(description: &str) -> Result<(), ApiError> {
    if description.chars().count() > 256 {
        return Err(constraint(description, "description", "Member must have length less than or equal to 256"));
    }
    Ok(())
}

/// Environment variables: keys `[a-zA-Z]([a-zA-Z0-9_])+`, none of Lambda's reserved keys, at most
/// 4 KB as JSON.
pub fn validate_environment(vars: &BTreeMap<String, String>) -> Result<(), ApiError> {
    let key_ok = |k: &str| {
        let b = k.as_bytes();
        b.len() >= 2 && b[0].is_ascii_alphabetic() && b[1..].iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_')
    };
    if let Some(bad) = vars.keys().find(|k| !key_ok(k)) {
        return Err(ApiError::invalid(format!(
            "1 validation error detected: Value '{bad}' at 'environment.variables' failed to satisfy constraint: \
             Map keys must satisfy constraint: [Member must satisfy regular expression pattern: \
             [a-zA-Z]([a-zA-Z0-9_])+]"
        )));
    }
    let reserved: Vec<&str> = vars.keys().map(String::as_str).filter(|k| RESERVED_ENV.contains(k)).collect();
    if !reserved.is_empty() {
        return Err(ApiError::invalid(format!(
            "Lambda was unable to configure your environment variables because the environment variables you have \
             provided contains reserved keys that are currently not supported for modification. Reserved keys used \
             in this request: {}",
            reserved.join(", ")
        )));
    }
    let measured = serde_json::to_string(vars).expect("a string map serializes");
    if measured.len() > MAX_ENV_BYTES {
        return Err(ApiError::invalid(format!(
            "Lambda was unable to configure your environment variables because the environment variables you have \
             provided exceeded the 4KB limit. String measured: {measured}"
        )));
    }
    Ok(())
}

fn unsupported_code_source(s3: bool, image: bool) -> Result<(), ApiError> {
    if s3 {
        return Err(ApiError::invalid("This host has no S3: upload the code as ZipFile."));
    }
    if image {
        return Err(ApiError::invalid("Container images are not supported: upload the code as ZipFile."));
    }
    Ok(())
}

fn validate_architectures(archs: Option<&[String]>) -> Result<(), ApiError> {
    match archs {
        None | Some([]) => Ok(()),
        Some([a]) if a == "x86_64" => Ok(()),
        Some(other) => {
            Err(ApiError::invalid(format!("Architectures {other:?} are not supported: this host runs x86_64 only.")))
        }
    }
}

fn validate_layers(layers: Option<&[String]>) -> Result<(), ApiError> {
    match layers {
        None | Some([]) => Ok(()),
        Some(_) => Err(ApiError::invalid("Layers are not supported yet.")),
    }
}

fn decode_zip(b64: &str) -> Result<Vec<u8>, ApiError> {
    if b64.len() > MAX_CODE_REQUEST {
        return Err(ApiError::too_large(codezip::CodeError::ZippedTooLarge.to_string()));
    }
    base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .map_err(|_| ApiError::bad_content("Could not parse request body into json: ZipFile is not valid base64"))
}

fn code_sha256(zip: &[u8]) -> String {
    use sha2::Digest;
    base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(zip))
}

fn validate_create(input: CreateFunctionInput<'_>) -> Result<(NewFunction, Vec<u8>), ApiError> {
    let raw_name = input.function_name.ok_or_else(|| ApiError::invalid("FunctionName is required."))?;
    let (name, qualifier) = split_function_ref(&raw_name);
    if qualifier.is_some() {
        return Err(ApiError::invalid("A qualifier is not allowed in CreateFunction's FunctionName."));
    }
    validate_name(name)?;
    if input.package_type.as_deref().is_some_and(|p| p != "Zip") {
        return Err(ApiError::invalid("PackageType Image is not supported: use Zip."));
    }
    let runtime = input.runtime.ok_or_else(|| ApiError::invalid("Runtime is required for .zip file packages."))?;
    validate_runtime(&runtime)?;
    let role = input.role.ok_or_else(|| ApiError::invalid("Role is required."))?;
    validate_role(&role)?;
    let handler = input.handler.unwrap_or_default();
    validate_handler(&runtime, &handler)?;
    let description = input.description.unwrap_or_default();
    validate_description(&description)?;
    let memory_mib = validate_memory(input.memory_size.unwrap_or(128))?;
    let timeout_s = validate_timeout(input.timeout.unwrap_or(3))?;
    let ephemeral_mib = validate_ephemeral(input.ephemeral_storage.and_then(|e| e.size).unwrap_or(512))?;
    let environment = input.environment.and_then(|e| e.variables).unwrap_or_default();
    validate_environment(&environment)?;
    validate_architectures(input.architectures.as_deref())?;
    validate_layers(input.layers.as_deref())?;
    let code = input.code.ok_or_else(|| ApiError::invalid("Code is required."))?;
    unsupported_code_source(code.s3_bucket.is_some() || code.s3_key.is_some(), code.image_uri.is_some())?;
    let zip = decode_zip(&code.zip_file.ok_or_else(|| ApiError::invalid("Code.ZipFile is required."))?)?;
    let new = NewFunction {
        name: name.to_string(),
        runtime,
        handler,
        role,
        description,
        memory_mib,
        timeout_s,
        ephemeral_mib,
        environment,
        snap_start: validate_snap_start(input.snap_start)?.unwrap_or(false),
    };
    Ok((new, zip))
}

fn validate_update_configuration(
    input: UpdateConfigurationInput,
    current: &FunctionConfig,
) -> Result<(ConfigPatch, Option<String>), ApiError> {
    if let Some(runtime) = &input.runtime {
        validate_runtime(runtime)?;
    }
    if let Some(role) = &input.role {
        validate_role(role)?;
    }
    let runtime = input.runtime.as_deref().unwrap_or(&current.runtime);
    let handler = input.handler.as_deref().unwrap_or(&current.handler);
    validate_handler(runtime, handler)?;
    if let Some(description) = &input.description {
        validate_description(description)?;
    }
    validate_layers(input.layers.as_deref())?;
    let environment = input.environment.map(|e| e.variables.unwrap_or_default());
    if let Some(vars) = &environment {
        validate_environment(vars)?;
    }
    let patch = ConfigPatch {
        runtime: input.runtime,
        handler: input.handler,
        role: input.role,
        description: input.description,
        memory_mib: input.memory_size.map(validate_memory).transpose()?,
        timeout_s: input.timeout.map(validate_timeout).transpose()?,
        ephemeral_mib: input.ephemeral_storage.and_then(|e| e.size).map(validate_ephemeral).transpose()?,
        environment,
        snap_start: validate_snap_start(input.snap_start)?,
    };
    Ok((patch, input.revision_id))
}

/// `SnapStart.ApplyOn`: whether init snapshots are on, if the input says.
fn validate_snap_start(input: Option<SnapStartInput>) -> Result<Option<bool>, ApiError> {
    match input.and_then(|s| s.apply_on).as_deref() {
        None => Ok(None),
        Some("PublishedVersions") => Ok(Some(true)),
        Some("None") => Ok(Some(false)),
        Some(other) => Err(ApiError::invalid(format!(
            "1 validation error detected: Value '{other}' at 'snapStart.applyOn' failed to satisfy constraint: \
             Member must satisfy enum value set: [PublishedVersions, None]"
        ))),
    }
}

fn validate_update_code(input: UpdateCodeInput<'_>) -> Result<(Vec<u8>, bool, Option<String>), ApiError> {
    unsupported_code_source(input.s3_bucket.is_some() || input.s3_key.is_some(), input.image_uri.is_some())?;
    validate_architectures(input.architectures.as_deref())?;
    let zip =
        decode_zip(&input.zip_file.ok_or_else(|| ApiError::invalid("Please provide a source for function code."))?)?;
    Ok((zip, input.dry_run.unwrap_or(false), input.revision_id))
}

// ---------------------------------------------------------------------------------------------
// Names, qualifiers, query strings
// ---------------------------------------------------------------------------------------------

/// Splits a function reference into its name and qualifier: `name`, `name:qualifier`,
/// `000000000000:function:name[:qualifier]` or `arn:aws:lambda:<region>:000000000000:function:name[:qualifier]`.
/// Anything else comes back whole as the name (and then fails validation).
fn split_function_ref(reference: &str) -> (&str, Option<&str>) {
    let parts: Vec<&str> = reference.split(':').collect();
    match parts.as_slice() {
        ["arn", _, "lambda", _, _, "function", name] | [_, "function", name] => (name, None),
        ["arn", _, "lambda", _, _, "function", name, q] | [_, "function", name, q] => (name, Some(q)),
        [name, q] => (name, Some(q)),
        _ => (reference, None),
    }
}

/// The function name a path segment and the `Qualifier` query refer to: 404 for an invalid name,
/// an ARN of another account or region, or a qualifier other than `$LATEST`.
fn resolve(segment: &str, query: Option<&str>) -> Result<String, ApiError> {
    let decoded =
        percent_decode(segment).ok_or_else(|| ApiError::not_found(format!("Function not found: {segment}")))?;
    if decoded.starts_with("arn:") {
        let parts: Vec<&str> = decoded.split(':').collect();
        if parts.len() >= 5 && (parts[3] != super::store::region() || parts[4] != ACCOUNT_ID) {
            return Err(ApiError::not_found(format!("Function not found: {decoded}")));
        }
    }
    let (name, from_ref) = split_function_ref(&decoded);
    let from_query = query_param(query, "Qualifier");
    let qualifier = match (from_ref, from_query.as_deref()) {
        (Some(a), Some(b)) if a != b => {
            return Err(ApiError::invalid(
                "The derived qualifier from the function name does not match the specified qualifier.",
            ))
        }
        (a, b) => a.or(b),
    };
    if !valid_name(name) {
        return Err(ApiError::not_found(format!("Function not found: {}", function_arn(name))));
    }
    match qualifier {
        None | Some(LATEST) => Ok(name.to_string()),
        Some(q) => Err(ApiError::not_found(format!("Function not found: {}:{q}", function_arn(name)))),
    }
}

/// Decodes `%XX` escapes; `None` for a bad escape or bytes that are not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    if !s.contains('%') {
        return Some(s.to_string());
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let digit = |c: u8| (c as char).to_digit(16);
            out.push((digit(hex[0])? * 16 + digit(hex[1])?) as u8);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The decoded value of a query parameter.
fn query_param(query: Option<&str>, key: &str) -> Option<String> {
    query?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(k)? == key).then(|| percent_decode(v)).flatten()
    })
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

// ---------------------------------------------------------------------------------------------
// Bodies and responses
// ---------------------------------------------------------------------------------------------

fn content_length(headers: &HeaderMap) -> Result<Option<usize>, ApiError> {
    match headers.get(CONTENT_LENGTH) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .map(|n| Some(usize::try_from(n).unwrap_or(usize::MAX)))
            .ok_or_else(|| ApiError::bad_content("Invalid Content-Length")),
    }
}

/// Reads a body of at most `cap` bytes (413 past it, after draining what the client sends).
async fn read_body<B>(headers: &HeaderMap, mut body: B, cap: usize, operation: &str) -> Result<Bytes, ApiError>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Display,
{
    let too_large =
        || ApiError::too_large(format!("Request must be smaller than {cap} bytes for the {operation} operation"));
    let declared = content_length(headers)?;
    if declared.is_some_and(|len| len > cap) {
        drain(body, DRAIN_LIMIT).await;
        return Err(too_large());
    }
    let mut chunks: Vec<Bytes> = Vec::new();
    let mut total = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ApiError::bad_content(format!("Could not read the request body: {e}")))?;
        let Ok(data) = frame.into_data() else { continue };
        total += data.len();
        if total > cap {
            drain(body, DRAIN_LIMIT.saturating_sub(total)).await;
            return Err(too_large());
        }
        chunks.push(data);
    }
    Ok(match chunks.len() {
        0 => Bytes::new(),
        1 => chunks.pop().expect("one chunk"),
        _ => {
            let mut all = BytesMut::with_capacity(total);
            for chunk in chunks {
                all.extend_from_slice(&chunk);
            }
            all.freeze()
        }
    })
}

/// Reads and drops up to `limit` bytes of a body.
async fn drain<B>(mut body: B, limit: usize)
where
    B: Body<Data = Bytes> + Unpin,
{
    let mut seen = 0usize;
    while seen <= limit {
        match body.frame().await {
            Some(Ok(frame)) => seen += frame.data_ref().map_or(0, Bytes::len),
            _ => return,
        }
    }
}

fn json_response(status: StatusCode, value: &Value) -> HttpResponse {
    let body = serde_json::to_vec(value).expect("a JSON value serializes");
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn empty_response(status: StatusCode) -> HttpResponse {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = status;
    response
}

/// A function's `FunctionConfiguration` as Lambda returns it.
pub fn configuration_json(c: &FunctionConfig) -> Value {
    let mut out = json!({
        "FunctionName": c.name,
        "FunctionArn": c.arn,
        "Runtime": c.runtime,
        "Role": c.role,
        "Handler": c.handler,
        "CodeSize": c.code_size,
        "Description": c.description,
        "Timeout": c.timeout_s,
        "MemorySize": c.memory_mib,
        "LastModified": c.last_modified,
        "CodeSha256": c.code_sha256,
        "Version": c.version,
        "TracingConfig": { "Mode": "PassThrough" },
        "RevisionId": c.revision_id,
        "State": "Active",
        "LastUpdateStatus": "Successful",
        "PackageType": "Zip",
        "Architectures": ["x86_64"],
        "EphemeralStorage": { "Size": c.ephemeral_mib },
        "SnapStart": if c.snap_start {
            json!({ "ApplyOn": "PublishedVersions", "OptimizationStatus": "On" })
        } else {
            json!({ "ApplyOn": "None", "OptimizationStatus": "Off" })
        },
        "LoggingConfig": { "LogFormat": "Text", "LogGroup": format!("/aws/lambda/{}", c.name) },
    });
    if c.handler.is_empty() {
        out.as_object_mut().expect("an object").remove("Handler");
    }
    if !c.environment.is_empty() {
        out["Environment"] = json!({ "Variables": c.environment });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::codezip::tests::{make_zip, temp_dir, Entry};
    use crate::agent::logs::Logs;
    use crate::agent::pool::{Pool, PoolConfig};
    use crate::agent::store::Store;
    use std::path::PathBuf;

    struct TestAgent {
        agent: Arc<Agent>,
        dir: PathBuf,
    }

    impl Drop for TestAgent {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    /// An agent whose pool cannot boot anything (no guest files): enough for everything but
    /// a successful invocation.
    fn test_agent() -> TestAgent {
        let dir = temp_dir("api");
        let logs = Logs::open(&dir.join("logs")).unwrap();
        let pool = Pool::new(
            PoolConfig {
                guest_dir: dir.join("no-guest"),
                run_dir: dir.join("run"),
                vmm_binary: dir.join("no-ember"),
                max_instances: 1,
                max_boots: 1,
                cpu_shares: false,
                keep_alive: Duration::from_secs(1),
                init_timeout: Duration::from_secs(1),
                console_dir: None,
                idle_memory_kib: 1 << 20,
            },
            logs.clone(),
            crate::agent::snapshots::Snapshots::open(&dir.join("snapshots")).unwrap(),
        )
        .unwrap();
        let agent = Agent { store: Store::open(&dir).unwrap(), pool, logs };
        TestAgent { agent: Arc::new(agent), dir }
    }

    struct Answer {
        status: u16,
        headers: HeaderMap,
        body: Vec<u8>,
    }

    impl Answer {
        fn json(&self) -> Value {
            serde_json::from_slice(&self.body)
                .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body)))
        }
        fn header(&self, name: &str) -> Option<&str> {
            self.headers.get(name).map(|v| v.to_str().unwrap())
        }
        fn error_type(&self) -> &str {
            self.header("x-amzn-errortype").unwrap_or("")
        }
    }

    async fn call(t: &TestAgent, method: &str, uri: &str, headers: &[(&str, &str)], body: impl Into<Bytes>) -> Answer {
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

    fn python_zip() -> Vec<u8> {
        make_zip(&[Entry::File("handler.py", b"def echo(event, context):\n    return event\n", 0o644)])
    }

    fn create_body(name: &str, extra: Value) -> Vec<u8> {
        let mut body = json!({
            "FunctionName": name,
            "Runtime": "python3.11",
            "Role": "arn:aws:iam::000000000000:role/ember",
            "Handler": "handler.echo",
            "Code": { "ZipFile": base64::engine::general_purpose::STANDARD.encode(python_zip()) },
        });
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        serde_json::to_vec(&body).unwrap()
    }

    #[test]
    fn routes() {
        assert_eq!(parse_route("/2015-03-31/functions"), Some(Route::Functions));
        assert_eq!(parse_route("/2015-03-31/functions/"), Some(Route::Functions));
        assert_eq!(parse_route("/2015-03-31/functions/f"), Some(Route::Function("f")));
        assert_eq!(parse_route("/2015-03-31/functions/f/invocations"), Some(Route::Sub("f", "invocations")));
        assert_eq!(parse_route("/2015-03-31/functions/f/a/b"), None);
        assert_eq!(parse_route("/2015-03-31/functionsx"), None);
        assert_eq!(parse_route("/2017-10-31/functions/f/concurrency"), None);
    }

    #[test]
    fn names_and_qualifiers() {
        let arn = function_arn("my-fn");
        assert_eq!(resolve("my-fn", None).unwrap(), "my-fn");
        assert_eq!(resolve(&arn, None).unwrap(), "my-fn");
        assert_eq!(resolve(&arn.replace(':', "%3A"), None).unwrap(), "my-fn");
        assert_eq!(resolve("000000000000:function:my-fn", None).unwrap(), "my-fn");
        assert_eq!(resolve("my-fn", Some("Qualifier=%24LATEST")).unwrap(), "my-fn");
        assert_eq!(resolve(&format!("{arn}:$LATEST"), None).unwrap(), "my-fn");
        let e = resolve("my-fn", Some("Qualifier=1")).unwrap_err();
        assert_eq!((e.status, e.message.as_str()), (404, format!("Function not found: {arn}:1").as_str()));
        assert_eq!(resolve("my-fn:prod", None).unwrap_err().status, 404);
        assert_eq!(resolve("my-fn:1", Some("Qualifier=2")).unwrap_err().status, 400);
        assert_eq!(resolve("bad%20name", None).unwrap_err().status, 404);
        assert_eq!(resolve("arn:aws:lambda:xx-nowhere-1:000000000000:function:f", None).unwrap_err().status, 404);
        assert_eq!(resolve("%zz", None).unwrap_err().status, 404);
    }

    #[test]
    fn limits() {
        assert_eq!(validate_memory(128).unwrap(), 128);
        assert_eq!(validate_memory(10_240).unwrap(), 10_240);
        let e = validate_memory(64).unwrap_err();
        assert_eq!(e.kind, "InvalidParameterValueException");
        assert!(e.message.contains("greater than or equal to 128"), "{}", e.message);
        assert!(validate_memory(10_241).is_err());
        assert!(validate_timeout(0).is_err() && validate_timeout(901).is_err());
        assert_eq!(validate_timeout(900).unwrap(), 900);
        assert!(validate_ephemeral(511).is_err() && validate_ephemeral(10_241).is_err());
        assert!(valid_name("a") && valid_name(&"a".repeat(64)) && valid_name("A-b_9"));
        assert!(!valid_name("") && !valid_name(&"a".repeat(65)) && !valid_name("a b") && !valid_name("a.b"));
        assert!(validate_runtime("python3.11").is_ok() && validate_runtime("provided.al2023").is_ok());
        let e = validate_runtime("nodejs20.x").unwrap_err();
        assert!(e.message.starts_with("The runtime parameter of nodejs20.x is not supported"));
        assert!(validate_handler("python3.11", "").is_err());
        assert!(validate_handler("python3.11", "a b").is_err());
        assert!(validate_handler("provided.al2023", "").is_ok());
        assert!(validate_role("arn:aws:iam::000000000000:role/x").is_ok() && validate_role("admin").is_err());
    }

    #[test]
    fn environment_rules() {
        let env = |pairs: &[(&str, &str)]| pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        assert!(validate_environment(&env(&[("MY_VAR", "1"), ("b2", "")])).is_ok());
        assert!(validate_environment(&env(&[("X", "1")])).is_err(), "one character is below the pattern");
        assert!(validate_environment(&env(&[("1X", "1")])).is_err());
        assert!(validate_environment(&env(&[("A-B", "1")])).is_err());
        let e = validate_environment(&env(&[("AWS_REGION", "x")])).unwrap_err();
        assert!(e.message.ends_with("Reserved keys used in this request: AWS_REGION"), "{}", e.message);
        let big = "x".repeat(4100);
        assert!(validate_environment(&env(&[("BIG", &big)])).unwrap_err().message.contains("4KB"));
    }

    #[test]
    fn configuration_shape() {
        let c = FunctionConfig {
            name: "f".into(),
            arn: function_arn("f"),
            runtime: "python3.11".into(),
            handler: "handler.echo".into(),
            role: "arn:aws:iam::000000000000:role/r".into(),
            description: "d".into(),
            memory_mib: 256,
            timeout_s: 7,
            ephemeral_mib: 1024,
            environment: BTreeMap::from([("K".into(), "v".into())]),
            code_sha256: "abc=".into(),
            code_size: 42,
            code_image: PathBuf::from("/x.ext4"),
            revision_id: "rev".into(),
            last_modified: "2026-11-22T08:30:00.000+0000".into(),
            version: "$LATEST".into(),
            snap_start: false,
        };
        let v = configuration_json(&c);
        assert_eq!(v["FunctionName"], "f");
        assert_eq!(v["MemorySize"], 256);
        assert_eq!(v["Timeout"], 7);
        assert_eq!(v["CodeSize"], 42);
        assert_eq!(v["Environment"]["Variables"]["K"], "v");
        assert_eq!(v["EphemeralStorage"]["Size"], 1024);
        assert_eq!(v["State"], "Active");
        assert_eq!(v["LastUpdateStatus"], "Successful");
        assert_eq!(v["PackageType"], "Zip");
        assert_eq!(v["Architectures"], json!(["x86_64"]));
        assert_eq!(v["TracingConfig"]["Mode"], "PassThrough");
        assert_eq!(v["Version"], "$LATEST");
        let mut bare = c.clone();
        bare.environment.clear();
        bare.handler.clear();
        let v = configuration_json(&bare);
        assert!(v.get("Environment").is_none() && v.get("Handler").is_none());
    }

    #[tokio::test]
    async fn function_lifecycle() {
        let t = test_agent();
        let a = call(&t, "POST", "/2015-03-31/functions", &[], create_body("f1", json!({ "MemorySize": 256 }))).await;
        assert_eq!(a.status, 201, "{}", String::from_utf8_lossy(&a.body));
        let created = a.json();
        assert_eq!(created["FunctionName"], "f1");
        assert_eq!(created["MemorySize"], 256);
        assert_eq!(created["Timeout"], 3);
        assert_eq!(created["EphemeralStorage"]["Size"], 512);
        assert_eq!(created["CodeSha256"], code_sha256(&python_zip()));
        assert_eq!(created["CodeSize"], python_zip().len());

        let a = call(&t, "POST", "/2015-03-31/functions", &[], create_body("f1", json!({}))).await;
        assert_eq!((a.status, a.error_type()), (409, "ResourceConflictException"));
        assert_eq!(a.json()["message"], "Function already exist: f1");

        let a = call(&t, "GET", "/2015-03-31/functions/f1", &[("host", "h:1")], "").await;
        assert_eq!(a.status, 200);
        assert_eq!(a.json()["Configuration"], created);
        assert_eq!(a.json()["Code"]["RepositoryType"], "S3");
        assert_eq!(a.json()["Code"]["Location"], "http://h:1/2015-03-31/functions/f1/code");
        let a = call(&t, "GET", "/2015-03-31/functions/f1/code", &[], "").await;
        assert_eq!(a.body, python_zip());

        let arn = function_arn("f1").replace(':', "%3A");
        let a = call(&t, "GET", &format!("/2015-03-31/functions/{arn}/configuration"), &[], "").await;
        assert_eq!(a.json(), created);

        call(&t, "POST", "/2015-03-31/functions", &[], create_body("f2", json!({}))).await;
        let a = call(&t, "GET", "/2015-03-31/functions/?MaxItems=1", &[], "").await;
        assert_eq!(a.json()["Functions"].as_array().unwrap().len(), 1);
        assert_eq!(a.json()["NextMarker"], "f1");
        let a = call(&t, "GET", "/2015-03-31/functions?Marker=f1", &[], "").await;
        assert_eq!(a.json()["Functions"][0]["FunctionName"], "f2");
        assert!(a.json().get("NextMarker").is_none());

        let update = json!({ "Timeout": 30, "Environment": { "Variables": { "MY_VAR": "x" } } });
        let a = call(&t, "PUT", "/2015-03-31/functions/f1/configuration", &[], update.to_string()).await;
        assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
        assert_eq!(a.json()["Timeout"], 30);
        assert_eq!(a.json()["MemorySize"], 256);
        assert_eq!(a.json()["Environment"]["Variables"]["MY_VAR"], "x");
        assert_ne!(a.json()["RevisionId"], created["RevisionId"]);
        let stale = json!({ "Timeout": 31, "RevisionId": created["RevisionId"] });
        let a = call(&t, "PUT", "/2015-03-31/functions/f1/configuration", &[], stale.to_string()).await;
        assert_eq!((a.status, a.error_type()), (412, "PreconditionFailedException"));

        let zip = make_zip(&[Entry::File("handler.py", b"def echo(e, c):\n    return 1\n", 0o644)]);
        let body = json!({ "ZipFile": base64::engine::general_purpose::STANDARD.encode(&zip) });
        let a = call(&t, "PUT", "/2015-03-31/functions/f1/code", &[], body.to_string()).await;
        assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
        assert_eq!(a.json()["CodeSha256"], code_sha256(&zip));
        assert_eq!(a.json()["Timeout"], 30);
        let body = json!({ "ZipFile": base64::engine::general_purpose::STANDARD.encode(b"nope") });
        let a = call(&t, "PUT", "/2015-03-31/functions/f1/code", &[], body.to_string()).await;
        assert_eq!((a.status, a.error_type()), (400, "InvalidParameterValueException"));

        let a = call(&t, "GET", "/2015-03-31/functions/f1/logs?bytes=100", &[], "").await;
        assert_eq!(a.status, 200);
        assert_eq!(a.header("content-type"), Some("text/plain; charset=utf-8"));

        let a = call(&t, "DELETE", "/2015-03-31/functions/f1", &[], "").await;
        assert_eq!(a.status, 204);
        let a = call(&t, "GET", "/2015-03-31/functions/f1", &[], "").await;
        assert_eq!((a.status, a.error_type()), (404, "ResourceNotFoundException"));
        assert_eq!(a.json()["message"], format!("Function not found: {}", function_arn("f1")));
        let a = call(&t, "DELETE", "/2015-03-31/functions/f1", &[], "").await;
        assert_eq!(a.status, 404);
    }

    #[tokio::test]
    async fn create_validation() {
        let t = test_agent();
        let cases = [
            (json!({ "MemorySize": 64 }), "greater than or equal to 128"),
            (json!({ "MemorySize": 10_241 }), "less than or equal to 10240"),
            (json!({ "Timeout": 901 }), "less than or equal to 900"),
            (json!({ "EphemeralStorage": { "Size": 100 } }), "ephemeralStorage.size"),
            (json!({ "Runtime": "nodejs20.x" }), "The runtime parameter of nodejs20.x is not supported"),
            (json!({ "Handler": null }), "Handler is required"),
            (json!({ "Role": "nobody" }), "at 'role'"),
            (json!({ "FunctionName": "bad name" }), "functionName"),
            (json!({ "Environment": { "Variables": { "AWS_REGION": "x" } } }), "reserved keys"),
            (
                json!({ "Code": { "ZipFile": base64::engine::general_purpose::STANDARD.encode(b"junk") } }),
                "Could not unzip",
            ),
            (json!({ "Code": { "S3Bucket": "b", "S3Key": "k" } }), "S3"),
            (json!({ "Runtime": "provided.al2023", "Handler": "x" }), "bootstrap"),
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
    }

    #[tokio::test]
    async fn invoke_paths_without_a_vm() {
        let t = test_agent();
        call(&t, "POST", "/2015-03-31/functions", &[], create_body("f", json!({}))).await;
        let path = "/2015-03-31/functions/f/invocations";

        let a = call(&t, "POST", path, &[("x-amz-invocation-type", "DryRun")], "{}").await;
        assert_eq!(a.status, 204);
        let a = call(&t, "POST", "/2015-03-31/functions/nope/invocations", &[], "{}").await;
        assert_eq!((a.status, a.error_type()), (404, "ResourceNotFoundException"));
        let a = call(&t, "POST", &format!("{path}?Qualifier=7"), &[], "{}").await;
        assert_eq!(a.status, 404);
        let a = call(&t, "POST", path, &[], "{oops").await;
        assert_eq!((a.status, a.error_type()), (400, "InvalidRequestContentException"));
        let a = call(&t, "POST", path, &[("x-amz-invocation-type", "Sometimes")], "{}").await;
        assert_eq!(a.status, 400);

        let big = format!("\"{}\"", "x".repeat(MAX_SYNC_PAYLOAD));
        let a = call(&t, "POST", path, &[], big.clone()).await;
        assert_eq!((a.status, a.error_type()), (413, "RequestTooLargeException"));
        assert!(a.json()["message"].as_str().unwrap().contains("6291456"));
        // Without a Content-Length the bytes are counted.
        let req = Request::builder().method("POST").uri(path).body(Full::new(Bytes::from(big))).unwrap();
        let response = Box::pin(handle(t.agent.clone(), req)).await;
        assert_eq!(response.status(), 413);
        let async_big = format!("\"{}\"", "x".repeat(MAX_ASYNC_PAYLOAD));
        let a = call(&t, "POST", path, &[("x-amz-invocation-type", "Event")], async_big).await;
        assert_eq!(a.status, 413);

        // The pool cannot boot here: the error comes back as Lambda's JSON, with its type.
        let a = call(&t, "POST", path, &[("x-amz-log-type", "Tail")], "{}").await;
        assert!(a.status >= 400, "{}", a.status);
        assert!(!a.error_type().is_empty());
        assert!(a.json()["message"].is_string());
        let a = call(&t, "POST", path, &[("x-amz-invocation-type", "Event")], "{}").await;
        assert_eq!(a.status, 202);
    }

    #[tokio::test]
    async fn unknown_routes() {
        let t = test_agent();
        for (method, path) in
            [("GET", "/"), ("GET", "/2015-03-31/functions/f/nothing"), ("PATCH", "/2015-03-31/functions/f")]
        {
            let a = call(&t, method, path, &[], "").await;
            assert_eq!((a.status, a.error_type()), (404, "UnknownOperationException"), "{method} {path}");
        }
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
}
