//! Deferred syscall-entry strings.
//!
//! A user string argument read at syscall entry can be unreadable although
//! the call is valid: its page is not mapped *yet*. In a freshly forked
//! child, for example, the file-backed pages of the program's `.rodata` are
//! not in its page tables until first touched (fork does not copy the PTEs
//! of file-backed mappings), so `openat("/tmp/lock-a")` traps with the path
//! unmapped. The kernel itself faults the page in during the syscall
//! (`getname` → `strncpy_from_user`), so the string is readable a little
//! later, in the same address space.
//!
//! [`Deferral`] holds such an entry record back (with its original
//! timestamp) and retries the read at each later event of the same vCPU;
//! everything that comes after it on the vCPU is held behind it, so the
//! vCPU's stream stays in order, and goes out as soon as the entries before
//! it are resolved. The retry reads through the entry's own page tables
//! (its CR3), directly when they are loaded, otherwise through the
//! kernel's direct map of physical memory, so it also works at a context
//! switch (the next task's tables are loaded by then) and while the task
//! was preempted before the kernel touched the page (it holds across the
//! switch until the task, back on any vCPU, faulted it in). Before reading
//! through saved page tables it checks that they still belong to the task
//! (`task->mm->pgd`): after an exec or exit they may be reused.
//!
//! An entry is given up (its string stays marked, `GuestStr::ok == false`)
//! when its task's syscall ends (its exit or its next entry on this vCPU),
//! when the task exits or its address space changed, at a statedump, or
//! when the holding area is full.
//!
//! Nothing here allocates after [`Deferral::new`].

use crate::ctx::{read_u64, MemError, Reg, VcpuContext};
use crate::decode::{Event, GuestStr, Record};
use crate::kernel::Kernel;
use crate::paging::{kernel_cr3, translate, ADDR_MASK, CR4_LA57};
use crate::task::Task;

/// Most records held on one vCPU (about 64 KiB).
pub const DEFER_MAX: usize = 256;
/// Most engine-side events (e.g. user probes) held at once.
pub const EXTERNAL_MAX: usize = 8;

/// What a flush lets go, in order: a record, or the engine's own event
/// number `n` (see [`Deferral::hold_external`]).
#[derive(Debug, Clone, Copy)]
pub enum Held<'a> {
    Rec(&'a Record),
    External(usize),
}

/// Per-vCPU holding area (owned by the vCPU's thread): a ring of records.
pub struct Deferral {
    queue: [Record; DEFER_MAX],
    /// 0: `queue[i]` is a record; n + 1: the engine's held event n.
    ext: [u8; DEFER_MAX],
    /// Kernel page-table root at entry of an unresolved entry; 0: resolved
    /// (or not an entry).
    cr3: [u64; DEFER_MAX],
    head: usize,
    len: usize,
    /// Engine events held, by number (bit n).
    ext_used: u32,
    /// Entries deferred, read on a retry, and given up.
    pub deferred: u64,
    pub recovered: u64,
    pub given_up: u64,
}

impl std::fmt::Debug for Deferral {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deferral")
            .field("len", &self.len)
            .field("deferred", &self.deferred)
            .field("recovered", &self.recovered)
            .field("given_up", &self.given_up)
            .finish()
    }
}

const EMPTY: Record = Record {
    cpu: 0,
    ts: 0,
    current: Task::UNKNOWN,
    event: Event::IrqExit { irq: 0, ret: 0 },
};

impl Deferral {
    /// An empty holding area (boxed: it is about 64 KiB).
    pub fn new() -> Box<Self> {
        Box::new(Self {
            queue: [EMPTY; DEFER_MAX],
            ext: [0; DEFER_MAX],
            cr3: [0; DEFER_MAX],
            head: 0,
            len: 0,
            ext_used: 0,
            deferred: 0,
            recovered: 0,
            given_up: 0,
        })
    }

    /// Whether records are being held.
    pub fn is_holding(&self) -> bool {
        self.len > 0
    }

    fn slot(&self, i: usize) -> usize {
        (self.head + i) % DEFER_MAX
    }

