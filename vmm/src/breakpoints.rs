//! A vCPU's debug state and the types of the debug API: hardware
//! breakpoints and their DR7, the vCPU's own software breakpoints, what
//! KVM_SET_GUEST_DEBUG gets, the registers cached for one exit, and the
//! errors. The hooks that use them are in [`crate::debug`].

use std::collections::HashMap;

use kvm_bindings::{
    kvm_guest_debug, kvm_regs, KVM_GUESTDBG_BLOCKIRQ, KVM_GUESTDBG_ENABLE, KVM_GUESTDBG_INJECT_BP,
    KVM_GUESTDBG_INJECT_DB, KVM_GUESTDBG_SINGLESTEP, KVM_GUESTDBG_USE_HW_BP,
    KVM_GUESTDBG_USE_SW_BP,
};
use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Errors of the debug API.
#[derive(Debug, thiserror::Error)]
pub enum DebugError {
    /// A vCPU ioctl failed.
    #[error("{0} failed: {1}")]
    Ioctl(&'static str, kvm_ioctls::Error),
    /// Guest-physical access outside RAM.
    #[error("guest-physical access at {0:#x} (+{1}) is outside guest memory")]
    Memory(u64, usize),
    /// Invalid breakpoint slot or length.
    #[error("invalid hardware breakpoint: {0}")]
    InvalidBreakpoint(&'static str),
    /// A software breakpoint already exists or does not.
    #[error("software breakpoint at {0:#x}: {1}")]
    SwBreakpoint(u64, &'static str),
    /// The vCPU is gone.
    #[error("vCPU {0} has stopped")]
    VcpuGone(u32),
    /// The vCPU's thread did not take a request in time.
    #[error("vCPU {0} did not answer within {1:?}")]
    VcpuBusy(u32, std::time::Duration),
}

/// DR6.BS: the #DB is a single-step trap.
pub(crate) const DR6_BS: u64 = 1 << 14;

/// What a hardware breakpoint watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Watch {
    /// Instruction fetch at the address (a fault: reported before it runs).
    Exec,
    /// Data writes (a trap: reported after the writing instruction).
    Write,
    /// Data reads or writes.
    ReadWrite,
}

/// One hardware breakpoint at a guest-linear address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HwBreakpoint {
    /// Guest-virtual (linear) address, aligned to `len` for data watches.
    pub addr: u64,
    /// Kind.
    pub watch: Watch,
    /// 1, 2, 4 or 8 bytes (1 for `Exec`).
    pub len: u8,
}

impl HwBreakpoint {
    /// An execute breakpoint.
    pub fn exec(addr: u64) -> Self {
        HwBreakpoint {
            addr,
            watch: Watch::Exec,
            len: 1,
        }
    }

    /// A write watchpoint of `len` bytes.
    pub fn write(addr: u64, len: u8) -> Self {
        HwBreakpoint {
            addr,
            watch: Watch::Write,
            len,
        }
    }
}

/// DR7 for up to four breakpoints (global enables, GE and the reserved bit).
pub fn dr7(bps: &[Option<HwBreakpoint>; 4]) -> Result<u64, DebugError> {
    let mut v = 0x600u64;
    for (i, bp) in bps.iter().enumerate() {
        let Some(bp) = bp else { continue };
        let rw = match bp.watch {
            Watch::Exec => 0,
            Watch::Write => 1,
            Watch::ReadWrite => 3,
        };
        let len = match (bp.watch, bp.len) {
            (Watch::Exec, _) => 0,
            (_, 1) => 0,
            (_, 2) => 1,
            (_, 8) => 2,
            (_, 4) => 3,
            _ => return Err(DebugError::InvalidBreakpoint("length must be 1, 2, 4 or 8")),
        };
        if bp.watch != Watch::Exec && bp.addr % u64::from(bp.len) != 0 {
            return Err(DebugError::InvalidBreakpoint(
                "data watch not aligned to its length",
            ));
        }
        v |= 2 << (2 * i);
        v |= (rw | (len << 2)) << (16 + 4 * i);
    }
    Ok(v)
}

/// One of a vCPU's own software breakpoints: where its int3 is and the
/// byte it replaced.
pub(crate) struct SwBp {
    pub(crate) gpa: u64,
    pub(crate) orig: u8,
}

/// Per-vCPU debug state kept by the vCPU thread.
#[derive(Default)]
pub(crate) struct DebugState {
    pub(crate) hw: [Option<HwBreakpoint>; 4],
    pub(crate) single_step: bool,
    pub(crate) sw: HashMap<u64, SwBp>,
    /// Stepping over our int3 at this linear address (re-insert after).
    pub(crate) stepping_over: Option<u64>,
    /// Exec breakpoint slot lifted while single-stepping over its
    /// instruction (where KVM ignores RFLAGS.RF, e.g. in its emulator).
    pub(crate) suppressed: Option<usize>,
    pub(crate) inject: u32,
    pub(crate) dirty: bool,
    pub(crate) dr7: u64,
    /// The VM traps every int3 (VM-wide software breakpoints).
    pub(crate) vm_sw: bool,
    /// Single-stepping over a VM-wide software breakpoint.
    pub(crate) vm_step: bool,
    /// Hold interrupts off during that step (KVM_GUESTDBG_BLOCKIRQ).
    pub(crate) block_irq: bool,
}

impl DebugState {
    /// Initial state; `vm_sw`: trap int3 from the first entry.
    pub(crate) fn with_vm_sw(vm_sw: bool) -> Self {
        DebugState {
            vm_sw,
            dirty: vm_sw,
            ..DebugState::default()
        }
    }

