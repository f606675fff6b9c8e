//! Where things live in guest physical memory and in the guest's MMIO and IRQ space.

/// The boot GDT (four 8-byte entries).
pub const BOOT_GDT_START: u64 = 0x500;
/// The boot IDT (empty; the kernel installs its own before enabling interrupts).
pub const BOOT_IDT_START: u64 = 0x520;
/// The Linux zero page (`struct boot_params`).
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack pointer of the boot vCPU.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Boot page tables: PML4, PDPT and one PD identity-mapping the first GiB with 2 MiB pages.
pub const PML4_START: u64 = 0x9000;
/// Page directory pointer table.
pub const PDPTE_START: u64 = 0xa000;
/// Page directory.
pub const PDE_START: u64 = 0xb000;
/// The kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
/// The longest command line x86 Linux accepts (COMMAND_LINE_SIZE), terminating NUL included.
pub const CMDLINE_MAX_SIZE: usize = 2048;
/// Start of the extended BIOS data area; the MP table lives here, marked reserved in e820.
pub const EBDA_START: u64 = 0x9fc00;
/// First address above the legacy hole; the kernel is loaded above it.
pub const HIMEM_START: u64 = 0x10_0000;
/// Start of the 768 MiB hole below 4 GiB kept for MMIO (IOAPIC, LAPIC, virtio-mmio).
pub const MMIO_GAP_START: u64 = 0xd000_0000;
/// End of the MMIO hole.
pub const MMIO_GAP_END: u64 = 1 << 32;
/// The IOAPIC's MMIO base.
pub const IOAPIC_START: u64 = 0xfec0_0000;
/// The local APIC's MMIO base.
pub const APIC_START: u64 = 0xfee0_0000;
/// KVM's TSS (three pages) needs a slot that is not guest RAM (Intel only, harmless on AMD).
pub const KVM_TSS_ADDRESS: u64 = 0xfffb_d000;
/// Base of the virtio-mmio device windows, one [`VIRTIO_MMIO_SIZE`] window per device.
pub const VIRTIO_MMIO_START: u64 = MMIO_GAP_START;
/// Size of one virtio-mmio window.
pub const VIRTIO_MMIO_SIZE: u64 = 0x1000;
/// The first IRQ line handed to virtio devices (0-4 are legacy: PIT, keyboard, cascade, COM2, COM1).
pub const VIRTIO_IRQ_BASE: u32 = 5;
/// The RTC's line: KVM's IOAPIC tracks EOIs on it (for RTC interrupt coalescing), which turns
/// off paravirtual EOI for whatever uses it, so every interrupt there costs an EOI exit.
const RTC_IRQ: u32 = 8;

/// The IRQ line of virtio device `index`: from [`VIRTIO_IRQ_BASE`] up, skipping [`RTC_IRQ`].
pub fn virtio_irq(index: u32) -> u32 {
    let irq = VIRTIO_IRQ_BASE + index;
    if irq >= RTC_IRQ {
        irq + 1
    } else {
        irq
    }
}
/// The last IRQ line the IOAPIC has.
pub const IRQ_MAX: u32 = 23;
/// COM1's IRQ line.
pub const SERIAL_IRQ: u32 = 4;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn virtio_lines_skip_the_rtc_and_stay_on_the_ioapic() {
        let lines: Vec<u32> = (0..8).map(virtio_irq).collect();
        assert_eq!(lines, [5, 6, 7, 9, 10, 11, 12, 13]);
        assert!(lines.iter().all(|l| *l != RTC_IRQ && *l != SERIAL_IRQ && *l <= IRQ_MAX));
    }
}
