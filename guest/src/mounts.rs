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
