//! KVM objects and their lifetimes: the VM, its memory, its vCPUs.

pub mod activity;
pub mod control;
mod debug_exit;
pub mod exit_time;
pub mod memory;
mod pause;
pub mod state;
pub(crate) mod sw_local;
pub mod swbp;
mod swstep;
pub mod vcpu;
pub mod vm;
