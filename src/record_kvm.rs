//! `hvtrace record --backend kvm`: the CLI's side. It checks and prepares
//! what both engines share (output folder, probe plan, `--probe`,
//! `--trigger`, relayd), then hands the recording to the KVM engine
//! (`engine_kvm::record`).

use std::sync::atomic::AtomicBool;
use std::time::Instant;

use anyhow::Result;
use engine::guest::{ConsoleDriver, GuestEnd};
use engine_kvm::record::{Prepared, Recording};
use introspect::plan::EventClasses;

use crate::record_args::RecordArgs;

/// `hvtrace record --backend kvm`.
pub fn run(
    args: &RecordArgs,
    events: EventClasses,
    user_probes: &[(String, introspect::userprobe::ProbeSpec)],
    interrupt: &AtomicBool,
    driver: Option<&mut dyn ConsoleDriver>,
) -> Result<i32> {
    args.guest.check_for_kvm()?;
    let full = args.guest.guest_run(&args.command)?;
    // --duration: the run's wall-time limit, reaching it a normal end.
    let limit = args.guest.disk.limit(full.timeout);
    let run = full.with_timeout(limit.0);
    let out = &args.output;
    engine::output::check_output(out, args.force)?;
    let relayd = crate::record_relayd::check(args)?;

    let t0 = Instant::now();
    let mut prepared = Prepared::of(&run.kernel)?;
    let plan = &mut prepared.plan;
    plan.events = events;
    let user = engine::probes::resolve_probes(&run.kernel, user_probes, plan)?;
    // Everything that can be refused is checked: now the folder is written.
    let triggers = engine::triggers::parse(
        &args.triggers,
        args.buffer == engine::buffers::BufferMode::FlightRecorder,
        plan,
        &run.kernel,
    )?;
    let out_abs = engine::output::prepare_output(out, args.force)?;
    plan.out_dir = out_abs.to_string_lossy().into_owned();
    plan.statedump_exec = args.statedump_exec();
    // A sample is a kick of every vCPU (signal + immediate_exit) at
    // --freq from this thread.
    engine::buffers::apply_mode(plan, args.mode, args.freq);
    std::fs::write(out_abs.join("probe-plan.json"), plan.to_json())?;
    let armed = engine::triggers::arm(triggers, &out_abs)?;
    let trigger_plan =
        engine_kvm::record::trigger_plan(armed.as_ref().map(|a| a.plan_path()), plan)?;
    let prep = t0.elapsed();

    let end = engine_kvm::record::record(
        Recording {
            prepared,
            user,
            triggers: trigger_plan,
            run: &run,
            out,
            out_abs: &out_abs,
            mode: args.mode,
            freq: args.freq,
            buffer: args.buffer,
            flight_mib: args.flight_mib,
            subbuf_size: args.subbuf_size,
            num_subbuf: args.num_subbuf,
            relayd,
            capture: args.guest.capture.as_deref(),
            baseline: args.baseline,
            keep_raw: args.keep_raw,
            prep,
        },
        interrupt,
        driver,
    )?;
    if let Some(a) = armed {
        a.finish();
    }
    // How a run may end without being cut short: its command's status, or
    // for a disk boot without command, power-off or --duration.
    let normal_end = match &end {
        GuestEnd::Exited(_) => true,
        GuestEnd::PoweredOff | GuestEnd::Restarted => args.guest.disk.disk.is_some(),
        GuestEnd::TimedOut => limit.1,
        _ => false,
    };
    if !normal_end {
        eprintln!(
            "hvtrace: record: the run ended early ({end:?}); the trace in {} holds everything up to that point",
            out.display()
        );
    }
    args.guest.outcome(end, limit, full.timeout)
}
