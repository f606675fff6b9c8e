//! Guest RAM layout, the e820 map, the zero page and loading the kernel ELF.
//!
//! Guest RAM is exactly the size asked for. Below 4 GiB it stops at [`MMIO_GAP_START`]; the rest
//! continues at 4 GiB. The e820 map covers every byte of guest RAM: the legacy area below 1 MiB
//! (where the MP table lives) is reported as reserved so that the kernel keeps its hands off it,
//! and everything else as RAM. So the sum of the e820 entries the guest reads back equals the
//! memory size it was given.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use linux_loader::loader::bootparam::{boot_e820_entry, boot_params};
use linux_loader::loader::{self, Cmdline, Elf, KernelLoader};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::*;

const E820_RAM: u32 = 1;
const E820_RESERVED: u32 = 2;
const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448;
const KERNEL_LOADER_OTHER: u8 = 0xff;
const KERNEL_MIN_ALIGNMENT_BYTES: u32 = 0x0100_0000;

/// Errors of the boot setup.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The kernel image could not be opened.
    #[error("cannot open kernel {path}: {source}")]
    OpenKernel {
        /// The path given.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The kernel image is not an ELF file.
    #[error("kernel {0} is not an uncompressed ELF vmlinux")]
    NotElf(String),
    /// linux-loader refused the image.
    #[error("cannot load kernel: {0}")]
    LoadKernel(loader::Error),
    /// The command line does not fit or is malformed.
    #[error("bad kernel command line: {0}")]
    Cmdline(String),
    /// Writing the zero page failed.
    #[error("cannot write the zero page")]
    ZeroPage,
}

/// The guest RAM regions for `mem_size` bytes: one below the MMIO gap, and one from 4 GiB for
/// whatever does not fit below it.
pub fn ram_regions(mem_size: u64) -> Vec<(GuestAddress, usize)> {
    let low = mem_size.min(MMIO_GAP_START);
    let mut regions = vec![(GuestAddress(0), low as usize)];
    if mem_size > MMIO_GAP_START {
        regions.push((GuestAddress(MMIO_GAP_END), (mem_size - MMIO_GAP_START) as usize));
    }
    regions
}

/// The e820 map for `mem_size` bytes of RAM, as (address, size, type).
pub fn e820_map(mem_size: u64) -> Vec<(u64, u64, u32)> {
    let low_end = mem_size.min(MMIO_GAP_START);
    let mut map = vec![
        (0, EBDA_START, E820_RAM),
        (EBDA_START, HIMEM_START - EBDA_START, E820_RESERVED),
        (HIMEM_START, low_end - HIMEM_START, E820_RAM),
    ];
    if mem_size > MMIO_GAP_START {
        map.push((MMIO_GAP_END, mem_size - MMIO_GAP_START, E820_RAM));
    }
    map
}

/// Checks that `path` is an ELF file before handing it to the loader, for a clear error.
fn check_elf(path: &Path, file: &mut File) -> Result<(), Error> {
    let mut magic = [0u8; 4];
    let is_elf = file.read_exact(&mut magic).is_ok() && magic == *b"\x7fELF";
    file.seek(SeekFrom::Start(0)).map_err(|source| Error::OpenKernel { path: path.display().to_string(), source })?;
    if is_elf {
        Ok(())
    } else {
        Err(Error::NotElf(path.display().to_string()))
    }
}

/// Loads the kernel ELF at `path` into guest memory and returns its 64-bit entry point.
pub fn load_kernel(mem: &GuestMemoryMmap, path: &Path) -> Result<GuestAddress, Error> {
    let mut file = File::open(path).map_err(|source| Error::OpenKernel { path: path.display().to_string(), source })?;
    check_elf(path, &mut file)?;
    let result = Elf::load(mem, None, &mut file, Some(GuestAddress(HIMEM_START))).map_err(Error::LoadKernel)?;
    Ok(result.kernel_load)
}

