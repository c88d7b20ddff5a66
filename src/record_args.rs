//! `hvtrace record`'s options, for `record` itself and the commands built
//! on it (`latency`).

use std::path::PathBuf;

use engine::buffers::{BufferMode, Mode};

use crate::run::GuestOptions;

#[derive(clap::Args, Debug)]
pub struct RecordArgs {
    #[command(flatten)]
    pub guest: GuestOptions,
    /// Event classes: any of syscalls,sched,irq,proc (or all).
    #[arg(long, default_value = "all")]
    pub events: String,
    #[arg(long, value_enum, default_value = "trap")]
    pub mode: Mode,
    /// Samples per second per vCPU with --mode sample.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub freq: u32,
    #[arg(long, value_enum, default_value = "lossless")]
    pub buffer: BufferMode,
    /// Output folder (the CTF trace goes to DIR/kernel).
    #[arg(short = 'o', long = "output", value_name = "DIR")]
    pub output: PathBuf,
    /// Memory kept per vCPU by --buffer flight-recorder, in MiB.
    #[arg(long, default_value_t = 4)]
    pub flight_mib: u64,
    /// Bytes per sub-buffer (one CTF packet) of each vCPU's stream, as
    /// LTTng's --subbuf-size: a number with an optional k or M suffix, a
    /// multiple of 8, from 4k to 64M.
    #[arg(long, default_value = "256k", value_parser = engine::buffers::parse_subbuf_size)]
    pub subbuf_size: u64,
    /// Sub-buffers per vCPU with --buffer lossless or discard, as LTTng's
    /// --num-subbuf. Smaller buffers fill sooner: a vCPU waits for the
    /// writer (lossless) or drops events (discard).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(2..=4096))]
    pub num_subbuf: u32,
    /// With --buffer flight-recorder, also write the window to
    /// DIR/snapshot-N when SPEC happens (repeatable): `panic` (guest kernel
    /// panic or oops), `syscall=NAME:ERRNO` (NAME returns -ERRNO; errno name
    /// or number), `signal-exit` (a process dies of a signal). SIGUSR1 to
    /// hvtrace always writes one.
    #[arg(long = "trigger", value_name = "SPEC")]
    pub triggers: Vec<String>,
    /// Also keep the raw record streams (DIR/raw/cpuN.bin), for debugging.
    #[arg(long, hide = true)]
    pub keep_raw: bool,
    /// First boot the same guest and command untraced, and report the slowdown.
    #[arg(long)]
    pub baseline: bool,
    /// Replace a trace already in DIR (without it, a DIR holding one is
    /// refused, so that no earlier recording is lost by mistake).
    #[arg(long)]
    pub force: bool,
    /// The TCG plugin (default: libhvtrace_tcg.so next to hvtrace, or $HVTRACE_TCG_PLUGIN).
    #[arg(long)]
    pub plugin: Option<PathBuf>,
    /// A user-defined probe (repeatable): 'NAME=SYMBOL[+OFFSET] [FIELD=EXPR ...]',
    /// EXPR as kprobe_events fetch-args: %REG, argN, $stackN, $comm, $pid,
    /// $tid, @SYM, \IMM, +OFFS(EXPR), each with an optional :u8..u64,
    /// :s8..s64, :x8..x64 or :string. One event NAME per hit, with a
    /// `valid` bitmask (bit i: field i was read).
    #[arg(long = "probe", value_name = "SPEC")]
    pub probes: Vec<String>,
    /// Also stream the trace live to the lttng-relayd at HOST (ports 5342 and
    /// control + 1 by default; `net://` accepted), for lttng-live viewers:
    /// net://HOST/host/HOSTNAME/SESSION. The local trace stays whole; the
    /// network copy drops whole packets (counted) if relayd falls behind or
    /// goes away. Flight recorder: snapshots go as relayd snapshot sessions.
    #[arg(long, value_name = "HOST[:PORT[:PORT]]")]
    pub relayd: Option<String>,
    /// The relayd session's name (default: the output folder's name).
    #[arg(long, value_name = "NAME")]
    pub session: Option<String>,
    /// The hostname the relayd files the session under (default: this
    /// machine's).
    #[arg(long, value_name = "NAME")]
    pub relayd_hostname: Option<String>,
    /// Take the statedump when a guest task execs this file (default: the
    /// traced command, as it starts), e.g. once a script has opened files.
    #[arg(long, value_name = "PATH")]
    pub statedump_at: Option<String>,
    /// The command to run in the guest, after `--` (optional with --disk:
    /// then the guest is traced as it is, from power-on until it powers
    /// off, --duration or --timeout).
    #[arg(last = true, required_unless_present = "disk", value_name = "CMD")]
    pub command: Vec<String>,
}

impl RecordArgs {
    /// Every tracing option at its default: for commands built on record
    /// (e.g. `hvtrace latency`).
    pub fn for_command(guest: GuestOptions, output: PathBuf, command: Vec<String>) -> Self {
        RecordArgs {
            guest,
            events: "all".into(),
            mode: Mode::Trap,
            freq: 1000,
            buffer: BufferMode::Lossless,
            output,
            flight_mib: 4,
            subbuf_size: 256 << 10,
            num_subbuf: 8,
            triggers: Vec::new(),
            keep_raw: false,
            baseline: false,
            // The trace of a command built on record is its by-product.
            force: true,
            plugin: None,
            probes: Vec::new(),
            statedump_at: None,
            relayd: None,
            session: None,
            relayd_hostname: None,
            command,
        }
    }

    /// When the statedump is taken: at the traced command's exec; in a
    /// `--disk` boot without command, at the exec of the image's init (the
    /// switch from hvtrace's initramfs to the image: pid 1 becomes systemd);
    /// or where `--statedump-at` says.
    pub fn statedump_exec(&self) -> String {
        if let Some(at) = &self.statedump_at {
            return at.clone();
        }
        self.command
            .first()
            .cloned()
            .unwrap_or_else(|| "/sbin/init".to_string())
    }
}
