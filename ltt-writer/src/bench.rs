//! Throughput benchmark, measured side by side with plain baselines in the
//! same run (absolute times are not stable on shared machines):
//! - producer: `sched_switch` events into packets (flight-recorder mode, so
//!   no I/O) against a plain `memcpy` of the same record size;
//! - end to end: lossless trace to disk (until `finish`) against a plain
//!   sequential `write` of the same number of bytes in packet-size chunks.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::catalog::Catalog;
use crate::kernel::TaskRef;
use crate::producer::TaskCtx;
use crate::writer::{Policy, TraceConfig, TraceWriter, WriteError};

/// Errors of the benchmark.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error(transparent)]
    Write(#[from] WriteError),
    #[error("benchmark I/O in {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("event rejected: {0}")]
    Produce(#[from] crate::producer::ProduceError),
}

/// Benchmark parameters.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    /// Events for the producer measurement.
    pub producer_events: u64,
    /// Events for the end-to-end measurement.
    pub disk_events: u64,
    /// Bytes for the writer measurement with 16 KiB events.
    pub bulk_bytes: u64,
    /// Folder for the temporary traces (removed afterwards).
    pub dir: PathBuf,
    pub packet_size: usize,
    /// Repetitions; the best of each measurement is kept.
    pub rounds: u32,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            producer_events: 5_000_000,
            disk_events: 2_000_000,
            bulk_bytes: 256 << 20,
            dir: std::env::temp_dir(),
            packet_size: 256 * 1024,
            rounds: 5,
        }
    }
}

/// Results; rates are per second.
#[derive(Clone, Debug, Default)]
pub struct BenchReport {
    /// Bytes of one benchmark event (header + context + payload).
    pub event_bytes: usize,
    pub producer_ns_per_event: f64,
    /// syscall_entry_read / syscall_exit_read pairs (generic field path).
    pub syscall_ns_per_event: f64,
    pub memcpy_ns_per_event: f64,
    pub disk_events_per_s: f64,
    pub disk_bytes_per_s: f64,
    pub seq_write_bytes_per_s: f64,
    /// Sequential write from 8 rotating buffers (like the writer's pool).
    pub seq_write_pool_bytes_per_s: f64,
    /// Writer throughput with 16 KiB events (producer cost negligible).
    pub bulk_bytes_per_s: f64,
    /// Bytes per second of the writer thread while it writes (time in
    /// `write` and packet handling only).
    pub writer_busy_bytes_per_s: f64,
}

impl BenchReport {
    pub fn producer_events_per_s(&self) -> f64 {
        1e9 / self.producer_ns_per_event
    }
    /// memcpy time / producer time (1.0 = as fast as memcpy).
    pub fn producer_ratio(&self) -> f64 {
        self.memcpy_ns_per_event / self.producer_ns_per_event
    }
    /// Trace bytes per second / sequential-write bytes per second.
    pub fn disk_ratio(&self) -> f64 {
        self.disk_bytes_per_s / self.seq_write_bytes_per_s
    }
    /// Writer (bulk events) bytes per second / sequential-write bytes per second.
    pub fn bulk_ratio(&self) -> f64 {
        self.bulk_bytes_per_s / self.seq_write_bytes_per_s
    }
}

impl std::fmt::Display for BenchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "event size: {} bytes (sched_switch, compact header)",
            self.event_bytes
        )?;
        writeln!(
            f,
            "producer -> buffers, syscall entry/exit (3 args): {:.1} ns/event",
            self.syscall_ns_per_event
        )?;
        writeln!(
            f,
            "producer -> buffers: {:.1} ns/event, {:.2} M events/s; memcpy baseline {:.1} ns/event; ratio memcpy/producer = {:.2} (goal: < 50 ns/event)",
            self.producer_ns_per_event,
            self.producer_events_per_s() / 1e6,
            self.memcpy_ns_per_event,
            self.producer_ratio()
        )?;
        writeln!(
            f,
            "sequential write baseline: {:.0} MB/s from one cache-hot buffer, {:.0} MB/s from 8 rotating buffers",
            self.seq_write_bytes_per_s / 1e6,
            self.seq_write_pool_bytes_per_s / 1e6
        )?;
        writeln!(
            f,
            "end to end -> disk, sched_switch events, 1 producer: {:.2} M events/s, {:.0} MB/s; ratio to sequential write = {:.2}",
            self.disk_events_per_s / 1e6,
            self.disk_bytes_per_s / 1e6,
            self.disk_ratio()
        )?;
        write!(
            f,
            "end to end -> disk, 16 KiB events (producer + writer threads): {:.0} MB/s; ratio to sequential write = {:.2} (hot buffer), {:.2} (rotating buffers) (goal: >= 0.80)",
            self.bulk_bytes_per_s / 1e6,
            self.bulk_ratio(),
            self.bulk_bytes_per_s / self.seq_write_pool_bytes_per_s
        )?;
        writeln!(f)?;
        write!(
            f,
            "writer thread while busy (16 KiB events): {:.0} MB/s; ratio to sequential write = {:.2} (hot buffer)",
            self.writer_busy_bytes_per_s / 1e6,
            self.writer_busy_bytes_per_s / self.seq_write_bytes_per_s
        )
    }
}

