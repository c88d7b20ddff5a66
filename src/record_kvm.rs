//! `hvtrace record --backend kvm`: the shared `introspect` decoders on the
//! debug exits of hvtrace's own KVM monitor, writing the same CTF trace as
//! the TCG engine through `ltt-writer` (one producer per vCPU, owned by
//! that vCPU's debug handler: the trap path takes no lock).
//!
//! Probes: where KVM delivers software breakpoints (hardware KVM), every
//! planned entry probe becomes a VM-wide int3 once the kernel's boot-time
//! text patching is over, and return sites stay hardware breakpoints
//! ([`sw`]); until then, and everywhere KVM does not deliver #BP (KVM-PVM),
//! probes are hardware breakpoints (DR0-DR3 per vCPU), planned by
//! `introspect::probes::plan_probes` within a budget of 4. The summary and
//! `DIR/kvm.json` say which mechanism each probe used and what did not fit.
//!
//! The KASLR slide: the monitor boots the bzImage through its own
//! decompressor (`backend_kvm::KvmBoot`), which randomizes the kernel's
//! physical and virtual placement as on a real boot
//! (`choose_random_location`). The slide is unknown until the running
//! kernel's page tables map its text: until then no probe is armed, and
//! vCPU 0 is kicked every few milliseconds to look for the banner
//! (`find_slide`); once found, every vCPU is kicked and arms at it. The
//! kernel takes its first interrupt, and runs its first task, long after
//! (start_kernel enables interrupts late), so no event is lost to the
//! search. An ELF vmlinux (`--kernel`, or the extraction used on a KVM
//! that emulates guest code) runs at its link-time addresses: probes are
//! armed at slide 0 from the first instruction and the slide is verified
//! by the banner all the same.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{Context, Result};
use introspect::plan::EventClasses;
use introspect::runtime::{string_table, StatedumpGate};
use introspect::{ProbeKind, ProbePlan};

mod extra;
mod handler;
mod report;
mod sw;
use crate::cmd_record::{BufferMode, Mode, RecordArgs};
use engine::guest::{ConsoleDriver, GuestEnd};
use handler::Handler;

// The record → lttng-modules event mapping both engines share.
use record_ctf as ctf;

/// Hardware breakpoints per vCPU.
const HW_SLOTS: usize = 4;
/// `__START_KERNEL_map`: kernel text's virtual base, at physical 0 plus
/// the load offset (0 for the ELF loaded at its own `p_paddr`).
const START_KERNEL_MAP: u64 = 0xffff_ffff_8000_0000;
/// No slide verified yet.
const UNKNOWN: u64 = u64::MAX;
/// How often vCPU 0 looks for the banner on a randomized boot, until found.
const SLIDE_SEARCH_MS: u64 = 2;
/// Tasks a statedump can hold without allocating on the trap path.
const STATEDUMP_TASKS: usize = 4096;

/// What every vCPU's handler shares (read-only or atomics on the trap path).
struct Shared {
    plan: ProbePlan,
    strings: Vec<u8>,
    gate: StatedumpGate,
    epoch: Instant,
    /// The slide the guest's banner was found at (UNKNOWN before).
    verified_slide: AtomicU64,
    /// Probe hits, all vCPUs.
    hits: AtomicU64,
    /// Filled by each handler when its vCPU thread ends.
    reports: Mutex<Vec<CpuReport>>,
    notes: Mutex<Vec<String>>,
    /// Software breakpoints: used or not, and armed or not yet.
    sw: sw::SwPhase,
    /// The kernel is randomized (bzImage boot): nothing is armed before
    /// the slide is found.
    randomized: bool,
    /// Flight-recorder triggers (`--trigger`), and the trace clock's
    /// origin in Unix time.
    triggers: Option<Arc<record_ctf::triggers::Triggers>>,
    epoch_unix_ns: u64,
    /// Each vCPU's tracer time when the statedump was seen taken (the
    /// traced command's exec): what came after is the command's share.
    at_command: std::sync::OnceLock<Vec<vmm::TracerTime>>,
}

