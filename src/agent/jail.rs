//! The agent's side of the VMM jail (the VMM's side is [`crate::vmm::jail`]): whether it can
//! build one, the uids and roots it hands out, the namespaces it starts each VMM in, and what
//! it binds into a jail once the VMM has a spec.
//!
//! The agent runs in a mount namespace of its own ([`isolate_mounts`], at its start), a slave
//! of the host's: what it mounts for its VMMs stays out of the host's mount table and goes
//! with it, even if it is killed. Each `ember vmm` (spares included) gets a uid of its own from
//! `--jail-uid-base`/`--jail-uid-count` and a root, `<run dir>-jail/vmm-<n>`, on which the
//! agent mounts a shared tmpfs before the VMM starts. The VMM starts as root in new PID,
//! mount, IPC, UTS and network namespaces: its mount namespace a copy of a template kept from
//! the agent's start (the host's mounts, none of the other VMMs'), into which it attaches a
//! copy of its root that is a peer of the agent's ([`VmmStart`]); it enters its jail before it
//! waits for its spec. When a launch takes it, the agent bind-mounts the files of its spec
//! into the root ([`JailLease::bind`]), and they reach the VMM by propagation. The PID
//! namespace is made for each VMM by the thread that forks it (`unshare(CLONE_NEWPID)` applies
//! to the forking thread's next child; the thread's own namespace is restored right after);
//! the others by the child before it execs. Without root the agent says so at start and runs
//! VMMs unjailed.

use std::collections::BTreeSet;
use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use nix::mount::{mount, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};

use crate::vmm::jail::{self as vmm_jail, JailSpec};
use crate::vmm::process::VmmSpec;

/// The uids VMMs get unless told otherwise: far above any user's, and above the subordinate
/// ranges (`/etc/subuid`) that container tools hand out from 100000.
pub const DEFAULT_UID_BASE: u32 = 900_000;
/// How many.
pub const DEFAULT_UID_COUNT: u32 = 65_536;

/// The namespaces a VMM's child process unshares before it execs (the PID namespace is the
/// forking thread's: see the module's comment).
pub const CHILD_NAMESPACES: libc::c_int =
    libc::CLONE_NEWNS | libc::CLONE_NEWIPC | libc::CLONE_NEWUTS | libc::CLONE_NEWNET;

/// Errors setting up jails.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The agent is not root: no jail.
    #[error("the agent is not root (euid {0})")]
    NotRoot(u32),
    /// The agent has no mount namespace of its own ([`isolate_mounts`] was not called, or
    /// failed).
    #[error("the agent has no mount namespace of its own")]
    HostMounts,
    /// A uid range that does not fit.
    #[error("the jail uid range {base}+{count} is empty, includes root or overflows")]
    BadRange {
        /// Its first uid.
        base: u32,
        /// Its size.
        count: u32,
    },
    /// Every uid of the range is in use.
    #[error("every jail uid ({0}) is in use")]
    NoUid(u32),
    /// A system call failed.
    #[error("{0}: {1}")]
    Os(&'static str, std::io::Error),
    /// The VMM's side failed: a root not made, a file not bound.
    #[error(transparent)]
    Jail(#[from] vmm_jail::Error),
    /// A spec's files could not be made ready for binding.
    #[error("{0}")]
    Spec(String),
}

/// The mount namespace VMMs start from, once [`isolate_mounts`] made it: the host's mounts
/// (as slaves), without the jails' roots.
static TEMPLATE: std::sync::OnceLock<Template> = std::sync::OnceLock::new();

/// Moves this process into a mount namespace of its own, a slave of the one it was in (the
/// host's mounts still reach it; its own reach nothing else), and keeps a second one as it was
/// then, which VMMs start from: a VMM's mount namespace is a copy of the one it starts in,
/// and a copy of the agent's would hold every other VMM's root and binds (a copy's cost, and
/// its teardown's, grow with them). Must be called while the process has one thread (a
/// multi-threaded process cannot change its mount namespace): the agent's `main`, before its
/// runtime starts, when VMMs are to be jailed.
pub fn isolate_mounts() -> Result<(), Error> {
    unshare(CloneFlags::CLONE_NEWNS).map_err(|e| Error::Os("unshare(CLONE_NEWNS)", e.into()))?;
    mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_SLAVE, None::<&str>)
        .map_err(|e| Error::Os("make the agent's mounts slaves", e.into()))?;
    let template = std::fs::File::open("/proc/self/ns/mnt").map_err(|e| Error::Os("open /proc/self/ns/mnt", e))?;
    // This process's root there: not always the namespace's own (after an initramfs's
    // switch_root, say, the namespace's root is the initramfs under it), and entering a
    // namespace makes a process's root the namespace's.
    let root = std::fs::File::open("/").map_err(|e| Error::Os("open /", e))?;
    // The agent's own: a copy, whose mounts (the jails' roots) reach no other namespace, since
    // none of its mounts is shared.
    unshare(CloneFlags::CLONE_NEWNS).map_err(|e| Error::Os("unshare(CLONE_NEWNS)", e.into()))?;
    let _ = TEMPLATE.set(Template { ns: template.into(), root: root.into() });
    Ok(())
}

