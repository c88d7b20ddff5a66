//! Sample mode: a per-vCPU counter of executed translation blocks
//! (incremented inline by generated code, no callback) and a conditional
//! callback once it passes a threshold; the callback records a sample at
//! most `hz` times per second of host time.

use qemu_plugin::sys::{self, qemu_plugin_u64};
use qemu_plugin::{CallbackFlags, PluginCondition, PluginOp, TranslationBlock, VCPUIndex};

/// Blocks executed between two looks at the clock.
pub const BLOCKS_PER_CHECK: u64 = 2048;

/// The counter shared with QEMU's generated code.
pub struct Sampler {
    entry: qemu_plugin_u64,
    pub period_ns: u64,
}

// SAFETY: the scoreboard is QEMU's, with one slot per vCPU; each vCPU only
// touches its own slot (inline ops and our reset on its thread).
unsafe impl Send for Sampler {}
// SAFETY: as above.
unsafe impl Sync for Sampler {}

impl Sampler {
    /// A sampler at `hz` samples per second per vCPU.
    pub fn new(hz: u32) -> Self {
        // SAFETY: allocates a scoreboard of one u64 per vCPU (never freed:
        // generated code refers to it until QEMU exits).
        let score = unsafe { sys::qemu_plugin_scoreboard_new(8) };
        Self {
            entry: qemu_plugin_u64 { score, offset: 0 },
            period_ns: 1_000_000_000 / u64::from(hz.max(1)),
        }
    }

    /// Instruments a block: count it, and call `on_check` past the threshold.
    pub fn instrument(&self, tb: &TranslationBlock, on_check: fn(VCPUIndex)) {
        qemu_plugin::qemu_plugin_register_vcpu_tb_exec_inline_per_vcpu(
            tb.clone(),
            PluginOp::QEMU_PLUGIN_INLINE_ADD_U64,
            self.entry,
            1,
        );
        tb.register_conditional_execute_callback_flags(
            on_check,
            CallbackFlags::QEMU_PLUGIN_CB_R_REGS,
            PluginCondition::QEMU_PLUGIN_COND_GE,
            self.entry,
            BLOCKS_PER_CHECK,
        );
    }

    /// Resets this vCPU's counter.
    pub fn reset(&self, vcpu: VCPUIndex) {
        qemu_plugin::qemu_plugin_u64_set(self.entry, vcpu, 0);
    }
}
