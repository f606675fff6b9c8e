//! A vCPU: its boot configuration and the thread that runs it.
//!
//! Each vCPU runs `KVM_RUN` in a thread of its own and handles the exits that reach userspace:
//! port I/O (console, i8042, the status port) and MMIO (virtio-mmio registers). What the
//! guest does that ends the VM (power-off, reset, a crash) is reported to the VMM's main thread
//! as a [`VmEvent`]; the vCPU thread then stops. The main thread never touches vCPU state.

use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::Instant;

use kvm_bindings::{KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN};
use kvm_ioctls::{VcpuExit, VcpuFd};
use vm_memory::{GuestAddress, GuestMemoryMmap};

use super::stats::Counter;
use super::vm::Vm;
use crate::vmm::arch::{cpuid, regs};
use crate::vmm::devices::legacy::PioDevices;
use crate::vmm::devices::MmioBus;
use crate::vmm::VmEvent;

/// Errors configuring a vCPU.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A KVM vCPU ioctl failed.
    #[error("vCPU {id}: {what}: {source}")]
    Kvm {
        /// The vCPU.
        id: u8,
        /// Which call.
        what: &'static str,
        /// Why.
        source: kvm_ioctls::Error,
    },
    /// The boot register setup failed.
    #[error("vCPU {0}: {1}")]
    Regs(u8, regs::Error),
}

/// What the vCPU threads of one VM share: the devices they dispatch exits to, where they
/// report, and every vCPU's exit counter (read all at once when the guest reports status).
pub struct ExitContext {
    /// Port-I/O devices.
    pub pio: PioDevices,
    /// virtio-mmio windows.
    pub mmio: MmioBus,
    /// The VMM main thread's inbox.
    pub events: Sender<VmEvent>,
    /// Exit counters of all vCPUs; empty when the kernel has no binary stats.
    pub exit_counters: Vec<Counter>,
    /// Keeps guest memory mapped for as long as any vCPU thread runs.
    pub _mem: GuestMemoryMmap,
}

impl ExitContext {
    /// Total VM exits of all vCPUs so far.
    pub fn total_exits(&self) -> u64 {
        self.exit_counters.iter().filter_map(|c| c.read().ok()).sum()
    }
}

/// One vCPU, configured and ready to run.
pub struct Vcpu {
    id: u8,
    fd: VcpuFd,
}

impl Vcpu {
    /// Creates vCPU `id` of `count` and sets its CPUID, MSRs and LAPIC; the boot vCPU (0) also
    /// gets the 64-bit entry state at `entry`. Other vCPUs wait for the boot vCPU's SIPI.
    pub fn new(vm: &Vm, id: u8, count: u8, entry: GuestAddress) -> Result<Self, Error> {
        let err = |what| move |source| Error::Kvm { id, what, source };
        let fd = vm.fd().create_vcpu(u64::from(id)).map_err(err("KVM_CREATE_VCPU"))?;
        fd.set_cpuid2(&cpuid::for_vcpu(vm.supported_cpuid(), id, count)).map_err(err("KVM_SET_CPUID2"))?;
        let msrs = regs::boot_msrs().map_err(|e| Error::Regs(id, e))?;
        fd.set_msrs(&msrs).map_err(err("KVM_SET_MSRS"))?;
        if id == 0 {
            fd.set_regs(&regs::boot_regs(entry)).map_err(err("KVM_SET_REGS"))?;
            let sregs = fd.get_sregs().map_err(err("KVM_GET_SREGS"))?;
            let sregs = regs::setup_long_mode(vm.memory(), sregs).map_err(|e| Error::Regs(id, e))?;
            fd.set_sregs(&sregs).map_err(err("KVM_SET_SREGS"))?;
            fd.set_fpu(&regs::boot_fpu()).map_err(err("KVM_SET_FPU"))?;
        }
        let mut lapic = fd.get_lapic().map_err(err("KVM_GET_LAPIC"))?;
        regs::set_lint(&mut lapic);
        fd.set_lapic(&lapic).map_err(err("KVM_SET_LAPIC"))?;
        Ok(Vcpu { id, fd })
    }

    /// The vCPU fd (for its statistics).
    pub fn fd(&self) -> &VcpuFd {
        &self.fd
    }

    /// Runs the vCPU until the guest ends the VM or KVM fails; reports why on `ctx.events`.
    pub fn run(mut self, ctx: Arc<ExitContext>) {
        let id = self.id;
        let end = loop {
            match self.fd.run() {
                Ok(VcpuExit::IoIn(port, data)) => ctx.pio.read(port, data),
                Ok(VcpuExit::IoOut(port, data)) => {
                    if let Some(status) = ctx.pio.write(port, data) {
                        let at = Instant::now();
                        let exits = ctx.total_exits();
                        let _ = ctx.events.send(VmEvent::Status { status, at, exits });
                    }
                }
                Ok(VcpuExit::MmioRead(addr, data)) => ctx.mmio.read(addr, data),
                Ok(VcpuExit::MmioWrite(addr, data)) => ctx.mmio.write(addr, data),
                Ok(VcpuExit::Shutdown) => break VmEvent::Crash(format!("vCPU {id}: triple fault")),
                Ok(VcpuExit::SystemEvent(kind, _)) => match kind {
                    KVM_SYSTEM_EVENT_RESET | KVM_SYSTEM_EVENT_SHUTDOWN => break VmEvent::Reset,
                    KVM_SYSTEM_EVENT_CRASH => break VmEvent::Crash(format!("vCPU {id}: guest crash event")),
                    other => break VmEvent::Crash(format!("vCPU {id}: system event {other}")),
                },
                Ok(VcpuExit::Hlt) => break VmEvent::Crash(format!("vCPU {id}: halted with interrupts off")),
                Ok(VcpuExit::InternalError) => break VmEvent::Crash(format!("vCPU {id}: KVM internal error")),
                Ok(VcpuExit::FailEntry(reason, cpu)) => {
                    break VmEvent::Crash(format!("vCPU {id}: VM entry failed (reason {reason:#x}, cpu {cpu})"))
                }
                Ok(VcpuExit::Intr) => {}
                Ok(other) => break VmEvent::Crash(format!("vCPU {id}: unexpected exit {other:?}")),
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {}
                Err(e) => break VmEvent::Error(format!("vCPU {id}: KVM_RUN: {e}")),
            }
        };
        let _ = ctx.events.send(end);
    }
}
