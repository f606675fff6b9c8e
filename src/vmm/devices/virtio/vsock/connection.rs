//! One vsock connection: a host Unix stream paired with a guest port, its state, and the credit
//! that bounds what each side may send the other.
//!
//! Host to guest, nothing is buffered here: bytes are read from the stream straight into the
//! guest's rx buffer, and only as many as the guest has credit for. Guest to host, bytes go
//! straight to the stream and what it does not take waits in `out`, which the guest's respect
//! of our `buf_alloc` bounds (a guest that overruns it is reset). The muxer owns the
//! connection's place in the epoll set and the rx service queue; the connection says what it
//! wants ([`Connection::interest`], [`Connection::has_rx_work`]).

use std::collections::VecDeque;
use std::io::{self, IoSlice, Read, Write};
use std::net::Shutdown;
use std::os::unix::io::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::Instant;

use vmm_sys_util::epoll::EventSet;

use super::packet::{
    Header, HOST_CID, OP_CREDIT_REQUEST, OP_CREDIT_UPDATE, OP_REQUEST, OP_RESPONSE, OP_RST, OP_RW, OP_SHUTDOWN,
    SHUTDOWN_RCV, SHUTDOWN_SEND,
};

/// The receive buffer we advertise to the guest for each connection.
pub const BUF_ALLOC: u32 = 256 * 1024;
/// Tell the guest about freed buffer space once this much was forwarded since we last did.
const CREDIT_UPDATE_THRESHOLD: u32 = 64 * 1024;
/// Give a drained write buffer's memory back when it grew past this.
const KEEP_CAPACITY: usize = 16 * 1024;

// Control packets owed to the guest, sent as soon as an rx buffer is free.
const P_REQUEST: u8 = 1;
const P_RESPONSE: u8 = 1 << 1;
const P_CREDIT_UPDATE: u8 = 1 << 2;
const P_SHUTDOWN: u8 = 1 << 3;
const P_RST: u8 = 1 << 4;

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// The host connected: we owe or sent the guest an `OP_REQUEST` and wait for its answer.
    Connecting,
    /// Data flows.
    Established,
    /// The stream is shut; an `OP_RST` for the guest is pending.
    Closing,
    /// Nothing left to do: the muxer drops it.
    Dead,
}

/// A connection between a host Unix stream and a guest port.
pub struct Connection {
    stream: UnixStream,
    local_port: u32,
    peer_port: u32,
    state: State,
    pending: u8,
    /// When a `Connecting` connection gives up.
    pub deadline: Option<Instant>,
    // Host to guest.
    peer_buf_alloc: u32,
    peer_fwd_cnt: u32,
    tx_cnt: u32,
    /// The stream may have bytes (or EOF) we have not read.
    readable: bool,
    host_eof: bool,
    host_hup: bool,
    // Guest to host.
    rx_cnt: u32,
    fwd_cnt: u32,
    last_fwd_cnt_sent: u32,
    out: VecDeque<u8>,
    /// Leading bytes of `out` that are ours (the `OK` line), not the guest's.
    out_own: usize,
    guest_shut_rcv: bool,
    guest_shut_send: bool,
    write_shut: bool,
    /// The events the stream is registered for in the muxer's epoll, if it is.
    pub registered: Option<EventSet>,
    /// Whether the connection sits in the muxer's rx service queue.
    pub queued: bool,
}

impl Connection {
    fn new(stream: UnixStream, local_port: u32, peer_port: u32, state: State, pending: u8) -> Self {
        Connection {
            stream,
            local_port,
            peer_port,
            state,
            pending,
            deadline: None,
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
            tx_cnt: 0,
            readable: false,
            host_eof: false,
            host_hup: false,
            rx_cnt: 0,
            fwd_cnt: 0,
            last_fwd_cnt_sent: 0,
            out: VecDeque::new(),
            out_own: 0,
            guest_shut_rcv: false,
            guest_shut_send: false,
            write_shut: false,
            registered: None,
            queued: false,
        }
    }

