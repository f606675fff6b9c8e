//! The host side of the vsock device: the listening Unix socket, the `CONNECT <port>` handshake
//! of host processes, the connections keyed by (host port, guest port), and one epoll set that
//! holds all their fds.
//!
//! The muxer knows nothing of guest memory: the device hands it parsed guest packets
//! ([`Muxer::handle_guest_packet`]) and asks it for packets to put in rx buffers
//! ([`Muxer::fill_rx`]). What is owed to the guest is bounded: per-connection flags for control
//! packets, a service queue with at most one entry per connection, and a capped queue of resets
//! for packets that match no connection.

use std::collections::{HashMap, VecDeque};
use std::ffi::OsString;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::io::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::timerfd::TimerFd;

use super::connection::{Connection, State};
use super::packet::{Header, HOST_CID, OP_REQUEST, OP_RST};
use super::Error;

/// The most connections (and host handshakes in progress) per device.
pub const MAX_CONNECTIONS: usize = 1024;
/// How long a host process has to send its `CONNECT` line, and the guest to answer the request.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest `CONNECT <port>\n` line.
const MAX_LINE: usize = 32;
/// Host ports for host-initiated connections count up from here.
const FIRST_HOST_PORT: u32 = 1 << 30;
/// Resets owed for packets that match no connection; more are dropped.
const MAX_PENDING_RSTS: usize = 256;
const EVENT_BATCH: usize = 64;
const MAX_ROUNDS: usize = 4;
const ACCEPT_BATCH: usize = 64;
/// How long to stop accepting after accept failed for lack of fds or memory.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
const TOKEN_LISTENER: u64 = u64::MAX;
const TOKEN_TIMER: u64 = u64::MAX - 1;
const TOKEN_DEVICE: u64 = u64::MAX - 2;

/// A connection's address: (host port, guest port).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct ConnKey {
    local_port: u32,
    peer_port: u32,
}

/// A host process that connected and has not yet sent its `CONNECT` line.
struct Handshake {
    stream: UnixStream,
    line: [u8; MAX_LINE],
    len: usize,
    deadline: Instant,
}

enum Line {
    Pending,
    Bad,
    Port(u32),
}