    /// Passes `rec` (just decoded on this vCPU, whose context is `ctx`)
    /// towards `out`: holds it back or lets it go, with anything held
    /// before it, in order.
    pub fn pass<C: VcpuContext + ?Sized>(
        &mut self,
        ctx: &C,
        k: &Kernel,
        rec: &Record,
        mut out: impl FnMut(Held<'_>),
    ) {
        if self.len > 0 {
            self.retry_all(ctx, k);
            self.give_up_at(rec);
            self.release(&mut out);
        }
        let retry = needs_retry(rec);
        if self.len == 0 && !retry {
            out(Held::Rec(rec));
            return;
        }
        self.make_room(&mut out);
        let cr3 = if retry {
            self.deferred += 1;
            kernel_cr3(ctx.read_reg(Reg::Cr3))
        } else {
            0
        };
        self.push(*rec, 0, cr3);
    }

    /// For an event the engine makes itself (not a [`Record`]) on this
    /// vCPU: `Some(n)` when it must be held, stored by the engine as its
    /// held event `n` (< [`EXTERNAL_MAX`]) until a flush lets
    /// `Held::External(n)` go; `None` when it can be written now (after
    /// whatever was held, which `out` then received).
    pub fn hold_external<C: VcpuContext + ?Sized>(
        &mut self,
        ctx: &C,
        k: &Kernel,
        mut out: impl FnMut(Held<'_>),
    ) -> Option<usize> {
        if self.len == 0 {
            return None;
        }
        self.retry_all(ctx, k);
        self.release(&mut out);
        if self.len == 0 {
            return None;
        }
        let free = (0..EXTERNAL_MAX).find(|n| self.ext_used & (1 << n) == 0);
        let Some(n) = free else {
            // no room for its values: everything held goes now
            self.flush(&mut out);
            return None;
        };
        self.make_room(&mut out);
        if self.len == 0 {
            return None;
        }
        self.ext_used |= 1 << n;
        self.push(EMPTY, n as u8 + 1, 0);
        Some(n)
    }

    /// Lets everything held go, in order (an entry whose string is still
    /// unreadable stays marked).
    pub fn flush(&mut self, mut out: impl FnMut(Held<'_>)) {
        for i in 0..self.len {
            let s = self.slot(i);
            if self.cr3[s] != 0 {
                self.cr3[s] = 0;
                self.given_up += 1;
            }
        }
        self.release(&mut out);
    }

    fn push(&mut self, rec: Record, ext: u8, cr3: u64) {
        let s = self.slot(self.len);
        self.queue[s] = rec;
        self.ext[s] = ext;
        self.cr3[s] = cr3;
        self.len += 1;
    }

    /// Frees a slot: gives up the oldest unresolved entry when full.
    fn make_room(&mut self, out: &mut impl FnMut(Held<'_>)) {
        while self.len >= DEFER_MAX {
            let s = self.head;
            if self.cr3[s] != 0 {
                self.cr3[s] = 0;
                self.given_up += 1;
            }
            self.release(out);
        }
    }

    /// Lets the resolved prefix of the queue go.
    fn release(&mut self, out: &mut impl FnMut(Held<'_>)) {
        while self.len > 0 && self.cr3[self.head] == 0 {
            let s = self.head;
            match self.ext[s] {
                0 => out(Held::Rec(&self.queue[s])),
                n => {
                    let n = usize::from(n) - 1;
                    self.ext_used &= !(1 << n);
                    out(Held::External(n));
                }
            }
            self.head = (self.head + 1) % DEFER_MAX;
            self.len -= 1;
        }
        if self.len == 0 {
            self.head = 0;
        }
    }

    /// Gives up the unresolved entries whose syscall `rec` shows is over.
    fn give_up_at(&mut self, rec: &Record) {
        let who = rec.current.addr;
        for i in 0..self.len {
            let s = self.slot(i);
            if self.cr3[s] == 0 {
                continue;
            }
            let task = self.queue[s].current.addr;
            let over = match rec.event {
                Event::Statedump { .. } => true,
                Event::SyscallEntry { .. }
                | Event::SyscallExit { .. }
                | Event::CompatSyscallEntry { .. }
                | Event::CompatSyscallExit { .. }
                | Event::ProcessExit { .. } => who == task,
                _ => false,
            };
            if over {
                self.cr3[s] = 0;
                self.given_up += 1;
            }
        }
    }

    /// Reads the unresolved entries' strings again.
    fn retry_all<C: VcpuContext + ?Sized>(&mut self, ctx: &C, k: &Kernel) {
        let loaded = kernel_cr3(ctx.read_reg(Reg::Cr3));
        let mut walk: Option<Option<(u64, bool)>> = None;
        for i in 0..self.len {
            let s = self.slot(i);
            let cr3 = self.cr3[s];
            if cr3 == 0 {
                continue;
            }
            let rec = &mut self.queue[s];
            let task = rec.current.addr;
            let Some((args, Some(a), string)) = rec.event.syscall_string_mut() else {
                self.cr3[s] = 0;
                continue;
            };
            let va = args[usize::from(a) % 6];
            let (direct_map, la57) = walk
                .get_or_insert_with(|| direct_map(ctx, k))
                .unwrap_or_default();
            // the page tables must still be the task's (after an exec or
            // an exit they may be reused); unchecked, only while loaded
            let checked = match direct_map {
                0 => None,
                d => owner_pgd(ctx, k, task, d),
            };
            match checked {
                Some(Some(pgd)) if pgd == cr3 => {}
                Some(_) => {
                    self.cr3[s] = 0;
                    self.given_up += 1;
                    continue;
                }
                None if loaded == cr3 => {}
                None => continue,
            }
            let fresh = if loaded == cr3 {
                GuestStr::read(ctx, va)
            } else if direct_map != 0 {
                let w = WalkCtx {
                    ctx,
                    cr3,
                    direct_map,
                    la57,
                };
                GuestStr::read(&w, va)
            } else {
                continue;
            };
            if fresh.ok {
                *string = fresh;
                self.cr3[s] = 0;
                self.recovered += 1;
            }
        }
    }
}

/// The direct map's base and LA57, when known.
fn direct_map<C: VcpuContext + ?Sized>(ctx: &C, k: &Kernel) -> Option<(u64, bool)> {
    if k.page_offset_base == 0 {
        return None;
    }
    let base = read_u64(ctx, k.page_offset_base).ok()?;
    if base < 0xff00_0000_0000_0000 {
        return None;
    }
    Some((base, ctx.read_reg(Reg::Cr4) & CR4_LA57 != 0))
}

/// Physical address of the page tables of `task`'s address space
/// (`task->mm->pgd`): None when it cannot be checked (offsets unknown),
/// Some(None) when the task has none (any more) or it is unreadable.
fn owner_pgd<C: VcpuContext + ?Sized>(
    ctx: &C,
    k: &Kernel,
    task: u64,
    direct_map: u64,
) -> Option<Option<u64>> {
    if k.off.task_mm == 0 || k.off.mm_pgd == 0 || task == 0 {
        return None;
    }
    let pgd = || {
        let mm = read_u64(ctx, task.wrapping_add(k.off.task_mm)).ok()?;
        if mm < 0xff00_0000_0000_0000 {
            return None;
        }
        let pgd = read_u64(ctx, mm.wrapping_add(k.off.mm_pgd)).ok()?;
        Some(pgd.wrapping_sub(direct_map) & ADDR_MASK)
    };
    Some(pgd())
}

/// A syscall entry (native or compat) whose string argument (a non-NULL
/// pointer) was unreadable.
pub fn needs_retry(rec: &Record) -> bool {
    matches!(
        rec.event.syscall_string(),
        Some((args, Some(i), string)) if !string.ok && args[usize::from(i) % 6] != 0
    )
}

/// Virtual reads through another address space's page tables (`cr3`),
/// reading its physical pages through the kernel's direct map
/// (`page_offset_base`).
struct WalkCtx<'a, C: VcpuContext + ?Sized> {
    ctx: &'a C,
    cr3: u64,
    direct_map: u64,
    la57: bool,
}

impl<C: VcpuContext + ?Sized> VcpuContext for WalkCtx<'_, C> {
    fn read_reg(&self, reg: Reg) -> u64 {
        self.ctx.read_reg(reg)
    }

    fn read_virt(&self, va: u64, buf: &mut [u8]) -> Result<(), MemError> {
        let phys = |pa: u64| read_u64(self.ctx, self.direct_map.wrapping_add(pa)).ok();
        let mut done = 0usize;
        while done < buf.len() {
            let addr = va.wrapping_add(done as u64);
            let t = translate(&phys, self.cr3, addr, self.la57)
                .map_err(|_| MemError::Unmapped(addr))?;
            let in_page = (t.page_size - (addr & (t.page_size - 1))) as usize;
            let n = in_page.min(buf.len() - done);
            self.ctx
                .read_virt(self.direct_map.wrapping_add(t.pa), &mut buf[done..done + n])?;
            done += n;
        }
        Ok(())
    }

    fn read_phys(&self, pa: u64, buf: &mut [u8]) -> Result<(), MemError> {
        self.ctx.read_phys(pa, buf)
    }

    fn vcpu_index(&self) -> u32 {
        self.ctx.vcpu_index()
    }
}

#[cfg(test)]
mod tests;
