//! Drives the virtio-mmio transport (`ember::vmm::devices::virtio::mmio::MmioTransport`) the
//! way a guest driver does, with register reads and writes of 1, 2, 4 or 8 bytes at offsets and
//! with values from the input, over a real device: the virtio-block device on an 8-sector temp
//! file, or the vsock device on a Unix socket in a temp dir. Guest memory is two 64 KiB regions
//! with a 64 KiB hole between them, so the queue addresses a driver programs land inside, across
//! the hole or outside. Besides single accesses the input can run the status handshake with
//! feature negotiation, set up a queue, set DRIVER_OK, write guest memory (rings, descriptors,
//! requests), and notify a queue, which runs the device on it as the VMM's event loop does when
//! the queue's ioeventfd fires.
//!
//! Input: byte 0 picks the device (bits 0-1: 0 block read-only, 1 block read-write, 2 and 3
//! vsock); then operations, a kind byte and its arguments each, until the input runs out (at
//! most 256 of them). `fn run_op` documents the kinds.
//!
//! It passes if nothing panics or hangs and: the identification registers (MagicValue,
//! Version, DeviceID, VendorID) read as their constants; a register access that is not 4 bytes
//! wide reads as zeros; QueueNumMax never exceeds the device's 256; the transport is activated
//! exactly when the device holds its queues, and then the status has DRIVER_OK (without it,
//! DRIVER_OK means a failed activation and comes with NEEDS_RESET); and, for block, a state
//! saved at any point restores into a fresh transport and device and saves back the same.
#![no_main]

#[path = "common/input.rs"]
mod input;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use ember::vmm::devices::virtio::block::Block;
use ember::vmm::devices::virtio::mmio::MmioTransport;
use ember::vmm::devices::virtio::vsock::Vsock;
use ember::vmm::devices::virtio::{Interrupt, VirtioDevice};
use input::Input;
use libfuzzer_sys::fuzz_target;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::tempdir::TempDir;
use vmm_sys_util::tempfile::TempFile;

const MAGIC_VALUE: u32 = 0x7472_6976;
const MMIO_VERSION: u32 = 2;
const VENDOR_ID: u32 = 0x454d_4252;
const DEVICE_TYPE_BLOCK: u32 = 2;
const DEVICE_TYPE_VSOCK: u32 = 19;
const MAX_QUEUE_SIZE: u32 = 256;

const REG_MAGIC: u64 = 0x000;
const REG_VERSION: u64 = 0x004;
const REG_DEVICE_ID: u64 = 0x008;
const REG_VENDOR_ID: u64 = 0x00c;
const REG_DEVICE_FEATURES: u64 = 0x010;
const REG_DEVICE_FEATURES_SEL: u64 = 0x014;
const REG_DRIVER_FEATURES: u64 = 0x020;
const REG_DRIVER_FEATURES_SEL: u64 = 0x024;
const REG_QUEUE_SEL: u64 = 0x030;
const REG_QUEUE_NUM_MAX: u64 = 0x034;
const REG_QUEUE_NUM: u64 = 0x038;
const REG_QUEUE_READY: u64 = 0x044;
const REG_STATUS: u64 = 0x070;
const REG_QUEUE_DESC_LOW: u64 = 0x080;
const REG_QUEUE_DESC_HIGH: u64 = 0x084;
const REG_QUEUE_AVAIL_LOW: u64 = 0x090;
const REG_QUEUE_AVAIL_HIGH: u64 = 0x094;
const REG_QUEUE_USED_LOW: u64 = 0x0a0;
const REG_QUEUE_USED_HIGH: u64 = 0x0a4;
const REG_CONFIG: u64 = 0x100;

const STATUS_ACKNOWLEDGE: u32 = 1;
const STATUS_DRIVER: u32 = 2;
const STATUS_DRIVER_OK: u32 = 4;
const STATUS_FEATURES_OK: u32 = 8;
const STATUS_NEEDS_RESET: u32 = 0x40;

/// Guest memory: two regions with a hole between them.
const REGION: u64 = 0x1_0000;
const REGION_1: u64 = 0x2_0000;
const MAX_OPS: usize = 256;
const DISK_SECTORS: usize = 8;

/// The block device's backing file, made once per process (sector `s` filled with byte `s`).
fn disk() -> &'static Path {
    static DISK: OnceLock<TempFile> = OnceLock::new();
    DISK.get_or_init(|| {
        let f = TempFile::new().expect("temp file");
        let content: Vec<u8> = (0..DISK_SECTORS).flat_map(|s| std::iter::repeat_n(s as u8, 512)).collect();
        f.as_file().write_all(&content).expect("fill temp file");
        f
    })
    .as_path()
}

