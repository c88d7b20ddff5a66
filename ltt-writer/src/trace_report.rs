//! What a finished trace holds: counters by vCPU, drops by class, the
//! flight recorder's snapshots and what streaming to relayd did.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::catalog::Catalog;
use crate::discards::{self, DiscardCounts};
use crate::producer::ProducerStats;
use crate::relayd::RelaydReport;

/// What a finished trace holds.
#[derive(Clone, Debug, Default)]
pub struct TraceReport {
    /// The `kernel` folder of the trace.
    pub trace_dir: PathBuf,
    /// Producer counters, by vCPU (zeros for a producer that never closed).
    pub per_cpu: Vec<ProducerStats>,
    pub packets_written: u64,
    pub bytes_written: u64,
    /// Flight recorder: packets overwritten by newer ones.
    pub packets_overwritten: u64,
    /// Flight recorder: folders written on triggers.
    pub snapshots: Vec<PathBuf>,
    /// Time the writer thread spent handling packets (zero padding, write,
    /// recycling), without the time it waited for producers.
    pub write_time: Duration,
    /// CPU time of the writer thread over its whole life.
    pub writer_cpu_time: Duration,
    /// vCPUs whose producer was still alive when finish gave up waiting;
    /// their last partial packet is not in the trace.
    pub unclosed: Vec<u32>,
    /// Dropped events by class, by vCPU (each one's total is its
    /// `per_cpu[i].discarded`).
    pub discards: Vec<DiscardCounts>,
    /// The catalog the trace was written with (names the classes).
    pub catalog: Arc<Catalog>,
    /// What streaming to relayd did, if asked.
    pub relayd: Option<RelaydReport>,
}

impl TraceReport {
    pub fn events(&self) -> u64 {
        self.per_cpu.iter().map(|s| s.events).sum()
    }
    pub fn discarded(&self) -> u64 {
        self.per_cpu.iter().map(|s| s.discarded).sum()
    }
    /// The dropped events by event name, in total and per vCPU, as JSON
    /// (see [`discards::to_json`]).
    pub fn discards_json(&self) -> serde_json::Value {
        discards::to_json(&self.discards, &self.catalog)
    }
}
