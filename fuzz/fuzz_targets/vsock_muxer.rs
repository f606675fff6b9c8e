//! Drives the vsock device's connection state machine (the muxer and its connections, under
//! `ember::vmm::devices::virtio::vsock::Vsock`) with a sequence of guest packets and host
//! socket events. The device runs as in a VM: its three queues are split rings in guest memory
//! that this target writes from the driver's side; guest packets go through the tx queue, and
//! the device puts what it has for the guest into rx buffers given in between. The host side is
//! real Unix sockets: listeners at `<uds>_<port>` for guest connections, and host processes that
//! connect to `<uds>` and send `CONNECT <port>` lines (or garbage), write, read and hang up.
//! Each input gets a fresh device, with a connection cap of 1 to 8 picked by the input.
//!
//! Input: byte 0 sets up the device (bits 0-2: the cap minus one; bit 3: EVENT_IDX; bit 4: a
//! handshake timeout of zero, so that handshakes and connection requests expire at the next
//! timer); then operations, a kind byte and its arguments each, until the input
//! runs out (at most 128). `fn run_op` documents the kinds.
//!
//! It passes if nothing panics or hangs and, after every operation: open connections and
//! handshakes stay within the cap; guest bytes held for host streams stay within `BUF_ALLOC`
//! per connection; every used tx and rx chain is one the driver made available; every packet
//! the device puts in an rx buffer is well formed (from the host CID to the guest's, a stream
//! operation the host sends, its length what the used entry says and no payload but on
//! `OP_RW`); and no connection ever sends the guest more than the credit the guest gave it
//! (`buf_alloc` past its `fwd_cnt`). After each input every file descriptor the device and the
//! host streams opened is closed again.
#![no_main]

#[path = "common/input.rs"]
mod input;

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use ember::vmm::devices::virtio::vsock::packet::{
    parse_header, Header, HDR_LEN, HOST_CID, MAX_PAYLOAD, OP_CREDIT_REQUEST, OP_CREDIT_UPDATE, OP_REQUEST, OP_RESPONSE,
    OP_RST, OP_RW, OP_SHUTDOWN, TYPE_STREAM,
};
use ember::vmm::devices::virtio::vsock::{Vsock, BUF_ALLOC};
use ember::vmm::devices::virtio::{Activation, Interrupt, VirtioDevice, VIRTIO_RING_F_EVENT_IDX};
use input::Input;
use libfuzzer_sys::fuzz_target;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::tempdir::TempDir;

const GUEST_CID: u64 = 3;
const RXQ: usize = 0;
const TXQ: usize = 1;
const EVQ: usize = 2;
const QLEN: u16 = 16;
/// The rings of the rx, tx and event queues (descriptors, then avail at +0x100, used at +0x200).
const RINGS: [u64; 3] = [0x0, 0x1000, 0x2000];
/// The buffers of a chain whose head is descriptor `i` start at `base + i * STRIDE`.
const RX_BUFS: u64 = 0x1_0000;
const TX_BUFS: u64 = 0x20_0000;
const STRIDE: u64 = 0x1_1000;
const MEM_SIZE: usize = 0x40_0000;
/// An address no guest memory backs.
const OUTSIDE: u64 = 0xffff_0000_0000;
const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;
/// Host ports with a listener at `<uds>_<port>`, and one without.
const LISTEN_PORTS: [u32; 2] = [1024, 1025];
const DEAD_PORT: u32 = 1026;
/// The muxer numbers host-initiated connections from here.
const FIRST_HOST_PORT: u32 = 1 << 30;
const GUEST_PORTS: [u32; 3] = [1000, 1001, 1002];
const MAX_OPS: usize = 128;
const MAX_PEERS: usize = 32;
const MAX_HOST_CONNECTS: usize = 16;
static FILLER: [u8; MAX_PAYLOAD as usize] = [0x5a; MAX_PAYLOAD as usize];

struct Fixture {
    _dir: TempDir,
    uds: PathBuf,
    listeners: Vec<UnixListener>,
}

