//! The function URL listener (`ember serve --url-listen ADDR:PORT`): every function URL on one
//! port, routed by `Host: <url-id>.lambda-url.<region>.on.aws`, or by a path prefix
//! `/<url-id>/` for clients that cannot set the host (the prefix is not part of `rawPath`).
//!
//! A request is answered only where the URL's policy lets anyone call
//! `lambda:InvokeFunctionUrl` (403 otherwise); a CORS preflight is answered here from the URL's
//! `Cors`; anything else becomes a payload format 2.0 event ([`super::url_event`]), runs like a
//! synchronous invoke, and the answer is mapped back. Function errors and timeouts answer 502,
//! throttles 429, as Lambda's URLs do; bodies are capped at 6 MB each way.

use std::convert::Infallible;
use std::fmt::Display;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Body;
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::{json, Value};

use super::body::{self, header, HttpResponse};
use super::url_event::{self, UrlRequest};
use crate::agent::ids::{self, FunctionRef, Qualifier};
use crate::agent::invoke::Error as InvokeError;
use crate::agent::limits::MAX_SYNC_PAYLOAD;
use crate::agent::pool::{InvokeRequest, PoolError};
use crate::agent::store::urls::UrlConfig;
use crate::agent::Agent;

/// Serves function URLs on `listener` until the task is dropped.
pub async fn serve(agent: Arc<Agent>, listener: tokio::net::TcpListener) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                let agent = agent.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        let agent = agent.clone();
                        async move { Ok::<_, Infallible>(handle(agent, req, peer).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .timer(TokioTimer::new())
                        .keep_alive(true)
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
            Err(e) => {
                eprintln!("ember: urls: accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// A JSON answer `{"Message": ...}`, as Lambda's URLs give for their own errors.
fn message(status: u16, text: &str) -> HttpResponse {
    let mut r = body::json(StatusCode::OK, &json!({ "Message": text }));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r
}

/// The URL id a request is for, and its path without the id's prefix.
pub fn route(host: Option<&str>, path: &str) -> Option<(String, String)> {
    let is_id =
        |s: &str| (1..=64).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if let Some((id, _)) = host.and_then(|h| h.split_once(".lambda-url.")) {
        if is_id(id) {
            return Some((id.to_owned(), path.to_owned()));
        }
    }
    let rest = path.strip_prefix('/')?;
    let (id, tail) = rest.split_once('/').map_or((rest, ""), |(id, tail)| (id, tail));
    is_id(id).then(|| (id.to_owned(), format!("/{tail}")))
}

/// Answers one request.
pub async fn handle<B>(agent: Arc<Agent>, req: Request<B>, peer: SocketAddr) -> HttpResponse
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Display,
{
    let request_id = ids::random_uuid();
    let mut response = answer(&agent, req, peer, &request_id).await;
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert(HeaderName::from_static("x-amzn-requestid"), v);
    }
    response
}

async fn answer<B>(agent: &Arc<Agent>, req: Request<B>, peer: SocketAddr, request_id: &str) -> HttpResponse
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Display,
{
    let (parts, body) = req.into_parts();
    let Some((url_id, raw_path)) = route(header(&parts.headers, "host"), parts.uri.path()) else {
        return message(404, "Not Found");
    };
    let route = match agent.control.url_route(&url_id) {
        Ok(Some(route)) => route,
        Ok(None) => return message(404, "Not Found"),
        Err(e) => return message(500, &e.to_string()),
    };
    if !route.public {
        return message(403, "Forbidden");
    }
    let url = &route.config;
    let origin = header(&parts.headers, "origin").map(str::to_owned);
    let is_preflight =
        parts.method == hyper::Method::OPTIONS && header(&parts.headers, "access-control-request-method").is_some();
    if let Some(origin) = origin.as_deref().filter(|_| is_preflight && !url.cors.is_null()) {
        return preflight(&url.cors, origin);
    }
    let payload = match body::read(&parts.headers, body, MAX_SYNC_PAYLOAD, "the function URL request").await {
        Ok(b) => b,
        Err(e) if e.status == 413 => return message(413, "Request must be smaller than 6291456 bytes"),
        Err(e) => return message(e.status, &e.message),
    };
    let request = UrlRequest {
        url_id: &url_id,
        method: parts.method.as_str(),
        raw_path: &raw_path,
        raw_query: parts.uri.query(),
        headers: &parts.headers,
        body: &payload,
        source_ip: peer.ip().to_string(),
        request_id,
        time: SystemTime::now(),
    };
    let event = serde_json::to_vec(&url_event::event(&request)).expect("a JSON value serializes");
    let mut response = invoke(agent, url, event, request_id).await;
    if let Some(origin) = origin.filter(|_| !url.cors.is_null()) {
        cors_headers(&url.cors, &origin, response.headers_mut());
    }
    response
}

/// Runs the URL's function with the event and maps its answer.
async fn invoke(agent: &Arc<Agent>, url: &UrlConfig, event: Vec<u8>, request_id: &str) -> HttpResponse {
    let qualifier = (!url.qualifier.is_empty()).then(|| Qualifier::Alias(url.qualifier.clone()));
    let target = match agent.invoker.resolve(&FunctionRef { name: url.function.clone(), qualifier }) {
        Ok(t) => t,
        Err(InvokeError::Store(_)) => return message(404, "Not Found"),
        Err(_) => return message(502, "Internal Server Error"),
    };
    let request = InvokeRequest {
        request_id: request_id.to_owned(),
        function: target.function,
        invoked_arn: target.invoked_arn,
        payload: Bytes::from(event),
        client_context: None,
        want_tail: false,
    };
    match Box::pin(agent.invoker.invoke(request)).await {
        Ok(out) if out.function_error.is_none() => match url_event::response(&out.payload) {
            Ok(r) => {
                let mut response = Response::new(Full::new(Bytes::from(r.body)));
                *response.status_mut() = StatusCode::from_u16(r.status).unwrap_or(StatusCode::OK);
                for (k, v) in r.headers {
                    if let (Ok(k), Ok(v)) = (HeaderName::from_bytes(k.as_bytes()), HeaderValue::from_str(&v)) {
                        response.headers_mut().append(k, v);
                    }
                }
                response
            }
            Err(_) => message(502, "Internal Server Error"),
        },
        Ok(_) => message(502, "Internal Server Error"),
        Err(InvokeError::Pool(PoolError::Throttled(_))) => message(429, "Rate Exceeded."),
        Err(_) => message(502, "Internal Server Error"),
    }
}

/// A list member of a `Cors` config.
fn cors_list(cors: &Value, key: &str) -> Vec<String> {
    cors[key].as_array().map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect()).unwrap_or_default()
}

/// The `Access-Control-Allow-Origin` for `origin`, if the config allows it.
fn allowed_origin(cors: &Value, origin: &str) -> Option<String> {
    let origins = cors_list(cors, "AllowOrigins");
    let credentials = cors["AllowCredentials"] == true;
    if origins.iter().any(|o| o == origin) {
        Some(origin.to_owned())
    } else if origins.iter().any(|o| o == "*") {
        Some(if credentials { origin.to_owned() } else { "*".to_owned() })
    } else {
        None
    }
}

fn set(headers: &mut HeaderMap, name: &'static str, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        headers.insert(HeaderName::from_static(name), v);
    }
}

/// CORS headers on an answer to an allowed origin.
fn cors_headers(cors: &Value, origin: &str, headers: &mut HeaderMap) {
    let Some(allow) = allowed_origin(cors, origin) else { return };
    set(headers, "access-control-allow-origin", &allow);
    let expose = cors_list(cors, "ExposeHeaders");
    if !expose.is_empty() {
        set(headers, "access-control-expose-headers", &expose.join(","));
    }
    if cors["AllowCredentials"] == true {
        set(headers, "access-control-allow-credentials", "true");
    }
    set(headers, "vary", "Origin");
}

/// The answer to a CORS preflight, from the URL's config (the function is not run).
fn preflight(cors: &Value, origin: &str) -> HttpResponse {
    let mut r = body::empty(StatusCode::OK);
    let h = r.headers_mut();
    if let Some(allow) = allowed_origin(cors, origin) {
        set(h, "access-control-allow-origin", &allow);
        let methods = cors_list(cors, "AllowMethods");
        if !methods.is_empty() {
            set(h, "access-control-allow-methods", &methods.join(","));
        }
        let allow_headers = cors_list(cors, "AllowHeaders");
        if !allow_headers.is_empty() {
            set(h, "access-control-allow-headers", &allow_headers.join(","));
        }
        if let Some(age) = cors["MaxAge"].as_u64() {
            set(h, "access-control-max-age", &age.to_string());
        }
        if cors["AllowCredentials"] == true {
            set(h, "access-control-allow-credentials", "true");
        }
        set(h, "vary", "Origin");
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_route_by_host_or_by_path_prefix() {
        let id = "0123456789abcdef0123456789abcdef";
        let host = format!("{id}.lambda-url.us-east-1.on.aws:9000");
        assert_eq!(route(Some(&host), "/a/b"), Some((id.to_string(), "/a/b".to_string())));
        assert_eq!(route(Some("127.0.0.1:9000"), &format!("/{id}/a/b")), Some((id.to_string(), "/a/b".to_string())));
        assert_eq!(route(None, &format!("/{id}")), Some((id.to_string(), "/".to_string())));
        assert_eq!(route(None, &format!("/{id}/")), Some((id.to_string(), "/".to_string())));
        assert_eq!(route(None, "/"), None);
        assert_eq!(route(None, "/Not-An-Id/x"), None);
    }

    #[test]
    fn cors_follows_the_config() {
        let cors = json!({
            "AllowOrigins": ["https://a.example"], "AllowMethods": ["GET", "POST"], "AllowHeaders": ["x-h"],
            "ExposeHeaders": ["x-e"], "MaxAge": 60, "AllowCredentials": true,
        });
        let r = preflight(&cors, "https://a.example");
        let h = r.headers();
        assert_eq!(h["access-control-allow-origin"], "https://a.example");
        assert_eq!(h["access-control-allow-methods"], "GET,POST");
        assert_eq!(h["access-control-allow-headers"], "x-h");
        assert_eq!(h["access-control-max-age"], "60");
        assert_eq!(h["access-control-allow-credentials"], "true");
        assert!(preflight(&cors, "https://b.example").headers().get("access-control-allow-origin").is_none());
        let mut h = HeaderMap::new();
        cors_headers(&json!({"AllowOrigins": ["*"]}), "https://b.example", &mut h);
        assert_eq!(h["access-control-allow-origin"], "*");
        assert!(h.get("access-control-allow-credentials").is_none());
    }
}
