//! The built-in reader agrees with babeltrace2, and the Chrome trace-event
//! export shows syscalls as complete slices, irqs as instants, the task on
//! each CPU, and process/thread names.

mod common;

use common::{bt2_read, tmp};
use ltt_writer::reader::{read_trace, FieldValue};
use ltt_writer::*;
use serde_json::{json, Value as Json};

fn catalog() -> Catalog {
    let a = |name: &str, kind, dir| SyscallArg {
        name: name.into(),
        kind,
        dir,
    };
    Catalog::kernel(&[
        SyscallDecl {
            nr: 0,
            name: "read".into(),
            args: vec![
                a("fd", ArgKind::Unsigned(32), ArgDir::In),
                a("buf", ArgKind::Pointer, ArgDir::Out),
                a("count", ArgKind::Unsigned(64), ArgDir::In),
            ],
        },
        SyscallDecl {
            nr: 231,
            name: "exit_group".into(),
            args: vec![a("error_code", ArgKind::Signed(32), ArgDir::In)],
        },
    ])
    .unwrap()
}

fn write_trace(dir: &std::path::Path) {
    let (w, mut ps) = TraceWriter::create(dir, TraceConfig::new(2, catalog())).unwrap();
    let bash = TaskCtx::new(1000, 1000, b"bash");
    let worker = TaskCtx::new(1000, 1001, b"bash-worker");
    let idle = TaskCtx::new(0, 0, b"swapper/1");
    let read = [Value::U(3), Value::U(0x1000), Value::U(512)];
    let p0 = &mut ps[0];
    p0.sched_switch(
        1_000,
        &idle,
        TaskRef {
            comm: b"swapper/0",
            tid: 0,
            prio: 20,
        },
        0,
        TaskRef {
            comm: b"bash",
            tid: 1000,
            prio: 20,
        },
    )
    .unwrap();
    p0.syscall_entry(2_000, &bash, 0, &read).unwrap();
    p0.irq_handler_entry(2_500, &bash, 4, b"ttyS0").unwrap();
    p0.irq_handler_exit(2_600, &bash, 4, 1).unwrap();
    p0.syscall_exit(7_250, &bash, 0, 512, &read).unwrap();
    p0.syscall_entry(9_000, &bash, 231, &[Value::I(0)]).unwrap();
    let p1 = &mut ps[1];
    p1.sched_switch(
        1_500,
        &idle,
        TaskRef {
            comm: b"swapper/1",
            tid: 0,
            prio: 20,
        },
        0,
        TaskRef {
            comm: b"bash-worker",
            tid: 1001,
            prio: 20,
        },
    )
    .unwrap();
    p1.syscall_entry(3_000, &worker, 0, &read).unwrap();
    p1.irq_softirq_entry(3_100, &worker, 1).unwrap();
    p1.syscall_exit(4_000, &worker, 0, -4, &read).unwrap();
    drop(ps);
    w.finish().unwrap();
}

#[test]
fn reader_agrees_with_babeltrace2() {
    let dir = tmp();
    write_trace(dir.path());
    let cat = catalog();
    let ours = read_trace(dir.path(), &cat, HeaderKind::Compact).unwrap();
    let theirs = bt2_read(dir.path());
    let theirs = theirs.events();
    assert_eq!(ours.len(), theirs.len());
    for (o, t) in ours.iter().zip(theirs) {
        let decl = cat.event(o.id).unwrap();
        assert_eq!(t["name"], decl.name.as_str());
        assert_eq!(t["cycles"].as_u64(), Some(o.ts));
        assert_eq!(t["cpu"].as_u64(), Some(o.cpu as u64));
        assert_eq!(t["ctx"]["tid"].as_i64(), Some(o.ctx.tid as i64));
        for (f, v) in decl.fields.iter().zip(&o.fields) {
            let want = match v {
                FieldValue::I(x) => json!(x),
                FieldValue::U(x) => json!(x),
                FieldValue::Str(s) => json!(s),
                FieldValue::Ints(a) => json!(a),
            };
            assert_eq!(
                t["fields"][f.name.as_str()],
                want,
                "{}.{}",
                decl.name,
                f.name
            );
        }
    }
}

