//! `ember vmm`: one microVM in its own process, controlled by the agent over a Unix socket.
//!
//! The agent creates a socket pair, passes one end as this process's fd [`CONTROL_FD`] and
//! writes one JSON line, the [`VmmSpec`]. The process creates its VM before it reads that line
//! (what does not depend on the spec: [`EmptyVm`]), so that the agent can start it ahead of
//! need; it is named [`SPARE_NAME`] until the spec comes, [`VMM_NAME`] after. The VMM boots
//! the spec (or restores the snapshot it names) and, when the VM ends, writes one [`VmmExit`]
//! line and exits. While the VM runs the
//! agent may send [`Control`] lines: a request to record the working set (a restored VM's, after
//! its first invocation), which the VMM answers with one [`WorkingSetReply`] line while the VM
//! runs on; or a snapshot request, after which the VMM pauses the VM, writes the snapshot,
//! reports `snapshotted` (or why not) and exits. Closing the agent's end,
//! or anything else on it (or the agent dying: the process asks for SIGKILL when its parent
//! goes), ends the VM at once, so no VMM outlives its agent. The agent never maps guest memory.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::io::FromRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::devices::virtio::block::{scratch_template_path, ScratchFile, DEFAULT_SCRATCH_MIB, MAX_SCRATCH_MIB};
use super::jail::{self, Binds, JailSpec};
use super::{Console, EmptyVm, Outcome, RestoreConfig, VmConfig, VmEvent, Vmm, MAX_MEMORY_MIB};

/// The fd of the control socket in an `ember vmm` process.
pub const CONTROL_FD: i32 = 3;
/// The process's name (`/proc/PID/comm`) while it waits for its spec: a spare, not an instance.
pub const SPARE_NAME: &str = "ember-spare";
/// The process's name once it has its spec and runs a VM.
pub const VMM_NAME: &str = "ember-vmm";

/// The pids of the children of `parent` that run a VM (named [`VMM_NAME`]; spares waiting for
/// a spec are left out).
pub fn running_vmms(parent: u32) -> Vec<u32> {
    children_named(parent, VMM_NAME)
}

/// The pids of the spare VMMs of `parent` (named [`SPARE_NAME`]).
pub fn spare_vmms(parent: u32) -> Vec<u32> {
    children_named(parent, SPARE_NAME)
}

fn children_named(parent: u32, name: &str) -> Vec<u32> {
    children(parent).into_iter().filter(|(_, comm)| comm == name).map(|(pid, _)| pid).collect()
}

/// The children of `parent` with their command names, by pid.
pub fn children(parent: u32) -> Vec<(u32, String)> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|p| p.parse::<u32>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        // The command name is in parentheses and may hold spaces; the fields follow it.
        let Some((head, after)) = stat.rsplit_once(") ") else { continue };
        let comm = head.split_once('(').map_or("", |(_, c)| c);
        let ppid = after.split_whitespace().nth(1).and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(parent) {
            out.push((pid, comm.to_owned()));
        }
    }
    out.sort();
    out
}

/// Names this process (its main thread), for whoever lists processes.
fn set_name(name: &str) {
    let name = std::ffi::CString::new(name).expect("no NUL in the name");
    // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16 bytes (longer ones are
    // cut) from a pointer that stays valid for the call.
    unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr()) };
}

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
    /// The function's layers image (read-only, /opt).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub opt: Option<PathBuf>,
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
    /// Restore this snapshot directory instead of booting (the kernel, images, command line,
    /// memory and vCPUs above are then the snapshot's; a fresh /tmp drive is made in
    /// `tmp_dir` and the vsock device listens on `vsock_uds`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore: Option<PathBuf>,
    /// For a restore: load the snapshot's working set first, or record one when asked.
    #[serde(default)]
    pub prefetch: bool,
    /// For a SnapStart boot: the directory its snapshot will be written into.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_to: Option<PathBuf>,
}

