//! The status port ([`ember_proto::STATUS_PORT`]): how ember-init tells the VMM how far it got.
//!
//! This module owns the I/O permission for the port and the `out` instruction. Every write is a
//! VM exit, so callers write only the words of the contract, and a write without the permission
//! is skipped rather than faulting (a fault would kill PID 1 and panic the kernel).

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};

use ember_proto::{Status, STATUS_PORT};

/// Whether [`open`] succeeded, so that [`write`] may execute `out`.
static OPEN: AtomicBool = AtomicBool::new(false);

/// Grants this process access to the 4 bytes of the status port (needs CAP_SYS_RAWIO).
pub fn open() -> io::Result<()> {
    // SAFETY: ioperm takes no pointers; it only changes this process's I/O permission bitmap.
    let rc = unsafe { libc::ioperm(libc::c_ulong::from(STATUS_PORT), 4, 1) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    OPEN.store(true, Ordering::Relaxed);
    Ok(())
}

/// Writes one status word to the port; does nothing if [`open`] has not succeeded.
pub fn write(status: Status) {
    if !OPEN.load(Ordering::Relaxed) {
        return;
    }
    // SAFETY: ioperm granted this process the port, so `out` does not fault; it touches no memory
    // of this process. The VMM handles the exit (and may stop the VM on Status::PowerOff).
    unsafe {
        std::arch::asm!(
            "out dx, eax",
            in("dx") STATUS_PORT,
            in("eax") status.encode(),
            options(nomem, nostack, preserves_flags),
        );
    }
}
