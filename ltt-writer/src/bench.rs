//! Throughput benchmark, measured side by side with plain baselines in the
//! same run (absolute times are not stable on shared machines). Each figure
//! is given in wall time and in thread CPU time (the latter ignores the
//! time a thread waited for a core, which dominates on a loaded machine).
//! - producer: `sched_switch` and syscall events into packets
//!   (flight-recorder mode, so no I/O) against a plain `memcpy` of the same
//!   record size;
//! - writer: a lossless trace of 16 KiB events to disk, the writer thread's
//!   bytes per CPU second against a plain sequential `write` loop's;
//! - end to end: a lossless trace of `sched_switch` events to disk (one
//!   producer, until `finish`).

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::catalog::{ArgDir, ArgKind, Catalog, FieldDecl, FieldType, SyscallArg, SyscallDecl};
use crate::kernel::TaskRef;
use crate::producer::{Producer, TaskCtx, Value};
use crate::writer::{Policy, TraceConfig, TraceReport, TraceWriter, WriteError};

/// Errors of the benchmark.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error(transparent)]
    Write(#[from] WriteError),
    #[error("benchmark I/O in {path}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("event rejected")]
    Produce(#[from] crate::producer::ProduceError),
    #[error("benchmark catalog")]
    Catalog(#[from] crate::catalog::CatalogError),
}

/// Benchmark parameters.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    /// Events for each producer measurement.
    pub producer_events: u64,
    /// Events for the end-to-end measurement.
    pub disk_events: u64,
    /// Bytes for the writer measurement (16 KiB events).
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
            producer_events: 4_000_000,
            disk_events: 2_000_000,
            bulk_bytes: 256 << 20,
            dir: std::env::temp_dir(),
            packet_size: 256 * 1024,
            rounds: 5,
        }
    }
}

pub use crate::clock::thread_cpu_time;

/// Wall and thread-CPU time of one measurement.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Spent {
    pub wall: Duration,
    pub cpu: Duration,
}

impl Spent {
    fn best(self, o: Spent) -> Spent {
        Spent {
            wall: if self.wall.is_zero() {
                o.wall
            } else {
                self.wall.min(o.wall)
            },
            cpu: if self.cpu.is_zero() {
                o.cpu
            } else {
                self.cpu.min(o.cpu)
            },
        }
    }
    /// Nanoseconds per item, (wall, cpu).
    fn per(&self, n: u64) -> (f64, f64) {
        (
            self.wall.as_nanos() as f64 / n as f64,
            self.cpu.as_nanos() as f64 / n as f64,
        )
    }
    /// Items per second, (wall, cpu).
    fn rate(&self, n: u64) -> (f64, f64) {
        (
            n as f64 / self.wall.as_secs_f64(),
            n as f64 / self.cpu.as_secs_f64(),
        )
    }
}

fn measure<T>(f: impl FnOnce() -> T) -> (T, Spent) {
    let (w, c) = (Instant::now(), thread_cpu_time());
    let r = f();
    (
        r,
        Spent {
            wall: w.elapsed(),
            cpu: thread_cpu_time().saturating_sub(c),
        },
    )
}

/// Results: best of the rounds for each measurement.
#[derive(Clone, Debug, Default)]
pub struct BenchReport {
    pub producer_events: u64,
    pub disk_events: u64,
    /// Bytes of one `sched_switch` event (compact header + context + payload).
    pub event_bytes: usize,
    pub switch: Spent,
    pub syscall: Spent,
    pub memcpy: Spent,
    /// Sequential write of `bulk_bytes` from one cache-hot buffer.
    pub seq_write: Spent,
    pub bulk_bytes: u64,
    /// Lossless trace of 16 KiB events: wall time of the run and CPU time
    /// of the writer thread.
    pub bulk: Spent,
    /// Lossless trace of `sched_switch` events: wall time until `finish`.
    pub disk: Spent,
    pub disk_bytes: u64,
}

impl BenchReport {
    /// Producer ns per `sched_switch` event (wall, cpu).
    pub fn producer_ns(&self) -> (f64, f64) {
        self.switch.per(self.producer_events)
    }
    /// Writer thread bytes per CPU second / sequential-write loop bytes per
    /// CPU second.
    pub fn writer_cpu_ratio(&self) -> f64 {
        self.bulk.rate(self.bulk_bytes).1 / self.seq_write.rate(self.bulk_bytes).1
    }
    /// Whole 16 KiB-event trace bytes per wall second / sequential write's.
    pub fn writer_wall_ratio(&self) -> f64 {
        self.bulk.rate(self.bulk_bytes).0 / self.seq_write.rate(self.bulk_bytes).0
    }
}