/// The template mount namespace, and this process's root in it.
struct Template {
    ns: OwnedFd,
    root: OwnedFd,
}

/// Starts children in PID namespaces of their own.
pub struct PidNamespaces {
    /// This process's PID namespace, which a forking thread returns to.
    own: OwnedFd,
}

impl PidNamespaces {
    /// Needs root to be of use.
    pub fn new() -> Result<PidNamespaces, Error> {
        let own = std::fs::File::open("/proc/self/ns/pid").map_err(|e| Error::Os("open /proc/self/ns/pid", e))?;
        Ok(PidNamespaces { own: own.into() })
    }

    /// Runs `spawn` (a fork) so that its child starts in a new PID namespace, as its init; the
    /// calling thread's namespace for children is restored afterwards.
    pub fn spawn_in_new<T>(&self, spawn: impl FnOnce() -> T) -> Result<T, Error> {
        unshare(CloneFlags::CLONE_NEWPID).map_err(|e| Error::Os("unshare(CLONE_NEWPID)", e.into()))?;
        let spawned = spawn();
        setns(&self.own, CloneFlags::CLONE_NEWPID)
            .map_err(|e| Error::Os("setns back to the agent's PID namespace", e.into()))?;
        Ok(spawned)
    }
}

/// Jails for the agent's VMMs.
pub struct Jails {
    /// Where their roots are made.
    roots: PathBuf,
    /// The number of the next root.
    next: AtomicU64,
    uids: Arc<UidPool>,
    pids: PidNamespaces,
}

impl Jails {
    /// Jails whose roots are made in `<run_dir>-jail` (emptied of what an earlier agent left)
    /// and whose uids come from `base..base + count`. Fails (and the caller runs VMMs
    /// unjailed, saying so) without root, without a mount namespace of the agent's own or
    /// without PID namespaces.
    pub fn new(run_dir: &Path, base: u32, count: u32) -> Result<Jails, Error> {
        let euid = nix::unistd::geteuid().as_raw();
        if euid != 0 {
            return Err(Error::NotRoot(euid));
        }
        if base == 0 || count == 0 || base.checked_add(count).is_none() {
            return Err(Error::BadRange { base, count });
        }
        if TEMPLATE.get().is_none() {
            return Err(Error::HostMounts);
        }
        let mut roots = run_dir.as_os_str().to_owned();
        roots.push("-jail");
        let roots = PathBuf::from(roots);
        std::fs::create_dir_all(&roots).map_err(|e| Error::Os("create the jails' directory", e))?;
        for entry in std::fs::read_dir(&roots).map_err(|e| Error::Os("read the jails' directory", e))?.flatten() {
            vmm_jail::remove_root(&entry.path());
        }
        Ok(Jails {
            roots,
            next: AtomicU64::new(0),
            uids: Arc::new(UidPool::new(base, count)),
            pids: PidNamespaces::new()?,
        })
    }

