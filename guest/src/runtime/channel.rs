//! The guest end of the runtime channel ([`ember_proto::runtime`]): the vsock stream to the agent.
//!
//! It owns the stream and nothing else: [`connect`] opens it, [`read_config`] takes the first
//! frame, [`read_invokes`] (a task of the API server) turns what follows into [`Invocation`]s, and
//! [`Channel`] is the one writer every guest-to-agent frame goes through (a mutex around the
//! stream, so that frames never interleave; each frame is encoded into one buffer and written
//! with one `write_all`). What to do when the stream breaks is the caller's decision: the
//! writer calls the `on_broken` function it was given, the reader returns a [`ChannelError`].
//!
//! A SnapStart guest's channel is [`Channel::reconnecting`]: a restore resets every vsock
//! connection, so a failed write waits (up to [`RECONNECT_TIMEOUT`]) for the reader's side to
//! connect again and [`Channel::replace`] the stream, then sends the whole frame on the new one.

use std::io::{self, Read, Write};
use std::os::fd::AsRawFd as _;
use std::os::fd::RawFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};
use std::{fmt, thread};

use ember_proto::runtime::{self, Config, Decoder, Frame, FrameError, Invoke, Kind, Restore};
use hyper::body::Bytes;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::sync::mpsc::UnboundedSender;

/// How much the reader asks the stream for at once.
const READ_CHUNK: usize = 64 << 10;
/// The pause between two connection attempts.
const CONNECT_RETRY: Duration = Duration::from_millis(20);
/// How long a reconnecting channel's writers wait for the stream to be replaced.
pub const RECONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// One event for the runtime, as the agent sent it.
#[derive(Debug)]
pub struct Invocation {
    /// Its `Lambda-Runtime-*` header values.
    pub invoke: Invoke,
    /// The event (the body of the `/next` answer).
    pub event: Bytes,
    /// `Lambda-Runtime-Deadline-Ms`: when it arrived plus the time it had left, on this clock.
    pub deadline_ms: u64,
}

/// Why the channel stopped.
#[derive(Debug)]
pub enum ChannelError {
    /// Reading the stream failed.
    Read(io::Error),
    /// The agent closed its end.
    Closed,
    /// Bytes that are not a frame.
    Frame(FrameError),
    /// A frame the agent must not send at this point.
    Unexpected(Kind),
    /// The API server is gone, so nobody takes invocations any more.
    ApiGone,
}

impl fmt::Display for ChannelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChannelError::Read(e) => write!(f, "read: {e}"),
            ChannelError::Closed => write!(f, "closed by the host"),
            ChannelError::Frame(e) => write!(f, "{e}"),
            ChannelError::Unexpected(kind) => write!(f, "unexpected {kind:?} frame"),
            ChannelError::ApiGone => write!(f, "the Runtime API server stopped"),
        }
    }
}

/// Connects to the host (`cid` 2) on `port`, retrying until `timeout` has passed: the agent's
/// listener may not be up yet when the guest gets here.
pub fn connect(cid: u32, port: u32, timeout: Duration) -> io::Result<UnixStream> {
    let deadline = Instant::now() + timeout;
    loop {
        match connect_once(cid, port) {
            Ok(stream) => return Ok(stream),
            Err(e) if Instant::now() + CONNECT_RETRY >= deadline => return Err(e),
            Err(_) => thread::sleep(CONNECT_RETRY),
        }
    }
}

