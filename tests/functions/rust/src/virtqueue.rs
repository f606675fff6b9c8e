//! `{"virtqueue": true}`: a hostile driver of the /tmp drive's virtio-mmio device, as a guest
//! whose kernel is compromised could be. It takes the device from the kernel (/tmp unmounted,
//! the virtio-mmio platform driver unbound from it), maps its registers through `/dev/mem`,
//! sets its queue up in pages of its own (their guest-physical addresses from
//! `/proc/self/pagemap`) and submits descriptor chains that loop, overlap the rings, point
//! outside guest memory, wrap around the address space or claim huge lengths, and rings that
//! lie outside guest memory. Each attack is reported with what the device did: how far its
//! used ring moved, the status byte of the request, the device status register.
//!
//! The VMM must survive all of it: the guest, and the runtime that answers, go on.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const REG_DEVICE_FEATURES: usize = 0x010;
const REG_DEVICE_FEATURES_SEL: usize = 0x014;
const REG_DRIVER_FEATURES: usize = 0x020;
const REG_DRIVER_FEATURES_SEL: usize = 0x024;
const REG_QUEUE_SEL: usize = 0x030;
const REG_QUEUE_NUM_MAX: usize = 0x034;
const REG_QUEUE_NUM: usize = 0x038;
const REG_QUEUE_READY: usize = 0x044;
const REG_QUEUE_NOTIFY: usize = 0x050;
const REG_INTERRUPT_STATUS: usize = 0x060;
const REG_INTERRUPT_ACK: usize = 0x064;
const REG_STATUS: usize = 0x070;
const REG_QUEUE_DESC: usize = 0x080;
const REG_QUEUE_AVAIL: usize = 0x090;
const REG_QUEUE_USED: usize = 0x0a0;
const MAGIC: u32 = 0x7472_6976;

const S_ACK: u32 = 1;
const S_DRIVER: u32 = 2;
const S_DRIVER_OK: u32 = 4;
const S_FEATURES_OK: u32 = 8;

const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;
const F_INDIRECT: u16 = 4;
const QLEN: u16 = 16;
const PAGE: usize = 4096;

/// An address no guest memory backs (64 TiB).
const OUTSIDE: u64 = 1 << 46;

/// The pages of the driver's memory, by use.
const DESC: usize = 0;
const AVAIL: usize = 1;
const USED: usize = 2;
const HEADER: usize = 3;
const DATA: usize = 4;
const PAGES: usize = 5;

struct Driver {
    regs: *mut u32,
    mem: *mut u8,
    /// Guest-physical address of each page of `mem`.
    phys: [u64; PAGES],
    avail_idx: u16,
}

impl Driver {
    fn reg(&self, off: usize) -> u32 {
        // SAFETY: `regs` maps the device's 4 KiB register page; `off` is a register offset.
        unsafe { self.regs.add(off / 4).read_volatile() }
    }

    fn set(&self, off: usize, v: u32) {
        // SAFETY: as in `reg`.
        unsafe { self.regs.add(off / 4).write_volatile(v) }
    }

    fn set64(&self, off: usize, v: u64) {
        self.set(off, v as u32);
        self.set(off + 4, (v >> 32) as u32);
    }

    fn poke<T: Copy>(&self, page: usize, at: usize, v: T) {
        assert!(at + std::mem::size_of::<T>() <= PAGE);
        // SAFETY: inside page `page` of the driver's locked memory.
        unsafe { (self.mem.add(page * PAGE + at) as *mut T).write_volatile(v) }
    }

    fn peek<T: Copy>(&self, page: usize, at: usize) -> T {
        assert!(at + std::mem::size_of::<T>() <= PAGE);
        // SAFETY: as in `poke`.
        unsafe { (self.mem.add(page * PAGE + at) as *const T).read_volatile() }
    }

