//! What a KVM-engine trap reports besides the built-in probes: user probes
//! (`--probe`) and flight-recorder triggers (`--trigger`), both through the
//! engine-independent halves in `record_ctf` (`user`, `triggers`).
//!
//! Trigger sites: a trigger on a function's entry (`panic`, `oops_begin`;
//! `do_exit` for `signal-exit`) is a software trap placed like a user probe;
//! a syscall trigger checks the built-in syscall exits (the return site in
//! `entry_SYSCALL_64`, the compat dispatcher's return sites), so it needs
//! the syscalls class traced. Like every software trap, the entry triggers
//! are in from the kernel's first `begin_new_exec` on.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use introspect::ctx::{read_u64, Reg, VcpuContext};
use introspect::pt_regs;
use introspect::triggers::{Condition, TriggerPlan};
use introspect::ProbeKind;
use record_ctf::triggers::{FiredAt, Host, Triggers};
use vmm::VcpuCtx;

/// Why `--trigger`s cannot run on the monitor.
#[derive(Debug, thiserror::Error)]
pub enum TriggerError {
    #[error("reading the trigger plan")]
    Load(#[source] introspect::triggers::TriggerPlanError),
    #[error("--trigger syscall=...: on --backend kvm the syscall exits are checked where they are traced: add syscalls to --events")]
    SyscallsNotTraced,
    #[error("--trigger: {0}")]
    Start(String),
}

use super::handler::Handler;
use super::sw::Extra;
use crate::context::KvmContext;

/// The trigger plan written at `plan_path` (by the host side of
/// `--trigger`), if any; refuses syscall triggers when the syscall exits
/// are not traced.
pub fn trigger_plan(
    plan_path: Option<&Path>,
    plan: &introspect::ProbePlan,
) -> Result<Option<TriggerPlan>, TriggerError> {
    let Some(p) = plan_path else { return Ok(None) };
    let tp = TriggerPlan::load(&p.to_string_lossy()).map_err(TriggerError::Load)?;
    let on_syscall = tp.triggers.iter().any(|t| {
        matches!(
            t.cond,
            Condition::SyscallReturns { .. } | Condition::CompatSyscallReturns { .. }
        )
    });
    if on_syscall && !plan.events.syscalls {
        return Err(TriggerError::SyscallsNotTraced);
    }
    Ok(Some(tp))
}

/// The plan's triggers on function entries: (link-time address, index,
/// name).
pub(super) fn entry_triggers(tp: &TriggerPlan) -> Vec<(u64, u32, String)> {
    tp.triggers
        .iter()
        .enumerate()
        .filter_map(|(i, t)| match t.cond {
            Condition::Enter { link } | Condition::SignalExit { do_exit: link } if link != 0 => {
                Some((link, i as u32, t.name.clone()))
            }
            _ => None,
        })
        .collect()
}

/// Starts the trigger thread on `writer`'s snapshots.
pub(super) fn start_triggers(
    tp: TriggerPlan,
    marker: Option<u32>,
    writer: &ltt_writer::TraceWriter,
    out: &Path,
    epoch: Instant,
    epoch_unix_ns: u64,
) -> Result<Arc<Triggers>, TriggerError> {
    let host = Host {
        now_unix_ns: Box::new(move || {
            epoch_unix_ns.wrapping_add(epoch.elapsed().as_nanos() as u64)
        }),
        note: Box::new(|s| eprintln!("hvtrace: record: {s}")),
    };
    Triggers::start(tp, marker, writer.trigger_handle(), out, host)
        .map_err(|e| TriggerError::Start(e.to_string()))
}

impl Handler {
    /// A trap's user probe or trigger.
    pub(super) fn extra_trap(&mut self, ctx: &mut VcpuCtx<'_>, x: Extra) {
        match x {
            Extra::Probe(i) => self.user_trap(ctx, i),
            Extra::Trigger(i) => self.entry_trigger(ctx, i),
        }
    }

    /// The entry of trigger `index`'s function: fires if its condition
    /// holds.
    fn entry_trigger(&mut self, ctx: &mut VcpuCtx<'_>, index: u32) {
        let Some(t) = self.sh.triggers.as_deref() else {
            return;
        };
        let Ok(kctx) = KvmContext::new(ctx) else {
            return;
        };
        let kctx = kctx.with_kernel_gs_base(self.kernel_gs);
        if let Some(detail) = t.entry_fires(index, kctx.read_reg(Reg::Rdi)) {
            self.fire(index, &kctx, detail);
        }
    }

    /// At a built-in syscall exit of `kind`: the syscall triggers.
    pub(super) fn syscall_trigger(&mut self, kind: ProbeKind, kctx: &KvmContext) {
        let Some(t) = self.sh.triggers.as_deref() else {
            return;
        };
        let fired = match kind {
            // RSP points at pt_regs, whose ax holds the return value.
            ProbeKind::SyscallExit => {
                let regs = kctx.read_reg(Reg::Rsp);
                t.syscall_fires(kctx, false, regs, || {
                    read_u64(kctx, regs.wrapping_add(pt_regs::AX)).ok()
                })
            }
            // The compat dispatcher returned: RAX, the number in the
            // task's own pt_regs.
            ProbeKind::CompatSyscallExit => {
                let Ok(regs) = introspect::task::current_pt_regs(kctx, &self.kernel) else {
                    return;
                };
                t.syscall_fires(kctx, true, regs, || Some(kctx.read_reg(Reg::Rax)))
            }
            _ => None,
        };
        if let Some((i, ret)) = fired {
            self.fire(i, kctx, ret);
        }
    }

    /// Trigger `index` holds: what the vCPU holds back first, then the
    /// marker and the snapshot request.
    fn fire(&mut self, index: u32, kctx: &KvmContext, detail: i64) {
        let Some(t) = self.sh.triggers.as_deref() else {
            return;
        };
        let task = introspect::task::current_task(kctx, &self.kernel);
        let ts = self.sh.now();
        self.tracer.flush(&mut self.sink);
        let at = FiredAt {
            cpu: self.cpu,
            ts,
            unix_ns: self.sh.epoch_unix_ns.wrapping_add(ts),
        };
        t.fire(index, self.sink.producer.as_mut(), &task, at, detail);
    }

    /// A hit of user probe `index`: its fields, written in order (held
    /// behind a deferred syscall entry, if any).
    fn user_trap(&mut self, ctx: &mut VcpuCtx<'_>, index: usize) {
        let sh = &*self.sh;
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
