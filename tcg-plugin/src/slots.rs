//! Per-vCPU state reached from trap callbacks without locks: one slot per
//! vCPU, only ever touched by the thread running that vCPU (QEMU runs a
//! vCPU's callbacks on its own thread; with round-robin TCG all vCPUs share
//! one thread, still never concurrently), and by the exit hook once all
//! vCPUs have stopped.

use std::cell::UnsafeCell;
use std::fs::File;
use std::io::{BufWriter, Write};

use introspect::codec::{encode, MAX_RECORD};
use introspect::defer::{Deferral, Held, EXTERNAL_MAX};
use introspect::task::current_task;
use introspect::userprobe::{FieldValue, ResolvedProbe, MAX_FIELDS};
use introspect::{Kernel, Task};
use introspect::{Record, VcpuState};

use crate::vcpu::QemuVcpu;

/// Everything one vCPU's traps use.
pub struct VcpuRuntime {
    pub ctx: QemuVcpu,
    pub state: VcpuState,
    pub rec: Record,
    pub out: Option<BufWriter<File>>,
    pub producer: Option<ltt_writer::Producer>,
    pub ctf_errors: u64,
    pub first_ctf_error: Option<ltt_writer::ProduceError>,
    pub events: u64,
    /// Nanoseconds spent in trap callbacks (decode + write).
    pub busy_ns: u64,
    /// Host time of the last sample (sample mode).
    pub last_sample_ns: u64,
    pub write_errors: u64,
    pub by_kind: [u64; 16],
    /// Events written, by `Record::event_tag`.
    pub by_event: [u64; 16],
    /// Syscall entries held until their string is readable (taken out
    /// while in use, so never None between callbacks).
    pub deferral: Option<Box<Deferral>>,
    /// User-probe values: the hit being written and the hits held behind
    /// a deferred syscall entry.
    pub user: Box<UserBufs>,
}

/// Fixed buffers of the user probes of one vCPU (allocated at vCPU init).
pub struct UserBufs {
    vals: [FieldValue; MAX_FIELDS],
    held: [HeldUser; EXTERNAL_MAX],
}

#[derive(Clone, Copy)]
struct HeldUser {
    probe: usize,
    ts: u64,
    task: Task,
    vals: [FieldValue; MAX_FIELDS],
}

impl UserBufs {
    pub fn new() -> Box<Self> {
        let held = HeldUser {
            probe: 0,
            ts: 0,
            task: Task::UNKNOWN,
            vals: [FieldValue::EMPTY; MAX_FIELDS],
        };
        Box::new(Self {
            vals: [FieldValue::EMPTY; MAX_FIELDS],
            held: [held; EXTERNAL_MAX],
        })
    }
}

impl VcpuRuntime {
    /// Appends the record in `self.rec` to this vCPU's stream (no allocation:
    /// the writer's buffer was allocated when the vCPU started).
    pub fn emit(&mut self) {
        let rec = self.rec;
        self.split().1.write(&rec);
    }

    /// Like [`Self::emit`], but a syscall entry whose string argument is
    /// not mapped yet is held back and its string read again at the next
    /// event of this vCPU (see `introspect::defer`); order is kept.
    pub fn emit_deferring(&mut self, k: &Kernel) {
        let rec = self.rec;
        let Some(mut d) = self.deferral.take() else {
            return self.emit();
        };
        let (ctx, mut out) = self.split();
        d.pass(ctx, k, &rec, |h| out.write_held(h));
        self.deferral = Some(d);
    }

    /// A hit of user probe `index`: fetches its fields and writes its
    /// event (held, in order, behind a deferred syscall entry if any).
    pub fn user_hit(&mut self, index: usize, probe: &ResolvedProbe, k: &Kernel, ts: u64) {
        let task = current_task(&self.ctx, k);
        probe.fetch(&self.ctx, k, &mut self.user.vals);
        let mut d = self.deferral.take();
        let (ctx, mut out) = self.split();
        let held = match d.as_mut() {
            Some(d) => d.hold_external(ctx, k, |h| out.write_held(h)),
            None => None,
        };
        match held {
            Some(n) => {
                let u = &mut *out.user;
                if let Some(h) = u.held.get_mut(n) {
                    h.probe = index;
                    h.ts = ts;
                    h.task = task;
                    h.vals = u.vals;
                }
            }
            None => out.write_user(index, ts, &task, None),
        }
        self.deferral = d;
    }

