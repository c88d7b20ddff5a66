//! What every engine does with a probe hit, independent of the engine and
//! of the trace format: decode into the vCPU's record, count it, hand it to
//! a [`Sink`], and take the statedump once (at the first hit, or when the
//! traced command is exec'd). Also the return-site search engines use to
//! turn "trace the return of f" into probe addresses.
//!
//! Nothing here allocates on a trap, except the one statedump of a run
//! (into a buffer reserved up front when possible).

use std::sync::atomic::{AtomicBool, Ordering};

use crate::ctx::VcpuContext;
use crate::decode::{
    decode, Event, ProbeKind, Record, SyscallStrings, VcpuState, COUNTER_SLOTS, STATEDUMP_TAG,
    SYSCALL_SLOTS,
};
use crate::defer::{Deferral, Held};
use crate::kernel::Kernel;
use crate::plan::ProbePlan;
use crate::statedump::{for_each_other_thread, task_files, Item, Walker};
use crate::task::{for_each_task, read_task, Task, MAX_TASKS};

/// Where records go (an engine's trace producer for one vCPU).
pub trait Sink {
    /// Writes one record.
    fn emit(&mut self, rec: &Record);
    /// Writes the engine's own event it held as number `n` (see
    /// [`VcpuTracer::hold_external`]); engines without such events need
    /// not implement it.
    fn emit_external(&mut self, _n: usize) {}
    /// Marks the start of the statedump (taken by `current` at `ts`).
    fn statedump_start(&mut self, ts: u64, current: &Task);
    /// Marks its end.
    fn statedump_end(&mut self, ts: u64, current: &Task);
    /// Writes one of the statedump's other events (files, maps, devices),
    /// taken by `current` at `ts`; sinks without them need not implement it.
    fn statedump_item(&mut self, _ts: u64, _current: &Task, _item: &Item<'_>) {}
}

/// The per-syscall "which argument is a user string" table of a plan, as
/// [`SyscallStrings`] reads it: native syscalls by number, then the compat
/// (i386) ones from [`SYSCALL_SLOTS`].
pub fn string_table(plan: &ProbePlan) -> Vec<u8> {
    let mut strings = vec![0u8; 2 * SYSCALL_SLOTS];
    let (native, compat) = strings.split_at_mut(SYSCALL_SLOTS);
    for (table, calls) in [(native, &plan.syscalls), (compat, &plan.compat_syscalls)] {
        for sc in calls {
            if let Some(b) = table.get_mut(sc.nr as usize) {
                *b = sc.string_args;
            }
        }
    }
    strings
}

/// When the statedump is taken: once per run, at the first hit or when a
/// task execs the traced command. Shared by all vCPUs (one atomic flag).
#[derive(Debug, Default)]
pub struct StatedumpGate {
    done: AtomicBool,
    exec: Vec<u8>,
}

impl StatedumpGate {
    /// A gate for the command `exec` (empty: at the first hit).
    pub fn new(exec: &str) -> Self {
        Self {
            done: AtomicBool::new(false),
            exec: exec.as_bytes().to_vec(),
        }
    }

    /// Whether the statedump was taken.
    pub fn taken(&self) -> bool {
        self.done.load(Ordering::Acquire)
    }

    /// True exactly once (for the caller that takes the statedump).
    pub fn claim(&self) -> bool {
        !self.done.load(Ordering::Relaxed) && !self.done.swap(true, Ordering::AcqRel)
    }