const PREV: TaskRef<'static> = TaskRef {
    comm: b"bench-prev\0\0\0\0\0\0",
    tid: 101,
    prio: 20,
};
const NEXT: TaskRef<'static> = TaskRef {
    comm: b"bench-next\0\0\0\0\0\0",
    tid: 102,
    prio: 20,
};

fn emit_switches(p: &mut crate::producer::Producer, n: u64) -> Result<(), BenchError> {
    let ctx = TaskCtx::new(100, 101, b"bench");
    for i in 0..n {
        p.sched_switch(i * 100, &ctx, PREV, (i & 1) as i64, NEXT)?;
    }
    Ok(())
}

fn read_syscall() -> crate::catalog::SyscallDecl {
    use crate::catalog::{ArgDir, ArgKind, SyscallArg, SyscallDecl};
    let a = |name: &str, kind, dir| SyscallArg {
        name: name.into(),
        kind,
        dir,
    };
    SyscallDecl {
        nr: 0,
        name: "read".into(),
        args: vec![
            a("fd", ArgKind::Unsigned(32), ArgDir::In),
            a("buf", ArgKind::Pointer, ArgDir::Out),
            a("count", ArgKind::Unsigned(64), ArgDir::In),
        ],
    }
}

fn emit_syscalls(p: &mut crate::producer::Producer, n: u64) -> Result<(), BenchError> {
    use crate::producer::Value;
    let ctx = TaskCtx::new(100, 101, b"bench");
    for i in 0..n / 2 {
        let args = [Value::U(3), Value::U(0x7fff_0000), Value::U(i)];
        p.syscall_entry(i * 100, &ctx, 0, &args)?;
        p.syscall_exit(i * 100 + 50, &ctx, 0, 12, &args)?;
    }
    Ok(())
}

fn producer_once(o: &BenchOptions, dir: &Path, syscalls: bool) -> Result<Duration, BenchError> {
    let catalog =
        Catalog::kernel(&[read_syscall()]).map_err(|e| WriteError::Config(e.to_string()))?;
    let mut cfg = TraceConfig::new(1, catalog);
    cfg.packet_size = o.packet_size;
    cfg.policy = Policy::FlightRecorder {
        bytes_per_cpu: 4 * o.packet_size,
    };
    let (w, mut ps) = TraceWriter::create(dir, cfg)?;
    let mut p = ps
        .pop()
        .ok_or_else(|| WriteError::Config("no producer".into()))?;
    let emit = if syscalls {
        emit_syscalls
    } else {
        emit_switches
    };
    emit(&mut p, 10_000)?; // warm up
    let t = Instant::now();
    emit(&mut p, o.producer_events)?;
    let d = t.elapsed();
    drop(p);
    w.finish()?;
    Ok(d)
}

fn memcpy_once(n: u64, event_bytes: usize, packet: usize) -> Duration {
    let rec = vec![0x5au8; event_bytes];
    let mut buf = vec![0u8; packet];
    let t = Instant::now();
    let mut pos = 0;
    for i in 0..n {
        if pos + event_bytes > packet {
            std::hint::black_box(&mut buf);
            pos = 0;
        }
        let r = std::hint::black_box(&rec[..]);
        buf[pos..pos + event_bytes].copy_from_slice(r);
        buf[pos] = i as u8;
        pos += event_bytes;
    }
    std::hint::black_box(&buf);
    t.elapsed()
}

fn disk_once(o: &BenchOptions, dir: &Path) -> Result<(Duration, u64), BenchError> {
    let mut cfg = TraceConfig::new(
        1,
        Catalog::kernel(&[]).map_err(|e| WriteError::Config(e.to_string()))?,
    );
    cfg.packet_size = o.packet_size;
    let t = Instant::now();
    let (w, mut ps) = TraceWriter::create(dir, cfg)?;
    let mut p = ps
        .pop()
        .ok_or_else(|| WriteError::Config("no producer".into()))?;
    emit_switches(&mut p, o.disk_events)?;
    drop(p);
    let r = w.finish()?;
    Ok((t.elapsed(), r.bytes_written))
}

