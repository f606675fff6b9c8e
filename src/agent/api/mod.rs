//! Lambda's REST API over HTTP/1.1, on a Unix socket or loopback TCP. HTTP only: the routing
//! table ([`routes`]) names the operation, one module per resource decodes its request
//! ([`members`] refuses what this host does not implement, by name), calls one use case of
//! the control plane or the invoke path, and encodes the answer ([`shapes`]); errors become
//! HTTP in [`error`] and [`error_response`], and nowhere else.
//!
//! | resource | operations |
//! |---|---|
//! | [`functions`] | CreateFunction, GetFunction, GetFunctionConfiguration, ListFunctions, UpdateFunctionCode, UpdateFunctionConfiguration, DeleteFunction; Ember's code zip and log tail |
//! | [`versions`] | PublishVersion, ListVersionsByFunction |
//! | [`aliases`] | CreateAlias, GetAlias, ListAliases, UpdateAlias, DeleteAlias |
//! | [`layers`] | PublishLayerVersion, GetLayerVersion, GetLayerVersionByArn, ListLayers, ListLayerVersions, DeleteLayerVersion; Ember's layer zip |
//! | [`concurrency`] | Put/Get/DeleteFunctionConcurrency; Put/Get/Delete/ListProvisionedConcurrencyConfig(s) |
//! | [`tags`] | TagResource, UntagResource, ListTags |
//! | [`account`] | GetAccountSettings |
//! | [`event_configs`] | Put/Get/Update/DeleteFunctionEventInvokeConfig, ListFunctionEventInvokeConfigs |
//! | [`invoke`] | Invoke, InvokeAsync (`Event` invocations go to the durable queue) |
//! | [`url_configs`] | Create/Get/Update/DeleteFunctionUrlConfig, ListFunctionUrlConfigs |
//! | [`policy`] | AddPermission, RemovePermission, GetPolicy |
//! | [`schedules`] | EventBridge Scheduler's Create/Get/Update/DeleteSchedule, ListSchedules |
//!
//! Function URLs themselves are served on a listener of their own ([`urls`], with the
//! payload format 2.0 mapping in [`url_event`]).
//!
//! A function is named as Lambda accepts it (name, `name:qualifier`, partial or full ARN,
//! percent-encoded or not), with the `Qualifier` parameter where the operation takes one.
//! SigV4 `Authorization` headers are accepted and not checked. Every answer carries
//! `x-amzn-RequestId`.
//!
//! The invoke path does no store write and no blocking work: cached reads, the body read with
//! a cap, a JSON syntax check, then the pool. Control operations that write (fsync, zip
//! extraction, mkfs) run on blocking threads.

pub mod account;
pub mod aliases;
pub mod body;
pub mod concurrency;
pub mod error;
pub mod event_configs;
pub mod functions;
pub mod invoke;
pub mod layers;
pub mod mappings;
pub mod members;
pub mod policy;
pub mod routes;
pub mod schedules;
pub mod shapes;
pub mod tags;
pub mod url_configs;
pub mod url_event;
pub mod urls;
pub mod versions;

use std::convert::Infallible;
use std::fmt::Display;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Body;
use hyper::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite};

pub use self::body::HttpResponse;
pub use self::error::ApiError;
use self::routes::{Op, Routed};
use super::ids::{self, FunctionRef};
use super::Agent;

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
    let request_id = ids::random_uuid();
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

/// A decoded request, as a resource's handler gets it.
pub struct Req<'a> {
    /// The path's parameters, decoded, in order.
    pub params: Vec<String>,
    /// The raw query string.
    pub query: Option<&'a str>,
    /// The headers.
    pub headers: &'a HeaderMap,
    /// The JSON body (`null` for operations without one).
    pub body: Value,
}

impl Req<'_> {
    /// The function the first path parameter names, with the `Qualifier` parameter.
    pub fn function(&self) -> Result<FunctionRef, ApiError> {
        Ok(FunctionRef::parse(&self.params[0])?
            .with_qualifier(body::query_param(self.query, "Qualifier").as_deref())?)
    }

    /// The function the first path parameter names, for an operation that takes no
    /// qualifier.
    pub fn unqualified(&self, operation: &str) -> Result<String, ApiError> {
        let r = FunctionRef::parse(&self.params[0])?;
        if r.qualifier.is_some() {
            return Err(ApiError::invalid(format!(
                "{operation} does not take a qualified function name: {}",
                self.params[0]
            )));
        }
        Ok(r.name)
    }

    /// The `Host` header, for the URLs of the answer.
    pub fn host(&self) -> &str {
        body::header(self.headers, "host").unwrap_or("localhost")
    }
}

/// Whether an operation has a JSON body, and whether it may carry a zip (a larger cap).
fn body_of(op: Op) -> Option<bool> {
    match op {
        Op::CreateFunction | Op::UpdateFunctionCode | Op::PublishLayerVersion => Some(true),
        Op::UpdateFunctionConfiguration
        | Op::PublishVersion
        | Op::CreateAlias
        | Op::UpdateAlias
        | Op::PutFunctionConcurrency
        | Op::PutProvisionedConcurrencyConfig
        | Op::TagResource
        | Op::PutFunctionEventInvokeConfig
        | Op::UpdateFunctionEventInvokeConfig
        | Op::CreateFunctionUrlConfig
        | Op::UpdateFunctionUrlConfig
        | Op::AddPermission
        | Op::CreateSchedule
        | Op::UpdateSchedule
        | Op::CreateEventSourceMapping
        | Op::UpdateEventSourceMapping => Some(false),
        _ => None,
    }
}