    /// The device reset and set up again: features (VERSION_1 only), queue 0 of QLEN entries
    /// in the driver's pages (or its descriptor table at `desc`), DRIVER_OK. Returns the
    /// status register afterwards.
    fn setup(&mut self, desc: Option<u64>) -> u32 {
        self.set(REG_STATUS, 0);
        for page in [DESC, AVAIL, USED] {
            // SAFETY: the page is the driver's own.
            unsafe { std::ptr::write_bytes(self.mem.add(page * PAGE), 0, PAGE) };
        }
        self.avail_idx = 0;
        self.set(REG_STATUS, S_ACK);
        self.set(REG_STATUS, S_ACK | S_DRIVER);
        self.set(REG_DEVICE_FEATURES_SEL, 1);
        let high = self.reg(REG_DEVICE_FEATURES);
        self.set(REG_DRIVER_FEATURES_SEL, 1);
        self.set(REG_DRIVER_FEATURES, high & 1);
        self.set(REG_DRIVER_FEATURES_SEL, 0);
        self.set(REG_DRIVER_FEATURES, 0);
        self.set(REG_STATUS, S_ACK | S_DRIVER | S_FEATURES_OK);
        self.set(REG_QUEUE_SEL, 0);
        let max = self.reg(REG_QUEUE_NUM_MAX);
        self.set(REG_QUEUE_NUM, u32::from(QLEN).min(max));
        self.set64(REG_QUEUE_DESC, desc.unwrap_or(self.phys[DESC]));
        self.set64(REG_QUEUE_AVAIL, self.phys[AVAIL]);
        self.set64(REG_QUEUE_USED, self.phys[USED]);
        self.set(REG_QUEUE_READY, 1);
        self.set(REG_STATUS, S_ACK | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK);
        self.reg(REG_STATUS)
    }

    fn desc(&self, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let at = usize::from(i) * 16;
        self.poke(DESC, at, addr);
        self.poke(DESC, at + 8, len);
        self.poke(DESC, at + 12, flags);
        self.poke(DESC, at + 14, next);
    }

    /// A block read request's header (sector 0) and a status byte the device should set.
    fn header(&self) {
        self.poke(HEADER, 0, 0u32);
        self.poke(HEADER, 4, 0u32);
        self.poke(HEADER, 8, 0u64);
        self.poke(HEADER, 512, 0xffu8);
    }

    /// A block read of sector 0: a header at `head`, then `buf` (address, length) to fill, then
    /// a status byte at `status.0`, in descriptors `head`, `head + 1` and `head + 2` (mod the
    /// queue's size); the last one's next is `status.1` (chained on when it is not 0).
    fn read_request(&self, head: u16, buf: (u64, u32), status: (u64, u16)) {
        let (data, status_desc) = ((head + 1) % QLEN, (head + 2) % QLEN);
        self.header();
        self.desc(head, self.phys[HEADER], 16, F_NEXT, data);
        self.desc(data, buf.0, buf.1, F_NEXT | F_WRITE, status_desc);
        let last = if status.1 == 0 { F_WRITE } else { F_WRITE | F_NEXT };
        self.desc(status_desc, status.0, 1, last, status.1);
    }

