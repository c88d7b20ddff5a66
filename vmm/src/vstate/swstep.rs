//! The vCPU side of the VM-wide software breakpoints ([`super::swbp`]):
//! reporting a hit, stepping over it by emulation or by the single-step
//! fallback (every other vCPU paused meanwhile), reinjecting an int3 that
//! is not ours; and the API on [`VcpuCtx`] and [`crate::Vm`].

use std::sync::atomic::Ordering;
use std::time::Duration;

use vm_memory::{Bytes, GuestAddress};

use super::control::{VcpuState, Want};
use super::swbp::{insn_bytes, read_byte, StepOver, SwBreakpoints, SwEntry};
use super::vcpu::{End, Runner};
use crate::arch::step::{self, MAX_INSN};
use crate::debug::{DebugError, DebugEvent, VcpuCtx};

/// How long a single-step fallback waits for each other vCPU to park.
const PAUSE_WAIT: Duration = Duration::from_secs(10);

impl Runner {
    /// Guest-physical address of guest-virtual `gva` on this vCPU.
    fn gpa_of(&self, gva: u64) -> Option<u64> {
        let t = self.fd.translate_gva(gva).ok()?;
        (t.valid != 0).then_some(t.physical_address)
    }

    /// Is `pc` one of the VM-wide breakpoints (emulation-failure path)?
    pub(crate) fn vm_sw_is_ours(&mut self, pc: u64) -> bool {
        self.swbp.view.get(&self.sw, pc).is_some()
    }

    /// A #BP at `pc` that is not in this vCPU's own list.
    pub(crate) fn vm_sw_exit(&mut self, pc: u64) -> Option<End> {
        let Some(entry) = self.swbp.view.get(&self.sw, pc) else {
            let still = self
                .gpa_of(pc)
                .and_then(|g| read_byte(&self.mem, g).ok())
                .is_some_and(|b| b == 0xcc);
            if still {
                self.sw.stats.reinjected.fetch_add(1, Ordering::Relaxed);
                self.dbg.reinject(3);
            }
            // Else ours was removed meanwhile: run the restored byte.
            return None;
        };
        if self.swbp.reported != Some(pc) {
            self.swbp.reported = None;
            self.sw.stats.hits.fetch_add(1, Ordering::Relaxed);
            let a = self.call(DebugEvent::SwBreakpoint { pc });
            if let Some(end) = self.act(a) {
                return Some(end);
            }
            if self.shared.ctl_pending.load(Ordering::Acquire) {
                // Parked (or asked to) at the int3: step over after resume.
                self.swbp.reported = Some(pc);
                return None;
            }
        }
        self.swbp.reported = None;
        match self.emulate_over(pc, &entry) {
            Ok(true) => {
                self.sw.stats.emulated.fetch_add(1, Ordering::Relaxed);
                None
            }
            Ok(false) => {
                if !self.begin_vm_step(pc) {
                    // Another vCPU is stepping: it pauses this one; the
                    // int3 is hit again after that, without a new report.
                    self.swbp.reported = Some(pc);
                }
                None
            }
            Err(e) => Some(End::Vm(crate::VmExit::Error {
                vcpu: self.shared.index,
                message: e,
            })),
        }
    }

    /// Emulates the instruction under our int3 at `pc`; false if it is not
    /// in the emulated set (or its store cannot be done here).
    fn emulate_over(&mut self, pc: u64, e: &SwEntry) -> Result<bool, String> {
        let mut b = [0u8; MAX_INSN];
        let n = insn_bytes(&self.mem, e.gpa, &mut b);
        if n == 0 {
            return Ok(false);
        }
        b[0] = e.orig;
        let Some(insn) = step::decode(&b[..n]) else {
            return Ok(false);
        };
        let regs = match self.cache.regs {
            Some(r) => r,
            None => self
                .fd
                .get_regs()
                .map_err(|e| format!("KVM_GET_REGS: {e}"))?,
        };
        if regs.rip != pc {
            return Ok(false);
        }
        if insn.needs_long_mode() {
            let s = self
                .fd
                .get_sregs()
                .map_err(|e| format!("KVM_GET_SREGS: {e}"))?;
            if s.cs.l == 0 || s.efer & (1 << 10) == 0 {
                return Ok(false);
            }
        }
        let Some(st) = step::emulate(insn, &regs) else {
            return Ok(false);
        };
        if let Some((gva, data)) = st.write {
            if !self.store(gva, &data) {
                return Ok(false);
            }
        }
        self.cache.regs = Some(st.regs);
        self.cache.dirty = true;
        Ok(true)
    }

