//! One vCPU's debug handler of `record --backend kvm`: it arms the probes
//! on its vCPU (hardware breakpoints; the VM-wide software traps once), and
//! turns each debug exit into records through the shared runtime, written
//! by its own ltt-writer producer (the trap path takes no lock).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use introspect::decode::SyscallStrings;
use introspect::kernel::find_slide;
use introspect::probes::plan_probes;
use introspect::runtime::{return_sites, Sink, VcpuTracer};
use introspect::{Kernel, ProbeKind, Record, Task};
use vmm::{Action, DebugEvent, HwBreakpoint, VcpuCtx};

use super::shared::{CpuReport, Shared, HW_SLOTS, START_KERNEL_MAP, STATEDUMP_TASKS, UNKNOWN};
use super::sw;
use crate::context::KvmContext;
use record_ctf as ctf;

/// The vCPU's ltt-writer producer as the runtime's sink, with its user
/// probes' values.
pub(super) struct CtfSink {
    pub(super) producer: Option<ltt_writer::Producer>,
    pub(super) errors: u64,
    pub(super) user: Box<record_ctf::user::UserEvents>,
    pub(super) sh: Arc<Shared>,
}

impl Sink for CtfSink {
    fn emit(&mut self, rec: &Record) {
        if let Some(p) = self.producer.as_mut() {
            if ctf::emit(p, rec).is_err() {
                self.errors += 1;
            }
        }
    }

    fn emit_external(&mut self, n: usize) {
        let probes = self.sh.sw.user_probes();
        if self
            .user
            .write_held(self.producer.as_mut(), probes, n)
            .is_err()
        {
            self.errors += 1;
        }
    }

    fn statedump_start(&mut self, ts: u64, cur: &Task) {
        if let Some(p) = self.producer.as_mut() {
            let c = ltt_writer::TaskCtx::new(cur.pid, cur.tid, &cur.comm);
            if p.lttng_statedump_start(ts, &c).is_err() {
                self.errors += 1;
            }
        }
    }

    fn statedump_item(&mut self, ts: u64, cur: &Task, item: &introspect::statedump::Item<'_>) {
        if let Some(p) = self.producer.as_mut() {
            if record_ctf::emit_statedump_item(p, ts, cur, item).is_err() {
                self.errors += 1;
            }
        }
    }

    fn statedump_end(&mut self, ts: u64, cur: &Task) {
        if let Some(p) = self.producer.as_mut() {
            let c = ltt_writer::TaskCtx::new(cur.pid, cur.tid, &cur.comm);
            if p.lttng_statedump_end(ts, &c).is_err() {
                self.errors += 1;
            }
        }
    }
}

/// One vCPU's debug handler.
pub(super) struct Handler {
    pub(super) sh: Arc<Shared>,
    pub(super) cpu: u32,
    pub(super) kernel: Kernel,
    /// Slide the breakpoints are armed for.
    pub(super) armed_slide: u64,
    /// Hardware breakpoints: address and the probe (None: only the
    /// software-breakpoint trigger).
    pub(super) slots: [Option<(u64, Option<ProbeKind>)>; HW_SLOTS],
    /// The hardware slots hold only return sites (software phase).
    pub(super) returns_only: bool,
    pub(super) tracer: VcpuTracer,
    pub(super) sink: CtfSink,
    pub(super) busy_ns: u64,
    /// This vCPU's kernel per-CPU base, as last seen in GS base at a
    /// kernel-mode trap (for samples taken in user mode).
    pub(super) kernel_gs: Option<u64>,
    /// The slot kept for the return site of the interrupt being handled
    /// when no trap could cover it, and what it waits for: (site, exit
    /// kind, RSP after the return).
    pub(super) dyn_slot: Option<usize>,
    pub(super) dyn_pending: Option<(u64, ProbeKind, u64)>,
}

impl Handler {
    /// The handler of vCPU `cpu`, writing with `producer`.
    pub(super) fn new(sh: Arc<Shared>, cpu: u32, producer: Option<ltt_writer::Producer>) -> Self {
        Handler {
            sh: sh.clone(),
            cpu,
            kernel: Kernel::default(),
            armed_slide: UNKNOWN,
            slots: [None; HW_SLOTS],
            returns_only: false,
            tracer: VcpuTracer::new(cpu, STATEDUMP_TASKS).with_deferral(),
            sink: CtfSink {
                producer,
                errors: 0,
                user: record_ctf::user::UserEvents::boxed(),
                sh,
            },
            busy_ns: 0,
            kernel_gs: None,
            dyn_slot: None,
            dyn_pending: None,
        }
    }

