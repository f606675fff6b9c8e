//! The KVM VM: its guest memory, the in-kernel interrupt controllers (PIC, IOAPIC, LAPICs) and
//! PIT, and the irqfd/ioeventfd registrations devices use.

use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, CpuId, KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{IoEventAddress, Kvm, VmFd};
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
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
}

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> Error {
    move |source| Error::Kvm { what, source }
}

/// A VM with its memory registered.
pub struct Vm {
    fd: VmFd,
    supported_cpuid: CpuId,
    mem: GuestMemoryMmap,
}

/// Maps `size` bytes of anonymous guest RAM laid out as [`boot::ram_regions`] says. With
/// `hugepages` the host is asked to back it with transparent huge pages, which turns the
/// guest's first touch of each 2 MiB into one nested page fault instead of 512.
pub fn create_memory(size: u64, hugepages: bool) -> Result<GuestMemoryMmap, Error> {
    let mem = GuestMemoryMmap::<()>::from_ranges(&boot::ram_regions(size)).map_err(|_| Error::MapMemory(size >> 20))?;
    if hugepages {
        for region in mem.iter() {
            let Ok(host) = mem.get_host_address(region.start_addr()) else { continue };
            // SAFETY: the range is a mapping vm-memory just created and owns; madvise only
            // changes how the kernel backs it and cannot invalidate it.
            unsafe { libc::madvise(host.cast(), region.len() as usize, libc::MADV_HUGEPAGE) };
        }
    }
    Ok(mem)
}

impl Vm {
    /// Creates the VM, its irqchip and PIT, and registers `mem` as guest RAM.
    pub fn new(kvm: &Kvm, mem: GuestMemoryMmap) -> Result<Self, Error> {
        let fd = kvm.create_vm().map_err(kvm_err("KVM_CREATE_VM"))?;
        fd.set_tss_address(layout::KVM_TSS_ADDRESS as usize).map_err(kvm_err("KVM_SET_TSS_ADDR"))?;
        fd.create_irq_chip().map_err(kvm_err("KVM_CREATE_IRQCHIP"))?;
        let pit = kvm_pit_config { flags: KVM_PIT_SPEAKER_DUMMY, ..Default::default() };
        fd.create_pit2(pit).map_err(kvm_err("KVM_CREATE_PIT2"))?;
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
        let supported_cpuid =
            kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES).map_err(kvm_err("KVM_GET_SUPPORTED_CPUID"))?;
        Ok(Vm { fd, supported_cpuid, mem })
    }

    /// The VM fd.
    pub fn fd(&self) -> &VmFd {
        &self.fd
    }

    /// Guest memory.
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.mem
    }

    /// The CPUID KVM supports, before per-vCPU filtering.
    pub fn supported_cpuid(&self) -> &CpuId {
        &self.supported_cpuid
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
