//! The jail of an `ember vmm` process: what a guest that escaped its VM would find.
//!
//! The agent starts every VMM (spares included) in new PID, mount, IPC, UTS and network
//! namespaces, as root, in a cgroup of its own, with its jail's root already mounted: an empty
//! tmpfs of its own ([`make_root`]), shared with the agent's mount namespace (see
//! `agent::jail`). The VMM creates its VM and then, before it reads its spec, [`enter`]s:
//!
//! - **Its own root**: it becomes a slave of the agent's mounts (it receives what the agent
//!   mounts in its root later, and sends nothing back), makes the tmpfs its root
//!   (`pivot_root`), detaches the host's tree and remounts its root read-only. No `/proc`, no
//!   `/dev`: `/dev/kvm` was opened with the VM, `/proc/self/pagemap` before the jail.
//! - **Its own uid and gid**, from the agent's range, not root: it owns the read-write
//!   directories and nothing else. Every capability is dropped (bounding, ambient, inheritable,
//!   permitted, effective) and `no_new_privs` is set.
//! - **Resource limits**: open files, file size, processes and threads of its uid, no core
//!   dumps. The file size starts at the largest any function may need and is lowered to its
//!   function's once the spec comes ([`limit_file_size`]).
//!
//! Once it has a spec, the agent [`bind_into`] its root the files that VM needs, each at the
//! path it has on the host (so that paths in the spec and in snapshots mean the same inside):
//! the kernel, the runtime, code and layers images and a snapshot's directory read-only; the
//! instance's directory (its /tmp drive's file, its vsock sockets), a console file and a
//! snapshot's staging directory read-write; all `nosuid`, `nodev`, `noexec`. They reach the
//! jailed VMM through mount propagation: the VMM itself mounts nothing once jailed, and could
//! not.
//!
//! `ember boot --jail-root` (the jail's cost, for `ember bench boot`) does both sides in one
//! process: its root, the binds, then [`enter`].
//!
//! System calls go through `nix` where it has them; the capability set (`capset`), the
//! bounding set (`PR_CAPBSET_DROP`) and the mount API that sets a bind mount's flags before it
//! is attached (`open_tree`, `mount_setattr`, `move_mount`), which it does not wrap, through
//! `libc`.

use std::ffi::{CStr, CString};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::resource::{setrlimit, Resource};
use nix::unistd::{chdir, chown, pivot_root, setgroups, setresgid, setresuid, Gid, Uid};
use serde::{Deserialize, Serialize};

/// How a VMM is jailed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JailSpec {
    /// The uid and gid it runs as.
    pub uid: u32,
    /// Its root: a directory with a tmpfs of its own mounted ([`make_root`]).
    pub root: PathBuf,
}

/// Errors entering the jail.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A step failed.
    #[error("jail: {what}: {source}")]
    Step {
        /// The step.
        what: String,
        /// Why.
        source: nix::Error,
    },
    /// A path to bind-mount is not absolute or does not exist.
    #[error("jail: cannot bind {path}: {why}")]
    Path {
        /// The path.
        path: String,
        /// Why.
        why: String,
    },
}

fn step(what: impl Into<String>) -> impl FnOnce(nix::Error) -> Error {
    let what = what.into();
    move |source| Error::Step { what, source }
}

/// What goes into the jail's root.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Binds {
    /// Files and directories bind-mounted read-only.
    pub read_only: Vec<PathBuf>,
    /// Files and directories bind-mounted read-write, and given to the jail's uid.
    pub read_write: Vec<PathBuf>,
}

/// The most open files of a jailed VMM: its devices, eventfds, vsock connections (at most
/// 256 per device) and what a snapshot writes.
pub const MAX_FILES: u64 = 1024;
/// The most processes and threads of its uid: the main, control and event-loop threads and
/// a thread per vCPU (at most 6), with room.
pub const MAX_THREADS: u64 = 32;

/// The file size limit of a jailed VMM: the larger of its /tmp drive and its guest memory
/// (which a snapshot's memory file may reach), and 1 MiB more (a snapshot's state file).
pub fn file_size_limit(tmp_mib: u32, memory_mib: u32) -> u64 {
    (u64::from(tmp_mib.max(memory_mib)) + 1) << 20
}

/// `nosuid`, `nodev`, `noexec`: what every mount of a jail is.
const HARDENED: MsFlags = MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV).union(MsFlags::MS_NOEXEC);

