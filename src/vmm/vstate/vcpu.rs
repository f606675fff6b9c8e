//! A vCPU: its boot configuration and the thread that runs it.
//!
//! Each vCPU runs `KVM_RUN` in a thread of its own and handles the exits that reach userspace:
//! port I/O (console, i8042, the status port) and MMIO (virtio-mmio registers). What the
//! guest does that ends the VM (power-off, reset, a crash) is reported to the VMM's main thread
//! as a [`VmEvent`]; the vCPU thread then stops. The main thread never touches vCPU state.
//!
//! Pausing for a snapshot: the main thread sets [`ExitContext::pause`] and kicks each vCPU
//! thread with [`KICK_SIGNAL`] until it answers. The vCPU thread, out of `KVM_RUN`, enters
//! it once more with `immediate_exit` set, which completes an I/O exit still in flight (an
//! `out` whose instruction pointer has not moved yet, an MMIO read whose data KVM has not
//! delivered) without running the guest, says [`VmEvent::Stopped`] and waits at
//! [`ExitContext::save_gate`]. Only once every vCPU has stopped does the main thread open the
//! gate; each then reads its state ([`VcpuState`]) and sends it as [`VmEvent::Paused`]. Two
//! phases, because a vCPU still running can send an IPI into the LAPIC of one already saved:
//! that interrupt would be missing from the snapshot, and the restored guest would wait for
//! it for ever. A restore builds the vCPU from that state with [`Vcpu::restore`].

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::Instant;

use kvm_bindings::{
    kvm_debugregs, kvm_lapic_state, kvm_mp_state, kvm_msr_entry, kvm_regs, kvm_sregs, kvm_vcpu_events, kvm_xcrs,
    kvm_xsave, Msrs, KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN,
};
use kvm_ioctls::{VcpuExit, VcpuFd};
use serde::{Deserialize, Serialize};
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
    /// A saved state does not fit this vCPU or host.
    #[error("vCPU {id}: {why}")]
    State {
        /// The vCPU.
        id: u8,
        /// What does not fit.
        why: String,
    },
}

/// The signal that kicks a vCPU thread out of `KVM_RUN` (its handler does nothing; the
/// interrupted ioctl returns EINTR).
pub fn kick_signal() -> libc::c_int {
    libc::SIGRTMIN()
}

extern "C" fn on_kick(_: libc::c_int) {}

/// Installs the do-nothing handler for [`kick_signal`] (once per process; later calls are free).
pub fn install_kick_handler() {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        // SAFETY: a zeroed sigaction is valid; the handler is an extern "C" fn that touches
        // nothing, so it is async-signal-safe. No SA_RESTART: KVM_RUN must return EINTR.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_kick as extern "C" fn(libc::c_int) as usize;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(kick_signal(), &action, std::ptr::null_mut());
        }
    });
}

/// A vCPU's architectural state, everything KVM keeps for it.
#[derive(Debug, Serialize, Deserialize)]
pub struct VcpuState {
    /// General-purpose registers.
    pub regs: kvm_regs,
    /// Segment, control and descriptor-table registers.
    pub sregs: kvm_sregs,
    /// The XSAVE area (legacy 4 KiB layout; the x87 and SSE state included).
    pub xsave: kvm_xsave,
    /// Extended control registers.
    pub xcrs: kvm_xcrs,
    /// The local APIC.
    pub lapic: kvm_lapic_state,
    /// Every MSR KVM lists as saved across migration that this vCPU could read.
    pub msrs: Vec<kvm_msr_entry>,
    /// Debug registers.
    pub debugregs: kvm_debugregs,
    /// Pending exceptions, interrupts, NMIs and SMIs.
    pub events: kvm_vcpu_events,
    /// Running, halted, waiting for SIPI.
    pub mp_state: kvm_mp_state,
}

/// Refuses hosts whose XSAVE area outgrows the legacy 4 KiB `kvm_xsave` (AMX tiles), which
/// KVM_SET_XSAVE would read past.
fn check_xsave_fits(vm: &Vm, id: u8) -> Result<(), Error> {
    let size = vm.fd().check_extension_int(kvm_ioctls::Cap::Xsave2);
    if size > 4096 {
        return Err(Error::State { id, why: format!("the host's XSAVE area is {size} bytes, over 4 KiB") });
    }
    Ok(())
}

