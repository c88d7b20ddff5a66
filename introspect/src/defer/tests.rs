use super::*;
use crate::plan::Offsets;
use std::cell::{Cell, RefCell};

const USER_VA: u64 = 0x4a_1234;
const DIRECT: u64 = 0xffff_8880_0000_0000;
const POB_VAR: u64 = 0xffff_ffff_8241_5740;
/// The traced task's page tables (kernel half of its PGD pair).
const CR3_A: u64 = 0x8000;
const CR3_B: u64 = 0xa000;
/// The traced task (in the direct map, physical 0x7000) and its mm.
const TASK: u64 = DIRECT + 0x7000;
const MM: u64 = DIRECT + 0x7800;
const OTHER: u64 = DIRECT + 0x7400;

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
        // task->mm (offset 0x10), mm->pgd (offset 0x8)
        g.put(0x7000 + 0x10, MM);
        g.put(0x7800 + 0x8, DIRECT + CR3_A);
        g
    }
    fn put(&self, pa: u64, v: u64) {
        let a = pa as usize;
        self.phys.borrow_mut()[a..a + 8].copy_from_slice(&v.to_le_bytes());
    }
    fn fault_in(&self) {
        self.put(0x4000 + ((USER_VA >> 12) & 0x1ff) * 8, 0x6000 | 7);
    }
    /// The task execs: a new mm, the old page tables go.
    fn exec(&self) {
        self.put(0x7800 + 0x8, DIRECT + CR3_B);
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
        off: Offsets {
            task_mm: 0x10,
            mm_pgd: 0x8,
            ..Offsets::default()
        },
        ..Kernel::default()
    }
}

fn task(addr: u64, state: i64) -> Task {
    Task {
        addr,
        state,
        ..Task::UNKNOWN
    }
}

fn rec_of(who: u64, ts: u64, event: Event) -> Record {
    Record {
        cpu: 0,
        ts,
        current: task(who, 0),
        event,
    }
}

