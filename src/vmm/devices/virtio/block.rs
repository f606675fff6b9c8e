//! virtio-blk (virtio 1.x, section 5.2) backed by a host file.
//!
//! Read-only drives (a runtime's rootfs, a function's code) are opened read-only on the host,
//! so the guest cannot change them whatever it sends. Every request is parsed from
//! guest-controlled descriptors: a malformed one gets `VIRTIO_BLK_S_IOERR` (or nothing, when
//! there is no place to put a status), never a panic, and nothing is allocated in proportion
//! to what the guest claims.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use virtio_queue::desc::split::Descriptor;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use super::{
    drain_queue, signal_used, Activation, Error, Interrupt, VirtioDevice, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX,
};

/// Virtio device id of a block device.
pub const DEVICE_TYPE_BLOCK: u32 = 2;
const QUEUE_SIZE: u16 = 256;
const SECTOR_SHIFT: u32 = 9;
const SECTOR_SIZE: u64 = 1 << SECTOR_SHIFT;
const VIRTIO_BLK_F_RO: u64 = 1 << 5;
const VIRTIO_BLK_F_FLUSH: u64 = 1 << 9;
const VIRTIO_BLK_T_IN: u32 = 0;
const VIRTIO_BLK_T_OUT: u32 = 1;
const VIRTIO_BLK_T_FLUSH: u32 = 4;
const VIRTIO_BLK_T_GET_ID: u32 = 8;
const VIRTIO_BLK_S_OK: u8 = 0;
const VIRTIO_BLK_S_IOERR: u8 = 1;
const VIRTIO_BLK_S_UNSUPP: u8 = 2;
/// Length of the device id string (VIRTIO_BLK_ID_BYTES).
const ID_BYTES: usize = 20;
const HEADER_LEN: u32 = 16;

/// Errors opening a drive.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The backing file could not be opened.
    #[error("cannot open drive {path}: {source}")]
    Open {
        /// The path.
        path: String,
        /// Why.
        source: io::Error,
    },
}

/// An empty ext4 filesystem of `mib` MiB, made once per size and host (in the temporary
/// directory) and copied for every scratch drive: formatting costs a process and ~100 ms in
/// the emulated host, a copy of its few written blocks far less. No journal (/tmp dies with
/// its instance); lazy inode tables keep it small and sparse. Made under a unique name and
/// renamed into place, so concurrent VMMs never see half of one.
fn scratch_template(mib: u32) -> io::Result<File> {
    let path = template_path(mib);
    let dir = path.parent().expect("the template is in a directory");
    std::fs::create_dir_all(dir)?;
    let size = u64::from(mib) << 20;
    if let Ok(file) = File::open(&path) {
        if file.metadata()?.len() == size {
            return Ok(file);
        }
    }
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
    let tmp = dir.join(format!(".ext4-{mib}MiB-{}-{nanos}.img", std::process::id()));
    let made = File::create(&tmp).and_then(|f| f.set_len(size)).and_then(|()| {
        let out = std::process::Command::new("mkfs.ext4")
            .args(["-q", "-F", "-O", "^has_journal", "-m", "0", "-E", "lazy_itable_init=1,nodiscard"])
            .arg(&tmp)
            .output()?;
        if !out.status.success() {
            return Err(io::Error::other(format!("mkfs.ext4: {}", String::from_utf8_lossy(&out.stderr).trim())));
        }
        std::fs::rename(&tmp, &path)
    });
    if let Err(e) = made {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    File::open(&path)
}

fn template_path(mib: u32) -> PathBuf {
    std::env::temp_dir().join("ember-scratch-templates").join(format!("ext4-{mib}MiB.img"))
}

/// The empty ext4 filesystem a /tmp drive of `mib` MiB is copied from, made now if it is not
/// yet: what a jailed VMM, which cannot make one, needs bound into its jail.
pub fn scratch_template_path(mib: u32) -> io::Result<PathBuf> {
    scratch_template(mib).map(|_| template_path(mib))
}

/// Copies the data of `from` (skipping its holes) to the same offsets of `to`, which is as
/// long and all holes. The kernel copies (`copy_file_range`); where it cannot (the two files on
/// different filesystems, say), through a buffer no larger than the largest range: an empty
/// ext4 template holds a few hundred KiB, and a larger buffer would only be pages to fault in
/// and zero on the restore path.
fn copy_data(from: &File, to: &File) -> io::Result<()> {
    copy_ranges(from, to, true)
}

/// [`copy_data`], through the buffer from the start unless `kernel`.
fn copy_ranges(from: &File, to: &File, mut kernel: bool) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    let ranges = crate::vmm::sparse::data_ranges(from)?;
    let largest = ranges.iter().map(|r| r.end - r.start).max().unwrap_or(0);
    let mut buf = Vec::new();
    for range in &ranges {
        let mut at = range.start;
        while at < range.end {
            let left = range.end - at;
            if kernel {
                match kernel_copy(from, to, at, left) {
                    Ok(0) => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the template shrank")),
                    Ok(n) => {
                        at += n;
                        continue;
                    }
                    Err(e)
                        if matches!(
                            e.raw_os_error(),
                            Some(libc::EXDEV | libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP)
                        ) =>
                    {
                        kernel = false;
                    }
                    Err(e) => return Err(e),
                }
            }
            if buf.is_empty() {
                buf = vec![0u8; largest.min(1 << 20) as usize];
            }
            let n = (left as usize).min(buf.len());
            from.read_exact_at(&mut buf[..n], at)?;
            to.write_all_at(&buf[..n], at)?;
            at += n as u64;
        }
    }
    Ok(())
}

