//! Discard mode says which events it dropped: per stream and per event
//! class, so that what babeltrace2 reads plus what was dropped is exactly
//! what was produced, class by class.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{bt2_read, fifo_stream, tmp};
use ltt_writer::*;

const NEXT: TaskRef<'static> = TaskRef {
    comm: b"next",
    tid: 2,
    prio: 20,
};

/// Produces event `i` of a fixed mix of three classes on `p`; returns
/// the class's name.
fn produce(p: &mut Producer, i: u64) -> &'static str {
    let ctx = TaskCtx::new(7, 7, b"mix");
    let ts = 100 + i;
    let r = match i % 6 {
        0 | 2 | 4 => p
            .sched_switch(ts, &ctx, NEXT, 0, NEXT)
            .map(|()| "sched_switch"),
        1 | 5 => p.sched_waking(ts, &ctx, NEXT, 0).map(|()| "sched_waking"),
        _ => p
            .irq_handler_entry(ts, &ctx, 4, b"ttyS0")
            .map(|()| "irq_handler_entry"),
    };
    r.expect("produce")
}

#[test]
fn discard_mode_counts_each_dropped_event_by_class() {
    let dir = tmp();
    let slow = fifo_stream(dir.path(), 0);
    let mut cfg = TraceConfig::new(2, Catalog::kernel(&[]).unwrap());
    cfg.packet_size = 4096;
    cfg.packets_per_cpu = 2;
    cfg.policy = Policy::Discard;
    let (w, mut ps) = TraceWriter::create(dir.path(), cfg).unwrap();
    // produced[cpu][class]
    let mut produced = [BTreeMap::<&str, u64>::new(), BTreeMap::new()];
    // The FIFO of cpu 0 is not read yet: the writer blocks and both
    // pools run dry.
    for i in 0..4000 {
        for (cpu, p) in ps.iter_mut().enumerate() {
            *produced[cpu].entry(produce(p, i)).or_default() += 1;
        }
    }
    slow.go.send(Duration::ZERO).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    for i in 4000..6000 {
        *produced[0].entry(produce(&mut ps[0], i)).or_default() += 1;
    }
    let live: Vec<u64> = ps.iter().map(|p| p.discards().total()).collect();
    assert_eq!(
        live,
        ps.iter().map(|p| p.stats().discarded).collect::<Vec<_>>()
    );
    assert!(live.iter().all(|&n| n > 1000), "must drop: {live:?}");
    drop(ps);
    let report = w.finish().unwrap();
    let data = slow.reader.join().unwrap();

    // A copy of the trace with cpu 0's stream as a file.
    let out = tmp();
    let k = out.path().join("kernel");
    std::fs::create_dir_all(&k).unwrap();
    std::fs::copy(dir.path().join("kernel/metadata"), k.join("metadata")).unwrap();
    std::fs::write(k.join("channel0_0"), &data).unwrap();
    std::fs::copy(dir.path().join("kernel/channel0_1"), k.join("channel0_1")).unwrap();
    let read = bt2_read(out.path());

    let json = report.discards_json();
    let mut totals = BTreeMap::<&str, u64>::new();
    for cpu in 0..2u64 {
        let d = &report.discards[cpu as usize];
        assert_eq!(d.total(), report.per_cpu[cpu as usize].discarded);
        assert_eq!(d.unattributed + d.unknown_id, 0);
        let mut in_trace = BTreeMap::<String, u64>::new();
        for e in read.events_of_cpu(cpu) {
            *in_trace
                .entry(e["name"].as_str().unwrap().to_string())
                .or_default() += 1;
        }
        for (&name, &want) in &produced[cpu as usize] {
            let id = report.catalog.id_of(name).unwrap();
            let traced = in_trace.get(name).copied().unwrap_or(0);
            assert_eq!(
                traced + d.of(id),
                want,
                "cpu {cpu} {name}: {traced} read by babeltrace2 + {} dropped",
                d.of(id)
            );
            assert!(d.of(id) > 0, "cpu {cpu}: no {name} dropped");
            assert_eq!(json["cpus"][cpu as usize]["by_event"][name], d.of(id));
            *totals.entry(name).or_default() += d.of(id);
        }
    }
    for (name, n) in totals {
        assert_eq!(json["by_event"][name], n, "{name}");
    }
    // The packet contexts' running totals (events_discarded) say the same.
    assert_eq!(read.discarded(), report.discarded());
    assert_eq!(json["total"], report.discarded());
}
