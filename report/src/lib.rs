//! The answers: what a trace written by hvtrace says. Per task, where the
//! time went (user, kernel per syscall, waiting for a CPU, blocked and on
//! what), who woke whom, lock cycles; per syscall and per interrupt, counts
//! and latency percentiles; how long a typed key took to cross the system.
//! As terminal tables, JSON (every type here is `Serialize`), or one HTML
//! file.
//!
//! It reads CTF traces (through `ltt_writer`'s reader) and knows no engine:
//! nothing here depends on how the events were obtained.

pub mod analysis;
pub mod duration;
pub mod html;
pub mod latency;
pub mod locks;
pub mod model;
pub mod summary;
pub mod tables;
pub mod trace;

pub use analysis::{Analysis, LatencyStats};
pub use duration::dur;
pub use locks::LockReport;
pub use summary::{build, Report};
pub use trace::{Trace, TraceError};
