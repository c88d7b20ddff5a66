//! Every event type, written with known field values and read back by the
//! real babeltrace2: names, fields, values, context, timestamps, env and
//! clock must all come back, with nothing on stderr.

mod common;
mod roundtrip_events;

use common::{assert_cli_clean, bt2_read, tmp};
use ltt_writer::*;
use roundtrip_events::{catalog, emit_all, name, Exp, Ts};
use serde_json::json;

const OFFSET_NS: u64 = 1_764_000_000_123_456_789;

fn roundtrip(header: HeaderKind) {
    let dir = tmp();
    let mut cfg = TraceConfig::new(3, catalog());
    cfg.packet_size = 4096;
    cfg.header = header;
    cfg.clock_offset_ns = OFFSET_NS;
    cfg.env.hostname = "test-host".into();
    cfg.env.kernel_release = "6.1.0-53-amd64".into();
    cfg.env.kernel_version = "#1 SMP PREEMPT_DYNAMIC Debian 6.1.123-1".into();
    let (w, mut ps) = TraceWriter::create(dir.path(), cfg).unwrap();
    let mut exp: Vec<Vec<Exp>> = vec![Vec::new(), Vec::new(), Vec::new()];
    // cpu 2 stays idle: its stream holds one empty packet.
    let (mut t0, mut t1) = (Ts(10, 0), Ts(1 << 40, 3));
    for round in 0..25 {
        emit_all(&mut ps[0], &mut t0, &mut exp[0], round);
        emit_all(&mut ps[1], &mut t1, &mut exp[1], -round);
    }
    let stats: Vec<_> = ps.iter().map(|p| p.stats()).collect();
    drop(ps);
    let report = w.finish().unwrap();
    assert_eq!(report.events(), (exp[0].len() + exp[1].len()) as u64);
    assert_eq!(report.discarded(), 0);
    assert!(
        stats[0].packets > 5,
        "the test must span many packets: {stats:?}"
    );

    let read = bt2_read(dir.path());
    assert!(read.stderr.trim().is_empty(), "bt2 stderr: {}", read.stderr);
    for cpu in 0..3u64 {
        let got = read.events_of_cpu(cpu);
        let want = &exp[cpu as usize];
        assert_eq!(got.len(), want.len(), "cpu {cpu}: event count");
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert_eq!(g["name"], w.name, "cpu {cpu} event {i}");
            assert_eq!(
                g["ns"].as_u64(),
                Some(OFFSET_NS + w.ts),
                "cpu {cpu} event {i} ({}) time",
                w.name
            );
            assert_eq!(g["cycles"].as_u64(), Some(w.ts));
            let ctx = json!({"pid": w.ctx.pid, "tid": w.ctx.tid, "procname": name(&w.ctx)});
            assert_eq!(g["ctx"], ctx, "cpu {cpu} event {i} ({}) context", w.name);
            assert_eq!(
                g["fields"], w.fields,
                "cpu {cpu} event {i} ({}) fields",
                w.name
            );
        }
    }
    // Every event class of the catalog was written, but the pads and the
    // exit of exit_group (which never returns).
    let names: std::collections::BTreeSet<_> = read
        .events()
        .iter()
        .map(|e| e["name"].as_str().unwrap().to_string())
        .collect();
    let declared: std::collections::BTreeSet<_> = catalog()
        .events()
        .iter()
        .map(|e| e.name.clone())
        .filter(|n| !n.starts_with("probe_pad") && n != "syscall_exit_exit_group")
        .collect();
    assert_eq!(names, declared);

    let streams = read.of_type("stream");
    assert_eq!(streams.len(), 3);
    for s in streams {
        let env = &s["env"];
        assert_eq!(env["domain"], "kernel");
        assert_eq!(env["tracer_name"], "lttng-modules");
        assert_eq!(env["tracer_major"], 2);
        assert_eq!(env["tracer_minor"], 13);
        assert_eq!(env["hostname"], "test-host");
        assert_eq!(env["sysname"], "Linux");
        assert_eq!(env["kernel_release"], "6.1.0-53-amd64");
        let c = &s["clock"];
        assert_eq!(c["name"], "monotonic");
        assert_eq!(c["freq"], 1_000_000_000u64);
        assert_eq!(c["unix_epoch"], true);
        assert_eq!(
            c["offset_s"].as_u64().unwrap() * 1_000_000_000 + c["offset_cycles"].as_u64().unwrap(),
            OFFSET_NS
        );
    }
    // Packets carry the cpu id and bracket their events.
    for p in read.of_type("packet") {
        assert!(p["ctx"]["cpu_id"].as_u64().unwrap() < 3);
    }
    assert_cli_clean(dir.path(), exp[0].len() + exp[1].len());
}

#[test]
fn every_event_roundtrips_compact_header() {
    roundtrip(HeaderKind::Compact);
}

#[test]
fn every_event_roundtrips_large_header() {
    roundtrip(HeaderKind::Large);
}