/// The socket directory and the listeners guest connections reach, made once per process.
fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        // As in the VMM, whose Rust runtime does it before main (libFuzzer's main is not
        // Rust's): a write to a stream whose peer is gone fails with EPIPE, it does not kill.
        // SAFETY: setting a signal's disposition to SIG_IGN installs no handler.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
        let dir = TempDir::new_with_prefix("/tmp/ember-fuzz-vsock-").expect("temp dir");
        let uds = dir.as_path().join("v.sock");
        let listeners = LISTEN_PORTS
            .iter()
            .map(|port| {
                let l = UnixListener::bind(format!("{}_{port}", uds.display())).expect("listen");
                l.set_nonblocking(true).expect("nonblocking listener");
                l
            })
            .collect();
        Fixture { _dir: dir, uds, listeners }
    })
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map(|d| d.count()).unwrap_or(0)
}

/// The driver's side of a split virtqueue in guest memory.
struct Ring {
    desc: u64,
    avail: u64,
    used: u64,
    buffers: u64,
    avail_idx: u16,
    used_seen: u16,
    free: Vec<u16>,
    /// Chains made available and not used yet: head -> (descriptors, buffer address, capacity).
    chains: HashMap<u16, (Vec<u16>, u64, u32)>,
}

impl Ring {
    fn new(base: u64, buffers: u64) -> Ring {
        Ring {
            desc: base,
            avail: base + 0x100,
            used: base + 0x200,
            buffers,
            avail_idx: 0,
            used_seen: 0,
            free: (0..QLEN).rev().collect(),
            chains: HashMap::new(),
        }
    }

    fn queue(&self, event_idx: bool) -> Queue {
        let mut q = Queue::new(QLEN).expect("queue");
        q.set_size(QLEN);
        q.try_set_desc_table_address(GuestAddress(self.desc)).expect("desc table");
        q.try_set_avail_ring_address(GuestAddress(self.avail)).expect("avail ring");
        q.try_set_used_ring_address(GuestAddress(self.used)).expect("used ring");
        q.set_ready(true);
        q.set_event_idx(event_idx);
        q
    }

    /// Makes a chain of buffers of the given (length, flags) available, laid out one after the
    /// other from the chain's buffer address (or from `at`); the last descriptor's `next` is
    /// `last_next` (with its flags as given). Writes `bytes` at the buffer address first.
    /// Returns the buffer address, or None when the ring has no room.
    fn add(
        &mut self,
        mem: &GuestMemoryMmap,
        parts: &[(u32, u16)],
        at: Option<u64>,
        bytes: &[u8],
        last_next: u16,
    ) -> Option<u64> {
        if parts.is_empty() || parts.len() > self.free.len() {
            return None;
        }
        let ids: Vec<u16> = (0..parts.len()).map(|_| self.free.pop().expect("checked")).collect();
        let base = at.unwrap_or(self.buffers + u64::from(ids[0]) * STRIDE);
        if !bytes.is_empty() {
            mem.write_slice(bytes, GuestAddress(base)).expect("buffer in guest memory");
        }
        let mut addr = base;
        for (i, &(len, flags)) in parts.iter().enumerate() {
            let (flags, next) = match ids.get(i + 1) {
                Some(&next) => (flags | F_NEXT, next),
                None => (flags, last_next),
            };
            let d = self.desc + 16 * u64::from(ids[i]);
            mem.write_obj(addr, GuestAddress(d)).expect("descriptor");
            mem.write_obj(len, GuestAddress(d + 8)).expect("descriptor");
            mem.write_obj(flags, GuestAddress(d + 12)).expect("descriptor");
            mem.write_obj(next, GuestAddress(d + 14)).expect("descriptor");
            addr = addr.wrapping_add(u64::from(len));
        }
        let slot = self.avail + 4 + 2 * u64::from(self.avail_idx % QLEN);
        mem.write_obj(ids[0], GuestAddress(slot)).expect("avail ring");
        self.avail_idx = self.avail_idx.wrapping_add(1);
        mem.write_obj(self.avail_idx, GuestAddress(self.avail + 2)).expect("avail ring");
        let capacity = parts.iter().filter(|(_, f)| f & F_WRITE != 0).map(|(l, _)| *l).sum();
        self.chains.insert(ids[0], (ids, base, capacity));
        Some(base)
    }

