//! What a SnapStart guest does after a restore, before any user code runs again: everything
//! that made it unique or was the host's (see `ember_proto::runtime`'s SnapStart exchange).
//!
//! - The kernel's RNG gets the host's fresh entropy and reseeds at once, so that two clones
//!   of one snapshot part ways before the runtime draws another random number (`getrandom`,
//!   `/dev/urandom`, and what is built on them: `os.urandom`, `uuid4`, the `rand` crate's
//!   OS seeding).
//! - The wall clock is set to the host's: the snapshot's clock stopped when it was taken.
//! - /tmp is mounted from the instance's own new drive (the boot mounted none), over the
//!   boot-time tmpfs, which is detached: no snapshot holds /tmp, every instance has its own.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd as _;

use ember_proto::runtime::Restore;

use crate::{mounts, Error};

/// RNDADDENTROPY: `_IOW('R', 0x03, int[2])`.
const RNDADDENTROPY: libc::c_ulong = 0x4008_5203;
/// RNDRESEEDCRNG: `_IO('R', 0x07)`.
const RNDRESEEDCRNG: libc::c_ulong = 0x5207;
/// The most entropy taken from the host, in bytes.
const MAX_ENTROPY: usize = 256;

/// `struct rand_pool_info` with its buffer inline.
#[repr(C)]
struct RandPoolInfo {
    entropy_count: libc::c_int,
    buf_size: libc::c_int,
    buf: [u8; MAX_ENTROPY],
}

/// Applies a restore: entropy, clock, /tmp.
pub fn apply(restore: &Restore, entropy: &[u8], cmdline: &str) -> Result<(), Error> {
    reseed(entropy).map_err(|e| Error::new("reseed the RNG", e))?;
    if restore.wall_clock_ms > 0 {
        super::set_clock(restore.wall_clock_ms).map_err(|e| Error::new("set the clock", e))?;
    }
    mounts::mount_tmp(cmdline, true)
}

/// Mixes `entropy` into the kernel's pool, credited in full, and makes the RNG reseed from it
/// now rather than at its next scheduled reseed.
fn reseed(entropy: &[u8]) -> io::Result<()> {
    if entropy.len() < 32 {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("{} bytes of entropy", entropy.len())));
    }
    let n = entropy.len().min(MAX_ENTROPY);
    let mut info =
        RandPoolInfo { entropy_count: (n * 8) as libc::c_int, buf_size: n as libc::c_int, buf: [0; MAX_ENTROPY] };
    info.buf[..n].copy_from_slice(&entropy[..n]);
    let random = File::options().write(true).open("/dev/urandom")?;
    // SAFETY: RNDADDENTROPY reads a rand_pool_info whose buf_size bytes of buffer follow it,
    // which `info` holds; the fd is open for the call.
    if unsafe { libc::ioctl(random.as_raw_fd(), RNDADDENTROPY, &info as *const RandPoolInfo) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: RNDRESEEDCRNG takes no argument.
    if unsafe { libc::ioctl(random.as_raw_fd(), RNDRESEEDCRNG) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
