//! Software traps for `record --backend kvm`: every planned entry probe
//! becomes a VM-wide trap once the kernel's boot-time text patching is
//! over, on every KVM. Where KVM delivers #BP exits (hardware KVM;
//! `vmm::probe_sw_breakpoints`) the trap is an `int3` (1 byte); where it
//! does not (KVM nested in QEMU's TCG, which raises int3 and int1 as
//! software interrupts; KVM-PVM) it is `out %al,$0xe9` (2 bytes): KVM hands
//! every port write to user space. Return-site probes stay hardware
//! breakpoints. User probes (`--probe`) and triggers on function entries
//! (`--trigger`) get traps by the same rules, placed with the built-in
//! ones from the unmodified code; one whose site is another's shares it.
//!
//! Where: never on a byte the kernel patches at run time. A probe's
//! address is a function's entry (Debian's kernels begin with ftrace's
//! 5-byte NOP, after `endbr64` on 6.12) or a tracepoint's static-branch
//! NOP; the guest's ftrace and jump-label code compare those bytes with
//! the NOP they expect before patching, and would warn or BUG() on ours.
//! So the trap covers the first instructions after them
//! (`vmm::arch::trap_site`: whole fall-through instructions, decoded from
//! the function's start; no call, branch or `lock`; no branch of the
//! function lands inside, except from the static branch's own out-of-line
//! block). Skipped instructions change no state, so the state at the trap
//! is the state at the probe. Step-over: emulated by the monitor (the
//! prologue instructions, and `vmm::arch::emulate`'s loads, stores,
//! compares and logic), else single steps with the other vCPUs paused
//! (`vmm`'s list). Port-I/O traps are never placed where that fallback
//! would be needed: on a KVM nested in QEMU's TCG it broke the guest
//! (`trap::Inserter::insert`); such a probe keeps a hardware breakpoint if one
//! is left, and the summary says which are not covered.
//!
//! When: not at the kernel's first instruction. At boot the kernel still
//! rewrites its own text (ftrace turns each `call __fentry__` into its NOP;
//! alternatives, static keys, IBT sealing), so the bytes a trap would cover
//! are not final. The traps go in at the first `begin_new_exec`: the first
//! program the kernel runs (a usermode helper such as `/sbin/modprobe`
//! during the initcalls, or `/init`). Boot-time patching of the kernel's
//! own text (alternatives, ftrace's NOPs, jump labels, static calls, IBT
//! sealing) is done in `start_kernel` before that; only init text, where
//! no probe is, is freed later. Until then the 4 hardware breakpoints per
//! vCPU trace the early boot (one of them on `begin_new_exec` itself). The
//! code is decoded at that moment, from guest memory, not assumed.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};

use introspect::probes::{plan_probes, Probe};
use introspect::runtime::return_sites;
use introspect::userprobe::ResolvedProbe;
use introspect::ProbeKind;
use vmm::arch::trap_site;
use vmm::{TrapKind, VcpuCtx};

pub(super) use super::trap::decide;
use super::trap::Inserter;

/// Longest function whose code is decoded to place a trap.
const MAX_FUNCTION: u64 = 64 << 10;
/// Bytes of a static branch's out-of-line block whose branches may land
/// behind its NOP (it calls the probes, then jumps back).
const BLOCK: u64 = 256;

/// A function of the running kernel: (start, size, name).
type Function = (u64, u64, String);
/// A user probe's or trigger's trap: (name, probe address, trap site and
/// where it is, or why there is none).
type PlacedExtra = (String, u64, Result<(u64, String), String>);

/// What a trap reports besides a built-in probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Extra {
    /// User probe (index into the run's `--probe` list).
    Probe(usize),
    /// Flight-recorder trigger (index into the trigger plan).
    Trigger(u32),
}

/// One software trap, for the summary and `kvm.json`.
#[derive(Debug, Clone)]
pub(super) struct SwProbe {
    /// The probe's address (function entry or static-branch NOP).
    pub addr: u64,
    /// The built-in probe's kind, or a user probe's name (`--probe`).
    pub kind: String,
    /// "software, out %al,$0xe9 at try_to_wake_up+0x5, emulated push r15"
    /// etc., or why it was not armed.
    pub mechanism: String,
}