/// How many MSRs one KVM_GET_MSRS / KVM_SET_MSRS call carries.
const MSR_CHUNK: usize = 128;

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
    /// Set by the main thread to pause every vCPU for a snapshot.
    pub pause: AtomicBool,
    /// The MSRs a paused vCPU saves (KVM's list, read when the VM was created).
    pub msr_indices: Arc<[u32]>,
    /// Where stopped vCPUs wait until every vCPU has stopped (see the module docs).
    pub save_gate: SaveGate,
}

/// A gate that opens once and stays open.
#[derive(Default)]
pub struct SaveGate {
    open: Mutex<bool>,
    opened: Condvar,
}

impl SaveGate {
    /// Lets every waiting vCPU (and any that comes later) go on.
    pub fn open(&self) {
        *self.open.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.opened.notify_all();
    }

    fn wait(&self) {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        // A loop: kicks (signals) and spurious wake-ups end a wait early.
        while !*open {
            open = self.opened.wait(open).unwrap_or_else(|e| e.into_inner());
        }
    }
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

    /// Creates vCPU `id` of `count` in the state a snapshot saved.
    pub fn restore(vm: &Vm, id: u8, count: u8, state: &VcpuState) -> Result<Self, Error> {
        let err = |what| move |source| Error::Kvm { id, what, source };
        check_xsave_fits(vm, id)?;
        let fd = vm.fd().create_vcpu(u64::from(id)).map_err(err("KVM_CREATE_VCPU"))?;
        // The order KVM needs: CPUID before anything it shapes, the LAPIC before the MSRs that
        // point into it (TSC deadline), events last.
        fd.set_cpuid2(&cpuid::for_vcpu(vm.supported_cpuid(), id, count)).map_err(err("KVM_SET_CPUID2"))?;
        fd.set_mp_state(state.mp_state).map_err(err("KVM_SET_MP_STATE"))?;
        fd.set_regs(&state.regs).map_err(err("KVM_SET_REGS"))?;
        fd.set_sregs(&state.sregs).map_err(err("KVM_SET_SREGS"))?;
        // SAFETY: check_xsave_fits made sure this host's XSAVE area is no larger than the
        // 4 KiB kvm_xsave, so KVM reads nothing past the struct.
        unsafe { fd.set_xsave(&state.xsave) }.map_err(err("KVM_SET_XSAVE"))?;
        fd.set_xcrs(&state.xcrs).map_err(err("KVM_SET_XCRS"))?;
        fd.set_debug_regs(&state.debugregs).map_err(err("KVM_SET_DEBUGREGS"))?;
        fd.set_lapic(&state.lapic).map_err(err("KVM_SET_LAPIC"))?;
        for chunk in state.msrs.chunks(MSR_CHUNK) {
            let msrs = Msrs::from_entries(chunk).map_err(|e| Error::State { id, why: format!("MSRs: {e:?}") })?;
            let set = fd.set_msrs(&msrs).map_err(err("KVM_SET_MSRS"))?;
            if set != chunk.len() {
                let index = chunk[set].index;
                return Err(Error::State { id, why: format!("KVM refused MSR {index:#x}") });
            }
        }
        fd.set_vcpu_events(&state.events).map_err(err("KVM_SET_VCPU_EVENTS"))?;
        Ok(Vcpu { id, fd })
    }

    /// Leaves `KVM_RUN` for good: completes the I/O exit it may be in the middle of.
    fn stop(&mut self) -> Result<(), Error> {
        let id = self.id;
        self.fd.set_kvm_immediate_exit(1);
        let completed = match self.fd.run() {
            Err(e) if e.errno() == libc::EINTR => Ok(()),
            Err(e) => Err(Error::Kvm { id, what: "KVM_RUN (immediate exit)", source: e }),
            Ok(exit) => Err(Error::State { id, why: format!("exit {exit:?} while pausing") }),
        };
        self.fd.set_kvm_immediate_exit(0);
        completed
    }