impl Shared {
    fn now(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    /// Off the trap path only (arming, verification).
    fn note(&self, s: String) {
        let mut n = self.notes.lock().unwrap_or_else(|e| e.into_inner());
        if n.len() < 200 && !n.contains(&s) {
            n.push(s);
        }
    }
}

#[derive(Debug, Clone, Default)]
struct CpuReport {
    cpu: u32,
    events: u64,
    busy_ns: u64,
    ctf_errors: u64,
    by_kind: [u64; introspect::decode::COUNTER_SLOTS],
    by_event: [u64; introspect::decode::COUNTER_SLOTS],
    armed: Vec<(u64, ProbeKind)>,
    /// Syscall entries whose string was deferred / read on a retry.
    deferred: u64,
    recovered: u64,
}

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
    let boot = crate::backend_kvm::KvmBoot::prepare(&run.kernel)?;
    let image = image_builder::check::open_kernel(&run.kernel)?;
    let mut plan = engine::plan::plan_of(&image).context("preparing the probe plan")?;
    let facts = sw::CodeFacts::of(&image, &plan);
    drop(image);
    plan.events = events;
    let user = engine::probes::resolve_probes(&run.kernel, user_probes, &mut plan)?;
    // Everything that can be refused is checked: now the folder is written.
    let triggers = crate::triggers::parse_for(args, &plan, &run.kernel)?;
    let out_abs = engine::output::prepare_output(out, args.force)?;
    plan.out_dir = out_abs.to_string_lossy().into_owned();
    plan.statedump_exec = crate::disk::statedump_exec(args);
    if args.mode == Mode::Sample {
        // As on the TCG engine: samples instead of the high-rate classes;
        // process lifecycle (rare) stays traced so samples can be
        // attributed. A sample is a kick of every vCPU (signal +
        // immediate_exit) at --freq from this thread.
        plan.sample_hz = args.freq;
        plan.events = EventClasses {
            proc: true,
            ..EventClasses::default()
        };
    }
    std::fs::write(out_abs.join("probe-plan.json"), plan.to_json())?;
    let armed = crate::triggers::arm(triggers, &out_abs)?;
    let trigger_plan = extra::trigger_plan(armed.as_ref(), &plan)?;
    let prep = t0.elapsed();

    let baseline = if args.baseline {
        let t = Instant::now();
        let (end, _, _) = crate::backend_kvm::run_guest(
            &run,
            &boot,
            None,
            None,
            None,
            interrupt,
            std::time::Duration::from_millis(50),
            &mut |_| {},
            None,
        )?;
        Some((t.elapsed(), end))
    } else {
        None
    };
    if args.keep_raw {
        eprintln!(
            "hvtrace: record: --keep-raw is ignored on --backend kvm (no raw record streams)"
        );
    }
    let (sw_trap, sw_reason) = sw::decide();
    let origin = ltt_writer::Epoch::now();
    let (epoch, epoch_unix_ns) = (origin.instant, origin.unix_ns);
    let mut catalog = ctf::catalog_checked(&plan).context("declaring the trace's events")?;
    let marker = match trigger_plan {
        Some(_) => Some(
            record_ctf::triggers::declare_marker(&mut catalog)
                .context("declaring the trigger marker")?,
        ),
        None => None,
    };
    let mut cfg = ltt_writer::TraceConfig::new(run.vcpus, catalog);
    cfg.env.kernel_release = plan.kernel_release.clone();
    cfg.clock_offset_ns = epoch_unix_ns;
    cfg.packet_size = args.subbuf_size as usize;
    cfg.packets_per_cpu = args.num_subbuf as usize;
    cfg.relayd = relayd;
    cfg.policy = match args.buffer {
        BufferMode::Lossless => ltt_writer::Policy::Lossless,
        BufferMode::Discard => ltt_writer::Policy::Discard,
        BufferMode::FlightRecorder => ltt_writer::Policy::FlightRecorder {
            bytes_per_cpu: ((args.flight_mib << 20) as usize).max(cfg.packet_size * 2),
        },
    };
    let (writer, producers) = ltt_writer::TraceWriter::create(&out_abs, cfg)
        .with_context(|| format!("creating the trace in {}", out_abs.display()))?;
    let entry_triggers = trigger_plan
        .as_ref()
        .map(extra::entry_triggers)
        .unwrap_or_default();
    let triggers = match trigger_plan {
        Some(tp) => Some(extra::start_triggers(
            tp,
            marker,
            &writer,
            &out_abs,
            epoch,
            epoch_unix_ns,
        )?),
        None => None,
    };

    let sh = Arc::new(Shared {
        strings: string_table(&plan),
        gate: StatedumpGate::new(&plan.statedump_exec),
        epoch,
        verified_slide: AtomicU64::new(UNKNOWN),
        hits: AtomicU64::new(0),
        reports: Mutex::new(Vec::new()),
        notes: Mutex::new(Vec::new()),
        sw: sw::SwPhase::new(
            sw_trap,
            sw_reason,
            plan.symbols.begin_new_exec,
            facts,
            user,
            entry_triggers,
        ),
        randomized: boot.randomized,
        triggers,
        epoch_unix_ns,
        at_command: std::sync::OnceLock::new(),
        plan,
    });
    if sw_trap.is_some() && sh.sw.trigger == 0 {
        sh.note("no begin_new_exec in this kernel: software breakpoints never armed, hardware breakpoints only".into());
    }
    let mut producers: Vec<Option<ltt_writer::Producer>> =
        producers.into_iter().map(Some).collect();
    let hsh = sh.clone();
    let factory: vmm::HandlerFactory = Box::new(move |cpu| {
        let producer = producers.get_mut(cpu as usize).and_then(Option::take);
        Box::new(Handler::new(hsh.clone(), cpu, producer))
    });

