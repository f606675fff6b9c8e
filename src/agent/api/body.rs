//! Requests in and responses out: bodies read with a cap, JSON parsed into a request's shape,
//! query parameters and headers, and the responses' framing.
//!
//! Bodies are never read unbounded: the `Content-Length` is checked first and the bytes are
//! counted as they come; an oversized body is drained (up to a limit) before the 413 so that
//! the client, still sending, reads the answer instead of a reset connection.

use std::fmt::Display;

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper::body::Body;
use hyper::header::{HeaderMap, HeaderValue, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::{Response, StatusCode};
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::error::ApiError;
use super::routes::percent_decode;
use crate::agent::limits;

/// How much of an oversized body is read and dropped so that the client sees the 413.
const DRAIN_LIMIT: usize = 128 * 1024 * 1024;

/// The response type of every handler.
pub type HttpResponse = Response<Full<Bytes>>;

/// The declared `Content-Length`, if any.
pub fn content_length(headers: &HeaderMap) -> Result<Option<usize>, ApiError> {
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

/// The 413 of an operation's body over `cap`.
pub fn too_large(cap: usize, operation: &str) -> ApiError {
    ApiError::too_large(format!("Request must be smaller than {cap} bytes for the {operation} operation"))
}

/// Reads a body of at most `cap` bytes (413 past it, after draining what the client sends).
pub async fn read<B>(headers: &HeaderMap, mut body: B, cap: usize, operation: &str) -> Result<Bytes, ApiError>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Display,
{
    if content_length(headers)?.is_some_and(|len| len > cap) {
        drain(body, DRAIN_LIMIT).await;
        return Err(too_large(cap, operation));
    }
    let mut chunks: Vec<Bytes> = Vec::new();
    let mut total = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ApiError::bad_content(format!("Could not read the request body: {e}")))?;
        let Ok(data) = frame.into_data() else { continue };
        total += data.len();
        if total > cap {
            drain(body, DRAIN_LIMIT.saturating_sub(total)).await;
            return Err(too_large(cap, operation));
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
pub async fn drain<B>(mut body: B, limit: usize)
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

/// Reads a control operation's JSON body (an empty body is `{}`), capped at
/// [`limits::MAX_CONTROL_REQUEST`] or, with `code`, at [`limits::MAX_CODE_REQUEST`].
pub async fn read_json<B>(headers: &HeaderMap, body: B, code: bool, operation: &str) -> Result<Value, ApiError>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Display,
{
    let cap = if code { limits::MAX_CODE_REQUEST } else { limits::MAX_CONTROL_REQUEST };
    let bytes = read(headers, body, cap, operation).await?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Object(Default::default()));
    }
    let value: Value = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_content(format!("Could not parse request body into json: {e}")))?;
    if !value.is_object() {
        return Err(ApiError::bad_content("Could not parse request body into json: the body is not an object"));
    }
    Ok(value)
}

/// A request's shape, from its (already checked) JSON.
pub fn shape<T: DeserializeOwned>(value: Value) -> Result<T, ApiError> {
    serde_json::from_value(value)
        .map_err(|e| ApiError::bad_content(format!("Could not parse request body into json: {e}")))
}

/// The decoded value of a query parameter.
pub fn query_param(query: Option<&str>, key: &str) -> Option<String> {
    query?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(&k.replace('+', " "))? == key).then(|| percent_decode(&v.replace('+', " "))).flatten()
    })
}

/// Every decoded value of a repeated query parameter.
pub fn query_params(query: Option<&str>, key: &str) -> Vec<String> {
    let Some(query) = query else { return Vec::new() };
    query
        .split('&')
        .filter_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(&k.replace('+', " "))? == key).then(|| percent_decode(&v.replace('+', " "))).flatten()
        })
        .collect()
}

/// The names of the query parameters.
pub fn query_keys(query: Option<&str>) -> Vec<String> {
    let Some(query) = query else { return Vec::new() };
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .filter_map(|pair| percent_decode(pair.split_once('=').map_or(pair, |(k, _)| k)))
        .collect()
}

/// Refuses query parameters other than `allowed`, by name.
pub fn only_query(query: Option<&str>, allowed: &[&str], operation: &str) -> Result<(), ApiError> {
    match query_keys(query).into_iter().find(|k| !allowed.contains(&k.as_str())) {
        Some(k) => Err(ApiError::invalid(format!("{k} is not a parameter of {operation} this host supports."))),
        None => Ok(()),
    }
}

/// `MaxItems`: 1 to 10000 (pages hold at most 50).
pub fn max_items(query: Option<&str>) -> Result<usize, ApiError> {
    match query_param(query, "MaxItems") {
        None => Ok(limits::MAX_PAGE),
        Some(s) => match s.parse::<usize>() {
            Ok(n) if (1..=limits::MAX_ITEMS).contains(&n) => Ok(n),
            _ => Err(ApiError::invalid(format!(
                "1 validation error detected: Value '{s}' at 'maxItems' failed to satisfy constraint: Member must \
                 have value between 1 and {}",
                limits::MAX_ITEMS
            ))),
        },
    }
}

/// A header's value, if it is there and text.
pub fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// A JSON response.
pub fn json(status: StatusCode, value: &Value) -> HttpResponse {
    let body = serde_json::to_vec(value).expect("a JSON value serializes");
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// A response without a body.
pub fn empty(status: StatusCode) -> HttpResponse {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = status;
    response
}

/// A response of raw bytes of `content_type`.
pub fn bytes(content_type: &'static str, body: Vec<u8>) -> HttpResponse {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_strings() {
        let q = Some("Qualifier=%24LATEST&tagKeys=a&tagKeys=b%20c&List=ALL");
        assert_eq!(query_param(q, "Qualifier").as_deref(), Some("$LATEST"));
        assert_eq!(query_params(q, "tagKeys"), ["a", "b c"]);
        assert_eq!(query_keys(q), ["Qualifier", "tagKeys", "tagKeys", "List"]);
        assert!(only_query(q, &["Qualifier", "tagKeys", "List"], "X").is_ok());
        let e = only_query(q, &["Qualifier"], "X").unwrap_err();
        assert!(e.message.starts_with("tagKeys is not a parameter"), "{}", e.message);
        assert_eq!(max_items(None).unwrap(), 50);
        assert_eq!(max_items(Some("MaxItems=3")).unwrap(), 3);
        assert!(max_items(Some("MaxItems=0")).is_err());
    }
}
