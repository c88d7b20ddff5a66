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
//! timestamp) and retries the read at the next event of the same vCPU;
//! events that come in between (interrupts, wakeups) are held behind it so
//! the vCPU's stream stays in order. It lets everything go, in order,
//! as soon as the string is read, or at the latest at the syscall's exit,
//! at a context switch, at the next syscall entry or when its queue is
//! full; a string still unreadable then stays marked (`GuestStr::ok ==
//! false`). At a context switch the page tables may already be the next
//! task's; the read then walks the entry's page tables (its CR3) through
//! the kernel's direct map of physical memory.
//!
//! Nothing here allocates after [`Deferral::new`].

use crate::ctx::{read_u64, MemError, Reg, VcpuContext};
use crate::decode::{Event, GuestStr, Record};
use crate::kernel::Kernel;
use crate::paging::{kernel_cr3, translate, CR4_LA57};
use crate::task::Task;

/// Most records held behind one deferred entry (the entry included).
pub const DEFER_MAX: usize = 32;
/// Most engine-side events (e.g. user probes) held behind one entry.
pub const EXTERNAL_MAX: usize = 4;

/// What a flush lets go, in order: a record, or the engine's own event
/// number `n` (see [`Deferral::hold_external`]).
#[derive(Debug, Clone, Copy)]
pub enum Held<'a> {
    Rec(&'a Record),
    External(usize),
}

/// Per-vCPU holding area (owned by the vCPU's thread).
pub struct Deferral {
    queue: [Record; DEFER_MAX],
    /// 0: `queue[i]` is a record; n + 1: the engine's held event n.
    ext: [u8; DEFER_MAX],
    len: usize,
    n_ext: usize,
    /// Kernel page-table root (CR3 without flags/PCID/PTI bit) at entry.
    cr3: u64,
    /// Entries deferred, and how many of them were read on a retry.
    pub deferred: u64,
    pub recovered: u64,
}

impl std::fmt::Debug for Deferral {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deferral")
            .field("len", &self.len)
            .field("deferred", &self.deferred)
            .field("recovered", &self.recovered)
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
    /// An empty holding area (boxed: it is a few KiB).
    pub fn new() -> Box<Self> {
        Box::new(Self {
            queue: [EMPTY; DEFER_MAX],
            ext: [0; DEFER_MAX],
            len: 0,
            n_ext: 0,
            cr3: 0,
            deferred: 0,
            recovered: 0,
        })
    }

    /// Whether records are being held.
    pub fn is_holding(&self) -> bool {
        self.len > 0
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
            let read = self.retry(ctx, k);
            let last_chance = matches!(
                rec.event,
                Event::SyscallEntry { .. }
                    | Event::SyscallExit { .. }
                    | Event::SchedSwitch { .. }
                    | Event::ProcessExit { .. }
                    | Event::Statedump { .. }
            );
            if !read && !last_chance && self.len < DEFER_MAX {
                self.queue[self.len] = *rec;
                self.ext[self.len] = 0;
                self.len += 1;
                return;
            }
            self.flush(&mut out);
        }
        if needs_retry(rec) {
            self.queue[0] = *rec;
            self.ext[0] = 0;
            self.len = 1;
            self.cr3 = kernel_cr3(ctx.read_reg(Reg::Cr3));
            self.deferred += 1;
            return;
        }
        out(Held::Rec(rec));
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
        if !self.retry(ctx, k) && self.len < DEFER_MAX && self.n_ext < EXTERNAL_MAX {
            let n = self.n_ext;
            self.ext[self.len] = n as u8 + 1;
            self.n_ext += 1;
            self.len += 1;
            return Some(n);
        }
        self.flush(&mut out);
        None
    }

    /// Lets everything held go, in order (an entry whose string is still
    /// unreadable stays marked).
    pub fn flush(&mut self, mut out: impl FnMut(Held<'_>)) {
        for (r, &x) in self.queue[..self.len].iter().zip(&self.ext) {
            match x {
                0 => out(Held::Rec(r)),
                n => out(Held::External(usize::from(n) - 1)),
            }
        }
        self.len = 0;
        self.n_ext = 0;
    }

    /// Reads the held entry's string again; true when it was read.
    fn retry<C: VcpuContext + ?Sized>(&mut self, ctx: &C, k: &Kernel) -> bool {
        let Event::SyscallEntry {
            args,
            str_arg: Some(i),
            string,
            ..
        } = &mut self.queue[0].event
        else {
            return true;
        };
        if string.ok {
            return true;
        }
        let va = args[usize::from(*i) % 6];
        let fresh = if kernel_cr3(ctx.read_reg(Reg::Cr3)) == self.cr3 {
            GuestStr::read(ctx, va)
        } else {
            let walk = WalkCtx::new(ctx, k, self.cr3);
            match walk {
                Some(w) => GuestStr::read(&w, va),
                None => GuestStr::default(),
            }
        };
        if fresh.ok {
            *string = fresh;
            self.recovered += 1;
        }
        fresh.ok
    }
}

