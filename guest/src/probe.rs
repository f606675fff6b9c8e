//! Measures what the guest sees: its memory and its online vCPUs, read from sysfs.
//!
//! The memory is the sum of the firmware memory map (`/sys/firmware/memmap`), which is the e820
//! map the VMM wrote: it covers exactly the guest RAM, including the reserved hole below 1 MiB,
//! so the sum equals the VM's configured size. The parsers are pure and unit-tested below.

use std::fs;
use std::io;
use std::path::Path;

use crate::Error;

const MEMMAP_DIR: &str = "/sys/firmware/memmap";
const CPU_ONLINE: &str = "/sys/devices/system/cpu/online";

/// The guest memory in MiB, rounded to nearest.
pub fn memory_mib() -> Result<u32, Error> {
    let bytes = memmap_bytes(Path::new(MEMMAP_DIR)).map_err(|e| Error::new(MEMMAP_DIR, e))?;
    Ok(bytes_to_mib(bytes))
}

/// The number of online vCPUs.
pub fn vcpus() -> Result<u32, Error> {
    let list = fs::read_to_string(CPU_ONLINE).map_err(|e| Error::new(CPU_ONLINE, e))?;
    count_cpu_list(&list).ok_or_else(|| Error::new(CPU_ONLINE, invalid(format!("bad CPU list {list:?}"))))
}

/// Measures the memory in use, on the invoke path: one sysinfo(2) call, which costs far less
/// than having the kernel render /proc/meminfo. In use = all RAM but the free pages, so page
/// cache counts, as it does in the memory cgroup Lambda reports from.
pub struct MemoryUsed;

impl MemoryUsed {
    /// Ready to measure.
    pub fn open() -> Self {
        MemoryUsed
    }

    /// The memory in use now in MiB, rounded to nearest; 0 if it cannot be read (it only
    /// feeds a report line).
    pub fn mib(&self) -> u32 {
        // SAFETY: sysinfo fills the struct we pass and touches nothing else; all-zero bytes
        // are a valid `libc::sysinfo`.
        let mut info: libc::sysinfo = unsafe { std::mem::zeroed() };
        // SAFETY: see above; `info` is a valid, writable sysinfo struct.
        if unsafe { libc::sysinfo(&mut info) } != 0 {
            return 0;
        }
        let unit = u64::from(info.mem_unit.max(1));
        bytes_to_mib(info.totalram.saturating_sub(info.freeram).saturating_mul(unit))
    }
}

/// Sums `end - start + 1` over the entries of a firmware memmap directory (`<dir>/<n>/{start,end}`,
/// hexadecimal, `end` inclusive). An empty directory is an error: the guest has memory.
fn memmap_bytes(dir: &Path) -> io::Result<u64> {
    let mut total: u64 = 0;
    let mut entries = 0;
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        let read = |name: &str| -> io::Result<u64> {
            let file = path.join(name);
            let text = fs::read_to_string(&file)?;
            parse_hex(&text).ok_or_else(|| invalid(format!("{}: bad address {text:?}", file.display())))
        };
        let (start, end) = (read("start")?, read("end")?);
        let len = end.checked_sub(start).ok_or_else(|| invalid(format!("{}: end before start", path.display())))?;
        total = total.saturating_add(len).saturating_add(1);
        entries += 1;
    }
    if entries == 0 {
        return Err(invalid("no entries".to_string()));
    }
    Ok(total)
}

/// Bytes to MiB, rounded to nearest, saturated to `u32`.
fn bytes_to_mib(bytes: u64) -> u32 {
    const MIB: u64 = 1 << 20;
    u32::try_from(bytes.saturating_add(MIB / 2) / MIB).unwrap_or(u32::MAX)
}

/// Parses `0x1f` (as sysfs writes it; the `0x` is optional) with surrounding whitespace.
fn parse_hex(text: &str) -> Option<u64> {
    let text = text.trim();
    let digits = text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")).unwrap_or(text);
    u64::from_str_radix(digits, 16).ok()
}

