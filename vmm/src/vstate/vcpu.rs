//! vCPU creation and configuration, and the vCPU thread's run loop.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::Instant;

use kvm_bindings::{
    kvm_mp_state, kvm_regs, KVM_MAX_CPUID_ENTRIES, KVM_MP_STATE_RUNNABLE, KVM_SYSTEM_EVENT_RESET,
    KVM_SYSTEM_EVENT_SHUTDOWN,
};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};
use vm_memory::GuestMemoryMmap;

use super::control::VcpuCtx;
use super::control::{set_thread_kvm_run, Shared, VcpuState, Want};
use crate::arch::{cpuid, msr, regs};
use crate::breakpoints::{DebugState, RegCache, DR6_BS};
use crate::debug::{Action, DebugEvent, DebugHandler};
use crate::devices::{lock, IoAction, PioBus};

/// Errors of creating or configuring a vCPU.
#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    /// KVM_CREATE_VCPU failed.
    #[error("cannot create vCPU {0}: {1}")]
    Create(u32, kvm_ioctls::Error),
    /// A configuration ioctl failed.
    #[error("configuring vCPU {0}: {1} failed: {2}")]
    Ioctl(u32, &'static str, kvm_ioctls::Error),
    /// Registers.
    #[error("configuring vCPU {0}: {1}")]
    Regs(u32, regs::RegsError),
    /// MSRs.
    #[error("configuring vCPU {0}: {1}")]
    Msr(u32, msr::MsrError),
}

/// How the whole VM ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmExit {
    /// The guest asked for a reset (i8042 0xfe, or a KVM reset event).
    Reset,
    /// The guest asked to power off (KVM system event).
    Shutdown,
    /// A vCPU triple-faulted (KVM_EXIT_SHUTDOWN).
    TripleFault {
        /// Which vCPU.
        vcpu: u32,
        /// Where it was: RIP, RSP and CR2 after the fault (0 if unreadable).
        rip: u64,
        rsp: u64,
        cr2: u64,
    },
    /// Every vCPU executed HLT (only without the in-kernel irqchip).
    Halted,
    /// The host or a debug handler stopped it.
    Stopped,
    /// A vCPU failed.
    Error {
        /// Which vCPU.
        vcpu: u32,
        /// What happened.
        message: String,
    },
}

/// How one vCPU thread ended.
pub(crate) enum End {
    Halted,
    Stopped,
    Vm(VmExit),
}

/// The VM-wide outcome, shared by all vCPU threads.
pub(crate) struct ExitState {
    pub(crate) reason: Mutex<Option<VmExit>>,
    pub(crate) cond: Condvar,
    live: AtomicUsize,
    pub(crate) vcpus: OnceLock<Vec<Arc<Shared>>>,
}

impl ExitState {
    pub(crate) fn new(n: usize) -> Arc<Self> {
        Arc::new(ExitState {
            reason: Mutex::new(None),
            cond: Condvar::new(),
            live: AtomicUsize::new(n),
            vcpus: OnceLock::new(),
        })
    }

    /// Records `exit` (the first one wins) and stops every vCPU.
    pub(crate) fn end_vm(&self, exit: VmExit) {
        {
            let mut r = lock(&self.reason);
            if r.is_none() {
                *r = Some(exit);
            }
        }
        for v in self.vcpus.get().into_iter().flatten() {
            crate::vstate::control::VcpuHandle { shared: v.clone() }.stop();
        }
        self.cond.notify_all();
    }

    fn vcpu_done(&self, end: End) {
        match end {
            End::Vm(e) => self.end_vm(e),
            End::Halted | End::Stopped => {}
        }
        if self.live.fetch_sub(1, Ordering::AcqRel) == 1 {
            let mut r = lock(&self.reason);
            if r.is_none() {
                *r = Some(VmExit::Halted);
            }
        }
        self.cond.notify_all();
    }
}

/// Per-vCPU configuration inputs.
pub struct VcpuConfig {
    /// Number of vCPUs in the VM.
    pub count: u32,
    /// In-kernel irqchip present (LAPIC LINT setup).
    pub irqchip: bool,
    /// Hide XSAVE from the guest.
    pub emulator_cpuid: bool,
    /// Make application processors runnable at once (synthetic guests with
    /// an irqchip; Linux starts them with INIT/SIPI instead).
    pub aps_runnable: bool,
}

