//! Tasks: the current task of a vCPU, task fields, and the task list.

use crate::ctx::{is_kernel_addr, read_u32, read_u64, Reg, VcpuContext};
use crate::kernel::Kernel;

/// Errors reading tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TaskError {
    #[error("per-CPU base {0:#x} is not a kernel address")]
    BadPercpu(u64),
    #[error("task pointer {0:#x} is not a kernel address")]
    BadTask(u64),
    #[error("task at {0:#x} unreadable")]
    Unreadable(u64),
}

/// Most tasks a statedump walks.
pub const MAX_TASKS: usize = 1 << 16;

/// What the trace says about a task. Fields that could not be read are
/// marked: `pid == -1`, `comm == "?"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Task {
    pub addr: u64,
    /// Thread id (the kernel's `pid`).
    pub tid: i32,
    /// Process id (the kernel's `tgid`).
    pub pid: i32,
    pub prio: i32,
    pub state: i64,
    pub comm: [u8; 16],
}

/// The comm the kernel gives a task that execs `path`: its last component,
/// cut to 15 bytes (`__set_task_comm(kbasename(bprm->filename))`).
pub fn comm_after_exec(path: &[u8]) -> [u8; 16] {
    let base = path
        .iter()
        .rposition(|&c| c == b'/')
        .map_or(path, |i| &path[i + 1..]);
    let mut comm = [0u8; 16];
    let len = base.len().min(15);
    comm[..len].copy_from_slice(&base[..len]);
    comm
}

impl Default for Task {
    fn default() -> Self {
        Self::UNKNOWN
    }
}

impl Task {
    /// A task whose fields could not be read.
    pub const UNKNOWN: Task = Task {
        addr: 0,
        tid: -1,
        pid: -1,
        prio: 0,
        state: 0,
        comm: *b"?\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0",
    };

    /// `comm` as text up to its NUL.
    pub fn comm_str(&self) -> &str {
        let n = self.comm.iter().position(|&c| c == 0).unwrap_or(16);
        std::str::from_utf8(&self.comm[..n]).unwrap_or("?")
    }
}

/// Address of the task running on this vCPU (kernel mode: GS base is the
/// per-CPU area; if it is not a kernel address, KERNEL_GS_BASE is).
pub fn current_task_addr<C: VcpuContext + ?Sized>(ctx: &C, k: &Kernel) -> Result<u64, TaskError> {
    let mut base = ctx.read_reg(Reg::GsBase);
    if !is_kernel_addr(base) {
        base = ctx.read_reg(Reg::KernelGsBase);
    }
    if !is_kernel_addr(base) {
        return Err(TaskError::BadPercpu(base));
    }
    let p = read_u64(ctx, base.wrapping_add(k.off.percpu_current_task))
        .map_err(|_| TaskError::Unreadable(base))?;
    if !is_kernel_addr(p) {
        return Err(TaskError::BadTask(p));
    }
    Ok(p)
}

/// Address of the current task's user-mode `pt_regs`, at the top of its
/// kernel stack (`task_pt_regs`: `task->stack + THREAD_SIZE - sizeof(pt_regs)`).
pub fn current_pt_regs<C: VcpuContext + ?Sized>(ctx: &C, k: &Kernel) -> Result<u64, TaskError> {
    if k.off.thread_size == 0 {
        return Err(TaskError::Unreadable(0));
    }
    let task = current_task_addr(ctx, k)?;
    let stack = read_u64(ctx, task.wrapping_add(k.off.task_stack))
        .map_err(|_| TaskError::Unreadable(task))?;
    if !is_kernel_addr(stack) {
        return Err(TaskError::BadTask(stack));
    }
    Ok(stack
        .wrapping_add(k.off.thread_size)
        .wrapping_sub(crate::pt_regs::SIZE))
}