/// One `copy_file_range` of up to `len` bytes at offset `at` of both files; the bytes copied.
fn kernel_copy(from: &File, to: &File, at: u64, len: u64) -> io::Result<u64> {
    let mut off_in = at as libc::loff_t;
    let mut off_out = at as libc::loff_t;
    // SAFETY: both fds are open files owned by `from` and `to` for the call's duration; the
    // offsets are valid, writable loff_t values that the kernel updates.
    let n =
        unsafe { libc::copy_file_range(from.as_raw_fd(), &mut off_in, to.as_raw_fd(), &mut off_out, len as usize, 0) };
    u64::try_from(n).map_err(|_| io::Error::last_os_error())
}

/// Smallest scratch (/tmp) drive, in MiB (Lambda's minimum ephemeral storage).
pub const MIN_SCRATCH_MIB: u32 = 512;
/// Largest scratch drive, in MiB.
pub const MAX_SCRATCH_MIB: u32 = 10240;
/// The scratch drive of a function that sets no size, in MiB (Lambda's default, its minimum).
pub const DEFAULT_SCRATCH_MIB: u32 = MIN_SCRATCH_MIB;

/// The backing file of a fresh scratch drive (/tmp): a sparse file of exactly its size, a copy
/// of an empty ext4 filesystem of that size ([`scratch_template`]), opened and then unlinked,
/// so that it disappears with this process however it ends and never grows past its size (the
/// drive refuses writes past its capacity). A spare VMM makes one for the default size while it
/// waits for its spec: the copy is then off the start's critical path.
pub struct ScratchFile {
    mib: u32,
    file: File,
}

impl ScratchFile {
    /// Makes one of `mib` MiB in `dir`.
    pub fn create(dir: &Path, mib: u32) -> Result<Self, OpenError> {
        let size = u64::from(mib) << 20;
        let template = scratch_template(mib)
            .map_err(|source| OpenError::Open { path: format!("the {mib} MiB ext4 template"), source })?;
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
        let path = dir.join(format!("ember-scratch-{}-{nanos}.ext4", std::process::id()));
        let err = |source| OpenError::Open { path: path.display().to_string(), source };
        let file = OpenOptions::new().read(true).write(true).create_new(true).open(&path).map_err(err)?;
        let result = file.set_len(size).and_then(|()| copy_data(&template, &file)).map_err(err);
        let _ = std::fs::remove_file(&path);
        result.map(|()| ScratchFile { mib, file })
    }

