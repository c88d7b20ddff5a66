//! Debug hooks: hardware breakpoints (DR0-DR3), software breakpoints,
//! single-step, and what a debug handler can do with the per-vCPU context
//! ([`VcpuCtx`]) it gets on every debug exit and kick. The types they use
//! are in [`crate::breakpoints`]. Nothing here knows about symbols or trace
//! formats.

use kvm_bindings::{kvm_regs, kvm_sregs};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::breakpoints::{dr7, DebugError, HwBreakpoint, SwBp, Watch};
use crate::vstate::control::VcpuCtx;

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