    /// Makes `head` available (the avail index moved by `advance`), notifies `queue` and
    /// waits up to 500 ms for the used ring to move. Returns what the device did.
    fn submit(&mut self, name: &str, head: u16, advance: u16, queue: u32) -> Value {
        let used_before: u16 = self.peek(USED, 2);
        self.poke(AVAIL, 4 + 2 * usize::from(self.avail_idx % QLEN), head);
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        self.avail_idx = self.avail_idx.wrapping_add(advance);
        self.poke(AVAIL, 2, self.avail_idx);
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        self.set(REG_QUEUE_NOTIFY, queue);
        let deadline = Instant::now() + Duration::from_millis(500);
        let mut used: u16 = used_before;
        while Instant::now() < deadline {
            used = self.peek(USED, 2);
            if used != used_before {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let pending = self.reg(REG_INTERRUPT_STATUS);
        self.set(REG_INTERRUPT_ACK, pending);
        let request_status: u8 = self.peek(HEADER, 512);
        json!({
            "attack": name,
            "used": used.wrapping_sub(used_before),
            "request_status": request_status,
            "device_status": self.reg(REG_STATUS),
        })
    }
}

/// Runs the attacks; their reports, or why they could not be run.
pub fn attack() -> Result<Value, String> {
    let dev = tmp_drive()?;
    let platform = platform_device(&dev)?;
    let base = mmio_base(&platform)?;
    // The kernel lets go of the device: nothing of the guest's uses it any more.
    // SAFETY: umount2 reads a NUL-terminated path.
    if unsafe { libc::umount2(c"/tmp".as_ptr(), libc::MNT_DETACH) } != 0 {
        return Err(format!("umount /tmp: {}", std::io::Error::last_os_error()));
    }
    std::fs::write("/sys/bus/platform/drivers/virtio-mmio/unbind", &platform)
        .map_err(|e| format!("unbind {platform}: {e}"))?;
    let devmem = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_SYNC)
        .open("/dev/mem")
        .map_err(|e| format!("/dev/mem: {e}"))?;
    let regs = map(Some(&devmem), base, PAGE)? as *mut u32;
    let mem = map(None, 0, PAGES * PAGE)?;
    // SAFETY: `mem` is PAGES pages of this process's, mapped above.
    if unsafe { libc::mlock(mem.cast(), PAGES * PAGE) } != 0 {
        return Err(format!("mlock: {}", std::io::Error::last_os_error()));
    }
    let mut phys = [0u64; PAGES];
    let pagemap = File::open("/proc/self/pagemap").map_err(|e| format!("/proc/self/pagemap: {e}"))?;
    for (i, p) in phys.iter_mut().enumerate() {
        let vaddr = mem as u64 + (i * PAGE) as u64;
        let mut entry = [0u8; 8];
        pagemap.read_exact_at(&mut entry, vaddr / PAGE as u64 * 8).map_err(|e| format!("pagemap: {e}"))?;
        let entry = u64::from_le_bytes(entry);
        if entry >> 63 == 0 {
            return Err(format!("page {i} is not present"));
        }
        *p = (entry & ((1 << 55) - 1)) * PAGE as u64;
    }
    let mut d = Driver { regs, mem, phys, avail_idx: 0 };
    if d.reg(0) != MAGIC {
        return Err(format!("no virtio-mmio device at {base:#x}"));
    }
    let (hdr, data, status_at) = (d.phys[HEADER], d.phys[DATA], d.phys[HEADER] + 512);
    let mut reports = Vec::new();
    let setup = d.setup(None);

    // A well-formed read first: the driver works, and what the device does right is seen.
    let read = |d: &mut Driver, name: &str, head: u16, buf: (u64, u32), status: (u64, u16)| {
        d.read_request(head, buf, status);
        d.submit(name, head, 1, 0)
    };
    reports.push(read(&mut d, "valid_read", 0, (data, 512), (status_at, 0)));
    // A chain that loops back to its head.
    reports.push(read(&mut d, "loop", 3, (data, 512), (status_at, 3)));
    // A descriptor whose next is itself.
    d.header();
    d.desc(6, hdr, 16, F_NEXT, 6);
    reports.push(d.submit("self_loop", 6, 1, 0));

    // A next past the end of the table.
    d.header();
    d.desc(7, hdr, 16, F_NEXT, 200);
    reports.push(d.submit("next_out_of_table", 7, 1, 0));

    // Data outside guest memory; data that wraps around the address space; a huge length (4
    // GiB less a sector, from a page of the driver's).
    reports.push(read(&mut d, "outside_memory", 8, (OUTSIDE, 512), (status_at, 0)));
    reports.push(read(&mut d, "wraparound", 11, (u64::MAX - 511, 1024), (status_at, 0)));
    reports.push(read(&mut d, "huge_length", 14, (data, 0xffff_fe00), (status_at, 0)));
    // The device told to write the disk's first sector over the descriptor table and the
    // request's status into the avail ring: overlapping the rings themselves.
    let (table, avail) = (d.phys[DESC], d.phys[AVAIL] + 64);
    reports.push(read(&mut d, "overlapping_rings", 1, (table, 512), (avail, 0)));

    // An indirect table (a feature never negotiated) outside guest memory.
    d.setup(None);
    d.desc(0, OUTSIDE, 16 * 16, F_INDIRECT, 0);
    reports.push(d.submit("indirect_outside", 0, 1, 0));

    // A head past the table, then the avail index 32768 entries ahead of a 16-entry ring.
    d.setup(None);
    reports.push(d.submit("bad_head", 0xfff0, 1, 0));
    d.setup(None);
    d.header();
    d.desc(0, hdr, 16, 0, 0);
    reports.push(d.submit("avail_flood", 0, 0x8000, 0));

    // A queue that does not exist notified.
    d.setup(None);
    reports.push(d.submit("unknown_queue", 0, 1, 7));

    // Rings outside guest memory, then DRIVER_OK and a notify.
    let outside = d.setup(Some(OUTSIDE));
    let mut report = d.submit("rings_outside", 0, 1, 0);
    report["setup_status"] = json!(outside);
    reports.push(report);

    // The device left reset.
    d.set(REG_STATUS, 0);
    Ok(json!({ "device": platform, "base": base, "setup_status": setup, "attacks": reports }))
}

/// The block device mounted on /tmp (`vdX`).
fn tmp_drive() -> Result<String, String> {
    let mut mounts = String::new();
    File::open("/proc/mounts").and_then(|mut f| f.read_to_string(&mut mounts)).map_err(|e| e.to_string())?;
    mounts
        .lines()
        .find_map(|l| {
            let mut fields = l.split_whitespace();
            let (dev, at) = (fields.next()?, fields.next()?);
            (at == "/tmp").then(|| dev.strip_prefix("/dev/").map(str::to_owned)).flatten()
        })
        .ok_or_else(|| "no drive is mounted on /tmp".to_owned())
}

/// The virtio-mmio platform device (`virtio-mmio.N`) under block device `dev`.
fn platform_device(dev: &str) -> Result<String, String> {
    let path = std::fs::canonicalize(format!("/sys/block/{dev}/device")).map_err(|e| format!("{dev}: {e}"))?;
    path.components()
        .filter_map(|c| c.as_os_str().to_str())
        .find(|c| c.starts_with("virtio-mmio."))
        .map(str::to_owned)
        .ok_or_else(|| format!("{dev} is not on a virtio-mmio device ({})", path.display()))
}

/// The register page's guest-physical address of `platform`, from /proc/iomem.
fn mmio_base(platform: &str) -> Result<u64, String> {
    let iomem = std::fs::read_to_string("/proc/iomem").map_err(|e| e.to_string())?;
    iomem
        .lines()
        .find_map(|l| {
            let (range, name) = l.trim().split_once(" : ")?;
            (name == platform).then(|| u64::from_str_radix(range.split('-').next()?, 16).ok()).flatten()
        })
        .ok_or_else(|| format!("{platform} is not in /proc/iomem"))
}

/// `len` bytes mapped shared: of `file` at `offset`, or anonymous.
fn map(file: Option<&File>, offset: u64, len: usize) -> Result<*mut u8, String> {
    use std::os::fd::AsRawFd;
    let (fd, flags) = match file {
        Some(f) => (f.as_raw_fd(), libc::MAP_SHARED),
        None => (-1, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE),
    };
    // SAFETY: a new mapping at an address of the kernel's choosing; nothing else is touched.
    let p = unsafe {
        libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ | libc::PROT_WRITE, flags, fd, offset as libc::off_t)
    };
    if p == libc::MAP_FAILED {
        return Err(format!("mmap {len} bytes at {offset:#x}: {}", std::io::Error::last_os_error()));
    }
    Ok(p.cast())
}