    /// Is `filename` the traced command, as given or as found on the PATH
    /// ("x" matches "/bin/x")?
    pub fn is_traced_exec(&self, filename: &[u8]) -> bool {
        let w = &self.exec[..];
        !w.is_empty()
            && (filename == w
                || (filename.ends_with(w)
                    && filename.len() > w.len()
                    && filename[filename.len() - w.len() - 1] == b'/'))
    }
}

/// Everything one vCPU's traps use, apart from the engine's context and sink.
#[derive(Debug)]
pub struct VcpuTracer {
    pub state: VcpuState,
    pub rec: Record,
    /// Events written.
    pub events: u64,
    /// Decoded hits by `ProbeKind`.
    pub by_kind: [u64; COUNTER_SLOTS],
    /// Events written, by `Record::event_tag`.
    pub by_event: [u64; COUNTER_SLOTS],
    /// Reserved for the statedump's task list (task, ppid, files table,
    /// whether the task leads its process).
    tasks: Vec<(Task, i32, u64, bool)>,
    /// Syscall entries whose user string is not mapped yet, held back
    /// (see [`crate::defer`]); None: written as decoded.
    deferral: Option<Box<Deferral>>,
}

/// Counts and writes one record.
fn write<S: Sink + ?Sized>(
    events: &mut u64,
    by_event: &mut [u64; COUNTER_SLOTS],
    sink: &mut S,
    r: &Record,
) {
    *events += 1;
    if let Some(c) = by_event.get_mut(usize::from(r.event_tag())) {
        *c += 1;
    }
    sink.emit(r);
}

/// Writes what the deferral lets go: a record, or an engine's held event.
fn release<S: Sink + ?Sized>(
    events: &mut u64,
    by_event: &mut [u64; COUNTER_SLOTS],
    sink: &mut S,
    h: Held<'_>,
) {
    match h {
        Held::Rec(r) => write(events, by_event, sink, r),
        Held::External(n) => sink.emit_external(n),
    }
}

impl VcpuTracer {
    /// The tracer of vCPU `cpu`; reserves room for a statedump of
    /// `statedump_capacity` tasks so that it does not allocate on a trap.
    pub fn new(cpu: u32, statedump_capacity: usize) -> Self {
        Self {
            state: VcpuState::default(),
            rec: Record {
                cpu,
                ts: 0,
                current: Task::UNKNOWN,
                event: Event::IrqExit { irq: 0, ret: 0 },
            },
            events: 0,
            by_kind: [0; COUNTER_SLOTS],
            by_event: [0; COUNTER_SLOTS],
            tasks: Vec::with_capacity(statedump_capacity),
            deferral: None,
        }
    }

    /// Holds back syscall entries whose string argument is not mapped yet
    /// and reads it again later in the syscall ([`crate::defer`]).
    pub fn with_deferral(mut self) -> Self {
        self.deferral = Some(Deferral::new());
        self
    }

    /// Entries deferred, and how many of them were read on a retry.
    pub fn deferred(&self) -> (u64, u64) {
        self.deferral
            .as_ref()
            .map_or((0, 0), |d| (d.deferred, d.recovered))
    }

    /// Entries deferred, read on a retry, and written marked unreadable.
    pub fn strings_late(&self) -> [u64; 3] {
        self.deferral
            .as_ref()
            .map_or([0; 3], |d| [d.deferred, d.recovered, d.given_up])
    }

    /// Writes `self.rec` now.
    fn emit<S: Sink + ?Sized>(&mut self, sink: &mut S) {
        write(&mut self.events, &mut self.by_event, sink, &self.rec);
    }

    /// Writes `self.rec` through the deferral (held back or let go, in order).
    fn pass<C: VcpuContext + ?Sized, S: Sink + ?Sized>(
        &mut self,
        ctx: &C,
        k: &Kernel,
        sink: &mut S,
    ) {
        let rec = self.rec;
        let (events, by_event) = (&mut self.events, &mut self.by_event);
        match self.deferral.as_mut() {
            Some(d) => d.pass(ctx, k, &rec, |h| release(events, by_event, sink, h)),
            None => write(events, by_event, sink, &rec),
        }
    }

    /// Places an event of the engine's own (a user probe's) in order: when
    /// a syscall entry is held back, returns `Some(n)` and the engine keeps
    /// the event's values under `n` until its sink's `emit_external(n)`;
    /// `None`: the engine writes it now.
    pub fn hold_external<C: VcpuContext + ?Sized, S: Sink + ?Sized>(
        &mut self,
        ctx: &C,
        k: &Kernel,
        sink: &mut S,
    ) -> Option<usize> {
        let (events, by_event) = (&mut self.events, &mut self.by_event);
        self.deferral
            .as_mut()?
            .hold_external(ctx, k, |h| release(events, by_event, sink, h))
    }

    /// Writes whatever the deferral holds (before a statedump, and at the
    /// end of the run).
    pub fn flush<S: Sink + ?Sized>(&mut self, sink: &mut S) {
        let (events, by_event) = (&mut self.events, &mut self.by_event);
        if let Some(d) = self.deferral.as_mut() {
            d.flush(|h| release(events, by_event, sink, h));
        }
    }

    /// Handles a hit of a probe of kind `kind`: decodes, stamps with
    /// `now()`, emits, and takes the statedump when `gate` says so.
    /// Returns true if an event was emitted.
    #[allow(clippy::too_many_arguments)]
    pub fn hit<C: VcpuContext + ?Sized, S: Sink + ?Sized>(
        &mut self,
        kind: ProbeKind,
        ctx: &C,
        k: &Kernel,
        strings: &SyscallStrings<'_>,
        gate: &StatedumpGate,
        now: impl Fn() -> u64,
        sink: &mut S,
    ) -> bool {
        if gate.exec.is_empty() && gate.claim() {
            self.statedump(ctx, k, now(), sink);
        }
        if !decode(kind, ctx, k, strings, &mut self.state, &mut self.rec) {
            return false;
        }
        self.rec.ts = now();
        if let Some(c) = self.by_kind.get_mut(kind.index()) {
            *c += 1;
        }
        self.pass(ctx, k, sink);
        if let Event::ProcessExec { filename, .. } = &self.rec.event {
            if gate.is_traced_exec(filename.as_str().as_bytes()) && gate.claim() {
                self.statedump(ctx, k, now(), sink);
            }
        }
        true
    }

