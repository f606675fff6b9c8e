//! The runtime channel: how the agent and ember-init talk about invocations.
//!
//! With `ember.runtime=1` on its command line, ember-init connects to the host (CID 2) on
//! [`RUNTIME_PORT`] as soon as its filesystems are mounted; the VMM's hybrid vsock hands that
//! connection to the agent's listener at `<vsock socket>_9000`. Over that one stream both sides
//! then exchange [frames](Frame):
//!
//! ```text
//! agent                                   ember-init                      runtime (bootstrap)
//!   Config {argv, env, cwd}       ->        starts the runtime, serves 127.0.0.1:9001
//!                                 <-  Log   (its stdout and stderr, as they come)
//!                                 <-  Ready (first GET /runtime/invocation/next)
//!   Invoke {request_id, ...}+event ->       answers the pending /next
//!                                 <-  Response {request_id} + body   (POST .../response)
//!                                 <-  Error {request_id, error_type} + body (POST .../error)
//!                                 <-  InitError {error_type} + body  (POST /runtime/init/error)
//!                                 <-  Exited {reason}   (the runtime process ended)
//! ```
//!
//! SnapStart (`ember.snapstart=1`): `Ready` comes when the runtime's init is over, from
//! `GET /runtime/restore/next` (awslambdaric, after its before-snapshot hooks) or else from the
//! first `/invocation/next`; the agent snapshots the VM right then. A restored guest finds its
//! channel reset, connects again, and the agent speaks first:
//!
//! ```text
//!   Restore {wall_clock_ms} + entropy ->    reseeds the RNG, sets the clock, mounts /tmp,
//!                                           answers the pending restore/next
//!                                 <-  RestoreError {error_type} + body (POST /runtime/restore/error)
//!                                 <-  Ready (the runtime waits for its first event)
//! ```
//!
//! A frame is `len: u32 LE | kind: u8 | meta_len: u32 LE | meta (JSON) | payload`, where `len`
//! counts everything after itself. The payload is raw bytes (the event, the response, log
//! output), so nothing large is ever escaped. The [`Decoder`] is sans-I/O: both the blocking
//! guest and the async agent feed it bytes.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// The host vsock port the guest connects to for the runtime channel.
pub const RUNTIME_PORT: u32 = 9000;
/// The address ember-init serves the Lambda Runtime API on (`AWS_LAMBDA_RUNTIME_API`).
pub const RUNTIME_API_ADDR: &str = "127.0.0.1:9001";
/// The largest frame either side accepts: a 6 MB payload plus its metadata, with room to spare.
pub const MAX_FRAME: usize = 7 * 1024 * 1024;
/// The largest metadata part of a frame.
pub const MAX_META: usize = 64 * 1024;

/// What a frame carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// Agent -> guest, first and once: [`Config`]; no payload.
    Config = 1,
    /// Agent -> guest: [`Invoke`]; the payload is the event.
    Invoke = 2,
    /// Guest -> agent: no metadata; the payload is runtime output (stdout and stderr).
    Log = 3,
    /// Guest -> agent: the runtime asked for its first event (its init is over); no payload.
    Ready = 4,
    /// Guest -> agent: [`InitError`]; the payload is the runtime's error body.
    InitError = 5,
    /// Guest -> agent: [`Response`]; the payload is the function's result.
    Response = 6,
    /// Guest -> agent: [`InvokeError`]; the payload is the runtime's error body.
    Error = 7,
    /// Guest -> agent: [`Exited`]; the runtime process is gone. No payload.
    Exited = 8,
    /// Agent -> guest, first on a channel made again after a restore: [`Restore`]; the payload
    /// is fresh entropy for the guest's RNG.
    Restore = 9,
    /// Guest -> agent: [`InitError`]; an after-restore hook failed (`POST
    /// /runtime/restore/error`); the payload is the runtime's error body.
    RestoreError = 10,
}

impl Kind {
    fn from_u8(b: u8) -> Option<Kind> {
        Some(match b {
            1 => Kind::Config,
            2 => Kind::Invoke,
            3 => Kind::Log,
            4 => Kind::Ready,
            5 => Kind::InitError,
            6 => Kind::Response,
            7 => Kind::Error,
            8 => Kind::Exited,
            9 => Kind::Restore,
            10 => Kind::RestoreError,
            _ => return None,
        })
    }
}

