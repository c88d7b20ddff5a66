//! One trace folder read and analyzed: the report that the tables, the JSON
//! and the HTML page show.

use std::path::Path;

use serde::Serialize;

use crate::analysis::{self, Analysis};
use crate::locks::{self, LockReport};
use crate::model::{self, Ev};
use crate::trace::{Trace, TraceError};

#[derive(Serialize)]
pub struct Report {
    pub trace: String,
    pub hostname: String,
    pub kernel_release: String,
    pub events: usize,
    /// Wall-clock time of the first event, ns since the Unix epoch.
    pub start_unix_ns: u64,
    pub duration_ns: u64,
    #[serde(flatten)]
    pub analysis: Analysis,
    pub locks: LockReport,
}

/// Reads and analyzes a trace folder.
pub fn build(dir: &Path) -> Result<(Trace, Vec<Ev>, Report), TraceError> {
    let trace = Trace::open(dir)?;
    let events = model::events(&trace);
    let analysis = analysis::analyze(&events);
    let locks = locks::analyze(&events);
    let report = Report {
        trace: dir.display().to_string(),
        hostname: trace.hostname.clone(),
        kernel_release: trace.kernel_release.clone(),
        events: events.len(),
        start_unix_ns: analysis.start_ts + trace.clock_offset_ns,
        duration_ns: analysis.end_ts.saturating_sub(analysis.start_ts),
        analysis,
        locks,
    };
    Ok((trace, events, report))
}
