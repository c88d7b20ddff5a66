//! `hvtrace record --backend kvm`: the shared `introspect` decoders on the
//! debug exits of hvtrace's own KVM monitor, writing the same CTF trace as
//! the TCG engine through `ltt-writer` (one producer per vCPU, owned by
//! that vCPU's debug handler: the trap path takes no lock).
//!
//! Probes: where KVM delivers software breakpoints (hardware KVM), every
//! planned entry probe becomes a VM-wide int3 once the kernel's boot-time
//! text patching is over, and return sites stay hardware breakpoints
//! ([`sw`]); until then, and everywhere KVM does not deliver #BP (KVM-PVM),
//! probes are hardware breakpoints (DR0-DR3 per vCPU), planned by
//! `introspect::probes::plan_probes` within a budget of 4. The summary and
//! `DIR/kvm.json` say which mechanism each probe used and what did not fit.
//!
//! The KASLR slide: the monitor boots the bzImage through its own
//! decompressor (`backend_kvm::KvmBoot`), which randomizes the kernel's
//! physical and virtual placement as on a real boot
//! (`choose_random_location`). The slide is unknown until the running
//! kernel's page tables map its text: until then no probe is armed, and
//! vCPU 0 is kicked every few milliseconds to look for the banner
//! (`find_slide`); once found, every vCPU is kicked and arms at it. The
//! kernel takes its first interrupt, and runs its first task, long after
//! (start_kernel enables interrupts late), so no event is lost to the
//! search. An ELF vmlinux (`--kernel`, or the extraction used on a KVM
//! that emulates guest code) runs at its link-time addresses: probes are
//! armed at slide 0 from the first instruction and the slide is verified
//! by the banner all the same.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use introspect::decode::SyscallStrings;
use introspect::kernel::find_slide;
use introspect::plan::EventClasses;
use introspect::probes::plan_probes;
use introspect::runtime::{return_sites, string_table, Sink, StatedumpGate, VcpuTracer};
use introspect::{Kernel, ProbeKind, ProbePlan, Record, Task};
use vmm::{Action, DebugEvent, HwBreakpoint, VcpuCtx};

use crate::backend_kvm::KvmContext;

mod report;
mod sw;
use crate::cmd_record::{BufferMode, Mode, RecordArgs};
use crate::guest::{self, GuestEnd};

// The record → lttng-modules event mapping both engines share.
use record_ctf as ctf;

/// Hardware breakpoints per vCPU.
const HW_SLOTS: usize = 4;
/// `__START_KERNEL_map`: kernel text's virtual base, at physical 0 plus
/// the load offset (0 for the ELF loaded at its own `p_paddr`).
const START_KERNEL_MAP: u64 = 0xffff_ffff_8000_0000;
/// No slide verified yet.
const UNKNOWN: u64 = u64::MAX;
/// How often vCPU 0 looks for the banner on a randomized boot, until found.
const SLIDE_SEARCH_MS: u64 = 2;
/// Tasks a statedump can hold without allocating on the trap path.
const STATEDUMP_TASKS: usize = 4096;

/// What every vCPU's handler shares (read-only or atomics on the trap path).
struct Shared {
    plan: ProbePlan,
    strings: Vec<u8>,
    gate: StatedumpGate,
    epoch: Instant,
    /// The slide the guest's banner was found at (UNKNOWN before).
    verified_slide: AtomicU64,
    /// Probe hits, all vCPUs.
    hits: AtomicU64,
    /// Filled by each handler when its vCPU thread ends.
    reports: Mutex<Vec<CpuReport>>,
    notes: Mutex<Vec<String>>,
    /// Software breakpoints: used or not, and armed or not yet.
    sw: sw::SwPhase,
    /// The kernel is randomized (bzImage boot): nothing is armed before
    /// the slide is found.
    randomized: bool,
}

