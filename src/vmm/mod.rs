//! The VMM: builds one microVM in this process and runs it.
//!
//! Layout (by layer, as in Firecracker): `vstate` holds the KVM objects (VM, vCPUs, stats),
//! `arch` the x86_64 boot structures, `devices` the emulation.
//!
//! Threads and messages:
//! - one thread per vCPU runs `KVM_RUN` and handles port-I/O and MMIO exits
//!   ([`vstate::vcpu::Vcpu::run`]);
//! - one event-loop thread ([`event_loop`]) waits on the virtio queues' ioeventfds and the
//!   devices' host-side fds and processes them;
//! - the caller's thread (the VMM main thread) builds the VM with [`Vmm::start`] and then only
//!   receives [`VmEvent`]s from the others in [`Vmm::wait`]: status words from ember-init, a
//!   reset, a crash or an error. It never touches vCPU or device state itself.
//!
//! Ending a VM is ending the process: the `ember boot` command exits once [`Vmm::wait`] has an
//! outcome, and the kernel tears down the vCPUs, the VM and guest memory with it.

pub mod arch;
pub mod devices;
mod event_loop;
pub mod jail;
pub mod process;
pub mod seccomp;
pub mod snapshot;
mod sparse;
pub mod vstate;
pub mod working_set;

use std::collections::VecDeque;
use std::fs::File;
use std::os::unix::thread::JoinHandleExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use ember_proto::Status;
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use arch::{boot, layout, mptable};
use devices::legacy::{ConsoleSink, PioDevices, SerialSnapshot};
use devices::virtio::block::{Block, ScratchFile, MAX_SCRATCH_MIB, MIN_SCRATCH_MIB};
use devices::virtio::mmio::{MmioTransport, REG_QUEUE_NOTIFY};
use devices::virtio::vsock::Vsock;
use devices::virtio::{Interrupt, VirtioDevice};
use devices::MmioBus;
use snapshot::{DeviceKind, DeviceState, VmSnapshot};
use vstate::stats::Counter;
use vstate::vcpu::{ExitContext, Vcpu, VcpuState};
pub use vstate::vm::EmptyVm;
use vstate::vm::{create_memory, Vm};

/// The guest's vsock context id (0-2 are reserved; each VM has its own device, so all can use 3).
pub const GUEST_CID: u64 = 3;
/// Smallest guest memory, in MiB (Lambda's minimum).
pub const MIN_MEMORY_MIB: u32 = 128;
/// Largest guest memory, in MiB (Lambda's maximum).
pub const MAX_MEMORY_MIB: u32 = 10240;

/// The kernel command line used when none is given. `reboot=k panic=-1`: a panic resets the
/// VM through the i8042 at once, which the VMM sees. `io_delay=none
/// no_timer_check`: no probing that only costs VM exits. `random.trust_cpu=on`: the guest's
/// RNG is ready without waiting for entropy. `noreplace-smp`: a guest with one vCPU keeps the
/// lock prefixes of its kernel's atomic instructions instead of rewriting them (2,600 sites
/// on 485 of the 1,536 pages of kernel code) into their uniprocessor form at boot, so that
/// those pages stay the kernel file's own, shared by every instance in the host's page cache,
/// instead of becoming each instance's private copy (see `load_kernel`).
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 quiet reboot=k panic=-1 io_delay=none \
     no_timer_check random.trust_cpu=on noreplace-smp root=/dev/vda ro rootfstype=ext4";

/// Where the guest kernel and images are by default: $EMBER_GUEST_DIR, else target/guest beside
/// the running binary's target directory, else ./target/guest.
pub fn default_guest_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("EMBER_GUEST_DIR") {
        return dir.into();
    }
    // The binary is target/<triple>/<profile>/ember (or target/<profile>/ember).
    let beside_exe = std::env::current_exe().ok().and_then(|exe| {
        exe.ancestors().skip(2).take(2).map(|target| target.join("guest")).find(|dir| dir.join("vmlinux").is_file())
    });
    beside_exe.unwrap_or_else(|| PathBuf::from("target/guest"))
}

