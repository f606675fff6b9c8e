//! Guest RAM layout, the e820 map, the zero page and loading the kernel ELF.
//!
//! The kernel is not copied into guest memory: each loadable segment's whole pages are mapped
//! there from the file (`MAP_PRIVATE | MAP_FIXED`), so a boot reads only the pages the guest
//! touches, and every VM on the host shares the kernel's page-cache pages until it writes one
//! (copy on write). Only a segment's unaligned edges are read in.
//!
//! Guest RAM is exactly the size asked for. Below 4 GiB it stops at [`MMIO_GAP_START`]; the rest
//! continues at 4 GiB. The e820 map covers every byte of guest RAM: the legacy area below 1 MiB
//! (where the MP table lives) is reported as reserved so that the kernel keeps its hands off it,
//! and everything else as RAM. So the sum of the e820 entries the guest reads back equals the
//! memory size it was given.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;

use linux_loader::elf::{Elf64_Ehdr, Elf64_Phdr, PT_LOAD};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params};
use linux_loader::loader::{self, Cmdline};
use vm_memory::{ByteValued, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use super::layout::*;

const E820_RAM: u32 = 1;
const E820_RESERVED: u32 = 2;
const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448;
const KERNEL_LOADER_OTHER: u8 = 0xff;
const KERNEL_MIN_ALIGNMENT_BYTES: u32 = 0x0100_0000;
const PAGE: u64 = 4096;
/// The most program headers a kernel may have (a vmlinux has five).
const MAX_PHDRS: u16 = 64;
const ELFCLASS64: u8 = 2;
const ELFDATA2LSB: u8 = 1;
const EM_X86_64: u16 = 62;

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
    /// The ELF file is not a loadable x86-64 kernel, or does not fit guest memory.
    #[error("cannot load kernel {path}: {why}")]
    LoadKernel {
        /// The path given.
        path: String,
        /// What is wrong.
        why: String,
    },
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

/// Loads the kernel ELF at `path` into guest memory and returns its 64-bit entry point. The
/// file should not change while VMs run from it (pages not yet touched are read from it then):
/// replace it by renaming a new file over it.
pub fn load_kernel(mem: &GuestMemoryMmap, path: &Path) -> Result<GuestAddress, Error> {
    let name = || path.display().to_string();
    let file = File::open(path).map_err(|source| Error::OpenKernel { path: name(), source })?;
    let bad = |why: &str| Error::LoadKernel { path: name(), why: why.to_string() };
    let file_len = file.metadata().map_err(|source| Error::OpenKernel { path: name(), source })?.len();

    let mut ehdr = Elf64_Ehdr::default();
    if file.read_exact_at(ehdr.as_mut_slice(), 0).is_err() || ehdr.e_ident[..4] != *b"\x7fELF" {
        return Err(Error::NotElf(name()));
    }
    if ehdr.e_ident[4] != ELFCLASS64 || ehdr.e_ident[5] != ELFDATA2LSB || ehdr.e_machine != EM_X86_64 {
        return Err(bad("not a 64-bit little-endian x86-64 ELF"));
    }
    if usize::from(ehdr.e_phentsize) != std::mem::size_of::<Elf64_Phdr>() || ehdr.e_phnum > MAX_PHDRS {
        return Err(bad("malformed program header table"));
    }
    if ehdr.e_entry < HIMEM_START {
        return Err(bad("entry point below 1 MiB"));
    }
    let mut loaded = false;
    for i in 0..u64::from(ehdr.e_phnum) {
        let mut phdr = Elf64_Phdr::default();
        let at = i
            .checked_mul(std::mem::size_of::<Elf64_Phdr>() as u64)
            .and_then(|o| o.checked_add(ehdr.e_phoff))
            .ok_or_else(|| bad("program header offset overflows"))?;
        file.read_exact_at(phdr.as_mut_slice(), at).map_err(|_| bad("short program header table"))?;
        if phdr.p_type != PT_LOAD || phdr.p_filesz == 0 {
            continue;
        }
        if phdr.p_filesz > phdr.p_memsz || phdr.p_offset.checked_add(phdr.p_filesz).is_none_or(|end| end > file_len) {
            return Err(bad("a segment lies outside the file"));
        }
        load_segment(mem, &file, &phdr).map_err(|why| bad(&why))?;
        loaded = true;
    }
    if !loaded {
        return Err(bad("no loadable segment"));
    }
    Ok(GuestAddress(ehdr.e_entry))
}

/// Puts one PT_LOAD segment (checked to lie inside the file) at its physical address: the whole
/// pages whose file offset and guest address agree modulo the page size are mapped from the
/// file, the edges are read in. Guest memory is fresh, so the segment's bss is already zero.
fn load_segment(mem: &GuestMemoryMmap, file: &File, phdr: &Elf64_Phdr) -> Result<(), String> {
    let (paddr, offset, len) = (phdr.p_paddr, phdr.p_offset, phdr.p_filesz);
    let end = paddr.checked_add(phdr.p_memsz).ok_or("a segment's address overflows")?;
    // get_slice checks that [paddr, paddr + memsz) lies in one guest memory region.
    let region = mem
        .get_slice(GuestAddress(paddr), (end - paddr) as usize)
        .map_err(|_| format!("segment at {paddr:#x} (+{:#x}) is outside guest memory", phdr.p_memsz))?;
    let host = region.ptr_guard_mut().as_ptr() as usize;
    let lead = if paddr % PAGE == offset % PAGE { ((PAGE - paddr % PAGE) % PAGE).min(len) } else { len };
    let mapped = (len - lead) / PAGE * PAGE;
    if mapped > 0 {
        // SAFETY: [host + lead, host + lead + mapped) lies inside one region of guest memory
        // (get_slice above), which this process mapped and keeps mapped for the VM's life; the
        // address is page aligned because paddr + lead is and regions start page aligned. The
        // new mapping replaces those pages with a private (copy-on-write) view of the file,
        // still readable and writable, and goes away with the region's own munmap.
        let ret = unsafe {
            libc::mmap(
                (host + lead as usize) as *mut libc::c_void,
                mapped as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_FIXED,
                file.as_raw_fd(),
                (offset + lead) as libc::off_t,
            )
        };
        if ret == libc::MAP_FAILED {
            return Err(format!("mmap: {}", std::io::Error::last_os_error()));
        }
    }
    for (from, to) in [(0, lead), (lead + mapped, len)] {
        if to > from {
            let mut buf = vec![0u8; (to - from) as usize];
            file.read_exact_at(&mut buf, offset + from).map_err(|e| format!("read: {e}"))?;
            mem.write_slice(&buf, GuestAddress(paddr + from)).map_err(|e| format!("write: {e}"))?;
        }
    }
    Ok(())
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

    /// An ELF64 x86-64 file with the given (offset, paddr, filesz, memsz) PT_LOAD segments, each
    /// filled with bytes that tell their file offset apart.
    fn elf_with(segments: &[(u64, u64, u64, u64)], entry: u64) -> Vec<u8> {
        let mut ehdr = Elf64_Ehdr::default();
        ehdr.e_ident[..4].copy_from_slice(b"\x7fELF");
        ehdr.e_ident[4] = ELFCLASS64;
        ehdr.e_ident[5] = ELFDATA2LSB;
        ehdr.e_machine = EM_X86_64;
        ehdr.e_entry = entry;
        ehdr.e_phoff = 64;
        ehdr.e_phentsize = std::mem::size_of::<Elf64_Phdr>() as u16;
        ehdr.e_phnum = segments.len() as u16;
        let end = segments.iter().map(|s| s.0 + s.2).max().unwrap_or(0) as usize;
        let mut file: Vec<u8> = (0..end.max(4096)).map(|i| (i % 251) as u8 + 1).collect();
        file[..64].copy_from_slice(ehdr.as_slice());
        for (i, &(offset, paddr, filesz, memsz)) in segments.iter().enumerate() {
            let phdr = Elf64_Phdr {
                p_type: PT_LOAD,
                p_offset: offset,
                p_paddr: paddr,
                p_filesz: filesz,
                p_memsz: memsz,
                ..Default::default()
            };
            file[64 + 56 * i..64 + 56 * (i + 1)].copy_from_slice(phdr.as_slice());
        }
        file
    }

    #[test]
    fn segments_are_mapped_and_read_in_exactly() {
        let dir = std::env::temp_dir().join(format!("ember-elf-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("vmlinux");
        // One segment congruent with its address, with ragged edges and a bss tail; one that is
        // not congruent (read in whole); one that ends exactly on a page.
        let segs = [
            (0x1100, 0x20_0100, 0x3000, 0x5000),
            (0x5003, 0x40_0000, 0x1801, 0x1801),
            (0x8000, 0x50_0000, 0x2000, 0x2000),
        ];
        let file = elf_with(&segs, 0x20_0100);
        std::fs::write(&path, &file).unwrap();
        let mem = GuestMemoryMmap::<()>::from_ranges(&ram_regions(128 * MIB)).unwrap();
        // Bytes just around the segments stay as they were.
        mem.write_slice(&[0xee; 0x100], GuestAddress(0x20_0000)).unwrap();
        assert_eq!(load_kernel(&mem, &path).unwrap(), GuestAddress(0x20_0100));
        for (offset, paddr, filesz, memsz) in segs {
            let mut got = vec![0u8; memsz as usize];
            mem.read_slice(&mut got, GuestAddress(paddr)).unwrap();
            assert_eq!(&got[..filesz as usize], &file[offset as usize..(offset + filesz) as usize], "{paddr:#x}");
            assert!(got[filesz as usize..].iter().all(|b| *b == 0), "bss of {paddr:#x}");
        }
        let mut before = [0u8; 0x100];
        mem.read_slice(&mut before, GuestAddress(0x20_0000)).unwrap();
        assert!(before.iter().all(|b| *b == 0xee));
        // The guest's writes stay its own: the file does not change.
        mem.write_slice(&[0u8; 0x2000], GuestAddress(0x50_0000)).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), file);

        // Segments outside guest memory or the file, and junk headers, are clear errors.
        let bad = [
            elf_with(&[(0x1000, 200 * MIB, 0x1000, 0x1000)], 0x20_0000),
            elf_with(&[(0x1000, 0x20_0000, 0x10_0000, 0x10_0000)], 0x20_0000)[..0x2000].to_vec(),
            elf_with(&[(0x1000, 0x20_0000, 0x1000, 0x1000)], 0x1000),
            elf_with(&[], 0x20_0000),
        ];
        for (i, image) in bad.iter().enumerate() {
            std::fs::write(&path, image).unwrap();
            assert!(matches!(load_kernel(&mem, &path), Err(Error::LoadKernel { .. })), "case {i}");
        }
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
