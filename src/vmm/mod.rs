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
pub mod process;
pub mod vstate;

use std::collections::VecDeque;
use std::fs::File;
use std::path::PathBuf;
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use ember_proto::Status;
use kvm_ioctls::Kvm;
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use arch::{boot, layout, mptable};
use devices::legacy::{ConsoleSink, PioDevices};
use devices::virtio::block::{Block, MAX_SCRATCH_MIB, MIN_SCRATCH_MIB};
use devices::virtio::mmio::{MmioTransport, REG_QUEUE_NOTIFY};
use devices::virtio::vsock::Vsock;
use devices::virtio::{Interrupt, VirtioDevice};
use devices::MmioBus;
use vstate::stats::Counter;
use vstate::vcpu::{ExitContext, Vcpu};
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
/// RNG is ready without waiting for entropy.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 quiet reboot=k panic=-1 io_delay=none \
     no_timer_check random.trust_cpu=on root=/dev/vda ro rootfstype=ext4";

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
        if !(MIN_MEMORY_MIB..=MAX_MEMORY_MIB).contains(&self.memory_mib) {
            return Err(Error::InvalidConfig(format!(
                "memory must be between {MIN_MEMORY_MIB} and {MAX_MEMORY_MIB} MiB, not {}",
                self.memory_mib
            )));
        }
        if self.vcpus == 0 || self.vcpus > mptable::MAX_CPUS {
            return Err(Error::InvalidConfig(format!(
                "vCPUs must be between 1 and {}, not {}",
                mptable::MAX_CPUS,
                self.vcpus
            )));
        }
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

/// A running microVM.
pub struct Vmm {
    _vm: Vm,
    exits: Arc<ExitContext>,
    events: Receiver<VmEvent>,
    console_tail: Arc<Mutex<VecDeque<u8>>>,
    guest_ranges: Vec<(u64, u64)>,
    /// What ember-init reported, filled in by [`Vmm::wait`].
    pub ready: Option<(Instant, ReadyInfo)>,
}

