//! Typed helpers for the lttng-modules kernel events: each computes its size
//! and writes its fields in declaration order, with no lookup by name.

use crate::packet::str_len;
use crate::producer::{ProduceError, Producer, TaskCtx, Value};

/// A task as a scheduler event shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TaskRef<'a> {
    pub comm: &'a [u8],
    pub tid: i32,
    /// Kernel priority minus 100 (`p->prio - MAX_RT_PRIO`), as lttng shows it.
    pub prio: i32,
}

/// Fields of `sched_process_fork`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fork<'a> {
    pub parent_comm: &'a [u8],
    pub parent_tid: i32,
    pub parent_pid: i32,
    pub parent_ns_inum: u32,
    pub child_comm: &'a [u8],
    pub child_tid: i32,
    /// The child's tid in each pid namespace level (usually `[child_tid]`).
    pub vtids: &'a [i32],
    pub child_pid: i32,
    pub child_ns_inum: u32,
}

/// Fields of `lttng_statedump_process_state`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcessState<'a> {
    pub tid: i32,
    pub pid: i32,
    pub ppid: i32,
    pub name: &'a [u8],
    /// 0 user thread, 1 kernel thread.
    pub kind: i32,
    /// 0 user mode, 1 syscall, 2 trap, 3 irq, 4 softirq, 5 unknown.
    pub mode: i32,
    /// 0 none, 1 unknown.
    pub submode: i32,
    /// 0 unnamed, 1 wait fork, 2 wait cpu, 3 exit, 4 zombie, 5 wait, 6 run, 7 dead.
    pub status: i32,
    pub cpu: u32,
    pub file_table_address: u64,
}

macro_rules! id {
    ($p:expr, $name:ident) => {
        $p.ids()
            .$name
            .ok_or(ProduceError::NotDeclared(stringify!($name)))?
    };
}

/// Largest number of syscall arguments handled.
pub const MAX_SYSCALL_ARGS: usize = 6;

impl Producer {
    /// `sched_switch`. `prev_state` as lttng-modules reports it (0 runnable,
    /// 1 interruptible, 2 uninterruptible, ..., preempted = TASK_REPORT_MAX).
    pub fn sched_switch(
        &mut self,
        ts: u64,
        ctx: &TaskCtx,
        prev: TaskRef<'_>,
        prev_state: i64,
        next: TaskRef<'_>,
    ) -> Result<(), ProduceError> {
        let id = id!(self, sched_switch);
        if let Some(mut w) = self.reserve(id, ts, ctx, 16 + 4 + 4 + 8 + 16 + 4 + 4)? {
            w.text(prev.comm, 16);
            w.i32(prev.tid);
            w.i32(prev.prio);
            w.i64(prev_state);
            w.text(next.comm, 16);
            w.i32(next.tid);
            w.i32(next.prio);
        }
        Ok(())
    }

    fn wake(
        &mut self,
        id: u32,
        ts: u64,
        ctx: &TaskCtx,
        t: TaskRef<'_>,
        target_cpu: i32,
    ) -> Result<(), ProduceError> {
        if let Some(mut w) = self.reserve(id, ts, ctx, 16 + 12)? {
            w.text(t.comm, 16);
            w.i32(t.tid);
            w.i32(t.prio);
            w.i32(target_cpu);
        }
        Ok(())
    }

    /// `sched_wakeup`.
    pub fn sched_wakeup(
        &mut self,
        ts: u64,
        ctx: &TaskCtx,
        t: TaskRef<'_>,
        target_cpu: i32,
    ) -> Result<(), ProduceError> {
        let id = id!(self, sched_wakeup);
        self.wake(id, ts, ctx, t, target_cpu)
    }

    /// `sched_waking`.
    pub fn sched_waking(
        &mut self,
        ts: u64,
        ctx: &TaskCtx,
        t: TaskRef<'_>,
        target_cpu: i32,
    ) -> Result<(), ProduceError> {
        let id = id!(self, sched_waking);
        self.wake(id, ts, ctx, t, target_cpu)
    }

    /// `sched_wakeup_new`.
    pub fn sched_wakeup_new(
        &mut self,
        ts: u64,
        ctx: &TaskCtx,
        t: TaskRef<'_>,
        target_cpu: i32,
    ) -> Result<(), ProduceError> {
        let id = id!(self, sched_wakeup_new);
        self.wake(id, ts, ctx, t, target_cpu)
    }

    fn proc_event(
        &mut self,
        id: u32,
        ts: u64,
        ctx: &TaskCtx,
        t: TaskRef<'_>,
    ) -> Result<(), ProduceError> {
        if let Some(mut w) = self.reserve(id, ts, ctx, 16 + 8)? {
            w.text(t.comm, 16);
            w.i32(t.tid);
            w.i32(t.prio);
        }
        Ok(())
    }

