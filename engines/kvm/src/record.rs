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
//! decompressor (`crate::boot::KvmBoot`), which randomizes the kernel's
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

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use engine::buffers::{BufferMode, Mode};
use engine::guest::{ConsoleDriver, GuestEnd, GuestRun};
use engine::seam::RecordOptions;
use introspect::runtime::{string_table, StatedumpGate};
use introspect::triggers::TriggerPlan;
use introspect::userprobe::ResolvedProbe;
use introspect::ProbePlan;

mod extra;
mod handler;
mod report;
mod shared;
mod sw;
mod trap;
pub use extra::{trigger_plan, TriggerError};
use handler::Handler;
use shared::{Shared, UNKNOWN};

use crate::boot::{BootError, KvmBoot};
use crate::monitor::{run_guest, MonitorError};

/// How often vCPU 0 looks for the banner on a randomized boot, until found.
const SLIDE_SEARCH_MS: u64 = 2;

/// Why a recording on the monitor failed (not how the guest ended).
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error(transparent)]
    Boot(#[from] BootError),
    #[error(transparent)]
    Open(#[from] image_builder::check::CheckError),
    #[error("preparing the probe plan")]
    Plan(#[source] engine::plan::PlanError),
    #[error(transparent)]
    Monitor(#[from] MonitorError),
    #[error(transparent)]
    Trigger(#[from] TriggerError),
    #[error("declaring the trace's events")]
    Catalog(#[source] ltt_writer::catalog::CatalogError),
    #[error("declaring the trigger marker")]
    Marker(#[source] ltt_writer::catalog::CatalogError),
    #[error("creating the trace in {}", .0.display())]
    Create(PathBuf, #[source] ltt_writer::writer::WriteError),
    #[error("finishing the trace")]
    Finish(#[source] ltt_writer::writer::WriteError),
    #[error(transparent)]
    Report(#[from] report::ReportError),
}

/// A kernel made ready for the monitor: how it boots, its probe plan
/// (from the image alone) and what software traps need of its code.
pub struct Prepared {
    pub boot: KvmBoot,
    pub plan: ProbePlan,
    facts: sw::CodeFacts,
}

impl Prepared {
    /// Decides how `kernel` boots, and plans its probes.
    pub fn of(kernel: &Path) -> Result<Self, RecordError> {
        let boot = KvmBoot::prepare(kernel)?;
        let image = image_builder::check::open_kernel(kernel)?;
        let plan = engine::plan::plan_of(&image).map_err(RecordError::Plan)?;
        let facts = sw::CodeFacts::of(&image, &plan);
        Ok(Prepared { boot, plan, facts })
    }
}

/// A recording as the CLI prepared it: everything that can be refused is
/// checked, and the output folder is written.
pub struct Recording<'a> {
    pub prepared: Prepared,
    /// `--probe`s, resolved with the image's kallsyms.
    pub user: Vec<ResolvedProbe>,
    /// `--trigger`s ([`trigger_plan`]).
    pub triggers: Option<TriggerPlan>,
    /// The run, its timeout the wall-time limit (`--duration`).
    pub run: &'a GuestRun,
    /// The output folder as given, and resolved.
    pub out: &'a Path,
    pub out_abs: &'a Path,
    pub options: &'a RecordOptions,
    pub relayd: Option<ltt_writer::RelaydConfig>,
    pub capture: Option<&'a Path>,
    /// Time spent preparing (symbols), for the summary.
    pub prep: Duration,
}

/// `hvtrace record --backend kvm`: runs the recording to its end, writes
/// the trace and `kvm.json`, prints the summary; returns how the guest
/// ended.
pub fn record(
    r: Recording<'_>,
    interrupt: &AtomicBool,
    driver: Option<&mut dyn ConsoleDriver>,
) -> Result<GuestEnd, RecordError> {
    let Prepared { boot, plan, facts } = r.prepared;
    let (run, out, out_abs, prep, o) = (r.run, r.out, r.out_abs, r.prep, r.options);
    let (trigger_plan, user) = (r.triggers, r.user);
    let baseline = if o.baseline {
        let t = Instant::now();
        let (end, _, _) = run_guest(
            run,
            &boot,
            None,
            None,
            None,
            interrupt,
            Duration::from_millis(50),
            &mut |_| {},
            None,
        )?;
        Some((t.elapsed(), end))
    } else {
        None
    };
    if o.keep_raw {
        eprintln!(
            "hvtrace: record: --keep-raw is ignored on --backend kvm (no raw record streams)"
        );
    }
    let (sw_trap, sw_reason) = sw::decide();
    let origin = ltt_writer::Epoch::now();
    let (epoch, epoch_unix_ns) = (origin.instant, origin.unix_ns);
    let mut catalog = record_ctf::catalog_checked(&plan).map_err(RecordError::Catalog)?;
    let marker = match trigger_plan {
        Some(_) => {
            Some(record_ctf::triggers::declare_marker(&mut catalog).map_err(RecordError::Marker)?)
        }
        None => None,
    };
    let mut cfg = ltt_writer::TraceConfig::new(run.vcpus, catalog);
    cfg.env.kernel_release = plan.kernel_release.clone();
    cfg.clock_offset_ns = epoch_unix_ns;
    cfg.packet_size = o.subbuf_size as usize;
    cfg.packets_per_cpu = o.num_subbuf as usize;
    cfg.relayd = r.relayd;
    cfg.policy = match o.buffer {
        BufferMode::Lossless => ltt_writer::Policy::Lossless,
        BufferMode::Discard => ltt_writer::Policy::Discard,
        BufferMode::FlightRecorder => ltt_writer::Policy::FlightRecorder {
            bytes_per_cpu: ((o.flight_mib << 20) as usize).max(cfg.packet_size * 2),
        },
    };
    let (writer, producers) = ltt_writer::TraceWriter::create(out_abs, cfg)
        .map_err(|e| RecordError::Create(out_abs.to_path_buf(), e))?;
    let entry_triggers = trigger_plan
        .as_ref()
        .map(extra::entry_triggers)
        .unwrap_or_default();
    let triggers = match trigger_plan {
        Some(tp) => Some(extra::start_triggers(
            tp,
            marker,
            &writer,
            out_abs,
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
    let period = std::time::Duration::from_nanos(1_000_000_000 / u64::from(o.freq.max(1)));
    let sample = o.mode == Mode::Sample;
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
    let (end, vm_exit, sw_out) = run_guest(
        run,
        &boot,
        r.capture,
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
    let report = writer.finish().map_err(RecordError::Finish)?;
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
        out_abs, &cpus, &notes, slide, &sh, &report, &probes, &sw_out, &visible,
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
    engine::buffers::print_discards(&report.discards_json(), &out.join("kvm.json"));
    if let Some(r) = &report.relayd {
        engine::summary::print_relayd(&r.to_json());
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
    Ok(end)
}