impl Shared {
    fn now(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    /// Off the trap path only (arming, verification).
    fn note(&self, s: String) {
        let mut n = self.notes.lock().unwrap_or_else(|e| e.into_inner());
        if n.len() < 200 && !n.contains(&s) {
            n.push(s);
        }
    }
}

#[derive(Debug, Clone, Default)]
struct CpuReport {
    cpu: u32,
    events: u64,
    busy_ns: u64,
    ctf_errors: u64,
    by_kind: [u64; introspect::decode::COUNTER_SLOTS],
    by_event: [u64; introspect::decode::COUNTER_SLOTS],
    armed: Vec<(u64, ProbeKind)>,
    /// Syscall entries whose string was deferred / read on a retry.
    deferred: u64,
    recovered: u64,
}

/// The vCPU's ltt-writer producer as the runtime's sink, with its user
/// probes' values.
struct CtfSink {
    producer: Option<ltt_writer::Producer>,
    errors: u64,
    user: Box<record_ctf::user::UserEvents>,
    sh: Arc<Shared>,
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
struct Handler {
    sh: Arc<Shared>,
    cpu: u32,
    kernel: Kernel,
    /// Slide the breakpoints are armed for.
    armed_slide: u64,
    /// Hardware breakpoints: address and the probe (None: only the
    /// software-breakpoint trigger).
    slots: [Option<(u64, Option<ProbeKind>)>; HW_SLOTS],
    /// The hardware slots hold only return sites (software phase).
    returns_only: bool,
    tracer: VcpuTracer,
    sink: CtfSink,
    busy_ns: u64,
    /// This vCPU's kernel per-CPU base, as last seen in GS base at a
    /// kernel-mode trap (for samples taken in user mode).
    kernel_gs: Option<u64>,
    /// The slot kept for the return site of the interrupt being handled
    /// when no trap could cover it, and what it waits for: (site, exit
    /// kind, RSP after the return).
    dyn_slot: Option<usize>,
    dyn_pending: Option<(u64, ProbeKind, u64)>,
}

impl Handler {
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
        self.arm_dynamic_return(ctx, kind);
        self.busy_ns += t0.elapsed().as_nanos() as u64;
    }
}

impl Handler {
    /// A hit of user probe `index`: its fields, written in order (held
    /// behind a deferred syscall entry, if any).
    fn user_trap(&mut self, ctx: &mut VcpuCtx<'_>, index: usize) {
        let sh = self.sh.clone();
        let Some(probe) = sh.sw.user_probes().get(index) else {
            return;
        };
        sh.hits.fetch_add(1, Ordering::Relaxed);
        let t0 = Instant::now();
        let Ok(kctx) = KvmContext::new(ctx) else {
            return;
        };
        let kctx = kctx.with_kernel_gs_base(self.kernel_gs);
        let ts = sh.now();
        let task = introspect::task::current_task(&kctx, &self.kernel);
        self.sink.user.fetch(probe, &kctx, &self.kernel);
        match self
            .tracer
            .hold_external(&kctx, &self.kernel, &mut self.sink)
        {
            Some(n) => self.sink.user.hold(n, index, ts, task),
            None => {
                let s = &mut self.sink;
                let probes = sh.sw.user_probes();
                if s.user
                    .write(s.producer.as_mut(), probes, index, ts, &task)
                    .is_err()
                {
                    s.errors += 1;
                }
            }
        }
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
                let sh = self.sh.clone();
                let (kind, users) = (sh.sw.kind_at(pc), sh.sw.users_at(pc));
                if kind.is_none() && users.is_empty() {
                    return Action::Continue;
                }
                if let Some(kind) = kind {
                    self.trap(ctx, kind);
                }
                for &i in users {
                    self.user_trap(ctx, i);
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

/// `hvtrace record --backend kvm`.
pub fn run(
    args: &RecordArgs,
    events: EventClasses,
    user_probes: &[(String, introspect::userprobe::ProbeSpec)],
    interrupt: &AtomicBool,
    driver: Option<&mut dyn guest::ConsoleDriver>,
) -> Result<i32> {
    let run = args.guest.guest_run(&args.command)?;
    let out = &args.output;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let _ = std::fs::remove_dir_all(out.join("kernel"));
    let _ = std::fs::remove_file(out.join("kvm.json"));
    let out_abs = std::fs::canonicalize(out)?;

    let t0 = Instant::now();
    let boot = crate::backend_kvm::KvmBoot::prepare(&run.kernel)?;
    let image = crate::cmd_record::open_kernel(&run.kernel)?;
    let mut plan = crate::cmd_record::plan_of(&image).context("preparing the probe plan")?;
    let facts = sw::CodeFacts::of(&image, &plan);
    drop(image);
    plan.events = events;
    let user = crate::cmd_record::resolve_probes(&run.kernel, user_probes, &mut plan)?;
    plan.out_dir = out_abs.to_string_lossy().into_owned();
    plan.statedump_exec = args.command[0].clone();
    if args.mode == Mode::Sample {
        // As on the TCG engine: samples instead of the high-rate classes;
        // process lifecycle (rare) stays traced so samples can be
        // attributed. A sample is a kick of every vCPU (signal +
        // immediate_exit) at --freq from this thread.
        plan.sample_hz = args.freq;
        plan.events = EventClasses {
            proc: true,
            ..EventClasses::default()
        };
    }
    std::fs::write(out_abs.join("probe-plan.json"), plan.to_json())?;
    let prep = t0.elapsed();

    let baseline = if args.baseline {
        let t = Instant::now();
        let (end, _, _) = crate::backend_kvm::run_guest(
            &run,
            &boot,
            None,
            None,
            None,
            interrupt,
            std::time::Duration::from_millis(50),
            &mut |_| {},
            None,
        )?;
        Some((t.elapsed(), end))
    } else {
        None
    };
    if args.keep_raw {
        eprintln!(
            "hvtrace: record: --keep-raw is ignored on --backend kvm (no raw record streams)"
        );
    }
    let (sw_trap, sw_reason) = sw::decide();
    let epoch = Instant::now();
    let epoch_unix_ns = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let catalog = ctf::catalog_checked(&plan).context("declaring the trace's events")?;
    let mut cfg = ltt_writer::TraceConfig::new(run.vcpus, catalog);
    cfg.env.kernel_release = plan.kernel_release.clone();
    cfg.clock_offset_ns = epoch_unix_ns;
    cfg.policy = match args.buffer {
        BufferMode::Lossless => ltt_writer::Policy::Lossless,
        BufferMode::Discard => ltt_writer::Policy::Discard,
        BufferMode::FlightRecorder => ltt_writer::Policy::FlightRecorder {
            bytes_per_cpu: ((args.flight_mib << 20) as usize).max(cfg.packet_size * 2),
        },
    };
    let (writer, producers) = ltt_writer::TraceWriter::create(&out_abs, cfg)
        .with_context(|| format!("creating the trace in {}", out_abs.display()))?;

    let sh = Arc::new(Shared {
        strings: string_table(&plan),
        gate: StatedumpGate::new(&plan.statedump_exec),
        epoch,
        verified_slide: AtomicU64::new(UNKNOWN),
        hits: AtomicU64::new(0),
        reports: Mutex::new(Vec::new()),
        notes: Mutex::new(Vec::new()),
        sw: sw::SwPhase::new(sw_trap, sw_reason, plan.symbols.begin_new_exec, facts, user),
        randomized: boot.randomized,
        plan,
    });
    if sw_trap.is_some() && sh.sw.trigger == 0 {
        sh.note("no begin_new_exec in this kernel: software breakpoints never armed, hardware breakpoints only".into());
    }
    let mut producers: Vec<Option<ltt_writer::Producer>> =
        producers.into_iter().map(Some).collect();
    let hsh = sh.clone();
    let factory: vmm::HandlerFactory = Box::new(move |cpu| {
        Box::new(Handler {
            sh: hsh.clone(),
            cpu,
            kernel: Kernel::default(),
            armed_slide: UNKNOWN,
            slots: [None; HW_SLOTS],
            returns_only: false,
            tracer: VcpuTracer::new(cpu, STATEDUMP_TASKS).with_deferral(),
            sink: CtfSink {
                producer: producers.get_mut(cpu as usize).and_then(Option::take),
                errors: 0,
                user: record_ctf::user::UserEvents::boxed(),
                sh: hsh.clone(),
            },
            busy_ns: 0,
            kernel_gs: None,
            dyn_slot: None,
            dyn_pending: None,
        })
    });

    // Until the slide is found, kick vCPU 0 so its handler looks for the
    // banner: every few milliseconds on a randomized boot (nothing is armed
    // until then), about once a second otherwise (the probes at slide 0
    // fire anyway). Once found, every vCPU is kicked once to arm at it. In
    // sample mode, every vCPU is kicked every period.
    let mut last_kick = Instant::now();
    let mut all_kicked = false;
    let mut next_sample = Instant::now();
    let ksh = sh.clone();
    let period = std::time::Duration::from_nanos(1_000_000_000 / u64::from(args.freq.max(1)));
    let sample = args.mode == Mode::Sample;
    let search_every = if boot.randomized {
        std::time::Duration::from_millis(SLIDE_SEARCH_MS)
    } else {
        std::time::Duration::from_secs(1)
    };
    let tick_every = if sample {
        period.min(search_every)
    } else {
        search_every.min(std::time::Duration::from_millis(50))
    };
    let mut tick = move |vm: &vmm::Vm| {
        let verified = ksh.verified_slide.load(Ordering::Acquire) != UNKNOWN;
        if verified && !all_kicked {
            all_kicked = true;
            vm.kick_all();
        } else if sample && verified {
            // On the period's grid, whatever the tick's granularity.
            let now = Instant::now();
            if now >= next_sample {
                next_sample = (next_sample + period).max(now);
                vm.kick_all();
            }
        } else if !verified && last_kick.elapsed() >= search_every {
            last_kick = Instant::now();
            if let Some(h) = vm.vcpu(0) {
                h.kick();
            }
        }
    };
    let t1 = Instant::now();
    let (end, vm_exit, sw_out) = crate::backend_kvm::run_guest(
        &run,
        &boot,
        args.guest.capture.as_deref(),
        Some(factory),
        sw_trap,
        interrupt,
        tick_every,
        &mut tick,
        driver,
    )?;
    let wall = t1.elapsed();
    let report = writer.finish().context("finishing the trace")?;

    let mut cpus = sh.reports.lock().unwrap_or_else(|e| e.into_inner()).clone();
    cpus.sort_by_key(|c| c.cpu);
    let notes = sh.notes.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let slide = sh.verified_slide.load(Ordering::Acquire);
    let probes = report::probes(&cpus, &sh.sw);
    report::write(
        &out_abs, &cpus, &notes, slide, &sh, &report, &probes, &sw_out,
    )?;

    let total: u64 = cpus.iter().map(|c| c.events).sum();
    let busy: u64 = cpus.iter().map(|c| c.busy_ns).sum();
    eprintln!(
        "hvtrace: record: {total} events, {} lost; per vCPU {:?}; guest run {:.1} s wall (symbols {:.1} s)",
        report.discarded(),
        cpus.iter().map(|c| c.events).collect::<Vec<_>>(),
        wall.as_secs_f64(),
        prep.as_secs_f64()
    );
    let mut per_class = std::collections::BTreeMap::<&str, u64>::new();
    for c in &cpus {
        for (tag, &n) in c.by_event.iter().enumerate() {
            if n > 0 {
                *per_class
                    .entry(crate::cmd_record::class_of_tag(tag))
                    .or_default() += n;
            }
        }
    }
    for (class, n) in &per_class {
        eprintln!("hvtrace: record:   {class}: {n}");
    }
    if total > 0 {
        eprintln!(
            "hvtrace: record: tracer time {:.1} ms in debug-exit handlers, {:.2} us per event",
            busy as f64 / 1e6,
            busy as f64 / 1e3 / total as f64
        );
    }
    report::print_probes(&sh.sw, &probes, &sw_out);
    for n in &notes {
        eprintln!("hvtrace: record: {n}");
    }
    if slide == UNKNOWN {
        eprintln!("hvtrace: record: the running kernel's banner was not found (slide unverified); probes were armed at slide 0");
    } else {
        eprintln!(
            "hvtrace: record: KASLR slide {slide:#x}; trace in {}",
            out.join("kernel").display()
        );
    }
    if let Some((base, base_end)) = baseline {
        eprintln!(
            "hvtrace: record: baseline (untraced) run {:.1} s wall ({base_end:?}); traced/untraced = {:.2}x (whole guest run, boot included)",
            base.as_secs_f64(),
            wall.as_secs_f64() / base.as_secs_f64().max(1e-9)
        );
    }
    if let Some(exit) = &vm_exit {
        eprintln!("hvtrace: record: the VM ended: {exit:?}");
    }
    if !matches!(end, GuestEnd::Exited(_)) {
        eprintln!(
            "hvtrace: record: the run ended early ({end:?}); the trace in {} holds everything up to that point",
            out.display()
        );
    }
    crate::run::outcome(end, run.timeout)
}
