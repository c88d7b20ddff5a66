//! `hvtrace report`: answers from a trace (`hvtrace_report`), as terminal
//! tables, JSON, or one HTML file.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use hvtrace_report::{html, tables};

#[derive(clap::Args, Debug)]
pub struct ReportArgs {
    /// Trace folder written by `hvtrace record` (holding kernel/).
    pub trace: PathBuf,
    /// Print the report as JSON instead of tables.
    #[arg(long)]
    pub json: bool,
    /// Also write a self-contained HTML timeline and tables to this file.
    #[arg(long, value_name = "OUT.html")]
    pub html: Option<PathBuf>,
    /// List every kernel thread, not only the busiest.
    #[arg(long)]
    pub all: bool,
}

pub fn run(args: ReportArgs) -> Result<()> {
    let (trace, events, report) = hvtrace_report::build(&args.trace)
        .with_context(|| format!("reading the trace in {}", args.trace.display()))?;
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &report)?;
        writeln!(out)?;
    } else {
        tables::print_tables(&report, args.all, &mut out)?;
    }
    if let Some(path) = &args.html {
        let page = html::render(&trace, &events, &report);
        std::fs::write(path, page).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("hvtrace: report: wrote {}", path.display());
    }
    Ok(())
}
