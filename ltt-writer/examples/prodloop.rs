//! Producer hot loops, for profiling: `prodloop <dir> <events> [switch|syscall]`.
use ltt_writer::*;
fn main() {
    let dir = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "/tmp/prodloop".into());
    let n: u64 = std::env::args()
        .nth(2)
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_000_000);
    let kind = std::env::args().nth(3).unwrap_or_else(|| "switch".into());
    let a = |name: &str, kind, dir| SyscallArg {
        name: name.into(),
        kind,
        dir,
    };
    let read = SyscallDecl {
        nr: 0,
        name: "read".into(),
        args: vec![
            a("fd", ArgKind::Unsigned(32), ArgDir::In),
            a("buf", ArgKind::Pointer, ArgDir::Out),
            a("count", ArgKind::Unsigned(64), ArgDir::In),
        ],
    };
    let mut cfg = TraceConfig::new(1, Catalog::kernel(&[read]).unwrap());
    cfg.policy = Policy::FlightRecorder {
        bytes_per_cpu: 1 << 20,
    };
    let (w, mut ps) = TraceWriter::create(dir.as_ref(), cfg).unwrap();
    let p = &mut ps[0];
    let ctx = TaskCtx::new(100, 101, b"bench");
    let prev = TaskRef {
        comm: b"bench-prev\0\0\0\0\0\0",
        tid: 101,
        prio: 20,
    };
    let next = TaskRef {
        comm: b"bench-next\0\0\0\0\0\0",
        tid: 102,
        prio: 20,
    };
    let t = std::time::Instant::now();
    if kind == "syscall" {
        for i in 0..n / 2 {
            let args = [Value::U(3), Value::U(0x7fff_0000), Value::U(i)];
            p.syscall_entry(i * 100, &ctx, 0, &args).unwrap();
            p.syscall_exit(i * 100 + 50, &ctx, 0, 12, &args).unwrap();
        }
    } else {
        for i in 0..n {
            p.sched_switch(i * 100, &ctx, prev, (i & 1) as i64, next)
                .unwrap();
        }
    }
    let d = t.elapsed();
    println!("{kind}: {:.1} ns/event", d.as_nanos() as f64 / n as f64);
    drop(ps);
    w.finish().unwrap();
}