fn find(ev: &[Json], f: impl Fn(&Json) -> bool) -> Vec<&Json> {
    ev.iter().filter(|e| f(e)).collect()
}

#[test]
fn chrome_export_has_slices_instants_and_names() {
    let dir = tmp();
    write_trace(dir.path());
    let cat = catalog();
    let json = dir.path().join("chrome.json");
    ltt_writer::chrome::export_trace(dir.path(), &cat, HeaderKind::Compact, &json).unwrap();
    let doc: Json = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let ev = doc["traceEvents"].as_array().unwrap().clone();

    // Syscalls: complete slices, µs, entry args + ret.
    let mut x = find(&ev, |e| e["ph"] == "X");
    x.sort_by(|a, b| a["ts"].as_f64().partial_cmp(&b["ts"].as_f64()).unwrap());
    assert_eq!(x.len(), 2);
    assert_eq!(x[0]["name"], "read");
    assert_eq!(
        (x[0]["pid"].as_i64(), x[0]["tid"].as_i64()),
        (Some(1000), Some(1000))
    );
    assert_eq!(x[0]["ts"].as_f64(), Some(2.0));
    assert_eq!(x[0]["dur"].as_f64(), Some(5.25));
    assert_eq!(x[0]["args"]["fd"], 3);
    assert_eq!(x[0]["args"]["count"], 512);
    assert_eq!(x[0]["args"]["ret"], 512);
    assert_eq!(x[0]["args"]["buf"], 0x1000);
    assert_eq!(
        (
            x[1]["tid"].as_i64(),
            x[1]["ts"].as_f64(),
            x[1]["dur"].as_f64()
        ),
        (Some(1001), Some(3.0), Some(1.0))
    );
    assert_eq!(x[1]["args"]["ret"], -4);
    // exit_group never returns: an open slice closed at the end.
    let b = find(&ev, |e| e["ph"] == "B" && e["cat"] == "syscall");
    assert_eq!(b.len(), 1);
    assert_eq!(b[0]["name"], "exit_group");
    assert_eq!(b[0]["args"]["unfinished"], true);

    // Interrupts: instants.
    let irq = find(&ev, |e| e["cat"] == "irq");
    assert_eq!(irq.len(), 2);
    assert!(irq.iter().all(|e| e["ph"] == "i"));
    assert_eq!(irq[0]["ts"].as_f64(), Some(2.5));
    assert_eq!(irq[0]["args"]["name"], "ttyS0");
    assert_eq!(
        find(&ev, |e| e["cat"] == "softirq" && e["ph"] == "i").len(),
        1
    );

    // The task on each CPU.
    let cpu_pid = ltt_writer::chrome::CPUS_PID;
    let on_cpu = find(&ev, |e| e["pid"] == cpu_pid && e["ph"] == "B");
    assert_eq!(on_cpu.len(), 2);
    assert_eq!(on_cpu[0]["name"], "bash [1000]");
    assert_eq!(on_cpu[1]["name"], "bash-worker [1001]");
    assert_eq!(
        find(&ev, |e| e["pid"] == cpu_pid && e["ph"] == "E").len(),
        2
    );

    // Names.
    let meta = find(&ev, |e| e["ph"] == "M");
    let has = |n: &str, pid: i64, tid: i64, v: &str| {
        meta.iter()
            .any(|m| m["name"] == n && m["pid"] == pid && m["tid"] == tid && m["args"]["name"] == v)
    };
    assert!(has("process_name", 1000, 1000, "bash"));
    assert!(has("thread_name", 1000, 1001, "bash-worker"));
    assert!(has("thread_name", 1000, 1000, "bash"));
    assert!(has("process_name", cpu_pid, 0, "CPUs"));
    assert!(has("thread_name", cpu_pid, 1, "CPU 1"));
    // Every event has the fields viewers require.
    for e in &ev {
        assert!(
            e["ph"].is_string()
                && e["pid"].is_number()
                && e["tid"].is_number()
                && e["name"].is_string(),
            "{e}"
        );
        if e["ph"] != "M" {
            assert!(e["ts"].is_number(), "{e}");
        }
    }
}
