//! The KVM VM: its guest memory, the in-kernel interrupt controllers (PIC, IOAPIC, LAPICs) and
//! PIT, and the irqfd/ioeventfd registrations devices use.

use std::fs::File;
use std::os::unix::io::AsRawFd;
use std::sync::Arc;

use kvm_bindings::{
    kvm_clock_data, kvm_irqchip, kvm_pit_config, kvm_pit_state2, kvm_userspace_memory_region, CpuId,
    KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE, KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{IoEventAddress, Kvm, VmFd};
use serde::{Deserialize, Serialize};
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, GuestRegionMmap, MmapRegion};
use vmm_sys_util::eventfd::EventFd;

use crate::vmm::arch::{boot, layout};

/// Errors setting up the VM.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// /dev/kvm could not be opened.
    #[error("cannot open /dev/kvm: {0}")]
    OpenKvm(kvm_ioctls::Error),
    /// A KVM ioctl on the VM failed.
    #[error("KVM {what}: {source}")]
    Kvm {
        /// Which call.
        what: &'static str,
        /// Why.
        source: kvm_ioctls::Error,
    },
    /// Guest memory could not be mapped.
    #[error("cannot map {0} MiB of guest memory")]
    MapMemory(u64),
    /// A snapshot's memory file is not the size its state says.
    #[error("the memory file is {actual} bytes, the snapshot's memory is {expected}")]
    MemoryFileSize {
        /// Bytes the state's memory size calls for.
        expected: u64,
        /// The file's length.
        actual: u64,
    },
}

/// The VM-wide state KVM keeps: the interrupt controllers, the PIT and kvmclock.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VmState {
    /// PIC master, PIC slave, IOAPIC (in that order).
    pub irqchips: Vec<kvm_irqchip>,
    /// The PIT.
    pub pit: kvm_pit_state2,
    /// kvmclock.
    pub clock: kvm_clock_data,
}

const IRQCHIPS: [u32; 3] = [KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE, KVM_IRQCHIP_IOAPIC];

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> Error {
    move |source| Error::Kvm { what, source }
}

/// A VM with its memory registered.
pub struct Vm {
    fd: VmFd,
    supported_cpuid: CpuId,
    msr_indices: Arc<[u32]>,
    mem: GuestMemoryMmap,
}

const HUGE_PAGE: usize = 2 << 20;

/// Maps one anonymous RAM region of `len` bytes, 2 MiB aligned so that the host's huge pages
/// line up with the guest's (KVM maps a 2 MiB page only when guest and host addresses agree
/// modulo 2 MiB), and asks for transparent huge pages when `hugepages`.
fn map_ram(len: usize, hugepages: bool) -> Result<MmapRegion, Error> {
    let err = || Error::MapMemory((len >> 20) as u64);
    let prot = libc::PROT_READ | libc::PROT_WRITE;
    let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE;
    let padded = len.checked_add(HUGE_PAGE).ok_or_else(err)?;
    // SAFETY: a fresh anonymous mapping at an address of the kernel's choosing; nothing else
    // refers to it yet.
    let raw = unsafe { libc::mmap(std::ptr::null_mut(), padded, prot, flags, -1, 0) };
    if raw == libc::MAP_FAILED {
        return Err(err());
    }
    let start = raw as usize;
    let aligned = start.next_multiple_of(HUGE_PAGE);
    // SAFETY: both ranges lie inside the mapping just made and outside [aligned, aligned + len),
    // which is the part kept.
    unsafe {
        if aligned > start {
            libc::munmap(raw, aligned - start);
        }
        libc::munmap((aligned + len) as *mut libc::c_void, start + padded - aligned - len);
    }
    if hugepages {
        // SAFETY: madvise only changes how the kernel backs this range, which we own.
        unsafe { libc::madvise(aligned as *mut libc::c_void, len, libc::MADV_HUGEPAGE) };
    }
    // SAFETY: [aligned, aligned + len) is a live, page-aligned anonymous mapping with these
    // protection and flags, owned by nothing else. The region does not unmap it on drop: guest
    // RAM lives as long as the VMM process.
    unsafe { MmapRegion::build_raw(aligned as *mut u8, len, prot, flags) }.map_err(|_| err())
}