impl VmmSpec {
    /// What a jailed VMM needs bound into its jail to run this spec (see [`jail`]), made ready
    /// on the host: the console file created, the /tmp drive's template made.
    pub fn jail_binds(&self) -> Result<Binds, String> {
        if let Some(console) = &self.console {
            std::fs::File::create(console).map_err(|e| format!("create {}: {e}", console.display()))?;
        }
        let template = match self.tmp_mib {
            Some(mib) => Some(scratch_template_path(mib).map_err(|e| format!("the {mib} MiB /tmp template: {e}"))?),
            None => None,
        };
        let read_only =
            [Some(&self.kernel), Some(&self.rootfs), self.code.as_ref(), self.opt.as_ref(), self.restore.as_ref()];
        let read_write = [Some(&self.tmp_dir), self.snapshot_to.as_ref(), self.console.as_ref()];
        Ok(Binds {
            read_only: read_only.into_iter().flatten().chain(template.as_ref()).cloned().collect(),
            read_write: read_write.into_iter().flatten().cloned().collect(),
        })
    }
}

/// Where a jailed VMM writes the working set it records: its instance's directory, from which
/// the agent moves it beside the snapshot.
pub const RECORDED_WORKING_SET: &str = "working_set.recorded";

/// What the agent may ask of a running VMM.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Control {
    /// Pause the VM for good and write its snapshot into this directory.
    Snapshot(PathBuf),
    /// The first invocation of a restored VM is over: record its working set, if its restore
    /// found none to load (else nothing to do). The VM runs on.
    RecordWorkingSet,
}

/// The VMM's answer to [`Control::RecordWorkingSet`], one line on the control socket.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkingSetReply {
    /// Pages recorded (0 when nothing was: the restore had loaded one, or recording failed).
    pub pages: u64,
    /// What happened, for a human.
    pub message: String,
}

/// How the VM ended, as `ember vmm` reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmmExit {
    /// `powered_off`, `crashed`, `boot_timeout`, `vmm_error`, `host_error` (the VM could not
    /// be created: no spec was read) or `snapshotted`.
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
            Outcome::SnapshotRequested(_) => ("vmm_error", 0, "a snapshot request was not carried out".into()),
        };
        VmmExit { outcome: outcome.into(), status, message }
    }
}

/// Runs `ember vmm`: reads the spec from [`CONTROL_FD`], runs the VM, reports how it ended.
/// With `scratch_dir`, it makes a /tmp drive of the default size there while it waits for the
/// spec; with `jail`, it enters that jail before it reads the spec. Returns the process's exit
/// status.
pub fn run(scratch_dir: Option<&Path>, jail: Option<&JailSpec>) -> u8 {
    // SAFETY: prctl(PR_SET_PDEATHSIG) takes a signal number and changes only this process.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    // SAFETY: getppid has no preconditions.
    if unsafe { libc::getppid() } == 1 {
        // The agent died before the death signal was armed.
        return 1;
    }
    set_name(SPARE_NAME);
    // SAFETY: the agent passes the control socket as fd 3; nothing else in this process owns it.
    let control = unsafe { UnixStream::from_raw_fd(CONTROL_FD) };
    let (exit, code) = match boot(&control, scratch_dir, jail) {
        Ok(exit) => (exit, 0),
        Err(message) => (VmmExit { outcome: "vmm_error".into(), status: 0, message }, 1),
    };
    let mut line = serde_json::to_vec(&exit).expect("exit serializes");
    line.push(b'\n');
    let _ = (&control).write_all(&line);
    code
}

/// Maps into this process's page table, from the page cache, every page of its executable's
/// read-only segments (code and constants): shared pages, no memory of this process's own.
/// Returns the bytes mapped.
fn map_own_code() -> std::io::Result<u64> {
    let exe = std::fs::read_link("/proc/self/exe")?;
    let maps = std::fs::read_to_string("/proc/self/maps")?;
    let mut mapped = 0;
    for (start, end) in read_only_segments(&maps, &exe) {
        // SAFETY: [start, end) is a whole mapping of this process's executable, as the kernel
        // listed it, and nothing unmaps it; populating changes what is resident, never what it
        // holds.
        if unsafe { libc::madvise(start as *mut libc::c_void, (end - start) as usize, libc::MADV_POPULATE_READ) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        mapped += end - start;
    }
    Ok(mapped)
}

/// The address ranges of `exe`'s read-only mappings (readable, not writable) in a
/// `/proc/PID/maps` text.
fn read_only_segments(maps: &str, exe: &Path) -> Vec<(u64, u64)> {
    maps.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (range, perms) = (fields.next()?, fields.next()?);
            let path = fields.nth(3)?;
            if Path::new(path) != exe || !perms.starts_with("r-") {
                return None;
            }
            let (start, end) = range.split_once('-')?;
            Some((u64::from_str_radix(start, 16).ok()?, u64::from_str_radix(end, 16).ok()?))
        })
        .collect()
}