impl std::fmt::Display for BenchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.producer_events;
        let (sw, sc) = self.switch.per(n);
        let (yw, yc) = self.syscall.per(n);
        let (mw, mc) = self.memcpy.per(n);
        writeln!(
            f,
            "figures: best of the rounds; wall time | thread CPU time"
        )?;
        writeln!(
            f,
            "producer, sched_switch ({} B/event): {sw:.1} | {sc:.1} ns/event = {:.1} | {:.1} M events/s (goal < 50 ns)",
            self.event_bytes,
            1e3 / sw,
            1e3 / sc
        )?;
        writeln!(
            f,
            "producer, syscall entry/exit (3 args): {yw:.1} | {yc:.1} ns/event"
        )?;
        writeln!(
            f,
            "memcpy baseline, same record size: {mw:.1} | {mc:.1} ns/event; memcpy/producer = {:.2} | {:.2}",
            mw / sw,
            mc / sc
        )?;
        let mb = |r: f64| r / 1e6;
        let (qw, qc) = self.seq_write.rate(self.bulk_bytes);
        let (bw, bc) = self.bulk.rate(self.bulk_bytes);
        writeln!(
            f,
            "sequential write baseline ({} MiB, 256 KiB writes): {:.0} MB/s | {:.0} MB per CPU-s",
            self.bulk_bytes >> 20,
            mb(qw),
            mb(qc)
        )?;
        writeln!(
            f,
            "writer, 16 KiB events: {:.0} MB/s end to end | writer thread {:.0} MB per CPU-s; ratio to sequential write = {:.2} | {:.2} (goal >= 0.80)",
            mb(bw),
            mb(bc),
            self.writer_wall_ratio(),
            self.writer_cpu_ratio()
        )?;
        let (dw, _) = self.disk.rate(self.disk_bytes);
        write!(
            f,
            "end to end, sched_switch, 1 producer: {:.2} M events/s, {:.0} MB/s wall ({:.2} of sequential write)",
            self.disk_events as f64 / self.disk.wall.as_secs_f64() / 1e6,
            mb(dw),
            dw / qw
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
const BULK: usize = 16 * 1024;

fn emit_switches(p: &mut Producer, n: u64) -> Result<(), BenchError> {
    let ctx = TaskCtx::new(100, 101, b"bench");
    for i in 0..n {
        p.sched_switch(i * 100, &ctx, PREV, (i & 1) as i64, NEXT)?;
    }
    Ok(())
}

fn emit_syscalls(p: &mut Producer, n: u64) -> Result<(), BenchError> {
    let ctx = TaskCtx::new(100, 101, b"bench");
    for i in 0..n / 2 {
        let args = [Value::U(3), Value::U(0x7fff_0000), Value::U(i)];
        p.syscall_entry(i * 100, &ctx, 0, &args)?;
        p.syscall_exit(i * 100 + 50, &ctx, 0, 12, &args)?;
    }
    Ok(())
}

fn read_syscall() -> SyscallDecl {
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

fn one_producer(
    dir: &Path,
    mut cfg: TraceConfig,
    o: &BenchOptions,
) -> Result<(TraceWriter, Producer), BenchError> {
    cfg.packet_size = o.packet_size;
    let (w, mut ps) = TraceWriter::create(dir, cfg)?;
    let p = ps
        .pop()
        .ok_or_else(|| WriteError::Config("no producer".into()))?;
    Ok((w, p))
}

type Emit = fn(&mut Producer, u64) -> Result<(), BenchError>;

fn producer_once(o: &BenchOptions, dir: &Path, emit: Emit) -> Result<Spent, BenchError> {
    let mut cfg = TraceConfig::new(1, Catalog::kernel(&[read_syscall()])?);
    cfg.policy = Policy::FlightRecorder {
        bytes_per_cpu: 4 * o.packet_size,
    };
    let (w, mut p) = one_producer(dir, cfg, o)?;
    emit(&mut p, 10_000)?; // warm up
    let (r, spent) = measure(|| emit(&mut p, o.producer_events));
    r?;
    drop(p);
    w.finish()?;
    Ok(spent)
}

fn memcpy_once(n: u64, event_bytes: usize, packet: usize) -> Spent {
    let rec = vec![0x5au8; event_bytes];
    let mut buf = vec![0u8; packet];
    let ((), spent) = measure(|| {
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
    });
    std::hint::black_box(&buf);
    spent
}

fn disk_once(o: &BenchOptions, dir: &Path) -> Result<(Spent, TraceReport), BenchError> {
    let cfg = TraceConfig::new(1, Catalog::kernel(&[])?);
    let (r, spent) = measure(|| -> Result<TraceReport, BenchError> {
        let (w, mut p) = one_producer(dir, cfg, o)?;
        emit_switches(&mut p, o.disk_events)?;
        drop(p);
        Ok(w.finish()?)
    });
    Ok((spent, r?))
}

/// Wall time of the whole run, CPU time of the writer thread.
fn bulk_once(o: &BenchOptions, dir: &Path) -> Result<(Spent, u64), BenchError> {
    let mut catalog = Catalog::new();
    let id = catalog.add_event(
        "bench_bulk",
        vec![FieldDecl::new("blob", FieldType::Text { len: BULK as u16 })],
    )?;
    let data = vec![b'x'; BULK - 1];
    let ctx = TaskCtx::new(100, 101, b"bench");
    let n = o.bulk_bytes / BULK as u64;
    let (r, spent) = measure(|| -> Result<TraceReport, BenchError> {
        let (w, mut p) = one_producer(dir, TraceConfig::new(1, catalog), o)?;
        for i in 0..n {
            if let Some(mut f) = p.reserve(id, i * 1000, &ctx, BULK)? {
                f.text(&data, BULK);
            }
        }
        drop(p);
        Ok(w.finish()?)
    });
    let r = r?;
    Ok((
        Spent {
            wall: spent.wall,
            cpu: r.writer_cpu_time,
        },
        r.bytes_written,
    ))
}

/// Write `bytes` sequentially in `chunk`-sized writes of one buffer.
fn seq_write_once(path: &Path, bytes: u64, chunk: usize) -> Result<Spent, BenchError> {
    let io = |source| BenchError::Io {
        path: path.to_path_buf(),
        source,
    };
    let buf = vec![0x5au8; chunk];
    let (r, spent) = measure(|| -> std::io::Result<()> {
        let mut f = File::create(path)?;
        let mut left = bytes;
        while left > 0 {
            f.write_all(&buf)?;
            left = left.saturating_sub(chunk as u64);
        }
        f.flush()
    });
    r.map_err(io)?;
    Ok(spent)
}

/// Run the benchmark.
pub fn run(o: &BenchOptions) -> Result<BenchReport, BenchError> {
    let root = o
        .dir
        .join(format!("ltt-writer-bench-{}", std::process::id()));
    std::fs::create_dir_all(&root).map_err(|source| BenchError::Io {
        path: root.clone(),
        source,
    })?;
    let mut b = BenchReport {
        producer_events: o.producer_events,
        disk_events: o.disk_events,
        // Compact header (4) + context (24) + sched_switch payload (56).
        event_bytes: 4 + 24 + 56,
        ..Default::default()
    };
    let result = (|| -> Result<(), BenchError> {
        for round in 0..o.rounds.max(1) {
            let d = root.join(format!("r{round}"));
            b.switch = b
                .switch
                .best(producer_once(o, &d.join("p"), emit_switches)?);
            b.syscall = b
                .syscall
                .best(producer_once(o, &d.join("s"), emit_syscalls)?);
            b.memcpy = b
                .memcpy
                .best(memcpy_once(o.producer_events, b.event_bytes, o.packet_size));
            let (bulk, bytes) = bulk_once(o, &d.join("b"))?;
            b.bulk = b.bulk.best(bulk);
            b.bulk_bytes = bytes;
            let _ = std::fs::remove_dir_all(d.join("b"));
            b.seq_write = b
                .seq_write
                .best(seq_write_once(&d.join("seq"), bytes, o.packet_size)?);
            let _ = std::fs::remove_file(d.join("seq"));
            let (disk, r) = disk_once(o, &d.join("d"))?;
            b.disk = b.disk.best(disk);
            b.disk_bytes = r.bytes_written;
            let _ = std::fs::remove_dir_all(&d);
        }
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&root);
    result.map(|()| b)
}
