//! The probe planner: maps the requested event classes onto what an engine
//! can arm (any number of addresses on the TCG plugin or with software
//! breakpoints; 4 hardware breakpoints per vCPU on KVM under PVM), and says
//! what it could not cover.

use crate::decode::ProbeKind;
use crate::kernel::reloc;
use crate::plan::ProbePlan;

/// Errors of arming probes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProbeError {
    #[error("no probe slot left for {0:#x}")]
    NoSlot(u64),
    #[error("the engine cannot arm {addr:#x}: {why}")]
    Engine { addr: u64, why: String },
}

/// What an engine offers for probes.
pub trait ProbeEngine {
    /// How many addresses can be armed at once (None: unlimited).
    fn budget(&self) -> Option<usize>;
    /// Arms a probe at a runtime kernel address.
    fn arm(&mut self, addr: u64, kind: ProbeKind) -> Result<(), ProbeError>;
    /// Disarms it (no guest byte may stay changed).
    fn disarm(&mut self, addr: u64) -> Result<(), ProbeError>;
}

/// A planned probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    pub addr: u64,
    pub kind: ProbeKind,
}

/// The planner's answer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProbeSet {
    /// Function-entry probes to arm.
    pub entries: Vec<Probe>,
    /// Callees whose return sites (the instruction after each `call`) are
    /// probed with the given kind; each found site takes a slot.
    pub returns: Vec<Probe>,
    /// What was asked for and could not be covered, with the reason.
    pub dropped: Vec<(ProbeKind, &'static str)>,
}

impl ProbeSet {
    /// Every entry probe's kind at `addr`.
    pub fn entry_at(&self, addr: u64) -> Option<ProbeKind> {
        self.entries.iter().find(|p| p.addr == addr).map(|p| p.kind)
    }
}

/// Plans probes for `plan.events` on a kernel relocated by `slide`, within
/// `budget` addresses (None: unlimited). In a tight budget the order of
/// importance is: syscall entry, context switch, irq entry, fork, exec,
/// exit, wakeup, timer, then the return probes.
pub fn plan_probes(plan: &ProbePlan, slide: u64, budget: Option<usize>) -> ProbeSet {
    let s = &plan.symbols;
    let ev = plan.events;
    let wanted: [(bool, u64, ProbeKind, bool); 11] = [
        (ev.syscalls, s.do_syscall_64, ProbeKind::SyscallEntry, false),
        (ev.sched, s.switch_to, ProbeKind::SchedSwitch, false),
        (ev.irq, s.handle_irq_event, ProbeKind::IrqEntry, false),
        (ev.proc, s.wake_up_new_task, ProbeKind::ProcessFork, false),
        (ev.proc, s.begin_new_exec, ProbeKind::ProcessExec, false),
        (ev.proc, s.do_exit, ProbeKind::ProcessExit, false),
        (ev.sched, s.try_to_wake_up, ProbeKind::SchedWaking, false),
        (
            ev.irq,
            s.sysvec_apic_timer_interrupt,
            ProbeKind::TimerEntry,
            false,
        ),
        (ev.syscalls, s.do_syscall_64, ProbeKind::SyscallExit, true),
        (ev.irq, s.handle_irq_event, ProbeKind::IrqExit, true),
        (
            ev.irq,
            s.sysvec_apic_timer_interrupt,
            ProbeKind::TimerExit,
            true,
        ),
    ];
    let mut set = ProbeSet::default();
    let mut left = budget.unwrap_or(usize::MAX);
    for (on, link, kind, is_return) in wanted {
        if !on {
            continue;
        }
        if link == 0 {
            set.dropped.push((kind, "symbol not in this kernel"));
            continue;
        }
        if left == 0 {
            set.dropped.push((kind, "no probe slot left"));
            continue;
        }
        left -= 1;
        let p = Probe {
            addr: reloc(link, slide),
            kind,
        };
        if is_return {
            set.returns.push(p);
        } else {
            set.entries.push(p);
        }
    }
    set
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{EventClasses, Symbols};

    fn plan() -> ProbePlan {
        ProbePlan {
            symbols: Symbols {
                do_syscall_64: 0xffff_ffff_81a4_3dc0,
                switch_to: 0xffff_ffff_8103_1080,
                handle_irq_event: 0xffff_ffff_8112_0fa0,
                wake_up_new_task: 0xffff_ffff_810e_2ac0,
                begin_new_exec: 0xffff_ffff_8137_1bc0,
                do_exit: 0xffff_ffff_810a_7010,
                try_to_wake_up: 0xffff_ffff_810e_1700,
                sysvec_apic_timer_interrupt: 0,
                ..Symbols::default()
            },
            events: EventClasses::all(),
            ..ProbePlan::default()
        }
    }

    #[test]
    fn unlimited_budget_covers_everything_present() {
        let set = plan_probes(&plan(), 0x20c0_0000, None);
        assert_eq!(set.entries.len(), 7);
        assert_eq!(set.returns.len(), 2);
        assert_eq!(
            set.entry_at(0xffff_ffff_81a4_3dc0 + 0x20c0_0000),
            Some(ProbeKind::SyscallEntry)
        );
        // the timer symbol is missing: said so, twice (entry and return)
        assert_eq!(set.dropped.len(), 2);
        assert!(set
            .dropped
            .iter()
            .all(|d| d.1 == "symbol not in this kernel"));
    }

    #[test]
    fn four_hardware_breakpoints_keep_the_most_important() {
        let set = plan_probes(&plan(), 0, Some(4));
        let kinds: Vec<ProbeKind> = set.entries.iter().map(|p| p.kind).collect();
        assert_eq!(
            kinds,
            [
                ProbeKind::SyscallEntry,
                ProbeKind::SchedSwitch,
                ProbeKind::IrqEntry,
                ProbeKind::ProcessFork
            ]
        );
        assert!(set.returns.is_empty());
        assert!(set
            .dropped
            .iter()
            .any(|d| d.0 == ProbeKind::SyscallExit && d.1 == "no probe slot left"));
    }

    #[test]
    fn only_requested_classes() {
        let mut p = plan();
        p.events = EventClasses::parse("syscalls").unwrap();
        let set = plan_probes(&p, 0, None);
        assert_eq!(set.entries.len(), 1);
        assert_eq!(set.returns.len(), 1);
        assert!(set.dropped.is_empty());
    }
}
