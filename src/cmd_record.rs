//! `hvtrace record`: boot the guest under QEMU TCG with the hvtrace plugin,
//! trace the whole system while a command runs, and write the trace.
//!
//! The host prepares a probe plan (`introspect::ProbePlan`: link-time
//! addresses from the image's kallsyms, structure offsets from its BTF, the
//! syscall table) and hands its path to the plugin; the plugin finds the
//! KASLR slide in the running guest and writes the CTF trace through
//! ltt-writer (one producer per vCPU) and a report (`plugin.json`) that
//! the summary comes from.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use engine::output::{check_output, prepare_output};
use engine::plan::build_plan;
use engine::probes::{parse_probes, resolve_probes};
use introspect::plan::EventClasses;

use crate::run::{choose_backend, Backend, GuestOptions};
use engine::buffers::{BufferMode, Mode};
use engine::guest::GuestEnd;
use engine_qemu::{plugin, qemu, summary};

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
}

pub fn run(args: RecordArgs) -> Result<i32> {
    run_driven(args, None)
}

/// [`run`] with a driver typing on the guest console while it is traced.
pub fn run_driven(
    args: RecordArgs,
    driver: Option<&mut dyn engine::guest::ConsoleDriver>,
) -> Result<i32> {
    let interrupt = engine::interrupt::install();
    let Some(events) = EventClasses::parse(&args.events) else {
        let unknown: Vec<&str> = args
            .events
            .split(',')
            .map(str::trim)
            .filter(|w| EventClasses::parse(w).is_none())
            .collect();
        bail!(
            "--events {}: unknown class {}; expected a list of syscalls,sched,irq,proc (or all)",
            args.events,
            unknown.join(", ")
        );
    };
    let user_probes = parse_probes(&args.probes)?;
    if events == EventClasses::default() && user_probes.is_empty() {
        // Booting a guest to trace nothing is never what was meant.
        bail!(
            "--events '{}' names no event class and no --probe is given: nothing would be traced; \
             expected a list of syscalls,sched,irq,proc (or all)",
            args.events
        );
    }
    match choose_backend(args.guest.backend)? {
        Backend::Qemu => {}
        Backend::Kvm => {
            return crate::record_kvm::run(&args, events, &user_probes, &interrupt, driver);
        }
        Backend::Auto => unreachable!("choose_backend resolves auto"),
    }
    if args.guest.time_transparent && args.guest.vcpus > 1 {
        // Seen with QEMU 10.0: its per-vCPU inline counters, which the
        // instruction clock is made of, crash QEMU under -icount with
        // several vCPUs (untraced `run --time-transparent` is fine).
        bail!("--time-transparent traces one vCPU (--vcpus 1): QEMU 10's per-vCPU instruction counters crash under -icount with more");
    }
    let run = args.guest.guest_run(&args.command)?;
    let out = &args.output;
    check_output(out, args.force)?;
    let relayd = crate::record_relayd::check(&args)?;
    let plugin = match &args.plugin {
        Some(p) => p.clone(),
        None => plugin::locate_plugin()?,
    };
    let t0 = Instant::now();
    let mut plan = build_plan(&run.kernel).context("preparing the probe plan")?;
    plan.events = events;
    resolve_probes(&run.kernel, &user_probes, &mut plan)?;
    engine::buffers::apply_mode(&mut plan, args.mode, args.freq);
    // Everything that can be refused is checked: now the folder is written.
    let triggers = crate::triggers::parse_for(&args, &plan, &run.kernel)?;
    let out_abs = prepare_output(out, args.force)?;
    plan.out_dir = plugin::path_str(&out_abs)?.to_string();
    plan.statedump_exec = crate::disk::statedump_exec(&args);
    plugin::configure(
        &mut plan,
        &plugin::PluginOptions {
            buffer: args.buffer,
            flight_mib: args.flight_mib,
            subbuf_size: args.subbuf_size,
            num_subbuf: args.num_subbuf,
            raw: args.keep_raw,
            relayd: relayd.as_ref(),
            instruction_clock_shift: args.guest.instruction_clock_shift(),
        },
    );
    let triggers = crate::triggers::arm(triggers, &out_abs)?;
    let plan_path = out_abs.join("probe-plan.json");
    std::fs::write(&plan_path, plan.to_json())?;
    let prep = t0.elapsed();

    let mut extra = args.guest.qemu_extra_args();
    extra.extend(plugin::plugin_args(
        &plugin,
        &plan_path,
        triggers.as_ref().map(|t| t.plan_path()),
    )?);
    let baseline = if args.baseline {
        let cmd = qemu::qemu_command(&run, &args.guest.qemu_extra_args());
        let t = Instant::now();
        let end = qemu::run_qemu(cmd, run.timeout, &interrupt, &mut std::io::sink())?;
        Some((t.elapsed(), end))
    } else {
        None
    };
    let cmd = qemu::qemu_command(&run, &extra);
    let limit = args.guest.disk.limit(run.timeout);
    let t1 = Instant::now();
    // A disk boot without a command may end at the first trigger's snapshot.
    let until_trigger = crate::disk::StopOnSnapshot::wanted(&args, triggers.as_ref(), &interrupt);
    let stop = until_trigger.as_ref().map_or(&*interrupt, |u| u.flag());
    let end = qemu::run_qemu_driven(cmd, limit.0, stop, &mut std::io::stderr(), driver)?;
    let end = until_trigger.map_or(end.clone(), |u| u.finish(end));
    let wall = t1.elapsed();

    // How a run may end without being cut short: its command's status, or
    // for a disk boot without command, power-off, --duration or a trigger.
    let normal_end = match &end {
        GuestEnd::Exited(_) | GuestEnd::Triggered => true,
        GuestEnd::PoweredOff | GuestEnd::Restarted => args.guest.disk.disk.is_some(),
        GuestEnd::TimedOut => limit.1,
        _ => false,
    };
    let incomplete = summary::print_qemu(&summary::QemuRun {
        out,
        out_abs: &out_abs,
        wall,
        prep,
        baseline: baseline.as_ref(),
        end: &end,
        normal_end,
    });
    if let Some(t) = triggers {
        t.finish();
    }
    match incomplete {
        // A run that ended otherwise says so first (signal, panic, ...).
        Some(why) if normal_end => bail!("the trace is incomplete: {why}"),
        _ => args.guest.outcome(end, limit, run.timeout),
    }
}