/// Mounts a jail's root on the empty directory `root`: a tmpfs of 64 KiB (the mount points of
/// the binds, nothing more). `shared`: its mounts propagate to the copies other mount
/// namespaces made of it (a VMM's, started afterwards).
pub fn make_root(root: &Path, shared: bool) -> Result<(), Error> {
    mount(Some("ember-jail"), root, Some("tmpfs"), HARDENED, Some("size=64k,nr_inodes=256,mode=0755"))
        .map_err(step(format!("mount a tmpfs on {}", root.display())))?;
    if shared {
        mount(None::<&str>, root, None::<&str>, MsFlags::MS_SHARED, None::<&str>)
            .map_err(step(format!("share {}", root.display())))?;
    }
    Ok(())
}

/// Unmounts a jail's root and what is bound in it (lazily: a VMM's copy goes with its mount
/// namespace) and removes the directory. Errors are ignored: there is nothing left to do.
pub fn remove_root(root: &Path) {
    let _ = umount2(root, MntFlags::MNT_DETACH);
    let _ = std::fs::remove_dir(root);
}

/// Bind-mounts `binds` into the jail's root at `root`, each at its own path, read-only or
/// read-write (those given to `uid` first), all `nosuid`, `nodev`, `noexec`.
pub fn bind_into(root: &Path, binds: &Binds, uid: u32) -> Result<(), Error> {
    let (uid, gid) = (Uid::from_raw(uid), Gid::from_raw(uid));
    // Directories first, so that a file inside one is bound over it, not under it.
    let mut all: Vec<(&PathBuf, bool)> =
        binds.read_only.iter().map(|p| (p, false)).chain(binds.read_write.iter().map(|p| (p, true))).collect();
    all.sort_by_key(|(p, _)| p.components().count());
    for (path, writable) in all {
        if writable {
            chown(path.as_path(), Some(uid), Some(gid)).map_err(step(format!("chown {}", path.display())))?;
        }
        bind(root, path, writable)?;
    }
    Ok(())
}

/// Enters the jail `spec`, whose root is mounted (and bound into, or to be): see the module's
/// comment. `file_size` bounds every file it writes. The process must be root in its own
/// mount namespace.
pub fn enter(spec: &JailSpec, file_size: u64) -> Result<(), Error> {
    let (uid, gid) = (Uid::from_raw(spec.uid), Gid::from_raw(spec.uid));
    // Mounts made in the agent's namespace still reach this one; nothing goes the other way.
    mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_SLAVE, None::<&str>)
        .map_err(step("make the mounts slaves"))?;
    chdir(&spec.root).map_err(step("chdir to the new root"))?;
    // The old root goes under the new one, then away: the process sees only the tmpfs.
    pivot_root(".", ".").map_err(step("pivot_root"))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(step("detach the host's root"))?;
    chdir("/").map_err(step("chdir /"))?;
    // This mount alone (MS_BIND): the agent's, of the same tmpfs, stays writable.
    let read_only = MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY | HARDENED;
    mount(None::<&str>, "/", None::<&str>, read_only, None::<&str>).map_err(step("make the root read-only"))?;

    let limit = |r: Resource, n: u64| setrlimit(r, n, n).map_err(step(format!("setrlimit {r:?}")));
    limit(Resource::RLIMIT_NOFILE, MAX_FILES)?;
    limit(Resource::RLIMIT_FSIZE, file_size)?;
    limit(Resource::RLIMIT_NPROC, MAX_THREADS)?;
    limit(Resource::RLIMIT_CORE, 0)?;

    drop_bounding_set()?;
    setgroups(&[]).map_err(step("setgroups"))?;
    setresgid(gid, gid, gid).map_err(step("setresgid"))?;
    setresuid(uid, uid, uid).map_err(step("setresuid"))?;
    clear_capabilities()?;
    nix::sys::prctl::set_no_new_privs().map_err(step("no_new_privs"))?;
    Ok(())
}

/// Lowers the file size limit to `bytes` (a process may always lower its own).
pub fn limit_file_size(bytes: u64) -> Result<(), Error> {
    setrlimit(Resource::RLIMIT_FSIZE, bytes, bytes).map_err(step("setrlimit RLIMIT_FSIZE"))
}