    /// Its size in MiB.
    pub fn mib(&self) -> u32 {
        self.mib
    }
}

/// Why a request failed; the guest sees only the status byte.
#[derive(Debug, PartialEq, Eq)]
enum RequestError {
    /// The header descriptor is missing, too short or device-writable.
    BadHeader,
    /// A data descriptor goes the wrong way for the request.
    BadDirection,
    /// Data length is not a whole number of sectors.
    Unaligned,
    /// The request reaches past the end of the drive.
    OutOfRange,
    /// A write to a read-only drive.
    ReadOnly,
    /// A buffer is not in guest memory, or the host file failed.
    Io,
    /// An unknown request type.
    Unsupported,
}

/// A block device.
pub struct Block {
    file: File,
    read_only: bool,
    capacity_sectors: u64,
    id: [u8; ID_BYTES],
    active: Option<Activation>,
}

impl Block {
    /// Opens `path` as a drive. `id` is what GET_ID returns (truncated to 20 bytes).
    pub fn open(path: &Path, read_only: bool, id: &str) -> Result<Self, OpenError> {
        let err = |source| OpenError::Open { path: path.display().to_string(), source };
        let file = OpenOptions::new().read(true).write(!read_only).open(path).map_err(err)?;
        let len = file.metadata().map_err(err)?.len();
        Ok(Block::with_file(file, len, read_only, id))
    }

    fn with_file(file: File, len: u64, read_only: bool, id: &str) -> Self {
        let mut id_bytes = [0u8; ID_BYTES];
        let n = id.len().min(ID_BYTES);
        id_bytes[..n].copy_from_slice(&id.as_bytes()[..n]);
        Block { file, read_only, capacity_sectors: len >> SECTOR_SHIFT, id: id_bytes, active: None }
    }

    /// A fresh read-write scratch drive of exactly `mib` MiB ([`ScratchFile::create`] in `dir`).
    pub fn scratch(dir: &Path, mib: u32, id: &str) -> Result<Self, OpenError> {
        Ok(Block::from_scratch(ScratchFile::create(dir, mib)?, id))
    }

    /// The scratch drive whose file was made ahead.
    pub fn from_scratch(scratch: ScratchFile, id: &str) -> Self {
        Block::with_file(scratch.file, u64::from(scratch.mib) << 20, false, id)
    }

    /// The drive's size in 512-byte sectors.
    pub fn capacity_sectors(&self) -> u64 {
        self.capacity_sectors
    }

    /// Runs one request and returns how many bytes it wrote into device-writable buffers.
    fn handle(&self, mem: &GuestMemoryMmap, descs: &[Descriptor]) -> u32 {
        let Some((status, body)) = descs.split_last() else { return 0 };
        if !status.is_write_only() || status.len() < 1 {
            return 0;
        }
        let (result, written) = match self.execute(mem, body) {
            Ok(written) => (VIRTIO_BLK_S_OK, written),
            Err(RequestError::Unsupported) => (VIRTIO_BLK_S_UNSUPP, 0),
            Err(_) => (VIRTIO_BLK_S_IOERR, 0),
        };
        if mem.write_obj(result, status.addr()).is_err() {
            return 0;
        }
        written.saturating_add(1)
    }

