//! Fuzzes the agent's HTTP API, which parses every request a client sends: the routing table,
//! function references and qualifiers, query strings, the members check and the JSON shapes of
//! every operation, and the use cases behind them. One agent per process, on a temporary data
//! dir, whose launches fail at once (there is no guest to boot), so that everything short of a
//! microVM runs.
//!
//! Input: the first byte picks the method (GET, POST, PUT, DELETE); then the path and query up
//! to the first newline; then one optional header line (`Name: value`) up to the next newline;
//! the rest is the body. The target passes if no input panics, hangs, or answers anything
//! but a well-formed Lambda response (an error always has its `x-amzn-ErrorType`).
#![no_main]

#[path = "common/agent.rs"]
mod agent;

use bytes::Bytes;
use ember::agent::api;
use http_body_util::Full;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&method, rest)) = data.split_first() else { return };
    let method = ["GET", "POST", "PUT", "DELETE"][usize::from(method % 4)];
    let mut parts = rest.splitn(3, |b| *b == b'\n');
    let Ok(uri) = std::str::from_utf8(parts.next().unwrap_or_default()) else { return };
    let header = parts.next().and_then(|h| std::str::from_utf8(h).ok()).and_then(|h| h.split_once(": "));
    let body = Bytes::copy_from_slice(parts.next().unwrap_or_default());
    let mut req = hyper::Request::builder().method(method).uri(format!("/{}", uri.trim_start_matches('/')));
    if let Some((name, value)) = header {
        req = req.header(name, value);
    }
    let Ok(req) = req.body(Full::new(body)) else { return };
    let f = agent::fixture("api");
    let response = f.runtime.block_on(api::handle(f.agent.clone(), req));
    assert!(response.headers().contains_key("x-amzn-requestid"));
    if response.status().is_client_error() || response.status().is_server_error() {
        assert!(response.headers().contains_key("x-amzn-errortype"), "an error without its type");
    }
});
