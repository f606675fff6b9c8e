//! The KVM objects of a microVM: the VM with its memory and interrupt controllers, the vCPUs,
//! and KVM's binary statistics.

pub mod stats;
pub mod vcpu;
pub mod vm;
