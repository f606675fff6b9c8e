//! virtio-vsock (virtio 1.x, section 5.10) with Firecracker's "hybrid vsock" host side: guest
//! stream sockets meet host processes on Unix sockets.
//!
//! What it owns: the device's three queues (rx = 0, tx = 1, event = 2, the last used only to
//! tell the driver, after a snapshot restore, that every connection is gone), a
//! listening Unix socket at `uds_path`, every host stream of a connection, and one epoll fd over
//! all of them ([`VirtioDevice::backend_fd`]).
//!
//! - Host to guest: a host process connects to `uds_path` and writes `CONNECT <port>\n`; the
//!   device sends the guest an `OP_REQUEST` from a fresh host port, and on `OP_RESPONSE` writes
//!   `OK <host port>\n` back and relays bytes both ways. `OP_RST`, a bad line or no answer in
//!   time closes the stream.
//! - Guest to host: an `OP_REQUEST` to CID 2 port P connects to `<uds_path>_P`; `OP_RESPONSE` on
//!   success, `OP_RST` on failure.
//!
//! Threads: none of its own. Queues and sockets are served on the VMM's event-loop thread:
//! `process_queue` when the guest notifies a queue, `process_backend` when the epoll fd is
//! readable (it stays the same fd for the device's life). Only `activate` and `reset` come from
//! a vCPU thread, through the transport and under the device lock. No call blocks: sockets are
//! non-blocking, connects included, and a handshake timer (a timerfd in the same epoll set)
//! closes host connections that stall. A fd that cannot be served right now is taken out of the
//! epoll set (or its `EPOLLIN` dropped) so the level-triggered loop never spins on it.
//!
//! The socket file at `uds_path` is left in place when the device is dropped; the next
//! [`Vsock::new`] on that path replaces it.
//!
//! Flow control, per connection and both ways, so that neither side makes the other buffer
//! without bound:
//! - Host to guest: bytes are read from the stream only into an rx buffer the guest gave, and
//!   only as many as its credit allows (`buf_alloc - (tx_cnt - fwd_cnt)` from its last header).
//!   When it stops reading, the device stops reading the stream and the host writer blocks on
//!   its socket buffer. Nothing is queued in the device.
//! - Guest to host: the device advertises [`BUF_ALLOC`] per connection, writes guest data
//!   straight to the stream, and keeps what the stream does not take in a buffer that the
//!   guest's credit bounds; a guest that sends past its credit has its connection reset.
//!   `fwd_cnt` counts bytes the stream took; a credit update goes out after a good chunk.
//! - Control packets wait for rx buffers as per-connection flags; resets for packets that match
//!   no connection wait in a capped queue. Connections are capped at [`MAX_CONNECTIONS`].
//!
//! Every packet header and descriptor chain comes from the guest: headers are checked by
//! [`packet::parse_header`] and against the descriptors, wrong packets are dropped or answered
//! with `OP_RST`, nothing panics, and nothing is allocated in proportion to a claimed length.

mod connection;
mod muxer;
pub mod packet;

use std::io::{self, Read, Write};
use std::os::unix::io::{AsRawFd, RawFd};
use std::path::Path;
use std::time::{Duration, Instant};

use virtio_queue::{QueueOwnedT, QueueT, Reader, Writer};
use vm_memory::bitmap::BitmapSlice;
use vmm_sys_util::timerfd::TimerFd;

pub use connection::BUF_ALLOC;
use muxer::Muxer;
pub use muxer::{CONNECT_TIMEOUT, MAX_CONNECTIONS};
use packet::{parse_header, Header, HDR_LEN, MAX_PAYLOAD};

use super::{
    drain_queue, signal_used, Activation, Interrupt, VirtioDevice, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX,
};

/// Virtio device id of a vsock device.
pub const DEVICE_TYPE_VSOCK: u32 = 19;
const QUEUE_SIZE: u16 = 256;
const RXQ: usize = 0;
const TXQ: usize = 1;
const EVQ: usize = 2;
/// VIRTIO_VSOCK_EVENT_TRANSPORT_RESET: the driver drops every connection and reads the CID again.
const EVENT_TRANSPORT_RESET: u32 = 0;
/// Used tx chains not yet signalled past which the interrupt goes at once: a quarter of the
/// ring, so a sender never waits on a full ring for the timer.
const TX_IRQ_BATCH: u32 = QUEUE_SIZE as u32 / 4;
/// The longest a used tx chain waits for an rx interrupt to ride on.
const TX_IRQ_DELAY: Duration = Duration::from_millis(1);

