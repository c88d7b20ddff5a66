//! The trace writer: creates the output, hands out one producer per vCPU and
//! runs the thread that writes full packets (or keeps them in the flight
//! recorder ring) and returns empty ones.

use std::collections::VecDeque;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender};

use crate::catalog::Catalog;
use crate::discards::DiscardCounts;
use crate::live::Live;
use crate::metadata::{self, HeaderKind, MetadataError, MetadataParams, TraceEnv};
use crate::packet::{check_packet_size, PacketError};
use crate::producer::{Mode, Msg, Producer, ProducerInit, ProducerShared, ProducerStats};
use crate::relayd::RelaydConfig;
pub use crate::trace_report::TraceReport;

/// Errors of the writer.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("cannot create trace folder {path}")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot create {path}")]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("writing {path} failed after {written} bytes, {lost} packet(s) not written (the trace up to there is readable)")]
    Write {
        path: PathBuf,
        written: u64,
        lost: u64,
        source: std::io::Error,
    },
    #[error(transparent)]
    Metadata(#[from] MetadataError),
    #[error(transparent)]
    Packet(#[from] PacketError),
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("cannot start the writer thread: {0}")]
    Spawn(std::io::Error),
    #[error("the writer thread panicked")]
    Panicked,
}

/// Buffering policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    /// A producer with no free packet waits: nothing is ever dropped.
    Lossless,
    /// A producer with no free packet drops the event and counts it.
    Discard,
    /// Keep the newest `bytes_per_cpu` per vCPU in memory (whole packets),
    /// overwriting the oldest; written on trigger and at finish.
    FlightRecorder { bytes_per_cpu: usize },
}

/// Everything a trace needs to start.
#[derive(Clone, Debug)]
pub struct TraceConfig {
    pub ncpus: u32,
    pub policy: Policy,
    /// Bytes per packet (sub-buffer); multiple of 8, at least 4 KiB.
    pub packet_size: usize,
    /// Packets per vCPU in the lossless and discard pools.
    pub packets_per_cpu: usize,
    pub header: HeaderKind,
    pub env: TraceEnv,
    /// Nanoseconds from the Epoch at which event timestamps are 0.
    pub clock_offset_ns: u64,
    pub catalog: Catalog,
    /// How long a trigger waits for producers to close their partial packet.
    pub trigger_grace: Duration,
    /// Also stream the trace to an lttng-relayd (live), or send the
    /// flight recorder's snapshots there.
    pub relayd: Option<RelaydConfig>,
}

impl TraceConfig {
    /// Lossless, 256 KiB packets, 8 per vCPU, compact headers.
    pub fn new(ncpus: u32, catalog: Catalog) -> Self {
        TraceConfig {
            ncpus,
            policy: Policy::Lossless,
            packet_size: 256 * 1024,
            packets_per_cpu: 8,
            header: HeaderKind::Compact,
            env: TraceEnv::default(),
            clock_offset_ns: 0,
            catalog,
            trigger_grace: Duration::from_millis(100),
            relayd: None,
        }
    }
}

struct Shared {
    flags: Vec<Arc<ProducerShared>>,
    failed: AtomicBool,
    /// Last flush generation requested.
    gen: AtomicU64,
    /// Snapshots written so far.
    snapshots: AtomicU64,
    /// Set from a signal handler to request a snapshot.
    signal: Arc<AtomicBool>,
}

impl Shared {
    /// Ask every producer to close its partial packet at its next event;
    /// returns the generation producers acknowledge.
    fn request_flush(&self) -> u64 {
        let g = self.gen.fetch_add(1, Ordering::Relaxed) + 1;
        for f in &self.flags {
            f.flush_gen.fetch_max(g, Ordering::Relaxed);
        }
        g
    }
}

/// How often a flight recorder polls [`TriggerHandle::signal_flag`].
pub const SIGNAL_POLL: Duration = Duration::from_millis(50);

/// Thread-safe, cloneable handle that asks a flight recorder to write its
/// window (e.g. from a SIGUSR1 watcher thread or a guest-panic probe).
#[derive(Clone)]
pub struct TriggerHandle {
    tx: Sender<Msg>,
    shared: Arc<Shared>,
}

impl TriggerHandle {
    /// Request a snapshot; returns false if the writer is gone or busy.
    /// Never blocks.
    pub fn trigger(&self) -> bool {
        let gen = self.shared.request_flush();
        self.tx.try_send(Msg::Trigger { gen }).is_ok()
    }

    /// A flag that an async signal handler (e.g. SIGUSR1) may set with a
    /// plain atomic store, which is async-signal-safe: the writer polls it
    /// every [`SIGNAL_POLL`] and then acts as for [`TriggerHandle::trigger`].
    pub fn signal_flag(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.shared.signal)
    }

    /// Number of snapshots written so far.
    pub fn snapshots(&self) -> u64 {
        self.shared.snapshots.load(Ordering::Acquire)
    }
}

