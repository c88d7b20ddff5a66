//! What every vCPU's handler of a KVM recording shares, and what each
//! reports when its vCPU thread ends.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use introspect::runtime::StatedumpGate;
use introspect::{ProbeKind, ProbePlan};

use super::sw;

/// Hardware breakpoints per vCPU.
pub(super) const HW_SLOTS: usize = 4;
/// `__START_KERNEL_map`: kernel text's virtual base, at physical 0 plus
/// the load offset (0 for the ELF loaded at its own `p_paddr`).
pub(super) const START_KERNEL_MAP: u64 = 0xffff_ffff_8000_0000;
/// No slide verified yet.
pub(super) const UNKNOWN: u64 = u64::MAX;
/// Tasks a statedump can hold without allocating on the trap path.
pub(super) const STATEDUMP_TASKS: usize = 4096;

/// What every vCPU's handler shares (read-only or atomics on the trap path).
pub(super) struct Shared {
    pub(super) plan: ProbePlan,
    pub(super) strings: Vec<u8>,
    pub(super) gate: StatedumpGate,
    pub(super) epoch: Instant,
    /// The slide the guest's banner was found at (UNKNOWN before).
    pub(super) verified_slide: AtomicU64,
    /// Probe hits, all vCPUs.
    pub(super) hits: AtomicU64,
    /// Filled by each handler when its vCPU thread ends.
    pub(super) reports: Mutex<Vec<CpuReport>>,
    pub(super) notes: Mutex<Vec<String>>,
    /// Software breakpoints: used or not, and armed or not yet.
    pub(super) sw: sw::SwPhase,
    /// The kernel is randomized (bzImage boot): nothing is armed before
    /// the slide is found.
    pub(super) randomized: bool,
    /// Flight-recorder triggers (`--trigger`), and the trace clock's
    /// origin in Unix time.
    pub(super) triggers: Option<Arc<record_ctf::triggers::Triggers>>,
    pub(super) epoch_unix_ns: u64,
    /// Each vCPU's tracer time when the statedump was seen taken (the
    /// traced command's exec): what came after is the command's share.
    pub(super) at_command: std::sync::OnceLock<Vec<vmm::TracerTime>>,
}

impl Shared {
    pub(super) fn now(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    /// Off the trap path only (arming, verification).
    pub(super) fn note(&self, s: String) {
        let mut n = self.notes.lock().unwrap_or_else(|e| e.into_inner());
        if n.len() < 200 && !n.contains(&s) {
            n.push(s);
        }
    }
}

#[derive(Debug, Clone, Default)]
pub(super) struct CpuReport {
    pub(super) cpu: u32,
    pub(super) events: u64,
    pub(super) busy_ns: u64,
    pub(super) ctf_errors: u64,
    pub(super) by_kind: [u64; introspect::decode::COUNTER_SLOTS],
    pub(super) by_event: [u64; introspect::decode::COUNTER_SLOTS],
    pub(super) armed: Vec<(u64, ProbeKind)>,
    /// Syscall entries whose string was deferred / read on a retry.
    pub(super) deferred: u64,
    pub(super) recovered: u64,
}