/// Reads a task's fields. A garbage pointer gives `Task::UNKNOWN` with
/// `addr` set, never a panic.
pub fn read_task<C: VcpuContext + ?Sized>(ctx: &C, k: &Kernel, addr: u64) -> Task {
    let mut t = Task {
        addr,
        ..Task::UNKNOWN
    };
    if !is_kernel_addr(addr) {
        return t;
    }
    let o = &k.off;
    if o.task_tgid == o.task_pid + 4 {
        // adjacent (as in every kernel so far): one read
        if let Ok(v) = read_u64(ctx, addr.wrapping_add(o.task_pid)) {
            t.tid = v as u32 as i32;
            t.pid = (v >> 32) as u32 as i32;
        }
    } else {
        if let Ok(v) = read_u32(ctx, addr.wrapping_add(o.task_pid)) {
            t.tid = v as i32;
        }
        if let Ok(v) = read_u32(ctx, addr.wrapping_add(o.task_tgid)) {
            t.pid = v as i32;
        }
    }
    if let Ok(v) = read_u32(ctx, addr.wrapping_add(o.task_prio)) {
        t.prio = v as i32;
    }
    let st = addr.wrapping_add(o.task_state);
    t.state = if o.task_state_size == 8 {
        read_u64(ctx, st).map(|v| v as i64).unwrap_or(0)
    } else {
        read_u32(ctx, st).map(i64::from).unwrap_or(0)
    };
    let mut comm = [0u8; 16];
    if ctx
        .read_virt(addr.wrapping_add(o.task_comm), &mut comm)
        .is_ok()
    {
        comm[15] = 0;
        t.comm = comm;
    }
    t
}

/// The current task of this vCPU, or `Task::UNKNOWN`.
pub fn current_task<C: VcpuContext + ?Sized>(ctx: &C, k: &Kernel) -> Task {
    match current_task_addr(ctx, k) {
        Ok(a) => read_task(ctx, k, a),
        Err(_) => Task::UNKNOWN,
    }
}

/// Walks the task list from `init_task` and calls `f(task, parent_pid)` for
/// each task (init_task included). Stops at the list head, at an unreadable
/// link, or after `MAX_TASKS`: a corrupted or cyclic list cannot hang it.
/// Returns the number of tasks visited.
pub fn for_each_task<C: VcpuContext + ?Sized>(
    ctx: &C,
    k: &Kernel,
    mut f: impl FnMut(&Task, i32),
) -> usize {
    let head = k.init_task;
    if !is_kernel_addr(head) {
        return 0;
    }
    let tasks_off = k.off.task_tasks;
    let mut cur = head;
    let mut n = 0usize;
    // Brent's cycle detection on the node addresses.
    let mut power = 1usize;
    let mut lam = 0usize;
    let mut tortoise = head;
    while n < MAX_TASKS {
        let t = read_task(ctx, k, cur);
        let ppid = read_u64(ctx, cur.wrapping_add(k.off.task_real_parent))
            .ok()
            .filter(|&p| is_kernel_addr(p))
            .and_then(|p| read_u32(ctx, p.wrapping_add(k.off.task_tgid)).ok())
            .map(|v| v as i32)
            .unwrap_or(0);
        f(&t, ppid);
        n += 1;
        let Ok(next) = read_u64(ctx, cur.wrapping_add(tasks_off)) else {
            break;
        };
        if !is_kernel_addr(next) {
            break;
        }
        let next_task = next.wrapping_sub(tasks_off);
        if next_task == head {
            break;
        }
        if next_task == tortoise {
            break; // cycle that does not pass through the head
        }
        lam += 1;
        if lam == power {
            tortoise = next_task;
            power *= 2;
            lam = 0;
        }
        cur = next_task;
    }
    n
}

#[cfg(test)]
mod tests {
    use super::comm_after_exec;

    #[test]
    fn exec_names_the_task_after_the_file() {
        assert_eq!(&comm_after_exec(b"/bin/syscalls")[..9], b"syscalls\0");
        assert_eq!(&comm_after_exec(b"true")[..5], b"true\0");
        // 15 bytes at most, NUL-terminated
        let c = comm_after_exec(b"/usr/lib/a-very-long-program-name");
        assert_eq!(&c[..15], b"a-very-long-pro");
        assert_eq!(c[15], 0);
    }
}