async fn route<B>(agent: &Arc<Agent>, req: Request<B>, request_id: &str) -> Result<HttpResponse, ApiError>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Display,
{
    let (parts, body) = req.into_parts();
    let (op, params) = match routes::route(&parts.method, parts.uri.path()) {
        Routed::Op(op, params) => (op, params),
        Routed::NotImplemented(what) => {
            return Err(ApiError::unknown_operation(format!(
                "{} {}: {what} are not supported by this host yet",
                parts.method,
                parts.uri.path()
            )))
        }
        Routed::Unknown => {
            return Err(ApiError::unknown_operation(format!(
                "Unknown operation: {} {}",
                parts.method,
                parts.uri.path()
            )))
        }
    };
    let query = parts.uri.query();
    body::only_query(query, op.query(), &format!("{op:?}"))?;
    if matches!(op, Op::Invoke | Op::InvokeAsync) {
        return invoke::invoke(agent, op, &params[0], query, &parts.headers, body, request_id).await;
    }
    let json = match body_of(op) {
        Some(code) => body::read_json(&parts.headers, body, code, &format!("{op:?}")).await?,
        None => Value::Null,
    };
    let req = Req { params, query, headers: &parts.headers, body: json };
    match op {
        Op::CreateFunction => functions::create(agent, req).await,
        Op::ListFunctions => functions::list(agent, req),
        Op::GetFunction => functions::get(agent, req),
        Op::GetFunctionConfiguration => functions::get_configuration(agent, req),
        Op::DeleteFunction => functions::delete(agent, req).await,
        Op::UpdateFunctionConfiguration => functions::update_configuration(agent, req).await,
        Op::UpdateFunctionCode => functions::update_code(agent, req).await,
        Op::GetFunctionCodeZip => functions::code_zip(agent, req).await,
        Op::GetFunctionLogs => functions::logs(agent, req).await,
        Op::ListImagePulls => functions::image_pulls(agent, req),
        Op::PublishVersion => versions::publish(agent, req).await,
        Op::ListVersionsByFunction => versions::list(agent, req),
        Op::CreateAlias => aliases::create(agent, req).await,
        Op::ListAliases => aliases::list(agent, req),
        Op::GetAlias => aliases::get(agent, req),
        Op::UpdateAlias => aliases::update(agent, req).await,
        Op::DeleteAlias => aliases::delete(agent, req).await,
        Op::PublishLayerVersion => layers::publish(agent, req).await,
        Op::ListLayerVersions => layers::list_versions(agent, req),
        Op::GetLayerVersion => layers::get(agent, req),
        Op::DeleteLayerVersion => layers::delete(agent, req).await,
        Op::Layers => layers::list_or_find(agent, req),
        Op::GetLayerVersionZip => layers::zip(agent, req).await,
        Op::PutFunctionConcurrency => concurrency::put_reserved(agent, req).await,
        Op::GetFunctionConcurrency => concurrency::get_reserved(agent, req),
        Op::DeleteFunctionConcurrency => concurrency::delete_reserved(agent, req).await,
        Op::GetProvisionedConcurrencyConfig => concurrency::get_provisioned(agent, req),
        Op::PutProvisionedConcurrencyConfig => concurrency::put_provisioned(agent, req).await,
        Op::DeleteProvisionedConcurrencyConfig => concurrency::delete_provisioned(agent, req).await,
        Op::GetAccountSettings => account::get(agent, req),
        Op::TagResource => tags::tag(agent, req).await,
        Op::UntagResource => tags::untag(agent, req).await,
        Op::ListTags => tags::list(agent, req),
        Op::PutFunctionEventInvokeConfig => event_configs::put(agent, req).await,
        Op::UpdateFunctionEventInvokeConfig => event_configs::update(agent, req).await,
        Op::GetFunctionEventInvokeConfig => event_configs::get(agent, req),
        Op::DeleteFunctionEventInvokeConfig => event_configs::delete(agent, req).await,
        Op::ListFunctionEventInvokeConfigs => event_configs::list(agent, req),
        Op::CreateFunctionUrlConfig => url_configs::create(agent, req).await,
        Op::GetFunctionUrlConfig => url_configs::get(agent, req),
        Op::UpdateFunctionUrlConfig => url_configs::update(agent, req).await,
        Op::DeleteFunctionUrlConfig => url_configs::delete(agent, req).await,
        Op::ListFunctionUrlConfigs => url_configs::list(agent, req),
        Op::AddPermission => policy::add(agent, req).await,
        Op::RemovePermission => policy::remove(agent, req).await,
        Op::GetPolicy => policy::get(agent, req),
        Op::CreateSchedule => schedules::create(agent, req).await,
        Op::GetSchedule => schedules::get(agent, req),
        Op::UpdateSchedule => schedules::update(agent, req).await,
        Op::DeleteSchedule => schedules::delete(agent, req).await,
        Op::ListSchedules => schedules::list(agent, req),
        Op::CreateEventSourceMapping => mappings::create(agent, req).await,
        Op::GetEventSourceMapping => mappings::get(agent, req).await,
        Op::UpdateEventSourceMapping => mappings::update(agent, req).await,
        Op::DeleteEventSourceMapping => mappings::delete(agent, req).await,
        Op::ListEventSourceMappings => mappings::list(agent, req).await,
        Op::Invoke | Op::InvokeAsync => unreachable!("routed above"),
    }
}

#[cfg(test)]
pub(crate) mod tests;
