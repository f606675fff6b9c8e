//! Function URL input both ways: a request's method, path, query, headers and body into the
//! payload format 2.0 event (which must serialize), and a function's answer (guest output)
//! into an HTTP response. Neither may panic.
#![no_main]

use ember::agent::api::url_event::{event, response, UrlRequest};
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&split, rest)) = data.split_first() else { return };
    let cut = usize::from(split).min(rest.len());
    let (head, body) = rest.split_at(cut);
    let _ = response(body);
    let text = String::from_utf8_lossy(head);
    let mut lines = text.lines();
    let target = lines.next().unwrap_or("/");
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    let mut headers = HeaderMap::new();
    for line in lines {
        if let Some((k, v)) = line.split_once(':') {
            if let (Ok(k), Ok(v)) = (HeaderName::from_bytes(k.trim().as_bytes()), HeaderValue::from_str(v.trim())) {
                headers.append(k, v);
            }
        }
    }
    let request = UrlRequest {
        url_id: "fuzz",
        method: "POST",
        raw_path: path,
        raw_query: query,
        headers: &headers,
        body,
        source_ip: "127.0.0.1".into(),
        request_id: "r",
        time: std::time::SystemTime::UNIX_EPOCH,
    };
    serde_json::to_vec(&event(&request)).expect("the event serializes");
});