/// What the image says about each entry probe's code (link-time
/// addresses): the function it is in, and for a static-branch site the
/// out-of-line block its branch goes to.
#[derive(Debug, Default)]
pub(super) struct CodeFacts {
    /// Probe address → (function name, start, size).
    functions: HashMap<u64, (String, u64, u64)>,
    /// Static-branch site → its out-of-line block.
    blocks: HashMap<u64, u64>,
    /// Text symbols (start, name), sorted: the function holding a call
    /// found by scanning the kernel's text.
    text: Vec<(u64, String)>,
    /// `_stext` .. `_etext`.
    text_range: Range<u64>,
}

impl CodeFacts {
    /// The facts of every entry probe `plan` can arm.
    pub fn of(k: &guest_symbols::Kernel, plan: &introspect::ProbePlan) -> Self {
        let mut f = CodeFacts::default();
        let mut all = plan.clone();
        all.events = introspect::plan::EventClasses::all();
        for p in plan_probes(&all, 0, None).entries {
            if let Some(loc) = k.symbols.by_addr(p.addr) {
                let size = loc.size.min(MAX_FUNCTION);
                f.functions
                    .insert(p.addr, (loc.symbol.name.clone(), loc.symbol.addr, size));
            }
        }
        for t in &k.tracepoint_sites {
            f.blocks.insert(t.addr, t.target);
        }
        if let (Some(a), Some(b)) = (k.symbols.addr("_stext"), k.symbols.addr("_etext")) {
            f.text_range = a..b;
        }
        f.text = k
            .symbols
            .iter()
            .filter(|s| matches!(s.kind, 't' | 'T') && f.text_range.contains(&s.addr))
            .map(|s| (s.addr, s.name.clone()))
            .collect();
        f.text.sort();
        f
    }

    /// The text symbol holding `addr` (link-time): (start, size, name).
    fn function_at(&self, addr: u64) -> Option<(u64, u64, &str)> {
        let i = self
            .text
            .partition_point(|(a, _)| *a <= addr)
            .checked_sub(1)?;
        let (start, name) = &self.text[i];
        let end = self
            .text
            .get(i + 1)
            .map_or(self.text_range.end, |(a, _)| *a);
        Some((*start, end.saturating_sub(*start).min(MAX_FUNCTION), name))
    }
}

/// The engine's software-trap phase, shared by all vCPU handlers.
pub(super) struct SwPhase {
    /// The traps used on this run (None: hardware breakpoints only).
    pub trap: Option<TrapKind>,
    /// Why, for the summary.
    pub reason: String,
    /// `begin_new_exec`: where the traps go in (0: never).
    pub trigger: u64,
    facts: CodeFacts,
    armed: AtomicBool,
    arming: AtomicBool,
    /// Trap address → its probe's kind.
    sites: OnceLock<HashMap<u64, ProbeKind>>,
    /// Probe address → its trap's address, for the traps that went in.
    covered: OnceLock<HashMap<u64, u64>>,
    /// Probes no trap could cover (address, kind): the hardware
    /// breakpoints take them, as many as are left.
    unplaced: OnceLock<Vec<(u64, ProbeKind)>>,
    /// User probes (`--probe`) at link-time addresses, and relocated once
    /// armed; only software traps take them.
    user: Vec<ResolvedProbe>,
    user_armed: OnceLock<Vec<ResolvedProbe>>,
    /// Flight-recorder triggers at function entries: (link-time address,
    /// trigger index, name).
    entry_triggers: Vec<(u64, u32, String)>,
    /// Trap address → the user probes and triggers it reports.
    extra_sites: OnceLock<HashMap<u64, Vec<Extra>>>,
    pub probes: Mutex<Vec<SwProbe>>,
}

impl SwPhase {
    pub fn new(
        trap: Option<TrapKind>,
        reason: String,
        trigger: u64,
        facts: CodeFacts,
        user: Vec<ResolvedProbe>,
        entry_triggers: Vec<(u64, u32, String)>,
    ) -> Self {
        SwPhase {
            trap,
            reason,
            trigger,
            facts,
            armed: AtomicBool::new(false),
            arming: AtomicBool::new(false),
            sites: OnceLock::new(),
            covered: OnceLock::new(),
            unplaced: OnceLock::new(),
            user,
            user_armed: OnceLock::new(),
            entry_triggers,
            extra_sites: OnceLock::new(),
            probes: Mutex::new(Vec::new()),
        }
    }

