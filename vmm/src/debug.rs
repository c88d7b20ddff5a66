//! Debug hooks: hardware breakpoints (DR0-DR3), software breakpoints,
//! single-step, and the per-vCPU context a debug handler gets on every debug
//! exit and kick. Nothing here knows about symbols or trace formats.

use std::collections::HashMap;

use kvm_bindings::{
    kvm_guest_debug, kvm_regs, kvm_sregs, KVM_GUESTDBG_BLOCKIRQ, KVM_GUESTDBG_ENABLE,
    KVM_GUESTDBG_INJECT_BP, KVM_GUESTDBG_INJECT_DB, KVM_GUESTDBG_SINGLESTEP,
    KVM_GUESTDBG_USE_HW_BP, KVM_GUESTDBG_USE_SW_BP,
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
}

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

/// What caused a debug exit, as seen by the handler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DebugEvent {
    /// The vCPU thread started; breakpoints may be set here.
    Started,
    /// Hardware breakpoint `slot` (0..4) hit at instruction `pc`.
    HwBreakpoint {
        /// DR slot.
        slot: u8,
        /// Its watch kind.
        watch: Watch,
        /// Guest RIP (linear) at the exit.
        pc: u64,
    },
    /// One of our software breakpoints hit at `pc`.
    SwBreakpoint {
        /// Address of the int3.
        pc: u64,
    },
    /// A single step completed; `pc` is the next instruction.
    SingleStep {
        /// Guest RIP.
        pc: u64,
    },
    /// The vCPU was kicked (signal + immediate_exit).
    Kick,
    /// The guest wrote into a range watched by page protection
    /// ([`crate::Vm::watch_writes`]); reported after the write.
    WriteWatch {
        /// Guest-physical address written.
        gpa: u64,
        /// Bytes written.
        len: u8,
        /// Guest RIP after the writing instruction.
        pc: u64,
    },
}

/// What the vCPU does after the handler returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Resume the guest.
    Continue,
    /// Park this vCPU (paused) until resumed.
    Pause,
    /// Stop the whole VM.
    Stop,
}

/// Receives every debug exit and kick of one vCPU, on that vCPU's thread.
pub trait DebugHandler: Send {
    /// Called on each event; `ctx` reads and writes the vCPU and memory.
    fn on_event(&mut self, ctx: &mut VcpuCtx<'_>, event: DebugEvent) -> Action;
}

impl<F: FnMut(&mut VcpuCtx<'_>, DebugEvent) -> Action + Send> DebugHandler for F {
    fn on_event(&mut self, ctx: &mut VcpuCtx<'_>, event: DebugEvent) -> Action {
        self(ctx, event)
    }
}

struct SwBp {
    gpa: u64,
    orig: u8,
}

/// Per-vCPU debug state kept by the vCPU thread.
#[derive(Default)]
pub(crate) struct DebugState {
    pub(crate) hw: [Option<HwBreakpoint>; 4],
    pub(crate) single_step: bool,
    sw: HashMap<u64, SwBp>,
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

/// A vCPU as a handler sees it, valid on the vCPU's own thread while the
/// guest is stopped in an exit (or parked).
pub struct VcpuCtx<'a> {
    pub(crate) index: u32,
    pub(crate) fd: &'a VcpuFd,
    pub(crate) mem: &'a GuestMemoryMmap,
    pub(crate) dbg: &'a mut DebugState,
    pub(crate) cache: &'a mut RegCache,
    pub(crate) sw: &'a crate::vstate::swbp::SwBreakpoints,
    /// Every vCPU of the VM (empty where pausing the others makes no sense).
    pub(crate) vcpus: &'a [std::sync::Arc<crate::vstate::control::Shared>],
}

impl VcpuCtx<'_> {
    /// Index of this vCPU (= its APIC id).
    pub fn index(&self) -> u32 {
        self.index
    }

    /// General registers (read once per exit, then cached).
    pub fn regs(&mut self) -> Result<kvm_regs, DebugError> {
        if let Some(r) = self.cache.regs {
            return Ok(r);
        }
        let r = self
            .fd
            .get_regs()
            .map_err(|e| DebugError::Ioctl("KVM_GET_REGS", e))?;
        self.cache.regs = Some(r);
        Ok(r)
    }

    /// Sets general registers (written back before the guest resumes).
    pub fn set_regs(&mut self, regs: &kvm_regs) {
        self.cache.regs = Some(*regs);
        self.cache.dirty = true;
    }

    /// Special registers (CR0/3/4, EFER, segment bases incl. GS base).
    pub fn sregs(&self) -> Result<kvm_sregs, DebugError> {
        self.fd
            .get_sregs()
            .map_err(|e| DebugError::Ioctl("KVM_GET_SREGS", e))
    }

