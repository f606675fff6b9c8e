//! Snapshot files: the VM's state in one file, its memory in another.
//!
//! The state file is a fixed header, then the state serialized with bincode:
//!
//! ```text
//! magic "EMBERSNP" | version u32 le | payload length u64 le | SHA-256 of the payload | payload
//! ```
//!
//! A reader checks all four before it deserializes anything, and refuses payloads over
//! [`MAX_STATE_BYTES`], so a corrupt, truncated or hostile file is an error, never a crash or
//! a huge allocation. The structs themselves live next to what they describe (vCPU, VM,
//! devices); [`VmSnapshot`] gathers them.
//!
//! The memory file holds guest RAM's regions back to back, exactly as long as guest memory;
//! pages that are all zeros are not written, so the file is sparse where the guest never wrote.
//! A restore maps it MAP_PRIVATE (see `vstate::vm::map_memory_file`): the restore costs the
//! same for any memory size, and every clone of one snapshot shares its clean pages.

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::devices::legacy::SerialSnapshot;
use super::devices::virtio::mmio::TransportState;
use super::vstate::vcpu::VcpuState;
use super::vstate::vm::VmState;

const MAGIC: &[u8; 8] = b"EMBERSNP";
/// The state format's version; a file of another version is refused.
pub const VERSION: u32 = 1;
const HEADER_LEN: usize = 8 + 4 + 8 + 32;
/// The largest state payload read back (a 32-vCPU VM's state is well under 1 MiB).
pub const MAX_STATE_BYTES: u64 = 16 << 20;
/// The state file's name in a snapshot directory.
pub const STATE_FILE: &str = "state";
/// The memory file's name in a snapshot directory.
pub const MEMORY_FILE: &str = "memory";
/// The granule the memory file is written in; zero granules are holes.
const PAGE: usize = 4096;

/// Errors reading or writing snapshot files.
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
    /// The state file is not one of ours, or not this version, or damaged.
    #[error("{path}: {why}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        why: String,
    },
    /// The state could not be serialized.
    #[error("cannot encode the VM state: {0}")]
    Encode(String),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io { path: path.to_owned(), source }
}

/// How a virtio device is backed, so that a restore can attach the same thing again.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeviceKind {
    /// A read-only image file (the root filesystem, the function's code).
    Image {
        /// The file.
        path: PathBuf,
        /// The serial the guest sees.
        id: String,
    },
    /// A fresh scratch drive of this many MiB (/tmp); every restore gets a new, empty one.
    Scratch {
        /// Its size.
        mib: u32,
        /// The serial the guest sees.
        id: String,
    },
    /// The vsock device; its host socket is the restoring caller's.
    Vsock,
}

/// One virtio device: what backs it and its transport's state.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DeviceState {
    /// What backs it.
    pub kind: DeviceKind,
    /// Its transport, queues included.
    pub transport: TransportState,
}

/// Everything but memory.
#[derive(Debug, Serialize, Deserialize)]
pub struct VmSnapshot {
    /// Guest memory in MiB (the memory file must be exactly this long).
    pub memory_mib: u32,
    /// The vCPUs, in id order.
    pub vcpus: Vec<VcpuState>,
    /// Interrupt controllers, PIT, clock.
    pub vm: VmState,
    /// The virtio devices in bus order.
    pub devices: Vec<DeviceState>,
    /// COM1.
    pub serial: SerialSnapshot,
}

fn bincode_config() -> impl bincode::config::Config {
    bincode::config::standard().with_fixed_int_encoding().with_limit::<{ MAX_STATE_BYTES as usize }>()
}

