//! x86_64 specifics of the boot: the guest physical memory layout, the zero page and e820 map,
//! the MP table, CPUID, MSRs and the registers a vCPU starts with.
//!
//! Nothing here talks to a device or runs a vCPU; the functions fill KVM structures or guest
//! memory and are unit-tested without KVM where they can be.

pub mod boot;
pub mod cpuid;
pub mod layout;
pub mod mptable;
pub mod regs;
