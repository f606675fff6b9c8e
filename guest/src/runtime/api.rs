//! The Lambda Runtime API (`/2018-06-01/runtime/...`) that the runtime process talks to.
//!
//! HTTP/1.1 by hyper (keep-alive, Content-Length and chunked bodies) on a tokio current-thread
//! runtime in one thread of its own, `runtime-api`, which also runs the channel's reader task
//! (see [`start`]). It owns the invocation state: the queue of
//! events the agent sent and the request ids handed out and not yet answered. It never touches
//! the runtime process. The exchange:
//!
//! - `GET /runtime/invocation/next`: the first one sends [`Kind::Ready`] to the agent. Waiters
//!   take turns on the queue (a fair async mutex around the receiver), so each event goes to
//!   exactly one `/next`; an event that arrives with no `/next` waiting stays queued. The
//!   receive is cancel-safe: a `/next` whose connection goes away loses no event.
//! - `POST /runtime/invocation/{id}/response` and `.../error`: the body becomes a
//!   [`Kind::Response`] or [`Kind::Error`] frame and the id is answered; an unknown or already
//!   answered id is a 400 `InvalidRequestID`. A body over [`MAX_RESPONSE`] is a 413 to the
//!   runtime and a `Function.ResponseSizeTooLarge` error to the agent.
//! - `POST /runtime/init/error`: a [`Kind::InitError`] frame (a body over the limit becomes a
//!   `Function.ResponseSizeTooLarge` one, as for the other two); after the runtime's first
//!   `/next` (its init is over), a 403 `InvalidStateTransition`, as Lambda answers.
//! - SnapStart only (`ember.snapstart=1`; elsewhere a 404): `GET /runtime/restore/next` sends
//!   [`Kind::Ready`] (the agent snapshots the VM now) and answers once the guest has been
//!   restored ([`Api::restored`]); `POST /runtime/restore/error` (a failed after-restore hook)
//!   becomes a [`Kind::RestoreError`] frame.
//! - Anything else: a 404 with a Lambda error body.
//!
//! Bodies are read as they stream in, never more than [`MAX_RESPONSE`] bytes of one, and frames
//! are written from this thread through the shared [`Channel`] (a short blocking write).

use std::collections::HashSet;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::Duration;

use ember_proto::runtime::{self, InitError, InvokeError, Kind};
use http_body_util::{BodyExt as _, Full};
use hyper::body::{Body as _, Bytes, Incoming};
use hyper::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc::{self, UnboundedReceiver, UnboundedSender};

use super::channel::{Channel, Invocation};
use crate::probe;

/// The API version every path starts with.
const PREFIX: &str = "/2018-06-01";
/// The largest response (or error) body Lambda accepts from a runtime, in bytes.
pub const MAX_RESPONSE: usize = 6_291_556;
/// The error type the agent gets for a body over [`MAX_RESPONSE`].
const TOO_LARGE_TYPE: &str = "Function.ResponseSizeTooLarge";
/// The error body of that case, for the agent and for the runtime's 413.
const TOO_LARGE_BODY: &str = "{\"errorMessage\":\"Response payload size exceeded maximum allowed payload size \
                              (6291556 bytes).\",\"errorType\":\"Function.ResponseSizeTooLarge\"}";
/// How much of a rejected body is read and dropped so that the connection stays usable; past
/// that the connection is closed instead.
const MAX_DRAIN: u64 = 64 << 20;
/// The pause after a failed accept (say, out of file descriptors) before the next.
const ACCEPT_RETRY: Duration = Duration::from_millis(10);
/// The longest an answer waits for the runtime's output before it to be sent.
const OUTPUT_WAIT: Duration = Duration::from_millis(100);

const ERROR_TYPE_HEADER: &str = "lambda-runtime-function-error-type";

type Reply = Response<Full<Bytes>>;

/// The Runtime API's state, shared by the connections.
pub struct Api {
    channel: Arc<Channel>,
    queue: tokio::sync::Mutex<UnboundedReceiver<Invocation>>,
    ready_sent: AtomicBool,
    /// This guest's init is snapshotted (SnapStart).
    snap_start: bool,
    /// The runtime waits in `restore/next`.
    restore_waiting: AtomicBool,
    /// Wakes that `restore/next` after a restore.
    restored: tokio::sync::Notify,
    /// Request ids handed to the runtime and not answered yet.
    open: Mutex<HashSet<String>>,
    memory: probe::MemoryUsed,
}

