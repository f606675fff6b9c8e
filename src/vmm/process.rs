//! `ember vmm`: one microVM in its own process, controlled by the agent over a Unix socket.
//!
//! The agent creates a socket pair, passes one end as this process's fd [`CONTROL_FD`] and
//! writes one JSON line, the [`VmmSpec`]. The VMM boots it and, when the VM ends, writes one
//! [`VmmExit`] line and exits. Closing the agent's end (or the agent dying: the process asks
//! for SIGKILL when its parent goes) ends the VM at once, so no VMM outlives its agent.
//! The agent never maps guest memory.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::io::FromRawFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::{Console, Outcome, VmConfig, Vmm};

/// The fd of the control socket in an `ember vmm` process.
pub const CONTROL_FD: i32 = 3;
/// The longest spec line accepted.
const MAX_SPEC: u64 = 64 * 1024;

/// What to boot, as the agent sends it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VmmSpec {
    /// Guest memory in MiB.
    pub memory_mib: u32,
    /// vCPUs.
    pub vcpus: u8,
    /// The vmlinux.
    pub kernel: PathBuf,
    /// The runtime's root image (read-only).
    pub rootfs: PathBuf,
    /// The kernel command line.
    pub cmdline: String,
    /// The function's code image (read-only, /var/task).
    pub code: Option<PathBuf>,
    /// The /tmp drive's size in MiB.
    pub tmp_mib: Option<u32>,
    /// Where the /tmp drive's (unlinked) file is created.
    pub tmp_dir: PathBuf,
    /// The vsock device's host socket.
    pub vsock_uds: PathBuf,
    /// Where the serial console goes; None: nowhere (its tail is still kept for errors).
    pub console: Option<PathBuf>,
    /// Seconds ember-init has to report ready.
    pub boot_timeout_s: u64,
}

/// How the VM ended, as `ember vmm` reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmmExit {
    /// `powered_off`, `crashed`, `boot_timeout` or `vmm_error`.
    pub outcome: String,
    /// ember-init's status for `powered_off`, else 0.
    pub status: u32,
    /// What happened, for a human (the kernel's panic line for a panic).
    pub message: String,
}

impl VmmExit {
    fn from_outcome(outcome: Outcome) -> VmmExit {
        let (outcome, status, message) = match outcome {
            Outcome::Ready => ("ready", 0, String::new()),
            Outcome::PoweredOff(s) => ("powered_off", s, format!("the guest powered off with status {s}")),
            Outcome::Crashed(m) => ("crashed", 0, m),
            Outcome::BootTimeout(t) => ("boot_timeout", 0, format!("the guest did not boot within {} s", t.as_secs())),
            Outcome::VmmError(m) => ("vmm_error", 0, m),
        };
        VmmExit { outcome: outcome.into(), status, message }
    }
}

/// Runs `ember vmm`: reads the spec from [`CONTROL_FD`], runs the VM, reports how it ended.
/// Returns the process's exit status.
pub fn run() -> u8 {
    let started = Instant::now();
    // SAFETY: prctl(PR_SET_PDEATHSIG) takes a signal number and changes only this process.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    // SAFETY: getppid has no preconditions.
    if unsafe { libc::getppid() } == 1 {
        // The agent died before the death signal was armed.
        return 1;
    }
    // SAFETY: the agent passes the control socket as fd 3; nothing else in this process owns it.
    let control = unsafe { UnixStream::from_raw_fd(CONTROL_FD) };
    let (exit, code) = match boot(&control, started) {
        Ok(exit) => (exit, 0),
        Err(message) => (VmmExit { outcome: "vmm_error".into(), status: 0, message }, 1),
    };
    let mut line = serde_json::to_vec(&exit).expect("exit serializes");
    line.push(b'\n');
    let _ = (&control).write_all(&line);
    code
}

fn boot(control: &UnixStream, started: Instant) -> Result<VmmExit, String> {
    let mut line = String::new();
    BufReader::new(control.take(MAX_SPEC)).read_line(&mut line).map_err(|e| format!("read spec: {e}"))?;
    let spec: VmmSpec = serde_json::from_str(&line).map_err(|e| format!("bad spec: {e}"))?;
    let config = VmConfig {
        memory_mib: spec.memory_mib,
        vcpus: spec.vcpus,
        kernel: spec.kernel,
        rootfs: Some(spec.rootfs),
        cmdline: spec.cmdline,
        console: spec.console.map_or(Console::Off, Console::File),
        hugepages: true,
        code: spec.code,
        tmp_mib: spec.tmp_mib,
        tmp_dir: spec.tmp_dir,
        vsock_uds: Some(spec.vsock_uds),
    };
    let mut vmm = Vmm::start(&config).map_err(|e| e.to_string())?;
    // The agent closing its end (or sending anything) ends the VM: exit without ceremony, the
    // kernel tears the VM down with the process.
    let watcher = control.try_clone().map_err(|e| format!("clone control socket: {e}"))?;
    std::thread::Builder::new()
        .name("control".into())
        .spawn(move || {
            let mut byte = [0u8; 1];
            let _ = (&watcher).read(&mut byte);
            std::process::exit(0);
        })
        .map_err(|e| format!("spawn control thread: {e}"))?;
    Ok(VmmExit::from_outcome(vmm.wait(false, Duration::from_secs(spec.boot_timeout_s), started)))
}
