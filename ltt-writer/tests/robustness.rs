//! Failures: unwritable folder, full disk, producers that never close,
//! a writer dropped without finish. What was handed over stays readable.

mod common;

use std::time::{Duration, Instant};

use common::{assert_cli_clean, bt2_read, tmp};
use ltt_writer::*;

fn cfg(ncpus: u32) -> TraceConfig {
    let mut c = TraceConfig::new(ncpus, Catalog::kernel(&[]).unwrap());
    c.packet_size = 4096;
    c.packets_per_cpu = 4;
    c
}

fn exits(p: &mut Producer, from: i32, n: i32) -> Result<(), ProduceError> {
    let ctx = TaskCtx::new(3, 3, b"t");
    for i in from..from + n {
        p.sched_process_exit(
            1000 + i as u64,
            &ctx,
            TaskRef {
                comm: b"gone",
                tid: i,
                prio: 20,
            },
        )?;
    }
    Ok(())
}

/// sched_process_exit events per 4 KiB packet: first one with the 13-byte
/// escape header, then 4-byte compact headers; 24-byte context and payload.
const PER_PACKET: i64 = 1 + (4096 - 84 - (13 + 24 + 24)) / (4 + 24 + 24);

fn tids(read: &common::Bt2Read, cpu: u64) -> Vec<i64> {
    read.events_of_cpu(cpu)
        .iter()
        .map(|e| e["fields"]["tid"].as_i64().unwrap())
        .collect()
}