fn bulk_once(o: &BenchOptions, dir: &Path) -> Result<(Duration, u64, Duration), BenchError> {
    let mut catalog = Catalog::new();
    let blob = crate::catalog::FieldDecl::new(
        "blob",
        crate::catalog::FieldType::Text { len: BULK as u16 },
    );
    let id = catalog
        .add_event("bench_bulk", vec![blob])
        .map_err(|e| WriteError::Config(e.to_string()))?;
    let mut cfg = TraceConfig::new(1, catalog);
    cfg.packet_size = o.packet_size;
    let data = vec![b'x'; BULK - 1];
    let ctx = TaskCtx::new(100, 101, b"bench");
    let n = o.bulk_bytes / BULK as u64;
    let t = Instant::now();
    let (w, mut ps) = TraceWriter::create(dir, cfg)?;
    let mut p = ps
        .pop()
        .ok_or_else(|| WriteError::Config("no producer".into()))?;
    for i in 0..n {
        if let Some(mut f) = p.reserve(id, i * 1000, &ctx, BULK)? {
            f.text(&data, BULK);
        }
    }
    drop(p);
    let r = w.finish()?;
    Ok((t.elapsed(), r.bytes_written, r.write_time))
}

const BULK: usize = 16 * 1024;

/// Write `bytes` sequentially in `chunk`-sized writes, cycling through
/// `nbuf` source buffers (1 = the same cache-hot buffer every time; the
/// writer's pool has `packets_per_cpu` buffers).
fn seq_write_once(
    path: &Path,
    bytes: u64,
    chunk: usize,
    nbuf: usize,
) -> Result<Duration, BenchError> {
    let io = |source| BenchError::Io {
        path: path.to_path_buf(),
        source,
    };
    let bufs: Vec<Vec<u8>> = (0..nbuf).map(|i| vec![0x5a ^ i as u8; chunk]).collect();
    let t = Instant::now();
    let mut f = File::create(path).map_err(io)?;
    let mut left = bytes;
    let mut i = 0;
    while left > 0 {
        f.write_all(&bufs[i % nbuf]).map_err(io)?;
        i += 1;
        left = left.saturating_sub(chunk as u64);
    }
    f.flush().map_err(io)?;
    drop(f);
    Ok(t.elapsed())
}

/// Run the benchmark.
pub fn run(o: &BenchOptions) -> Result<BenchReport, BenchError> {
    let root = o
        .dir
        .join(format!("ltt-writer-bench-{}", std::process::id()));
    let io = |source| BenchError::Io {
        path: root.clone(),
        source,
    };
    std::fs::create_dir_all(&root).map_err(io)?;
    // Compact header (4) + context (24) + sched_switch payload (56).
    let event_bytes = 4 + 24 + 56;
    let mut best = BenchReport {
        event_bytes,
        ..Default::default()
    };
    let mut sys = f64::MAX;
    let mut writer_busy = 0f64;
    let (mut prod, mut mem, mut disk, mut seq, mut seq_pool, mut bulk) =
        (f64::MAX, f64::MAX, 0f64, 0f64, 0f64, 0f64);
    for round in 0..o.rounds.max(1) {
        let d = producer_once(o, &root.join(format!("p{round}")), false)?;
        prod = prod.min(d.as_nanos() as f64 / o.producer_events as f64);
        let _ = std::fs::remove_dir_all(root.join(format!("p{round}")));
        let d = producer_once(o, &root.join(format!("p{round}")), true)?;
        sys = sys.min(d.as_nanos() as f64 / o.producer_events as f64);
        let m = memcpy_once(o.producer_events, event_bytes, o.packet_size);
        mem = mem.min(m.as_nanos() as f64 / o.producer_events as f64);
        let (d, bytes) = disk_once(o, &root.join(format!("d{round}")))?;
        let rate = bytes as f64 / d.as_secs_f64();
        if rate > disk {
            disk = rate;
            best.disk_events_per_s = o.disk_events as f64 / d.as_secs_f64();
        }
        let seq_path = root.join(format!("seq{round}"));
        let s = seq_write_once(&seq_path, bytes, o.packet_size, 1)?;
        seq = seq.max(bytes as f64 / s.as_secs_f64());
        let _ = std::fs::remove_file(&seq_path);
        let s = seq_write_once(&seq_path, bytes, o.packet_size, 8)?;
        seq_pool = seq_pool.max(bytes as f64 / s.as_secs_f64());
        let (d, bytes, busy) = bulk_once(o, &root.join(format!("b{round}")))?;
        bulk = bulk.max(bytes as f64 / d.as_secs_f64());
        writer_busy = writer_busy.max(bytes as f64 / busy.as_secs_f64());
        let _ = std::fs::remove_dir_all(root.join(format!("b{round}")));
        let _ = std::fs::remove_dir_all(root.join(format!("p{round}")));
        let _ = std::fs::remove_dir_all(root.join(format!("d{round}")));
        let _ = std::fs::remove_file(root.join(format!("seq{round}")));
    }
    let _ = std::fs::remove_dir_all(&root);
    best.producer_ns_per_event = prod;
    best.syscall_ns_per_event = sys;
    best.writer_busy_bytes_per_s = writer_busy;
    best.memcpy_ns_per_event = mem;
    best.disk_bytes_per_s = disk;
    best.seq_write_bytes_per_s = seq;
    best.bulk_bytes_per_s = bulk;
    best.seq_write_pool_bytes_per_s = seq_pool;
    Ok(best)
}