/// Errors setting up a vsock device.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The guest CID is reserved (0, 1, 2) or does not fit the 32 bits guests use.
    #[error("guest CID {0} is reserved or too large")]
    Cid(u64),
    /// A stale socket file could not be removed.
    #[error("cannot remove the stale vsock socket: {0}")]
    RemoveStale(#[source] io::Error),
    /// The listening socket could not be set up.
    #[error("cannot listen on {path}: {source}")]
    Bind {
        /// The socket path.
        path: String,
        /// Why.
        source: io::Error,
    },
    /// The epoll set could not be set up.
    #[error("vsock epoll: {0}")]
    Epoll(#[source] io::Error),
    /// The handshake timer could not be created.
    #[error("vsock timer: {0}")]
    Timer(#[source] io::Error),
}

/// A vsock device.
pub struct Vsock {
    guest_cid: u64,
    /// The host side (connections, handshakes); public only for the fuzz targets.
    #[doc(hidden)]
    pub muxer: Muxer,
    active: Option<Activation>,
    /// Payload bytes on their way between a socket and guest memory.
    scratch: Vec<u8>,
    /// Tx chains used but not yet signalled. The driver only frees sent buffers on a tx
    /// interrupt, which need not come at once: it rides on the next rx interrupt (the driver
    /// looks at every queue on each one), which in a request and reply exchange is the answer
    /// the guest is waiting for. That saves the guest a wake-up, and the VM exits that come
    /// with it, per message it sends. [`TX_IRQ_DELAY`] and [`TX_IRQ_BATCH`] bound the wait.
    tx_unsignalled: u32,
    tx_timer: TimerFd,
    tx_deadline: Option<Instant>,
    /// [`TX_IRQ_DELAY`]; a test that must not see the timer fire lengthens it.
    tx_irq_delay: Duration,
}

impl Vsock {
    /// A device for a guest with CID `guest_cid`, listening for host connections at `uds_path`
    /// (a stale socket file there is replaced).
    pub fn new(guest_cid: u64, uds_path: &Path) -> Result<Vsock, Error> {
        if guest_cid <= packet::HOST_CID || guest_cid >= u64::from(u32::MAX) {
            return Err(Error::Cid(guest_cid));
        }
        let muxer = Muxer::new(guest_cid, uds_path)?;
        let tx_timer = TimerFd::new().map_err(|e| Error::Timer(e.into()))?;
        muxer.watch_device_fd(tx_timer.as_raw_fd())?;
        Ok(Vsock {
            guest_cid,
            muxer,
            active: None,
            scratch: vec![0; MAX_PAYLOAD as usize],
            tx_unsignalled: 0,
            tx_timer,
            tx_deadline: None,
            tx_irq_delay: TX_IRQ_DELAY,
        })
    }

    /// The guest's CID.
    pub fn guest_cid(&self) -> u64 {
        self.guest_cid
    }

    /// Reads one guest packet from a tx chain and hands it to the muxer. Malformed packets are
    /// dropped.
    fn handle_tx<B: BitmapSlice>(&mut self, mut reader: Reader<'_, B>) {
        let mut raw = [0u8; HDR_LEN];
        if reader.read_exact(&mut raw).is_err() {
            return;
        }
        let Ok(hdr) = parse_header(&raw) else { return };
        if hdr.src_cid != self.guest_cid {
            return;
        }
        // parse_header capped the length at MAX_PAYLOAD, the scratch buffer's size.
        let Some(payload) = self.scratch.get_mut(..hdr.len as usize) else { return };
        if reader.read_exact(payload).is_err() {
            return self.muxer.guest_packet_malformed(&hdr);
        }
        self.muxer.handle_guest_packet(&hdr, payload);
    }

    fn process_tx(&mut self, active: &mut Activation) -> Result<(), super::Error> {
        let mem = &active.mem;
        let Some(queue) = active.queues.get_mut(TXQ) else { return Ok(()) };
        let mut chains = 0u32;
        drain_queue(queue, mem, |chain| {
            if let Ok(reader) = chain.reader(mem) {
                self.handle_tx(reader);
            }
            chains += 1;
            0
        })?;
        self.tx_unsignalled = self.tx_unsignalled.saturating_add(chains);
        Ok(())
    }

    /// Settles what is owed on the tx queue once rx delivery is done: nothing when the rx
    /// interrupt just went out (`rx_signalled`: the driver sees the used tx chains on it too), at
    /// once when enough chains wait or their time is up, else by the timer.
    fn settle_tx(
        &mut self,
        active: &mut Activation,
        interrupt: &Interrupt,
        rx_signalled: bool,
    ) -> Result<(), super::Error> {
        if self.tx_unsignalled == 0 {
            return Ok(());
        }
        let due = self.tx_deadline.is_some_and(|d| d <= Instant::now());
        if !(rx_signalled || due || self.tx_unsignalled >= TX_IRQ_BATCH) {
            // The deadline is taken before the timer starts, so the timer never fires before it.
            let deadline = Instant::now() + self.tx_irq_delay;
            if self.tx_deadline.is_none() && self.tx_timer.reset(self.tx_irq_delay, None).is_ok() {
                self.tx_deadline = Some(deadline);
            }
            // Without a timer the interrupt cannot wait.
            if self.tx_deadline.is_some() {
                return Ok(());
            }
        }
        self.tx_unsignalled = 0;
        self.disarm_tx_timer();
        let mem = &active.mem;
        let Some(queue) = active.queues.get_mut(TXQ) else { return Ok(()) };
        if rx_signalled {
            // Only the queue's record of what it signalled needs to catch up.
            queue.needs_notification(mem)?;
            Ok(())
        } else {
            signal_used(queue, mem, interrupt).map(drop)
        }
    }

    fn disarm_tx_timer(&mut self) {
        if self.tx_deadline.take().is_some() {
            let _ = self.tx_timer.clear();
        }
    }

    /// Fills rx buffers with what the muxer has for the guest, until one of them runs out; says
    /// whether it raised the interrupt.
    fn process_rx(&mut self, active: &mut Activation, interrupt: &Interrupt) -> Result<bool, super::Error> {
        let mem = &active.mem;
        let Some(queue) = active.queues.get_mut(RXQ) else { return Ok(false) };
        if !queue.ready() {
            return Ok(false);
        }
        let mut used = false;
        while self.muxer.has_rx() {
            let chain = match queue.pop_descriptor_chain(mem) {
                Some(chain) => chain,
                // Out of buffers: have the driver notify when it adds some, and look once more
                // in case it just did (only once: a corrupted avail index looks non-empty forever).
                None if queue.enable_notification(mem)? => match queue.pop_descriptor_chain(mem) {
                    Some(chain) => chain,
                    None => break,
                },
                None => break,
            };
            let head = chain.head_index();
            let len = match chain.writer(mem) {
                Ok(mut writer) if writer.available_bytes() >= HDR_LEN => {
                    let room = (writer.available_bytes() - HDR_LEN).min(self.scratch.len());
                    let Some(hdr) = self.muxer.fill_rx(&mut self.scratch[..room]) else {
                        // Nothing to send after all: the buffer stays the guest's.
                        queue.go_to_previous_position();
                        break;
                    };
                    write_packet(&mut writer, &hdr, &self.scratch)
                }
                // A buffer that cannot hold a header, or is not in guest memory: return it empty.
                _ => 0,
            };
            queue.add_used(mem, head, len)?;
            used = true;
        }
        if used {
            return signal_used(queue, mem, interrupt);
        }
        Ok(false)
    }

    /// Runs `f` with the activation, then delivers what is owed to the guest.
    fn with_active(
        &mut self,
        interrupt: &Interrupt,
        f: impl FnOnce(&mut Self, &mut Activation) -> Result<(), super::Error>,
    ) -> Result<(), super::Error> {
        let Some(mut active) = self.active.take() else { return Ok(()) };
        let result = f(self, &mut active)
            .and_then(|()| self.process_rx(&mut active, interrupt))
            .and_then(|rx_signalled| self.settle_tx(&mut active, interrupt, rx_signalled));
        self.active = Some(active);
        result
    }

    /// Guest bytes held for host streams (bounded by [`BUF_ALLOC`] per connection).
    pub fn buffered_bytes(&self) -> usize {
        self.muxer.buffered_bytes()
    }
}

/// Writes a header and its payload (the first `hdr.len` bytes of `payload`) into an rx buffer
/// checked to be large enough; returns the bytes written.
fn write_packet<B: BitmapSlice>(writer: &mut Writer<'_, B>, hdr: &Header, payload: &[u8]) -> u32 {
    let data = payload.get(..hdr.len as usize).unwrap_or_default();
    let _ = writer.write_all(&hdr.to_bytes()).and_then(|()| writer.write_all(data));
    writer.bytes_written() as u32
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        DEVICE_TYPE_VSOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE; 3]
    }

    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // struct virtio_vsock_config { le64 guest_cid; }
        super::read_config_bytes(&self.guest_cid.to_le_bytes(), offset, data);
    }

    fn activate(&mut self, activation: Activation) {
        self.active = Some(activation);
    }

    fn process_queue(&mut self, index: usize, interrupt: &Interrupt) -> Result<(), super::Error> {
        self.with_active(interrupt, |dev, active| match index {
            TXQ => dev.process_tx(active),
            // New rx buffers are used by the delivery that follows; the event queue is unused.
            _ => Ok(()),
        })
    }

    fn reset(&mut self) {
        self.active = None;
        self.muxer.reset();
        self.tx_unsignalled = 0;
        self.disarm_tx_timer();
    }

    fn queues(&self) -> Option<&[virtio_queue::Queue]> {
        self.active.as_ref().map(|a| a.queues.as_slice())
    }

    /// The connections the guest had before the snapshot led to host streams this process
    /// never had: a transport-reset event makes the driver drop them all (its sockets see
    /// ECONNRESET), and listeners stay. Without an event buffer the driver posted there is no
    /// way to say it; the guest then learns connection by connection, from RSTs.
    fn restored(&mut self, interrupt: &Interrupt) -> Result<(), super::Error> {
        let Some(active) = self.active.as_mut() else { return Ok(()) };
        let mem = &active.mem;
        let Some(queue) = active.queues.get_mut(EVQ) else { return Ok(()) };
        if !queue.ready() {
            return Ok(());
        }
        let Some(chain) = queue.pop_descriptor_chain(mem) else { return Ok(()) };
        let head = chain.head_index();
        let written = Writer::new(mem, chain)
            .ok()
            .and_then(|mut w| w.write_all(&EVENT_TRANSPORT_RESET.to_le_bytes()).ok().map(|()| w.bytes_written()))
            .unwrap_or(0);
        queue.add_used(mem, head, written as u32)?;
        signal_used(queue, mem, interrupt)?;
        Ok(())
    }

    fn backend_fd(&self) -> Option<RawFd> {
        Some(self.muxer.epoll_fd())
    }

    fn process_backend(&mut self, interrupt: &Interrupt) -> Result<(), super::Error> {
        // The tx timer is read by its deadline in settle_tx.
        self.muxer.process_events();
        self.with_active(interrupt, |_, _| Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::packet::*;
    use super::*;
    use crate::vmm::devices::virtio::INT_USED_RING;
    use std::io::ErrorKind;
    use std::os::unix::net::{UnixListener, UnixStream};
    use std::path::PathBuf;
    use std::time::Duration;
    use virtio_queue::Queue;
    use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
    use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
    use vmm_sys_util::eventfd::EventFd;
    use vmm_sys_util::tempdir::TempDir;

    use crate::vmm::GUEST_CID;
    const QLEN: u16 = 64;
    const RINGS: [u64; 3] = [0x0, 0x1_0000, 0x2_0000];
    /// Buffers of descriptor `i` live at `base + i * STRIDE`.
    const RX_BUFS: u64 = 0x10_0000;
    const TX_BUFS: u64 = 0x80_0000;
    const STRIDE: u64 = 0x1_1000;
    const F_NEXT: u16 = 1;
    const F_WRITE: u16 = 2;

    /// The driver's side of a split virtqueue, written straight into guest memory.
    struct Ring {
        desc: u64,
        avail: u64,
        used: u64,
        next_desc: u16,
        avail_idx: u16,
        used_seen: u16,
    }

    impl Ring {
        fn new(base: u64) -> Ring {
            Ring {
                desc: base,
                avail: base + 16 * u64::from(QLEN),
                used: base + 0x800,
                next_desc: 0,
                avail_idx: 0,
                used_seen: 0,
            }
        }

        fn queue(&self) -> Queue {
            let mut q = Queue::new(QLEN).unwrap();
            q.set_size(QLEN);
            q.try_set_desc_table_address(GuestAddress(self.desc)).unwrap();
            q.try_set_avail_ring_address(GuestAddress(self.avail)).unwrap();
            q.try_set_used_ring_address(GuestAddress(self.used)).unwrap();
            q.set_ready(true);
            q
        }

        /// Makes a chain of (addr, len, flags) available; returns the descriptor indices.
        fn add(&mut self, mem: &GuestMemoryMmap, descs: &[(u64, u32, u16)]) {
            let head = self.next_desc;
            for (i, &(addr, len, flags)) in descs.iter().enumerate() {
                let idx = self.next_desc;
                self.next_desc = (idx + 1) % QLEN;
                let next = if i + 1 < descs.len() { F_NEXT } else { 0 };
                let at = self.desc + 16 * u64::from(idx);
                mem.write_obj(addr, GuestAddress(at)).unwrap();
                mem.write_obj(len, GuestAddress(at + 8)).unwrap();
                mem.write_obj(flags | next, GuestAddress(at + 12)).unwrap();
                mem.write_obj(self.next_desc, GuestAddress(at + 14)).unwrap();
            }
            let slot = self.avail + 4 + 2 * u64::from(self.avail_idx % QLEN);
            mem.write_obj(head, GuestAddress(slot)).unwrap();
            self.avail_idx = self.avail_idx.wrapping_add(1);
            mem.write_obj(self.avail_idx, GuestAddress(self.avail + 2)).unwrap();
        }

        /// The (head, len) pairs the device used since the last call.
        fn take_used(&mut self, mem: &GuestMemoryMmap) -> Vec<(u16, u32)> {
            let idx: u16 = mem.read_obj(GuestAddress(self.used + 2)).unwrap();
            let mut out = Vec::new();
            while self.used_seen != idx {
                let at = self.used + 4 + 8 * u64::from(self.used_seen % QLEN);
                let id: u32 = mem.read_obj(GuestAddress(at)).unwrap();
                let len: u32 = mem.read_obj(GuestAddress(at + 4)).unwrap();
                out.push((id as u16, len));
                self.used_seen = self.used_seen.wrapping_add(1);
            }
            out
        }
    }

    /// A device with its queues in guest memory, seen from the driver's side.
    struct Guest {
        mem: GuestMemoryMmap,
        dev: Vsock,
        irq: Interrupt,
        rx: Ring,
        tx: Ring,
        uds: PathBuf,
        dir: TempDir,
    }

    impl Guest {
        fn new() -> Guest {
            let dir = TempDir::new_with_prefix("/tmp/ember-vsock-").unwrap();
            let uds = dir.as_path().join("v.sock");
            let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap();
            let mut dev = Vsock::new(GUEST_CID, &uds).unwrap();
            let (rx, tx, ev) = (Ring::new(RINGS[0]), Ring::new(RINGS[1]), Ring::new(RINGS[2]));
            dev.activate(Activation {
                mem: mem.clone(),
                queues: vec![rx.queue(), tx.queue(), ev.queue()],
                features: 0,
            });
            let irq = Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap());
            Guest { mem, dev, irq, rx, tx, uds, dir }
        }

        /// Gives the device `n` rx buffers of `size` bytes.
        fn give_rx(&mut self, n: usize, size: u32) {
            for _ in 0..n {
                let addr = RX_BUFS + u64::from(self.rx.next_desc) * STRIDE;
                self.rx.add(&self.mem, &[(addr, size, F_WRITE)]);
            }
            self.dev.process_queue(RXQ, &self.irq).unwrap();
        }

        /// The packets the device put in rx buffers since the last call.
        fn take_rx(&mut self) -> Vec<(Header, Vec<u8>)> {
            let used = self.rx.take_used(&self.mem);
            used.into_iter()
                .map(|(head, len)| {
                    let mut bytes = vec![0u8; len as usize];
                    self.mem.read_slice(&mut bytes, GuestAddress(RX_BUFS + u64::from(head) * STRIDE)).unwrap();
                    let hdr = Header::from_bytes(bytes[..HDR_LEN].try_into().unwrap());
                    assert_eq!(hdr.len as usize, bytes.len() - HDR_LEN);
                    (hdr, bytes[HDR_LEN..].to_vec())
                })
                .collect()
        }

        /// Queues a raw tx chain of (bytes, flags) buffers and runs the tx queue.
        fn send_raw(&mut self, parts: &[(&[u8], u16)]) {
            let mut descs = Vec::new();
            for (i, (bytes, flags)) in parts.iter().enumerate() {
                let addr = TX_BUFS + u64::from((self.tx.next_desc + i as u16) % QLEN) * STRIDE;
                self.mem.write_slice(bytes, GuestAddress(addr)).unwrap();
                descs.push((addr, bytes.len() as u32, *flags));
            }
            self.tx.add(&self.mem, &descs);
            self.dev.process_queue(TXQ, &self.irq).unwrap();
        }

        /// Sends a packet, header and payload in separate descriptors as Linux does.
        fn send(&mut self, hdr: Header, payload: &[u8]) {
            let hdr = Header { len: payload.len() as u32, ..hdr };
            let bytes = hdr.to_bytes();
            if payload.is_empty() {
                self.send_raw(&[(&bytes, 0)]);
            } else {
                self.send_raw(&[(&bytes, 0), (payload, 0)]);
            }
        }

        fn backend(&mut self) {
            self.dev.process_backend(&self.irq).unwrap();
        }

        /// Whether the device's backend fd would wake the event loop.
        fn backend_ready(&self) -> bool {
            let epoll = Epoll::new().unwrap();
            let fd = self.dev.backend_fd().unwrap();
            epoll.ctl(ControlOperation::Add, fd, EpollEvent::new(EventSet::IN, 0)).unwrap();
            let mut ev = [EpollEvent::default(); 1];
            epoll.wait(0, &mut ev).unwrap() > 0
        }

        /// Host connects with `CONNECT port`, guest accepts; returns the stream and host port.
        fn host_connect(&mut self, port: u32, guest_buf_alloc: u32) -> (UnixStream, u32) {
            let mut host = UnixStream::connect(&self.uds).unwrap();
            host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            writeln!(host, "CONNECT {port}").unwrap();
            self.give_rx(1, 4096 + HDR_LEN as u32);
            self.backend();
            let pkts = self.take_rx();
            assert_eq!(pkts.len(), 1);
            let req = pkts[0].0;
            assert_eq!((req.op, req.src_cid, req.dst_cid, req.dst_port), (OP_REQUEST, HOST_CID, GUEST_CID, port));
            assert_eq!(req.buf_alloc, BUF_ALLOC);
            self.send(guest(OP_RESPONSE, port, req.src_port, guest_buf_alloc, 0), &[]);
            let mut line = [0u8; 64];
            let expect = format!("OK {}\n", req.src_port);
            host.read_exact(&mut line[..expect.len()]).unwrap();
            assert_eq!(&line[..expect.len()], expect.as_bytes());
            (host, req.src_port)
        }
    }

    /// A header from the guest.
    fn guest(op: u16, src_port: u32, dst_port: u32, buf_alloc: u32, fwd_cnt: u32) -> Header {
        Header { buf_alloc, fwd_cnt, ..Header::stream((GUEST_CID, src_port), (HOST_CID, dst_port), op) }
    }

    fn ops(pkts: &[(Header, Vec<u8>)]) -> Vec<u16> {
        pkts.iter().map(|(h, _)| h.op).collect()
    }

    /// Reads from `s` until it reports EOF or an error; returns the bytes and whether it closed.
    fn read_to_close(s: &mut UnixStream) -> (Vec<u8>, bool) {
        s.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        let mut all = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf) {
                Ok(0) => return (all, true),
                Ok(n) => all.extend_from_slice(&buf[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => return (all, false),
                Err(_) => return (all, true),
            }
        }
    }

    #[test]
    fn describes_itself() {
        let g = Guest::new();
        assert_eq!(g.dev.device_type(), 19);
        assert_eq!(g.dev.queue_max_sizes(), &[256, 256, 256]);
        assert_eq!(g.dev.features(), VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX);
        let mut cfg = [0xffu8; 12];
        g.dev.read_config(0, &mut cfg);
        assert_eq!(cfg, [3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        let mut hi = [0xffu8; 4];
        g.dev.read_config(4, &mut hi);
        assert_eq!(hi, [0; 4]);
        assert!(matches!(Vsock::new(2, &g.dir.as_path().join("x")), Err(Error::Cid(2))));
        // A stale socket file is replaced.
        drop(g.dev);
        assert!(g.uds.exists());
        Vsock::new(GUEST_CID, &g.uds).unwrap();
    }

    #[test]
    fn host_connects_and_data_flows_both_ways() {
        let mut g = Guest::new();
        let (mut host, hport) = g.host_connect(5000, 64 * 1024);
        assert_ne!(g.irq.status() & INT_USED_RING, 0);

        // Host to guest.
        host.write_all(b"hello guest").unwrap();
        g.give_rx(2, 4096 + HDR_LEN as u32);
        g.backend();
        let pkts = g.take_rx();
        assert_eq!(ops(&pkts), [OP_RW]);
        let (rw, data) = &pkts[0];
        assert_eq!((rw.src_port, rw.dst_port, rw.src_cid, rw.dst_cid), (hport, 5000, HOST_CID, GUEST_CID));
        assert_eq!(data, b"hello guest");

        // Guest to host, counted in fwd_cnt.
        g.send(guest(OP_RW, 5000, hport, 64 * 1024, 11), b"hello host");
        let mut buf = [0u8; 10];
        host.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"hello host");
        g.send(guest(OP_CREDIT_REQUEST, 5000, hport, 64 * 1024, 11), &[]);
        let pkts = g.take_rx();
        assert_eq!(ops(&pkts), [OP_CREDIT_UPDATE]);
        assert_eq!((pkts[0].0.fwd_cnt, pkts[0].0.buf_alloc), (10, BUF_ALLOC));
        assert_eq!(g.dev.buffered_bytes(), 0);

        // Host closes: the guest hears of it once the data before it is through.
        host.write_all(b"bye").unwrap();
        drop(host);
        g.give_rx(2, 4096 + HDR_LEN as u32);
        g.backend();
        let pkts = g.take_rx();
        assert_eq!(ops(&pkts), [OP_RW, OP_SHUTDOWN]);
        assert_eq!(pkts[0].1, b"bye");
        assert_eq!(pkts[1].0.flags, SHUTDOWN_RCV | SHUTDOWN_SEND);
        // The guest finishes the close; nothing is left.
        g.send(guest(OP_RST, 5000, hport, 0, 0), &[]);
        assert_eq!(g.dev.muxer.connection_count(), 0);
        assert!(!g.backend_ready());
    }

    #[test]
    fn guest_shutdown_and_host_half_close() {
        let mut g = Guest::new();
        let (mut host, hport) = g.host_connect(6000, 64 * 1024);
        // Host half-closes: the guest gets SHUTDOWN(SEND) and may still send.
        host.shutdown(std::net::Shutdown::Write).unwrap();
        g.give_rx(2, 4096 + HDR_LEN as u32);
        g.backend();
        let pkts = g.take_rx();
        assert_eq!(ops(&pkts), [OP_SHUTDOWN]);
        assert_eq!(pkts[0].0.flags, SHUTDOWN_SEND);
        g.send(guest(OP_RW, 6000, hport, 64 * 1024, 0), b"answer");
        // The guest closes both ways: the host reads the rest then EOF, the guest gets RST.
        g.send(Header { flags: SHUTDOWN_RCV | SHUTDOWN_SEND, ..guest(OP_SHUTDOWN, 6000, hport, 64 * 1024, 0) }, &[]);
        assert_eq!(read_to_close(&mut host), (b"answer".to_vec(), true));
        let pkts = g.take_rx();
        assert_eq!(ops(&pkts), [OP_RST]);
        assert_eq!(pkts[0].0.fwd_cnt, 6);
        assert_eq!(g.dev.muxer.connection_count(), 0);
    }

    #[test]
    fn guest_connects_to_host_listener() {
        let mut g = Guest::new();
        let listener = UnixListener::bind(format!("{}_5005", g.uds.display())).unwrap();
        g.give_rx(4, 4096 + HDR_LEN as u32);
        g.send(guest(OP_REQUEST, 1234, 5005, 32 * 1024, 0), &[]);
        let pkts = g.take_rx();
        assert_eq!(ops(&pkts), [OP_RESPONSE]);
        let resp = pkts[0].0;
        assert_eq!((resp.src_port, resp.dst_port, resp.dst_cid, resp.buf_alloc), (5005, 1234, GUEST_CID, BUF_ALLOC));
        let (mut host, _) = listener.accept().unwrap();
        host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();

        g.send(guest(OP_RW, 1234, 5005, 32 * 1024, 0), b"ping");
        let mut buf = [0u8; 4];
        host.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"ping");
        host.write_all(b"pong").unwrap();
        g.backend();
        let pkts = g.take_rx();
        assert_eq!(ops(&pkts), [OP_RW]);
        assert_eq!((pkts[0].0.src_port, pkts[0].0.dst_port, pkts[0].0.fwd_cnt), (5005, 1234, 4));
        assert_eq!(pkts[0].1, b"pong");

        // The guest resets: the host sees the stream close.
        g.send(guest(OP_RST, 1234, 5005, 0, 0), &[]);
        assert_eq!(read_to_close(&mut host), (Vec::new(), true));
    }

    #[test]
    fn guest_connect_to_missing_listener_gets_rst() {
        let mut g = Guest::new();
        g.give_rx(2, 4096 + HDR_LEN as u32);
        g.send(guest(OP_REQUEST, 1234, 5006, 32 * 1024, 0), &[]);
        let pkts = g.take_rx();
        assert_eq!(ops(&pkts), [OP_RST]);
        assert_eq!((pkts[0].0.src_port, pkts[0].0.dst_port, pkts[0].0.dst_cid), (5006, 1234, GUEST_CID));
        // Packets for connections that do not exist are reset too, resets are not answered.
        g.send(guest(OP_RW, 1234, 5006, 32 * 1024, 0), b"x");
        g.send(guest(OP_RST, 1234, 5006, 0, 0), &[]);
        assert_eq!(ops(&g.take_rx()), [OP_RST]);
        assert_eq!(g.dev.muxer.connection_count(), 0);
    }

    #[test]
    fn host_to_guest_respects_guest_credit() {
        let mut g = Guest::new();
        let (mut host, hport) = g.host_connect(5000, 4096);
        host.set_nonblocking(true).unwrap();
        let chunk = vec![0x5au8; 64 * 1024];
        let mut written = 0usize;
        let mut blocked = false;
        g.give_rx(16, 64 * 1024 + HDR_LEN as u32);
        while written < 1 << 20 {
            match host.write(&chunk) {
                Ok(n) => written += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    blocked = true;
                    break;
                }
                Err(e) => panic!("{e}"),
            }
            g.backend();
        }
        for _ in 0..4 {
            g.backend();
        }
        // The guest never read: it got exactly its 4 KiB and the writer was pushed back.
        let got: usize = g.take_rx().iter().map(|(h, d)| if h.op == OP_RW { d.len() } else { 0 }).sum();
        assert_eq!(got, 4096);
        assert!(blocked, "the host wrote {written} bytes without blocking");
        assert_eq!(g.dev.buffered_bytes(), 0);
        // Nothing for the device to do until the guest reads: the event loop does not spin.
        assert!(!g.backend_ready());

        // The guest consumes and says so: the next 4 KiB flows.
        g.send(guest(OP_CREDIT_UPDATE, 5000, hport, 4096, 4096), &[]);
        let got: usize = g.take_rx().iter().map(|(_, d)| d.len()).sum();
        assert_eq!(got, 4096);
        assert!(!g.backend_ready());
    }

    #[test]
    fn rx_waits_for_guest_buffers() {
        let mut g = Guest::new();
        let (mut host, _) = g.host_connect(5000, 64 * 1024);
        host.write_all(&[1u8; 100]).unwrap();
        g.backend();
        assert!(g.take_rx().is_empty());
        assert!(!g.backend_ready());
        // A buffer whose header spans two descriptors, as older Linux drivers give.
        let addr = RX_BUFS + u64::from(g.rx.next_desc) * STRIDE;
        g.rx.add(&g.mem, &[(addr, 20, F_WRITE), (addr + 20, 4096, F_WRITE)]);
        g.dev.process_queue(RXQ, &g.irq).unwrap();
        let used = g.rx.take_used(&g.mem);
        assert_eq!(used.len(), 1);
        assert_eq!(used[0].1, HDR_LEN as u32 + 100);
        let mut bytes = [0u8; HDR_LEN + 100];
        g.mem.read_slice(&mut bytes, GuestAddress(addr)).unwrap();
        let hdr = Header::from_bytes(bytes[..HDR_LEN].try_into().unwrap());
        assert_eq!((hdr.op, hdr.len), (OP_RW, 100));
        assert!(bytes[HDR_LEN..].iter().all(|b| *b == 1));
    }

    #[test]
    fn guest_overrunning_credit_is_reset() {
        let mut g = Guest::new();
        let (mut host, hport) = g.host_connect(5000, 64 * 1024);
        // The host never reads. The guest may send BUF_ALLOC bytes without hearing back.
        let chunk = vec![7u8; MAX_PAYLOAD as usize];
        for _ in 0..BUF_ALLOC / MAX_PAYLOAD {
            g.send(guest(OP_RW, 5000, hport, 64 * 1024, 0), &chunk);
        }
        assert_eq!(ops(&g.take_rx()), Vec::<u16>::new());
        assert!(g.dev.buffered_bytes() <= BUF_ALLOC as usize);
        assert_eq!(g.dev.muxer.connection_count(), 1);
        // One byte more is an overrun (the credit update it would need is still owed).
        g.send(guest(OP_RW, 5000, hport, 64 * 1024, 0), b"!");
        g.give_rx(2, 4096);
        assert_eq!(ops(&g.take_rx()), [OP_RST]);
        assert_eq!(g.dev.buffered_bytes(), 0);
        assert_eq!(g.dev.muxer.connection_count(), 0);
        let (_, closed) = read_to_close(&mut host);
        assert!(closed);
    }

    #[test]
    fn credit_update_after_forwarding() {
        let mut g = Guest::new();
        let (mut host, hport) = g.host_connect(5000, 64 * 1024);
        g.give_rx(4, 4096 + HDR_LEN as u32);
        let chunk = vec![9u8; 32 * 1024];
        g.send(guest(OP_RW, 5000, hport, 64 * 1024, 0), &chunk);
        assert!(g.take_rx().is_empty());
        g.send(guest(OP_RW, 5000, hport, 64 * 1024, 0), &chunk);
        let pkts = g.take_rx();
        assert_eq!(ops(&pkts), [OP_CREDIT_UPDATE]);
        // What the socket took is counted; the rest waits, within our credit.
        let fwd = pkts[0].0.fwd_cnt as usize;
        assert_eq!(fwd + g.dev.buffered_bytes(), 64 * 1024);
        let mut got = vec![0u8; 64 * 1024];
        host.read_exact(&mut got).unwrap();
        assert!(got.iter().all(|b| *b == 9));
    }

    /// Interrupts raised since the last call (the irqfd's counter).
    fn irqs(g: &Guest) -> u64 {
        g.irq.irqfd.read().unwrap_or(0)
    }

    #[test]
    fn tx_interrupt_rides_on_rx_or_waits_for_the_timer() {
        let mut g = Guest::new();
        let (mut host, hport) = g.host_connect(5000, 64 * 1024);
        g.give_rx(4, 4096 + HDR_LEN as u32);
        let _ = irqs(&g);
        g.tx.take_used(&g.mem);

        // A packet and no answer: the tx interrupt waits for its timer, then comes alone.
        g.send(guest(OP_RW, 5000, hport, 64 * 1024, 0), b"ping");
        assert_eq!(irqs(&g), 0);
        assert_eq!(g.tx.take_used(&g.mem).len(), 1, "the chain is used at once, only not signalled");
        std::thread::sleep(TX_IRQ_DELAY * 3);
        assert!(g.backend_ready(), "the timer wakes the event loop");
        g.backend();
        assert_eq!(irqs(&g), 1);
        assert!(!g.backend_ready(), "a fired timer is cleared");
        // From here on the timer must not fire however slowly the test runs (a loaded machine
        // once took over a millisecond between two steps).
        g.dev.tx_irq_delay = Duration::from_secs(600);

        // A packet and an answer: one interrupt for both, and no timer left behind.
        g.send(guest(OP_RW, 5000, hport, 64 * 1024, 0), b"ping");
        let mut buf = [0u8; 8];
        host.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"pingping");
        host.write_all(b"pong").unwrap();
        g.backend();
        assert_eq!(ops(&g.take_rx()), [OP_RW]);
        assert_eq!(irqs(&g), 1);
        assert!(g.dev.tx_deadline.is_none() && !g.backend_ready(), "no timer is left behind");

        // A burst does not wait on the timer: a full batch is signalled at once.
        for _ in 0..TX_IRQ_BATCH {
            g.send(guest(OP_RW, 5000, hport, 64 * 1024, 0), b"x");
        }
        assert_eq!(irqs(&g), 1);
    }

    #[test]
    fn garbage_on_tx_does_not_hurt() {
        let mut g = Guest::new();
        let (mut host, hport) = g.host_connect(5000, 64 * 1024);
        let good = guest(OP_RW, 5000, hport, 64 * 1024, 0);
        let mut bad_type = Header { len: 1, ..good };
        bad_type.kind = 2;
        let wrong_src = Header { src_cid: 4, len: 1, ..good };
        let huge = Header { len: u32::MAX, ..good };
        let short = Header { len: 100, ..good }; // only 1 byte follows
        g.send_raw(&[(&[1, 2, 3], 0)]);
        g.send_raw(&[(&good.to_bytes()[..40], 0)]);
        g.send_raw(&[(&Header { len: 1, ..good }.to_bytes(), F_WRITE), (b"x", 0)]);
        g.send_raw(&[(&bad_type.to_bytes(), 0), (b"x", 0)]);
        g.send_raw(&[(&wrong_src.to_bytes(), 0), (b"x", 0)]);
        g.send_raw(&[(&huge.to_bytes(), 0), (b"x", 0)]);
        // A descriptor outside guest memory.
        g.tx.add(&g.mem, &[(0xffff_0000_0000, 44, 0)]);
        g.dev.process_queue(TXQ, &g.irq).unwrap();
        // Every chain comes back (host_connect's RESPONSE and the seven above).
        assert_eq!(g.tx.take_used(&g.mem).len(), 8);
        assert!(g.take_rx().is_empty());
        assert_eq!(read_to_close(&mut host), (Vec::new(), false));

        // A header split across descriptors works.
        let bytes = Header { len: 3, ..good }.to_bytes();
        g.send_raw(&[(&bytes[..10], 0), (&bytes[10..], 0), (b"abc", 0)]);
        let mut buf = [0u8; 3];
        host.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"abc");

        // A payload shorter than its header says loses stream bytes: the connection is reset.
        g.give_rx(1, 4096);
        g.send_raw(&[(&short.to_bytes(), 0), (b"x", 0)]);
        assert_eq!(ops(&g.take_rx()), [OP_RST]);
        assert_eq!(read_to_close(&mut host), (Vec::new(), true));
    }

    #[test]
    fn corrupted_avail_index_does_not_hang() {
        let mut g = Guest::new();
        let (mut host, _) = g.host_connect(5000, 64 * 1024);
        // The guest claims far more chains than the ring holds, on both queues.
        g.mem.write_obj(g.tx.avail_idx.wrapping_add(1000), GuestAddress(g.tx.avail + 2)).unwrap();
        g.dev.process_queue(TXQ, &g.irq).unwrap();
        host.write_all(b"data").unwrap();
        g.mem.write_obj(g.rx.avail_idx.wrapping_add(1000), GuestAddress(g.rx.avail + 2)).unwrap();
        g.backend();
        g.dev.process_queue(RXQ, &g.irq).unwrap();
        assert!(g.take_rx().is_empty());
    }

    #[test]
    fn event_idx_asks_for_rx_buffers_when_out() {
        let mut g = Guest::new();
        let (rx, tx, ev) = (Ring::new(RINGS[0]), Ring::new(RINGS[1]), Ring::new(RINGS[2]));
        let mut queues = vec![rx.queue(), tx.queue(), ev.queue()];
        queues.iter_mut().for_each(|q| q.set_event_idx(true));
        g.dev.activate(Activation { mem: g.mem.clone(), queues, features: VIRTIO_RING_F_EVENT_IDX });
        (g.rx, g.tx) = (rx, tx);
        g.give_rx(1, 4096);
        let mut hosts = Vec::new();
        for port in [5000, 5001] {
            let mut host = UnixStream::connect(&g.uds).unwrap();
            writeln!(host, "CONNECT {port}").unwrap();
            hosts.push(host);
        }
        g.backend();
        assert_eq!(ops(&g.take_rx()), [OP_REQUEST]);
        assert_ne!(g.irq.status() & INT_USED_RING, 0);
        // The second request waits: the device set avail_event so the driver kicks on its next
        // buffer.
        let avail_event: u16 = g.mem.read_obj(GuestAddress(g.rx.used + 4 + 8 * u64::from(QLEN))).unwrap();
        assert_eq!(avail_event, 1);
        g.give_rx(1, 4096);
        assert_eq!(ops(&g.take_rx()), [OP_REQUEST]);
    }

    #[test]
    fn bad_connect_lines_are_closed() {
        let mut g = Guest::new();
        g.dev.muxer.connect_timeout = Duration::from_millis(50);
        g.give_rx(4, 4096);
        let mut malformed = UnixStream::connect(&g.uds).unwrap();
        malformed.write_all(b"CONNECT x\n").unwrap();
        let mut long = UnixStream::connect(&g.uds).unwrap();
        long.write_all(&[b'9'; 40]).unwrap();
        let mut silent = UnixStream::connect(&g.uds).unwrap();
        let mut slow = UnixStream::connect(&g.uds).unwrap();
        slow.write_all(b"CONN").unwrap();
        g.backend();
        assert_eq!(read_to_close(&mut malformed), (Vec::new(), true));
        assert_eq!(read_to_close(&mut long), (Vec::new(), true));
        assert_eq!(g.dev.muxer.connection_count(), 2);
        std::thread::sleep(Duration::from_millis(100));
        assert!(g.backend_ready());
        g.backend();
        assert_eq!(read_to_close(&mut silent), (Vec::new(), true));
        assert_eq!(read_to_close(&mut slow), (Vec::new(), true));
        assert_eq!(g.dev.muxer.connection_count(), 0);
        assert!(g.take_rx().is_empty());
        assert!(!g.backend_ready());
    }

    #[test]
    fn unanswered_request_times_out_and_rst_closes() {
        let mut g = Guest::new();
        g.dev.muxer.connect_timeout = Duration::from_millis(50);
        g.give_rx(4, 4096);
        // The guest refuses: the host stream is closed without an OK.
        let mut refused = UnixStream::connect(&g.uds).unwrap();
        refused.write_all(b"CONNECT 7000\n").unwrap();
        g.backend();
        let req = g.take_rx()[0].0;
        g.send(guest(OP_RST, 7000, req.src_port, 0, 0), &[]);
        assert_eq!(read_to_close(&mut refused), (Vec::new(), true));
        // The guest never answers: after the timeout the stream closes and the guest gets RST.
        let mut ignored = UnixStream::connect(&g.uds).unwrap();
        ignored.write_all(b"CONNECT 7001\n").unwrap();
        g.backend();
        let req = g.take_rx()[0].0;
        assert_eq!(req.op, OP_REQUEST);
        std::thread::sleep(Duration::from_millis(100));
        g.backend();
        assert_eq!(read_to_close(&mut ignored), (Vec::new(), true));
        let pkts = g.take_rx();
        assert_eq!(ops(&pkts), [OP_RST]);
        assert_eq!(pkts[0].0.src_port, req.src_port);
        assert_eq!(g.dev.muxer.connection_count(), 0);
    }

    #[test]
    fn connection_cap_and_rst_flood() {
        let mut g = Guest::new();
        g.dev.muxer.max_connections = 2;
        let listener = UnixListener::bind(format!("{}_80", g.uds.display())).unwrap();
        g.give_rx(8, 4096);
        for port in 0..3 {
            g.send(guest(OP_REQUEST, 1000 + port, 80, 4096, 0), &[]);
        }
        assert_eq!(ops(&g.take_rx()), [OP_RESPONSE, OP_RESPONSE, OP_RST]);
        // The host cannot exceed the cap either.
        let mut extra = UnixStream::connect(&g.uds).unwrap();
        extra.write_all(b"CONNECT 1\n").unwrap();
        g.backend();
        assert_eq!(read_to_close(&mut extra), (Vec::new(), true));
        drop(listener);
        // Requests to nowhere, many more than rx buffers: the owed resets stay bounded.
        for port in 0..1000 {
            g.send(guest(OP_REQUEST, 2000 + port, 81, 4096, 0), &[]);
        }
        // The five rx buffers left took five resets; at most MAX_PENDING_RSTS more wait.
        assert_eq!(ops(&g.take_rx()), [OP_RST; 5]);
        let mut resets = 0;
        for _ in 0..20 {
            g.give_rx(32, 4096);
            let pkts = g.take_rx();
            assert!(pkts.iter().all(|(h, _)| h.op == OP_RST));
            resets += pkts.len();
            if !g.dev.muxer.has_rx() {
                break;
            }
        }
        assert!((200..=256).contains(&resets), "{resets} resets");
        assert_eq!(g.dev.muxer.connection_count(), 2);
    }

    #[test]
    fn reset_drops_connections_keeps_listener() {
        let mut g = Guest::new();
        let (mut host, _) = g.host_connect(5000, 64 * 1024);
        g.dev.reset();
        assert_eq!(read_to_close(&mut host), (Vec::new(), true));
        assert_eq!(g.dev.muxer.connection_count(), 0);
        // Queues are gone until the driver activates again; the listener still accepts.
        let mut again = UnixStream::connect(&g.uds).unwrap();
        again.write_all(b"CONNECT 5000\n").unwrap();
        g.dev.process_queue(TXQ, &g.irq).unwrap();
        g.backend();
        assert_eq!(g.dev.muxer.connection_count(), 1);
        let (rx, tx, ev) = (Ring::new(RINGS[0]), Ring::new(RINGS[1]), Ring::new(RINGS[2]));
        g.dev.activate(Activation {
            mem: g.mem.clone(),
            queues: vec![rx.queue(), tx.queue(), ev.queue()],
            features: 0,
        });
        g.rx = rx;
        g.tx = tx;
        g.give_rx(1, 4096);
        assert_eq!(ops(&g.take_rx()), [OP_REQUEST]);
    }

    #[test]
    fn restore_tells_the_driver_its_connections_are_gone() {
        let dir = TempDir::new_with_prefix("/tmp/ember-vsock-").unwrap();
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap();
        let mut dev = Vsock::new(GUEST_CID, &dir.as_path().join("v.sock")).unwrap();
        let (rx, tx, mut ev) = (Ring::new(RINGS[0]), Ring::new(RINGS[1]), Ring::new(RINGS[2]));
        // The driver keeps event buffers posted; one is enough for the reset.
        const EVENT_BUF: u64 = 0x00f0_0000;
        mem.write_obj(0xffff_ffffu32, GuestAddress(EVENT_BUF)).unwrap();
        ev.add(&mem, &[(EVENT_BUF, 8, F_WRITE)]);
        dev.activate(Activation { mem: mem.clone(), queues: vec![rx.queue(), tx.queue(), ev.queue()], features: 0 });
        let irq = Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap());
        dev.restored(&irq).unwrap();
        assert_eq!(ev.take_used(&mem), vec![(0, 4)]);
        assert_eq!(mem.read_obj::<u32>(GuestAddress(EVENT_BUF)).unwrap(), EVENT_TRANSPORT_RESET);
        assert_eq!(irq.status() & INT_USED_RING, INT_USED_RING);
        assert_eq!(irq.irqfd.read().unwrap(), 1);
        // Without a posted buffer there is nothing to say, and nothing breaks.
        dev.restored(&irq).unwrap();
        assert!(ev.take_used(&mem).is_empty());
    }
}
