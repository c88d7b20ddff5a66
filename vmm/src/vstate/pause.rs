//! Pausing every other vCPU from a vCPU thread: for the single-step
//! fallback over a software trap, and for inserting traps where no vCPU
//! stands inside one. A 2-byte trap may cover two instructions; a vCPU
//! stopped between them (a host interrupt exits KVM_RUN at any instruction
//! boundary, also with the guest's interrupts off) would resume in the
//! trap's second byte, which decodes as a jump to nowhere.

use std::sync::Arc;
use std::time::Duration;

use super::control::VcpuCtx;
use super::control::{Shared, VcpuState, Want};
use crate::vstate::control::VcpuHandle;

/// How long to wait for each other vCPU to park.
pub(crate) const PAUSE_WAIT: Duration = Duration::from_secs(10);

/// Asks every vCPU of `vcpus` but `me` that runs to park and waits until
/// each has. Returns the ones it flipped (to resume), or, when one did not
/// park in time, resumes them all and returns None.
pub(crate) fn pause_others(me: u32, vcpus: &[Arc<Shared>]) -> Option<Vec<Arc<Shared>>> {
    let mut flipped = Vec::new();
    for s in vcpus.iter().filter(|s| s.index != me) {
        let mut did = false;
        s.change(|c| {
            if c.want == Want::Run {
                c.want = Want::Pause;
                did = true;
            }
        });
        if did {
            flipped.push(s.clone());
        }
    }
    let parked = |s: &Arc<Shared>| {
        VcpuHandle { shared: s.clone() }.wait_state(
            |st| st == VcpuState::Paused || st == VcpuState::Stopped,
            PAUSE_WAIT,
        )
    };
    // Every one of them, not just until the first that fails: all must
    // stand still before guest text changes under them.
    let all = flipped.iter().filter(|s| !parked(s)).count() == 0;
    if all {
        Some(flipped)
    } else {
        resume(flipped);
        None
    }
}

/// Lets the vCPUs `pause_others` flipped run again.
pub(crate) fn resume(flipped: impl IntoIterator<Item = Arc<Shared>>) {
    for s in flipped {
        s.change(|c| {
            if c.want == Want::Pause {
                c.want = Want::Run;
            }
        });
    }
}

impl VcpuCtx<'_> {
    /// Runs `f` with every other vCPU parked, given the RIP of each parked
    /// one. None, with nothing run, when another vCPU holds the VM-wide
    /// single step or some vCPU did not park in time: try again later.
    pub fn with_others_paused<R>(&mut self, f: impl FnOnce(&mut Self, &[u64]) -> R) -> Option<R> {
        if !self.sw.claim_step() {
            return None;
        }
        let r = match pause_others(self.index, self.vcpus) {
            Some(flipped) => {
                let rips: Vec<u64> = self
                    .vcpus
                    .iter()
                    .filter(|s| s.index != self.index && s.state() == VcpuState::Paused)
                    .filter_map(|s| {
                        VcpuHandle { shared: s.clone() }
                            .run_on(|ctx| ctx.regs().map(|r| r.rip))
                            .ok()?
                            .ok()
                    })
                    .collect();
                let r = f(self, &rips);
                resume(flipped);
                Some(r)
            }
            None => None,
        };
        self.sw.release_step();
        r
    }
}
