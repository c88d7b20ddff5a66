//! A vCPU thread's own software-breakpoint state: its view of the VM-wide
//! table ([`super::swbp`]) and the step-over under way.

use std::sync::Arc;

use super::control::Shared;
use super::swbp::SwView;

/// A vCPU thread's software-breakpoint state.
#[derive(Default)]
pub(crate) struct SwLocal {
    pub(crate) view: SwView,
    /// Hit at this address reported, step-over still to do (the single-step
    /// fallback was busy on another vCPU, or the handler parked this one):
    /// the next #BP here is not reported again.
    pub(crate) reported: Option<u64>,
    /// Single-stepping over ours at this address with the byte lifted.
    pub(crate) stepping: Option<u64>,
    /// vCPUs this one paused for its single step.
    pub(crate) paused: Vec<Arc<Shared>>,
}