    /// The chains the device used since the last call: (buffer address, capacity, length).
    /// Each must be a chain that was made available.
    fn take_used(&mut self, mem: &GuestMemoryMmap) -> Vec<(u64, u32, u32)> {
        let idx: u16 = mem.read_obj(GuestAddress(self.used + 2)).expect("used ring");
        let mut out = Vec::new();
        while self.used_seen != idx {
            let at = self.used + 4 + 8 * u64::from(self.used_seen % QLEN);
            let id: u32 = mem.read_obj(GuestAddress(at)).expect("used ring");
            let len: u32 = mem.read_obj(GuestAddress(at + 4)).expect("used ring");
            let head = u16::try_from(id).unwrap_or_else(|_| panic!("used id {id} is no descriptor"));
            let (ids, base, capacity) =
                self.chains.remove(&head).unwrap_or_else(|| panic!("used chain {head} was not available"));
            self.free.extend(ids);
            out.push((base, capacity, len));
            self.used_seen = self.used_seen.wrapping_add(1);
        }
        out
    }
}

/// What this target knows of a connection's credit, by (host port, guest port).
#[derive(Default)]
struct Credit {
    /// From the guest's last packet for the connection.
    buf_alloc: u32,
    fwd_cnt: u32,
    /// Payload bytes the device sent the guest since the connection began (wrapping).
    sent: u32,
}

struct Rig<'f> {
    fx: &'f Fixture,
    mem: GuestMemoryMmap,
    dev: Vsock,
    irq: Interrupt,
    event_idx: bool,
    rx: Ring,
    tx: Ring,
    ev: Ring,
    peers: Vec<UnixStream>,
    host_connects: usize,
    slept: bool,
    /// The handshake timeout is zero (config bit 4).
    short_timeout: bool,
    credit: HashMap<(u32, u32), Credit>,
    /// Off once a raw chain made the guest's packets unpredictable.
    check_credit: bool,
}