    fn execute(&self, mem: &GuestMemoryMmap, descs: &[Descriptor]) -> Result<u32, RequestError> {
        let (header, data) = descs.split_first().ok_or(RequestError::BadHeader)?;
        if header.is_write_only() || header.len() < HEADER_LEN {
            return Err(RequestError::BadHeader);
        }
        let kind: u32 = mem.read_obj(header.addr()).map_err(|_| RequestError::BadHeader)?;
        let sector: u64 = mem
            .read_obj(header.addr().checked_add(8).ok_or(RequestError::BadHeader)?)
            .map_err(|_| RequestError::BadHeader)?;
        match kind {
            VIRTIO_BLK_T_IN => {
                let total = self.check_data(data, sector, true)?;
                let mut offset = sector << SECTOR_SHIFT;
                for d in data {
                    transfer(&self.file, mem, d.addr(), d.len() as usize, offset, true)?;
                    offset += u64::from(d.len());
                }
                u32::try_from(total).map_err(|_| RequestError::OutOfRange)
            }
            VIRTIO_BLK_T_OUT => {
                if self.read_only {
                    return Err(RequestError::ReadOnly);
                }
                self.check_data(data, sector, false)?;
                let mut offset = sector << SECTOR_SHIFT;
                for d in data {
                    transfer(&self.file, mem, d.addr(), d.len() as usize, offset, false)?;
                    offset += u64::from(d.len());
                }
                Ok(0)
            }
            VIRTIO_BLK_T_FLUSH => {
                if !self.read_only {
                    self.file.sync_data().map_err(|_| RequestError::Io)?;
                }
                Ok(0)
            }
            VIRTIO_BLK_T_GET_ID => {
                let d = data.first().ok_or(RequestError::BadDirection)?;
                if !d.is_write_only() {
                    return Err(RequestError::BadDirection);
                }
                let n = (d.len() as usize).min(ID_BYTES);
                mem.write_slice(&self.id[..n], d.addr()).map_err(|_| RequestError::Io)?;
                Ok(n as u32)
            }
            _ => Err(RequestError::Unsupported),
        }
    }

    /// Checks the data descriptors of a read (`to_guest`) or write and returns their total length.
    fn check_data(&self, data: &[Descriptor], sector: u64, to_guest: bool) -> Result<u64, RequestError> {
        let mut total = 0u64;
        for d in data {
            if d.is_write_only() != to_guest {
                return Err(RequestError::BadDirection);
            }
            total += u64::from(d.len());
        }
        if !total.is_multiple_of(SECTOR_SIZE) {
            return Err(RequestError::Unaligned);
        }
        let end = sector.checked_add(total >> SECTOR_SHIFT).ok_or(RequestError::OutOfRange)?;
        if end > self.capacity_sectors {
            return Err(RequestError::OutOfRange);
        }
        Ok(total)
    }
}

