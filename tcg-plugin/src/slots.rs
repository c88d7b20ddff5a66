//! Per-vCPU state reached from trap callbacks without locks: one slot per
//! vCPU, only ever touched by the thread running that vCPU (QEMU runs a
//! vCPU's callbacks on its own thread; with round-robin TCG all vCPUs share
//! one thread, still never concurrently), and by the exit hook once all
//! vCPUs have stopped.

use std::cell::UnsafeCell;
use std::fs::File;
use std::io::{BufWriter, Write};

use introspect::codec::{encode, MAX_RECORD};
use introspect::runtime::{Sink, VcpuTracer};
use introspect::task::current_task;
use introspect::userprobe::ResolvedProbe;
use introspect::{Kernel, Record, Task};
use record_ctf::user::UserEvents;

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
    /// User-probe values: the hit being written and the hits held behind
    /// a deferred syscall entry; counts the user-probe events written (the
    /// tracer counts the others).
    pub user: Box<UserEvents>,
}

impl TraceSink {
    pub fn new(out: Option<BufWriter<File>>, producer: Option<ltt_writer::Producer>) -> Self {
        Self {
            out,
            producer,
            write_errors: 0,
            ctf_errors: 0,
            first_ctf_error: None,
            user: UserEvents::boxed(),
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
        let res = self
            .user
            .write_held(self.producer.as_mut(), crate::resolved::probes(), n);
        self.ctf_result(res);
    }

    fn statedump_start(&mut self, ts: u64, current: &Task) {
        let ctx = ltt_writer::TaskCtx::new(current.pid, current.tid, &current.comm);
        if let Some(p) = self.producer.as_mut() {
            let res = p.lttng_statedump_start(ts, &ctx);
            self.ctf_result(res);
        }
    }

    fn statedump_item(&mut self, ts: u64, current: &Task, item: &introspect::statedump::Item<'_>) {
        if let Some(p) = self.producer.as_mut() {
            let res = record_ctf::emit_statedump_item(p, ts, current, item);
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
        self.sink.user.fetch(probe, &self.ctx, k);
        match self.tracer.hold_external(&self.ctx, k, &mut self.sink) {
            Some(n) => self.sink.user.hold(n, index, ts, task),
            None => {
                let s = &mut self.sink;
                let res = s.user.write(
                    s.producer.as_mut(),
                    crate::resolved::probes(),
                    index,
                    ts,
                    &task,
                );
                s.ctf_result(res);
            }
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
