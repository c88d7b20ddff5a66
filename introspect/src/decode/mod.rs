//! Decoders: turn a trap at a probe into a fixed-size event record.
//! Nothing here allocates; every guest value is bounded and validated.

use crate::ctx::{is_kernel_addr, read_cstr, read_u32, read_u64, Reg, VcpuContext};
use crate::kernel::Kernel;
use crate::pt_regs;
use crate::task::{current_pt_regs, current_task, read_task};

mod event;
pub use event::*;

/// Errors of decoding (the event is then still emitted, with marked fields).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("pt_regs at {0:#x} unreadable")]
    Regs(u64),
}

/// Bytes kept of a string argument (NUL included).
pub const STR_LEN: usize = 128;
/// Bytes kept of an irq name.
pub const IRQ_NAME_LEN: usize = 32;
/// Deepest irq nesting tracked per vCPU.
pub const IRQ_DEPTH: usize = 8;

/// x86-64 numbers of the syscalls after which the current task's comm may
/// differ: execve, execveat, prctl (PR_SET_NAME).
const COMM_CHANGING: [u32; 3] = [59, 322, 157];
/// The same in the i386 table: execve, execveat, prctl.
const COMM_CHANGING_32: [u32; 3] = [11, 358, 172];
/// i386 `execve`, and the user code segment of 32-bit programs.
const I386_EXECVE: u32 = 11;
const USER32_CS: u64 = 0x23;
/// `pipe2` in the x86-64 and the i386 tables.
const PIPE2: u32 = 293;
const I386_PIPE2: u32 = 331;

/// The descriptors a `pipe2` that returned `ret` wrote at `fildes` (read
/// back at its exit, in the task's address space); zeros if it failed or
/// the page is gone.
fn pipe_fds<C: VcpuContext + ?Sized>(ctx: &C, ret: i64, fildes: u64) -> [i32; 2] {
    let mut b = [0u8; 8];
    if ret != 0 || ctx.read_virt(fildes, &mut b).is_err() {
        return [0; 2];
    }
    let fd = |i: usize| i32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    [fd(0), fd(4)]
}

/// Syscall metadata the decoder needs per number: which argument is a user
/// string, bit i set = argument i. The table holds the native syscalls at
/// `[0, SYSCALL_SLOTS)` and the compat (i386) ones after them (see
/// `runtime::string_table`).
pub struct SyscallStrings<'a>(pub &'a [u8]);

/// Syscall numbers each half of a [`SyscallStrings`] table covers.
pub const SYSCALL_SLOTS: usize = 1024;

impl SyscallStrings<'_> {
    /// The string-argument mask of native syscall `nr`.
    pub fn native(&self, nr: u32) -> u8 {
        self.at(nr as usize)
    }
    /// The string-argument mask of compat syscall `nr`.
    pub fn compat(&self, nr: u32) -> u8 {
        (nr as usize)
            .checked_add(SYSCALL_SLOTS)
            .map_or(0, |i| self.at(i))
    }
    fn at(&self, i: usize) -> u8 {
        self.0.get(i).copied().unwrap_or(0)
    }
}

/// The six argument registers, `orig_ax` (the syscall number) and `ax` (the
/// return value, once the syscall returned) of the pt_regs at `regs`.
fn arg_regs<C: VcpuContext + ?Sized>(
    ctx: &C,
    regs: u64,
) -> Result<([u64; 6], u64, u64), DecodeError> {
    let mut raw = [0u8; 128];
    ctx.read_virt(regs, &mut raw)
        .map_err(|_| DecodeError::Regs(regs))?;
    let at = |off: u64| {
        let o = off as usize;
        let mut b = [0u8; 8];
        b.copy_from_slice(&raw[o..o + 8]);
        u64::from_le_bytes(b)
    };
    Ok((
        [
            at(pt_regs::DI),
            at(pt_regs::SI),
            at(pt_regs::DX),
            at(pt_regs::R10),
            at(pt_regs::R8),
            at(pt_regs::R9),
        ],
        at(pt_regs::ORIG_AX),
        at(pt_regs::AX),
    ))
}

/// The i386 argument registers of a compat syscall from its pt_regs.
fn compat_args<C: VcpuContext + ?Sized>(ctx: &C, regs: u64) -> Result<[u64; 6], DecodeError> {
    let mut raw = [0u8; 128];
    ctx.read_virt(regs, &mut raw)
        .map_err(|_| DecodeError::Regs(regs))?;
    let at = |off: u64| {
        let o = off as usize;
        let mut b = [0u8; 4];
        b.copy_from_slice(&raw[o..o + 4]);
        u64::from(u32::from_le_bytes(b))
    };
    Ok([
        at(pt_regs::BX),
        at(pt_regs::CX),
        at(pt_regs::DX),
        at(pt_regs::SI),
        at(pt_regs::DI),
        at(pt_regs::BP),
    ])
}