    /// Writes one `Statedump` record per task of the guest's task list.
    pub fn statedump<C: VcpuContext + ?Sized, S: Sink + ?Sized>(
        &mut self,
        ctx: &C,
        k: &Kernel,
        ts: u64,
        sink: &mut S,
    ) {
        // Whatever is held back came before the statedump.
        self.flush(sink);
        let cpu = ctx.vcpu_index();
        let cur = self.rec.current;
        let mut tasks = std::mem::take(&mut self.tasks);
        tasks.clear();
        // Every thread, each process's leader first, as lttng-modules'
        // `for_each_process` / `while_each_thread` lists them.
        for_each_task(ctx, k, |t, ppid| {
            tasks.push((*t, ppid, task_files(ctx, k, t.addr), true));
            for_each_other_thread(ctx, k, t.addr, |addr| {
                if tasks.len() < MAX_TASKS {
                    let th = read_task(ctx, k, addr);
                    tasks.push((th, ppid, task_files(ctx, k, addr), false));
                }
            });
        });
        sink.statedump_start(ts, &cur);
        // start, end and items are events too (the records count themselves)
        let mut others = 2u64;
        let mut walker = Walker::default();
        for &(task, ppid, files, leader) in &tasks {
            self.rec = Record {
                cpu,
                ts,
                current: task,
                event: Event::Statedump { task, ppid, files },
            };
            self.emit(sink);
            // lttng-modules dumps a process's descriptors after its state
            walker.task(ctx, k, &task, files, leader, |item| {
                others += 1;
                sink.statedump_item(ts, &cur, item);
            });
        }
        walker.system(ctx, k, |item| {
            others += 1;
            sink.statedump_item(ts, &cur, item)
        });
        sink.statedump_end(ts, &cur);
        self.events += others;
        if let Some(c) = self.by_event.get_mut(usize::from(STATEDUMP_TAG)) {
            *c += others;
        }
        self.rec.current = cur;
        self.tasks = tasks;
    }
}

/// Return sites of calls to `callee` in `code` (the bytes at guest-virtual
/// `base`): the address after each 5-byte `call rel32` (E8) whose target
/// is `callee`. Used on code whose instruction boundaries are not known
/// (a function's bytes); with hardware breakpoints a misread site only
/// costs a slot that never fires.
pub fn return_sites(code: &[u8], base: u64, callee: u64) -> Vec<u64> {
    let mut out = Vec::new();
    if code.len() < 5 {
        return out;
    }
    for i in 0..=code.len() - 5 {
        if code[i] != 0xe8 {
            continue;
        }
        let rel = i32::from_le_bytes([code[i + 1], code[i + 2], code[i + 3], code[i + 4]]);
        let next = base.wrapping_add(i as u64 + 5);
        if next.wrapping_add(rel as i64 as u64) == callee {
            out.push(next);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn return_site_of_a_call() {
        // nop; call +0x10; ret
        let base = 0xffff_ffff_8100_0000u64;
        let mut code = vec![0x90, 0xe8];
        code.extend_from_slice(&0x10i32.to_le_bytes());
        code.push(0xc3);
        let callee = base + 6 + 0x10;
        assert_eq!(return_sites(&code, base, callee), vec![base + 6]);
        assert!(return_sites(&code, base, callee + 1).is_empty());
        assert!(return_sites(&code[..4], base, callee).is_empty());
    }

    #[test]
    fn traced_exec_matches_path_forms() {
        let g = StatedumpGate::new("syscalls");
        assert!(g.is_traced_exec(b"/bin/syscalls"));
        assert!(g.is_traced_exec(b"syscalls"));
        assert!(!g.is_traced_exec(b"/bin/xsyscalls"));
        let g = StatedumpGate::new("/bin/true");
        assert!(g.is_traced_exec(b"/bin/true"));
        assert!(!StatedumpGate::new("").is_traced_exec(b"/bin/true"));
    }

    #[test]
    fn gate_claims_once() {
        let g = StatedumpGate::new("");
        assert!(g.claim());
        assert!(!g.claim());
        assert!(g.taken());
    }
}