/// How ember-init starts the runtime.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Config {
    /// The runtime's command line (`/var/task/bootstrap`, or `python3 -m awslambdaric handler`).
    pub argv: Vec<String>,
    /// Its whole environment except `AWS_LAMBDA_RUNTIME_API`, which ember-init adds.
    pub env: Vec<(String, String)>,
    /// Its working directory (`/var/task`).
    pub cwd: String,
    /// The host's wall clock when the agent sent this, in milliseconds since the Unix epoch:
    /// ember-init sets the guest's clock to it before the runtime starts, so that deadlines
    /// (`Lambda-Runtime-Deadline-Ms`) mean the same on both sides. 0: leave the clock.
    #[serde(default)]
    pub wall_clock_ms: u64,
}

/// One event for the runtime, with the values of the Runtime API's `Lambda-Runtime-*` headers.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Invoke {
    /// `Lambda-Runtime-Aws-Request-Id`.
    pub request_id: String,
    /// The time left until the deadline when the agent sent the event, in milliseconds.
    /// ember-init adds it to its own clock on receipt for `Lambda-Runtime-Deadline-Ms`, so a
    /// guest clock that drifted from the host's cannot stretch or shrink the timeout.
    pub remaining_ms: u64,
    /// `Lambda-Runtime-Invoked-Function-Arn`.
    pub function_arn: String,
    /// `Lambda-Runtime-Trace-Id`.
    pub trace_id: String,
    /// `Lambda-Runtime-Client-Context`, when the caller sent one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_context: Option<String>,
    /// `Lambda-Runtime-Cognito-Identity`, when the caller sent one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cognito_identity: Option<String>,
}

/// A function result.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    /// The request it answers.
    pub request_id: String,
    /// The guest's memory in use when it answered, in MiB (for the REPORT line).
    pub memory_used_mib: u32,
}

/// A function error (`POST /runtime/invocation/{id}/error`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvokeError {
    /// The request it answers.
    pub request_id: String,
    /// The `Lambda-Runtime-Function-Error-Type` header, if the runtime sent one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_type: Option<String>,
    /// The guest's memory in use when it answered, in MiB.
    pub memory_used_mib: u32,
}

/// A failed init (`POST /runtime/init/error`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InitError {
    /// The `Lambda-Runtime-Function-Error-Type` header, if the runtime sent one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_type: Option<String>,
}

/// What a restored guest is told before anything else.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Restore {
    /// The host's wall clock, in ms since the epoch.
    pub wall_clock_ms: u64,
}

/// The runtime process ended.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exited {
    /// As Lambda words it: `exit status 1`, `signal: killed`.
    pub reason: String,
}

/// Why bytes did not make a frame.
#[derive(Debug, PartialEq, Eq)]
pub enum FrameError {
    /// The length prefix is larger than [`MAX_FRAME`] or too small to hold a kind.
    BadLength(usize),
    /// The kind byte is not a [`Kind`].
    BadKind(u8),
    /// The metadata length runs past the frame or past [`MAX_META`].
    BadMetaLength(usize),
    /// The metadata is not the JSON its kind calls for.
    BadMeta(String),
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::BadLength(n) => write!(f, "frame length {n} out of range"),
            FrameError::BadKind(k) => write!(f, "unknown frame kind {k}"),
            FrameError::BadMetaLength(n) => write!(f, "frame metadata length {n} out of range"),
            FrameError::BadMeta(e) => write!(f, "bad frame metadata: {e}"),
        }
    }
}

impl std::error::Error for FrameError {}

/// A decoded frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// What it carries.
    pub kind: Kind,
    /// Its JSON metadata (empty for kinds without).
    pub meta: Vec<u8>,
    /// Its raw payload.
    pub payload: Vec<u8>,
}

impl Frame {
    /// Parses the metadata as `T`.
    pub fn meta<T: DeserializeOwned>(&self) -> Result<T, FrameError> {
        serde_json::from_slice(&self.meta).map_err(|e| FrameError::BadMeta(e.to_string()))
    }
}

