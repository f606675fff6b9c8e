//! The state a vCPU starts in: 64-bit long mode with identity-mapped boot page tables, a flat
//! GDT, the boot MSRs, a sane FPU and the local APIC's LINT0/LINT1 wiring.

use kvm_bindings::{kvm_fpu, kvm_lapic_state, kvm_msr_entry, kvm_regs, kvm_segment, kvm_sregs, Msrs};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::*;

/// Errors while writing boot structures.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A boot structure could not be written to guest memory.
    #[error("cannot write {0} to guest memory")]
    WriteGuest(&'static str),
    /// The MSR list could not be built.
    #[error("cannot build the MSR list")]
    Msrs,
}

const X86_CR0_PE: u64 = 0x1;
const X86_CR0_ET: u64 = 0x10;
const X86_CR0_PG: u64 = 0x8000_0000;
const X86_CR4_PAE: u64 = 0x20;
const EFER_LME: u64 = 0x100;
const EFER_LMA: u64 = 0x400;

/// A GDT entry from its flags, base and limit (the Intel SDM's descriptor layout).
const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << (56 - 24))
        | ((flags as u64 & 0x0000_f0ff) << 40)
        | ((limit as u64 & 0x000f_0000) << (48 - 16))
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
}

/// The KVM segment a GDT entry describes.
fn segment_from_gdt(entry: u64, table_index: u8) -> kvm_segment {
    let base = ((entry >> 16) & 0x00ff_ffff) | ((entry >> 32) & 0xff00_0000);
    let mut limit = ((entry & 0xffff) | ((entry >> 32) & 0x000f_0000)) as u32;
    let granularity = ((entry >> 55) & 1) as u8;
    if granularity == 1 {
        limit = (limit << 12) | 0xfff;
    }
    kvm_segment {
        base,
        limit,
        selector: u16::from(table_index) * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present: ((entry >> 47) & 1) as u8,
        dpl: ((entry >> 45) & 3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g: granularity,
        avl: ((entry >> 52) & 1) as u8,
        unusable: if (entry >> 47) & 1 == 1 { 0 } else { 1 },
        padding: 0,
    }
}

/// Writes the boot GDT, IDT and identity page tables and returns the special registers for a
/// 64-bit start, based on the vCPU's current `sregs`.
pub fn setup_long_mode(mem: &GuestMemoryMmap, mut sregs: kvm_sregs) -> Result<kvm_sregs, Error> {
    let gdt: [u64; 4] = [
        gdt_entry(0, 0, 0),            // NULL
        gdt_entry(0xa09b, 0, 0xfffff), // CODE: 64-bit, present, execute/read
        gdt_entry(0xc093, 0, 0xfffff), // DATA: present, read/write
        gdt_entry(0x808b, 0, 0xfffff), // TSS
    ];
    for (i, entry) in gdt.iter().enumerate() {
        mem.write_obj(*entry, GuestAddress(BOOT_GDT_START + 8 * i as u64)).map_err(|_| Error::WriteGuest("GDT"))?;
    }
    mem.write_obj(0u64, GuestAddress(BOOT_IDT_START)).map_err(|_| Error::WriteGuest("IDT"))?;

    let code = segment_from_gdt(gdt[1], 1);
    let data = segment_from_gdt(gdt[2], 2);
    let tss = segment_from_gdt(gdt[3], 3);
    sregs.gdt.base = BOOT_GDT_START;
    sregs.gdt.limit = (std::mem::size_of_val(&gdt) - 1) as u16;
    sregs.idt.base = BOOT_IDT_START;
    sregs.idt.limit = 7;
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = tss;

    // PML4[0] -> PDPT, PDPT[0] -> PD, PD: 512 x 2 MiB pages = the first GiB, which holds the
    // kernel, the zero page and the command line. The kernel builds its own tables right away.
    mem.write_obj(PDPTE_START | 0x03, GuestAddress(PML4_START)).map_err(|_| Error::WriteGuest("PML4"))?;
    mem.write_obj(PDE_START | 0x03, GuestAddress(PDPTE_START)).map_err(|_| Error::WriteGuest("PDPT"))?;
    let mut pd = [0u8; 4096];
    for (i, chunk) in pd.chunks_exact_mut(8).enumerate() {
        chunk.copy_from_slice(&(((i as u64) << 21) | 0x83).to_le_bytes());
    }
    mem.write_slice(&pd, GuestAddress(PDE_START)).map_err(|_| Error::WriteGuest("PD"))?;

    sregs.cr3 = PML4_START;
    sregs.cr4 |= X86_CR4_PAE;
    sregs.cr0 |= X86_CR0_PE | X86_CR0_ET | X86_CR0_PG;
    sregs.efer |= EFER_LME | EFER_LMA;
    Ok(sregs)
}

/// General registers of the boot vCPU: entry point, stack, and the zero page in RSI as the
/// 64-bit boot protocol asks.
pub fn boot_regs(entry: GuestAddress) -> kvm_regs {
    kvm_regs {
        rflags: 0x2,
        rip: entry.0,
        rsp: BOOT_STACK_POINTER,
        rbp: BOOT_STACK_POINTER,
        rsi: ZERO_PAGE_START,
        ..Default::default()
    }
}

/// The x87 and SSE control words Linux expects at reset.
pub fn boot_fpu() -> kvm_fpu {
    kvm_fpu { fcw: 0x37f, mxcsr: 0x1f80, ..Default::default() }
}

const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MSR_IA32_MISC_ENABLE_FAST_STRING: u64 = 0x1;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
/// MTRRs enabled, default type write-back: without it the guest maps its RAM uncached.
const MTRR_ENABLE_DEFAULT_WB: u64 = (1 << 11) | 6;

/// The MSRs every vCPU starts with.
pub fn boot_msrs() -> Result<Msrs, Error> {
    let entries: Vec<kvm_msr_entry> = [
        (MSR_IA32_SYSENTER_CS, 0),
        (MSR_IA32_SYSENTER_ESP, 0),
        (MSR_IA32_SYSENTER_EIP, 0),
        (MSR_STAR, 0),
        (MSR_CSTAR, 0),
        (MSR_KERNEL_GS_BASE, 0),
        (MSR_SYSCALL_MASK, 0),
        (MSR_LSTAR, 0),
        (MSR_IA32_TSC, 0),
        (MSR_IA32_MISC_ENABLE, MSR_IA32_MISC_ENABLE_FAST_STRING),
        (MSR_MTRR_DEF_TYPE, MTRR_ENABLE_DEFAULT_WB),
    ]
    .iter()
    .map(|&(index, data)| kvm_msr_entry { index, data, ..Default::default() })
    .collect();
    Msrs::from_entries(&entries).map_err(|_| Error::Msrs)
}

const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

fn lapic_reg(lapic: &kvm_lapic_state, offset: usize) -> u32 {
    let bytes: [u8; 4] = std::array::from_fn(|i| lapic.regs[offset + i] as u8);
    u32::from_le_bytes(bytes)
}

fn set_lapic_reg(lapic: &mut kvm_lapic_state, offset: usize, value: u32) {
    for (i, b) in value.to_le_bytes().iter().enumerate() {
        lapic.regs[offset + i] = *b as _;
    }
}

/// Wires LINT0 to the PIC (ExtINT) and LINT1 to NMI, as a PC's BIOS leaves them.
pub fn set_lint(lapic: &mut kvm_lapic_state) {
    let with_mode = |reg: u32, mode: u32| (reg & !0x700) | (mode << 8);
    let lvt0 = lapic_reg(lapic, APIC_LVT0);
    set_lapic_reg(lapic, APIC_LVT0, with_mode(lvt0, APIC_MODE_EXTINT));
    let lvt1 = lapic_reg(lapic, APIC_LVT1);
    set_lapic_reg(lapic, APIC_LVT1, with_mode(lvt1, APIC_MODE_NMI));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmm::arch::boot::ram_regions;

    #[test]
    fn gdt_entries_decode() {
        let code = segment_from_gdt(gdt_entry(0xa09b, 0, 0xfffff), 1);
        assert_eq!((code.l, code.db, code.present, code.type_, code.selector), (1, 0, 1, 0xb, 8));
        assert_eq!(code.limit, 0xffff_ffff);
        let data = segment_from_gdt(gdt_entry(0xc093, 0, 0xfffff), 2);
        assert_eq!((data.l, data.db, data.type_, data.selector), (0, 1, 0x3, 16));
        assert_eq!(segment_from_gdt(0, 0).unusable, 1);
    }

    #[test]
    fn long_mode_tables() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&ram_regions(128 << 20)).unwrap();
        let sregs = setup_long_mode(&mem, kvm_sregs::default()).unwrap();
        assert_eq!(sregs.cr3, PML4_START);
        assert_ne!(sregs.efer & EFER_LMA, 0);
        let pde: u64 = mem.read_obj(GuestAddress(PDE_START + 8 * 3)).unwrap();
        assert_eq!(pde, (3 << 21) | 0x83);
    }

    #[test]
    fn lint_wiring() {
        let mut lapic = kvm_lapic_state::default();
        set_lapic_reg(&mut lapic, APIC_LVT0, 0x1_0000);
        set_lint(&mut lapic);
        assert_eq!(lapic_reg(&lapic, APIC_LVT0), 0x1_0700);
        assert_eq!(lapic_reg(&lapic, APIC_LVT1), 0x400);
    }
}
