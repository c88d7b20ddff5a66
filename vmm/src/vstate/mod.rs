//! KVM objects and their lifetimes: the VM, its memory, its vCPUs.

pub mod activity;
pub mod control;
pub mod exit_time;
pub mod memory;
mod pause;
pub mod swbp;
mod swstep;
pub mod vcpu;
pub mod vm;