impl Vmm {
    /// Builds the VM described by `config` and starts its vCPUs.
    pub fn start(config: &VmConfig) -> Result<Vmm, Error> {
        config.validate()?;
        let mem_size = u64::from(config.memory_mib) << 20;
        let mem = create_memory(mem_size, config.hugepages)?;
        let entry = boot::load_kernel(&mem, &config.kernel)?;
        let kvm = Kvm::new().map_err(vstate::vm::Error::OpenKvm)?;
        let vm = Vm::new(&kvm, mem)?;
        let (events_tx, events) = channel();

        let mut cmdline = boot::make_cmdline(&config.cmdline)?;
        let mut mmio = MmioBus::default();
        let mut handlers = Vec::new();
        let mut virtio: Vec<Arc<Mutex<dyn VirtioDevice>>> = Vec::new();
        // Block devices become /dev/vda, vdb, ... in the order they are announced.
        let mut drive_name = {
            let mut next = b'a';
            move || {
                let name = format!("/dev/vd{}", next as char);
                next += 1;
                name
            }
        };
        let param = |cmdline: &mut linux_loader::cmdline::Cmdline, key: &str, value: &str| {
            cmdline.insert(key, value).map_err(|e| boot::Error::Cmdline(e.to_string()))
        };
        if let Some(rootfs) = &config.rootfs {
            virtio.push(Arc::new(Mutex::new(Block::open(rootfs, true, "ember-rootfs")?)));
            drive_name();
        }
        if let Some(code) = &config.code {
            virtio.push(Arc::new(Mutex::new(Block::open(code, true, "ember-code")?)));
            param(&mut cmdline, ember_proto::cmdline::CODE_DRIVE, &drive_name())?;
        }
        if let Some(mib) = config.tmp_mib {
            virtio.push(Arc::new(Mutex::new(Block::scratch(&config.tmp_dir, mib, "ember-tmp")?)));
            param(&mut cmdline, ember_proto::cmdline::TMP_DRIVE, &drive_name())?;
        }
        if let Some(uds) = &config.vsock_uds {
            virtio.push(Arc::new(Mutex::new(Vsock::new(GUEST_CID, uds)?)));
            param(&mut cmdline, ember_proto::cmdline::VSOCK, "1")?;
        }
        for (i, device) in virtio.into_iter().enumerate() {
            let base = layout::VIRTIO_MMIO_START + i as u64 * layout::VIRTIO_MMIO_SIZE;
            let irq = layout::virtio_irq(i as u32);
            attach_virtio(&vm, &mut mmio, &mut handlers, device, base, irq)?;
            cmdline
                .add_virtio_mmio_device(layout::VIRTIO_MMIO_SIZE, vm_memory::GuestAddress(base), irq, None)
                .map_err(|e| boot::Error::Cmdline(e.to_string()))?;
        }
        boot::write_boot_params(vm.memory(), &cmdline, mem_size)?;
        mptable::setup(vm.memory(), config.vcpus)?;

        let console_tail = Arc::new(Mutex::new(VecDeque::new()));
        let out: Option<Box<dyn std::io::Write + Send>> = match &config.console {
            Console::Off => None,
            Console::Stdout => Some(Box::new(std::io::stdout())),
            Console::File(path) => Some(Box::new(
                File::create(path).map_err(|source| Error::Console { path: path.display().to_string(), source })?,
            )),
        };
        let serial_irq = EventFd::new(libc::EFD_NONBLOCK).map_err(os("eventfd"))?;
        vm.register_irqfd(&serial_irq, layout::SERIAL_IRQ)?;
        let pio = PioDevices::new(serial_irq, ConsoleSink::new(out, console_tail.clone()), events_tx.clone());

        let vcpus =
            (0..config.vcpus).map(|id| Vcpu::new(&vm, id, config.vcpus, entry)).collect::<Result<Vec<_>, _>>()?;
        // Binary stats need Linux 5.14; without them the exit counts read as 0.
        let exit_counters = vcpus.iter().filter_map(|v| Counter::open(v.fd(), "exits").ok()).collect();
        let ctx =
            Arc::new(ExitContext { pio, mmio, events: events_tx.clone(), exit_counters, _mem: vm.memory().clone() });

        let guest_ranges = vm
            .memory()
            .iter()
            .filter_map(|r| vm.memory().get_host_address(r.start_addr()).ok().map(|h| (h as u64, r.len())))
            .collect();
        if !handlers.is_empty() {
            let tx = events_tx.clone();
            thread::Builder::new()
                .name("ember-events".into())
                .spawn(move || event_loop::run(handlers, tx))
                .map_err(os("spawn event loop"))?;
        }
        for vcpu in vcpus {
            let ctx = ctx.clone();
            thread::Builder::new()
                .name("ember-vcpu".into())
                .stack_size(256 << 10)
                .spawn(move || vcpu.run(ctx))
                .map_err(os("spawn vCPU thread"))?;
        }
        Ok(Vmm { _vm: vm, exits: ctx, events, console_tail, guest_ranges, ready: None })
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

/// Wires a virtio device onto the VM in one place: its MMIO window, the ioeventfd of each
/// queue's notify register, its irqfd, and its host-side fd in the event loop.
fn attach_virtio(
    vm: &Vm,
    mmio: &mut MmioBus,
    handlers: &mut Vec<event_loop::Handler>,
    device: Arc<Mutex<dyn VirtioDevice>>,
    base: u64,
    irq: u32,
) -> Result<(), Error> {
    let irqfd = EventFd::new(libc::EFD_NONBLOCK).map_err(os("eventfd"))?;
    vm.register_irqfd(&irqfd, irq)?;
    let interrupt = Arc::new(Interrupt::new(irqfd));
    let queues = device.lock().map(|d| d.queue_max_sizes().len()).unwrap_or(0);
    for queue in 0..queues {
        let notify = EventFd::new(libc::EFD_NONBLOCK).map_err(os("eventfd"))?;
        vm.register_ioevent(&notify, base + REG_QUEUE_NOTIFY, queue as u32)?;
        let source = event_loop::Source::Queue { notify, index: queue };
        handlers.push(event_loop::Handler { source, device: device.clone(), interrupt: interrupt.clone() });
    }
    let backend = device.lock().ok().and_then(|d| d.backend_fd());
    if let Some(fd) = backend {
        let source = event_loop::Source::Backend(fd);
        handlers.push(event_loop::Handler { source, device: device.clone(), interrupt: interrupt.clone() });
    }
    let transport = MmioTransport::new(device, interrupt, vm.memory().clone());
    mmio.insert(base, layout::VIRTIO_MMIO_SIZE, Arc::new(Mutex::new(transport)));
    Ok(())
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