    /// Plans and arms the probes of `slide` on this vCPU (not a trap: at
    /// start, or once if the verified slide differs).
    fn arm(&mut self, ctx: &mut VcpuCtx<'_>, slide: u64) {
        let sh = self.sh.clone();
        // Software phase: the int3s cover the entries, hardware breakpoints
        // the return sites. Before it: the 4 best, one of them the trigger,
        // and nothing said about what the int3s will cover later.
        let returns_only = sh.sw.armed();
        let waiting = sh.sw.enabled() && !returns_only && sh.sw.trigger != 0;
        let trigger = sh.sw.trigger.wrapping_add(slide);
        let budget = if returns_only { None } else { Some(HW_SLOTS) };
        let set = plan_probes(&sh.plan, slide, budget);
        let mut want: Vec<(u64, Option<ProbeKind>)> = if returns_only {
            Vec::new()
        } else {
            set.entries.iter().map(|p| (p.addr, Some(p.kind))).collect()
        };
        for r in &set.returns {
            if returns_only && r.kind != ProbeKind::SyscallExit {
                // Traps on every call's return site (or in `unplaced`).
                continue;
            }
            let sites = self.return_sites_of(ctx, r.kind, r.addr, slide);
            if sites.is_empty() && !waiting {
                sh.note(format!("not covered: {:?}: no return site found", r.kind));
            }
            want.extend(sites.into_iter().map(|a| (a, Some(r.kind))));
        }
        self.dyn_slot = None;
        self.dyn_pending = None;
        if returns_only {
            // What no trap could cover, on the slots that are left: entry
            // probes and the syscall exit on fixed slots; the return sites
            // of interrupt handlers (which never sleep) on one slot, armed
            // at each entry for the site its return address names.
            let (rets, fixed): (Vec<_>, Vec<_>) = sh
                .sw
                .unplaced()
                .iter()
                .partition(|(_, k)| matches!(k, ProbeKind::IrqExit | ProbeKind::TimerExit));
            want.extend(fixed.iter().map(|&&(a, k)| (a, Some(k))));
            if !rets.is_empty() {
                if want.len() < HW_SLOTS {
                    self.dyn_slot = Some(want.len());
                } else {
                    sh.note(
                        "not covered: interrupt return sites without a trap: no probe slot left"
                            .into(),
                    );
                }
            }
        }
        if waiting && !want.iter().any(|w| w.0 == trigger) {
            want.truncate(HW_SLOTS - 1);
            want.push((trigger, None));
        }
        for (kind, why) in set.dropped.iter().filter(|_| !waiting) {
            sh.note(format!("not covered: {kind:?}: {why}"));
        }
        if want.len() > HW_SLOTS {
            for (a, k) in want[HW_SLOTS..].iter().filter(|_| !waiting) {
                sh.note(format!("not covered: {k:?} at {a:#x}: no probe slot left"));
            }
            want.truncate(HW_SLOTS);
        }
        self.returns_only = returns_only;
        self.slots = [None; HW_SLOTS];
        for slot in 0..HW_SLOTS {
            let bp = want.get(slot).copied();
            match ctx.set_hw_breakpoint(slot, bp.map(|(a, _)| HwBreakpoint::exec(a))) {
                Ok(()) => self.slots[slot] = bp,
                Err(e) => sh.note(format!("vCPU {}: slot {slot}: {e}", self.cpu)),
            }
        }
        self.kernel = Kernel::new(&sh.plan, slide);
        self.armed_slide = slide;
    }

    /// Return sites of calls to `callee` within the known caller of a
    /// return probe (the syscall exit: the call in `entry_SYSCALL_64`), from
    /// the kernel text in guest memory.
    fn return_sites_of(
        &self,
        ctx: &VcpuCtx<'_>,
        kind: ProbeKind,
        callee: u64,
        slide: u64,
    ) -> Vec<u64> {
        let s = &self.sh.plan.symbols;
        // kallsyms sizes run to the next symbol, and entry_SYSCALL_64 has
        // local labels (entry_SYSCALL_64_safe_stack, _after_hwframe) before
        // its call: search the first KiB from its start (do_syscall_64 is
        // called from nowhere else near it; with hardware breakpoints a
        // misread site only costs a slot that never fires).
        let (start, size) = match kind {
            ProbeKind::SyscallExit => (s.entry_syscall_64, s.entry_syscall_64_size.max(0x400)),
            _ => (0, 0),
        };
        if start < START_KERNEL_MAP || size == 0 || size > 0x10000 {
            return Vec::new();
        }
        let at = start.wrapping_add(slide);
        // Through the guest's page tables; before they map the kernel (an
        // ELF armed at its first instruction), at the physical address the
        // ELF was loaded at (its `p_paddr`: link address less the map).
        let code = sw::read_code(ctx, at, size).or_else(|| {
            let mut code = vec![0u8; size as usize];
            let elf_at_link = !self.sh.randomized && slide == 0;
            (elf_at_link && ctx.read_phys(start - START_KERNEL_MAP, &mut code).is_ok())
                .then_some(code)
        });
        code.map_or_else(Vec::new, |c| return_sites(&c, at, callee))
    }

