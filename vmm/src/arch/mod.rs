//! x86_64 boot state: pure functions that compute or write the state a vCPU
//! and guest memory need at reset, independent of KVM object lifetimes.

pub mod boot_params;
pub mod cpuid;
pub mod mptable;
pub mod msr;
pub mod regs;