/// Builds the command line object from a string, checking the x86 size limit.
pub fn make_cmdline(s: &str) -> Result<Cmdline, Error> {
    Cmdline::try_from(s, CMDLINE_MAX_SIZE).map_err(|e| Error::Cmdline(e.to_string()))
}

/// Writes the command line and the zero page (setup header and e820 map).
pub fn write_boot_params(mem: &GuestMemoryMmap, cmdline: &Cmdline, mem_size: u64) -> Result<(), Error> {
    loader::load_cmdline(mem, GuestAddress(CMDLINE_START), cmdline).map_err(|e| Error::Cmdline(e.to_string()))?;
    let cmdline_len = cmdline.as_cstring().map_err(|e| Error::Cmdline(e.to_string()))?.as_bytes().len();

    let mut params = boot_params::default();
    params.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
    params.hdr.header = KERNEL_HDR_MAGIC;
    params.hdr.cmd_line_ptr = CMDLINE_START as u32;
    params.hdr.cmdline_size = cmdline_len as u32;
    params.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT_BYTES;
    let map = e820_map(mem_size);
    for (i, &(addr, size, kind)) in map.iter().enumerate() {
        params.e820_table[i] = boot_e820_entry { addr, size, r#type: kind };
    }
    params.e820_entries = map.len() as u8;
    mem.write_obj(params, GuestAddress(ZERO_PAGE_START)).map_err(|_| Error::ZeroPage)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn e820_covers_exactly_the_ram() {
        for mib in [128u64, 1024, 3328, 3329, 10240] {
            let size = mib * MIB;
            let e820: u64 = e820_map(size).iter().map(|e| e.1).sum();
            assert_eq!(e820, size, "{mib} MiB");
            let ram: u64 = ram_regions(size).iter().map(|r| r.1 as u64).sum();
            assert_eq!(ram, size, "{mib} MiB");
        }
    }

    #[test]
    fn big_memory_skips_the_mmio_gap() {
        let regions = ram_regions(4096 * MIB);
        assert_eq!(regions.len(), 2);
        assert_eq!(regions[0].1 as u64, MMIO_GAP_START);
        assert_eq!(regions[1].0, GuestAddress(MMIO_GAP_END));
        assert_eq!(regions[1].1 as u64, 4096 * MIB - MMIO_GAP_START);
        assert!(e820_map(4096 * MIB).iter().all(|e| e.0 + e.1 <= MMIO_GAP_START || e.0 >= MMIO_GAP_END));
    }

    #[test]
    fn non_elf_kernel_is_refused() {
        let dir = std::env::temp_dir().join(format!("ember-boot-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("not-a-kernel");
        std::fs::write(&path, b"MZ this is not an ELF file").unwrap();
        let mem = GuestMemoryMmap::<()>::from_ranges(&ram_regions(128 * MIB)).unwrap();
        assert!(matches!(load_kernel(&mem, &path), Err(Error::NotElf(_))));
        assert!(matches!(load_kernel(&mem, &dir.join("missing")), Err(Error::OpenKernel { .. })));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn zero_page_holds_cmdline_and_map() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&ram_regions(128 * MIB)).unwrap();
        let cmdline = make_cmdline("console=ttyS0 quiet").unwrap();
        write_boot_params(&mem, &cmdline, 128 * MIB).unwrap();
        let params: boot_params = mem.read_obj(GuestAddress(ZERO_PAGE_START)).unwrap();
        assert_eq!(params.e820_entries, 3);
        assert_eq!({ params.hdr.cmdline_size }, 19);
        let mut buf = [0u8; 20];
        mem.read_slice(&mut buf, GuestAddress(CMDLINE_START)).unwrap();
        assert_eq!(&buf, b"console=ttyS0 quiet\0");
        assert!(make_cmdline(&"x".repeat(CMDLINE_MAX_SIZE)).is_err());
    }
}