/// A syscall entry whose string argument (a non-NULL pointer) was unreadable.
pub fn needs_retry(rec: &Record) -> bool {
    matches!(
        rec.event,
        Event::SyscallEntry {
            args,
            str_arg: Some(i),
            string,
            ..
        } if !string.ok && args[usize::from(i) % 6] != 0
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

impl<'a, C: VcpuContext + ?Sized> WalkCtx<'a, C> {
    fn new(ctx: &'a C, k: &Kernel, cr3: u64) -> Option<Self> {
        if k.page_offset_base == 0 || cr3 == 0 {
            return None;
        }
        let direct_map = read_u64(ctx, k.page_offset_base).ok()?;
        if direct_map < 0xff00_0000_0000_0000 {
            return None;
        }
        Some(Self {
            ctx,
            cr3,
            direct_map,
            la57: ctx.read_reg(Reg::Cr4) & CR4_LA57 != 0,
        })
    }
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
mod tests {
    use super::*;
    use std::cell::{Cell, RefCell};

    const USER_VA: u64 = 0x4a_1234;
    const DIRECT: u64 = 0xffff_8880_0000_0000;
    const POB_VAR: u64 = 0xffff_ffff_8241_5740;
    /// The traced task's page tables (kernel half of its PGD pair).
    const CR3_A: u64 = 0x8000;
    const CR3_B: u64 = 0xa000;

    /// A guest whose physical memory holds task A's page tables; the
    /// string's page is mapped (in A's tables) once `fault_in` ran.
    struct Guest {
        phys: RefCell<Vec<u8>>,
        cr3: Cell<u64>,
    }

    impl Guest {
        fn new() -> Self {
            let g = Self {
                phys: RefCell::new(vec![0; 0x10000]),
                cr3: Cell::new(CR3_A),
            };
            // PML4 → PDPT → PD → PT, the string's page at 0x6000 (not yet present).
            let idx = |level: u32| (USER_VA >> (12 + 9 * (level - 1))) & 0x1ff;
            g.put(CR3_A + idx(4) * 8, 0x2000 | 3);
            g.put(0x2000 + idx(3) * 8, 0x3000 | 3);
            g.put(0x3000 + idx(2) * 8, 0x4000 | 3);
            let s = b"/tmp/lock-b\0";
            let off = (0x6000 + (USER_VA & 0xfff)) as usize;
            g.phys.borrow_mut()[off..off + s.len()].copy_from_slice(s);
            g
        }
        fn put(&self, pa: u64, v: u64) {
            let a = pa as usize;
            self.phys.borrow_mut()[a..a + 8].copy_from_slice(&v.to_le_bytes());
        }
        fn fault_in(&self) {
            self.put(0x4000 + ((USER_VA >> 12) & 0x1ff) * 8, 0x6000 | 7);
        }
    }

    impl VcpuContext for Guest {
        fn read_reg(&self, reg: Reg) -> u64 {
            match reg {
                Reg::Cr3 => self.cr3.get(),
                _ => 0,
            }
        }
        fn read_virt(&self, va: u64, buf: &mut [u8]) -> Result<(), MemError> {
            if va == POB_VAR {
                buf.copy_from_slice(&DIRECT.to_le_bytes()[..buf.len()]);
                return Ok(());
            }
            let pa = if va >= DIRECT {
                va - DIRECT
            } else if self.cr3.get() == CR3_A {
                let phys = |pa: u64| {
                    let p = self.phys.borrow();
                    let a = pa as usize;
                    Some(u64::from_le_bytes(p.get(a..a + 8)?.try_into().ok()?))
                };
                translate(&phys, CR3_A, va, false)
                    .map_err(|_| MemError::Unmapped(va))?
                    .pa
            } else {
                return Err(MemError::Unmapped(va));
            };
            let p = self.phys.borrow();
            let a = pa as usize;
            let src = p.get(a..a + buf.len()).ok_or(MemError::Unmapped(va))?;
            buf.copy_from_slice(src);
            Ok(())
        }
        fn read_phys(&self, _pa: u64, _buf: &mut [u8]) -> Result<(), MemError> {
            Err(MemError::Unsupported)
        }
        fn vcpu_index(&self) -> u32 {
            0
        }
    }

    fn kernel() -> Kernel {
        Kernel {
            page_offset_base: POB_VAR,
            ..Kernel::default()
        }
    }

    fn rec(ts: u64, event: Event) -> Record {
        Record {
            cpu: 0,
            ts,
            current: Task::UNKNOWN,
            event,
        }
    }

    fn openat(g: &Guest, ts: u64) -> Record {
        let mut args = [0u64; 6];
        args[0] = (-100i64) as u64;
        args[1] = USER_VA;
        rec(
            ts,
            Event::SyscallEntry {
                nr: 257,
                args,
                str_arg: Some(1),
                string: GuestStr::read(g, USER_VA),
            },
        )
    }

    fn filename(r: &Record) -> Option<String> {
        match &r.event {
            Event::SyscallEntry { string, .. } if string.ok => Some(string.as_str().to_string()),
            _ => None,
        }
    }

    #[test]
    fn held_entry_is_read_at_exit_and_keeps_order() {
        let (g, k) = (Guest::new(), kernel());
        let mut d = Deferral::new();
        let mut out: Vec<Record> = Vec::new();
        let entry = openat(&g, 10);
        assert!(needs_retry(&entry));
        d.pass(&g, &k, &entry, |h| match h {
            Held::Rec(r) => out.push(*r),
            Held::External(_) => unreachable!(),
        });
        assert!(out.is_empty() && d.is_holding());
        // an interrupt before the kernel touched the page: held behind it
        let irq = rec(
            20,
            Event::IrqEntry {
                irq: 4,
                name: [0; 32],
            },
        );
        d.pass(&g, &k, &irq, |h| {
            if let Held::Rec(r) = h {
                out.push(*r)
            }
        });
        assert!(out.is_empty());
        // a user-probe hit, also held
        let n = d.hold_external(&g, &k, |_| unreachable!());
        assert_eq!(n, Some(0));
        g.fault_in();
        let exit = rec(30, Event::SyscallExit { nr: 257, ret: 3 });
        let mut order = Vec::new();
        d.pass(&g, &k, &exit, |h| match h {
            Held::Rec(r) => {
                order.push(r.ts);
                out.push(*r)
            }
            Held::External(n) => order.push(100 + n as u64),
        });
        assert_eq!(order, [10, 20, 100, 30]);
        assert_eq!(filename(&out[0]).as_deref(), Some("/tmp/lock-b"));
        assert!(!d.is_holding());
        assert_eq!((d.deferred, d.recovered), (1, 1));
    }

    #[test]
    fn at_a_switch_the_entry_is_read_through_its_own_page_tables() {
        let (g, k) = (Guest::new(), kernel());
        let mut d = Deferral::new();
        let mut out: Vec<Record> = Vec::new();
        d.pass(&g, &k, &openat(&g, 10), |_| unreachable!());
        // the task blocks in the syscall after the kernel read the path;
        // at __switch_to the next task's page tables are loaded
        g.fault_in();
        g.cr3.set(CR3_B);
        let sw = rec(
            20,
            Event::SchedSwitch {
                prev: Task::UNKNOWN,
                next: Task::UNKNOWN,
            },
        );
        d.pass(&g, &k, &sw, |h| {
            if let Held::Rec(r) = h {
                out.push(*r)
            }
        });
        assert_eq!(out.len(), 2);
        assert_eq!(filename(&out[0]).as_deref(), Some("/tmp/lock-b"));
        assert_eq!(out[1].ts, 20);
    }

    #[test]
    fn a_string_never_mapped_stays_marked_and_nothing_is_lost() {
        let (g, k) = (Guest::new(), kernel());
        let mut d = Deferral::new();
        let mut out: Vec<Record> = Vec::new();
        let mut push = |h: Held<'_>| {
            if let Held::Rec(r) = h {
                out.push(*r)
            }
        };
        d.pass(&g, &k, &openat(&g, 1), &mut push);
        for ts in 2..(DEFER_MAX as u64 + 5) {
            d.pass(
                &g,
                &k,
                &rec(ts, Event::TimerEntry { vector: 0xec }),
                &mut push,
            );
        }
        d.flush(&mut push);
        let ts: Vec<u64> = out.iter().map(|r| r.ts).collect();
        assert_eq!(ts, (1..(DEFER_MAX as u64 + 5)).collect::<Vec<_>>());
        assert_eq!(filename(&out[0]), None);
        assert!(needs_retry(&out[0]), "still marked unreadable");
    }
}