/// Where the vsock device listens: a socket in a directory made once per process.
fn vsock_path() -> &'static PathBuf {
    static DIR: OnceLock<(TempDir, PathBuf)> = OnceLock::new();
    &DIR.get_or_init(|| {
        let dir = TempDir::new_with_prefix("/tmp/ember-fuzz-mmio-").expect("temp dir");
        let path = dir.as_path().join("v.sock");
        (dir, path)
    })
    .1
}

fn new_irq() -> Arc<Interrupt> {
    Arc::new(Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).expect("eventfd")))
}

fn rd(t: &mut MmioTransport, offset: u64) -> u32 {
    let mut d = [0u8; 4];
    t.read(offset, &mut d);
    u32::from_le_bytes(d)
}

fn wr(t: &mut MmioTransport, offset: u64, v: u32) {
    t.write(offset, &v.to_le_bytes());
}

struct Rig {
    mem: GuestMemoryMmap,
    irq: Arc<Interrupt>,
    device: Arc<Mutex<dyn VirtioDevice>>,
    transport: MmioTransport,
    /// Some(read_only) for block.
    block: Option<bool>,
    device_id: u32,
    queues: usize,
}

impl Rig {
    /// An offset in the register window: a register, a config space byte, or anywhere.
    fn offset(input: &mut Input) -> u64 {
        match input.u8() {
            s @ 0..=63 => u64::from(s) * 4,
            s @ 64..=127 => REG_CONFIG + u64::from(s - 64),
            _ => u64::from(input.u16()),
        }
    }

    /// A queue address: in region 0, in region 1, a raw low half, or raw low and high halves.
    /// Returns (low, high).
    fn address(input: &mut Input) -> (u32, Option<u32>) {
        match input.u8() % 4 {
            0 => (u32::from(input.u16()), None),
            1 => (REGION_1 as u32 + u32::from(input.u16()), None),
            2 => (input.u32(), None),
            _ => (input.u32(), Some(input.u32())),
        }
    }

    fn set_address(&mut self, low_reg: u64, high_reg: u64, (low, high): (u32, Option<u32>)) {
        wr(&mut self.transport, low_reg, low);
        if let Some(high) = high {
            wr(&mut self.transport, high_reg, high);
        }
    }