    /// A connection a host process asked for (`CONNECT <peer_port>`): an `OP_REQUEST` is owed.
    pub fn connecting(stream: UnixStream, local_port: u32, peer_port: u32, deadline: Instant) -> Self {
        let mut conn = Connection::new(stream, local_port, peer_port, State::Connecting, P_REQUEST);
        conn.deadline = Some(deadline);
        conn
    }

    /// A connection the guest asked for with `request`, already connected on the host: an
    /// `OP_RESPONSE` is owed.
    pub fn accepted(stream: UnixStream, request: &Header) -> Self {
        let mut conn = Connection::new(stream, request.dst_port, request.src_port, State::Established, P_RESPONSE);
        conn.peer_buf_alloc = request.buf_alloc;
        conn.peer_fwd_cnt = request.fwd_cnt;
        conn
    }

    /// The host stream's fd.
    pub fn fd(&self) -> RawFd {
        self.stream.as_raw_fd()
    }

    /// The connection's state.
    pub fn state(&self) -> State {
        self.state
    }

    /// Guest bytes waiting for the host stream to take them.
    pub fn buffered(&self) -> usize {
        self.out.len()
    }

    /// How many more bytes the guest can take (`peer_buf_alloc - (tx_cnt - peer_fwd_cnt)`).
    fn credit(&self) -> u32 {
        self.peer_buf_alloc.saturating_sub(self.tx_cnt.wrapping_sub(self.peer_fwd_cnt))
    }

    /// Whether host bytes may go to the guest at all (credit aside).
    fn may_send_data(&self) -> bool {
        self.state == State::Established && !self.host_eof && !self.guest_shut_rcv
    }

    /// Whether the connection has a packet for the guest, given an rx buffer.
    pub fn has_rx_work(&self) -> bool {
        self.state != State::Dead && (self.pending != 0 || (self.readable && self.may_send_data() && self.credit() > 0))
    }

    /// The events to watch the stream for; `None` to leave it out of the epoll set (so that a
    /// hang-up, which epoll always reports, does not keep waking the loop).
    pub fn interest(&self) -> Option<EventSet> {
        if matches!(self.state, State::Closing | State::Dead) || self.host_hup {
            return None;
        }
        let mut set = EventSet::empty();
        if !self.readable && self.may_send_data() && self.credit() > 0 {
            set |= EventSet::IN;
        }
        if !self.out.is_empty() {
            set |= EventSet::OUT;
        }
        Some(set)
    }

    /// Shuts the stream and owes the guest an `OP_RST` (or nothing, when the guest never heard
    /// of the connection).
    pub fn reset(&mut self) {
        if matches!(self.state, State::Closing | State::Dead) {
            return;
        }
        let _ = self.stream.shutdown(Shutdown::Both);
        self.out = VecDeque::new();
        self.out_own = 0;
        self.deadline = None;
        if self.state == State::Connecting && self.pending & P_REQUEST != 0 {
            self.state = State::Dead;
        } else {
            self.state = State::Closing;
            self.pending = P_RST;
        }
    }

    /// The epoll set reported `events` on the stream.
    pub fn on_host_event(&mut self, events: EventSet) {
        if events.intersects(EventSet::IN | EventSet::READ_HANG_UP) {
            self.readable = true;
        }
        if events.intersects(EventSet::HANG_UP | EventSet::ERROR) {
            self.host_hup = true;
            self.readable = true;
            if self.state == State::Connecting {
                self.reset();
                return;
            }
        }
        if events.contains(EventSet::OUT) || self.host_hup {
            self.flush();
        }
    }

