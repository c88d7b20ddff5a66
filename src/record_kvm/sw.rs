//! Software breakpoints for `record --backend kvm`, where KVM delivers #BP
//! exits (hardware KVM; `vmm::probe_sw_breakpoints`).
//!
//! Every planned entry probe becomes a VM-wide int3 (`vmm`'s list: one
//! saved byte per address, step-over by emulating the covered instruction
//! when it is a NOP/endbr64/push/mov %rsp,%rbp, else by single-stepping
//! with the other vCPUs paused). Return-site probes stay hardware
//! breakpoints: their sites come from a byte scan of the caller
//! (`return_sites`), which cannot prove an instruction boundary, and an
//! int3 written into the middle of an instruction would corrupt the guest.
//!
//! When: not at the kernel's first instruction. At boot the kernel still
//! rewrites its own text (ftrace turns each `call __fentry__` into a 5-byte
//! NOP and verifies the old bytes first; alternatives, static keys, IBT
//! sealing), so an int3 there would make it fail or warn. The int3s go in
//! at the first `begin_new_exec`, i.e. the kernel's exec of `/init`, after
//! `free_initmem` and `mark_readonly`: boot-time patching is over. Until
//! then the 4 hardware breakpoints per vCPU trace the early boot (one of
//! them on `begin_new_exec` itself). The bytes are read at that moment,
//! not assumed: a function still starting with a `call` is probed too, on
//! the slow single-step path, and the report says so.
//!
//! Never on a tracepoint's static-branch site (`sched_waking`/`sched_wakeup`
//! at their sites): the guest's jump_label code compares those bytes with
//! the NOP it expects before patching them, and BUG()s on a mismatch, so an
//! int3 there would crash a guest that turns the tracepoint on. sched_waking
//! goes back to `try_to_wake_up`'s entry; sched_wakeup, which has no
//! function of its own, is left out and reported.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};

use introspect::kernel::reloc;
use introspect::probes::{plan_probes, Probe};
use introspect::ProbeKind;
use vmm::VcpuCtx;

/// One armed software breakpoint, for the summary and `kvm.json`.
#[derive(Debug, Clone)]
pub(super) struct SwProbe {
    pub addr: u64,
    pub kind: ProbeKind,
    /// "software, emulated nop5" etc., or why it was not armed.
    pub mechanism: String,
}

/// An address's probe kind and whether its int3 went in.
struct Site {
    kind: ProbeKind,
    inserted: AtomicBool,
}

/// The engine's software-breakpoint phase, shared by all vCPU handlers.
pub(super) struct SwPhase {
    /// KVM delivers #BP exits: software breakpoints are used.
    pub enabled: bool,
    /// Why (not), for the summary.
    pub reason: String,
    /// `begin_new_exec`: where the int3s go in (0: never).
    pub trigger: u64,
    armed: AtomicBool,
    arming: AtomicBool,
    sites: OnceLock<HashMap<u64, Site>>,
    pub probes: Mutex<Vec<SwProbe>>,
}

impl SwPhase {
    pub fn new(enabled: bool, reason: String, trigger: u64) -> Self {
        SwPhase {
            enabled,
            reason,
            trigger,
            armed: AtomicBool::new(false),
            arming: AtomicBool::new(false),
            sites: OnceLock::new(),
            probes: Mutex::new(Vec::new()),
        }
    }

    /// The VM-wide int3s are in.
    pub fn armed(&self) -> bool {
        self.armed.load(Ordering::Acquire)
    }

    /// The kind of the software breakpoint at `pc` (trap path: no lock).
    pub fn kind_at(&self, pc: u64) -> Option<ProbeKind> {
        self.sites.get()?.get(&pc).map(|s| s.kind)
    }

    /// An int3 of ours sits at `addr` (a hardware breakpoint there defers
    /// to it).
    pub fn covers(&self, addr: u64) -> bool {
        self.armed()
            && self
                .sites
                .get()
                .and_then(|m| m.get(&addr))
                .is_some_and(|s| s.inserted.load(Ordering::Acquire))
    }

    /// Inserts every planned entry probe of `slide` as a VM-wide software
    /// breakpoint, once for the VM (the first caller does it). Returns the
    /// notes to report.
    pub fn arm(&self, ctx: &VcpuCtx<'_>, plan: &introspect::ProbePlan, slide: u64) -> Vec<String> {
        if self.arming.swap(true, Ordering::AcqRel) {
            return Vec::new();
        }
        let mut set = plan_probes(plan, slide, None);
        let mut notes: Vec<String> = set
            .dropped
            .iter()
            .map(|(k, why)| format!("not covered: {k:?}: {why}"))
            .collect();
        set.entries = off_static_branches(set.entries, plan, slide, &mut notes);
        let mut sites = HashMap::new();
        for p in &set.entries {
            sites.entry(p.addr).or_insert(Site {
                kind: p.kind,
                inserted: AtomicBool::new(false),
            });
        }
        // Known before any int3 exists: another vCPU's hit finds its kind.
        let sites = self.sites.get_or_init(|| sites);
        let mut probes = Vec::new();
        for p in &set.entries {
            let Some(site) = sites.get(&p.addr).filter(|s| s.kind == p.kind) else {
                notes.push(format!(
                    "not covered: {:?} at {:#x}: another probe has that address",
                    p.kind, p.addr
                ));
                continue;
            };
            let first = first_byte(ctx, p.addr);
            let mechanism = match ctx.insert_vm_sw_breakpoint(p.addr) {
                Ok(step) => {
                    site.inserted.store(true, Ordering::Release);
                    match (step, first) {
                        (vmm::StepOver::SingleStep, Some(0xe8)) => format!(
                            "software, {step}: the function still starts with a call (ftrace did not patch it)"
                        ),
                        _ => format!("software, {step}"),
                    }
                }
                Err(e) => {
                    notes.push(format!("not covered: {:?} at {:#x}: {e}", p.kind, p.addr));
                    format!("none ({e})")
                }
            };
            probes.push(SwProbe {
                addr: p.addr,
                kind: p.kind,
                mechanism,
            });
        }
        *self.probes.lock().unwrap_or_else(|e| e.into_inner()) = probes;
        self.armed.store(true, Ordering::Release);
        notes
    }
}