impl Rig<'_> {
    fn activate(&mut self) {
        self.rx = Ring::new(RINGS[0], RX_BUFS);
        self.tx = Ring::new(RINGS[1], TX_BUFS);
        self.ev = Ring::new(RINGS[2], OUTSIDE);
        self.mem.write_slice(&[0u8; 0x3000], GuestAddress(RINGS[0])).expect("clear rings");
        let queues = vec![self.rx.queue(self.event_idx), self.tx.queue(self.event_idx), self.ev.queue(self.event_idx)];
        let features = if self.event_idx { VIRTIO_RING_F_EVENT_IDX } else { 0 };
        self.dev.activate(Activation { mem: self.mem.clone(), queues, features });
    }

    fn host_port(input: &mut Input) -> u32 {
        match input.u8() % 8 {
            s @ 0..=1 => LISTEN_PORTS[usize::from(s)],
            2 => DEAD_PORT,
            s @ 3..=6 => FIRST_HOST_PORT + u32::from(s - 3),
            _ => input.u32(),
        }
    }

    fn guest_port(input: &mut Input) -> u32 {
        match input.u8() % 4 {
            s @ 0..=2 => GUEST_PORTS[usize::from(s)],
            _ => input.u32(),
        }
    }

    /// Runs one operation; false when the input is used up.
    ///
    /// Kinds (the kind byte mod 12):
    /// - 0: a guest packet on the tx queue: op (the seven stream ops, or raw), guest and host
    ///   port, flags, buf_alloc, fwd_cnt (what the guest got, or raw), payload length (a byte's
    ///   worth from the input, 4 KiB or 64 KiB of filler), a byte that may spoil it (wrong
    ///   CIDs, type, a payload shorter than its header says) and picks the descriptor layout;
    /// - 1: a raw tx chain: up to 3 descriptors of raw length, flags and `next` (inside or
    ///   outside guest memory), over bytes from the input;
    /// - 2: 1 to 4 rx buffers (too small for a header, a header's worth, 16 bytes, 4 KiB or 64
    ///   KiB of room; one or two descriptors; read-only or outside guest memory now and then),
    ///   then the rx queue notified;
    /// - 3: a host process connects to `<uds>` and sends a `CONNECT <port>` line (complete or
    ///   not) or raw bytes;
    /// - 4: the host accepts what connected to its listeners;
    /// - 5: a host stream writes up to 254 bytes of the input, or 64 KiB;
    /// - 6: a host stream reads all it can;
    /// - 7: a host stream closes, or shuts down its writing or reading half;
    /// - 8: the device handles its backend's events (as the event loop does when the epoll fd
    ///   is readable);
    /// - 9: with the zero handshake timeout, 200 us go by (once per input: the muxer's timer,
    ///   armed for 1 us, fires); then the backend's events (timeouts);
    /// - 10: the driver resets the device and activates it again with fresh rings;
    /// - 11: the rx queue, or the event queue, notified with no new buffers.
    fn run_op(&mut self, input: &mut Input) -> bool {
        if input.is_empty() {
            return false;
        }
        match input.u8() % 12 {
            0 => self.guest_packet(input),
            1 => self.raw_chain(input),
            2 => self.give_rx(input),
            3 => self.host_connect(input),
            4 => self.host_accept(),
            5 => {
                let (at, n) = (input.u8(), input.u8());
                let bytes = if n == 0xff { &FILLER[..] } else { input.bytes(usize::from(n)) };
                if let Some(mut peer) = self.peer(at) {
                    let _ = peer.write(bytes);
                }
            }
            6 => {
                let at = input.u8();
                if let Some(mut peer) = self.peer(at) {
                    let mut buf = vec![0u8; 64 * 1024];
                    for _ in 0..8 {
                        match peer.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(_) => {}
                        }
                    }
                }
            }
            7 => {
                let (at, how) = (input.u8(), input.u8() % 3);
                if !self.peers.is_empty() {
                    let i = usize::from(at) % self.peers.len();
                    match how {
                        0 => drop(self.peers.swap_remove(i)),
                        1 => {
                            let _ = self.peers[i].shutdown(Shutdown::Write);
                        }
                        _ => {
                            let _ = self.peers[i].shutdown(Shutdown::Read);
                        }
                    }
                }
            }
            8 => self.backend(),
            9 => {
                // Only with the zero handshake timeout does waiting expire anything; without it,
                // the backend's events alone, as a sleep would only slow the target down.
                if self.short_timeout && !self.slept {
                    self.slept = true;
                    std::thread::sleep(Duration::from_micros(200));
                }
                self.backend();
            }
            10 => {
                self.dev.reset();
                self.credit.clear();
                self.activate();
            }
            _ => {
                let queue = if input.bool() { EVQ } else { RXQ };
                self.dev.process_queue(queue, &self.irq).expect("process a queue");
            }
        }
        true
    }

    fn peer(&self, at: u8) -> Option<&UnixStream> {
        if self.peers.is_empty() {
            return None;
        }
        self.peers.get(usize::from(at) % self.peers.len())
    }

    fn backend(&mut self) {
        self.dev.process_backend(&self.irq).expect("process the backend");
    }

    fn guest_packet(&mut self, input: &mut Input) {
        let op = match input.u8() {
            s @ 0..=223 => [OP_REQUEST, OP_RESPONSE, OP_RST, OP_SHUTDOWN, OP_RW, OP_CREDIT_UPDATE, OP_CREDIT_REQUEST]
                [usize::from(s) % 7],
            _ => input.u16(),
        };
        let src_port = Self::guest_port(input);
        let dst_port = Self::host_port(input);
        let flags = match input.u8() {
            s @ 0..=239 => u32::from(s & 3),
            _ => input.u32(),
        };
        let buf_alloc = match input.u8() % 8 {
            0 => 0,
            1 => 1,
            2 => 4096,
            3 => 64 * 1024,
            4 => 256 * 1024,
            5 => u32::MAX,
            _ => input.u32(),
        };
        let key = (dst_port, src_port);
        let got = self.credit.get(&key).map_or(0, |c| c.sent);
        let fwd_cnt = match input.u8() % 4 {
            0 | 1 => got,
            2 => 0,
            _ => input.u32(),
        };
        let payload: Vec<u8> = match input.u8() {
            0xfe => FILLER[..4096].to_vec(),
            0xff => FILLER.to_vec(),
            n => {
                let mut p = input.bytes(usize::from(n)).to_vec();
                p.resize(usize::from(n), 0);
                p
            }
        };
        let spoil = input.u8();
        let bad = if spoil & 0x80 != 0 { spoil } else { 0 };
        let short = if bad & 8 != 0 { u32::from(input.u8()) + 1 } else { 0 };
        let hdr = Header {
            src_cid: if bad & 1 != 0 { GUEST_CID + 1 } else { GUEST_CID },
            dst_cid: if bad & 2 != 0 { GUEST_CID } else { HOST_CID },
            src_port,
            dst_port,
            len: payload.len() as u32 + short,
            kind: if bad & 4 != 0 { 2 } else { TYPE_STREAM },
            op,
            flags,
            buf_alloc,
            fwd_cnt,
        };
        let mut bytes = hdr.to_bytes().to_vec();
        bytes.extend_from_slice(&payload);
        let (h, p) = (HDR_LEN as u32, payload.len() as u32);
        let parts: Vec<(u32, u16)> = match (spoil >> 4) & 3 {
            _ if p == 0 => vec![(h, 0)],
            0 => vec![(h, 0), (p, 0)],
            1 => vec![(h + p, 0)],
            2 => {
                let k = 1 + u32::from(input.u8()) % (h - 1);
                vec![(k, 0), (h - k + p, 0)]
            }
            _ => {
                let k = 1 + u32::from(input.u8()) % p.max(1);
                if k < p {
                    vec![(h, 0), (k, 0), (p - k, 0)]
                } else {
                    vec![(h, 0), (p, 0)]
                }
            }
        };
        if self.tx.add(&self.mem, &parts, None, &bytes, 0).is_none() {
            return;
        }
        // What reaches the connection (the device drops the rest): a header that parses, from
        // the guest, with its whole payload; a reset leaves no credit behind.
        if parse_header(&bytes).is_ok() && hdr.src_cid == GUEST_CID && short == 0 && op != OP_RST {
            let c = self.credit.entry(key).or_default();
            c.buf_alloc = buf_alloc;
            c.fwd_cnt = fwd_cnt;
        }
        self.dev.process_queue(TXQ, &self.irq).expect("process tx");
    }

    fn raw_chain(&mut self, input: &mut Input) {
        let n = 1 + usize::from(input.u8() % 3);
        let outside = input.u8() % 8 == 0;
        let mut parts = Vec::new();
        for _ in 0..n {
            let len = u32::from(input.u16()) % (STRIDE as u32 / 3);
            let flags = input.u16() & !F_NEXT;
            parts.push((len, flags));
        }
        let last_flags = input.u16();
        let last_next = input.u16();
        if let Some(last) = parts.last_mut() {
            last.1 |= last_flags & F_NEXT;
        }
        let total: u32 = parts.iter().map(|(l, _)| *l).sum();
        let mut bytes = input.bytes(total as usize).to_vec();
        bytes.resize(total as usize, 0);
        let at = outside.then_some(OUTSIDE);
        let bytes = if outside { &[][..] } else { &bytes[..] };
        if self.tx.add(&self.mem, &parts, at, bytes, last_next).is_some() {
            self.check_credit = false;
            self.dev.process_queue(TXQ, &self.irq).expect("process tx");
        }
    }

    fn give_rx(&mut self, input: &mut Input) {
        let n = 1 + input.u8() % 4;
        for _ in 0..n {
            let room = input.pick(&[
                HDR_LEN as u32 - 1,
                HDR_LEN as u32,
                HDR_LEN as u32 + 16,
                HDR_LEN as u32 + 4096,
                HDR_LEN as u32 + MAX_PAYLOAD,
            ]);
            let shape = input.u8();
            let flags = if shape % 16 == 0 { 0 } else { F_WRITE };
            let at = (shape % 16 == 1).then_some(OUTSIDE);
            let parts = if shape & 0x10 != 0 && room > 20 {
                vec![(20, flags), (room - 20, flags)]
            } else {
                vec![(room, flags)]
            };
            if self.rx.add(&self.mem, &parts, at, &[], 0).is_none() {
                break;
            }
        }
        self.dev.process_queue(RXQ, &self.irq).expect("process rx");
    }

    fn host_connect(&mut self, input: &mut Input) {
        let line: Vec<u8> = match input.u8() % 4 {
            0 | 1 => format!("CONNECT {}\n", Self::guest_port(input)).into_bytes(),
            2 => format!("CONNECT {}", Self::guest_port(input)).into_bytes(),
            _ => {
                let n = usize::from(input.u8() % 48);
                input.bytes(n).to_vec()
            }
        };
        if self.host_connects >= MAX_HOST_CONNECTS || self.peers.len() >= MAX_PEERS {
            return;
        }
        self.host_connects += 1;
        // The listener is fresh and its backlog far from full: connect does not block.
        let Ok(mut stream) = UnixStream::connect(&self.fx.uds) else { return };
        stream.set_nonblocking(true).expect("nonblocking stream");
        let _ = stream.write(&line);
        self.peers.push(stream);
    }

    fn host_accept(&mut self) {
        for listener in &self.fx.listeners {
            while let Ok((stream, _)) = listener.accept() {
                if self.peers.len() < MAX_PEERS && stream.set_nonblocking(true).is_ok() {
                    self.peers.push(stream);
                }
            }
        }
    }

    /// Reads what the device used and checks it, and the device's bounds.
    fn check(&mut self) {
        for (_, _, len) in self.tx.take_used(&self.mem) {
            assert_eq!(len, 0, "a tx chain used with a length");
        }
        for (base, capacity, len) in self.rx.take_used(&self.mem) {
            assert!(len <= capacity, "{len} bytes used of an rx buffer of {capacity}");
            if len == 0 {
                continue;
            }
            assert!(len as usize >= HDR_LEN, "an rx packet of {len} bytes");
            let mut raw = [0u8; HDR_LEN];
            self.mem.read_slice(&mut raw, GuestAddress(base)).expect("rx buffer");
            let hdr = Header::from_bytes(&raw);
            self.check_packet(&hdr, len);
        }
        let conns = self.dev.muxer.connection_count();
        assert!(
            conns <= self.dev.muxer.max_connections,
            "{conns} connections over a cap of {}",
            self.dev.muxer.max_connections
        );
        // Guest bytes, and the few of the `OK <port>` line a host connection is answered with.
        let buffered = self.dev.buffered_bytes();
        assert!(buffered <= conns * (BUF_ALLOC as usize + 64), "{buffered} bytes buffered for {conns} connections");
    }

    fn check_packet(&mut self, hdr: &Header, used: u32) {
        assert_eq!(hdr.len as usize, used as usize - HDR_LEN, "header length vs used length: {hdr:?}");
        assert_eq!((hdr.src_cid, hdr.dst_cid, hdr.kind), (HOST_CID, GUEST_CID, TYPE_STREAM), "{hdr:?}");
        assert!(
            [OP_REQUEST, OP_RESPONSE, OP_RST, OP_SHUTDOWN, OP_RW, OP_CREDIT_UPDATE].contains(&hdr.op),
            "the host sent op {}",
            hdr.op
        );
        assert!(hdr.len == 0 || hdr.op == OP_RW, "a payload on op {}", hdr.op);
        assert!(hdr.len <= MAX_PAYLOAD);
        if hdr.op != OP_RST {
            assert_eq!(hdr.buf_alloc, BUF_ALLOC);
        }
        let key = (hdr.src_port, hdr.dst_port);
        match hdr.op {
            // A new connection: its count starts over.
            OP_REQUEST | OP_RESPONSE => self.credit.entry(key).or_default().sent = 0,
            OP_RW => {
                let c = self.credit.entry(key).or_default();
                c.sent = c.sent.wrapping_add(hdr.len);
                if self.check_credit {
                    let in_flight = c.sent.wrapping_sub(c.fwd_cnt);
                    assert!(
                        in_flight <= c.buf_alloc,
                        "{in_flight} bytes in flight to guest port {} past its buf_alloc {}",
                        key.1,
                        c.buf_alloc
                    );
                }
            }
            _ => {}
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let fx = fixture();
    let fds = open_fds();
    {
        let mut input = Input(data);
        let config = input.u8();
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).expect("guest memory");
        let mut dev = Vsock::new(GUEST_CID, &fx.uds).expect("vsock device");
        dev.muxer.max_connections = 1 + usize::from(config & 7);
        if config & 0x10 != 0 {
            dev.muxer.connect_timeout = Duration::ZERO;
        }
        let irq = Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).expect("eventfd"));
        let mut rig = Rig {
            fx,
            mem,
            dev,
            irq,
            event_idx: config & 8 != 0,
            rx: Ring::new(RINGS[0], RX_BUFS),
            tx: Ring::new(RINGS[1], TX_BUFS),
            ev: Ring::new(RINGS[2], OUTSIDE),
            peers: Vec::new(),
            host_connects: 0,
            slept: false,
            short_timeout: config & 0x10 != 0,
            credit: HashMap::new(),
            check_credit: true,
        };
        rig.activate();
        for _ in 0..MAX_OPS {
            if !rig.run_op(&mut input) {
                break;
            }
            rig.check();
        }
    }
    // Whatever reached the listeners and was not accepted goes too.
    for listener in &fx.listeners {
        loop {
            match listener.accept() {
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
    }
    assert_eq!(open_fds(), fds, "file descriptors left open");
});