/// The first string argument of `mask` and its text.
fn string_arg<C: VcpuContext + ?Sized>(
    ctx: &C,
    mask: u8,
    args: &[u64; 6],
) -> (Option<u8>, GuestStr) {
    let str_arg = (0..6u8).find(|i| mask & (1 << i) != 0);
    let string = match str_arg {
        Some(i) => GuestStr::read(ctx, args[i as usize]),
        None => GuestStr::default(),
    };
    (str_arg, string)
}

/// The CPU whose run queue task `p` is on (-1: unreadable).
fn task_cpu<C: VcpuContext + ?Sized>(ctx: &C, k: &Kernel, p: u64) -> i32 {
    read_u32(ctx, p.wrapping_add(k.off.task_cpu))
        .map(|v| v as i32)
        .unwrap_or(-1)
}

/// Decodes the trap at a probe of kind `kind` into `out`. Returns false when
/// there is nothing to emit (e.g. a return site reached without a match).
pub fn decode<C: VcpuContext + ?Sized>(
    kind: ProbeKind,
    ctx: &C,
    k: &Kernel,
    strings: &SyscallStrings<'_>,
    st: &mut VcpuState,
    out: &mut Record,
) -> bool {
    out.cpu = ctx.vcpu_index();
    let event = match kind {
        ProbeKind::SyscallEntry => {
            let regs = ctx.read_reg(Reg::Rdi);
            let (args, nr) = match arg_regs(ctx, regs) {
                Ok((a, orig, _)) => (a, orig as u32),
                Err(_) => ([0; 6], ctx.read_reg(Reg::Rsi) as u32),
            };
            let mask = strings.native(nr);
            let (str_arg, string) = string_arg(ctx, mask, &args);
            Event::SyscallEntry {
                nr,
                args,
                str_arg,
                string,
            }
        }
        ProbeKind::SyscallExit => {
            let regs = ctx.read_reg(Reg::Rsp);
            let Ok((args, nr, ret)) = arg_regs(ctx, regs) else {
                return false;
            };
            match (nr as u32, ret as i64) {
                // An execve into an i386 program returns to 32-bit code
                // with orig_ax set to the i386 execve by the kernel
                // (`__set_personality_ia32`): its exit is a compat one, as
                // `in_compat_syscall()` then says.
                (I386_EXECVE, ret)
                    if read_u64(ctx, regs.wrapping_add(pt_regs::CS)) == Ok(USER32_CS) =>
                {
                    st.invalidate_current();
                    Event::CompatSyscallExit {
                        nr: I386_EXECVE,
                        ret,
                        args: compat_args(ctx, regs).unwrap_or([0; 6]),
                        fds: [0; 2],
                    }
                }
                (nr, ret) => {
                    if COMM_CHANGING.contains(&nr) {
                        st.invalidate_current();
                    }
                    let fds = if nr == PIPE2 {
                        pipe_fds(ctx, ret, args[0])
                    } else {
                        [0; 2]
                    };
                    Event::SyscallExit { nr, ret, args, fds }
                }
            }
        }
        ProbeKind::CompatSyscallEntry => {
            // the number the switch dispatches on (after seccomp/ptrace)
            let nr = ctx.read_reg(Reg::Rsi) as u32;
            let args = compat_args(ctx, ctx.read_reg(Reg::Rdi)).unwrap_or([0; 6]);
            let (str_arg, string) = string_arg(ctx, strings.compat(nr), &args);
            Event::CompatSyscallEntry {
                nr,
                args,
                str_arg,
                string,
            }
        }
        ProbeKind::CompatSyscallExit => {
            let Ok(regs) = current_pt_regs(ctx, k) else {
                return false;
            };
            let Ok(orig) = read_u64(ctx, regs.wrapping_add(pt_regs::ORIG_AX)) else {
                return false;
            };
            let nr = orig as u32;
            if COMM_CHANGING_32.contains(&nr) {
                st.invalidate_current();
            }
            let ret = ctx.read_reg(Reg::Rax) as i64;
            let args = compat_args(ctx, regs).unwrap_or([0; 6]);
            let fds = if nr == I386_PIPE2 {
                pipe_fds(ctx, ret, args[0])
            } else {
                [0; 2]
            };
            Event::CompatSyscallExit { nr, ret, args, fds }
        }
        ProbeKind::SchedSwitch => Event::SchedSwitch {
            prev: read_task(ctx, k, ctx.read_reg(Reg::Rdi)),
            next: read_task(ctx, k, ctx.read_reg(Reg::Rsi)),
        },
        ProbeKind::SchedWaking => {
            let p = ctx.read_reg(Reg::Rdi);
            // try_to_wake_up(p, state, flags) wakes (and the kernel's
            // sched_waking fires) only when p's state matches `state`.
            let wanted = ctx.read_reg(Reg::Rsi);
            let st = read_u32(ctx, p.wrapping_add(k.off.task_state)).unwrap_or(0);
            if u64::from(st) & wanted == 0 {
                return false;
            }
            Event::SchedWaking {
                task: read_task(ctx, k, p),
                target_cpu: task_cpu(ctx, k, p),
            }
        }
        ProbeKind::SchedWakingAt { arg }
        | ProbeKind::SchedWakeup { arg }
        | ProbeKind::SchedWakeupNew { arg } => {
            let p = arg.value(ctx);
            if !is_kernel_addr(p) {
                return false;
            }
            let (task, target_cpu) = (read_task(ctx, k, p), task_cpu(ctx, k, p));
            match kind {
                ProbeKind::SchedWakeup { .. } => Event::SchedWakeup { task, target_cpu },
                ProbeKind::SchedWakeupNew { .. } => Event::SchedWakeupNew { task, target_cpu },
                _ => Event::SchedWaking { task, target_cpu },
            }
        }
        ProbeKind::ProcessFork => Event::ProcessFork {
            parent: current_task(ctx, k),
            child: read_task(ctx, k, ctx.read_reg(Reg::Rdi)),
        },
        ProbeKind::ProcessExec => {
            let bprm = ctx.read_reg(Reg::Rdi);
            let fname = read_u64(ctx, bprm.wrapping_add(k.off.binprm_filename)).unwrap_or(0);
            let cur = current_task(ctx, k);
            st.invalidate_current();
            Event::ProcessExec {
                filename: GuestStr::read(ctx, fname),
                tid: cur.tid,
                old_tid: cur.tid,
            }
        }
        ProbeKind::ProcessExit => Event::ProcessExit {
            task: current_task(ctx, k),
        },
        ProbeKind::IrqEntry => {
            let desc = ctx.read_reg(Reg::Rdi);
            let irq = read_u32(ctx, desc.wrapping_add(k.off.irq_desc_irq))
                .map(|v| v as i32)
                .unwrap_or(-1);
            let mut name = [0u8; IRQ_NAME_LEN];
            let action = read_u64(ctx, desc.wrapping_add(k.off.irq_desc_action)).unwrap_or(0);
            if is_kernel_addr(action) {
                if let Ok(p) = read_u64(ctx, action.wrapping_add(k.off.irqaction_name)) {
                    let _ = read_cstr(ctx, p, &mut name);
                }
            }
            if st.irq_depth < IRQ_DEPTH {
                st.irq_stack[st.irq_depth] = irq;
            }
            st.irq_depth = st.irq_depth.saturating_add(1);
            Event::IrqEntry { irq, name }
        }
        ProbeKind::IrqExit => {
            if st.irq_depth == 0 {
                return false;
            }
            st.irq_depth -= 1;
            let irq = if st.irq_depth < IRQ_DEPTH {
                st.irq_stack[st.irq_depth]
            } else {
                -1
            };
            Event::IrqExit {
                irq,
                ret: ctx.read_reg(Reg::Rax) as i32,
            }
        }
        ProbeKind::TimerEntry => Event::TimerEntry {
            vector: LOCAL_TIMER_VECTOR,
        },
        ProbeKind::TimerExit => Event::TimerExit {
            vector: LOCAL_TIMER_VECTOR,
        },
        ProbeKind::SoftirqEntry { arg }
        | ProbeKind::SoftirqExit { arg }
        | ProbeKind::SoftirqRaise { arg } => {
            let vec = arg.value(ctx) as u32;
            // NR_SOFTIRQS is 10: anything else is not a softirq number
            if vec >= 32 {
                return false;
            }
            match kind {
                ProbeKind::SoftirqEntry { .. } => Event::SoftirqEntry { vec },
                ProbeKind::SoftirqExit { .. } => Event::SoftirqExit { vec },
                _ => Event::SoftirqRaise { vec },
            }
        }
        ProbeKind::Sample => Event::Sample {
            ip: ctx.read_reg(Reg::Rip),
        },
    };
    out.current = st.current(ctx, k);
    if let Event::ProcessExec { filename, .. } = &event {
        // The probe sits at begin_new_exec's entry, before the kernel
        // renames the task; its sched_process_exec tracepoint fires after,
        // so lttng-modules' `procname` there is already the new name: the
        // file name's last component, as __set_task_comm keeps it.
        if filename.ok {
            out.current.comm = crate::task::comm_after_exec(filename.as_str().as_bytes());
        }
    }
    out.event = event;
    true
}