    /// Software traps are used on this run.
    pub fn enabled(&self) -> bool {
        self.trap.is_some()
    }

    /// The VM-wide traps are in.
    pub fn armed(&self) -> bool {
        self.armed.load(Ordering::Acquire)
    }

    /// The kind of the trap at `pc` (trap path: no lock).
    pub fn kind_at(&self, pc: u64) -> Option<ProbeKind> {
        self.sites.get()?.get(&pc).copied()
    }

    /// A trap of ours covers the probe at `addr` (a hardware breakpoint
    /// there defers to it: the vCPU reaches the trap right after).
    pub fn covers(&self, addr: u64) -> bool {
        self.armed() && self.covered.get().is_some_and(|c| c.contains_key(&addr))
    }

    /// The user probes and triggers a trap at `pc` reports (trap path: no
    /// lock).
    pub fn extras_at(&self, pc: u64) -> &[Extra] {
        self.extra_sites
            .get()
            .and_then(|m| m.get(&pc))
            .map_or(&[], Vec::as_slice)
    }

    /// The user probes relocated to the running kernel (empty before the
    /// traps go in).
    pub fn user_probes(&self) -> &[ResolvedProbe] {
        self.user_armed.get().map_or(&[], Vec::as_slice)
    }

    /// The probes left to hardware breakpoints (after arming).
    pub fn unplaced(&self) -> &[(u64, ProbeKind)] {
        self.unplaced.get().map_or(&[], Vec::as_slice)
    }

    /// Inserts every planned entry probe of `slide` as a VM-wide software
    /// trap, once for the VM (the first caller does it). Returns the notes
    /// to report.
    pub fn arm(
        &self,
        ctx: &mut VcpuCtx<'_>,
        plan: &introspect::ProbePlan,
        slide: u64,
    ) -> Vec<String> {
        let Some(trap) = self.trap else {
            return Vec::new();
        };
        if self.arming.swap(true, Ordering::AcqRel) {
            return Vec::new();
        }
        let set = plan_probes(plan, slide, None);
        let mut notes: Vec<String> = set
            .dropped
            .iter()
            .map(|(k, why)| format!("not covered: {k:?}: {why}"))
            .collect();
        // Where each trap goes, decided before any is written. Return
        // probes: the site after every call of the callee in the kernel's
        // text (the syscall exit's one site stays a hardware breakpoint).
        let mut wanted: Vec<(Probe, Option<Function>)> =
            set.entries.iter().map(|p| (*p, None)).collect();
        for r in set
            .returns
            .iter()
            .filter(|r| r.kind != ProbeKind::SyscallExit)
        {
            let found = self.return_sites(ctx, r.addr, slide);
            if found.is_empty() {
                notes.push(format!(
                    "not covered: {:?}: no call of {:#x} found",
                    r.kind, r.addr
                ));
            }
            for (site, func) in found {
                let p = Probe {
                    addr: site,
                    kind: r.kind,
                };
                wanted.push((p, Some(func)));
            }
        }
        let mut placed = Vec::new();
        let mut probes = Vec::new();
        let mut unplaced = Vec::new();
        for (p, func) in &wanted {
            match self.place(ctx, p.addr, slide, trap, func.as_ref()) {
                Ok((site, what)) => placed.push((*p, site, what)),
                Err(why) => {
                    unplaced.push((p.addr, p.kind));
                    probes.push(SwProbe {
                        addr: p.addr,
                        kind: format!("{:?}", p.kind),
                        mechanism: format!(
                            "no trap ({why}): a hardware breakpoint if a slot is left"
                        ),
                    });
                }
            }
        }
        // Written with every other vCPU parked, none inside a trap's bytes.
        let inserted = ctx.with_others_paused(|ctx, rips| {
            self.insert_all(ctx, trap, slide, placed, unplaced, probes, notes, rips)
        });
        inserted.unwrap_or_else(|| {
            // Let the next exec try again.
            self.arming.store(false, Ordering::Release);
            vec!["software traps not inserted yet: a vCPU did not pause in time (the next exec tries again)".into()]
        })
    }

