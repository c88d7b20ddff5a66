//! Per-vCPU state reached from trap callbacks without locks: one slot per
//! vCPU, only ever touched by the thread running that vCPU (QEMU runs a
//! vCPU's callbacks on its own thread; with round-robin TCG all vCPUs share
//! one thread, still never concurrently), and by the exit hook once all
//! vCPUs have stopped.

use std::cell::UnsafeCell;
use std::fs::File;
use std::io::{BufWriter, Write};

use introspect::codec::{encode, MAX_RECORD};
use introspect::defer::EXTERNAL_MAX;
use introspect::runtime::{Sink, VcpuTracer};
use introspect::task::current_task;
use introspect::userprobe::{FieldValue, ResolvedProbe, MAX_FIELDS};
use introspect::{Kernel, Record, Task};

use crate::vcpu::QemuVcpu;

/// Everything one vCPU's traps use: the engine-independent tracer
/// (decode, deferral, statedump, counts) and where its records go.
pub struct VcpuRuntime {
    pub ctx: QemuVcpu,
    pub tracer: VcpuTracer,
    pub sink: TraceSink,
    /// Nanoseconds spent in trap callbacks (decode + write).
    pub busy_ns: u64,
    /// Host time of the last sample (sample mode).
    pub last_sample_ns: u64,
}

/// One vCPU's outputs: the CTF producer, the optional raw record stream,
/// and the user probes' values.
pub struct TraceSink {
    pub out: Option<BufWriter<File>>,
    pub producer: Option<ltt_writer::Producer>,
    pub write_errors: u64,
    pub ctf_errors: u64,
    pub first_ctf_error: Option<ltt_writer::ProduceError>,
    /// User-probe events written (the tracer counts the others).
    pub user_events: u64,
    /// User-probe values: the hit being written and the hits held behind
    /// a deferred syscall entry.
    user: Box<UserBufs>,
}

/// Fixed buffers of the user probes of one vCPU (allocated at vCPU init).
struct UserBufs {
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

impl TraceSink {
    pub fn new(out: Option<BufWriter<File>>, producer: Option<ltt_writer::Producer>) -> Self {
        let held = HeldUser {
            probe: 0,
            ts: 0,
            task: Task::UNKNOWN,
            vals: [FieldValue::EMPTY; MAX_FIELDS],
        };
        Self {
            out,
            producer,
            write_errors: 0,
            ctf_errors: 0,
            first_ctf_error: None,
            user_events: 0,
            user: Box::new(UserBufs {
                vals: [FieldValue::EMPTY; MAX_FIELDS],
                held: [held; EXTERNAL_MAX],
            }),
        }
    }

    fn ctf_result(&mut self, res: Result<(), ltt_writer::ProduceError>) {
        if let Err(e) = res {
            self.ctf_errors += 1;
            if self.first_ctf_error.is_none() {
                self.first_ctf_error = Some(e);
            }
        }
    }

    /// Writes a user-probe event with the values of the current hit
    /// (`held == None`) or of held hit `n`.
    fn write_user(&mut self, probe: usize, ts: u64, task: &Task, held: Option<usize>) {
        let Some(rp) = crate::user::probes().get(probe) else {
            return;
        };
        self.user_events += 1;
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
        self.ctf_result(res);
    }
}

impl Sink for TraceSink {
    fn emit(&mut self, rec: &Record) {
        if let Some(w) = self.out.as_mut() {
            let mut buf = [0u8; MAX_RECORD];
            let n = encode(rec, &mut buf);
            if w.write_all(&buf[..n]).is_err() {
                self.write_errors += 1;
            }
        }
        if let Some(p) = self.producer.as_mut() {
            let res = record_ctf::emit(p, rec);
            self.ctf_result(res);
        }
    }

    fn emit_external(&mut self, n: usize) {
        if let Some(u) = self.user.held.get(n) {
            let (probe, ts, task) = (u.probe, u.ts, u.task);
            self.write_user(probe, ts, &task, Some(n));
        }
    }

    fn statedump_start(&mut self, ts: u64, current: &Task) {
        let ctx = ltt_writer::TaskCtx::new(current.pid, current.tid, &current.comm);
        if let Some(p) = self.producer.as_mut() {
            let res = p.lttng_statedump_start(ts, &ctx);
            self.ctf_result(res);
        }
    }

    fn statedump_end(&mut self, ts: u64, current: &Task) {
        let ctx = ltt_writer::TaskCtx::new(current.pid, current.tid, &current.comm);
        if let Some(p) = self.producer.as_mut() {
            let res = p.lttng_statedump_end(ts, &ctx);
            self.ctf_result(res);
        }
    }
}

impl VcpuRuntime {
    /// A hit of user probe `index`: fetches its fields and writes its
    /// event (held, in order, behind a deferred syscall entry if any).
    pub fn user_hit(&mut self, index: usize, probe: &ResolvedProbe, k: &Kernel, ts: u64) {
        let task = current_task(&self.ctx, k);
        probe.fetch(&self.ctx, k, &mut self.sink.user.vals);
        match self.tracer.hold_external(&self.ctx, k, &mut self.sink) {
            Some(n) => {
                let u = &mut *self.sink.user;
                if let Some(h) = u.held.get_mut(n) {
                    h.probe = index;
                    h.ts = ts;
                    h.task = task;
                    h.vals = u.vals;
                }
            }
            None => self.sink.write_user(index, ts, &task, None),
        }
    }

    /// Writes whatever the tracer holds back and flushes the raw stream
    /// (before an event that does not go through the tracer, and at the end).
    pub fn flush(&mut self) {
        self.tracer.flush(&mut self.sink);
        if let Some(w) = self.sink.out.as_mut() {
            if w.flush().is_err() {
                self.sink.write_errors += 1;
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
