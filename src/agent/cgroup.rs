//! The fractional CPU share of a function, as Lambda gives it: one vCPU's worth of CPU time per
//! 1769 MB of memory, enforced with cgroup v2's `cpu.max` on the instance's VMM process.
//!
//! Every `ember vmm` process gets a cgroup of its own, `<root>/vmm-<n>`, made before the
//! process starts and joined by it before it execs; the root is `ember-<name>` at the top of
//! the cgroup v2 hierarchy. A spare VMM waits there at the lowest CPU weight, so that starting
//! spares takes only CPU time that no instance wants. The launch that takes it gives it the
//! default weight, and once the instance's init is over, its memory's share as `cpu.max`
//! (Lambda lets init run unthrottled). Moving a process between cgroups waits for an RCU
//! grace period (milliseconds, tens on a slow host), so nothing is moved on a launch's path:
//! only attributes are written. Where the host does not allow cgroups (no cgroup v2, no cpu
//! controller, not root), the agent says so once and runs everything unthrottled.

use std::ffi::{CStr, CString};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// The cgroup v2 mount point.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// cpu.max's period, in microseconds.
const PERIOD_US: u64 = 100_000;
/// Memory per whole CPU, in MB.
const MB_PER_CPU: u64 = super::limits::MB_PER_VCPU as u64;
/// The CPU weight of a spare: the lowest, so that against an instance's default of 100 a
/// spare gets 1% of a contended CPU, and all of an idle one.
const SPARE_WEIGHT: &str = "1";
/// The memory a VMM may use beyond its guest's (and its files'), in MiB: its own (~3 MiB
/// resident when idle, measured by `bench restore`), KVM's page tables and vCPU state, socket
/// buffers, the page cache of the files it reads, with room. A spare (no guest yet) gets this
/// alone.
pub const VMM_OVERHEAD_MIB: u64 = 64;
/// The most tasks (threads) in a VMM's cgroup: the main, control and event-loop threads and
/// one per vCPU (at most 6), with room.
const MAX_TASKS: u32 = 32;
/// cgroup v2's default CPU weight, an instance's.
const DEFAULT_WEIGHT: &str = "100";

/// Where VMM cgroups go, if the host allows them.
pub struct CpuShares {
    root: Option<PathBuf>,
    /// The memory and pids controllers are on too: VMMs get `memory.max` and `pids.max`.
    limits: bool,
    /// The number of the next VMM cgroup.
    next: AtomicU64,
}

impl CpuShares {
    /// Sets up `<cgroup root>/ember-<name>` with the cpu controller for its children, removing
    /// the empty cgroups a previous agent left. Never fails: without cgroups, shares are off.
    pub fn new(name: &str) -> CpuShares {
        Self::new_at(Path::new(CGROUP_ROOT), name)
    }

    fn new_at(mount: &Path, name: &str) -> CpuShares {
        match Self::setup(mount, name) {
            Ok((root, limits)) => CpuShares { root: Some(root), limits, next: AtomicU64::new(0) },
            Err(e) => {
                eprintln!("ember: CPU shares are not enforced (cgroup v2 cpu controller unavailable: {e})");
                Self::off()
            }
        }
    }

    /// Shares not enforced.
    pub fn off() -> CpuShares {
        CpuShares { root: None, limits: false, next: AtomicU64::new(0) }
    }