fn rec(ts: u64, event: Event) -> Record {
    rec_of(TASK, ts, event)
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

fn switch(ts: u64, prev_state: i64) -> Record {
    rec(
        ts,
        Event::SchedSwitch {
            prev: task(TASK, prev_state),
            next: task(OTHER, 0),
        },
    )
}

fn filename(r: &Record) -> Option<String> {
    match r.event.syscall_string() {
        Some((_, _, string)) if string.ok => Some(string.as_str().to_string()),
        _ => None,
    }
}

/// Collects what a deferral lets go (external n as ts 1000 + n).
#[derive(Default)]
struct Out(Vec<Record>);
impl Out {
    fn take(&mut self) -> impl FnMut(Held<'_>) + '_ {
        |h| match h {
            Held::Rec(r) => self.0.push(*r),
            Held::External(n) => self.0.push(rec(1000 + n as u64, EMPTY.event)),
        }
    }
    fn ts(&self) -> Vec<u64> {
        self.0.iter().map(|r| r.ts).collect()
    }
}

#[test]
fn held_entry_is_read_at_exit_and_keeps_order() {
    let (g, k) = (Guest::new(), kernel());
    let mut d = Deferral::new();
    let mut out = Out::default();
    let entry = openat(&g, 10);
    assert!(needs_retry(&entry));
    d.pass(&g, &k, &entry, out.take());
    assert!(out.0.is_empty() && d.is_holding());
    // an interrupt before the kernel touched the page: held behind it
    let irq = rec(
        20,
        Event::IrqEntry {
            irq: 4,
            name: [0; 32],
        },
    );
    d.pass(&g, &k, &irq, out.take());
    // a user-probe hit, also held
    assert_eq!(d.hold_external(&g, &k, out.take()), Some(0));
    assert!(out.0.is_empty());
    g.fault_in();
    let exit = rec(
        30,
        Event::SyscallExit {
            nr: 257,
            ret: 3,
            args: [0; 6],
            fds: [0; 2],
        },
    );
    d.pass(&g, &k, &exit, out.take());
    assert_eq!(out.ts(), [10, 20, 1000, 30]);
    assert_eq!(filename(&out.0[0]).as_deref(), Some("/tmp/lock-b"));
    assert!(!d.is_holding());
    assert_eq!((d.deferred, d.recovered, d.given_up), (1, 1, 0));
}

/// A 32-bit process's open(2) is held and read again the same way.
#[test]
fn compat_entry_is_held_and_read_at_its_exit() {
    let (g, k) = (Guest::new(), kernel());
    let mut d = Deferral::new();
    let mut out = Out::default();
    let mut args = [0u64; 6];
    args[0] = USER_VA;
    let entry = rec(
        10,
        Event::CompatSyscallEntry {
            nr: 5,
            args,
            str_arg: Some(0),
            string: GuestStr::read(&g, USER_VA),
        },
    );
    assert!(needs_retry(&entry));
    d.pass(&g, &k, &entry, out.take());
    assert!(out.0.is_empty() && d.is_holding());
    g.fault_in();
    let exit = rec(
        20,
        Event::CompatSyscallExit {
            nr: 5,
            ret: 3,
            args: [0; 6],
            fds: [0; 2],
        },
    );
    d.pass(&g, &k, &exit, out.take());
    assert_eq!(out.ts(), [10, 20]);
    assert_eq!(filename(&out.0[0]).as_deref(), Some("/tmp/lock-b"));
    assert_eq!((d.deferred, d.recovered, d.given_up), (1, 1, 0));
}

#[test]
fn at_a_switch_the_entry_is_read_through_its_own_page_tables() {
    let (g, k) = (Guest::new(), kernel());
    let mut d = Deferral::new();
    let mut out = Out::default();
    d.pass(&g, &k, &openat(&g, 10), out.take());
    // the task blocks in the syscall after the kernel read the path;
    // at __switch_to the next task's page tables are loaded
    g.fault_in();
    g.cr3.set(CR3_B);
    d.pass(&g, &k, &switch(20, 1), out.take());
    assert_eq!(out.ts(), [10, 20]);
    assert_eq!(filename(&out.0[0]).as_deref(), Some("/tmp/lock-b"));
}

#[test]
fn preempted_before_the_fault_it_holds_across_the_switch() {
    let (g, k) = (Guest::new(), kernel());
    let mut d = Deferral::new();
    let mut out = Out::default();
    d.pass(&g, &k, &openat(&g, 10), out.take());
    // preempted (still runnable) before the kernel touched the page
    d.pass(&g, &k, &switch(20, 0), out.take());
    g.cr3.set(CR3_B);
    let exit = rec_of(
        OTHER,
        30,
        Event::SyscallExit {
            nr: 56,
            ret: 99,
            args: [0; 6],
            fds: [0; 2],
        },
    );
    d.pass(&g, &k, &exit, out.take());
    assert!(out.0.is_empty(), "another task's events wait behind it");
    // the task runs again (here or elsewhere) and the kernel faults the
    // page in: the next event of this vCPU lets everything go
    g.fault_in();
    let tick = rec_of(OTHER, 40, Event::TimerEntry { vector: 0xec });
    d.pass(&g, &k, &tick, out.take());
    assert_eq!(out.ts(), [10, 20, 30, 40]);
    assert_eq!(filename(&out.0[0]).as_deref(), Some("/tmp/lock-b"));
}

#[test]
fn page_tables_of_a_task_that_exec_d_are_not_read() {
    let (g, k) = (Guest::new(), kernel());
    let mut d = Deferral::new();
    let mut out = Out::default();
    d.pass(&g, &k, &openat(&g, 10), out.take());
    d.pass(&g, &k, &switch(20, 0), out.take());
    g.cr3.set(CR3_B);
    g.fault_in();
    g.exec();
    let tick = rec_of(OTHER, 30, Event::TimerEntry { vector: 0xec });
    d.pass(&g, &k, &tick, out.take());
    assert_eq!(out.ts(), [10, 20, 30]);
    assert_eq!(filename(&out.0[0]), None);
    assert_eq!((d.recovered, d.given_up), (0, 1));
}

#[test]
fn the_syscall_s_end_gives_up_and_a_full_area_lets_go() {
    let (g, k) = (Guest::new(), kernel());
    let mut d = Deferral::new();
    let mut out = Out::default();
    d.pass(&g, &k, &openat(&g, 1), out.take());
    d.pass(
        &g,
        &k,
        &rec(
            2,
            Event::SyscallExit {
                nr: 257,
                ret: -14,
                args: [0; 6],
                fds: [0; 2],
            },
        ),
        out.take(),
    );
    assert_eq!(out.ts(), [1, 2]);
    assert!(needs_retry(&out.0[0]), "still marked unreadable");

    let mut out = Out::default();
    d.pass(&g, &k, &openat(&g, 1), out.take());
    let last = DEFER_MAX as u64 + 5;
    for ts in 2..last {
        let tick = rec(ts, Event::TimerEntry { vector: 0xec });
        d.pass(&g, &k, &tick, out.take());
    }
    d.flush(out.take());
    assert_eq!(out.ts(), (1..last).collect::<Vec<_>>());
    assert_eq!(filename(&out.0[0]), None);
    assert_eq!(d.given_up, 2);
}