/// Why a request failed: each turns into a status and a Lambda error body in
/// [`ApiError::into_reply`], and nowhere else.
#[derive(Debug)]
enum ApiError {
    /// No such endpoint.
    NotFound(Method, String),
    /// An id that was never handed out, or was answered already.
    InvalidRequestId(String),
    /// A body over [`MAX_RESPONSE`].
    TooLarge,
    /// The request body could not be read (the runtime went away mid-request).
    BadBody(hyper::Error),
    /// The channel to the agent is gone; ember-init is powering off.
    ShuttingDown,
    /// An init error after the init is over (the runtime has asked for its first event).
    InvalidStateTransition,
}

impl ApiError {
    fn into_reply(self) -> Reply {
        let (status, error_type, message) = match self {
            ApiError::NotFound(method, path) => {
                (StatusCode::NOT_FOUND, "NotFound", format!("no route {method} {path}"))
            }
            ApiError::InvalidRequestId(id) => {
                (StatusCode::BAD_REQUEST, "InvalidRequestID", format!("invalid request id {id:?}"))
            }
            ApiError::TooLarge => return reply(StatusCode::PAYLOAD_TOO_LARGE, TOO_LARGE_BODY),
            ApiError::BadBody(e) => (StatusCode::BAD_REQUEST, "InvalidBody", format!("cannot read the body: {e}")),
            ApiError::ShuttingDown => {
                (StatusCode::INTERNAL_SERVER_ERROR, "ShuttingDown", "the runtime channel is closed".to_string())
            }
            ApiError::InvalidStateTransition => (
                StatusCode::FORBIDDEN,
                "InvalidStateTransition",
                "State transition from Ready to InitError failed for runtime: the init is over".to_string(),
            ),
        };
        let body = serde_json::json!({ "errorMessage": message, "errorType": error_type });
        reply(status, &body.to_string())
    }
}