/// Writes `state` to `path` (through a temporary file renamed into place, so a crash never
/// leaves a half-written state file under the final name).
pub fn write_state<T: Serialize>(path: &Path, state: &T) -> Result<(), Error> {
    let payload = bincode::serde::encode_to_vec(state, bincode_config()).map_err(|e| Error::Encode(e.to_string()))?;
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(&Sha256::digest(&payload));
    out.extend_from_slice(&payload);
    let tmp = path.with_extension("partial");
    let mut file = File::create(&tmp).map_err(io_err(&tmp))?;
    file.write_all(&out).and_then(|()| file.sync_all()).map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io_err(path))
}

/// Reads a state file written by [`write_state`], checking its magic, version, length and
/// checksum first.
pub fn read_state<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T, Error> {
    read_state_and_id(path).map(|(state, _)| state)
}

/// [`read_state`], with the payload's SHA-256: what names this snapshot (its working set
/// says which snapshot it was recorded on).
pub fn read_state_and_id<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<(T, [u8; 32]), Error> {
    let corrupt = |why: String| Error::Corrupt { path: path.to_owned(), why };
    let mut file = File::open(path).map_err(io_err(path))?;
    let mut header = [0u8; HEADER_LEN];
    file.read_exact(&mut header).map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => corrupt("truncated header".into()),
        _ => Error::Io { path: path.to_owned(), source: e },
    })?;
    if &header[..8] != MAGIC {
        return Err(corrupt("not an Ember snapshot (bad magic)".into()));
    }
    let version = u32::from_le_bytes(header[8..12].try_into().expect("4 bytes"));
    if version != VERSION {
        return Err(corrupt(format!("snapshot version {version}, this Ember reads {VERSION}")));
    }
    let len = u64::from_le_bytes(header[12..20].try_into().expect("8 bytes"));
    if len > MAX_STATE_BYTES {
        return Err(corrupt(format!("state of {len} bytes is over the {MAX_STATE_BYTES}-byte limit")));
    }
    let mut payload = Vec::with_capacity(len as usize);
    (&mut file).take(len).read_to_end(&mut payload).map_err(io_err(path))?;
    if payload.len() as u64 != len {
        return Err(corrupt(format!("truncated: {} of {len} state bytes", payload.len())));
    }
    if file.read(&mut [0u8; 1]).map_err(io_err(path))? != 0 {
        return Err(corrupt("trailing bytes after the state".into()));
    }
    if Sha256::digest(&payload)[..] != header[20..52] {
        return Err(corrupt("checksum mismatch".into()));
    }
    let (state, used) = bincode::serde::decode_from_slice(&payload, bincode_config())
        .map_err(|e| corrupt(format!("bad state: {e}")))?;
    if used != payload.len() {
        return Err(corrupt("state shorter than its payload".into()));
    }
    Ok((state, header[20..52].try_into().expect("32 bytes")))
}

/// Writes `regions` (guest RAM, in guest address order) back to back into a new file at
/// `path`, leaving holes where a page is all zeros; returns the bytes written.
pub fn write_memory(path: &Path, regions: &[&[u8]]) -> Result<u64, Error> {
    let tmp = path.with_extension("partial");
    let file = File::create(&tmp).map_err(io_err(&tmp))?;
    let total: u64 = regions.iter().map(|r| r.len() as u64).sum();
    file.set_len(total).map_err(io_err(&tmp))?;
    let mut offset = 0u64;
    let mut written = 0u64;
    for region in regions {
        // Consecutive non-zero pages are written with one call.
        let mut run: Option<usize> = None;
        let mut flush = |start: usize, end: usize| -> Result<(), Error> {
            file.write_all_at(&region[start..end], offset + start as u64).map_err(io_err(&tmp))?;
            written += (end - start) as u64;
            Ok(())
        };
        for (i, page) in region.chunks(PAGE).enumerate() {
            let zero = is_zero(page);
            match (run, zero) {
                (None, false) => run = Some(i * PAGE),
                (Some(start), true) => {
                    flush(start, i * PAGE)?;
                    run = None;
                }
                _ => {}
            }
        }
        if let Some(start) = run {
            flush(start, region.len())?;
        }
        offset += region.len() as u64;
    }
    file.sync_all().map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io_err(path))?;
    Ok(written)
}