    fn setup(mount: &Path, name: &str) -> io::Result<(PathBuf, bool)> {
        let controllers = std::fs::read_to_string(mount.join("cgroup.controllers"))?;
        let has = |c: &str| controllers.split_whitespace().any(|have| have == c);
        if !has("cpu") {
            return Err(io::Error::other("no cpu controller"));
        }
        // Memory and process limits where the host has those controllers too.
        let limits = has("memory") && has("pids");
        let enable = if limits { "+cpu +memory +pids" } else { "+cpu" };
        if !limits {
            eprintln!("ember: VMM memory and process counts are not capped (no cgroup v2 memory and pids controllers)");
        }
        std::fs::write(mount.join("cgroup.subtree_control"), enable)?;
        let root = mount.join(format!("ember-{name}"));
        match std::fs::create_dir(&root) {
            Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(e),
            _ => {}
        }
        std::fs::write(root.join("cgroup.subtree_control"), enable)?;
        for entry in std::fs::read_dir(&root)?.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                // Fails (and is left) if a process still lives there.
                let _ = std::fs::remove_dir(entry.path());
            }
        }
        Ok((root, limits))
    }

    /// A new cgroup for a VMM process about to start, at a spare's weight; `None` if shares
    /// are off or it cannot be made (reported: a share not enforced must not fail a launch).
    pub fn vmm_cgroup(&self) -> Option<VmmCgroup> {
        let root = self.root.as_ref()?;
        // A name a previous agent's VMM still holds (it dies after its agent) is passed over.
        let mut created = Err(io::Error::other("no name left"));
        let mut dir = PathBuf::new();
        for _ in 0..64 {
            dir = root.join(format!("vmm-{}", self.next.fetch_add(1, Ordering::Relaxed)));
            created = std::fs::create_dir(&dir);
            if !matches!(&created, Err(e) if e.kind() == io::ErrorKind::AlreadyExists) {
                break;
            }
        }
        if let Err(e) = created {
            eprintln!("ember: cannot make a cgroup for a VMM: {e}");
            return None;
        }
        let procs = CString::new(dir.join("cgroup.procs").as_os_str().as_bytes()).ok()?;
        let made = std::fs::write(dir.join("cpu.weight"), SPARE_WEIGHT).and_then(|()| {
            if !self.limits {
                return Ok(());
            }
            std::fs::write(dir.join("pids.max"), MAX_TASKS.to_string())?;
            std::fs::write(dir.join("memory.max"), (VMM_OVERHEAD_MIB << 20).to_string())
        });
        if let Err(e) = made {
            let _ = std::fs::remove_dir(&dir);
            eprintln!("ember: cannot make a cgroup for a VMM: {e}");
            return None;
        }
        Some(VmmCgroup { dir, procs, limits: self.limits })
    }
}

/// One VMM process's cgroup, removed when dropped (which succeeds once the process is gone; a
/// leftover is removed by the next agent's [`CpuShares::new`]).
pub struct VmmCgroup {
    dir: PathBuf,
    procs: CString,
    limits: bool,
}

impl VmmCgroup {
    /// Its `cgroup.procs` file, which the process joins by writing `0` to it before it execs.
    pub fn procs(&self) -> &CStr {
        &self.procs
    }

    /// The process is now an instance's, launching: the default weight, no cap.
    pub fn launching(&self) {
        self.write("cpu.weight", DEFAULT_WEIGHT);
    }

    /// The VMM's memory from now on: what it may make the host hold, `host_mib` (its guest's
    /// memory, and what its files on a memory-backed filesystem may take), plus
    /// [`VMM_OVERHEAD_MIB`]. Past it, the kernel reclaims its page cache, then kills it.
    pub fn memory(&self, host_mib: u64) {
        if self.limits {
            self.write("memory.max", &((host_mib + VMM_OVERHEAD_MIB) << 20).to_string());
        }
    }

    /// The instance's init is over: caps it at the share of CPU of `memory_mib`.
    pub fn limit(&self, memory_mib: u32) {
        self.write("cpu.max", &cpu_max(memory_mib));
    }

    /// Errors are reported and otherwise ignored: a share not enforced must not fail an
    /// invocation.
    fn write(&self, file: &str, value: &str) {
        if let Err(e) = std::fs::write(self.dir.join(file), value) {
            eprintln!("ember: cannot set {file} of {}: {e}", self.dir.display());
        }
    }
}

