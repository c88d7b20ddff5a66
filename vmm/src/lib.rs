//! The KVM virtual machine monitor: boots an unmodified Linux (ELF vmlinux or
//! bzImage) or a synthetic guest, one thread per vCPU, and exposes the hooks
//! introspection needs (registers, guest memory, hardware and software
//! breakpoints, single-step, kicks) without knowing about symbols or trace
//! formats.
//!
//! Structure follows Firecracker's `src/vmm`: addresses in [`layout`], pure
//! boot-state writers in [`arch`], KVM objects in [`vstate`], devices in
//! [`devices`], the boot order in [`builder`].

pub mod arch;
pub mod bench;
pub mod breakpoints;
pub mod builder;
pub mod debug;
pub mod devices;
pub mod layout;
pub mod probe;
pub mod vstate;

use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

pub use arch::step::StepInsn;
pub use breakpoints::{DebugError, HwBreakpoint, Watch};
pub use builder::{build, Boot, BuildError, HandlerFactory, Vm, VmConfig};
pub use debug::{Action, DebugEvent, DebugHandler};
pub use devices::serial::ConsoleOut;
pub use kvm_bindings::{kvm_regs, kvm_sregs};
pub use probe::{probe_native_virtualization, probe_sw_breakpoints, Probe};
pub use vstate::activity::VcpuActivity;
pub use vstate::control::{VcpuCtx, VcpuHandle};
pub use vstate::exit_time::TracerTime;
pub use vstate::state::VcpuState;
pub use vstate::swbp::{StepOver, SwBreakpoints, SwEntry, SwStats, TrapKind};
pub use vstate::vcpu::VmExit;

use devices::lock;

impl Vm {
    /// Handles of all vCPUs.
    pub fn vcpus(&self) -> Vec<VcpuHandle> {
        self.shared
            .iter()
            .map(|s| VcpuHandle { shared: s.clone() })
            .collect()
    }

    /// Handle of vCPU `i`.
    pub fn vcpu(&self, i: usize) -> Option<VcpuHandle> {
        self.shared.get(i).map(|s| VcpuHandle { shared: s.clone() })
    }

    /// Kicks every vCPU (sampling: each handler gets `DebugEvent::Kick`).
    pub fn kick_all(&self) {
        self.vcpus().iter().for_each(VcpuHandle::kick);
    }

    /// Sets hardware breakpoint `slot` on every vCPU (waits for each).
    pub fn set_hw_breakpoint_all(
        &self,
        slot: usize,
        bp: Option<HwBreakpoint>,
    ) -> Result<(), DebugError> {
        self.vcpus()
            .iter()
            .try_for_each(|h| h.set_hw_breakpoint(slot, bp))
    }

    /// Watches guest writes to `[gpa, gpa + len)` by page protection: the
    /// pages become read-only memory slots, every guest write to them exits
    /// to the monitor, which performs it and reports writes into the range
    /// as [`DebugEvent::WriteWatch`]. For platforms whose KVM does not
    /// deliver data breakpoints (its instruction emulator, KVM-PVM), and for
    /// more than four watches. Call it from a host thread, not a handler:
    /// running vCPUs are paused while the slots change, then resumed.
    pub fn watch_writes(&self, gpa: u64, len: u64) -> Result<(), DebugError> {
        if !self._kvm.check_extension(kvm_ioctls::Cap::ReadonlyMem) {
            return Err(DebugError::InvalidBreakpoint(
                "KVM lacks read-only memory slots",
            ));
        }
        let started = !self.threads.is_empty();
        if started && !self.pause_all(Duration::from_secs(10)) {
            return Err(DebugError::VcpuGone(0));
        }
        let res = self.protect(gpa, len);
        if started {
            self.resume_all();
        }
        res
    }

    fn protect(&self, gpa: u64, len: u64) -> Result<(), DebugError> {
        let mut g = lock(&self.slots);
        let (slots, next) = &mut *g;
        let mut page = gpa & !0xfff;
        while page < gpa + len.max(1) {
            if !vm_memory::GuestMemoryBackend::address_in_range(&self.mem, GuestAddress(page)) {
                return Err(DebugError::Memory(page, 0x1000));
            }
            if let Some((old, add)) = vstate::memory::split_readonly(slots, page, next) {
                let del = vstate::memory::Slot { size: 0, ..old };
                let kvm_err =
                    |_| DebugError::InvalidBreakpoint("KVM_SET_USER_MEMORY_REGION failed");
                vstate::vm::set_slot(&self._vm, &del).map_err(kvm_err)?;
                for s in &add {
                    vstate::vm::set_slot(&self._vm, s).map_err(kvm_err)?;
                }
                slots.retain(|s| s.id != old.id);
                slots.extend(add);
            }
            page += 0x1000;
        }
        self.watches
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .push((gpa, len));
        Ok(())
    }

    /// Guest memory.
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.mem
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

    /// Queues console input for the guest (raises IRQ 4 with an irqchip).
    pub fn inject_serial_input(&self, bytes: &[u8]) -> Result<usize, BuildError> {
        Ok(lock(&self.serial).inject(bytes)?)
    }

    /// Pauses every vCPU; true if all parked within `timeout`.
    pub fn pause_all(&self, timeout: Duration) -> bool {
        let v = self.vcpus();
        v.iter().for_each(|h| {
            h.shared
                .ctl_pending
                .store(true, std::sync::atomic::Ordering::Release)
        });
        v.iter().all(|h| h.pause(timeout))
    }

    /// Resumes every vCPU.
    pub fn resume_all(&self) {
        self.vcpus().iter().for_each(VcpuHandle::resume);
    }

    /// Stops the VM (the exit reason becomes [`VmExit::Stopped`] unless it
    /// already ended).
    pub fn stop(&self) {
        self.exit.end_vm(VmExit::Stopped);
    }

    /// Waits for the VM to end; `None` on timeout.
    pub fn wait(&self, timeout: Duration) -> Option<VmExit> {
        let deadline = Instant::now() + timeout;
        let mut r = lock(&self.exit.reason);
        loop {
            if let Some(e) = r.clone() {
                return Some(e);
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            r = self
                .exit
                .cond
                .wait_timeout(r, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Stops every vCPU and joins their threads.
    pub fn shutdown(&mut self) {
        for s in &self.shared {
            VcpuHandle { shared: s.clone() }.stop();
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        // No vCPU runs any more: every int3 of ours goes.
        self.sw.remove_all(&self.mem);
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.shutdown();
    }
}
