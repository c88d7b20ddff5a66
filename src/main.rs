//! hvtrace: a hypervisor-level whole-system tracer for unmodified Linux guests.

mod bench_trace;
mod cmd_bench_exits;
mod cmd_bench_writer;
mod cmd_image;
mod cmd_record;
mod cmd_report;
mod cmd_symbols;
mod disk;
mod latency;
mod record_args;
mod record_relayd;
mod run;

use clap::{Parser, Subcommand};

/// Exit status of hvtrace's own failures, apart from any guest command's.
const EXIT_FAILURE: i32 = 125;

#[derive(Parser)]
#[command(name = "hvtrace", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build guest images from Debian's packages.
    Image(cmd_image::ImageArgs),
    /// Boot a guest and run one command in it; exits with its status.
    Run(run::RunArgs),
    /// Boot a guest, run a command and trace the whole system (CTF).
    Record(record_args::RecordArgs),
    /// Type keys on the guest console and follow each through the system.
    Latency(latency::LatencyArgs),
    /// Answer questions from a trace (per-process time, latencies, HTML).
    Report(cmd_report::ReportArgs),
    /// Recover a kernel's symbols, types and syscalls from its image.
    Symbols(cmd_symbols::SymbolsArgs),
    /// Benchmarks that print ratios against a baseline measured in the same run.
    #[command(subcommand)]
    Bench(BenchCmd),
}

#[derive(Subcommand)]
enum BenchCmd {
    /// Event buffers and CTF writer against memcpy and sequential writes.
    Writer,
    /// One debug exit through the KVM monitor against a bare KVM_RUN loop.
    Exits,
    /// Traced against untraced run, and hvtrace against gdb per event.
    Trace(bench_trace::BenchTraceArgs),
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Image(args) => cmd_image::run(args).map(|()| 0),
        Cmd::Run(args) => run::run(args),
        Cmd::Record(args) => cmd_record::run(args),
        Cmd::Latency(args) => latency::run(args),
        Cmd::Report(args) => cmd_report::run(args).map(|()| 0),
        Cmd::Symbols(args) => cmd_symbols::run(args).map(|()| 0),
        Cmd::Bench(BenchCmd::Writer) => cmd_bench_writer::run().map(|()| 0),
        Cmd::Bench(BenchCmd::Exits) => cmd_bench_exits::run().map(|()| 0),
        Cmd::Bench(BenchCmd::Trace(args)) => bench_trace::run(args).map(|()| 0),
    };
    match result {
        Ok(status) => std::process::exit(status),
        Err(err) => {
            eprintln!("hvtrace: error: {err:#}");
            std::process::exit(EXIT_FAILURE);
        }
    }
}