/// Owner of a trace being written.
pub struct TraceWriter {
    tx: Sender<Msg>,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<Result<TraceReport, WriteError>>>,
}

struct Out {
    dir: PathBuf,
    metadata: String,
}

fn create_stream_files(
    dir: &Path,
    metadata: &str,
    ncpus: u32,
) -> Result<Vec<(PathBuf, File)>, WriteError> {
    std::fs::create_dir_all(dir).map_err(|source| WriteError::CreateDir {
        path: dir.to_path_buf(),
        source,
    })?;
    let mp = dir.join("metadata");
    std::fs::write(&mp, metadata).map_err(|source| WriteError::Create { path: mp, source })?;
    (0..ncpus)
        .map(|c| {
            let p = dir.join(format!("channel0_{c}"));
            File::create(&p)
                .map(|f| (p.clone(), f))
                .map_err(|source| WriteError::Create { path: p, source })
        })
        .collect()
}

impl TraceWriter {
    /// Create `<out_dir>/kernel/` with its metadata and stream files, start
    /// the writer thread, and return one producer per vCPU (index = cpu).
    pub fn create(
        out_dir: &Path,
        cfg: TraceConfig,
    ) -> Result<(TraceWriter, Vec<Producer>), WriteError> {
        check_packet_size(cfg.packet_size)?;
        if cfg.ncpus == 0 {
            return Err(WriteError::Config("ncpus must be at least 1".into()));
        }
        let (mode, pool) = match cfg.policy {
            Policy::Lossless => (Mode::Block, cfg.packets_per_cpu.max(2)),
            Policy::Discard => (Mode::Drop, cfg.packets_per_cpu.max(2)),
            Policy::FlightRecorder { bytes_per_cpu } => {
                (Mode::Block, (bytes_per_cpu / cfg.packet_size).max(1) + 2)
            }
        };
        let uuid = metadata::new_uuid();
        let md = metadata::generate(&MetadataParams {
            catalog: &cfg.catalog,
            env: &cfg.env,
            uuid,
            clock_uuid: metadata::new_uuid(),
            clock_offset_ns: cfg.clock_offset_ns,
            header: cfg.header,
        })?;
        let dir = out_dir.join("kernel");
        let files = create_stream_files(&dir, &md, cfg.ncpus)?;
        let n = cfg.ncpus as usize;
        let (tx, rx) = bounded::<Msg>(pool * n + 4 * n + 64);
        let catalog = Arc::new(cfg.catalog.clone());
        let mut producers = Vec::with_capacity(n);
        let mut empties = Vec::with_capacity(n);
        let mut flags = Vec::with_capacity(n);
        for cpu in 0..cfg.ncpus {
            let (etx, erx) = bounded::<Box<[u8]>>(pool);
            for _ in 0..pool {
                let _ = etx.send(vec![0u8; cfg.packet_size].into_boxed_slice());
            }
            let shared = Arc::new(ProducerShared {
                flush_gen: AtomicU64::new(0),
            });
            flags.push(Arc::clone(&shared));
            empties.push(etx);
            producers.push(Producer::new(ProducerInit {
                cpu,
                size: cfg.packet_size,
                mode,
                header: cfg.header,
                uuid,
                tx: tx.clone(),
                empty: erx,
                shared,
                catalog: Arc::clone(&catalog),
            }));
        }
        let shared = Arc::new(Shared {
            flags,
            failed: AtomicBool::new(false),
            gen: AtomicU64::new(0),
            snapshots: AtomicU64::new(0),
            signal: Arc::new(AtomicBool::new(false)),
        });
        let ring = match cfg.policy {
            Policy::FlightRecorder { bytes_per_cpu } => {
                Some((bytes_per_cpu / cfg.packet_size).max(1))
            }
            _ => None,
        };
        let live = cfg.relayd.clone().map(|mut r| {
            if r.queue_packets == 0 {
                r.queue_packets = pool * n;
            }
            Live::start(r, &md, cfg.ncpus, ring.is_none())
        });
        let st = WriterThread {
            live,
            rx,
            empties,
            files: if ring.is_some() { Vec::new() } else { files },
            written: vec![0; n],
            ring_cap: ring.unwrap_or(0),
            rings: (0..n).map(|_| VecDeque::new()).collect(),
            out: Out {
                dir: out_dir.to_path_buf(),
                metadata: md,
            },
            shared: Arc::clone(&shared),
            report: TraceReport {
                trace_dir: dir,
                per_cpu: vec![ProducerStats::default(); n],
                discards: vec![DiscardCounts::default(); n],
                catalog: Arc::clone(&catalog),
                ..Default::default()
            },
            alive: vec![true; n],
            acked: vec![0; n],
            error: None,
            lost: 0,
            grace: cfg.trigger_grace,
        };
        let thread = std::thread::Builder::new()
            .name("ltt-writer".into())
            .spawn(move || st.run())
            .map_err(WriteError::Spawn)?;
        Ok((
            TraceWriter {
                tx,
                shared,
                thread: Some(thread),
            },
            producers,
        ))
    }

