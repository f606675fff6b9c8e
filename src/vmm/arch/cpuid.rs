//! CPUID for a vCPU: what KVM supports, with the topology set to this VM's vCPUs, the
//! hypervisor bit on, and the features whose probing only costs VM exits (performance
//! counters, thermal and power management) hidden.

use kvm_bindings::{kvm_cpuid_entry2, CpuId};

const LEAF_FEATURES: u32 = 0x1;
const LEAF_CACHE_PARAMS: u32 = 0x4;
const LEAF_THERMAL_POWER: u32 = 0x6;
const LEAF_PMU: u32 = 0xa;
const LEAF_TOPOLOGY: u32 = 0xb;
const LEAF_TOPOLOGY_V2: u32 = 0x1f;
const LEAF_EXT_FEATURES: u32 = 0x8000_0001;
const LEAF_EXT_ADDR_SIZES: u32 = 0x8000_0008;
const LEAF_EXT_AMD_TOPOLOGY: u32 = 0x8000_001e;

const ECX_HYPERVISOR: u32 = 1 << 31;
const EDX_HTT: u32 = 1 << 28;
/// AMD core, northbridge and last-level-cache performance counter extensions.
const EXT_ECX_PERFCTR: u32 = (1 << 23) | (1 << 24) | (1 << 28);
const TOPOLOGY_LEVEL_SMT: u32 = 1;
const TOPOLOGY_LEVEL_CORE: u32 = 2;

/// Bits needed to number `count` cores.
fn core_id_bits(count: u8) -> u32 {
    u32::from(count.max(1)).next_power_of_two().trailing_zeros()
}

/// Adjusts one entry for vCPU `id` of `count`.
fn filter_entry(e: &mut kvm_cpuid_entry2, id: u8, count: u8) {
    let apic_id = u32::from(id);
    let count = u32::from(count);
    match e.function {
        LEAF_FEATURES => {
            // APIC id, logical processor count, CLFLUSH line size (8 x 8 bytes).
            e.ebx = (apic_id << 24) | (count << 16) | (8 << 8);
            e.ecx |= ECX_HYPERVISOR;
            if count > 1 {
                e.edx |= EDX_HTT;
            } else {
                e.edx &= !EDX_HTT;
            }
        }
        LEAF_CACHE_PARAMS => {
            e.eax = (e.eax & 0x03ff_ffff) | ((count - 1) << 26);
        }
        LEAF_THERMAL_POWER | LEAF_PMU => {
            e.eax = 0;
            e.ebx = 0;
            e.ecx = 0;
            e.edx = 0;
        }
        LEAF_TOPOLOGY | LEAF_TOPOLOGY_V2 => {
            e.edx = apic_id;
            match e.index {
                0 => {
                    e.eax = 0;
                    e.ebx = 1;
                    e.ecx = (TOPOLOGY_LEVEL_SMT << 8) | e.index;
                }
                1 => {
                    e.eax = core_id_bits(count as u8);
                    e.ebx = count;
                    e.ecx = (TOPOLOGY_LEVEL_CORE << 8) | e.index;
                }
                _ => {
                    e.eax = 0;
                    e.ebx = 0;
                    e.ecx = e.index;
                }
            }
        }
        LEAF_EXT_FEATURES => e.ecx &= !EXT_ECX_PERFCTR,
        LEAF_EXT_ADDR_SIZES => {
            e.ecx = (e.ecx & !0xf0ff) | (core_id_bits(count as u8) << 12) | (count - 1);
        }
        LEAF_EXT_AMD_TOPOLOGY => {
            e.eax = apic_id;
            e.ebx = apic_id & 0xff;
            e.ecx = 0;
        }
        _ => {}
    }
}

/// CPUID for vCPU `id` of `count`, from KVM's supported set.
pub fn for_vcpu(supported: &CpuId, id: u8, count: u8) -> CpuId {
    let mut cpuid = supported.clone();
    for e in cpuid.as_mut_slice() {
        filter_entry(e, id, count);
    }
    cpuid
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            eax: 0xffff_ffff,
            ebx: 0xffff_ffff,
            ecx: 0xffff_ffff,
            edx: 0xffff_ffff,
            ..Default::default()
        }
    }

    #[test]
    fn topology_and_hidden_leaves() {
        let supported = CpuId::from_entries(&[
            entry(LEAF_FEATURES, 0),
            entry(LEAF_PMU, 0),
            entry(LEAF_TOPOLOGY, 1),
            entry(LEAF_EXT_FEATURES, 0),
        ])
        .unwrap();
        let cpuid = for_vcpu(&supported, 2, 3);
        let e = cpuid.as_slice();
        assert_eq!(e[0].ebx >> 24, 2);
        assert_eq!((e[0].ebx >> 16) & 0xff, 3);
        assert_ne!(e[0].ecx & ECX_HYPERVISOR, 0);
        assert_eq!((e[1].eax, e[1].edx), (0, 0));
        assert_eq!((e[2].ebx, e[2].edx, e[2].eax), (3, 2, 2));
        assert_eq!(e[3].ecx & EXT_ECX_PERFCTR, 0);
    }

    #[test]
    fn single_vcpu_has_no_htt() {
        let supported = CpuId::from_entries(&[entry(LEAF_FEATURES, 0)]).unwrap();
        let cpuid = for_vcpu(&supported, 0, 1);
        assert_eq!(cpuid.as_slice()[0].edx & EDX_HTT, 0);
    }
}