    /// A uid and a root (mounted, empty, shared) for a new VMM, held until the lease is
    /// dropped.
    pub fn lease(&self) -> Result<JailLease, Error> {
        let uid = self.uids.take()?;
        let root = self.roots.join(format!("vmm-{}", self.next.fetch_add(1, Ordering::Relaxed)));
        // Dropped on an error: the uid goes back, the directory goes.
        let mut lease =
            JailLease { spec: JailSpec { uid, root }, pool: Arc::clone(&self.uids), mounted: false, start: None };
        std::fs::create_dir(&lease.spec.root).map_err(|e| Error::Os("create a jail's root", e))?;
        vmm_jail::make_root(&lease.spec.root, true)?;
        lease.mounted = true;
        let path = CString::new(lease.spec.root.as_os_str().as_bytes())
            .map_err(|_| Error::Os("a jail's root", std::io::Error::other("a NUL in its path")))?;
        // A detached copy of the root, a peer of it, for the child to attach.
        let copy = vmm_jail::clone_mount(&path).map_err(|e| Error::Os("open_tree a jail's root", e))?;
        let template = TEMPLATE.get().ok_or(Error::HostMounts)?;
        lease.start = Some(VmmStart {
            template: template.ns.as_raw_fd(),
            template_root: template.root.as_raw_fd(),
            root: copy,
            path,
        });
        Ok(lease)
    }

    /// Runs `spawn` (a fork) so that its child starts in a new PID namespace (see
    /// [`PidNamespaces::spawn_in_new`]).
    pub fn in_new_pid_namespace<T>(&self, spawn: impl FnOnce() -> T) -> Result<T, Error> {
        self.pids.spawn_in_new(spawn)
    }
}

/// What the child that becomes a VMM does before it execs, in its jail's mount namespace: see
/// [`VmmStart::enter`].
#[derive(Debug)]
pub struct VmmStart {
    /// The template namespace ([`isolate_mounts`]).
    template: libc::c_int,
    /// The agent's root in it.
    template_root: libc::c_int,
    /// A detached copy of the jail's root, a peer of the agent's.
    root: OwnedFd,
    /// Where it is attached in the VMM's namespace: the root's own path.
    path: CString,
}

impl VmmStart {
    /// In the child between fork and exec: moves into a new mount namespace copied from the
    /// template (with the other namespaces of [`CHILD_NAMESPACES`]), its root the agent's root
    /// there, and attaches the root's copy at its path. Only async-signal-safe system calls, no
    /// allocation.
    pub fn enter(&self) -> std::io::Result<()> {
        let last = std::io::Error::last_os_error;
        // SAFETY: setns takes a namespace descriptor, which outlives the child's use of it.
        if unsafe { libc::setns(self.template, libc::CLONE_NEWNS) } != 0 {
            return Err(last());
        }
        // setns made the namespace's root this process's root and working directory; the
        // agent's there (which the copy below carries over) is its own again.
        // SAFETY: fchdir takes a directory descriptor, chroot a NUL-terminated path.
        if unsafe { libc::fchdir(self.template_root) } != 0 || unsafe { libc::chroot(c".".as_ptr()) } != 0 {
            return Err(last());
        }
        // SAFETY: unshare takes flags only.
        if unsafe { libc::unshare(CHILD_NAMESPACES) } != 0 {
            return Err(last());
        }
        vmm_jail::attach_mount(self.root.as_fd(), &self.path)?;
        Ok(())
    }
}

/// A VMM's jail: its uid, returned to the pool, and its root, unmounted and removed, when
/// dropped.
#[derive(Debug)]
pub struct JailLease {
    spec: JailSpec,
    pool: Arc<UidPool>,
    /// Its root is mounted (and is to be unmounted).
    mounted: bool,
    /// What its VMM's child does before it execs; taken by the spawn.
    start: Option<VmmStart>,
}