#[test]
fn unwritable_folder_is_a_clear_error() {
    let dir = tmp();
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let out = file.join("trace");
    let err = TraceWriter::create(&out, cfg(1)).err().expect("must fail");
    assert!(matches!(err, WriteError::CreateDir { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("a-file/trace/kernel"), "{msg}");
    let cause = std::error::Error::source(&err).map(|c| c.to_string());
    assert!(
        cause
            .as_deref()
            .is_some_and(|c| c.contains("Not a directory")),
        "{cause:?}"
    );
}

#[test]
fn invalid_configuration_is_rejected() {
    let dir = tmp();
    let mut c = cfg(1);
    c.packet_size = 1000;
    assert!(TraceWriter::create(dir.path(), c).is_err());
    assert!(TraceWriter::create(dir.path(), cfg(0)).is_err());
}

#[test]
fn full_disk_reports_the_file_and_keeps_what_was_written() {
    let dir = tmp();
    let k = dir.path().join("kernel");
    std::fs::create_dir_all(&k).unwrap();
    // Writes to stream 1 fail with ENOSPC.
    std::os::unix::fs::symlink("/dev/full", k.join("channel0_1")).unwrap();
    let (w, mut ps) = TraceWriter::create(dir.path(), cfg(2)).unwrap();
    exits(&mut ps[0], 0, 500).unwrap();
    ps[0].flush().unwrap();
    // Wait until stream 0 is on disk, then make stream 1 fail.
    let t = Instant::now();
    let packets = 500_u64.div_ceil(PER_PACKET as u64);
    while std::fs::metadata(k.join("channel0_0")).unwrap().len() < packets * 4096 {
        assert!(t.elapsed() < Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(2));
    }
    exits(&mut ps[1], 0, 200).unwrap();
    ps[1].flush().unwrap();
    let t = Instant::now();
    while !w.failed() {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "failure not reported"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    exits(&mut ps[0], 500, 100).unwrap();
    drop(ps);
    let err = w.finish().expect_err("finish must report the failure");
    let msg = err.to_string();
    assert!(msg.contains("channel0_1"), "{msg}");
    let cause = std::error::Error::source(&err).map(|c| c.to_string());
    assert!(
        cause
            .as_deref()
            .is_some_and(|c| c.contains("No space left on device")),
        "{cause:?}"
    );
    match err {
        WriteError::Write { written, lost, .. } => {
            assert_eq!(written, 0);
            // Stream 1's packets and stream 0's later ones were not written.
            assert!(lost >= 5, "{lost}");
        }
        e => panic!("{e:?}"),
    }
    std::fs::remove_file(k.join("channel0_1")).unwrap();
    let read = bt2_read(dir.path());
    assert!(read.stderr.trim().is_empty(), "{}", read.stderr);
    assert_eq!(tids(&read, 0), (0..500).collect::<Vec<_>>());
    assert_cli_clean(dir.path(), 500);
}

#[test]
fn finish_with_a_live_producer_writes_what_was_handed_over() {
    let dir = tmp();
    let (w, mut ps) = TraceWriter::create(dir.path(), cfg(2)).unwrap();
    let mut live = ps.pop().unwrap();
    exits(&mut ps[0], 0, 300).unwrap();
    drop(ps);
    // 100 events fill one packet and leave the rest in the open one.
    assert_eq!(PER_PACKET, 76);
    exits(&mut live, 0, 100).unwrap();
    let report = w.finish_timeout(Duration::from_millis(300)).unwrap();
    assert_eq!(report.unclosed, vec![1]);
    // The writer is gone: the producer learns it at its next packet.
    let mut err = None;
    for i in 0..100 {
        if let Err(e) = exits(&mut live, 100 + i, 1) {
            err = Some(e);
            break;
        }
    }
    assert_eq!(err, Some(ProduceError::WriterGone));
    drop(live);
    let read = bt2_read(dir.path());
    assert!(read.stderr.trim().is_empty(), "{}", read.stderr);
    assert_eq!(tids(&read, 0), (0..300).collect::<Vec<_>>());
    assert_eq!(tids(&read, 1), (0..PER_PACKET).collect::<Vec<_>>());
    assert_cli_clean(dir.path(), 300 + PER_PACKET as usize);
}

#[test]
fn dropping_the_writer_still_writes_everything() {
    let dir = tmp();
    let (w, mut ps) = TraceWriter::create(dir.path(), cfg(2)).unwrap();
    exits(&mut ps[0], 0, 123).unwrap();
    exits(&mut ps[1], 0, 45).unwrap();
    drop(ps);
    drop(w);
    let read = bt2_read(dir.path());
    assert_eq!(tids(&read, 0), (0..123).collect::<Vec<_>>());
    assert_eq!(tids(&read, 1), (0..45).collect::<Vec<_>>());
    assert_cli_clean(dir.path(), 168);
}

#[test]
fn generic_events_are_checked_against_the_catalog() {
    let dir = tmp();
    let (w, mut ps) = TraceWriter::create(dir.path(), cfg(1)).unwrap();
    let ctx = TaskCtx::default();
    let p = &mut ps[0];
    let exit = p.catalog().id_of("sched_process_exit").unwrap();
    assert_eq!(
        p.emit(9999, 1, &ctx, &[]),
        Err(ProduceError::UnknownEvent(9999))
    );
    assert!(matches!(
        p.emit(exit, 1, &ctx, &[Value::U(1)]),
        Err(ProduceError::ArgCount { .. })
    ));
    assert!(matches!(
        p.emit(exit, 1, &ctx, &[Value::U(1), Value::U(2), Value::U(3)]),
        Err(ProduceError::BadValue { index: 0, .. })
    ));
    let huge = vec![b'x'; 8000];
    let irq = p.catalog().id_of("irq_handler_entry").unwrap();
    // Strings are cut at 4095 bytes; with the headers that still exceeds a
    // 4 KiB packet: the event is refused and counted.
    assert!(matches!(
        p.emit(irq, 1, &ctx, &[Value::I(1), Value::Str(&huge)]),
        Err(ProduceError::TooLarge(_))
    ));
    assert_eq!(p.stats().discarded, 1);
    p.emit(
        exit,
        2,
        &ctx,
        &[Value::Str(b"ok"), Value::I(5), Value::I(20)],
    )
    .unwrap();
    drop(ps);
    let r = w.finish().unwrap();
    assert_eq!(r.events(), 1);
    let read = bt2_read(dir.path());
    assert_eq!(read.events().len(), 1);
}

/// A writer killed in the middle of a `write` leaves a partial packet at
/// the end of a stream; `repair_trace` cuts it and babeltrace2 reads the
/// rest.
#[test]
fn repair_cuts_a_torn_last_packet() {
    let dir = tmp();
    let (w, mut ps) = TraceWriter::create(dir.path(), cfg(2)).unwrap();
    exits(&mut ps[0], 0, 200).unwrap();
    exits(&mut ps[1], 0, 10).unwrap();
    drop(ps);
    w.finish().unwrap();
    let s0 = dir.path().join("kernel/channel0_0");
    let good = std::fs::read(&s0).unwrap();
    let packets = good.len() / 4096;
    assert_eq!(packets as u64, 200_u64.div_ceil(PER_PACKET as u64));
    // Torn write: the first 1000 bytes of another copy of packet 0.
    let mut torn = good.clone();
    torn.extend_from_slice(&good[..1000]);
    std::fs::write(&s0, &torn).unwrap();
    let (ok, _, stderr) = common::babeltrace_cli(dir.path());
    assert!(
        !ok || !stderr.is_empty(),
        "babeltrace2 should notice the torn packet"
    );

    let fixed = ltt_writer::reader::repair_trace(dir.path()).unwrap();
    assert_eq!(
        fixed,
        vec![ltt_writer::reader::Repaired {
            file: "channel0_0".into(),
            packets,
            cut: 1000
        }]
    );
    assert_eq!(std::fs::read(&s0).unwrap(), good);
    let read = bt2_read(dir.path());
    assert_eq!(tids(&read, 0), (0..200).collect::<Vec<_>>());
    assert_cli_clean(dir.path(), 210);
}