    /// Looks for the banner; on success records the slide for all vCPUs.
    fn verify(&mut self, ctx: &mut VcpuCtx<'_>) {
        let found = match KvmContext::new(ctx) {
            Ok(k) => find_slide(
                &k,
                self.sh.plan.symbols.linux_banner,
                self.sh.plan.banner_prefix.as_bytes(),
            )
            .ok(),
            Err(_) => None,
        };
        if let Some(slide) = found {
            if self
                .sh
                .verified_slide
                .compare_exchange(UNKNOWN, slide, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                let armed = match self.armed_slide {
                    UNKNOWN => "nothing armed before".to_string(),
                    a => format!("armed at {a:#x}"),
                };
                self.sh.note(format!(
                    "slide {slide:#x} verified by the banner on vCPU {}, {:.3} s into the run ({armed})",
                    self.cpu,
                    self.sh.now() as f64 / 1e9
                ));
            }
        }
    }

    fn probe_hit(&mut self, ctx: &mut VcpuCtx<'_>, slot: u8) {
        if self.dyn_slot == Some(usize::from(slot)) {
            self.dynamic_return_hit(ctx, usize::from(slot));
            return;
        }
        let Some((addr, kind)) = self.slots.get(usize::from(slot)).copied().flatten() else {
            return;
        };
        let sh = self.sh.clone();
        let trigger = sh.sw.trigger.wrapping_add(self.armed_slide);
        if sh.sw.enabled() && sh.sw.trigger != 0 && addr == trigger && !sh.sw.armed() {
            // The kernel execs /init: its boot-time text patching is over.
            for n in sh.sw.arm(ctx, &sh.plan, self.armed_slide) {
                sh.note(n);
            }
            sh.note(format!(
                "software breakpoints armed by vCPU {} at the first begin_new_exec, {:.3} s into the run",
                self.cpu,
                sh.now() as f64 / 1e9
            ));
        }
        if sh.sw.covers(addr) {
            // The int3 at this address reports it (also right after this
            // exit, where it was just inserted).
            return;
        }
        if let Some(kind) = kind {
            self.trap(ctx, kind);
        }
    }

    /// At an interrupt handler's entry: if its return site is one no trap
    /// covers, the kept slot goes there (the handler returns on this vCPU,
    /// to this stack, before anything else runs here).
    fn arm_dynamic_return(&mut self, ctx: &mut VcpuCtx<'_>, entry: ProbeKind) {
        let exit = match entry {
            ProbeKind::IrqEntry => ProbeKind::IrqExit,
            ProbeKind::TimerEntry => ProbeKind::TimerExit,
            _ => return,
        };
        let Some(slot) = self.dyn_slot else { return };
        let Ok(k) = KvmContext::new(ctx) else { return };
        let rsp = introspect::VcpuContext::read_reg(&k, introspect::Reg::Rsp);
        let Ok(ret) = introspect::ctx::read_u64(&k, rsp) else {
            return;
        };
        if !self.sh.sw.unplaced().contains(&(ret, exit)) {
            return;
        }
        if ctx
            .set_hw_breakpoint(slot, Some(HwBreakpoint::exec(ret)))
            .is_ok()
        {
            self.slots[slot] = Some((ret, Some(exit)));
            self.dyn_pending = Some((ret, exit, rsp.wrapping_add(8)));
        }
    }

    fn dynamic_return_hit(&mut self, ctx: &mut VcpuCtx<'_>, slot: usize) {
        let Some((_, exit, rsp_after)) = self.dyn_pending else {
            return;
        };
        let rsp = ctx.regs().map(|r| r.rsp).unwrap_or(0);
        if rsp != rsp_after {
            // The same site reached by another call: not ours yet.
            return;
        }
        self.dyn_pending = None;
        let _ = ctx.set_hw_breakpoint(slot, None);
        self.slots[slot] = None;
        self.trap(ctx, exit);
    }

