//! `hvtrace bench trace`'s options; the measurement is
//! `engine_qemu::bench`'s.

use anyhow::Result;
use engine_qemu::bench::BenchTrace;

#[derive(clap::Args, Debug)]
pub struct BenchTraceArgs {
    /// Rounds of /bin/syscalls for the slowdown.
    #[arg(long, default_value_t = 5000)]
    pub rounds: u32,
    /// getpid calls counted through gdb (each costs tens of ms; 0: no gdb peer).
    #[arg(long, default_value_t = 300)]
    pub gdb_hits: u32,
    /// Untraced and traced runs alternate this many times; medians are reported.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=50))]
    pub repeat: u32,
    /// The engines measured: `qemu`, or `kvm` for hvtrace's monitor side by
    /// side with the QEMU engine (needs a /dev/kvm; on a host without
    /// VT-x/AMD-V run it in scripts/stock-kvm.sh).
    #[arg(long, value_enum, default_value_t = BenchBackend::Qemu)]
    pub backend: BenchBackend,
    /// Also measure the QEMU engine with --time-transparent, next to its
    /// normal mode: there traced and untraced should take the same guest time.
    #[arg(long)]
    pub time_transparent: bool,
}

/// `bench trace --backend`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum BenchBackend {
    Qemu,
    Kvm,
}

pub fn run(args: BenchTraceArgs) -> Result<()> {
    engine_qemu::bench::run(BenchTrace {
        rounds: args.rounds,
        gdb_hits: args.gdb_hits,
        repeat: args.repeat,
        kvm: args.backend == BenchBackend::Kvm,
        time_transparent: args.time_transparent,
    })?;
    Ok(())
}