fn boot(control: &UnixStream, scratch_dir: Option<&Path>, jail: Option<&JailSpec>) -> Result<VmmExit, String> {
    // Before the spec: the agent may start this process well ahead of the work. A failure
    // here is the host's (out of memory, too many VMs), never a snapshot's.
    let vm = match EmptyVm::create() {
        Ok(vm) => vm,
        Err(e) => return Ok(VmmExit { outcome: "host_error".into(), status: 0, message: e.to_string() }),
    };
    // The /tmp drive of a function of Lambda's default ephemeral storage, which most have (a
    // copy of the empty filesystem, ~12 ms in the emulated host); one that cannot be made now
    // is made after the spec, whose error then says why.
    let scratch = scratch_dir.and_then(|dir| ScratchFile::create(dir, DEFAULT_SCRATCH_MIB).ok());
    // And this binary's code and read-only data, mapped now: the VM's setup would otherwise
    // take a page fault for each page of code it runs for the first time (~14 ms of a
    // restore in the emulated host, measured 2026-12-04).
    let _ = map_own_code();
    // The threads' seccomp filters, compiled now; each thread of the VM installs its own.
    let filters = super::seccomp::Filters::new().map_err(|e| e.to_string())?;
    if let Some(j) = jail {
        // What a recording of the working set reads, which the jail does not hold.
        super::working_set::open_pagemap().map_err(|e| format!("open /proc/self/pagemap: {e}"))?;
        // Any function's file size, until the spec says which function.
        jail::enter(j, jail::file_size_limit(MAX_SCRATCH_MIB, MAX_MEMORY_MIB)).map_err(|e| e.to_string())?;
    }
    // From here on, filtered: the setup's filter, to which each thread adds its own.
    super::seccomp::enable(filters);
    super::seccomp::install(super::seccomp::Thread::Setup).map_err(|e| e.to_string())?;
    let mut reader = BufReader::new(control.try_clone().map_err(|e| format!("clone control socket: {e}"))?);
    let mut line = String::new();
    (&mut reader).take(MAX_SPEC).read_line(&mut line).map_err(|e| format!("read spec: {e}"))?;
    if line.is_empty() {
        // The agent went away (or no longer needs this spare): nothing to report.
        std::process::exit(0);
    }
    let started = Instant::now();
    set_name(VMM_NAME);
    let spec: VmmSpec = serde_json::from_str(&line).map_err(|e| format!("bad spec: {e}"))?;
    if jail.is_some() {
        let file_size = jail::file_size_limit(spec.tmp_mib.unwrap_or(DEFAULT_SCRATCH_MIB), spec.memory_mib);
        jail::limit_file_size(file_size).map_err(|e| e.to_string())?;
    }
    let console = spec.console.map_or(Console::Off, Console::File);
    let record_to = jail.map(|_| spec.tmp_dir.join(RECORDED_WORKING_SET));
    let mut vmm = match spec.restore {
        Some(snapshot_dir) => {
            let config = RestoreConfig {
                snapshot_dir,
                console,
                tmp_dir: spec.tmp_dir,
                vsock_uds: Some(spec.vsock_uds),
                prefetch: spec.prefetch,
                record_to,
            };
            Vmm::restore(&config, vm, scratch)
        }
        None => Vmm::start(
            &VmConfig {
                memory_mib: spec.memory_mib,
                vcpus: spec.vcpus,
                kernel: spec.kernel,
                rootfs: Some(spec.rootfs),
                cmdline: spec.cmdline,
                console,
                hugepages: true,
                code: spec.code,
                opt: spec.opt,
                tmp_mib: spec.tmp_mib,
                tmp_dir: spec.tmp_dir,
                vsock_uds: Some(spec.vsock_uds),
            },
            vm,
            scratch,
        ),
    }
    .map_err(|e| e.to_string())?;
    // A snapshot request goes to the main thread (which owns the VM); anything else from the
    // agent, its end closing included, ends the VM without ceremony: the kernel tears the VM
    // down with the process.
    let controller = vmm.controller();
    let recorder = vmm.working_set_recorder();
    let replies = control.try_clone().map_err(|e| format!("clone control socket: {e}"))?;
    std::thread::Builder::new()
        .name("control".into())
        .spawn(move || {
            if let Err(e) = super::seccomp::install(super::seccomp::Thread::Control) {
                eprintln!("ember: {e}");
                std::process::exit(1);
            }
            control_loop(reader, controller, recorder, replies)
        })
        .map_err(|e| format!("spawn control thread: {e}"))?;
    super::seccomp::install(super::seccomp::Thread::Main).map_err(|e| e.to_string())?;
    match vmm.wait(false, Duration::from_secs(spec.boot_timeout_s), started) {
        Outcome::SnapshotRequested(dir) => {
            let paused = Instant::now();
            let exit = match vmm.snapshot(&dir) {
                Ok(written) => VmmExit {
                    outcome: "snapshotted".into(),
                    status: 0,
                    message: format!(
                        "snapshot written in {} ms ({} KiB of memory)",
                        paused.elapsed().as_millis(),
                        written >> 10
                    ),
                },
                Err(e) => VmmExit { outcome: "vmm_error".into(), status: 0, message: format!("snapshot failed: {e}") },
            };
            Ok(exit)
        }
        outcome => Ok(VmmExit::from_outcome(outcome)),
    }
}