    /// A handle for flight-recorder triggers (no effect in other modes).
    pub fn trigger_handle(&self) -> TriggerHandle {
        TriggerHandle {
            tx: self.tx.clone(),
            shared: Arc::clone(&self.shared),
        }
    }

    /// Ask every producer to close its partial packet at its next event.
    pub fn request_flush(&self) {
        self.shared.request_flush();
    }

    /// True once a write failed (disk full, I/O error): the CLI may stop.
    pub fn failed(&self) -> bool {
        self.shared.failed.load(Ordering::Relaxed)
    }

    /// Wait until every producer is dropped (each closes its last partial
    /// packet), write everything, and report.
    pub fn finish(mut self) -> Result<TraceReport, WriteError> {
        self.finish_inner(None)
    }

    /// Like [`TraceWriter::finish`], but stop waiting for live producers
    /// after `timeout` (their unsent partial packets are lost and listed in
    /// [`TraceReport::unclosed`]); everything already handed over is written.
    pub fn finish_timeout(mut self, timeout: Duration) -> Result<TraceReport, WriteError> {
        self.finish_inner(Some(Instant::now() + timeout))
    }

    fn finish_inner(&mut self, deadline: Option<Instant>) -> Result<TraceReport, WriteError> {
        let Some(t) = self.thread.take() else {
            return Err(WriteError::Config("trace already finished".into()));
        };
        self.request_flush();
        // The channel is sized so that this never blocks for long.
        let _ = self.tx.send(Msg::Finish(deadline));
        t.join().map_err(|_| WriteError::Panicked)?
    }
}

impl Drop for TraceWriter {
    fn drop(&mut self) {
        if self.thread.is_some() {
            match self.finish_inner(Some(Instant::now() + Duration::from_secs(5))) {
                Ok(r) if r.unclosed.is_empty() => {}
                Ok(r) => eprintln!("ltt-writer: trace dropped with live producers {:?}; their last packets are lost", r.unclosed),
                Err(e) => eprintln!("ltt-writer: trace dropped without finish: {e}"),
            }
        }
    }
}

struct WriterThread {
    live: Option<Live>,
    rx: Receiver<Msg>,
    empties: Vec<Sender<Box<[u8]>>>,
    files: Vec<(PathBuf, File)>,
    written: Vec<u64>,
    ring_cap: usize,
    rings: Vec<VecDeque<(Box<[u8]>, usize)>>,
    out: Out,
    shared: Arc<Shared>,
    report: TraceReport,
    alive: Vec<bool>,
    acked: Vec<u64>,
    error: Option<WriteError>,
    lost: u64,
    grace: Duration,
}