/// The entry probes with none on a static-branch site (see the module
/// comment): sched_waking's sites become one probe at `try_to_wake_up`.
fn off_static_branches(
    entries: Vec<Probe>,
    plan: &introspect::ProbePlan,
    slide: u64,
    notes: &mut Vec<String>,
) -> Vec<Probe> {
    let mut out = Vec::with_capacity(entries.len());
    let mut waking = false;
    let mut left_out = std::collections::BTreeSet::new();
    for p in entries {
        match p.kind {
            ProbeKind::SchedWakingAt { .. } => waking = true,
            ProbeKind::SchedWakeup { .. } => _ = left_out.insert("sched_wakeup"),
            ProbeKind::SchedWakeupNew { .. } => _ = left_out.insert("sched_wakeup_new"),
            ProbeKind::SoftirqEntry { .. }
            | ProbeKind::SoftirqExit { .. }
            | ProbeKind::SoftirqRaise { .. } => _ = left_out.insert("softirqs"),
            _ => out.push(p),
        }
    }
    let ttwu = plan.symbols.try_to_wake_up;
    if waking && ttwu != 0 {
        out.push(Probe {
            addr: reloc(ttwu, slide),
            kind: ProbeKind::SchedWaking,
        });
    }
    for what in left_out {
        notes.push(format!(
            "not covered: {what}: its sites are static branches the guest may patch (an int3 there would crash it)"
        ));
    }
    out
}

fn first_byte(ctx: &VcpuCtx<'_>, addr: u64) -> Option<u8> {
    let gpa = ctx.translate(addr).ok()??;
    let mut b = [0u8; 1];
    ctx.read_phys(gpa, &mut b).ok()?;
    Some(b[0])
}

/// Whether to use software breakpoints on this host, and why (not).
pub(super) fn decide() -> (bool, String) {
    match vmm::probe_sw_breakpoints() {
        Ok(true) => (
            true,
            "KVM delivers software breakpoints (#BP exits): every entry probe is an int3, return sites are hardware breakpoints".into(),
        ),
        Ok(false) => (
            false,
            "KVM does not deliver software breakpoints here (an int3 under KVM_GUESTDBG_USE_SW_BP is no #BP exit: this KVM emulates guest code, e.g. KVM-PVM), so probes are the 4 hardware breakpoints per vCPU".into(),
        ),
        Err(e) => (
            false,
            format!("software breakpoints could not be probed ({e}), so probes are the 4 hardware breakpoints per vCPU"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use introspect::decode::SiteArg;
    use introspect::Reg;

    #[test]
    fn no_int3_on_a_static_branch_site() {
        let mut plan = introspect::ProbePlan::default();
        plan.symbols.try_to_wake_up = 0xffff_ffff_810e_1700;
        let p = |addr, kind| Probe { addr, kind };
        let entries = vec![
            p(0xffff_ffff_81a4_3dc0, ProbeKind::SyscallEntry),
            p(
                0xffff_ffff_810e_1978,
                ProbeKind::SchedWakingAt {
                    arg: SiteArg::Reg(Reg::Rbx),
                },
            ),
            p(
                0xffff_ffff_810e_179e,
                ProbeKind::SchedWakingAt {
                    arg: SiteArg::Reg(Reg::Rbx),
                },
            ),
            p(
                0xffff_ffff_810d_f8ae,
                ProbeKind::SchedWakeup {
                    arg: SiteArg::Reg(Reg::Rbp),
                },
            ),
            p(
                0xffff_ffff_810a_8eb6,
                ProbeKind::SoftirqEntry {
                    arg: SiteArg::Reg(Reg::Rdx),
                },
            ),
            p(
                0xffff_ffff_810a_9ab8,
                ProbeKind::SoftirqRaise {
                    arg: SiteArg::Const(6),
                },
            ),
        ];
        let mut notes = Vec::new();
        let out = off_static_branches(entries, &plan, 0x1000_0000, &mut notes);
        assert_eq!(
            out,
            [
                p(0xffff_ffff_81a4_3dc0, ProbeKind::SyscallEntry),
                p(0xffff_ffff_910e_1700, ProbeKind::SchedWaking),
            ]
        );
        assert_eq!(notes.len(), 2);
        assert!(notes[0].contains("sched_wakeup") && notes[1].contains("softirqs"));
    }
}
