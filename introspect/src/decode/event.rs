//! What the decoders produce and keep: probe kinds, the fixed-size event
//! records, and the per-vCPU state between traps.

use super::{IRQ_DEPTH, IRQ_NAME_LEN, STR_LEN};
use crate::ctx::{read_cstr, Reg, VcpuContext};
use crate::kernel::Kernel;
use crate::task::{current_task_addr, read_task, Task};
/// What a probe point is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProbeKind {
    /// Entry of `do_syscall_64(regs, nr)`.
    SyscallEntry,
    /// Return site of the call to `do_syscall_64` in `entry_SYSCALL_64`
    /// (RSP points at pt_regs, ax holds the return value).
    SyscallExit,
    /// Entry of `__switch_to(prev, next)`.
    SchedSwitch,
    /// Entry of `try_to_wake_up(p, state, flags)` (when the kernel has no
    /// usable `sched_waking` tracepoint site).
    SchedWaking,
    /// A static-branch site of the `sched_waking` tracepoint, where `arg`
    /// holds the task being woken.
    SchedWakingAt {
        arg: SiteArg,
    },
    /// Sites of the `softirq_entry`, `softirq_exit` and `softirq_raise`
    /// tracepoints, where `arg` holds the softirq's number (`vec_nr`).
    SoftirqEntry {
        arg: SiteArg,
    },
    SoftirqExit {
        arg: SiteArg,
    },
    SoftirqRaise {
        arg: SiteArg,
    },
    /// A static-branch site of the `sched_wakeup` tracepoint, where `arg`
    /// holds the task (`p`) just made runnable.
    SchedWakeup {
        arg: SiteArg,
    },
    /// The `sched_wakeup_new` tracepoint's site in `wake_up_new_task`,
    /// where `arg` holds the new task (its CPU chosen).
    SchedWakeupNew {
        arg: SiteArg,
    },
    /// Entry of `wake_up_new_task(p)`.
    ProcessFork,
    /// Entry of `begin_new_exec(bprm)`.
    ProcessExec,
    /// Entry of `do_exit(code)`.
    ProcessExit,
    /// Entry of `handle_irq_event(desc)`.
    IrqEntry,
    /// Return site of a call to `handle_irq_event` (rax = irqreturn_t).
    IrqExit,
    /// Entry of `__sysvec_apic_timer_interrupt(regs)` (the local timer).
    TimerEntry,
    /// Return site of a call to `__sysvec_apic_timer_interrupt`.
    TimerExit,
    /// A statistical sample of whatever the vCPU runs (sample mode).
    Sample,
    /// Entry of `ia32_sys_call(regs, nr)`: a 32-bit (compat) syscall.
    CompatSyscallEntry,
    /// Return site of a call to `ia32_sys_call` (rax = the return value;
    /// the number is `orig_ax` of the task's own pt_regs).
    CompatSyscallExit,
}

impl ProbeKind {
    /// A small distinct number per kind (< 16), for per-kind counters.
    pub fn index(self) -> usize {
        match self {
            ProbeKind::SyscallEntry => 0,
            ProbeKind::SyscallExit => 1,
            ProbeKind::SchedSwitch => 2,
            ProbeKind::SchedWaking => 3,
            ProbeKind::ProcessFork => 4,
            ProbeKind::ProcessExec => 5,
            ProbeKind::ProcessExit => 6,
            ProbeKind::IrqEntry => 7,
            ProbeKind::IrqExit => 8,
            ProbeKind::TimerEntry => 9,
            ProbeKind::TimerExit => 10,
            ProbeKind::Sample => 11,
            ProbeKind::SchedWakeup { .. } => 12,
            ProbeKind::SchedWakingAt { .. } => 13,
            ProbeKind::CompatSyscallEntry => 14,
            ProbeKind::CompatSyscallExit => 15,
            ProbeKind::SoftirqEntry { .. } => 16,
            ProbeKind::SoftirqExit { .. } => 17,
            ProbeKind::SoftirqRaise { .. } => 18,
            ProbeKind::SchedWakeupNew { .. } => 19,
        }
    }
}

