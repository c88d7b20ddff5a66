//! Flight-recorder triggers inside QEMU (`hvtrace record --trigger`): the
//! TCG engine's sites for `record_ctf::triggers`, which runs them.
//!
//! Plugin argument `triggers=PATH`: an [`introspect::triggers::TriggerPlan`].
//! Execution callbacks on the trigger sites (function entries; the return
//! sites of `do_syscall_64` and `ia32_sys_call`) check the condition and
//! fire through the shared runtime.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use introspect::ctx::{read_u64, Reg, VcpuContext};
use introspect::kernel::reloc;
use introspect::pt_regs;
use introspect::triggers::{Condition, TriggerPlan};
use ltt_writer::{Catalog, TraceWriter};
use qemu_plugin::{
    install::Args, install::Value as ArgValue, CallbackFlags, Instruction, VCPUIndex,
};
use record_ctf::triggers::{FiredAt, Host, Triggers};

/// The plan and the marker's event id, from `declare`.
static PLAN: OnceLock<(TriggerPlan, Option<u32>)> = OnceLock::new();
/// The running triggers, from `start`.
static STATE: OnceLock<Arc<Triggers>> = OnceLock::new();

/// Loads the trigger plan named by the plugin argument `triggers` and
/// declares the marker event in `catalog`. Call before the writer exists.
pub(crate) fn declare(args: &Args, catalog: &mut Catalog) {
    let Some(ArgValue::String(path)) = args.parsed.get("triggers") else {
        return;
    };
    let plan = match TriggerPlan::load(path) {
        Ok(p) => p,
        Err(e) => {
            crate::state::note(format!("triggers: {}", crate::state::chain(&e)));
            return;
        }
    };
    let marker = record_ctf::triggers::declare_marker(catalog)
        .map_err(|e| {
            crate::state::note(format!(
                "triggers: marker event: {}",
                crate::state::chain(&e)
            ))
        })
        .ok();
    let _ = PLAN.set((plan, marker));
}

/// Starts the trigger thread (flight recorder only).
pub(crate) fn start(writer: Option<&TraceWriter>, out: &str) {
    let (Some((plan, marker)), Some(w)) = (PLAN.get(), writer) else {
        return;
    };
    let host = Host {
        now_unix_ns: Box::new(trace_unix_ns),
        note: Box::new(crate::state::note),
    };
    match Triggers::start(
        plan.clone(),
        *marker,
        w.trigger_handle(),
        std::path::Path::new(out),
        host,
    ) {
        Ok(t) => {
            let _ = STATE.set(t);
        }
        Err(e) => crate::state::note(format!("triggers: {e}")),
    }
}

fn trace_unix_ns() -> u64 {
    crate::state::G
        .get()
        .map(|g| g.epoch_unix_ns.wrapping_add(crate::state::now_ns(g)))
        .unwrap_or(0)
}

/// Trigger sites at translation time.
#[derive(Default)]
pub(crate) struct Sites {
    /// Runtime function entry → trigger index.
    entries: HashMap<u64, u32>,
    /// Runtime address of `do_syscall_64` (false) or `ia32_sys_call`
    /// (true: compat) for the syscall triggers.
    callees: HashMap<u64, bool>,
    /// Return sites of calls to a callee, and whether it is the compat one.
    returns: HashMap<u64, bool>,
}

impl Sites {
    /// Relocates the plan's sites once the KASLR slide is known.
    pub(crate) fn arm(&mut self, slide: u64) {
        let Some((plan, _)) = PLAN.get() else { return };
        for (i, t) in plan.triggers.iter().enumerate() {
            match t.cond {
                Condition::Enter { link } | Condition::SignalExit { do_exit: link } => {
                    if link != 0 {
                        self.entries.entry(reloc(link, slide)).or_insert(i as u32);
                    }
                }
                Condition::SyscallReturns { do_syscall_64, .. } => {
                    if do_syscall_64 != 0 {
                        self.callees.insert(reloc(do_syscall_64, slide), false);
                    }
                }
                Condition::CompatSyscallReturns { ia32_sys_call, .. } => {
                    if ia32_sys_call != 0 {
                        self.callees.insert(reloc(ia32_sys_call, slide), true);
                    }
                }
            }
        }
    }