impl JailLease {
    /// What the VMM is told of its jail.
    pub fn spec(&self) -> &JailSpec {
        &self.spec
    }

    /// What the child that becomes its VMM does before it execs (once).
    pub fn take_start(&mut self) -> Option<VmmStart> {
        self.start.take()
    }

    /// Binds into the jail what `spec` needs (see [`VmmSpec::jail_binds`]); the VMM, jailed
    /// already, sees them once this returns.
    pub fn bind(&self, spec: &VmmSpec) -> Result<(), Error> {
        let binds = spec.jail_binds().map_err(Error::Spec)?;
        vmm_jail::bind_into(&self.spec.root, &binds, self.spec.uid)?;
        Ok(())
    }
}

impl Drop for JailLease {
    fn drop(&mut self) {
        if self.mounted {
            vmm_jail::remove_root(&self.spec.root);
        } else {
            let _ = std::fs::remove_dir(&self.spec.root);
        }
        self.pool.give_back(self.spec.uid);
    }
}

/// The uids of a range, handed out in turn (so that a uid comes back into use as late as
/// possible: a killed VMM's threads still count against its uid until they are reaped).
#[derive(Debug)]
struct UidPool {
    base: u32,
    count: u32,
    state: Mutex<(u32, BTreeSet<u32>)>,
}

impl UidPool {
    fn new(base: u32, count: u32) -> UidPool {
        UidPool { base, count, state: Mutex::new((0, BTreeSet::new())) }
    }

    fn take(&self) -> Result<u32, Error> {
        let mut state = self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let (next, used) = &mut *state;
        for _ in 0..self.count {
            let uid = self.base + *next;
            *next = (*next + 1) % self.count;
            if used.insert(uid) {
                return Ok(uid);
            }
        }
        Err(Error::NoUid(self.count))
    }

    fn give_back(&self, uid: u32) {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner).1.remove(&uid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uids_are_handed_out_in_turn_and_never_twice_at_once() {
        let pool = UidPool::new(1000, 3);
        let (a, b, c) = (pool.take().unwrap(), pool.take().unwrap(), pool.take().unwrap());
        assert_eq!((a, b, c), (1000, 1001, 1002));
        assert!(matches!(pool.take(), Err(Error::NoUid(3))));
        pool.give_back(1001);
        assert_eq!(pool.take().unwrap(), 1001);
        pool.give_back(1000);
        pool.give_back(1002);
        // In turn: after 1001 comes 1002, not the lower 1000.
        assert_eq!(pool.take().unwrap(), 1002);
    }

    #[test]
    fn a_range_that_includes_root_or_overflows_is_refused() {
        let dir = std::env::temp_dir();
        if nix::unistd::geteuid().is_root() {
            assert!(matches!(Jails::new(&dir, 0, 10), Err(Error::BadRange { .. })));
            assert!(matches!(Jails::new(&dir, u32::MAX, 2), Err(Error::BadRange { .. })));
            assert!(matches!(Jails::new(&dir, 5, 0), Err(Error::BadRange { .. })));
        } else {
            assert!(matches!(Jails::new(&dir, 1000, 10), Err(Error::NotRoot(_))));
        }
    }

    /// The thread that forks gets a child in a new PID namespace, and is back in its own after.
    #[test]
    fn a_child_starts_as_init_of_its_own_pid_namespace() {
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        let pids = PidNamespaces::new().unwrap();
        let own = std::fs::read_link("/proc/self/ns/pid").unwrap();
        let out =
            pids.spawn_in_new(|| std::process::Command::new("sh").arg("-c").arg("echo $$").output()).unwrap().unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1", "the child is its namespace's init");
        let child = std::process::Command::new("sh").arg("-c").arg("echo $$").output().unwrap();
        assert_ne!(String::from_utf8_lossy(&child.stdout).trim(), "1", "later children are not");
        assert_eq!(std::fs::read_link("/proc/self/ns/pid").unwrap(), own);
    }
}