/// A JSON reply.
fn reply(status: StatusCode, json: &str) -> Reply {
    let mut r = Response::new(Full::new(Bytes::copy_from_slice(json.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// The reply to a response or an error that was passed on.
fn accepted() -> Reply {
    reply(StatusCode::ACCEPTED, "{\"status\":\"OK\"}")
}

/// What a request is for.
#[derive(Debug, PartialEq, Eq)]
enum Route {
    Next,
    Response(String),
    Error(String),
    InitError,
    RestoreNext,
    RestoreError,
    Unknown,
}

fn route(method: &Method, path: &str) -> Route {
    let Some(rest) = path.strip_prefix(PREFIX) else {
        return Route::Unknown;
    };
    let segments: Vec<&str> = rest.strip_prefix('/').unwrap_or("").split('/').collect();
    match (method, segments.as_slice()) {
        (&Method::GET, ["runtime", "invocation", "next"]) => Route::Next,
        (&Method::POST, ["runtime", "invocation", id, "response"]) if !id.is_empty() => Route::Response(id.to_string()),
        (&Method::POST, ["runtime", "invocation", id, "error"]) if !id.is_empty() => Route::Error(id.to_string()),
        (&Method::POST, ["runtime", "init", "error"]) => Route::InitError,
        (&Method::GET, ["runtime", "restore", "next"]) => Route::RestoreNext,
        (&Method::POST, ["runtime", "restore", "error"]) => Route::RestoreError,
        _ => Route::Unknown,
    }
}

/// A request body as read.
enum Read {
    /// All of it.
    Complete(Vec<u8>),
    /// It is over [`MAX_RESPONSE`]; the rest is still to be drained.
    TooLarge(Incoming),
}

/// Reads a body of at most [`MAX_RESPONSE`] bytes as it streams in.
async fn read_body(mut body: Incoming) -> Result<Read, ApiError> {
    let announced = body.size_hint().lower();
    if announced > MAX_RESPONSE as u64 {
        return Ok(Read::TooLarge(body));
    }
    let mut buf = Vec::with_capacity(announced as usize);
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(ApiError::BadBody)?;
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > MAX_RESPONSE {
                return Ok(Read::TooLarge(body));
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(Read::Complete(buf))
}

/// Reads and drops the rest of a body that is not wanted, so that the runtime sees the reply
/// rather than a reset while it sends; gives up (and hyper closes the connection) past
/// [`MAX_DRAIN`].
async fn drain(mut body: Incoming) {
    let mut seen = 0u64;
    while seen <= MAX_DRAIN && body.size_hint().lower() <= MAX_DRAIN {
        match body.frame().await {
            Some(Ok(frame)) => seen += frame.data_ref().map_or(0, |d| d.len() as u64),
            _ => return,
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Sets one `Lambda-Runtime-*` header; a value that is not a valid header (a bug on the agent's
/// side) is left out and logged rather than failing the invocation.
fn set_header(headers: &mut HeaderMap, name: &'static str, value: &str) {
    match HeaderValue::from_str(value) {
        Ok(v) => {
            headers.insert(HeaderName::from_static(name), v);
        }
        Err(_) => log_error!("runtime API: {name}: invalid header value {value:?}"),
    }
}

impl Api {
    /// The API state, sending frames to `channel`, and the sender its invocations come from.
    /// With `snap_start` the restore endpoints are served.
    pub fn new(channel: Arc<Channel>, snap_start: bool) -> (Arc<Api>, UnboundedSender<Invocation>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let api = Api {
            channel,
            queue: tokio::sync::Mutex::new(rx),
            ready_sent: AtomicBool::new(false),
            snap_start,
            restore_waiting: AtomicBool::new(false),
            restored: tokio::sync::Notify::new(),
            open: Mutex::new(HashSet::new()),
            memory: probe::MemoryUsed::open(),
        };
        (Arc::new(api), tx)
    }

    async fn handle(&self, req: Request<Incoming>) -> Reply {
        let error_type = req.headers().get(ERROR_TYPE_HEADER).and_then(|v| v.to_str().ok()).map(str::to_string);
        let result = match route(req.method(), req.uri().path()) {
            Route::Next => self.next().await,
            Route::Response(id) => self.response(id, req.into_body()).await,
            Route::Error(id) => self.error(id, error_type, req.into_body()).await,
            Route::InitError => self.init_error(error_type, req.into_body()).await,
            Route::RestoreNext if self.snap_start => self.restore_next().await,
            Route::RestoreError if self.snap_start => self.restore_error(error_type, req.into_body()).await,
            Route::RestoreNext | Route::RestoreError | Route::Unknown => {
                Err(ApiError::NotFound(req.method().clone(), req.uri().path().to_string()))
            }
        };
        result.unwrap_or_else(ApiError::into_reply)
    }

    /// Tells the agent, once, that the runtime is ready: its init is over (it waits for an
    /// event, or for a restore).
    fn send_ready(&self) {
        if !self.ready_sent.swap(true, Ordering::AcqRel) {
            self.channel.send_bare(Kind::Ready, &[]);
        }
    }

    /// The guest has been restored from a snapshot (its channel is connected again): a
    /// runtime waiting in `restore/next` is answered and its next `/next` tells the agent it
    /// is ready; a runtime that was snapshotted waiting in `/next` is ready now.
    pub fn restored(&self) {
        self.ready_sent.store(false, Ordering::Release);
        if self.restore_waiting.swap(false, Ordering::AcqRel) {
            self.restored.notify_one();
        } else {
            self.send_ready();
        }
    }

    async fn restore_next(&self) -> Result<Reply, ApiError> {
        self.restore_waiting.store(true, Ordering::Release);
        self.send_ready();
        self.restored.notified().await;
        Ok(reply(StatusCode::OK, "{}"))
    }

    async fn restore_error(&self, error_type: Option<String>, body: Incoming) -> Result<Reply, ApiError> {
        let (meta, error) = match read_body(body).await? {
            Read::Complete(error) => (InitError { error_type }, error),
            Read::TooLarge(rest) => {
                drain(rest).await;
                (InitError { error_type: Some(TOO_LARGE_TYPE.to_string()) }, TOO_LARGE_BODY.as_bytes().to_vec())
            }
        };
        self.channel.send(Kind::RestoreError, &meta, &error);
        Ok(accepted())
    }

    async fn next(&self) -> Result<Reply, ApiError> {
        self.send_ready();
        let Invocation { invoke, event, deadline_ms } =
            self.queue.lock().await.recv().await.ok_or(ApiError::ShuttingDown)?;
        lock(&self.open).insert(invoke.request_id.clone());
        let mut r = Response::new(Full::new(event));
        let h = r.headers_mut();
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        set_header(h, "lambda-runtime-aws-request-id", &invoke.request_id);
        set_header(h, "lambda-runtime-deadline-ms", &deadline_ms.to_string());
        set_header(h, "lambda-runtime-invoked-function-arn", &invoke.function_arn);
        set_header(h, "lambda-runtime-trace-id", &invoke.trace_id);
        if let Some(v) = &invoke.client_context {
            set_header(h, "lambda-runtime-client-context", v);
        }
        if let Some(v) = &invoke.cognito_identity {
            set_header(h, "lambda-runtime-cognito-identity", v);
        }
        Ok(r)
    }

    /// Fails (after draining the body) unless `id` was handed out and not answered.
    async fn check_open(&self, id: &str, body: Incoming) -> Result<Incoming, ApiError> {
        if lock(&self.open).contains(id) {
            return Ok(body);
        }
        drain(body).await;
        Err(ApiError::InvalidRequestId(id.to_string()))
    }

    /// Marks `id` answered; fails if another request answered it meanwhile.
    fn close(&self, id: &str) -> Result<(), ApiError> {
        if lock(&self.open).remove(id) {
            Ok(())
        } else {
            Err(ApiError::InvalidRequestId(id.to_string()))
        }
    }

    /// Tells the agent that the answer to `id` was too large, and the runtime with a 413.
    async fn too_large(&self, id: String, rest: Incoming) -> Result<Reply, ApiError> {
        self.close(&id)?;
        let meta = InvokeError {
            request_id: id,
            error_type: Some(TOO_LARGE_TYPE.to_string()),
            memory_used_mib: self.memory.mib(),
        };
        self.after_output().await;
        self.channel.send(Kind::Error, &meta, TOO_LARGE_BODY.as_bytes());
        drain(rest).await;
        Err(ApiError::TooLarge)
    }

    /// Waits (at most [`OUTPUT_WAIT`]) until what the runtime wrote so far is sent, so that
    /// an invocation's output reaches the agent before its answer.
    async fn after_output(&self) {
        let deadline = tokio::time::Instant::now() + OUTPUT_WAIT;
        while !self.channel.output_sent() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
    }

    async fn response(&self, id: String, body: Incoming) -> Result<Reply, ApiError> {
        let body = self.check_open(&id, body).await?;
        match read_body(body).await? {
            Read::Complete(result) => {
                self.close(&id)?;
                let meta = runtime::Response { request_id: id, memory_used_mib: self.memory.mib() };
                self.after_output().await;
                self.channel.send(Kind::Response, &meta, &result);
                Ok(accepted())
            }
            Read::TooLarge(rest) => self.too_large(id, rest).await,
        }
    }

    async fn error(&self, id: String, error_type: Option<String>, body: Incoming) -> Result<Reply, ApiError> {
        let body = self.check_open(&id, body).await?;
        match read_body(body).await? {
            Read::Complete(error) => {
                self.close(&id)?;
                let meta = InvokeError { request_id: id, error_type, memory_used_mib: self.memory.mib() };
                self.after_output().await;
                self.channel.send(Kind::Error, &meta, &error);
                Ok(accepted())
            }
            Read::TooLarge(rest) => self.too_large(id, rest).await,
        }
    }

    async fn init_error(&self, error_type: Option<String>, body: Incoming) -> Result<Reply, ApiError> {
        // Once the runtime has asked for an event its init is over; an init error now would
        // end an instance that may be serving an invocation.
        if self.ready_sent.load(Ordering::Acquire) {
            drain(body).await;
            return Err(ApiError::InvalidStateTransition);
        }
        match read_body(body).await? {
            Read::Complete(error) => {
                self.after_output().await;
                self.channel.send(Kind::InitError, &InitError { error_type }, &error);
                Ok(accepted())
            }
            Read::TooLarge(rest) => {
                let meta = InitError { error_type: Some(TOO_LARGE_TYPE.to_string()) };
                self.after_output().await;
                self.channel.send(Kind::InitError, &meta, TOO_LARGE_BODY.as_bytes());
                drain(rest).await;
                Err(ApiError::TooLarge)
            }
        }
    }
}

/// Serves the API on `listener` in a new thread, `runtime-api`, with its own current-thread
/// tokio runtime, which also runs `reader` (the channel's reading end, which feeds the API its
/// invocations). The listener is already bound, so the runtime process may connect as soon as
/// this returns.
pub fn start<R>(listener: std::net::TcpListener, api: Arc<Api>, reader: R) -> io::Result<()>
where
    R: Future<Output = ()> + Send + 'static,
{
    listener.set_nonblocking(true)?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_io().enable_time().build()?;
    let listener = {
        let _in_rt = rt.enter();
        TcpListener::from_std(listener)?
    };
    thread::Builder::new().name("runtime-api".into()).spawn(move || {
        rt.block_on(async move {
            tokio::spawn(reader);
            serve(listener, api).await
        })
    })?;
    Ok(())
}

/// Accepts connections forever, one task each.
async fn serve(listener: TcpListener, api: Arc<Api>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(serve_connection(stream, Arc::clone(&api)));
            }
            Err(e) => {
                log_error!("runtime API: accept: {e}");
                tokio::time::sleep(ACCEPT_RETRY).await;
            }
        }
    }
}

async fn serve_connection(stream: TcpStream, api: Arc<Api>) {
    // Replies are small and latency is what matters: no Nagle delay.
    if let Err(e) = stream.set_nodelay(true) {
        log_error!("runtime API: TCP_NODELAY: {e}");
    }
    let service = service_fn(move |req| {
        let api = Arc::clone(&api);
        async move { Ok::<_, Infallible>(api.handle(req).await) }
    });
    // No header read timeout: a runtime may keep an idle connection as long as it likes (and
    // hyper would need a timer for it). Errors are the runtime's connection going away.
    let _ = http1::Builder::new()
        .keep_alive(true)
        .header_read_timeout(None)
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead as _, BufReader, Read as _, Write as _};
    use std::net::SocketAddr;
    use std::time::Duration;

    use ember_proto::runtime::{Frame, Invoke, Response as ResponseMeta};

    use super::super::channel::read_invokes;
    use super::super::channel::tests::Host;
    use super::*;

    /// A Runtime API server on an ephemeral port, wired to an in-process agent.
    fn server() -> (SocketAddr, Host) {
        let (host, channel, guest) = Host::pair();
        let (api, invokes) = Api::new(channel, false);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let reader = async move {
            read_invokes(guest, ember_proto::runtime::Decoder::new(), invokes).await;
        };
        start(listener, api, reader).unwrap();
        (addr, host)
    }

    struct Reply {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    }

    impl Reply {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
        }

        fn json(&self) -> serde_json::Value {
            serde_json::from_slice(&self.body).unwrap()
        }
    }

    /// A bare HTTP/1.1 client on one kept-alive connection, to control exactly what is sent.
    struct Client {
        writer: std::net::TcpStream,
        reader: BufReader<std::net::TcpStream>,
    }

    impl Client {
        fn connect(addr: SocketAddr) -> Client {
            let writer = std::net::TcpStream::connect(addr).unwrap();
            writer.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
            Client { reader: BufReader::new(writer.try_clone().unwrap()), writer }
        }

        fn send(&mut self, raw: &[u8]) {
            self.writer.write_all(raw).unwrap();
        }

        fn send_request(&mut self, method: &str, path: &str, headers: &[&str], body: &[u8]) {
            let mut head = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n");
            for h in headers {
                head.push_str(&format!("{h}\r\n"));
            }
            if method == "POST" {
                head.push_str(&format!("Content-Length: {}\r\n", body.len()));
            }
            head.push_str("\r\n");
            let mut raw = head.into_bytes();
            raw.extend_from_slice(body);
            self.send(&raw);
        }

        fn reply(&mut self) -> Reply {
            let mut line = String::new();
            self.reader.read_line(&mut line).unwrap();
            let status = line.split_whitespace().nth(1).unwrap().parse().unwrap();
            let mut headers = Vec::new();
            loop {
                let mut line = String::new();
                self.reader.read_line(&mut line).unwrap();
                let line = line.trim_end();
                if line.is_empty() {
                    break;
                }
                let (name, value) = line.split_once(':').unwrap();
                headers.push((name.to_ascii_lowercase(), value.trim().to_string()));
            }
            let len: usize = headers.iter().find(|(n, _)| n == "content-length").unwrap().1.parse().unwrap();
            let mut body = vec![0; len];
            self.reader.read_exact(&mut body).unwrap();
            Reply { status, headers, body }
        }

        fn request(&mut self, method: &str, path: &str, headers: &[&str], body: &[u8]) -> Reply {
            self.send_request(method, path, headers, body);
            self.reply()
        }
    }

    fn invoke(id: &str) -> Invoke {
        Invoke {
            request_id: id.into(),
            remaining_ms: 3_000,
            function_arn: "arn:aws:lambda:us-east-1:123456789012:function:f".into(),
            trace_id: "Root=1-5e1b4151-5ac6c58f0b0f6d8a5c3e2b1a;Sampled=0".into(),
            ..Default::default()
        }
    }

    const NEXT: &str = "/2018-06-01/runtime/invocation/next";

    fn response_path(id: &str) -> String {
        format!("/2018-06-01/runtime/invocation/{id}/response")
    }

    fn assert_response_frame(frame: &Frame, id: &str, payload: &[u8]) {
        assert_eq!(frame.kind, Kind::Response);
        let meta: ResponseMeta = frame.meta().unwrap();
        assert_eq!(meta.request_id, id);
        assert!(meta.memory_used_mib > 0);
        assert!(frame.payload == payload, "payload of {} bytes", frame.payload.len());
    }

    #[test]
    fn routes() {
        assert_eq!(route(&Method::GET, NEXT), Route::Next);
        assert_eq!(route(&Method::POST, NEXT), Route::Unknown);
        assert_eq!(route(&Method::POST, &response_path("a-1")), Route::Response("a-1".into()));
        assert_eq!(route(&Method::POST, "/2018-06-01/runtime/invocation/a/error"), Route::Error("a".into()));
        assert_eq!(route(&Method::POST, "/2018-06-01/runtime/invocation//error"), Route::Unknown);
        assert_eq!(route(&Method::POST, "/2018-06-01/runtime/init/error"), Route::InitError);
        assert_eq!(route(&Method::GET, "/2018-06-01/runtime/init/error"), Route::Unknown);
        assert_eq!(route(&Method::GET, "/runtime/invocation/next"), Route::Unknown);
        assert_eq!(route(&Method::GET, "/2018-06-01"), Route::Unknown);
        assert!(TOO_LARGE_BODY.contains(&format!("({MAX_RESPONSE} bytes)")));
        let body: serde_json::Value = serde_json::from_str(TOO_LARGE_BODY).unwrap();
        assert_eq!(body["errorType"], TOO_LARGE_TYPE);
    }

    #[test]
    fn invocations_round_trip_on_one_connection() {
        let (addr, mut host) = server();
        let mut client = Client::connect(addr);

        // The first /next tells the agent that init is over, then waits for an event.
        client.send_request("GET", NEXT, &[], b"");
        assert_eq!(host.recv().kind, Kind::Ready);
        let mut first = invoke("req-1");
        first.client_context = Some("{\"custom\":{}}".into());
        host.send_invoke(&first, b"{\"n\":1}");
        let r = client.reply();
        assert_eq!(r.status, 200);
        assert_eq!(r.body, b"{\"n\":1}");
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert_eq!(r.header("lambda-runtime-aws-request-id"), Some("req-1"));
        let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
        let deadline: u64 = r.header("lambda-runtime-deadline-ms").unwrap().parse().unwrap();
        assert!(deadline > now_ms && deadline <= now_ms + 3_000, "deadline {deadline} vs now {now_ms}");
        assert_eq!(r.header("lambda-runtime-invoked-function-arn"), Some(first.function_arn.as_str()));
        assert_eq!(r.header("lambda-runtime-trace-id"), Some(first.trace_id.as_str()));
        assert_eq!(r.header("lambda-runtime-client-context"), Some("{\"custom\":{}}"));
        assert_eq!(r.header("lambda-runtime-cognito-identity"), None);

        let r = client.request("POST", &response_path("req-1"), &[], b"\"result\"");
        assert_eq!((r.status, r.body.as_slice()), (202, &b"{\"status\":\"OK\"}"[..]));
        assert_response_frame(&host.recv(), "req-1", b"\"result\"");

        // The second /next, on the same connection, sends no second Ready; a chunked response.
        client.send_request("GET", NEXT, &[], b"");
        host.send_invoke(&invoke("req-2"), b"{}");
        let r = client.reply();
        assert_eq!((r.status, r.header("lambda-runtime-aws-request-id")), (200, Some("req-2")));
        client.send(
            b"POST /2018-06-01/runtime/invocation/req-2/response HTTP/1.1\r\nHost: x\r\n\
              Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
        );
        assert_eq!(client.reply().status, 202);
        assert_response_frame(&host.recv(), "req-2", b"hello world");

        // Answered ids and ids never handed out are refused, and nothing reaches the agent.
        let r = client.request("POST", &response_path("req-2"), &[], b"again");
        assert_eq!((r.status, r.json()["errorType"].as_str()), (400, Some("InvalidRequestID")));
        let r = client.request("POST", "/2018-06-01/runtime/invocation/nope/error", &[], b"{}");
        assert_eq!(r.status, 400);
        let r = client.request("GET", "/2018-06-01/runtime/nothing", &[], b"");
        assert_eq!((r.status, r.json()["errorType"].as_str()), (404, Some("NotFound")));
        host.assert_quiet();
    }

    #[test]
    fn an_event_that_comes_first_waits_for_next() {
        let (addr, mut host) = server();
        host.send_invoke(&invoke("early"), b"[1]");
        let mut client = Client::connect(addr);
        let r = client.request("GET", NEXT, &[], b"");
        assert_eq!((r.status, r.body.as_slice()), (200, &b"[1]"[..]));
        assert_eq!(host.recv().kind, Kind::Ready);
    }

    #[test]
    fn each_event_goes_to_one_next() {
        let (addr, mut host) = server();
        let (tx, rx) = std::sync::mpsc::channel();
        for _ in 0..2 {
            let tx = tx.clone();
            thread::spawn(move || {
                let mut client = Client::connect(addr);
                let r = client.request("GET", NEXT, &[], b"");
                tx.send(r.header("lambda-runtime-aws-request-id").unwrap().to_string()).unwrap();
            });
        }
        assert_eq!(host.recv().kind, Kind::Ready);
        host.send_invoke(&invoke("a"), b"{}");
        assert_eq!(rx.recv_timeout(Duration::from_secs(10)).unwrap(), "a");
        assert!(rx.recv_timeout(Duration::from_millis(200)).is_err(), "one event, one /next");
        host.send_invoke(&invoke("b"), b"{}");
        assert_eq!(rx.recv_timeout(Duration::from_secs(10)).unwrap(), "b");
        host.assert_quiet();
    }

    #[test]
    fn a_next_that_went_away_loses_no_event() {
        let (addr, mut host) = server();
        let mut gone = Client::connect(addr);
        gone.send_request("GET", NEXT, &[], b"");
        assert_eq!(host.recv().kind, Kind::Ready);
        drop(gone);
        thread::sleep(Duration::from_millis(200));
        host.send_invoke(&invoke("kept"), b"{}");
        let r = Client::connect(addr).request("GET", NEXT, &[], b"");
        assert_eq!(r.header("lambda-runtime-aws-request-id"), Some("kept"));
    }

    #[test]
    fn expect_100_continue_is_answered() {
        // libcurl (awslambdaric) sends large bodies only after a 100 Continue, or after a 1 s
        // wait for one.
        let (addr, mut host) = server();
        let mut client = Client::connect(addr);
        host.send_invoke(&invoke("c"), b"{}");
        assert_eq!(client.request("GET", NEXT, &[], b"").status, 200);
        assert_eq!(host.recv().kind, Kind::Ready);
        client.send(
            b"POST /2018-06-01/runtime/invocation/c/response HTTP/1.1\r\nHost: x\r\n\
                      Expect: 100-continue\r\nContent-Length: 2\r\n\r\n",
        );
        let mut line = String::new();
        client.reader.read_line(&mut line).unwrap();
        assert_eq!(line, "HTTP/1.1 100 Continue\r\n");
        line.clear();
        client.reader.read_line(&mut line).unwrap();
        assert_eq!(line, "\r\n");
        client.send(b"ok");
        assert_eq!(client.reply().status, 202);
        assert_response_frame(&host.recv(), "c", b"ok");
    }

    #[test]
    fn errors_and_init_errors_reach_the_agent() {
        let (addr, mut host) = server();
        let mut client = Client::connect(addr);
        let body = b"{\"errorMessage\":\"boom\",\"errorType\":\"Runtime.ImportModuleError\"}";
        let header = "Lambda-Runtime-Function-Error-Type: Runtime.ImportModuleError";
        let r = client.request("POST", "/2018-06-01/runtime/init/error", &[header], body);
        assert_eq!(r.status, 202);
        let f = host.recv();
        assert_eq!((f.kind, f.payload.as_slice()), (Kind::InitError, &body[..]));
        assert_eq!(f.meta::<InitError>().unwrap().error_type.as_deref(), Some("Runtime.ImportModuleError"));

        host.send_invoke(&invoke("e1"), b"{}");
        assert_eq!(client.request("GET", NEXT, &[], b"").status, 200);
        assert_eq!(host.recv().kind, Kind::Ready);
        let r = client.request(
            "POST",
            "/2018-06-01/runtime/invocation/e1/error",
            &["Lambda-Runtime-Function-Error-Type: Unhandled"],
            b"{\"errorMessage\":\"x\"}",
        );
        assert_eq!(r.status, 202);
        let f = host.recv();
        let meta: InvokeError = f.meta().unwrap();
        assert_eq!(
            (f.kind, meta.request_id.as_str(), meta.error_type.as_deref()),
            (Kind::Error, "e1", Some("Unhandled"))
        );
        assert_eq!(f.payload, b"{\"errorMessage\":\"x\"}");

        host.send_invoke(&invoke("e2"), b"{}");
        assert_eq!(client.request("GET", NEXT, &[], b"").status, 200);
        let r = client.request("POST", "/2018-06-01/runtime/invocation/e2/error", &[], b"");
        assert_eq!(r.status, 202);
        let meta: InvokeError = host.recv().meta().unwrap();
        assert_eq!((meta.request_id.as_str(), meta.error_type), ("e2", None));

        // The init is over: a late init error is refused and reaches nobody.
        let r = client.request("POST", "/2018-06-01/runtime/init/error", &[header], body);
        assert_eq!(r.status, 403);
        host.send_invoke(&invoke("e3"), b"{}");
        assert_eq!(client.request("GET", NEXT, &[], b"").status, 200);
        assert_eq!(client.request("POST", "/2018-06-01/runtime/invocation/e3/response", &[], b"1").status, 202);
        assert_response_frame(&host.recv(), "e3", b"1");
    }

    #[test]
    fn the_largest_response_passes_and_a_larger_one_is_413() {
        let (addr, mut host) = server();
        let mut client = Client::connect(addr);

        host.send_invoke(&invoke("max"), b"{}");
        assert_eq!(client.request("GET", NEXT, &[], b"").status, 200);
        assert_eq!(host.recv().kind, Kind::Ready);
        let largest = vec![b'x'; MAX_RESPONSE];
        client.send_request("POST", &response_path("max"), &[], &largest);
        assert_response_frame(&host.recv(), "max", &largest);
        assert_eq!(client.reply().status, 202);

        // Announced too large by Content-Length, and found too large while reading chunks: a 413
        // on a connection that stays usable, and the error for the agent.
        let too_large = vec![b'x'; MAX_RESPONSE + 1];
        for (id, chunked) in [("cl", false), ("chunked", true)] {
            host.send_invoke(&invoke(id), b"{}");
            assert_eq!(client.request("GET", NEXT, &[], b"").status, 200);
            if chunked {
                let mut raw =
                    format!("POST {} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n", response_path(id))
                        .into_bytes();
                for chunk in too_large.chunks(1 << 20) {
                    raw.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
                    raw.extend_from_slice(chunk);
                    raw.extend_from_slice(b"\r\n");
                }
                raw.extend_from_slice(b"0\r\n\r\n");
                client.send(&raw);
            } else {
                client.send_request("POST", &response_path(id), &[], &too_large);
            }
            let r = client.reply();
            assert_eq!((r.status, r.body.as_slice()), (413, TOO_LARGE_BODY.as_bytes()));
            let f = host.recv();
            let meta: InvokeError = f.meta().unwrap();
            assert_eq!((f.kind, meta.request_id.as_str()), (Kind::Error, id));
            assert_eq!(meta.error_type.as_deref(), Some(TOO_LARGE_TYPE));
            assert_eq!(f.payload, TOO_LARGE_BODY.as_bytes());
            // The id is answered.
            assert_eq!(client.request("POST", &response_path(id), &[], b"{}").status, 400);
        }
        host.assert_quiet();
    }
}
