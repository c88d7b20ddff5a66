//! hvtrace: a hypervisor-level whole-system tracer for unmodified Linux guests.

mod backend;
mod cache;
mod guest;
mod image;
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
    Image(image::ImageArgs),
    /// Boot a guest and run one command in it; exits with its status.
    Run(run::RunArgs),
    /// Boot a guest, run a command and trace the whole system (CTF).
    Record(NotYet),
    /// Answer questions from a trace (per-process time, latencies, HTML).
    Report(NotYet),
    /// Recover a kernel's symbols, types and syscalls from its image.
    Symbols(NotYet),
    /// Benchmarks that print ratios against a baseline measured in the same run.
    Bench(NotYet),
}

/// Arguments of a subcommand that is not built yet (accepted, then refused).
#[derive(clap::Args)]
struct NotYet {
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
    _rest: Vec<String>,
}

fn not_yet(what: &str) -> anyhow::Result<i32> {
    anyhow::bail!("`hvtrace {what}` is not implemented yet")
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Image(args) => image::run(args).map(|()| 0),
        Cmd::Run(args) => run::run(args),
        Cmd::Record(_) => not_yet("record"),
        Cmd::Report(_) => not_yet("report"),
        Cmd::Symbols(_) => not_yet("symbols"),
        Cmd::Bench(_) => not_yet("bench"),
    };
    match result {
        Ok(status) => std::process::exit(status),
        Err(err) => {
            eprintln!("hvtrace: error: {err:#}");
            std::process::exit(EXIT_FAILURE);
        }
    }
}