    /// Writes KVM_SET_GUEST_DEBUG if anything changed.
    pub(crate) fn apply(&mut self, fd: &VcpuFd) -> Result<(), DebugError> {
        if !self.dirty {
            return Ok(());
        }
        let mut dbg = kvm_guest_debug::default();
        let any_hw = self.hw.iter().any(Option::is_some);
        let step = self.single_step
            || self.stepping_over.is_some()
            || self.suppressed.is_some()
            || self.vm_step;
        let use_sw = !self.sw.is_empty() || self.vm_sw;
        if any_hw || step || use_sw || self.inject != 0 {
            dbg.control = KVM_GUESTDBG_ENABLE | self.inject;
        }
        if any_hw {
            dbg.control |= KVM_GUESTDBG_USE_HW_BP;
            for (i, bp) in self.hw.iter().enumerate() {
                dbg.arch.debugreg[i] = bp.map_or(0, |b| b.addr);
            }
            dbg.arch.debugreg[7] = match self.suppressed {
                Some(slot) => self.dr7 & !(3 << (2 * slot)),
                None => self.dr7,
            };
        }
        if step {
            dbg.control |= KVM_GUESTDBG_SINGLESTEP;
        }
        if self.vm_step && self.block_irq {
            dbg.control |= KVM_GUESTDBG_BLOCKIRQ;
        }
        if use_sw {
            dbg.control |= KVM_GUESTDBG_USE_SW_BP;
        }
        fd.set_guest_debug(&dbg)
            .map_err(|e| DebugError::Ioctl("KVM_SET_GUEST_DEBUG", e))?;
        self.dirty = self.inject != 0;
        self.inject = 0;
        Ok(())
    }

    pub(crate) fn is_ours_sw(&self, pc: u64) -> bool {
        self.sw.contains_key(&pc)
    }

    pub(crate) fn reinject(&mut self, exception: u32) {
        self.inject = if exception == 3 {
            KVM_GUESTDBG_INJECT_BP
        } else {
            KVM_GUESTDBG_INJECT_DB
        };
        self.dirty = true;
    }

    /// Lifts our int3 at `pc` and single-steps the original instruction.
    pub(crate) fn begin_step_over(&mut self, mem: &GuestMemoryMmap, pc: u64) {
        if let Some(bp) = self.sw.get(&pc) {
            let _ = mem.write_obj(bp.orig, GuestAddress(bp.gpa));
            self.stepping_over = Some(pc);
            self.dirty = true;
        }
    }

    /// Puts the int3 back after the step; true if the step was only ours.
    pub(crate) fn end_step_over(&mut self, mem: &GuestMemoryMmap) -> bool {
        let Some(pc) = self.stepping_over.take() else {
            return false;
        };
        if let Some(bp) = self.sw.get(&pc) {
            let _ = mem.write_obj(0xccu8, GuestAddress(bp.gpa));
        }
        self.dirty = true;
        !self.single_step
    }

    /// Restores every byte we changed (detach).
    pub(crate) fn remove_all_sw(&mut self, mem: &GuestMemoryMmap) {
        for (_, bp) in self.sw.drain() {
            let _ = mem.write_obj(bp.orig, GuestAddress(bp.gpa));
        }
        self.dirty = true;
    }
}

/// Cached registers of the vCPU in the current exit.
#[derive(Default)]
pub(crate) struct RegCache {
    pub(crate) regs: Option<kvm_regs>,
    pub(crate) dirty: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dr7_encoding() {
        let mut bps = [None; 4];
        assert_eq!(dr7(&bps).unwrap(), 0x600);
        bps[0] = Some(HwBreakpoint::exec(0x1000));
        bps[3] = Some(HwBreakpoint::write(0x2000, 8));
        let v = dr7(&bps).unwrap();
        assert_eq!(v & 0xff, 0x2 | 0x80);
        assert_eq!((v >> 16) & 0xf, 0);
        assert_eq!((v >> 28) & 0xf, 0b1001);
        bps[1] = Some(HwBreakpoint::write(0x2001, 4));
        assert!(dr7(&bps).is_err());
    }
}
