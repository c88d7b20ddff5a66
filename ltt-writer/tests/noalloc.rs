//! The producer path allocates nothing: a counting global allocator sees no
//! allocation on the producing thread while it emits every kind of event
//! through many packets, lossless, waiting again and again for a writer
//! slowed down by a FIFO read 4 KiB per 200 µs. (The first wait of a thread
//! lets crossbeam register it as a waiter, once: that is the warm-up.)

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use ltt_writer::*;

struct Counting;

thread_local! {
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: every call is forwarded unchanged to the system allocator; the
// counter is a const-initialised thread-local that itself never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocs() -> u64 {
    ALLOCS.with(|c| c.get())
}

fn one_of_each(p: &mut Producer, i: u64) {
    let ctx = TaskCtx::new(10, 11, b"task");
    let t = TaskRef {
        comm: b"task",
        tid: 11,
        prio: 20,
    };
    let ts = i * 1000;
    p.sched_switch(ts, &ctx, t, 1, t).unwrap();
    p.sched_waking(ts + 1, &ctx, t, 0).unwrap();
    p.sched_wakeup(ts + 2, &ctx, t, 0).unwrap();
    let vtids = [11];
    let fork = Fork {
        parent_comm: b"task",
        parent_tid: 11,
        parent_pid: 10,
        parent_ns_inum: 1,
        child_comm: b"task",
        child_tid: 12,
        vtids: &vtids,
        child_pid: 12,
        child_ns_inum: 1,
    };
    p.sched_process_fork(ts + 3, &ctx, &fork).unwrap();
    p.sched_process_exec(ts + 4, &ctx, b"/bin/true", 12, 12)
        .unwrap();
    p.sched_process_exit(ts + 5, &ctx, t).unwrap();
    p.sched_process_free(ts + 6, &ctx, t).unwrap();
    p.irq_handler_entry(ts + 7, &ctx, 4, b"ttyS0").unwrap();
    p.irq_handler_exit(ts + 8, &ctx, 4, 1).unwrap();
    p.irq_softirq_raise(ts + 9, &ctx, 1).unwrap();
    p.irq_softirq_entry(ts + 10, &ctx, 1).unwrap();
    p.irq_softirq_exit(ts + 11, &ctx, 1).unwrap();
    let st = ProcessState {
        tid: 1,
        pid: 1,
        ppid: 0,
        name: b"init",
        kind: 0,
        mode: 0,
        submode: 0,
        status: 5,
        cpu: 0,
        file_table_address: 0,
    };
    p.lttng_statedump_start(ts + 12, &ctx).unwrap();
    p.lttng_statedump_process_state(ts + 13, &ctx, &st).unwrap();
    p.lttng_statedump_end(ts + 14, &ctx).unwrap();
    let args = [
        Value::I(-100),
        Value::Str(b"/etc/hosts"),
        Value::I(0),
        Value::U(0),
    ];
    p.syscall_entry(ts + 15, &ctx, 257, &args).unwrap();
    p.syscall_exit(ts + 16, &ctx, 257, 3, &args).unwrap();
    p.syscall_entry(ts + 17, &ctx, 999, &[Value::U(1)]).unwrap();
    p.syscall_exit(ts + 18, &ctx, 999, -38, &[]).unwrap();
}

#[test]
fn producer_path_does_not_allocate() {
    let dir = common::tmp();
    let a = |name: &str, kind, dir| SyscallArg {
        name: name.into(),
        kind,
        dir,
    };
    let openat = SyscallDecl {
        nr: 257,
        name: "openat".into(),
        args: vec![
            a("dfd", ArgKind::Signed(32), ArgDir::In),
            a("filename", ArgKind::String, ArgDir::In),
            a("flags", ArgKind::Signed(32), ArgDir::In),
            a("mode", ArgKind::Unsigned(16), ArgDir::In),
        ],
    };
    let mut cfg = TraceConfig::new(1, Catalog::kernel(&[openat]).unwrap());
    cfg.packet_size = 8192;
    cfg.packets_per_cpu = 3;
    let slow = common::fifo_stream(dir.path(), 0);
    let (w, mut ps) = TraceWriter::create(dir.path(), cfg).unwrap();
    slow.go.send(std::time::Duration::from_micros(200)).unwrap();
    let mut p = ps.pop().unwrap();
    let probe = p.catalog().id_of("syscall_entry_openat").unwrap();
    // Warm-up: past the pool and the pipe, so the producer has waited.
    for i in 0..300 {
        one_of_each(&mut p, i);
    }
    let before = allocs();
    let waits = std::time::Instant::now();
    for i in 300..1500 {
        one_of_each(&mut p, i);
        p.emit(
            probe,
            i * 1000 + 999,
            &TaskCtx::default(),
            &[Value::I(1), Value::Str(b"x"), Value::I(2), Value::U(3)],
        )
        .unwrap();
    }
    let after = allocs();
    let stats = p.stats();
    // ~1200 x 21 events x ~60 bytes in 8 KiB packets, each read in 2 x
    // 200 µs: the loop had to wait for most of them.
    assert!(stats.packets > 150, "{stats:?}");
    assert!(
        waits.elapsed() > std::time::Duration::from_millis(40),
        "{:?}",
        waits.elapsed()
    );
    assert_eq!(after - before, 0, "allocations on the producer path");
    // The counter does see this thread's allocations.
    let v = std::hint::black_box(vec![1u8; 64]);
    assert_eq!(allocs(), after + 1);
    drop(v);
    drop(p);
    let r = w.finish().unwrap();
    assert_eq!(r.discarded(), 0);
    let data = slow.reader.join().unwrap();
    assert_eq!(data.len() as u64, r.bytes_written);
}

/// Dropping allocates nothing either: in discard mode, with the writer
/// stuck on a FIFO nobody reads yet, most events are dropped and counted
/// by class without one allocation on the producing thread.
#[test]
fn dropping_does_not_allocate() {
    let dir = common::tmp();
    let mut cfg = TraceConfig::new(1, Catalog::kernel(&[]).unwrap());
    cfg.packet_size = 4096;
    cfg.packets_per_cpu = 2;
    cfg.policy = Policy::Discard;
    let slow = common::fifo_stream(dir.path(), 0);
    let (w, mut ps) = TraceWriter::create(dir.path(), cfg).unwrap();
    let mut p = ps.pop().unwrap();
    let before = allocs();
    for i in 0..1500 {
        one_of_each(&mut p, i);
    }
    let after = allocs();
    let dropped = p.discards().total();
    assert!(dropped > 10_000, "{:?}", p.stats());
    assert_eq!(dropped, p.stats().discarded);
    assert_eq!(after - before, 0, "allocations while dropping");
    slow.go.send(std::time::Duration::ZERO).unwrap();
    drop(p);
    let r = w.finish().unwrap();
    assert_eq!(r.discarded(), dropped);
    let _ = slow.reader.join().unwrap();
}
