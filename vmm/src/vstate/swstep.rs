//! The vCPU side of the VM-wide software breakpoints ([`super::swbp`]):
//! reporting a hit, stepping over it by emulation or by the single-step
//! fallback (every other vCPU paused meanwhile), reinjecting an int3 that
//! is not ours; and the API on [`VcpuCtx`] and [`crate::Vm`].

use std::sync::atomic::Ordering;

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use super::control::VcpuCtx;
use super::swbp::{insn_bytes, StepOver, SwBreakpoints, SwEntry, TrapKind};
use super::vcpu::{End, Runner};
use crate::arch::emulate;
use crate::arch::step::{self, MAX_INSN};
use crate::breakpoints::{DebugError, DR6_BS};
use crate::debug::DebugEvent;

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
                .is_some_and(|g| self.sw.trap_in_memory(&self.mem, g));
            if still && self.sw.trap() == TrapKind::Int3 {
                self.sw.stats.reinjected.fetch_add(1, Ordering::Relaxed);
                self.dbg.reinject(3);
            }
            // Else ours was removed meanwhile: run the restored bytes.
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
            Err(e) => Some(End::Vm(crate::vstate::vcpu::VmExit::Error {
                vcpu: self.shared.index,
                message: e,
            })),
        }
    }

    /// Emulates the instruction(s) under our trap at `pc` (the prologue
    /// set of [`step`], else [`emulate`]'s); false if one is in neither,
    /// or an operand or store is not plain RAM here: then the CPU runs it.
    fn emulate_over(&mut self, pc: u64, e: &SwEntry) -> Result<bool, String> {
        let mut b = [0u8; MAX_INSN];
        let n = insn_bytes(&self.mem, e.gpa, &mut b);
        let len = usize::from(e.len);
        if n < len {
            return Ok(false);
        }
        b[..len].copy_from_slice(&e.orig[..len]);
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
        let sregs = self
            .fd
            .get_sregs()
            .map_err(|e| format!("KVM_GET_SREGS: {e}"))?;
        // Every emulated form is decoded as 64-bit code.
        if sregs.cs.l == 0 || sregs.efer & (1 << 10) == 0 {
            return Ok(false);
        }
        let mut view = VcpuView {
            fd: &self.fd,
            mem: &self.mem,
            sregs: &sregs,
            pending: [None; 2],
        };
        let mut now = regs;
        let mut done = 0usize;
        // A 2-byte trap over a 1-byte instruction covers the next one too
        // (at most two instructions: a trap is at most 2 bytes).
        for slot in 0..2 {
            if done >= len {
                break;
            }
            let code = &b[done..n];
            let (after, store) = match step::decode(code) {
                Some(insn) => match step::emulate(insn, &now) {
                    Some(st) => (st.regs, st.write.map(|(gva, data)| (gva, data, 8))),
                    None => return Ok(false),
                },
                None => match emulate::emulate(code, &now, &view) {
                    Some(fx) => (
                        fx.regs,
                        fx.store.map(|s| (s.gva, s.bytes, usize::from(s.len))),
                    ),
                    None => return Ok(false),
                },
            };
            done = after.rip.wrapping_sub(pc) as usize;
            now = after;
            view.pending[slot] = store;
        }
        if done < len {
            return Ok(false);
        }
        // Every store's bytes are found writable before any is written
        // (no allocation: this is the trap path).
        let mut writes = [None; 2];
        for (w, &(gva, data, l)) in writes.iter_mut().zip(view.pending.iter().flatten()) {
            match self.writable(gva, l) {
                Some(parts) => *w = Some((parts, data)),
                None => return Ok(false),
            }
        }
        for (parts, data) in writes.into_iter().flatten() {
            for (gpa, from, to) in parts.into_iter().flatten() {
                if self
                    .mem
                    .write_slice(&data[from..to], GuestAddress(gpa))
                    .is_err()
                {
                    return Err(format!("guest memory at {gpa:#x} vanished during a store"));
                }
            }
        }
        self.cache.regs = Some(now);
        self.cache.dirty = true;
        Ok(true)
    }

    /// Where `len` bytes at guest-virtual `gva` are in guest-physical
    /// memory (at most two pages), if every byte is mapped writable RAM.
    fn writable(&self, gva: u64, len: usize) -> Option<[Option<(u64, usize, usize)>; 2]> {
        let split = ((0x1000 - (gva & 0xfff)) as usize).min(len);
        let mut parts = [Some((gva, 0, split)), None];
        if split < len {
            parts[1] = Some((gva.wrapping_add(split as u64), split, len));
        }
        for p in parts.iter_mut().flatten() {
            let t = self.fd.translate_gva(p.0).ok()?;
            if t.valid == 0 || t.writeable == 0 {
                return None;
            }
            let in_ram = self
                .mem
                .address_in_range(GuestAddress(t.physical_address + (p.2 - p.1) as u64 - 1));
            if !in_ram {
                return None;
            }
            p.0 = t.physical_address;
        }
        Some(parts)
    }

    /// A write to [`crate::layout::TRAP_PORT`]: one of our port-I/O traps
    /// if the `out` ran at a trap of the list (then handled like an int3
    /// and `Some`), else the guest's own write (`None`: the caller passes
    /// it to the bus; the `out` is complete).
    ///
    /// KVM completes an `out` on the next KVM_RUN by skipping it (where
    /// it did not emulate it, and only if RIP did not change meanwhile).
    /// That completion is done here at once, with `immediate_exit` (no
    /// guest instruction runs), so RIP is past the 2-byte `out` whichever
    /// path KVM took; then RIP is put back on the trap. From there the
    /// vCPU is exactly as at an int3 exit, and every way on (emulation,
    /// single steps over the restored bytes, parking and running the trap
    /// again) needs no special case.
    pub(crate) fn vm_pio_exit(&mut self) -> Option<Option<End>> {
        if self.sw.trap() != TrapKind::PortIo || !self.sw.enabled() {
            return None;
        }
        self.fd.set_kvm_immediate_exit(1);
        let completed = match self.fd.run() {
            Err(e) => e.errno() == libc::EINTR,
            Ok(_) => false,
        };
        self.fd.set_kvm_immediate_exit(0);
        if !completed {
            let m = "KVM_RUN with immediate_exit did not complete a port write".to_string();
            return Some(Some(self.err(m)));
        }
        let mut regs = match self.fd.get_regs() {
            Ok(r) => r,
            Err(e) => return Some(Some(self.err(format!("KVM_GET_REGS: {e}")))),
        };
        let pc = regs.rip.wrapping_sub(TrapKind::PortIo.length());
        self.swbp.view.get(&self.sw, pc)?;
        regs.rip = pc;
        if let Err(e) = self.fd.set_regs(&regs) {
            return Some(Some(self.err(format!("KVM_SET_REGS: {e}"))));
        }
        self.cache.regs = Some(regs);
        self.cache.dirty = false;
        Some(self.vm_sw_exit(pc))
    }

    /// Starts the single-step fallback over ours at `pc`: pauses every other
    /// vCPU, lifts the int3, single-steps. False if another vCPU holds it.
    fn begin_vm_step(&mut self, pc: u64) -> bool {
        if !self.sw.claim_step() {
            return false;
        }
        let all = self.exit.vcpus.get().map_or(&[][..], Vec::as_slice);
        match super::pause::pause_others(self.shared.index, all) {
            Some(flipped) => self.swbp.paused = flipped,
            None => {
                // Some vCPU did not park: lifting the trap now would let it
                // run the restored bytes unseen. The int3 is hit again.
                self.sw.release_step();
                return false;
            }
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
        super::pause::resume(self.swbp.paused.drain(..));
        self.sw.release_step();
    }

    /// After a single-step exit (DR6.BS): ends our fallback step if one was
    /// running (trap back, others resumed) once RIP is out of the covered
    /// bytes. True if the step was ours.
    pub(crate) fn vm_step_done(&mut self, dr6: u64) -> bool {
        if dr6 & DR6_BS == 0 {
            return false;
        }
        let Some(pc) = self.swbp.stepping else {
            return false;
        };
        let len = self
            .swbp
            .view
            .get(&self.sw, pc)
            .map_or(1, |e| u64::from(e.len));
        let rip = self
            .cache
            .regs
            .map(|r| r.rip)
            .or_else(|| self.fd.get_regs().ok().map(|r| r.rip));
        if rip.is_some_and(|r| r > pc && r < pc + len) {
            // Inside a 2-byte trap's bytes: step the next instruction too.
            return true;
        }
        self.swbp.stepping = None;
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

    /// How a VM-wide software breakpoint at guest-virtual `addr` would be
    /// stepped over (nothing is written).
    pub fn classify_vm_sw_breakpoint(&self, addr: u64) -> Result<StepOver, DebugError> {
        let gpa = self
            .translate(addr)?
            .ok_or(DebugError::SwBreakpoint(addr, "not mapped"))?;
        self.sw.classify(self.mem, gpa)
    }

    /// Removes a VM-wide software breakpoint, restoring its byte.
    pub fn remove_vm_sw_breakpoint(&self, addr: u64) -> Result<(), DebugError> {
        self.sw.remove(self.mem, addr)
    }
}

impl crate::builder::Vm {
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

/// The guest as [`emulate`] reads it from a vCPU stopped at a trap: its
/// page tables and segment bases; reads overlapping a store still to be
/// made (the first of two covered instructions) are refused.
struct VcpuView<'a> {
    fd: &'a kvm_ioctls::VcpuFd,
    mem: &'a vm_memory::GuestMemoryMmap,
    sregs: &'a kvm_bindings::kvm_sregs,
    pending: [Option<PendingStore>; 2],
}

/// A store an emulated instruction makes: address, bytes, length.
type PendingStore = (u64, [u8; 8], usize);

impl emulate::GuestView for VcpuView<'_> {
    fn read(&self, gva: u64, buf: &mut [u8]) -> bool {
        let end = gva.wrapping_add(buf.len() as u64);
        if self
            .pending
            .iter()
            .flatten()
            .any(|&(at, _, l)| gva < at.wrapping_add(l as u64) && at < end)
        {
            return false;
        }
        let mut done = 0usize;
        while done < buf.len() {
            let at = gva.wrapping_add(done as u64);
            let n = ((0x1000 - (at & 0xfff)) as usize).min(buf.len() - done);
            let gpa = match self.fd.translate_gva(at) {
                Ok(t) if t.valid != 0 => t.physical_address,
                _ => return false,
            };
            if self
                .mem
                .read_slice(&mut buf[done..done + n], GuestAddress(gpa))
                .is_err()
            {
                return false;
            }
            done += n;
        }
        true
    }

    fn fs_base(&self) -> Option<u64> {
        Some(self.sregs.fs.base)
    }

    fn gs_base(&self) -> Option<u64> {
        Some(self.sregs.gs.base)
    }
}
