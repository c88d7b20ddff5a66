//! `hvtrace record`: boot the guest on either engine, trace the whole
//! system while a command runs, and write the trace; written once against
//! the engine seam (`engine::seam::Engine`).
//!
//! The host prepares a probe plan (`introspect::ProbePlan`: link-time
//! addresses from the image's kallsyms, structure offsets from its BTF, the
//! syscall table), completes it with the options both engines share, writes
//! it to the output folder, and hands the recording to the engine, which
//! writes the CTF trace (one stream per vCPU) and its run report
//! (`plugin.json` or `kvm.json`) and prints the summary.

use std::time::Instant;

use anyhow::{bail, Result};
use engine::output::{check_output, prepare_output};
use engine::probes::{parse_probes, resolve_probes};
use engine::seam::{Engine, RecordOptions, Recording};
use introspect::plan::EventClasses;

use crate::record_args::RecordArgs;
use crate::run::{choose_backend, Backend};
use engine::buffers::BufferMode;
use engine_kvm::seam::KvmEngine;
use engine_qemu::seam::QemuEngine;

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
    let backend = choose_backend(args.guest.backend)?;
    match backend {
        Backend::Qemu => {
            if args.guest.time_transparent && args.guest.vcpus > 1 {
                // Seen with QEMU 10.0: its per-vCPU inline counters, which the
                // instruction clock is made of, crash QEMU under -icount with
                // several vCPUs (untraced `run --time-transparent` is fine).
                bail!("--time-transparent traces one vCPU (--vcpus 1): QEMU 10's per-vCPU instruction counters crash under -icount with more");
            }
        }
        Backend::Kvm => args.guest.check_for_kvm()?,
        Backend::Auto => unreachable!("choose_backend resolves auto"),
    }
    let run = args.guest.guest_run(&args.command)?;
    // --duration: the run's wall-time limit, reaching it a normal end.
    let limit = args.guest.disk.limit(run.timeout);
    let out = &args.output;
    check_output(out, args.force)?;
    let relayd = crate::record_relayd::check(&args)?;
    let mut engine: Box<dyn Engine> = match backend {
        Backend::Qemu => Box::new(QemuEngine::tracing(
            args.guest.qemu_extra_args(),
            args.plugin.clone(),
            args.guest.instruction_clock_shift(),
        )?),
        _ => Box::new(KvmEngine::new(args.guest.capture.clone())),
    };
    let t0 = Instant::now();
    let mut plan = engine
        .prepare(&run.kernel)
        .map_err(anyhow::Error::from_boxed)?;
    plan.events = events;
    let user = resolve_probes(&run.kernel, &user_probes, &mut plan)?;
    // On the KVM monitor a sample is a kick of every vCPU (signal +
    // immediate_exit) at --freq.
    engine::buffers::apply_mode(&mut plan, args.mode, args.freq);
    // Everything that can be refused is checked: now the folder is written.
    let triggers = engine::triggers::parse(
        &args.triggers,
        args.buffer == BufferMode::FlightRecorder,
        &plan,
        &run.kernel,
    )?;
    let out_abs = prepare_output(out, args.force)?;
    plan.out_dir = engine
        .out_dir(&out_abs)
        .map_err(anyhow::Error::from_boxed)?;
    plan.statedump_exec = args.statedump_exec();
    let options = RecordOptions {
        mode: args.mode,
        freq: args.freq,
        buffer: args.buffer,
        flight_mib: args.flight_mib,
        subbuf_size: args.subbuf_size,
        num_subbuf: args.num_subbuf,
        keep_raw: args.keep_raw,
        baseline: args.baseline,
    };
    engine.configure(&mut plan, &options, relayd.as_ref());
    let triggers = engine::triggers::arm(triggers, &out_abs)?;
    let plan_path = out_abs.join("probe-plan.json");
    std::fs::write(&plan_path, plan.to_json())?;
    let prep = t0.elapsed();

    let disk = args.guest.disk.disk.is_some();
    let recorded = engine
        .record(
            Recording {
                plan,
                user,
                run: &run,
                limit,
                out,
                out_abs: &out_abs,
                plan_path,
                options: &options,
                relayd,
                triggers,
                disk,
                disk_without_command: disk && args.command.is_empty(),
                prep,
            },
            &interrupt,
            driver,
        )
        .map_err(anyhow::Error::from_boxed)?;
    match recorded.incomplete {
        // A run that ended otherwise says so first (signal, panic, ...).
        Some(why) if engine::outcome::normal_end(&recorded.end, disk, limit.1) => {
            bail!("the trace is incomplete: {why}")
        }
        _ => args.guest.outcome(recorded.end, limit, run.timeout),
    }
}