    /// Registers the trigger callbacks of one instruction (after the
    /// tracing probes', so that the event that fires is written first).
    pub(crate) fn instrument(&mut self, insn: &Instruction<'_>) {
        let va = insn.vaddr();
        if let Some(&i) = self.entries.get(&va) {
            insn.register_execute_callback_flags(
                move |vcpu| on_entry(i, vcpu),
                CallbackFlags::QEMU_PLUGIN_CB_R_REGS,
            );
        }
        match self.returns.get(&va) {
            Some(false) => insn
                .register_execute_callback_flags(on_return, CallbackFlags::QEMU_PLUGIN_CB_R_REGS),
            Some(true) => insn.register_execute_callback_flags(
                on_compat_return,
                CallbackFlags::QEMU_PLUGIN_CB_R_REGS,
            ),
            None => {}
        }
        if !self.callees.is_empty() && insn.size() == 5 {
            let mut b = [0u8; 5];
            if insn.read_data(&mut b) == 5 && b[0] == 0xe8 {
                let rel = i32::from_le_bytes([b[1], b[2], b[3], b[4]]);
                let target = va.wrapping_add(5).wrapping_add(rel as i64 as u64);
                if let Some(&compat) = self.callees.get(&target) {
                    self.returns.insert(va.wrapping_add(5), compat);
                }
            }
        }
    }
}

/// Trap: entry of a trigger function.
fn on_entry(index: u32, vcpu: VCPUIndex) {
    let Some(st) = STATE.get() else { return };
    with_vcpu(vcpu, |rt| {
        if let Some(detail) = st.entry_fires(index, rt.ctx.read_reg(Reg::Rdi)) {
            fire(st, index, rt, detail);
        }
    });
}

/// Trap: return site of `do_syscall_64` (RSP points at `pt_regs`).
fn on_return(vcpu: VCPUIndex) {
    let Some(st) = STATE.get() else { return };
    with_vcpu(vcpu, |rt| {
        let regs = rt.ctx.read_reg(Reg::Rsp);
        let ret = || read_u64(&rt.ctx, regs.wrapping_add(pt_regs::AX)).ok();
        if let Some((i, ret)) = st.syscall_fires(&rt.ctx, false, regs, ret) {
            fire(st, i, rt, ret);
        }
    });
}

/// Trap: return site of a call to `ia32_sys_call` (RAX is the return
/// value; the number is in the task's own `pt_regs`).
fn on_compat_return(vcpu: VCPUIndex) {
    let Some(st) = STATE.get() else { return };
    let Some(k) = crate::state::G.get().and_then(|g| g.kernel.get()) else {
        return;
    };
    with_vcpu(vcpu, |rt| {
        let Ok(regs) = introspect::task::current_pt_regs(&rt.ctx, k) else {
            return;
        };
        let ret = || Some(rt.ctx.read_reg(Reg::Rax));
        if let Some((i, ret)) = st.syscall_fires(&rt.ctx, true, regs, ret) {
            fire(st, i, rt, ret);
        }
    });
}

fn with_vcpu(vcpu: VCPUIndex, f: impl FnOnce(&mut crate::slots::VcpuRuntime)) {
    let Some(g) = crate::state::G.get() else {
        return;
    };
    let Some(slot) = g.slots.get(vcpu as usize) else {
        return;
    };
    // Trap callbacks run on the thread of vCPU `vcpu`, after (never inside)
    // the tracing callback of the same instruction.
    // SAFETY: so this is the only access to the vCPU's slot.
    if let Some(rt) = unsafe { slot.get() }.as_mut() {
        f(rt);
    }
}

/// The trap path of a trigger that holds.
fn fire(st: &Triggers, index: u32, rt: &mut crate::slots::VcpuRuntime, detail: i64) {
    let Some(g) = crate::state::G.get() else {
        return;
    };
    let Some(k) = g.kernel.get() else { return };
    let task = introspect::task::current_task(&rt.ctx, k);
    let ts = crate::state::now_ns(g);
    // Records the vCPU still holds back go first.
    rt.flush();
    let at = FiredAt {
        cpu: rt.ctx.vcpu_index(),
        ts,
        unix_ns: g.epoch_unix_ns.wrapping_add(ts),
    };
    st.fire(index, rt.sink.producer.as_mut(), &task, at, detail);
}

/// At QEMU's exit, before the producers are dropped: stops the thread.
pub(crate) fn before_finish() {
    if let Some(st) = STATE.get() {
        st.before_finish();
    }
}

/// After the writer finished: logs the snapshots it wrote at the end.
pub(crate) fn after_finish() {
    if let Some(st) = STATE.get() {
        st.after_finish();
    }
}
