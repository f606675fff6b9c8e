//! Invocations: Invoke (`RequestResponse` 200, `Event` 202, `DryRun` 204) and the legacy
//! InvokeAsync (202).

use std::fmt::Display;
use std::sync::Arc;

use base64::Engine;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Body;
use hyper::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE};
use hyper::{Response, StatusCode};
use serde::de::IgnoredAny;
use serde_json::json;

use super::body::{self, content_length, header, query_param, HttpResponse};
use super::error::ApiError;
use super::routes::Op;
use crate::agent::ids::{self, FunctionRef};
use crate::agent::limits::{MAX_ASYNC_PAYLOAD, MAX_SYNC_PAYLOAD};
use crate::agent::pool::InvokeRequest;
use crate::agent::store::queue::NewEvent;
use crate::agent::Agent;

/// How much of an oversized payload is read and dropped so that the client sees the 413.
const DRAIN_LIMIT: usize = 128 * 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum InvocationType {
    RequestResponse,
    Event,
    DryRun,
}

fn payload_too_large(cap: usize) -> ApiError {
    ApiError::too_large(format!("Request must be smaller than {cap} bytes for the InvokeFunction operation"))
}

/// Invoke, or InvokeAsync.
pub async fn invoke<B>(
    agent: &Arc<Agent>,
    op: Op,
    function: &str,
    query: Option<&str>,
    headers: &HeaderMap,
    body: B,
    request_id: &str,
) -> Result<HttpResponse, ApiError>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Display,
{
    let kind = if op == Op::InvokeAsync {
        InvocationType::Event
    } else {
        for unsupported in ["x-amz-tenant-id", "x-amz-durable-execution-name"] {
            if headers.contains_key(unsupported) {
                return Err(ApiError::invalid(format!(
                    "The {unsupported} header is not supported by this host yet; the request is refused rather than \
                     run without it."
                )));
            }
        }
        match header(headers, "x-amz-invocation-type") {
            None | Some("RequestResponse") => InvocationType::RequestResponse,
            Some("Event") => InvocationType::Event,
            Some("DryRun") => InvocationType::DryRun,
            Some(other) => {
                return Err(ApiError::invalid(format!(
                    "1 validation error detected: Value '{other}' at 'invocationType' failed to satisfy constraint: \
                     Member must satisfy enum value set: [Event, RequestResponse, DryRun]"
                )))
            }
        }
    };
    let cap = if kind == InvocationType::Event { MAX_ASYNC_PAYLOAD } else { MAX_SYNC_PAYLOAD };
    if content_length(headers)?.is_some_and(|len| len > cap) {
        body::drain(body, DRAIN_LIMIT).await;
        return Err(payload_too_large(cap));
    }
    let r = FunctionRef::parse(function)?.with_qualifier(query_param(query, "Qualifier").as_deref())?;
    let target = agent.invoker.resolve(&r)?;
    let mut payload = body::read(headers, body, cap, "Invoke").await.map_err(|e| match e.status {
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
        function: target.function,
        invoked_arn: target.invoked_arn,
        payload,
        client_context: header(headers, "x-amz-client-context").map(str::to_string),
        want_tail: header(headers, "x-amz-log-type") == Some("Tail"),
    };
    match kind {
        InvocationType::DryRun => Ok(body::empty(StatusCode::NO_CONTENT)),
        InvocationType::Event => {
            let event = NewEvent {
                request_id: request.request_id,
                function: r.name,
                qualifier: r.qualifier.map(|q| q.to_string()),
                payload: request.payload.to_vec(),
                client_context: request.client_context,
                accepted_ms: ids::unix_ms(),
            };
            agent.queue.accept(event).await?;
            Ok(if op == Op::InvokeAsync {
                body::json(StatusCode::ACCEPTED, &json!({ "Status": 202 }))
            } else {
                body::empty(StatusCode::ACCEPTED)
            })
        }
        InvocationType::RequestResponse => {
            let want_tail = request.want_tail;
            // Boxed: the invoke future is large; kept inline it would make every
            // connection's future that large.
            let output = Box::pin(agent.invoker.invoke(request)).await?;
            let mut response = Response::new(Full::new(Bytes::from(output.payload)));
            let headers = response.headers_mut();
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            if let Ok(v) = HeaderValue::from_str(&output.executed_version.to_string()) {
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
