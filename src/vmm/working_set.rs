//! Working sets, as REAP (ASPLOS '21) has them: the guest pages a VM restored from a snapshot
//! touched while it served its first invocation, recorded once and loaded in one go before
//! the next restore of that snapshot runs its guest, so that the guest resumes without taking
//! a nested page fault for each of them.
//!
//! Recording reads the VMM process's own page table (`/proc/self/pagemap`) over guest memory:
//! a restore maps the memory file private and fresh, so a page present there is one the guest
//! (or a device, for it) touched since the restore, or a neighbour of one that the kernel mapped
//! along with it (fault-around maps up to 64 KiB of page-cache pages per read fault): a little
//! more than the guest touched, never less. A present page that is no longer the file's (an
//! anonymous copy) was written.
//!
//! The file, `working_set` beside the snapshot's `state` and `memory`:
//!
//! ```text
//! magic "EMBERWS1" | the state file's payload SHA-256 (32 bytes) | range count u64 le
//!   | ranges: guest-physical address u64 le, pages u64 le, flags u64 le (bit 0: written)
//!   | SHA-256 of everything before it
//! ```
//!
//! A working set is a hint: a file that is missing, truncated, damaged or taken of another
//! snapshot is an error for the caller to log, and the restore goes on without it.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// The file's name in a snapshot directory.
pub const FILE: &str = "working_set";

/// This process's page map, which recording reads.
const PAGEMAP: &str = "/proc/self/pagemap";
/// The page map opened ahead by [`open_pagemap`].
static OPENED_PAGEMAP: std::sync::OnceLock<File> = std::sync::OnceLock::new();

/// Opens this process's page map now, for a recording later in a jail without `/proc`.
pub fn open_pagemap() -> std::io::Result<()> {
    let file = File::open(PAGEMAP)?;
    let _ = OPENED_PAGEMAP.set(file);
    Ok(())
}
const MAGIC: &[u8; 8] = b"EMBERWS1";
const HEADER_LEN: usize = 8 + 32 + 8;
const RANGE_LEN: usize = 24;
const PAGE: u64 = 4096;
/// pagemap: the page is present in RAM.
const PM_PRESENT: u64 = 1 << 63;
/// pagemap: the page is a file page or shared anonymous memory (not a private copy).
const PM_FILE: u64 = 1 << 61;
const FLAG_WRITTEN: u64 = 1;

/// Errors reading, recording or writing a working set.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not a working set of this snapshot, or it is damaged.
    #[error("{path}: {why}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        why: String,
    },
}

/// A run of guest pages, all read or all written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Range {
    /// Its guest-physical address (page-aligned).
    pub gpa: u64,
    /// Its length in 4 KiB pages.
    pub pages: u64,
    /// Whether the guest wrote them (they were private copies when recorded).
    pub written: bool,
}

impl Range {
    /// Its length in bytes.
    pub fn bytes(&self) -> u64 {
        self.pages * PAGE
    }
}

/// The guest pages one invocation touched, in guest-physical order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WorkingSet {
    /// The runs of pages.
    pub ranges: Vec<Range>,
}

/// One region of guest memory as this process maps it.
#[derive(Clone, Copy, Debug)]
pub struct Region {
    /// Its guest-physical address.
    pub gpa: u64,
    /// Where it is mapped in this process.
    pub host: u64,
    /// Its length in bytes.
    pub len: u64,
}

impl WorkingSet {
    /// How many pages it holds.
    pub fn pages(&self) -> u64 {
        self.ranges.iter().map(|r| r.pages).sum()
    }

    /// Builds the working set from pagemap entries: `entries[i]` is the entry of the page at
    /// `gpa + i * 4096`. Appends to what is there (regions come in guest order).
    fn add_entries(&mut self, gpa: u64, entries: impl IntoIterator<Item = u64>) {
        for (i, entry) in entries.into_iter().enumerate() {
            if entry & PM_PRESENT == 0 {
                continue;
            }
            let page = gpa + i as u64 * PAGE;
            let written = entry & PM_FILE == 0;
            match self.ranges.last_mut() {
                Some(r) if r.written == written && r.gpa + r.bytes() == page => r.pages += 1,
                _ => self.ranges.push(Range { gpa: page, pages: 1, written }),
            }
        }
    }