fn connect_once(cid: u32, port: u32) -> io::Result<UnixStream> {
    let (sock, addr, len) = crate::vsock::socket(cid, port)?;
    let fd = sock.as_raw_fd();
    loop {
        // SAFETY: addr is a valid sockaddr_vm of `len` bytes that outlives the call.
        let r = unsafe { libc::connect(fd, (&addr as *const libc::sockaddr_vm).cast(), len) };
        if r == 0 {
            // A connected AF_VSOCK stream socket reads and writes like any stream; UnixStream is
            // only the std type that wraps a stream fd.
            return Ok(UnixStream::from(sock));
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Reads the first frame, which must be a [`Config`]. `decoder` keeps whatever came after it.
pub fn read_config(stream: &mut UnixStream, decoder: &mut Decoder) -> Result<Config, ChannelError> {
    let frame = first_frame(stream, decoder, Kind::Config)?;
    frame.meta().map_err(ChannelError::Frame)
}

/// Reads the first frame of a channel made again after a restore, which must be a
/// [`Kind::Restore`]; returns it and the entropy it carries.
pub fn read_restore(stream: &mut UnixStream, decoder: &mut Decoder) -> Result<(Restore, Vec<u8>), ChannelError> {
    let frame = first_frame(stream, decoder, Kind::Restore)?;
    let restore = frame.meta().map_err(ChannelError::Frame)?;
    Ok((restore, frame.payload))
}

fn first_frame(stream: &mut UnixStream, decoder: &mut Decoder, kind: Kind) -> Result<Frame, ChannelError> {
    let frame = next_frame(stream, decoder, &mut vec![0; READ_CHUNK])?;
    if frame.kind != kind {
        return Err(ChannelError::Unexpected(frame.kind));
    }
    Ok(frame)
}

/// Reads [`Kind::Invoke`] frames until the stream ends or fails, and hands each to `invokes`.
/// Returns why it stopped; any other kind of frame is an error.
///
/// A task of the API server's runtime, so that an event reaches the waiting `/next` without a
/// thread switch. The stream stays a blocking socket (the writers share its file description);
/// reads are made non-blocking per call with `MSG_DONTWAIT` instead.
pub async fn read_invokes(
    stream: UnixStream,
    mut decoder: Decoder,
    invokes: UnboundedSender<Invocation>,
) -> ChannelError {
    // SAFETY: the fd is owned by the UnixStream that the AsyncFd takes, so it stays open and
    // the same until the AsyncFd drops it, and `as_raw_fd` always returns it.
    let stream = match unsafe { AsyncFd::register_with_interest(stream, Interest::READABLE | Interest::ERROR) } {
        Ok(stream) => stream,
        Err(e) => return ChannelError::Read(e.into()),
    };
    let mut buf = vec![0; READ_CHUNK];
    loop {
        loop {
            let frame = match decoder.next_frame() {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(e) => return ChannelError::Frame(e),
            };
            if frame.kind != Kind::Invoke {
                return ChannelError::Unexpected(frame.kind);
            }
            let invoke = match frame.meta::<Invoke>() {
                Ok(invoke) => invoke,
                Err(e) => return ChannelError::Frame(e),
            };
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
            let deadline_ms = now.as_millis() as u64 + invoke.remaining_ms;
            if invokes.send(Invocation { invoke, event: Bytes::from(frame.payload), deadline_ms }).is_err() {
                return ChannelError::ApiGone;
            }
        }
        // ERROR too: a vsock connection reset (a snapshot restore) shows only as EPOLLERR,
        // which readable() alone would never wake for.
        let mut guard = match stream.ready(Interest::READABLE | Interest::ERROR).await {
            Ok(guard) => guard,
            Err(e) => return ChannelError::Read(e),
        };
        match guard.try_io(|s| recv_nonblocking(s.get_ref(), &mut buf)) {
            Ok(Ok(0)) => return ChannelError::Closed,
            Ok(Ok(n)) => decoder.push(&buf[..n]),
            Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
            Ok(Err(e)) => return ChannelError::Read(e),
            Err(_would_block) => {}
        }
    }
}

/// One `recv` that does not wait, whatever the socket's blocking mode.
fn recv_nonblocking(stream: &UnixStream, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for writes of `buf.len()` bytes for the duration of the call, and
    // the fd is owned by `stream`, which outlives it.
    let n = unsafe { libc::recv(stream.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

/// The next whole frame of the stream, reading as needed.
fn next_frame(stream: &mut UnixStream, decoder: &mut Decoder, buf: &mut [u8]) -> Result<Frame, ChannelError> {
    loop {
        if let Some(frame) = decoder.next_frame().map_err(ChannelError::Frame)? {
            return Ok(frame);
        }
        match stream.read(buf) {
            Ok(0) => return Err(ChannelError::Closed),
            Ok(n) => decoder.push(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(ChannelError::Read(e)),
        }
    }
}

/// The writing half of the channel, shared by every thread that sends frames.
pub struct Channel {
    /// None while a reconnecting channel waits for its new stream.
    stream: Mutex<Option<UnixStream>>,
    replaced: Condvar,
    reconnects: bool,
    on_broken: fn(&io::Error),
    /// The runtime's output pipes being forwarded.
    outputs: Mutex<Vec<Arc<Output>>>,
}

/// One of the runtime's output pipes, as the thread that forwards it says: an answer to an
/// invocation waits until what the runtime wrote before it is sent ([`Channel::output_sent`]),
/// so that the invocation's output comes before its end in the agent's log.
pub struct Output {
    fd: RawFd,
    /// Set after the pipe polled readable and before it is read; cleared once what was read
    /// is sent. So output the pipe no longer holds is either sent or marked busy.
    busy: AtomicBool,
}

impl Output {
    /// The pipe `fd` (which must stay open until [`Channel::unwatch`]).
    pub fn new(fd: RawFd) -> Arc<Output> {
        Arc::new(Output { fd, busy: AtomicBool::new(false) })
    }

    /// The pipe.
    pub fn fd(&self) -> RawFd {
        self.fd
    }

    /// Marks the pipe as being read (before the read) or not (after the send).
    pub fn set_busy(&self, busy: bool) {
        self.busy.store(busy, Ordering::SeqCst);
    }

    /// Whether everything written to the pipe so far has been sent: nothing left in it, then
    /// nothing read and unsent.
    fn sent(&self) -> bool {
        let mut unread: libc::c_int = 0;
        // SAFETY: FIONREAD writes one int to the pointer we pass; the fd is a pipe kept open
        // while it is watched.
        let ok = unsafe { libc::ioctl(self.fd, libc::FIONREAD, &mut unread) } == 0;
        (!ok || unread == 0) && !self.busy.load(Ordering::SeqCst)
    }
}

impl Channel {
    /// Writes frames to `stream`; calls `on_broken` when a write fails.
    pub fn new(stream: UnixStream, on_broken: fn(&io::Error)) -> Self {
        Channel {
            stream: Mutex::new(Some(stream)),
            replaced: Condvar::new(),
            reconnects: false,
            on_broken,
            outputs: Mutex::new(Vec::new()),
        }
    }

    /// Tracks an output pipe until [`Channel::unwatch`].
    pub fn watch(&self, output: &Arc<Output>) {
        self.outputs.lock().unwrap_or_else(PoisonError::into_inner).push(Arc::clone(output));
    }

    /// Stops tracking an output pipe (before it is closed).
    pub fn unwatch(&self, output: &Arc<Output>) {
        self.outputs.lock().unwrap_or_else(PoisonError::into_inner).retain(|o| !Arc::ptr_eq(o, output));
    }

    /// Whether all the runtime's output so far has been sent.
    pub fn output_sent(&self) -> bool {
        self.outputs.lock().unwrap_or_else(PoisonError::into_inner).iter().all(|o| o.sent())
    }

    /// Like [`Channel::new`], but a failed write waits for [`Channel::replace`] and sends the
    /// frame again on the new stream; `on_broken` is called only if none comes in time.
    pub fn reconnecting(stream: UnixStream, on_broken: fn(&io::Error)) -> Self {
        Channel { reconnects: true, ..Channel::new(stream, on_broken) }
    }

    /// Puts a new stream in place of a broken one and wakes the writers waiting for it.
    pub fn replace(&self, stream: UnixStream) {
        *self.stream.lock().unwrap_or_else(PoisonError::into_inner) = Some(stream);
        self.replaced.notify_all();
    }

    /// Sends one frame with metadata.
    pub fn send<M: serde::Serialize>(&self, kind: Kind, meta: &M, payload: &[u8]) {
        self.write(&runtime::encode(kind, Some(meta), payload));
    }

    /// Sends one frame without metadata.
    pub fn send_bare(&self, kind: Kind, payload: &[u8]) {
        self.write(&runtime::encode_bare(kind, payload));
    }

    fn write(&self, frame: &[u8]) {
        let mut stream = self.stream.lock().unwrap_or_else(PoisonError::into_inner);
        let deadline = Instant::now() + RECONNECT_TIMEOUT;
        loop {
            if let Some(s) = stream.as_mut() {
                match s.write_all(frame) {
                    Ok(()) => return,
                    Err(e) if !self.reconnects => {
                        drop(stream);
                        (self.on_broken)(&e);
                        return;
                    }
                    // Half a frame may have gone out on the old stream; the new one gets it whole.
                    Err(_) => *stream = None,
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                drop(stream);
                (self.on_broken)(&io::Error::new(io::ErrorKind::TimedOut, "the channel was not made again in time"));
                return;
            }
            stream = self.replaced.wait_timeout(stream, left).unwrap_or_else(PoisonError::into_inner).0;
        }
    }
}

impl std::error::Error for ChannelError {}

#[cfg(test)]
pub(super) mod tests {
    use std::sync::Arc;

    use ember_proto::runtime::Config;

    use super::*;

    /// The agent's end of an in-process channel.
    pub struct Host {
        stream: UnixStream,
        decoder: Decoder,
    }

    impl Host {
        /// A connected pair: the agent's end, the guest's writer, and the guest's reading end.
        pub fn pair() -> (Host, Arc<Channel>, UnixStream) {
            let (host, guest) = UnixStream::pair().unwrap();
            host.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
            let channel = Arc::new(Channel::new(guest.try_clone().unwrap(), |e| panic!("channel broke: {e}")));
            (Host { stream: host, decoder: Decoder::new() }, channel, guest)
        }

        /// The next frame from the guest.
        pub fn recv(&mut self) -> Frame {
            next_frame(&mut self.stream, &mut self.decoder, &mut [0; READ_CHUNK]).unwrap()
        }

        /// Checks that the guest sends nothing more for a while.
        pub fn assert_quiet(&mut self) {
            self.stream.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
            match next_frame(&mut self.stream, &mut self.decoder, &mut [0; 64]) {
                Err(ChannelError::Read(e)) if e.kind() == io::ErrorKind::WouldBlock => {}
                other => panic!("expected nothing, got {other:?}"),
            }
            self.stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        }

        pub fn send_invoke(&mut self, invoke: &Invoke, event: &[u8]) {
            self.stream.write_all(&runtime::encode(Kind::Invoke, Some(invoke), event)).unwrap();
        }
    }

    #[test]
    fn config_then_invokes() {
        let (mut host, guest) = UnixStream::pair().unwrap();
        let config = Config {
            argv: vec!["/var/task/bootstrap".into()],
            env: vec![],
            cwd: "/var/task".into(),
            ..Default::default()
        };
        let invoke = Invoke { request_id: "r".into(), ..Default::default() };
        // Both in one write: what follows the config must not be lost.
        let mut bytes = runtime::encode(Kind::Config, Some(&config), b"");
        bytes.extend(runtime::encode(Kind::Invoke, Some(&invoke), b"{}"));
        host.write_all(&bytes).unwrap();
        host.write_all(&runtime::encode_bare(Kind::Ready, b"")).unwrap();

        let mut decoder = Decoder::new();
        let mut reader = guest.try_clone().unwrap();
        assert_eq!(read_config(&mut reader, &mut decoder).unwrap(), config);
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let rt = tokio::runtime::Builder::new_current_thread().enable_io().build().unwrap();
        // A kind the agent does not send stops the reader.
        let stopped = rt.block_on(read_invokes(guest, decoder, tx));
        assert!(matches!(stopped, ChannelError::Unexpected(Kind::Ready)), "{stopped}");
        let first = rx.try_recv().unwrap();
        assert_eq!((first.invoke, first.event.as_ref()), (invoke, &b"{}"[..]));

        // Frames that come in pieces, then the end of the stream.
        let (mut host, guest) = UnixStream::pair().unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let writer = thread::spawn(move || {
            for i in 0..3 {
                let frame = runtime::encode(Kind::Invoke, Some(&Invoke::default()), &vec![i; 200_000]);
                for piece in frame.chunks(70_000) {
                    host.write_all(piece).unwrap();
                    thread::sleep(Duration::from_millis(5));
                }
            }
        });
        let stopped = rt.block_on(read_invokes(guest, Decoder::new(), tx));
        writer.join().unwrap();
        assert!(matches!(stopped, ChannelError::Closed), "{stopped}");
        for i in 0..3 {
            assert_eq!(rx.try_recv().unwrap().event, vec![i; 200_000]);
        }
    }

    #[test]
    fn a_closed_or_garbled_channel_is_an_error() {
        let (host, mut guest) = UnixStream::pair().unwrap();
        drop(host);
        assert!(matches!(read_config(&mut guest, &mut Decoder::new()), Err(ChannelError::Closed)));

        let (mut host, mut guest) = UnixStream::pair().unwrap();
        host.write_all(&[0xff; 16]).unwrap();
        assert!(matches!(read_config(&mut guest, &mut Decoder::new()), Err(ChannelError::Frame(_))));

        let (mut host, mut guest) = UnixStream::pair().unwrap();
        host.write_all(&runtime::encode_bare(Kind::Log, b"")).unwrap();
        assert!(matches!(read_config(&mut guest, &mut Decoder::new()), Err(ChannelError::Unexpected(Kind::Log))));
    }

    #[test]
    fn writes_are_whole_frames() {
        let (host, guest) = UnixStream::pair().unwrap();
        let channel = Arc::new(Channel::new(guest, |e| panic!("channel broke: {e}")));
        let writers: Vec<_> = (0..4u8)
            .map(|i| {
                let channel = Arc::clone(&channel);
                thread::spawn(move || {
                    for _ in 0..50 {
                        channel.send_bare(Kind::Log, &vec![i; 10_000]);
                    }
                })
            })
            .collect();
        let mut host = Host { stream: host, decoder: Decoder::new() };
        for _ in 0..200 {
            let f = host.recv();
            assert_eq!((f.kind, f.payload.len()), (Kind::Log, 10_000));
            assert!(f.payload.iter().all(|&b| b == f.payload[0]), "frames interleaved");
        }
        for w in writers {
            w.join().unwrap();
        }
    }

    #[test]
    fn a_broken_writer_calls_on_broken() {
        static BROKEN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
        let (host, guest) = UnixStream::pair().unwrap();
        drop(host);
        let channel = Channel::new(guest, |_| BROKEN.store(true, std::sync::atomic::Ordering::SeqCst));
        channel.send_bare(Kind::Ready, b"");
        assert!(BROKEN.load(std::sync::atomic::Ordering::SeqCst));
    }

    #[test]
    fn connecting_nowhere_gives_up() {
        // No vsock transport (or no listener) on the test host: an error, after the timeout.
        let start = Instant::now();
        assert!(connect(libc::VMADDR_CID_HOST, 1, Duration::from_millis(100)).is_err());
        assert!(start.elapsed() < Duration::from_secs(5));
    }
}
