//! The jail of an `ember vmm` process: what a guest that escaped its VM would find.
//!
//! The agent starts every VMM (spares included) in new PID, mount, IPC, UTS and network
//! namespaces, as root, in a cgroup of its own (see `agent::instance`). The VMM creates its VM
//! there and waits for its spec; once it has it, and before the guest runs, it enters the jail
//! [`enter`] builds:
//!
//! - **Its own root**: a small tmpfs holding only the files this VM needs, each bind-mounted
//!   at the path it has on the host (so that paths in the spec and in snapshots mean the same
//!   inside): the kernel, the runtime, code and layers images and a snapshot's directory
//!   read-only; the instance's directory (its /tmp drive's file, its vsock sockets), a
//!   console file and a snapshot's staging directory read-write; all `nosuid`, `nodev`,
//!   `noexec`. The tmpfs is then made read-only, and the host's tree is detached
//!   (`pivot_root`). No `/proc`, no `/dev`: `/dev/kvm` was opened before (the VM exists), and
//!   so was `/proc/self/pagemap` if the working set may be recorded.
//! - **Its own uid and gid**, from the agent's range, not root: it owns the read-write
//!   directories and nothing else. Every capability is dropped (bounding, ambient, inheritable,
//!   permitted, effective) and `no_new_privs` is set.
//! - **Resource limits**: open files, file size (the larger of the /tmp drive and guest
//!   memory, which a snapshot writes), processes and threads of its uid, no core dumps.
//!
//! System calls go through `nix` where it has them; the capability set (`capset`) and the
//! bounding set (`PR_CAPBSET_DROP`), which it does not wrap, through `libc`.

use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::resource::{setrlimit, Resource};
use nix::unistd::{chdir, chown, pivot_root, setgroups, setresgid, setresuid, Gid, Uid};
use serde::{Deserialize, Serialize};

/// How a VMM is jailed, as the agent's spec says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JailSpec {
    /// The uid and gid it runs as.
    pub uid: u32,
    /// An empty directory on the host where its root is mounted (in its own mount namespace:
    /// every VMM can use the same one).
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
#[derive(Clone, Debug, Default)]
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

/// Enters the jail: see the module's comment. `file_size` bounds every file it writes.
/// The process must be root in its own mount namespace.
pub fn enter(spec: &JailSpec, binds: &Binds, file_size: u64) -> Result<(), Error> {
    let (uid, gid) = (Uid::from_raw(spec.uid), Gid::from_raw(spec.uid));
    // Nothing mounted here reaches the host's namespace, nor the other way.
    mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_PRIVATE, None::<&str>)
        .map_err(step("make the mounts private"))?;
    let root = &spec.root;
    let hardened = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount(Some("ember-jail"), root, Some("tmpfs"), hardened, Some("size=64k,nr_inodes=256,mode=0755"))
        .map_err(step(format!("mount a tmpfs on {}", root.display())))?;
    // Directories first, so that a file inside one is bound over it, not under it.
    let mut all: Vec<(&PathBuf, bool)> =
        binds.read_only.iter().map(|p| (p, false)).chain(binds.read_write.iter().map(|p| (p, true))).collect();
    all.sort_by_key(|(p, _)| p.components().count());
    for (path, writable) in all {
        if writable {
            chown(path.as_path(), Some(uid), Some(gid)).map_err(step(format!("chown {}", path.display())))?;
        }
        bind(root, path, writable, hardened)?;
    }
    chdir(root).map_err(step("chdir to the new root"))?;
    // The old root goes under the new one, then away: the process sees only the tmpfs.
    pivot_root(".", ".").map_err(step("pivot_root"))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(step("detach the host's root"))?;
    chdir("/").map_err(step("chdir /"))?;
    mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | hardened, None::<&str>)
        .map_err(step("make the root read-only"))?;

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

/// Bind-mounts `path` at the same path under `root`, read-only unless `writable`.
fn bind(root: &Path, path: &Path, writable: bool, hardened: MsFlags) -> Result<(), Error> {
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
    mount(Some(path), &target, None::<&str>, MsFlags::MS_BIND, None::<&str>)
        .map_err(step(format!("bind {}", path.display())))?;
    let mut flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | hardened;
    if !writable {
        flags |= MsFlags::MS_RDONLY;
    }
    mount(None::<&str>, &target, None::<&str>, flags, None::<&str>).map_err(step(format!("remount {}", path.display())))
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