    /// Stores `data` at guest-virtual `gva` through this vCPU's page
    /// tables, if every byte is mapped writable RAM.
    fn store(&self, gva: u64, data: &[u8; 8]) -> bool {
        let split = (0x1000 - (gva & 0xfff)).min(8) as usize;
        let mut parts = [
            (gva, 0usize, split),
            (gva.wrapping_add(split as u64), split, 8),
        ];
        let n = if split == 8 { 1 } else { 2 };
        for p in parts.iter_mut().take(n) {
            match self.fd.translate_gva(p.0) {
                Ok(t) if t.valid != 0 && t.writeable != 0 => p.0 = t.physical_address,
                _ => return false,
            }
        }
        parts.iter().take(n).all(|&(gpa, from, to)| {
            self.mem
                .write_slice(&data[from..to], GuestAddress(gpa))
                .is_ok()
        })
    }

    /// Starts the single-step fallback over ours at `pc`: pauses every other
    /// vCPU, lifts the int3, single-steps. False if another vCPU holds it.
    fn begin_vm_step(&mut self, pc: u64) -> bool {
        if self
            .sw
            .stepping
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return false;
        }
        let me = self.shared.index;
        for s in self.exit.vcpus.get().into_iter().flatten() {
            if s.index == me {
                continue;
            }
            let mut flipped = false;
            s.change(|c| {
                if c.want == Want::Run {
                    c.want = Want::Pause;
                    flipped = true;
                }
            });
            if flipped {
                self.swbp.paused.push(s.clone());
            }
        }
        for s in &self.swbp.paused {
            crate::VcpuHandle { shared: s.clone() }.wait_state(
                |st| st == VcpuState::Paused || st == VcpuState::Stopped,
                PAUSE_WAIT,
            );
        }
        if !self.sw.lift(&self.mem, pc) {
            // Removed meanwhile: the restored instruction just runs.
            self.release_vm_step();
            return true;
        }
        self.sw.stats.single_stepped.fetch_add(1, Ordering::Relaxed);
        self.swbp.stepping = Some(pc);
        self.dbg.vm_step = true;
        self.dbg.block_irq = self.sw.block_irq;
        self.dbg.dirty = true;
        true
    }

    fn release_vm_step(&mut self) {
        for s in self.swbp.paused.drain(..) {
            s.change(|c| {
                if c.want == Want::Pause {
                    c.want = Want::Run;
                }
            });
        }
        self.sw.stepping.store(false, Ordering::Release);
    }

    /// After a single-step exit (DR6.BS): ends our fallback step if one was
    /// running (int3 back, others resumed). True if it was.
    pub(crate) fn vm_step_done(&mut self, dr6: u64) -> bool {
        const DR6_BS: u64 = 1 << 14;
        if dr6 & DR6_BS == 0 {
            return false;
        }
        let Some(pc) = self.swbp.stepping.take() else {
            return false;
        };
        self.sw.relower(&self.mem, pc);
        self.dbg.vm_step = false;
        self.dbg.dirty = true;
        self.release_vm_step();
        true
    }

    /// A vCPU thread that ends mid-step puts the int3 back and lets the
    /// others run.
    pub(crate) fn vm_step_abandon(&mut self) {
        if let Some(pc) = self.swbp.stepping.take() {
            self.sw.relower(&self.mem, pc);
            self.release_vm_step();
        }
    }
}

impl VcpuCtx<'_> {
    /// The VM-wide software-breakpoint list.
    pub fn sw_breakpoints(&self) -> &SwBreakpoints {
        self.sw
    }

    /// Inserts a VM-wide software breakpoint at guest-virtual `addr`,
    /// translated with this vCPU's current page tables (kernel text maps
    /// alike in every address space). See [`SwBreakpoints::insert`].
    pub fn insert_vm_sw_breakpoint(&self, addr: u64) -> Result<StepOver, DebugError> {
        let gpa = self
            .translate(addr)?
            .ok_or(DebugError::SwBreakpoint(addr, "not mapped"))?;
        self.sw.insert(self.mem, addr, gpa)
    }

    /// Removes a VM-wide software breakpoint, restoring its byte.
    pub fn remove_vm_sw_breakpoint(&self, addr: u64) -> Result<(), DebugError> {
        self.sw.remove(self.mem, addr)
    }
}

impl crate::Vm {
    /// The VM-wide software-breakpoint list (insert from any thread with
    /// the guest-physical address of the byte).
    pub fn sw_breakpoints(&self) -> &SwBreakpoints {
        &self.sw
    }

    /// Inserts a VM-wide software breakpoint at `gva`, byte at `gpa`.
    pub fn insert_sw_breakpoint(&self, gva: u64, gpa: u64) -> Result<StepOver, DebugError> {
        self.sw.insert(&self.mem, gva, gpa)
    }

    /// Removes a VM-wide software breakpoint, restoring its byte.
    pub fn remove_sw_breakpoint(&self, gva: u64) -> Result<(), DebugError> {
        self.sw.remove(&self.mem, gva)
    }
}