/// Counts the CPUs of a kernel CPU list such as `0-1,3\n`; `None` if it is malformed or empty.
fn count_cpu_list(list: &str) -> Option<u32> {
    let mut count: u32 = 0;
    for part in list.trim().split(',') {
        let (first, last) = match part.split_once('-') {
            Some((a, b)) => (a.trim().parse::<u32>().ok()?, b.trim().parse::<u32>().ok()?),
            None => {
                let cpu = part.trim().parse::<u32>().ok()?;
                (cpu, cpu)
            }
        };
        count = count.checked_add(last.checked_sub(first)?.checked_add(1)?)?;
    }
    Some(count)
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    /// A fresh, empty directory for one test.
    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("ember-init-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn add_entry(dir: &Path, index: u32, start: u64, end: u64, kind: &str) {
        let entry = dir.join(index.to_string());
        fs::create_dir(&entry).unwrap();
        fs::write(entry.join("start"), format!("0x{start:x}\n")).unwrap();
        fs::write(entry.join("end"), format!("0x{end:x}\n")).unwrap();
        fs::write(entry.join("type"), format!("{kind}\n")).unwrap();
    }

    #[test]
    fn cpu_lists() {
        assert_eq!(count_cpu_list("0\n"), Some(1));
        assert_eq!(count_cpu_list("0-1\n"), Some(2));
        assert_eq!(count_cpu_list("0-1,3"), Some(3));
        assert_eq!(count_cpu_list("0,2-5,7-7\n"), Some(6));
        assert_eq!(count_cpu_list(""), None);
        assert_eq!(count_cpu_list("\n"), None);
        assert_eq!(count_cpu_list("3-1"), None);
        assert_eq!(count_cpu_list("0-"), None);
        assert_eq!(count_cpu_list("0,,1"), None);
        assert_eq!(count_cpu_list("a"), None);
    }

    #[test]
    fn hex_and_rounding() {
        assert_eq!(parse_hex("0x9fbff\n"), Some(0x9fbff));
        assert_eq!(parse_hex("0x0"), Some(0));
        assert_eq!(parse_hex("ff"), Some(0xff));
        assert_eq!(parse_hex("0x"), None);
        assert_eq!(parse_hex("zz"), None);
        assert_eq!(bytes_to_mib(128 << 20), 128);
        assert_eq!(bytes_to_mib((128 << 20) + (1 << 19) - 1), 128);
        assert_eq!(bytes_to_mib((128 << 20) + (1 << 19)), 129);
        assert_eq!(bytes_to_mib(0), 0);
        assert_eq!(bytes_to_mib(u64::MAX), u32::MAX);
    }

    #[test]
    fn memory_used() {
        let memory = MemoryUsed::open();
        assert!(memory.mib() > 0, "this host has memory in use");
    }

    #[test]
    fn memmap_of_a_small_vm() {
        // What the VMM's e820 map for a 128 MiB guest looks like in sysfs.
        let dir = temp_dir("small");
        add_entry(&dir, 0, 0, 0x9fbff, "System RAM");
        add_entry(&dir, 1, 0x9fc00, 0xfffff, "Reserved");
        add_entry(&dir, 2, 0x10_0000, (128 << 20) - 1, "System RAM");
        assert_eq!(memmap_bytes(&dir).unwrap(), 128 << 20);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn memmap_above_4g() {
        // 6 GiB: RAM up to the 32-bit hole at 3 GiB, the rest from 4 GiB.
        let dir = temp_dir("big");
        add_entry(&dir, 0, 0, 0x9fbff, "System RAM");
        add_entry(&dir, 1, 0x9fc00, 0xfffff, "Reserved");
        add_entry(&dir, 2, 0x10_0000, (3 << 30) - 1, "System RAM");
        add_entry(&dir, 3, 4 << 30, (7 << 30) - 1, "System RAM");
        assert_eq!(bytes_to_mib(memmap_bytes(&dir).unwrap()), 6 << 10);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn memmap_errors() {
        let dir = temp_dir("errors");
        assert_eq!(memmap_bytes(&dir).unwrap_err().kind(), io::ErrorKind::InvalidData);
        add_entry(&dir, 0, 0x2000, 0x1000, "System RAM");
        assert_eq!(memmap_bytes(&dir).unwrap_err().kind(), io::ErrorKind::InvalidData);
        fs::remove_dir_all(&dir).unwrap();
        assert_eq!(memmap_bytes(&dir).unwrap_err().kind(), io::ErrorKind::NotFound);
    }
}