/// Where a tracepoint site's argument is: in a register the compiler
/// chose, or a constant it passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SiteArg {
    Reg(Reg),
    Const(u32),
}

impl SiteArg {
    /// Its value at the site.
    pub fn value<C: VcpuContext + ?Sized>(self, ctx: &C) -> u64 {
        match self {
            SiteArg::Reg(r) => ctx.read_reg(r),
            SiteArg::Const(c) => u64::from(c),
        }
    }
}

/// Slots of the engines' per-kind and per-tag counters: more than any
/// [`ProbeKind::index`] or [`Record::event_tag`].
pub const COUNTER_SLOTS: usize = 32;

/// Vector of the local APIC timer (LOCAL_TIMER_VECTOR).
pub const LOCAL_TIMER_VECTOR: i32 = 0xec;

/// A user string, as read (NUL-padded) or marked unreadable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestStr {
    pub bytes: [u8; STR_LEN],
    pub ok: bool,
}

impl Default for GuestStr {
    fn default() -> Self {
        Self {
            bytes: [0; STR_LEN],
            ok: false,
        }
    }
}

impl GuestStr {
    /// Reads a string from guest virtual memory.
    pub fn read<C: VcpuContext + ?Sized>(ctx: &C, va: u64) -> Self {
        let mut s = Self::default();
        s.ok = va != 0 && read_cstr(ctx, va, &mut s.bytes).is_ok();
        s
    }
    /// The text up to the NUL ("" when unreadable).
    pub fn as_str(&self) -> &str {
        let n = self.bytes.iter().position(|&c| c == 0).unwrap_or(STR_LEN);
        match std::str::from_utf8(&self.bytes[..n]) {
            Ok(s) => s,
            Err(e) => std::str::from_utf8(&self.bytes[..e.valid_up_to()]).unwrap_or(""),
        }
    }
}

/// A decoded event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    SyscallEntry {
        nr: u32,
        args: [u64; 6],
        /// Index of the argument read as a string (if any).
        str_arg: Option<u8>,
        string: GuestStr,
    },
    /// `args` are the argument registers saved in the task's pt_regs,
    /// read at the exit as lttng-modules reads them there for the output
    /// arguments (`read`'s buffer, `wait4`'s status pointer, ...).
    SyscallExit {
        nr: u32,
        ret: i64,
        args: [u64; 6],
        /// The two descriptors a successful `pipe2` wrote to user memory
        /// (lttng-modules records them, not the pointer); zeros otherwise.
        fds: [i32; 2],
    },
    /// A 32-bit (compat) syscall: `nr` in the i386 table, the argument
    /// registers ebx, ecx, edx, esi, edi, ebp (zero-extended).
    CompatSyscallEntry {
        nr: u32,
        args: [u64; 6],
        str_arg: Option<u8>,
        string: GuestStr,
    },
    CompatSyscallExit {
        nr: u32,
        ret: i64,
        args: [u64; 6],
        fds: [i32; 2],
    },
    SchedSwitch {
        prev: Task,
        next: Task,
    },
    SchedWaking {
        task: Task,
        target_cpu: i32,
    },
    /// The task is runnable again (`sched_wakeup`, after `sched_waking`).
    SchedWakeup {
        task: Task,
        target_cpu: i32,
    },
    /// A new task is runnable for the first time (`sched_wakeup_new`).
    SchedWakeupNew {
        task: Task,
        target_cpu: i32,
    },
    ProcessFork {
        parent: Task,
        child: Task,
    },
    ProcessExec {
        filename: GuestStr,
        tid: i32,
        old_tid: i32,
    },
    ProcessExit {
        task: Task,
    },
    IrqEntry {
        irq: i32,
        name: [u8; IRQ_NAME_LEN],
    },
    IrqExit {
        irq: i32,
        ret: i32,
    },
    /// Local APIC timer interrupt (`/proc/interrupts` LOC).
    TimerEntry {
        vector: i32,
    },
    TimerExit {
        vector: i32,
    },
    /// A softirq (`vec`: its number, e.g. 1 TIMER, 9 RCU) runs, ends, or
    /// is raised (lttng's `irq_softirq_entry/exit/raise`).
    SoftirqEntry {
        vec: u32,
    },
    SoftirqExit {
        vec: u32,
    },
    SoftirqRaise {
        vec: u32,
    },
    /// Sample mode: the instruction pointer of the current task.
    Sample {
        ip: u64,
    },
    /// One task of the statedump at trace start.
    Statedump {
        task: Task,
        ppid: i32,
        /// The task's files table (`file_table_address`; 0: unknown).
        files: u64,
    },
}

