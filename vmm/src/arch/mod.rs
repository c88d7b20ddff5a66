//! x86_64 boot state: pure functions that compute or write the state a vCPU
//! and guest memory need at reset, independent of KVM object lifetimes;
//! and the pure step-over emulation of software breakpoints ([`step`]).

pub mod boot_params;
pub mod cpuid;
pub mod emulate;
pub mod mptable;
pub mod msr;
pub mod regs;
pub mod step;
pub mod trap_site;