    fn trap(&mut self, ctx: &mut VcpuCtx<'_>, kind: ProbeKind) {
        self.sh.hits.fetch_add(1, Ordering::Relaxed);
        let t0 = Instant::now();
        let Ok(kctx) = KvmContext::new(ctx) else {
            return;
        };
        let gs = kctx.gs_base();
        if introspect::ctx::is_kernel_addr(gs) {
            self.kernel_gs = Some(gs);
        }
        if kind == ProbeKind::Sample && self.kernel_gs.is_none() {
            // Not yet running the kernel (e.g. an AP still waiting for
            // its INIT/SIPI at the boot entry): nothing to attribute.
            return;
        }
        let kctx = kctx.with_kernel_gs_base(self.kernel_gs);
        let sh = &*self.sh;
        self.tracer.hit(
            kind,
            &kctx,
            &self.kernel,
            &SyscallStrings(&sh.strings),
            &sh.gate,
            || sh.now(),
            &mut self.sink,
        );
        if self.sh.triggers.is_some() {
            self.syscall_trigger(kind, &kctx);
        }
        self.arm_dynamic_return(ctx, kind);
        self.busy_ns += t0.elapsed().as_nanos() as u64;
    }
}

impl vmm::DebugHandler for Handler {
    fn on_event(&mut self, ctx: &mut VcpuCtx<'_>, ev: DebugEvent) -> Action {
        match ev {
            DebugEvent::Started => {
                if !self.sh.randomized {
                    self.arm(ctx, 0);
                }
                return Action::Continue;
            }
            DebugEvent::HwBreakpoint { slot, .. } => self.probe_hit(ctx, slot),
            DebugEvent::SwBreakpoint { pc } => {
                // Looked up again per use: no copy of the shared tables,
                // no reference count touched on the trap path.
                let kind = self.sh.sw.kind_at(pc);
                let extras = self.sh.sw.extras_at(pc).len();
                if kind.is_none() && extras == 0 {
                    return Action::Continue;
                }
                if let Some(kind) = kind {
                    self.trap(ctx, kind);
                }
                for i in 0..extras {
                    if let Some(&x) = self.sh.sw.extras_at(pc).get(i) {
                        self.extra_trap(ctx, x);
                    }
                }
            }
            DebugEvent::Kick => {
                let verified = self.sh.verified_slide.load(Ordering::Acquire) != UNKNOWN;
                if self.sh.plan.sample_hz > 0 && verified {
                    self.trap(ctx, ProbeKind::Sample);
                }
            }
            _ => return Action::Continue,
        }
        if self.sh.sw.armed() && !self.returns_only {
            let slide = self.armed_slide;
            self.arm(ctx, slide);
        }
        let mut v = self.sh.verified_slide.load(Ordering::Acquire);
        if v == UNKNOWN {
            self.verify(ctx);
            v = self.sh.verified_slide.load(Ordering::Acquire);
        }
        if v != UNKNOWN && v != self.armed_slide {
            if self.armed_slide != UNKNOWN {
                self.sh.note(format!(
                    "vCPU {}: re-armed at slide {v:#x} (was {:#x})",
                    self.cpu, self.armed_slide
                ));
            }
            self.arm(ctx, v);
        }
        Action::Continue
    }
}

impl Drop for Handler {
    fn drop(&mut self) {
        // What the deferral holds, then the last packet (closed when the
        // producer is dropped).
        self.tracer.flush(&mut self.sink);
        self.sink.producer = None;
        let (deferred, recovered) = self.tracer.deferred();
        let r = CpuReport {
            cpu: self.cpu,
            events: self.tracer.events + self.sink.user.written,
            busy_ns: self.busy_ns,
            ctf_errors: self.sink.errors,
            by_kind: self.tracer.by_kind,
            by_event: {
                let mut by = self.tracer.by_event;
                if let Some(n) = by.get_mut(record_ctf::user::EVENT_TAG) {
                    *n = self.sink.user.written;
                }
                by
            },
            armed: self
                .slots
                .iter()
                .flatten()
                .filter_map(|&(a, k)| Some((a, k?)))
                .collect(),
            deferred,
            recovered,
        };
        self.sh
            .reports
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(r);
    }
}
