//! A function URL request as Lambda's payload format 2.0 event, and the function's answer as
//! the HTTP response, both as Lambda maps them. Pure: the listener ([`super::urls`]) does the
//! I/O; a fuzz target drives both directions.
//!
//! Request: header names lower-cased and repeats joined with commas; cookies out of the
//! headers into `cookies`; query parameters decoded, repeats joined with commas; a text body as
//! is, anything else base64 with `isBase64Encoded`. Answer: an object with `statusCode` is
//! taken apart (`headers`, `cookies` as `Set-Cookie`, `body`, `isBase64Encoded`); any other
//! JSON value is a 200 `application/json` body of that JSON.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use hyper::header::HeaderMap;
use serde_json::{json, Map, Value};

use super::routes::percent_decode;
use crate::agent::ids::{self, ACCOUNT_ID};

/// One request to a function URL, as the listener read it.
#[derive(Debug)]
pub struct UrlRequest<'a> {
    /// The URL's id.
    pub url_id: &'a str,
    /// The method.
    pub method: &'a str,
    /// The path, without a `/<url-id>` prefix.
    pub raw_path: &'a str,
    /// The query string, if any.
    pub raw_query: Option<&'a str>,
    /// The headers.
    pub headers: &'a HeaderMap,
    /// The body.
    pub body: &'a [u8],
    /// The client's address.
    pub source_ip: String,
    /// The request id.
    pub request_id: &'a str,
    /// When it arrived.
    pub time: SystemTime,
}

/// Content types whose bodies reach the function as text.
fn is_text(content_type: &str) -> bool {
    let t = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    t.starts_with("text/")
        || t.ends_with("+json")
        || t.ends_with("+xml")
        || matches!(
            t.as_str(),
            "application/json" | "application/xml" | "application/javascript" | "application/x-www-form-urlencoded"
        )
}

/// `&`-separated pairs, decoded (`+` stays: Lambda leaves it), repeats joined with commas.
fn query_parameters(raw: &str) -> Map<String, Value> {
    let mut params: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for pair in raw.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let decode = |s: &str| percent_decode(s).unwrap_or_else(|| s.to_owned());
        params.entry(decode(k)).or_default().push(decode(v));
    }
    params.into_iter().map(|(k, v)| (k, Value::String(v.join(",")))).collect()
}

/// Lambda's payload format 2.0 event of a request.
pub fn event(r: &UrlRequest<'_>) -> Value {
    let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut cookies = Vec::new();
    for (name, value) in r.headers {
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        if name.as_str() == "cookie" {
            cookies.extend(value.split(';').map(str::trim).filter(|c| !c.is_empty()).map(str::to_owned));
        } else {
            headers.entry(name.as_str().to_owned()).or_default().push(value);
        }
    }
    headers.entry("x-forwarded-for".into()).or_insert_with(|| vec![r.source_ip.clone()]);
    headers.entry("x-forwarded-proto".into()).or_insert_with(|| vec!["http".into()]);
    let user_agent = headers.get("user-agent").map(|v| v.join(",")).unwrap_or_default();
    let content_type = headers.get("content-type").map(|v| v.join(",")).unwrap_or_default();
    let headers: Map<String, Value> = headers.into_iter().map(|(k, v)| (k, Value::String(v.join(",")))).collect();
    let since = r.time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let domain = format!("{}.lambda-url.{}.on.aws", r.url_id, ids::region());
    let mut event = json!({
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": r.raw_path,
        "rawQueryString": r.raw_query.unwrap_or(""),
        "headers": headers,
        "requestContext": {
            "accountId": ACCOUNT_ID,
            "apiId": r.url_id,
            "domainName": domain,
            "domainPrefix": r.url_id,
            "http": {
                "method": r.method,
                "path": r.raw_path,
                "protocol": "HTTP/1.1",
                "sourceIp": r.source_ip,
                "userAgent": user_agent,
            },
            "requestId": r.request_id,
            "routeKey": "$default",
            "stage": "$default",
            "time": ids::clf_time(r.time),
            "timeEpoch": since.as_millis() as u64,
        },
        "isBase64Encoded": false,
    });
    if !cookies.is_empty() {
        event["cookies"] = json!(cookies);
    }
    if let Some(q) = r.raw_query.filter(|q| !q.is_empty()) {
        event["queryStringParameters"] = Value::Object(query_parameters(q));
    }
    if !r.body.is_empty() {
        match std::str::from_utf8(r.body) {
            Ok(text) if is_text(&content_type) => event["body"] = json!(text),
            _ => {
                event["body"] = json!(base64::engine::general_purpose::STANDARD.encode(r.body));
                event["isBase64Encoded"] = json!(true);
            }
        }
    }
    event
}