    /// The second half of [`Self::arm`], with the other vCPUs parked at
    /// `rips`.
    #[allow(clippy::too_many_arguments)]
    fn insert_all(
        &self,
        ctx: &mut VcpuCtx<'_>,
        trap: TrapKind,
        slide: u64,
        placed: Vec<(Probe, u64, String)>,
        mut unplaced: Vec<(u64, ProbeKind)>,
        mut probes: Vec<SwProbe>,
        mut notes: Vec<String>,
        rips: &[u64],
    ) -> Vec<String> {
        let mut sites = HashMap::new();
        for (p, site, _) in &placed {
            sites.entry(*site).or_insert(p.kind);
        }
        // Known before any trap exists: another vCPU's hit finds its kind.
        let sites = self.sites.get_or_init(|| sites);
        // Placed from the code as the kernel has it, before any trap
        // changes a byte of it.
        let extras = self.place_extras(ctx, slide, trap);
        let mut covered = HashMap::new();
        for (p, site, what) in placed {
            if sites.get(&site) != Some(&p.kind) {
                notes.push(format!(
                    "not covered: {:?} at {:#x}: another probe has its trap at {site:#x}",
                    p.kind, p.addr
                ));
                continue;
            }
            let mechanism = match (Inserter { ctx, trap, rips }).insert(site) {
                Ok(step) => {
                    covered.insert(p.addr, site);
                    format!("software, {trap} at {what}, {step}")
                }
                Err(e) => {
                    unplaced.push((p.addr, p.kind));
                    format!("no trap ({e}): a hardware breakpoint if a slot is left")
                }
            };
            probes.push(SwProbe {
                addr: p.addr,
                kind: format!("{:?}", p.kind),
                mechanism,
            });
        }
        let _ = self.unplaced.set(unplaced);
        let live: std::collections::HashSet<u64> = covered.values().copied().collect();
        let _ = self.covered.set(covered);
        let ins = Inserter { ctx, trap, rips };
        self.insert_extras(&ins, extras, &live, &mut probes, &mut notes);
        *self.probes.lock().unwrap_or_else(|e| e.into_inner()) = probes;
        self.armed.store(true, Ordering::Release);
        notes
    }

    /// Return sites of the calls of `callee` in the kernel's text, each
    /// with its function (runtime start, size, name): found by a byte scan
    /// of the text in guest memory and proven by decoding the function.
    fn return_sites(&self, ctx: &VcpuCtx<'_>, callee: u64, slide: u64) -> Vec<(u64, Function)> {
        const CHUNK: u64 = 1 << 20;
        let text = &self.facts.text_range;
        let mut out = Vec::new();
        let mut at = text.start.wrapping_add(slide);
        let end = text.end.wrapping_add(slide);
        while at < end {
            // 4 bytes of overlap: a call across two chunks is seen once.
            let n = CHUNK.min(end - at);
            let Some(code) = read_code(ctx, at, (n + 4).min(end - at)) else {
                at += n;
                continue;
            };
            for site in return_sites(&code, at, callee) {
                if site - 5 >= at + n {
                    continue;
                }
                let Some((start, size, name)) = self.facts.function_at(site - 5 - slide) else {
                    continue;
                };
                let func = start.wrapping_add(slide);
                let proven = read_code(ctx, func, size)
                    .is_some_and(|f| trap_site::call_at(&f, func, site - 5, callee));
                if proven {
                    out.push((site, (func, size, name.to_string())));
                }
            }
            at += n;
        }
        out
    }

