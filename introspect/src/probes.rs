//! The probe planner: maps the requested event classes onto what an engine
//! can arm (any number of addresses on the TCG plugin or with software
//! breakpoints; 4 hardware breakpoints per vCPU on KVM under PVM), and says
//! what it could not cover.

use crate::decode::{ProbeKind, SiteArg};
use crate::kernel::reloc;
use crate::plan::{ArgSite, ProbePlan};
use crate::Reg;

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
/// exit, waking, wakeup (one slot per tracepoint site), timer, then the
/// return probes. The 32-bit (compat) syscall entry and exit come last,
/// and only without a budget.
pub fn plan_probes(plan: &ProbePlan, slide: u64, budget: Option<usize>) -> ProbeSet {
    let s = &plan.symbols;
    let ev = plan.events;
    // (wanted, link-time address, kind, is a return probe)
    let mut wanted: Vec<(bool, u64, ProbeKind, bool)> = vec![
        (ev.syscalls, s.do_syscall_64, ProbeKind::SyscallEntry, false),
        (ev.sched, s.switch_to, ProbeKind::SchedSwitch, false),
        (ev.irq, s.handle_irq_event, ProbeKind::IrqEntry, false),
        (ev.proc, s.wake_up_new_task, ProbeKind::ProcessFork, false),
        (ev.proc, s.begin_new_exec, ProbeKind::ProcessExec, false),
        (ev.proc, s.do_exit, ProbeKind::ProcessExit, false),
    ];
    let mut set = ProbeSet::default();
    // sched_waking at its tracepoint's sites when every one is usable (the
    // kernel's own condition), else at try_to_wake_up's entry
    let waking = sites(s.sites("sched_waking"), |arg| ProbeKind::SchedWakingAt {
        arg,
    });
    match waking {
        Some(w) if !w.is_empty() => {
            wanted.extend(w.into_iter().map(|(a, k)| (ev.sched, a, k, false)))
        }
        _ => wanted.push((ev.sched, s.try_to_wake_up, ProbeKind::SchedWaking, false)),
    }
    // Events that exist only at their tracepoint's sites: all or none.
    let at_sites: [(bool, &str, SiteKind); 5] = [
        (ev.sched, "sched_wakeup", |arg| ProbeKind::SchedWakeup {
            arg,
        }),
        (ev.sched, "sched_wakeup_new", |arg| {
            ProbeKind::SchedWakeupNew { arg }
        }),
        (ev.irq, "softirq_entry", |arg| ProbeKind::SoftirqEntry {
            arg,
        }),
        (ev.irq, "softirq_exit", |arg| ProbeKind::SoftirqExit { arg }),
        (ev.irq, "softirq_raise", |arg| ProbeKind::SoftirqRaise {
            arg,
        }),
    ];
    let timer = s.sysvec_apic_timer_interrupt;
    for (on, name, kind) in at_sites {
        if name == "softirq_entry" {
            // the local timer interrupt before the softirqs
            wanted.push((ev.irq, timer, ProbeKind::TimerEntry, false));
        }
        if !on {
            continue;
        }
        let absent = kind(SiteArg::Const(0));
        match sites(s.sites(name), kind) {
            Some(w) if w.is_empty() => set
                .dropped
                .push((absent, "no site of the tracepoint in this kernel")),
            Some(w) => wanted.extend(w.into_iter().map(|(a, k)| (true, a, k, false))),
            // one site missed would lose events silently: none is armed
            None => set
                .dropped
                .push((absent, "a site whose argument register is unknown")),
        }
    }
    wanted.extend([
        (ev.syscalls, s.do_syscall_64, ProbeKind::SyscallExit, true),
        (ev.irq, s.handle_irq_event, ProbeKind::IrqExit, true),
        (ev.irq, timer, ProbeKind::TimerExit, true),
    ]);
    // Compat syscalls only where probes are not counted: a budget is the
    // KVM monitor's hardware breakpoints, which keep to the native events
    // (that engine does not search the compat return sites either, and an
    // entry without its exit would mislead).
    let compat = [
        (ProbeKind::CompatSyscallEntry, false),
        (ProbeKind::CompatSyscallExit, true),
    ];
    for (kind, is_return) in compat {
        if budget.is_none() {
            wanted.push((ev.syscalls, s.ia32_sys_call, kind, is_return));
        } else if ev.syscalls {
            set.dropped
                .push((kind, "not planned within a probe budget"));
        }
    }
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

/// The probe kind of a tracepoint site whose argument is in a register.
type SiteKind = fn(SiteArg) -> ProbeKind;

/// Probes at every tracepoint site, or None if a site's argument is
/// unknown.
fn sites(list: &[ArgSite], kind: impl Fn(SiteArg) -> ProbeKind) -> Option<Vec<(u64, ProbeKind)>> {
    list.iter()
        .map(|site| {
            let arg = match site.constant {
                Some(c) => SiteArg::Const(c),
                None => SiteArg::Reg(Reg::from_x86(site.reg)?),
            };
            Some((site.addr, kind(arg)))
        })
        .collect()
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
                ia32_sys_call: 0xffff_ffff_8100_5630,
                tracepoints: [(
                    "sched_wakeup".to_string(),
                    vec![
                        ArgSite {
                            addr: 0xffff_ffff_810d_f8ae,
                            reg: 5,
                            constant: None,
                        },
                        ArgSite {
                            addr: 0xffff_ffff_810e_1984,
                            reg: 3,
                            constant: None,
                        },
                    ],
                )]
                .into(),
                ..Symbols::default()
            },
            events: EventClasses::all(),
            ..ProbePlan::default()
        }
    }

    #[test]
    fn unlimited_budget_covers_everything_present() {
        let set = plan_probes(&plan(), 0x20c0_0000, None);
        assert_eq!(set.entries.len(), 10);
        assert_eq!(
            set.entry_at(0xffff_ffff_810d_f8ae + 0x20c0_0000),
            Some(ProbeKind::SchedWakeup {
                arg: SiteArg::Reg(Reg::Rbp)
            })
        );
        assert_eq!(
            set.entry_at(0xffff_ffff_810e_1984 + 0x20c0_0000),
            Some(ProbeKind::SchedWakeup {
                arg: SiteArg::Reg(Reg::Rbx)
            })
        );
        assert_eq!(set.returns.len(), 3);
        assert_eq!(
            set.entry_at(0xffff_ffff_81a4_3dc0 + 0x20c0_0000),
            Some(ProbeKind::SyscallEntry)
        );
        // compat syscalls: the dispatcher's entry and its callers' return sites
        assert_eq!(
            set.entry_at(0xffff_ffff_8100_5630 + 0x20c0_0000),
            Some(ProbeKind::CompatSyscallEntry)
        );
        assert_eq!(set.returns[2].kind, ProbeKind::CompatSyscallExit);
        assert_eq!(
            set.entries.last().unwrap().kind,
            ProbeKind::CompatSyscallEntry
        );
        // the timer symbol is missing: said so, twice (entry and return);
        // so are the sites of sched_wakeup_new and the softirqs, once each
        let said = |why: &str| set.dropped.iter().filter(|d| d.1 == why).count();
        assert_eq!(said("symbol not in this kernel"), 2);
        assert_eq!(said("no site of the tracepoint in this kernel"), 4);
        assert_eq!(set.dropped.len(), 6);
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
        // a budget with room left still keeps to the native events
        let mut p = plan();
        p.events = EventClasses::parse("syscalls").unwrap();
        let set = plan_probes(&p, 0, Some(4));
        assert_eq!(set.entries.len() + set.returns.len(), 2);
        assert!(set
            .dropped
            .iter()
            .any(|d| d.0 == ProbeKind::CompatSyscallEntry
                && d.1 == "not planned within a probe budget"));
    }

    #[test]
    fn wakeup_sites_without_a_register_or_at_all_are_reported() {
        let mut p = plan();
        let wakeup = p.symbols.tracepoints.get_mut("sched_wakeup").unwrap();
        wakeup[1].reg = u8::MAX;
        let set = plan_probes(&p, 0, None);
        assert_eq!(set.entries.len(), 8);
        assert!(set
            .dropped
            .iter()
            .any(|d| matches!(d.0, ProbeKind::SchedWakeup { .. })
                && d.1 == "a site whose argument register is unknown"));
        p.symbols.tracepoints.clear();
        let set = plan_probes(&p, 0, None);
        assert!(set
            .dropped
            .iter()
            .any(|d| matches!(d.0, ProbeKind::SchedWakeup { .. })
                && d.1 == "no site of the tracepoint in this kernel"));
        // not asked for: not reported
        p.events = EventClasses::parse("syscalls").unwrap();
        assert!(plan_probes(&p, 0, None).dropped.is_empty());
    }

    #[test]
    fn waking_at_its_tracepoint_sites_when_all_are_usable() {
        let mut p = plan();
        let waking = vec![
            ArgSite {
                addr: 0xffff_ffff_810e_1978,
                reg: 3,
                constant: None,
            },
            ArgSite {
                addr: 0xffff_ffff_810e_179e,
                reg: 3,
                constant: None,
            },
        ];
        p.symbols.tracepoints.insert("sched_waking".into(), waking);
        let set = plan_probes(&p, 0, None);
        let waking = ProbeKind::SchedWakingAt {
            arg: SiteArg::Reg(Reg::Rbx),
        };
        assert_eq!(set.entry_at(0xffff_ffff_810e_1978), Some(waking));
        assert_eq!(set.entry_at(0xffff_ffff_810e_179e), Some(waking));
        assert_eq!(set.entry_at(p.symbols.try_to_wake_up), None);
        // one site without a register: back to try_to_wake_up's entry
        p.symbols.tracepoints.get_mut("sched_waking").unwrap()[0].reg = 16;
        let set = plan_probes(&p, 0, None);
        assert_eq!(
            set.entry_at(p.symbols.try_to_wake_up),
            Some(ProbeKind::SchedWaking)
        );
        assert_eq!(set.entry_at(0xffff_ffff_810e_179e), None);
    }

    #[test]
    fn only_requested_classes() {
        let mut p = plan();
        p.events = EventClasses::parse("syscalls").unwrap();
        let set = plan_probes(&p, 0, None);
        assert_eq!(set.entries.len(), 2);
        assert_eq!(set.returns.len(), 2);
        assert!(set.dropped.is_empty());
        // a kernel without IA32 emulation: said so
        p.symbols.ia32_sys_call = 0;
        let set = plan_probes(&p, 0, None);
        assert_eq!(set.entries.len(), 1);
        assert!(set
            .dropped
            .iter()
            .any(|d| d.0 == ProbeKind::CompatSyscallEntry && d.1 == "symbol not in this kernel"));
    }
}
