//! Engine-independent guest introspection core: an engine hands a
//! [`VcpuContext`] to the core on each trap; the core understands the guest
//! kernel with the symbols and types of its image (a [`plan::ProbePlan`]).
//!
//! Every guest value is untrusted: reads are bounded, list walks capped and
//! cycle-checked, and unreadable fields come out marked, never as a panic.

pub mod codec;
pub mod ctx;
pub mod decode;
pub mod defer;
pub mod kernel;
pub mod paging;
pub mod plan;
pub mod probes;
pub mod pt_regs;
pub mod runtime;
pub mod statedump;
pub mod task;
pub mod triggers;
pub mod userprobe;

pub use ctx::{MemError, Reg, VcpuContext};
pub use decode::{decode, Event, ProbeKind, Record, VcpuState};
pub use kernel::Kernel;
pub use plan::ProbePlan;
pub use task::Task;
