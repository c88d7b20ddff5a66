//! A vCPU's debug exit: which hardware breakpoint, single step or int3
//! it was, resuming past an exec breakpoint (RFLAGS.RF, or a single step
//! with the slot lifted where KVM ignores RF), and the handler's call.

use super::vcpu::{End, Runner};
use crate::breakpoints::{Watch, DR6_BS};
use crate::debug::DebugEvent;

impl Runner {
    /// Arranges to resume past an exec breakpoint: RFLAGS.RF where KVM
    /// honours it, else single-step over the instruction with the slot
    /// lifted. False if this exit is a re-fire because RF was ignored (it is
    /// not reported again).
    fn exec_hit(&mut self, slot: usize) -> Result<bool, String> {
        const RF: u64 = 1 << 16;
        if self.rf_ignored {
            self.dbg.suppressed = Some(slot);
            self.dbg.dirty = true;
            return Ok(true);
        }
        let mut r = match self.cache.regs {
            Some(r) => r,
            None => self
                .fd
                .get_regs()
                .map_err(|e| format!("KVM_GET_REGS: {e}"))?,
        };
        if r.rflags & RF != 0 {
            // The instruction did not run although RF was set.
            self.rf_ignored = true;
            r.rflags &= !RF;
            self.cache.regs = Some(r);
            self.cache.dirty = true;
            self.dbg.suppressed = Some(slot);
            self.dbg.dirty = true;
            return Ok(false);
        }
        self.cache.regs = Some(r);
        self.rf = true;
        Ok(true)
    }

    /// Turns a debug exit into the handler's event (or handles it here:
    /// a re-fire, our own step's end, a reinjection); `Some` ends the vCPU.
    pub(crate) fn debug_exit(&mut self, arch: kvm_bindings::kvm_debug_exit_arch) -> Option<End> {
        let pc = arch.pc;
        if arch.exception == 1 && self.vm_step_done(arch.dr6) {
            let hw = (0..4).any(|i| arch.dr6 & (1 << i) != 0 && self.dbg.hw[i].is_some());
            if !hw && !self.dbg.single_step {
                return None;
            }
        }
        let ev = match arch.exception {
            1 => {
                let hit = (0..4).find(|&i| arch.dr6 & (1 << i) != 0 && self.dbg.hw[i].is_some());
                if self.dbg.suppressed.take().is_some() {
                    // Stepped over exec breakpoint `slot`: re-arm it.
                    self.dbg.dirty = true;
                    if hit.is_none() && !self.dbg.single_step {
                        return None;
                    }
                }
                if let Some(slot) = hit {
                    let watch = self.dbg.hw[slot].map(|b| b.watch)?;
                    if watch == Watch::Exec {
                        match self.exec_hit(slot) {
                            Ok(true) => {}
                            Ok(false) => return None,
                            Err(e) => return Some(self.err(e)),
                        }
                    }
                    DebugEvent::HwBreakpoint {
                        slot: slot as u8,
                        watch,
                        pc,
                    }
                } else if self.dbg.stepping_over.is_some() && arch.dr6 & DR6_BS != 0 {
                    if self.dbg.end_step_over(&self.mem) {
                        return None;
                    }
                    DebugEvent::SingleStep { pc }
                } else if self.dbg.single_step {
                    DebugEvent::SingleStep { pc }
                } else {
                    self.dbg.reinject(1);
                    return None;
                }
            }
            3 if self.dbg.is_ours_sw(pc) => DebugEvent::SwBreakpoint { pc },
            // VM-wide list, or not ours: reinjected.
            3 => return self.vm_sw_exit(pc),
            _ => return None,
        };
        let a = self.call(ev);
        if let DebugEvent::SwBreakpoint { pc } = ev {
            self.dbg.begin_step_over(&self.mem, pc);
        }
        self.act(a)
    }
}
