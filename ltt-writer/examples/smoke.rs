use ltt_writer::*;
fn main() {
    let out = std::env::args().nth(1).unwrap();
    let catalog = Catalog::kernel(&[SyscallDecl {
        nr: 0,
        name: "read".into(),
        args: vec![
            SyscallArg { name: "fd".into(), kind: ArgKind::Unsigned(32), dir: ArgDir::In },
            SyscallArg { name: "buf".into(), kind: ArgKind::Pointer, dir: ArgDir::Out },
            SyscallArg { name: "count".into(), kind: ArgKind::Unsigned(64), dir: ArgDir::In },
        ],
    }])
    .unwrap();
    let mut cfg = TraceConfig::new(2, catalog);
    cfg.clock_offset_ns = 1_700_000_000_000_000_000;
    let (w, mut ps) = TraceWriter::create(out.as_ref(), cfg).unwrap();
    let ctx = TaskCtx::new(42, 43, b"bash");
    for i in 0..20000u64 {
        let p = &mut ps[(i % 2) as usize];
        p.sched_switch(i * 1000, &ctx, TaskRef { comm: b"bash", tid: 43, prio: 20 }, 1, TaskRef { comm: b"swapper/0", tid: 0, prio: 20 }).unwrap();
        p.syscall_entry(i * 1000 + 1, &ctx, 0, &[Value::U(3), Value::U(0x7fff0000), Value::U(4096)]).unwrap();
        p.syscall_exit(i * 1000 + 2, &ctx, 0, 12, &[Value::U(3), Value::U(0x7fff0000), Value::U(4096)]).unwrap();
        p.sched_process_exec(i * 1000 + 3, &ctx, b"/bin/ls", 43, 43).unwrap();
    }
    drop(ps);
    println!("{:?}", w.finish().unwrap());
}