    /// Reads this vCPU's state; it must have [stopped](Self::stop), and so must every other.
    ///
    /// In the order KVM needs: the MP state first (reading it accepts a pending INIT or SIPI,
    /// which changes the LAPIC and registers), the LAPIC before the MSRs (reading it moves
    /// posted interrupts into its IRR), the events last (the other reads may raise one).
    fn save(&mut self, msr_indices: &[u32]) -> Result<VcpuState, Error> {
        let id = self.id;
        let err = |what| move |source| Error::Kvm { id, what, source };
        let mp_state = self.fd.get_mp_state().map_err(err("KVM_GET_MP_STATE"))?;
        let regs = self.fd.get_regs().map_err(err("KVM_GET_REGS"))?;
        let sregs = self.fd.get_sregs().map_err(err("KVM_GET_SREGS"))?;
        let xsave = self.fd.get_xsave().map_err(err("KVM_GET_XSAVE"))?;
        let xcrs = self.fd.get_xcrs().map_err(err("KVM_GET_XCRS"))?;
        let debugregs = self.fd.get_debug_regs().map_err(err("KVM_GET_DEBUGREGS"))?;
        let lapic = self.fd.get_lapic().map_err(err("KVM_GET_LAPIC"))?;
        let mut msrs = Vec::with_capacity(msr_indices.len());
        for chunk in msr_indices.chunks(MSR_CHUNK) {
            let mut wanted: Vec<kvm_msr_entry> =
                chunk.iter().map(|&index| kvm_msr_entry { index, ..Default::default() }).collect();
            // KVM stops at the first MSR it cannot read; such an MSR is left out.
            while !wanted.is_empty() {
                let mut buf =
                    Msrs::from_entries(&wanted).map_err(|e| Error::State { id, why: format!("MSRs: {e:?}") })?;
                let read = self.fd.get_msrs(&mut buf).map_err(err("KVM_GET_MSRS"))?;
                msrs.extend_from_slice(&buf.as_slice()[..read]);
                wanted.drain(..(read + 1).min(wanted.len()));
            }
        }
        let events = self.fd.get_vcpu_events().map_err(err("KVM_GET_VCPU_EVENTS"))?;
        Ok(VcpuState { regs, sregs, xsave, xcrs, lapic, msrs, debugregs, events, mp_state })
    }

    /// The vCPU fd (for its statistics).
    pub fn fd(&self) -> &VcpuFd {
        &self.fd
    }

    /// Maps guest-physical `[gpa, gpa + size)` into KVM's page tables before the guest runs
    /// (`KVM_PRE_FAULT_MEMORY`, Linux 6.10; the host pages should be present already), so that
    /// the guest's first touch of them takes no nested page fault. The vCPU's state must be
    /// set: the mapping follows its paging mode.
    pub fn pre_fault(&self, gpa: u64, size: u64) -> std::io::Result<()> {
        // _IOWR(KVMIO, 0xd5, struct kvm_pre_fault_memory), which kvm-ioctls does not wrap.
        const KVM_PRE_FAULT_MEMORY: libc::c_ulong = (3 << 30)
            | ((std::mem::size_of::<kvm_bindings::kvm_pre_fault_memory>() as libc::c_ulong) << 16)
            | (0xae << 8)
            | 0xd5;
        let mut range = kvm_bindings::kvm_pre_fault_memory { gpa, size, ..Default::default() };
        while range.size > 0 {
            // SAFETY: KVM_PRE_FAULT_MEMORY reads and updates the kvm_pre_fault_memory it is
            // given, which lives for the call; the fd is this vCPU's.
            let ret = unsafe { libc::ioctl(self.fd.as_raw_fd(), KVM_PRE_FAULT_MEMORY as _, &mut range) };
            if ret < 0 {
                let e = std::io::Error::last_os_error();
                if !matches!(e.raw_os_error(), Some(libc::EINTR) | Some(libc::EAGAIN)) {
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// Runs the vCPU until the guest ends the VM or KVM fails; reports why on `ctx.events`.
    pub fn run(mut self, ctx: Arc<ExitContext>) {
        let id = self.id;
        let end = loop {
            if ctx.pause.load(Ordering::Acquire) {
                let state = self.stop().and_then(|()| {
                    let _ = ctx.events.send(VmEvent::Stopped { id });
                    ctx.save_gate.wait();
                    self.save(&ctx.msr_indices)
                });
                break VmEvent::Paused { id, state: state.map(Box::new).map_err(|e| e.to_string()) };
            }
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