    /// `sched_process_exit`.
    pub fn sched_process_exit(
        &mut self,
        ts: u64,
        ctx: &TaskCtx,
        t: TaskRef<'_>,
    ) -> Result<(), ProduceError> {
        let id = id!(self, sched_process_exit);
        self.proc_event(id, ts, ctx, t)
    }

    /// `sched_process_free`.
    pub fn sched_process_free(
        &mut self,
        ts: u64,
        ctx: &TaskCtx,
        t: TaskRef<'_>,
    ) -> Result<(), ProduceError> {
        let id = id!(self, sched_process_free);
        self.proc_event(id, ts, ctx, t)
    }

    /// `sched_process_fork`.
    pub fn sched_process_fork(
        &mut self,
        ts: u64,
        ctx: &TaskCtx,
        f: &Fork<'_>,
    ) -> Result<(), ProduceError> {
        let id = id!(self, sched_process_fork);
        let nv = f.vtids.len().min(32);
        if let Some(mut w) = self.reserve(id, ts, ctx, 16 + 12 + 16 + 4 + 1 + 4 * nv + 8)? {
            w.text(f.parent_comm, 16);
            w.i32(f.parent_tid);
            w.i32(f.parent_pid);
            w.u32(f.parent_ns_inum);
            w.text(f.child_comm, 16);
            w.i32(f.child_tid);
            w.u8(nv as u8);
            for v in &f.vtids[..nv] {
                w.i32(*v);
            }
            w.i32(f.child_pid);
            w.u32(f.child_ns_inum);
        }
        Ok(())
    }

    /// `sched_process_exec`.
    pub fn sched_process_exec(
        &mut self,
        ts: u64,
        ctx: &TaskCtx,
        filename: &[u8],
        tid: i32,
        old_tid: i32,
    ) -> Result<(), ProduceError> {
        let id = id!(self, sched_process_exec);
        if let Some(mut w) = self.reserve(id, ts, ctx, str_len(filename) + 8)? {
            w.str(filename);
            w.i32(tid);
            w.i32(old_tid);
        }
        Ok(())
    }

    /// `irq_handler_entry`.
    pub fn irq_handler_entry(
        &mut self,
        ts: u64,
        ctx: &TaskCtx,
        irq: i32,
        name: &[u8],
    ) -> Result<(), ProduceError> {
        let id = id!(self, irq_handler_entry);
        if let Some(mut w) = self.reserve(id, ts, ctx, 4 + str_len(name))? {
            w.i32(irq);
            w.str(name);
        }
        Ok(())
    }

    /// `irq_handler_exit`.
    pub fn irq_handler_exit(
        &mut self,
        ts: u64,
        ctx: &TaskCtx,
        irq: i32,
        ret: i32,
    ) -> Result<(), ProduceError> {
        let id = id!(self, irq_handler_exit);
        if let Some(mut w) = self.reserve(id, ts, ctx, 8)? {
            w.i32(irq);
            w.i32(ret);
        }
        Ok(())
    }

    fn softirq(&mut self, id: u32, ts: u64, ctx: &TaskCtx, vec: u32) -> Result<(), ProduceError> {
        if let Some(mut w) = self.reserve(id, ts, ctx, 4)? {
            w.u32(vec);
        }
        Ok(())
    }

    /// `irq_softirq_entry`.
    pub fn irq_softirq_entry(
        &mut self,
        ts: u64,
        ctx: &TaskCtx,
        vec: u32,
    ) -> Result<(), ProduceError> {
        let id = id!(self, irq_softirq_entry);
        self.softirq(id, ts, ctx, vec)
    }

    /// `irq_softirq_exit`.
    pub fn irq_softirq_exit(
        &mut self,
        ts: u64,
        ctx: &TaskCtx,
        vec: u32,
    ) -> Result<(), ProduceError> {
        let id = id!(self, irq_softirq_exit);
        self.softirq(id, ts, ctx, vec)
    }

    /// `irq_softirq_raise`.
    pub fn irq_softirq_raise(
        &mut self,
        ts: u64,
        ctx: &TaskCtx,
        vec: u32,
    ) -> Result<(), ProduceError> {
        let id = id!(self, irq_softirq_raise);
        self.softirq(id, ts, ctx, vec)
    }

    /// `lttng_statedump_start`.
    pub fn lttng_statedump_start(&mut self, ts: u64, ctx: &TaskCtx) -> Result<(), ProduceError> {
        let id = id!(self, lttng_statedump_start);
        self.reserve(id, ts, ctx, 0).map(|_| ())
    }

    /// `lttng_statedump_end`.
    pub fn lttng_statedump_end(&mut self, ts: u64, ctx: &TaskCtx) -> Result<(), ProduceError> {
        let id = id!(self, lttng_statedump_end);
        self.reserve(id, ts, ctx, 0).map(|_| ())
    }