/// Creates vCPU `index` and writes its boot state.
pub fn create(
    kvm: &Kvm,
    vm: &VmFd,
    index: u32,
    cfg: &VcpuConfig,
    boot: &kvm_regs,
) -> Result<VcpuFd, VcpuError> {
    let fd = vm
        .create_vcpu(u64::from(index))
        .map_err(|e| VcpuError::Create(index, e))?;
    let mut cpuid = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(|e| VcpuError::Ioctl(index, "KVM_GET_SUPPORTED_CPUID", e))?;
    cpuid::normalize(
        cpuid.as_mut_slice(),
        cpuid::CpuidParams {
            vcpu_index: index,
            vcpu_count: cfg.count,
            emulator_cpuid: cfg.emulator_cpuid,
            tsc_deadline: cfg.irqchip && kvm.check_extension(kvm_ioctls::Cap::TscDeadlineTimer),
        },
    );
    fd.set_cpuid2(&cpuid)
        .map_err(|e| VcpuError::Ioctl(index, "KVM_SET_CPUID2", e))?;
    msr::setup_msrs(&fd).map_err(|e| VcpuError::Msr(index, e))?;
    regs::setup_vcpu_regs(&fd, boot).map_err(|e| VcpuError::Regs(index, e))?;
    if cfg.irqchip {
        regs::setup_lint(&fd).map_err(|e| VcpuError::Regs(index, e))?;
        if cfg.aps_runnable && index != 0 {
            let st = kvm_mp_state {
                mp_state: KVM_MP_STATE_RUNNABLE,
            };
            fd.set_mp_state(st)
                .map_err(|e| VcpuError::Ioctl(index, "KVM_SET_MP_STATE", e))?;
        }
    }
    Ok(fd)
}

fn lock_read<T>(l: &std::sync::RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|e| e.into_inner())
}

/// Everything a vCPU thread owns.
pub(crate) struct Runner {
    pub(crate) fd: VcpuFd,
    pub(crate) mem: GuestMemoryMmap,
    pub(crate) bus: Arc<PioBus>,
    pub(crate) shared: Arc<Shared>,
    pub(crate) exit: Arc<ExitState>,
    pub(crate) handler: Option<Box<dyn DebugHandler>>,
    pub(crate) dbg: DebugState,
    pub(crate) cache: RegCache,
    pub(crate) rf: bool,
    /// KVM was seen ignoring RFLAGS.RF (KVM-PVM's emulator).
    pub(crate) rf_ignored: bool,
    pub(crate) watches: Arc<std::sync::RwLock<Vec<(u64, u64)>>>,
    /// A watched write to report before re-entering the guest.
    pub(crate) pending_watch: Option<(u64, u8)>,
    /// The VM-wide software breakpoints and this vCPU's view of them.
    pub(crate) sw: Arc<super::swbp::SwBreakpoints>,
    pub(crate) swbp: super::sw_local::SwLocal,
}

impl Runner {
    /// The thread body.
    pub(crate) fn run(mut self) {
        self.shared.register_thread();
        set_thread_kvm_run(self.fd.get_kvm_run() as *mut _);
        self.shared.set_state(VcpuState::Running);
        let end = self.run_loop();
        set_thread_kvm_run(std::ptr::null_mut());
        self.vm_step_abandon();
        self.dbg.remove_all_sw(&self.mem);
        {
            let mut c = lock(&self.shared.control);
            self.shared
                .state
                .store(VcpuState::Stopped as u8, Ordering::Release);
            c.requests.clear();
            self.shared.cond.notify_all();
        }
        self.exit.vcpu_done(end);
    }

    pub(crate) fn err(&self, message: String) -> End {
        End::Vm(VmExit::Error {
            vcpu: self.shared.index,
            message,
        })
    }