impl Drop for VmmCgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// `cpu.max` for a memory size: `<quota> <period>` in microseconds.
fn cpu_max(memory_mib: u32) -> String {
    let quota = (u64::from(memory_mib) * PERIOD_US / MB_PER_CPU).max(1000);
    format!("{quota} {PERIOD_US}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_follow_memory() {
        assert_eq!(cpu_max(1769), "100000 100000");
        assert_eq!(cpu_max(128), "7235 100000");
        assert_eq!(cpu_max(10240), "578858 100000");
    }

    /// The files the agent writes, on a directory that stands in for the cgroup mount.
    #[test]
    fn a_vmm_waits_at_the_lowest_weight_and_is_capped_after_its_init() {
        let mount = std::env::temp_dir().join(format!("ember-cgroup-layout-{}", std::process::id()));
        std::fs::create_dir_all(mount.join("ember-x/vmm-7")).unwrap();
        std::fs::write(mount.join("cgroup.controllers"), "cpu memory").unwrap();
        let shares = CpuShares::new_at(&mount, "x");
        let root = mount.join("ember-x");
        let read = |p: &str| std::fs::read_to_string(root.join(p)).unwrap();
        assert_eq!(read("cgroup.subtree_control"), "+cpu");
        assert!(!root.join("vmm-7").exists(), "an empty leftover cgroup is removed");

        let g = shares.vmm_cgroup().unwrap();
        assert_eq!(g.procs().to_str().unwrap(), root.join("vmm-0/cgroup.procs").to_str().unwrap());
        assert_eq!(read("vmm-0/cpu.weight"), "1");
        g.launching();
        assert_eq!(read("vmm-0/cpu.weight"), "100");
        assert!(!root.join("vmm-0/cpu.max").exists(), "not capped during init");
        g.limit(128);
        assert_eq!(read("vmm-0/cpu.max"), "7235 100000");
        let second = shares.vmm_cgroup().unwrap();
        assert!(root.join("vmm-1").is_dir());
        // cgroupfs removes a cgroup's files with it; a plain directory needs them gone first.
        std::fs::remove_file(root.join("vmm-1/cpu.weight")).unwrap();
        drop(second);
        assert!(!root.join("vmm-1").exists(), "removed when dropped");
        drop(g);
        std::fs::remove_dir_all(&mount).unwrap();
    }

    /// A previous agent's VMM, still alive, keeps its cgroup (and its name).
    #[test]
    fn a_name_still_held_is_passed_over() {
        let mount = std::env::temp_dir().join(format!("ember-cgroup-held-{}", std::process::id()));
        std::fs::create_dir_all(mount.join("ember-z/vmm-0")).unwrap();
        // Not empty: as a cgroup with a process in it, it is not removed.
        std::fs::write(mount.join("ember-z/vmm-0/cgroup.procs"), "42").unwrap();
        std::fs::write(mount.join("cgroup.controllers"), "cpu").unwrap();
        let shares = CpuShares::new_at(&mount, "z");
        let g = shares.vmm_cgroup().expect("a cgroup under another name");
        assert!(g.procs().to_str().unwrap().ends_with("ember-z/vmm-1/cgroup.procs"));
        assert_eq!(std::fs::read_to_string(mount.join("ember-z/vmm-0/cgroup.procs")).unwrap(), "42", "left alone");
        std::fs::remove_dir_all(&mount).unwrap();
    }

    #[test]
    fn with_memory_and_pids_controllers_a_vmm_gets_limits() {
        let mount = std::env::temp_dir().join(format!("ember-cgroup-limits-{}", std::process::id()));
        std::fs::create_dir_all(&mount).unwrap();
        std::fs::write(mount.join("cgroup.controllers"), "cpuset cpu io memory pids").unwrap();
        let shares = CpuShares::new_at(&mount, "y");
        let root = mount.join("ember-y");
        let read = |p: &str| std::fs::read_to_string(root.join(p)).unwrap();
        assert_eq!(read("cgroup.subtree_control"), "+cpu +memory +pids");
        let g = shares.vmm_cgroup().unwrap();
        assert_eq!(read("vmm-0/pids.max"), "32");
        assert_eq!(read("vmm-0/memory.max"), (64u64 << 20).to_string(), "a spare: the overhead alone");
        g.memory(128 + 512);
        assert_eq!(read("vmm-0/memory.max"), ((128u64 + 512 + 64) << 20).to_string());
        std::fs::remove_dir_all(&mount).unwrap();
    }

    #[test]
    fn a_host_without_cgroups_turns_shares_off() {
        let dir = std::env::temp_dir().join(format!("ember-cgroup-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert!(CpuShares::setup(&dir, "x").is_err(), "no cgroup.controllers");
        std::fs::write(dir.join("cgroup.controllers"), "memory io").unwrap();
        assert!(CpuShares::setup(&dir, "x").is_err(), "no cpu controller");
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(CpuShares::off().vmm_cgroup().is_none());
    }
}