/// Maps a snapshot's memory file as guest RAM laid out as [`boot::ram_regions`] says for
/// `size`, each region MAP_PRIVATE at its offset: pages are read from the file when the guest
/// first touches them, a write copies only that page, and every VM mapping the same file
/// shares the pages it has not written.
pub fn map_memory_file(file: &File, size: u64) -> Result<GuestMemoryMmap, Error> {
    let actual = file.metadata().map_err(|_| Error::MapMemory(size >> 20))?.len();
    if actual != size {
        return Err(Error::MemoryFileSize { expected: size, actual });
    }
    let prot = libc::PROT_READ | libc::PROT_WRITE;
    let flags = libc::MAP_PRIVATE | libc::MAP_NORESERVE;
    let mut offset = 0u64;
    let mut regions = Vec::new();
    for (start, len) in boot::ram_regions(size) {
        let err = || Error::MapMemory((len >> 20) as u64);
        // SAFETY: a new private mapping of `len` bytes of the file at `offset`, which the size
        // check above keeps inside the file; nothing else refers to it.
        let raw =
            unsafe { libc::mmap(std::ptr::null_mut(), len, prot, flags, file.as_raw_fd(), offset as libc::off_t) };
        if raw == libc::MAP_FAILED {
            return Err(err());
        }
        // SAFETY: [raw, raw + len) is the live private mapping just made, with these protection
        // and flags, owned by nothing else; like anonymous guest RAM it lives as long as the
        // process.
        let mapping = unsafe { MmapRegion::build_raw(raw.cast(), len, prot, flags) }.map_err(|_| err())?;
        regions.push(GuestRegionMmap::new(mapping, start).ok_or_else(err)?);
        offset += len as u64;
    }
    GuestMemoryMmap::from_regions(regions).map_err(|_| Error::MapMemory(size >> 20))
}

/// Maps `size` bytes of guest RAM laid out as [`boot::ram_regions`] says. With `hugepages` the
/// host is asked to back it with transparent huge pages, which turns the guest's first touch of
/// each 2 MiB into one nested page fault instead of 512.
pub fn create_memory(size: u64, hugepages: bool) -> Result<GuestMemoryMmap, Error> {
    let regions = boot::ram_regions(size)
        .into_iter()
        .map(|(start, len)| {
            let mapping = map_ram(len, hugepages)?;
            GuestRegionMmap::new(mapping, start).ok_or(Error::MapMemory(size >> 20))
        })
        .collect::<Result<Vec<_>, _>>()?;
    GuestMemoryMmap::from_regions(regions).map_err(|_| Error::MapMemory(size >> 20))
}

/// A VM with its irqchip and PIT but no memory yet: what does not depend on the VM's shape,
/// made before the shape is known. A VMM process started ahead of need (the agent's spares)
/// makes it while it waits for its work: creating a VM is a good part of a restore.
pub struct EmptyVm {
    fd: VmFd,
    supported_cpuid: CpuId,
    msr_indices: Arc<[u32]>,
}

impl EmptyVm {
    /// Creates the VM, its irqchip and PIT.
    pub fn create() -> Result<Self, Error> {
        let kvm = Kvm::new().map_err(Error::OpenKvm)?;
        let fd = kvm.create_vm().map_err(kvm_err("KVM_CREATE_VM"))?;
        fd.set_tss_address(layout::KVM_TSS_ADDRESS as usize).map_err(kvm_err("KVM_SET_TSS_ADDR"))?;
        fd.create_irq_chip().map_err(kvm_err("KVM_CREATE_IRQCHIP"))?;
        let pit = kvm_pit_config { flags: KVM_PIT_SPEAKER_DUMMY, ..Default::default() };
        fd.create_pit2(pit).map_err(kvm_err("KVM_CREATE_PIT2"))?;
        let supported_cpuid =
            kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES).map_err(kvm_err("KVM_GET_SUPPORTED_CPUID"))?;
        // Read now, while the process may still open /dev/kvm: a snapshot needs it, and by then
        // the VMM is jailed and filtered.
        let msr_indices = kvm.get_msr_index_list().map_err(kvm_err("KVM_GET_MSR_INDEX_LIST"))?.as_slice().into();
        Ok(EmptyVm { fd, supported_cpuid, msr_indices })
    }
}