/// The HTTP answer to a function URL request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UrlResponse {
    /// The status.
    pub status: u16,
    /// Headers, in order (`Set-Cookie` once per cookie).
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

/// Why a function's answer is not an HTTP response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResponseError {
    /// Not JSON, or a structured response with a wrong member.
    #[error("the function's response is not a valid function URL response: {0}")]
    Invalid(String),
}

fn header_value(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Maps a function's response payload to the HTTP answer, as Lambda does.
pub fn response(payload: &[u8]) -> Result<UrlResponse, ResponseError> {
    let value: Value = serde_json::from_slice(payload).map_err(|e| ResponseError::Invalid(format!("not JSON: {e}")))?;
    let Some(obj) = value.as_object().filter(|o| o.contains_key("statusCode")) else {
        return Ok(UrlResponse {
            status: 200,
            headers: vec![("content-type".into(), "application/json".into())],
            body: payload.to_vec(),
        });
    };
    let status = obj["statusCode"]
        .as_u64()
        .or_else(|| obj["statusCode"].as_str().and_then(|s| s.parse().ok()))
        .filter(|s| (100..=599).contains(s))
        .ok_or_else(|| ResponseError::Invalid(format!("statusCode {}", obj["statusCode"])))? as u16;
    let mut headers: Vec<(String, String)> = Vec::new();
    match obj.get("headers") {
        None | Some(Value::Null) => {}
        Some(Value::Object(h)) => headers.extend(h.iter().map(|(k, v)| (k.to_ascii_lowercase(), header_value(v)))),
        Some(other) => return Err(ResponseError::Invalid(format!("headers {other}"))),
    }
    match obj.get("cookies") {
        None | Some(Value::Null) => {}
        Some(Value::Array(c)) => headers.extend(c.iter().map(|v| ("set-cookie".to_owned(), header_value(v)))),
        Some(other) => return Err(ResponseError::Invalid(format!("cookies {other}"))),
    }
    if !headers.iter().any(|(k, _)| k == "content-type") {
        headers.push(("content-type".into(), "application/json".into()));
    }
    let body = match obj.get("body") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) if obj.get("isBase64Encoded") == Some(&Value::Bool(true)) => {
            base64::engine::general_purpose::STANDARD
                .decode(s)
                .map_err(|e| ResponseError::Invalid(format!("body is not base64: {e}")))?
        }
        Some(Value::String(s)) => s.clone().into_bytes(),
        Some(other) => other.to_string().into_bytes(),
    };
    Ok(UrlResponse { status, headers, body })
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    fn request<'a>(headers: &'a HeaderMap, query: Option<&'a str>, body: &'a [u8]) -> UrlRequest<'a> {
        UrlRequest {
            url_id: "abc123",
            method: "POST",
            raw_path: "/a/b",
            raw_query: query,
            headers,
            body,
            source_ip: "127.0.0.1".into(),
            request_id: "req-1",
            time: UNIX_EPOCH + std::time::Duration::from_millis(1_764_747_900_123),
        }
    }

    #[test]
    fn a_request_becomes_lambda_s_2_0_event() {
        let mut h = HeaderMap::new();
        h.append("Accept", HeaderValue::from_static("text/html"));
        h.append("accept", HeaderValue::from_static("application/json"));
        h.append("cookie", HeaderValue::from_static("a=1; b=2"));
        h.append("User-Agent", HeaderValue::from_static("curl/8"));
        h.append("content-type", HeaderValue::from_static("application/json"));
        let e = event(&request(&h, Some("x=1&x=2&y=h%20i&z"), br#"{"k":1}"#));
        assert_eq!(e["version"], "2.0");
        assert_eq!(e["routeKey"], "$default");
        assert_eq!((e["rawPath"].as_str(), e["rawQueryString"].as_str()), (Some("/a/b"), Some("x=1&x=2&y=h%20i&z")));
        assert_eq!(e["headers"]["accept"], "text/html,application/json");
        assert!(e["headers"].get("cookie").is_none());
        assert_eq!(e["cookies"], json!(["a=1", "b=2"]));
        assert_eq!(e["queryStringParameters"], json!({"x": "1,2", "y": "h i", "z": ""}));
        assert_eq!(e["body"], r#"{"k":1}"#);
        assert_eq!(e["isBase64Encoded"], false);
        let c = &e["requestContext"];
        assert_eq!(
            c["http"],
            json!({"method": "POST", "path": "/a/b", "protocol": "HTTP/1.1", "sourceIp": "127.0.0.1", "userAgent": "curl/8"})
        );
        assert_eq!((c["requestId"].as_str(), c["apiId"].as_str()), (Some("req-1"), Some("abc123")));
        assert_eq!(c["accountId"], ACCOUNT_ID);
        assert_eq!(c["domainName"], format!("abc123.lambda-url.{}.on.aws", ids::region()));
        assert_eq!(c["time"], "03/Dec/2025:07:45:00 +0000");
        assert_eq!(c["timeEpoch"], 1_764_747_900_123u64);
        assert_eq!(e["headers"]["x-forwarded-for"], "127.0.0.1");
    }

    #[test]
    fn binary_bodies_are_base64_and_empty_ones_absent() {
        let mut h = HeaderMap::new();
        h.append("content-type", HeaderValue::from_static("application/octet-stream"));
        let e = event(&request(&h, None, &[0, 159, 146, 150]));
        assert_eq!((e["body"].as_str(), e["isBase64Encoded"].as_bool()), (Some("AJ+Slg=="), Some(true)));
        assert!(e.get("queryStringParameters").is_none() && e.get("cookies").is_none());
        // Text that is not valid UTF-8 is binary too.
        h.insert("content-type", HeaderValue::from_static("text/plain"));
        assert_eq!(event(&request(&h, None, &[0xff])).get("isBase64Encoded"), Some(&json!(true)));
        let e = event(&request(&h, Some(""), b""));
        assert!(e.get("body").is_none() && e.get("queryStringParameters").is_none());
    }

    #[test]
    fn answers_map_back_as_lambda_maps_them() {
        let r = response(
            br#"{"statusCode": 404, "headers": {"X-A": "1", "n": 2}, "cookies": ["c=1", "d=2"], "body": "gone"}"#,
        )
        .unwrap();
        assert_eq!(r.status, 404);
        assert_eq!(
            r.headers,
            [
                ("x-a".to_string(), "1".to_string()),
                ("n".into(), "2".into()),
                ("set-cookie".into(), "c=1".into()),
                ("set-cookie".into(), "d=2".into()),
                ("content-type".into(), "application/json".into())
            ]
        );
        assert_eq!(r.body, b"gone");
        let r = response(br#"{"statusCode": 200, "body": "AAE=", "isBase64Encoded": true, "headers": {"content-type": "image/png"}}"#)
            .unwrap();
        assert_eq!((r.body, r.headers), (vec![0, 1], vec![("content-type".to_string(), "image/png".to_string())]));
        // A bare JSON value is a 200 application/json body.
        for bare in [&br#"{"hello": "world"}"#[..], b"\"text\"", b"42", b"[1,2]"] {
            let r = response(bare).unwrap();
            assert_eq!((r.status, r.body.as_slice()), (200, bare));
            assert_eq!(r.headers, [("content-type".to_string(), "application/json".to_string())]);
        }
        for bad in [
            &b"not json"[..],
            br#"{"statusCode": 99}"#,
            br#"{"statusCode": 200, "headers": 1}"#,
            br#"{"statusCode": 200, "body": "!", "isBase64Encoded": true}"#,
        ] {
            assert!(response(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }
}