    /// Sets special registers now.
    pub fn set_sregs(&self, sregs: &kvm_sregs) -> Result<(), DebugError> {
        self.fd
            .set_sregs(sregs)
            .map_err(|e| DebugError::Ioctl("KVM_SET_SREGS", e))
    }

    /// Reads one MSR (e.g. 0xc000_0102, IA32_KERNEL_GS_BASE).
    pub fn msr(&self, index: u32) -> Result<u64, DebugError> {
        let mut msrs = kvm_bindings::Msrs::from_entries(&[kvm_bindings::kvm_msr_entry {
            index,
            ..Default::default()
        }])
        .map_err(|_| DebugError::InvalidBreakpoint("MSR list"))?;
        let n = self
            .fd
            .get_msrs(&mut msrs)
            .map_err(|e| DebugError::Ioctl("KVM_GET_MSRS", e))?;
        match (n, msrs.as_slice().first()) {
            (1, Some(e)) => Ok(e.data),
            _ => Err(DebugError::Ioctl(
                "KVM_GET_MSRS",
                kvm_ioctls::Error::new(libc::EINVAL),
            )),
        }
    }

    /// Reads guest-physical memory.
    pub fn read_phys(&self, gpa: u64, buf: &mut [u8]) -> Result<(), DebugError> {
        self.mem
            .read_slice(buf, GuestAddress(gpa))
            .map_err(|_| DebugError::Memory(gpa, buf.len()))
    }

    /// Writes guest-physical memory.
    pub fn write_phys(&self, gpa: u64, buf: &[u8]) -> Result<(), DebugError> {
        self.mem
            .write_slice(buf, GuestAddress(gpa))
            .map_err(|_| DebugError::Memory(gpa, buf.len()))
    }

    /// The guest memory itself (for bulk or zero-copy access).
    pub fn memory(&self) -> &GuestMemoryMmap {
        self.mem
    }

    /// Translates a guest-virtual address with the vCPU's current paging
    /// (KVM_TRANSLATE); `None` if not mapped.
    pub fn translate(&self, gva: u64) -> Result<Option<u64>, DebugError> {
        let t = self
            .fd
            .translate_gva(gva)
            .map_err(|e| DebugError::Ioctl("KVM_TRANSLATE", e))?;
        Ok((t.valid != 0).then_some(t.physical_address))
    }

    /// Sets (or clears with `None`) hardware breakpoint `slot` (0..4).
    pub fn set_hw_breakpoint(
        &mut self,
        slot: usize,
        bp: Option<HwBreakpoint>,
    ) -> Result<(), DebugError> {
        if slot >= 4 {
            return Err(DebugError::InvalidBreakpoint("slot must be 0..4"));
        }
        let mut hw = self.dbg.hw;
        hw[slot] = bp;
        self.dbg.dr7 = dr7(&hw)?;
        self.dbg.hw = hw;
        self.dbg.dirty = true;
        self.dbg.apply(self.fd)
    }

    /// The four hardware breakpoint slots.
    pub fn hw_breakpoints(&self) -> [Option<HwBreakpoint>; 4] {
        self.dbg.hw
    }

    /// Enables or disables single-stepping.
    pub fn set_single_step(&mut self, on: bool) -> Result<(), DebugError> {
        self.dbg.single_step = on;
        self.dbg.dirty = true;
        self.dbg.apply(self.fd)
    }

    /// Inserts a software breakpoint (int3) at guest-linear `addr`, whose
    /// byte lives at guest-physical `gpa`. Hardware KVM delivers it as a #BP
    /// exit ([`crate::probe_sw_breakpoints`]); where KVM's emulator fails on
    /// int3 instead (KVM-PVM), the monitor recognises its own int3 from the
    /// emulation failure. The byte is restored by
    /// [`Self::remove_sw_breakpoint`] or when the vCPU stops.
    pub fn insert_sw_breakpoint(&mut self, addr: u64, gpa: u64) -> Result<(), DebugError> {
        if self.dbg.sw.contains_key(&addr) {
            return Err(DebugError::SwBreakpoint(addr, "already set"));
        }
        let orig: u8 = self
            .mem
            .read_obj(GuestAddress(gpa))
            .map_err(|_| DebugError::Memory(gpa, 1))?;
        self.write_phys(gpa, &[0xcc])?;
        self.dbg.sw.insert(addr, SwBp { gpa, orig });
        self.dbg.dirty = true;
        self.dbg.apply(self.fd)
    }

    /// Removes a software breakpoint, restoring the original byte.
    pub fn remove_sw_breakpoint(&mut self, addr: u64) -> Result<(), DebugError> {
        let bp = self
            .dbg
            .sw
            .remove(&addr)
            .ok_or(DebugError::SwBreakpoint(addr, "not set"))?;
        if self.dbg.stepping_over != Some(addr) {
            self.write_phys(bp.gpa, &[bp.orig])?;
        }
        self.dbg.dirty = true;
        self.dbg.apply(self.fd)
    }
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
