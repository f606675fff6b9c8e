//! ember-init: PID 1 of an Ember microVM.
//!
//! It owns the guest's early userspace: it mounts the API filesystems, measures the memory and
//! vCPUs the guest sees, reports them and its readiness to the VMM on the status port, runs the
//! command the kernel passed it (the command-line words after `--`), reaps orphans while that
//! runs, and powers the VM off with the command's exit status.
//!
//! With `ember.runtime=1` it runs a Lambda runtime for the agent instead ([`runtime`]): it
//! serves the Runtime API on 127.0.0.1 and relays invocations over a vsock channel to the host.
//!
//! It must never return and never panic: PID 1 exiting panics the kernel. Every failure ends in
//! [`power::power_off`] with a non-zero status instead. It is on the boot critical path, so it
//! stays small and does nothing it was not asked to: a plain boot uses std and libc only, and
//! the HTTP stack (tokio, hyper) starts only in runtime mode. It must not write to the root
//! filesystem, which the kernel mounts read-only.

use std::ffi::OsString;
use std::{fmt, io};

use ember_proto::Status;

/// Prints one `ember-init: ` line to the console (stdout), ignoring write errors: a console that
/// cannot be written to must not stop PID 1.
macro_rules! log {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), "ember-init: {}", format_args!($($arg)*));
    }};
}

/// Prints one `ember-init: error: ` line to the console (stderr), ignoring write errors.
macro_rules! log_error {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr().lock(), "ember-init: error: {}", format_args!($($arg)*));
    }};
}

mod mounts;
mod port;
mod power;
mod probe;
mod runtime;
mod supervise;
mod vsock;

/// The exit status reported when ember-init itself fails (mounting, reporting, a bug).
const FAILURE: u32 = 1;

/// A failed step: what ember-init was doing and the OS error that stopped it.
#[derive(Debug)]
pub struct Error {
    what: String,
    source: io::Error,
}

impl Error {
    fn new(what: impl Into<String>, source: io::Error) -> Self {
        Error { what: what.into(), source }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.what, self.source)
    }
}

fn main() {
    // Everything below kills every other process and restarts the machine: refuse to do that
    // anywhere but as the init of a guest (say, when someone runs the binary on the host).
    // SAFETY: getpid has no preconditions and cannot fail.
    if unsafe { libc::getpid() } != 1 {
        log_error!("must run as PID 1 inside an Ember microVM");
        std::process::exit(2);
    }
    std::panic::set_hook(Box::new(|info| {
        log_error!("{info}");
        power::power_off(FAILURE)
    }));

    let status = match boot() {
        Ok((signals, cmdline)) => {
            let argv = command_from_cmdline(&cmdline);
            let vsock = flag(&cmdline, ember_proto::cmdline::VSOCK);
            if vsock {
                if let Err(e) = vsock::start_echo() {
                    log_error!("vsock echo service: {e}");
                }
            }
            if flag(&cmdline, ember_proto::cmdline::RUNTIME) {
                runtime::run(&signals, &cmdline, flag(&cmdline, ember_proto::cmdline::SNAP_START))
            } else if argv.is_empty() && vsock {
                supervise::idle(&signals)
            } else {
                supervise::run(&signals, &argv)
            }
        }
        Err(e) => {
            log_error!("{e}");
            FAILURE
        }
    };
    power::power_off(status)
}

/// Whether the kernel command line (before any `--`) has `key=1`.
fn flag(cmdline: &str, key: &str) -> bool {
    cmdline.split_whitespace().take_while(|&w| w != "--").any(|w| w.strip_prefix(key) == Some("=1"))
}

/// The command to run: the words after `--` on the kernel command line. (The kernel also passes
/// them as init's arguments, but mixed with any word before `--` it did not recognise, such as
/// a parameter of a driver that is not built in, so argv cannot tell them apart.)
fn command_from_cmdline(cmdline: &str) -> Vec<OsString> {
    let mut words = cmdline.split_whitespace();
    if !words.any(|w| w == "--") {
        return Vec::new();
    }
    words.map(OsString::from).collect()
}

/// Steps 1 to 3: takes over the signals, mounts the filesystems and the drives and reports to
/// the VMM. Returns the signals and the kernel command line.
fn boot() -> Result<(supervise::Signals, String), Error> {
    // First, so that a shutdown signal sent during boot waits for us instead of being dropped
    // (the kernel discards signals PID 1 neither handles nor blocks).
    let signals = supervise::Signals::block().map_err(|e| Error::new("block signals", e))?;
    // Next, so that a failure of a later step still reaches the VMM as Status::PowerOff.
    port::open().map_err(|e| Error::new("ioperm status port", e))?;
    power::route_ctrl_alt_del();
    mounts::mount_all()?;
    let cmdline = std::fs::read_to_string("/proc/cmdline").map_err(|e| Error::new("read /proc/cmdline", e))?;
    mounts::mount_code(&cmdline)?;
    if flag(&cmdline, ember_proto::cmdline::IMAGE_ROOT) {
        mounts::switch_to_image()?;
    }
    // A SnapStart boot mounts /tmp only after a restore (see runtime::restore).
    if !flag(&cmdline, ember_proto::cmdline::SNAP_START) {
        mounts::mount_tmp(&cmdline, false)?;
    }

    let memory_mib = probe::memory_mib().unwrap_or_else(|e| {
        log!("cannot measure memory: {e}");
        0
    });
    let vcpus = probe::vcpus().unwrap_or_else(|e| {
        log!("cannot count vCPUs: {e}");
        0
    });
    port::write(Status::MemoryMib(memory_mib));
    port::write(Status::Vcpus(vcpus));
    port::write(Status::Ready);
    log!("ready memory_mib={memory_mib} vcpus={vcpus}");
    Ok((signals, cmdline))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_is_what_follows_the_double_dash() {
        assert!(command_from_cmdline("console=ttyS0 quiet nomodule root=/dev/vda\n").is_empty());
        assert_eq!(command_from_cmdline("quiet nomodule -- /bin/echo hi there\n"), ["/bin/echo", "hi", "there"]);
        assert!(command_from_cmdline("quiet --\n").is_empty());
    }

    #[test]
    fn flags() {
        let cmdline = "console=ttyS0 ember.vsock=1 ember.runtime=1 -- /bin/echo ember.code=1\n";
        assert!(flag(cmdline, "ember.vsock"));
        assert!(flag(cmdline, "ember.runtime"));
        assert!(!flag(cmdline, "ember.code"));
        assert!(!flag("ember.runtime=0 ember.runtime=10", "ember.runtime"));
    }
}
