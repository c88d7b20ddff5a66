//! User-probe events (`hvtrace record --probe`) as both engines write them:
//! one vCPU's fixed buffers for the values of the hit being written and of
//! the hits held, in order, behind a deferred syscall entry
//! (`introspect::runtime::VcpuTracer::hold_external`). Nothing allocates
//! on the trap path.

use introspect::defer::EXTERNAL_MAX;
use introspect::userprobe::{FieldValue, ResolvedProbe, MAX_FIELDS};
use introspect::{Kernel, Task, VcpuContext};
use ltt_writer::{ProduceError, Producer, TaskCtx};

/// The per-event counter slot user-probe events are counted in (next to
/// the record tags of `introspect::decode`; the summaries call it "probes").
pub const EVENT_TAG: usize = 13;

/// A hit held back: which probe, when, by whom, with what values.
#[derive(Clone, Copy)]
struct Held {
    probe: usize,
    ts: u64,
    task: Task,
    vals: [FieldValue; MAX_FIELDS],
}

/// One vCPU's user-probe values.
pub struct UserEvents {
    vals: [FieldValue; MAX_FIELDS],
    held: [Held; EXTERNAL_MAX],
    /// Events written (held ones when released).
    pub written: u64,
}

impl Default for UserEvents {
    fn default() -> Self {
        let held = Held {
            probe: 0,
            ts: 0,
            task: Task::UNKNOWN,
            vals: [FieldValue::EMPTY; MAX_FIELDS],
        };
        UserEvents {
            vals: [FieldValue::EMPTY; MAX_FIELDS],
            held: [held; EXTERNAL_MAX],
            written: 0,
        }
    }
}

impl UserEvents {
    /// Boxed: the buffers are a few KiB, allocated once per vCPU.
    pub fn boxed() -> Box<Self> {
        Box::default()
    }

    /// Reads the fields of `probe`, just hit on `ctx`, into the current
    /// values.
    pub fn fetch<C: VcpuContext + ?Sized>(&mut self, probe: &ResolvedProbe, ctx: &C, k: &Kernel) {
        probe.fetch(ctx, k, &mut self.vals);
    }

    /// Keeps the current values as held hit `n` of probe `probe`.
    pub fn hold(&mut self, n: usize, probe: usize, ts: u64, task: Task) {
        if let Some(h) = self.held.get_mut(n) {
            *h = Held {
                probe,
                ts,
                task,
                vals: self.vals,
            };
        }
    }

    /// Writes the current values as an event of `probes[probe]`.
    pub fn write(
        &mut self,
        p: Option<&mut Producer>,
        probes: &[ResolvedProbe],
        probe: usize,
        ts: u64,
        task: &Task,
    ) -> Result<(), ProduceError> {
        write_values(&mut self.written, p, probes, probe, ts, task, &self.vals)
    }

    /// Writes held hit `n`.
    pub fn write_held(
        &mut self,
        p: Option<&mut Producer>,
        probes: &[ResolvedProbe],
        n: usize,
    ) -> Result<(), ProduceError> {
        let Some(h) = self.held.get(n) else {
            return Ok(());
        };
        write_values(
            &mut self.written,
            p,
            probes,
            h.probe,
            h.ts,
            &h.task,
            &h.vals,
        )
    }
}

fn write_values(
    written: &mut u64,
    p: Option<&mut Producer>,
    probes: &[ResolvedProbe],
    probe: usize,
    ts: u64,
    task: &Task,
    vals: &[FieldValue; MAX_FIELDS],
) -> Result<(), ProduceError> {
    let Some(rp) = probes.get(probe) else {
        return Ok(());
    };
    *written += 1;
    let Some(p) = p else { return Ok(()) };
    let id = p
        .catalog()
        .id_of(rp.name())
        .ok_or(ProduceError::NotDeclared("user probe"))?;
    let ctx = TaskCtx::new(task.pid, task.tid, &task.comm);
    crate::emit_user(p, id, ts, &ctx, rp, vals)
}