/// Errors building or running a VM.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A setting is out of range.
    #[error("{0}")]
    InvalidConfig(String),
    /// The VM could not be set up.
    #[error(transparent)]
    Vm(#[from] vstate::vm::Error),
    /// A vCPU could not be set up.
    #[error(transparent)]
    Vcpu(#[from] vstate::vcpu::Error),
    /// The kernel could not be loaded or the zero page written.
    #[error(transparent)]
    Boot(#[from] boot::Error),
    /// The MP table could not be written.
    #[error(transparent)]
    MpTable(#[from] mptable::Error),
    /// The boot page tables or GDT could not be written.
    #[error(transparent)]
    Regs(#[from] arch::regs::Error),
    /// A drive could not be opened.
    #[error(transparent)]
    Drive(#[from] devices::virtio::block::OpenError),
    /// The vsock device could not be set up.
    #[error("vsock: {0}")]
    Vsock(#[from] devices::virtio::vsock::Error),
    /// A snapshot file could not be read or written, or is damaged.
    #[error("snapshot: {0}")]
    Snapshot(#[from] snapshot::Error),
    /// A saved device state does not fit its device.
    #[error("restore: {0}")]
    Device(#[from] devices::virtio::Error),
    /// The VM could not be paused for a snapshot.
    #[error("pause: {0}")]
    Pause(String),
    /// The console file could not be created.
    #[error("cannot open console file {path}: {source}")]
    Console {
        /// The path.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// An eventfd, epoll or thread could not be created.
    #[error("{what}: {source}")]
    Os {
        /// What was being created.
        what: &'static str,
        /// Why.
        source: std::io::Error,
    },
}

fn os(what: &'static str) -> impl FnOnce(std::io::Error) -> Error {
    move |source| Error::Os { what, source }
}

/// Where the guest's serial console goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Console {
    /// Discarded (its last 8 KiB are still kept for error messages).
    Off,
    /// This process's stdout.
    Stdout,
    /// A file, created or truncated.
    File(PathBuf),
}

/// What to boot.
#[derive(Clone, Debug)]
pub struct VmConfig {
    /// Guest memory in MiB.
    pub memory_mib: u32,
    /// vCPU count.
    pub vcpus: u8,
    /// The uncompressed kernel (vmlinux ELF).
    pub kernel: PathBuf,
    /// The root filesystem image, attached read-only as /dev/vda.
    pub rootfs: Option<PathBuf>,
    /// The kernel command line (virtio-mmio device entries are appended).
    pub cmdline: String,
    /// The serial console.
    pub console: Console,
    /// Back guest memory with transparent huge pages.
    pub hugepages: bool,
    /// The function's code image, attached read-only and mounted at /var/task.
    pub code: Option<PathBuf>,
    /// The function's layers image, attached read-only and mounted at /opt.
    pub opt: Option<PathBuf>,
    /// Size of a fresh scratch drive mounted at /tmp, in MiB (512 to 10240); None: tmpfs.
    pub tmp_mib: Option<u32>,
    /// Where the scratch drive's (unlinked) backing file is created.
    pub tmp_dir: PathBuf,
    /// The host side of the guest's vsock device: a Unix socket path (see
    /// [`devices::virtio::vsock`]). None: no vsock device.
    pub vsock_uds: Option<PathBuf>,
}

impl VmConfig {
    /// Checks the ranges a caller can get wrong.
    pub fn validate(&self) -> Result<(), Error> {
        validate_shape(self.memory_mib, self.vcpus)?;
        if let Some(mib) = self.tmp_mib {
            if !(MIN_SCRATCH_MIB..=MAX_SCRATCH_MIB).contains(&mib) {
                return Err(Error::InvalidConfig(format!(
                    "/tmp must be between {MIN_SCRATCH_MIB} and {MAX_SCRATCH_MIB} MiB, not {mib}"
                )));
            }
        }
        Ok(())
    }
}

/// Checks memory size and vCPU count (of a boot or of a snapshot being restored).
fn validate_shape(memory_mib: u32, vcpus: u8) -> Result<(), Error> {
    if !(MIN_MEMORY_MIB..=MAX_MEMORY_MIB).contains(&memory_mib) {
        return Err(Error::InvalidConfig(format!(
            "memory must be between {MIN_MEMORY_MIB} and {MAX_MEMORY_MIB} MiB, not {memory_mib}"
        )));
    }
    if vcpus == 0 || vcpus > mptable::MAX_CPUS {
        return Err(Error::InvalidConfig(format!("vCPUs must be between 1 and {}, not {vcpus}", mptable::MAX_CPUS)));
    }
    Ok(())
}

/// What the VMM's threads tell its main thread.
#[derive(Debug)]
pub enum VmEvent {
    /// ember-init wrote a status word; `exits` is the total of all vCPUs' VM exits then.
    Status {
        /// The status.
        status: Status,
        /// When the vCPU thread saw it.
        at: Instant,
        /// VM exits so far (0 when KVM has no binary stats).
        exits: u64,
    },
    /// The guest reset itself (a reboot, or the kernel's reaction to a panic).
    Reset,
    /// The guest did something that ends it: a triple fault, a KVM internal error.
    Crash(String),
    /// The VMM failed.
    Error(String),
    /// The VMM's controller asks for a snapshot into this directory.
    SnapshotRequested(PathBuf),
    /// A vCPU left `KVM_RUN` for a snapshot and waits to save its state.
    Stopped {
        /// The vCPU.
        id: u8,
    },
    /// A vCPU stopped for a snapshot, with its state (or why it could not be read).
    Paused {
        /// The vCPU.
        id: u8,
        /// Its state.
        state: Result<Box<VcpuState>, String>,
    },
}

/// How a run ended, as [`Vmm::wait`] sees it.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// ember-init reported ready and the caller asked to stop there.
    Ready,
    /// ember-init powered the VM off with this status.
    PoweredOff(u32),
    /// The guest crashed or reset without powering off.
    Crashed(String),
    /// ember-init did not report ready in time.
    BootTimeout(Duration),
    /// The VMM failed while running.
    VmmError(String),
    /// The controller asked for a snapshot into this directory (see [`Vmm::controller`]).
    SnapshotRequested(PathBuf),
}

/// What ember-init reported when it became ready.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReadyInfo {
    /// Memory the guest saw, in MiB.
    pub memory_mib: u32,
    /// vCPUs the guest saw.
    pub vcpus: u32,
    /// VM exits until ready.
    pub exits: u64,
}

/// The last bytes the guest wrote to its console, kept for error messages.
type ConsoleTail = Arc<Mutex<VecDeque<u8>>>;

/// How long the vCPUs have to stop for a snapshot.
const PAUSE_TIMEOUT: Duration = Duration::from_secs(10);

/// What to restore, and the host-side things a restored VM gets new.
#[derive(Clone, Debug)]
pub struct RestoreConfig {
    /// The directory [`Vmm::snapshot`] wrote.
    pub snapshot_dir: PathBuf,
    /// The serial console.
    pub console: Console,
    /// Where a fresh /tmp drive's (unlinked) backing file is created.
    pub tmp_dir: PathBuf,
    /// The vsock device's host socket (required if the snapshot has a vsock device).
    pub vsock_uds: Option<PathBuf>,
    /// Load the snapshot's working set before the guest runs (see [`working_set`]), or, if it
    /// has none that is valid, record one when asked ([`Vmm::working_set_recorder`]).
    pub prefetch: bool,
    /// Where a recorded working set is written; `None`: beside the snapshot (a jailed VMM
    /// cannot write there, and writes into its instance's directory for the agent to move).
    pub record_to: Option<PathBuf>,
}

/// Records the working set of a VM restored without one, into its snapshot's directory.
#[derive(Clone, Debug)]
pub struct Recorder {
    regions: Vec<working_set::Region>,
    path: PathBuf,
    snapshot: [u8; 32],
}

impl Recorder {
    /// Records the pages the guest has touched since its restore and writes them as the
    /// snapshot's working set. Returns how many pages it holds.
    pub fn record(&self) -> Result<u64, working_set::Error> {
        let ws = working_set::WorkingSet::record(&self.regions)?;
        ws.write(&self.path, &self.snapshot)?;
        Ok(ws.pages())
    }
}

/// A running microVM.
pub struct Vmm {
    vm: Vm,
    exits: Arc<ExitContext>,
    events: Receiver<VmEvent>,
    console_tail: ConsoleTail,
    guest_ranges: Vec<(u64, u64)>,
    transports: Vec<(DeviceKind, Arc<Mutex<MmioTransport>>)>,
    event_loop: Option<(EventFd, thread::JoinHandle<()>)>,
    vcpu_threads: Vec<thread::JoinHandle<()>>,
    events_tx: Sender<VmEvent>,
    /// What ember-init reported, filled in by [`Vmm::wait`].
    pub ready: Option<(Instant, ReadyInfo)>,
    recorder: Option<Recorder>,
}

impl Vmm {
    /// Builds the VM described by `config` in `vm` and starts its vCPUs. A `scratch` file made
    /// ahead is its /tmp drive if it has the size asked for.
    pub fn start(config: &VmConfig, vm: EmptyVm, scratch: Option<ScratchFile>) -> Result<Vmm, Error> {
        config.validate()?;
        let mem_size = u64::from(config.memory_mib) << 20;
        let mem = create_memory(mem_size, config.hugepages)?;
        let entry = boot::load_kernel(&mem, &config.kernel)?;
        let vm = Vm::new(vm, mem)?;
        let (events_tx, events) = channel();

        let mut cmdline = boot::make_cmdline(&config.cmdline)?;
        let param = |cmdline: &mut linux_loader::cmdline::Cmdline, key: &str, value: &str| {
            cmdline.insert(key, value).map_err(|e| boot::Error::Cmdline(e.to_string()))
        };
        // Block devices become /dev/vda, vdb, ... in the order they are announced.
        let mut kinds = Vec::new();
        let mut drives = 0u8;
        let mut drive_name = || {
            drives += 1;
            format!("/dev/vd{}", (b'a' + drives - 1) as char)
        };
        if let Some(rootfs) = &config.rootfs {
            kinds.push(DeviceKind::Image { path: rootfs.clone(), id: "ember-rootfs".into() });
            drive_name();
        }
        if let Some(code) = &config.code {
            kinds.push(DeviceKind::Image { path: code.clone(), id: "ember-code".into() });
            param(&mut cmdline, ember_proto::cmdline::CODE_DRIVE, &drive_name())?;
        }
        if let Some(opt) = &config.opt {
            kinds.push(DeviceKind::Image { path: opt.clone(), id: "ember-opt".into() });
            param(&mut cmdline, ember_proto::cmdline::OPT_DRIVE, &drive_name())?;
        }
        if let Some(mib) = config.tmp_mib {
            kinds.push(DeviceKind::Scratch { mib, id: "ember-tmp".into() });
            param(&mut cmdline, ember_proto::cmdline::TMP_DRIVE, &drive_name())?;
        }
        if config.vsock_uds.is_some() {
            kinds.push(DeviceKind::Vsock);
            param(&mut cmdline, ember_proto::cmdline::VSOCK, "1")?;
        }
        let mut devices = Devices { scratch, ..Devices::default() };
        for kind in kinds {
            let (base, irq) = devices.attach(&vm, kind, &config.tmp_dir, config.vsock_uds.as_deref(), false)?;
            cmdline
                .add_virtio_mmio_device(layout::VIRTIO_MMIO_SIZE, vm_memory::GuestAddress(base), irq, None)
                .map_err(|e| boot::Error::Cmdline(e.to_string()))?;
        }
        boot::write_boot_params(vm.memory(), &cmdline, mem_size)?;
        mptable::setup(vm.memory(), config.vcpus)?;

        let (pio, console_tail) = legacy_devices(&vm, &config.console, &events_tx, None)?;
        let vcpus =
            (0..config.vcpus).map(|id| Vcpu::new(&vm, id, config.vcpus, entry)).collect::<Result<Vec<_>, _>>()?;
        Vmm::launch(vm, vcpus, devices, pio, console_tail, events_tx, events)
    }

    /// Builds a VM in `vm` from the snapshot in `config.snapshot_dir` and starts its vCPUs
    /// where they stopped. Guest memory is the snapshot's memory file mapped private; the drives are
    /// opened again from their paths (a fresh /tmp drive in `config.tmp_dir`), the vsock
    /// device listens on `config.vsock_uds` and tells the guest that its old connections are
    /// gone. A `scratch` file made ahead is its /tmp drive if it has the snapshot's size.
    pub fn restore(config: &RestoreConfig, vm: EmptyVm, scratch: Option<ScratchFile>) -> Result<Vmm, Error> {
        let (snap, snapshot_id): (VmSnapshot, _) =
            snapshot::read_state_and_id(&config.snapshot_dir.join(snapshot::STATE_FILE))?;
        let count = u8::try_from(snap.vcpus.len()).unwrap_or(0);
        validate_shape(snap.memory_mib, count)?;
        let mem_size = u64::from(snap.memory_mib) << 20;
        let memory_path = config.snapshot_dir.join(snapshot::MEMORY_FILE);
        let file = File::open(&memory_path).map_err(|source| snapshot::Error::Io { path: memory_path, source })?;
        let mem = vstate::vm::map_memory_file(&file, mem_size)?;
        let vm = Vm::new(vm, mem)?;
        vm.restore_state(&snap.vm)?;
        // The vCPUs (their LAPICs) before the devices: a device that raises its interrupt as
        // it is restored must find them in their final state, not have the interrupt
        // overwritten by a LAPIC state set after it.
        let vcpus = snap
            .vcpus
            .iter()
            .enumerate()
            .map(|(id, state)| Vcpu::restore(&vm, id as u8, count, state))
            .collect::<Result<Vec<_>, _>>()?;
        let recorder = if config.prefetch {
            let record_to = config.record_to.clone().unwrap_or_else(|| config.snapshot_dir.join(working_set::FILE));
            prefetch(&config.snapshot_dir, record_to, &vm, &vcpus[0], snapshot_id)
        } else {
            None
        };
        let (events_tx, events) = channel();

        let mut devices = Devices { scratch, ..Devices::default() };
        for saved in &snap.devices {
            devices.attach(&vm, saved.kind.clone(), &config.tmp_dir, config.vsock_uds.as_deref(), true)?;
            let transport = &devices.transports.last().expect("just attached").1;
            transport
                .lock()
                .map_err(|_| Error::Pause("device lock poisoned".into()))?
                .restore_state(&saved.transport)?;
        }
        let (pio, console_tail) = legacy_devices(&vm, &config.console, &events_tx, Some(&snap.serial))?;
        let mut vmm = Vmm::launch(vm, vcpus, devices, pio, console_tail, events_tx, events)?;
        let info = ReadyInfo { memory_mib: snap.memory_mib, vcpus: u32::from(count), exits: 0 };
        vmm.ready = Some((Instant::now(), info));
        vmm.recorder = recorder;
        Ok(vmm)
    }

    /// What records this VM's working set into its snapshot: for a VM restored (with
    /// prefetch) from a snapshot that had no valid working set.
    pub fn working_set_recorder(&self) -> Option<Recorder> {
        self.recorder.clone()
    }

    /// Starts the device event loop and the vCPU threads of a VM that is set up.
    fn launch(
        vm: Vm,
        vcpus: Vec<Vcpu>,
        devices: Devices,
        pio: PioDevices,
        console_tail: ConsoleTail,
        events_tx: Sender<VmEvent>,
        events: Receiver<VmEvent>,
    ) -> Result<Vmm, Error> {
        vstate::vcpu::install_kick_handler();
        // Binary stats need Linux 5.14; without them the exit counts read as 0.
        let exit_counters = vcpus.iter().filter_map(|v| Counter::open(v.fd(), "exits").ok()).collect();
        let ctx = Arc::new(ExitContext {
            pio,
            mmio: devices.mmio,
            events: events_tx.clone(),
            exit_counters,
            _mem: vm.memory().clone(),
            pause: AtomicBool::new(false),
            msr_indices: Arc::clone(vm.msr_indices()),
            save_gate: vstate::vcpu::SaveGate::default(),
        });
        let guest_ranges = guest_regions(&vm).iter().map(|r| (r.host, r.len)).collect();
        let stop_loop = EventFd::new(libc::EFD_NONBLOCK).map_err(os("eventfd"))?;
        let loop_stop = stop_loop.try_clone().map_err(os("eventfd"))?;
        let handlers = devices.handlers;
        let tx = events_tx.clone();
        let event_thread = thread::Builder::new()
            .name("ember-events".into())
            .spawn(move || match seccomp::install(seccomp::Thread::Events) {
                Ok(()) => event_loop::run(handlers, loop_stop, tx),
                Err(e) => {
                    let _ = tx.send(VmEvent::Error(e.to_string()));
                }
            })
            .map_err(os("spawn event loop"))?;
        let mut vcpu_threads = Vec::with_capacity(vcpus.len());
        for vcpu in vcpus {
            let ctx = ctx.clone();
            let handle = thread::Builder::new()
                .name("ember-vcpu".into())
                .stack_size(256 << 10)
                .spawn(move || match seccomp::install(seccomp::Thread::Vcpu) {
                    Ok(()) => vcpu.run(ctx),
                    Err(e) => {
                        let _ = ctx.events.send(VmEvent::Error(e.to_string()));
                    }
                })
                .map_err(os("spawn vCPU thread"))?;
            vcpu_threads.push(handle);
        }
        Ok(Vmm {
            vm,
            exits: ctx,
            events,
            console_tail,
            guest_ranges,
            transports: devices.transports,
            event_loop: Some((stop_loop, event_thread)),
            vcpu_threads,
            events_tx,
            ready: None,
            recorder: None,
        })
    }

    /// A way for another thread to reach [`Vmm::wait`]: a [`VmEvent::SnapshotRequested`] sent
    /// here makes it return [`Outcome::SnapshotRequested`].
    pub fn controller(&self) -> Sender<VmEvent> {
        self.events_tx.clone()
    }

    /// Pauses the VM for good and writes its snapshot into `dir` (created if missing): the
    /// state file and the memory file. The VM does not run again in this process; restore
    /// the snapshot to run it. Returns the bytes of memory written (pages not all zeros).
    pub fn snapshot(&mut self, dir: &Path) -> Result<u64, Error> {
        std::fs::create_dir_all(dir).map_err(|source| snapshot::Error::Io { path: dir.to_owned(), source })?;
        // The devices first, so that nothing raises an interrupt or touches a ring after the
        // vCPUs' state is read. A notification the guest writes meanwhile is not lost: a
        // restore processes every queue once.
        if let Some((stop, thread)) = self.event_loop.take() {
            stop.write(1).map_err(os("stop the event loop"))?;
            thread.join().map_err(|_| Error::Pause("the event loop panicked".into()))?;
        }
        let vcpus = self.pause_vcpus()?;
        let vm = self.vm.save_state()?;
        let devices = self
            .transports
            .iter()
            .map(|(kind, t)| {
                let t = t.lock().map_err(|_| Error::Pause("device lock poisoned".into()))?;
                Ok(DeviceState { kind: kind.clone(), transport: t.save_state() })
            })
            .collect::<Result<Vec<_>, Error>>()?;
        let serial = self.exits.pio.serial_state().ok_or_else(|| Error::Pause("serial lock poisoned".into()))?;
        let memory_mib = (self.guest_ranges.iter().map(|&(_, len)| len).sum::<u64>() >> 20) as u32;
        let snap = VmSnapshot { memory_mib, vcpus, vm, devices, serial };
        let regions: Vec<&[u8]> = self
            .guest_ranges
            .iter()
            // SAFETY: each range is a live guest RAM mapping this Vmm keeps; every vCPU is out of
            // KVM_RUN for good and the event loop has returned, so nothing writes it meanwhile.
            .map(|&(host, len)| unsafe { std::slice::from_raw_parts(host as *const u8, len as usize) })
            .collect();
        let written = snapshot::write_memory(&dir.join(snapshot::MEMORY_FILE), &regions)?;
        // The state file last: a snapshot directory with a state file is complete.
        snapshot::write_state(&dir.join(snapshot::STATE_FILE), &snap)?;
        Ok(written)
    }

    /// Stops every vCPU out of KVM_RUN, then (all stopped: see [`vstate::vcpu`]) collects
    /// their states, in id order.
    fn pause_vcpus(&mut self) -> Result<Vec<VcpuState>, Error> {
        // However this ends, no vCPU thread is left waiting at the gate.
        struct Open<'a>(&'a vstate::vcpu::SaveGate);
        impl Drop for Open<'_> {
            fn drop(&mut self) {
                self.0.open();
            }
        }
        let exits = Arc::clone(&self.exits);
        let _open = Open(&exits.save_gate);
        exits.pause.store(true, Ordering::Release);
        let count = self.vcpu_threads.len();
        let mut stopped = vec![false; count];
        let mut states: Vec<Option<VcpuState>> = (0..count).map(|_| None).collect();
        let deadline = Instant::now() + PAUSE_TIMEOUT;
        while states.iter().any(Option::is_none) {
            if Instant::now() > deadline {
                return Err(Error::Pause(format!("the vCPUs did not stop within {PAUSE_TIMEOUT:?}")));
            }
            // A kick can land just before a thread enters KVM_RUN and be lost: kick again until
            // every thread has stopped.
            for (thread, _) in self.vcpu_threads.iter().zip(&stopped).filter(|(_, &stopped)| !stopped) {
                // SAFETY: the pthread_t of a thread this Vmm spawned and never joined, so it is
                // valid; the signal's handler does nothing.
                unsafe { libc::pthread_kill(thread.as_pthread_t(), vstate::vcpu::kick_signal()) };
            }
            match self.events.recv_timeout(Duration::from_millis(1)) {
                Ok(VmEvent::Stopped { id }) => {
                    if let Some(s) = stopped.get_mut(usize::from(id)) {
                        *s = true;
                    }
                    if stopped.iter().all(|&s| s) {
                        exits.save_gate.open();
                    }
                }
                Ok(VmEvent::Paused { id, state }) => {
                    let state = state.map_err(Error::Pause)?;
                    if let Some(slot) = states.get_mut(usize::from(id)) {
                        *slot = Some(*state);
                    }
                }
                Ok(VmEvent::Status { .. } | VmEvent::SnapshotRequested(_)) | Err(RecvTimeoutError::Timeout) => {}
                Ok(VmEvent::Reset) => return Err(Error::Pause("the guest reset while pausing".into())),
                Ok(VmEvent::Crash(why) | VmEvent::Error(why)) => return Err(Error::Pause(why)),
                Err(RecvTimeoutError::Disconnected) => return Err(Error::Pause("all VM threads ended".into())),
            }
        }
        Ok(states.into_iter().flatten().collect())
    }

    /// Waits for the run to end. With `until_ready` it ends as soon as ember-init reports
    /// ready. ember-init must report ready within `boot_timeout`.
    pub fn wait(&mut self, until_ready: bool, boot_timeout: Duration, started: Instant) -> Outcome {
        let deadline = started + boot_timeout;
        let mut info = ReadyInfo::default();
        loop {
            let event = if self.ready.is_none() {
                match self.events.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                    Ok(e) => e,
                    Err(RecvTimeoutError::Timeout) => return Outcome::BootTimeout(boot_timeout),
                    Err(RecvTimeoutError::Disconnected) => return Outcome::VmmError("all VM threads ended".into()),
                }
            } else {
                match self.events.recv() {
                    Ok(e) => e,
                    Err(_) => return Outcome::VmmError("all VM threads ended".into()),
                }
            };
            match event {
                VmEvent::Status { status: Status::MemoryMib(m), .. } => info.memory_mib = m,
                VmEvent::Status { status: Status::Vcpus(n), .. } => info.vcpus = n,
                VmEvent::Status { status: Status::Ready, at, exits } => {
                    info.exits = exits;
                    self.ready = Some((at, info));
                    if until_ready {
                        return Outcome::Ready;
                    }
                }
                VmEvent::Status { status: Status::PowerOff(code), .. } => return Outcome::PoweredOff(code),
                VmEvent::Reset => return Outcome::Crashed(self.crash_reason("the guest reset without powering off")),
                VmEvent::Crash(why) => return Outcome::Crashed(self.crash_reason(&why)),
                VmEvent::Error(why) => return Outcome::VmmError(why),
                VmEvent::Paused { .. } | VmEvent::Stopped { .. } => {
                    return Outcome::VmmError("a vCPU paused unasked".into())
                }
                VmEvent::SnapshotRequested(dir) => return Outcome::SnapshotRequested(dir),
            }
        }
    }

    /// Explains a crash, with the kernel's panic line when the console shows one.
    fn crash_reason(&self, what: &str) -> String {
        let tail = self.console_tail();
        match tail.lines().find(|l| l.contains("Kernel panic")) {
            Some(line) => format!("guest kernel panic: {}", line.trim()),
            None => match tail.lines().rev().find(|l| !l.trim().is_empty()) {
                Some(last) => format!("guest crashed: {what} (last console line: {})", last.trim()),
                None => format!("guest crashed: {what}"),
            },
        }
    }

    /// Total VM exits of all vCPUs so far (0 when KVM has no binary stats).
    pub fn total_exits(&self) -> u64 {
        self.exits.total_exits()
    }

    /// The last bytes the guest wrote to its console.
    pub fn console_tail(&self) -> String {
        let tail = self.console_tail.lock().map(|t| t.iter().copied().collect::<Vec<u8>>()).unwrap_or_default();
        String::from_utf8_lossy(&tail).into_owned()
    }

    /// Resident memory of this process outside guest RAM, in KiB (from /proc/self/smaps).
    pub fn vmm_overhead_kib(&self) -> std::io::Result<u64> {
        let smaps = std::fs::read_to_string("/proc/self/smaps")?;
        let mut total = 0;
        let mut in_guest = false;
        for line in smaps.lines() {
            let mut fields = line.split_whitespace();
            let Some(first) = fields.next() else { continue };
            if let Some((start, _)) = first.split_once('-').filter(|_| !first.ends_with(':')) {
                let start = u64::from_str_radix(start, 16).unwrap_or(0);
                in_guest = self.guest_ranges.iter().any(|&(s, len)| start >= s && start < s + len);
            } else if first == "Rss:" && !in_guest {
                total += fields.next().and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            }
        }
        Ok(total)
    }
}

/// The virtio devices being wired onto a VM, in bus order.
#[derive(Default)]
struct Devices {
    mmio: MmioBus,
    handlers: Vec<event_loop::Handler>,
    transports: Vec<(DeviceKind, Arc<Mutex<MmioTransport>>)>,
    /// A /tmp drive file made ahead, taken by a scratch drive of its size.
    scratch: Option<ScratchFile>,
}

impl Devices {
    /// Opens the device `kind` describes and wires it onto the VM in one place: its MMIO
    /// window (the next free one), the ioeventfd of each queue's notify register, its irqfd,
    /// and its host-side fd in the event loop. With `kick` every queue starts notified, so
    /// that a restored device looks at rings the guest may have filled just before the
    /// snapshot. Returns the window's base and the IRQ line.
    fn attach(
        &mut self,
        vm: &Vm,
        kind: DeviceKind,
        tmp_dir: &Path,
        vsock_uds: Option<&Path>,
        kick: bool,
    ) -> Result<(u64, u32), Error> {
        let device: Arc<Mutex<dyn VirtioDevice>> = match &kind {
            DeviceKind::Image { path, id } => Arc::new(Mutex::new(Block::open(path, true, id)?)),
            DeviceKind::Scratch { mib, id } => Arc::new(Mutex::new(match self.scratch.take() {
                Some(made) if made.mib() == *mib => Block::from_scratch(made, id),
                _ => Block::scratch(tmp_dir, *mib, id)?,
            })),
            DeviceKind::Vsock => {
                let uds = vsock_uds.ok_or_else(|| Error::InvalidConfig("the VM needs a vsock socket path".into()))?;
                Arc::new(Mutex::new(Vsock::new(GUEST_CID, uds)?))
            }
        };
        let index = self.transports.len() as u32;
        let base = layout::VIRTIO_MMIO_START + u64::from(index) * layout::VIRTIO_MMIO_SIZE;
        let irq = layout::virtio_irq(index);
        let irqfd = EventFd::new(libc::EFD_NONBLOCK).map_err(os("eventfd"))?;
        vm.register_irqfd(&irqfd, irq)?;
        let interrupt = Arc::new(Interrupt::new(irqfd));
        let queues = device.lock().map(|d| d.queue_max_sizes().len()).unwrap_or(0);
        for queue in 0..queues {
            let notify = EventFd::new(libc::EFD_NONBLOCK).map_err(os("eventfd"))?;
            vm.register_ioevent(&notify, base + REG_QUEUE_NOTIFY, queue as u32)?;
            if kick {
                notify.write(1).map_err(os("eventfd"))?;
            }
            let source = event_loop::Source::Queue { notify, index: queue };
            self.handlers.push(event_loop::Handler { source, device: device.clone(), interrupt: interrupt.clone() });
        }
        let backend = device.lock().ok().and_then(|d| d.backend_fd());
        if let Some(fd) = backend {
            let source = event_loop::Source::Backend(fd);
            self.handlers.push(event_loop::Handler { source, device: device.clone(), interrupt: interrupt.clone() });
        }
        let transport = Arc::new(Mutex::new(MmioTransport::new(device, interrupt, vm.memory().clone())));
        self.mmio.insert(base, layout::VIRTIO_MMIO_SIZE, transport.clone());
        self.transports.push((kind, transport));
        Ok((base, irq))
    }
}

/// Each region of `vm`'s guest memory: where it is in the guest and in this process.
fn guest_regions(vm: &Vm) -> Vec<working_set::Region> {
    vm.memory()
        .iter()
        .filter_map(|r| {
            let host = vm.memory().get_host_address(r.start_addr()).ok()? as u64;
            Some(working_set::Region { gpa: r.start_addr().0, host, len: r.len() })
        })
        .collect()
}

/// Whether this host's KVM has `KVM_PRE_FAULT_MEMORY` (Linux 6.10), for the agent and the
/// bench to say (a VMM asks its own VM: [`Vm::has_pre_fault`]).
pub fn kvm_pre_faults() -> bool {
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| {
        kvm_ioctls::Kvm::new()
            .is_ok_and(|kvm| kvm.check_extension_raw(kvm_bindings::KVM_CAP_PRE_FAULT_MEMORY.into()) > 0)
    })
}

/// Loads the working set of the snapshot in `dir` into `vm` before its guest runs: private
/// copies of what the guest wrote into the host mapping first, then, where KVM has it, every
/// page into KVM's own page tables through `vcpu` (which maps what was read from the page cache
/// itself); where KVM has no pre-fault, the read pages go into the host mapping too. A working
/// set that is missing, damaged or another snapshot's is skipped with a line in the log (the
/// agent's), and then the returned [`Recorder`] records one.
fn prefetch(dir: &Path, record_to: PathBuf, vm: &Vm, vcpu: &Vcpu, snapshot: [u8; 32]) -> Option<Recorder> {
    let regions = guest_regions(vm);
    let mem_end = regions.iter().map(|r| r.gpa + r.len).max().unwrap_or(0);
    let path = dir.join(working_set::FILE);
    let recorder = Recorder { regions, path: record_to, snapshot };
    let ws = match working_set::WorkingSet::read(&path, &snapshot, mem_end) {
        Ok(ws) => ws,
        Err(working_set::Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            eprintln!("ember: restore: {}: no working set yet; this instance records one", dir.display());
            return Some(recorder);
        }
        Err(e) => {
            eprintln!("ember: restore: working set ignored, this instance records another: {e}");
            return Some(recorder);
        }
    };
    // Where KVM pre-faults, it faults in the host pages of what the guest read itself: only the
    // written ones need loading first, as private copies (a pre-fault is a read).
    let pre_fault = vm.has_pre_fault();
    if let Err(e) = ws.populate(&recorder.regions, !pre_fault) {
        eprintln!("ember: restore: {}: loading the working set failed: {e}", path.display());
        return None;
    }
    if pre_fault {
        for (gpa, len) in ws.spans() {
            if let Err(e) = vcpu.pre_fault(gpa, len) {
                eprintln!("ember: restore: KVM_PRE_FAULT_MEMORY at {gpa:#x}: {e}");
                break;
            }
        }
    }
    None
}

/// COM1 (writing to `console`, keeping its tail), the i8042 and the status port, with COM1's
/// IRQ wired. Returns them and the console's tail.
fn legacy_devices(
    vm: &Vm,
    console: &Console,
    events: &Sender<VmEvent>,
    serial: Option<&SerialSnapshot>,
) -> Result<(PioDevices, ConsoleTail), Error> {
    let console_tail = Arc::new(Mutex::new(VecDeque::new()));
    let out: Option<Box<dyn std::io::Write + Send>> = match console {
        Console::Off => None,
        Console::Stdout => Some(Box::new(std::io::stdout())),
        Console::File(path) => Some(Box::new(
            File::create(path).map_err(|source| Error::Console { path: path.display().to_string(), source })?,
        )),
    };
    let serial_irq = EventFd::new(libc::EFD_NONBLOCK).map_err(os("eventfd"))?;
    vm.register_irqfd(&serial_irq, layout::SERIAL_IRQ)?;
    let pio = PioDevices::new(serial_irq, ConsoleSink::new(out, console_tail.clone()), events.clone(), serial)
        .map_err(os("serial"))?;
    Ok((pio, console_tail))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(memory_mib: u32, vcpus: u8) -> VmConfig {
        VmConfig {
            memory_mib,
            vcpus,
            kernel: "vmlinux".into(),
            rootfs: None,
            cmdline: DEFAULT_CMDLINE.into(),
            console: Console::Off,
            hugepages: false,
            code: None,
            opt: None,
            tmp_mib: None,
            tmp_dir: std::env::temp_dir(),
            vsock_uds: None,
        }
    }

    #[test]
    fn limits() {
        assert!(config(128, 1).validate().is_ok());
        assert!(config(10240, 32).validate().is_ok());
        for (m, v) in [(127, 1), (10241, 1), (128, 0), (128, 33)] {
            let err = config(m, v).validate().unwrap_err().to_string();
            assert!(err.contains("must be between"), "{err}");
        }
        for tmp in [511, 10241] {
            let err = VmConfig { tmp_mib: Some(tmp), ..config(128, 1) }.validate().unwrap_err().to_string();
            assert!(err.contains("/tmp must be between 512 and 10240 MiB"), "{err}");
        }
    }
}