    /// Where the traps of the user probes and the entry triggers go
    /// (relocated by `slide`), by the built-in probes' place rules; the
    /// sites are published before any trap is written, so another vCPU's
    /// hit finds them. Returns (name, probe address, site and where).
    fn place_extras(&self, ctx: &VcpuCtx<'_>, slide: u64, trap: TrapKind) -> Vec<PlacedExtra> {
        let armed: Vec<ResolvedProbe> = self
            .user
            .iter()
            .map(|p| p.clone().with_slide(slide))
            .collect();
        let wanted = armed
            .iter()
            .enumerate()
            .map(|(i, p)| (Extra::Probe(i), p.addr(), format!("probe {}", p.name())))
            .chain(self.entry_triggers.iter().map(|(link, i, name)| {
                (
                    Extra::Trigger(*i),
                    link.wrapping_add(slide),
                    format!("trigger {name}"),
                )
            }));
        let mut placed = Vec::new();
        let mut sites: HashMap<u64, Vec<Extra>> = HashMap::new();
        for (extra, addr, name) in wanted {
            let func = self
                .facts
                .function_at(addr.wrapping_sub(slide))
                .map(|(start, size, name)| (start.wrapping_add(slide), size, name.to_string()));
            let at = self.place(ctx, addr, slide, trap, func.as_ref());
            if let Ok((site, _)) = &at {
                sites.entry(*site).or_default().push(extra);
            }
            placed.push((name, addr, at));
        }
        let _ = self.user_armed.set(armed);
        let _ = self.extra_sites.set(sites);
        placed
    }

    /// Writes the traps [`Self::place_extras`] placed; one whose site is a
    /// built-in probe's shares that trap.
    fn insert_extras(
        &self,
        ins: &Inserter<'_, '_>,
        placed: Vec<PlacedExtra>,
        builtin: &std::collections::HashSet<u64>,
        probes: &mut Vec<SwProbe>,
        notes: &mut Vec<String>,
    ) {
        let trap = ins.trap;
        let mut inserted: HashMap<u64, String> = HashMap::new();
        for (name, addr, at) in placed {
            let mechanism = match at {
                Err(why) => {
                    notes.push(format!("not covered: {name}: {why}"));
                    format!("none ({why})")
                }
                Ok((site, what)) if builtin.contains(&site) => {
                    format!("software, the built-in probe's {trap} at {what}")
                }
                Ok((site, what)) => {
                    let step = match inserted.get(&site) {
                        Some(step) => Ok(step.clone()),
                        None => ins.insert(site).map(|s| s.to_string()),
                    };
                    match step {
                        Ok(step) => {
                            inserted.insert(site, step.clone());
                            format!("software, {trap} at {what}, {step}")
                        }
                        Err(e) => {
                            notes.push(format!("not covered: {name}: {e}"));
                            format!("none ({e})")
                        }
                    }
                }
            };
            probes.push(SwProbe {
                addr,
                kind: name,
                mechanism,
            });
        }
    }

    /// The trap address of the probe at `addr` and where that is
    /// ("func+0x5"); `func` is its function (runtime start, size, name)
    /// when already known.
    fn place(
        &self,
        ctx: &VcpuCtx<'_>,
        addr: u64,
        slide: u64,
        trap: TrapKind,
        func: Option<&Function>,
    ) -> Result<(u64, String), String> {
        let link = addr.wrapping_sub(slide);
        let (func, size, name) = match func {
            Some((f, s, n)) => (*f, *s, n.as_str()),
            None => {
                let (name, start, size) = self
                    .facts
                    .functions
                    .get(&link)
                    .ok_or("no symbol holds it")?;
                (start.wrapping_add(slide), *size, name.as_str())
            }
        };
        let code = read_code(ctx, func, size).ok_or("its function's code is not mapped")?;
        let ignored: Vec<Range<u64>> = self
            .facts
            .blocks
            .get(&link)
            .map(|&b| {
                let b = b.wrapping_add(slide);
                b..b.saturating_add(BLOCK)
            })
            .into_iter()
            .collect();
        let site = trap_site::choose(&code, func, addr, trap.length(), &ignored)
            .map_err(|e| e.to_string())?;
        Ok((
            site.addr,
            format!("{name}+{:#x} ({})", site.addr - func, site.names.join("; ")),
        ))
    }
}

/// `len` bytes of kernel code at `va`, page by page through the guest's
/// page tables.
pub(super) fn read_code(ctx: &VcpuCtx<'_>, va: u64, len: u64) -> Option<Vec<u8>> {
    let mut out = vec![0u8; len as usize];
    let mut done = 0u64;
    while done < len {
        let at = va.wrapping_add(done);
        let n = (0x1000 - (at & 0xfff)).min(len - done);
        let gpa = ctx.translate(at).ok()??;
        ctx.read_phys(gpa, &mut out[done as usize..(done + n) as usize])
            .ok()?;
        done += n;
    }
    Some(out)
}