impl Event {
    /// A syscall entry's (native or compat) arguments, the index of its
    /// string argument and that string.
    pub fn syscall_string(&self) -> Option<(&[u64; 6], Option<u8>, &GuestStr)> {
        match self {
            Event::SyscallEntry {
                args,
                str_arg,
                string,
                ..
            }
            | Event::CompatSyscallEntry {
                args,
                str_arg,
                string,
                ..
            } => Some((args, *str_arg, string)),
            _ => None,
        }
    }

    /// [`Self::syscall_string`], with the string to fill in.
    pub fn syscall_string_mut(&mut self) -> Option<(&[u64; 6], Option<u8>, &mut GuestStr)> {
        match self {
            Event::SyscallEntry {
                args,
                str_arg,
                string,
                ..
            }
            | Event::CompatSyscallEntry {
                args,
                str_arg,
                string,
                ..
            } => Some((args, *str_arg, string)),
            _ => None,
        }
    }
}

/// One trace record: who, where, when, what.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record {
    pub cpu: u32,
    pub ts: u64,
    pub current: Task,
    pub event: Event,
}

/// [`Record::event_tag`] of the statedump, whose counter also counts its
/// start, end and item events (written without a record).
pub const STATEDUMP_TAG: u8 = 9;

impl Record {
    /// A small integer naming the event's kind (the codec's tag).
    pub fn event_tag(&self) -> u8 {
        match self.event {
            Event::SyscallEntry { .. } => 0,
            Event::SyscallExit { .. } => 1,
            Event::SchedSwitch { .. } => 2,
            Event::SchedWaking { .. } => 3,
            Event::ProcessFork { .. } => 4,
            Event::ProcessExec { .. } => 5,
            Event::ProcessExit { .. } => 6,
            Event::IrqEntry { .. } => 7,
            Event::IrqExit { .. } => 8,
            Event::Statedump { .. } => STATEDUMP_TAG,
            Event::TimerEntry { .. } => 10,
            Event::TimerExit { .. } => 11,
            Event::Sample { .. } => 12,
            // 13 is the engines' count of user-probe events
            Event::SchedWakeup { .. } => 14,
            // one tag for both (engines count events per tag in 16 slots);
            // the codec tells them apart by the next byte
            Event::CompatSyscallEntry { .. } | Event::CompatSyscallExit { .. } => 15,
            Event::SoftirqEntry { .. } => 16,
            Event::SoftirqExit { .. } => 17,
            Event::SoftirqRaise { .. } => 18,
            Event::SchedWakeupNew { .. } => 19,
        }
    }
}

/// Per-vCPU decoder state (owned by the vCPU's thread).
#[derive(Debug, Clone, Default)]
pub struct VcpuState {
    pub(super) irq_stack: [i32; IRQ_DEPTH],
    pub(super) irq_depth: usize,
    /// The current task as last read; reused while the per-CPU current
    /// pointer still names it (one read instead of six per event).
    pub(super) cur: Task,
    pub(super) cur_valid: bool,
}

impl VcpuState {
    /// Forgets the cached current task (its comm may have changed).
    pub fn invalidate_current(&mut self) {
        self.cur_valid = false;
    }

    pub(super) fn current<C: VcpuContext + ?Sized>(&mut self, ctx: &C, k: &Kernel) -> Task {
        match current_task_addr(ctx, k) {
            Ok(a) if self.cur_valid && self.cur.addr == a => self.cur,
            Ok(a) => {
                self.cur = read_task(ctx, k, a);
                self.cur_valid = true;
                self.cur
            }
            Err(_) => Task::UNKNOWN,
        }
    }
}
