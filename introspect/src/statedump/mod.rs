//! The rest of lttng-modules' statedump, read from the guest's own
//! structures: each process's open files and memory maps, the interrupt
//! actions, the CPUs, block devices and network interfaces.
//!
//! Every walk is bounded (counts, depth, string lengths) and cycle-safe:
//! the guest is untrusted, and a corrupted structure ends a walk early
//! rather than hanging or panicking the tracer.

pub mod devices;
pub mod files;
pub mod layout;
pub mod trees;

#[cfg(test)]
mod tests;

pub use layout::StatedumpLayout;

use crate::ctx::{is_kernel_addr, read_u64, VcpuContext};

/// Errors of the statedump walks (a walk that meets one stops early).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WalkError {
    #[error("layout of {0} unknown (not in the kernel's BTF)")]
    NoLayout(&'static str),
    #[error("guest pointer {0:#x} is not a kernel address")]
    BadPointer(u64),
    #[error("guest memory at {0:#x} unreadable")]
    Unreadable(u64),
    #[error("walk bound reached ({0})")]
    Bound(&'static str),
}

/// One statedump event besides the per-task process state, with
/// lttng-modules 2.13's fields (`lttng-statedump.h`). Strings borrow the
/// walker's buffers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Item<'a> {
    /// `lttng_statedump_file_descriptor`.
    FileDescriptor {
        files: u64,
        fd: i32,
        flags: u32,
        fmode: u32,
        filename: &'a [u8],
    },
    /// `lttng_statedump_vm_map` (`pgoff` in bytes: `vm_pgoff << PAGE_SHIFT`).
    VmMap {
        pid: i32,
        start: u64,
        end: u64,
        flags: u64,
        inode: u64,
        pgoff: u64,
    },
    /// `lttng_statedump_interrupt`: `name` is the irq chip's.
    Interrupt {
        irq: u32,
        name: &'a [u8],
        action: &'a [u8],
        tid: i32,
    },
    /// `lttng_statedump_cpu_topology` (x86).
    CpuTopology {
        cpu_id: u16,
        vendor: &'a [u8],
        family: u8,
        model: u8,
        model_name: &'a [u8],
        physical_id: u16,
        core_id: u16,
        cores: u16,
    },
    /// `lttng_statedump_block_device` (`dev` as the kernel's `dev_t`).
    BlockDevice { dev: u32, diskname: &'a [u8] },
    /// `lttng_statedump_network_interface` (`address_ipv4` as the number
    /// the network-order field shows: 127.0.0.1 is 0x7f000001).
    NetworkInterface { name: &'a [u8], address_ipv4: u32 },
}

/// Reads a kernel pointer at `va`: a value that is not a kernel address
/// (NULL included) is `None`.
pub(crate) fn kptr<C: VcpuContext + ?Sized>(ctx: &C, va: u64) -> Option<u64> {
    read_u64(ctx, va).ok().filter(|&p| is_kernel_addr(p))
}

/// A doubly linked `list_head` walk from `head` (the list's own head):
/// calls `f(node)` for each node (the `list_head` inside an element), at
/// most `max` times and each node once; stops at the head, an unreadable
/// or non-kernel link, or a node seen before (a cycle that misses the head).
pub(crate) fn for_each_list<C: VcpuContext + ?Sized>(
    ctx: &C,
    head: u64,
    max: usize,
    mut f: impl FnMut(u64),
) -> usize {
    let mut seen = std::collections::HashSet::new();
    let mut cur = kptr(ctx, head);
    while let Some(node) = cur {
        if node == head || seen.len() >= max || !seen.insert(node) {
            break;
        }
        f(node);
        cur = kptr(ctx, node);
    }
    seen.len()
}

use crate::kernel::Kernel;
use crate::task::Task;
use files::PathBuf;
use layout::{HAVE_BLOCK, HAVE_CPUS, HAVE_FILES, HAVE_IRQS, HAVE_NET, HAVE_THREADS, HAVE_VMAS};

/// Most threads listed per process.
pub const MAX_THREADS: usize = 1 << 14;

/// Calls `f(task)` for each thread of the process whose leader is at
/// `leader`, the leader left out, in the kernel's list order (the order of
/// `while_each_thread`). A kernel whose layout has no thread list gives none.
pub fn for_each_other_thread<C: VcpuContext + ?Sized>(
    ctx: &C,
    k: &Kernel,
    leader: u64,
    mut f: impl FnMut(u64),
) {
    let l = &k.sd;
    if !l.has(HAVE_THREADS) || !is_kernel_addr(leader) {
        return;
    }
    let Some(signal) = kptr(ctx, leader.wrapping_add(l.task_signal)) else {
        return;
    };
    let head = signal.wrapping_add(l.signal_thread_head);
    for_each_list(ctx, head, MAX_THREADS, |node| {
        let task = node.wrapping_sub(l.task_thread_node);
        if task != leader {
            f(task);
        }
    });
}

/// The files table of the task at `task` (its `file_table_address`; 0:
/// none or unknown).
pub fn task_files<C: VcpuContext + ?Sized>(ctx: &C, k: &Kernel, task: u64) -> u64 {
    if !k.sd.has(HAVE_FILES) || !is_kernel_addr(task) {
        return 0;
    }
    kptr(ctx, task.wrapping_add(k.sd.task_files)).unwrap_or(0)
}

/// What a statedump reuses from task to task.
#[derive(Default)]
pub struct Walker {
    path: PathBuf,
    /// The last files table dumped: threads sharing one are dumped once.
    last_files: u64,
}

impl Walker {
    /// The items of `task` (files table
    /// `files`): its descriptors unless the task before had the same
    /// table, as lttng-modules does, then, for a process's leader
    /// (`leader`), the process's memory maps.
    pub fn task<C: VcpuContext + ?Sized>(
        &mut self,
        ctx: &C,
        k: &Kernel,
        task: &Task,
        files: u64,
        leader: bool,
        mut f: impl FnMut(&Item<'_>),
    ) {
        if files != 0 && files != self.last_files {
            self.last_files = files;
            files::for_each_fd(ctx, &k.sd, files, &mut self.path, &mut f);
        }
        if leader && k.sd.has(HAVE_VMAS) {
            if let Some(mm) = kptr(ctx, task.addr.wrapping_add(k.off.task_mm)) {
                files::for_each_vma(ctx, &k.sd, task.pid, mm, &mut f);
            }
        }
    }

    /// The system-wide items, in lttng-modules 2.13's order: interrupts,
    /// network interfaces, block devices, CPU topology.
    pub fn system<C: VcpuContext + ?Sized>(
        &mut self,
        ctx: &C,
        k: &Kernel,
        mut f: impl FnMut(&Item<'_>),
    ) {
        let (l, s) = (&k.sd, k.slide);
        if l.has(HAVE_IRQS) {
            devices::interrupts(ctx, l, &k.off, s, &mut f);
        }
        if l.has(HAVE_NET) {
            devices::network(ctx, l, s, &mut f);
        }
        if l.has(HAVE_BLOCK) {
            devices::block_devices(ctx, l, s, &mut f);
        }
        if l.has(HAVE_CPUS) {
            devices::cpus(ctx, l, s, &mut f);
        }
    }
}
