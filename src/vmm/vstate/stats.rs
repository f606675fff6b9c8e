//! A vCPU's counters from KVM's binary statistics (`KVM_GET_STATS_FD`, Linux 5.14+).
//!
//! The file starts with a header, then one descriptor per counter (flags, exponent, size,
//! offset, bucket size, name), then the data. The layout is read once; a counter is then one
//! `pread` of eight bytes.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::os::unix::io::{AsRawFd, FromRawFd};

/// KVM_GET_STATS_FD = _IO(KVMIO, 0xce).
const KVM_GET_STATS_FD: libc::c_ulong = 0xae << 8 | 0xce;
const HEADER_LEN: usize = 24;
const DESC_FIXED_LEN: usize = 16;
/// A sanity bound on the descriptor block; KVM's is a few KiB.
const MAX_DESC_BYTES: usize = 1 << 20;

/// Errors reading statistics.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The ioctl failed (a kernel before 5.14).
    #[error("KVM_GET_STATS_FD: {0}")]
    Ioctl(io::Error),
    /// Reading the file failed.
    #[error("reading KVM statistics: {0}")]
    Read(io::Error),
    /// The file does not have the counter.
    #[error("KVM statistics have no counter {0:?}")]
    NoCounter(String),
}

/// One counter of one vCPU.
pub struct Counter {
    file: File,
    offset: u64,
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    b.get(at..at + 4).map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

/// Finds `name`'s data offset in a descriptor block, given the name size from the header.
fn find_offset(descs: &[u8], count: usize, name_size: usize, name: &str) -> Option<u64> {
    let stride = DESC_FIXED_LEN + name_size;
    (0..count).find_map(|i| {
        let d = descs.get(i * stride..(i + 1) * stride)?;
        let raw = &d[DESC_FIXED_LEN..];
        let end = raw.iter().position(|b| *b == 0).unwrap_or(raw.len());
        (&raw[..end] == name.as_bytes()).then(|| u64::from(u32_at(d, 8).unwrap_or(0)))
    })
}

impl Counter {
    /// Opens counter `name` (for example "exits") of the vCPU behind `vcpu_fd`.
    pub fn open(vcpu_fd: &impl AsRawFd, name: &str) -> Result<Self, Error> {
        // SAFETY: KVM_GET_STATS_FD takes no argument and returns a new fd or -1; the vCPU fd is
        // valid for the duration of the call.
        let fd = unsafe { libc::ioctl(vcpu_fd.as_raw_fd(), KVM_GET_STATS_FD as _) };
        if fd < 0 {
            return Err(Error::Ioctl(io::Error::last_os_error()));
        }
        // SAFETY: the ioctl returned a fresh fd that nothing else owns.
        let file = unsafe { File::from_raw_fd(fd) };
        let mut header = [0u8; HEADER_LEN];
        file.read_exact_at(&mut header, 0).map_err(Error::Read)?;
        let field = |i: usize| u32_at(&header, i * 4).unwrap_or(0) as usize;
        let (name_size, num_desc, desc_offset, data_offset) = (field(1), field(2), field(4), field(5));
        let len = num_desc.saturating_mul(DESC_FIXED_LEN + name_size).min(MAX_DESC_BYTES);
        let mut descs = vec![0u8; len];
        file.read_exact_at(&mut descs, desc_offset as u64).map_err(Error::Read)?;
        let offset =
            find_offset(&descs, num_desc, name_size, name).ok_or_else(|| Error::NoCounter(name.to_string()))?;
        Ok(Counter { file, offset: data_offset as u64 + offset })
    }

    /// The counter's current value.
    pub fn read(&self) -> Result<u64, Error> {
        let mut v = [0u8; 8];
        self.file.read_exact_at(&mut v, self.offset).map_err(Error::Read)?;
        Ok(u64::from_le_bytes(v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desc(name: &str, offset: u32, name_size: usize) -> Vec<u8> {
        let mut d = vec![0u8; DESC_FIXED_LEN + name_size];
        d[6..8].copy_from_slice(&1u16.to_le_bytes());
        d[8..12].copy_from_slice(&offset.to_le_bytes());
        d[DESC_FIXED_LEN..DESC_FIXED_LEN + name.len()].copy_from_slice(name.as_bytes());
        d
    }

    #[test]
    fn finds_named_counter() {
        let mut block = desc("halt_exits", 0, 48);
        block.extend(desc("exits", 40, 48));
        assert_eq!(find_offset(&block, 2, 48, "exits"), Some(40));
        assert_eq!(find_offset(&block, 2, 48, "nope"), None);
        // A count larger than the block is not an out-of-bounds read.
        assert_eq!(find_offset(&block, 99, 48, "nope"), None);
    }
}