    /// Records the pages of `regions` that this process has present: the working set of a
    /// VM restored in this process since the restore.
    pub fn record(regions: &[Region]) -> Result<WorkingSet, Error> {
        let path = PathBuf::from(PAGEMAP);
        let opened;
        let pagemap = match OPENED_PAGEMAP.get() {
            Some(f) => f,
            None => {
                opened = File::open(&path).map_err(|source| Error::Io { path: path.clone(), source })?;
                &opened
            }
        };
        let mut ws = WorkingSet::default();
        // A region at a time, in chunks of 512 KiB of entries (256 MiB of guest memory).
        const CHUNK: u64 = 64 * 1024;
        for region in regions {
            let pages = region.len / PAGE;
            let mut done = 0;
            while done < pages {
                let n = CHUNK.min(pages - done);
                let mut buf = vec![0u8; n as usize * 8];
                let offset = (region.host / PAGE + done) * 8;
                pagemap.read_exact_at(&mut buf, offset).map_err(|source| Error::Io { path: path.clone(), source })?;
                let entries = buf.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")));
                ws.add_entries(region.gpa + done * PAGE, entries);
                done += n;
            }
        }
        Ok(ws)
    }

    /// The file's bytes, for the snapshot whose state payload hashes to `snapshot`.
    fn encode(&self, snapshot: &[u8; 32]) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + self.ranges.len() * RANGE_LEN + 32);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(snapshot);
        out.extend_from_slice(&(self.ranges.len() as u64).to_le_bytes());
        for r in &self.ranges {
            out.extend_from_slice(&r.gpa.to_le_bytes());
            out.extend_from_slice(&r.pages.to_le_bytes());
            out.extend_from_slice(&(if r.written { FLAG_WRITTEN } else { 0 }).to_le_bytes());
        }
        let sum = Sha256::digest(&out);
        out.extend_from_slice(&sum);
        out
    }

    /// Parses a working set of the snapshot `snapshot` whose guest memory ends at guest
    /// address `mem_end`; `path` names the file in errors.
    fn decode(bytes: &[u8], snapshot: &[u8; 32], mem_end: u64, path: &Path) -> Result<WorkingSet, Error> {
        let invalid = |why: &str| Error::Invalid { path: path.to_owned(), why: why.to_owned() };
        if bytes.len() < HEADER_LEN + 32 || &bytes[..8] != MAGIC {
            return Err(invalid("not a working set (bad magic or too short)"));
        }
        let (body, sum) = bytes.split_at(bytes.len() - 32);
        let count = u64::from_le_bytes(body[40..48].try_into().expect("8 bytes"));
        if count.checked_mul(RANGE_LEN as u64).and_then(|n| n.checked_add(HEADER_LEN as u64)) != Some(body.len() as u64)
        {
            return Err(invalid("truncated or of the wrong length"));
        }
        if Sha256::digest(body)[..] != *sum {
            return Err(invalid("checksum mismatch"));
        }
        if body[8..40] != snapshot[..] {
            return Err(invalid("taken of another snapshot"));
        }
        let mut ranges = Vec::with_capacity(count as usize);
        let mut end = 0u64;
        for chunk in body[HEADER_LEN..].chunks_exact(RANGE_LEN) {
            let word = |i: usize| u64::from_le_bytes(chunk[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
            let (gpa, pages, flags) = (word(0), word(1), word(2));
            let in_order = gpa % PAGE == 0 && gpa >= end && pages > 0;
            match pages.checked_mul(PAGE).and_then(|len| len.checked_add(gpa)) {
                Some(e) if in_order && flags & !FLAG_WRITTEN == 0 => end = e,
                _ => return Err(invalid("a range out of order, empty or overflowing")),
            }
            ranges.push(Range { gpa, pages, written: flags & FLAG_WRITTEN != 0 });
        }
        if end > mem_end {
            return Err(invalid("a range beyond guest memory"));
        }
        Ok(WorkingSet { ranges })
    }

    /// Loads the working set into this process's mapping of `regions` (guest memory mapped
    /// private from a snapshot's memory file): pages written become this VM's private copies
    /// now, as the guest's first write would have made them; with `reads`, pages read become
    /// mapped page-cache pages too, still shared with every other clone of the snapshot
    /// (without, they are left to `KVM_PRE_FAULT_MEMORY`, which maps them itself). Returns
    /// the pages loaded.
    pub fn populate(&self, regions: &[Region], reads: bool) -> Result<u64, std::io::Error> {
        let mut loaded = 0;
        for r in self.ranges.iter().filter(|r| r.written || reads) {
            let host = host_range(regions, r)?;
            let advice = if r.written { libc::MADV_POPULATE_WRITE } else { libc::MADV_POPULATE_READ };
            // SAFETY: [host, host + len) lies inside one live mapping of guest memory (checked by
            // host_range); populating it changes what is resident, never what it holds.
            if unsafe { libc::madvise(host as *mut libc::c_void, r.bytes() as usize, advice) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
            loaded += r.pages;
        }
        Ok(loaded)
    }

    /// The working set as runs of guest memory, `(gpa, bytes)`, read and written pages alike:
    /// adjacent ranges are one run, one `KVM_PRE_FAULT_MEMORY` call.
    pub fn spans(&self) -> Vec<(u64, u64)> {
        let mut spans: Vec<(u64, u64)> = Vec::new();
        for r in &self.ranges {
            match spans.last_mut() {
                Some((gpa, len)) if *gpa + *len == r.gpa => *len += r.bytes(),
                _ => spans.push((r.gpa, r.bytes())),
            }
        }
        spans
    }

    /// Writes the working set of the snapshot `snapshot` to `path` (through a temporary file
    /// renamed into place).
    pub fn write(&self, path: &Path, snapshot: &[u8; 32]) -> Result<(), Error> {
        let tmp = path.with_extension("partial");
        let io = |p: &Path| {
            let p = p.to_owned();
            move |source| Error::Io { path: p, source }
        };
        let mut file = File::create(&tmp).map_err(io(&tmp))?;
        file.write_all(&self.encode(snapshot)).and_then(|()| file.sync_all()).map_err(io(&tmp))?;
        std::fs::rename(&tmp, path).map_err(io(path))
    }

    /// Reads the working set at `path` of the snapshot `snapshot` whose guest memory ends at
    /// guest address `mem_end`.
    pub fn read(path: &Path, snapshot: &[u8; 32], mem_end: u64) -> Result<WorkingSet, Error> {
        let bytes = std::fs::read(path).map_err(|source| Error::Io { path: path.to_owned(), source })?;
        WorkingSet::decode(&bytes, snapshot, mem_end, path)
    }
}

/// Where `r` is mapped in this process: its host address, if one region holds all of it.
fn host_range(regions: &[Region], r: &Range) -> Result<u64, std::io::Error> {
    let len = r.pages * PAGE;
    regions
        .iter()
        .find(|m| r.gpa >= m.gpa && r.gpa + len <= m.gpa + m.len)
        .map(|m| m.host + (r.gpa - m.gpa))
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("pages {:#x}+{len:#x} are not in guest memory", r.gpa),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: u64 = PM_PRESENT | PM_FILE;
    const W: u64 = PM_PRESENT;

    fn ws() -> WorkingSet {
        let mut ws = WorkingSet::default();
        ws.add_entries(0, [P, P, 0, W, W, P, 0, 0]);
        ws.add_entries(1 << 20, [P, 0]);
        ws
    }

    #[test]
    fn present_pages_become_ranges_split_by_what_was_written() {
        let r = |gpa, pages, written| Range { gpa, pages, written };
        assert_eq!(
            ws().ranges,
            vec![r(0, 2, false), r(3 * PAGE, 2, true), r(5 * PAGE, 1, false), r(1 << 20, 1, false)]
        );
        assert_eq!(ws().pages(), 6);
    }

    #[test]
    fn adjacent_ranges_are_one_span_to_pre_fault() {
        // Read, written and read again back to back, then a gap.
        assert_eq!(ws().spans(), vec![(0, 2 * PAGE), (3 * PAGE, 3 * PAGE), (1 << 20, PAGE)]);
    }

    #[test]
    fn a_file_reads_back_only_whole_and_for_its_own_snapshot() {
        let id = [7u8; 32];
        let path = Path::new("ws");
        let bytes = ws().encode(&id);
        assert_eq!(WorkingSet::decode(&bytes, &id, 128 << 20, path).unwrap(), ws());
        // Another snapshot's.
        assert!(WorkingSet::decode(&bytes, &[8u8; 32], 128 << 20, path).is_err());
        // Truncated anywhere, or with a byte changed anywhere.
        for cut in 0..bytes.len() {
            assert!(WorkingSet::decode(&bytes[..cut], &id, 128 << 20, path).is_err(), "cut at {cut}");
        }
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 1;
            assert!(WorkingSet::decode(&bad, &id, 128 << 20, path).is_err(), "byte {i} flipped");
        }
        // Ranges out of order are refused even with a good checksum.
        let swapped = WorkingSet { ranges: ws().ranges.into_iter().rev().collect() };
        assert!(WorkingSet::decode(&swapped.encode(&id), &id, 128 << 20, path).is_err());
    }

    #[test]
    fn loading_shares_what_was_read_and_copies_what_was_written() {
        let dir = std::env::temp_dir().join(format!("ember-ws-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("memory");
        std::fs::write(&path, vec![7u8; 16 * PAGE as usize]).unwrap();
        let file = File::open(&path).unwrap();
        let len = 16 * PAGE as usize;
        // SAFETY: a new private mapping of the file just written, unmapped below.
        let raw = unsafe {
            use std::os::fd::AsRawFd;
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE,
                file.as_raw_fd(),
                0,
            )
        };
        assert_ne!(raw, libc::MAP_FAILED);
        let region = Region { gpa: 0, host: raw as u64, len: len as u64 };
        let ws = WorkingSet {
            ranges: vec![
                Range { gpa: 2 * PAGE, pages: 3, written: false },
                Range { gpa: 9 * PAGE, pages: 2, written: true },
            ],
        };
        assert_eq!(ws.populate(&[region], false).unwrap(), 2, "only what was written");
        assert_eq!(ws.populate(&[region], true).unwrap(), 5);
        let seen = WorkingSet::record(&[region]).unwrap();
        // A range outside the mapping is refused, not loaded.
        let outside = WorkingSet { ranges: vec![Range { gpa: 15 * PAGE, pages: 2, written: false }] };
        assert!(outside.populate(&[region], true).is_err());
        // SAFETY: the mapping made above, no longer used.
        unsafe { libc::munmap(raw, len) };
        let _ = std::fs::remove_dir_all(&dir);
        // Every page loaded is present, as it was asked for; the kernel may have mapped the
        // read ones' neighbours too (fault-around), but only the written ones are copies.
        let pages = |ws: &WorkingSet, written: bool| -> Vec<u64> {
            ws.ranges
                .iter()
                .filter(|r| r.written == written)
                .flat_map(|r| (0..r.pages).map(move |i| r.gpa + i * PAGE))
                .collect()
        };
        assert_eq!(pages(&seen, true), pages(&ws, true));
        let read = pages(&seen, false);
        assert!(pages(&ws, false).iter().all(|p| read.contains(p)), "{seen:?}");
    }

    #[test]
    fn recording_sees_the_pages_this_process_touched() {
        let len = 64 * PAGE as usize;
        // SAFETY: a new private anonymous mapping, unmapped below; nothing else refers to it.
        let raw = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(raw, libc::MAP_FAILED);
        // SAFETY: offsets inside the mapping just made.
        unsafe {
            raw.cast::<u8>().add(5 * PAGE as usize).write_volatile(1);
            raw.cast::<u8>().add(6 * PAGE as usize).write_volatile(1);
        }
        let region = Region { gpa: 1 << 20, host: raw as u64, len: len as u64 };
        let ws = WorkingSet::record(&[region]).unwrap();
        // SAFETY: the mapping made above, no longer used.
        unsafe { libc::munmap(raw, len) };
        assert_eq!(ws.ranges, vec![Range { gpa: (1 << 20) + 5 * PAGE, pages: 2, written: true }]);
    }
}