impl Vm {
    /// Registers `mem` as the guest RAM of `vm`.
    pub fn new(vm: EmptyVm, mem: GuestMemoryMmap) -> Result<Self, Error> {
        let EmptyVm { fd, supported_cpuid, msr_indices } = vm;
        for (slot, region) in mem.iter().enumerate() {
            let host = mem.get_host_address(region.start_addr()).map_err(|_| Error::MapMemory(region.len() >> 20))?;
            let region = kvm_userspace_memory_region {
                slot: slot as u32,
                guest_phys_addr: region.start_addr().0,
                memory_size: region.len(),
                userspace_addr: host as u64,
                flags: 0,
            };
            // SAFETY: the host range is a live mapping owned by `mem`, which the Vm keeps for as
            // long as the VM fd exists, and the guest ranges do not overlap.
            unsafe { fd.set_user_memory_region(region) }.map_err(kvm_err("KVM_SET_USER_MEMORY_REGION"))?;
        }
        Ok(Vm { fd, supported_cpuid, msr_indices, mem })
    }

    /// Whether KVM can fault guest memory in ahead of the guest (`KVM_PRE_FAULT_MEMORY`,
    /// Linux 6.10), asked of this VM.
    pub fn has_pre_fault(&self) -> bool {
        self.fd.check_extension_raw(kvm_bindings::KVM_CAP_PRE_FAULT_MEMORY.into()) > 0
    }

    /// The VM fd.
    pub fn fd(&self) -> &VmFd {
        &self.fd
    }

    /// Guest memory.
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.mem
    }

    /// The MSRs KVM saves and restores (`KVM_GET_MSR_INDEX_LIST`).
    pub fn msr_indices(&self) -> &Arc<[u32]> {
        &self.msr_indices
    }

    /// The CPUID KVM supports, before per-vCPU filtering.
    pub fn supported_cpuid(&self) -> &CpuId {
        &self.supported_cpuid
    }

    /// Reads the interrupt controllers, PIT and clock (the vCPUs must be paused).
    pub fn save_state(&self) -> Result<VmState, Error> {
        let mut irqchips = Vec::with_capacity(IRQCHIPS.len());
        for chip_id in IRQCHIPS {
            let mut chip = kvm_irqchip { chip_id, ..Default::default() };
            self.fd.get_irqchip(&mut chip).map_err(kvm_err("KVM_GET_IRQCHIP"))?;
            irqchips.push(chip);
        }
        let pit = self.fd.get_pit2().map_err(kvm_err("KVM_GET_PIT2"))?;
        let clock = self.fd.get_clock().map_err(kvm_err("KVM_GET_CLOCK"))?;
        Ok(VmState { irqchips, pit, clock })
    }

    /// Puts back what [`Vm::save_state`] read, before any vCPU exists.
    pub fn restore_state(&self, state: &VmState) -> Result<(), Error> {
        self.fd.set_pit2(&state.pit).map_err(kvm_err("KVM_SET_PIT2"))?;
        // The clock goes on from where it stopped; the flags GET_CLOCK reports (TSC_STABLE,
        // REALTIME, HOST_TSC) are not all accepted back.
        let clock = kvm_clock_data { clock: state.clock.clock, ..Default::default() };
        self.fd.set_clock(&clock).map_err(kvm_err("KVM_SET_CLOCK"))?;
        for chip in &state.irqchips {
            self.fd.set_irqchip(chip).map_err(kvm_err("KVM_SET_IRQCHIP"))?;
        }
        Ok(())
    }

    /// Makes a write of `datamatch` to MMIO `addr` signal `evt` inside KVM, without an exit to
    /// the VMM.
    pub fn register_ioevent(&self, evt: &EventFd, addr: u64, datamatch: u32) -> Result<(), Error> {
        self.fd.register_ioevent(evt, &IoEventAddress::Mmio(addr), datamatch).map_err(kvm_err("KVM_IOEVENTFD"))
    }

    /// Makes a write to `evt` raise IRQ line `gsi`.
    pub fn register_irqfd(&self, evt: &EventFd, gsi: u32) -> Result<(), Error> {
        self.fd.register_irqfd(evt, gsi).map_err(kvm_err("KVM_IRQFD"))
    }
}