/// The control thread: the agent's requests, until a snapshot request (handed to the main
/// thread) or the socket's end (which ends the process).
fn control_loop(
    mut reader: BufReader<UnixStream>,
    controller: std::sync::mpsc::Sender<VmEvent>,
    mut recorder: Option<super::Recorder>,
    mut replies: UnixStream,
) {
    loop {
        let mut line = String::new();
        if !matches!((&mut reader).take(MAX_SPEC).read_line(&mut line), Ok(n) if n > 0) {
            std::process::exit(0);
        }
        match serde_json::from_str::<Control>(&line) {
            Ok(Control::Snapshot(dir)) => {
                let _ = controller.send(VmEvent::SnapshotRequested(dir));
                return;
            }
            // Once: the pages touched up to the end of the first invocation.
            Ok(Control::RecordWorkingSet) => {
                let reply = match recorder.take().map(|r| r.record()) {
                    Some(Ok(pages)) => WorkingSetReply { pages, message: format!("recorded {pages} pages") },
                    Some(Err(e)) => {
                        eprintln!("ember: restore: recording the working set failed: {e}");
                        WorkingSetReply { pages: 0, message: format!("recording failed: {e}") }
                    }
                    None => WorkingSetReply { pages: 0, message: "nothing to record".into() },
                };
                let mut line = serde_json::to_vec(&reply).expect("a reply serializes");
                line.push(b'\n');
                let _ = replies.write_all(&line);
            }
            Err(_) => std::process::exit(0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_read_only_segments_of_the_executable_are_found() {
        let maps = "\
5555a000-5555b000 r--p 00000000 08:01 12 /opt/ember/ember
5555b000-5555f000 r-xp 00001000 08:01 12 /opt/ember/ember
5555f000-55560000 rw-p 00005000 08:01 12 /opt/ember/ember
55560000-55561000 r-xp 00000000 08:01 13 /opt/ember/ember-old
7fff0000-7fff1000 rw-p 00000000 00:00 0 [stack]
7fff2000-7fff3000 r-xp 00000000 00:00 0
";
        assert_eq!(
            read_only_segments(maps, Path::new("/opt/ember/ember")),
            [(0x5555_a000, 0x5555_b000), (0x5555_b000, 0x5555_f000)]
        );
    }

    #[test]
    fn this_process_maps_its_own_code() {
        assert!(map_own_code().unwrap() > 0);
    }
}
