//! The filesystems ember-init mounts at boot.
//!
//! It mounts onto directories that must already exist in the image: the root filesystem is
//! read-only, so nothing is created here.

use std::ffi::CStr;
use std::io;

use crate::Error;

/// One mount: `mount -t fstype -o data none target`.
struct Mount {
    target: &'static CStr,
    fstype: &'static CStr,
    flags: libc::c_ulong,
    data: &'static CStr,
}

const NOSUID_NODEV: libc::c_ulong = libc::MS_NOSUID | libc::MS_NODEV;

/// In order. Each target must exist in the image.
const MOUNTS: [Mount; 5] = [
    Mount { target: c"/proc", fstype: c"proc", flags: NOSUID_NODEV | libc::MS_NOEXEC, data: c"" },
    Mount { target: c"/sys", fstype: c"sysfs", flags: NOSUID_NODEV | libc::MS_NOEXEC, data: c"" },
    Mount { target: c"/dev", fstype: c"devtmpfs", flags: libc::MS_NOSUID, data: c"mode=0755" },
    Mount { target: c"/run", fstype: c"tmpfs", flags: NOSUID_NODEV, data: c"mode=0755,size=8m" },
    Mount { target: c"/tmp", fstype: c"tmpfs", flags: NOSUID_NODEV, data: c"mode=1777" },
];

/// Mounts every filesystem of [`MOUNTS`]; stops at the first failure.
pub fn mount_all() -> Result<(), Error> {
    for m in &MOUNTS {
        // SAFETY: every pointer is a NUL-terminated static string; mount does not keep them.
        let rc = unsafe {
            libc::mount(m.fstype.as_ptr(), m.target.as_ptr(), m.fstype.as_ptr(), m.flags, m.data.as_ptr().cast())
        };
        if rc != 0 {
            let e = io::Error::last_os_error();
            // EBUSY: this filesystem is already mounted there (the kernel mounts /dev itself
            // with CONFIG_DEVTMPFS_MOUNT), which is what we want.
            if e.raw_os_error() != Some(libc::EBUSY) {
                let what = format!("mount {} on {}", m.fstype.to_string_lossy(), m.target.to_string_lossy());
                return Err(Error::new(what, e));
            }
        }
    }
    Ok(())
}

fn param<'a>(cmdline: &'a str, key: &str) -> Option<&'a str> {
    cmdline.split_whitespace().find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
}

/// Mounts the function's code read-only at /var/task, and its layers at /opt, from the
/// drives the kernel command line names (`ember.code=/dev/vdX`, `ember.opt=/dev/vdY`), if any.
pub fn mount_code(cmdline: &str) -> Result<(), Error> {
    if let Some(dev) = param(cmdline, ember_proto::cmdline::CODE_DRIVE) {
        mount_ext4(dev, c"/var/task", libc::MS_RDONLY | NOSUID_NODEV, c"")?;
    }
    if let Some(dev) = param(cmdline, ember_proto::cmdline::OPT_DRIVE) {
        mount_ext4(dev, c"/opt", libc::MS_RDONLY | NOSUID_NODEV, c"")?;
    }
    Ok(())
}

/// Makes the container image mounted at /var/task the root (`ember.image=1`): the VM's own
/// filesystems move into it, then it moves onto / and ember-init chroots into it (as
/// switch_root does; the boot root stays underneath, unreachable).
pub fn switch_to_image() -> Result<(), Error> {
    const NEW_ROOT: &str = "/var/task";
    for m in &MOUNTS {
        let from = m.target;
        let to =
            std::ffi::CString::new(format!("{NEW_ROOT}{}", from.to_string_lossy())).expect("a static path has no NUL");
        // SAFETY: NUL-terminated strings that outlive the call; MS_MOVE ignores the rest.
        let rc = unsafe { libc::mount(from.as_ptr(), to.as_ptr(), std::ptr::null(), libc::MS_MOVE, std::ptr::null()) };
        if rc != 0 {
            let what = format!("move {} into the image's root", from.to_string_lossy());
            return Err(Error::new(what, io::Error::last_os_error()));
        }
    }
    std::env::set_current_dir(NEW_ROOT).map_err(|e| Error::new("enter the image's root", e))?;
    // SAFETY: NUL-terminated static strings; moves the mount at the working directory onto /.
    if unsafe { libc::mount(c".".as_ptr(), c"/".as_ptr(), std::ptr::null(), libc::MS_MOVE, std::ptr::null()) } != 0 {
        return Err(Error::new("move the image's root onto /", io::Error::last_os_error()));
    }
    // SAFETY: a NUL-terminated static string.
    if unsafe { libc::chroot(c".".as_ptr()) } != 0 {
        return Err(Error::new("chroot into the image's root", io::Error::last_os_error()));
    }
    std::env::set_current_dir("/").map_err(|e| Error::new("chdir / in the image's root", e))
}

/// Mounts the instance's scratch drive (`ember.tmp=/dev/vdX`) read-write at /tmp, over the
/// boot-time tmpfs, which with `detach_tmpfs` is first unmounted (lazily: its memory goes as
/// soon as nothing uses it).
pub fn mount_tmp(cmdline: &str, detach_tmpfs: bool) -> Result<(), Error> {
    if let Some(dev) = param(cmdline, ember_proto::cmdline::TMP_DRIVE) {
        // SAFETY: a static NUL-terminated path.
        if detach_tmpfs && unsafe { libc::umount2(c"/tmp".as_ptr(), libc::MNT_DETACH) } != 0 {
            return Err(Error::new("unmount the boot /tmp", io::Error::last_os_error()));
        }
        // The host formats /tmp with lazy inode-table init; noinit_itable keeps the kernel from
        // zeroing those tables in the background, which cost block writes (and VM exits) for
        // minutes after every boot and grew the sparse host file for nothing.
        mount_ext4(dev, c"/tmp", NOSUID_NODEV, c"noinit_itable")?;
        // SAFETY: a static NUL-terminated path.
        if unsafe { libc::chmod(c"/tmp".as_ptr(), 0o1777) } != 0 {
            return Err(Error::new("chmod /tmp", io::Error::last_os_error()));
        }
    }
    Ok(())
}

fn mount_ext4(dev: &str, target: &CStr, flags: libc::c_ulong, data: &CStr) -> Result<(), Error> {
    let what = || format!("mount {dev} on {}", target.to_string_lossy());
    let source = std::ffi::CString::new(dev).map_err(|e| Error::new(what(), io::Error::other(e)))?;
    // SAFETY: every pointer is a NUL-terminated string that outlives the call.
    let rc = unsafe { libc::mount(source.as_ptr(), target.as_ptr(), c"ext4".as_ptr(), flags, data.as_ptr().cast()) };
    if rc != 0 {
        return Err(Error::new(what(), io::Error::last_os_error()));
    }
    Ok(())
}
