//! The run's user probes (`--probe`) once resolved and relocated: set by
//! [`crate::user`] when the running kernel is found, read by the vCPU
//! slots that write their events.

use std::sync::OnceLock;

use introspect::userprobe::ResolvedProbe;

/// The run's user probes, relocated by the KASLR slide (set once, when the
/// running kernel is found).
pub(crate) static PROBES: OnceLock<Vec<ResolvedProbe>> = OnceLock::new();

/// The run's user probes (empty until the kernel is found).
pub fn probes() -> &'static [ResolvedProbe] {
    PROBES.get().map(Vec::as_slice).unwrap_or(&[])
}
