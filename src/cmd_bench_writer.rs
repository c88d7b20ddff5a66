//! `hvtrace bench writer`: throughput of the ltt-writer producer path and of
//! the whole path to disk, each against a baseline measured in the same run.

/// Run the writer benchmark and print its figures.
pub fn run() -> anyhow::Result<()> {
    let opts = ltt_writer::bench::BenchOptions::default();
    println!(
        "ltt-writer bench: {} events into buffers, {} events to disk in {}",
        opts.producer_events,
        opts.disk_events,
        opts.dir.display()
    );
    let report = ltt_writer::bench::run(&opts)?;
    println!("{report}");
    Ok(())
}