    pub(crate) fn call(&mut self, ev: DebugEvent) -> Action {
        let Some(h) = self.handler.as_mut() else {
            return Action::Continue;
        };
        let mut ctx = VcpuCtx {
            index: self.shared.index,
            fd: &self.fd,
            mem: &self.mem,
            dbg: &mut self.dbg,
            cache: &mut self.cache,
            sw: &self.sw,
            vcpus: self.exit.vcpus.get().map_or(&[], Vec::as_slice),
        };
        h.on_event(&mut ctx, ev)
    }

    /// Applies a handler's decision; `Some` ends the loop.
    pub(crate) fn act(&mut self, a: Action) -> Option<End> {
        match a {
            Action::Continue => None,
            Action::Stop => Some(End::Vm(VmExit::Stopped)),
            Action::Pause => {
                let mut c = lock(&self.shared.control);
                if c.want == Want::Run {
                    c.want = Want::Pause;
                }
                self.shared.ctl_pending.store(true, Ordering::Release);
                None
            }
        }
    }

    /// Runs queued requests, parks while paused; `Some` on stop.
    fn service_control(&mut self) -> Option<End> {
        let mut c = lock(&self.shared.control);
        self.shared.ctl_pending.store(false, Ordering::Release);
        loop {
            while let Some(req) = c.requests.pop_front() {
                drop(c);
                let mut ctx = VcpuCtx {
                    index: self.shared.index,
                    fd: &self.fd,
                    mem: &self.mem,
                    dbg: &mut self.dbg,
                    cache: &mut self.cache,
                    sw: &self.sw,
                    // A request runs on a parked vCPU: it pauses no one.
                    vcpus: &[],
                };
                req(&mut ctx);
                c = lock(&self.shared.control);
            }
            let st = match c.want {
                Want::Stop => return Some(End::Stopped),
                Want::Run => VcpuState::Running,
                Want::Pause => VcpuState::Paused,
            };
            if self.shared.state() != st {
                self.shared.state.store(st as u8, Ordering::Release);
                self.shared.cond.notify_all();
            }
            if st == VcpuState::Running {
                return None;
            }
            c = self.shared.cond.wait(c).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Writes back what the exit changed before re-entering the guest.
    fn prepare_entry(&mut self) -> Result<(), String> {
        self.dbg.apply(&self.fd).map_err(|e| e.to_string())?;
        if self.rf {
            let mut r = match self.cache.regs {
                Some(r) => r,
                None => self
                    .fd
                    .get_regs()
                    .map_err(|e| format!("KVM_GET_REGS: {e}"))?,
            };
            r.rflags |= 1 << 16;
            self.cache.regs = Some(r);
            self.cache.dirty = true;
            self.rf = false;
        }
        if self.cache.dirty {
            if let Some(r) = self.cache.regs {
                self.fd
                    .set_regs(&r)
                    .map_err(|e| format!("KVM_SET_REGS: {e}"))?;
            }
            self.cache.dirty = false;
        }
        self.cache.regs = None;
        Ok(())
    }

    /// After an emulation failure (KVM-PVM), completes what the emulator
    /// could not: at an `int3`, our software breakpoint gives `Some(pc)`
    /// (reported like a #BP exit) and the guest's own is delivered to it as
    /// #BP with RIP past the instruction, as the CPU would; `fwait` is
    /// skipped. Any other failure is `Err`.
    fn recover_emulation_failure(&mut self) -> Result<Option<u64>, ()> {
        // SAFETY: the exit reason is KVM_EXIT_INTERNAL_ERROR, so `internal`
        // is the active member of the union.
        let sub = unsafe { self.fd.get_kvm_run().__bindgen_anon_1.internal.suberror };
        if sub != 1 {
            return Err(());
        }
        let mut regs = self.fd.get_regs().map_err(|_| ())?;
        let sregs = self.fd.get_sregs().map_err(|_| ())?;
        let pc = regs.rip.wrapping_add(sregs.cs.base);
        let t = self.fd.translate_gva(pc).map_err(|_| ())?;
        if t.valid == 0 {
            return Err(());
        }
        let mut b = [0u8; 1];
        vm_memory::Bytes::read_slice(
            &self.mem,
            &mut b,
            vm_memory::GuestAddress(t.physical_address),
        )
        .map_err(|_| ())?;
        if b[0] == 0x9b {
            // fwait: no x87 exception can be pending in a guest we start
            // with all x87 exceptions masked; completing it is a no-op.
            regs.rip += 1;
            self.fd.set_regs(&regs).map_err(|_| ())?;
            return Ok(None);
        }
        if b[0] != 0xcc {
            return Err(());
        }
        if self.dbg.is_ours_sw(pc) || self.vm_sw_is_ours(pc) {
            return Ok(Some(pc));
        }
        regs.rip += 1;
        self.fd.set_regs(&regs).map_err(|_| ())?;
        let mut ev = self.fd.get_vcpu_events().map_err(|_| ())?;
        ev.exception.injected = 1;
        ev.exception.nr = 3;
        ev.exception.has_error_code = 0;
        ev.exception.error_code = 0;
        self.fd.set_vcpu_events(&ev).map_err(|_| ())?;
        Ok(None)
    }

    fn internal_error(&mut self) -> String {
        // SAFETY: the exit reason is KVM_EXIT_INTERNAL_ERROR, so `internal`
        // is the active member of the union.
        let sub = unsafe { self.fd.get_kvm_run().__bindgen_anon_1.internal.suberror };
        let rip = self.fd.get_regs().map(|r| r.rip).unwrap_or(0);
        let what = if sub == 1 {
            " (instruction emulation failed: this KVM emulates guest code, e.g. KVM-PVM)"
        } else {
            ""
        };
        format!("KVM_EXIT_INTERNAL_ERROR suberror {sub}{what} at rip {rip:#x}")
    }

    fn run_loop(&mut self) -> End {
        let a = self.call(DebugEvent::Started);
        if let Some(end) = self.act(a) {
            return end;
        }
        // Set while handling an exit the tracer caused (see `exit_time`):
        // when it began, and whether it was an exit of KVM_RUN.
        let mut handling: Option<(Instant, bool)> = None;
        loop {
            // A kick that raced with the previous exit (or came before the
            // thread registered for signals) is seen here.
            if self.shared.kick_pending.load(Ordering::Acquire)
                && self.shared.kick_pending.swap(false, Ordering::AcqRel)
            {
                handling.get_or_insert((Instant::now(), false));
                let a = self.call(DebugEvent::Kick);
                if let Some(end) = self.act(a) {
                    return end;
                }
            }
            if let Some((gpa, len)) = self.pending_watch.take() {
                let pc = match self.fd.get_regs() {
                    Ok(r) => r.rip,
                    Err(e) => return self.err(format!("KVM_GET_REGS: {e}")),
                };
                let a = self.call(DebugEvent::WriteWatch { gpa, len, pc });
                if let Some(end) = self.act(a) {
                    return end;
                }
            }
            if self.shared.ctl_pending.load(Ordering::Acquire) {
                if let Some(end) = self.service_control() {
                    return end;
                }
            }
            if let Err(e) = self.prepare_entry() {
                return self.err(e);
            }
            if let Some((since, exited)) = handling.take() {
                self.shared.tracer_time.add(since, exited);
            }
            let mut trap_write = None;
            let entered = Instant::now();
            self.shared.activity.entering_run();
            let ran = self.fd.run();
            self.shared.activity.left_run();
            self.shared.tracer_time.in_run(entered);
            let arch = match ran {
                Ok(exit) => match exit {
                    VcpuExit::IoIn(port, data) => {
                        self.bus.read(port, data);
                        continue;
                    }
                    VcpuExit::IoOut(port, data)
                        if port == crate::layout::TRAP_PORT && data.len() == 1 =>
                    {
                        // Maybe one of our port-I/O traps: decided below,
                        // once the exit no longer borrows the vCPU.
                        trap_write = Some(data[0]);
                        None
                    }
                    VcpuExit::IoOut(port, data) => match self.bus.write(port, data) {
                        IoAction::Reset => return End::Vm(VmExit::Reset),
                        IoAction::Failed(e) => return self.err(e),
                        IoAction::None => continue,
                    },
                    VcpuExit::MmioRead(addr, data) => {
                        if !self.bus.mmio_read(addr, data) {
                            data.fill(0xff);
                        }
                        continue;
                    }
                    VcpuExit::MmioWrite(addr, data) => {
                        match self.bus.mmio_write(addr, data) {
                            Ok(true) => continue,
                            Ok(false) => {}
                            Err(e) => return self.err(e.to_string()),
                        }
                        // A write to a write-protected RAM page: do it.
                        let ram = vm_memory::Bytes::write_slice(
                            &self.mem,
                            data,
                            vm_memory::GuestAddress(addr),
                        )
                        .is_ok();
                        let end = addr + data.len() as u64;
                        let watched = ram
                            && lock_read(&self.watches)
                                .iter()
                                .any(|&(a, l)| addr < a + l && a < end);
                        if watched {
                            handling = Some((Instant::now(), true));
                            self.pending_watch = Some((addr, data.len() as u8));
                        }
                        continue;
                    }
                    VcpuExit::Intr => {
                        self.kicked_out(&mut handling);
                        self.fd.set_kvm_immediate_exit(0);
                        continue;
                    }
                    VcpuExit::Hlt => return End::Halted,
                    VcpuExit::Shutdown => {
                        let (rip, rsp) = self.fd.get_regs().map_or((0, 0), |r| (r.rip, r.rsp));
                        let cr2 = self.fd.get_sregs().map_or(0, |s| s.cr2);
                        return End::Vm(VmExit::TripleFault {
                            vcpu: self.shared.index,
                            rip,
                            rsp,
                            cr2,
                        });
                    }
                    VcpuExit::SystemEvent(KVM_SYSTEM_EVENT_RESET, _) => {
                        return End::Vm(VmExit::Reset)
                    }
                    VcpuExit::SystemEvent(KVM_SYSTEM_EVENT_SHUTDOWN, _) => {
                        return End::Vm(VmExit::Shutdown)
                    }
                    VcpuExit::Debug(arch) => {
                        let now = Instant::now();
                        if arch.exception == 1 && arch.dr6 & DR6_BS != 0 {
                            // One instruction stepped: a round trip.
                            self.shared.tracer_time.step_run(now - entered);
                        }
                        handling = Some((now, true));
                        Some(arch)
                    }
                    VcpuExit::InternalError => None,
                    other => {
                        let m = format!("unexpected exit {other:?}");
                        return self.err(m);
                    }
                },
                Err(e) if e.errno() == libc::EINTR => {
                    self.kicked_out(&mut handling);
                    self.fd.set_kvm_immediate_exit(0);
                    continue;
                }
                Err(e) if e.errno() == libc::EAGAIN => continue,
                Err(e) => return self.err(format!("KVM_RUN failed: {e}")),
            };
            if let Some(byte) = trap_write {
                let since = Instant::now();
                match self.vm_pio_exit() {
                    Some(Some(end)) => return end,
                    Some(None) => handling = Some((since, true)),
                    None => {
                        let port = crate::layout::TRAP_PORT;
                        if self.bus.write(port, &[byte]) == IoAction::Reset {
                            return End::Vm(VmExit::Reset);
                        }
                    }
                }
                continue;
            }
            let arch = match arch {
                Some(a) => a,
                // KVM-PVM: instructions its emulator cannot run (int3, fwait).
                None => match self.recover_emulation_failure() {
                    Ok(Some(pc)) => kvm_bindings::kvm_debug_exit_arch {
                        exception: 3,
                        pc,
                        ..Default::default()
                    },
                    Ok(None) => continue,
                    Err(()) => {
                        let m = self.internal_error();
                        return self.err(m);
                    }
                },
            };
            if let Some(end) = self.debug_exit(arch) {
                return end;
            }
        }
    }

    /// A signal took the vCPU out of KVM_RUN: the tracer's doing when it
    /// was a kick (a stop or pause is not counted: the guest ends or waits).
    fn kicked_out(&self, handling: &mut Option<(Instant, bool)>) {
        if self.shared.kick_pending.load(Ordering::Acquire) {
            *handling = Some((Instant::now(), true));
        }
    }
}