impl WriterThread {
    fn run(mut self) -> Result<TraceReport, WriteError> {
        let mut finish: Option<Option<Instant>> = None;
        let mut trigger: Option<(u64, Instant)> = None;
        loop {
            if finish.is_some() && !self.alive.iter().any(|a| *a) {
                break;
            }
            let poll = (self.ring_cap > 0).then(|| Instant::now() + SIGNAL_POLL);
            let live = self.live.as_ref().and_then(Live::deadline);
            let deadline = [trigger.map(|t| t.1), finish.flatten(), poll, live]
                .into_iter()
                .flatten()
                .min();
            let msg = match deadline {
                Some(d) => self.rx.recv_deadline(d),
                None => self.rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
            };
            match msg {
                Ok(Msg::Packet {
                    cpu,
                    buf,
                    len,
                    events,
                }) => {
                    let t = Instant::now();
                    self.on_packet(cpu as usize, buf, len, events);
                    self.report.write_time += t.elapsed();
                }
                Ok(Msg::Gone {
                    cpu,
                    stats,
                    discards,
                }) => {
                    self.alive[cpu as usize] = false;
                    self.report.per_cpu[cpu as usize] = stats;
                    self.report.discards[cpu as usize] = discards;
                }
                Ok(Msg::Flushed { cpu, gen }) => {
                    let a = &mut self.acked[cpu as usize];
                    *a = (*a).max(gen);
                }
                Ok(Msg::Trigger { gen }) if self.ring_cap > 0 && trigger.is_none() => {
                    trigger = Some((gen, Instant::now() + self.grace));
                }
                Ok(Msg::Trigger { .. }) => {}
                Ok(Msg::Finish(d)) => finish = Some(d),
                Err(RecvTimeoutError::Timeout) => {
                    if finish.flatten().is_some_and(|d| Instant::now() >= d) {
                        break;
                    }
                }
                Err(RecvTimeoutError::Disconnected) => break,
            }
            if self.live.as_mut().is_some_and(Live::flush_due) {
                self.shared.request_flush();
            }
            if self.ring_cap > 0
                && trigger.is_none()
                && self.shared.signal.swap(false, Ordering::Relaxed)
            {
                let gen = self.shared.request_flush();
                trigger = Some((gen, Instant::now() + self.grace));
            }
            if let Some((gen, at)) = trigger {
                let all_acked =
                    (0..self.alive.len()).all(|c| !self.alive[c] || self.acked[c] >= gen);
                if all_acked || Instant::now() >= at {
                    trigger = None;
                    let n = self.report.snapshots.len();
                    let dir = self.out.dir.join(format!("snapshot-{n}")).join("kernel");
                    match self.dump(&dir) {
                        Ok(()) => {
                            self.send_snapshot(&format!("snapshot-{n}"));
                            self.report.snapshots.push(dir)
                        }
                        Err(e) => self.fail(e),
                    }
                    self.shared.snapshots.fetch_add(1, Ordering::Release);
                }
            }
        }
        self.report.unclosed = (0..self.alive.len() as u32)
            .filter(|&c| self.alive[c as usize])
            .collect();
        if self.ring_cap > 0 {
            let dir = self.out.dir.join("kernel");
            match self.dump(&dir) {
                Ok(()) => self.send_snapshot("end"),
                Err(e) => self.fail(e),
            }
        }
        self.report.relayd = self.live.take().map(Live::finish);
        for (_, f) in &mut self.files {
            let _ = f.flush();
        }
        self.report.writer_cpu_time = crate::clock::thread_cpu_time();
        match self.error.take() {
            Some(WriteError::Write {
                path,
                written,
                source,
                ..
            }) => Err(WriteError::Write {
                path,
                written,
                lost: self.lost,
                source,
            }),
            Some(e) => Err(e),
            None => Ok(self.report),
        }
    }

    fn fail(&mut self, e: WriteError) {
        self.shared.failed.store(true, Ordering::Relaxed);
        if self.error.is_none() {
            self.error = Some(e);
        }
    }

    fn recycle(&self, cpu: usize, buf: Box<[u8]>) {
        let _ = self.empties[cpu].try_send(buf);
    }

    fn on_packet(&mut self, cpu: usize, mut buf: Box<[u8]>, len: usize, events: u64) {
        buf[len..].fill(0);
        if self.ring_cap > 0 {
            self.rings[cpu].push_back((buf, len));
            while self.rings[cpu].len() > self.ring_cap {
                if let Some((old, _)) = self.rings[cpu].pop_front() {
                    self.report.packets_overwritten += 1;
                    self.recycle(cpu, old);
                }
            }
            return;
        }
        if let Some(live) = &mut self.live {
            live.offer(cpu as u32, &buf, events);
        }
        if self.error.is_some() {
            self.lost += 1;
        } else {
            let (path, file) = &mut self.files[cpu];
            match file.write_all(&buf) {
                Ok(()) => {
                    self.written[cpu] += buf.len() as u64;
                    self.report.packets_written += 1;
                    self.report.bytes_written += buf.len() as u64;
                }
                Err(source) => {
                    // Cut the partial packet so the stream stays readable.
                    let written = self.written[cpu];
                    let _ = file.set_len(written);
                    let path = path.clone();
                    self.lost += 1;
                    self.fail(WriteError::Write {
                        path,
                        written,
                        lost: 0,
                        source,
                    });
                }
            }
        }
        self.recycle(cpu, buf);
    }

    /// Send the flight-recorder rings to relayd as snapshot `name`.
    fn send_snapshot(&mut self, name: &str) {
        let Some(live) = &mut self.live else { return };
        let packets = self
            .rings
            .iter()
            .map(|r| r.iter().map(|(b, _)| b.to_vec()).collect())
            .collect();
        live.snapshot(name, &self.out.metadata, packets);
    }

    /// Write the flight-recorder rings as a complete trace in `dir`.
    fn dump(&mut self, dir: &Path) -> Result<(), WriteError> {
        let files = create_stream_files(dir, &self.out.metadata, self.rings.len() as u32)?;
        for (cpu, (path, mut f)) in files.into_iter().enumerate() {
            let mut written = 0u64;
            for (buf, _) in &self.rings[cpu] {
                if let Err(source) = f.write_all(buf) {
                    let _ = f.set_len(written);
                    return Err(WriteError::Write {
                        path,
                        written,
                        lost: 0,
                        source,
                    });
                }
                written += buf.len() as u64;
                self.report.packets_written += 1;
                self.report.bytes_written += buf.len() as u64;
            }
        }
        Ok(())
    }
}