    // Until the slide is found, kick vCPU 0 so its handler looks for the
    // banner: every few milliseconds on a randomized boot (nothing is armed
    // until then), about once a second otherwise (the probes at slide 0
    // fire anyway). Once found, every vCPU is kicked once to arm at it. In
    // sample mode, every vCPU is kicked every period.
    let mut last_kick = Instant::now();
    let mut all_kicked = false;
    let mut next_sample = Instant::now();
    let ksh = sh.clone();
    let period = std::time::Duration::from_nanos(1_000_000_000 / u64::from(args.freq.max(1)));
    let sample = args.mode == Mode::Sample;
    let search_every = if boot.randomized {
        std::time::Duration::from_millis(SLIDE_SEARCH_MS)
    } else {
        std::time::Duration::from_secs(1)
    };
    let tick_every = if sample {
        period.min(search_every)
    } else {
        search_every.min(std::time::Duration::from_millis(50))
    };
    let mut tick = move |vm: &vmm::Vm| {
        if ksh.at_command.get().is_none() && ksh.gate.taken() {
            // Within one tick of the exec: a few ms of tracer time at most.
            let _ = ksh.at_command.set(
                vm.vcpus()
                    .iter()
                    .map(vmm::VcpuHandle::tracer_time)
                    .collect(),
            );
        }
        let verified = ksh.verified_slide.load(Ordering::Acquire) != UNKNOWN;
        if verified && !all_kicked {
            all_kicked = true;
            vm.kick_all();
        } else if sample && verified {
            // On the period's grid, whatever the tick's granularity.
            let now = Instant::now();
            if now >= next_sample {
                next_sample = (next_sample + period).max(now);
                vm.kick_all();
            }
        } else if !verified && last_kick.elapsed() >= search_every {
            last_kick = Instant::now();
            if let Some(h) = vm.vcpu(0) {
                h.kick();
            }
        }
    };
    let t1 = Instant::now();
    let (end, vm_exit, sw_out) = crate::backend_kvm::run_guest(
        &run,
        &boot,
        args.guest.capture.as_deref(),
        Some(factory),
        sw_trap,
        interrupt,
        tick_every,
        &mut tick,
        driver,
    )?;
    let wall = t1.elapsed();
    if let Some(t) = &sh.triggers {
        t.before_finish();
    }
    let report = writer.finish().context("finishing the trace")?;
    if let Some(t) = &sh.triggers {
        t.after_finish();
    }

    let mut cpus = sh.reports.lock().unwrap_or_else(|e| e.into_inner()).clone();
    cpus.sort_by_key(|c| c.cpu);
    let notes = sh.notes.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let slide = sh.verified_slide.load(Ordering::Acquire);
    let probes = report::probes(&cpus, &sh.sw);
    let visible =
        report::GuestVisible::measure(sw_out.tracer_time.clone(), sh.at_command.get().cloned());
    report::write(
        &out_abs, &cpus, &notes, slide, &sh, &report, &probes, &sw_out, &visible,
    )?;

    let total: u64 = cpus.iter().map(|c| c.events).sum();
    let busy: u64 = cpus.iter().map(|c| c.busy_ns).sum();
    eprintln!(
        "hvtrace: record: {total} events, {} lost; per vCPU {:?}; guest run {:.1} s wall (symbols {:.1} s)",
        report.discarded(),
        cpus.iter().map(|c| c.events).collect::<Vec<_>>(),
        wall.as_secs_f64(),
        prep.as_secs_f64()
    );
    let mut per_class = std::collections::BTreeMap::<&str, u64>::new();
    for c in &cpus {
        for (tag, &n) in c.by_event.iter().enumerate() {
            if n > 0 {
                *per_class
                    .entry(engine::summary::class_of_tag(tag))
                    .or_default() += n;
            }
        }
    }
    for (class, n) in &per_class {
        eprintln!("hvtrace: record:   {class}: {n}");
    }
    engine::buffers::print_discards(&report.discards_json(), &args.output.join("kvm.json"));
    if let Some(r) = &report.relayd {
        crate::record_relayd::print(&r.to_json());
    }
    if total > 0 {
        eprintln!(
            "hvtrace: record: tracer time {:.1} ms in debug-exit handlers, {:.2} us per event",
            busy as f64 / 1e6,
            busy as f64 / 1e3 / total as f64
        );
    }
    visible.print();
    report::print_probes(&sh.sw, &probes, &sw_out);
    for n in &notes {
        eprintln!("hvtrace: record: {n}");
    }
    if slide == UNKNOWN {
        eprintln!("hvtrace: record: the running kernel's banner was not found (slide unverified); probes were armed at slide 0");
    } else {
        eprintln!(
            "hvtrace: record: KASLR slide {slide:#x}; trace in {}",
            out.join("kernel").display()
        );
    }
    if let Some((base, base_end)) = baseline {
        eprintln!(
            "hvtrace: record: baseline (untraced) run {:.1} s wall ({base_end:?}); traced/untraced = {:.2}x (whole guest run, boot included)",
            base.as_secs_f64(),
            wall.as_secs_f64() / base.as_secs_f64().max(1e-9)
        );
    }
    if let Some(exit) = &vm_exit {
        eprintln!("hvtrace: record: the VM ended: {exit:?}");
    }
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