    /// Writes whatever the deferral holds, in order (before anything that
    /// does not go through it, and at the end).
    pub fn flush_deferred(&mut self) {
        if let Some(mut d) = self.deferral.take() {
            let mut out = self.split().1;
            d.flush(|h| out.write_held(h));
            self.deferral = Some(d);
        }
    }

    fn split(&mut self) -> (&QemuVcpu, Out<'_>) {
        (
            &self.ctx,
            Out {
                out: &mut self.out,
                producer: &mut self.producer,
                events: &mut self.events,
                by_event: &mut self.by_event,
                write_errors: &mut self.write_errors,
                ctf_errors: &mut self.ctf_errors,
                first_ctf_error: &mut self.first_ctf_error,
                user: &mut self.user,
            },
        )
    }

    /// Flushes the stream (and whatever the deferral holds).
    pub fn flush(&mut self) {
        self.flush_deferred();
        if let Some(w) = self.out.as_mut() {
            if w.flush().is_err() {
                self.write_errors += 1;
            }
        }
    }
}

/// The output half of a [`VcpuRuntime`], borrowed apart from its context.
struct Out<'a> {
    out: &'a mut Option<BufWriter<File>>,
    producer: &'a mut Option<ltt_writer::Producer>,
    events: &'a mut u64,
    by_event: &'a mut [u64; 16],
    write_errors: &'a mut u64,
    ctf_errors: &'a mut u64,
    first_ctf_error: &'a mut Option<ltt_writer::ProduceError>,
    user: &'a mut UserBufs,
}

/// `Record::event_tag`-like index of user-probe events in `by_event`.
pub const USER_TAG: usize = 13;

impl Out<'_> {
    fn write_held(&mut self, h: Held<'_>) {
        match h {
            Held::Rec(r) => self.write(r),
            Held::External(n) => {
                if let Some(u) = self.user.held.get(n) {
                    let (probe, ts, task) = (u.probe, u.ts, u.task);
                    self.write_user(probe, ts, &task, Some(n));
                }
            }
        }
    }

    /// Writes a user-probe event with the values of the current hit
    /// (`held == None`) or of held hit `n`.
    fn write_user(&mut self, probe: usize, ts: u64, task: &Task, held: Option<usize>) {
        let Some(rp) = crate::user::probes().get(probe) else {
            return;
        };
        *self.events += 1;
        self.by_event[USER_TAG] += 1;
        let Some(p) = self.producer.as_mut() else {
            return;
        };
        let vals = match held.and_then(|n| self.user.held.get(n)) {
            Some(h) => &h.vals,
            None => &self.user.vals,
        };
        let res = match p.catalog().id_of(rp.name()) {
            Some(id) => {
                let ctx = ltt_writer::TaskCtx::new(task.pid, task.tid, &task.comm);
                record_ctf::emit_user(p, id, ts, &ctx, rp, vals)
            }
            None => Err(ltt_writer::ProduceError::NotDeclared("user probe")),
        };
        if let Err(e) = res {
            *self.ctf_errors += 1;
            if self.first_ctf_error.is_none() {
                *self.first_ctf_error = Some(e);
            }
        }
    }

    fn write(&mut self, rec: &Record) {
        *self.events += 1;
        if let Some(c) = self.by_event.get_mut(usize::from(rec.event_tag())) {
            *c += 1;
        }
        if let Some(w) = self.out.as_mut() {
            let mut buf = [0u8; MAX_RECORD];
            let n = encode(rec, &mut buf);
            if w.write_all(&buf[..n]).is_err() {
                *self.write_errors += 1;
            }
        }
        if let Some(p) = self.producer.as_mut() {
            if let Err(e) = record_ctf::emit(p, rec) {
                *self.ctf_errors += 1;
                if self.first_ctf_error.is_none() {
                    *self.first_ctf_error = Some(e);
                }
            }
        }
    }
}

/// One vCPU's slot.
pub struct Slot(UnsafeCell<Option<VcpuRuntime>>);

// SAFETY: a slot is only accessed by the thread running its vCPU, or by the
// exit hook after every vCPU stopped (see the module comment).
unsafe impl Sync for Slot {}

impl Slot {
    pub fn empty() -> Self {
        Self(UnsafeCell::new(None))
    }

    /// The slot's content.
    ///
    /// # Safety
    /// Only the thread running this vCPU (or the exit hook once all vCPUs
    /// stopped) may call this, and not re-entrantly.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn get(&self) -> &mut Option<VcpuRuntime> {
        // SAFETY: exclusivity is the caller's contract.
        unsafe { &mut *self.0.get() }
    }
}