    /// Writes what `out` holds to the stream, until it is empty or the stream is full.
    pub fn flush(&mut self) {
        while !self.out.is_empty() {
            let (a, b) = self.out.as_slices();
            match (&self.stream).write_vectored(&[IoSlice::new(a), IoSlice::new(b)]) {
                Ok(0) => return self.reset(),
                Ok(n) => {
                    self.out.drain(..n);
                    let own = n.min(self.out_own);
                    self.out_own -= own;
                    self.fwd_cnt = self.fwd_cnt.wrapping_add((n - own) as u32);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return self.reset(),
            }
        }
        if self.out.is_empty() && self.out.capacity() > KEEP_CAPACITY {
            self.out = VecDeque::new();
        }
        self.after_forward();
    }

    /// Owes the guest a credit update when it has a stale view of our free space, and finishes
    /// a guest shutdown once everything it sent has reached the host.
    fn after_forward(&mut self) {
        if self.fwd_cnt.wrapping_sub(self.last_fwd_cnt_sent) >= CREDIT_UPDATE_THRESHOLD {
            self.pending |= P_CREDIT_UPDATE;
        }
        if self.state != State::Established || !self.guest_shut_send || !self.out.is_empty() {
            return;
        }
        if self.guest_shut_rcv {
            // The guest closed both ways: confirm with a reset, as Linux expects.
            self.reset();
        } else if !self.write_shut {
            let _ = self.stream.shutdown(Shutdown::Write);
            self.write_shut = true;
        }
    }

    /// Handles a packet from the guest for this connection; `payload` holds `hdr.len` bytes.
    pub fn on_guest_packet(&mut self, hdr: &Header, payload: &[u8]) {
        if hdr.op == OP_RST {
            let _ = self.stream.shutdown(Shutdown::Both);
            self.state = State::Dead;
            return;
        }
        if matches!(self.state, State::Closing | State::Dead) {
            return;
        }
        self.peer_buf_alloc = hdr.buf_alloc;
        self.peer_fwd_cnt = hdr.fwd_cnt;
        match (self.state, hdr.op) {
            (State::Connecting, OP_RESPONSE) if self.pending & P_REQUEST == 0 => {
                self.state = State::Established;
                self.deadline = None;
                let line = format!("OK {}\n", self.local_port);
                self.out_own = line.len();
                self.out.extend(line.as_bytes());
                self.flush();
            }
            (State::Established, OP_RW) => self.guest_data(payload),
            (State::Established, OP_CREDIT_UPDATE) => {}
            (State::Established, OP_CREDIT_REQUEST) => self.pending |= P_CREDIT_UPDATE,
            (State::Established, OP_SHUTDOWN) => {
                if hdr.flags & SHUTDOWN_RCV != 0 && !self.guest_shut_rcv {
                    self.guest_shut_rcv = true;
                    let _ = self.stream.shutdown(Shutdown::Read);
                }
                self.guest_shut_send |= hdr.flags & SHUTDOWN_SEND != 0;
                self.after_forward();
            }
            // A request for a live connection, an answer to nothing, data before the answer.
            _ => self.reset(),
        }
    }

    /// Guest data: straight to the stream, the rest into `out`.
    fn guest_data(&mut self, payload: &[u8]) {
        let len = payload.len() as u64;
        // What the guest may have in flight is our buf_alloc minus what it has not been told
        // was forwarded; `out` is always within that.
        let unacked = u64::from(self.rx_cnt.wrapping_sub(self.last_fwd_cnt_sent));
        if self.guest_shut_send || unacked + len > u64::from(BUF_ALLOC) {
            return self.reset();
        }
        self.rx_cnt = self.rx_cnt.wrapping_add(payload.len() as u32);
        let mut done = 0;
        while self.out.is_empty() && done < payload.len() {
            match (&self.stream).write(&payload[done..]) {
                Ok(0) => return self.reset(),
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return self.reset(),
            }
        }
        self.fwd_cnt = self.fwd_cnt.wrapping_add(done as u32);
        self.out.extend(&payload[done..]);
        self.after_forward();
    }

    /// The next packet for the guest, its payload (host bytes, `hdr.len` of them) read into
    /// `buf`; `None` when there is nothing to send now.
    pub fn next_packet(&mut self, guest_cid: u64, buf: &mut [u8]) -> Option<Header> {
        let (op, flags, len) = self.next_op(buf)?;
        self.last_fwd_cnt_sent = self.fwd_cnt;
        // Every packet carries our credit, so no separate update is owed any more.
        self.pending &= !P_CREDIT_UPDATE;
        if op == OP_RST {
            self.state = State::Dead;
        }
        Some(Header {
            len,
            flags,
            buf_alloc: BUF_ALLOC,
            fwd_cnt: self.fwd_cnt,
            ..Header::stream((HOST_CID, self.local_port), (guest_cid, self.peer_port), op)
        })
    }

    fn next_op(&mut self, buf: &mut [u8]) -> Option<(u16, u32, u32)> {
        if self.state == State::Dead {
            return None;
        }
        for (bit, op) in [(P_RST, OP_RST), (P_REQUEST, OP_REQUEST), (P_RESPONSE, OP_RESPONSE)] {
            if self.pending & bit != 0 {
                self.pending &= !bit;
                return Some((op, 0, 0));
            }
        }
        if self.readable && self.may_send_data() {
            let n = (self.credit() as usize).min(buf.len());
            if n > 0 {
                match (&self.stream).read(&mut buf[..n]) {
                    Ok(0) => {
                        self.host_eof = true;
                        self.readable = false;
                        self.pending |= P_SHUTDOWN;
                    }
                    Ok(k) => {
                        self.tx_cnt = self.tx_cnt.wrapping_add(k as u32);
                        return Some((OP_RW, 0, k as u32));
                    }
                    // Level-triggered epoll reports the stream again once it is watched again.
                    Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => {
                        self.readable = false;
                    }
                    Err(_) => {
                        self.reset();
                        self.pending = 0;
                        return Some((OP_RST, 0, 0));
                    }
                }
            }
        }
        if self.pending & P_CREDIT_UPDATE != 0 {
            return Some((OP_CREDIT_UPDATE, 0, 0));
        }
        if self.pending & P_SHUTDOWN != 0 {
            self.pending &= !P_SHUTDOWN;
            // A stream that hung up will not read either.
            let flags = if self.host_hup { SHUTDOWN_SEND | SHUTDOWN_RCV } else { SHUTDOWN_SEND };
            return Some((OP_SHUTDOWN, flags, 0));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hdr(op: u16, buf_alloc: u32, fwd_cnt: u32) -> Header {
        Header { buf_alloc, fwd_cnt, ..Header::stream((3, 1000), (HOST_CID, 7), op) }
    }

    #[test]
    fn credit_wraps_and_never_goes_negative() {
        let (a, _b) = UnixStream::pair().unwrap();
        let mut conn = Connection::accepted(a, &hdr(OP_REQUEST, 4096, 0));
        assert_eq!(conn.credit(), 4096);
        conn.tx_cnt = 1000;
        assert_eq!(conn.credit(), 3096);
        // Counters wrap around u32.
        conn.peer_fwd_cnt = u32::MAX - 10;
        conn.tx_cnt = 20;
        assert_eq!(conn.credit(), 4096 - 31);
        // A guest claiming to have consumed more than it got: no credit, not a huge one.
        conn.peer_fwd_cnt = 5000;
        conn.tx_cnt = 100;
        assert_eq!(conn.credit(), 0);
    }

    #[test]
    fn response_comes_before_data_and_credit_rides_along() {
        let (a, b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let mut conn = Connection::accepted(a, &hdr(OP_REQUEST, 4096, 0));
        (&b).write_all(b"abc").unwrap();
        conn.on_host_event(EventSet::IN);
        let mut buf = [0u8; 64];
        assert_eq!(conn.next_packet(3, &mut buf).unwrap().op, OP_RESPONSE);
        let rw = conn.next_packet(3, &mut buf).unwrap();
        assert_eq!((rw.op, rw.len, rw.src_port, rw.dst_port), (OP_RW, 3, 7, 1000));
        assert_eq!(&buf[..3], b"abc");
        assert!(conn.next_packet(3, &mut buf).is_none());
        assert!(!conn.has_rx_work());
        assert_eq!(conn.interest(), Some(EventSet::IN));
    }
}