/// A detached copy of the mount at `path` (`open_tree(OPEN_TREE_CLONE)`), to attach elsewhere
/// with `move_mount`: a peer of it where it is shared.
pub fn clone_mount(path: &CStr) -> std::io::Result<OwnedFd> {
    // SAFETY: open_tree reads a NUL-terminated path that outlives the call; the descriptor it
    // returns is owned below and closed once.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            path.as_ptr(),
            libc::OPEN_TREE_CLONE | libc::OPEN_TREE_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Bind-mounts `path` at the same path under `root`, read-only unless `writable`, with its
/// flags set before it is attached: a mount propagated into a VMM's namespace is a copy of
/// what was attached, and a remount afterwards would not reach the copy.
fn bind(root: &Path, path: &Path, writable: bool) -> Result<(), Error> {
    let bad = |why: &str| Error::Path { path: path.display().to_string(), why: why.to_owned() };
    let relative = path.strip_prefix("/").map_err(|_| bad("not absolute"))?;
    let target = root.join(relative);
    let meta = std::fs::metadata(path).map_err(|e| bad(&e.to_string()))?;
    let made = if meta.is_dir() {
        std::fs::create_dir_all(&target)
    } else {
        let parent = target.parent().unwrap_or(root);
        std::fs::create_dir_all(parent).and_then(|()| std::fs::File::create(&target).map(drop))
    };
    made.map_err(|e| bad(&format!("make its mount point: {e}")))?;
    let c_path = |p: &Path| CString::new(p.as_os_str().as_bytes()).map_err(|_| bad("a NUL in the path"));
    let (source, target) = (c_path(path)?, c_path(&target)?);
    let failed = |what: &str| Error::Step { what: format!("{what} {}", path.display()), source: nix::Error::last() };
    let tree = clone_mount(&source).map_err(|_| failed("open_tree"))?;
    let mut attr_set = libc::MOUNT_ATTR_NOSUID | libc::MOUNT_ATTR_NODEV | libc::MOUNT_ATTR_NOEXEC;
    if !writable {
        attr_set |= libc::MOUNT_ATTR_RDONLY;
    }
    let attr = libc::mount_attr { attr_set, attr_clr: 0, propagation: 0, userns_fd: 0 };
    // SAFETY: mount_setattr reads an empty path and `attr`, of the size given, both live for
    // the call; it changes only the detached mount `tree`.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            &attr as *const libc::mount_attr,
            std::mem::size_of::<libc::mount_attr>(),
        )
    };
    if r != 0 {
        return Err(failed("mount_setattr"));
    }
    attach_mount(tree.as_fd(), &target).map_err(|_| failed("move_mount"))
}

/// Attaches the detached mount `tree` (from [`clone_mount`]) at `target` (`move_mount`).
/// Allocates nothing: a forked child may call it before it execs.
pub fn attach_mount(tree: BorrowedFd<'_>, target: &CStr) -> std::io::Result<()> {
    // SAFETY: move_mount reads an empty path and a NUL-terminated target path, both live for
    // the call, and attaches the detached mount `tree` there.
    let r = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_FDCWD,
            target.as_ptr(),
            libc::MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Drops every capability from the bounding set (needs CAP_SETPCAP: before the uid changes)
/// and clears the ambient set.
fn drop_bounding_set() -> Result<(), Error> {
    // Every capability number there can be (CAP_LAST_CAP is 40 on Linux 6.x); the kernel
    // refuses the ones it does not know with EINVAL.
    for cap in 0..64 as libc::c_ulong {
        // SAFETY: PR_CAPBSET_DROP takes a capability number and changes only this thread's
        // bounding set.
        let r = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) };
        if r != 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINVAL) {
            return Err(Error::Step { what: format!("drop capability {cap}"), source: nix::Error::last() });
        }
    }
    // SAFETY: PR_CAP_AMBIENT_CLEAR_ALL takes no pointers and only empties the ambient set.
    if unsafe { libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) } != 0 {
        return Err(Error::Step { what: "clear the ambient capabilities".into(), source: nix::Error::last() });
    }
    Ok(())
}

/// Empties the permitted, effective and inheritable sets (the uid change emptied the first
/// two; the inheritable set survives it).
fn clear_capabilities() -> Result<(), Error> {
    // struct __user_cap_header_struct and two __user_cap_data_struct (version 3: 64 bits).
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Default, Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;
    let mut header = Header { version: LINUX_CAPABILITY_VERSION_3, pid: 0 };
    let data = [Data::default(); 2];
    // SAFETY: capset reads a version-3 header and two data structs, both live for the call.
    let r = unsafe { libc::syscall(libc::SYS_capset, &mut header as *mut Header, data.as_ptr()) };
    if r != 0 {
        return Err(Error::Step { what: "capset".into(), source: nix::Error::last() });
    }
    Ok(())
}
