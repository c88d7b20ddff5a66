//! The trace clock: host time, or (time-transparent mode) the guest's own.
//!
//! Under `-icount shift=S` QEMU's virtual clock, which the guest's TSC and
//! timers follow, advances 2^S ns per instruction executed by any vCPU
//! (and jumps when every vCPU is idle; hvtrace boots such guests with
//! `idle=poll` so they never are). The plugin cannot read that clock, but
//! it can count the same instructions: a per-vCPU counter incremented
//! inline before each instruction, summed over the vCPUs. Time spent in the
//! plugin's callbacks then moves neither clock.

use std::time::Instant;

use qemu_plugin::sys::{self, qemu_plugin_u64};
use qemu_plugin::{PluginOp, TranslationBlock};

pub enum TraceClock {
    /// Host monotonic time since the plugin started.
    Host(Instant),
    /// Instructions executed by all vCPUs, each `1 << shift` ns.
    Instructions {
        executed: qemu_plugin_u64,
        shift: u32,
    },
}

// SAFETY: the scoreboard belongs to QEMU, one u64 slot per vCPU, written by
// generated code on the vCPU's thread; reading the sum from any callback is
// what QEMU's API offers (under -icount all vCPUs share one thread).
unsafe impl Send for TraceClock {}
// SAFETY: as above.
unsafe impl Sync for TraceClock {}

impl TraceClock {
    /// The instruction clock, or host time since `origin` when `shift` is
    /// `None`.
    pub fn new(shift: Option<u32>, origin: Instant) -> Self {
        match shift {
            Some(shift) => {
                // One u64 per vCPU, never freed: generated code refers to
                // it until QEMU exits.
                // SAFETY: a plain allocation by QEMU's API, no pointer passed in.
                let score = unsafe { sys::qemu_plugin_scoreboard_new(8) };
                TraceClock::Instructions {
                    executed: qemu_plugin_u64 { score, offset: 0 },
                    shift: shift.min(10),
                }
            }
            None => TraceClock::Host(origin),
        }
    }

    /// Counts every instruction of `tb` (user and kernel alike: the guest's
    /// clock advances on both). No-op for host time.
    pub fn instrument(&self, tb: &TranslationBlock) {
        let TraceClock::Instructions { executed, .. } = self else {
            return;
        };
        // Per instruction, not per block: a block left early (a fault, an
        // exception) must not count the instructions it did not run.
        for insn in tb.instructions() {
            qemu_plugin::qemu_plugin_register_vcpu_insn_exec_inline_per_vcpu(
                insn,
                PluginOp::QEMU_PLUGIN_INLINE_ADD_U64,
                *executed,
                1,
            );
        }
    }

    /// Nanoseconds since the start of the trace clock.
    pub fn now_ns(&self) -> u64 {
        match self {
            TraceClock::Host(epoch) => epoch.elapsed().as_nanos() as u64,
            TraceClock::Instructions { shift, .. } => self.instructions().unwrap_or(0) << shift,
        }
    }

    /// Instructions counted so far (time-transparent mode only).
    pub fn instructions(&self) -> Option<u64> {
        match self {
            TraceClock::Host(_) => None,
            TraceClock::Instructions { executed, .. } => {
                Some(qemu_plugin::qemu_plugin_scoreboard_sum(*executed))
            }
        }
    }
}
