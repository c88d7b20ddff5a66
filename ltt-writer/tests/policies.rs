//! Buffering policies read back with babeltrace2: per-stream timestamps,
//! lossless back-pressure, exact discard counts, the flight-recorder window.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{assert_cli_clean, bt2_read, fifo_stream, tmp};
use ltt_writer::*;

const PREV: TaskRef<'static> = TaskRef {
    comm: b"prev",
    tid: 1,
    prio: 20,
};

/// sched_switch carrying a sequence number in next_tid.
fn switch(p: &mut Producer, ts: u64, seq: i32) -> Result<(), ProduceError> {
    let ctx = TaskCtx::new(7, 7, b"seq");
    p.sched_switch(
        ts,
        &ctx,
        PREV,
        0,
        TaskRef {
            comm: b"next",
            tid: seq,
            prio: 20,
        },
    )
}

fn seqs(events: &[&serde_json::Value]) -> Vec<i64> {
    events
        .iter()
        .map(|e| e["fields"]["next_tid"].as_i64().unwrap())
        .collect()
}

/// Deterministic pseudo-random numbers (64-bit LCG).
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
}

#[test]
fn timestamps_are_monotonic_per_stream_across_packets_and_threads() {
    let dir = tmp();
    let mut cfg = TraceConfig::new(4, Catalog::kernel(&[]).unwrap());
    cfg.packet_size = 4096;
    cfg.packets_per_cpu = 3;
    cfg.clock_offset_ns = 1_000_000_000;
    let (w, ps) = TraceWriter::create(dir.path(), cfg).unwrap();
    const N: usize = 6000;
    // Each vCPU thread produces its own stream; some steps go backwards
    // and are raised to the previous timestamp (counted in ts_clamped).
    let handles: Vec<_> = ps
        .into_iter()
        .enumerate()
        .map(|(cpu, mut p)| {
            std::thread::spawn(move || {
                let mut rng = Lcg(cpu as u64 + 1);
                let mut ts = 5_000u64 + cpu as u64;
                let mut want = Vec::with_capacity(N);
                let mut backwards = 0;
                for i in 0..N {
                    let r = rng.next();
                    let raw = match r % 100 {
                        0..=79 => ts + r % 1000,
                        80..=94 => ts + (r << 10) % (1 << 34),
                        _ => ts.saturating_sub(r % 500 + 1),
                    };
                    if raw < ts {
                        backwards += 1;
                    }
                    ts = ts.max(raw);
                    want.push(ts);
                    switch(&mut p, raw, i as i32).unwrap();
                }
                assert_eq!(p.stats().ts_clamped, backwards);
                want
            })
        })
        .collect();
    let want: Vec<Vec<u64>> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let report = w.finish().unwrap();
    assert_eq!(report.events(), 4 * N as u64);
    assert!(report.per_cpu.iter().all(|s| s.packets > 20));

    let read = bt2_read(dir.path());
    assert!(read.stderr.trim().is_empty(), "{}", read.stderr);
    for cpu in 0..4 {
        let got = read.events_of_cpu(cpu);
        let ts: Vec<u64> = got.iter().map(|e| e["cycles"].as_u64().unwrap()).collect();
        assert_eq!(ts, want[cpu as usize], "cpu {cpu} timestamps");
        assert!(ts.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(seqs(&got), (0..N as i64).collect::<Vec<_>>());
    }
    // The muxed order babeltrace2 gives is globally sorted.
    let all: Vec<u64> = read
        .events()
        .iter()
        .map(|e| e["ns"].as_u64().unwrap())
        .collect();
    assert!(all.windows(2).all(|w| w[0] <= w[1]));
    // Packets bracket their events and follow each other per stream.
    let mut last_end = [0u64; 4];
    let mut cur = [None::<u64>; 4];
    for r in &read.records {
        match r["t"].as_str().unwrap() {
            "packet" => {
                let c = r["ctx"]["cpu_id"].as_u64().unwrap() as usize;
                let b = r["begin"].as_u64().unwrap();
                assert!(b >= last_end[c]);
                cur[c] = Some(b);
            }
            "event" => {
                let c = r["cpu"].as_u64().unwrap() as usize;
                assert!(r["cycles"].as_u64().unwrap() >= cur[c].unwrap());
            }
            "packet_end" => {
                let c = r["ctx"]["cpu_id"].as_u64().unwrap() as usize;
                last_end[c] = r["end"].as_u64().unwrap();
            }
            _ => {}
        }
    }
    assert_cli_clean(dir.path(), 4 * N);
}

/// Copy a trace whose stream `cpu` went through a FIFO into a plain folder.
fn materialise(trace: &Path, cpu: u32, data: &[u8], ncpus: u32) -> tempfile::TempDir {
    let out = tmp();
    let k = out.path().join("kernel");
    std::fs::create_dir_all(&k).unwrap();
    std::fs::copy(trace.join("kernel/metadata"), k.join("metadata")).unwrap();
    for c in 0..ncpus {
        let name = format!("channel0_{c}");
        if c == cpu {
            std::fs::write(k.join(&name), data).unwrap();
        } else {
            std::fs::copy(trace.join("kernel").join(&name), k.join(&name)).unwrap();
        }
    }
    out
}

fn switch_catalog_cfg(ncpus: u32, policy: Policy) -> TraceConfig {
    let mut cfg = TraceConfig::new(ncpus, Catalog::kernel(&[]).unwrap());
    cfg.packet_size = 4096;
    cfg.packets_per_cpu = 2;
    cfg.policy = policy;
    cfg
}

#[test]
fn lossless_waits_for_a_slow_writer_and_drops_nothing() {
    let dir = tmp();
    let slow = fifo_stream(dir.path(), 0);
    let (w, mut ps) =
        TraceWriter::create(dir.path(), switch_catalog_cfg(1, Policy::Lossless)).unwrap();
    // 1 ms per 4 KiB read: the producer must wait for packets.
    slow.go.send(Duration::from_millis(1)).unwrap();
    const N: i32 = 4000;
    let t = Instant::now();
    for i in 0..N {
        switch(&mut ps[0], 100 + i as u64, i).unwrap();
    }
    let took = t.elapsed();
    drop(ps);
    let report = w.finish().unwrap();
    let data = slow.reader.join().unwrap();
    assert_eq!(report.discarded(), 0);
    let packets = report.per_cpu[0].packets;
    // Pool (2) + pipe (16 packets) absorb the start; the rest waited for
    // the 1 ms reads.
    assert!(
        took >= Duration::from_millis(packets.saturating_sub(2 + 16 + 2)),
        "{took:?} for {packets} packets"
    );
    let trace = materialise(dir.path(), 0, &data, 1);
    let read = bt2_read(trace.path());
    assert!(read.stderr.trim().is_empty(), "{}", read.stderr);
    assert_eq!(seqs(&read.events()), (0..N as i64).collect::<Vec<_>>());
    assert_eq!(read.discarded(), 0);
    assert_cli_clean(trace.path(), N as usize);
}

#[test]
fn discard_counts_every_dropped_event_exactly() {
    let dir = tmp();
    let slow = fifo_stream(dir.path(), 0);
    let (w, mut ps) =
        TraceWriter::create(dir.path(), switch_catalog_cfg(2, Policy::Discard)).unwrap();
    const N1: i32 = 5000;
    const N2: i32 = 3000;
    // The FIFO is not read yet: the writer blocks after 64 KiB, the pool
    // runs dry, events are dropped.
    for i in 0..N1 {
        switch(&mut ps[0], 100 + i as u64, i).unwrap();
        switch(&mut ps[1], 100 + i as u64, i).unwrap();
    }
    slow.go.send(Duration::ZERO).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    for i in N1..N1 + N2 {
        switch(&mut ps[0], 100 + i as u64, i).unwrap();
    }
    // One writer thread serves every stream: the stuck FIFO of cpu 0 also
    // made cpu 1 drop.
    let dropped = [ps[0].stats().discarded, ps[1].stats().discarded];
    assert!(
        dropped[0] > 1000 && dropped[1] > 1000,
        "the test must drop events: {dropped:?}"
    );
    drop(ps);
    let report = w.finish().unwrap();
    assert_eq!(
        [report.per_cpu[0].discarded, report.per_cpu[1].discarded],
        dropped
    );
    let data = slow.reader.join().unwrap();

    // The last packet's running total is the whole count.
    let (packets, _) = ltt_writer::reader::decode_stream(
        &Catalog::kernel(&[]).unwrap(),
        HeaderKind::Compact,
        &data,
        "fifo",
    )
    .unwrap();
    assert_eq!(packets.last().unwrap().discarded, dropped[0]);
    assert!(packets
        .windows(2)
        .all(|w| w[0].discarded <= w[1].discarded && w[1].seq == w[0].seq + 1));

    let trace = materialise(dir.path(), 0, &data, 2);
    let read = bt2_read(trace.path());
    assert_eq!(
        read.discarded(),
        dropped[0] + dropped[1],
        "babeltrace2's discarded-events messages"
    );
    for (cpu, total) in [(0u64, N1 + N2), (1, N1)] {
        let got = seqs(&read.events_of_cpu(cpu));
        assert_eq!(
            got.len() as u64 + dropped[cpu as usize],
            total as u64,
            "cpu {cpu}"
        );
        // Each run of missing sequence numbers is one discarded-events
        // message of exactly that size, in order.
        let mut gaps = Vec::new();
        let mut prev = -1i64;
        for s in &got {
            if s - prev > 1 {
                gaps.push((s - prev - 1) as u64);
            }
            prev = *s;
        }
        if prev < (total - 1) as i64 {
            gaps.push((total - 1) as u64 - prev as u64);
        }
        let suffix = format!("channel0_{cpu}");
        let msgs: Vec<u64> = read
            .of_type("discarded")
            .iter()
            .filter(|r| r["stream"].as_str().unwrap().ends_with(&suffix))
            .map(|r| r["count"].as_u64().unwrap())
            .collect();
        assert_eq!(gaps, msgs, "cpu {cpu}");
    }
}

/// sched_switch events with small timestamps: the first of a packet has the
/// 13-byte escape header, the others the 4-byte compact one; with the
/// 24-byte context and 56-byte payload, a 4096-byte packet (84-byte header)
/// holds 1 + (4096 - 84 - 93) / 84 = 47 events.
const PER_PACKET: i64 = 1 + (4096 - 84 - (13 + 24 + 56)) / (4 + 24 + 56);

fn fr_cfg() -> TraceConfig {
    switch_catalog_cfg(
        1,
        Policy::FlightRecorder {
            bytes_per_cpu: 4 * 4096,
        },
    )
}

#[test]
fn flight_recorder_keeps_exactly_the_newest_window() {
    assert_eq!(PER_PACKET, 47);
    let dir = tmp();
    let (w, mut ps) = TraceWriter::create(dir.path(), fr_cfg()).unwrap();
    const N: i64 = 1000;
    for i in 0..N {
        switch(&mut ps[0], 10 + i as u64, i as i32).unwrap();
    }
    drop(ps);
    let report = w.finish().unwrap();
    // 21 full packets + 1 partial; the ring keeps the newest 4.
    let full = N / PER_PACKET;
    assert_eq!(report.packets_overwritten as i64, full + 1 - 4);
    let first = (full - 3) * PER_PACKET;
    let read = bt2_read(dir.path());
    assert!(read.stderr.trim().is_empty(), "{}", read.stderr);
    assert_eq!(seqs(&read.events()), (first..N).collect::<Vec<_>>());
    assert_cli_clean(dir.path(), (N - first) as usize);
}

fn wait_snapshots(h: &TriggerHandle, n: u64) {
    let t = Instant::now();
    while h.snapshots() < n {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "snapshot {n} not written"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn flight_recorder_trigger_writes_the_window_at_that_moment() {
    let dir = tmp();
    let (w, mut ps) = TraceWriter::create(dir.path(), fr_cfg()).unwrap();
    let h = w.trigger_handle();
    const N1: i64 = 500;
    for i in 0..N1 {
        switch(&mut ps[0], 10 + i as u64, i as i32).unwrap();
    }
    assert!(h.trigger());
    // The next event closes the partial packet (events up to N1 - 1).
    switch(&mut ps[0], 10 + N1 as u64, N1 as i32).unwrap();
    wait_snapshots(&h, 1);
    const N: i64 = 1000;
    for i in N1 + 1..N {
        switch(&mut ps[0], 10 + i as u64, i as i32).unwrap();
    }
    drop(ps);
    let report = w.finish().unwrap();
    assert_eq!(report.snapshots.len(), 1);
    let snap: PathBuf = report.snapshots[0].parent().unwrap().to_path_buf();
    assert_eq!(snap, dir.path().join("snapshot-0"));

    // Snapshot: 10 full packets + the closed partial one (470..499).
    let full = N1 / PER_PACKET;
    let first = (full - 3) * PER_PACKET;
    let read = bt2_read(&snap);
    assert!(read.stderr.trim().is_empty(), "{}", read.stderr);
    assert_eq!(seqs(&read.events()), (first..N1).collect::<Vec<_>>());
    assert_cli_clean(&snap, (N1 - first) as usize);

    // Final: packets restart at event N1; newest 4 of them.
    let after = N - N1;
    let full = after / PER_PACKET;
    let first = N1 + (full - 3) * PER_PACKET;
    let read = bt2_read(&dir.path().join("kernel"));
    assert_eq!(seqs(&read.events()), (first..N).collect::<Vec<_>>());
}

#[test]
fn flight_recorder_signal_flag_writes_a_snapshot() {
    let dir = tmp();
    let (w, mut ps) = TraceWriter::create(dir.path(), fr_cfg()).unwrap();
    let h = w.trigger_handle();
    let flag = h.signal_flag();
    for i in 0..300 {
        switch(&mut ps[0], 10 + i as u64, i).unwrap();
    }
    // What a SIGUSR1 handler does: one atomic store.
    flag.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut i = 300;
    let t = Instant::now();
    while h.snapshots() < 1 {
        assert!(t.elapsed() < Duration::from_secs(10), "no snapshot");
        switch(&mut ps[0], 10 + i as u64, i).unwrap();
        i += 1;
        std::thread::sleep(Duration::from_millis(1));
    }
    drop(ps);
    w.finish().unwrap();
    let snap = dir.path().join("snapshot-0");
    let read = bt2_read(&snap);
    assert!(read.stderr.trim().is_empty(), "{}", read.stderr);
    let got = seqs(&read.events());
    // A contiguous run of the newest events, at most 4 packets.
    assert!(!got.is_empty() && got.len() as i64 <= 4 * PER_PACKET);
    assert!(got.windows(2).all(|w| w[1] == w[0] + 1));
    assert!(*got.last().unwrap() >= 299 && *got.last().unwrap() < i as i64);
    assert_cli_clean(&snap, got.len());
}
