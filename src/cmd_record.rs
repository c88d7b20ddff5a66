//! `hvtrace record`: boot the guest under QEMU TCG with the hvtrace plugin,
//! trace the whole system while a command runs, and write the trace.
//!
//! The host prepares a probe plan (`introspect::ProbePlan`: link-time
//! addresses from the image's kallsyms, structure offsets from its BTF, the
//! syscall table) and hands its path to the plugin; the plugin finds the
//! KASLR slide in the running guest and writes the CTF trace through
//! ltt-writer (one producer per vCPU) and a report (`plugin.json`) that
//! the summary comes from.

use std::time::Instant;

use anyhow::{bail, Context, Result};
use engine::output::{check_output, prepare_output};
use engine::plan::build_plan;
use engine::probes::{parse_probes, resolve_probes};
use introspect::plan::EventClasses;

use crate::record_args::RecordArgs;
use crate::run::{choose_backend, Backend};
use engine::buffers::BufferMode;
use engine::guest::GuestEnd;
use engine_qemu::{plugin, qemu, summary};

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
    let triggers = engine::triggers::parse(
        &args.triggers,
        args.buffer == BufferMode::FlightRecorder,
        &plan,
        &run.kernel,
    )?;
    let out_abs = prepare_output(out, args.force)?;
    plan.out_dir = plugin::path_str(&out_abs)?.to_string();
    plan.statedump_exec = args.statedump_exec();
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
    let triggers = engine::triggers::arm(triggers, &out_abs)?;
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
    let until_trigger = engine::stop::StopOnSnapshot::wanted(
        args.guest.disk.disk.is_some() && args.command.is_empty(),
        triggers.as_ref(),
        &interrupt,
    );
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