fn is_zero(page: &[u8]) -> bool {
    let (head, words, tail) = {
        // SAFETY: every bit pattern is a valid u64; align_to only reinterprets the aligned middle.
        unsafe { page.align_to::<u64>() }
    };
    head.iter().all(|&b| b == 0) && words.iter().all(|&w| w == 0) && tail.iter().all(|&b| b == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Sample {
        name: String,
        regs: kvm_bindings::kvm_regs,
        values: Vec<u64>,
    }

    fn sample() -> Sample {
        let regs = kvm_bindings::kvm_regs { rip: 0x1000, rsp: 0x8000, rflags: 2, ..Default::default() };
        Sample { name: "vm".into(), regs, values: vec![1, 2, 3] }
    }

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("ember-snap-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn state_round_trips() {
        let d = dir("roundtrip");
        let path = d.join(STATE_FILE);
        write_state(&path, &sample()).unwrap();
        assert_eq!(read_state::<Sample>(&path).unwrap(), sample());
        assert!(!path.with_extension("partial").exists());
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn damaged_state_files_are_refused() {
        let d = dir("damaged");
        let path = d.join(STATE_FILE);
        write_state(&path, &sample()).unwrap();
        let good = std::fs::read(&path).unwrap();
        let check = |bytes: &[u8], want: &str| {
            std::fs::write(&path, bytes).unwrap();
            let err = read_state::<Sample>(&path).unwrap_err().to_string();
            assert!(err.contains(want), "{want}: {err}");
        };
        let mut flipped = good.clone();
        *flipped.last_mut().unwrap() ^= 1;
        check(&flipped, "checksum mismatch");
        check(&good[..good.len() - 1], "truncated");
        check(&good[..10], "truncated header");
        let mut longer = good.clone();
        longer.push(0);
        check(&longer, "trailing bytes");
        let mut magic = good.clone();
        magic[0] = b'X';
        check(&magic, "bad magic");
        let mut version = good.clone();
        version[8] = 9;
        check(&version, "snapshot version 9");
        let mut huge = good.clone();
        huge[12..20].copy_from_slice(&u64::MAX.to_le_bytes());
        check(&huge, "over the");
        // A payload with a valid checksum that is not the expected state.
        let mut other = good[..HEADER_LEN].to_vec();
        let payload = [0xffu8; 3];
        other[12..20].copy_from_slice(&3u64.to_le_bytes());
        other[20..52].copy_from_slice(&Sha256::digest(payload));
        other.extend_from_slice(&payload);
        check(&other, "bad state");
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn memory_is_written_sparse_and_whole() {
        use std::os::unix::fs::MetadataExt;
        let d = dir("memory");
        let path = d.join(MEMORY_FILE);
        let mut a = vec![0u8; 64 * PAGE];
        a[0] = 1; // page 0
        a[5 * PAGE + 7] = 2; // page 5
        a[6 * PAGE] = 3; // page 6, same run as 5
        let mut b = vec![0u8; 16 * PAGE + 100];
        *b.last_mut().unwrap() = 4; // the short last page
        let written = write_memory(&path, &[&a, &b]).unwrap();
        assert_eq!(written, (3 * PAGE + 100) as u64);
        let back = std::fs::read(&path).unwrap();
        assert_eq!(back.len(), a.len() + b.len());
        assert_eq!(&back[..a.len()], &a[..]);
        assert_eq!(&back[a.len()..], &b[..]);
        // Holes: far fewer blocks than the length (tmpfs and ext4 both keep holes).
        let meta = std::fs::metadata(&path).unwrap();
        assert!(meta.blocks() * 512 < meta.len() / 4, "{} blocks for {} bytes", meta.blocks(), meta.len());
        std::fs::remove_dir_all(d).unwrap();
    }
}