    /// `lttng_statedump_process_state`.
    pub fn lttng_statedump_process_state(
        &mut self,
        ts: u64,
        ctx: &TaskCtx,
        s: &ProcessState<'_>,
    ) -> Result<(), ProduceError> {
        let id = id!(self, lttng_statedump_process_state);
        if let Some(mut w) = self.reserve(id, ts, ctx, 12 + 16 + 20 + 8)? {
            w.i32(s.tid);
            w.i32(s.pid);
            w.i32(s.ppid);
            w.text(s.name, 16);
            w.i32(s.kind);
            w.i32(s.mode);
            w.i32(s.submode);
            w.i32(s.status);
            w.u32(s.cpu);
            w.u64(s.file_table_address);
        }
        Ok(())
    }

    /// `syscall_entry_<name>` for syscall `nr`. `args` are all the syscall's
    /// arguments in order (strings as `Value::Str`, others as integers); the
    /// input ones are recorded. An undeclared `nr` gives
    /// `syscall_entry_unknown` with the integer arguments.
    pub fn syscall_entry(
        &mut self,
        ts: u64,
        ctx: &TaskCtx,
        nr: u32,
        args: &[Value<'_>],
    ) -> Result<(), ProduceError> {
        self.syscall(ts, ctx, nr, None, args, false)
    }

    /// `syscall_exit_<name>`: `ret`, then the output arguments of `args`
    /// (all arguments in order, as for [`Producer::syscall_entry`]).
    pub fn syscall_exit(
        &mut self,
        ts: u64,
        ctx: &TaskCtx,
        nr: u32,
        ret: i64,
        args: &[Value<'_>],
    ) -> Result<(), ProduceError> {
        self.syscall(ts, ctx, nr, Some(ret), args, false)
    }

    /// `compat_syscall_entry_<name>`: as [`Producer::syscall_entry`], for
    /// syscall `nr` of the 32-bit (compat) table.
    pub fn compat_syscall_entry(
        &mut self,
        ts: u64,
        ctx: &TaskCtx,
        nr: u32,
        args: &[Value<'_>],
    ) -> Result<(), ProduceError> {
        self.syscall(ts, ctx, nr, None, args, true)
    }

    /// `compat_syscall_exit_<name>`.
    pub fn compat_syscall_exit(
        &mut self,
        ts: u64,
        ctx: &TaskCtx,
        nr: u32,
        ret: i64,
        args: &[Value<'_>],
    ) -> Result<(), ProduceError> {
        self.syscall(ts, ctx, nr, Some(ret), args, true)
    }

    fn syscall(
        &mut self,
        ts: u64,
        ctx: &TaskCtx,
        nr: u32,
        ret: Option<i64>,
        args: &[Value<'_>],
        compat: bool,
    ) -> Result<(), ProduceError> {
        let catalog = self.catalog();
        let mut vals = [Value::U(0); MAX_SYSCALL_ARGS + 1];
        let mut n = 0;
        let found = if compat {
            catalog.compat_syscall(nr)
        } else {
            catalog.syscall(nr)
        };
        let Some(ids) = found else {
            let mut raw = [0u64; MAX_SYSCALL_ARGS];
            for (r, a) in raw.iter_mut().zip(args) {
                *r = match a {
                    Value::U(x) => *x,
                    Value::I(x) => *x as u64,
                    _ => 0,
                };
            }
            return match ret {
                None if compat => {
                    let id = id!(self, compat_syscall_entry_unknown);
                    self.emit(id, ts, ctx, &[Value::I(nr as i64), Value::Ints(&raw)])
                }
                Some(r) if compat => {
                    let id = id!(self, compat_syscall_exit_unknown);
                    self.emit(
                        id,
                        ts,
                        ctx,
                        &[Value::I(nr as i64), Value::I(r), Value::Ints(&raw)],
                    )
                }
                None => {
                    let id = id!(self, syscall_entry_unknown);
                    self.emit(id, ts, ctx, &[Value::I(nr as i64), Value::Ints(&raw)])
                }
                Some(r) => {
                    let id = id!(self, syscall_exit_unknown);
                    self.emit(
                        id,
                        ts,
                        ctx,
                        &[Value::I(nr as i64), Value::I(r), Value::Ints(&raw)],
                    )
                }
            };
        };
        let (id, picks) = match ret {
            None => (ids.entry, &ids.entry_args),
            Some(r) => {
                vals[0] = Value::I(r);
                n = 1;
                (ids.exit, &ids.exit_args)
            }
        };
        for &i in picks.iter().take(MAX_SYSCALL_ARGS) {
            // A missing argument is recorded as 0 / empty string.
            let missing = if ids.string_mask & (1 << i) != 0 {
                Value::Str(b"")
            } else {
                Value::U(0)
            };
            vals[n] = args.get(i).copied().unwrap_or(missing);
            n += 1;
        }
        self.emit(id, ts, ctx, &vals[..n])
    }
}
