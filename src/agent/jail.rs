//! The agent's side of the VMM jail (the VMM's side is [`crate::vmm::jail`]): whether it can
//! build one, the uids it hands out, and the namespaces it starts each VMM in.
//!
//! Each `ember vmm` (spares included) starts as root in new PID, mount, IPC, UTS and network
//! namespaces, with a uid of its own from `--jail-uid-base`/`--jail-uid-count` in its spec,
//! which it takes once it has built its root. The PID namespace is made for each VMM by the
//! thread that forks it (`unshare(CLONE_NEWPID)` applies to the forking thread's next child;
//! the thread's own namespace is restored right after); the others by the child before it
//! execs. Without root the agent says so at start and runs VMMs unjailed.

use std::collections::BTreeSet;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use nix::sched::{setns, unshare, CloneFlags};

use crate::vmm::jail::JailSpec;

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
}

/// Jails for the agent's VMMs.
pub struct Jails {
    root: PathBuf,
    uids: Arc<UidPool>,
    /// This process's PID namespace, which a forking thread returns to.
    own_pid_ns: OwnedFd,
}

impl Jails {
    /// Jails whose roots are mounted on `<run_dir>-jail`, an empty directory beside the run
    /// directory (in each VMM's own mount namespace: every VMM uses the same one)
    /// and whose uids come from `base..base + count`. Fails (and the caller runs VMMs
    /// unjailed, saying so) without root or without PID namespaces.
    pub fn new(run_dir: &Path, base: u32, count: u32) -> Result<Jails, Error> {
        let euid = nix::unistd::geteuid().as_raw();
        if euid != 0 {
            return Err(Error::NotRoot(euid));
        }
        if base == 0 || count == 0 || base.checked_add(count).is_none() {
            return Err(Error::BadRange { base, count });
        }
        let mut root = run_dir.as_os_str().to_owned();
        root.push("-jail");
        let root = PathBuf::from(root);
        std::fs::create_dir_all(&root).map_err(|e| Error::Os("create the jail root's mount point", e))?;
        let own_pid_ns =
            std::fs::File::open("/proc/self/ns/pid").map_err(|e| Error::Os("open /proc/self/ns/pid", e))?;
        Ok(Jails { root, uids: Arc::new(UidPool::new(base, count)), own_pid_ns: own_pid_ns.into() })
    }

    /// A uid for a new VMM, held until the lease is dropped.
    pub fn lease(&self) -> Result<JailLease, Error> {
        let uid = self.uids.take()?;
        Ok(JailLease { spec: JailSpec { uid, root: self.root.clone() }, pool: Arc::clone(&self.uids) })
    }

    /// Runs `spawn` (a fork) so that its child starts in a new PID namespace, as its init; the
    /// calling thread's namespace for children is restored afterwards.
    pub fn in_new_pid_namespace<T>(&self, spawn: impl FnOnce() -> T) -> Result<T, Error> {
        unshare(CloneFlags::CLONE_NEWPID).map_err(|e| Error::Os("unshare(CLONE_NEWPID)", e.into()))?;
        let spawned = spawn();
        setns(&self.own_pid_ns, CloneFlags::CLONE_NEWPID)
            .map_err(|e| Error::Os("setns back to the agent's PID namespace", e.into()))?;
        Ok(spawned)
    }
}

/// A VMM's jail: its uid, returned to the pool when dropped.
#[derive(Debug)]
pub struct JailLease {
    spec: JailSpec,
    pool: Arc<UidPool>,
}

impl JailLease {
    /// What the VMM's spec says of its jail.
    pub fn spec(&self) -> &JailSpec {
        &self.spec
    }
}

impl Drop for JailLease {
    fn drop(&mut self) {
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
        let run = std::env::temp_dir().join(format!("ember-jail-test-{}", std::process::id()));
        let jails = Jails::new(&run, 900_000, 10).unwrap();
        let own = std::fs::read_link("/proc/self/ns/pid").unwrap();
        let out = jails
            .in_new_pid_namespace(|| std::process::Command::new("sh").arg("-c").arg("echo $$").output())
            .unwrap()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1", "the child is its namespace's init");
        let child = std::process::Command::new("sh").arg("-c").arg("echo $$").output().unwrap();
        assert_ne!(String::from_utf8_lossy(&child.stdout).trim(), "1", "later children are not");
        assert_eq!(std::fs::read_link("/proc/self/ns/pid").unwrap(), own);
        std::fs::remove_dir(format!("{}-jail", run.display())).unwrap();
    }
}
