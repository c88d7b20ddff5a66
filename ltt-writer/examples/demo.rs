//! Write a small demo trace and its Chrome JSON export:
//! `cargo run -p ltt-writer --example demo -- /tmp/demo-trace`
//! then `babeltrace2 /tmp/demo-trace` or open `/tmp/demo-trace/chrome.json`
//! in chrome://tracing or ui.perfetto.dev.
use ltt_writer::*;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "/tmp/ltt-writer-demo".into());
    let arg = |name: &str, kind, dir| SyscallArg {
        name: name.into(),
        kind,
        dir,
    };
    let syscalls = [SyscallDecl {
        nr: 0,
        name: "read".into(),
        args: vec![
            arg("fd", ArgKind::Unsigned(32), ArgDir::In),
            arg("buf", ArgKind::Pointer, ArgDir::Out),
            arg("count", ArgKind::Unsigned(64), ArgDir::In),
        ],
    }];
    let catalog = Catalog::kernel(&syscalls)?;
    let mut cfg = TraceConfig::new(2, catalog.clone());
    cfg.env.kernel_release = "6.1.0-53-amd64".into();
    cfg.clock_offset_ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_nanos() as u64;
    let (writer, mut producers) = TraceWriter::create(out.as_ref(), cfg)?;
    let sh = TaskCtx::new(42, 42, b"sh");
    let idle = TaskCtx::new(0, 0, b"swapper/0");
    for i in 0..1000u64 {
        let cpu = (i % 2) as usize;
        let t = i * 10_000;
        let p = &mut producers[cpu];
        let prev = TaskRef {
            comm: b"swapper/0",
            tid: 0,
            prio: 20,
        };
        let next = TaskRef {
            comm: b"sh",
            tid: 42,
            prio: 20,
        };
        p.sched_switch(t, &idle, prev, 0, next)?;
        let args = [Value::U(0), Value::U(0x7ffc_0000), Value::U(128)];
        p.syscall_entry(t + 1_000, &sh, 0, &args)?;
        p.irq_handler_entry(t + 2_000, &sh, 4, b"ttyS0")?;
        p.irq_handler_exit(t + 2_500, &sh, 4, 1)?;
        p.syscall_exit(t + 6_000, &sh, 0, 12, &args)?;
        p.sched_switch(t + 7_000, &sh, next, 1, prev)?;
    }
    drop(producers);
    let report = writer.finish()?;
    println!(
        "{} events in {}",
        report.events(),
        report.trace_dir.display()
    );
    let events = reader::read_trace(out.as_ref(), &catalog, HeaderKind::Compact)?;
    let json = std::path::Path::new(&out).join("chrome.json");
    chrome::export(
        &catalog,
        &events,
        std::io::BufWriter::new(std::fs::File::create(&json)?),
    )?;
    println!("Chrome JSON: {}", json.display());
    Ok(())
}
