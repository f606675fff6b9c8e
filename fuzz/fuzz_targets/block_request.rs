//! Drives the real virtio-block device with guest memory the fuzzer controls: the descriptor
//! table, the avail ring and the data the descriptors point at (request headers, buffers).
//!
//! Input layout (missing bytes read as zero):
//! - byte 0: bit 0 = read-write drive (else read-only), bit 1 = negotiate EVENT_IDX,
//!   bit 2 = take the avail index raw from the next two bytes (else the number of heads);
//! - bytes 1..3: raw avail index (used only with bit 2);
//! - byte 3: number of descriptors (mod 17); byte 4: number of avail heads (mod 17);
//! - 12 bytes per descriptor: addr u32, len u32, flags u16, next u16 (little endian). An addr
//!   with bit 31 clear lands in data memory, with it set it is used raw (outside guest memory);
//!   a len with bit 31 clear is taken mod 16 KiB, with it set it is used raw;
//! - 2 bytes per avail head (raw);
//! - the rest is copied into data memory at `DATA_BASE`.
#![no_main]

use std::io::Write;
use std::sync::OnceLock;

use ember::vmm::devices::virtio::block::Block;
use ember::vmm::devices::virtio::{Activation, Interrupt, VirtioDevice, VIRTIO_RING_F_EVENT_IDX};
use libfuzzer_sys::fuzz_target;
use virtio_queue::desc::{split::Descriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::Queue;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::tempfile::TempFile;

const MEM_SIZE: u64 = 1 << 20;
const QUEUE_LEN: u16 = 16;
/// Above the descriptor table (0..0x100), avail ring and used ring of a 16-entry queue at 0.
const DATA_BASE: u64 = 0x1000;
const DISK_SECTORS: usize = 8;

/// The backing file, created once per process (8 sectors, sector `s` filled with byte `s`). It
/// lives in a `static`, so it stays reachable (no leak report) and is never deleted mid-run.
fn disk() -> &'static std::path::Path {
    static DISK: OnceLock<TempFile> = OnceLock::new();
    DISK.get_or_init(|| {
        let f = TempFile::new().expect("temp file");
        let mut content = Vec::new();
        for s in 0..DISK_SECTORS {
            content.extend(std::iter::repeat_n(s as u8, 512));
        }
        f.as_file().write_all(&content).expect("fill temp file");
        f
    })
    .as_path()
}

struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn take<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        let n = self.0.len().min(N);
        out[..n].copy_from_slice(&self.0[..n]);
        self.0 = &self.0[n..];
        out
    }
    fn u8(&mut self) -> u8 {
        self.take::<1>()[0]
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.take())
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.take())
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let config = input.u8();
    let raw_avail_idx = input.u16();
    let n_descs = u16::from(input.u8()) % (QUEUE_LEN + 1);
    let n_heads = u16::from(input.u8()) % (QUEUE_LEN + 1);

    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).unwrap();
    let mock = MockSplitQueue::create(&mem, GuestAddress(0), QUEUE_LEN);

    for i in 0..n_descs {
        let addr = input.u32();
        let len = input.u32();
        let flags = input.u16();
        let next = input.u16();
        let addr = if addr & 0x8000_0000 == 0 {
            DATA_BASE + u64::from(addr) % (MEM_SIZE - DATA_BASE)
        } else {
            u64::from(addr)
        };
        let len = if len & 0x8000_0000 == 0 { len % 0x4000 } else { len };
        mock.desc_table().store(i, RawDescriptor::from(Descriptor::new(addr, len, flags, next))).unwrap();
    }
    for i in 0..n_heads {
        let head = input.u16();
        mock.avail().ring().ref_at(usize::from(i)).unwrap().store(head);
    }
    let avail_idx = if config & 4 != 0 { raw_avail_idx } else { n_heads };
    mock.avail().idx().store(avail_idx);

    let rest = input.0;
    let n = rest.len().min((MEM_SIZE - DATA_BASE) as usize);
    mem.write_slice(&rest[..n], GuestAddress(DATA_BASE)).unwrap();

    let queue: Queue = mock.create_queue().unwrap();
    let read_only = config & 1 == 0;
    let mut dev = Block::open(disk(), read_only, "fuzz").unwrap();
    let features = if config & 2 != 0 { VIRTIO_RING_F_EVENT_IDX } else { 0 };
    dev.activate(Activation { mem: mem.clone(), queues: vec![queue], features });
    let irq = Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap());
    let _ = dev.process_queue(0, &irq);
});
