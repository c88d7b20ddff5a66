//! Per-vCPU event buffers and LTTng-compatible CTF output.
//!
//! `ltt_writer` turns fixed-layout event records into a CTF 1.8 trace laid
//! out as lttng-modules writes kernel traces (`<out>/kernel/metadata` and
//! `<out>/kernel/channel0_<cpu>`), which babeltrace2, Trace Compass and
//! lttng-analyses open as an LTTng kernel trace. It knows nothing of how
//! events were obtained.
//!
//! ```no_run
//! use ltt_writer::*;
//! let catalog = Catalog::kernel(&[]).unwrap();
//! let mut cfg = TraceConfig::new(2, catalog);
//! cfg.env.kernel_release = "6.1.0-53-amd64".into();
//! let (writer, mut producers) = TraceWriter::create("/tmp/trace".as_ref(), cfg).unwrap();
//! let ctx = TaskCtx::new(42, 42, b"bash");
//! let p = &mut producers[0];
//! p.sched_switch(1_000, &ctx, TaskRef { comm: b"bash", tid: 42, prio: 20 }, 1,
//!                TaskRef { comm: b"swapper/0", tid: 0, prio: 20 }).unwrap();
//! drop(producers); // each closes its last packet
//! let report = writer.finish().unwrap();
//! println!("{} events", report.events());
//! ```

pub mod bench;
pub mod catalog;
pub mod chrome;
pub mod clock;
pub mod discards;
pub mod kernel;
mod live;
pub mod metadata;
pub mod packet;
pub mod producer;
pub mod reader;
pub mod relayd;
pub mod statedump;
mod trace_report;
pub mod writer;

pub use catalog::{
    ArgDir, ArgKind, Base, Catalog, EventDecl, FieldDecl, FieldType, SyscallArg, SyscallDecl,
};
pub use clock::Epoch;
pub use discards::DiscardCounts;
pub use kernel::{Fork, ProcessState, TaskRef};
pub use metadata::{HeaderKind, TraceEnv};
pub use producer::{ProduceError, Producer, ProducerStats, TaskCtx, Value};
pub use relayd::{RelaydConfig, RelaydReport};
pub use writer::{Policy, TraceConfig, TraceReport, TraceWriter, TriggerHandle, WriteError};