/// Moves `len` bytes between guest memory at `addr` and the file at `offset`, with no copy in
/// between.
fn transfer(
    file: &File,
    mem: &GuestMemoryMmap,
    addr: GuestAddress,
    len: usize,
    offset: u64,
    to_guest: bool,
) -> Result<(), RequestError> {
    let slice = mem.get_slice(addr, len).map_err(|_| RequestError::Io)?;
    let guard = slice.ptr_guard_mut();
    let base = guard.as_ptr();
    let fd = file.as_raw_fd();
    let mut done = 0usize;
    while done < len {
        let pos = libc::off64_t::try_from(offset + done as u64).map_err(|_| RequestError::OutOfRange)?;
        // SAFETY: `base` points at `len` bytes of mapped guest memory (checked by get_slice), kept
        // mapped by `mem` for this call; each call touches only bytes `done..len` of it.
        let n = unsafe {
            let p = base.add(done).cast::<libc::c_void>();
            if to_guest {
                libc::pread64(fd, p, len - done, pos)
            } else {
                libc::pwrite64(fd, p, len - done, pos)
            }
        };
        match n {
            n if n > 0 => done += n as usize,
            0 => return Err(RequestError::Io),
            _ if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted => {}
            _ => return Err(RequestError::Io),
        }
    }
    Ok(())
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        DEVICE_TYPE_BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        let ro = if self.read_only { VIRTIO_BLK_F_RO } else { 0 };
        VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX | VIRTIO_BLK_F_FLUSH | ro
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // struct virtio_blk_config starts with the capacity in sectors; the rest stays zero
        // because no feature that uses it is offered.
        super::read_config_bytes(&self.capacity_sectors.to_le_bytes(), offset, data);
    }

    fn activate(&mut self, activation: Activation) {
        self.active = Some(activation);
    }

    fn process_queue(&mut self, index: usize, interrupt: &Interrupt) -> Result<(), Error> {
        let Some(mut active) = self.active.take() else { return Ok(()) };
        let mem = &active.mem;
        let result = match active.queues.get_mut(index) {
            Some(queue) => drain_queue(queue, mem, |chain| {
                let descs: Vec<Descriptor> = chain.collect();
                self.handle(mem, &descs)
            })
            .and_then(|used| if used { signal_used(queue, mem, interrupt).map(drop) } else { Ok(()) }),
            None => Ok(()),
        };
        self.active = Some(active);
        result
    }

    fn reset(&mut self) {
        self.active = None;
    }

    fn queues(&self) -> Option<&[virtio_queue::Queue]> {
        self.active.as_ref().map(|a| a.queues.as_slice())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmm::devices::virtio::INT_USED_RING;
    use std::io::Write;
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use virtio_queue::Queue;
    use vmm_sys_util::eventfd::EventFd;
    use vmm_sys_util::tempfile::TempFile;

    const F_NEXT: u16 = 1;
    const F_WRITE: u16 = 2;
    const HDR: u64 = 0x10_0000;
    const DATA: u64 = 0x20_0000;
    const STATUS: u64 = 0x30_0000;

    fn disk(sectors: u64) -> TempFile {
        let f = TempFile::new().unwrap();
        let mut content = Vec::new();
        for s in 0..sectors {
            content.extend(std::iter::repeat_n(s as u8, SECTOR_SIZE as usize));
        }
        f.as_file().write_all(&content).unwrap();
        f
    }

    /// Runs one chain of (addr, len, flags) through a block device and returns (status, used len).
    fn run(dev: &mut Block, mem: &GuestMemoryMmap, header: Option<(u32, u64)>, descs: &[(u64, u32, u16)]) -> (u8, u32) {
        if let Some((kind, sector)) = header {
            mem.write_obj(kind, GuestAddress(HDR)).unwrap();
            mem.write_obj(sector, GuestAddress(HDR + 8)).unwrap();
        }
        mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
        let mock = MockSplitQueue::create(mem, GuestAddress(0), 16);
        let raw: Vec<RawDescriptor> = descs
            .iter()
            .enumerate()
            .map(|(i, &(addr, len, flags))| {
                let next = if i + 1 < descs.len() { F_NEXT } else { 0 };
                RawDescriptor::from(SplitDescriptor::new(addr, len, flags | next, i as u16 + 1))
            })
            .collect();
        mock.add_desc_chains(&raw, 0).unwrap();
        let queue: Queue = mock.create_queue().unwrap();
        dev.activate(Activation { mem: mem.clone(), queues: vec![queue], features: 0 });
        let irq = Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap());
        dev.process_queue(0, &irq).unwrap();
        let used_len: u32 = mem.read_obj(mock.used_addr().checked_add(8).unwrap()).unwrap();
        assert_eq!(irq.status(), INT_USED_RING);
        (mem.read_obj(GuestAddress(STATUS)).unwrap(), used_len)
    }

    fn memory() -> GuestMemoryMmap {
        GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap()
    }

    #[test]
    fn reads_sectors() {
        let f = disk(8);
        let mut dev = Block::open(f.as_path(), true, "rootfs").unwrap();
        let mem = memory();
        let (status, used) = run(
            &mut dev,
            &mem,
            Some((VIRTIO_BLK_T_IN, 2)),
            &[(HDR, 16, 0), (DATA, 1024, F_WRITE), (STATUS, 1, F_WRITE)],
        );
        assert_eq!((status, used), (VIRTIO_BLK_S_OK, 1025));
        let mut buf = [0u8; 1024];
        mem.read_slice(&mut buf, GuestAddress(DATA)).unwrap();
        assert!(buf[..512].iter().all(|b| *b == 2) && buf[512..].iter().all(|b| *b == 3));
    }

    #[test]
    fn writes_and_flushes_when_writable() {
        let f = disk(4);
        let mut dev = Block::open(f.as_path(), false, "tmp").unwrap();
        let mem = memory();
        mem.write_slice(&[0xabu8; 512], GuestAddress(DATA)).unwrap();
        let (status, used) =
            run(&mut dev, &mem, Some((VIRTIO_BLK_T_OUT, 3)), &[(HDR, 16, 0), (DATA, 512, 0), (STATUS, 1, F_WRITE)]);
        assert_eq!((status, used), (VIRTIO_BLK_S_OK, 1));
        let content = std::fs::read(f.as_path()).unwrap();
        assert!(content[3 * 512..].iter().all(|b| *b == 0xab));
        let (status, _) = run(&mut dev, &mem, Some((VIRTIO_BLK_T_FLUSH, 0)), &[(HDR, 16, 0), (STATUS, 1, F_WRITE)]);
        assert_eq!(status, VIRTIO_BLK_S_OK);
    }

    #[test]
    fn refuses_bad_requests() {
        let f = disk(4);
        let mut dev = Block::open(f.as_path(), true, "rootfs").unwrap();
        let mem = memory();
        let ioerr = |r: (u8, u32)| assert_eq!(r, (VIRTIO_BLK_S_IOERR, 1));
        // Write to a read-only drive.
        ioerr(run(&mut dev, &mem, Some((VIRTIO_BLK_T_OUT, 0)), &[(HDR, 16, 0), (DATA, 512, 0), (STATUS, 1, F_WRITE)]));
        // Past the end, and a sector number that overflows.
        ioerr(run(
            &mut dev,
            &mem,
            Some((VIRTIO_BLK_T_IN, 3)),
            &[(HDR, 16, 0), (DATA, 1024, F_WRITE), (STATUS, 1, F_WRITE)],
        ));
        ioerr(run(
            &mut dev,
            &mem,
            Some((VIRTIO_BLK_T_IN, u64::MAX)),
            &[(HDR, 16, 0), (DATA, 512, F_WRITE), (STATUS, 1, F_WRITE)],
        ));
        // Not a whole sector; a read into a device-readable buffer; a short header.
        ioerr(run(
            &mut dev,
            &mem,
            Some((VIRTIO_BLK_T_IN, 0)),
            &[(HDR, 16, 0), (DATA, 100, F_WRITE), (STATUS, 1, F_WRITE)],
        ));
        ioerr(run(&mut dev, &mem, Some((VIRTIO_BLK_T_IN, 0)), &[(HDR, 16, 0), (DATA, 512, 0), (STATUS, 1, F_WRITE)]));
        ioerr(run(&mut dev, &mem, Some((VIRTIO_BLK_T_IN, 0)), &[(HDR, 8, 0), (STATUS, 1, F_WRITE)]));
        // A buffer outside guest memory.
        ioerr(run(
            &mut dev,
            &mem,
            Some((VIRTIO_BLK_T_IN, 0)),
            &[(HDR, 16, 0), (0xffff_0000, 512, F_WRITE), (STATUS, 1, F_WRITE)],
        ));
        // Unknown type.
        assert_eq!(run(&mut dev, &mem, Some((99, 0)), &[(HDR, 16, 0), (STATUS, 1, F_WRITE)]), (VIRTIO_BLK_S_UNSUPP, 1));
        // No writable status: nothing can be reported, the chain is still returned.
        assert_eq!(run(&mut dev, &mem, Some((VIRTIO_BLK_T_IN, 0)), &[(HDR, 16, 0), (STATUS, 1, 0)]).1, 0);
    }

    #[test]
    fn corrupt_avail_index_does_not_hang() {
        let f = disk(1);
        let mut dev = Block::open(f.as_path(), true, "rootfs").unwrap();
        let mem = memory();
        let mock = MockSplitQueue::create(&mem, GuestAddress(0), 16);
        let queue: Queue = mock.create_queue().unwrap();
        // The driver claims 1000 chains on a 16-entry ring.
        mem.write_obj(1000u16, mock.avail_addr().checked_add(2).unwrap()).unwrap();
        dev.activate(Activation { mem: mem.clone(), queues: vec![queue], features: VIRTIO_RING_F_EVENT_IDX });
        let irq = Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap());
        let _ = dev.process_queue(0, &irq);
    }

    #[test]
    fn copy_data_copies_the_data_and_keeps_the_holes() {
        use std::os::unix::fs::FileExt;
        let from = TempFile::new().unwrap();
        let f = from.as_file();
        f.set_len(4 << 20).unwrap();
        f.write_all_at(&[0xa5; 8192], 0).unwrap();
        f.write_all_at(&[0x5a; 12345], 2 << 20).unwrap();
        for kernel in [true, false] {
            let to = TempFile::new().unwrap();
            to.as_file().set_len(4 << 20).unwrap();
            copy_ranges(f, to.as_file(), kernel).unwrap();
            assert_eq!(std::fs::read(to.as_path()).unwrap(), std::fs::read(from.as_path()).unwrap());
            let ranges = crate::vmm::sparse::data_ranges(to.as_file()).unwrap();
            let data: u64 = ranges.iter().map(|r| r.end - r.start).sum();
            assert!(data < 1 << 20, "holes stay holes (kernel copy: {kernel}): {ranges:?}");
        }
    }

    #[test]
    fn scratch_drive_is_sized_writable_and_unlinked() {
        let dir = TempFile::new().unwrap();
        let dir_path = dir.as_path().with_extension("d");
        std::fs::create_dir(&dir_path).unwrap();
        let dev = Block::scratch(&dir_path, MIN_SCRATCH_MIB, "tmp").unwrap();
        assert_eq!(dev.capacity_sectors(), u64::from(MIN_SCRATCH_MIB) << 11);
        assert_eq!(dev.features() & VIRTIO_BLK_F_RO, 0);
        assert_eq!(std::fs::read_dir(&dir_path).unwrap().count(), 0, "the backing file is unlinked");
        // It is a copy of an empty ext4 filesystem: the superblock's magic is there.
        let mut magic = [0u8; 2];
        std::os::unix::fs::FileExt::read_exact_at(&dev.file, &mut magic, 1024 + 0x38).unwrap();
        assert_eq!(u16::from_le_bytes(magic), 0xef53);
        // A directory that does not exist is an error, not a panic.
        assert!(Block::scratch(&dir_path.join("missing"), MIN_SCRATCH_MIB, "tmp").is_err());
        std::fs::remove_dir(&dir_path).unwrap();
    }

    #[test]
    fn get_id() {
        let f = disk(1);
        let mut dev = Block::open(f.as_path(), true, "ember-rootfs").unwrap();
        let mem = memory();
        let (status, used) = run(
            &mut dev,
            &mem,
            Some((VIRTIO_BLK_T_GET_ID, 0)),
            &[(HDR, 16, 0), (DATA, 20, F_WRITE), (STATUS, 1, F_WRITE)],
        );
        assert_eq!((status, used), (VIRTIO_BLK_S_OK, 21));
        let mut id = [0u8; 12];
        mem.read_slice(&mut id, GuestAddress(DATA)).unwrap();
        assert_eq!(&id, b"ember-rootfs");
        let mut cfg = [0u8; 8];
        dev.read_config(0, &mut cfg);
        assert_eq!(u64::from_le_bytes(cfg), 1);
    }
}