impl Handshake {
    /// Reads the line a byte at a time, so that nothing after it is consumed.
    fn read_line(&mut self) -> Line {
        loop {
            if self.len == MAX_LINE {
                return Line::Bad;
            }
            let mut b = [0u8; 1];
            match self.stream.read(&mut b) {
                Ok(0) => return Line::Bad,
                Ok(_) if b[0] == b'\n' => {
                    return parse_connect(&self.line[..self.len]).map_or(Line::Bad, Line::Port);
                }
                Ok(_) => {
                    self.line[self.len] = b[0];
                    self.len += 1;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Line::Pending,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Line::Bad,
            }
        }
    }
}

/// Parses `CONNECT <port>` (without the newline).
fn parse_connect(line: &[u8]) -> Option<u32> {
    let digits = line.strip_prefix(b"CONNECT ")?;
    if digits.is_empty() || digits.len() > 10 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// Connects to a Unix socket without blocking: a listener with a full backlog is a failure,
/// not a stall of the event loop.
fn connect_nonblocking(path: &Path) -> io::Result<UnixStream> {
    let bytes = path.as_os_str().as_bytes();
    let mut addr = libc::sockaddr_un { sun_family: libc::AF_UNIX as libc::sa_family_t, sun_path: [0; 108] };
    if bytes.len() >= addr.sun_path.len() {
        return Err(io::Error::from_raw_os_error(libc::ENAMETOOLONG));
    }
    for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    // SAFETY: socket() takes no pointers; the result is checked.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just created and nothing else owns it.
    let stream = unsafe { UnixStream::from_raw_fd(fd) };
    let len = std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1;
    // SAFETY: `addr` is a valid sockaddr_un that outlives the call and `len` is within it (the
    // path is shorter than sun_path and NUL terminated).
    let ret = unsafe {
        libc::connect(stream.as_raw_fd(), (&addr as *const libc::sockaddr_un).cast(), len as libc::socklen_t)
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(stream)
}

/// The host side of a vsock device.
pub struct Muxer {
    guest_cid: u64,
    uds_path: PathBuf,
    listener: UnixListener,
    listener_paused_until: Option<Instant>,
    epoll: Epoll,
    timer: TimerFd,
    timer_deadline: Option<Instant>,
    /// How long a handshake may take (a field so tests can shorten it).
    pub connect_timeout: Duration,
    /// The connection cap (a field so tests can lower it).
    pub max_connections: usize,
    handshakes: HashMap<RawFd, Handshake>,
    conns: HashMap<ConnKey, Connection>,
    keys: HashMap<RawFd, ConnKey>,
    /// Connections with something for the guest, each at most once.
    ready: VecDeque<ConnKey>,
    /// Resets for packets that matched no connection.
    rsts: VecDeque<ConnKey>,
    next_port: u32,
}

impl Muxer {
    /// Binds the listening socket at `uds_path`, replacing a stale socket file.
    pub fn new(guest_cid: u64, uds_path: &Path) -> Result<Muxer, Error> {
        if let Ok(meta) = std::fs::symlink_metadata(uds_path) {
            if meta.file_type().is_socket() {
                std::fs::remove_file(uds_path).map_err(Error::RemoveStale)?;
            }
        }
        let bind = |source| Error::Bind { path: uds_path.display().to_string(), source };
        let listener = UnixListener::bind(uds_path).map_err(bind)?;
        listener.set_nonblocking(true).map_err(bind)?;
        let epoll = Epoll::new().map_err(Error::Epoll)?;
        let timer = TimerFd::new().map_err(|e| Error::Timer(e.into()))?;
        epoll
            .ctl(ControlOperation::Add, listener.as_raw_fd(), EpollEvent::new(EventSet::IN, TOKEN_LISTENER))
            .map_err(Error::Epoll)?;
        epoll
            .ctl(ControlOperation::Add, timer.as_raw_fd(), EpollEvent::new(EventSet::IN, TOKEN_TIMER))
            .map_err(Error::Epoll)?;
        Ok(Muxer {
            guest_cid,
            uds_path: uds_path.to_path_buf(),
            listener,
            listener_paused_until: None,
            epoll,
            timer,
            timer_deadline: None,
            connect_timeout: CONNECT_TIMEOUT,
            max_connections: MAX_CONNECTIONS,
            handshakes: HashMap::new(),
            conns: HashMap::new(),
            keys: HashMap::new(),
            ready: VecDeque::new(),
            rsts: VecDeque::new(),
            next_port: FIRST_HOST_PORT,
        })
    }

    /// The epoll fd: readable when a host socket or the timer needs attention.
    pub fn epoll_fd(&self) -> RawFd {
        self.epoll.as_raw_fd()
    }

    /// Adds the device's own fd (its interrupt timer) to the epoll set, so that the device runs
    /// when it is readable.
    pub fn watch_device_fd(&self, fd: RawFd) -> Result<(), Error> {
        self.epoll.ctl(ControlOperation::Add, fd, EpollEvent::new(EventSet::IN, TOKEN_DEVICE)).map_err(Error::Epoll)
    }

    /// Guest bytes held for host streams, over all connections.
    pub fn buffered_bytes(&self) -> usize {
        self.conns.values().map(Connection::buffered).sum()
    }

    /// Open connections and handshakes.
    pub fn connection_count(&self) -> usize {
        self.conns.len() + self.handshakes.len()
    }

    /// Handles whatever the epoll set reports, without blocking.
    pub fn process_events(&mut self) {
        let mut events = [EpollEvent::default(); EVENT_BATCH];
        for _ in 0..MAX_ROUNDS {
            let n = match self.epoll.wait(0, &mut events) {
                Ok(n) => n,
                Err(_) => return,
            };
            let (mut listener, mut timer, mut others) = (false, false, n);
            for ev in &events[..n] {
                match ev.data() {
                    TOKEN_LISTENER => listener = true,
                    TOKEN_TIMER => timer = true,
                    // The device looks at its own fd after this returns: not a reason for another round.
                    TOKEN_DEVICE => others -= 1,
                    data => self.host_event(data as RawFd, ev.event_set()),
                }
            }
            // New fds come last, so that an event above never lands on a reused fd number.
            if timer {
                self.expire();
            }
            if listener {
                self.accept();
            }
            if others == 0 {
                break;
            }
        }
    }

    fn host_event(&mut self, fd: RawFd, events: EventSet) {
        if self.handshakes.contains_key(&fd) {
            return self.read_handshake(fd);
        }
        let Some(&key) = self.keys.get(&fd) else { return };
        if let Some(conn) = self.conns.get_mut(&key) {
            conn.on_host_event(events);
        }
        self.refresh(key);
    }

    fn accept(&mut self) {
        for _ in 0..ACCEPT_BATCH {
            let stream = match self.listener.accept() {
                Ok((stream, _)) => stream,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if matches!(e.kind(), io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted) => continue,
                Err(_) => {
                    // Out of fds or memory: the listener stays readable, so stop watching it for
                    // a while rather than spin.
                    if self
                        .epoll
                        .ctl(ControlOperation::Delete, self.listener.as_raw_fd(), EpollEvent::default())
                        .is_ok()
                    {
                        let until = Instant::now() + ACCEPT_BACKOFF;
                        self.listener_paused_until = Some(until);
                        self.arm_timer(until);
                    }
                    return;
                }
            };
            // Over the cap, or unusable: dropping the stream closes it.
            if self.connection_count() >= self.max_connections || stream.set_nonblocking(true).is_err() {
                continue;
            }
            let fd = stream.as_raw_fd();
            if self.epoll.ctl(ControlOperation::Add, fd, EpollEvent::new(EventSet::IN, fd as u64)).is_err() {
                continue;
            }
            let deadline = Instant::now() + self.connect_timeout;
            self.handshakes.insert(fd, Handshake { stream, line: [0; MAX_LINE], len: 0, deadline });
            self.arm_timer(deadline);
            // The line is often there already.
            self.read_handshake(fd);
        }
    }

    fn drop_handshake(&mut self, fd: RawFd) {
        if self.handshakes.remove(&fd).is_some() {
            let _ = self.epoll.ctl(ControlOperation::Delete, fd, EpollEvent::default());
        }
    }

    fn read_handshake(&mut self, fd: RawFd) {
        let Some(hs) = self.handshakes.get_mut(&fd) else { return };
        let port = match hs.read_line() {
            Line::Pending => return,
            Line::Bad => return self.drop_handshake(fd),
            Line::Port(port) => port,
        };
        let Some(local_port) = self.alloc_port(port) else { return self.drop_handshake(fd) };
        let Some(hs) = self.handshakes.remove(&fd) else { return };
        let key = ConnKey { local_port, peer_port: port };
        let deadline = Instant::now() + self.connect_timeout;
        let mut conn = Connection::connecting(hs.stream, local_port, port, deadline);
        // Still registered as the handshake was.
        conn.registered = Some(EventSet::IN);
        self.keys.insert(fd, key);
        self.conns.insert(key, conn);
        self.arm_timer(deadline);
        self.refresh(key);
    }

    /// A fresh host port for a connection to guest port `peer_port`.
    fn alloc_port(&mut self, peer_port: u32) -> Option<u32> {
        for _ in 0..=self.conns.len() {
            let port = self.next_port;
            self.next_port = port.checked_add(1).unwrap_or(FIRST_HOST_PORT);
            if !self.conns.contains_key(&ConnKey { local_port: port, peer_port }) {
                return Some(port);
            }
        }
        None
    }

    /// Makes the timer fire by `deadline` at the latest.
    fn arm_timer(&mut self, deadline: Instant) {
        if self.timer_deadline.is_some_and(|t| t <= deadline) {
            return;
        }
        // A zero duration would disarm the timer: a deadline that has passed fires at once.
        let after = deadline.saturating_duration_since(Instant::now()).max(Duration::from_micros(1));
        if self.timer.reset(after, None).is_ok() {
            self.timer_deadline = Some(deadline);
        }
    }

    /// Closes handshakes and connection requests that took too long, resumes a paused listener
    /// and re-arms the timer for what is left. Re-arming or clearing the timer also resets its
    /// expiry count, so it stops being readable.
    fn expire(&mut self) {
        let now = Instant::now();
        self.timer_deadline = None;
        let late: Vec<RawFd> = self.handshakes.iter().filter(|(_, h)| h.deadline <= now).map(|(fd, _)| *fd).collect();
        for fd in late {
            self.drop_handshake(fd);
        }
        let late: Vec<ConnKey> =
            self.conns.iter().filter(|(_, c)| c.deadline.is_some_and(|d| d <= now)).map(|(k, _)| *k).collect();
        for key in late {
            if let Some(conn) = self.conns.get_mut(&key) {
                conn.reset();
            }
            self.refresh(key);
        }
        if self.listener_paused_until.is_some_and(|t| t <= now) {
            let event = EpollEvent::new(EventSet::IN, TOKEN_LISTENER);
            if self.epoll.ctl(ControlOperation::Add, self.listener.as_raw_fd(), event).is_ok() {
                self.listener_paused_until = None;
            } else {
                self.listener_paused_until = Some(now + ACCEPT_BACKOFF);
            }
        }
        let next = self
            .handshakes
            .values()
            .map(|h| h.deadline)
            .chain(self.conns.values().filter_map(|c| c.deadline))
            .chain(self.listener_paused_until)
            .min();
        match next {
            Some(deadline) => self.arm_timer(deadline),
            None => {
                let _ = self.timer.clear();
            }
        }
    }

    /// Brings a connection's epoll registration and rx queue entry in line with its state, and
    /// drops it when it is dead.
    fn refresh(&mut self, key: ConnKey) {
        let Some(conn) = self.conns.get_mut(&key) else { return };
        let mut want = conn.interest();
        if want != conn.registered {
            let fd = conn.fd();
            let result = match (conn.registered, want) {
                (None, Some(set)) => self.epoll.ctl(ControlOperation::Add, fd, EpollEvent::new(set, fd as u64)),
                (Some(_), Some(set)) => self.epoll.ctl(ControlOperation::Modify, fd, EpollEvent::new(set, fd as u64)),
                (Some(_), None) => self.epoll.ctl(ControlOperation::Delete, fd, EpollEvent::default()),
                (None, None) => Ok(()),
            };
            if result.is_err() {
                // A stream we cannot watch is a stream we cannot serve.
                conn.reset();
                if conn.registered.is_some() {
                    let _ = self.epoll.ctl(ControlOperation::Delete, fd, EpollEvent::default());
                }
                want = None;
            }
            conn.registered = want;
        }
        if conn.state() == State::Dead {
            return self.remove(key);
        }
        if conn.has_rx_work() && !conn.queued {
            conn.queued = true;
            self.ready.push_back(key);
        }
    }

    /// Drops a connection, closing its stream.
    fn remove(&mut self, key: ConnKey) {
        let Some(conn) = self.conns.remove(&key) else { return };
        self.keys.remove(&conn.fd());
        if conn.registered.is_some() {
            let _ = self.epoll.ctl(ControlOperation::Delete, conn.fd(), EpollEvent::default());
        }
        if conn.queued {
            self.ready.retain(|k| *k != key);
        }
    }

    fn queue_rst(&mut self, key: ConnKey) {
        // Past the cap the guest learns of the failure by its own timeout instead.
        if self.rsts.len() < MAX_PENDING_RSTS {
            self.rsts.push_back(key);
        }
    }

    /// Handles a checked packet from the guest; `payload` holds its `hdr.len` bytes.
    pub fn handle_guest_packet(&mut self, hdr: &Header, payload: &[u8]) {
        let key = ConnKey { local_port: hdr.dst_port, peer_port: hdr.src_port };
        if let Some(conn) = self.conns.get_mut(&key) {
            conn.on_guest_packet(hdr, payload);
            return self.refresh(key);
        }
        match hdr.op {
            OP_REQUEST => self.guest_connect(hdr, key),
            OP_RST => {}
            _ => self.queue_rst(key),
        }
    }

    /// A packet whose payload could not be read: the stream it belongs to has lost bytes.
    pub fn guest_packet_malformed(&mut self, hdr: &Header) {
        let key = ConnKey { local_port: hdr.dst_port, peer_port: hdr.src_port };
        if let Some(conn) = self.conns.get_mut(&key) {
            conn.reset();
            self.refresh(key);
        }
    }

    /// The guest connects to host port P: connect to `<uds_path>_P`.
    fn guest_connect(&mut self, hdr: &Header, key: ConnKey) {
        if crate::vmm::seccomp::test_trap_port() == Some(hdr.dst_port) {
            crate::vmm::seccomp::break_filter();
        }
        if self.connection_count() >= self.max_connections {
            return self.queue_rst(key);
        }
        let mut path = OsString::from(self.uds_path.as_os_str());
        path.push(format!("_{}", hdr.dst_port));
        let Ok(stream) = connect_nonblocking(Path::new(&path)) else { return self.queue_rst(key) };
        self.keys.insert(stream.as_raw_fd(), key);
        self.conns.insert(key, Connection::accepted(stream, hdr));
        self.refresh(key);
    }

    /// Whether there may be a packet for the guest.
    pub fn has_rx(&self) -> bool {
        !self.rsts.is_empty() || !self.ready.is_empty()
    }

    /// The next packet for the guest, its payload in `buf` (up to `buf.len()` bytes); `None`
    /// when nothing can be sent now.
    pub fn fill_rx(&mut self, buf: &mut [u8]) -> Option<Header> {
        if let Some(key) = self.rsts.pop_front() {
            return Some(Header::stream((HOST_CID, key.local_port), (self.guest_cid, key.peer_port), OP_RST));
        }
        // Round robin; each connection is looked at once at most, so a buffer too small for
        // its data cannot make this spin.
        for _ in 0..self.ready.len() {
            let Some(key) = self.ready.pop_front() else { break };
            let Some(conn) = self.conns.get_mut(&key) else { continue };
            conn.queued = false;
            let hdr = conn.next_packet(self.guest_cid, buf);
            self.refresh(key);
            if hdr.is_some() {
                return hdr;
            }
        }
        None
    }

    /// Drops every connection and handshake (closing their streams); keeps the listener.
    pub fn reset(&mut self) {
        self.rsts.clear();
        self.ready.clear();
        for fd in self.handshakes.keys().copied().collect::<Vec<_>>() {
            self.drop_handshake(fd);
        }
        for key in self.conns.keys().copied().collect::<Vec<_>>() {
            if let Some(conn) = self.conns.get_mut(&key) {
                conn.queued = false;
            }
            self.remove(key);
        }
        if self.listener_paused_until.is_none() {
            self.timer_deadline = None;
            let _ = self.timer.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_connect_lines() {
        assert_eq!(parse_connect(b"CONNECT 5000"), Some(5000));
        assert_eq!(parse_connect(b"CONNECT 4294967295"), Some(u32::MAX));
        assert_eq!(parse_connect(b"CONNECT 4294967296"), None);
        assert_eq!(parse_connect(b"CONNECT "), None);
        assert_eq!(parse_connect(b"CONNECT +5"), None);
        assert_eq!(parse_connect(b"CONNECT 5 "), None);
        assert_eq!(parse_connect(b"connect 5"), None);
        assert_eq!(parse_connect(b"CONNECT 00000000005"), None);
    }
}