    /// Runs one operation; false when the input is used up.
    ///
    /// Kinds (the kind byte mod 8):
    /// - 0: read: offset, width (1, 2, 4, 8);
    /// - 1: write: offset, width, then `width` bytes of value;
    /// - 2: handshake: ACKNOWLEDGE, DRIVER, the device features read, u32 + u32 of driver
    ///   features written (low then high), FEATURES_OK;
    /// - 3: queue setup: queue index (mod 4: one past the device's queues is possible), size
    ///   (a power of two, 3, 0 or raw), descriptor, avail and used addresses, then QueueReady
    ///   (1, or a raw u32);
    /// - 4: DRIVER_OK added to the status read back;
    /// - 5: notify: queue index (mod the device's queues) processed by the device;
    /// - 6: guest memory write: region bit, u16 offset, length byte, the bytes;
    /// - 7: block: save the transport's state, restore it into a fresh transport and device,
    ///   which must save the same; vsock: the backend's events processed.
    fn run_op(&mut self, input: &mut Input) -> bool {
        if input.is_empty() {
            return false;
        }
        match input.u8() % 8 {
            0 => {
                let offset = Self::offset(input);
                let width = input.pick(&[1usize, 2, 4, 8]);
                let mut data = [0xa5u8; 8];
                self.transport.read(offset, &mut data[..width]);
                self.check_read(offset, &data[..width]);
            }
            1 => {
                let offset = Self::offset(input);
                let width = input.pick(&[1usize, 2, 4, 8]);
                let value = input.bytes(width).to_vec();
                let mut data = [0u8; 8];
                data[..value.len()].copy_from_slice(&value);
                self.transport.write(offset, &data[..width]);
            }
            2 => {
                let t = &mut self.transport;
                wr(t, REG_STATUS, STATUS_ACKNOWLEDGE);
                wr(t, REG_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
                for sel in 0..2 {
                    wr(t, REG_DEVICE_FEATURES_SEL, sel);
                    let _ = rd(t, REG_DEVICE_FEATURES);
                }
                for sel in 0..2 {
                    let v = input.u32();
                    wr(t, REG_DRIVER_FEATURES_SEL, sel);
                    wr(t, REG_DRIVER_FEATURES, v);
                }
                wr(t, REG_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK);
            }
            3 => {
                let queue = u32::from(input.u8() % 4);
                let size = match input.u8() % 8 {
                    0 => 1,
                    1 => 2,
                    2 => 8,
                    3 => 16,
                    4 => 256,
                    5 => 3,
                    6 => 0,
                    _ => input.u16(),
                };
                let (desc, avail, used) = (Self::address(input), Self::address(input), Self::address(input));
                let ready = if input.u8() % 8 == 0 { input.u32() } else { 1 };
                wr(&mut self.transport, REG_QUEUE_SEL, queue);
                let _ = rd(&mut self.transport, REG_QUEUE_NUM_MAX);
                wr(&mut self.transport, REG_QUEUE_NUM, u32::from(size));
                self.set_address(REG_QUEUE_DESC_LOW, REG_QUEUE_DESC_HIGH, desc);
                self.set_address(REG_QUEUE_AVAIL_LOW, REG_QUEUE_AVAIL_HIGH, avail);
                self.set_address(REG_QUEUE_USED_LOW, REG_QUEUE_USED_HIGH, used);
                wr(&mut self.transport, REG_QUEUE_READY, ready);
            }
            4 => {
                let status = rd(&mut self.transport, REG_STATUS);
                wr(&mut self.transport, REG_STATUS, status | STATUS_DRIVER_OK);
            }
            5 => {
                let index = usize::from(input.u8()) % self.queues;
                let _ = self.device.lock().expect("device lock").process_queue(index, &self.irq);
            }
            6 => {
                let base = if input.bool() { REGION_1 } else { 0 };
                let offset = u64::from(input.u16());
                let len = usize::from(input.u8());
                let bytes = input.bytes(len);
                let room = (REGION - offset) as usize;
                let _ = self.mem.write_slice(&bytes[..bytes.len().min(room)], GuestAddress(base + offset));
            }
            _ => match self.block {
                Some(read_only) => self.snapshot_round_trip(read_only),
                None => {
                    let _ = self.device.lock().expect("device lock").process_backend(&self.irq);
                }
            },
        }
        true
    }

    fn check_read(&mut self, offset: u64, data: &[u8]) {
        if offset >= REG_CONFIG {
            return;
        }
        if data.len() != 4 {
            assert!(data.iter().all(|b| *b == 0), "a {}-byte read of register {offset:#x} gave {data:?}", data.len());
            return;
        }
        let v = u32::from_le_bytes(data.try_into().expect("4 bytes"));
        match offset {
            REG_MAGIC => assert_eq!(v, MAGIC_VALUE),
            REG_VERSION => assert_eq!(v, MMIO_VERSION),
            REG_DEVICE_ID => assert_eq!(v, self.device_id),
            REG_VENDOR_ID => assert_eq!(v, VENDOR_ID),
            REG_QUEUE_NUM_MAX => assert!(v <= MAX_QUEUE_SIZE, "QueueNumMax {v}"),
            _ => {}
        }
    }

    /// The invariants that hold between any two operations.
    fn check(&mut self) {
        let status = rd(&mut self.transport, REG_STATUS);
        let has_queues = self.device.lock().expect("device lock").queues().is_some();
        assert_eq!(self.transport.is_activated(), has_queues, "activated vs the device's queues");
        if self.transport.is_activated() {
            assert_ne!(status & STATUS_DRIVER_OK, 0, "activated without DRIVER_OK: {status:#x}");
        } else if status & STATUS_DRIVER_OK != 0 {
            assert_ne!(status & STATUS_NEEDS_RESET, 0, "DRIVER_OK, not activated: {status:#x}");
        }
    }

    fn snapshot_round_trip(&mut self, read_only: bool) {
        let saved = self.transport.save_state();
        let block = Block::open(disk(), read_only, "fuzz-restored").expect("open the disk");
        let device: Arc<Mutex<dyn VirtioDevice>> = Arc::new(Mutex::new(block));
        let mut restored = MmioTransport::new(device, new_irq(), self.mem.clone());
        restored.restore_state(&saved).expect("a saved state restores");
        assert_eq!(restored.save_state(), saved, "the restored transport saves a different state");
        assert_eq!(restored.is_activated(), self.transport.is_activated());
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let which = input.u8() % 4;
    let mem = GuestMemoryMmap::<()>::from_ranges(&[
        (GuestAddress(0), REGION as usize),
        (GuestAddress(REGION_1), REGION as usize),
    ])
    .expect("guest memory");
    let irq = new_irq();
    let (device, block, device_id) = if which < 2 {
        let read_only = which == 0;
        let block = Block::open(disk(), read_only, "fuzz").expect("open the disk");
        let device: Arc<Mutex<dyn VirtioDevice>> = Arc::new(Mutex::new(block));
        (device, Some(read_only), DEVICE_TYPE_BLOCK)
    } else {
        let vsock = Vsock::new(3, vsock_path()).expect("vsock device");
        let device: Arc<Mutex<dyn VirtioDevice>> = Arc::new(Mutex::new(vsock));
        (device, None, DEVICE_TYPE_VSOCK)
    };
    let queues = device.lock().expect("device lock").queue_max_sizes().len();
    let transport = MmioTransport::new(device.clone(), irq.clone(), mem.clone());
    let mut rig = Rig { mem, irq, device, transport, block, device_id, queues };
    rig.check();
    for _ in 0..MAX_OPS {
        if !rig.run_op(&mut input) {
            break;
        }
        rig.check();
    }
});