/// Encodes one frame. `meta` is `None` for kinds without metadata.
pub fn encode<M: Serialize>(kind: Kind, meta: Option<&M>, payload: &[u8]) -> Vec<u8> {
    let meta = meta.map(|m| serde_json::to_vec(m).expect("metadata serializes")).unwrap_or_default();
    let len = 1 + 4 + meta.len() + payload.len();
    let mut out = Vec::with_capacity(4 + len);
    out.extend_from_slice(&(len as u32).to_le_bytes());
    out.push(kind as u8);
    out.extend_from_slice(&(meta.len() as u32).to_le_bytes());
    out.extend_from_slice(&meta);
    out.extend_from_slice(payload);
    out
}

/// Encodes a frame that has no metadata.
pub fn encode_bare(kind: Kind, payload: &[u8]) -> Vec<u8> {
    encode::<()>(kind, None, payload)
}

/// Splits a byte stream into frames. Holds at most one partial frame ([`MAX_FRAME`] bytes).
#[derive(Default)]
pub struct Decoder {
    buf: Vec<u8>,
    start: usize,
}

impl Decoder {
    /// A decoder with nothing buffered.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds bytes read from the stream.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.start > 0 && self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// The next whole frame, `Ok(None)` if more bytes are needed. After an error the stream is
    /// out of step and must be dropped.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        let avail = &self.buf[self.start..];
        if avail.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_le_bytes(avail[..4].try_into().expect("4 bytes")) as usize;
        if !(5..=MAX_FRAME).contains(&len) {
            return Err(FrameError::BadLength(len));
        }
        // Check the header as soon as it is here, before buffering a long body behind it.
        if avail.len() >= 9 {
            Kind::from_u8(avail[4]).ok_or(FrameError::BadKind(avail[4]))?;
            let meta_len = u32::from_le_bytes(avail[5..9].try_into().expect("4 bytes")) as usize;
            if meta_len > MAX_META || meta_len > len - 5 {
                return Err(FrameError::BadMetaLength(meta_len));
            }
        }
        if avail.len() < 4 + len {
            return Ok(None);
        }
        let kind = Kind::from_u8(avail[4]).ok_or(FrameError::BadKind(avail[4]))?;
        let meta_len = u32::from_le_bytes(avail[5..9].try_into().expect("4 bytes")) as usize;
        let meta = avail[9..9 + meta_len].to_vec();
        let payload = avail[9 + meta_len..4 + len].to_vec();
        self.start += 4 + len;
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        } else if self.start > MAX_FRAME {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        Ok(Some(Frame { kind, meta, payload }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_byte_by_byte() {
        let inv = Invoke { request_id: "r1".into(), remaining_ms: 42, ..Default::default() };
        let mut bytes = encode(Kind::Invoke, Some(&inv), b"{\"k\":1}");
        bytes.extend(encode_bare(Kind::Log, b"hello\n"));
        bytes.extend(encode_bare(Kind::Ready, b""));
        let mut d = Decoder::new();
        let mut frames = Vec::new();
        for b in bytes {
            d.push(&[b]);
            while let Some(f) = d.next_frame().unwrap() {
                frames.push(f);
            }
        }
        assert_eq!(frames.len(), 3);
        assert_eq!(frames[0].kind, Kind::Invoke);
        assert_eq!(frames[0].meta::<Invoke>().unwrap(), inv);
        assert_eq!(frames[0].payload, b"{\"k\":1}");
        assert_eq!((frames[1].kind, frames[1].payload.as_slice()), (Kind::Log, &b"hello\n"[..]));
        assert_eq!((frames[2].kind, frames[2].payload.len()), (Kind::Ready, 0));
    }

    #[test]
    fn hostile_headers_are_errors_not_allocations() {
        let mut d = Decoder::new();
        d.push(&u32::MAX.to_le_bytes());
        assert_eq!(d.next_frame(), Err(FrameError::BadLength(u32::MAX as usize)));

        let mut d = Decoder::new();
        d.push(&[6, 0, 0, 0, 99, 0, 0, 0, 0]);
        assert_eq!(d.next_frame(), Err(FrameError::BadKind(99)));

        let mut d = Decoder::new();
        d.push(&[100, 0, 0, 0, 3, 200, 0, 0, 0]);
        assert_eq!(d.next_frame(), Err(FrameError::BadMetaLength(200)));

        let mut d = Decoder::new();
        d.push(&encode_bare(Kind::Response, b"x"));
        assert!(d.next_frame().unwrap().unwrap().meta::<Response>().is_err());
    }
}
