//! CPUID normalisation: KVM_GET_SUPPORTED_CPUID adjusted per vCPU (APIC id,
//! hypervisor bit, topology leaves), as Firecracker's `cpuid` normalise step.

use kvm_bindings::kvm_cpuid_entry2;

/// What to normalise for.
#[derive(Debug, Clone, Copy)]
pub struct CpuidParams {
    /// This vCPU's index (= its APIC id).
    pub vcpu_index: u32,
    /// Number of vCPUs in the VM (one core each, one package).
    pub vcpu_count: u32,
    /// Hide what KVM's instruction emulator cannot execute (XSAVE family and
    /// AVX, CMPXCHG16B, POPCNT), for platforms that emulate all guest code (KVM-PVM
    /// without VT-x); Linux then picks FXSAVE and lock-based fallbacks.
    pub emulator_cpuid: bool,
    /// KVM's in-kernel local APIC emulates the TSC-deadline timer
    /// (KVM_CAP_TSC_DEADLINE_TIMER with an irqchip), which KVM never
    /// reports in its supported CPUID: the VMM sets the bit. With it Linux
    /// runs its tick on `lapic-deadline` and skips calibrating the APIC
    /// timer against the PIT, a measurement that fails now and then on a
    /// slow nested guest, leaving the tick on the PIT (irq 0) for the
    /// whole run.
    pub tsc_deadline: bool,
}

const LEAF1_ECX_XSAVE: u32 = 1 << 26;
const LEAF1_ECX_OSXSAVE: u32 = 1 << 27;
const LEAF1_ECX_HYPERVISOR: u32 = 1 << 31;
const LEAF1_ECX_TSC_DEADLINE: u32 = 1 << 24;
const LEAF1_EDX_HTT: u32 = 1 << 28;
const LEAF7_EBX_AVX2: u32 = 1 << 5;
const LEAF7_EBX_AVX512F: u32 = 1 << 16;
const LEAF1_ECX_AVX: u32 = 1 << 28;
const LEAF1_ECX_CX16: u32 = 1 << 13;
const LEAF1_ECX_POPCNT: u32 = 1 << 23;

/// Bits needed to number `n` items.
fn bits_for(n: u32) -> u32 {
    if n <= 1 {
        0
    } else {
        32 - (n - 1).leading_zeros()
    }
}

/// Normalises the supported CPUID entries for one vCPU, in place.
pub fn normalize(entries: &mut [kvm_cpuid_entry2], p: CpuidParams) {
    let count = p.vcpu_count.max(1);
    for e in entries.iter_mut() {
        match e.function {
            1 => {
                e.ebx = (e.ebx & 0x0000_ffff) | (p.vcpu_index << 24) | ((count & 0xff) << 16);
                e.ecx |= LEAF1_ECX_HYPERVISOR;
                if p.tsc_deadline {
                    e.ecx |= LEAF1_ECX_TSC_DEADLINE;
                }
                if count > 1 {
                    e.edx |= LEAF1_EDX_HTT;
                } else {
                    e.edx &= !LEAF1_EDX_HTT;
                }
                if p.emulator_cpuid {
                    e.ecx &= !(LEAF1_ECX_XSAVE
                        | LEAF1_ECX_OSXSAVE
                        | LEAF1_ECX_AVX
                        | LEAF1_ECX_CX16
                        | LEAF1_ECX_POPCNT);
                }
            }
            // Cores per package - 1 in EAX[31:26]; threads sharing the
            // cache - 1 in EAX[25:14] (L3 shared by all, others private).
            4 if e.eax & 0x1f != 0 => {
                let level = (e.eax >> 5) & 0x7;
                let sharing = if level >= 3 { count - 1 } else { 0 };
                e.eax = (e.eax & 0x3fff) | ((count - 1) << 26) | ((sharing & 0xfff) << 14);
            }
            7 if e.index == 0 && p.emulator_cpuid => {
                e.ebx &= !(LEAF7_EBX_AVX2 | LEAF7_EBX_AVX512F);
            }
            0xd if p.emulator_cpuid => {
                e.eax = 0;
                e.ebx = 0;
                e.ecx = 0;
                e.edx = 0;
            }
            0xb | 0x1f => {
                // Level 0: SMT (1 thread per core), level 1: core (count).
                e.edx = p.vcpu_index;
                match e.index {
                    0 => {
                        e.eax = 0;
                        e.ebx = 1;
                        e.ecx = 1 << 8;
                    }
                    1 => {
                        e.eax = bits_for(count);
                        e.ebx = count;
                        e.ecx = (2 << 8) | 1;
                    }
                    i => {
                        e.eax = 0;
                        e.ebx = 0;
                        e.ecx = i;
                    }
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            ebx: 0x0008_0800,
            ecx: LEAF1_ECX_XSAVE,
            eax: 0x121,
            ..Default::default()
        }
    }

    #[test]
    fn apic_id_and_topology() {
        let mut v = vec![entry(1, 0), entry(0xb, 0), entry(0xb, 1), entry(4, 0)];
        normalize(
            &mut v,
            CpuidParams {
                vcpu_index: 3,
                vcpu_count: 4,
                emulator_cpuid: true,
                tsc_deadline: true,
            },
        );
        assert_ne!(v[0].ecx & LEAF1_ECX_TSC_DEADLINE, 0);
        assert_eq!(v[0].ebx >> 24, 3);
        assert_eq!((v[0].ebx >> 16) & 0xff, 4);
        assert_ne!(v[0].ecx & LEAF1_ECX_HYPERVISOR, 0);
        assert_eq!(v[0].ecx & LEAF1_ECX_XSAVE, 0);
        assert_ne!(v[0].edx & LEAF1_EDX_HTT, 0);
        assert_eq!((v[1].edx, v[1].ebx), (3, 1));
        assert_eq!((v[2].eax, v[2].ebx, v[2].ecx >> 8), (2, 4, 2));
        assert_eq!(v[3].eax >> 26, 3);
        assert_eq!(bits_for(1), 0);
        assert_eq!(bits_for(5), 3);
    }
}
