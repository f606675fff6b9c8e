//! Powering the VM off, the only way ember-init ends.
//!
//! The sequence: kill every other process and reap it, flush the console, `sync`, write
//! `Status::PowerOff(status)` to the status port (the VMM stops the VM there), then, should the
//! VM still run, `reboot(RESTART)`: with `reboot=k` the kernel pulses the i8042 reset line, which
//! the VMM also treats as the end. If even that returns, PID 1 sleeps forever rather than exit.

use std::io::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ember_proto::Status;

use crate::port;

/// How long to wait for killed processes to be reaped, in steps of [`REAP_STEP`].
const REAP_STEPS: u32 = 200;
const REAP_STEP: Duration = Duration::from_millis(5);

/// Set by the first thread that powers off.
static POWERING_OFF: AtomicBool = AtomicBool::new(false);

/// Powers the VM off, reporting `status` (the command's exit status, 0 when clean). In runtime
/// mode several threads may get here (the channel breaks, the runtime is killed, a signal):
/// the first one does it and any later one just waits for the end.
pub fn power_off(status: u32) -> ! {
    if POWERING_OFF.swap(true, Ordering::SeqCst) {
        sleep_forever();
    }
    kill_all();
    let _ = std::io::stdout().flush();
    for fd in [libc::STDOUT_FILENO, libc::STDERR_FILENO] {
        // SAFETY: tcdrain takes no pointers; it waits until the console has sent its output, so
        // that the last lines are not lost when the VM stops. It fails harmlessly on a non-tty.
        unsafe { libc::tcdrain(fd) };
    }
    // SAFETY: sync has no preconditions.
    unsafe { libc::sync() };
    port::write(Status::PowerOff(status));
    // SAFETY: reboot takes no pointers with this command; if it returns, nothing has changed.
    unsafe { libc::reboot(libc::RB_AUTOBOOT) };
    sleep_forever()
}

fn sleep_forever() -> ! {
    loop {
        // SAFETY: pause has no preconditions; it only sleeps.
        unsafe { libc::pause() };
    }
}

/// Whether some thread has begun [`power_off`].
pub fn powering_off() -> bool {
    POWERING_OFF.load(Ordering::SeqCst)
}

/// Makes Ctrl-Alt-Delete send SIGINT to init (a clean power-off) instead of an immediate restart.
pub fn route_ctrl_alt_del() {
    // SAFETY: reboot takes no pointers with this command; it only flips a kernel flag.
    if unsafe { libc::reboot(libc::RB_DISABLE_CAD) } != 0 {
        log!("cannot disable Ctrl-Alt-Delete: {}", std::io::Error::last_os_error());
    }
}

/// Sends SIGKILL to every process but init and reaps them, waiting at most about a second.
fn kill_all() {
    // SAFETY: kill takes no pointers; from PID 1, pid -1 means every process except init itself.
    if unsafe { libc::kill(-1, libc::SIGKILL) } != 0 {
        return; // ESRCH: nothing else runs.
    }
    for _ in 0..REAP_STEPS {
        loop {
            let mut wstatus = 0;
            // SAFETY: waitpid writes only to `wstatus`, a valid c_int.
            match unsafe { libc::waitpid(-1, &mut wstatus, libc::WNOHANG) } {
                -1 => return, // ECHILD: all reaped.
                0 => break,   // Some are still dying.
                _ => {}
            }
        }
        std::thread::sleep(REAP_STEP);
    }
}
